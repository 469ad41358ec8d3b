//! Tap creation by ioctl, checked with `ip -j -d link`.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use sandbox_net_netns::{
    NetlinkError, TapConfig, TapError,
    testing::{PodFixture, TestNetns},
};
use sandbox_net_persist::{IfName, scan::TunTapMode};

fn name(n: &str) -> IfName {
    IfName::new(n).unwrap()
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn taps_with_one_and_four_queues_land_in_the_namespace() {
    let ns = TestNetns::new();
    let rtnl = ns.netns().rtnl().await.unwrap();
    for (queues, flags) in [(1usize, 0x5002u16), (4, 0x5102)] {
        let tap_name = format!("tap{queues}_kata");
        // Ids without a passwd entry, so that ip prints them as numbers.
        let config = TapConfig {
            owner: Some(64123),
            group: Some(64124),
            ..TapConfig::new(name(&tap_name), queues)
        };
        let tap = ns.netns().create_tap(&config).await.unwrap();
        assert_eq!(tap.queues.len(), queues);
        assert_eq!(tap.flags, flags, "TUNGETIFF flags");

        let info = &ns.ip_json(&["-d", "link", "show", &tap_name])[0]["linkinfo"];
        assert_eq!(info["info_kind"], "tun");
        let data = &info["info_data"];
        assert_eq!(data["type"], "tap");
        assert_eq!(data["pi"], false);
        assert_eq!(data["vnet_hdr"], true);
        assert_eq!(data["multi_queue"], queues > 1);
        assert_eq!(data["persist"], false);
        assert_eq!(data["user"], 64123);
        assert_eq!(data["group"], 64124);
        if queues > 1 {
            assert_eq!(data["numqueues"], queues);
        }
        // Our own reading agrees.
        let link = rtnl.link_by_name(&tap_name).await.unwrap();
        let tun = link.tuntap.unwrap();
        assert_eq!(
            (
                tun.mode,
                tun.vnet_hdr,
                tun.multi_queue,
                tun.owner,
                tun.group
            ),
            (TunTapMode::Tap, true, queues > 1, Some(64123), Some(64124))
        );
        // Not in this process's own namespace.
        assert!(nix::net::if_::if_nametoindex(tap_name.as_str()).is_err());

        // Closing the queues removes a non-persistent tap. A process forked by a parallel test
        // holds copies of the descriptors until it execs (they are close-on-exec), so the
        // removal may come a moment later.
        drop(tap);
        let mut gone = None;
        for _ in 0..200 {
            match rtnl.link_by_name(&tap_name).await {
                Err(err) => {
                    gone = Some(err);
                    break;
                }
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
        let err = gone
            .unwrap_or_else(|| panic!("{tap_name} still exists 2 s after its queues were closed"));
        assert!(matches!(err, NetlinkError::LinkNotFound { .. }), "{err}");
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_persistent_tap_outlives_its_queues_until_deleted() {
    let ns = TestNetns::new();
    let rtnl = ns.netns().rtnl().await.unwrap();
    let config = TapConfig {
        persist: true,
        ..TapConfig::new(name("tap0_kata"), 2)
    };
    drop(ns.netns().create_tap(&config).await.unwrap());
    let link = rtnl.link_by_name("tap0_kata").await.unwrap();
    assert!(link.tuntap.as_ref().unwrap().persist);
    assert_eq!(
        ns.ip_json(&["-d", "link", "show", "tap0_kata"])[0]["linkinfo"]["info_data"]["persist"],
        true
    );
    rtnl.delete_link(&link).await.unwrap();
    assert!(rtnl.link_by_name("tap0_kata").await.is_err());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn bad_tap_requests_are_refused_and_leave_nothing() {
    let fx = PodFixture::new();
    let netns = fx.pod.netns();
    let before = fx.pod.ip_json(&["-d", "link", "show"]);

    let err = netns
        .create_tap(&TapConfig::new(name("eth0"), 1))
        .await
        .unwrap_err();
    assert!(matches!(err, TapError::NameTaken { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "cannot create tap eth0 in network namespace {}: a link with that name already exists",
            netns.path().display()
        )
    );
    for queues in [0, 257] {
        let err = netns
            .create_tap(&TapConfig::new(name("tap9_kata"), queues))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("tap tap9_kata: {queues} queues requested; 1 to 256 are supported")
        );
        assert_eq!(err.errno(), Some(libc::EINVAL));
    }
    assert_eq!(
        fx.pod.ip_json(&["-d", "link", "show"]),
        before,
        "nothing changed"
    );
    assert_eq!(
        IfName::new("tap1234567890_kata").unwrap_err().to_string(),
        "interface name \"tap1234567890_kata\" is 18 bytes long; the kernel allows at most 15"
    );
}

/// Waits (up to 2 s: a child forked by a parallel test may hold copies of the descriptors
/// until it execs) until `tap` is gone from `ns`.
async fn wait_until_gone(rtnl: &sandbox_net_netns::Rtnl, tap: &str) -> bool {
    for _ in 0..200 {
        if rtnl.link_by_name(tap).await.is_err() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

/// Reopens the persistent tap `tap`'s queues by name, retrying while the kernel answers
/// `EBUSY` (up to 2 s): a child forked by a parallel test may hold a copy of the queue just
/// closed until it execs, and a one-queue tap takes one queue at a time.
async fn reopen_when_free(ns: &TestNetns, tap: &str, queues: usize) -> sandbox_net_netns::Tap {
    for _ in 0..200 {
        match ns.netns().open_tap_queues(&name(tap), queues, true).await {
            Err(e) if e.errno() == Some(libc::EBUSY) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            other => return other.unwrap(),
        }
    }
    panic!("{tap}: still busy after 2 s");
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_persistent_tap_is_reopened_by_name_the_way_it_was_made() {
    let ns = TestNetns::new();
    let rtnl = ns.netns().rtnl().await.unwrap();
    for (tap, queues) in [("tap0_kata", 1usize), ("tap1_kata", 2)] {
        let config = TapConfig {
            persist: true,
            ..TapConfig::new(name(tap), queues)
        };
        drop(ns.netns().create_tap(&config).await.unwrap());
        let reopened = reopen_when_free(&ns, tap, queues).await;
        assert_eq!(reopened.queues.len(), queues);
        // TUNGETIFF also reports IFF_PERSIST.
        let persist = libc::IFF_PERSIST as u16;
        assert_eq!(
            reopened.flags,
            config.flags() | persist,
            "{tap}: TUNGETIFF flags"
        );
        assert_eq!(
            ns.ip_json(&["-d", "link", "show", tap])[0]["linkinfo"]["info_data"]["numqueues"],
            if queues > 1 {
                queues.into()
            } else {
                serde_json::Value::Null
            },
        );
    }
    // A one-queue tap is not IFF_MULTI_QUEUE, so an opener that asks for
    // IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (Firecracker) gets it; the kernel refuses that open
    // of a multi-queue tap with EINVAL.
    assert!(
        ns.netns()
            .open_tap_queues(&name("tap0_kata"), 1, true)
            .await
            .is_ok()
    );
    let err = ns
        .netns()
        .open_tap_queues(&name("tap1_kata"), 1, true)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");

    // Clearing persistence on a queue makes the tap go with its last queue.
    let tap = ns
        .netns()
        .open_tap_queues(&name("tap0_kata"), 1, true)
        .await
        .unwrap();
    sandbox_net_netns::set_tap_persist(std::os::fd::AsFd::as_fd(&tap.queues[0]), false).unwrap();
    assert!(rtnl.link_by_name("tap0_kata").await.is_ok());
    drop(tap);
    assert!(
        wait_until_gone(&rtnl, "tap0_kata").await,
        "tap0_kata is still there"
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn reopening_a_tap_that_is_not_there_creates_nothing() {
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let err = fx
        .pod
        .netns()
        .open_tap_queues(&name("tap7_kata"), 1, true)
        .await
        .unwrap_err();
    assert!(matches!(err, TapError::Missing { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "tap tap7_kata does not exist in network namespace {}",
            fx.pod.netns().path().display()
        )
    );
    sandbox_net_netns::testing::assert_same_snapshot(&before, &fx.pod.snapshot());
}
