//! How many times an attach and a detach through the CLI wait for the disk: at most two data
//! syncs per attach and one per detach, whatever the number of endpoints. Counted with strace
//! (every `fsync`, `fdatasync`, `sync_file_range`, `syncfs` and `sync` of the process and its
//! threads), the state on the machine's disk.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use sandbox_net_netns::testing::{TestNetns, assert_same_snapshot};

/// Runs the CLI with `args` under strace; returns the sync calls it made, one line each.
fn syncs_of(args: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let out = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=fsync,fdatasync,sync_file_range,syncfs,sync",
            "-o",
        ])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_sandbox-net"))
        .args(args)
        .output()
        .expect("strace runs (apt-get install strace)");
    assert!(
        out.status.success(),
        "sandbox-net {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter(|l| {
            [
                "fsync(",
                "fdatasync(",
                "sync_file_range(",
                "syncfs(",
                "sync(",
            ]
            .iter()
            .any(|call| l.contains(call))
        })
        .map(str::to_string)
        .collect()
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn attach_syncs_at_most_twice_and_detach_at_most_once_whatever_the_endpoints() {
    sandbox_net_netns::testing::require_root();
    // On the disk, not tmpfs: /var/tmp.
    let states = tempfile::tempdir_in("/var/tmp").unwrap();
    for n in [1usize, 16] {
        let (pod, _peers) = TestNetns::pod_with_veths(n);
        let before = pod.snapshot();
        let state = states.path().join(format!("pod-{n}.json"));
        let state_arg = state.to_str().unwrap();
        let attach = syncs_of(&[
            "attach",
            "--netns",
            pod.name(),
            "--state",
            state_arg,
            "--rx-rate",
            "100000000",
            "--tx-rate",
            "100000000",
        ]);
        assert!(
            attach.len() <= 2,
            "attach of {n} endpoint(s): {} syncs: {attach:#?}",
            attach.len()
        );
        // It did attach every endpoint, and the state says so.
        let taps = pod.ip(&["-o", "link", "show", "type", "tun"]);
        assert_eq!(taps.lines().count(), n, "{taps}");
        let text = std::fs::read_to_string(&state).unwrap();
        assert!(!text.is_empty());
        let check = Command::new(env!("CARGO_BIN_EXE_sandbox-net"))
            .args(["check", "--state", state_arg])
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );

        let detach = syncs_of(&["detach", "--state", state_arg]);
        assert!(
            detach.len() <= 1,
            "detach of {n} endpoint(s): {} syncs: {detach:#?}",
            detach.len()
        );
        assert!(!state.exists());
        assert_same_snapshot(&before, &pod.snapshot());
    }
}
