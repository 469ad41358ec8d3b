//! Faults inside steps and during teardown: a child process attaching the pod (eth0 with
//! tcfilter, eth1 with macvtap, both with rx and tx limits: HTB on the tap, on eth0, on the
//! macvtap and on an IFB) or tearing it down is killed with SIGKILL at every kill point of one
//! family in turn (between the requests of an HTB tree, after the combined change of a link
//! just created, inside a save or a journal append, at every point of a detach), and the next
//! detach (a new process) or reconcile must give the pod back exactly as it was (same
//! snapshot), leave no link of ours and remove every file of the state.
//!
//! The kill points of a run are listed by name by a first run that is not killed (see
//! `common::kill`); the runs that follow are killed at each point of the family, and each one
//! must die at the point of that name. One pod serves every kill point of a test: each
//! recovery must have restored it exactly before the next kill.
// The children kill themselves through the fault points of the `fault-injection` feature.
#![cfg(feature = "fault-injection")]
// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;

use common::{
    add_pod_links,
    kill::{ChildRun, Kill, Mode, Points, run_child},
    our_links,
    reconcile::{attach_pod, attach_pod_batch, dead_owner, files_of},
};
use sandbox_net::{ReconcileOptions, Sandbox, reconcile};
use sandbox_net_netns::testing::{PodFixture, assert_same_snapshot, require_root};

#[tokio::test]
#[ignore = "child process of this file's tests, which run it"]
async fn kill_child() {
    common::kill::child().await;
}

/// The state file's name in each test's directory.
const STATE: &str = "sb.json";

/// A pod with eth0 and eth1, its snapshot before anything, and a state directory.
struct Scene {
    fx: PodFixture,
    before: serde_json::Value,
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Self {
        require_root();
        let fx = PodFixture::new();
        add_pod_links(&fx.pod, 1);
        let before = fx.pod.snapshot();
        Self {
            fx,
            before,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn state(&self) -> std::path::PathBuf {
        self.dir.path().join(STATE)
    }

    fn run(&self, mode: Mode, kill: Kill) -> ChildRun {
        run_child(
            mode,
            self.fx.pod.name(),
            &self.state(),
            kill,
            Points::StepsAndStore,
        )
    }

    /// Tears the sandbox down in a new process; true when the process found no state file.
    fn detach(&self, context: &str) -> bool {
        let run = self.run(Mode::Detach, Kill::Never);
        assert!(!run.killed(), "{context}: the detach is not killed");
        run.no_state
    }

    /// The pod is as before, no link of ours is left, and no file of the state.
    fn assert_restored(&self, context: &str) {
        assert_eq!(
            our_links(&self.fx.pod),
            Vec::<String>::new(),
            "{context}: links of ours left"
        );
        assert_eq!(
            files_of(self.dir.path(), STATE),
            Vec::<String>::new(),
            "{context}: files of the state left"
        );
        let after = self.fx.pod.snapshot();
        if after != self.before {
            eprintln!("{context}: the pod is not restored");
        }
        assert_same_snapshot(&self.before, &after);
    }

    /// The kill points of a whole attach, listed by a run that is not killed (then detached).
    fn attach_points(&self) -> Vec<String> {
        self.points_of(Mode::Attach)
    }

    /// The kill points of a whole attach of kind `mode`, listed by a run that is not killed
    /// (then detached).
    fn points_of(&self, mode: Mode) -> Vec<String> {
        let run = self.run(mode, Kill::Never);
        assert!(!run.killed());
        assert!(!self.detach("after the listing attach"));
        self.assert_restored("after the listing attach");
        run.passed
    }

    /// Kills an attach at each kill point whose name `family` accepts; after each kill,
    /// `inspect` sees the half-done state (the point's name) before a detach in a new process
    /// recovers it. Returns the points covered.
    fn kill_attach_at_each(
        &self,
        family: impl Fn(&str) -> bool,
        inspect: impl Fn(&str),
    ) -> Vec<String> {
        let points = self.attach_points();
        let mut covered = Vec::new();
        for (k, listed) in points.iter().enumerate().filter(|(_, p)| family(p)) {
            let run = self.run(Mode::Attach, Kill::At(k));
            let point = run
                .killed_at
                .unwrap_or_else(|| panic!("kill {k} ({listed})"));
            assert_eq!(shape(&point), shape(listed), "kill {k}");
            inspect(&point);
            let context = format!("attach killed at {k} ({point})");
            // Only a first save killed before its rename leaves no document (nothing was
            // done yet); the detach still removes what is left of it.
            let first_save = k == 0 && point.ends_with("written, before the rename");
            assert_eq!(self.detach(&context), first_save, "{context}: a state file");
            self.assert_restored(&context);
            covered.push(point);
        }
        eprintln!(
            "{} of the {} kill points of an attach covered:\n  {}",
            covered.len(),
            points.len(),
            covered.join("\n  ")
        );
        covered
    }

    /// The sandbox as the next process loads it (then lets go of it when dropped).
    fn load(&self) -> Sandbox {
        let (sandbox, warnings) = Sandbox::restore(self.state()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        sandbox
    }
}

/// A kill point's name without what differs from one run to the next: the sandbox's device
/// group, the IFB's name (from the endpoint's random id), MAC addresses.
fn shape(point: &str) -> String {
    point
        .split(' ')
        .map(|token| {
            let bare = token.trim_end_matches(':');
            if !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit()) {
                "N"
            } else if bare.starts_with("sbx") {
                "IFB"
            } else if bare.len() == 17 && bare.matches(':').count() == 5 {
                "MAC"
            } else {
                token
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The link named in a kill point `htb tree of LINK: after ...`.
fn htb_link(point: &str) -> &str {
    point
        .strip_prefix("htb tree of ")
        .and_then(|p| p.split(':').next())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_kill_between_the_requests_of_an_htb_tree_leaves_a_half_tree_the_next_detach_removes() {
    let scene = Scene::new();
    let covered = scene.kill_attach_at_each(
        |p| p.starts_with("htb tree of "),
        |point| {
            // The tree is half built: the root qdisc, and no class or one.
            let link = htb_link(point);
            let qdiscs = scene.fx.pod.tc(&["qdisc", "show", "dev", link]);
            assert!(qdiscs.contains("qdisc htb 1: root"), "{point}: {qdiscs}");
            let classes = scene.fx.pod.htb_classes(link).len();
            let expected = if point.ends_with("after htb root qdisc 1:") {
                0
            } else {
                1
            };
            assert_eq!(classes, expected, "{point}: classes of {link}");
        },
    );
    // Four trees (the tap and eth0 of tcfilter, the macvtap and the IFB of macvtap), each
    // killed after its root qdisc and after its first class.
    let mut links: Vec<String> = covered.iter().map(|p| shape(htb_link(p))).collect();
    links.dedup();
    assert_eq!(links.len(), 4, "{covered:?}");
    assert!(
        links.contains(&"eth0".into()),
        "the pod's own link: {links:?}"
    );
    assert_eq!(covered.len(), 8, "{covered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_kill_after_the_combined_change_of_a_new_link_is_undone_by_the_next_detach() {
    let scene = Scene::new();
    let covered = scene.kill_attach_at_each(
        |p| p.starts_with("after the combined change of "),
        |point| {
            // The kernel took the one request: the new link is in the sandbox's device group
            // (and a tap has its MTU and is up), and the record can be loaded.
            let link = point.strip_prefix("after the combined change of ").unwrap();
            let group = scene.load().state().link_group;
            let shown = scene.fx.pod.ip_json(&["-d", "link", "show", "dev", link]);
            // iproute2 prints a group without a name as a signed number.
            assert_eq!(
                shown[0]["group"].as_str().map(String::from),
                Some((group as i32).to_string()),
                "{point}: {shown}"
            );
            if link == "tap0_kata" {
                let eth0 = scene.fx.pod.ip_json(&["link", "show", "dev", "eth0"]);
                assert_eq!(shown[0]["mtu"], eth0[0]["mtu"], "{point}");
                let flags = shown[0]["flags"].as_array().unwrap();
                assert!(flags.iter().any(|f| f == "UP"), "{point}: {shown}");
            }
        },
    );
    // The tap of tcfilter (MTU, up, group) and the macvtap (group).
    assert_eq!(
        covered,
        [
            "after the combined change of tap0_kata",
            "after the combined change of tap1_kata"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_kill_inside_a_save_or_a_journal_append_leaves_a_state_the_next_detach_cleans_up() {
    let scene = Scene::new();
    let state = scene.state();
    let journal = scene.dir.path().join(format!("{STATE}.journal"));
    let temporaries = || {
        files_of(scene.dir.path(), STATE)
            .into_iter()
            .filter(|f| f.ends_with(".tmp"))
            .count()
    };
    let covered = scene.kill_attach_at_each(
        |p| p.starts_with("save ") || p.starts_with("append to "),
        |point| {
            if point.ends_with("written, before the rename") {
                // The temporary file is left behind; the document is the one before (none
                // before the first save).
                assert_eq!(temporaries(), 1, "{point}");
            } else if point.ends_with("renamed, before the directory sync") {
                assert_eq!(temporaries(), 0, "{point}");
                assert!(state.exists(), "{point}");
            } else {
                // Half a line of the journal, cut short by the kill: ignored on load, and cut
                // off before the next line, so that a line appended after it reads back.
                let text = fs::read(&journal).unwrap();
                assert_ne!(text.last(), Some(&b'\n'), "{point}: a torn last line");
                let endpoints = scene.load().state().endpoints.len();
                let owner = dead_owner();
                let mut sandbox = scene.load();
                // This inspection is synchronous, on a worker of the test's multi-thread
                // runtime.
                tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current()
                        .block_on(sandbox.set_owner(Some(owner.clone())))
                })
                .unwrap();
                drop(sandbox);
                let sandbox = scene.load();
                assert_eq!(sandbox.owner(), Some(&owner), "{point}");
                assert_eq!(sandbox.state().endpoints.len(), endpoints, "{point}");
                // The owner's change was committed: appended after the torn line (cut off
                // first), or folded with everything into a new document (journal emptied).
                let text = fs::read(&journal).unwrap();
                assert!(
                    text.is_empty() || text.last() == Some(&b'\n'),
                    "{point}: the torn line is cut off: {:?}",
                    String::from_utf8_lossy(&text)
                );
            }
            if state.exists() {
                drop(scene.load());
            }
        },
    );
    // Today: the first save (the first endpoint's plan) at both of its points, a journal
    // line (it attached), the first attach's commit (the new document saved anew), two
    // journal lines (the second's plan; it attached). However the attach writes its records,
    // each kind of point must be met.
    for kind in [
        "written, before the rename",
        "renamed, before the directory sync",
        "half a line written",
    ] {
        assert!(
            covered.iter().any(|p| p.ends_with(kind)),
            "{kind}: {covered:?}"
        );
    }
}

/// How the sandbox a detach test tears down was attached.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attached {
    /// eth0 with tcfilter, then eth1 with macvtap ([`attach_pod`]).
    OneByOne,
    /// eth0 and eth1 in one batch, with tcfilter ([`attach_pod_batch`]).
    AsOneBatch,
}

/// Kills a detach at each of its kill points in turn (0, 1, 2, ... until a detach is not
/// killed), each time after an attach in this process whose owner has exited since (a VMM that
/// is gone); `recover` finishes the job. Returns the points covered.
async fn kill_detach_at_each(scene: &Scene, recover: impl AsyncFn(&Scene, &str)) -> Vec<String> {
    kill_detach_of_at_each(scene, Attached::OneByOne, recover).await
}

/// [`kill_detach_at_each`] of a sandbox attached as `attached` says.
async fn kill_detach_of_at_each(
    scene: &Scene,
    attached: Attached,
    recover: impl AsyncFn(&Scene, &str),
) -> Vec<String> {
    let attach = || async {
        let netns = scene.fx.pod.netns();
        let (mut sandbox, vmm) = match attached {
            Attached::OneByOne => attach_pod(netns, &scene.state()).await,
            Attached::AsOneBatch => attach_pod_batch(netns, &scene.state()).await,
        };
        sandbox.set_owner(Some(dead_owner())).await.unwrap();
        drop(vmm);
    };
    attach().await;
    let listing = scene.run(Mode::Detach, Kill::Never);
    assert!(!listing.killed() && !listing.no_state);
    scene.assert_restored("after the listing detach");
    let points = listing.passed;
    let mut covered = Vec::new();
    for k in 0.. {
        attach().await;
        let run = scene.run(Mode::Detach, Kill::At(k));
        let Some(point) = run.killed_at else {
            assert_eq!(k, points.len(), "a detach passes the same points each time");
            scene.assert_restored("after a detach that was not killed");
            break;
        };
        if attached == Attached::OneByOne {
            assert_eq!(
                Some(shape(&point)),
                points.get(k).map(|p| shape(p)),
                "kill {k}"
            );
        } else {
            // The endpoints of a batch are undone concurrently, in the order the kernel's
            // answers come: the k-th point is one of the listing's, not always its k-th.
            assert!(
                points.iter().any(|p| shape(p) == shape(&point)),
                "kill {k}: {point} is not a point of the listing {points:#?}"
            );
        }
        let context = format!("detach killed at {k} ({point})");
        recover(scene, &context).await;
        scene.assert_restored(&context);
        covered.push(point);
    }
    eprintln!(
        "every one of the {} kill points of a detach covered:\n  {}",
        covered.len(),
        covered.join("\n  ")
    );
    // A teardown writes one journal line per endpoint (no save of the whole document) and
    // removes the files at the end.
    for family in [
        "append to ",
        "delete the links of device group ",
        "undo ",
        "remove ",
    ] {
        assert!(
            covered.iter().any(|p| p.starts_with(family)),
            "a kill point {family}...: {covered:?}"
        );
    }
    covered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_detach_killed_at_any_of_its_points_is_finished_by_the_next_detach() {
    let scene = Scene::new();
    kill_detach_at_each(&scene, async |scene: &Scene, context: &str| {
        if scene.detach(context) {
            eprintln!("{context}: no state file for the detach");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_detach_killed_at_any_of_its_points_is_finished_by_reconcile() {
    let scene = Scene::new();
    kill_detach_at_each(&scene, async |scene: &Scene, context: &str| {
        let had_state = scene.state().exists();
        let report = reconcile(scene.dir.path(), &ReconcileOptions::default())
            .await
            .unwrap();
        assert!(report.complete(), "{context}: {report:#?}");
        let reaped = if had_state { 1 } else { 0 };
        assert_eq!(report.summary.reaped, reaped, "{context}: {report:#?}");
    })
    .await;
}

/// A batch attach (both endpoints prepared at once, their requests interleaved on one
/// socket) killed at every one of its kill points in turn: before and inside every kernel
/// step of each endpoint (each request or, for an HTB tree, between its requests), inside
/// every save and journal append. Each time, a detach in a new process gives the pod back
/// exactly. The interleaving of the two endpoints' requests follows the kernel's answers, so
/// a run may meet the points in another order than the listing: the k-th kill lands at the
/// k-th boundary of its own run, which is one of the listing's points, and every boundary
/// 0..N of a run is killed at once. The listing shows that a run passes a point inside every
/// step of both endpoints and inside every kind of write of the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_batch_attach_killed_at_any_of_its_points_is_undone_by_the_next_detach() {
    let scene = Scene::new();
    let points = scene.points_of(Mode::AttachBatch);
    let listed: Vec<String> = points.iter().map(|p| shape(p)).collect();
    let mut covered = Vec::new();
    for k in 0..points.len() {
        let run = scene.run(Mode::AttachBatch, Kill::At(k));
        let point = run
            .killed_at
            .unwrap_or_else(|| panic!("batch attach kill {k} ({}) did not land", points[k]));
        assert!(
            listed.contains(&shape(&point)),
            "kill {k}: {point} is not a point of the listing {points:#?}"
        );
        let context = format!("batch attach killed at {k} ({point})");
        let first_save = k == 0 && point.ends_with("written, before the rename");
        assert_eq!(
            scene.detach(&context),
            first_save,
            "{context}: a state file"
        );
        scene.assert_restored(&context);
        covered.push(point);
    }
    eprintln!(
        "every one of the {} kill points of a batch attach covered:\n  {}",
        covered.len(),
        covered.join("\n  ")
    );
    // A run passes points inside each endpoint's steps (each tap's creation, each HTB tree
    // between its requests) and the state's writes: every one of them is a boundary above.
    for family in [
        "after the combined change of tap0_kata",
        "after the combined change of tap1_kata",
        "htb tree of tap0_kata: ",
        "htb tree of tap1_kata: ",
        "htb tree of eth0: ",
        "htb tree of eth1: ",
        "save ",
        "append to ",
    ] {
        assert!(
            points.iter().any(|p| p.starts_with(family)),
            "a kill point {family}...: {points:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_detach_of_a_batch_killed_at_any_of_its_points_is_finished_by_the_next_detach() {
    let scene = Scene::new();
    kill_detach_of_at_each(
        &scene,
        Attached::AsOneBatch,
        async |scene: &Scene, context: &str| {
            if scene.detach(context) {
                eprintln!("{context}: no state file for the detach");
            }
        },
    )
    .await;
}
