//! Benchmark of `Rtnl::scan` on namespaces holding 1, 128 and 512 veth links.
//!
//! Run as root on Linux: `cargo bench --bench scan`.
//!
//! For each size N, a throwaway "bench" namespace holds N veth ends `vb{i}`, each up with one
//! IPv4 address in its own /30 (their peers `vp{i}` sit in a second throwaway namespace, so
//! the bench namespace holds exactly N veths plus `lo`). Measured per operation, after 5
//! warm-up iterations, with `std::time::Instant`:
//! - `scan`: `Rtnl::scan(&ScanOptions::default())` on one reused `Rtnl` (50 iterations);
//! - `scan+open`: a fresh `Netns::rtnl()` then `scan`, what the CLI pays (50 iterations);
//! - `raw dump`: the six dumps a straightforward scan makes through rtnetlink (links without
//!   counters, addresses, IPv4/IPv6 routes of every table, IPv4/IPv6 neighbours) on the same
//!   reused handle, drained one after the other, decoded by rtnetlink, not converted
//!   (50 iterations). `scan` itself decodes link messages lean and asks the kernel for the
//!   main routing table only (see `crates/netns/src/lean_dump.rs`), hence a ratio below 1;
//! - `ip -j addr`: `ip -j -n NAME addr` run as a process (20 iterations).
//!
//! The three netlink variants take turns within each iteration (scan, scan+open, raw), so
//! that drift and load from the rest of the machine hit them alike.
//!
//! The table gives median (p50) and p90 in milliseconds, and the ratio of the scan's median
//! to the raw dump's. Every namespace is deleted at the end (also on error).
//!
//! Only runs when invoked with `--bench` (as `cargo bench` does); other arguments are ignored.
//! Under `cargo test --all-targets` (no `--bench`) it prints a note and exits successfully.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
    time::Instant,
};

use anyhow::{Context, ensure};
use futures::TryStreamExt;
use netlink_packet_route::{AddressFamily, link::LinkExtentMask};
use rtnetlink::RouteMessageBuilder;
use sandbox_net_netns::{Rtnl, ScanOptions, testing::TestNetns};

const SIZES: [usize; 3] = [1, 128, 512];
const WARMUP: usize = 5;
const ITERS: usize = 50;
const IP_ITERS: usize = 20;

/// The bench namespace (N veths + lo) and the one holding the peers.
struct Fixture {
    bench: TestNetns,
    _peers: TestNetns,
}

impl Fixture {
    fn new(n: usize) -> Self {
        let bench = TestNetns::new();
        let peers = TestNetns::new();
        let mut script = String::new();
        for i in 0..n {
            // 10.64.0.0/19 split into /30s: vb{i} gets the first host of the i-th one.
            let base = i * 4;
            let _ = writeln!(
                script,
                "link add vb{i} type veth peer name vp{i} netns {peer}\n\
                 addr add 10.64.{}.{}/30 dev vb{i}\n\
                 link set vb{i} up",
                base / 256,
                base % 256 + 1,
                peer = peers.name(),
            );
        }
        bench.ip_batch(&script);
        Self {
            bench,
            _peers: peers,
        }
    }
}

/// Milliseconds per operation, sorted; `pct` gives the nearest-rank percentile.
struct Samples(Vec<f64>);

impl Samples {
    fn pct(&self, p: f64) -> f64 {
        let rank = (p / 100.0 * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }
}

impl From<Vec<f64>> for Samples {
    fn from(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        Self(v)
    }
}

/// Runs `op`, returning its duration in milliseconds.
async fn timed(op: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<f64> {
    let start = Instant::now();
    op.await?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

async fn scan_checked(rtnl: &Rtnl, n: usize) -> anyhow::Result<()> {
    let scan = rtnl
        .scan(&ScanOptions::default())
        .await
        .context("scan failed")?;
    if scan.interfaces.len() != n {
        panic!(
            "scan returned {} interfaces in a namespace holding {n} addressed veths (+ lo); \
             skipped: {:?}",
            scan.interfaces.len(),
            scan.skipped
        );
    }
    std::hint::black_box(scan);
    Ok(())
}

/// The six dumps of a scan, raw: the same requests (links without counters,
/// `RTEXT_FILTER_SKIP_STATS`), messages collected, nothing converted.
async fn raw_dump(rtnl: &Rtnl) -> anyhow::Result<()> {
    let h = rtnl.handle();
    let links: Vec<_> = h
        .link()
        .get()
        .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats])
        .execute()
        .try_collect()
        .await?;
    let addrs: Vec<_> = h.address().get().execute().try_collect().await?;
    let r4: Vec<_> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await?;
    let r6: Vec<_> = h
        .route()
        .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
        .execute()
        .try_collect()
        .await?;
    let n4: Vec<_> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute()
        .try_collect()
        .await?;
    let n6: Vec<_> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet6)
        .execute()
        .try_collect()
        .await?;
    ensure!(!links.is_empty(), "raw dump returned no link");
    std::hint::black_box((links, addrs, r4, r6, n4, n6));
    Ok(())
}

fn ip_addr(name: &str) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["-j", "-n", name, "addr"])
        .output()
        .context("cannot run ip")?;
    ensure!(
        out.status.success(),
        "`ip -j -n {name} addr` failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    std::hint::black_box(out.stdout);
    Ok(())
}

fn ip_measure(name: &str) -> anyhow::Result<Samples> {
    let mut out = Vec::with_capacity(IP_ITERS);
    for i in 0..WARMUP + IP_ITERS {
        let start = Instant::now();
        ip_addr(name)?;
        if i >= WARMUP {
            out.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(out.into())
}

/// Effective uid from /proc/self/status (std only).
fn is_root() -> anyhow::Result<bool> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no Uid line in /proc/self/status")?;
    Ok(euid == "0")
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().skip(1).any(|a| a == "--bench") {
        println!("scan benchmark not run (no --bench): use `cargo bench --bench scan` as root");
        return Ok(());
    }
    if !is_root()? {
        eprintln!(
            "the scan benchmark needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create network \
             namespaces: run `cargo bench --bench scan` as root"
        );
        std::process::exit(1);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")?;
    println!(
        "{:<6} {:>18} {:>14} {:>18} {:>9} {:>15}",
        "links",
        "scan(ms) p50/p90",
        "scan+open p50",
        "raw dump p50/p90",
        "scan/raw",
        "ip -j addr p50"
    );
    for n in SIZES {
        let fixture = Fixture::new(n);
        let netns = fixture.bench.netns();
        let (scan, open, raw) = rt.block_on(async {
            let rtnl = netns.rtnl().await.context("cannot open rtnetlink")?;
            let (mut scan, mut open, mut raw) = (vec![], vec![], vec![]);
            for i in 0..WARMUP + ITERS {
                let s = timed(scan_checked(&rtnl, n)).await?;
                let o = timed(async {
                    let fresh = netns.rtnl().await.context("cannot open rtnetlink")?;
                    scan_checked(&fresh, n).await
                })
                .await?;
                let r = timed(raw_dump(&rtnl)).await?;
                if i >= WARMUP {
                    scan.push(s);
                    open.push(o);
                    raw.push(r);
                }
            }
            anyhow::Ok((Samples::from(scan), Samples::from(open), Samples::from(raw)))
        })?;
        let ip = ip_measure(fixture.bench.name())?;
        println!(
            "{:<6} {:>18} {:>14.3} {:>18} {:>9.2} {:>15.3}",
            n,
            format!("{:.3}/{:.3}", scan.pct(50.0), scan.pct(90.0)),
            open.pct(50.0),
            format!("{:.3}/{:.3}", raw.pct(50.0), raw.pct(90.0)),
            scan.pct(50.0) / raw.pct(50.0),
            ip.pct(50.0),
        );
    }
    Ok(())
}
