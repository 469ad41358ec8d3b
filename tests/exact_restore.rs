//! Giving the pod back exactly what it had: pods whose configuration is not the kernel's
//! default (a ptp plugin's routes, `noprefixroute` addresses, a second routing table,
//! metrics and sources, route MTUs, an `onlink` default route, a user's ingress qdisc and
//! filters, a user's root qdisc), each attached with every model and detached, then compared
//! with the snapshot taken before (`ip -j` / `tc -j`).

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use common::{endpoints, keeping_vmm, options, our_links};
use sandbox_net::{Plug, Sandbox};
use sandbox_net_endpoints::testing::{GUEST_IPV4, OnDevice, StandInVmm, ping_count};
use sandbox_net_interworking::{InterworkingModel, Step};
use sandbox_net_netns::{
    error_chain,
    testing::{PodFixture, UnusualPod, assert_same_snapshot, snapshot_differences},
};
use sandbox_net_persist::IfName;

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
            .attach(endpoint, &vmm, &options(model), Plug::Cold)
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
    for pod in UnusualPod::ALL {
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
            sandbox.forget().await.unwrap();
        }
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn unusual_pods_are_given_back_exactly_after_a_detach() {
    for pod in UnusualPod::ALL {
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
                        .attach(endpoint, &vmm, &opts, Plug::Cold)
                        .await
                        .unwrap()
                        .id,
                );
            }
            for id in ids.iter().rev() {
                sandbox
                    .detach(id, &vmm, &opts, Plug::Hot)
                    .await
                    .unwrap_or_else(|e| panic!("{pod} {model}: {e}"));
            }
            drop(vmm);
            assert_same_snapshot(&before, &fx.pod.snapshot());
        }
    }
}

fn name(n: &str) -> IfName {
    IfName::new(n).unwrap()
}

/// The ingress filters of `dev` as `tc -j` shows them, without sandbox-net's (which carry its
/// cookie): what a user sees of their own.
fn users_ingress_filters(fx: &PodFixture, dev: &str) -> Vec<serde_json::Value> {
    let filters = fx.pod.tc_json(&["filter", "show", "dev", dev, "ingress"]);
    let filters = filters.as_array().unwrap();
    // A u32 filter dumps as three messages; only the last carries the action and cookie.
    let ours: Vec<&serde_json::Value> = filters
        .iter()
        .filter(|f| f.to_string().contains("73616e64626f782d6e6574"))
        .map(|f| &f["pref"])
        .collect();
    filters
        .iter()
        .filter(|f| !ours.contains(&&f["pref"]))
        .cloned()
        .collect()
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_users_ingress_qdisc_is_shared_and_only_our_filter_is_removed() {
    let fx = UnusualPod::IngressWithFilter.build();
    let before = fx.pod.snapshot();
    let theirs = users_ingress_filters(&fx, "eth0");
    assert_eq!(
        theirs.len(),
        6,
        "two u32 filters, dumped as 3 messages each: {theirs:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let model = InterworkingModel::TcFilter;
    let mut sandbox = Sandbox::create(&state, "shared", fx.pod.netns().clone(), model).unwrap();
    // A guest on the tap, and limits both ways: HTB on the tap and on eth0's egress.
    let vmm = StandInVmm::new()
        .with_queues(1)
        .with_limits(20_000_000, 30_000_000)
        .on_device(OnDevice::RunGuest);
    let opts = options(model);
    let endpoint = endpoints(fx.pod.netns()).await.remove(0);
    let id = sandbox
        .attach(endpoint, &vmm, &opts, Plug::Cold)
        .await
        .unwrap()
        .id;

    // Recorded: the qdisc was found, not made; our redirect in front of the user's first
    // filter (priority 10), at 9.
    let steps = sandbox.state().endpoints[0].steps.clone();
    assert!(
        steps.contains(&Step::UseIngressQdisc {
            link: name("eth0"),
            kind: "ingress".into()
        }),
        "{steps:#?}"
    );
    assert!(!steps.contains(&Step::AddIngressQdisc { link: name("eth0") }));
    assert!(steps.contains(&Step::AddRedirect {
        from: name("eth0"),
        to: name("tap0_kata"),
        priority: 9
    }));
    // The user's filters are untouched, and the guest gets the pod's traffic: a frame meets
    // our redirect before the user's match-all at 49152, which would keep it from the guest.
    assert_eq!(users_ingress_filters(&fx, "eth0"), theirs);
    assert_eq!(
        ping_count(fx.host.netns(), &GUEST_IPV4.to_string(), 3).await,
        3
    );
    // The guest answered, not the pod's own stack (eth0 keeps the address in this model).
    let answered = vmm.guest_stats(&id).unwrap().icmp_echo_replies;
    assert_eq!(answered, 3, "echo replies from the guest");
    assert_eq!(sandbox.check().await.unwrap(), []);

    // Our filter taken away by hand: a drift, of ours only; the detach then finishes.
    fx.pod
        .tc(&["filter", "del", "dev", "eth0", "ingress", "prio", "9"]);
    let drifts: Vec<String> = sandbox
        .check()
        .await
        .unwrap()
        .iter()
        .map(|(_, d)| d.to_string())
        .collect();
    assert_eq!(
        drifts,
        [
            "redirect eth0 -> tap0_kata at priority 9: expected a redirect to tap0_kata at priority 9, found redirects to []"
        ]
    );
    vmm.shutdown();
    sandbox.detach(&id, &vmm, &opts, Plug::Hot).await.unwrap();
    assert_same_snapshot(&before, &fx.pod.snapshot());

    // Again, detached whole, with the tap's and eth0's HTB: the user's qdisc and filters
    // stay exactly as they were.
    let vmm = keeping_vmm(20_000_000, 30_000_000);
    let endpoint = endpoints(fx.pod.netns()).await.remove(0);
    let id = sandbox
        .attach(endpoint, &vmm, &opts, Plug::Cold)
        .await
        .unwrap()
        .id;
    assert_eq!(sandbox.check().await.unwrap(), []);
    sandbox.detach(&id, &vmm, &opts, Plug::Hot).await.unwrap();
    assert_same_snapshot(&before, &fx.pod.snapshot());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn someone_elses_root_qdisc_or_a_full_ingress_is_refused_before_anything_changes() {
    let tbf = "qdisc add dev eth0 root handle 8001: tbf rate 1mbit burst 32kbit latency 400ms";
    let full_ingress = "qdisc add dev eth0 clsact\n\
         filter add dev eth0 ingress prio 1 protocol ip u32 match ip src 192.0.2.0/24 flowid 1:1";
    let cases = [
        (
            None,
            "link eth0 has a root qdisc htb 1: that sandbox-net did not make: shaping its egress \
             would replace it, so nothing was changed (remove that qdisc, or let the VMM limit the rate)",
        ),
        (
            Some(tbf),
            "link eth0 has a root qdisc tbf 8001: that sandbox-net did not make: shaping its \
             egress would replace it, so nothing was changed (remove that qdisc, or let the VMM limit the rate)",
        ),
        (
            Some(full_ingress),
            "link eth0 has a filter at priority 1 at its ingress (qdisc clsact ffff:): no \
             priority is left in front of it for the redirect to tap0_kata, so nothing was changed",
        ),
    ];
    let model = InterworkingModel::TcFilter;
    for (script, expected) in cases {
        let fx = match script {
            None => UnusualPod::RootQdisc.build(),
            Some(script) => {
                let fx = PodFixture::new();
                for line in script.lines() {
                    fx.pod.tc(&line.split_whitespace().collect::<Vec<_>>());
                }
                fx
            }
        };
        let before = fx.pod.snapshot();
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let mut sandbox =
            Sandbox::create(&state, "refused", fx.pod.netns().clone(), model).unwrap();
        // A tx limit: HTB on eth0's egress in the tcfilter model.
        let vmm = keeping_vmm(0, 30_000_000);
        let endpoint = endpoints(fx.pod.netns()).await.remove(0);
        let err = sandbox
            .attach(endpoint, &vmm, &options(model), Plug::Cold)
            .await
            .unwrap_err();
        let chain = error_chain(&err);
        assert!(chain.contains(expected), "{chain}");
        assert_same_snapshot(&before, &fx.pod.snapshot());
        assert_eq!(our_links(&fx.pod), Vec::<String>::new());
        assert!(
            sandbox.state().endpoints.iter().all(|e| e.steps.is_empty()),
            "nothing recorded: {:?}",
            sandbox.state().endpoints
        );
        drop(sandbox);
        let (saved, _) = Sandbox::restore(&state).unwrap();
        assert!(saved.state().endpoints.iter().all(|e| e.steps.is_empty()));
        saved.forget().await.unwrap();
    }
}
