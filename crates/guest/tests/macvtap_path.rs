//! macvtap queues opened without `/dev/tap<ifindex>`: two pods whose macvtaps have the same
//! ifindex both carry traffic at the same time.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::{net::IpAddr, time::Duration};

use sandbox_net_guest::{Guest, GuestConfig, packet::Identity, ping::ping};
use sandbox_net_netns::testing::PodFixture;
use sandbox_net_persist::IfName;

/// The ifindex both macvtaps get.
const SHARED_INDEX: u32 = 9000;

/// Moves the pod's addresses off eth0 (as the macvtap model does), puts a macvtap with
/// `SHARED_INDEX` on it and starts a guest on `queues` of its queues.
async fn pod_with_macvtap_guest(queues: usize) -> (PodFixture, Guest) {
    let fx = PodFixture::new();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let eth0 = rtnl.link_by_name("eth0").await.unwrap();
    for prefix in [PodFixture::POD_V4, PodFixture::POD_V6] {
        rtnl.del_address(&eth0, prefix.parse().unwrap())
            .await
            .unwrap();
    }
    let macvtap = rtnl
        .add_macvtap(
            &IfName::new("mvtap0").unwrap(),
            &eth0,
            None,
            Some(SHARED_INDEX),
        )
        .await
        .unwrap();
    assert_eq!(macvtap.index, SHARED_INDEX);
    assert_eq!(macvtap.kind.as_deref(), Some("macvtap"));
    assert_eq!(macvtap.parent_index, Some(eth0.index));
    rtnl.set_link_allmulticast(&macvtap, true).await.unwrap();
    rtnl.set_link_up(&macvtap).await.unwrap();
    let fds = fx
        .pod
        .netns()
        .open_macvtap_queues(&macvtap, queues)
        .await
        .unwrap();
    assert_eq!(fds.len(), queues);
    let identity = Identity {
        mac: macvtap.mac.unwrap(),
        ipv4: vec!["10.200.0.2".parse().unwrap()],
        ipv6: vec!["fd00:200::2".parse().unwrap()],
    };
    let guest = Guest::start(
        GuestConfig {
            identity,
            vnet_hdr: true,
        },
        fds,
    )
    .unwrap();
    (fx, guest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn two_pods_with_the_same_macvtap_ifindex_both_pass_traffic() {
    let (a, guest_a) = pod_with_macvtap_guest(1).await;
    let (b, guest_b) = pod_with_macvtap_guest(4).await;

    let probe = |fx: &PodFixture, dst: &'static str| {
        let host = fx.host.netns().clone();
        async move {
            let dst: IpAddr = dst.parse().unwrap();
            host.run(move || ping(dst, 3, Duration::from_secs(2)))
                .await
                .unwrap()
                .unwrap()
        }
    };
    // All four probes at once.
    let (a4, b4, a6, b6) = tokio::join!(
        probe(&a, "10.200.0.2"),
        probe(&b, "10.200.0.2"),
        probe(&a, "fd00:200::2"),
        probe(&b, "fd00:200::2")
    );
    for (which, report) in [("A v4", &a4), ("B v4", &b4), ("A v6", &a6), ("B v6", &b6)] {
        assert_eq!(
            report.received,
            3,
            "{which}: {report:?}; A {:?}, B {:?}",
            guest_a.stats(),
            guest_b.stats()
        );
    }
    for guest in [&guest_a, &guest_b] {
        let stats = guest.stats();
        assert_eq!(
            (stats.icmp_echo_replies, stats.icmpv6_echo_replies),
            (3, 3),
            "{stats:?}"
        );
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn macvtap_gets_a_random_index_in_kata_range_and_refuses_bad_queue_counts() {
    let fx = PodFixture::new();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let eth0 = rtnl.link_by_name("eth0").await.unwrap();
    let mac = "02:00:00:00:77:01".parse().unwrap();
    let macvtap = rtnl
        .add_macvtap(&IfName::new("mvtap0").unwrap(), &eth0, Some(mac), None)
        .await
        .unwrap();
    assert!(
        (8192..8192 + 0x10000).contains(&macvtap.index),
        "{}",
        macvtap.index
    );
    assert_eq!(macvtap.mac, Some(mac));
    assert_eq!(
        (macvtap.mtu, macvtap.txqueuelen),
        (eth0.mtu, eth0.txqueuelen)
    );
    let seen = &fx.pod.ip_json(&["-d", "link", "show", "mvtap0"])[0];
    assert_eq!(seen["linkinfo"]["info_kind"], "macvtap");
    assert_eq!(seen["linkinfo"]["info_data"]["mode"], "bridge");

    for queues in [0, 257] {
        let err = fx
            .pod
            .netns()
            .open_macvtap_queues(&macvtap, queues)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("macvtap mvtap0: {queues} queues requested; 1 to 256 are supported")
        );
    }
    // The index is taken now: asking for it again is an error naming the macvtap.
    let err = rtnl
        .add_macvtap(
            &IfName::new("mvtap1").unwrap(),
            &eth0,
            None,
            Some(macvtap.index),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("failed to find a free ifindex for macvtap mvtap1 on link eth0"),
        "{err}"
    );
}
