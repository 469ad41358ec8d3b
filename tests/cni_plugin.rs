//! `sandbox-net-cni` run by the protocol after the real reference plugins (ptp, bridge,
//! macvlan with host-local), at every version from 0.3.0 to 1.1.0: ADD and its result field
//! by field, traffic through the tap to the user-space guest, CHECK clean and CHECK after a
//! filter is deleted behind its back, DEL back to the pod as it was, DEL again, DEL after the
//! namespace is gone, GC, STATUS (0, and 50 without `/dev/net/tun`); CHECK below 0.4.0 and
//! GC/STATUS below 1.1.0 are error 1, as the versions of the specification have them. Then
//! ADD killed at every step, bad input, VERSION and the tap's owner.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::Write as _,
    net::IpAddr,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::cni::{Chain, CniNode};
use sandbox_net::{
    cni::{
        Attachment, ChainError, CniCommand, CniResult, CniVersion, ExecError, NetworkConfigList,
        code,
    },
    error_chain,
};
use sandbox_net_guest::{Guest, GuestConfig, packet::Identity, ping::ping};
use sandbox_net_netns::testing::{TestNetns, assert_same_snapshot};
use sandbox_net_persist::{IfName, MacAddr};
use serde_json::{Value, json};

const PLUGIN: &str = "sandbox-net-cni";

/// The directory of the built plugin, searched before the reference plugins.
fn plugin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_sandbox-net-cni"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn node(chain: Chain) -> CniNode {
    CniNode::new(chain, &[plugin_dir()])
}

/// Our plugin's configuration in the list, with its state in the test's directory.
fn our_plugin(fx: &CniNode, more: Value) -> Value {
    let mut conf = json!({"type": PLUGIN, "stateDir": fx.dir.path().join("state")});
    if let (Some(c), Some(m)) = (conf.as_object_mut(), more.as_object()) {
        c.extend(m.clone());
    }
    conf
}

fn state_files(fx: &CniNode) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![fx.dir.path().join("state")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                found.push(e.path().display().to_string());
            }
        }
    }
    found
}

fn link_json(ns: &TestNetns, name: &str) -> Value {
    ns.ip_json(&["-d", "link", "show", name])[0].clone()
}

fn has_link(ns: &TestNetns, name: &str) -> bool {
    ns.ip_json(&["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["ifname"] == name)
}

/// Runs our plugin alone (position 1 of the list) and returns its raw JSON answer.
async fn run_ours(
    fx: &CniNode,
    list: &NetworkConfigList,
    command: CniCommand,
    attachment: Option<&Attachment>,
    prev: Option<&CniResult>,
) -> Result<Option<Value>, ExecError> {
    let version = fx.runner.plugin_version(list, 1).await.unwrap();
    let request = list.request(1, version, prev.map(|p| p.to_json(version)));
    fx.runner
        .exec
        .exec(PLUGIN, command, attachment, &request)
        .await
}

/// Opens the queue of a persistent tap by name inside `ns`, as a VMM does.
async fn open_tap(ns: &TestNetns, name: &str) -> Vec<std::os::fd::OwnedFd> {
    let name = IfName::new(name).unwrap();
    ns.netns()
        .open_tap_queues(&name, 1, true)
        .await
        .unwrap()
        .queues
}

/// The pod's own IPv4 address and the guest MAC: traffic to that address must reach the
/// guest (its echo replies come from its MAC).
async fn ping_guest(
    fx: &CniNode,
    queues: Vec<std::os::fd::OwnedFd>,
    mac: MacAddr,
    ip: IpAddr,
) -> u64 {
    let IpAddr::V4(v4) = ip else {
        panic!("IPv4 expected")
    };
    let guest = Guest::start(
        GuestConfig {
            identity: Identity {
                mac,
                ipv4: vec![v4],
                ipv6: vec![],
            },
            vnet_hdr: true,
        },
        queues,
    )
    .unwrap();
    let report = fx
        .traffic_source()
        .netns()
        .run(move || ping(ip, 3, Duration::from_secs(2)))
        .await
        .unwrap()
        .unwrap();
    let stats = guest.stats();
    drop(guest);
    assert_eq!(report.received, 3, "echo replies through the tap");
    stats.icmp_echo_replies
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn after_every_reference_chain_at_every_version() {
    for chain in Chain::ALL {
        for version in CniVersion::ALL {
            let what = format!("{chain:?} {version}");
            let fx = node(chain);
            let list = fx.conflist(version.as_str(), &[our_plugin(&fx, json!({}))]);
            let attachment = fx.attachment();
            let first = fx
                .runner
                .run_plugin(&list, 0, CniCommand::Add, Some(&attachment), None, &[])
                .await
                .unwrap()
                .unwrap();
            let eth0 = link_json(fx.pod(), "eth0");
            let pod_mac = eth0["address"].as_str().unwrap().to_string();
            let pod_mtu = eth0["mtu"].as_u64().unwrap() as u32;
            let before = fx.settled_snapshot();

            // ADD, and its answer as printed.
            let raw = run_ours(&fx, &list, CniCommand::Add, Some(&attachment), Some(&first))
                .await
                .unwrap_or_else(|e| panic!("{what}: ADD: {}", error_chain(&e)))
                .unwrap();
            assert_eq!(
                raw["cniVersion"],
                version.as_str(),
                "{what}: the result is in the input's version"
            );
            let (_, result) = CniResult::from_json("result", &raw).unwrap();
            let n = first.interfaces.len();
            assert_eq!(
                result.interfaces[..n],
                first.interfaces[..],
                "{what}: prevResult's interfaces kept"
            );
            assert_eq!(
                result.interfaces.len(),
                n + 2,
                "{what}: the tap and the VM interface"
            );
            let (tap, vm) = (&result.interfaces[n], &result.interfaces[n + 1]);
            let tap_link = link_json(fx.pod(), "tap0_kata");
            assert_eq!(tap.name, "tap0_kata", "{what}");
            assert_eq!(
                tap.mac.as_deref(),
                tap_link["address"].as_str(),
                "{what}: the tap's MAC"
            );
            assert_eq!(
                tap.sandbox.as_deref(),
                attachment.netns.as_deref().and_then(Path::to_str),
                "{what}"
            );
            assert_eq!(tap_link["linkinfo"]["info_kind"], "tun", "{what}");
            assert_eq!(
                tap_link["mtu"].as_u64(),
                Some(pod_mtu as u64),
                "{what}: tap MTU = pod MTU"
            );
            assert_eq!(
                vm.name, "tap0_kata",
                "{what}: the VM interface is named as its tap"
            );
            assert_eq!(
                vm.mac.as_deref(),
                Some(pod_mac.as_str()),
                "{what}: the guest gets the pod MAC"
            );
            assert_eq!(
                vm.sandbox.as_deref(),
                Some(attachment.container_id.as_str()),
                "{what}"
            );
            let mtu_expected = version.has_1_1_fields().then_some(pod_mtu);
            assert_eq!(
                (tap.mtu, vm.mtu),
                (mtu_expected, mtu_expected),
                "{what}: mtu only from 1.1.0"
            );
            assert_eq!(
                raw["interfaces"][n].get("mtu").is_some(),
                version.has_1_1_fields(),
                "{what}"
            );
            let m = first.ips.len();
            assert_eq!(
                result.ips[..m],
                first.ips[..],
                "{what}: prevResult's IPs kept"
            );
            assert_eq!(
                result.ips.len(),
                m * 2,
                "{what}: each IP copied onto the VM interface"
            );
            for (copy, original) in result.ips[m..].iter().zip(&first.ips) {
                assert_eq!(copy.interface, Some(n + 1), "{what}");
                assert_eq!(
                    (copy.address, copy.gateway),
                    (original.address, original.gateway),
                    "{what}"
                );
            }
            assert_eq!(
                raw["ips"][0].get("version").is_some(),
                version.ips_have_version(),
                "{what}: ips carry version before 1.0.0"
            );
            assert_eq!(result.routes, first.routes, "{what}");
            assert_eq!(result.dns, first.dns, "{what}");

            // Traffic to the pod address reaches the guest through the tap.
            let pod_ip = first.ips[0].address.addr();
            let queues = open_tap(fx.pod(), "tap0_kata").await;
            let replies = ping_guest(&fx, queues, pod_mac.parse().unwrap(), pod_ip).await;
            assert!(
                replies >= 3,
                "{what}: the guest answered {replies} echo requests"
            );

            // The request our plugin gets for CHECK, STATUS and GC (by the binary, to read
            // its exit status and stdout).
            let netns = attachment.netns.as_deref().and_then(Path::to_str).unwrap();
            let check_env = [
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", attachment.container_id.as_str()),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", attachment.ifname.as_str()),
            ];
            let check = list
                .request(1, version, Some(result.to_json(version)))
                .to_string();

            if version.has_check() {
                // CHECK of our plugin alone, then of the whole chain: clean.
                assert_eq!(
                    run_binary(&fx, &check_env, &check),
                    (Value::Null, 0),
                    "{what}: CHECK"
                );
                fx.runner
                    .check(&list, &attachment, &result)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: CHECK: {}", error_chain(&e)));
            } else {
                // CHECK came in 0.4.0: refused, as skel does, and so does the runner.
                assert_not_in_version(
                    &what,
                    &run_binary(&fx, &check_env, &check),
                    "CHECK",
                    version,
                );
                let err = fx
                    .runner
                    .check(&list, &attachment, &result)
                    .await
                    .unwrap_err();
                assert!(
                    matches!(
                        err,
                        ChainError::Unsupported {
                            command: CniCommand::Check,
                            ..
                        }
                    ),
                    "{what}: {err}"
                );
            }
            // A filter deleted behind our back: CHECK names it (from 0.4.0; before, it stays
            // error 1 whatever the kernel holds).
            fx.pod()
                .tc(&["filter", "del", "dev", "tap0_kata", "ingress"]);
            let (out, status) = run_binary(&fx, &check_env, &check);
            if version.has_check() {
                assert_eq!(
                    (status, &out["code"]),
                    (1, &json!(code::DRIFT)),
                    "{what}: {out}"
                );
                let msg = out["msg"].as_str().unwrap();
                assert!(
                    msg.contains("redirect") && msg.contains("tap0_kata"),
                    "{what}: the message names the missing redirect: {msg}"
                );
            } else {
                assert_not_in_version(&what, &(out, status), "CHECK", version);
            }

            // DEL: the pod as before ADD; DEL again.
            run_ours(
                &fx,
                &list,
                CniCommand::Del,
                Some(&attachment),
                Some(&result),
            )
            .await
            .unwrap();
            assert_same_snapshot(&before, &fx.pod().snapshot());
            assert_eq!(
                state_files(&fx),
                Vec::<String>::new(),
                "{what}: no state left"
            );
            run_ours(
                &fx,
                &list,
                CniCommand::Del,
                Some(&attachment),
                Some(&result),
            )
            .await
            .unwrap();
            assert_same_snapshot(&before, &fx.pod().snapshot());

            // GC with an empty valid set removes a leftover attachment.
            let again = run_ours(&fx, &list, CniCommand::Add, Some(&attachment), Some(&first))
                .await
                .unwrap()
                .unwrap();
            let (_, again) = CniResult::from_json("result", &again).unwrap();
            assert!(has_link(fx.pod(), "tap0_kata"));
            let mut gc = list.request(1, version, None);
            gc["cni.dev/valid-attachments"] = json!([]);
            let gc_answer = run_binary(&fx, &[("CNI_COMMAND", "GC")], &gc.to_string());
            let status = list.request(1, version, None).to_string();
            let status_env = [("CNI_COMMAND", "STATUS")];
            if version.has_status_and_gc() {
                assert_eq!(gc_answer, (Value::Null, 0), "{what}: GC");
                assert!(
                    !has_link(fx.pod(), "tap0_kata"),
                    "{what}: GC removed the tap"
                );
                assert_same_snapshot(&before, &fx.pod().snapshot());
                assert_eq!(
                    state_files(&fx),
                    Vec::<String>::new(),
                    "{what}: GC removed the state"
                );

                // STATUS: ready; without /dev/net/tun, 50 naming it.
                assert_eq!(
                    run_binary(&fx, &status_env, &status),
                    (Value::Null, 0),
                    "{what}: STATUS"
                );
                let (out, exit) = run_binary_without_tun(&fx, &status_env, &status);
                assert_eq!(
                    (exit, &out["code"]),
                    (1, &json!(code::NOT_AVAILABLE)),
                    "{what}: {out}"
                );
                assert!(
                    out["msg"]
                        .as_str()
                        .unwrap()
                        .contains("/dev/net/tun cannot be opened"),
                    "{what}: {out}"
                );
            } else {
                // GC and STATUS came in 1.1.0: refused, as skel does; the leftover is kept
                // (DEL removes it), and the runner sends neither.
                assert_not_in_version(&what, &gc_answer, "GC", version);
                assert!(
                    has_link(fx.pod(), "tap0_kata"),
                    "{what}: GC changed nothing"
                );
                assert_ne!(state_files(&fx), Vec::<String>::new(), "{what}");
                let err = fx.runner.gc(&list, &[]).await.unwrap_err();
                assert!(
                    matches!(
                        err,
                        ChainError::Unsupported {
                            command: CniCommand::Gc,
                            ..
                        }
                    ),
                    "{what}: {err}"
                );
                run_ours(&fx, &list, CniCommand::Del, Some(&attachment), Some(&again))
                    .await
                    .unwrap();
                assert_same_snapshot(&before, &fx.pod().snapshot());
                assert_eq!(state_files(&fx), Vec::<String>::new(), "{what}");
                for without_tun in [false, true] {
                    let answer = exec_binary(&fx, &status_env, &status, without_tun);
                    assert_not_in_version(&what, &answer, "STATUS", version);
                }
                let err = fx.runner.status(&list).await.unwrap_err();
                assert!(
                    matches!(
                        err,
                        ChainError::Unsupported {
                            command: CniCommand::Status,
                            ..
                        }
                    ),
                    "{what}: {err}"
                );
            }

            // The whole chain's DEL, then our DEL after the namespace is gone.
            let third = run_ours(&fx, &list, CniCommand::Add, Some(&attachment), Some(&first))
                .await
                .unwrap()
                .unwrap();
            let (_, third) = CniResult::from_json("result", &third).unwrap();
            drop(again);
            let mut fx = fx;
            fx.delete_pod();
            fx.runner
                .del(&list, &attachment, Some(&third))
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{what}: DEL after the namespace is gone: {}",
                        error_chain(&e)
                    )
                });
            assert_eq!(
                state_files(&fx),
                Vec::<String>::new(),
                "{what}: no state left"
            );
            assert_eq!(fx.leases(), Vec::<String>::new(), "{what}: lease released");
            let gone = Attachment {
                netns: None,
                ..attachment.clone()
            };
            fx.runner.del(&list, &gone, Some(&third)).await.unwrap();
        }
    }
}

#[tokio::test]
#[cfg_attr(
    not(all(feature = "root-tests", feature = "fault-injection")),
    ignore = "needs root, a real kernel and the fault points: run with --features root-tests,fault-injection"
)]
async fn add_killed_at_every_step_is_undone_by_del() {
    let mut fx = node(Chain::Ptp);
    // Limits both ways: the HTB/IFB steps are among the kill points too.
    let list = fx.conflist(
        "1.1.0",
        &[our_plugin(
            &fx,
            json!({"rxRate": 20_000_000, "txRate": 30_000_000}),
        )],
    );
    let attachment = fx.attachment();
    let first = fx
        .runner
        .run_plugin(&list, 0, CniCommand::Add, Some(&attachment), None, &[])
        .await
        .unwrap()
        .unwrap();
    let before = fx.settled_snapshot();
    let mut kill = 0;
    loop {
        fx.runner.exec.env = vec![("SANDBOX_NET_CNI_KILL_BEFORE_STEP".into(), kill.to_string())];
        let outcome = run_ours(&fx, &list, CniCommand::Add, Some(&attachment), Some(&first)).await;
        fx.runner.exec.env.clear();
        let killed = match &outcome {
            Err(ExecError::Failed { status, .. }) => {
                assert!(
                    status.contains("SIGKILL") || status.contains("signal: 9"),
                    "{status}"
                );
                true
            }
            Ok(Some(_)) => false,
            other => panic!("kill before step {kill}: {other:?}"),
        };
        run_ours(&fx, &list, CniCommand::Del, Some(&attachment), Some(&first))
            .await
            .unwrap_or_else(|e| panic!("DEL after a kill before step {kill}: {}", error_chain(&e)));
        assert_same_snapshot(&before, &fx.pod().snapshot());
        assert_eq!(
            state_files(&fx),
            Vec::<String>::new(),
            "after a kill before step {kill}"
        );
        if !killed {
            break;
        }
        kill += 1;
    }
    eprintln!(
        "ADD killed before each of its {kill} kernel steps, then DEL: the pod was as before each time"
    );
    assert!(
        kill >= 10,
        "tcfilter with limits both ways has at least 10 steps, got {kill}"
    );
    fx.runner
        .del(&list, &attachment, Some(&first))
        .await
        .unwrap();
}

/// Runs our plugin binary with `env` and `stdin` directly, in the node namespace.
fn run_binary(fx: &CniNode, env: &[(&str, &str)], stdin: &str) -> (Value, i32) {
    exec_binary(fx, env, stdin, false)
}

/// As [`run_binary`], in a private mount namespace whose `/dev/net` is an empty tmpfs: no
/// `/dev/net/tun` for the plugin, the host's left alone.
fn run_binary_without_tun(fx: &CniNode, env: &[(&str, &str)], stdin: &str) -> (Value, i32) {
    exec_binary(fx, env, stdin, true)
}

fn exec_binary(fx: &CniNode, env: &[(&str, &str)], stdin: &str, without_tun: bool) -> (Value, i32) {
    let plugin = fx.runner.exec.find(PLUGIN).unwrap();
    let mut cmd = if without_tun {
        let mut unshare = Command::new("unshare");
        unshare
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount -t tmpfs none /dev/net && exec \"$0\"",
            ])
            .arg(&plugin);
        unshare
    } else {
        Command::new(&plugin)
    };
    for (k, _) in std::env::vars() {
        if k.starts_with("CNI_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    fx.node.netns().enter_before_exec(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {stdout:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    assert_eq!(out.status.signal(), None, "the plugin was killed: {value}");
    (value, out.status.code().unwrap_or(-1))
}

/// Asserts that `answer` (stdout and exit status) is error 1 because `command` does not exist
/// at `version`, as the reference plugins' `skel` answers.
fn assert_not_in_version(what: &str, answer: &(Value, i32), command: &str, version: CniVersion) {
    let (out, status) = answer;
    assert_eq!(*status, 1, "{what}: {command} at {version}: {out}");
    assert_eq!(out["code"], code::INCOMPATIBLE_VERSION, "{what}: {out}");
    assert_eq!(out["cniVersion"], version.as_str(), "{what}: {out}");
    assert_eq!(
        out["msg"],
        format!("config version {version} does not allow {command}"),
        "{what}"
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn bad_input_is_a_cni_error_and_changes_nothing() {
    let fx = node(Chain::Bridge);
    let list = fx.conflist("1.0.0", &[our_plugin(&fx, json!({}))]);
    let attachment = fx.attachment();
    let first = fx
        .runner
        .run_plugin(&list, 0, CniCommand::Add, Some(&attachment), None, &[])
        .await
        .unwrap()
        .unwrap();
    let request = list.request(
        1,
        CniVersion::V1_0_0,
        Some(first.to_json(CniVersion::V1_0_0)),
    );
    let netns = attachment.netns.clone().unwrap();
    let netns = netns.to_str().unwrap();
    let full_env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", attachment.container_id.as_str()),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
    ];
    let before = fx.settled_snapshot();
    let unchanged = |case: &str| {
        assert_same_snapshot(&before, &fx.pod().snapshot());
        assert_eq!(state_files(&fx), Vec::<String>::new(), "{case}: no state");
    };
    let expect = |case: &str, (out, status): (Value, i32), code: u32, msg: &str| {
        assert_eq!(status, 1, "{case}: exit status");
        assert_eq!(out["code"], code, "{case}: {out}");
        assert!(out["cniVersion"].is_string(), "{case}: {out}");
        let text = out["msg"].as_str().unwrap();
        assert!(text.contains(msg), "{case}: {text:?} should name {msg:?}");
    };

    expect(
        "malformed JSON",
        run_binary(&fx, &full_env, "{\"cniVersion\": "),
        code::DECODE,
        "not valid JSON",
    );
    unchanged("malformed JSON");

    let mut unknown = request.clone();
    unknown["cniVersion"] = "0.2.0".into();
    let out = run_binary(&fx, &full_env, &unknown.to_string());
    expect(
        "unknown version",
        out.clone(),
        code::INCOMPATIBLE_VERSION,
        "incompatible CNI versions",
    );
    assert!(
        out.0["details"].as_str().unwrap().contains("0.2.0"),
        "{}",
        out.0
    );
    unchanged("unknown version");

    for missing in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
        let env: Vec<(&str, &str)> = full_env
            .iter()
            .copied()
            .filter(|(k, _)| *k != missing)
            .collect();
        expect(
            missing,
            run_binary(&fx, &env, &request.to_string()),
            code::INVALID_ENVIRONMENT,
            missing,
        );
        unchanged(missing);
    }

    // prevResult names an interface the namespace does not have.
    let mut ghost = first.clone();
    ghost.interfaces.push(sandbox_net::cni::Interface {
        name: "eth9".into(),
        sandbox: Some(netns.into()),
        ..Default::default()
    });
    let ghost_request = list.request(
        1,
        CniVersion::V1_0_0,
        Some(ghost.to_json(CniVersion::V1_0_0)),
    );
    let mut env = full_env;
    env[3] = ("CNI_IFNAME", "eth9");
    expect(
        "eth9 by CNI_IFNAME",
        run_binary(&fx, &env, &ghost_request.to_string()),
        code::INVALID_CONFIG,
        "interface eth9 does not exist in",
    );
    unchanged("eth9 by CNI_IFNAME");
    let mut all = ghost_request.clone();
    all["allInterfaces"] = true.into();
    expect(
        "eth9 in prevResult",
        run_binary(&fx, &full_env, &all.to_string()),
        code::INVALID_CONFIG,
        "interface eth9 does not exist in",
    );
    unchanged("eth9 in prevResult");

    // Another process holds the attachment (its lock): try again later.
    let state = fx
        .dir
        .path()
        .join("state")
        .join(&fx.network)
        .join(&attachment.container_id)
        .join("eth0.json");
    let held = sandbox_net_persist::store::StateStore::open(&state).unwrap();
    expect(
        "locked",
        run_binary(&fx, &full_env, &request.to_string()),
        code::TRY_AGAIN_LATER,
        "locked by another process",
    );
    assert_same_snapshot(&before, &fx.pod().snapshot());
    held.remove().unwrap();
    std::fs::remove_dir(state.parent().unwrap()).unwrap();
    unchanged("locked");

    // A second ADD of the same attachment: refused, and the first one is left as it was.
    let (out, status) = run_binary(&fx, &full_env, &request.to_string());
    assert_eq!(status, 0, "{out}");
    let after_first = fx.settled_snapshot();
    let files = state_files(&fx);
    expect(
        "second ADD",
        run_binary(&fx, &full_env, &request.to_string()),
        code::ATTACHMENT_EXISTS,
        "already exists",
    );
    assert_same_snapshot(&after_first, &fx.pod().snapshot());
    assert_eq!(state_files(&fx), files);
    let (_, result) = CniResult::from_json("result", &out).unwrap();
    fx.runner
        .del(&list, &attachment, Some(&result))
        .await
        .unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn status_is_50_without_dev_net_tun() {
    let fx = node(Chain::Ptp);
    let list = fx.conflist("1.1.0", &[our_plugin(&fx, json!({}))]);
    let request = list.request(1, CniVersion::V1_1_0, None);
    let (out, status) = run_binary(&fx, &[("CNI_COMMAND", "STATUS")], &request.to_string());
    assert_eq!((status, out.clone()), (0, Value::Null), "ready: {out}");
    // A private mount namespace where /dev/net is an empty tmpfs: no /dev/net/tun.
    let (stdout, status) =
        run_binary_without_tun(&fx, &[("CNI_COMMAND", "STATUS")], &request.to_string());
    assert_eq!(status, 1, "{stdout}");
    assert_eq!(stdout["code"], code::NOT_AVAILABLE, "{stdout}");
    assert!(
        stdout["msg"]
            .as_str()
            .unwrap()
            .contains("/dev/net/tun cannot be opened"),
        "{stdout}"
    );
    // The real /dev/net/tun was never touched.
    assert!(Path::new("/dev/net/tun").exists());

    // A state directory that cannot be written: also 50, naming it.
    let file = fx.dir.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let mut blocked = request.clone();
    blocked["stateDir"] = file.join("sub").display().to_string().into();
    let (out, status) = run_binary(&fx, &[("CNI_COMMAND", "STATUS")], &blocked.to_string());
    assert_eq!(status, 1);
    assert_eq!(out["code"], code::NOT_AVAILABLE, "{out}");
    assert!(
        out["msg"].as_str().unwrap().contains("is not writable"),
        "{out}"
    );
}

/// VERSION needs no namespace, environment or root: it answers every request with the five
/// versions and the request's own `cniVersion`, as the specification asks.
#[test]
fn version_lists_every_version_in_the_requests_version() {
    let version = |stdin: &str| -> Value {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sandbox-net-cni"))
            .env("CNI_COMMAND", "VERSION")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "VERSION {stdin}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let all = json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    for v in CniVersion::ALL {
        let stdin = json!({"cniVersion": v.as_str()}).to_string();
        assert_eq!(
            version(&stdin),
            json!({"cniVersion": v.as_str(), "supportedVersions": all}),
            "VERSION asked in {v}"
        );
    }
    // The newest when the request says none; a version it does not speak is still echoed:
    // the runtime compares it with `supportedVersions`.
    assert_eq!(
        version(""),
        json!({"cniVersion": "1.1.0", "supportedVersions": all})
    );
    assert_eq!(
        version(r#"{"cniVersion": "0.2.0"}"#),
        json!({"cniVersion": "0.2.0", "supportedVersions": all})
    );
}

/// The tap's owner from the `tapOwner`/`tapGroup` keys, as the kernel reports it in sysfs
/// inside the namespace; `CNI_ARGS` `TC_REDIRECT_TAP_UID` overrides `tapOwner` alone.
#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn tap_owner_and_group_from_the_config() {
    let fx = node(Chain::Ptp);
    let list = fx.conflist(
        "1.1.0",
        &[our_plugin(&fx, json!({"tapOwner": 1234, "tapGroup": 2345}))],
    );
    let mut attachment = fx.attachment();
    let first = fx
        .runner
        .run_plugin(&list, 0, CniCommand::Add, Some(&attachment), None, &[])
        .await
        .unwrap()
        .unwrap();
    let before = fx.settled_snapshot();
    // `ip netns exec` mounts a sysfs of the namespace: the tun driver's own attributes.
    let owner = |tap: &str| -> (String, String) {
        let read = |attr: &str| {
            let path = format!("/sys/class/net/{tap}/{attr}");
            let out = Command::new("ip")
                .args(["netns", "exec", fx.pod().name(), "cat", &path])
                .output()
                .unwrap();
            assert!(out.status.success(), "{path}: {out:?}");
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        (read("owner"), read("group"))
    };
    for (args, expected) in [
        (vec![], ("1234", "2345")),
        (vec![("TC_REDIRECT_TAP_UID", "4321")], ("4321", "2345")),
    ] {
        attachment.args = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let raw = run_ours(&fx, &list, CniCommand::Add, Some(&attachment), Some(&first))
            .await
            .unwrap_or_else(|e| panic!("ADD {args:?}: {}", error_chain(&e)))
            .unwrap();
        let (_, result) = CniResult::from_json("result", &raw).unwrap();
        let (o, g) = owner("tap0_kata");
        assert_eq!((o.as_str(), g.as_str()), expected, "CNI_ARGS {args:?}");
        run_ours(
            &fx,
            &list,
            CniCommand::Check,
            Some(&attachment),
            Some(&result),
        )
        .await
        .unwrap_or_else(|e| panic!("CHECK {args:?}: {}", error_chain(&e)));
        run_ours(
            &fx,
            &list,
            CniCommand::Del,
            Some(&attachment),
            Some(&result),
        )
        .await
        .unwrap();
        assert_same_snapshot(&before, &fx.settled_snapshot());
    }
    // ptp's DEL with its ADD's arguments (it refuses ones it does not know).
    attachment.args.clear();
    fx.runner
        .del(&list, &attachment, Some(&first))
        .await
        .unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn macvtap_model_after_every_reference_chain() {
    for chain in Chain::ALL {
        let what = format!("{chain:?} macvtap");
        let fx = node(chain);
        let list = fx.conflist(
            "1.1.0",
            &[our_plugin(
                &fx,
                json!({"model": "macvtap", "rxRate": 50_000_000}),
            )],
        );
        let attachment = fx.attachment();
        let first = fx
            .runner
            .run_plugin(&list, 0, CniCommand::Add, Some(&attachment), None, &[])
            .await
            .unwrap()
            .unwrap();
        let pod_mac = link_json(fx.pod(), "eth0")["address"]
            .as_str()
            .unwrap()
            .to_string();
        let before = fx.settled_snapshot();
        let raw = run_ours(&fx, &list, CniCommand::Add, Some(&attachment), Some(&first))
            .await
            .unwrap_or_else(|e| panic!("{what}: ADD: {}", error_chain(&e)))
            .unwrap();
        let (_, result) = CniResult::from_json("result", &raw).unwrap();
        let n = first.interfaces.len();
        let (tap, vm) = (&result.interfaces[n], &result.interfaces[n + 1]);
        let macvtap = link_json(fx.pod(), "tap0_kata");
        assert_eq!(macvtap["linkinfo"]["info_kind"], "macvtap", "{what}");
        assert_eq!(
            tap.mac.as_deref(),
            Some(pod_mac.as_str()),
            "{what}: the macvtap takes the pod MAC"
        );
        assert_eq!(
            vm.mac.as_deref(),
            Some(pod_mac.as_str()),
            "{what}: and the guest too"
        );
        assert_ne!(
            link_json(fx.pod(), "eth0")["address"].as_str(),
            Some(pod_mac.as_str()),
            "{what}"
        );

        // Traffic reaches the guest on the macvtap's queue.
        let link = fx
            .pod()
            .netns()
            .rtnl()
            .await
            .unwrap()
            .link_by_name("tap0_kata")
            .await
            .unwrap();
        let queues = fx
            .pod()
            .netns()
            .open_macvtap_queues(&link, 1)
            .await
            .unwrap();
        let replies = ping_guest(
            &fx,
            queues,
            pod_mac.parse().unwrap(),
            first.ips[0].address.addr(),
        )
        .await;
        assert!(replies >= 3, "{what}");

        run_ours(
            &fx,
            &list,
            CniCommand::Check,
            Some(&attachment),
            Some(&result),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: CHECK: {}", error_chain(&e)));
        // The rate limit's HTB tree deleted behind our back: CHECK names it.
        let qdiscs = fx.pod().tc_json(&["qdisc", "show"]);
        let htb = qdiscs
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["kind"] == "htb")
            .unwrap_or_else(|| panic!("{what}: no HTB tree for the rate: {qdiscs}"));
        let shaped = htb["dev"].as_str().unwrap().to_string();
        fx.pod().tc(&["qdisc", "del", "dev", &shaped, "root"]);
        let err = run_ours(
            &fx,
            &list,
            CniCommand::Check,
            Some(&attachment),
            Some(&result),
        )
        .await
        .unwrap_err();
        let cni = err.cni_error().unwrap_or_else(|| panic!("{what}: {err}"));
        assert_eq!(cni.code, code::DRIFT, "{what}: {cni:?}");
        assert!(
            cni.msg.contains(&format!("shape egress of {shaped}")),
            "{what}: {}",
            cni.msg
        );

        run_ours(
            &fx,
            &list,
            CniCommand::Del,
            Some(&attachment),
            Some(&result),
        )
        .await
        .unwrap();
        assert_same_snapshot(&before, &fx.settled_snapshot());
        fx.runner
            .del(&list, &attachment, Some(&result))
            .await
            .unwrap();
        assert_eq!(fx.leases(), Vec::<String>::new(), "{what}");
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn tc_redirect_tap_args_queues_and_ips_without_an_interface_index() {
    let fx = node(Chain::Bridge);
    let list = fx.conflist("1.1.0", &[our_plugin(&fx, json!({"queues": 2}))]);
    let mut attachment = fx.attachment();
    let mut first = fx
        .runner
        .run_plugin(&list, 0, CniCommand::Add, Some(&attachment), None, &[])
        .await
        .unwrap()
        .unwrap();
    // A path MTU and an advertised MSS on the default route: the result tells the guest.
    let gateway = first.ips[0].gateway.unwrap().to_string();
    fx.pod().ip(&[
        "route", "change", "default", "via", &gateway, "dev", "eth0", "mtu", "1400", "advmss",
        "1360",
    ]);
    let before = fx.settled_snapshot();
    // Some plugins leave `interface` out of their IPs: the kernel says whose they are.
    for ip in &mut first.ips {
        ip.interface = None;
    }
    attachment.args = vec![
        ("IgnoreUnknown".into(), "1".into()),
        ("TC_REDIRECT_TAP_NAME".into(), "vmtap7".into()),
        ("TC_REDIRECT_TAP_UID".into(), "1234".into()),
        ("TC_REDIRECT_TAP_GID".into(), "2345".into()),
    ];
    let raw = run_ours(&fx, &list, CniCommand::Add, Some(&attachment), Some(&first))
        .await
        .unwrap_or_else(|e| panic!("ADD: {}", error_chain(&e)))
        .unwrap();
    let (_, result) = CniResult::from_json("result", &raw).unwrap();
    let n = first.interfaces.len();
    assert_eq!(result.interfaces[n].name, "vmtap7");
    assert_eq!(result.interfaces[n + 1].name, "vmtap7");
    let default = result
        .routes
        .iter()
        .find(|r| r.dst.prefix_len() == 0)
        .unwrap();
    assert_eq!(
        (default.mtu, default.advmss),
        (Some(1400), Some(1360)),
        "{:?}",
        result.routes
    );
    let m = first.ips.len();
    assert_eq!(
        result.ips.len(),
        2 * m,
        "the IPs were matched to eth0 by its addresses"
    );
    assert!(result.ips[m..].iter().all(|ip| ip.interface == Some(n + 1)));
    let tap = link_json(fx.pod(), "vmtap7");
    let info = &tap["linkinfo"]["info_data"];
    assert_eq!(
        (info["user"].as_u64(), info["group"].as_u64()),
        (Some(1234), Some(2345)),
        "{info}"
    );
    assert_eq!(info["multi_queue"], true, "{info}");
    assert_eq!(info["persist"], true, "{info}");
    // Two queues, opened as a VMM does.
    let name = IfName::new("vmtap7").unwrap();
    let tap = fx
        .pod()
        .netns()
        .open_tap_queues(&name, 2, true)
        .await
        .unwrap();
    assert_eq!(tap.queues.len(), 2);
    drop(tap);
    run_ours(
        &fx,
        &list,
        CniCommand::Check,
        Some(&attachment),
        Some(&result),
    )
    .await
    .unwrap_or_else(|e| panic!("CHECK: {}", error_chain(&e)));
    run_ours(
        &fx,
        &list,
        CniCommand::Del,
        Some(&attachment),
        Some(&result),
    )
    .await
    .unwrap();
    assert_same_snapshot(&before, &fx.settled_snapshot());
    fx.runner
        .del(&list, &attachment, Some(&result))
        .await
        .unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn all_interfaces_of_prev_result_are_wired() {
    let fx = node(Chain::Ptp);
    let list = fx.conflist("1.0.0", &[our_plugin(&fx, json!({"allInterfaces": true}))]);
    let attachment = fx.attachment();
    let eth0 = fx
        .runner
        .add(&fx.conflist("1.0.0", &[]), &attachment)
        .await
        .unwrap();
    // A second network of ptp for eth1, in another subnet.
    let second = json!({"cniVersion": "1.0.0", "name": format!("{}-b", fx.network), "plugins": [{
        "type": "ptp", "ipMasq": false,
        "ipam": {"type": "host-local", "dataDir": fx.ipam_dir(), "subnet": "10.78.0.0/24"},
    }]});
    let second = NetworkConfigList::from_value("second", &second).unwrap();
    let eth1_attachment = Attachment {
        ifname: "eth1".into(),
        ..attachment.clone()
    };
    let eth1 = fx.runner.add(&second, &eth1_attachment).await.unwrap();
    // One prevResult naming both, as a chain of two interface plugins would.
    let mut prev = eth0.clone();
    let offset = prev.interfaces.len();
    prev.interfaces.extend(eth1.interfaces.iter().cloned());
    prev.ips.extend(eth1.ips.iter().cloned().map(|mut ip| {
        ip.interface = ip.interface.map(|i| i + offset);
        ip
    }));
    let before = fx.settled_snapshot();
    let raw = run_ours(&fx, &list, CniCommand::Add, Some(&attachment), Some(&prev))
        .await
        .unwrap_or_else(|e| panic!("ADD: {}", error_chain(&e)))
        .unwrap();
    let (_, result) = CniResult::from_json("result", &raw).unwrap();
    let n = prev.interfaces.len();
    let names: Vec<&str> = result.interfaces[n..]
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    assert_eq!(names, ["tap0_kata", "tap0_kata", "tap1_kata", "tap1_kata"]);
    for (k, (pod_if, pod_ip)) in [("eth0", &eth0), ("eth1", &eth1)].into_iter().enumerate() {
        let vm = &result.interfaces[n + 2 * k + 1];
        let mac = link_json(fx.pod(), pod_if)["address"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(vm.mac.as_deref(), Some(mac.as_str()), "{pod_if}");
        let ip = pod_ip.ips[0].address;
        assert!(
            result
                .ips
                .iter()
                .any(|c| c.address == ip && c.interface == Some(n + 2 * k + 1)),
            "{pod_if}'s address on its VM interface"
        );
        let queues = open_tap(fx.pod(), &format!("tap{k}_kata")).await;
        assert!(
            ping_guest(&fx, queues, mac.parse().unwrap(), ip.addr()).await >= 3,
            "{pod_if}"
        );
    }
    run_ours(
        &fx,
        &list,
        CniCommand::Check,
        Some(&attachment),
        Some(&result),
    )
    .await
    .unwrap_or_else(|e| panic!("CHECK: {}", error_chain(&e)));
    run_ours(
        &fx,
        &list,
        CniCommand::Del,
        Some(&attachment),
        Some(&result),
    )
    .await
    .unwrap();
    assert_same_snapshot(&before, &fx.settled_snapshot());
    fx.runner
        .del(&second, &eth1_attachment, Some(&eth1))
        .await
        .unwrap();
    fx.runner
        .del(&fx.conflist("1.0.0", &[]), &attachment, Some(&eth0))
        .await
        .unwrap();
    assert_eq!(fx.leases(), Vec::<String>::new());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn gc_goes_on_past_a_failure_and_reports_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let fx = node(Chain::Bridge);
    let list = fx.conflist("1.1.0", &[our_plugin(&fx, json!({}))]);
    let attachment = fx.attachment();
    let first = fx
        .runner
        .run_plugin(&list, 0, CniCommand::Add, Some(&attachment), None, &[])
        .await
        .unwrap()
        .unwrap();
    let before = fx.settled_snapshot();
    run_ours(&fx, &list, CniCommand::Add, Some(&attachment), Some(&first))
        .await
        .unwrap();
    // A record GC cannot read, of another container, and a valid one that GC must keep.
    let network_dir = fx.dir.path().join("state").join(&fx.network);
    let broken = network_dir.join("ctr-broken").join("eth0.json");
    std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
    std::fs::write(&broken, b"{ not json").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o600)).unwrap();
    let kept = network_dir.join("ctr-kept").join("eth1.json");
    std::fs::create_dir_all(kept.parent().unwrap()).unwrap();
    std::fs::copy(&broken, &kept).unwrap();
    let mut gc = list.request(1, CniVersion::V1_1_0, None);
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-kept", "ifname": "eth1"}]);
    let err = fx
        .runner
        .exec
        .exec(PLUGIN, CniCommand::Gc, None, &gc)
        .await
        .unwrap_err();
    let cni = err.cni_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(cni.code, code::KERNEL, "{cni:?}");
    assert!(
        cni.msg.contains("(ctr-broken, eth0)"),
        "the failure is named: {}",
        cni.msg
    );
    // It went on: the valid leftover of the attachment not in the list is gone anyway.
    assert_same_snapshot(&before, &fx.pod().snapshot());
    assert!(!network_dir.join(&attachment.container_id).exists());
    assert!(kept.exists(), "a valid attachment is kept");
    std::fs::remove_dir_all(&network_dir).unwrap();
    fx.runner
        .del(&list, &attachment, Some(&first))
        .await
        .unwrap();
}
