//! The `sandbox-net` binary, run as a process against namespaces made by the test harness.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use sandbox_net_netns::{ScanOptions, testing::PodFixture};
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
