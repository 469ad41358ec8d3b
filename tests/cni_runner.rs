//! The CNI protocol runner against the real reference plugins: ptp, bridge and macvlan with
//! host-local, every chaining version, run in a node namespace of the test.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::cni::{Chain, CniNode, SUBNET};
use sandbox_net::cni::{Attachment, CniCommand, CniVersion, ExecError, PluginExec, code};
use sandbox_net_guest::ping::ping;

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn reference_chains_add_check_del_at_every_version() {
    let subnet: ipnet::IpNet = SUBNET.parse().unwrap();
    for chain in Chain::ALL {
        for version in CniVersion::ALL {
            let fx = CniNode::new(chain, &[]);
            let list = fx.conflist(version.as_str(), &[]);
            let attachment = fx.attachment();
            let result = fx.runner.add(&list, &attachment).await.unwrap_or_else(|e| {
                panic!("{chain:?} {version}: ADD: {}", sandbox_net::error_chain(&e))
            });

            // The result names the pod interface as the kernel has it.
            let eth0 = fx.pod().ip_json(&["link", "show", "eth0"]);
            let mac = eth0[0]["address"].as_str().unwrap();
            let pod_if = result
                .interfaces
                .iter()
                .position(|i| i.name == "eth0")
                .unwrap_or_else(|| panic!("{chain:?} {version}: no eth0 in {result:?}"));
            assert_eq!(result.interfaces[pod_if].mac.as_deref(), Some(mac));
            assert_eq!(
                result.interfaces[pod_if].sandbox.as_deref(),
                Some(fx.pod().netns().path().to_str().unwrap())
            );
            let ip = &result.ips[0];
            assert_eq!(ip.interface, Some(pod_if), "{chain:?} {version}");
            assert!(
                subnet.contains(&ip.address.addr()),
                "{chain:?} {version}: {ip:?}"
            );
            let addrs = fx.pod().ip_json(&["-4", "addr", "show", "dev", "eth0"]);
            assert_eq!(
                addrs[0]["addr_info"][0]["local"].as_str().unwrap(),
                ip.address.addr().to_string()
            );
            assert_eq!(fx.leases(), vec![ip.address.addr().to_string()]);

            // The pod's own kernel answers from the traffic source's side.
            let to = ip.address.addr();
            let report = fx
                .traffic_source()
                .netns()
                .run(move || ping(to, 3, Duration::from_secs(2)))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(report.received, 3, "{chain:?} {version}: ping {to}");

            if version.has_check() {
                fx.runner
                    .check(&list, &attachment, &result)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "{chain:?} {version}: CHECK: {}",
                            sandbox_net::error_chain(&e)
                        )
                    });
            }
            fx.runner
                .del(&list, &attachment, Some(&result))
                .await
                .unwrap();
            assert!(
                fx.pod()
                    .ip_json(&["link", "show"])
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|l| l["ifname"] != "eth0"),
                "{chain:?} {version}: eth0 is gone after DEL"
            );
            assert_eq!(
                fx.leases(),
                Vec::<String>::new(),
                "{chain:?} {version}: lease released"
            );
            // DEL twice is fine.
            fx.runner
                .del(&list, &attachment, Some(&result))
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_1_1_list_speaks_1_0_to_the_reference_plugins() {
    let fx = CniNode::new(Chain::Ptp, &[]);
    let list = fx.conflist("1.1.0", &[]);
    assert_eq!(list.version, CniVersion::V1_1_0);
    assert_eq!(
        fx.runner.plugin_version(&list, 0).await.unwrap(),
        CniVersion::V1_0_0
    );
    // GC and STATUS skip plugins that stop below 1.1.0: nothing to ask, nothing failed.
    fx.runner.status(&list).await.unwrap();
    fx.runner.gc(&list, &[]).await.unwrap();
}

#[tokio::test]
async fn a_plugin_error_comes_back_as_its_cni_error() {
    // host-local with no configuration to allocate from: a CNI error, code and message kept.
    let exec = PluginExec::new(vec![common::cni::REFERENCE_PLUGINS.into()]);
    if exec.find("host-local").is_err() {
        panic!(
            "the CNI reference plugins are not installed in {}",
            common::cni::REFERENCE_PLUGINS
        );
    }
    // A version it does not speak is refused before anything else is looked at.
    let attachment = Attachment {
        container_id: "c1".into(),
        netns: Some("/nonexistent".into()),
        ifname: "eth0".into(),
        args: Vec::new(),
    };
    let request = serde_json::json!({"cniVersion": "9.9.9", "name": "n", "type": "host-local"});
    let err = exec
        .exec("host-local", CniCommand::Add, Some(&attachment), &request)
        .await
        .unwrap_err();
    let cni = err
        .cni_error()
        .unwrap_or_else(|| panic!("no CNI error in {err}"));
    assert_eq!(cni.code, code::INCOMPATIBLE_VERSION, "{cni:?}");
    assert_eq!(cni.msg, "incompatible CNI versions");
    assert!(cni.details.contains("9.9.9"), "{cni:?}");
    let missing = exec.find("no-such-plugin").unwrap_err();
    assert!(matches!(missing, ExecError::NotFound { .. }));
    assert!(
        missing
            .to_string()
            .contains("\"no-such-plugin\" not found in /usr/lib/cni"),
        "{missing}"
    );
}
