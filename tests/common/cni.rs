//! Pods made by the real CNI reference plugins (ptp, bridge, macvlan with host-local), run by
//! the library's protocol runner inside a "node" namespace of the test, so that everything
//! the plugins make on the host side (the ptp veth end, the bridge, the macvlan master, the
//! `ip_forward` sysctl) lands in a throwaway namespace and never in the real host.
//!
//! ```text
//!  node namespace                         pod namespace
//!  ptp:     vethXXXX 10.77.0.1/32  <-->   eth0 10.77.0.N/24 (default via 10.77.0.1)
//!  bridge:  sbxbr0 10.77.0.1/24, vethXXXX <--> eth0 10.77.0.N/24
//!  macvlan: sbxm0 (master) <-veth-> sbxm0p in the peer namespace, 10.77.0.254/24
//!                 '-- macvlan --------------> eth0 10.77.0.N/24 (default via 10.77.0.254)
//! ```
//! host-local keeps its leases in a temporary directory of the test (`dataDir`), under a
//! network name unique to the test.

#![allow(dead_code)]

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use sandbox_net::cni::{Attachment, ChainRunner, CniResult, NetworkConfigList, PluginExec};
use sandbox_net_netns::testing::{TestNetns, unique_netns_name};
use serde_json::{Value, json};

/// Where Debian's containernetworking-plugins put the reference plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// The pod subnet of every fixture (each in namespaces of its own).
pub const SUBNET: &str = "10.77.0.0/24";
/// The address the peer namespace of a macvlan fixture has (its gateway).
pub const MACVLAN_PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);

/// Which reference plugin makes the pod's interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// ptp: a veth whose host end is in the node namespace, /32 routes.
    Ptp,
    /// bridge: a veth whose host end is on a bridge of the node namespace (the gateway).
    Bridge,
    /// macvlan: a macvlan of a master link of the node namespace.
    Macvlan,
}

impl Chain {
    /// All three.
    pub const ALL: [Chain; 3] = [Chain::Ptp, Chain::Bridge, Chain::Macvlan];

    /// The plugin's name.
    pub fn plugin(self) -> &'static str {
        match self {
            Chain::Ptp => "ptp",
            Chain::Bridge => "bridge",
            Chain::Macvlan => "macvlan",
        }
    }
}

/// A node namespace, a pod namespace, and what is needed to run a chain into the pod.
pub struct CniNode {
    /// The runtime's namespace: plugins run here.
    pub node: TestNetns,
    /// For macvlan: the namespace at the far end of the master's veth (traffic comes from it).
    pub peer: Option<TestNetns>,
    /// The pod (taken out by [`CniNode::delete_pod`]).
    pod: Option<TestNetns>,
    /// Leases, state, and anything else of the test.
    pub dir: tempfile::TempDir,
    /// A network name of this test alone.
    pub network: String,
    /// The plugin making the pod interface.
    pub chain: Chain,
    pod_path: PathBuf,
    /// The runner: reference plugins (and `extra_dirs`) started in `node`.
    pub runner: ChainRunner,
}

impl CniNode {
    /// A node and an empty pod for `chain`, running plugins from the reference directory and
    /// `extra_dirs` (searched first).
    pub fn new(chain: Chain, extra_dirs: &[PathBuf]) -> Self {
        assert!(
            Path::new(REFERENCE_PLUGINS).join(chain.plugin()).exists(),
            "the CNI reference plugins are not installed in {REFERENCE_PLUGINS} \
             (apt-get install containernetworking-plugins)"
        );
        let node = TestNetns::new();
        let pod = TestNetns::new();
        node.ip(&["link", "set", "lo", "up"]);
        // No duplicate address detection: the pod's IPv6 link-local address is final at once,
        // so that snapshots of the pod do not change by themselves.
        for ns in [&node, &pod] {
            ns.sysctl("net/ipv6/conf/all/accept_dad", "0");
            ns.sysctl("net/ipv6/conf/default/accept_dad", "0");
        }
        let peer = match chain {
            Chain::Macvlan => {
                let peer = TestNetns::new();
                node.ip(&[
                    "link",
                    "add",
                    "sbxm0",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "sbxm0p",
                    "netns",
                    peer.name(),
                ]);
                node.ip(&["link", "set", "sbxm0", "up"]);
                peer.ip(&[
                    "addr",
                    "add",
                    &format!("{MACVLAN_PEER_IP}/24"),
                    "dev",
                    "sbxm0p",
                ]);
                peer.ip(&["link", "set", "sbxm0p", "up"]);
                Some(peer)
            }
            _ => None,
        };
        let mut search_path = extra_dirs.to_vec();
        search_path.push(PathBuf::from(REFERENCE_PLUGINS));
        let exec = PluginExec {
            search_path,
            node: Some(node.netns().clone()),
            env: Vec::new(),
        };
        Self {
            node,
            peer,
            pod_path: pod.netns().path().to_path_buf(),
            pod: Some(pod),
            dir: tempfile::tempdir().expect("a temporary directory"),
            network: format!("net-{}", unique_netns_name()),
            chain,
            runner: ChainRunner::new(exec),
        }
    }

    /// The pod's namespace.
    pub fn pod(&self) -> &TestNetns {
        match &self.pod {
            Some(pod) => pod,
            None => panic!("the pod namespace was deleted by the test"),
        }
    }

    /// Deletes the pod's namespace (as a runtime does before a late DEL); the attachment keeps
    /// naming its path.
    pub fn delete_pod(&mut self) {
        drop(self.pod.take());
    }

    /// A snapshot of the pod once the kernel is done with what the plugins started (the veth's
    /// carrier up, no tentative address, the same three times 100 ms apart), within 10 s. A
    /// persistent tap whose descriptors are closed has no carrier for good: that is settled.
    pub fn settled_snapshot(&self) -> Value {
        let settled = |snapshot: &Value| {
            let carrier = snapshot["links"].as_array().into_iter().flatten().all(|l| {
                l["kind"] == "tun"
                    || !l["flags"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|f| f == "NO-CARRIER")
            });
            carrier && !snapshot.to_string().contains("\"tentative\"")
        };
        let mut last = self.pod().snapshot();
        let mut same = 0;
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let now = self.pod().snapshot();
            same = if now == last && settled(&now) {
                same + 1
            } else {
                0
            };
            if same == 2 {
                return now;
            }
            last = now;
        }
        panic!("the pod did not settle within 10 s: {last}");
    }

    /// host-local's directory of leases.
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// The configuration of the plugin that makes the pod interface, with host-local.
    pub fn interface_plugin(&self) -> Value {
        let mut ipam = json!({
            "type": "host-local",
            "dataDir": self.ipam_dir(),
            "ranges": [[{"subnet": SUBNET, "rangeStart": "10.77.0.10", "rangeEnd": "10.77.0.100"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        });
        match self.chain {
            Chain::Ptp => json!({"type": "ptp", "ipMasq": false, "ipam": ipam}),
            Chain::Bridge => json!({
                "type": "bridge", "bridge": "sbxbr0", "isGateway": true, "ipMasq": false, "ipam": ipam,
            }),
            Chain::Macvlan => {
                ipam["ranges"][0][0]["gateway"] = MACVLAN_PEER_IP.to_string().into();
                json!({"type": "macvlan", "master": "sbxm0", "mode": "bridge", "ipam": ipam})
            }
        }
    }

    /// A network configuration of `version` (`cniVersion`) whose plugins are the interface
    /// plugin followed by `more`.
    pub fn conflist(&self, version: &str, more: &[Value]) -> NetworkConfigList {
        let mut plugins = vec![self.interface_plugin()];
        plugins.extend(more.iter().cloned());
        let list = json!({"cniVersion": version, "name": self.network, "plugins": plugins});
        NetworkConfigList::from_value("test", &list).expect("a valid network configuration")
    }

    /// The attachment `(container id, eth0)` of the pod.
    pub fn attachment(&self) -> Attachment {
        Attachment {
            container_id: format!("ctr-{}", self.network),
            netns: Some(self.pod_path()),
            ifname: "eth0".into(),
            args: Vec::new(),
        }
    }

    /// The pod namespace's path (also once it is deleted).
    pub fn pod_path(&self) -> PathBuf {
        self.pod_path.clone()
    }

    /// The namespace to send traffic to the pod from: the node (ptp, bridge) or the peer
    /// (macvlan: a master cannot reach its own macvlans).
    pub fn traffic_source(&self) -> &TestNetns {
        self.peer.as_ref().unwrap_or(&self.node)
    }

    /// The leases host-local holds for this network (file names that are addresses).
    pub fn leases(&self) -> Vec<String> {
        let dir = self.ipam_dir().join(&self.network);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut leases: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        leases.sort();
        leases
    }

    /// The pod interface's IPv4 address in `result` (the one pointing at `eth0`).
    pub fn pod_ip(result: &CniResult) -> Ipv4Addr {
        result
            .ips
            .iter()
            .find_map(|ip| match ip.address.addr() {
                std::net::IpAddr::V4(a) => Some(a),
                _ => None,
            })
            .expect("an IPv4 address in the result")
    }
}
