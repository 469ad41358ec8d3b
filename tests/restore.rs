//! Restore in a new process's shoes: teardown from the state file alone, twice, with the
//! namespace gone, with three endpoints, and refusing a namespace that changed.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::{fs, os::unix::fs::PermissionsExt};

use common::{add_pod_links, endpoints, keeping_vmm, options, our_links};
use sandbox_net::{Plug, Sandbox, SandboxError};
use sandbox_net_interworking::InterworkingModel;
use sandbox_net_netns::testing::{PodFixture, TestNetns, assert_same_snapshot, unique_netns_name};

const ROOT: &str = "needs root and a real kernel: run with --features root-tests";

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn three_endpoints_restored_and_torn_down_twice() {
    let _ = ROOT;
    let fx = PodFixture::new();
    add_pod_links(&fx.pod, 2);
    let before = fx.pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    {
        let mut sandbox = Sandbox::create(
            &state,
            "three",
            fx.pod.netns().clone(),
            InterworkingModel::TcFilter,
        )
        .unwrap();
        let vmm = keeping_vmm(10_000_000, 10_000_000);
        let models = [
            InterworkingModel::TcFilter,
            InterworkingModel::Macvtap,
            InterworkingModel::None,
        ];
        for (endpoint, model) in endpoints(fx.pod.netns()).await.into_iter().zip(models) {
            sandbox
                .attach(endpoint, &vmm, &options(model), Plug::Cold)
                .await
                .unwrap();
        }
        assert_eq!(sandbox.check().await.unwrap(), []);
        // The process "exits": the sandbox and the VMM's descriptors go away, the state stays.
    }
    assert_eq!(
        our_links(&fx.pod).len(),
        3 + 2,
        "three taps/macvtaps and the IFBs of the macvtap and none endpoints"
    );
    let opts = options(InterworkingModel::TcFilter);
    let (mut sandbox, _) = Sandbox::restore(&state).unwrap();
    assert_eq!(sandbox.state().endpoints.len(), 3);
    sandbox.teardown(&opts).await.unwrap();
    assert_same_snapshot(&before, &fx.pod.snapshot());
    sandbox.teardown(&opts).await.unwrap();
    assert_same_snapshot(&before, &fx.pod.snapshot());
    drop(sandbox);
    // And once more from the file, in a "third process".
    let (mut sandbox, _) = Sandbox::restore(&state).unwrap();
    sandbox.teardown(&opts).await.unwrap();
    sandbox.forget().await.unwrap();
    assert!(!state.exists());
    assert_same_snapshot(&before, &fx.pod.snapshot());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn teardown_with_the_namespace_already_deleted() {
    sandbox_net_netns::testing::require_root();
    let name = unique_netns_name();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let path = sandbox_net_netns::named_path(&name).unwrap();
    let created =
        Sandbox::create_in_new_netns(&state, "gone", &path, InterworkingModel::TcFilter).unwrap();
    let netns = created.netns().unwrap().clone();
    let pod = std::process::Command::new("ip")
        .args([
            "-n", &name, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ])
        .status()
        .unwrap();
    assert!(pod.success());
    for args in [
        ["addr", "add", "10.9.0.2/24", "dev", "eth0"].as_slice(),
        ["link", "set", "eth0", "up"].as_slice(),
    ] {
        let mut full = vec!["-n", name.as_str()];
        full.extend_from_slice(args);
        assert!(
            std::process::Command::new("ip")
                .args(&full)
                .status()
                .unwrap()
                .success()
        );
    }
    {
        let mut sandbox = created;
        let vmm = keeping_vmm(0, 0);
        let endpoint = endpoints(&netns).await.remove(0);
        sandbox
            .attach(
                endpoint,
                &vmm,
                &options(InterworkingModel::TcFilter),
                Plug::Cold,
            )
            .await
            .unwrap();
    }
    drop(netns);
    // Someone deletes the sandbox's namespace behind our back.
    assert!(
        std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .status()
            .unwrap()
            .success()
    );
    let (mut sandbox, _) = Sandbox::restore(&state).unwrap();
    assert!(sandbox.netns().is_none());
    let opts = options(InterworkingModel::TcFilter);
    sandbox.teardown(&opts).await.unwrap();
    sandbox.teardown(&opts).await.unwrap();
    assert!(
        sandbox
            .state()
            .endpoints
            .iter()
            .all(|e| !e.attached && e.steps.is_empty())
    );
    sandbox.forget().await.unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_created_namespace_is_deleted_with_the_sandbox() {
    sandbox_net_netns::testing::require_root();
    let path = sandbox_net_netns::named_path(&unique_netns_name()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    drop(Sandbox::create_in_new_netns(&state, "own", &path, InterworkingModel::TcFilter).unwrap());
    let (mut sandbox, _) = Sandbox::restore(&state).unwrap();
    assert!(sandbox.netns().unwrap().created_by_us());
    sandbox
        .teardown(&options(InterworkingModel::TcFilter))
        .await
        .unwrap();
    assert!(
        !path.exists(),
        "the namespace we created is deleted at teardown"
    );
    sandbox.forget().await.unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_state_whose_namespace_changed_or_is_missing_is_refused() {
    let a = TestNetns::new();
    let b = TestNetns::new();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let sandbox = Sandbox::create(
        &state,
        "moved",
        a.netns().clone(),
        InterworkingModel::TcFilter,
    )
    .unwrap();
    // Nothing to tear down yet, so nothing written yet; a save writes the document.
    assert!(!state.exists());
    sandbox.save().await.unwrap();
    drop(sandbox);
    // The recorded path now names another namespace.
    let text = fs::read_to_string(&state).unwrap();
    let moved = text.replace(
        a.netns().path().to_str().unwrap(),
        b.netns().path().to_str().unwrap(),
    );
    fs::write(&state, moved).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o600)).unwrap();
    let err = Sandbox::restore(&state).unwrap_err();
    assert!(
        matches!(err, SandboxError::IdentityMismatch { .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "state file {}: {} is now namespace {}, not the recorded {}; refusing to touch it",
            state.display(),
            b.netns().path().display(),
            b.netns().id(),
            a.netns().id()
        )
    );
    assert!(state.exists(), "nothing is deleted");

    let missing = dir.path().join("nope.json");
    let err = Sandbox::restore(&missing).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("state file {} does not exist", missing.display())
    );
    // A new sandbox never overwrites an existing state.
    let err = Sandbox::create(
        &state,
        "again",
        a.netns().clone(),
        InterworkingModel::TcFilter,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "state file {} already exists: restore the sandbox, or tear it down first",
            state.display()
        )
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn check_is_clean_after_attach_and_reports_a_deleted_filter() {
    let fx = PodFixture::new();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let mut sandbox = Sandbox::create(
        &state,
        "check",
        fx.pod.netns().clone(),
        InterworkingModel::TcFilter,
    )
    .unwrap();
    let vmm = keeping_vmm(0, 0);
    let endpoint = endpoints(fx.pod.netns()).await.remove(0);
    sandbox
        .attach(
            endpoint,
            &vmm,
            &options(InterworkingModel::TcFilter),
            Plug::Cold,
        )
        .await
        .unwrap();
    assert_eq!(sandbox.check().await.unwrap(), []);
    fx.pod.tc(&["filter", "del", "dev", "eth0", "ingress"]);
    let drifts: Vec<String> = sandbox
        .check()
        .await
        .unwrap()
        .iter()
        .map(|(_, d)| d.to_string())
        .collect();
    assert_eq!(
        drifts,
        [
            "redirect eth0 -> tap0_kata: expected a redirect to tap0_kata at priority 49152, found redirects to []"
        ]
    );
    sandbox
        .teardown(&options(InterworkingModel::TcFilter))
        .await
        .unwrap();
    sandbox.forget().await.unwrap();
}
