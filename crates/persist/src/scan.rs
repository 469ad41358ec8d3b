//! What a scan of a network namespace finds: links, their addresses, routes and neighbours.
//!
//! These are plain values as the kernel reported them at scan time; the persisted state of an
//! endpoint keeps them so that teardown can restore what it changed.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{AddressScope, IfName, MacAddr, NeighbourState, RouteProtocol, RouteType};

/// The kernel's `RT_TABLE_MAIN`.
pub const RT_TABLE_MAIN: u32 = 254;

/// One network interface as `ip -d link` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Interface name (`IFLA_IFNAME`).
    pub name: IfName,
    /// Interface index, unique within the namespace only.
    pub index: u32,
    /// `IFLA_INFO_KIND` (`veth`, `macvlan`, `macvtap`, `tun`, `ipvlan`, `bridge`, ...);
    /// `None` for devices without one, such as `lo` or a physical NIC.
    pub kind: Option<String>,
    /// `IFLA_MTU`.
    pub mtu: u32,
    /// `IFLA_ADDRESS` when it is a 6-byte Ethernet address.
    pub mac: Option<MacAddr>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (`IFF_LOWER_UP`).
    #[serde(default)]
    pub lower_up: bool,
    /// The loopback device (`IFF_LOOPBACK`).
    pub loopback: bool,
    /// `IFLA_LINK`: the parent (macvlan, macvtap, ipvlan, vlan) or the veth peer's index.
    pub parent_index: Option<u32>,
    /// `IFLA_LINK_NETNSID`: set when `parent_index` is in another namespace (a veth peer).
    #[serde(default)]
    pub parent_netnsid: Option<i32>,
    /// `IFLA_TXQLEN`.
    pub txqueuelen: u32,
    /// For a tun/tap device, what `IFLA_INFO_DATA` says about it.
    pub tuntap: Option<TunTapInfo>,
    /// For a netkit device, what `IFLA_INFO_DATA` says about it.
    #[serde(default)]
    pub netkit: Option<NetkitInfo>,
}

/// How a netkit device carries packets (`IFLA_NETKIT_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetkitMode {
    /// `NETKIT_L2`: Ethernet frames; the device has a MAC, as a veth does.
    L2,
    /// `NETKIT_L3` (the default): IP packets without an Ethernet header; no MAC
    /// (`ARPHRD_NONE`, `NOARP`).
    L3,
    /// A mode this version does not know, as the kernel numbered it.
    Other(u32),
}

/// The `IFLA_NETKIT_*` attributes of a netkit device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetkitInfo {
    /// `IFLA_NETKIT_MODE`; both ends of a pair have the same.
    pub mode: NetkitMode,
    /// `IFLA_NETKIT_PRIMARY`: this is the end that holds the BPF programs of the pair (the
    /// host's, with Cilium); a pod sees the peer.
    pub primary: bool,
}

/// Whether a tun device carries Ethernet frames (tap) or IP packets (tun).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunTapMode {
    /// `IFF_TUN`: IP packets, no Ethernet header.
    Tun,
    /// `IFF_TAP`: Ethernet frames.
    Tap,
}

/// The `IFLA_TUN_*` attributes of a tun/tap device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunTapInfo {
    /// `IFLA_TUN_TYPE`.
    pub mode: TunTapMode,
    /// `IFLA_TUN_PI`: packets carry the 4-byte packet-information header.
    pub packet_info: bool,
    /// `IFLA_TUN_VNET_HDR`: frames carry a virtio-net header.
    pub vnet_hdr: bool,
    /// `IFLA_TUN_MULTI_QUEUE`.
    pub multi_queue: bool,
    /// `IFLA_TUN_PERSIST`: the device outlives its last open queue.
    pub persist: bool,
    /// `IFLA_TUN_NUM_QUEUES`: queues currently attached.
    pub queues: Option<u32>,
    /// `IFLA_TUN_OWNER`, when set.
    pub owner: Option<u32>,
    /// `IFLA_TUN_GROUP`, when set.
    pub group: Option<u32>,
}

/// One address of an interface, as `ip addr` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Address and prefix length (`IFA_LOCAL`, else `IFA_ADDRESS`, with `ifa_prefixlen`).
    pub prefix: IpNet,
    /// `IFA_ADDRESS` when it differs from the local address (a point-to-point peer).
    #[serde(default)]
    pub peer: Option<IpAddr>,
    /// `IFA_BROADCAST`, for IPv4 (`ip addr add ... brd B`; absent unless asked for).
    #[serde(default)]
    pub broadcast: Option<std::net::Ipv4Addr>,
    /// `ifa_scope`.
    pub scope: AddressScope,
    /// `IFA_FLAGS` (or `ifa_flags`): `IFA_F_*` bits such as `nodad` (0x02), `permanent` (0x80),
    /// `noprefixroute` (0x200).
    pub flags: u32,
    /// `IFA_LABEL`, for IPv4.
    #[serde(default)]
    pub label: Option<String>,
    /// `IFA_RT_PRIORITY`: the metric of the prefix route the kernel makes for the address
    /// (`ip addr add ... metric N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_metric: Option<u32>,
    /// `IFA_PROTO`: who made the address (the kernel marks its own link-local and loopback
    /// addresses), when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u8>,
    /// The valid lifetime left at scan time, seconds, for an address that expires (`None`:
    /// forever). A dynamic address is given back with it rather than made permanent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_lifetime: Option<u32>,
    /// The preferred lifetime left at scan time, seconds (`None`: forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_lifetime: Option<u32>,
}

impl Address {
    /// `IFA_F_SECONDARY`.
    pub const F_SECONDARY: u32 = 0x01;
    /// `IFA_F_NODAD`.
    pub const F_NODAD: u32 = 0x02;
    /// `IFA_F_TENTATIVE`.
    pub const F_TENTATIVE: u32 = 0x40;
    /// `IFA_F_PERMANENT`.
    pub const F_PERMANENT: u32 = 0x80;
    /// `IFA_F_NOPREFIXROUTE`.
    pub const F_NOPREFIXROUTE: u32 = 0x200;
}

/// One route of the namespace, as `ip route` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination prefix; `0.0.0.0/0` or `::/0` for a default route.
    pub destination: IpNet,
    /// `RTA_GATEWAY`.
    pub gateway: Option<IpAddr>,
    /// `RTA_OIF`: the outgoing interface's index.
    pub device_index: Option<u32>,
    /// `RTA_PREFSRC`.
    pub source: Option<IpAddr>,
    /// `rtm_scope` (same numbering as address scopes).
    pub scope: AddressScope,
    /// `rtm_protocol`.
    pub protocol: RouteProtocol,
    /// `rtm_type`.
    pub kind: RouteType,
    /// `RTA_TABLE` (falling back to `rtm_table`).
    pub table: u32,
    /// `RTA_PRIORITY`, the metric.
    pub metric: Option<u32>,
    /// `rtm_tos`: the type of service the route is for (IPv4; 0: any).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tos: u8,
    /// `RTNH_F_ONLINK`: the gateway is on the link without a route to it (`onlink`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub onlink: bool,
    /// `RTAX_MTU` of `RTA_METRICS`: the path MTU of the route (`mtu N`), which a guest must
    /// be told too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// `RTAX_ADVMSS` of `RTA_METRICS`: the TCP MSS advertised over the route (`advmss N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// The other `RTA_METRICS` by number (`RTAX_LOCK` bits, window, rtt, hoplimit, initcwnd,
    /// ...), so that a route is given back with all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_metrics: Vec<RouteMetric>,
    /// `RTA_PREF`: the IPv6 router preference (0 medium, 1 high, 3 low).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pref: Option<u8>,
    /// `RTA_MULTIPATH`: the next hops of a multipath route, which then has no `gateway` or
    /// `device_index` of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub multipath: Vec<NextHop>,
}

impl Default for Route {
    /// An IPv4 default route of the main table as `ip route add default` makes it (protocol
    /// boot, unicast, scope global), without a gateway or device: a base to fill in.
    fn default() -> Self {
        Self {
            destination: IpNet::V4(ipnet::Ipv4Net::default()),
            gateway: None,
            device_index: None,
            source: None,
            scope: AddressScope::GLOBAL,
            protocol: RouteProtocol::BOOT,
            kind: RouteType::UNICAST,
            table: RT_TABLE_MAIN,
            metric: None,
            tos: 0,
            onlink: false,
            mtu: None,
            advmss: None,
            other_metrics: Vec::new(),
            pref: None,
            multipath: Vec::new(),
        }
    }
}

impl Route {
    /// True for a default route.
    pub fn is_default(&self) -> bool {
        self.destination.prefix_len() == 0
    }

    /// True when the route goes out through the link with index `index`: its own outgoing
    /// interface, or one of its next hops'.
    pub fn goes_through(&self, index: u32) -> bool {
        self.device_index == Some(index)
            || self
                .multipath
                .iter()
                .any(|hop| hop.device_index == Some(index))
    }

    /// True when `other` holds the same place in the kernel's tables: same family,
    /// destination, table, TOS and metric. Two such routes cannot both exist; adding one
    /// where the other is fails with `EEXIST`.
    pub fn same_place(&self, other: &Route) -> bool {
        self.destination == other.destination
            && self.table == other.table
            && self.tos == other.tos
            && self.metric.unwrap_or(0) == other.metric.unwrap_or(0)
    }

    /// True when the route needs a gateway to be reachable when it is added (its own, or a
    /// next hop's), unless `onlink` says it is on the link anyway.
    pub fn needs_gateway_route(&self) -> bool {
        (self.gateway.is_some() && !self.onlink)
            || self
                .multipath
                .iter()
                .any(|hop| hop.gateway.is_some() && !hop.onlink)
    }
}

/// One `RTA_METRICS` value (`RTAX_*`) other than the MTU and the advertised MSS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteMetric {
    /// `RTAX_*` number (1 lock, 3 window, 4 rtt, 10 hoplimit, 11 initcwnd, ...).
    pub id: u16,
    /// Its value.
    pub value: u32,
}

/// One next hop of a multipath route (`nexthop via GW dev DEV weight W`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextHop {
    /// `RTA_GATEWAY` of the next hop.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// `rtnh_ifindex`: the next hop's outgoing interface.
    #[serde(default)]
    pub device_index: Option<u32>,
    /// `rtnh_hops + 1`: the next hop's weight (`weight W`, 1 by default).
    pub weight: u16,
    /// `RTNH_F_ONLINK` on the next hop.
    #[serde(default, skip_serializing_if = "is_false")]
    pub onlink: bool,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One neighbour (ARP or NDP) entry, as `ip neigh` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbour {
    /// `NDA_DST`.
    pub ip: IpAddr,
    /// `NDA_LLADDR`, when it is an Ethernet address.
    pub mac: Option<MacAddr>,
    /// `ndm_state`.
    pub state: NeighbourState,
    /// `ndm_ifindex`.
    pub device_index: u32,
}

/// An interface with everything the scan found attached to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// The link itself.
    pub link: Link,
    /// Its addresses, IPv4 first, in the kernel's order within a family.
    pub addresses: Vec<Address>,
    /// Routes whose outgoing interface is this link, as the scan's options keep them: what a
    /// guest must be told.
    pub routes: Vec<Route>,
    /// Every route through this link in every table, the kernel's own included (multipath
    /// routes with a next hop on it too), with all their attributes: what giving the link
    /// back exactly re-creates. Empty when the scan was not asked to record them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all_routes: Vec<Route>,
    /// Neighbour entries on this link.
    pub neighbours: Vec<Neighbour>,
}

/// Why a link of the namespace is not among the scanned interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// It is the loopback device.
    Loopback,
    /// It has no IP address.
    NoAddress,
}

/// A link left out of the scan, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedLink {
    /// The link's name.
    pub name: IfName,
    /// The link's index.
    pub index: u32,
    /// Why it was left out.
    pub reason: SkipReason,
}

/// Everything a scan of one namespace found.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NamespaceScan {
    /// The usable interfaces.
    pub interfaces: Vec<Interface>,
    /// Links that were left out, with the reason.
    #[serde(default)]
    pub skipped: Vec<SkippedLink>,
    /// Routes that have no outgoing interface (blackhole, unreachable, multipath).
    #[serde(default)]
    pub routes_without_device: Vec<Route>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NamespaceScan {
        let link = Link {
            name: IfName::new("eth0").unwrap(),
            index: 2,
            kind: Some("veth".into()),
            mtu: 1500,
            mac: Some("02:00:0a:c8:00:02".parse().unwrap()),
            up: true,
            lower_up: true,
            loopback: false,
            parent_index: Some(3),
            parent_netnsid: Some(0),
            txqueuelen: 1000,
            tuntap: Some(TunTapInfo {
                mode: TunTapMode::Tap,
                packet_info: false,
                vnet_hdr: true,
                multi_queue: true,
                persist: false,
                queues: Some(4),
                owner: Some(1000),
                group: None,
            }),
            netkit: None,
        };
        NamespaceScan {
            interfaces: vec![Interface {
                link,
                addresses: vec![
                    Address {
                        prefix: "10.200.0.2/24".parse().unwrap(),
                        peer: None,
                        broadcast: Some("10.200.0.255".parse().unwrap()),
                        scope: AddressScope::GLOBAL,
                        flags: Address::F_PERMANENT,
                        label: Some("eth0".into()),
                        route_metric: None,
                        protocol: None,
                        valid_lifetime: None,
                        preferred_lifetime: None,
                    },
                    Address {
                        prefix: "fd00:200::2/64".parse().unwrap(),
                        peer: None,
                        broadcast: None,
                        scope: AddressScope::GLOBAL,
                        flags: Address::F_PERMANENT | Address::F_NODAD,
                        label: None,
                        route_metric: None,
                        protocol: None,
                        valid_lifetime: None,
                        preferred_lifetime: None,
                    },
                ],
                routes: vec![Route {
                    destination: "0.0.0.0/0".parse().unwrap(),
                    gateway: Some("10.200.0.1".parse().unwrap()),
                    device_index: Some(2),
                    source: None,
                    scope: AddressScope::GLOBAL,
                    protocol: RouteProtocol::BOOT,
                    kind: RouteType::UNICAST,
                    table: RT_TABLE_MAIN,
                    metric: Some(1024),
                    ..Route::default()
                }],
                all_routes: vec![Route {
                    destination: "10.11.0.0/16".parse().unwrap(),
                    table: 100,
                    metric: Some(50),
                    tos: 0x10,
                    mtu: Some(1400),
                    advmss: Some(1360),
                    other_metrics: vec![RouteMetric { id: 11, value: 10 }],
                    multipath: vec![
                        NextHop {
                            gateway: Some("10.200.0.1".parse().unwrap()),
                            device_index: Some(2),
                            weight: 2,
                            onlink: false,
                        },
                        NextHop {
                            gateway: Some("192.0.2.1".parse().unwrap()),
                            device_index: Some(2),
                            weight: 1,
                            onlink: true,
                        },
                    ],
                    ..Route::default()
                }],
                neighbours: vec![Neighbour {
                    ip: "fd00:200::1".parse().unwrap(),
                    mac: Some("02:00:0a:c8:00:01".parse().unwrap()),
                    state: NeighbourState::PERMANENT,
                    device_index: 2,
                }],
            }],
            skipped: vec![SkippedLink {
                name: IfName::new("lo").unwrap(),
                index: 1,
                reason: SkipReason::Loopback,
            }],
            routes_without_device: vec![],
        }
    }

    #[test]
    fn json_round_trip_keeps_everything() {
        let scan = sample();
        let json = serde_json::to_string_pretty(&scan).unwrap();
        let back: NamespaceScan = serde_json::from_str(&json).unwrap();
        assert_eq!(back, scan);
    }

    #[test]
    fn json_uses_readable_names() {
        let json = serde_json::to_value(sample()).unwrap();
        let iface = &json["interfaces"][0];
        assert_eq!(iface["link"]["mac"], "02:00:0a:c8:00:02");
        assert_eq!(iface["addresses"][1]["prefix"], "fd00:200::2/64");
        assert_eq!(iface["routes"][0]["protocol"], "boot");
        assert_eq!(iface["neighbours"][0]["state"], "permanent");
        assert_eq!(iface["link"]["tuntap"]["mode"], "tap");
        assert_eq!(json["skipped"][0]["reason"], "loopback");
        // Attributes at their defaults are left out; the others are there.
        let plain = &iface["routes"][0];
        for absent in [
            "tos",
            "onlink",
            "mtu",
            "advmss",
            "other_metrics",
            "pref",
            "multipath",
        ] {
            assert!(plain.get(absent).is_none(), "{absent}: {plain}");
        }
        let rich = &iface["all_routes"][0];
        assert_eq!(rich["mtu"], 1400);
        assert_eq!(rich["multipath"][1]["onlink"], true);
        assert_eq!(rich["multipath"][0]["weight"], 2);
    }

    #[test]
    fn route_helpers_see_next_hops() {
        let scan = sample();
        let multipath = &scan.interfaces[0].all_routes[0];
        assert!(multipath.goes_through(2));
        assert!(!multipath.goes_through(3));
        assert!(
            multipath.needs_gateway_route(),
            "its first next hop has a gateway"
        );
        let mut onlink = scan.interfaces[0].routes[0].clone();
        assert!(onlink.needs_gateway_route());
        onlink.onlink = true;
        assert!(
            !onlink.needs_gateway_route(),
            "onlink: no route to the gateway needed"
        );
    }

    #[test]
    fn a_field_added_later_may_be_absent() {
        let mut json = serde_json::to_value(sample()).unwrap();
        let link = json["interfaces"][0]["link"].as_object_mut().unwrap();
        link.remove("lower_up");
        link.remove("parent_netnsid");
        link.remove("netkit");
        let back: NamespaceScan = serde_json::from_value(json).unwrap();
        assert!(!back.interfaces[0].link.lower_up);
        assert_eq!(back.interfaces[0].link.parent_netnsid, None);
        assert_eq!(back.interfaces[0].link.netkit, None);
    }

    #[test]
    fn netkit_modes_read_as_iproute2_writes_them() {
        let info = NetkitInfo {
            mode: NetkitMode::L2,
            primary: false,
        };
        assert_eq!(
            serde_json::to_value(&info).unwrap(),
            serde_json::json!({"mode": "l2", "primary": false})
        );
        assert_eq!(
            serde_json::from_value::<NetkitMode>(serde_json::json!({"other": 7})).unwrap(),
            NetkitMode::Other(7)
        );
    }
}
