//! The HTB tree against the real kernel, each test in its own namespace with a veth pair,
//! checked with `tc` (an independent oracle) and with [`read_htb_tree`].
//!
//! `tc -j class show` of the installed iproute2 6.1 prints plain text for HTB classes, not
//! JSON, so classes are read from `tc -d class show`'s text; qdiscs from `tc -j`.
#![allow(clippy::unwrap_used)]

use netlink_packet_core::{DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, Nla};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcMessage, TcOption},
};
use sandbox_net_netns::{
    Rtnl,
    testing::{HtbClass, TestNetns},
};
use sandbox_net_persist::scan::Link;
use sandbox_net_ratelimit::{
    CLASS_1_1, CLASS_1_2, HtbRate, LimitError, PschedClock, ROOT_HANDLE, RateError, TC_H_ROOT,
    TCA_HTB_CEIL64, TCA_HTB_RATE64, add_htb_tree, class_message, del_htb_tree, read_htb_tree,
    root_qdisc_message,
};

/// A test namespace holding `veth0` (peer `veth1`), a handle in it, and `veth0`.
async fn veth_netns() -> (TestNetns, Rtnl, Link) {
    let ns = TestNetns::new();
    ns.ip(&[
        "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
    ]);
    let rtnl = ns.netns().rtnl().await.unwrap();
    let link = rtnl.link_by_name("veth0").await.unwrap();
    (ns, rtnl, link)
}

fn tc_classes(ns: &TestNetns) -> Vec<HtbClass> {
    ns.htb_classes("veth0")
}

fn tc_qdiscs(ns: &TestNetns) -> serde_json::Value {
    ns.tc_json(&["qdisc", "show", "dev", "veth0"])
}

fn htb_qdiscs(ns: &TestNetns) -> Vec<serde_json::Value> {
    tc_qdiscs(ns)
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["kind"] == "htb")
        .cloned()
        .collect()
}

/// Adds the tree at `bits`, checks it with tc and with `read_htb_tree`, deletes it, checks
/// that nothing is left, and that a second delete says `ENOENT`.
async fn tree_round_trip(bits: u64, bytes: u64) {
    let (ns, rtnl, link) = veth_netns().await;
    let clock = PschedClock::read().unwrap();
    let rate = HtbRate::from_bits(bits).unwrap();
    assert_eq!(rate.bytes_per_second(), bytes);
    add_htb_tree(&rtnl, &link, rate, &clock).await.unwrap();

    // The oracle: tc.
    let qdiscs = htb_qdiscs(&ns);
    assert_eq!(qdiscs.len(), 1, "{qdiscs:?}");
    assert_eq!(qdiscs[0]["handle"], "1:");
    assert_eq!(qdiscs[0]["root"], true);
    assert_eq!(qdiscs[0]["options"]["default"], "0x2");
    assert_eq!(qdiscs[0]["options"]["r2q"], 10);
    assert_eq!(
        tc_classes(&ns),
        [
            HtbClass {
                handle: "1:1".into(),
                parent: None,
                rate: bytes,
                ceil: bytes,
                // Not a leaf any more: tc prints no quantum.
                quantum: None,
            },
            HtbClass {
                handle: "1:2".into(),
                parent: Some("1:1".into()),
                rate: bytes,
                ceil: bytes,
                // The explicit quantum, not the kernel's automatic one.
                quantum: Some(u64::from(rate.quantum())),
            },
        ]
    );

    // Our own reader.
    let tree = read_htb_tree(&rtnl, &link).await.unwrap().unwrap();
    assert_eq!(tree.default_class, 2);
    assert_eq!(tree.classes.len(), 2, "{tree:?}");
    let burst = clock.burst_ticks(bytes, 1600);
    for (class, (handle, parent)) in tree
        .classes
        .iter()
        .zip([(CLASS_1_1, TC_H_ROOT), (CLASS_1_2, CLASS_1_1)])
    {
        assert_eq!((class.handle, class.parent), (handle, parent));
        assert_eq!((class.rate, class.ceil), (bytes, bytes));
        assert_eq!((class.buffer, class.cbuffer), (burst, burst));
        assert_eq!(class.quantum, rate.quantum());
    }

    del_htb_tree(&rtnl, &link).await.unwrap();
    assert!(htb_qdiscs(&ns).is_empty(), "{}", tc_qdiscs(&ns));
    assert!(tc_classes(&ns).is_empty());
    assert_eq!(read_htb_tree(&rtnl, &link).await.unwrap(), None);

    let again = del_htb_tree(&rtnl, &link).await.unwrap_err();
    assert_eq!(again.errno(), Some(libc::ENOENT), "{again}");
    assert!(matches!(again, LimitError::NoTree { .. }));
    assert_eq!(
        again.to_string(),
        format!(
            "no htb root qdisc 1: on link veth0 (ifindex {}) in network namespace {}",
            link.index,
            rtnl.netns().display()
        )
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn tree_at_10_mbit() {
    tree_round_trip(10_000_000, 1_250_000).await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn tree_at_1_gbit() {
    tree_round_trip(1_000_000_000, 125_000_000).await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn tree_at_40_gbit() {
    tree_round_trip(40_000_000_000, 5_000_000_000).await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn adding_twice_is_eexist_and_keeps_the_first_tree() {
    let (ns, rtnl, link) = veth_netns().await;
    let clock = PschedClock::read().unwrap();
    let first = HtbRate::from_bits(10_000_000).unwrap();
    add_htb_tree(&rtnl, &link, first, &clock).await.unwrap();
    let before = tc_classes(&ns);

    let second = HtbRate::from_bits(1_000_000_000).unwrap();
    let err = add_htb_tree(&rtnl, &link, second, &clock)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "failed to add htb root qdisc 1: on link veth0 (ifindex {}) in network namespace {}",
            link.index,
            rtnl.netns().display()
        )),
        "{message}"
    );
    // The kernel explains itself in an extended ack.
    let ext_ack = err.ext_ack().unwrap_or_default();
    assert!(ext_ack.contains("Exclusivity flag on"), "{message}");

    assert_eq!(tc_classes(&ns), before);
    let tree = read_htb_tree(&rtnl, &link).await.unwrap().unwrap();
    assert_eq!(tree.classes.len(), 2);
    assert!(tree.classes.iter().all(|c| c.rate == 1_250_000));
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn absurd_rate_is_refused_before_anything_is_sent() {
    let (ns, rtnl, link) = veth_netns().await;
    let clock = PschedClock::read().unwrap();
    let before = tc_qdiscs(&ns);
    let attempt = async {
        let rate = HtbRate::from_bits(u64::MAX)?;
        add_htb_tree(&rtnl, &link, rate, &clock).await
    };
    let err = attempt.await.unwrap_err();
    assert!(
        matches!(
            err,
            LimitError::Rate(RateError::TooLarge { bits: u64::MAX, .. })
        ),
        "{err}"
    );
    assert_eq!(tc_qdiscs(&ns), before);
    assert_eq!(read_htb_tree(&rtnl, &link).await.unwrap(), None);
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn missing_link_is_named_with_its_errno() {
    let (_ns, rtnl, mut link) = veth_netns().await;
    link.index = 9999;
    let rate = HtbRate::from_bits(10_000_000).unwrap();
    let err = add_htb_tree(&rtnl, &link, rate, &PschedClock::DEFAULT)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
    assert!(err.to_string().contains("(ifindex 9999)"), "{err}");
    let err = del_htb_tree(&rtnl, &link).await.unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
}

/// Sends a hand-built request and returns the kernel's errno (0 for the ACK).
async fn send_raw(rtnl: &Rtnl, message: RouteNetlinkMessage) -> i32 {
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    match rtnl.exchange(message, flags).await {
        Ok(_) => 0,
        Err(e) => sandbox_net_netns::errno_in_chain(&e).expect("a refusal carries its errno"),
    }
}

/// A class message at an arbitrary 64-bit byte rate: our 200 Gbit/s message with its
/// RATE64/CEIL64 replaced.
fn class_at(index: u32, handle: u32, bytes: u64) -> TcMessage {
    let max = HtbRate::from_bits(sandbox_net_ratelimit::MAX_BITS_PER_SECOND).unwrap();
    let mut msg = class_message(index, handle, ROOT_HANDLE, max, &PschedClock::DEFAULT);
    for attribute in &mut msg.attributes {
        if let TcAttribute::Options(options) = attribute {
            for option in options.iter_mut() {
                if let TcOption::Other(nla) = option
                    && [TCA_HTB_RATE64, TCA_HTB_CEIL64].contains(&nla.kind())
                {
                    *nla = DefaultNla::new(nla.kind(), bytes.to_ne_bytes().to_vec());
                }
            }
        }
    }
    msg
}

/// The evidence behind `MAX_BITS_PER_SECOND`: the kernel takes every 64-bit rate, up to
/// `u64::MAX` bytes/s, and reports it back unchanged, so our maximum is a choice (see its
/// documentation), not a kernel limit.
#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn kernel_accepts_rates_far_beyond_our_maximum() {
    let (_ns, rtnl, link) = veth_netns().await;
    let root = RouteNetlinkMessage::NewQueueDiscipline(root_qdisc_message(link.index));
    assert_eq!(send_raw(&rtnl, root).await, 0);
    let rates = [
        25_000_000_001,
        1 << 40,
        1 << 56,
        1 << 63,
        u64::MAX / 8,
        u64::MAX,
    ];
    for (minor, bytes) in (10u32..).zip(rates) {
        let msg = class_at(link.index, 0x0001_0000 | minor, bytes);
        let errno = send_raw(&rtnl, RouteNetlinkMessage::NewTrafficClass(msg)).await;
        assert_eq!(errno, 0, "the kernel refused {bytes} bytes/s");
    }
    let tree = read_htb_tree(&rtnl, &link).await.unwrap().unwrap();
    let read: Vec<u64> = tree.classes.iter().map(|c| c.rate).collect();
    assert_eq!(read, rates);
    assert!(tree.classes.iter().all(|c| c.rate == c.ceil));
    del_htb_tree(&rtnl, &link).await.unwrap();
}
