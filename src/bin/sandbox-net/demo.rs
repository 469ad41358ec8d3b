//! `sandbox-net demo`: the whole life of a sandbox's network in throwaway namespaces.
//!
//! It builds the pod as CNI leaves it: with the real reference plugins when they are installed
//! (ptp and host-local from `/usr/lib/cni`, run by the library's CNI runtime with the demo's
//! "host" namespace as the node, so the veth's other end lands there), else with its own
//! builder (a pod namespace with `eth0`, the other end of the veth in the host namespace);
//! the report says which. It attaches the pod with tcfilter and host-side rate limits, runs the
//! user-space test guest on the tap's queues, pings it from the host side, measures the
//! shaped rate into the VM, lets a fresh `sandbox-net detach` process restore the state file
//! and tear everything down, checks that the pod is exactly as it was, and deletes its
//! namespaces. Ctrl-C at any point still cleans up.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use sandbox_net_endpoints::{
    Backend, Capabilities, EndpointId, Hypervisor, HypervisorConfig, HypervisorError, NetDevice,
};
use sandbox_net_guest::{Guest, GuestConfig, packet::Identity, ping::ping};
use sandbox_net_interworking::{InterworkingModel, TapOptions};
use sandbox_net_netns::{Netns, Rtnl, ScanOptions, named_path};
use sandbox_net_persist::{
    AddressScope, IfName, NeighbourState, RouteProtocol, RouteType,
    scan::{Address, NamespaceScan, Neighbour, Route},
};

use sandbox_net::{
    NetnsSource, Network, NetworkConfig,
    cni::{Attachment, ChainRunner, CniResult, NetworkConfigList, PluginExec},
};

/// The limit the demo configures, both ways.
const RATE_BITS: u64 = 50_000_000;
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
const MEASURE: Duration = Duration::from_secs(2);

/// What the demo saw.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoReport {
    /// The pod and host namespaces.
    pub namespaces: (String, String),
    /// `eth0 -> tap0_kata` and the like.
    pub attached: Vec<String>,
    /// Echo replies received of those sent.
    pub ping: (u16, u16),
    /// Median round trip.
    pub rtt: Option<Duration>,
    /// The HTB trees of the limits, as the kernel reports them while attached: one line per
    /// shaped link.
    pub htb: Vec<String>,
    /// Measured rate into the VM, bits/s (a figure for the reader: timed rates are measured
    /// against their raw lower bound in the shaping bench, not asserted).
    pub shaped_rx_bits: f64,
    /// The fresh process that restored and detached.
    pub detach_process: String,
    /// What built the pod: the CNI reference plugins, or the demo's own builder.
    pub pod_builder: String,
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let error = (self.shaped_rx_bits / RATE_BITS as f64 - 1.0) * 100.0;
        writeln!(f, "sandbox-net demo")?;
        writeln!(
            f,
            "  namespaces   pod {} and host {}, created for the demo",
            self.namespaces.0, self.namespaces.1
        )?;
        writeln!(f, "  pod          {}", self.pod_builder)?;
        for a in &self.attached {
            writeln!(f, "  attached     {a}")?;
        }
        let rtt = self.rtt.map_or_else(
            || "-".into(),
            |r| format!("{:.3} ms", r.as_secs_f64() * 1e3),
        );
        writeln!(
            f,
            "  ping         {}/{} echo replies from the guest through the tap, median RTT {rtt}",
            self.ping.1, self.ping.0
        )?;
        for line in &self.htb {
            writeln!(f, "  htb          {line}")?;
        }
        writeln!(
            f,
            "  shaped rx    {:.1} Mbit/s measured for {:.1} Mbit/s configured ({error:+.1} %)",
            self.shaped_rx_bits / 1e6,
            RATE_BITS as f64 / 1e6
        )?;
        writeln!(f, "  restore      {}", self.detach_process)?;
        writeln!(
            f,
            "  leftovers    none: the pod namespace is exactly as before the attach"
        )?;
        writeln!(f, "  cleanup      both namespaces deleted")
    }
}

/// `demo --json`: the same figures with their units in the names (the round trip in
/// milliseconds, rates in bits/s), and the configured rate next to the measured one.
impl serde::Serialize for DemoReport {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("DemoReport", 11)?;
        s.serialize_field("pod_namespace", &self.namespaces.0)?;
        s.serialize_field("host_namespace", &self.namespaces.1)?;
        s.serialize_field("pod_builder", &self.pod_builder)?;
        s.serialize_field("attached", &self.attached)?;
        s.serialize_field("ping_sent", &self.ping.0)?;
        s.serialize_field("ping_received", &self.ping.1)?;
        s.serialize_field("rtt_ms", &self.rtt.map(|r| r.as_secs_f64() * 1e3))?;
        s.serialize_field("htb", &self.htb)?;
        s.serialize_field("rate_bits", &RATE_BITS)?;
        s.serialize_field("shaped_rx_bits", &self.shaped_rx_bits)?;
        s.serialize_field("detach_process", &self.detach_process)?;
        s.end()
    }
}

/// A stand-in for the VMM that cannot run here: it runs the user-space guest on the tap's
/// queues.
struct GuestVmm {
    guest: Mutex<Option<Guest>>,
}

impl Hypervisor for GuestVmm {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            multi_queue: false,
            rate_limiter: false,
        }
    }
    fn config(&self) -> HypervisorConfig {
        HypervisorConfig {
            disable_vhost_net: true,
            rx_rate_limiter_max_rate: RATE_BITS,
            tx_rate_limiter_max_rate: RATE_BITS,
            ..HypervisorConfig::default()
        }
    }
    async fn add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        let refuse = |reason: &str| HypervisorError {
            op: "add",
            endpoint: device.endpoint.clone(),
            reason: reason.into(),
        };
        let queues = match device.backend {
            Backend::Tap { queues, .. } | Backend::Macvtap { queues, .. } => queues,
            _ => return Err(refuse("the demo guest needs tap queues")),
        };
        let identity = Identity {
            mac: device.mac,
            ipv4: vec![POD_IP],
            ipv6: vec![],
        };
        let guest = Guest::start(
            GuestConfig {
                identity,
                vnet_hdr: true,
            },
            queues,
        )
        .map_err(|e| refuse(&format!("cannot start the guest: {e}")))?;
        *self.guest.lock().map_err(|_| refuse("lock poisoned"))? = Some(guest);
        Ok(())
    }
    async fn hot_add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        self.add_device(device).await
    }
    async fn hot_remove_device(&self, _: &EndpointId) -> Result<(), HypervisorError> {
        Ok(())
    }
}

/// The demo's namespaces and state file, cleaned up whatever happens.
struct Scene {
    pod: Netns,
    host: Netns,
    state: PathBuf,
    /// The CNI network that built the pod, for its DEL at cleanup.
    cni: Mutex<Option<CniPod>>,
}

/// Where the demo looks for the CNI reference plugins.
const CNI_PLUGINS: &str = "/usr/lib/cni";

/// A pod built by the CNI reference plugins.
struct CniPod {
    runner: ChainRunner,
    list: NetworkConfigList,
    attachment: Attachment,
    result: CniResult,
}

/// Runs the demo and returns its report. Needs root, nothing else.
pub async fn run() -> anyhow::Result<DemoReport> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo creates network namespaces: run it as root");
    }
    let tag = std::process::id();
    let pod = Netns::create(named_path(&format!("sbxdemo-{tag}-pod"))?)
        .context("cannot create the demo's pod namespace")?;
    let host = match Netns::create(named_path(&format!("sbxdemo-{tag}-host"))?) {
        Ok(host) => host,
        Err(e) => {
            let _ = pod.delete();
            return Err(e).context("cannot create the demo's host namespace");
        }
    };
    let state = std::env::temp_dir().join(format!("sandbox-net-demo-{tag}/state.json"));
    let scene = Scene {
        pod,
        host,
        state,
        cni: Mutex::new(None),
    };
    let outcome = tokio::select! {
        report = scenario(&scene) => report,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; cleaning up")),
    };
    let cleaned = cleanup(scene).await;
    let report = outcome?;
    cleaned?;
    Ok(report)
}

async fn scenario(scene: &Scene) -> anyhow::Result<DemoReport> {
    let pod_rtnl = scene.pod.rtnl().await?;
    let pod_builder = if cni_plugins_installed() {
        build_pod_with_cni(scene).await?;
        format!(
            "built by the CNI reference plugins ptp + host-local ({CNI_PLUGINS}), run by the library's CNI runtime with the host namespace as the node"
        )
    } else {
        build_pod(scene, &pod_rtnl).await?;
        format!("built by the demo's own pod builder (no CNI ptp/host-local in {CNI_PLUGINS})")
    };
    let before = settled_scan(&pod_rtnl).await?;

    let config = NetworkConfig {
        model: InterworkingModel::TcFilter,
        tap: TapOptions {
            persist: true,
            ..TapOptions::default()
        },
        ..NetworkConfig::default()
    };
    let vmm = GuestVmm {
        guest: Mutex::new(None),
    };
    let mut network = Network::create(
        &scene.state,
        "demo",
        NetnsSource::Given(scene.pod.clone()),
        config,
    )?;
    network.add_endpoints(&vmm, None).await?;
    let attached: Vec<String> = network
        .sandbox()
        .state()
        .endpoints
        .iter()
        .map(|e| {
            format!(
                "{} -> tap{}_kata (tcfilter, {} queue), guest MAC {}, limits rx/tx {} Mbit/s",
                e.interface.link.name,
                e.index,
                e.queues,
                e.guest_mac.map(|m| m.to_string()).unwrap_or_default(),
                RATE_BITS / 1_000_000
            )
        })
        .collect();

    // The limits as the kernel holds them: rx on the tap's egress, tx on eth0's (the
    // tcfilter model's places).
    let mut htb = Vec::new();
    for (link, direction) in [("tap0_kata", "rx"), ("eth0", "tx")] {
        let shaped = pod_rtnl.link_by_name(link).await?;
        let tree = sandbox_net_ratelimit::read_htb_tree(&pod_rtnl, &shaped)
            .await?
            .with_context(|| format!("no htb tree on {link} while attached"))?;
        let classes: Vec<String> = tree
            .classes
            .iter()
            .map(|c| {
                format!(
                    "{}:{} rate {} ceil {} bit/s",
                    c.handle >> 16,
                    c.handle & 0xFFFF,
                    c.rate * 8,
                    c.ceil * 8
                )
            })
            .collect();
        htb.push(format!(
            "{link} ({direction}) default 1:{}, {}",
            tree.default_class,
            classes.join(", ")
        ));
    }

    // Ping the guest from the host side of the veth.
    let report = scene
        .host
        .run(|| ping(POD_IP.into(), 5, Duration::from_secs(2)))
        .await??;
    if report.received == 0 {
        bail!("no echo reply came back through the wiring");
    }

    // Shaped rate into the VM: the host sends flat out, the guest counts what it reads.
    let bytes_before = guest_bytes(&vmm)?;
    let elapsed = scene
        .host
        .run(|| -> std::io::Result<Duration> {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            // A send buffer the shaper cannot fill, so the sender never sleeps on it.
            nix::sys::socket::setsockopt(
                &socket,
                nix::sys::socket::sockopt::SndBufForce,
                &(64 << 20),
            )?;
            let to = SocketAddrV4::new(POD_IP, 9);
            let payload = [0u8; 1400];
            let started = Instant::now();
            while started.elapsed() < MEASURE {
                let _ = socket.send_to(&payload, to);
            }
            Ok(started.elapsed())
        })
        .await??;
    let received = guest_bytes(&vmm)? - bytes_before;
    let shaped_rx_bits = received as f64 * 8.0 / elapsed.as_secs_f64();

    // The shim "goes away": the VM stops, the state file stays.
    drop(
        vmm.guest
            .lock()
            .map_err(|_| anyhow::anyhow!("lock poisoned"))?
            .take(),
    );
    drop(network);

    // A fresh process restores the state and tears everything down.
    let exe = std::env::current_exe().context("cannot find the sandbox-net binary")?;
    let child = tokio::process::Command::new(&exe)
        .arg("detach")
        .arg("--state")
        .arg(&scene.state)
        .output()
        .await
        .context("cannot run sandbox-net detach")?;
    if !child.status.success() {
        bail!(
            "sandbox-net detach failed: {}",
            String::from_utf8_lossy(&child.stderr).trim()
        );
    }
    let detach_process = format!(
        "`sandbox-net detach --state {}` in a fresh process: ok",
        scene.state.display()
    );

    let after = settled_scan(&pod_rtnl).await?;
    leftovers(&pod_rtnl, &before, &after).await?;
    Ok(DemoReport {
        namespaces: (label(&scene.pod), label(&scene.host)),
        attached,
        ping: (report.sent, report.received),
        rtt: report.median_rtt(),
        htb,
        shaped_rx_bits,
        detach_process,
        pod_builder,
    })
}

fn guest_bytes(vmm: &GuestVmm) -> anyhow::Result<u64> {
    let guest = vmm
        .guest
        .lock()
        .map_err(|_| anyhow::anyhow!("lock poisoned"))?;
    Ok(guest
        .as_ref()
        .context("the guest is not running")?
        .stats()
        .bytes_in)
}

fn label(netns: &Netns) -> String {
    netns
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What CNI would leave: `eth0` in the pod (10.88.0.2/24, default route, a permanent
/// neighbour for the gateway), its peer `veth-host` (10.88.0.1/24) in the host namespace.
async fn build_pod(scene: &Scene, pod: &Rtnl) -> anyhow::Result<()> {
    // No IPv6 duplicate address detection in the throwaway pod: addresses are final at once,
    // so that "before" and "after" compare equal.
    for key in ["all", "default"] {
        let path = format!("/proc/sys/net/ipv6/conf/{key}/accept_dad");
        scene
            .pod
            .run(move || std::fs::write(path, "0"))
            .await?
            .context("cannot turn IPv6 DAD off in the pod")?;
    }
    let name = |n: &str| IfName::new(n).map_err(anyhow::Error::from);
    let eth0 = pod.add_veth(&name("eth0")?, &name("veth-host")?).await?;
    let peer = pod.link_by_name("veth-host").await?;
    pod.move_link(&peer, &scene.host).await?;
    let host = scene.host.rtnl().await?;
    let peer = host.link_by_name("veth-host").await?;
    host.add_address(&peer, "10.88.0.1/24".parse()?).await?;
    host.set_link_up(&peer).await?;
    let address = Address {
        prefix: "10.88.0.2/24".parse()?,
        peer: None,
        broadcast: None,
        scope: AddressScope::GLOBAL,
        flags: 0,
        label: None,
        route_metric: None,
        protocol: None,
        valid_lifetime: None,
        preferred_lifetime: None,
    };
    pod.add_recorded_address(&eth0, &address).await?;
    pod.set_link_up(&eth0).await?;
    let lo = pod.link_by_name("lo").await?;
    pod.set_link_up(&lo).await?;
    let route = Route {
        destination: "0.0.0.0/0".parse()?,
        gateway: Some(HOST_IP.into()),
        device_index: Some(eth0.index),
        source: None,
        scope: AddressScope::GLOBAL,
        protocol: RouteProtocol::BOOT,
        kind: RouteType::UNICAST,
        table: 254,
        metric: None,
        ..Route::default()
    };
    pod.add_route(&route).await?;
    let neighbour = Neighbour {
        ip: HOST_IP.into(),
        mac: peer.mac,
        state: NeighbourState::PERMANENT,
        device_index: eth0.index,
    };
    pod.add_neighbour(&neighbour).await?;
    Ok(())
}

fn cni_plugins_installed() -> bool {
    ["ptp", "host-local"].iter().all(|p| {
        std::fs::metadata(std::path::Path::new(CNI_PLUGINS).join(p)).is_ok_and(|m| m.is_file())
    })
}

/// The pod as the reference plugins make it: ptp's veth (`eth0` 10.88.0.2/24 in the pod, the
/// other end with 10.88.0.1/32 in the host namespace), the address from host-local, whose
/// leases go in the state file's directory.
async fn build_pod_with_cni(scene: &Scene) -> anyhow::Result<()> {
    for key in ["all", "default"] {
        let path = format!("/proc/sys/net/ipv6/conf/{key}/accept_dad");
        scene
            .pod
            .run(move || std::fs::write(path, "0"))
            .await?
            .context("cannot turn IPv6 DAD off in the pod")?;
    }
    let leases = scene
        .state
        .parent()
        .map(|d| d.join("ipam"))
        .context("the state file has no directory")?;
    let list = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": format!("sbxdemo-{}", std::process::id()),
        "plugins": [{
            "type": "ptp",
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "dataDir": leases,
                "ranges": [[{"subnet": "10.88.0.0/24", "rangeStart": POD_IP.to_string(), "gateway": HOST_IP.to_string()}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }],
    });
    let list = NetworkConfigList::from_value("the demo's network", &list)?;
    let runner = ChainRunner::new(PluginExec {
        search_path: vec![CNI_PLUGINS.into()],
        node: Some(scene.host.clone()),
        env: Vec::new(),
    });
    let attachment = Attachment {
        container_id: label(&scene.pod),
        netns: Some(scene.pod.path().to_path_buf()),
        ifname: "eth0".into(),
        args: Vec::new(),
    };
    let result = runner.add(&list, &attachment).await;
    // Recorded before it is checked: a failed ADD is followed by DEL at cleanup.
    let result = match result {
        Ok(result) => result,
        Err(e) => {
            let _ = runner.del(&list, &attachment, None).await;
            return Err(e).context("the CNI plugins could not build the pod");
        }
    };
    *scene
        .cni
        .lock()
        .map_err(|_| anyhow::anyhow!("lock poisoned"))? = Some(CniPod {
        runner,
        list,
        attachment,
        result,
    });
    Ok(())
}

/// Everything of the pod but the neighbour entries the kernel makes by itself (multicast,
/// learnt), once the kernel has given `eth0` its IPv6 link-local address, which it does a
/// moment after the link comes up.
async fn settled_scan(pod: &Rtnl) -> anyhow::Result<NamespaceScan> {
    let options = ScanOptions {
        permanent_neighbours_only: true,
        ..ScanOptions::unfiltered()
    };
    let started = Instant::now();
    loop {
        let scan = pod.scan(&options).await?;
        let link_local = scan.interfaces.iter().any(|i| {
            i.link.name.as_str() == "eth0"
                && i.addresses
                    .iter()
                    .any(|a| a.scope == AddressScope::LINK && a.flags & Address::F_TENTATIVE == 0)
        });
        if link_local || started.elapsed() > Duration::from_secs(3) {
            return Ok(scan);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fails unless the pod is exactly as before: same links (MAC, MTU, flags), addresses,
/// routes and neighbours, and no qdisc of ours on `eth0`.
async fn leftovers(
    pod: &Rtnl,
    before: &NamespaceScan,
    after: &NamespaceScan,
) -> anyhow::Result<()> {
    if before != after {
        bail!("the pod namespace differs after detach:\nbefore: {before:?}\nafter: {after:?}");
    }
    let eth0 = pod.link_by_name("eth0").await?;
    if pod.has_ingress_qdisc(&eth0).await? {
        bail!("an ingress qdisc is left on eth0");
    }
    if sandbox_net_ratelimit::read_htb_tree(pod, &eth0)
        .await?
        .is_some()
    {
        bail!("an htb tree is left on eth0");
    }
    Ok(())
}

async fn cleanup(scene: Scene) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    if scene.state.exists() {
        // Interrupted or failed before the fresh process could detach: do it here.
        match Network::restore(&scene.state, NetworkConfig::default()) {
            Ok(network) => {
                if let Err(e) = network.teardown().await {
                    problems.push(format!("teardown: {e}"));
                }
            }
            Err(e) => problems.push(format!("restore: {e}")),
        }
    }
    let cni = scene.cni.lock().ok().and_then(|mut c| c.take());
    if let Some(pod) = cni
        && let Err(e) = pod
            .runner
            .del(&pod.list, &pod.attachment, Some(&pod.result))
            .await
    {
        problems.push(format!("CNI DEL: {}", sandbox_net::error_chain(&e)));
    }
    if let Some(dir) = scene.state.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    for netns in [scene.pod, scene.host] {
        let path = netns.path().display().to_string();
        if let Err(e) = netns.delete() {
            problems.push(format!("delete {path}: {e}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("demo cleanup: {}", problems.join("; "))
    }
}
