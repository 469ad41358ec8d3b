//! The three models against the real kernel: wiring, traffic through it, drift detection,
//! rollback at every step and detach back to the exact snapshot.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::{net::IpAddr, time::Duration};

use sandbox_net_guest::{Guest, GuestConfig, packet::Identity, ping::ping};
#[cfg(feature = "fault-injection")]
use sandbox_net_interworking::ApplyHooks;
use sandbox_net_interworking::{
    ApplyOptions, InterworkingModel, NetnsHandles, NetworkPair, Step, TapOptions, apply,
    apply_with, check, random_local_mac, undo,
};
use sandbox_net_netns::{
    ScanOptions,
    testing::{PodFixture, TestNetns, assert_same_snapshot},
};
use sandbox_net_persist::IfName;

const MODELS: [InterworkingModel; 3] = [
    InterworkingModel::TcFilter,
    InterworkingModel::Macvtap,
    InterworkingModel::None,
];

/// The pair for `link` of the pod, from a scan with Kata's rules.
async fn pair_for(
    ns: &TestNetns,
    link: &str,
    index: u32,
    model: InterworkingModel,
    queues: usize,
) -> NetworkPair {
    let rtnl = ns.netns().rtnl().await.unwrap();
    let scan = rtnl.scan(&ScanOptions::default()).await.unwrap();
    let pod = scan
        .interfaces
        .into_iter()
        .find(|i| i.link.name.as_str() == link)
        .unwrap();
    NetworkPair::new(
        index,
        model,
        pod,
        TapOptions {
            queues,
            ..TapOptions::default()
        },
    )
    .unwrap()
}

async fn ping_from_host(fx: &PodFixture, dst: &str) -> u16 {
    let dst: IpAddr = dst.parse().unwrap();
    fx.host
        .netns()
        .run(move || ping(dst, 3, Duration::from_secs(2)))
        .await
        .unwrap()
        .unwrap()
        .received
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn every_model_carries_traffic_and_detaches_to_the_exact_snapshot() {
    for model in MODELS {
        for queues in [1, 4] {
            let fx = PodFixture::new();
            let before = fx.pod.snapshot();
            let rtnl = fx.pod.netns().rtnl().await.unwrap();
            let kernel = NetnsHandles {
                netns: fx.pod.netns(),
                rtnl: &rtnl,
            };
            let pair = pair_for(&fx.pod, "eth0", 0, model, queues).await;
            let steps = pair.plan(random_local_mac());
            let applied = apply(kernel, &steps).await.unwrap();
            assert_eq!(
                check(kernel, &steps).await.unwrap(),
                [],
                "{model}: fresh wiring has no drift"
            );

            let queue_fds = match model {
                InterworkingModel::Macvtap => {
                    assert!(applied.tap.is_none());
                    let macvtap = rtnl.link_by_name(pair.vm_link.as_str()).await.unwrap();
                    assert_eq!(
                        macvtap.mac,
                        Some(pair.guest_mac),
                        "the guest keeps the CNI MAC"
                    );
                    fx.pod
                        .netns()
                        .open_macvtap_queues(&macvtap, queues)
                        .await
                        .unwrap()
                }
                _ => applied.tap.unwrap().queues,
            };
            assert_eq!(queue_fds.len(), queues);
            let identity = Identity {
                mac: pair.guest_mac,
                ipv4: vec!["10.200.0.2".parse().unwrap()],
                ipv6: vec!["fd00:200::2".parse().unwrap()],
            };
            let guest = Guest::start(
                GuestConfig {
                    identity,
                    vnet_hdr: true,
                },
                queue_fds,
            )
            .unwrap();
            let expected = if model == InterworkingModel::None {
                0
            } else {
                3
            };
            for dst in ["10.200.0.2", "fd00:200::2"] {
                if model == InterworkingModel::None {
                    // The pod's own kernel still answers: nothing reaches the guest.
                    assert_eq!(ping_from_host(&fx, dst).await, 3, "{model} {dst}");
                } else {
                    assert_eq!(
                        ping_from_host(&fx, dst).await,
                        3,
                        "{model} {dst}: {:?}",
                        guest.stats()
                    );
                }
            }
            let stats = guest.stats();
            assert_eq!(
                (stats.icmp_echo_replies, stats.icmpv6_echo_replies),
                (expected, expected),
                "{model}: {stats:?}"
            );
            drop(guest.stop());

            undo(kernel, &steps).await.unwrap();
            assert_same_snapshot(&before, &fx.pod.snapshot());
            // Twice is harmless.
            undo(kernel, &steps).await.unwrap();
            assert_same_snapshot(&before, &fx.pod.snapshot());
        }
    }
}

#[tokio::test]
#[cfg(feature = "fault-injection")]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_failure_at_any_step_rolls_back_to_the_snapshot() {
    for model in MODELS {
        let fx = PodFixture::new();
        let before = fx.pod.snapshot();
        let rtnl = fx.pod.netns().rtnl().await.unwrap();
        let kernel = NetnsHandles {
            netns: fx.pod.netns(),
            rtnl: &rtnl,
        };
        let pair = pair_for(&fx.pod, "eth0", 0, model, 2).await;
        let steps = pair.plan(random_local_mac());
        for at in 0..steps.len() {
            let err = apply_with(
                kernel,
                &steps,
                ApplyOptions {
                    hooks: ApplyHooks {
                        fail_before: Some(at),
                        ..ApplyHooks::default()
                    },
                    ..ApplyOptions::default()
                },
            )
            .await
            .unwrap_err();
            assert_eq!(err.position, at + 1);
            assert!(err.rollback.is_empty(), "{model} step {at}: {err}");
            assert_eq!(
                err.to_string(),
                format!(
                    "failed to {} (step {} of {})",
                    steps[at].describe(),
                    at + 1,
                    steps.len()
                )
            );
            assert_same_snapshot(&before, &fx.pod.snapshot());
        }
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_real_kernel_refusal_rolls_back_too() {
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    // Something already holds the tap's name: the first step fails for real.
    fx.pod.ip(&[
        "link",
        "add",
        "tap0_kata",
        "type",
        "veth",
        "peer",
        "name",
        "squatter",
    ]);
    let squatted = fx.pod.snapshot();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let kernel = NetnsHandles {
        netns: fx.pod.netns(),
        rtnl: &rtnl,
    };
    let pair = pair_for(&fx.pod, "eth0", 0, InterworkingModel::TcFilter, 1).await;
    let err = apply(kernel, &pair.plan(random_local_mac()))
        .await
        .unwrap_err();
    assert_eq!(err.position, 1);
    assert_eq!(err.source.errno(), Some(libc::EEXIST));
    assert_same_snapshot(&squatted, &fx.pod.snapshot());
    fx.pod.ip(&["link", "del", "tap0_kata"]);
    assert_same_snapshot(&before, &fx.pod.snapshot());
}

/// The device group of `link`, as `ip -d link` reports it (`default` is group 0).
fn group_of(ns: &TestNetns, link: &str) -> String {
    let out = ns.ip(&["-j", "-d", "link", "show", link]);
    let links: serde_json::Value = serde_json::from_str(&out).unwrap();
    links[0]["group"].as_str().unwrap().to_string()
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_created_link_gets_its_attributes_and_the_sandbox_group() {
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let kernel = NetnsHandles {
        netns: fx.pod.netns(),
        rtnl: &rtnl,
    };
    let pair = pair_for(&fx.pod, "eth0", 0, InterworkingModel::TcFilter, 1).await;
    let mut steps = pair.plan(random_local_mac());
    steps.push(Step::CreateIfb {
        name: IfName::new("sbxifb0").unwrap(),
    });
    let options = ApplyOptions {
        link_group: Some(4242),
        ..ApplyOptions::default()
    };
    // Held until the end: the tap is not persistent and goes with its descriptors.
    let applied = apply_with(kernel, &steps, options).await.unwrap();
    // The tap's MTU, up and group (sent as one request) took; the IFB was created up, in the
    // group.
    let tap = rtnl.link_by_name("tap0_kata").await.unwrap();
    assert_eq!(tap.mtu, 1500);
    assert!(tap.up);
    assert_eq!(group_of(&fx.pod, "tap0_kata"), "4242");
    assert!(rtnl.link_by_name("sbxifb0").await.unwrap().up);
    assert_eq!(group_of(&fx.pod, "sbxifb0"), "4242");
    // The pod's own link is not ours: it stays in the default group.
    assert_eq!(group_of(&fx.pod, "eth0"), "default");
    // One request deletes both.
    rtnl.delete_link_group(4242).await.unwrap();
    drop(applied);
    undo(kernel, &steps).await.unwrap();
    assert_same_snapshot(&before, &fx.pod.snapshot());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_refused_combined_change_takes_the_created_link_back() {
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let kernel = NetnsHandles {
        netns: fx.pod.netns(),
        rtnl: &rtnl,
    };
    let pair = pair_for(&fx.pod, "eth0", 0, InterworkingModel::TcFilter, 1).await;
    let mut steps = pair.plan(random_local_mac());
    // A persistent tap, which outlives its descriptors: only the rollback can delete it.
    let Step::CreateTap { persist, .. } = &mut steps[0] else {
        panic!("a tcfilter plan starts with the tap: {:?}", steps[0]);
    };
    *persist = true;
    // An MTU no tap takes (its maximum is 65521): the tap's combined MTU + up + group request
    // is refused after the tap exists.
    let Step::SetMtu { mtu, .. } = &mut steps[1] else {
        panic!(
            "step 2 of a tcfilter plan sets the tap's MTU: {:?}",
            steps[1]
        );
    };
    *mtu = 70_000;
    let options = ApplyOptions {
        link_group: Some(4243),
        ..ApplyOptions::default()
    };
    let err = apply_with(kernel, &steps, options).await.unwrap_err();
    assert_eq!(err.position, 2, "{err}");
    assert_eq!(err.source.errno(), Some(libc::EINVAL), "{err}");
    assert!(
        err.step.contains("MTU") && err.step.contains("up"),
        "the error names every step of the request: {err}"
    );
    assert!(err.rollback.is_empty(), "{err}");
    assert_same_snapshot(&before, &fx.pod.snapshot());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn check_reports_a_filter_deleted_behind_our_back() {
    let fx = PodFixture::new();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let kernel = NetnsHandles {
        netns: fx.pod.netns(),
        rtnl: &rtnl,
    };
    let pair = pair_for(&fx.pod, "eth0", 0, InterworkingModel::TcFilter, 1).await;
    let steps = pair.plan(random_local_mac());
    let _applied = apply(kernel, &steps).await.unwrap();
    fx.pod.ip(&["link", "set", "tap0_kata", "mtu", "1400"]);
    std::process::Command::new("tc")
        .args([
            "-n",
            fx.pod.name(),
            "filter",
            "del",
            "dev",
            "eth0",
            "ingress",
        ])
        .status()
        .unwrap();
    let drifts: Vec<String> = check(kernel, &steps)
        .await
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        drifts,
        [
            "set MTU of tap0_kata 1500 -> 1500: expected MTU 1500, found MTU 1400".to_string(),
            "redirect eth0 -> tap0_kata: expected a redirect to tap0_kata at priority 49152, found redirects to []"
                .to_string(),
        ]
    );
    undo(kernel, &steps).await.unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn three_endpoints_attach_and_all_detach() {
    let fx = PodFixture::new();
    for (i, dev) in ["eth1", "eth2"].iter().enumerate() {
        fx.pod.ip(&[
            "link",
            "add",
            dev,
            "type",
            "veth",
            "peer",
            "name",
            &format!("peer{i}"),
        ]);
        fx.pod
            .ip(&["addr", "add", &format!("10.201.{i}.2/24"), "dev", dev]);
        fx.pod.ip(&["link", "set", dev, "up"]);
    }
    let before = fx.pod.snapshot();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let kernel = NetnsHandles {
        netns: fx.pod.netns(),
        rtnl: &rtnl,
    };
    let mut all_steps: Vec<Vec<Step>> = Vec::new();
    let mut taps = Vec::new();
    for (index, (dev, model)) in [
        ("eth0", InterworkingModel::TcFilter),
        ("eth1", InterworkingModel::Macvtap),
        ("eth2", InterworkingModel::TcFilter),
    ]
    .into_iter()
    .enumerate()
    {
        let pair = pair_for(&fx.pod, dev, index as u32, model, 1).await;
        let steps = pair.plan(random_local_mac());
        taps.push(apply(kernel, &steps).await.unwrap().tap);
        all_steps.push(steps);
    }
    for name in ["tap0_kata", "tap1_kata", "tap2_kata"] {
        rtnl.link_by_name(name).await.unwrap();
    }
    drop(taps);
    for steps in all_steps.iter().rev() {
        undo(kernel, steps).await.unwrap();
    }
    assert_same_snapshot(&before, &fx.pod.snapshot());
}

#[cfg(feature = "fault-injection")]
#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_redirect_goes_with_our_ingress_qdisc_or_on_its_own_when_the_qdisc_stays() {
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let kernel = NetnsHandles {
        netns: fx.pod.netns(),
        rtnl: &rtnl,
    };
    let redirects = |fx: &PodFixture| fx.pod.tc(&["filter", "show", "dev", "eth0", "ingress"]);
    let pair = pair_for(&fx.pod, "eth0", 0, InterworkingModel::TcFilter, 1).await;
    let steps = pair.plan(random_local_mac());
    let ingress = steps
        .iter()
        .position(|s| matches!(s, Step::AddIngressQdisc { link } if link.as_str() == "eth0"))
        .unwrap();

    // The undo of eth0's ingress qdisc fails: the qdisc stays, and the redirect under it
    // is deleted on its own.
    let applied = apply(kernel, &steps).await.unwrap();
    drop(applied);
    assert!(redirects(&fx).contains("mirred"), "{}", redirects(&fx));
    let options = ApplyOptions {
        hooks: ApplyHooks {
            fail_undo_of: Some(ingress),
            ..ApplyHooks::default()
        },
        ..ApplyOptions::default()
    };
    let err = sandbox_net_interworking::undo_with(kernel, &steps, options)
        .await
        .unwrap_err();
    assert_eq!(err.residue(&steps), [steps[ingress].clone()]);
    let qdiscs = fx.pod.tc(&["qdisc", "show", "dev", "eth0", "ingress"]);
    assert!(qdiscs.contains("qdisc ingress ffff:"), "{qdiscs}");
    assert_eq!(redirects(&fx), "", "the redirect went on its own");

    // A clean undo: the qdisc takes the redirect with it, and the pod is as it was.
    undo(kernel, &err.residue(&steps)).await.unwrap();
    assert_same_snapshot(&before, &fx.pod.snapshot());
}
