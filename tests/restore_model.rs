//! A restored `Network` keeps the interworking model its state records.
//!
//! In a file of its own: the state lock is an flock, which a process forked by a concurrent
//! test of the same binary holds until it execs, so a restore right after a drop could find
//! it still taken.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use common::{add_pod_links, keeping_vmm};
use sandbox_net::{IfName, InterworkingModel, NetnsSource, Network, NetworkConfig};
use sandbox_net_interworking::TapOptions;
use sandbox_net_netns::testing::{PodFixture, assert_same_snapshot};

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_restored_network_uses_the_recorded_model_not_the_callers() {
    let fx = PodFixture::new();
    add_pod_links(&fx.pod, 1);
    let before = fx.pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let config = NetworkConfig {
        model: InterworkingModel::Macvtap,
        tap: TapOptions {
            persist: true,
            ..TapOptions::default()
        },
        ..NetworkConfig::default()
    };
    let vmm = keeping_vmm(0, 0);
    let mut network = Network::create(
        &state,
        "recorded-model",
        NetnsSource::Given(fx.pod.netns().clone()),
        config,
    )
    .unwrap();
    let eth0 = IfName::new("eth0").unwrap();
    network.hot_add(&vmm, Some(&[eth0])).await.unwrap();
    drop(network);

    // A restarted shim passes its defaults (tcfilter); the sandbox stays a macvtap one, and
    // an interface hot-added now is wired the same way.
    let mut restored = Network::restore(&state, NetworkConfig::default()).unwrap();
    assert_eq!(restored.config().model, InterworkingModel::Macvtap);
    let eth1 = IfName::new("eth1").unwrap();
    restored.hot_add(&vmm, Some(&[eth1])).await.unwrap();
    let models: Vec<_> = restored
        .sandbox()
        .state()
        .endpoints
        .iter()
        .map(|e| e.model)
        .collect();
    assert_eq!(
        models,
        [
            Some(InterworkingModel::Macvtap),
            Some(InterworkingModel::Macvtap)
        ]
    );
    vmm.shutdown();
    restored.teardown().await.unwrap();
    assert_same_snapshot(&before, &fx.pod.snapshot());
}
