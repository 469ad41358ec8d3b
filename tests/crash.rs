//! Crash safety: a child process attaches endpoints and is killed with SIGKILL at every kill
//! point of the kernel steps in turn (before each step, and inside those of several requests);
//! each time, this process restores the sandbox from the state file and tears it down, and the
//! pod must be exactly as before.
// The child kills itself through the fault points of the `fault-injection` feature.
#![cfg(feature = "fault-injection")]
// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{
    add_pod_links,
    kill::{Kill, Mode, Points, run_child},
    options, our_links,
};
use sandbox_net::Sandbox;
use sandbox_net_interworking::InterworkingModel;
use sandbox_net_netns::testing::{PodFixture, assert_same_snapshot};

/// The child: eth0 with tcfilter and rx/tx limits, eth1 with macvtap and limits, persistent
/// taps, then exits without detaching (a shim that goes away); see `common::kill`.
#[tokio::test]
#[ignore = "child process of crash_at_every_step_is_recovered, which runs it"]
async fn kill_child() {
    common::kill::child().await;
}

/// Restores the sandbox in this process, tears it down and forgets it.
async fn restore_and_teardown(state: &Path) {
    let (mut sandbox, warnings) = Sandbox::restore(state).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let opts = options(InterworkingModel::TcFilter);
    sandbox.teardown(&opts).await.unwrap();
    sandbox.forget().await.unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn crash_at_every_step_is_recovered() {
    // A run without a kill: the restart case, and the kill points of an attach.
    let fx = PodFixture::new();
    add_pod_links(&fx.pod, 1);
    let before = fx.pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let run = |kill| run_child(Mode::Attach, fx.pod.name(), &state, kill, Points::Steps);
    let listing = run(Kill::Never);
    assert!(!listing.killed(), "the child completes without a kill");
    let (sandbox, _) = Sandbox::restore(&state).unwrap();
    let total: usize = sandbox
        .state()
        .endpoints
        .iter()
        .map(|e| e.steps.len())
        .sum();
    assert!(sandbox.state().endpoints.iter().all(|e| e.attached));
    assert!(
        !our_links(&fx.pod).is_empty(),
        "persistent taps, macvtap and IFB outlive the child"
    );
    drop(sandbox);
    restore_and_teardown(&state).await;
    assert_same_snapshot(&before, &fx.pod.snapshot());
    assert_eq!(our_links(&fx.pod), Vec::<String>::new());
    // A kill point before every step, and those inside steps (between the requests of an HTB
    // tree, after the combined change of a new link).
    let points = listing.passed;
    assert_eq!(
        points.iter().filter(|p| p.starts_with("before ")).count(),
        total,
        "{points:?}"
    );

    // A kill at each point in turn, on the same pod (each recovery restored it exactly).
    for (kill, point) in points.iter().enumerate() {
        let run = run(Kill::At(kill));
        assert!(run.killed(), "the child dies at {kill} ({point})");
        restore_and_teardown(&state).await;
        assert_same_snapshot(&before, &fx.pod.snapshot());
        assert_eq!(
            our_links(&fx.pod),
            Vec::<String>::new(),
            "after a kill at {kill} ({point})"
        );
        assert!(!state.exists(), "after a kill at {kill} ({point})");
    }
    eprintln!(
        "crash test: {} kill points ({total} steps) + the clean exit",
        points.len()
    );
    assert!(
        total >= 15,
        "tcfilter with limits and macvtap with limits make at least 15 steps, got {total}"
    );
}
