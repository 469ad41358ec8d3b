//! Measured shaping with real traffic: host-side HTB/IFB limits of an endpoint, checked by
//! sending as fast as possible through the real wiring.
//!
//! Run as root: `cargo bench -p sandbox-net-endpoints --bench shaping`.
//!
//! For each model (tcfilter, macvtap) and each rx/tx limit (none, 10 Mbit/s, 100 Mbit/s), a
//! fresh CNI-like pod is attached to a stand-in VMM that keeps the queue descriptors (no VMM
//! can run here), with the limit in the hypervisor configuration and no limiter of its own.
//! - tx (out of the VM): the guest writes 1442-byte UDP frames to its queue as fast as it can
//!   for the measuring time, with the queue's send buffer unlimited as QEMU sets it; the rate is what arrives at the far end of the pod's veth
//!   (`rx_bytes` of `veth-host` in the host namespace).
//! - rx (into the VM): the host side sends 1400-byte UDP datagrams to the guest's address as
//!   fast as it can, from a socket whose send buffer the shaper cannot fill; the rate is what the user-space guest reads from its queue.
//!
//! Rates count Ethernet frames (what HTB counts). Only runs with `--bench`.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use sandbox_net_endpoints::testing::StandInVmm;
use sandbox_net_endpoints::{
    AttachOptions, Backend, ClassifyOptions, Plug, endpoints_from_scan, physical::SysfsPci,
};
use sandbox_net_guest::{
    Guest, GuestConfig,
    flood::{flood, udp_frame, unlimit_send_buffer},
    packet::Identity,
};
use sandbox_net_interworking::{InterworkingModel, NetnsHandles, TapOptions};
use sandbox_net_netns::{ScanOptions, testing::PodFixture};
use sandbox_net_persist::MacAddr;

const MEASURE: Duration = Duration::from_secs(3);

fn host_rx_bytes(dev: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev")?;
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{dev}:")))
        .context("no such device")?;
    let (_, counters) = line.split_once(':').context("bad /proc/net/dev line")?;
    Ok(counters
        .split_whitespace()
        .next()
        .context("no rx bytes")?
        .parse()?)
}

fn mbit(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
}

/// Attaches the pod's eth0 with `model` and `limit_bits` (0: none); returns the rates in
/// Mbit/s (tx, rx).
async fn measure(model: InterworkingModel, limit_bits: u64) -> anyhow::Result<(f64, f64)> {
    let fx = PodFixture::new();
    let rtnl = fx.pod.netns().rtnl().await?;
    let kernel = NetnsHandles {
        netns: fx.pod.netns(),
        rtnl: &rtnl,
    };
    let scan = rtnl.scan(&ScanOptions::default()).await?;
    let (mut eps, _) = endpoints_from_scan(
        fx.pod.netns(),
        &scan.interfaces,
        0,
        &ClassifyOptions::default(),
    )
    .await?;
    let ep = eps.first_mut().context("no endpoint")?;
    let vmm = StandInVmm::new()
        .single_queue()
        .with_limits(limit_bits, limit_bits);
    let options = AttachOptions {
        model,
        tap: TapOptions::default(),
        sysfs: SysfsPci::host(),
        link_group: None,
        ..AttachOptions::default()
    };
    ep.attach(kernel, &vmm, &options, Plug::Cold).await?;
    let device = vmm.take_device(&ep.id).context("no device")?;
    let queues = match device.backend {
        Backend::Tap { queues, .. } | Backend::Macvtap { queues, .. } => queues,
        _ => bail!("unexpected backend"),
    };
    let guest_mac = device.mac;
    let host_mac: MacAddr = PodFixture::HOST_MAC.parse()?;
    let host = fx.host.netns().clone();

    // rx first, while the tx shaper is idle (a queue it filled would hold back the guest's
    // ARP replies): the host floods towards the guest, which counts what it reads.
    let identity = Identity {
        mac: guest_mac,
        ipv4: vec![Ipv4Addr::new(10, 200, 0, 2)],
        ipv6: vec![],
    };
    let guest = Guest::start(
        GuestConfig {
            identity,
            vnet_hdr: true,
        },
        queues,
    )?;
    let socket = host
        .run(|| -> std::io::Result<UdpSocket> {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            // A send buffer the shaper cannot fill: the sender never sleeps on it, so what
            // arrives is what the shaper lets through (see `unlimit_send_buffer`).
            nix::sys::socket::setsockopt(
                &socket,
                nix::sys::socket::sockopt::SndBufForce,
                &(64 << 20),
            )?;
            Ok(socket)
        })
        .await??;
    let to = SocketAddrV4::new(Ipv4Addr::new(10, 200, 0, 2), 9);
    // Prime ARP (answered by the guest) before measuring.
    let primed = Instant::now();
    while guest.stats().frames_in < 2 {
        socket.send_to(&[0u8; 64], to)?;
        if primed.elapsed() > Duration::from_secs(5) {
            bail!("the guest never saw the host's traffic");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start_bytes = guest.stats().bytes_in;
    let elapsed = tokio::task::spawn_blocking(move || {
        let payload = [0u8; 1400];
        let started = Instant::now();
        while started.elapsed() < MEASURE {
            // A full shaper queue answers ENOBUFS; the sender goes on.
            let _ = socket.send_to(&payload, to);
        }
        started.elapsed()
    })
    .await?;
    let rx = mbit(guest.stats().bytes_in - start_bytes, elapsed);
    let queues = guest.stop();

    // tx: the guest floods towards the host side.
    let frame = udp_frame(
        guest_mac,
        host_mac,
        Ipv4Addr::new(10, 200, 0, 2),
        Ipv4Addr::new(10, 200, 0, 1),
        1400,
    );
    let before = host.run(|| host_rx_bytes(PodFixture::HOST_IF)).await??;
    let queue = queues.first().context("no queue")?.try_clone()?;
    unlimit_send_buffer(&queue)?;
    let sent = tokio::task::spawn_blocking(move || flood(&queue, &frame, true, MEASURE)).await??;
    let after = host.run(|| host_rx_bytes(PodFixture::HOST_IF)).await??;
    let tx = mbit(after - before, sent.elapsed);

    drop(queues);
    ep.detach(kernel, &vmm, &options, Plug::Cold).await?;
    Ok((tx, rx))
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "shaping: run with `cargo bench -p sandbox-net-endpoints --bench shaping` (as root)"
        );
        return Ok(());
    }
    sandbox_net_netns::testing::require_root();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!("model      limit        tx Mbit/s   (err)      rx Mbit/s   (err)");
    for model in [InterworkingModel::TcFilter, InterworkingModel::Macvtap] {
        for limit in [0u64, 10_000_000, 100_000_000] {
            let (tx, rx) = runtime.block_on(measure(model, limit))?;
            let err = |v: f64| {
                if limit == 0 {
                    String::from("-")
                } else {
                    format!("{:+.1}%", (v * 1e6 / limit as f64 - 1.0) * 100.0)
                }
            };
            let label = if limit == 0 {
                "none".to_string()
            } else {
                format!("{} Mbit/s", limit / 1_000_000)
            };
            println!(
                "{model:<10} {label:<12} {tx:>9.1}   {:>7}   {rx:>9.1}   {:>7}",
                err(tx),
                err(rx)
            );
        }
    }
    Ok(())
}
