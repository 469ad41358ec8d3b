//! The responder threads, one per queue.

use std::{
    fs::File,
    io::{self, Read, Write},
    os::fd::{AsFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::packet::{Identity, ReplyKind, reply};

/// Length of `struct virtio_net_hdr`, the header `IFF_VNET_HDR` puts before every frame (the
/// kernel's default `TUNSETVNETHDRSZ`).
pub const VIRTIO_NET_HDR_LEN: usize = 10;
/// How often a queue thread looks at the stop flag.
const POLL_INTERVAL_MS: u16 = 20;

/// How the guest is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    /// Its MAC and addresses.
    pub identity: Identity,
    /// Frames carry a virtio-net header (the tap was created with `IFF_VNET_HDR`).
    pub vnet_hdr: bool,
}

/// What the guest has seen and answered so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GuestStats {
    /// Frames read from any queue.
    pub frames_in: u64,
    /// Bytes of those frames (Ethernet header included, virtio-net header not).
    pub bytes_in: u64,
    /// ARP replies sent.
    pub arp_replies: u64,
    /// ICMP echo replies sent.
    pub icmp_echo_replies: u64,
    /// IPv6 neighbour advertisements sent.
    pub neighbour_adverts: u64,
    /// ICMPv6 echo replies sent.
    pub icmpv6_echo_replies: u64,
}

#[derive(Debug, Default)]
struct Counters {
    frames_in: AtomicU64,
    bytes_in: AtomicU64,
    arp: AtomicU64,
    icmp: AtomicU64,
    nd: AtomicU64,
    icmp6: AtomicU64,
}

/// A running guest: one thread per queue descriptor. Dropping it stops the threads and closes
/// the descriptors; [`Guest::stop`] hands them back instead.
#[derive(Debug)]
pub struct Guest {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    threads: Vec<JoinHandle<File>>,
}

impl Guest {
    /// Starts answering on `queues` (the tap's or macvtap's queue descriptors).
    pub fn start(config: GuestConfig, queues: Vec<OwnedFd>) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let config = Arc::new(config);
        let mut guest = Self {
            stop,
            counters,
            threads: Vec::new(),
        };
        for (n, fd) in queues.into_iter().enumerate() {
            let (stop, counters, config) =
                (guest.stop.clone(), guest.counters.clone(), config.clone());
            let thread = std::thread::Builder::new()
                .name(format!("sbx-guest-q{n}"))
                .spawn(move || serve(File::from(fd), &config, &stop, &counters))?;
            guest.threads.push(thread);
        }
        Ok(guest)
    }

    /// The counters so far.
    pub fn stats(&self) -> GuestStats {
        let c = &self.counters;
        GuestStats {
            frames_in: c.frames_in.load(Ordering::SeqCst),
            bytes_in: c.bytes_in.load(Ordering::SeqCst),
            arp_replies: c.arp.load(Ordering::SeqCst),
            icmp_echo_replies: c.icmp.load(Ordering::SeqCst),
            neighbour_adverts: c.nd.load(Ordering::SeqCst),
            icmpv6_echo_replies: c.icmp6.load(Ordering::SeqCst),
        }
    }

    /// Stops every queue thread and returns the descriptors, in queue order.
    pub fn stop(mut self) -> Vec<OwnedFd> {
        self.join().into_iter().map(OwnedFd::from).collect()
    }

    fn join(&mut self) -> Vec<File> {
        self.stop.store(true, Ordering::Relaxed);
        // A queue thread never panics on I/O (it ends its loop instead); a panic would be a
        // bug in the responder, and its descriptor is then lost with the thread.
        self.threads
            .drain(..)
            .filter_map(|t| t.join().ok())
            .collect()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.join();
    }
}

/// One queue: read a frame, answer it if it is for us, until told to stop.
fn serve(mut queue: File, config: &GuestConfig, stop: &AtomicBool, counters: &Counters) -> File {
    let header = if config.vnet_hdr {
        VIRTIO_NET_HDR_LEN
    } else {
        0
    };
    let mut buf = vec![0u8; 65536 + header];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(queue.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(POLL_INTERVAL_MS)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => break,
        }
        let n = match queue.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if e.kind() == io::ErrorKind::Interrupted
                    || e.kind() == io::ErrorKind::WouldBlock =>
            {
                continue;
            }
            // The device went away (EBADFD on a detached queue, EIO): nothing more to serve.
            Err(_) => break,
        };
        if n <= header {
            continue;
        }
        counters.frames_in.fetch_add(1, Ordering::SeqCst);
        counters
            .bytes_in
            .fetch_add((n - header) as u64, Ordering::SeqCst);
        let Some((kind, frame)) = reply(&config.identity, &buf[header..n]) else {
            continue;
        };
        let mut out = vec![0u8; header];
        out.extend_from_slice(&frame);
        let counter = match kind {
            ReplyKind::Arp => &counters.arp,
            ReplyKind::IcmpEcho => &counters.icmp,
            ReplyKind::NeighbourAdvert => &counters.nd,
            ReplyKind::Icmpv6Echo => &counters.icmp6,
        };
        // Counted before it is sent: whoever sees the reply must see it counted (a pinger can
        // return and read the counters before this thread runs again).
        counter.fetch_add(1, Ordering::SeqCst);
        if queue.write_all(&out).is_err() {
            counter.fetch_sub(1, Ordering::SeqCst);
        }
    }
    queue
}
