//! What the guest must be told about its network, from the recorded scan of the pod.
//!
//! The guest sees NICs with the pod's MACs and nothing else: its interface names, MTUs,
//! addresses, routes and static neighbours come from the pod's namespace as scanned before
//! the attach (the macvtap model even removes the addresses from the pod's link). Two forms:
//!
//! - [`GuestNetwork`], as JSON: per interface the name, MAC, MTU and addresses (family,
//!   address, prefix length); then the routes (family, destination, gateway, device, source,
//!   scope, metric, MTU and advertised MSS when the pod's route has them, onlink) and the permanent
//!   neighbours (IP, MAC, device, state). This is close to what Kata's runtime sends its
//!   agent (`UpdateInterface`, `UpdateRoutes`, `AddARPNeighbors`), with names instead of
//!   protobuf enums.
//! - The kernel's `ip=` parameter ([`GuestNetwork::kernel_ip`]) for a guest without an agent:
//!   `ip=<addr>::<gw>:<netmask>::<ifname>:off[:<dns0>[:<dns1>]]` (client, server, gateway,
//!   netmask, hostname, device, autoconf, dns0, dns1), IPv4 and one interface only, as
//!   firecracker-go-sdk writes it. Kernels without `CONFIG_IP_PNP` (Debian's cloud kernels)
//!   leave it to the guest's init to read.
//!
//! Left out, because the guest makes them itself: IPv6 link-local addresses (derived from the
//! same MAC), routes of other tables than main (the guest gets no rules to reach them), IPv6
//! link-local and multicast routes; and multipath routes. Routes through a link come before routes through a
//! gateway, so that each gateway is reachable when its route is added.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use sandbox_net_endpoints::EndpointId;
use sandbox_net_persist::{
    AddressScope, IfName, MacAddr, NeighbourState,
    scan::{Interface, RT_TABLE_MAIN, Route},
    state::SandboxState,
};
use serde::{Deserialize, Serialize};

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

impl Family {
    fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Self::Ipv4 } else { Self::Ipv6 }
    }
}

/// One address of a guest interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestAddress {
    /// Its family.
    pub family: Family,
    /// The address.
    pub address: IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
}

/// One interface of the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInterface {
    /// The endpoint it is the guest side of.
    pub endpoint: EndpointId,
    /// Its name: the pod's interface name.
    pub name: IfName,
    /// Its MAC: the NIC's, as the VMM was given it.
    pub mac: MacAddr,
    /// Its MTU: the pod link's.
    pub mtu: u32,
    /// Its addresses, IPv4 first.
    pub addresses: Vec<GuestAddress>,
}

/// One route of the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRoute {
    /// Its family.
    pub family: Family,
    /// The destination (`0.0.0.0/0` or `::/0` for a default route).
    pub destination: IpNet,
    /// The gateway, if any.
    pub gateway: Option<IpAddr>,
    /// The outgoing interface (a guest interface name).
    pub device: IfName,
    /// The preferred source address, if any.
    pub source: Option<IpAddr>,
    /// The route's scope (`global`, `link`, ...).
    pub scope: AddressScope,
    /// The metric (priority), if any.
    pub metric: Option<u32>,
    /// The route's MTU, when the pod's route has one (`ip route ... mtu N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The route's advertised MSS, when the pod's route has one (`advmss N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// The gateway is on the link without a route to it (`onlink`, as ptp-style CNIs make a
    /// default route through a link-local gateway).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub onlink: bool,
}

/// One static neighbour of the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNeighbour {
    /// The neighbour's address.
    pub ip: IpAddr,
    /// Its MAC.
    pub mac: MacAddr,
    /// The guest interface it is reached through.
    pub device: IfName,
    /// Its state (`permanent`).
    pub state: NeighbourState,
}

/// Everything the guest must be told about its network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNetwork {
    /// The interfaces, in attach order.
    pub interfaces: Vec<GuestInterface>,
    /// The routes, link routes first.
    pub routes: Vec<GuestRoute>,
    /// The static neighbours.
    pub neighbours: Vec<GuestNeighbour>,
}

/// The guest's network cannot be put in the form asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestConfigError {
    /// No interface has an IPv4 address.
    #[error("no attached interface has an IPv4 address: the kernel's ip= has nothing to say")]
    NoIpv4,
    /// More than one interface could be meant.
    #[error(
        "interfaces {} have IPv4 addresses and the kernel's ip= configures one: name the interface",
        .0.join(", ")
    )]
    Ambiguous(Vec<String>),
    /// The interface asked for is not among the guest's.
    #[error("the guest has no interface {name} (attached: {})", .attached.join(", "))]
    UnknownInterface {
        /// The name asked for.
        name: String,
        /// The guest's interfaces.
        attached: Vec<String>,
    },
    /// The interface asked for has no IPv4 address.
    #[error("interface {0} has no IPv4 address for the kernel's ip=")]
    NoIpv4On(String),
    /// The kernel's `ip=` takes two DNS servers at most.
    #[error("the kernel's ip= takes at most 2 DNS servers, {0} given")]
    TooManyDns(usize),
}

impl GuestNetwork {
    /// The guest's network from the record of every attached endpoint of `state`.
    pub fn from_state(state: &SandboxState) -> Self {
        let mut network = Self::default();
        let mut device_routes = Vec::new();
        let mut gateway_routes = Vec::new();
        for record in state.endpoints.iter().filter(|e| e.attached) {
            let interface = &record.interface;
            let Some(mac) = record.guest_mac.or(interface.link.mac) else {
                continue;
            };
            let name = interface.link.name.clone();
            network.interfaces.push(GuestInterface {
                endpoint: record.id.clone(),
                name: name.clone(),
                mac,
                mtu: interface.link.mtu,
                addresses: guest_addresses(interface),
            });
            for route in interface.routes.iter().filter(|r| for_the_guest(r)) {
                let guest = GuestRoute {
                    family: Family::of(route.destination.addr()),
                    destination: route.destination,
                    gateway: route.gateway,
                    device: name.clone(),
                    source: route.source,
                    scope: route.scope,
                    metric: route.metric,
                    mtu: route.mtu,
                    advmss: route.advmss,
                    onlink: route.onlink,
                };
                if guest.gateway.is_some() {
                    gateway_routes.push(guest);
                } else {
                    device_routes.push(guest);
                }
            }
            network
                .neighbours
                .extend(interface.neighbours.iter().filter_map(|n| {
                    Some(GuestNeighbour {
                        ip: n.ip,
                        mac: n.mac?,
                        device: name.clone(),
                        state: n.state,
                    })
                }));
        }
        network.routes = device_routes;
        network.routes.extend(gateway_routes);
        network
    }

    /// The kernel's `ip=` parameter for `interface` (or the one interface with an IPv4
    /// address), with up to two DNS servers:
    /// `ip=<addr>::<gw>:<netmask>::<ifname>:off[:<dns0>[:<dns1>]]`. The address is the
    /// interface's first IPv4 address, the gateway that of its IPv4 default route (empty when
    /// it has none).
    pub fn kernel_ip(
        &self,
        interface: Option<&str>,
        dns: &[Ipv4Addr],
    ) -> Result<String, GuestConfigError> {
        if dns.len() > 2 {
            return Err(GuestConfigError::TooManyDns(dns.len()));
        }
        let first_v4 = |i: &GuestInterface| {
            i.addresses.iter().find_map(|a| match a.address {
                IpAddr::V4(v4) => Some((v4, a.prefix_len)),
                IpAddr::V6(_) => None,
            })
        };
        let chosen = match interface {
            Some(name) => self
                .interfaces
                .iter()
                .find(|i| i.name.as_str() == name)
                .ok_or_else(|| GuestConfigError::UnknownInterface {
                    name: name.to_string(),
                    attached: self.interfaces.iter().map(|i| i.name.to_string()).collect(),
                })?,
            None => {
                let with_v4: Vec<&GuestInterface> = self
                    .interfaces
                    .iter()
                    .filter(|i| first_v4(i).is_some())
                    .collect();
                match with_v4.as_slice() {
                    [] => return Err(GuestConfigError::NoIpv4),
                    [one] => *one,
                    many => {
                        return Err(GuestConfigError::Ambiguous(
                            many.iter().map(|i| i.name.to_string()).collect(),
                        ));
                    }
                }
            }
        };
        let (address, prefix_len) =
            first_v4(chosen).ok_or_else(|| GuestConfigError::NoIpv4On(chosen.name.to_string()))?;
        let netmask = Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0),
        );
        let gateway = self
            .routes
            .iter()
            .find(|r| {
                r.device == chosen.name
                    && r.destination.prefix_len() == 0
                    && r.family == Family::Ipv4
            })
            .and_then(|r| r.gateway)
            .map(|g| g.to_string())
            .unwrap_or_default();
        let mut text = format!("ip={address}::{gateway}:{netmask}::{}:off", chosen.name);
        for server in dns {
            text.push_str(&format!(":{server}"));
        }
        Ok(text)
    }
}

/// The interface's addresses a guest is given: all but IPv6 link-local ones.
fn guest_addresses(interface: &Interface) -> Vec<GuestAddress> {
    let mut addresses: Vec<GuestAddress> = interface
        .addresses
        .iter()
        .filter(|a| !(a.prefix.addr().is_ipv6() && a.scope == AddressScope::LINK))
        .map(|a| GuestAddress {
            family: Family::of(a.prefix.addr()),
            address: a.prefix.addr(),
            prefix_len: a.prefix.prefix_len(),
        })
        .collect();
    addresses.sort_by_key(|a| a.family == Family::Ipv6);
    addresses
}

/// Whether a scanned route is one the guest is given (see the module documentation). A
/// multipath route is left out: each of its next hops is another of the guest's interfaces,
/// and the guest is told single-path routes.
fn for_the_guest(route: &Route) -> bool {
    if !route.multipath.is_empty() {
        return false;
    }
    let link_local_or_multicast = match route.destination {
        IpNet::V6(v6) => {
            let first = v6.addr().segments()[0];
            (first & 0xffc0) == 0xfe80 || (first & 0xff00) == 0xff00
        }
        IpNet::V4(_) => false,
    };
    route.table == RT_TABLE_MAIN && !link_local_or_multicast
}

#[cfg(test)]
mod tests {
    use sandbox_net_persist::{
        RouteProtocol, RouteType,
        scan::{Address, Link, Neighbour},
        state::{EndpointRecord, NetnsRecord},
        steps::InterworkingModel,
    };
    use serde_json::json;

    use super::*;

    fn route(dst: &str, gw: Option<&str>, table: u32) -> Route {
        Route {
            destination: dst.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            device_index: Some(2),
            source: None,
            scope: if gw.is_some() {
                AddressScope::GLOBAL
            } else {
                AddressScope::LINK
            },
            protocol: RouteProtocol::BOOT,
            kind: RouteType::UNICAST,
            table,
            metric: None,
            ..Route::default()
        }
    }

    fn address(prefix: &str, scope: AddressScope) -> Address {
        Address {
            prefix: prefix.parse().unwrap(),
            peer: None,
            broadcast: None,
            scope,
            flags: Address::F_PERMANENT,
            label: None,
            route_metric: None,
            protocol: None,
            valid_lifetime: None,
            preferred_lifetime: None,
        }
    }

    fn record(name: &str, id: u8, addresses: Vec<Address>, routes: Vec<Route>) -> EndpointRecord {
        EndpointRecord {
            id: EndpointId::from_bytes([id, 0, 0, 0, 0, 0, 0, 1]),
            index: u32::from(id),
            kind: sandbox_net_persist::endpoint::EndpointKind::Veth,
            model: Some(InterworkingModel::TcFilter),
            interface: Interface {
                link: Link {
                    name: IfName::new(name).unwrap(),
                    index: 2,
                    kind: Some("veth".into()),
                    mtu: 1450,
                    mac: Some("02:00:0a:c8:00:02".parse().unwrap()),
                    up: true,
                    lower_up: true,
                    loopback: false,
                    parent_index: None,
                    parent_netnsid: None,
                    txqueuelen: 1000,
                    tuntap: None,
                    netkit: None,
                },
                addresses,
                routes,
                neighbours: vec![Neighbour {
                    ip: "10.200.0.1".parse().unwrap(),
                    mac: Some("02:00:0a:c8:00:01".parse().unwrap()),
                    state: NeighbourState::PERMANENT,
                    device_index: 2,
                }],
                all_routes: vec![],
            },
            guest_mac: Some("02:00:0a:c8:00:02".parse().unwrap()),
            queues: 1,
            rx_rate_bits: 0,
            tx_rate_bits: 0,
            pci: None,
            vhost_user_socket: None,
            steps: vec![],
            attached: true,
        }
    }

    fn state(endpoints: Vec<EndpointRecord>) -> SandboxState {
        let mut state = SandboxState::new(
            "pod",
            NetnsRecord {
                path: "/run/netns/pod".into(),
                id: sandbox_net_persist::NetnsId {
                    dev: 4,
                    ino: 4026532000,
                },
                created_by_us: false,
            },
            InterworkingModel::TcFilter,
        );
        state.endpoints = endpoints;
        state
    }

    fn pod() -> EndpointRecord {
        record(
            "eth0",
            1,
            vec![
                address("fd00:200::2/64", AddressScope::GLOBAL),
                address("fe80::ff:fe0a:c802/64", AddressScope::LINK),
                address("10.200.0.2/24", AddressScope::GLOBAL),
            ],
            vec![
                route("0.0.0.0/0", Some("10.200.0.1"), RT_TABLE_MAIN),
                Route {
                    mtu: Some(1400),
                    advmss: Some(1360),
                    ..route("10.99.0.0/16", None, RT_TABLE_MAIN)
                },
                route("::/0", Some("fd00:200::1"), RT_TABLE_MAIN),
                route("fe80::/64", None, RT_TABLE_MAIN),
                route("0.0.0.0/0", Some("10.200.0.254"), 100),
            ],
        )
    }

    #[test]
    fn the_json_names_what_the_guest_needs() {
        let network = GuestNetwork::from_state(&state(vec![pod()]));
        assert_eq!(
            serde_json::to_value(&network).unwrap(),
            json!({
                "interfaces": [{
                    "endpoint": "0100000000000001",
                    "name": "eth0",
                    "mac": "02:00:0a:c8:00:02",
                    "mtu": 1450,
                    "addresses": [
                        {"family": "ipv4", "address": "10.200.0.2", "prefix_len": 24},
                        {"family": "ipv6", "address": "fd00:200::2", "prefix_len": 64},
                    ],
                }],
                "routes": [
                    {"family": "ipv4", "destination": "10.99.0.0/16", "gateway": null,
                     "device": "eth0", "source": null, "scope": "link", "metric": null,
                     "mtu": 1400, "advmss": 1360},
                    {"family": "ipv4", "destination": "0.0.0.0/0", "gateway": "10.200.0.1",
                     "device": "eth0", "source": null, "scope": "global", "metric": null},
                    {"family": "ipv6", "destination": "::/0", "gateway": "fd00:200::1",
                     "device": "eth0", "source": null, "scope": "global", "metric": null},
                ],
                "neighbours": [
                    {"ip": "10.200.0.1", "mac": "02:00:0a:c8:00:01", "device": "eth0",
                     "state": "permanent"},
                ],
            })
        );
        let back: GuestNetwork =
            serde_json::from_value(serde_json::to_value(&network).unwrap()).unwrap();
        assert_eq!(back, network);
    }

    #[test]
    fn the_kernel_ip_line_has_the_fields_in_order() {
        let network = GuestNetwork::from_state(&state(vec![pod()]));
        assert_eq!(
            network.kernel_ip(None, &[]).unwrap(),
            "ip=10.200.0.2::10.200.0.1:255.255.255.0::eth0:off"
        );
        assert_eq!(
            network
                .kernel_ip(
                    Some("eth0"),
                    &["10.0.0.53".parse().unwrap(), "1.1.1.1".parse().unwrap()]
                )
                .unwrap(),
            "ip=10.200.0.2::10.200.0.1:255.255.255.0::eth0:off:10.0.0.53:1.1.1.1"
        );
    }

    #[test]
    fn the_kernel_ip_line_refuses_what_it_cannot_say() {
        let two = GuestNetwork::from_state(&state(vec![
            pod(),
            record(
                "eth1",
                2,
                vec![address("10.201.0.2/16", AddressScope::GLOBAL)],
                vec![],
            ),
        ]));
        assert_eq!(
            two.kernel_ip(None, &[]).unwrap_err().to_string(),
            "interfaces eth0, eth1 have IPv4 addresses and the kernel's ip= configures one: name the interface"
        );
        // An interface without a default route has no gateway.
        assert_eq!(
            two.kernel_ip(Some("eth1"), &[]).unwrap(),
            "ip=10.201.0.2:::255.255.0.0::eth1:off"
        );
        assert_eq!(
            two.kernel_ip(Some("eth9"), &[]).unwrap_err(),
            GuestConfigError::UnknownInterface {
                name: "eth9".into(),
                attached: vec!["eth0".into(), "eth1".into()]
            }
        );
        let v6 = GuestNetwork::from_state(&state(vec![record(
            "eth0",
            1,
            vec![address("fd00::2/64", AddressScope::GLOBAL)],
            vec![],
        )]));
        assert_eq!(
            v6.kernel_ip(None, &[]).unwrap_err(),
            GuestConfigError::NoIpv4
        );
        let dns: Vec<Ipv4Addr> = vec!["1.1.1.1".parse().unwrap(); 3];
        assert_eq!(
            two.kernel_ip(Some("eth0"), &dns).unwrap_err(),
            GuestConfigError::TooManyDns(3)
        );
    }

    #[test]
    fn endpoints_not_attached_are_not_the_guests() {
        let mut detached = pod();
        detached.attached = false;
        assert_eq!(
            GuestNetwork::from_state(&state(vec![detached])),
            GuestNetwork::default()
        );
    }
}
