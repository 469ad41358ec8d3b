//! The pair of links an endpoint wires together, and its plan.

use rand::RngExt;
use sandbox_net_netns::MAX_TAP_QUEUES;
use sandbox_net_persist::{
    IfName, IfNameError, MacAddr,
    scan::Interface,
    steps::{InterworkingModel, KATA_REDIRECT_PRIORITY, Step},
};

/// The MTU the kernel gives a new tap, which the plan records as the value it overwrites.
const NEW_TAP_MTU: u32 = 1500;

/// How the VM-side tap is made (unused by the macvtap model except `queues`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapOptions {
    /// Queue pairs the VMM will use: 1..=256.
    pub queues: usize,
    /// Frames carry a virtio-net header.
    pub vnet_hdr: bool,
    /// The user allowed to open the tap (a jailed VMM).
    pub owner: Option<u32>,
    /// The group allowed to open the tap.
    pub group: Option<u32>,
    /// Keep the tap when its descriptors close, for a VMM that reopens it by name.
    pub persist: bool,
}

impl Default for TapOptions {
    fn default() -> Self {
        Self {
            queues: 1,
            vnet_hdr: true,
            owner: None,
            group: None,
            persist: false,
        }
    }
}

/// Why a pair cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    /// The VM-side link's name would not be a valid interface name.
    #[error("endpoint {index}: no valid VM-side link name")]
    VmLinkName {
        /// The endpoint index.
        index: u32,
        /// Why.
        #[source]
        source: IfNameError,
    },
    /// The queue count is outside 1..=256.
    #[error("endpoint {link}: {queues} queues requested; 1 to 256 are supported")]
    InvalidQueues {
        /// The pod link.
        link: IfName,
        /// The count asked for.
        queues: usize,
    },
    /// The pod link has no Ethernet address to give the guest.
    #[error("link {link} has no MAC address to give the guest")]
    NoMac {
        /// The pod link.
        link: IfName,
    },
}

/// The VM-side link of endpoint `index`: `tap{index}_kata`, Kata's name, which VMMs and
/// tooling expect.
pub fn vm_link_name(index: u32) -> Result<IfName, PairError> {
    IfName::new(format!("tap{index}_kata"))
        .map_err(|source| PairError::VmLinkName { index, source })
}

/// A random locally administered unicast MAC (first octet: bit 0x02 set, bit 0x01 clear).
pub fn random_local_mac() -> MacAddr {
    let mut octets: [u8; 6] = rand::rng().random();
    octets[0] = (octets[0] | 0x02) & !0x01;
    MacAddr(octets)
}

/// A pod link and the VM-side link that connects it to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPair {
    /// The endpoint index (names the VM-side link).
    pub index: u32,
    /// How the two are connected.
    pub model: InterworkingModel,
    /// The pod link as scanned, with the routes and permanent neighbours a guest needs.
    pub pod: Interface,
    /// The VM-side link (`tap{index}_kata`, a tap or a macvtap).
    pub vm_link: IfName,
    /// The MAC the guest must use: the pod link's, as CNI assigned it.
    pub guest_mac: MacAddr,
    /// How the tap is made.
    pub tap: TapOptions,
}

impl NetworkPair {
    /// Checks the configuration against the scanned pod link.
    pub fn new(
        index: u32,
        model: InterworkingModel,
        pod: Interface,
        tap: TapOptions,
    ) -> Result<Self, PairError> {
        let vm_link = vm_link_name(index)?;
        if tap.queues == 0 || tap.queues > MAX_TAP_QUEUES {
            return Err(PairError::InvalidQueues {
                link: pod.link.name.clone(),
                queues: tap.queues,
            });
        }
        let guest_mac = pod.link.mac.ok_or_else(|| PairError::NoMac {
            link: pod.link.name.clone(),
        })?;
        Ok(Self {
            index,
            model,
            pod,
            vm_link,
            guest_mac,
            tap,
        })
    }

    /// The step that takes the pod link's addresses away, recording what giving them back
    /// needs: every route through the link when the scan recorded them (a scan with
    /// `record_all_routes`), else the routes a guest is told about.
    fn clear_addresses(&self) -> Step {
        let all_routes = !self.pod.all_routes.is_empty();
        Step::ClearAddresses {
            link: self.pod.link.name.clone(),
            addresses: self.pod.addresses.clone(),
            routes: if all_routes {
                self.pod.all_routes.clone()
            } else {
                self.pod.routes.clone()
            },
            neighbours: self.pod.neighbours.clone(),
            all_routes,
        }
    }

    /// The same pair with the VM-side link called `name` instead of `tap{index}_kata` (a
    /// tap name a CNI runtime asked for).
    pub fn with_vm_link(mut self, name: IfName) -> Self {
        self.vm_link = name;
        self
    }

    /// The steps that wire the pair. `pod_mac_while_attached` is the MAC the pod link takes in
    /// the macvtap model (pass [`random_local_mac`]); the other models ignore it.
    pub fn plan(&self, pod_mac_while_attached: MacAddr) -> Vec<Step> {
        let pod = &self.pod.link;
        let vm = &self.vm_link;
        let create_tap = Step::CreateTap {
            name: vm.clone(),
            queues: self.tap.queues as u32,
            vnet_hdr: self.tap.vnet_hdr,
            owner: self.tap.owner,
            group: self.tap.group,
            persist: self.tap.persist,
        };
        let tap_mtu = Step::SetMtu {
            link: vm.clone(),
            mtu: pod.mtu,
            original: NEW_TAP_MTU,
        };
        let vm_up = Step::SetUp {
            link: vm.clone(),
            original_up: false,
        };
        // Undone last: the queue length of a pod link made with 0 comes back after the qdiscs
        // that raised it are gone.
        let keep_txqueuelen =
            (pod.txqueuelen == 0 && self.model != InterworkingModel::None).then(|| {
                Step::RestoreTxQueueLen {
                    link: pod.name.clone(),
                    original: 0,
                }
            });
        let steps = match self.model {
            InterworkingModel::TcFilter => vec![
                create_tap,
                tap_mtu,
                vm_up,
                Step::AddIngressQdisc {
                    link: pod.name.clone(),
                },
                Step::AddIngressQdisc { link: vm.clone() },
                Step::AddRedirect {
                    from: pod.name.clone(),
                    to: vm.clone(),
                    priority: KATA_REDIRECT_PRIORITY,
                },
                Step::AddRedirect {
                    from: vm.clone(),
                    to: pod.name.clone(),
                    priority: KATA_REDIRECT_PRIORITY,
                },
            ],
            // The addresses go before the MAC changes: undone in reverse, the pod link gets its
            // MAC back first and its addresses, routes and neighbours after, because a MAC
            // change makes the kernel flush the link's neighbours, permanent ones included.
            InterworkingModel::Macvtap => vec![
                Step::CreateMacvtap {
                    name: vm.clone(),
                    parent: pod.name.clone(),
                    mac: self.guest_mac,
                },
                self.clear_addresses(),
                Step::SetMac {
                    link: pod.name.clone(),
                    mac: pod_mac_while_attached,
                    original: self.guest_mac,
                },
                Step::SetAllmulticast { link: vm.clone() },
                vm_up,
                Step::SetUp {
                    link: pod.name.clone(),
                    original_up: pod.up,
                },
            ],
            InterworkingModel::None => vec![create_tap, tap_mtu, vm_up],
        };
        keep_txqueuelen.into_iter().chain(steps).collect()
    }
}

#[cfg(test)]
mod tests {
    use sandbox_net_persist::scan::{Interface, Link};

    use super::*;

    fn pod() -> Interface {
        Interface {
            link: Link {
                name: IfName::new("eth0").unwrap(),
                index: 2,
                kind: Some("veth".into()),
                mtu: 1450,
                mac: Some("02:00:0a:c8:00:02".parse().unwrap()),
                up: true,
                lower_up: true,
                loopback: false,
                parent_index: Some(3),
                parent_netnsid: Some(0),
                txqueuelen: 1000,
                tuntap: None,
                netkit: None,
            },
            addresses: vec![],
            routes: vec![],
            all_routes: vec![],
            neighbours: vec![],
        }
    }

    fn name(n: &str) -> IfName {
        IfName::new(n).unwrap()
    }

    #[test]
    fn tcfilter_plan_is_kata_order_with_originals() {
        let pair = NetworkPair::new(
            3,
            InterworkingModel::TcFilter,
            pod(),
            TapOptions {
                queues: 4,
                ..TapOptions::default()
            },
        )
        .unwrap();
        assert_eq!(pair.vm_link.as_str(), "tap3_kata");
        assert_eq!(pair.guest_mac.to_string(), "02:00:0a:c8:00:02");
        let steps = pair.plan(random_local_mac());
        let described: Vec<String> = steps.iter().map(Step::describe).collect();
        assert_eq!(
            described,
            [
                "create tap tap3_kata (4 queues)",
                "set MTU of tap3_kata 1500 -> 1450",
                "set tap3_kata up",
                "add ingress qdisc to eth0",
                "add ingress qdisc to tap3_kata",
                "redirect eth0 -> tap3_kata",
                "redirect tap3_kata -> eth0",
            ]
        );
    }

    #[test]
    fn macvtap_plan_moves_mac_and_addresses_to_the_guest() {
        let mut pod = pod();
        pod.addresses.push(sandbox_net_persist::scan::Address {
            prefix: "10.200.0.2/24".parse().unwrap(),
            peer: None,
            broadcast: None,
            scope: sandbox_net_persist::AddressScope::GLOBAL,
            flags: 0x80,
            label: Some("eth0".into()),
            route_metric: None,
            protocol: None,
            valid_lifetime: None,
            preferred_lifetime: None,
        });
        let pair = NetworkPair::new(
            0,
            InterworkingModel::Macvtap,
            pod.clone(),
            TapOptions::default(),
        )
        .unwrap();
        let temporary: MacAddr = "06:00:00:00:00:01".parse().unwrap();
        let steps = pair.plan(temporary);
        assert_eq!(
            steps[0],
            Step::CreateMacvtap {
                name: name("tap0_kata"),
                parent: name("eth0"),
                mac: pair.guest_mac
            }
        );
        assert_eq!(
            steps[2],
            Step::SetMac {
                link: name("eth0"),
                mac: temporary,
                original: pair.guest_mac
            }
        );
        assert_eq!(
            steps[1],
            Step::ClearAddresses {
                link: name("eth0"),
                addresses: pod.addresses,
                routes: vec![],
                neighbours: vec![],
                all_routes: false,
            }
        );
        assert_eq!(
            steps[5],
            Step::SetUp {
                link: name("eth0"),
                original_up: true
            }
        );
    }

    #[test]
    fn none_plan_only_makes_the_tap() {
        let pair =
            NetworkPair::new(0, InterworkingModel::None, pod(), TapOptions::default()).unwrap();
        let steps = pair.plan(random_local_mac());
        assert_eq!(steps.len(), 3);
        assert!(matches!(steps[0], Step::CreateTap { .. }));
    }

    #[test]
    fn bad_configuration_is_refused_with_the_reason() {
        for queues in [0, 257] {
            let err = NetworkPair::new(
                0,
                InterworkingModel::TcFilter,
                pod(),
                TapOptions {
                    queues,
                    ..TapOptions::default()
                },
            )
            .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("endpoint eth0: {queues} queues requested; 1 to 256 are supported")
            );
        }
        assert!(
            NetworkPair::new(
                1_234_567,
                InterworkingModel::TcFilter,
                pod(),
                TapOptions::default()
            )
            .is_ok()
        );
        let err = NetworkPair::new(
            12_345_678,
            InterworkingModel::TcFilter,
            pod(),
            TapOptions::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "endpoint 12345678: no valid VM-side link name"
        );
        assert!(
            std::error::Error::source(&err)
                .unwrap()
                .to_string()
                .contains("tap12345678_kata")
        );
        let mut no_mac = pod();
        no_mac.link.mac = None;
        let err = NetworkPair::new(
            0,
            InterworkingModel::TcFilter,
            no_mac,
            TapOptions::default(),
        )
        .unwrap_err();
        assert_eq!(err, PairError::NoMac { link: name("eth0") });
    }

    #[test]
    fn random_macs_are_local_unicast() {
        for _ in 0..100 {
            let mac = random_local_mac();
            assert!(mac.is_local() && !mac.is_multicast(), "{mac}");
        }
    }
}
