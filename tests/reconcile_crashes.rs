//! Reconcile after crashes: 64 sandboxes left behind in every state a crash can leave one in
//! (killed at random points of attach, attached with a dead owner, killed at random points of
//! detach, alive), adopted or reaped in one run.
// The children kill themselves through the fault points of the `fault-injection` feature.
#![cfg(feature = "fault-injection")]
// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::{collections::BTreeMap, path::Path};

use common::{
    add_pod_links,
    kill::{self, Kill, Mode, Points},
    our_links,
    reconcile::{OwnerProcess, attach_pod, dead_owner, files_of, in_parallel, outcome_of},
};
use rand::{RngExt, SeedableRng};
use sandbox_net::{ReconcileOptions, Sandbox, reconcile, reconcile::Outcome};
use sandbox_net_netns::testing::{PodFixture, assert_same_snapshot, require_root};

#[tokio::test]
#[ignore = "child process of the reconcile tests, which run it"]
async fn kill_child() {
    common::kill::child().await;
}

/// Runs the child (`mode` on pod `pod`, kill points of the kernel steps only); returns
/// whether it was killed, or the kill points it passed.
fn run_child(mode: Mode, pod: &str, state: &Path, kill: Kill) -> Result<usize, ()> {
    let run = kill::run_child(mode, pod, state, kill, Points::Steps);
    if run.killed() {
        Err(())
    } else {
        Ok(run.passed.len())
    }
}

/// How a sandbox of the big test is left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    /// Its attaching process was killed before kill point N.
    KilledInAttach(usize),
    /// Attached; its owner (a VMM) has exited.
    DeadOwner,
    /// Its detaching process was killed before kill point N.
    KilledInDetach(usize),
    /// Attached; its owner runs.
    LiveOwner,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn sixty_four_sandboxes_left_in_every_state_are_reaped_or_kept() {
    require_root();
    let seed: u64 = std::env::var("SBX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("reconcile test: seed {seed} (SBX_SEED={seed} repeats this run)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();

    // A probe pod: how many kill points a whole attach and a whole detach pass.
    let probe = PodFixture::new();
    add_pod_links(&probe.pod, 1);
    let probe_before = probe.pod.snapshot();
    let probe_state = dir.path().join("probe.json");
    let attach_points =
        run_child(Mode::Attach, probe.pod.name(), &probe_state, Kill::Never).unwrap();
    let detach_points =
        run_child(Mode::Detach, probe.pod.name(), &probe_state, Kill::Never).unwrap();
    assert_same_snapshot(&probe_before, &probe.pod.snapshot());
    assert!(!probe_state.exists());
    eprintln!(
        "reconcile test: {attach_points} kill points in an attach, {detach_points} in a detach"
    );
    assert!(
        attach_points >= 15 && detach_points >= 3,
        "{attach_points} {detach_points}"
    );

    // 64 pods: 30 killed in attach, 16 with a dead owner, 16 killed in detach, 2 alive.
    let mut plan = Vec::new();
    plan.extend((0..30).map(|_| Left::KilledInAttach(rng.random_range(0..attach_points))));
    plan.extend((0..16).map(|_| Left::DeadOwner));
    plan.extend((0..16).map(|_| Left::KilledInDetach(rng.random_range(0..detach_points))));
    plan.extend((0..2).map(|_| Left::LiveOwner));
    let pods: Vec<PodFixture> = in_parallel(&plan, |_| {
        let fx = PodFixture::new();
        add_pod_links(&fx.pod, 1);
        fx
    });
    let before: Vec<serde_json::Value> = in_parallel(&pods, |fx| fx.pod.snapshot());
    let state = |i: usize| dir.path().join(format!("sb{i:02}.json"));

    // Attaches in this process first (the detach children start from attached sandboxes).
    let live: Vec<OwnerProcess> = (0..2).map(|_| OwnerProcess::start()).collect();
    let mut live_owners = live.iter().map(OwnerProcess::owner);
    // The live VMMs keep their descriptors.
    let mut live_vmms = Vec::new();
    for (i, left) in plan.iter().enumerate() {
        let owner = match left {
            Left::KilledInAttach(_) => continue,
            Left::DeadOwner => Some(dead_owner()),
            Left::KilledInDetach(_) => None,
            Left::LiveOwner => live_owners.next(),
        };
        let (mut sandbox, vmm) = attach_pod(pods[i].pod.netns(), &state(i)).await;
        sandbox.set_owner(owner).await.unwrap();
        if *left == Left::LiveOwner {
            live_vmms.push(vmm);
        }
    }
    let indexed: Vec<(usize, Left)> = plan.iter().copied().enumerate().collect();
    let killed = in_parallel(&indexed, |&(i, left)| match left {
        Left::KilledInAttach(k) => {
            run_child(Mode::Attach, pods[i].pod.name(), &state(i), Kill::At(k)).is_err()
        }
        Left::KilledInDetach(k) => {
            run_child(Mode::Detach, pods[i].pod.name(), &state(i), Kill::At(k)).is_err()
        }
        Left::DeadOwner | Left::LiveOwner => true,
    });
    assert!(
        killed.iter().all(|k| *k),
        "every child died at its kill point: {killed:?}"
    );
    let live_after_attach: BTreeMap<usize, serde_json::Value> = plan
        .iter()
        .enumerate()
        .filter(|(_, l)| **l == Left::LiveOwner)
        .map(|(i, _)| (i, pods[i].pod.snapshot()))
        .collect();
    for (i, left) in plan.iter().enumerate() {
        assert!(
            state(i).exists(),
            "sandbox {i} ({left:?}) left a state file"
        );
    }

    let report = reconcile(dir.path(), &ReconcileOptions::default())
        .await
        .unwrap();

    let s = &report.summary;
    assert_eq!(
        (
            s.reaped,
            s.alive_clean,
            s.alive_drift,
            s.unowned,
            s.busy,
            s.refused,
            s.left
        ),
        (62, 2, 0, 0, 0, 0, 0),
        "{report:#?}"
    );
    assert!(report.complete());
    let after: Vec<serde_json::Value> = in_parallel(&pods, |fx| fx.pod.snapshot());
    for (i, left) in plan.iter().enumerate() {
        let name = format!("sb{i:02}.json");
        match left {
            Left::LiveOwner => {
                assert!(
                    matches!(
                        outcome_of(&report, &state(i)),
                        Outcome::AliveClean { endpoints: 2 }
                    ),
                    "sandbox {i}: {:?}",
                    outcome_of(&report, &state(i))
                );
                assert_same_snapshot(&live_after_attach[&i], &after[i]);
                let (sandbox, _) = Sandbox::restore(state(i)).unwrap();
                assert_eq!(sandbox.check().await.unwrap(), [], "sandbox {i} untouched");
                assert_eq!(sandbox.owner(), Some(&live[i - 62].owner()));
            }
            _ => {
                assert!(
                    matches!(
                        outcome_of(&report, &state(i)),
                        Outcome::Reaped {
                            namespace_gone: false,
                            ..
                        }
                    ),
                    "sandbox {i} ({left:?}): {:?}",
                    outcome_of(&report, &state(i))
                );
                assert_eq!(
                    files_of(dir.path(), &name),
                    Vec::<String>::new(),
                    "sandbox {i} ({left:?})"
                );
                assert_eq!(
                    our_links(&pods[i].pod),
                    Vec::<String>::new(),
                    "sandbox {i} ({left:?})"
                );
                if before[i] != after[i] {
                    eprintln!("sandbox {i} ({left:?}) not restored");
                }
                assert_same_snapshot(&before[i], &after[i]);
            }
        }
    }

    // Once their owners exit, the live ones are reaped by the next run.
    drop(live);
    drop(live_vmms);
    let report = reconcile(dir.path(), &ReconcileOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (report.summary.reaped, report.sandboxes.len()),
        (2, 2),
        "{report:#?}"
    );
    for i in [62, 63] {
        assert_same_snapshot(&before[i], &pods[i].pod.snapshot());
    }
    assert_eq!(
        files_of(dir.path(), ""),
        Vec::<String>::new(),
        "the directory is empty"
    );
}
