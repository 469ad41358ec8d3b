//! Reconcile: a node's state directory after crashes, in every state a sandbox can be left in,
//! adopted or reaped in one run; and the directories and files reconcile must refuse.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::BTreeMap,
    fs,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::atomic::AtomicUsize,
};

use common::{add_pod_links, endpoints, keeping_vmm, options, our_links};
use rand::{RngExt, SeedableRng};
use sandbox_net::{
    Owner, ReconcileError, ReconcileOptions, Sandbox, reconcile,
    reconcile::{Outcome, ReconcileReport},
};
use sandbox_net_endpoints::{AttachOptions, testing::StandInVmm};
#[cfg(feature = "fault-injection")]
use sandbox_net_interworking::ApplyHooks;
use sandbox_net_interworking::InterworkingModel;
use sandbox_net_netns::{
    Netns,
    testing::{PodFixture, assert_same_snapshot, require_root},
};

/// A kill countdown for this process's hooks (the hooks want a `'static` counter).
#[cfg(feature = "fault-injection")]
fn countdown(start: usize) -> &'static AtomicUsize {
    Box::leak(Box::new(AtomicUsize::new(start)))
}

/// What every sandbox of these tests is: eth0 with tcfilter, eth1 with macvtap, both with
/// rx/tx limits (HTB on the tap or macvtap, an IFB each), persistent taps. Returns the
/// sandbox and the stand-in VMM that holds the queue descriptors (a tap loses its carrier,
/// some time later, when they close).
async fn attach_pod(netns: &Netns, state: &Path) -> (Sandbox, StandInVmm) {
    attach_pod_with(netns, state, options).await
}

/// [`attach_pod`] with the attach options `options` makes for each model.
async fn attach_pod_with(
    netns: &Netns,
    state: &Path,
    options: impl Fn(InterworkingModel) -> AttachOptions,
) -> (Sandbox, StandInVmm) {
    let mut sandbox = Sandbox::create(
        state,
        "reconcile-test",
        netns.clone(),
        InterworkingModel::TcFilter,
    )
    .unwrap();
    let vmm = keeping_vmm(10_000_000, 20_000_000);
    let models = [InterworkingModel::TcFilter, InterworkingModel::Macvtap];
    for (endpoint, model) in endpoints(netns).await.into_iter().zip(models) {
        sandbox
            .attach(endpoint, &vmm, &options(model), false)
            .await
            .unwrap();
    }
    (sandbox, vmm)
}

/// The child process: attaches a pod (and exits without detaching), or tears one down from
/// its state, with a kill countdown ("none": no kill; "count": report how many kill points a
/// complete run passes).
#[cfg(feature = "fault-injection")]
#[tokio::test]
#[ignore = "child process of the reconcile tests, which run it"]
async fn reconcile_child() {
    let (Ok(mode), Ok(netns), Ok(state), Ok(kill)) = (
        std::env::var("SBX_CHILD_MODE"),
        std::env::var("SBX_CHILD_NETNS"),
        std::env::var("SBX_CHILD_STATE"),
        std::env::var("SBX_CHILD_KILL"),
    ) else {
        panic!("reconcile_child runs only as a child of the reconcile tests");
    };
    const COUNTING: usize = usize::MAX / 2;
    let counter = countdown(kill.parse().unwrap_or(COUNTING));
    let hooks = ApplyHooks {
        kill_countdown: (kill != "none").then_some(counter),
        ..ApplyHooks::default()
    };
    match mode.as_str() {
        "attach" => {
            let netns = Netns::open_named(&netns).unwrap();
            let with_hooks = |model| AttachOptions {
                hooks,
                ..options(model)
            };
            drop(attach_pod_with(&netns, Path::new(&state), with_hooks).await);
        }
        "hold" => {
            // Holds the sandbox (its lock) until stdin closes.
            let held = Sandbox::restore(&state).unwrap();
            println!("SBX_HOLDING");
            let mut rest = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut rest).unwrap();
            drop(held);
        }
        "detach" => {
            let (mut sandbox, _) = Sandbox::restore(&state).unwrap();
            sandbox
                .teardown(&AttachOptions {
                    hooks,
                    ..options(InterworkingModel::TcFilter)
                })
                .await
                .unwrap();
            sandbox.forget().unwrap();
        }
        other => panic!("unknown mode {other}"),
    }
    let passed = COUNTING - counter.load(std::sync::atomic::Ordering::SeqCst);
    println!("SBX_KILL_POINTS_PASSED={passed}");
}

/// Runs the child; returns whether it was killed, or the kill points it passed.
#[cfg(feature = "fault-injection")]
fn run_child(mode: &str, pod: &str, state: &Path, kill: &str) -> Result<usize, ()> {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "reconcile_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SBX_CHILD_MODE", mode)
        .env("SBX_CHILD_NETNS", pod)
        .env("SBX_CHILD_STATE", state)
        .env("SBX_CHILD_KILL", kill)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    match out.status.signal() {
        Some(9) => Err(()),
        None if out.status.success() => Ok(stdout
            .lines()
            .find_map(|l| l.split("SBX_KILL_POINTS_PASSED=").nth(1))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("the child reports its kill points:\n{stdout}"))),
        _ => panic!(
            "child ({mode}, kill {kill}) ended with {:?}:\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A process to name as an owner, killed (and waited for) when dropped.
struct OwnerProcess(Child);

impl OwnerProcess {
    fn start() -> Self {
        Self(Command::new("sleep").arg("1000").spawn().unwrap())
    }

    fn owner(&self) -> Owner {
        Owner::of_pid(self.0.id()).unwrap()
    }
}

impl Drop for OwnerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The owner of a process that ran and exited (a VMM that is gone).
fn dead_owner() -> Owner {
    let process = OwnerProcess::start();
    let owner = process.owner();
    drop(process);
    owner
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

/// The files under `dir` whose names start with `prefix`.
fn files_of(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix) || n.starts_with(&format!(".{prefix}")))
        .collect();
    names.sort();
    names
}

/// Runs `f` over `items` on a few threads at once (processes and `ip` commands dominate).
fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let chunk = items.len().div_ceil(8).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

fn outcome_of<'a>(report: &'a ReconcileReport, file: &Path) -> &'a Outcome {
    &report
        .sandboxes
        .iter()
        .find(|s| s.file == file)
        .unwrap_or_else(|| panic!("no report for {}: {report:#?}", file.display()))
        .outcome
}

#[cfg(feature = "fault-injection")]
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
    let attach_points = run_child("attach", probe.pod.name(), &probe_state, "count").unwrap();
    let detach_points = run_child("detach", probe.pod.name(), &probe_state, "count").unwrap();
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
        sandbox.set_owner(owner).unwrap();
        if *left == Left::LiveOwner {
            live_vmms.push(vmm);
        }
    }
    let indexed: Vec<(usize, Left)> = plan.iter().copied().enumerate().collect();
    let killed = in_parallel(&indexed, |&(i, left)| match left {
        Left::KilledInAttach(k) => {
            run_child("attach", pods[i].pod.name(), &state(i), &k.to_string()).is_err()
        }
        Left::KilledInDetach(k) => {
            run_child("detach", pods[i].pod.name(), &state(i), &k.to_string()).is_err()
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
        sandbox.set_owner(Some(dead_owner())).unwrap();
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
        .unwrap();
    // Held by this (live) process, with a dead owner recorded: the lock wins.
    let (mut held, held_vmm) = attach_pod(fx_busy.pod.netns(), &busy).await;
    held.set_owner(Some(dead_owner())).unwrap();
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
        .args(["--ignored", "--exact", "reconcile_child", "--nocapture"])
        .env("SBX_CHILD_MODE", "hold")
        .env("SBX_CHILD_NETNS", "")
        .env("SBX_CHILD_STATE", &busy)
        .env("SBX_CHILD_KILL", "none")
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
