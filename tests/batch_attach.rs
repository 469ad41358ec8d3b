//! One attach of many endpoints as one batch: prepared at once over one netlink socket, the
//! devices handed over in index order; a real kernel refusal in the middle of the batch takes
//! back exactly what the batch applied.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use common::our_links;
use sandbox_net::{InterworkingModel, NetnsSource, Network, NetworkConfig};
use sandbox_net_endpoints::testing::StandInVmm;
use sandbox_net_interworking::TapOptions;
use sandbox_net_netns::testing::{TestNetns, assert_same_snapshot};

fn config(model: InterworkingModel) -> NetworkConfig {
    NetworkConfig {
        model,
        tap: TapOptions {
            persist: true,
            ..TapOptions::default()
        },
        ..NetworkConfig::default()
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn sixteen_endpoints_in_one_batch_reach_the_vmm_in_index_order_and_go_back_exactly() {
    let (pod, _peers) = TestNetns::pod_with_veths(16);
    let before = pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let mut network = Network::create(
        dir.path().join("state.json"),
        "batch",
        NetnsSource::Given(pod.netns().clone()),
        config(InterworkingModel::TcFilter),
    )
    .unwrap();
    let vmm = StandInVmm::new().with_limits(50_000_000, 20_000_000);
    let (ids, _) = network.add_endpoints(&vmm, None).await.unwrap();
    assert_eq!(ids.len(), 16);
    let expected: Vec<String> = (0..16).map(|i| format!("tap tap{i}_kata x1")).collect();
    assert_eq!(vmm.arrivals(), expected);
    assert!(network.check().await.unwrap().is_empty(), "no drift");
    // Every endpoint is wired: each pod link redirects to its own tap, each tap has an HTB
    // class with the rate into the VM.
    let mut targets = Vec::new();
    for i in 0..16 {
        let filters = pod.tc(&["filter", "show", "dev", &format!("vb{i}"), "ingress"]);
        let target = filters
            .split("Egress Redirect to device ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .unwrap_or_else(|| panic!("vb{i} redirects nowhere: {filters}"));
        targets.push(target.to_string());
        let classes = pod.htb_classes(target);
        assert!(
            classes.iter().any(|c| c.rate * 8 == 50_000_000),
            "{target}: {classes:?}"
        );
    }
    targets.sort();
    let mut taps: Vec<String> = (0..16).map(|i| format!("tap{i}_kata")).collect();
    taps.sort();
    assert_eq!(targets, taps);
    network.teardown().await.unwrap();
    assert!(our_links(&pod).is_empty(), "{:?}", our_links(&pod));
    assert_same_snapshot(&before, &pod.snapshot());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_kernel_refusal_in_the_middle_of_a_batch_takes_back_exactly_what_it_applied() {
    let (pod, peers) = TestNetns::pod_with_veths(16);
    // vb7 is the port of a passthru macvlan (moved to the peer namespace): the kernel
    // refuses any other macvlan or macvtap on it (EINVAL), in the middle of the batch.
    pod.ip(&[
        "link", "add", "link", "vb7", "name", "mvp", "type", "macvlan", "mode", "passthru",
    ]);
    pod.ip(&["link", "set", "mvp", "netns", peers.name()]);
    let before = pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let mut network = Network::create(
        &state,
        "refused",
        NetnsSource::Given(pod.netns().clone()),
        config(InterworkingModel::Macvtap),
    )
    .unwrap();
    let vmm = StandInVmm::new().with_limits(50_000_000, 0);
    let err = network.add_endpoints(&vmm, None).await.unwrap_err();
    let text = sandbox_net_netns::error_chain(&err);
    assert!(
        text.contains("vb7") && text.contains("macvtap"),
        "the error names the link and what was refused: {text}"
    );
    assert!(
        sandbox_net_netns::errno_in_chain(&err) == Some(libc::EINVAL),
        "the kernel's answer: {text}"
    );
    // The fifteen others were applied, some handed over: all taken back.
    assert_eq!(vmm.device_count(), 0);
    assert!(our_links(&pod).is_empty(), "{:?}", our_links(&pod));
    assert_same_snapshot(&before, &pod.snapshot());
    assert!(
        network.sandbox().state().endpoints.is_empty(),
        "nothing left to tear down: {:?}",
        network.sandbox().state().endpoints
    );
    // A new process finds the same in the state file.
    drop(network);
    let restored = Network::restore(&state, NetworkConfig::default()).unwrap();
    assert!(restored.sandbox().state().endpoints.is_empty());
    restored.teardown().await.unwrap();
    assert_same_snapshot(&before, &pod.snapshot());
}
