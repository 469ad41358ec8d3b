//! Pure conversions from netlink messages to the data model of `sandbox-net-persist`.
//!
//! Kept apart from the requests so that they are unit-tested on hand-built messages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::Nla;
use netlink_packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressMessage},
    link::{
        InfoData, InfoNetkit, InfoTun, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
        NetkitMode as NlNetkitMode,
    },
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric, RouteNextHop,
        RouteNextHopFlags,
    },
};
use sandbox_net_persist::{
    AddressScope, IfName, MacAddr, NeighbourState, RouteProtocol, RouteType,
    scan::{
        Address, Link, Neighbour, NetkitInfo, NetkitMode, NextHop, Route, TunTapInfo, TunTapMode,
    },
};

/// What made a message impossible to convert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConvertError(pub String);

/// Converts an `RTM_NEWLINK` message.
pub(crate) fn link(msg: &LinkMessage) -> Result<Link, ConvertError> {
    let index = msg.header.index;
    let mut name = None;
    let mut link = Link {
        name: IfName::new("-").map_err(|e| ConvertError(e.to_string()))?,
        index,
        kind: None,
        mtu: 0,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
        loopback: msg.header.flags.contains(LinkFlags::Loopback),
        parent_index: None,
        parent_netnsid: None,
        txqueuelen: 0,
        tuntap: None,
        netkit: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Address(bytes) => link.mac = MacAddr::from_slice(bytes),
            LinkAttribute::Link(parent) => link.parent_index = Some(*parent),
            LinkAttribute::LinkNetNsId(id) => link.parent_netnsid = Some(*id),
            LinkAttribute::TxQueueLen(q) => link.txqueuelen = *q,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                        LinkInfo::Data(InfoData::Tun(tun)) => link.tuntap = tuntap(tun),
                        LinkInfo::Data(InfoData::Netkit(nk)) => link.netkit = netkit(nk),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let name = name.ok_or_else(|| ConvertError(format!("link {index} has no IFLA_IFNAME")))?;
    link.name = IfName::new(name).map_err(|e| ConvertError(e.to_string()))?;
    Ok(link)
}

// IFLA_TUN_* from linux/if_link.h; netlink-packet-route leaves them undecoded.
const IFLA_TUN_OWNER: u16 = 1;
const IFLA_TUN_GROUP: u16 = 2;
const IFLA_TUN_TYPE: u16 = 3;
const IFLA_TUN_PI: u16 = 4;
const IFLA_TUN_VNET_HDR: u16 = 5;
const IFLA_TUN_PERSIST: u16 = 6;
const IFLA_TUN_MULTI_QUEUE: u16 = 7;
const IFLA_TUN_NUM_QUEUES: u16 = 8;
const IFF_TUN: u8 = 0x0001;

fn tuntap(attrs: &[InfoTun]) -> Option<TunTapInfo> {
    let mut info = TunTapInfo {
        mode: TunTapMode::Tap,
        packet_info: false,
        vnet_hdr: false,
        multi_queue: false,
        persist: false,
        queues: None,
        owner: None,
        group: None,
    };
    let mut saw_type = false;
    for attr in attrs {
        // `InfoTun` is non-exhaustive; every attribute arrives undecoded as `Other` today.
        #[allow(irrefutable_let_patterns)]
        let InfoTun::Other(nla) = attr else { continue };
        let mut value = vec![0u8; nla.value_len()];
        nla.emit_value(&mut value);
        let byte = value.first().copied();
        let word = value
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_ne_bytes);
        match nla.kind() {
            IFLA_TUN_TYPE => {
                saw_type = true;
                info.mode = if byte == Some(IFF_TUN) {
                    TunTapMode::Tun
                } else {
                    TunTapMode::Tap
                };
            }
            IFLA_TUN_PI => info.packet_info = byte == Some(1),
            IFLA_TUN_VNET_HDR => info.vnet_hdr = byte == Some(1),
            IFLA_TUN_PERSIST => info.persist = byte == Some(1),
            IFLA_TUN_MULTI_QUEUE => info.multi_queue = byte == Some(1),
            IFLA_TUN_NUM_QUEUES => info.queues = word,
            IFLA_TUN_OWNER => info.owner = word,
            IFLA_TUN_GROUP => info.group = word,
            _ => {}
        }
    }
    saw_type.then_some(info)
}

/// The mode and role of a netkit device; `None` without `IFLA_NETKIT_MODE`.
fn netkit(attrs: &[InfoNetkit]) -> Option<NetkitInfo> {
    let mut mode = None;
    let mut primary = false;
    for attr in attrs {
        match attr {
            InfoNetkit::Mode(NlNetkitMode::L2) => mode = Some(NetkitMode::L2),
            InfoNetkit::Mode(NlNetkitMode::L3) => mode = Some(NetkitMode::L3),
            InfoNetkit::Mode(NlNetkitMode::Other(n)) => mode = Some(NetkitMode::Other(*n)),
            InfoNetkit::Primary(p) => primary = *p,
            _ => {}
        }
    }
    mode.map(|mode| NetkitInfo { mode, primary })
}

/// Converts an `RTM_NEWADDR` message into the link index and the address.
pub(crate) fn address(msg: &AddressMessage) -> Result<(u32, Address), ConvertError> {
    let mut local = None;
    let mut address = None;
    let mut label = None;
    let mut broadcast = None;
    let mut flags = u32::from(msg.header.flags.bits());
    let mut route_metric = None;
    let mut protocol = None;
    let mut lifetimes = (None, None);
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Label(l) => label = Some(l.clone()),
            AddressAttribute::Broadcast(b) => broadcast = Some(*b),
            AddressAttribute::Flags(f) => flags = f.bits(),
            AddressAttribute::RoutePriority(metric) => route_metric = Some(*metric),
            AddressAttribute::Protocol(p) => protocol = Some(u8::from(*p)),
            AddressAttribute::CacheInfo(info) => {
                // `INFINITY_LIFE_TIME` (all ones) is forever.
                let finite = |t: u32| (t != u32::MAX).then_some(t);
                lifetimes = (finite(info.ifa_valid), finite(info.ifa_preferred));
            }
            _ => {}
        }
    }
    let index = msg.header.index;
    let ip = local.or(address).ok_or_else(|| {
        ConvertError(format!(
            "address on link {index} has neither IFA_LOCAL nor IFA_ADDRESS"
        ))
    })?;
    let prefix = prefix(ip, msg.header.prefix_len)?;
    let peer = match (local, address) {
        (Some(l), Some(a)) if l != a => Some(a),
        _ => None,
    };
    let scope = AddressScope(u8::from(msg.header.scope));
    Ok((
        index,
        Address {
            prefix,
            peer,
            broadcast,
            scope,
            flags,
            label,
            route_metric,
            protocol,
            valid_lifetime: lifetimes.0,
            preferred_lifetime: lifetimes.1,
        },
    ))
}

/// Converts an `RTM_NEWROUTE` message.
pub(crate) fn route(msg: &RouteMessage) -> Result<Route, ConvertError> {
    let h = &msg.header;
    let mut route = Route {
        destination: default_prefix(h.address_family)?,
        scope: AddressScope(u8::from(h.scope)),
        protocol: RouteProtocol(u8::from(h.protocol)),
        kind: RouteType(u8::from(h.kind)),
        table: u32::from(h.table),
        tos: h.tos,
        // The header carries the next hop's flags of a single-path route; only `onlink` is
        // configuration (dead, linkdown, offload are the kernel's state).
        onlink: h.flags.contains(RouteFlags::Onlink),
        ..Route::default()
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(dst) => {
                route.destination = prefix(route_ip(dst)?, h.destination_prefix_length)?
            }
            RouteAttribute::Gateway(gw) => route.gateway = Some(route_ip(gw)?),
            RouteAttribute::PrefSource(src) => route.source = Some(route_ip(src)?),
            RouteAttribute::Oif(oif) => route.device_index = Some(*oif),
            RouteAttribute::Priority(p) => route.metric = Some(*p),
            RouteAttribute::Table(t) => route.table = *t,
            RouteAttribute::Preference(pref) => route.pref = Some(u8::from(*pref)),
            RouteAttribute::Metrics(metrics) => {
                for metric in metrics {
                    route_metric(&mut route, metric);
                }
            }
            RouteAttribute::MultiPath(hops) => {
                for hop in hops {
                    route.multipath.push(next_hop(hop)?);
                }
            }
            _ => {}
        }
    }
    Ok(route)
}

/// `RTAX_*` numbers from `linux/rtnetlink.h`.
pub(crate) mod rtax {
    pub(crate) const LOCK: u16 = 1;
    pub(crate) const MTU: u16 = 2;
    pub(crate) const WINDOW: u16 = 3;
    pub(crate) const RTT: u16 = 4;
    pub(crate) const RTTVAR: u16 = 5;
    pub(crate) const SSTHRESH: u16 = 6;
    pub(crate) const CWND: u16 = 7;
    pub(crate) const ADVMSS: u16 = 8;
    pub(crate) const REORDERING: u16 = 9;
    pub(crate) const HOPLIMIT: u16 = 10;
    pub(crate) const INITCWND: u16 = 11;
    pub(crate) const FEATURES: u16 = 12;
    pub(crate) const RTO_MIN: u16 = 13;
    pub(crate) const INITRWND: u16 = 14;
    pub(crate) const QUICKACK: u16 = 15;
    pub(crate) const FASTOPEN_NO_COOKIE: u16 = 17;
}

/// Files one `RTA_METRICS` entry of a dump into the route.
fn route_metric(route: &mut Route, metric: &RouteMetric) {
    let (id, value) = match *metric {
        RouteMetric::Mtu(mtu) => {
            route.mtu = Some(mtu);
            return;
        }
        RouteMetric::Advmss(mss) => {
            route.advmss = Some(mss);
            return;
        }
        RouteMetric::Lock(v) => (rtax::LOCK, v),
        RouteMetric::Window(v) => (rtax::WINDOW, v),
        RouteMetric::Rtt(v) => (rtax::RTT, v),
        RouteMetric::RttVar(v) => (rtax::RTTVAR, v),
        RouteMetric::SsThresh(v) => (rtax::SSTHRESH, v),
        RouteMetric::Cwnd(v) => (rtax::CWND, v),
        RouteMetric::Reordering(v) => (rtax::REORDERING, v),
        RouteMetric::Hoplimit(v) => (rtax::HOPLIMIT, v),
        RouteMetric::InitCwnd(v) => (rtax::INITCWND, v),
        RouteMetric::Features(v) => (rtax::FEATURES, v),
        RouteMetric::RtoMin(v) => (rtax::RTO_MIN, v),
        RouteMetric::InitRwnd(v) => (rtax::INITRWND, v),
        RouteMetric::QuickAck(v) => (rtax::QUICKACK, v),
        RouteMetric::FastopenNoCookie(v) => (rtax::FASTOPEN_NO_COOKIE, v),
        // The congestion-control name (`congctl`) and metrics this crate does not know are
        // left out: see the README's limits.
        _ => return,
    };
    route
        .other_metrics
        .push(sandbox_net_persist::scan::RouteMetric { id, value });
}

/// The metric as netlink-packet-route sends it; `None` for a number it has no variant for.
pub(crate) fn metric_to_netlink(
    metric: sandbox_net_persist::scan::RouteMetric,
) -> Option<RouteMetric> {
    let v = metric.value;
    Some(match metric.id {
        rtax::LOCK => RouteMetric::Lock(v),
        rtax::MTU => RouteMetric::Mtu(v),
        rtax::WINDOW => RouteMetric::Window(v),
        rtax::RTT => RouteMetric::Rtt(v),
        rtax::RTTVAR => RouteMetric::RttVar(v),
        rtax::SSTHRESH => RouteMetric::SsThresh(v),
        rtax::CWND => RouteMetric::Cwnd(v),
        rtax::ADVMSS => RouteMetric::Advmss(v),
        rtax::REORDERING => RouteMetric::Reordering(v),
        rtax::HOPLIMIT => RouteMetric::Hoplimit(v),
        rtax::INITCWND => RouteMetric::InitCwnd(v),
        rtax::FEATURES => RouteMetric::Features(v),
        rtax::RTO_MIN => RouteMetric::RtoMin(v),
        rtax::INITRWND => RouteMetric::InitRwnd(v),
        rtax::QUICKACK => RouteMetric::QuickAck(v),
        rtax::FASTOPEN_NO_COOKIE => RouteMetric::FastopenNoCookie(v),
        _ => return None,
    })
}

/// Converts one next hop of `RTA_MULTIPATH`.
fn next_hop(hop: &RouteNextHop) -> Result<NextHop, ConvertError> {
    let mut gateway = None;
    for attr in &hop.attributes {
        if let RouteAttribute::Gateway(gw) = attr {
            gateway = Some(route_ip(gw)?);
        }
    }
    Ok(NextHop {
        gateway,
        device_index: (hop.interface_index != 0).then_some(hop.interface_index),
        weight: u16::from(hop.hops) + 1,
        onlink: hop.flags.contains(RouteNextHopFlags::Onlink),
    })
}

/// Converts an `RTM_NEWNEIGH` message; `None` for entries without a destination IP.
pub(crate) fn neighbour(msg: &NeighbourMessage) -> Result<Option<Neighbour>, ConvertError> {
    let mut ip = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                ip = Some(IpAddr::V4(*v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                ip = Some(IpAddr::V6(*v6))
            }
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = MacAddr::from_slice(bytes),
            _ => {}
        }
    }
    Ok(ip.map(|ip| Neighbour {
        ip,
        mac,
        state: NeighbourState(u16::from(msg.header.state)),
        device_index: msg.header.ifindex,
    }))
}

fn prefix(ip: IpAddr, len: u8) -> Result<IpNet, ConvertError> {
    IpNet::new(ip, len)
        .map_err(|_| ConvertError(format!("prefix length {len} is invalid for {ip}")))
}

/// The family's default route destination; the family comes from the header, never from
/// the gateway (Kata's DAN code infers it from the gateway and gets gateway-less routes wrong).
fn default_prefix(family: AddressFamily) -> Result<IpNet, ConvertError> {
    match family {
        AddressFamily::Inet => prefix(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        AddressFamily::Inet6 => prefix(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        other => Err(ConvertError(format!(
            "route of unsupported family {other:?}"
        ))),
    }
}

fn route_ip(addr: &RouteAddress) -> Result<IpAddr, ConvertError> {
    match addr {
        RouteAddress::Inet(v4) => Ok(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Ok(IpAddr::V6(*v6)),
        other => Err(ConvertError(format!(
            "route address {other:?} is not IPv4 or IPv6"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::DefaultNla;
    use netlink_packet_route::{
        link::InfoKind,
        route::{RouteProtocol as NlProtocol, RouteScope},
    };

    use super::*;

    #[test]
    fn link_with_everything() {
        let mut msg = LinkMessage::default();
        msg.header.index = 7;
        msg.header.flags = LinkFlags::Up | LinkFlags::LowerUp;
        msg.attributes = vec![
            LinkAttribute::IfName("tap0_kata".into()),
            LinkAttribute::Mtu(9000),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 7]),
            LinkAttribute::TxQueueLen(500),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Tun),
                LinkInfo::Data(InfoData::Tun(vec![
                    InfoTun::Other(DefaultNla::new(IFLA_TUN_TYPE, vec![2])),
                    InfoTun::Other(DefaultNla::new(IFLA_TUN_VNET_HDR, vec![1])),
                    InfoTun::Other(DefaultNla::new(IFLA_TUN_MULTI_QUEUE, vec![1])),
                    InfoTun::Other(DefaultNla::new(
                        IFLA_TUN_NUM_QUEUES,
                        4u32.to_ne_bytes().to_vec(),
                    )),
                    InfoTun::Other(DefaultNla::new(
                        IFLA_TUN_OWNER,
                        1000u32.to_ne_bytes().to_vec(),
                    )),
                ])),
            ]),
        ];
        let link = link(&msg).unwrap();
        assert_eq!(link.name.as_str(), "tap0_kata");
        assert_eq!((link.index, link.mtu, link.txqueuelen), (7, 9000, 500));
        assert_eq!(link.mac.unwrap().to_string(), "02:00:00:00:00:07");
        assert!(link.up && link.lower_up && !link.loopback);
        assert_eq!(link.kind.as_deref(), Some("tun"));
        let tun = link.tuntap.unwrap();
        assert_eq!(tun.mode, TunTapMode::Tap);
        assert!(tun.vnet_hdr && tun.multi_queue && !tun.packet_info && !tun.persist);
        assert_eq!(
            (tun.queues, tun.owner, tun.group),
            (Some(4), Some(1000), None)
        );
    }

    #[test]
    fn netkit_links_keep_their_mode_and_role() {
        for (mode, mac, expected) in [
            (NlNetkitMode::L2, vec![2, 0, 0, 0, 0, 9], NetkitMode::L2),
            // An L3 netkit has no hardware address: 6.12 reports six zero bytes.
            (NlNetkitMode::L3, vec![0; 6], NetkitMode::L3),
        ] {
            let mut msg = LinkMessage::default();
            msg.header.index = 9;
            msg.attributes = vec![
                LinkAttribute::IfName("eth0".into()),
                LinkAttribute::Address(mac),
                LinkAttribute::LinkInfo(vec![
                    LinkInfo::Kind(InfoKind::Netkit),
                    LinkInfo::Data(InfoData::Netkit(vec![
                        InfoNetkit::Primary(false),
                        InfoNetkit::Mode(mode),
                    ])),
                ]),
            ];
            let link = link(&msg).unwrap();
            assert_eq!(link.kind.as_deref(), Some("netkit"));
            assert_eq!(
                link.netkit,
                Some(NetkitInfo {
                    mode: expected,
                    primary: false
                })
            );
        }
    }

    #[test]
    fn link_without_name_is_an_error() {
        let mut msg = LinkMessage::default();
        msg.header.index = 3;
        assert_eq!(
            link(&msg).unwrap_err(),
            ConvertError("link 3 has no IFLA_IFNAME".into())
        );
    }

    #[test]
    fn point_to_point_address_keeps_its_peer() {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = 32;
        msg.header.index = 4;
        msg.attributes = vec![
            AddressAttribute::Local("10.0.0.1".parse().unwrap()),
            AddressAttribute::Address("10.0.0.2".parse().unwrap()),
            AddressAttribute::Flags(
                netlink_packet_route::address::AddressFlags::from_bits_retain(0x80),
            ),
        ];
        let (index, addr) = address(&msg).unwrap();
        assert_eq!(index, 4);
        assert_eq!(addr.prefix.to_string(), "10.0.0.1/32");
        assert_eq!(addr.peer, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(addr.flags, 0x80);
    }

    #[test]
    fn gatewayless_ipv4_default_route_stays_ipv4() {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = 254;
        msg.header.protocol = NlProtocol::Static;
        msg.header.scope = RouteScope::Link;
        msg.attributes = vec![RouteAttribute::Oif(2)];
        let route = route(&msg).unwrap();
        assert_eq!(route.destination.to_string(), "0.0.0.0/0");
        assert!(route.is_default());
        assert_eq!(route.protocol, RouteProtocol::STATIC);
        assert_eq!(route.scope, AddressScope::LINK);
        assert_eq!(route.device_index, Some(2));
    }

    #[test]
    fn bad_prefix_length_is_an_error() {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 40;
        msg.attributes = vec![RouteAttribute::Destination(RouteAddress::Inet(
            "10.0.0.0".parse().unwrap(),
        ))];
        assert_eq!(
            route(&msg).unwrap_err(),
            ConvertError("prefix length 40 is invalid for 10.0.0.0".into())
        );
    }
}
