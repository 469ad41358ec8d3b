//! Reconcile: the directories and files it must refuse, a namespace that is gone, sandboxes
//! without an owner and sandboxes another process holds. (After crashes: reconcile_crashes.rs.)

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use common::{
    add_pod_links, our_links,
    reconcile::{attach_pod, dead_owner, files_of, outcome_of},
};
use sandbox_net::{ReconcileError, ReconcileOptions, Sandbox, reconcile, reconcile::Outcome};
use sandbox_net_netns::testing::{PodFixture, assert_same_snapshot};

/// A child process that holds a sandbox (its lock) until its stdin closes.
#[tokio::test]
#[ignore = "child process of the reconcile tests, which run it"]
async fn reconcile_holder() {
    let Ok(state) = std::env::var("SBX_CHILD_STATE") else {
        panic!("reconcile_holder runs only as a child of the reconcile tests");
    };
    let held = Sandbox::restore(&state).unwrap();
    println!("SBX_HOLDING");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut rest).unwrap();
    drop(held);
}

#[tokio::test]
async fn a_missing_directory_or_a_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = reconcile(&missing, &ReconcileOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ReconcileError::Missing { dir } if *dir == missing),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("state directory {} does not exist", missing.display())
    );
    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    let err = reconcile(&file, &ReconcileOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{} is not a directory", file.display())
    );
}

/// Files a state directory may hold that are not sandboxes reconcile can act on: each is
/// reported by name and left as it was; nothing is created next to them.
#[tokio::test]
async fn foreign_files_and_newer_schemas_are_refused_by_name_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sub = d.join("nested");
    fs::create_dir(&sub).unwrap();
    let private = |path: &Path, bytes: &[u8]| {
        fs::write(path, bytes).unwrap();
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    };
    private(&d.join("README"), b"not a sandbox\n");
    private(&sub.join("binary.bin"), &[0xff, 0x00, 0x13, 0x37]);
    let newer = serde_json::json!({
        "schema_version": sandbox_net_persist::state::SCHEMA_VERSION + 1,
        "sandbox_id": "from-the-future",
        "netns": { "path": "/run/netns/x", "id": { "dev": 4, "ino": 5 }, "created_by_us": false },
        "model": "tcfilter",
        "endpoints": [{ "kind": "warp-drive" }]
    });
    private(&d.join("future.json"), newer.to_string().as_bytes());
    std::os::unix::fs::symlink("/etc/hostname", d.join("link.json")).unwrap();
    private(&d.join(".state-Ab12Cd"), b"{\"schema_version\":1");
    let before = files_of(d, "");
    let before_sub = files_of(&sub, "");

    let report = reconcile(d, &ReconcileOptions::default()).await.unwrap();
    let error_of = |path: PathBuf| match outcome_of(&report, &path) {
        Outcome::Refused { error } => error.clone(),
        other => panic!("{}: {other:?}", path.display()),
    };
    let readme = error_of(d.join("README"));
    assert!(
        readme.contains(&d.join("README").display().to_string()),
        "{readme}"
    );
    assert!(readme.contains("not a valid JSON document"), "{readme}");
    let binary = error_of(sub.join("binary.bin"));
    assert!(
        binary.contains("binary.bin") && binary.contains("not a valid JSON"),
        "{binary}"
    );
    let future = error_of(d.join("future.json"));
    assert!(
        future.contains("future.json")
            && future.contains(&format!(
                "schema version {} is newer than the {}",
                sandbox_net_persist::state::SCHEMA_VERSION + 1,
                sandbox_net_persist::state::SCHEMA_VERSION
            )),
        "{future}"
    );
    let link = error_of(d.join("link.json"));
    assert!(
        link.contains("link.json") && link.contains("symbolic link"),
        "{link}"
    );
    let legacy = error_of(d.join(".state-Ab12Cd"));
    assert!(legacy.contains("temporary file"), "{legacy}");
    assert_eq!(report.summary.refused, 5, "{report:#?}");
    assert!(!report.complete());
    assert_eq!(files_of(d, ""), before, "nothing created or removed");
    assert_eq!(files_of(&sub, ""), before_sub);
    assert_eq!(fs::read(d.join("README")).unwrap(), b"not a sandbox\n");
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_state_whose_namespace_is_gone_is_reaped_and_says_what_went_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("gone.json");
    let fx = PodFixture::new();
    add_pod_links(&fx.pod, 1);
    let steps = {
        let (mut sandbox, _vmm) = attach_pod(fx.pod.netns(), &state).await;
        sandbox.set_owner(Some(dead_owner())).await.unwrap();
        sandbox
            .state()
            .endpoints
            .iter()
            .map(|e| e.steps.len())
            .sum::<usize>()
    };
    // CNI deleted the pod's namespace (and everything in it) after the VMM exited.
    drop(fx);

    let dry = reconcile(
        dir.path(),
        &ReconcileOptions {
            dry_run: true,
            ..ReconcileOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(
        matches!(
            outcome_of(&dry, &state),
            Outcome::WouldReap { endpoints: 2, .. }
        ),
        "{dry:#?}"
    );
    assert!(state.exists(), "a dry run changes nothing");

    let report = reconcile(dir.path(), &ReconcileOptions::default())
        .await
        .unwrap();
    assert_eq!(
        outcome_of(&report, &state),
        &Outcome::Reaped {
            why: match outcome_of(&report, &state) {
                Outcome::Reaped { why, .. } => why.clone(),
                other => panic!("{other:?}"),
            },
            endpoints: 2,
            namespace_gone: true,
            steps_gone_with_namespace: steps,
        }
    );
    assert!(steps > 10);
    assert_eq!(files_of(dir.path(), ""), Vec::<String>::new());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn unowned_sandboxes_are_kept_unless_asked_and_a_locked_one_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (fx_unowned, fx_busy) = (PodFixture::new(), PodFixture::new());
    for fx in [&fx_unowned, &fx_busy] {
        add_pod_links(&fx.pod, 1);
    }
    let before = fx_unowned.pod.snapshot();
    let unowned = dir.path().join("unowned.json");
    let busy = dir.path().join("busy.json");
    attach_pod(fx_unowned.pod.netns(), &unowned)
        .await
        .0
        .set_owner(None)
        .await
        .unwrap();
    // Held by this (live) process, with a dead owner recorded: the lock wins.
    let (mut held, held_vmm) = attach_pod(fx_busy.pod.netns(), &busy).await;
    held.set_owner(Some(dead_owner())).await.unwrap();
    let held_snapshot = fx_busy.pod.snapshot();

    let report = reconcile(dir.path(), &ReconcileOptions::default())
        .await
        .unwrap();
    assert_eq!(
        outcome_of(&report, &unowned),
        &Outcome::Unowned { endpoints: 2 }
    );
    assert_eq!(outcome_of(&report, &busy), &Outcome::Busy);
    assert!(
        report.complete(),
        "kept and busy sandboxes are not failures"
    );
    assert!(unowned.exists() && busy.exists());
    assert_same_snapshot(&held_snapshot, &fx_busy.pod.snapshot());

    let report = reconcile(
        dir.path(),
        &ReconcileOptions {
            reap_unowned: true,
            ..ReconcileOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome_of(&report, &unowned), Outcome::Reaped { .. }),
        "{report:#?}"
    );
    assert_eq!(outcome_of(&report, &busy), &Outcome::Busy);
    assert_same_snapshot(&before, &fx_unowned.pod.snapshot());
    assert!(!unowned.exists());

    // Let go here, but held by another process: still busy.
    drop((held, held_vmm));
    let mut holder = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "reconcile_holder", "--nocapture"])
        .env("SBX_CHILD_STATE", &busy)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(holder.stdout.take().unwrap()));
    assert!(
        lines.any(|l| l.unwrap().contains("SBX_HOLDING")),
        "the child holds the sandbox"
    );
    let report = reconcile(dir.path(), &ReconcileOptions::default())
        .await
        .unwrap();
    assert_eq!(outcome_of(&report, &busy), &Outcome::Busy);
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());

    // Let go, the busy one's dead owner gets it reaped.
    let report = reconcile(dir.path(), &ReconcileOptions::default())
        .await
        .unwrap();
    assert!(
        matches!(outcome_of(&report, &busy), Outcome::Reaped { .. }),
        "{report:#?}"
    );
    assert_eq!(our_links(&fx_busy.pod), Vec::<String>::new());
}
