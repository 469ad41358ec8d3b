//! What the state file keeps when not everything could be undone: the residue of a failed
//! rollback, and endpoints of kinds this version does not know.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::{fs, os::unix::fs::PermissionsExt, process::Command};

use sandbox_net::{Plug, Sandbox, SandboxError};
use sandbox_net_persist::store::StoreError;

use sandbox_net_netns::testing::{PodFixture, assert_same_snapshot};

#[tokio::test]
#[cfg(feature = "fault-injection")]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_failed_rollback_keeps_what_it_could_not_undo_for_a_later_teardown() {
    use common::{endpoints, keeping_vmm, options};
    use sandbox_net::Sandbox;
    use sandbox_net_endpoints::AttachOptions;
    use sandbox_net_interworking::{ApplyHooks, InterworkingModel, Step};
    use sandbox_net_netns::testing::snapshot_differences;

    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let model = InterworkingModel::Macvtap;
    {
        let mut sandbox =
            Sandbox::create(&state, "residue", fx.pod.netns().clone(), model).unwrap();
        let endpoint = endpoints(fx.pod.netns()).await.remove(0);
        // The macvtap plan: create the macvtap, clear eth0's addresses, change its MAC, ...,
        // set eth0 up. The last step fails; during the rollback, taking the addresses back
        // fails too.
        let failing = AttachOptions {
            hooks: ApplyHooks {
                fail_before: Some(5),
                fail_undo_of: Some(1),
                ..ApplyHooks::default()
            },
            ..options(model)
        };
        let err = sandbox
            .attach(endpoint, &keeping_vmm(0, 0), &failing, Plug::Cold)
            .await
            .unwrap_err();
        let chain = sandbox_net_netns::testing::error_chain(&err);
        assert!(
            chain.contains(
                "rollback left 1 step(s) undone: could not undo \"remove 3 addresses from eth0\""
            ),
            "{chain}"
        );
    }
    // The pod is not as it was: its addresses are still away...
    let residue = snapshot_differences(&before, &fx.pod.snapshot());
    assert!(
        residue
            .iter()
            .any(|d| d.contains("snapshot.addresses: only before")),
        "{residue:?}"
    );
    assert!(
        !residue.iter().any(|d| d.contains("tap0_kata")),
        "the macvtap was taken back: {residue:?}"
    );
    // ... and the state says so, in a new process's eyes.
    let (mut sandbox, _) = Sandbox::restore(&state).unwrap();
    let records = &sandbox.state().endpoints;
    assert_eq!(records.len(), 1);
    assert!(!records[0].attached);
    assert!(
        matches!(&records[0].steps[..], [Step::ClearAddresses { link, addresses, .. }]
            if link.as_str() == "eth0" && addresses.len() == 3),
        "{:?}",
        records[0].steps
    );
    assert_eq!(
        sandbox.check().await.unwrap(),
        [],
        "the kernel is as the residue says: eth0 without its addresses"
    );
    // A later teardown finishes the job.
    sandbox.teardown(&options(model)).await.unwrap();
    assert_same_snapshot(&before, &fx.pod.snapshot());
    sandbox.forget().await.unwrap();
    assert!(!state.exists());
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn detach_keeps_the_document_while_it_holds_endpoints_of_unknown_kinds() {
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let bin = env!("CARGO_BIN_EXE_sandbox-net");
    let out = Command::new(bin)
        .args(["attach", "--netns", fx.pod.name(), "--state"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A newer sandbox-net recorded an endpoint of a kind this one does not know.
    let mut document: serde_json::Value =
        serde_json::from_slice(&fs::read(&state).unwrap()).unwrap();
    let alien = serde_json::json!({
        "id": "0123456789abcdef", "kind": "from_a_newer_version", "index": 7,
        "steps": [{ "op": "create_something_new", "name": "new7" }]
    });
    document["endpoints"]
        .as_array_mut()
        .unwrap()
        .push(alien.clone());
    fs::write(&state, serde_json::to_vec(&document).unwrap()).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o600)).unwrap();

    let out = Command::new(bin)
        .arg("detach")
        .arg("--state")
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .trim()
            .lines()
            .last()
            .unwrap(),
        format!(
            "error: state file {} kept: it holds 1 endpoint(s) of kinds this version of \
             sandbox-net does not know, not torn down: 0123456789abcdef (kind \"from_a_newer_version\"); a \
             version that knows them must detach them",
            state.display()
        )
    );
    // What this version knows is detached; the document stays, with the unknown endpoint.
    assert_same_snapshot(&before, &fx.pod.snapshot());
    let kept: serde_json::Value = serde_json::from_slice(&fs::read(&state).unwrap()).unwrap();
    assert_eq!(
        kept["unknown_endpoints"],
        serde_json::json!([alien]),
        "{kept}"
    );
    assert_eq!(kept["endpoints"], serde_json::json!([]), "{kept}");
    // And a second detach still does not drop it.
    let again = Command::new(bin)
        .arg("detach")
        .arg("--state")
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(state.exists());
}

#[test]
fn restoring_a_state_file_that_is_gone_removes_what_a_crash_left_of_it() {
    // What a crash leaves of a state without its document: the journal and lock of a
    // teardown killed after removing the document, the temporary file of a first save killed
    // before its rename. Another sandbox's temporary file is not ours.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("sb.json");
    for name in [
        "sb.json.journal",
        "sb.json.lock",
        ".sb.json.Ab12Cd.tmp",
        ".other.json.Ab12Cd.tmp",
    ] {
        let file = dir.path().join(name);
        fs::write(&file, b"{").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    }
    match Sandbox::restore(&state) {
        Err(SandboxError::Store(StoreError::Missing { path })) => assert_eq!(path, state),
        other => panic!("expected the state file to be missing: {other:?}"),
    }
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [".other.json.Ab12Cd.tmp"]);
    // Restoring a state that never was leaves nothing either (not even a lock file).
    let never = dir.path().join("never.json");
    assert!(matches!(
        Sandbox::restore(&never),
        Err(SandboxError::Store(StoreError::Missing { .. }))
    ));
    assert!(!dir.path().join("never.json.lock").exists());
}
