//! Crash safety: a child process attaches endpoints and is killed with SIGKILL before every
//! kernel step in turn; each time, this (fresh) process restores the sandbox from the state
//! file and tears it down, and the pod must be exactly as before.
// The child kills itself through the fault points of the `fault-injection` feature.
#![cfg(feature = "fault-injection")]
// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    os::unix::process::ExitStatusExt, path::Path, process::Command, sync::atomic::AtomicUsize,
};

use common::{add_pod_links, endpoints, keeping_vmm, options, our_links};
use sandbox_net::Sandbox;
use sandbox_net_endpoints::AttachOptions;
use sandbox_net_interworking::{ApplyHooks, InterworkingModel};
use sandbox_net_netns::{
    Netns,
    testing::{PodFixture, assert_same_snapshot},
};

/// What the child does: eth0 with tcfilter and rx/tx limits, eth1 with macvtap and limits,
/// persistent taps, then exits without detaching (a shim that goes away).
#[tokio::test]
#[ignore = "child process of crash_at_every_step_is_recovered, which runs it"]
async fn crash_child() {
    let (Ok(netns), Ok(state), Ok(kill)) = (
        std::env::var("SBX_CHILD_NETNS"),
        std::env::var("SBX_CHILD_STATE"),
        std::env::var("SBX_CHILD_KILL"),
    ) else {
        panic!("crash_child runs only as the child of crash_at_every_step_is_recovered");
    };
    let netns = Netns::open_named(&netns).unwrap();
    let mut sandbox = Sandbox::create(
        &state,
        "crash-test",
        netns.clone(),
        InterworkingModel::TcFilter,
    )
    .unwrap();
    let hooks = ApplyHooks {
        kill_countdown: kill
            .parse::<usize>()
            .ok()
            .map(|k| &*Box::leak(Box::new(AtomicUsize::new(k)))),
        ..ApplyHooks::default()
    };
    let vmm = keeping_vmm(10_000_000, 20_000_000);
    let mut eps = endpoints(&netns).await.into_iter();
    let (eth0, eth1) = (eps.next().unwrap(), eps.next().unwrap());
    sandbox
        .attach(
            eth0,
            &vmm,
            &AttachOptions {
                hooks,
                ..options(InterworkingModel::TcFilter)
            },
            false,
        )
        .await
        .unwrap();
    sandbox
        .attach(
            eth1,
            &vmm,
            &AttachOptions {
                hooks,
                ..options(InterworkingModel::Macvtap)
            },
            false,
        )
        .await
        .unwrap();
    // Exit without detaching; the VMM's descriptors close with the process.
}

/// Runs the child with `kill` (a step countdown, or "none"); returns whether it was killed.
fn run_child(pod: &str, state: &Path, kill: &str) -> bool {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SBX_CHILD_NETNS", pod)
        .env("SBX_CHILD_STATE", state)
        .env("SBX_CHILD_KILL", kill)
        .output()
        .unwrap();
    match out.status.signal() {
        Some(9) => true,
        None if out.status.success() => false,
        _ => panic!(
            "child (kill {kill}) ended with {:?}:\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Restores the sandbox in this process, tears it down and forgets it.
async fn restore_and_teardown(state: &Path) {
    let (mut sandbox, warnings) = Sandbox::restore(state).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let opts = options(InterworkingModel::TcFilter);
    sandbox.teardown(&opts).await.unwrap();
    sandbox.forget().unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn crash_at_every_step_is_recovered() {
    // A run without a kill: the restart case, and the number of steps.
    let fx = PodFixture::new();
    add_pod_links(&fx.pod, 1);
    let before = fx.pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    assert!(
        !run_child(fx.pod.name(), &state, "none"),
        "the child completes without a kill point"
    );
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

    // A kill before each step in turn.
    for kill in 0..total {
        let fx = PodFixture::new();
        add_pod_links(&fx.pod, 1);
        let before = fx.pod.snapshot();
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        assert!(
            run_child(fx.pod.name(), &state, &kill.to_string()),
            "the child dies before step {kill}"
        );
        restore_and_teardown(&state).await;
        assert_same_snapshot(&before, &fx.pod.snapshot());
        assert_eq!(
            our_links(&fx.pod),
            Vec::<String>::new(),
            "after a kill before step {kill}"
        );
    }
    eprintln!(
        "crash test: {} kill points ({total} steps + the clean exit)",
        total + 1
    );
    assert!(
        total >= 15,
        "tcfilter with limits and macvtap with limits make at least 15 steps, got {total}"
    );
}
