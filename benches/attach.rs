//! Benchmark of attach and detach of 1, 16 and 128 endpoints in one namespace, with the
//! tcfilter model and rx/tx limits, against the raw netlink work they consist of; and the peak
//! memory of `sandbox-net attach` for 128 endpoints.
//!
//! Run as root: `cargo bench --bench attach`.
//!
//! - `attach`: `Network::create` (state file and lock) and `Network::add_endpoints` (netlink
//!   socket, scan, classification, per endpoint: the plan written to the state file, 7 kernel
//!   steps and 2 HTB trees, links grouped), divided by N.
//! - `raw attach`: a netlink socket in the namespace, one link dump to find the veths, and the
//!   same kernel changes made directly with the primitives (persistent tap, looked up, MTU, up,
//!   2 ingress qdiscs, 2 redirects, 2 HTB trees), nothing recorded: what any attach must do.
//!   In parentheses, the changes alone.
//!
//! Each size is measured several times, ours and raw alternately, each on a fresh pod after a
//! pause that lets the kernel finish dismantling the previous run's namespaces; the medians are
//! printed. One untimed round first warms both up.
//! - `detach`: `Network::teardown` (the sandbox's links deleted as one device group, then
//!   every endpoint's steps undone from the record), divided by N.
//! - `raw detach`: the taps deleted one by one and the pod links' qdiscs removed, divided by N.
//!
//! The state file lives on tmpfs (/dev/shm), as shims keep theirs under /run, which is tmpfs on
//! production hosts (on these VMs /run is on the disk: every fsync of the state would be a disk
//! write). Only runs with `--bench`.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use sandbox_net::{NetnsSource, Network, NetworkConfig};
use sandbox_net_endpoints::testing::{OnDevice, StandInVmm};
use sandbox_net_interworking::TapOptions;
use sandbox_net_netns::{Rtnl, TapConfig, testing::TestNetns};
use sandbox_net_persist::IfName;
use sandbox_net_ratelimit::{HtbRate, PschedClock, add_htb_tree, del_htb_tree};

const RATE: u64 = 100_000_000;

/// A VMM without a limiter, one queue pair, which lets go of the descriptors (the taps are
/// persistent, as for a VMM that opens them by name).
fn drop_vmm() -> StandInVmm {
    StandInVmm::new()
        .single_queue()
        .with_limits(RATE, RATE)
        .on_device(OnDevice::Drop)
}

/// A pod namespace with `n` addressed veths `vb{i}` (peers in `peers`).
fn pod(n: usize) -> (TestNetns, TestNetns) {
    let pod = TestNetns::new();
    let peers = TestNetns::new();
    let mut script = String::new();
    for i in 0..n {
        script.push_str(&format!(
            "link add vb{i} type veth peer name vp{i} netns {}\naddr add 10.{}.{}.{}/30 dev vb{i}\nlink set vb{i} up\n",
            peers.name(),
            64 + i / 16384,
            (i / 64) % 256,
            (i % 64) * 4 + 1
        ));
    }
    pod.ip_batch(&script);
    settle(n);
    (pod, peers)
}

/// Lets the kernel finish the work a previous run left it (the namespaces it dropped are
/// dismantled by a kernel worker after they are deleted, on the same two CPUs) and this pod's
/// creation started, so that it is not charged to the next timed section.
fn settle(n: usize) {
    std::thread::sleep(Duration::from_millis(100 + 4 * n as u64));
}

fn state_path(tag: &str) -> PathBuf {
    PathBuf::from(format!(
        "/dev/shm/sandbox-net-bench-{}/{tag}.json",
        std::process::id()
    ))
}

fn config() -> NetworkConfig {
    NetworkConfig {
        tap: TapOptions {
            persist: true,
            ..TapOptions::default()
        },
        ..NetworkConfig::default()
    }
}

async fn ours(n: usize) -> anyhow::Result<(Duration, Duration)> {
    let (pod, _peers) = pod(n);
    let state = state_path(&format!("ours-{n}"));
    let started = Instant::now();
    let mut network = Network::create(
        &state,
        "bench",
        NetnsSource::Given(pod.netns().clone()),
        config(),
    )?;
    let (ids, _) = network.add_endpoints(&drop_vmm(), None).await?;
    let attach = started.elapsed();
    if ids.len() != n {
        bail!("attached {} endpoints, expected {n}", ids.len());
    }
    let started = Instant::now();
    network.teardown().await?;
    Ok((attach, started.elapsed()))
}

/// The raw work, timed as: (attach including the netlink socket in the namespace and the link
/// dump that finds the veths, attach of the changes alone, detach).
async fn raw(n: usize) -> anyhow::Result<(Duration, Duration, Duration)> {
    let (pod, _peers) = pod(n);
    let clock = PschedClock::read()?;
    let rate = HtbRate::from_bits(RATE)?;
    let started_with_lookup = Instant::now();
    let rtnl: Rtnl = pod.netns().rtnl().await?;
    let links = rtnl.links().await?;
    let veths: Vec<_> = links
        .iter()
        .filter(|l| l.name.as_str().starts_with("vb"))
        .cloned()
        .collect();
    let started = Instant::now();
    let mut taps = Vec::new();
    for (i, veth) in veths.iter().enumerate() {
        let name = IfName::new(format!("tap{i}_kata"))?;
        let config = TapConfig {
            persist: true,
            ..TapConfig::new(name.clone(), 1)
        };
        drop(pod.netns().create_tap(&config).await?);
        let tap = rtnl.link_by_name(name.as_str()).await?;
        rtnl.set_link_mtu(&tap, veth.mtu).await?;
        rtnl.set_link_up(&tap).await?;
        rtnl.add_ingress_qdisc(veth).await?;
        rtnl.add_ingress_qdisc(&tap).await?;
        rtnl.add_redirect(veth, &tap).await?;
        rtnl.add_redirect(&tap, veth).await?;
        add_htb_tree(&rtnl, &tap, rate, &clock).await?;
        add_htb_tree(&rtnl, veth, rate, &clock).await?;
        taps.push(tap);
    }
    let attach = started.elapsed();
    let attach_with_lookup = started_with_lookup.elapsed();
    let started = Instant::now();
    for (tap, veth) in taps.iter().zip(&veths) {
        rtnl.delete_link(tap).await?;
        del_htb_tree(&rtnl, veth).await?;
        rtnl.del_ingress_qdisc(veth).await?;
    }
    Ok((attach_with_lookup, attach, started.elapsed()))
}

/// Peak resident memory of `sandbox-net attach` for `n` endpoints, in KiB.
fn peak_memory_of_cli_attach(n: usize) -> anyhow::Result<i64> {
    let (pod, _peers) = pod(n);
    let state = state_path("cli");
    let exe = env!("CARGO_BIN_EXE_sandbox-net");
    let attach = Command::new(exe)
        .args([
            "--report-peak-memory",
            "attach",
            "--netns",
            pod.name(),
            "--state",
        ])
        .arg(&state)
        .args(["--rx-rate", "100000000", "--tx-rate", "100000000"])
        .output()?;
    if !attach.status.success() {
        bail!(
            "sandbox-net attach failed: {}",
            String::from_utf8_lossy(&attach.stderr)
        );
    }
    // The process's own VmHWM (getrusage's maxrss of a child spawned by vfork would include this
    // benchmark's memory, shared until exec).
    let stderr = String::from_utf8_lossy(&attach.stderr);
    let kib: i64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak memory: "))
        .and_then(|v| v.trim_end_matches(" kB").trim().parse().ok())
        .context("sandbox-net did not report its peak memory")?;
    let detach = Command::new(exe)
        .args(["detach", "--state"])
        .arg(&state)
        .output()?;
    if !detach.status.success() {
        bail!(
            "sandbox-net detach failed: {}",
            String::from_utf8_lossy(&detach.stderr)
        );
    }
    Ok(kib)
}

fn per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e3 / n as f64
}

/// The median of `runs`, each a fresh pod (these VMs' timings jump from run to run).
fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

/// How many times each size is measured: small pods are quick and noisy.
fn repetitions(n: usize) -> usize {
    match n {
        1 => 21,
        16 => 11,
        _ => 5,
    }
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("attach: run with `cargo bench --bench attach` (as root)");
        return Ok(());
    }
    sandbox_net_netns::testing::require_root();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // One untimed round of each, so that neither side pays the process's first-use costs.
    runtime.block_on(ours(2)).context("warm-up")?;
    runtime.block_on(raw(2)).context("warm-up, raw")?;
    println!("median of runs, ms per endpoint; raw = socket + link dump + changes (changes alone)");
    println!(
        "endpoints runs  attach      raw           ratio   detach  raw detach  (detach total ms)"
    );
    for n in [1usize, 16, 128] {
        let runs = repetitions(n);
        let (mut attach, mut detach) = (Vec::new(), Vec::new());
        let (mut raw_attach, mut raw_changes, mut raw_detach) =
            (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let (a, d) = runtime
                .block_on(ours(n))
                .with_context(|| format!("{n} endpoints"))?;
            let (ra, rc, rd) = runtime
                .block_on(raw(n))
                .with_context(|| format!("{n} endpoints, raw"))?;
            attach.push(a);
            detach.push(d);
            raw_attach.push(ra);
            raw_changes.push(rc);
            raw_detach.push(rd);
        }
        let (attach, detach) = (median(attach), median(detach));
        let (raw_attach, raw_changes, raw_detach) =
            (median(raw_attach), median(raw_changes), median(raw_detach));
        println!(
            "{n:<9} {runs:>4} {:>7.3} {:>7.3} ({:.3}) {:>6.2} {:>8.3} {:>11.3}  ({:.1})",
            per(attach, n),
            per(raw_attach, n),
            per(raw_changes, n),
            attach.as_secs_f64() / raw_attach.as_secs_f64(),
            per(detach, n),
            per(raw_detach, n),
            detach.as_secs_f64() * 1e3
        );
    }
    let kib = peak_memory_of_cli_attach(128)?;
    println!(
        "peak memory of `sandbox-net attach` for 128 endpoints: {:.1} MiB (VmHWM)",
        kib as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(state_path("x").parent().context("no state dir")?);
    Ok(())
}
