//! Host-side rate limits placed by endpoints, read back with `tc -j`, and removed on detach.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use sandbox_net_endpoints::testing::{self, StandInVmm};
use sandbox_net_endpoints::{
    AttachOptions, Endpoint, EndpointVariant, Plug, ifb_name, physical::SysfsPci,
};
use sandbox_net_interworking::{InterworkingModel, NetnsHandles, TapOptions, check};
use sandbox_net_netns::testing::{PodFixture, TestNetns, assert_same_snapshot};
use serde_json::Value;

/// A VMM without a limiter of its own, one queue pair, configured with these rates.
fn no_limiter_vmm(rx: u64, tx: u64) -> StandInVmm {
    StandInVmm::new().single_queue().with_limits(rx, tx)
}

fn options(model: InterworkingModel) -> AttachOptions {
    AttachOptions {
        sysfs: SysfsPci::host(),
        ..testing::options(model, TapOptions::default())
    }
}

async fn endpoints(ns: &TestNetns) -> Vec<Endpoint> {
    testing::endpoints(ns.netns()).await
}

/// `(handle, parent, rate, ceil)` of the HTB classes on `dev`, rates in bytes/s.
fn tc_classes(ns: &TestNetns, dev: &str) -> Vec<(String, String, u64, u64)> {
    ns.htb_classes(dev)
        .into_iter()
        .map(|class| {
            let parent = class.parent.unwrap_or_else(|| "root".to_owned());
            (class.handle, parent, class.rate, class.ceil)
        })
        .collect()
}

fn htb_root(ns: &TestNetns, dev: &str) -> Option<Value> {
    let qdiscs = ns.tc_json(&["qdisc", "show", "dev", dev]);
    qdiscs
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["kind"] == "htb")
        .cloned()
}

fn tree(rate: u64) -> Vec<(String, String, u64, u64)> {
    vec![
        ("1:1".into(), "root".into(), rate, rate),
        ("1:2".into(), "1:1".into(), rate, rate),
    ]
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn tcfilter_limits_sit_on_the_tap_and_the_pod_link_at_every_scale() {
    for (bits, bytes) in [
        (10_000_000u64, 1_250_000u64),
        (1_000_000_000, 125_000_000),
        (40_000_000_000, 5_000_000_000),
    ] {
        let fx = PodFixture::new();
        let before = fx.pod.snapshot();
        let rtnl = fx.pod.netns().rtnl().await.unwrap();
        let kernel = NetnsHandles {
            netns: fx.pod.netns(),
            rtnl: &rtnl,
        };
        let mut eps = endpoints(&fx.pod).await;
        let vmm = no_limiter_vmm(bits, bits);
        eps[0]
            .attach(
                kernel,
                &vmm,
                &options(InterworkingModel::TcFilter),
                Plug::Cold,
            )
            .await
            .unwrap();
        for dev in ["tap0_kata", "eth0"] {
            assert_eq!(
                tc_classes(&fx.pod, dev),
                tree(bytes),
                "{dev} at {bits} bit/s"
            );
            let root = htb_root(&fx.pod, dev).unwrap();
            assert_eq!(root["handle"], "1:", "{root}");
            assert_eq!(root["options"]["default"], "0x2", "{root}");
        }
        assert_eq!(check(kernel, &eps[0].steps).await.unwrap(), []);
        vmm.shutdown();
        eps[0]
            .detach(
                kernel,
                &vmm,
                &options(InterworkingModel::TcFilter),
                Plug::Cold,
            )
            .await
            .unwrap();
        assert_same_snapshot(&before, &fx.pod.snapshot());
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn two_endpoints_each_get_their_own_ifb_and_removing_one_keeps_the_other() {
    let fx = PodFixture::new();
    fx.pod.ip(&[
        "link", "add", "eth1", "type", "veth", "peer", "name", "peer1",
    ]);
    fx.pod.ip(&["addr", "add", "10.201.0.2/24", "dev", "eth1"]);
    fx.pod.ip(&["link", "set", "eth1", "up"]);
    let before = fx.pod.snapshot();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let kernel = NetnsHandles {
        netns: fx.pod.netns(),
        rtnl: &rtnl,
    };
    let mut eps = endpoints(&fx.pod).await;
    assert_eq!(eps.len(), 2);
    // The none model shapes tx through an IFB per endpoint (Kata shared one ifb0).
    let vmm = no_limiter_vmm(0, 20_000_000);
    for ep in eps.iter_mut() {
        ep.attach(kernel, &vmm, &options(InterworkingModel::None), Plug::Cold)
            .await
            .unwrap();
    }
    let ifbs: Vec<String> = eps.iter().map(|e| ifb_name(&e.id).to_string()).collect();
    assert_ne!(ifbs[0], ifbs[1]);
    for ifb in &ifbs {
        assert_eq!(tc_classes(&fx.pod, ifb), tree(2_500_000), "{ifb}");
        assert_eq!(
            fx.pod.ip_json(&["-d", "link", "show", ifb])[0]["linkinfo"]["info_kind"],
            "ifb"
        );
    }
    // The VMM lets go of the first endpoint's device only (its tap closes with it).
    let first = eps[0].id.clone();
    vmm.release(&first);
    eps[0]
        .detach(kernel, &vmm, &options(InterworkingModel::None), Plug::Cold)
        .await
        .unwrap();
    let links = fx.pod.ip_json(&["link", "show"]);
    let names: Vec<&str> = links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&ifbs[0].as_str()), "{names:?}");
    assert!(names.contains(&ifbs[1].as_str()), "{names:?}");
    assert_eq!(
        tc_classes(&fx.pod, &ifbs[1]),
        tree(2_500_000),
        "the other endpoint's limiter is intact"
    );
    assert_eq!(check(kernel, &eps[1].steps).await.unwrap(), []);
    eps[1]
        .detach(kernel, &vmm, &options(InterworkingModel::None), Plug::Cold)
        .await
        .unwrap();
    assert_same_snapshot(&before, &fx.pod.snapshot());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn macvtap_limits_use_its_egress_and_an_ifb_and_leave_nothing() {
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let kernel = NetnsHandles {
        netns: fx.pod.netns(),
        rtnl: &rtnl,
    };
    let mut eps = endpoints(&fx.pod).await;
    let vmm = no_limiter_vmm(10_000_000, 100_000_000);
    eps[0]
        .attach(
            kernel,
            &vmm,
            &options(InterworkingModel::Macvtap),
            Plug::Cold,
        )
        .await
        .unwrap();
    let ifb = ifb_name(&eps[0].id).to_string();
    assert_eq!(
        tc_classes(&fx.pod, "tap0_kata"),
        tree(12_500_000),
        "tx on the macvtap's egress"
    );
    assert_eq!(
        tc_classes(&fx.pod, &ifb),
        tree(1_250_000),
        "rx through the IFB"
    );
    vmm.shutdown();
    eps[0]
        .detach(
            kernel,
            &vmm,
            &options(InterworkingModel::Macvtap),
            Plug::Cold,
        )
        .await
        .unwrap();
    assert_same_snapshot(&before, &fx.pod.snapshot());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn bad_limits_are_refused_before_anything_changes() {
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let kernel = NetnsHandles {
        netns: fx.pod.netns(),
        rtnl: &rtnl,
    };
    let mut eps = endpoints(&fx.pod).await;

    let absurd = no_limiter_vmm(u64::MAX, 0);
    let err = eps[0]
        .attach(
            kernel,
            &absurd,
            &options(InterworkingModel::TcFilter),
            Plug::Cold,
        )
        .await
        .unwrap_err();
    let chain = sandbox_net_netns::testing::error_chain(&err);
    assert!(
        chain.contains("invalid rx rate") && chain.contains("too large"),
        "{chain}"
    );
    assert_same_snapshot(&before, &fx.pod.snapshot());

    // A vhost-user endpoint's frames never cross the host's stack.
    let mut vhost_user = Endpoint::new(
        5,
        EndpointVariant::VhostUser {
            socket: "/tmp/vhostuser_10.200.0.2/vhu.sock".into(),
        },
        eps[0].interface.clone(),
    );
    let err = vhost_user
        .attach(
            kernel,
            &no_limiter_vmm(0, 10_000_000),
            &options(InterworkingModel::TcFilter),
            Plug::Cold,
        )
        .await
        .unwrap_err();
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "vhost_user endpoints cannot be rate-limited on the host (rx 0 bit/s, tx 10000000 bit/s requested)"
    );
    assert_same_snapshot(&before, &fx.pod.snapshot());
}
