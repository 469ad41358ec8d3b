//! Shared pieces of the sandbox-level tests.

#![allow(dead_code, clippy::unwrap_used)]

pub mod cni;
#[cfg(feature = "fault-injection")]
pub mod kill;
pub mod reconcile;

use sandbox_net_endpoints::{
    AttachOptions, Endpoint,
    physical::SysfsPci,
    testing::{self, StandInVmm},
};
use sandbox_net_interworking::InterworkingModel;
use sandbox_net_netns::{Netns, testing::TestNetns};

/// The stand-in VMM of these tests: multi-queue with 2 queue pairs, no limiter of its own (so
/// `rx`/`tx` are applied on the host), keeping the devices as a VMM holds its queues.
pub fn keeping_vmm(rx: u64, tx: u64) -> StandInVmm {
    StandInVmm::new().with_queues(2).with_limits(rx, tx)
}

/// Attach options with persistent taps (the VMM reopens them by name), as the CLI uses, on
/// the host's sysfs.
pub fn options(model: InterworkingModel) -> AttachOptions {
    AttachOptions {
        sysfs: SysfsPci::host(),
        ..testing::options(model, testing::persistent_taps())
    }
}

/// The endpoints of `netns` under Kata's rules, classified strictly.
pub async fn endpoints(netns: &Netns) -> Vec<Endpoint> {
    testing::endpoints(netns).await
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
