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
}

impl Route {
    /// True for a default route.
    pub fn is_default(&self) -> bool {
        self.destination.prefix_len() == 0
    }
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
    /// Routes whose outgoing interface is this link.
    pub routes: Vec<Route>,
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
                    },
                    Address {
                        prefix: "fd00:200::2/64".parse().unwrap(),
                        peer: None,
                        broadcast: None,
                        scope: AddressScope::GLOBAL,
                        flags: Address::F_PERMANENT | Address::F_NODAD,
                        label: None,
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
    }

    #[test]
    fn a_field_added_later_may_be_absent() {
        let mut json = serde_json::to_value(sample()).unwrap();
        let link = json["interfaces"][0]["link"].as_object_mut().unwrap();
        link.remove("lower_up");
        link.remove("parent_netnsid");
        let back: NamespaceScan = serde_json::from_value(json).unwrap();
        assert!(!back.interfaces[0].link.lower_up);
        assert_eq!(back.interfaces[0].link.parent_netnsid, None);
    }
}
