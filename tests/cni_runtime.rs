//! The runtime side through the CLI: `sandbox-net up` creates a namespace, runs a real CNI
//! configuration (ptp + host-local) into it and attaches its endpoints; `down` undoes all of
//! it; after a run killed right after the CNI ADD, the next `up` deletes before adding.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    os::unix::process::ExitStatusExt as _,
    process::{Command, Output},
    time::Duration,
};

use common::cni::{Chain, CniNode};
use sandbox_net_guest::{Guest, GuestConfig, packet::Identity, ping::ping};
use sandbox_net_netns::{Netns, testing::unique_netns_name};
use sandbox_net_persist::IfName;
use serde_json::json;

/// Deletes the sandbox's namespace if a failed test left it.
struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Ok(netns) = Netns::open_named(&self.0)
            && let Ok(created) = Netns::open_created(netns.path(), netns.id())
        {
            let _ = created.delete();
        }
    }
}

fn sandbox_net(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sandbox-net"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn node_veths(fx: &CniNode) -> Vec<String> {
    fx.node
        .ip_json(&["link", "show", "type", "veth"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
#[cfg_attr(
    not(all(feature = "root-tests", feature = "fault-injection")),
    ignore = "needs root, a real kernel and the fault points: run with --features root-tests,fault-injection"
)]
async fn up_runs_a_real_conflist_and_down_undoes_it_and_a_crash_is_deleted_before_adding() {
    let fx = CniNode::new(Chain::Ptp, &[]);
    let conflist = fx.dir.path().join("net.conflist");
    let list =
        json!({"cniVersion": "1.0.0", "name": fx.network, "plugins": [fx.interface_plugin()]});
    std::fs::write(&conflist, list.to_string()).unwrap();
    let state = fx.dir.path().join("sandbox/state.json");
    let name = unique_netns_name();
    let _guard = NetnsGuard(name.clone());
    let args = |extra: &[&'static str]| {
        let mut a: Vec<String> = vec![
            "up".into(),
            "--netns".into(),
            name.clone(),
            "--state".into(),
            state.display().to_string(),
            "--conflist".into(),
            conflist.display().to_string(),
            "--cni-path".into(),
            common::cni::REFERENCE_PLUGINS.into(),
            "--node-netns".into(),
            fx.node.name().into(),
            "--json".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run_up = |envs: &[(&str, &str)]| {
        let a = args(&[]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        sandbox_net(&a, envs)
    };

    // up: the namespace exists, ptp's eth0 in it, a tap wired to it, one lease.
    let out = run_up(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let devices: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(devices[0]["guest_name"], "eth0", "{devices}");
    assert_eq!(devices[0]["device"], "tap0_kata", "{devices}");
    let pod = Netns::open_named(&name).unwrap();
    let pod_links = |netns: &str| -> Vec<String> {
        let out = Command::new("ip")
            .args(["-j", "-n", netns, "link", "show"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(pod_links(&name), ["lo", "eth0", "tap0_kata"]);
    let leases = fx.leases();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(
        node_veths(&fx).len(),
        1,
        "ptp's host end in the node namespace"
    );
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(recorded["cni"][0]["ifname"], "eth0");
    assert_eq!(
        recorded["cni"][0]["result"]["ips"][0]["address"],
        format!("{}/24", leases[0])
    );
    assert_eq!(recorded["netns"]["created_by_us"], true);

    // Traffic from the node reaches a guest on the tap.
    let ip: std::net::Ipv4Addr = leases[0].parse().unwrap();
    let mac = devices[0]["mac"].as_str().unwrap().parse().unwrap();
    let tap = pod
        .open_tap_queues(&IfName::new("tap0_kata").unwrap(), 1, true)
        .await
        .unwrap();
    let guest = Guest::start(
        GuestConfig {
            identity: Identity {
                mac,
                ipv4: vec![ip],
                ipv6: vec![],
            },
            vnet_hdr: true,
        },
        tap.queues,
    )
    .unwrap();
    let report = fx
        .node
        .netns()
        .run(move || ping(ip.into(), 3, Duration::from_secs(2)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.received, 3);
    assert!(guest.stats().icmp_echo_replies >= 3, "the guest answered");
    drop(guest);
    drop(pod);

    // down: the endpoints, the CNI network and the namespace are gone.
    let out = sandbox_net(&["down", "--state", state.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        Netns::open_named(&name).is_err(),
        "the namespace is deleted"
    );
    assert_eq!(fx.leases(), Vec::<String>::new(), "DEL released the lease");
    assert_eq!(
        node_veths(&fx),
        Vec::<String>::new(),
        "DEL removed ptp's host end"
    );
    assert!(!state.exists());

    // A run killed right after the CNI ADD leaves the namespace, the lease and the record.
    let out = run_up(&[("SANDBOX_NET_KILL_AFTER_CNI_ADD", "1")]);
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    assert!(state.exists());
    let crashed = fx.leases();
    assert_eq!(crashed.len(), 1, "{crashed:?}");
    assert_eq!(
        pod_links(&name),
        ["lo", "eth0"],
        "killed before the module attached"
    );
    // The next run deletes before adding: one lease (a new one), one host end.
    let out = run_up(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("deleting it before adding"), "{stderr}");
    let after = fx.leases();
    assert_eq!(
        after.len(),
        1,
        "the crashed run's lease was released: {after:?}"
    );
    assert_ne!(
        after, crashed,
        "host-local allocates the next address after a release"
    );
    assert_eq!(node_veths(&fx).len(), 1);
    assert_eq!(pod_links(&name), ["lo", "eth0", "tap0_kata"]);
    let out = sandbox_net(&["down", "--state", state.to_str().unwrap(), "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let down: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(down, json!({"detached": 1, "state": state}));
    assert_eq!(fx.leases(), Vec::<String>::new());
    assert!(Netns::open_named(&name).is_err());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_failed_up_runs_del_and_leaves_nothing() {
    let fx = CniNode::new(Chain::Ptp, &[]);
    let plugin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_sandbox-net-cni"))
        .parent()
        .unwrap();
    let conflist = fx.dir.path().join("net.conflist");
    let ours = json!({"type": "sandbox-net-cni", "model": "bogus", "stateDir": fx.dir.path().join("state")});
    let list = json!({"cniVersion": "1.0.0", "name": fx.network, "plugins": [fx.interface_plugin(), ours]});
    std::fs::write(&conflist, list.to_string()).unwrap();
    let state = fx.dir.path().join("sandbox/state.json");
    let name = unique_netns_name();
    let _guard = NetnsGuard(name.clone());
    let cni_path = format!(
        "{}:{}",
        plugin_dir.display(),
        common::cni::REFERENCE_PLUGINS
    );
    let out = sandbox_net(
        &[
            "up",
            "--netns",
            &name,
            "--state",
            state.to_str().unwrap(),
            "--conflist",
            conflist.to_str().unwrap(),
            "--cni-path",
            &cni_path,
            "--node-netns",
            fx.node.name(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("model: \"bogus\" is not"),
        "the error names the field: {stderr}"
    );
    // ptp's ADD had succeeded: the DEL after the failure undid it, then everything went.
    assert_eq!(fx.leases(), Vec::<String>::new(), "lease released");
    assert_eq!(
        node_veths(&fx),
        Vec::<String>::new(),
        "ptp's host end removed"
    );
    assert!(
        Netns::open_named(&name).is_err(),
        "the namespace is deleted"
    );
    assert!(!state.exists(), "no state file");
}
