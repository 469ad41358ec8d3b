//! ICMP and ICMPv6 echo from the calling thread's namespace, without an external `ping`.
//!
//! Raw sockets bind to the namespace of the thread that creates them, so call [`ping`] inside
//! the namespace to probe from, e.g. within `Netns::run`.

use std::{
    io,
    net::IpAddr,
    time::{Duration, Instant},
};

use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrIn6, recvfrom,
    sendto, setsockopt, socket, sockopt,
};

use crate::packet::checksum;

/// What a run of echo requests got back.
#[derive(Debug, Clone, PartialEq)]
pub struct PingReport {
    /// Requests sent.
    pub sent: u16,
    /// Matching replies received.
    pub received: u16,
    /// Round-trip time of each reply received.
    pub rtts: Vec<Duration>,
}

impl PingReport {
    /// The median round-trip time, if any reply came.
    pub fn median_rtt(&self) -> Option<Duration> {
        let mut rtts = self.rtts.clone();
        rtts.sort();
        rtts.get(rtts.len() / 2).copied()
    }
}

/// Sends `count` echo requests to `dst`, one after the other, waiting up to `timeout` for
/// each reply. Needs `CAP_NET_RAW`.
pub fn ping(dst: IpAddr, count: u16, timeout: Duration) -> io::Result<PingReport> {
    let (family, protocol, echo_request, echo_reply) = match dst {
        IpAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp, 8u8, 0u8),
        IpAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6, 128, 129),
    };
    let fd = socket(family, SockType::Raw, SockFlag::SOCK_CLOEXEC, protocol)?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout_as_timeval(timeout))?;
    // An identifier of our own, so replies to another pinger are not counted.
    let id = (std::process::id() as u16) ^ 0x5b5b;
    let mut report = PingReport {
        sent: 0,
        received: 0,
        rtts: Vec::new(),
    };
    let mut buf = [0u8; 2048];
    for seq in 1..=count {
        let mut request = vec![echo_request, 0, 0, 0];
        request.extend_from_slice(&id.to_be_bytes());
        request.extend_from_slice(&seq.to_be_bytes());
        request.extend_from_slice(b"sandbox-net ping");
        if dst.is_ipv4() {
            // The kernel fills in the ICMPv6 checksum itself; ICMPv4's is ours.
            let sum = checksum(&[&request]);
            request[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        let started = Instant::now();
        match dst {
            IpAddr::V4(v4) => sendto(
                fd.as_raw(),
                &request,
                &SockaddrIn::from(std::net::SocketAddrV4::new(v4, 0)),
                MsgFlags::empty(),
            )?,
            IpAddr::V6(v6) => sendto(
                fd.as_raw(),
                &request,
                &SockaddrIn6::from(std::net::SocketAddrV6::new(v6, 0, 0, 0)),
                MsgFlags::empty(),
            )?,
        };
        report.sent += 1;
        while started.elapsed() < timeout {
            let n = match recvfrom::<nix::sys::socket::SockaddrStorage>(fd.as_raw(), &mut buf) {
                Ok((n, _)) => n,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            // An IPv4 raw socket hands over the IP header too; an IPv6 one does not.
            let icmp = match dst {
                IpAddr::V4(_) => buf.get(usize::from(buf[0] & 0x0f) * 4..n),
                IpAddr::V6(_) => buf.get(..n),
            };
            if let Some(icmp) = icmp
                && icmp.len() >= 8
                && icmp[0] == echo_reply
                && icmp[4..6] == id.to_be_bytes()
                && icmp[6..8] == seq.to_be_bytes()
            {
                report.received += 1;
                report.rtts.push(started.elapsed());
                break;
            }
        }
    }
    Ok(report)
}

fn timeout_as_timeval(timeout: Duration) -> nix::sys::time::TimeVal {
    nix::sys::time::TimeVal::new(timeout.as_secs() as _, timeout.subsec_micros() as _)
}

/// Borrowing a raw descriptor for nix's socket calls, which take `RawFd` here.
trait AsRaw {
    fn as_raw(&self) -> std::os::fd::RawFd;
}

impl AsRaw for std::os::fd::OwnedFd {
    fn as_raw(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}
