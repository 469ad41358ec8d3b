//! Giving the pod back exactly what it had: pods whose configuration is not the kernel's
//! default (a ptp plugin's routes, `noprefixroute` addresses, a second routing table,
//! metrics and sources, route MTUs, an `onlink` default route, a user's ingress qdisc and
//! filters, a user's root qdisc), each attached with every model and detached, then compared
//! with the snapshot taken before (`ip -j` / `tc -j`).

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use common::{endpoints, keeping_vmm, options};
use sandbox_net::Sandbox;
use sandbox_net_interworking::InterworkingModel;
use sandbox_net_netns::testing::{UnusualPod, assert_same_snapshot, snapshot_differences};

/// The pods of [`UnusualPod::ALL`] whose addresses and routes are unusual (the qdisc ones are
/// tested with the ownership rules).
const ADDRESS_AND_ROUTE_PODS: [UnusualPod; 6] = [
    UnusualPod::Ptp,
    UnusualPod::NoPrefixRoute,
    UnusualPod::SecondTable,
    UnusualPod::MetricAndSource,
    UnusualPod::RouteMtu,
    UnusualPod::OnlinkDefault,
];

const MODELS: [InterworkingModel; 3] = [
    InterworkingModel::TcFilter,
    InterworkingModel::Macvtap,
    InterworkingModel::None,
];

/// Attaches every endpoint of `pod` with `model` and returns the state file, after the
/// attaching "process" is gone (the sandbox and the VMM's descriptors dropped).
async fn attach_all(
    fx: &sandbox_net_netns::testing::PodFixture,
    model: InterworkingModel,
    state: &std::path::Path,
) {
    let mut sandbox = Sandbox::create(state, "unusual", fx.pod.netns().clone(), model).unwrap();
    let vmm = keeping_vmm(0, 0);
    for endpoint in endpoints(fx.pod.netns()).await {
        sandbox
            .attach(endpoint, &vmm, &options(model), false)
            .await
            .unwrap();
    }
    assert_eq!(sandbox.check().await.unwrap(), [], "{model}: fresh wiring");
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn unusual_pods_are_given_back_exactly_after_a_restore_and_teardown() {
    for pod in ADDRESS_AND_ROUTE_PODS {
        for model in MODELS {
            let fx = pod.build();
            let before = fx.pod.snapshot();
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("state.json");
            attach_all(&fx, model, &state).await;
            let attached = fx.pod.snapshot();
            assert!(
                !snapshot_differences(&before, &attached).is_empty(),
                "{pod} {model}: the attach changed something"
            );
            // A new process: the state file alone.
            let (mut sandbox, _) = Sandbox::restore(&state).unwrap();
            sandbox
                .teardown(&options(model))
                .await
                .unwrap_or_else(|e| panic!("{pod} {model}: {e}"));
            let after = fx.pod.snapshot();
            let differences = snapshot_differences(&before, &after);
            assert!(
                differences.is_empty(),
                "{pod} {model}: not given back exactly:\n  {}",
                differences.join("\n  ")
            );
            sandbox.forget().unwrap();
        }
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn unusual_pods_are_given_back_exactly_after_a_detach() {
    for pod in ADDRESS_AND_ROUTE_PODS {
        for model in MODELS {
            let fx = pod.build();
            let before = fx.pod.snapshot();
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("state.json");
            let mut sandbox =
                Sandbox::create(&state, "unusual", fx.pod.netns().clone(), model).unwrap();
            let vmm = keeping_vmm(0, 0);
            let opts = options(model);
            let mut ids = Vec::new();
            for endpoint in endpoints(fx.pod.netns()).await {
                ids.push(
                    sandbox
                        .attach(endpoint, &vmm, &opts, false)
                        .await
                        .unwrap()
                        .id,
                );
            }
            for id in ids.iter().rev() {
                sandbox
                    .detach(id, &vmm, &opts, true)
                    .await
                    .unwrap_or_else(|e| panic!("{pod} {model}: {e}"));
            }
            drop(vmm);
            assert_same_snapshot(&before, &fx.pod.snapshot());
        }
    }
}
