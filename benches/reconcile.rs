//! Benchmark of reaping leaked sandboxes: 500 single-endpoint sandboxes (tcfilter, rx/tx
//! limits, persistent taps) left with a dead owner, reaped by one `reconcile`, against
//! detaching them one by one with `sandbox-net detach`, and against the raw kernel work.
//!
//! Run as root: `cargo bench --bench reconcile`.
//!
//! - `reconcile`: `sandbox_net::reconcile` of the state directory (default concurrency):
//!   list, read, restore, tear down from the record, remove the state; wall time and per
//!   sandbox. Also with `concurrency = 1`, which pays every sandbox's waits in turn.
//! - `cli detach`: `sandbox-net detach --state FILE` for each sandbox, one after the other
//!   (what an operator did before `reconcile`): process start included.
//! - `raw`: the least kernel work a reap is: per sandbox a netlink socket in its namespace,
//!   the tap deleted, the pod veth's ingress qdisc and HTB root removed; nothing read or
//!   written on disk. With as many threads as reconcile's workers, and with one.
//!
//! Deleting a link makes the kernel wait for an RCU grace period (tens of milliseconds) in the
//! thread that sent the request. Alone, every sandbox pays one; sent from many threads at
//! once, the waits overlap (the kernel's `rcu_barrier` lets every caller that waited during
//! one barrier go at its end), so a batch pays about one. The `waits` column adds up the time
//! each link deletion of a run took (the grace-period waiting if it were paid in turn) next to
//! the wall time of the run.
//!
//! Each configuration runs on fresh pods made before the clock starts, after a pause that lets
//! the kernel finish dismantling the previous run's namespaces. State files live on tmpfs
//! (/dev/shm), as shims keep theirs under /run. Only runs with `--bench`.

use std::{
    path::PathBuf,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use sandbox_net::{NetnsSource, Network, NetworkConfig, Owner, ReconcileOptions, reconcile};
use sandbox_net_endpoints::testing::{OnDevice, StandInVmm};
use sandbox_net_interworking::TapOptions;
use sandbox_net_netns::{Netns, testing::TestNetns};
use sandbox_net_ratelimit::del_htb_tree;

const SANDBOXES: usize = 500;
const RATE: u64 = 100_000_000;

/// A VMM without a limiter, one queue pair, which lets go of the descriptors (the taps are
/// persistent, as for a VMM that opens them by name).
fn drop_vmm() -> StandInVmm {
    StandInVmm::new()
        .single_queue()
        .with_limits(RATE, RATE)
        .on_device(OnDevice::Drop)
}

/// `n` leaked sandboxes: pod namespaces with one addressed veth `vb0` each (peers in one
/// namespace), attached, their owner a process that has exited; their states in `dir`.
struct Leaked {
    pods: Vec<TestNetns>,
    _peers: TestNetns,
    dir: PathBuf,
}

impl Drop for Leaked {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn leak(n: usize, tag: &str) -> anyhow::Result<Leaked> {
    let dir = PathBuf::from(format!(
        "/dev/shm/sandbox-net-bench-reconcile-{}-{tag}",
        std::process::id()
    ));
    let peers = TestNetns::new();
    let mut pods = Vec::with_capacity(n);
    for i in 0..n {
        let pod = TestNetns::new();
        pod.ip_batch(&format!(
            "link add vb0 type veth peer name vp{i} netns {}\naddr add 10.{}.{}.{}/30 dev vb0\nlink set vb0 up\n",
            peers.name(),
            64 + i / 16384,
            (i / 64) % 256,
            (i % 64) * 4 + 1
        ));
        pods.push(pod);
    }
    let gone = dead_owner()?;
    let config = NetworkConfig {
        tap: TapOptions {
            persist: true,
            ..TapOptions::default()
        },
        ..NetworkConfig::default()
    };
    for (i, pod) in pods.iter().enumerate() {
        let mut network = Network::create(
            dir.join(format!("sb{i:03}.json")),
            &format!("sb{i}"),
            NetnsSource::Given(pod.netns().clone()),
            config.clone(),
        )?;
        network.add_endpoints(&drop_vmm(), None).await?;
        network.set_owner(Some(gone.clone())).await?;
    }
    settle(n);
    Ok(Leaked {
        pods,
        _peers: peers,
        dir,
    })
}

/// The owner of a process that ran and has exited: a VMM that is gone.
fn dead_owner() -> anyhow::Result<Owner> {
    let mut child = Command::new("sleep").arg("1000").spawn()?;
    let owner = Owner::of_pid(child.id());
    child.kill()?;
    child.wait()?;
    Ok(owner?)
}

/// Lets the kernel finish dismantling what a previous run dropped (a kernel worker does, on
/// the same two CPUs), so that it is not charged to the next timed section.
fn settle(n: usize) {
    std::thread::sleep(Duration::from_millis(500 + 4 * n as u64));
}

async fn ours(n: usize, concurrency: usize) -> anyhow::Result<Duration> {
    let leaked = leak(n, "ours").await?;
    let options = ReconcileOptions {
        concurrency,
        ..ReconcileOptions::default()
    };
    let started = Instant::now();
    let report = reconcile(&leaked.dir, &options).await?;
    let took = started.elapsed();
    if report.summary.reaped != n || !report.complete() {
        bail!("reconcile did not reap all {n}: {:?}", report.summary);
    }
    Ok(took)
}

fn cli(n: usize, runtime: &tokio::runtime::Runtime) -> anyhow::Result<Duration> {
    let leaked = runtime.block_on(leak(n, "cli"))?;
    let exe = env!("CARGO_BIN_EXE_sandbox-net");
    let started = Instant::now();
    for i in 0..n {
        let state = leaked.dir.join(format!("sb{i:03}.json"));
        let out = Command::new(exe)
            .args(["detach", "--state"])
            .arg(&state)
            .output()?;
        if !out.status.success() {
            bail!(
                "sandbox-net detach {}: {}",
                state.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(started.elapsed())
}

/// The raw reap of every pod on `threads` threads; returns the wall time and the sum of the
/// time each link deletion took.
fn raw(
    n: usize,
    threads: usize,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<(Duration, Duration)> {
    let leaked = runtime.block_on(leak(n, "raw"))?;
    let netns: Arc<Vec<Netns>> = Arc::new(leaked.pods.iter().map(|p| p.netns().clone()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let waits = Arc::new(Mutex::new(Duration::ZERO));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (netns, next, waits, errors) = (
                Arc::clone(&netns),
                Arc::clone(&next),
                Arc::clone(&waits),
                Arc::clone(&errors),
            );
            std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                loop {
                    let at = next.fetch_add(1, Ordering::SeqCst);
                    let Some(ns) = netns.get(at) else { break };
                    let result = rt.block_on(async {
                        let rtnl = ns.rtnl().await?;
                        let tap = rtnl.link_by_name("tap0_kata").await?;
                        let deleting = Instant::now();
                        rtnl.delete_link(&tap).await?;
                        let took = deleting.elapsed();
                        let veth = rtnl.link_by_name("vb0").await?;
                        rtnl.del_ingress_qdisc(&veth).await?;
                        del_htb_tree(&rtnl, &veth).await?;
                        anyhow::Ok(took)
                    });
                    match result {
                        Ok(took) => *waits.lock().unwrap_or_else(|p| p.into_inner()) += took,
                        Err(e) => errors
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!("{e:#}")),
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    let took = started.elapsed();
    let errors = errors.lock().unwrap_or_else(|p| p.into_inner());
    if !errors.is_empty() {
        bail!(
            "raw reap: {} failure(s), first: {}",
            errors.len(),
            errors[0]
        );
    }
    let waits = *waits.lock().unwrap_or_else(|p| p.into_inner());
    Ok((took, waits))
}

fn per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e3 / n as f64
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("reconcile: run with `cargo bench --bench reconcile` (as root)");
        return Ok(());
    }
    sandbox_net_netns::testing::require_root();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let n = SANDBOXES;
    let workers = sandbox_net::reconcile::DEFAULT_CONCURRENCY;
    // One untimed small round of each, so that neither pays the process's first-use costs.
    runtime.block_on(ours(8, workers)).context("warm-up")?;
    raw(8, workers, &runtime).context("warm-up, raw")?;

    println!("{n} leaked single-endpoint sandboxes (tcfilter, rx/tx limits), reaped");
    println!("                               wall s   ms/sandbox  link-deletion waits added up, s");
    let line = |what: &str, wall: Duration, waits: Option<Duration>| {
        println!(
            "{what:<30} {:>6.2} {:>12.2}  {}",
            wall.as_secs_f64(),
            per(wall, n),
            waits
                .map(|w| format!("{:.2}", w.as_secs_f64()))
                .unwrap_or_default()
        );
    };
    let ours_default = runtime.block_on(ours(n, workers))?;
    line(
        &format!("reconcile ({workers} at once)"),
        ours_default,
        None,
    );
    let (raw_parallel, raw_parallel_waits) = raw(n, workers, &runtime)?;
    line(
        &format!("raw ({workers} threads)"),
        raw_parallel,
        Some(raw_parallel_waits),
    );
    let ours_serial = runtime.block_on(ours(n, 1))?;
    line("reconcile (1 at a time)", ours_serial, None);
    let (raw_serial, raw_serial_waits) = raw(n, 1, &runtime)?;
    line("raw (1 thread)", raw_serial, Some(raw_serial_waits));
    let cli_serial = cli(n, &runtime)?;
    line("sandbox-net detach, one by one", cli_serial, None);
    println!(
        "reconcile is {:.1}x faster than detaching one by one; {:.2} s above the raw work with the same parallelism",
        cli_serial.as_secs_f64() / ours_default.as_secs_f64(),
        ours_default.as_secs_f64() - raw_parallel.as_secs_f64()
    );
    Ok(())
}
