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
//! - `raw`: the lower bound, the four dumps `scan` asks the kernel for (links without counters,
//!   addresses, routes of every table of both families, neighbours of both families), sent
//!   one after the other on a plain netlink socket (netlink-sys) made once inside the
//!   namespace, each read to its `NLMSG_DONE` into a 64 KiB buffer; the messages are only
//!   walked (header, type), nothing is decoded (50 iterations). `scan/raw` is the ratio of the
//!   medians (the target: at most 1.3 at 128 and 512 links);
//! - `rtnetlink`: six dumps through `Rtnl::exchange` on the reused handle (rtnetlink's
//!   connection: links without counters, addresses, IPv4/IPv6 routes of every table,
//!   IPv4/IPv6 neighbours), decoded by netlink-packet-route, not converted (50 iterations):
//!   what a straightforward scan costs. `scan` decodes link
//!   messages lean (see `crates/netns/src/lean_dump.rs`), hence a ratio below 1 to it;
//! - `CLI scan`: the whole `sandbox-net scan --netns NAME --json` process, output read
//!   (20 iterations); `CLI - scan+open` is the difference of the medians, what the process
//!   costs beyond the in-process scan (the target: at most 1.5 ms);
//! - `ip -j addr`: `ip -j -n NAME addr` run as a process (20 iterations).
//!
//! The netlink variants take turns within each iteration (scan, scan+open, raw, rtnetlink),
//! so that drift and load from the rest of the machine hit them alike; the processes run
//! after them.
//!
//! The table gives medians (p50), and p90 for scan and raw, in milliseconds. Every namespace
//! is deleted at the end (also on error).
//!
//! Only runs when invoked with `--bench` (as `cargo bench` does); other arguments are ignored.
//! Under `cargo test --all-targets` (no `--bench`) it prints a note and exits successfully.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
    time::Instant,
};

use anyhow::{Context, bail, ensure};
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkMessage};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::AddressMessage,
    link::{LinkAttribute, LinkExtentMask, LinkMessage},
    neighbour::NeighbourMessage,
    route::RouteMessage,
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use rtnetlink::RouteMessageBuilder;
use sandbox_net_netns::{Netns, Rtnl, ScanOptions, testing::TestNetns};

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

/// The lower bound of a scan: its four dump requests, serialized once, and a plain netlink
/// socket of the namespace.
struct RawDumps {
    socket: Socket,
    requests: Vec<Vec<u8>>,
    receive: Vec<u8>,
}

impl RawDumps {
    fn new(netns: &Netns) -> anyhow::Result<Self> {
        let socket = netns.run_blocking(|| -> std::io::Result<Socket> {
            let mut socket = Socket::new(NETLINK_ROUTE)?;
            socket.bind_auto()?;
            Ok(socket)
        })??;
        let mut links = LinkMessage::default();
        links
            .attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let requests = [
            RouteNetlinkMessage::GetLink(links),
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
            RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, message)| {
            let mut message = NetlinkMessage::from(message);
            message.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
            message.header.sequence_number = i as u32 + 1;
            message.finalize();
            let mut buffer = vec![0; message.buffer_len()];
            message.serialize(&mut buffer);
            buffer
        })
        .collect();
        Ok(Self {
            socket,
            requests,
            receive: Vec::with_capacity(64 * 1024),
        })
    }

    /// Runs the four dumps one after the other; returns how many messages the link dump had.
    fn run(&mut self) -> anyhow::Result<usize> {
        let mut links = 0;
        for (i, request) in self.requests.iter().enumerate() {
            self.socket
                .send(request, 0)
                .context("send a dump request")?;
            let messages = drain_dump(&self.socket, &mut self.receive)?;
            if i == 0 {
                links = messages;
            }
        }
        Ok(links)
    }
}

/// Reads one dump to its `NLMSG_DONE`, walking the messages' headers only; returns their
/// number.
fn drain_dump(socket: &Socket, receive: &mut Vec<u8>) -> anyhow::Result<usize> {
    let mut count = 0;
    loop {
        receive.clear();
        socket.recv(receive, 0).context("receive a dump")?;
        let mut rest = receive.as_slice();
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes(rest[0..4].try_into()?) as usize;
            let kind = u16::from_ne_bytes(rest[4..6].try_into()?);
            ensure!(
                (16..=rest.len()).contains(&len),
                "bad netlink message length {len}"
            );
            match kind {
                NLMSG_DONE => return Ok(count),
                NLMSG_ERROR => bail!("the kernel refused a dump"),
                _ => count += 1,
            }
            rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        }
    }
}

/// The six dumps of a scan, decoded by netlink-packet-route and nothing more: the same
/// requests (links without counters, `RTEXT_FILTER_SKIP_STATS`) through `Rtnl::exchange`.
async fn raw_dump(rtnl: &Rtnl) -> anyhow::Result<()> {
    let dump = |message| rtnl.exchange(message, NLM_F_REQUEST | NLM_F_DUMP);
    let mut link = LinkMessage::default();
    link.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    let neighbours = |family| {
        let mut message = NeighbourMessage::default();
        message.header.family = family;
        RouteNetlinkMessage::GetNeighbour(message)
    };
    let links = dump(RouteNetlinkMessage::GetLink(link)).await?;
    let addrs = dump(RouteNetlinkMessage::GetAddress(AddressMessage::default())).await?;
    let r4 = dump(RouteNetlinkMessage::GetRoute(
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
    ))
    .await?;
    let r6 = dump(RouteNetlinkMessage::GetRoute(
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ))
    .await?;
    let n4 = dump(neighbours(AddressFamily::Inet)).await?;
    let n6 = dump(neighbours(AddressFamily::Inet6)).await?;
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

/// `sandbox-net scan --netns NAME --json`, the whole process.
fn cli_scan(name: &str) -> anyhow::Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_sandbox-net"))
        .args(["scan", "--netns", name, "--json"])
        .output()
        .context("cannot run sandbox-net")?;
    ensure!(
        out.status.success(),
        "`sandbox-net scan --netns {name} --json` failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    std::hint::black_box(out.stdout);
    Ok(())
}

/// Milliseconds per run of a process, `IP_ITERS` times after `WARMUP` runs.
fn process_measure(run: impl Fn() -> anyhow::Result<()>) -> anyhow::Result<Samples> {
    let mut out = Vec::with_capacity(IP_ITERS);
    for i in 0..WARMUP + IP_ITERS {
        let start = Instant::now();
        run()?;
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
        "{:<6} {:>16} {:>10} {:>16} {:>9} {:>10} {:>9} {:>15} {:>11}",
        "links",
        "scan p50/p90",
        "scan+open",
        "raw p50/p90",
        "scan/raw",
        "rtnetlink",
        "CLI scan",
        "CLI - scan+open",
        "ip -j addr"
    );
    for n in SIZES {
        let fixture = Fixture::new(n);
        let netns = fixture.bench.netns();
        let mut raw_dumps = RawDumps::new(netns)?;
        let (scan, open, raw, rtnetlink) = rt.block_on(async {
            let rtnl = netns.rtnl().await.context("cannot open rtnetlink")?;
            let (mut scan, mut open, mut raw, mut rtnetlink) = (vec![], vec![], vec![], vec![]);
            for i in 0..WARMUP + ITERS {
                let s = timed(scan_checked(&rtnl, n)).await?;
                let o = timed(async {
                    let fresh = netns.rtnl().await.context("cannot open rtnetlink")?;
                    scan_checked(&fresh, n).await
                })
                .await?;
                let started = Instant::now();
                let links = raw_dumps.run()?;
                let r = started.elapsed().as_secs_f64() * 1e3;
                ensure!(
                    links == n + 1,
                    "the raw link dump had {links} messages, expected {}",
                    n + 1
                );
                let d = timed(raw_dump(&rtnl)).await?;
                if i >= WARMUP {
                    scan.push(s);
                    open.push(o);
                    raw.push(r);
                    rtnetlink.push(d);
                }
            }
            anyhow::Ok((
                Samples::from(scan),
                Samples::from(open),
                Samples::from(raw),
                Samples::from(rtnetlink),
            ))
        })?;
        let cli = process_measure(|| cli_scan(fixture.bench.name()))?;
        let ip = process_measure(|| ip_addr(fixture.bench.name()))?;
        println!(
            "{:<6} {:>16} {:>10.3} {:>16} {:>9.2} {:>10.3} {:>9.3} {:>15.3} {:>11.3}",
            n,
            format!("{:.3}/{:.3}", scan.pct(50.0), scan.pct(90.0)),
            open.pct(50.0),
            format!("{:.3}/{:.3}", raw.pct(50.0), raw.pct(90.0)),
            scan.pct(50.0) / raw.pct(50.0),
            rtnetlink.pct(50.0),
            cli.pct(50.0),
            cli.pct(50.0) - open.pct(50.0),
            ip.pct(50.0),
        );
    }
    Ok(())
}
