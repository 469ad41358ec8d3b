//! Link and address primitives, checked with `ip -j`.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use sandbox_net_netns::{NetlinkError, error_chain, kernel_reason, testing::PodFixture};
use sandbox_net_persist::MacAddr;

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn link_changes_are_what_ip_sees() {
    let fx = PodFixture::new();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let eth0 = rtnl.link_by_name("eth0").await.unwrap();
    assert_eq!(rtnl.link_by_index(eth0.index).await.unwrap(), eth0);

    let mac: MacAddr = "02:aa:bb:cc:dd:ee".parse().unwrap();
    rtnl.set_link_mtu(&eth0, 1400).await.unwrap();
    rtnl.set_link_mac(&eth0, mac).await.unwrap();
    rtnl.set_link_down(&eth0).await.unwrap();
    let seen = &fx.pod.ip_json(&["link", "show", "eth0"])[0];
    assert_eq!(seen["mtu"], 1400);
    assert_eq!(seen["address"], "02:aa:bb:cc:dd:ee");
    assert!(!seen["flags"].as_array().unwrap().iter().any(|f| f == "UP"));

    rtnl.set_link_up(&eth0).await.unwrap();
    let seen = &fx.pod.ip_json(&["link", "show", "eth0"])[0];
    assert!(seen["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    let back = rtnl.link_by_name("eth0").await.unwrap();
    assert_eq!((back.mtu, back.mac, back.up), (1400, Some(mac), true));
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn addresses_added_and_deleted_both_families() {
    let fx = PodFixture::new();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();
    let eth0 = rtnl.link_by_name("eth0").await.unwrap();
    let locals = |fx: &PodFixture| -> Vec<String> {
        fx.pod.ip_json(&["addr", "show", "dev", "eth0"])[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    };
    for prefix in ["10.201.0.9/16", "fd00:201::9/80"] {
        rtnl.add_address(&eth0, prefix.parse().unwrap())
            .await
            .unwrap();
        assert!(
            locals(&fx).contains(&prefix.to_string()),
            "{prefix} missing: {:?}",
            locals(&fx)
        );
        let ours: Vec<String> = rtnl
            .addresses_of(&eth0)
            .await
            .unwrap()
            .iter()
            .map(|a| a.prefix.to_string())
            .collect();
        assert!(ours.contains(&prefix.to_string()));
        rtnl.del_address(&eth0, prefix.parse().unwrap())
            .await
            .unwrap();
        assert!(!locals(&fx).contains(&prefix.to_string()));
    }
    // The pod's own addresses are untouched.
    assert!(locals(&fx).contains(&PodFixture::POD_V4.to_string()));
    assert!(locals(&fx).contains(&PodFixture::POD_V6.to_string()));
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn errors_name_the_link_the_namespace_and_keep_the_errno() {
    let fx = PodFixture::new();
    let ns = fx.pod.netns().path().display().to_string();
    let rtnl = fx.pod.netns().rtnl().await.unwrap();

    let err = rtnl.link_by_name("nope0").await.unwrap_err();
    assert!(matches!(err, NetlinkError::LinkNotFound { .. }));
    assert_eq!(
        err.to_string(),
        format!("no link nope0 in network namespace {ns}")
    );
    assert_eq!(err.errno(), Some(libc::ENODEV));
    let err = rtnl.link_by_index(4242).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("no link ifindex 4242 in network namespace {ns}")
    );

    let eth0 = rtnl.link_by_name("eth0").await.unwrap();
    let err = rtnl.set_link_mtu(&eth0, 70_000).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "failed to set MTU of link eth0 (ifindex {}) in network namespace {ns}",
            eth0.index
        )
    );
    assert_eq!(err.errno(), Some(libc::EINVAL));
    // The kernel's reason (its extended ack) comes with the errno, in the error's chain.
    let NetlinkError::Request { source, .. } = &err else {
        panic!("not a refused request: {err:?}");
    };
    let reason = kernel_reason(source).expect("the kernel explains a refused MTU");
    assert!(
        reason
            .to_lowercase()
            .contains("mtu greater than device maximum"),
        "{reason}"
    );
    assert_eq!(
        error_chain(&err),
        format!(
            "{err}: {reason}: {}",
            std::io::Error::from_raw_os_error(libc::EINVAL)
        )
    );

    let err = rtnl
        .del_address(&eth0, "10.9.9.9/24".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "failed to delete address 10.9.9.9/24 on link eth0 (ifindex {}) in network namespace {ns}",
            eth0.index
        )
    );
    assert_eq!(err.errno(), Some(libc::EADDRNOTAVAIL));
    // Nothing changed.
    assert_eq!(rtnl.link_by_name("eth0").await.unwrap(), eth0);
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_device_group_is_deleted_in_one_request_and_only_it() {
    let ns = sandbox_net_netns::testing::TestNetns::new();
    for i in 0..3 {
        ns.ip(&[
            "link",
            "add",
            &format!("a{i}"),
            "type",
            "veth",
            "peer",
            "name",
            &format!("b{i}"),
        ]);
    }
    let rtnl = ns.netns().rtnl().await.unwrap();
    for name in ["a0", "a1"] {
        let link = rtnl.link_by_name(name).await.unwrap();
        rtnl.set_link_group(&link, 4242).await.unwrap();
    }
    assert_eq!(ns.ip_json(&["link", "show", "a0"])[0]["group"], "4242");
    rtnl.delete_link_group(4242).await.unwrap();
    let mut names: Vec<String> = rtnl
        .links()
        .await
        .unwrap()
        .iter()
        .map(|l| l.name.to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["a2", "b2", "lo"],
        "a0 and a1 went, with their peers; a2 stayed"
    );
}
