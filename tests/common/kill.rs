//! A child process that attaches the pod of [`attach_pod`](super::reconcile::attach_pod) or
//! tears a sandbox down from its state, with a kill countdown shared by every kill point it
//! passes (the kernel steps', and the state store's when asked), and reports each point by
//! name. A test binary that uses [`run_child`] defines the child as
//!
//! ```ignore
//! #[tokio::test]
//! #[ignore = "child process of this file's tests, which run it"]
//! async fn kill_child() {
//!     common::kill::child().await;
//! }
//! ```

use std::{
    os::unix::process::ExitStatusExt,
    path::Path,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use sandbox_net::{Sandbox, SandboxError};
use sandbox_net_endpoints::AttachOptions;
use sandbox_net_interworking::{ApplyHooks, InterworkingModel};
use sandbox_net_netns::Netns;
use sandbox_net_persist::{fault, store::StoreError};
use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    Layer, filter::filter_fn, layer::Context, layer::SubscriberExt as _, registry::Registry,
};

use super::{
    options,
    reconcile::{attach_pod_batch_to, attach_pod_to},
};

/// The name of the child test every binary using [`run_child`] defines.
const CHILD: &str = "kill_child";
/// The countdown of a run that is not to be killed: it counts the points it passes.
const COUNTING: usize = usize::MAX / 2;

/// What the child does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Creates the sandbox at the state path and attaches the pod, then exits without
    /// detaching (a shim that goes away).
    Attach,
    /// Restores the sandbox from the state path, tears it down and removes its state.
    Detach,
    /// Creates the sandbox and attaches every endpoint of the pod in one batch
    /// ([`Sandbox::attach_batch`]: their requests interleaved on one socket), all with
    /// tcfilter and rx/tx limits, then exits without detaching.
    AttachBatch,
}

/// Where the child's countdown starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// No kill: the run lists every kill point it passes.
    Never,
    /// Killed at the kill point with this index (from 0) of the run.
    At(usize),
}

/// Which kill points the countdown arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Points {
    /// Those of the kernel steps (apply, undo, teardown).
    Steps,
    /// Those and the state store's (saves, journal appends, removals).
    StepsAndStore,
}

/// How a child ended.
#[derive(Debug)]
pub struct ChildRun {
    /// The kill points it passed, in order.
    pub passed: Vec<String>,
    /// The kill point it was killed at, when it was killed (by SIGKILL, at that point).
    pub killed_at: Option<String>,
    /// A detach found no state file (stdout says which).
    pub no_state: bool,
}

impl ChildRun {
    /// Whether it was killed.
    pub fn killed(&self) -> bool {
        self.killed_at.is_some()
    }
}

/// Runs the child of this test binary (`mode` on the pod namespace `pod` and the state at
/// `state`, countdown `kill` over `points`).
pub fn run_child(mode: Mode, pod: &str, state: &Path, kill: Kill, points: Points) -> ChildRun {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            CHILD,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "SBX_CHILD_MODE",
            match mode {
                Mode::Attach => "attach",
                Mode::Detach => "detach",
                Mode::AttachBatch => "attach-batch",
            },
        )
        .env("SBX_CHILD_NETNS", pod)
        .env("SBX_CHILD_STATE", state)
        .env(
            "SBX_CHILD_KILL",
            match kill {
                Kill::Never => "count".to_string(),
                Kill::At(k) => k.to_string(),
            },
        )
        .env(
            "SBX_CHILD_STORE_POINTS",
            if points == Points::StepsAndStore {
                "1"
            } else {
                "0"
            },
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let explain = || {
        format!(
            "child ({mode:?}, {kill:?}, {points:?}) ended with {:?}:\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let passed: Vec<String> = stdout
        .lines()
        // The first one may follow the harness's `test kill_child ... ` on its line.
        .filter_map(|l| l.split_once("SBX_KILL_POINT passed ").map(|(_, p)| p))
        .map(String::from)
        .collect();
    let killing = stdout
        .lines()
        .find_map(|l| l.split_once("SBX_KILL_POINT killing ").map(|(_, p)| p))
        .map(String::from);
    match (out.status.signal(), killing) {
        (Some(9), Some(point)) => {
            if let Kill::At(k) = kill {
                assert_eq!(passed.len(), k, "killed after {k} points: {}", explain());
            }
            ChildRun {
                passed,
                killed_at: Some(point),
                no_state: false,
            }
        }
        (None, None) if out.status.success() => {
            let reported: usize = stdout
                .lines()
                .find_map(|l| l.split_once("SBX_KILL_POINTS_PASSED=").map(|(_, n)| n))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("the child reports its kill points: {}", explain()));
            assert_eq!(reported, passed.len(), "{}", explain());
            ChildRun {
                passed,
                killed_at: None,
                no_state: stdout.contains("SBX_CHILD_NO_STATE"),
            }
        }
        _ => panic!("{}", explain()),
    }
}

/// Prints each kill point the process passes (`SBX_KILL_POINT passed NAME`) or dies at
/// (`SBX_KILL_POINT killing NAME`), from the events of `sandbox_net_persist::fault`.
struct PrintKillPoints;

impl<S: Subscriber> Layer<S> for PrintKillPoints {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        struct Point(Option<String>);
        impl Visit for Point {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "point" {
                    self.0 = Some(format!("{value:?}"));
                }
            }
        }
        let mut point = Point(None);
        event.record(&mut point);
        let what = if *event.metadata().level() == Level::WARN {
            "killing"
        } else {
            "passed"
        };
        if let Some(point) = point.0 {
            // A line at a time: stdout is line-buffered, so the line is out before a SIGKILL.
            println!("SBX_KILL_POINT {what} {point}");
        }
    }
}

/// The child's body (see the module documentation).
pub async fn child() {
    let (Ok(mode), Ok(netns), Ok(state), Ok(kill), Ok(store_points)) = (
        std::env::var("SBX_CHILD_MODE"),
        std::env::var("SBX_CHILD_NETNS"),
        std::env::var("SBX_CHILD_STATE"),
        std::env::var("SBX_CHILD_KILL"),
        std::env::var("SBX_CHILD_STORE_POINTS"),
    ) else {
        panic!("{CHILD} runs only as a child of this file's tests");
    };
    let subscriber = Registry::default()
        .with(PrintKillPoints.with_filter(filter_fn(|m| m.target() == fault::TARGET)));
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let start = kill.parse().unwrap_or(COUNTING);
    let counter: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(start)));
    let hooks = ApplyHooks {
        kill_countdown: Some(counter),
        ..ApplyHooks::default()
    };
    let store_countdown = (store_points == "1").then_some(counter);
    let with_hooks = |model| AttachOptions {
        hooks,
        ..options(model)
    };
    match mode.as_str() {
        "attach" | "attach-batch" => {
            let netns = Netns::open_named(&netns).unwrap();
            let mut sandbox = Sandbox::create(
                &state,
                "kill-test",
                netns.clone(),
                InterworkingModel::TcFilter,
            )
            .unwrap();
            sandbox.store().set_kill_countdown(store_countdown);
            let vmm = if mode == "attach" {
                attach_pod_to(&mut sandbox, &netns, with_hooks).await
            } else {
                let options = with_hooks(InterworkingModel::TcFilter);
                attach_pod_batch_to(&mut sandbox, &netns, &options).await
            };
            drop(vmm);
        }
        "detach" => match Sandbox::restore(&state) {
            Ok((mut sandbox, _)) => {
                sandbox.store().set_kill_countdown(store_countdown);
                sandbox
                    .teardown(&with_hooks(InterworkingModel::TcFilter))
                    .await
                    .unwrap();
                sandbox.forget().await.unwrap();
            }
            Err(SandboxError::Store(StoreError::Missing { .. })) => {
                println!("SBX_CHILD_NO_STATE {state}");
            }
            Err(e) => panic!("restore {state}: {e}"),
        },
        other => panic!("unknown mode {other}"),
    }
    let passed = start - counter.load(Ordering::SeqCst);
    println!("SBX_KILL_POINTS_PASSED={passed}");
}
