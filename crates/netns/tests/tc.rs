//! Ingress qdiscs and mirred redirects, checked with `tc -j`.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use sandbox_net_netns::{
    IngressHook, LinkQdiscs, Qdisc, REDIRECT_PRIORITY, Redirect, TapConfig,
    testing::{PodFixture, UnusualPod},
};
use sandbox_net_persist::IfName;

/// `dev -> (pref, protocol, action, direction, to_dev, control)` for each u32 filter with a
/// mirred action on the device's ingress, as `tc -j filter show` prints it.
fn tc_redirects(fx: &PodFixture, dev: &str) -> Vec<String> {
    let filters = fx.pod.tc_json(&["filter", "show", "dev", dev, "ingress"]);
    let mut out = Vec::new();
    for f in filters.as_array().unwrap() {
        let Some(actions) = f["options"]["actions"].as_array() else {
            continue;
        };
        for a in actions {
            out.push(format!(
                "pref={} proto={} kind={} {} {} to={} {}",
                f["pref"],
                f["protocol"].as_str().unwrap_or_default(),
                a["kind"].as_str().unwrap_or_default(),
                a["direction"].as_str().unwrap_or_default(),
                a["mirred_action"].as_str().unwrap_or_default(),
                a["to_dev"].as_str().unwrap_or_default(),
                a["control_action"]["type"].as_str().unwrap_or_default(),
            ));
        }
    }
    out
}

fn has_ingress(fx: &PodFixture, dev: &str) -> bool {
    let qdiscs = fx.pod.tc_json(&["qdisc", "show", "dev", dev]);
    qdiscs
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["kind"] == "ingress")
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn redirects_both_ways_between_veth_and_tap() {
    let fx = PodFixture::new();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let _tap = fx
        .pod
        .netns()
        .create_tap(&TapConfig::new(IfName::new("tap0_kata").unwrap(), 1))
        .await
        .unwrap();
    let eth0 = rtnl.link_by_name("eth0").await.unwrap();
    let tap = rtnl.link_by_name("tap0_kata").await.unwrap();

    for link in [&eth0, &tap] {
        assert!(!rtnl.has_ingress_qdisc(link).await.unwrap());
        rtnl.add_ingress_qdisc(link).await.unwrap();
        assert!(rtnl.has_ingress_qdisc(link).await.unwrap());
    }
    assert!(has_ingress(&fx, "eth0") && has_ingress(&fx, "tap0_kata"));
    rtnl.add_redirect(&eth0, &tap).await.unwrap();
    rtnl.add_redirect(&tap, &eth0).await.unwrap();

    assert_eq!(
        tc_redirects(&fx, "eth0"),
        ["pref=49152 proto=all kind=mirred egress redirect to=tap0_kata stolen"]
    );
    assert_eq!(
        tc_redirects(&fx, "tap0_kata"),
        ["pref=49152 proto=all kind=mirred egress redirect to=eth0 stolen"]
    );
    let expected = |target: u32| Redirect {
        priority: REDIRECT_PRIORITY,
        protocol: libc::ETH_P_ALL as u16,
        target_index: target,
        egress_redirect: true,
        ours: true,
    };
    assert_eq!(
        rtnl.ingress_redirects(&eth0).await.unwrap(),
        [expected(tap.index)]
    );
    assert_eq!(
        rtnl.ingress_redirects(&tap).await.unwrap(),
        [expected(eth0.index)]
    );

    // Undo on the veth: filters, then the qdisc.
    rtnl.del_ingress_filters(&eth0).await.unwrap();
    assert!(tc_redirects(&fx, "eth0").is_empty());
    assert!(rtnl.ingress_redirects(&eth0).await.unwrap().is_empty());
    rtnl.del_ingress_qdisc(&eth0).await.unwrap();
    assert!(!has_ingress(&fx, "eth0"));
    assert!(!rtnl.has_ingress_qdisc(&eth0).await.unwrap());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn ingress_errors_keep_the_errno_and_name_the_link() {
    let fx = PodFixture::new();
    let ns = fx.pod.netns().path().display().to_string();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let eth0 = rtnl.link_by_name("eth0").await.unwrap();

    let err = rtnl.del_ingress_qdisc(&eth0).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "failed to delete ingress qdisc of link eth0 (ifindex {}) in network namespace {ns}",
            eth0.index
        )
    );
    // Already gone: the kernel says ENOENT, which teardown treats as done.
    assert_eq!(err.errno(), Some(libc::ENOENT));

    rtnl.add_ingress_qdisc(&eth0).await.unwrap();
    let err = rtnl.add_ingress_qdisc(&eth0).await.unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST));
    assert_eq!(
        err.to_string(),
        format!(
            "failed to add ingress qdisc to link eth0 (ifindex {}) in network namespace {ns}",
            eth0.index
        )
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_users_qdiscs_are_reported_and_our_filter_goes_and_comes_alone() {
    // A veth as the kernel leaves it: noqueue root (handle 0:, the default), no ingress.
    let fx = PodFixture::new();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let eth0 = rtnl.link_by_name("eth0").await.unwrap();
    assert_eq!(
        rtnl.link_qdiscs(&eth0).await.unwrap(),
        LinkQdiscs::default()
    );

    // A user's ingress qdisc with two filters (one at Kata's priority), and a root HTB.
    let fx = UnusualPod::IngressWithFilter.build();
    fx.pod.tc(&[
        "qdisc", "add", "dev", "eth0", "root", "handle", "8001:", "tbf", "rate", "1mbit", "burst",
        "32kbit", "latency", "400ms",
    ]);
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let eth0 = rtnl.link_by_name("eth0").await.unwrap();
    let found = rtnl.link_qdiscs(&eth0).await.unwrap();
    assert_eq!(
        found,
        LinkQdiscs {
            ingress: Some(IngressHook {
                qdisc: Qdisc {
                    kind: "ingress".into(),
                    handle: 0xFFFF_0000
                },
                priorities: vec![10, 49152],
            }),
            root: Some(Qdisc {
                kind: "tbf".into(),
                handle: 0x8001_0000
            }),
        }
    );
    assert_eq!(found.root.unwrap().to_string(), "tbf 8001:");
    let before = fx
        .pod
        .tc_json(&["filter", "show", "dev", "eth0", "ingress"]);

    // Ours at priority 9, marked with the cookie; the user's filters are not redirects.
    let _tap = fx
        .pod
        .netns()
        .create_tap(&TapConfig::new(IfName::new("tap0_kata").unwrap(), 1))
        .await
        .unwrap();
    let tap = rtnl.link_by_name("tap0_kata").await.unwrap();
    rtnl.add_redirect_at(&eth0, &tap, 9).await.unwrap();
    assert_eq!(
        rtnl.ingress_redirects(&eth0).await.unwrap(),
        [Redirect {
            priority: 9,
            protocol: libc::ETH_P_ALL as u16,
            target_index: tap.index,
            egress_redirect: true,
            ours: true,
        }]
    );
    assert_eq!(
        tc_redirects(&fx, "eth0"),
        ["pref=9 proto=all kind=mirred egress redirect to=tap0_kata stolen"]
    );
    let shown = fx
        .pod
        .tc_json(&["filter", "show", "dev", "eth0", "ingress"]);
    assert!(
        shown.to_string().contains("73616e64626f782d6e6574"),
        "the cookie shows: {shown}"
    );
    assert_eq!(
        rtnl.link_qdiscs(&eth0)
            .await
            .unwrap()
            .ingress
            .unwrap()
            .priorities,
        [9, 10, 49152]
    );

    // Deleting ours leaves theirs exactly as they were.
    rtnl.del_filter_at(&eth0, 9).await.unwrap();
    assert_eq!(
        fx.pod
            .tc_json(&["filter", "show", "dev", "eth0", "ingress"]),
        before
    );
    let err = rtnl.del_filter_at(&eth0, 9).await.unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");

    // Under a clsact too (its ingress hook is the same parent).
    let fx = PodFixture::new();
    fx.pod.tc(&["qdisc", "add", "dev", "eth0", "clsact"]);
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let eth0 = rtnl.link_by_name("eth0").await.unwrap();
    let lo = rtnl.link_by_name("lo").await.unwrap();
    assert_eq!(
        rtnl.link_qdiscs(&eth0)
            .await
            .unwrap()
            .ingress
            .unwrap()
            .qdisc
            .kind,
        "clsact"
    );
    assert!(!rtnl.has_ingress_qdisc(&eth0).await.unwrap());
    rtnl.add_redirect_at(&eth0, &lo, 7).await.unwrap();
    assert_eq!(
        tc_redirects(&fx, "eth0"),
        ["pref=7 proto=all kind=mirred egress redirect to=lo stolen"]
    );
}
