//! Pods made by the real CNI reference plugins (ptp, bridge, macvlan, each with host-local,
//! from `/usr/lib/cni`, run in a node namespace of the test), attached with every
//! interworking model, then given back: by a detach, and by a restore from the state file
//! followed by a teardown (a restarted shim). Each time the pod must end exactly as CNI left
//! it (`ip -j` / `tc -j` snapshot), and traffic must have reached the guest where the model
//! connects it.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    cni::{Chain, CniNode},
    endpoints, options, our_links,
};
use sandbox_net::{Plug, Sandbox};
use sandbox_net_endpoints::testing::{OnDevice, StandInVmm, ping_count};
use sandbox_net_interworking::InterworkingModel;
use sandbox_net_netns::testing::{assert_same_snapshot, snapshot_differences};

const MODELS: [InterworkingModel; 3] = [
    InterworkingModel::TcFilter,
    InterworkingModel::Macvtap,
    InterworkingModel::None,
];

/// How the pod is given back.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// `Sandbox::detach` by the process that attached.
    Detach,
    /// The attaching process gone: `Sandbox::restore` from the state file, then `teardown`.
    RestoreAndTeardown,
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn reference_plugin_pods_round_trip_through_every_model() {
    for chain in Chain::ALL {
        for model in MODELS {
            for ending in [Ending::Detach, Ending::RestoreAndTeardown] {
                round_trip(chain, model, ending).await;
            }
        }
    }
}

async fn round_trip(chain: Chain, model: InterworkingModel, ending: Ending) {
    let case = format!("{chain:?} {model} {ending:?}");
    let fx = CniNode::new(chain, &[]);
    let list = fx.conflist("1.0.0", &[]);
    let attachment = fx.attachment();
    let result = fx
        .runner
        .add(&list, &attachment)
        .await
        .unwrap_or_else(|e| panic!("{case}: ADD: {}", sandbox_net::error_chain(&e)));
    let pod_ip = CniNode::pod_ip(&result);
    let before = fx.settled_snapshot();

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let mut sandbox = Sandbox::create(&state, "cni", fx.pod().netns().clone(), model).unwrap();
    let vmm = StandInVmm::new()
        .with_queues(1)
        .with_guest_addresses(vec![pod_ip], vec![])
        .on_device(OnDevice::RunGuest);
    let opts = options(model);
    let mut ids = Vec::new();
    for endpoint in endpoints(fx.pod().netns()).await {
        let attached = sandbox
            .attach(endpoint, &vmm, &opts, Plug::Cold)
            .await
            .unwrap_or_else(|e| panic!("{case}: attach: {}", sandbox_net_netns::error_chain(&e)));
        ids.push(attached.id);
    }
    assert_eq!(ids.len(), 1, "{case}: one endpoint, eth0");
    assert_eq!(sandbox.check().await.unwrap(), [], "{case}: fresh wiring");

    // Traffic from the node's side (macvlan: the master's peer) to the pod's address.
    let answered = ping_count(fx.traffic_source().netns(), &pod_ip.to_string(), 3).await;
    let from_guest = vmm.guest_stats(&ids[0]).unwrap().icmp_echo_replies;
    match model {
        // The guest has the pod's MAC and address and answers in its place.
        InterworkingModel::TcFilter | InterworkingModel::Macvtap => {
            assert_eq!((answered, from_guest), (3, 3), "{case}: the guest answers")
        }
        // The tap is not connected: the pod's own kernel answers, the guest sees nothing.
        InterworkingModel::None => {
            assert_eq!((answered, from_guest), (3, 0), "{case}: the pod answers")
        }
    }

    match ending {
        Ending::Detach => {
            vmm.shutdown();
            sandbox
                .detach(&ids[0], &vmm, &opts, Plug::Hot)
                .await
                .unwrap_or_else(|e| {
                    panic!("{case}: detach: {}", sandbox_net_netns::error_chain(&e))
                });
            sandbox.forget().await.unwrap();
        }
        Ending::RestoreAndTeardown => {
            // The shim and its VMM go away; the state file stays.
            drop(sandbox);
            drop(vmm);
            let (mut restored, _) = Sandbox::restore(&state).unwrap();
            restored.teardown(&opts).await.unwrap_or_else(|e| {
                panic!("{case}: teardown: {}", sandbox_net_netns::error_chain(&e))
            });
            restored.forget().await.unwrap();
        }
    }
    assert_eq!(our_links(fx.pod()), Vec::<String>::new(), "{case}");
    let after = fx.settled_snapshot();
    let differences = snapshot_differences(&before, &after);
    assert!(
        differences.is_empty(),
        "{case}: not as CNI left it:\n  {}",
        differences.join("\n  ")
    );
    assert_same_snapshot(&before, &after);
    assert!(!state.exists(), "{case}: state file removed");

    // CNI takes its pod back as it made it.
    fx.runner
        .del(&list, &attachment, Some(&result))
        .await
        .unwrap_or_else(|e| panic!("{case}: DEL: {}", sandbox_net::error_chain(&e)));
    assert_eq!(fx.leases(), Vec::<String>::new(), "{case}: lease released");
}
