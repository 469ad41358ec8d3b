//! Concurrency: one process driving 64 sandboxes at once (attach, check, detach), and several
//! processes attaching different sandboxes at once (macvtaps included, whose random ifindexes
//! may coincide across namespaces): no failure, and no object of one sandbox in another.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use common::{add_pod_links, keeping_vmm, our_links, reconcile::in_parallel};
use sandbox_net::{
    InterworkingModel, NetnsSource, Network, NetworkConfig, Sandbox, TapOptions,
    state::SandboxState,
};
use sandbox_net_netns::testing::{PodFixture, TestNetns, assert_same_snapshot};
use sandbox_net_persist::steps::Step;

/// The state recorded at `path` (document and journal), once nobody holds the sandbox.
fn recorded(path: &Path) -> SandboxState {
    Sandbox::restore(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .0
        .state()
        .clone()
}

/// The links the record of a sandbox says it created, by name.
fn created_links(state: &SandboxState) -> BTreeSet<String> {
    state
        .endpoints
        .iter()
        .flat_map(|e| &e.steps)
        .filter_map(|s| match s {
            Step::CreateTap { name, .. }
            | Step::CreateMacvtap { name, .. }
            | Step::CreateIfb { name } => Some(name.to_string()),
            _ => None,
        })
        .collect()
}

/// Fails unless the pod holds exactly the links its own record says the sandbox made, each in
/// the sandbox's own device group, and the record names this pod's namespace.
fn assert_only_its_own(pod: &TestNetns, state: &SandboxState, label: &str) {
    assert_eq!(
        state.netns.id,
        pod.netns().id(),
        "{label}: the record names another namespace"
    );
    let ours: BTreeSet<String> = our_links(pod).into_iter().collect();
    let recorded = created_links(state);
    assert!(!recorded.is_empty(), "{label}: nothing recorded");
    assert_eq!(ours, recorded, "{label}: links not of its own record");
    for link in pod.ip_json(&["-d", "link", "show"]).as_array().unwrap() {
        let name = link["ifname"].as_str().unwrap_or_default();
        if recorded.contains(name) {
            // iproute2 prints a group above 2^31 as a negative 32-bit number.
            let group = link["group"]
                .as_str()
                .and_then(|g| g.parse::<i64>().ok())
                .map(|g| g as u32);
            assert_eq!(
                group,
                Some(state.link_group),
                "{label}: {name} is not in the sandbox's device group ({})",
                link["group"]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn one_process_drives_sixty_four_sandboxes_at_once() {
    const N: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let indexes: Vec<usize> = (0..N).collect();
    let pods: Vec<PodFixture> = in_parallel(&indexes, |_| {
        let fx = PodFixture::new();
        add_pod_links(&fx.pod, 1);
        fx
    });
    let before: Vec<serde_json::Value> = in_parallel(&pods, |fx| fx.pod.snapshot());
    let state = |i: usize| dir.path().join(format!("sb{i:02}.json"));

    // Every sandbox's whole life in a task of its own, all at once; they meet once all are
    // attached and checked, so that the isolation check sees all 64 in place.
    let attached = Arc::new(tokio::sync::Barrier::new(N + 1));
    let detach = Arc::new(tokio::sync::Barrier::new(N + 1));
    let (records, mut recorded) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, fx) in pods.iter().enumerate() {
        let (netns, state, attached, detach, records) = (
            fx.pod.netns().clone(),
            state(i),
            Arc::clone(&attached),
            Arc::clone(&detach),
            records.clone(),
        );
        tasks.spawn(async move {
            let model = if i % 2 == 0 {
                InterworkingModel::TcFilter
            } else {
                InterworkingModel::Macvtap
            };
            let config = NetworkConfig {
                model,
                tap: TapOptions {
                    persist: true,
                    ..TapOptions::default()
                },
                ..NetworkConfig::default()
            };
            let run = async {
                let mut network =
                    Network::create(&state, &format!("sb{i}"), NetnsSource::Given(netns), config)?;
                let vmm = keeping_vmm(10_000_000, 20_000_000);
                let (added, _) = network.add_endpoints(&vmm, None).await?;
                let drift = network.check().await?;
                // What it recorded, for the isolation check (its lock is held meanwhile).
                let _ = records.send((i, network.sandbox().state().clone()));
                Ok::<_, sandbox_net::SandboxError>((network, vmm, added.len(), drift))
            }
            .await;
            attached.wait().await;
            detach.wait().await;
            match run {
                Ok((network, vmm, added, drift)) => {
                    drop(vmm);
                    let torn = network.teardown().await;
                    (i, Ok((added, drift)), torn)
                }
                Err(e) => (i, Err(e), Ok(())),
            }
        });
    }
    drop(records);
    attached.wait().await;
    // All 64 attached at once: each pod holds its own objects and nothing of another.
    let mut states: Vec<Option<SandboxState>> = vec![None; N];
    while let Ok((i, state)) = recorded.try_recv() {
        states[i] = Some(state);
    }
    let states: Vec<SandboxState> = states
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.unwrap_or_else(|| panic!("sandbox {i} failed to attach")))
        .collect();
    let _ = in_parallel(&indexes, |&i| {
        assert_only_its_own(&pods[i].pod, &states[i], &format!("sandbox {i}"))
    });
    let groups: BTreeSet<u32> = states.iter().map(|s| s.link_group).collect();
    assert_eq!(
        groups.len(),
        N,
        "every sandbox has a device group of its own"
    );
    detach.wait().await;

    let mut failures = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (i, run, torn) = done.unwrap();
        match run {
            Ok((2, drift)) if drift.is_empty() => {}
            Ok((added, drift)) => {
                failures.push(format!("sandbox {i}: {added} endpoint(s), drift {drift:?}"))
            }
            Err(e) => failures.push(format!("sandbox {i}: {e}")),
        }
        if let Err(e) = torn {
            failures.push(format!("sandbox {i} teardown: {e}"));
        }
    }
    assert_eq!(failures, Vec::<String>::new(), "no sandbox failed");
    let after: Vec<serde_json::Value> = in_parallel(&pods, |fx| fx.pod.snapshot());
    for i in 0..N {
        assert_same_snapshot(&before[i], &after[i]);
        assert!(!state(i).exists(), "sandbox {i}'s state is removed");
    }
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
fn several_processes_attach_different_sandboxes_at_once() {
    const N: usize = 24;
    let dir = tempfile::tempdir().unwrap();
    let indexes: Vec<usize> = (0..N).collect();
    let pods: Vec<PodFixture> = in_parallel(&indexes, |_| {
        let fx = PodFixture::new();
        add_pod_links(&fx.pod, 1);
        fx
    });
    let before: Vec<serde_json::Value> = in_parallel(&pods, |fx| fx.pod.snapshot());
    let state = |i: usize| -> PathBuf { dir.path().join(format!("sb{i:02}.json")) };

    // One `sandbox-net attach` process per sandbox, all started before any is waited for;
    // two in three use the macvtap model (a macvtap per interface, each with a random
    // ifindex), all with limits (an IFB per endpoint).
    let children: Vec<_> = (0..N)
        .map(|i| {
            let model = if i % 3 == 0 { "tcfilter" } else { "macvtap" };
            let path = state(i);
            let args = [
                "attach",
                "--netns",
                pods[i].pod.name(),
                "--state",
                path.to_str().unwrap(),
                "--model",
                model,
                "--rx-rate",
                "10000000",
                "--tx-rate",
                "20000000",
            ]
            .map(String::from);
            Command::new(env!("CARGO_BIN_EXE_sandbox-net"))
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut failures = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            failures.push(format!(
                "attach {i}: {:?}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert_eq!(failures, Vec::<String>::new(), "every attach succeeded");

    let states: Vec<SandboxState> = (0..N).map(|i| recorded(&state(i))).collect();
    let _ = in_parallel(&indexes, |&i| {
        assert_only_its_own(&pods[i].pod, &states[i], &format!("sandbox {i}"))
    });
    // The macvtaps' ifindexes, drawn at random in each namespace: a coincidence across
    // namespaces is allowed (each opens its own queues), and reported.
    let mut indexes_seen = Vec::new();
    for (i, fx) in pods.iter().enumerate() {
        for link in fx.pod.ip_json(&["-d", "link", "show"]).as_array().unwrap() {
            if link["linkinfo"]["info_kind"] == "macvtap" {
                indexes_seen.push((link["ifindex"].as_u64().unwrap(), i));
            }
        }
    }
    let distinct: BTreeSet<u64> = indexes_seen.iter().map(|(x, _)| *x).collect();
    eprintln!(
        "concurrency: {} macvtaps, {} distinct ifindexes",
        indexes_seen.len(),
        distinct.len()
    );
    assert_eq!(indexes_seen.len(), 2 * (N - N / 3));

    // Every check and detach as processes of their own, at once, too.
    let check = |args: Vec<String>| {
        Command::new(env!("CARGO_BIN_EXE_sandbox-net"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    for verb in ["check", "detach"] {
        let children: Vec<_> = (0..N)
            .map(|i| {
                check(vec![
                    verb.into(),
                    "--state".into(),
                    state(i).to_str().unwrap().into(),
                ])
            })
            .collect();
        for (i, child) in children.into_iter().enumerate() {
            let out = child.wait_with_output().unwrap();
            if !out.status.success() {
                failures.push(format!(
                    "{verb} {i}: {:?}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    assert_eq!(
        failures,
        Vec::<String>::new(),
        "every check and detach succeeded"
    );
    let after: Vec<serde_json::Value> = in_parallel(&pods, |fx| fx.pod.snapshot());
    for i in 0..N {
        assert_same_snapshot(&before[i], &after[i]);
        assert!(!state(i).exists());
    }
}
