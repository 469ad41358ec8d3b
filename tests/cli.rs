//! The `sandbox-net` binary, run as a process against namespaces made by the test harness.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use sandbox_net_netns::{
    ScanOptions,
    testing::{PodFixture, assert_same_snapshot},
};
use sandbox_net_persist::scan::NamespaceScan;

fn sandbox_net(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sandbox-net"))
        .args(args)
        .output()
        .expect("the sandbox-net binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn scan_json_is_the_library_scan() {
    let fx = PodFixture::new();
    let out = sandbox_net(&["scan", "--netns", fx.pod.name(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let from_cli: NamespaceScan = serde_json::from_slice(&out.stdout).unwrap();
    let from_lib = fx
        .pod
        .netns()
        .rtnl()
        .await
        .unwrap()
        .scan(&ScanOptions::default())
        .await
        .unwrap();
    assert_eq!(from_cli, from_lib);
    assert_eq!(from_cli.interfaces.len(), 1);

    // A path works as well as a name.
    let by_path = sandbox_net(&[
        "scan",
        "--netns",
        fx.pod.netns().path().to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        serde_json::from_slice::<NamespaceScan>(&by_path.stdout).unwrap(),
        from_lib
    );
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn scan_table_shows_the_pod() {
    let fx = PodFixture::new();
    let out = sandbox_net(&["scan", "--netns", fx.pod.name()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let eth0 = text
        .lines()
        .find(|l| l.starts_with("eth0 "))
        .unwrap_or_else(|| panic!("no eth0 row:\n{text}"));
    for expected in [
        "veth",
        "1500",
        PodFixture::POD_MAC,
        "up",
        PodFixture::POD_V4,
        PodFixture::POD_V6,
    ] {
        assert!(eth0.contains(expected), "{expected} missing from {eth0:?}");
    }
    assert!(
        text.contains("  default via 10.200.0.1 dev eth0 proto boot\n"),
        "{text}"
    );
    assert!(
        text.contains("  fd00:200::1 lladdr 02:00:0a:c8:00:01 dev eth0 permanent\n"),
        "{text}"
    );
    assert!(text.contains("  lo (loopback)\n"), "{text}");

    let all = String::from_utf8(sandbox_net(&["scan", "--netns", fx.pod.name(), "--all"]).stdout)
        .unwrap();
    assert!(
        all.lines().any(|l| l.starts_with("lo ")),
        "--all keeps lo:\n{all}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn scan_errors_name_the_namespace_and_exit_non_zero() {
    sandbox_net_netns::testing::require_root();
    let dir = std::env::temp_dir();
    let cases = [
        (
            "sbxt-no-such-ns",
            "error: network namespace /run/netns/sbxt-no-such-ns does not exist".to_string(),
        ),
        (
            dir.to_str().unwrap(),
            format!(
                "error: {} is not a network namespace: it is a directory",
                dir.display()
            ),
        ),
        (
            "/proc/self/ns/mnt",
            "error: /proc/self/ns/mnt is not a network namespace: it is a mount namespace".into(),
        ),
    ];
    for (arg, expected) in cases {
        let out = sandbox_net(&["scan", "--netns", arg]);
        assert_eq!(out.status.code(), Some(1), "{arg}");
        assert_eq!(stderr(&out), expected);
        assert!(out.stdout.is_empty());
    }
    let usage = sandbox_net(&["scan"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(stderr(&usage).contains("--netns"), "{}", stderr(&usage));
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn attach_check_detach_round_trip_through_the_cli() {
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let state_arg = state.to_str().unwrap();
    let out = sandbox_net(&[
        "attach",
        "--netns",
        fx.pod.name(),
        "--state",
        state_arg,
        "--queues",
        "2",
        "--rx-rate",
        "10000000",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let devices: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(devices[0]["guest_name"], "eth0");
    assert_eq!(devices[0]["backend"], "tap");
    assert_eq!(devices[0]["device"], "tap0_kata");
    assert_eq!(devices[0]["mac"], PodFixture::POD_MAC);
    assert_eq!(devices[0]["queues"], 2);
    // The tap outlives the CLI, for a VMM that opens it by name.
    let tap = &fx.pod.ip_json(&["-d", "link", "show", "tap0_kata"])[0]["linkinfo"]["info_data"];
    assert_eq!(tap["persist"], true);

    let check = sandbox_net(&["check", "--state", state_arg]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    fx.pod.tc(&["filter", "del", "dev", "eth0", "ingress"]);
    let check = sandbox_net(&["check", "--state", state_arg]);
    assert_eq!(check.status.code(), Some(3), "drift exits 3");
    let text = String::from_utf8(check.stdout).unwrap();
    assert!(
        text.contains("redirect eth0 -> tap0_kata: expected a redirect to tap0_kata"),
        "{text}"
    );

    let out = sandbox_net(&["detach", "--state", state_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!state.exists());
    sandbox_net_netns::testing::assert_same_snapshot(&before, &fx.pod.snapshot());
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn check_and_detach_print_json() {
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let state_arg = state.to_str().unwrap();
    let out = sandbox_net(&[
        "attach",
        "--netns",
        fx.pod.name(),
        "--state",
        state_arg,
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let devices: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let endpoint = devices[0]["endpoint"].as_str().unwrap().to_string();

    let check = sandbox_net(&["check", "--state", state_arg, "--json"]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(
        report,
        serde_json::json!({"state": state_arg, "endpoints": 1, "drifts": []})
    );

    // A drift keeps exit status 3 and is reported with the fields of `reconcile --json`.
    fx.pod.tc(&["filter", "del", "dev", "eth0", "ingress"]);
    let check = sandbox_net(&["check", "--state", state_arg, "--json"]);
    assert_eq!(check.status.code(), Some(3), "{}", stderr(&check));
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(report["state"], state_arg);
    assert_eq!(report["endpoints"], 1);
    let drifts = report["drifts"].as_array().unwrap();
    assert_eq!(drifts.len(), 1, "{report}");
    assert_eq!(drifts[0]["endpoint"], endpoint.as_str());
    assert_eq!(drifts[0]["step"], "redirect eth0 -> tap0_kata");
    assert_eq!(
        drifts[0]["expected"],
        "a redirect to tap0_kata at priority 49152"
    );
    assert_eq!(drifts[0]["found"], "redirects to []", "{report}");

    let out = sandbox_net(&["detach", "--state", state_arg, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let detached: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        detached,
        serde_json::json!({"detached": 1, "state": state_arg})
    );
    assert!(!state.exists());
    assert_same_snapshot(&before, &fx.pod.snapshot());
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn attach_refuses_bad_input_and_leaves_nothing() {
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let state_arg = state.to_str().unwrap();
    let usage = sandbox_net(&[
        "attach",
        "--netns",
        fx.pod.name(),
        "--state",
        state_arg,
        "--model",
        "bridge",
    ]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(
        stderr(&usage)
            .contains("unknown interworking model \"bridge\": expected tcfilter, macvtap or none"),
        "{}",
        stderr(&usage)
    );
    let out = sandbox_net(&[
        "attach",
        "--netns",
        fx.pod.name(),
        "--state",
        state_arg,
        "--queues",
        "300",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("endpoint eth0: 300 queues requested; 1 to 256 are supported"),
        "{}",
        stderr(&out)
    );
    assert!(!state.exists(), "a failed attach leaves no state file");
    let out = sandbox_net(&[
        "attach",
        "--netns",
        fx.pod.name(),
        "--state",
        state_arg,
        "--tx-rate",
        "18446744073709551615",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("invalid tx rate"), "{}", stderr(&out));
    sandbox_net_netns::testing::assert_same_snapshot(&before, &fx.pod.snapshot());
    let out = sandbox_net(&["detach", "--state", state_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!("error: state file {state_arg} does not exist")
    );
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn the_demo_runs_and_reports_real_figures() {
    sandbox_net_netns::testing::require_root();
    let out = sandbox_net(&["demo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("  ping         5/5 echo replies from the guest"),
        "{text}"
    );
    // The limits as the kernel reported them while attached (rates measured against time
    // belong in the shaping bench): 50 Mbit/s both ways, rate = ceil, on Kata's tree.
    for link in ["tap0_kata (rx)", "eth0 (tx)"] {
        let line = format!(
            "  htb          {link} default 1:2, 1:1 rate 50000000 ceil 50000000 bit/s, 1:2 rate 50000000 ceil 50000000 bit/s"
        );
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    assert!(text.contains("  shaped rx    "), "{text}");
    assert!(text.contains("leftovers    none"), "{text}");
    // CI installs the CNI reference plugins: the pod is theirs, and the report says so.
    assert!(
        text.contains("  pod          built by the CNI reference plugins ptp + host-local"),
        "{text}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn the_demo_reports_as_json() {
    sandbox_net_netns::testing::require_root();
    let out = sandbox_net(&["demo", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ping_sent"], 5, "{report}");
    assert_eq!(report["ping_received"], 5, "{report}");
    assert!(report["rtt_ms"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(report["rate_bits"], 50_000_000);
    assert!(report["shaped_rx_bits"].as_f64().unwrap() > 0.0, "{report}");
    let attached = report["attached"].as_array().unwrap();
    assert_eq!(attached.len(), 1, "{report}");
    assert!(
        attached[0]
            .as_str()
            .unwrap()
            .starts_with("eth0 -> tap0_kata (tcfilter, 1 queue), guest MAC "),
        "{report}"
    );
    assert_eq!(
        report["htb"],
        serde_json::json!([
            "tap0_kata (rx) default 1:2, 1:1 rate 50000000 ceil 50000000 bit/s, 1:2 rate 50000000 ceil 50000000 bit/s",
            "eth0 (tx) default 1:2, 1:1 rate 50000000 ceil 50000000 bit/s, 1:2 rate 50000000 ceil 50000000 bit/s",
        ])
    );
    for key in [
        "pod_namespace",
        "host_namespace",
        "pod_builder",
        "detach_process",
    ] {
        assert!(report[key].is_string(), "{key} in {report}");
    }
    assert!(
        report["pod_builder"]
            .as_str()
            .unwrap()
            .starts_with("built by the CNI reference plugins ptp + host-local"),
        "{report}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn reconcile_through_the_cli_keeps_a_live_owner_and_reaps_it_once_gone() {
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let state = dir.path().join("pod.json");
    let state_arg = state.to_str().unwrap();
    // The VMM the sandbox is for (a stand-in process).
    let mut vmm = Command::new("sleep").arg("1000").spawn().unwrap();
    let pid = vmm.id().to_string();

    // A pid without a process is refused before anything changes.
    let out = sandbox_net(&[
        "attach",
        "--netns",
        fx.pod.name(),
        "--state",
        state_arg,
        "--owner-pid",
        "4194305",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: --owner-pid: no running process has pid 4194305"
    );
    assert!(!state.exists());

    let out = sandbox_net(&[
        "attach",
        "--netns",
        fx.pod.name(),
        "--state",
        state_arg,
        "--rx-rate",
        "10000000",
        "--owner-pid",
        &pid,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sandbox_net(&["reconcile", dir_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!("alive      {state_arg}"))
            && text.contains(&format!("owner pid {pid} ")),
        "{text}"
    );
    assert!(
        text.ends_with("summary: 0 reaped, 1 alive and clean, 0 alive with drift, 0 unowned (kept), 0 busy, 0 refused, 0 left\n"),
        "{text}"
    );
    // Drift in a live sandbox is reported, exit 3, and left as it is.
    fx.pod.tc(&["filter", "del", "dev", "eth0", "ingress"]);
    let drifted = fx.pod.snapshot();
    let out = sandbox_net(&["reconcile", dir_arg, "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sandboxes"][0]["outcome"], "alive_drift");
    assert_eq!(report["sandboxes"][0]["owner"]["pid"], vmm.id());
    assert_same_snapshot(&drifted, &fx.pod.snapshot());

    // The VMM exits: a dry run says what would happen and changes nothing; then it is reaped.
    vmm.kill().unwrap();
    vmm.wait().unwrap();
    let out = sandbox_net(&["reconcile", dir_arg, "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("would reap {state_arg}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("pid {pid} ")) && text.contains("exited"),
        "{text}"
    );
    assert!(state.exists());
    assert_same_snapshot(&drifted, &fx.pod.snapshot());
    let out = sandbox_net(&["reconcile", dir_arg, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sandboxes"][0]["outcome"], "reaped", "{report}");
    assert_eq!(report["summary"]["reaped"], 1);
    assert!(!state.exists());
    assert_same_snapshot(&before, &fx.pod.snapshot());
}

#[test]
fn reconcile_refuses_bad_directories_and_files_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let out = sandbox_net(&["reconcile", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "error: state directory {} does not exist",
            missing.display()
        )
    );
    let foreign = dir.path().join("notes.txt");
    std::fs::write(&foreign, "hello\n").unwrap();
    let out = sandbox_net(&["reconcile", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "a refused file fails the run");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!(
            "refused    state file {} cannot be loaded: not a valid JSON document",
            foreign.display()
        )),
        "{text}"
    );
    assert!(text.contains(", 1 refused, 0 left\n"), "{text}");
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "hello\n");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "nothing created"
    );
}

/// Runs `script` with `sh -c` as PID 1 of fresh PID, mount and network namespaces (`unshare
/// --pid --fork --mount-proc --net`): to the processes there, their own network namespace is
/// PID 1's, the "host's". Nothing outside is touched: the namespaces go when it exits. `$BIN`
/// is the sandbox-net binary, `$STATE` the state file.
fn in_fresh_pid_and_net_namespaces(script: &str, state: &std::path::Path) -> Output {
    Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--net",
            "sh",
            "-c",
            script,
        ])
        .env("BIN", env!("CARGO_BIN_EXE_sandbox-net"))
        .env("STATE", state)
        .output()
        .expect("unshare (util-linux) runs")
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn attach_refuses_the_host_namespace_unless_allowed() {
    sandbox_net_netns::testing::require_root();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    // Whatever the path, the namespace is PID 1's by identity: refused before any file is
    // written or any link touched. The last one is run from a network namespace of its own,
    // so that only the comparison with PID 1's can refuse it.
    for (netns, prefix) in [
        ("/proc/1/ns/net", ""),
        ("/proc/self/ns/net", ""),
        ("/proc/1/ns/net", "unshare --net "),
    ] {
        let out = in_fresh_pid_and_net_namespaces(
            &format!("{prefix}\"$BIN\" attach --netns {netns} --state \"$STATE\""),
            &state,
        );
        assert_eq!(out.status.code(), Some(1), "{netns}: {}", stderr(&out));
        assert_eq!(
            stderr(&out),
            format!(
                "error: refusing to attach in network namespace {netns}: it is the host's own \
                 (that of PID 1 or of this process), and attaching would hand the node's own interfaces to the VM; \
                 allow it explicitly (NetworkConfig::allow_host_netns, sandbox-net attach \
                 --allow-host-netns) if that is meant"
            )
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{netns}: no state, lock or journal written"
        );
    }
    // Said explicitly, it is done: a veth in the "host" namespace is attached and detached.
    let out = in_fresh_pid_and_net_namespaces(
        "set -e\n\
         ip link add eth0 type veth peer name peer0\n\
         ip addr add 10.9.0.2/24 dev eth0\n\
         ip link set eth0 up\n\
         \"$BIN\" attach --netns /proc/self/ns/net --state \"$STATE\" --allow-host-netns --json\n\
         ip -j link show tap0_kata\n\
         \"$BIN\" detach --state \"$STATE\"\n",
        &state,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\"device\": \"tap0_kata\""), "{text}");
    assert!(text.contains("\"ifname\":\"tap0_kata\""), "{text}");
    assert!(text.contains("detached 1 endpoint(s)"), "{text}");
    assert!(!state.exists());
}
