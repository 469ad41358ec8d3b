//! The `Network` orchestrator: adding all endpoints and removing some of them by id.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use common::{add_pod_links, keeping_vmm, our_links};
use sandbox_net::{NetnsSource, Network, NetworkConfig};
use sandbox_net_interworking::TapOptions;
use sandbox_net_netns::testing::{PodFixture, assert_same_snapshot};

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn removing_three_of_five_endpoints_by_id_removes_exactly_those() {
    let fx = PodFixture::new();
    add_pod_links(&fx.pod, 4);
    let before = fx.pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let config = NetworkConfig {
        tap: TapOptions {
            persist: true,
            ..TapOptions::default()
        },
        ..NetworkConfig::default()
    };
    let mut network = Network::create(
        dir.path().join("state.json"),
        "five",
        NetnsSource::Given(fx.pod.netns().clone()),
        config,
    )
    .unwrap();
    let vmm = keeping_vmm(0, 0);
    let (ids, skipped) = network.add_endpoints(&vmm, None).await.unwrap();
    assert_eq!(ids.len(), 5);
    assert!(skipped.is_empty());
    let mut taps = our_links(&fx.pod);
    taps.sort();
    assert_eq!(
        taps,
        [
            "tap0_kata",
            "tap1_kata",
            "tap2_kata",
            "tap3_kata",
            "tap4_kata"
        ]
    );

    // Remove endpoints 0, 2 and 4 by id.
    let gone = [ids[0].clone(), ids[2].clone(), ids[4].clone()];
    network.remove_endpoints(&vmm, Some(&gone)).await.unwrap();
    let left: Vec<_> = network
        .sandbox()
        .state()
        .endpoints
        .iter()
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(left, [ids[1].clone(), ids[3].clone()]);
    let mut taps = our_links(&fx.pod);
    taps.sort();
    assert_eq!(taps, ["tap1_kata", "tap3_kata"]);
    assert_eq!(network.check().await.unwrap(), []);

    // An id the sandbox does not know, beside one it knows: refused, nothing detached.
    let unknown = sandbox_net::EndpointId::from_bytes([7; 8]);
    let err = network
        .remove_endpoints(&vmm, Some(&[ids[1].clone(), unknown.clone()]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, sandbox_net::SandboxError::UnknownEndpoint { id, .. } if *id == unknown),
        "{err}"
    );
    assert_eq!(network.sandbox().state().endpoints.len(), 2);
    let mut taps = our_links(&fx.pod);
    taps.sort();
    assert_eq!(taps, ["tap1_kata", "tap3_kata"]);

    network.remove_endpoints(&vmm, None).await.unwrap();
    assert!(network.sandbox().state().endpoints.is_empty());
    network.teardown().await.unwrap();
    assert_same_snapshot(&before, &fx.pod.snapshot());
}
