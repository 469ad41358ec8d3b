//! Benchmark of attach and detach of N endpoints in one pod namespace (tcfilter model, rx and
//! tx limits of 100 Mbit/s, persistent taps), side by side with the lower bound of the same
//! kernel changes and with iproute2; the data syncs of the CLI; its peak memory.
//!
//! Run as root: `cargo bench --bench attach`. `SBX_BENCH_SIZES=16,128` chooses the sizes
//! (default 1,16,128,512), `SBX_BENCH_RUNS=3` the runs per size (default 21 at N=1, 11 at
//! N=16, 5 from 128 on).
//!
//! Each pod is a fresh namespace holding N addressed veths `vb{i}` (MTU 1500; peers in a second
//! namespace), made with one `ip -batch`, after a pause that lets the kernel finish
//! dismantling the previous pods. Each run measures every row below once, each on its own pod,
//! in turn; the tables print the medians, in µs per endpoint (the duration divided by N). One
//! untimed round at N=2 first warms every row up.
//!
//! Rows (the state, where there is one, on tmpfs in the first table, on the disk in the second):
//! - `sandbox-net, in-process`: `Network::create` (state file and lock) and
//!   `Network::add_endpoints` (netlink socket, scan, classification, the plan recorded, the
//!   kernel steps); detach: `Network::teardown`.
//! - `sandbox-net CLI`: the whole `sandbox-net attach --netns NS --state FILE --rx-rate R
//!   --tx-rate R` process, spawned and waited for; detach: `sandbox-net detach --state FILE`.
//! - `raw, one request at a time`: the same changes made directly with the crates' primitives,
//!   each request awaited before the next (persistent tap, looked up, MTU, up, 2 ingress
//!   qdiscs, 2 redirects, 2 HTB trees); detach: the taps deleted one by one, the veths' HTB
//!   trees and ingress qdiscs removed. Nothing is recorded.
//! - `pipelined raw bound`: the lower bound (benches/attach/bound.rs): one thread in the
//!   namespace, a plain netlink socket, one link dump, the taps by ioctl, then all 11 requests
//!   of every endpoint in one buffer sent at once, one ACK; in the rows below, the changes alone
//!   (taps, batch, acks, closes) and their parts (each a median of its own). Detach: the taps
//!   deleted as one device group and the veths' qdisc deletes, in one buffer. Like
//!   `sandbox-net`, it sets the taps up while it holds their queue descriptors and closes them
//!   after: the taps have carrier, so the kernel also gives each an IPv6 link-local address
//!   and routes, and each close waits for an RCU grace period.
//! - `ip -batch + tc -batch`: `ip -n NS -batch -` (tuntap add, link set mtu/group/up) then
//!   `tc -n NS -batch -` (ingress qdiscs, redirects, HTB trees), the scripts on stdin. `ip
//!   tuntap add` closes its descriptor before `link set up`: these taps go up without carrier
//!   and get no IPv6 link-local address or routes, kernel work the other rows do (and pay).
//!
//! The ratios are each row's median over the bound's median (the bound's total, socket and
//! dump included). The raw rows and the iproute2 scripts keep no state: their rows are the same
//! runs in both tables.
//!
//! Before the timed runs, once, at N=16: the bound must leave the namespace as `sandbox-net`
//! does (snapshots of links, addresses, routes, `tc qdisc/class/filter` of every link, MACs and
//! the group's number aside), iproute2 as well but for the taps' carrier and its effects, and
//! the detaches of `sandbox-net` and of the bound must give back the namespace as it was; the
//! bench stops with the differences otherwise.
//!
//! After the tables: the data syncs (fsync, fdatasync, syncfs, sync_file_range) of one
//! `sandbox-net attach` and of one `detach` at N=16 and N=128, counted with `strace -f -c`
//! (the target: at most 2 per attach and 1 per detach, whatever N), and the peak
//! resident memory (VmHWM) of `sandbox-net attach` for 128 endpoints. Only runs with
//! `--bench`.

#[path = "attach/bound.rs"]
mod bound;

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use sandbox_net::{NetnsSource, Network, NetworkConfig};
use sandbox_net_endpoints::testing::{OnDevice, StandInVmm};
use sandbox_net_interworking::TapOptions;
use sandbox_net_netns::{
    REDIRECT_COOKIE, Rtnl, TapConfig,
    testing::{TestNetns, snapshot_differences},
};
use sandbox_net_persist::IfName;
use sandbox_net_ratelimit::{HtbRate, PschedClock, add_htb_tree, del_htb_tree};

/// The rx and tx limits, bits/s.
const RATE: u64 = 100_000_000;
/// The device group of the taps of the bound and of the iproute2 scripts (fresh pods: no
/// other link is in it).
const BOUND_GROUP: u32 = 0x5bb0_0001;
/// The sizes measured unless `SBX_BENCH_SIZES` says otherwise.
const DEFAULT_SIZES: [usize; 4] = [1, 16, 128, 512];
/// The size the kernel state of every row is checked at.
const CHECKED_SIZE: usize = 16;
/// The sizes whose data syncs are counted.
const SYNC_SIZES: [usize; 2] = [16, 128];

/// Where the state files go: one directory per table.
#[derive(Debug, Clone)]
struct StateDir {
    label: &'static str,
    dir: PathBuf,
}

impl StateDir {
    fn tmpfs() -> Self {
        Self {
            label: "tmpfs",
            dir: PathBuf::from(format!("/dev/shm/sandbox-net-bench-{}", std::process::id())),
        }
    }

    fn disk() -> Self {
        Self {
            label: "disk",
            dir: PathBuf::from(format!("/var/tmp/sandbox-net-bench-{}", std::process::id())),
        }
    }

    fn file(&self, tag: &str) -> PathBuf {
        self.dir.join(format!("{tag}.json"))
    }
}

/// A VMM without a limiter, one queue pair, which lets go of the descriptors (the taps are
/// persistent, as for a VMM that opens them by name).
fn drop_vmm() -> StandInVmm {
    StandInVmm::new()
        .single_queue()
        .with_limits(RATE, RATE)
        .on_device(OnDevice::Drop)
}

/// A pod namespace with `n` addressed veths `vb{i}` (peers in `peers`), then a pause.
fn pod(n: usize) -> (TestNetns, TestNetns) {
    let pod = TestNetns::pod_with_veths(n);
    settle(n);
    pod
}

/// Lets the kernel finish the work a previous run left it (the namespaces it dropped are
/// dismantled by a kernel worker after they are deleted, on the same two CPUs) and this pod's
/// creation started, so that it is not charged to the next timed section.
fn settle(n: usize) {
    std::thread::sleep(Duration::from_millis(100 + 4 * n as u64));
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

/// `sandbox-net, in-process`: (attach, detach).
async fn ours(n: usize, state: &StateDir) -> anyhow::Result<(Duration, Duration)> {
    let (pod, _peers) = pod(n);
    let started = Instant::now();
    let network = ours_attach(&pod, n, &state.file(&format!("ours-{n}"))).await?;
    let attach = started.elapsed();
    let started = Instant::now();
    network.teardown().await?;
    Ok((attach, started.elapsed()))
}

async fn ours_attach(pod: &TestNetns, n: usize, state: &Path) -> anyhow::Result<Network> {
    let mut network = Network::create(
        state,
        "bench",
        NetnsSource::Given(pod.netns().clone()),
        config(),
    )?;
    let (ids, _) = network.add_endpoints(&drop_vmm(), None).await?;
    ensure!(
        ids.len() == n,
        "attached {} endpoints, expected {n}",
        ids.len()
    );
    Ok(network)
}

/// `sandbox-net CLI`: (attach process, detach process).
fn ours_cli(n: usize, state: &StateDir) -> anyhow::Result<(Duration, Duration)> {
    let (pod, _peers) = pod(n);
    let file = state.file(&format!("cli-{n}"));
    let started = Instant::now();
    run_cli(&cli_attach_args(&pod, &file))?;
    let attach = started.elapsed();
    let started = Instant::now();
    run_cli(&cli_detach_args(&file))?;
    Ok((attach, started.elapsed()))
}

fn cli_attach_args(pod: &TestNetns, state: &Path) -> Vec<String> {
    let mut args: Vec<String> = ["attach", "--netns", pod.name(), "--state"]
        .map(String::from)
        .into();
    args.push(state.display().to_string());
    args.extend(["--rx-rate", "100000000", "--tx-rate", "100000000"].map(String::from));
    args
}

fn cli_detach_args(state: &Path) -> Vec<String> {
    vec![
        "detach".into(),
        "--state".into(),
        state.display().to_string(),
    ]
}

/// Runs `sandbox-net ARGS`, failing with its stderr; returns its stderr.
fn run_cli(args: &[String]) -> anyhow::Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_sandbox-net"))
        .args(args)
        .output()
        .context("cannot run sandbox-net")?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "sandbox-net {} failed: {stderr}",
        args.join(" ")
    );
    Ok(stderr)
}

/// `raw, one request at a time`: (attach including the netlink socket in the namespace and
/// the link dump that finds the veths, detach).
async fn raw(n: usize) -> anyhow::Result<(Duration, Duration)> {
    let (pod, _peers) = pod(n);
    let clock = PschedClock::read()?;
    let rate = HtbRate::from_bits(RATE)?;
    let started = Instant::now();
    let rtnl: Rtnl = pod.netns().rtnl().await?;
    let links = rtnl.links().await?;
    let veths: Vec<_> = links
        .iter()
        .filter(|l| l.name.as_str().starts_with("vb"))
        .cloned()
        .collect();
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
    let started = Instant::now();
    for (tap, veth) in taps.iter().zip(&veths) {
        rtnl.delete_link(tap).await?;
        del_htb_tree(&rtnl, veth).await?;
        rtnl.del_ingress_qdisc(veth).await?;
    }
    Ok((attach, started.elapsed()))
}

/// `pipelined raw bound`: (attach, its changes alone, detach) and the attach batch's shape.
fn pipelined_bound(n: usize) -> anyhow::Result<(bound::AttachTimes, Duration)> {
    let (pod, _peers) = pod(n);
    let (attached, times) = bound::attach(pod.netns(), RATE, BOUND_GROUP)?;
    ensure!(
        attached.pairs.len() == n,
        "the bound found {} veths, expected {n}",
        attached.pairs.len()
    );
    let detach = bound::detach(attached)?;
    Ok((times, detach))
}

/// The pod's veths and their taps, paired as `sandbox-net` pairs them: the veths sorted by
/// name (Kata's rule), the taps numbered in that order.
fn pairing(n: usize) -> Vec<(String, String)> {
    let mut veths: Vec<String> = (0..n).map(|i| format!("vb{i}")).collect();
    veths.sort();
    veths
        .into_iter()
        .enumerate()
        .map(|(i, veth)| (veth, format!("tap{i}_kata")))
        .collect()
}

/// The `ip -batch` script: the taps, their MTU, group and up.
fn ip_script(n: usize) -> String {
    pairing(n)
        .into_iter()
        .map(|(_, tap)| {
            format!(
                "tuntap add dev {tap} mode tap vnet_hdr\n\
                 link set dev {tap} mtu 1500 group {BOUND_GROUP} up\n"
            )
        })
        .collect()
}

/// The `tc -batch` script: ingress qdiscs, redirects (under the ingress hook, with
/// `sandbox-net`'s cookie), and the HTB trees with the parameters `sandbox-net` sends (burst
/// 1600 bytes, quantum 200000 at 100 Mbit/s).
fn tc_script(n: usize) -> String {
    let mut script = String::new();
    let redirect = "protocol all prio 49152 u32 match u32 0 0 action mirred egress redirect dev";
    let cookie: String = REDIRECT_COOKIE.iter().map(|b| format!("{b:02x}")).collect();
    let class = "htb rate 100mbit ceil 100mbit burst 1600 cburst 1600 quantum 200000";
    for (veth, tap) in pairing(n) {
        script.push_str(&format!(
            "qdisc add dev {veth} ingress\n\
             qdisc add dev {tap} ingress\n\
             filter add dev {veth} ingress {redirect} {tap} cookie {cookie}\n\
             filter add dev {tap} ingress {redirect} {veth} cookie {cookie}\n"
        ));
        for dev in [&tap, &veth] {
            script.push_str(&format!(
                "qdisc add dev {dev} root handle 1: htb default 2\n\
                 class add dev {dev} parent 1: classid 1:1 {class}\n\
                 class add dev {dev} parent 1:1 classid 1:2 {class}\n"
            ));
        }
    }
    script
}

/// Runs `TOOL -n NS -batch -` with `script` on stdin.
fn batch(tool: &str, netns: &str, script: &str) -> anyhow::Result<()> {
    let mut child = Command::new(tool)
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {tool}"))?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{tool} -batch failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// `ip -batch + tc -batch`: the attach (the scripts are written before the clock starts).
fn ip_tc_batch(n: usize) -> anyhow::Result<Duration> {
    let (pod, _peers) = pod(n);
    ip_tc_batch_on(&pod, n)
}

fn ip_tc_batch_on(pod: &TestNetns, n: usize) -> anyhow::Result<Duration> {
    let (ip, tc) = (ip_script(n), tc_script(n));
    let started = Instant::now();
    batch("ip", pod.name(), &ip)?;
    batch("tc", pod.name(), &tc)?;
    Ok(started.elapsed())
}

/// A snapshot without what differs between two correct attaches: MACs (random), the IPv6
/// link-local addresses made from them, and the number of the sandbox's device group.
fn normalized(mut snapshot: serde_json::Value) -> serde_json::Value {
    if let Some(addresses) = snapshot["addresses"].as_array_mut() {
        for address in addresses.iter_mut() {
            if address["family"] == "inet6" && address["scope"] == "link" {
                address["local"] = "link-local (from the MAC)".into();
            }
        }
        addresses.sort_by_cached_key(|a| a.to_string());
    }
    if let Some(links) = snapshot["links"].as_array_mut() {
        for link in links.iter_mut() {
            if let Some(link) = link.as_object_mut() {
                link.remove("address");
                if link.get("group").and_then(|g| g.as_str()) != Some("default") {
                    link.insert("group".into(), "the sandbox's group".into());
                }
            }
        }
        links.sort_by_cached_key(|l| l.to_string());
    }
    snapshot
}

/// A snapshot without what a tap's carrier changes: its `NO-CARRIER` flag, IPv6 link-local
/// address and kernel routes. `ip tuntap add` closes its descriptor before `ip link set up`:
/// the tap is up without carrier, and the kernel gives it no link-local address, where
/// `sandbox-net` sets its taps up while it holds their queues (carrier on, and it stays on).
fn without_carrier_effects(mut snapshot: serde_json::Value) -> serde_json::Value {
    let on_tap =
        |v: &serde_json::Value, key: &str| v[key].as_str().is_some_and(|d| d.starts_with("tap"));
    if let Some(links) = snapshot["links"].as_array_mut() {
        for link in links.iter_mut().filter(|l| on_tap(l, "ifname")) {
            if let Some(flags) = link["flags"].as_array_mut() {
                flags.retain(|f| f != "NO-CARRIER");
            }
        }
        links.sort_by_cached_key(|l| l.to_string());
    }
    if let Some(addresses) = snapshot["addresses"].as_array_mut() {
        addresses.retain(|a| !(on_tap(a, "ifname") && a["family"] == "inet6"));
    }
    if let Some(routes) = snapshot["routes"].as_array_mut() {
        routes.retain(|r| !(on_tap(r, "dev") && r["family"] == "inet6"));
    }
    snapshot
}

fn ensure_same(
    what: &str,
    expected: &serde_json::Value,
    got: &serde_json::Value,
) -> anyhow::Result<()> {
    let differences = snapshot_differences(expected, got);
    ensure!(
        differences.is_empty(),
        "{what}: {} differences:\n  {}",
        differences.len(),
        differences.join("\n  ")
    );
    Ok(())
}

/// Checks, untimed, that the bound and the iproute2 scripts make the kernel objects
/// `sandbox-net` makes at `n` endpoints, and that the detaches give the pod back as it was.
async fn check_kernel_state(n: usize, state: &StateDir) -> anyhow::Result<()> {
    let (ours_pod, _peers) = pod(n);
    let before = normalized(ours_pod.snapshot());
    let network = ours_attach(&ours_pod, n, &state.file("check")).await?;
    let expected = normalized(ours_pod.snapshot());
    let links = expected["links"].as_array().map_or(0, Vec::len);
    ensure!(
        links == 1 + 2 * n,
        "sandbox-net left {links} links, expected lo, {n} veths and {n} taps"
    );
    network.teardown().await?;
    ensure_same(
        "sandbox-net's detach",
        &before,
        &normalized(ours_pod.snapshot()),
    )?;

    let (bound_pod, _peers) = pod(n);
    let (attached, _) = bound::attach(bound_pod.netns(), RATE, BOUND_GROUP)?;
    ensure_same(
        "the pipelined bound's attach against sandbox-net's",
        &expected,
        &normalized(bound_pod.snapshot()),
    )?;
    bound::detach(attached)?;
    ensure_same(
        "the bound's detach",
        &before,
        &normalized(bound_pod.snapshot()),
    )?;

    let (batch_pod, _peers) = pod(n);
    ip_tc_batch_on(&batch_pod, n)?;
    ensure_same(
        "ip -batch + tc -batch against sandbox-net's attach, the taps' carrier aside",
        &without_carrier_effects(expected.clone()),
        &without_carrier_effects(normalized(batch_pod.snapshot())),
    )?;
    println!(
        "kernel state checked at N={n}: the bound makes what sandbox-net makes ({} links, {} \
         qdiscs, {} classes, {} filters), ip+tc the same but for the taps' carrier and IPv6 \
         link-local; sandbox-net's and the bound's detach restore the pod",
        links,
        expected["qdiscs"].as_array().map_or(0, Vec::len),
        expected["classes"].as_array().map_or(0, Vec::len),
        expected["filters"].as_array().map_or(0, Vec::len),
    );
    Ok(())
}

/// The data syncs of `sandbox-net ARGS`, by system call, from `strace -f -c`.
fn data_syncs(args: &[String]) -> anyhow::Result<BTreeMap<String, u64>> {
    let summary = tempfile::NamedTempFile::new()?;
    let out = Command::new("strace")
        .args([
            "-f",
            "-c",
            "-e",
            "trace=fsync,fdatasync,syncfs,sync_file_range",
            "-o",
        ])
        .arg(summary.path())
        .arg(env!("CARGO_BIN_EXE_sandbox-net"))
        .args(args)
        .output()
        .context("cannot run strace")?;
    ensure!(
        out.status.success(),
        "strace sandbox-net {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(summary.path())?;
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        // `% time  seconds  usecs/call  calls  [errors]  syscall`
        let words: Vec<&str> = line.split_whitespace().collect();
        if let (Some(name), Some(count)) = (words.last(), words.get(3))
            && ["fsync", "fdatasync", "syncfs", "sync_file_range"].contains(name)
        {
            calls.insert(name.to_string(), count.parse()?);
        }
    }
    Ok(calls)
}

fn format_syncs(calls: &BTreeMap<String, u64>) -> String {
    let total: u64 = calls.values().sum();
    let each: Vec<String> = calls.iter().map(|(k, v)| format!("{v} {k}")).collect();
    format!(
        "{total}{}",
        if each.is_empty() {
            String::new()
        } else {
            format!(" ({})", each.join(", "))
        }
    )
}

/// The data syncs of one CLI attach and one detach of `n` endpoints.
fn print_data_syncs(n: usize, state: &StateDir) -> anyhow::Result<()> {
    let (pod, _peers) = pod(n);
    let file = state.file(&format!("syncs-{n}"));
    let attach = data_syncs(&cli_attach_args(&pod, &file))?;
    let detach = data_syncs(&cli_detach_args(&file))?;
    println!(
        "data syncs, N={n:<4} attach: {:<24} detach: {}",
        format_syncs(&attach),
        format_syncs(&detach)
    );
    Ok(())
}

/// Peak resident memory of `sandbox-net attach` for `n` endpoints (VmHWM), and its anonymous
/// and file-backed parts at exit, in KiB.
fn peak_memory_of_cli_attach(n: usize, state: &StateDir) -> anyhow::Result<[i64; 3]> {
    let (pod, _peers) = pod(n);
    let file = state.file("peak");
    let mut args = vec!["--report-peak-memory".to_string()];
    args.extend(cli_attach_args(&pod, &file));
    // The process's own VmHWM (getrusage's maxrss of a child spawned by vfork would include
    // this benchmark's memory, shared until exec).
    let stderr = run_cli(&args)?;
    // `peak memory: 10412 kB (at exit: anonymous 2752 kB, file-backed 7660 kB)`
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak memory: "))
        .context("sandbox-net did not report its peak memory")?;
    let numbers: Vec<i64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .collect();
    let [peak, anonymous, file_backed] = numbers[..] else {
        anyhow::bail!("cannot read sandbox-net's memory report {line:?}");
    };
    run_cli(&cli_detach_args(&file))?;
    Ok([peak, anonymous, file_backed])
}

/// The durations of every row at one size, and the shape of the bound's attach batch.
#[derive(Default)]
struct Samples {
    rows: BTreeMap<String, Vec<Duration>>,
    batch: Option<bound::BatchShape>,
}

impl Samples {
    fn push(&mut self, row: impl Into<String>, d: Duration) {
        self.rows.entry(row.into()).or_default().push(d);
    }

    /// The median of the row's runs (each a fresh pod: these VMs' timings jump from run to
    /// run).
    fn median(&self, row: &str) -> Option<Duration> {
        let mut runs = self.rows.get(row)?.clone();
        runs.sort();
        runs.get(runs.len() / 2).copied()
    }
}

/// One run of every row at `n` endpoints.
fn run_once(
    runtime: &tokio::runtime::Runtime,
    n: usize,
    states: &[StateDir],
    samples: &mut Samples,
) -> anyhow::Result<()> {
    for state in states {
        let (a, d) = runtime
            .block_on(ours(n, state))
            .with_context(|| format!("sandbox-net in-process, {n} endpoints, {}", state.label))?;
        samples.push(format!("attach ours {}", state.label), a);
        samples.push(format!("detach ours {}", state.label), d);
        let (a, d) = ours_cli(n, state)
            .with_context(|| format!("sandbox-net CLI, {n} endpoints, {}", state.label))?;
        samples.push(format!("attach cli {}", state.label), a);
        samples.push(format!("detach cli {}", state.label), d);
    }
    let (a, d) = runtime
        .block_on(raw(n))
        .with_context(|| format!("raw, {n} endpoints"))?;
    samples.push("attach raw", a);
    samples.push("detach raw", d);
    let (a, d) = pipelined_bound(n).with_context(|| format!("bound, {n} endpoints"))?;
    samples.push("attach bound", a.total);
    samples.push("attach bound changes", a.changes);
    samples.push("attach bound taps", a.taps);
    samples.push("attach bound requests", a.requests);
    samples.push("attach bound closes", a.closes);
    samples.push("detach bound", d);
    samples.batch = Some(a.batch);
    let a = ip_tc_batch(n).with_context(|| format!("ip+tc batch, {n} endpoints"))?;
    samples.push("attach iproute2", a);
    Ok(())
}

/// Prints the table of one state location.
fn print_table(sizes: &[usize], runs: &[usize], samples: &[Samples], state: &StateDir) {
    let label = state.label;
    println!();
    println!(
        "state on {label} ({}): µs per endpoint, medians of interleaved runs on fresh pods",
        state
            .dir
            .parent()
            .map_or(String::new(), |p| p.display().to_string())
    );
    let mut header = format!("{:<44}", "");
    for n in sizes {
        header.push_str(&format!("{:>10}", format!("N={n}")));
    }
    println!("{header}");
    let line = |name: &str, values: Vec<Option<f64>>, decimals: usize| {
        let mut out = format!("{name:<44}");
        for v in values {
            out.push_str(&match v {
                Some(v) => format!("{v:>10.decimals$}"),
                None => format!("{:>10}", "-"),
            });
        }
        println!("{out}");
    };
    line("runs", runs.iter().map(|r| Some(*r as f64)).collect(), 0);
    let per = |row: &str| -> Vec<Option<f64>> {
        samples
            .iter()
            .zip(sizes)
            .map(|(s, n)| s.median(row).map(|d| d.as_secs_f64() * 1e6 / *n as f64))
            .collect()
    };
    let ratio = |row: &str, bound: &str| -> Vec<Option<f64>> {
        samples
            .iter()
            .map(|s| Some(s.median(row)?.as_secs_f64() / s.median(bound)?.as_secs_f64()))
            .collect()
    };
    let (ours, cli) = (format!("ours {label}"), format!("cli {label}"));
    let attach = |row: &str| format!("attach {row}");
    let detach = |row: &str| format!("detach {row}");
    let rows = [
        ("attach  sandbox-net, in-process", Per(attach(&ours))),
        ("attach  sandbox-net CLI, whole process", Per(attach(&cli))),
        ("attach  raw, one request at a time", Per(attach("raw"))),
        ("attach  pipelined raw bound", Per(attach("bound"))),
        ("          its changes alone", Per(attach("bound changes"))),
        ("            taps by ioctl", Per(attach("bound taps"))),
        (
            "            the batch, sent and acked",
            Per(attach("bound requests")),
        ),
        (
            "            the taps' queues closed",
            Per(attach("bound closes")),
        ),
        (
            "attach  ip -batch + tc -batch (no carrier)",
            Per(attach("iproute2")),
        ),
        (
            "  in-process / bound",
            Ratio(attach(&ours), attach("bound")),
        ),
        ("  CLI / bound", Ratio(attach(&cli), attach("bound"))),
        (
            "  ip+tc / bound",
            Ratio(attach("iproute2"), attach("bound")),
        ),
        ("detach  sandbox-net, in-process", Per(detach(&ours))),
        ("detach  sandbox-net CLI, whole process", Per(detach(&cli))),
        ("detach  raw, one request at a time", Per(detach("raw"))),
        ("detach  raw group-delete bound", Per(detach("bound"))),
        (
            "  in-process / bound",
            Ratio(detach(&ours), detach("bound")),
        ),
        ("  CLI / bound", Ratio(detach(&cli), detach("bound"))),
    ];
    for (name, row) in rows {
        match row {
            Per(row) => line(name, per(&row), 0),
            Ratio(row, bound) => line(name, ratio(&row, &bound), 2),
        }
    }
}

/// A line of a table: a row's µs per endpoint, or the ratio of two rows' medians.
enum TableLine {
    Per(String),
    Ratio(String, String),
}
use TableLine::{Per, Ratio};

/// A list of numbers from an environment variable (`16,128`), or `default`.
fn numbers_from_env(name: &str) -> anyhow::Result<Option<Vec<usize>>> {
    let Ok(text) = std::env::var(name) else {
        return Ok(None);
    };
    let numbers = text
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{name}={text:?}: not a list of numbers"))?;
    ensure!(
        !numbers.is_empty() && numbers.iter().all(|n| *n > 0),
        "{name}={text:?}: give positive numbers"
    );
    Ok(Some(numbers))
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
    let sizes = numbers_from_env("SBX_BENCH_SIZES")?.unwrap_or(DEFAULT_SIZES.to_vec());
    let runs_override = match numbers_from_env("SBX_BENCH_RUNS")? {
        Some(runs) if runs.len() == 1 => Some(runs[0]),
        Some(_) => bail!("SBX_BENCH_RUNS takes one number"),
        None => None,
    };
    let states = [StateDir::tmpfs(), StateDir::disk()];
    let result = bench(&sizes, runs_override, &states);
    for state in &states {
        let _ = std::fs::remove_dir_all(&state.dir);
    }
    result
}

fn bench(sizes: &[usize], runs_override: Option<usize>, states: &[StateDir]) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime
        .block_on(check_kernel_state(CHECKED_SIZE, &states[0]))
        .context("checking the kernel state every row leaves")?;
    // One untimed round of each, so that no row pays the process's first-use costs.
    run_once(&runtime, 2, states, &mut Samples::default()).context("warm-up")?;
    let mut all = Vec::new();
    let mut runs = Vec::new();
    for &n in sizes {
        let count = runs_override.unwrap_or(repetitions(n));
        let mut samples = Samples::default();
        for _ in 0..count {
            run_once(&runtime, n, states, &mut samples)?;
        }
        all.push(samples);
        runs.push(count);
    }
    for state in states {
        print_table(sizes, &runs, &all, state);
    }
    println!();
    for (n, samples) in sizes.iter().zip(&all) {
        if let Some(batch) = samples.batch {
            println!(
                "the bound's attach batch at N={n}: {} requests, {} bytes, {} send(s)",
                batch.requests, batch.bytes, batch.sends
            );
        }
    }
    for n in SYNC_SIZES {
        print_data_syncs(n, &states[0])?;
    }
    let [peak, anonymous, file_backed] = peak_memory_of_cli_attach(128, &states[0])?;
    let mib = |kib: i64| kib as f64 / 1024.0;
    println!(
        "peak memory of `sandbox-net attach` for 128 endpoints: {:.1} MiB (VmHWM); at exit \
         {:.1} MiB anonymous, {:.1} MiB file-backed (code of the binary and libc, shared)",
        mib(peak),
        mib(anonymous),
        mib(file_backed)
    );
    Ok(())
}
