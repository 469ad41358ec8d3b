//! Sending as fast as a guest can, to measure shaping.

use std::{
    fs::File,
    io::{self, Write},
    net::Ipv4Addr,
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use sandbox_net_persist::MacAddr;

use crate::{VIRTIO_NET_HDR_LEN, packet::checksum};

/// What a flood sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodReport {
    /// Frames the device accepted.
    pub frames: u64,
    /// Their bytes, Ethernet header included.
    pub bytes: u64,
    /// How long the flood ran.
    pub elapsed: Duration,
}

/// An Ethernet frame carrying one IPv4 UDP datagram with `payload` zero bytes (to the discard
/// port 9), checksums filled in.
pub fn udp_frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload: usize,
) -> Vec<u8> {
    let udp_len = 8 + payload;
    let ip_len = 20 + udp_len;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut udp = vec![0xc0, 0x00, 0x00, 0x09];
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.resize(udp_len, 0);
    let pseudo = [0, 17, (udp_len >> 8) as u8, udp_len as u8];
    let sum = checksum(&[&src.octets(), &dst.octets(), &pseudo, &udp]);
    udp[6..8].copy_from_slice(&(if sum == 0 { 0xffff } else { sum }).to_be_bytes());
    let mut frame = Vec::with_capacity(14 + ip_len);
    frame.extend_from_slice(&dst_mac.octets());
    frame.extend_from_slice(&src_mac.octets());
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&udp);
    frame
}

mod ioctl {
    nix::ioctl_write_ptr_bad!(tun_set_sndbuf, libc::TUNSETSNDBUF, libc::c_int);
}

/// Lifts the queue's send buffer limit (`TUNSETSNDBUF` to `INT_MAX`), as QEMU does for its
/// taps by default. With the default limit (`wmem_default`) a writer blocks until frames
/// already sent are freed, and the kernel may free them late on another CPU: a shaped queue
/// then delivers far below its rate because the sender sleeps, not because of the shaper.
pub fn unlimit_send_buffer(queue: &OwnedFd) -> io::Result<()> {
    let unlimited: libc::c_int = libc::c_int::MAX;
    // SAFETY: TUNSETSNDBUF reads one int through the pointer, which points to a live local,
    // on a tap or macvtap queue descriptor borrowed for the call.
    unsafe { ioctl::tun_set_sndbuf(std::os::fd::AsRawFd::as_raw_fd(queue), &unlimited) }?;
    Ok(())
}

/// Writes `frame` to `queue` (a tap or macvtap queue) again and again for `duration`, as a
/// guest sending flat out would (see [`unlimit_send_buffer`]). Frames the host drops (a full
/// qdisc) are not counted.
pub fn flood(
    queue: &OwnedFd,
    frame: &[u8],
    vnet_hdr: bool,
    duration: Duration,
) -> io::Result<FloodReport> {
    let mut out = vec![0u8; if vnet_hdr { VIRTIO_NET_HDR_LEN } else { 0 }];
    out.extend_from_slice(frame);
    let mut file = File::from(queue.try_clone()?);
    let started = Instant::now();
    let (mut frames, mut bytes) = (0u64, 0u64);
    while started.elapsed() < duration {
        match file.write(&out) {
            Ok(_) => {
                frames += 1;
                bytes += frame.len() as u64;
            }
            // A full queue or a dropped frame: the sender goes on, as a guest would.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAGAIN | libc::ENOBUFS | libc::EINTR)
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(FloodReport {
        frames,
        bytes,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_frames_have_valid_checksums() {
        let frame = udp_frame(
            "02:00:00:00:00:02".parse().unwrap(),
            "02:00:00:00:00:01".parse().unwrap(),
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 1),
            1400,
        );
        assert_eq!(frame.len(), 14 + 20 + 8 + 1400);
        let ip = &frame[14..34];
        assert_eq!(checksum(&[ip]), 0);
        let udp = &frame[34..];
        let pseudo = [0, 17, (udp.len() >> 8) as u8, udp.len() as u8];
        assert_eq!(checksum(&[&ip[12..16], &ip[16..20], &pseudo, udp]), 0);
    }
}
