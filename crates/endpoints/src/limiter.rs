//! Where host-side rate limits go, for each kind of endpoint and model.
//!
//! A limit is applied on the host only when the VMM has no limiter of its own (QEMU); it is
//! out of the guest's reach. rx is traffic into the VM, tx out of it. The place follows the
//! path a frame takes:
//!
//! | VM-side link | rx (into the VM) | tx (out of the VM) |
//! |---|---|---|
//! | tap, tcfilter model | HTB on the tap's egress | HTB on the pod link's egress (redirected frames leave there) |
//! | tap, none model or tap endpoint | HTB on the tap's egress | frames the guest writes arrive at the tap's ingress: redirect to the endpoint's IFB, HTB on the IFB |
//! | macvtap (macvtap model, macvtap endpoint) | frames for the guest pass the macvtap's ingress: redirect to the endpoint's IFB, HTB on the IFB | frames the guest writes leave by the macvtap's egress: HTB there |
//!
//! Physical and vhost-user endpoints bypass the host's stack: a limit on them is refused
//! before anything is attached.

use sandbox_net_interworking::{InterworkingModel, Step};
use sandbox_net_persist::steps::KATA_REDIRECT_PRIORITY;
use sandbox_net_persist::{
    IfName,
    endpoint::{EndpointId, EndpointKind},
};
use sandbox_net_ratelimit::{HtbRate, RateError};

use crate::hypervisor::{Capabilities, HypervisorConfig};

/// Host-side limits of one endpoint, bits/s; 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Into the VM.
    pub rx_bits: u64,
    /// Out of the VM.
    pub tx_bits: u64,
}

impl RateLimits {
    /// The limits the host must apply: the configured ones when the VMM has no limiter of its
    /// own, none otherwise.
    pub fn from_hypervisor(capabilities: Capabilities, config: &HypervisorConfig) -> Self {
        if capabilities.rate_limiter {
            Self::default()
        } else {
            Self {
                rx_bits: config.rx_rate_limiter_max_rate,
                tx_bits: config.tx_rate_limiter_max_rate,
            }
        }
    }

    /// True when nothing is limited.
    pub fn is_none(&self) -> bool {
        self.rx_bits == 0 && self.tx_bits == 0
    }
}

/// Why limits cannot be placed.
#[derive(Debug, thiserror::Error)]
pub enum LimitPlacementError {
    /// The endpoint's traffic does not cross the host's stack.
    #[error(
        "{kind} endpoints cannot be rate-limited on the host (rx {rx} bit/s, tx {tx} bit/s requested)"
    )]
    Unsupported {
        /// The endpoint kind.
        kind: EndpointKind,
        /// The rx limit asked for.
        rx: u64,
        /// The tx limit asked for.
        tx: u64,
    },
    /// A rate the kernel cannot take.
    #[error("invalid {direction} rate")]
    Rate {
        /// `"rx"` or `"tx"`.
        direction: &'static str,
        /// Why.
        #[source]
        source: RateError,
    },
}

/// The endpoint's IFB: `sbx` and 12 hex digits of its id, unique per endpoint (never the
/// per-namespace `ifb0` Kata shares between endpoints).
pub fn ifb_name(id: &EndpointId) -> IfName {
    let hex: String = id.as_str().chars().take(12).collect();
    match IfName::new(format!("sbx{hex}")) {
        Ok(name) => name,
        // An EndpointId is 16 hex digits, so "sbx" + 12 of them is always a valid name.
        Err(_) => unreachable!("sbx + 12 hex digits is a valid interface name"),
    }
}

/// The VM-side link of an endpoint and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmLink<'a> {
    /// A tap wired by `model` to the pod link.
    Tap {
        /// The tap.
        tap: &'a IfName,
        /// The pod link.
        pod: &'a IfName,
        /// The model.
        model: InterworkingModel,
    },
    /// A macvtap (made by the macvtap model, or found in the pod).
    Macvtap {
        /// The macvtap.
        macvtap: &'a IfName,
    },
}

/// The steps that apply `limits` to an endpoint. Checks the rates before anything is done.
pub fn limiter_steps(
    kind: EndpointKind,
    vm: Option<VmLink<'_>>,
    id: &EndpointId,
    limits: RateLimits,
) -> Result<Vec<Step>, LimitPlacementError> {
    if limits.is_none() {
        return Ok(Vec::new());
    }
    for (direction, bits) in [("rx", limits.rx_bits), ("tx", limits.tx_bits)] {
        if bits != 0 {
            HtbRate::from_bits(bits)
                .map_err(|source| LimitPlacementError::Rate { direction, source })?;
        }
    }
    let Some(vm) = vm else {
        return Err(LimitPlacementError::Unsupported {
            kind,
            rx: limits.rx_bits,
            tx: limits.tx_bits,
        });
    };
    let ifb = ifb_name(id);
    let through_ifb = |from: &IfName, rate_bits: u64| {
        vec![
            Step::CreateIfb { name: ifb.clone() },
            Step::AddIngressQdisc { link: from.clone() },
            Step::AddRedirect {
                from: from.clone(),
                to: ifb.clone(),
                priority: KATA_REDIRECT_PRIORITY,
            },
            Step::AddHtb {
                link: ifb.clone(),
                rate_bits,
            },
        ]
    };
    let mut steps = Vec::new();
    match vm {
        VmLink::Tap { tap, pod, model } => {
            if limits.rx_bits != 0 {
                steps.push(Step::AddHtb {
                    link: tap.clone(),
                    rate_bits: limits.rx_bits,
                });
            }
            if limits.tx_bits != 0 {
                if model == InterworkingModel::TcFilter {
                    steps.push(Step::AddHtb {
                        link: pod.clone(),
                        rate_bits: limits.tx_bits,
                    });
                } else {
                    steps.extend(through_ifb(tap, limits.tx_bits));
                }
            }
        }
        VmLink::Macvtap { macvtap } => {
            if limits.tx_bits != 0 {
                steps.push(Step::AddHtb {
                    link: macvtap.clone(),
                    rate_bits: limits.tx_bits,
                });
            }
            if limits.rx_bits != 0 {
                steps.extend(through_ifb(macvtap, limits.rx_bits));
            }
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> IfName {
        IfName::new(n).unwrap()
    }

    fn id() -> EndpointId {
        EndpointId::from_bytes([0x4a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x60, 0x71])
    }

    fn describe(steps: &[Step]) -> Vec<String> {
        steps.iter().map(Step::describe).collect()
    }

    const BOTH: RateLimits = RateLimits {
        rx_bits: 10_000_000,
        tx_bits: 20_000_000,
    };

    #[test]
    fn ifb_names_are_per_endpoint_and_fit() {
        assert_eq!(ifb_name(&id()).as_str(), "sbx4a1b2c3d4e5f");
        assert_ne!(ifb_name(&id()), ifb_name(&EndpointId::from_bytes([0; 8])));
    }

    #[test]
    fn tcfilter_shapes_the_tap_and_the_pod_link() {
        let (tap, pod) = (name("tap0_kata"), name("eth0"));
        let vm = VmLink::Tap {
            tap: &tap,
            pod: &pod,
            model: InterworkingModel::TcFilter,
        };
        assert_eq!(
            describe(&limiter_steps(EndpointKind::Veth, Some(vm), &id(), BOTH).unwrap()),
            [
                "shape egress of tap0_kata to 10000000 bit/s",
                "shape egress of eth0 to 20000000 bit/s"
            ]
        );
    }

    #[test]
    fn a_bare_tap_shapes_tx_through_its_own_ifb() {
        let (tap, pod) = (name("tap0_kata"), name("eth0"));
        let vm = VmLink::Tap {
            tap: &tap,
            pod: &pod,
            model: InterworkingModel::None,
        };
        assert_eq!(
            describe(&limiter_steps(EndpointKind::Tap, Some(vm), &id(), BOTH).unwrap()),
            [
                "shape egress of tap0_kata to 10000000 bit/s",
                "create ifb sbx4a1b2c3d4e5f",
                "add ingress qdisc to tap0_kata",
                "redirect tap0_kata -> sbx4a1b2c3d4e5f",
                "shape egress of sbx4a1b2c3d4e5f to 20000000 bit/s",
            ]
        );
    }

    #[test]
    fn a_macvtap_shapes_tx_on_its_egress_and_rx_through_its_ifb() {
        let macvtap = name("tap0_kata");
        let vm = VmLink::Macvtap { macvtap: &macvtap };
        assert_eq!(
            describe(&limiter_steps(EndpointKind::Veth, Some(vm), &id(), BOTH).unwrap()),
            [
                "shape egress of tap0_kata to 20000000 bit/s",
                "create ifb sbx4a1b2c3d4e5f",
                "add ingress qdisc to tap0_kata",
                "redirect tap0_kata -> sbx4a1b2c3d4e5f",
                "shape egress of sbx4a1b2c3d4e5f to 10000000 bit/s",
            ]
        );
    }

    #[test]
    fn zero_means_no_limit_and_kinds_without_host_path_refuse() {
        assert_eq!(
            limiter_steps(EndpointKind::Physical, None, &id(), RateLimits::default()).unwrap(),
            vec![]
        );
        assert_eq!(
            limiter_steps(EndpointKind::VhostUser, None, &id(), BOTH)
                .unwrap_err()
                .to_string(),
            "vhost_user endpoints cannot be rate-limited on the host (rx 10000000 bit/s, tx 20000000 bit/s requested)"
        );
    }

    #[test]
    fn the_vmm_limiter_wins_over_the_host() {
        let config = HypervisorConfig {
            rx_rate_limiter_max_rate: 5,
            tx_rate_limiter_max_rate: 6,
            ..HypervisorConfig::default()
        };
        let own = Capabilities {
            multi_queue: true,
            rate_limiter: true,
        };
        assert!(RateLimits::from_hypervisor(own, &config).is_none());
        let none = Capabilities {
            multi_queue: true,
            rate_limiter: false,
        };
        assert_eq!(
            RateLimits::from_hypervisor(none, &config),
            RateLimits {
                rx_bits: 5,
                tx_bits: 6
            }
        );
    }
}
