//! Pure frame handling: given a received Ethernet frame, the reply a guest would send.

use std::net::{Ipv4Addr, Ipv6Addr};

use sandbox_net_persist::MacAddr;

const ETH_HDR: usize = 14;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const IPV6_HDR: usize = 40;

/// What a reply answers, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// An ARP reply.
    Arp,
    /// An ICMP echo reply.
    IcmpEcho,
    /// An IPv6 neighbour advertisement.
    NeighbourAdvert,
    /// An ICMPv6 echo reply.
    Icmpv6Echo,
}

/// The addresses a guest answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The guest's MAC.
    pub mac: MacAddr,
    /// Its IPv4 addresses.
    pub ipv4: Vec<Ipv4Addr>,
    /// Its IPv6 addresses.
    pub ipv6: Vec<Ipv6Addr>,
}

/// The reply to `frame` (an Ethernet frame without virtio-net header), if the guest answers it.
pub fn reply(me: &Identity, frame: &[u8]) -> Option<(ReplyKind, Vec<u8>)> {
    if frame.len() < ETH_HDR {
        return None;
    }
    let peer_mac = <[u8; 6]>::try_from(&frame[6..12]).ok()?;
    let payload = &frame[ETH_HDR..];
    let (kind, ethertype, body) = match u16::from_be_bytes([frame[12], frame[13]]) {
        ETHERTYPE_ARP => (ReplyKind::Arp, ETHERTYPE_ARP, arp_reply(me, payload)?),
        ETHERTYPE_IPV4 => (
            ReplyKind::IcmpEcho,
            ETHERTYPE_IPV4,
            icmp_echo_reply(me, payload)?,
        ),
        ETHERTYPE_IPV6 => {
            let (kind, body) = icmpv6_reply(me, payload)?;
            (kind, ETHERTYPE_IPV6, body)
        }
        _ => return None,
    };
    let mut out = Vec::with_capacity(ETH_HDR + body.len());
    out.extend_from_slice(&peer_mac);
    out.extend_from_slice(&me.mac.octets());
    out.extend_from_slice(&ethertype.to_be_bytes());
    out.extend_from_slice(&body);
    Some((kind, out))
}

fn arp_reply(me: &Identity, arp: &[u8]) -> Option<Vec<u8>> {
    // Ethernet/IPv4 ARP request: htype 1, ptype 0x0800, hlen 6, plen 4, oper 1.
    if arp.len() < 28 || arp[..8] != [0, 1, 8, 0, 6, 4, 0, 1] {
        return None;
    }
    let target = Ipv4Addr::new(arp[24], arp[25], arp[26], arp[27]);
    if !me.ipv4.contains(&target) {
        return None;
    }
    let mut out = vec![0, 1, 8, 0, 6, 4, 0, 2];
    out.extend_from_slice(&me.mac.octets());
    out.extend_from_slice(&arp[24..28]); // sender ip := the asked address
    out.extend_from_slice(&arp[8..14]); // target mac := the asker's
    out.extend_from_slice(&arp[14..18]); // target ip := the asker's
    Some(out)
}

fn icmp_echo_reply(me: &Identity, ip: &[u8]) -> Option<Vec<u8>> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if header_len != 20 || total < header_len + 8 || total > ip.len() || ip[9] != IPPROTO_ICMP {
        return None;
    }
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    if !me.ipv4.contains(&dst) || ip[header_len] != 8 {
        return None;
    }
    let mut out = ip[..total].to_vec();
    out.swap_with_slice_ranges(12..16, 16..20);
    out[8] = 64; // TTL
    out[10..12].copy_from_slice(&[0, 0]);
    let sum = checksum(&[&out[..header_len]]);
    out[10..12].copy_from_slice(&sum.to_be_bytes());
    let icmp = header_len;
    out[icmp] = 0; // echo reply
    out[icmp + 2..icmp + 4].copy_from_slice(&[0, 0]);
    let sum = checksum(&[&out[icmp..]]);
    out[icmp + 2..icmp + 4].copy_from_slice(&sum.to_be_bytes());
    Some(out)
}

fn icmpv6_reply(me: &Identity, ip: &[u8]) -> Option<(ReplyKind, Vec<u8>)> {
    if ip.len() < IPV6_HDR + 8 || ip[0] >> 4 != 6 || ip[6] != IPPROTO_ICMPV6 {
        return None;
    }
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let icmp = ip.get(IPV6_HDR..IPV6_HDR + payload_len)?;
    let src: [u8; 16] = ip[8..24].try_into().ok()?;
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?);
    match icmp[0] {
        // Echo request to one of our addresses.
        128 if me.ipv6.contains(&dst) => {
            let mut body = icmp.to_vec();
            body[0] = 129;
            Some((
                ReplyKind::Icmpv6Echo,
                ipv6_packet(dst.octets(), src, 64, body),
            ))
        }
        // Neighbour solicitation for one of our addresses.
        135 if icmp.len() >= 24 => {
            let target: [u8; 16] = icmp[8..24].try_into().ok()?;
            if !me.ipv6.contains(&Ipv6Addr::from(target)) {
                return None;
            }
            let unspecified = src == [0; 16];
            let mut body = vec![136, 0, 0, 0];
            // Solicited (unless answering DAD) and Override.
            body.extend_from_slice(&[if unspecified { 0x20 } else { 0x60 }, 0, 0, 0]);
            body.extend_from_slice(&target);
            body.extend_from_slice(&[2, 1]); // option: target link-layer address
            body.extend_from_slice(&me.mac.octets());
            let to = if unspecified {
                Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets()
            } else {
                src
            };
            Some((
                ReplyKind::NeighbourAdvert,
                ipv6_packet(target, to, 255, body),
            ))
        }
        _ => None,
    }
}

/// An IPv6 packet carrying the ICMPv6 message `body`, with its checksum filled in.
fn ipv6_packet(src: [u8; 16], dst: [u8; 16], hop_limit: u8, mut body: Vec<u8>) -> Vec<u8> {
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    body[2..4].copy_from_slice(&[0, 0]);
    let pseudo_tail = [
        0,
        0,
        len.to_be_bytes()[0],
        len.to_be_bytes()[1],
        0,
        0,
        0,
        IPPROTO_ICMPV6,
    ];
    let sum = checksum(&[&src, &dst, &pseudo_tail, &body]);
    body[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut out = vec![0x60, 0, 0, 0];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[IPPROTO_ICMPV6, hop_limit]);
    out.extend_from_slice(&src);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&body);
    out
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for byte in parts.iter().flat_map(|p| p.iter().copied()) {
        match odd.take() {
            Some(high) => sum += u32::from(u16::from_be_bytes([high, byte])),
            None => odd = Some(byte),
        }
    }
    if let Some(high) = odd {
        sum += u32::from(u16::from_be_bytes([high, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

trait SwapRanges {
    fn swap_with_slice_ranges(&mut self, a: std::ops::Range<usize>, b: std::ops::Range<usize>);
}

impl SwapRanges for Vec<u8> {
    /// Swaps two equal-length, non-overlapping ranges (a before b).
    fn swap_with_slice_ranges(&mut self, a: std::ops::Range<usize>, b: std::ops::Range<usize>) {
        let (left, right) = self.split_at_mut(b.start);
        left[a].swap_with_slice(&mut right[..b.end - b.start]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Identity {
        Identity {
            mac: "02:00:00:00:00:aa".parse().unwrap(),
            ipv4: vec![Ipv4Addr::new(10, 0, 0, 2)],
            ipv6: vec!["fd00::2".parse().unwrap()],
        }
    }

    const PEER: [u8; 6] = [2, 0, 0, 0, 0, 0xbb];

    fn eth(ethertype: u16, body: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&PEER);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn answers_arp_for_its_address_only() {
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
        arp.extend_from_slice(&PEER);
        arp.extend_from_slice(&[10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        let (kind, out) = reply(&me(), &eth(ETHERTYPE_ARP, &arp)).unwrap();
        assert_eq!(kind, ReplyKind::Arp);
        assert_eq!(&out[..6], &PEER);
        assert_eq!(&out[6..12], &me().mac.octets());
        assert_eq!(&out[14 + 6..14 + 8], &[0, 2]);
        assert_eq!(&out[14 + 14..14 + 18], &[10, 0, 0, 2]);
        assert_eq!(&out[14 + 18..14 + 24], &PEER);
        arp[27] = 3;
        assert_eq!(reply(&me(), &eth(ETHERTYPE_ARP, &arp)), None);
    }

    #[test]
    fn answers_ping_with_valid_checksums() {
        let mut ip = vec![
            0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let sum = checksum(&[&ip]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
        let sum = checksum(&[&icmp]);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        ip.extend_from_slice(&icmp);
        let (kind, out) = reply(&me(), &eth(ETHERTYPE_IPV4, &ip)).unwrap();
        assert_eq!(kind, ReplyKind::IcmpEcho);
        let ip = &out[14..];
        assert_eq!(&ip[12..16], &[10, 0, 0, 2]);
        assert_eq!(&ip[16..20], &[10, 0, 0, 1]);
        assert_eq!(checksum(&[&ip[..20]]), 0, "IPv4 header checksum");
        assert_eq!(ip[20], 0, "echo reply");
        assert_eq!(checksum(&[&ip[20..]]), 0, "ICMP checksum");
        assert_eq!(&ip[24..28], &[0x12, 0x34, 0, 1], "id and sequence kept");
    }

    #[test]
    fn answers_neighbour_solicitation_and_ping6() {
        let peer: Ipv6Addr = "fd00::1".parse().unwrap();
        let me = me();
        let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
        ns.extend_from_slice(&me.ipv6[0].octets());
        let packet = ipv6_packet(
            peer.octets(),
            "ff02::1:ff00:2".parse::<Ipv6Addr>().unwrap().octets(),
            255,
            ns,
        );
        let (kind, out) = reply(&me, &eth(ETHERTYPE_IPV6, &packet)).unwrap();
        assert_eq!(kind, ReplyKind::NeighbourAdvert);
        let ip = &out[14..];
        assert_eq!(ip[40], 136);
        assert_eq!(&ip[8..24], &me.ipv6[0].octets());
        assert_eq!(&ip[24..40], &peer.octets());
        assert_eq!(&ip[40 + 24..40 + 32], &[2, 1, 2, 0, 0, 0, 0, 0xaa]);
        let len = [0, 0, ip[4], ip[5], 0, 0, 0, 58];
        assert_eq!(
            checksum(&[&ip[8..24], &ip[24..40], &len, &ip[40..]]),
            0,
            "ICMPv6 checksum"
        );

        let echo = ipv6_packet(
            peer.octets(),
            me.ipv6[0].octets(),
            64,
            vec![128, 0, 0, 0, 0, 7, 0, 1, 0xde, 0xad],
        );
        let (kind, out) = reply(&me, &eth(ETHERTYPE_IPV6, &echo)).unwrap();
        assert_eq!(kind, ReplyKind::Icmpv6Echo);
        let ip = &out[14..];
        assert_eq!(ip[40], 129);
        assert_eq!(&ip[44..50], &[0, 7, 0, 1, 0xde, 0xad]);
        let len = [0, 0, ip[4], ip[5], 0, 0, 0, 58];
        assert_eq!(checksum(&[&ip[8..24], &ip[24..40], &len, &ip[40..]]), 0);
    }

    #[test]
    fn ignores_what_is_not_for_it() {
        assert_eq!(reply(&me(), &[0u8; 10]), None);
        assert_eq!(reply(&me(), &eth(0x88cc, &[0; 40])), None);
    }
}
