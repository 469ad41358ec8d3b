//! The tcfilter data path built by hand from the netns primitives, proven with real frames:
//! the host side of the pod's veth pings the guest through eth0 -> tap and back.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::{net::IpAddr, time::Duration};

use sandbox_net_guest::{Guest, GuestConfig, packet::Identity, ping::ping};
use sandbox_net_netns::{TapConfig, testing::PodFixture};
use sandbox_net_persist::IfName;

const GUEST_MAC: &str = "02:00:00:00:00:99";

/// ICMP echo replies the pod's own kernel has sent (`/proc/net/snmp`, in the pod namespace).
async fn pod_kernel_echo_replies(fx: &PodFixture) -> u64 {
    let snmp = fx
        .pod
        .netns()
        .run(|| std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap())
        .await
        .unwrap();
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "OutEchoReps")
        .unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn ping_reaches_the_guest_through_tc_redirects_with_1_and_4_queues() {
    for queues in [1, 4] {
        let fx = PodFixture::new();
        let rtnl = fx.pod.netns().rtnl().await.unwrap();
        let tap = fx
            .pod
            .netns()
            .create_tap(&TapConfig::new(IfName::new("tap0_kata").unwrap(), queues))
            .await
            .unwrap();
        let eth0 = rtnl.link_by_name("eth0").await.unwrap();
        let tap_link = rtnl.link_by_name("tap0_kata").await.unwrap();
        rtnl.set_link_mtu(&tap_link, eth0.mtu).await.unwrap();
        rtnl.set_link_up(&tap_link).await.unwrap();
        for link in [&eth0, &tap_link] {
            rtnl.add_ingress_qdisc(link).await.unwrap();
        }
        rtnl.add_redirect(&eth0, &tap_link).await.unwrap();
        rtnl.add_redirect(&tap_link, &eth0).await.unwrap();

        let identity = Identity {
            mac: GUEST_MAC.parse().unwrap(),
            ipv4: vec!["10.200.0.2".parse().unwrap()],
            ipv6: vec!["fd00:200::2".parse().unwrap()],
        };
        let guest = Guest::start(
            GuestConfig {
                identity,
                vnet_hdr: true,
            },
            tap.queues,
        )
        .unwrap();
        let before = pod_kernel_echo_replies(&fx).await;

        for dst in ["10.200.0.2", "fd00:200::2"] {
            let dst: IpAddr = dst.parse().unwrap();
            let report = fx
                .host
                .netns()
                .run(move || ping(dst, 3, Duration::from_secs(2)))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                report.received,
                3,
                "{queues} queue(s), ping {dst}: {report:?}, guest {:?}",
                guest.stats()
            );
        }
        let stats = guest.stats();
        assert_eq!(stats.icmp_echo_replies, 3, "{stats:?}");
        assert_eq!(stats.icmpv6_echo_replies, 3, "{stats:?}");
        assert!(
            stats.arp_replies >= 1 && stats.neighbour_adverts >= 1,
            "{stats:?}"
        );
        // The answers came from the guest: the host resolved the pod's addresses to the
        // guest's MAC, and the pod's kernel sent no echo reply.
        let neigh = fx
            .host
            .ip_json(&["neigh", "show", "dev", PodFixture::HOST_IF]);
        for entry in neigh.as_array().unwrap() {
            if entry["dst"] == "10.200.0.2" || entry["dst"] == "fd00:200::2" {
                assert_eq!(entry["lladdr"], GUEST_MAC, "{neigh}");
            }
        }
        assert_eq!(pod_kernel_echo_replies(&fx).await, before);

        drop(guest.stop());
        rtnl.del_ingress_qdisc(&eth0).await.unwrap();
    }
}
