//! Shared pieces of the sandbox-level tests.

#![allow(dead_code, clippy::unwrap_used)]

pub mod cni;

use std::sync::Mutex;

use sandbox_net_endpoints::{
    AttachOptions, Capabilities, ClassifyOptions, Endpoint, EndpointId, Hypervisor,
    HypervisorConfig, HypervisorError, NetDevice, endpoints_from_scan, physical::SysfsPci,
};
use sandbox_net_interworking::{ApplyHooks, InterworkingModel, TapOptions};
use sandbox_net_netns::{Netns, ScanOptions, testing::TestNetns};

/// A stand-in for a VMM (none can run here) without a limiter of its own: it keeps the
/// devices it is given, as a VMM holds its queue descriptors.
pub struct KeepingVmm {
    pub rx: u64,
    pub tx: u64,
    pub devices: Mutex<Vec<NetDevice>>,
}

impl KeepingVmm {
    pub fn new(rx: u64, tx: u64) -> Self {
        Self {
            rx,
            tx,
            devices: Mutex::new(Vec::new()),
        }
    }
}

impl Hypervisor for KeepingVmm {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            multi_queue: true,
            rate_limiter: false,
        }
    }
    fn config(&self) -> HypervisorConfig {
        HypervisorConfig {
            queues: 2,
            disable_vhost_net: true,
            rx_rate_limiter_max_rate: self.rx,
            tx_rate_limiter_max_rate: self.tx,
            ..HypervisorConfig::default()
        }
    }
    async fn add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        self.devices.lock().unwrap().push(device);
        Ok(())
    }
    async fn hot_add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        self.add_device(device).await
    }
    async fn hot_remove_device(&self, endpoint: &EndpointId) -> Result<(), HypervisorError> {
        self.devices
            .lock()
            .unwrap()
            .retain(|d| &d.endpoint != endpoint);
        Ok(())
    }
}

/// Attach options with persistent taps (the VMM reopens them by name), as the CLI uses.
pub fn options(model: InterworkingModel, hooks: ApplyHooks) -> AttachOptions {
    AttachOptions {
        model,
        tap: TapOptions {
            persist: true,
            ..TapOptions::default()
        },
        sysfs: SysfsPci::host(),
        hooks,
        link_group: None,
    }
}

/// The endpoints of `netns` with Kata's rules.
pub async fn endpoints(netns: &Netns) -> Vec<Endpoint> {
    let rtnl = netns.rtnl().await.unwrap();
    let scan = rtnl.scan(&ScanOptions::default()).await.unwrap();
    let classify = ClassifyOptions {
        strict: true,
        vhost_user_dir: std::env::temp_dir(),
    };
    endpoints_from_scan(netns, &scan.interfaces, 0, &classify)
        .await
        .unwrap()
        .0
}

/// Adds a second and third addressed veth (eth1, eth2) inside the pod.
pub fn add_pod_links(pod: &TestNetns, count: usize) {
    for i in 1..=count {
        let dev = format!("eth{i}");
        pod.ip(&[
            "link",
            "add",
            &dev,
            "type",
            "veth",
            "peer",
            "name",
            &format!("peer{i}"),
        ]);
        pod.ip(&["addr", "add", &format!("10.20{i}.0.2/24"), "dev", &dev]);
        pod.ip(&["link", "set", &dev, "up"]);
    }
}

/// Names of links that sandbox-net makes: taps/macvtaps `tap*_kata` and IFBs `sbx*`.
pub fn our_links(pod: &TestNetns) -> Vec<String> {
    let links = pod.ip_json(&["link", "show"]);
    links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.ends_with("_kata") || n.starts_with("sbx"))
        .map(String::from)
        .collect()
}
