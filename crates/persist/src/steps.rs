//! Changes to the kernel described as data, before they are made.
//!
//! Every change sandbox-net makes to a namespace, or to a PCI function in sysfs, is first
//! written down as a [`Step`] carrying the values it will overwrite. The list is persisted
//! before it is applied; undoing it in reverse order is how a failed attach rolls back, how
//! detach works, and how a restarted shim cleans up after a crash. Links are named, not numbered: an ifindex is only known once
//! a device exists, and names are what the pod's configuration and the VMM use.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::{
    IfName, MacAddr,
    pci::PciAddress,
    scan::{Address, Neighbour, Route},
};

/// One change to the kernel, with what it overwrites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Step {
    /// Create a tap device (`ip tuntap add NAME mode tap [multi_queue] [vnet_hdr] [user U]
    /// [group G]`); undone by deleting it.
    CreateTap {
        /// The tap's name (`tap{idx}_kata`).
        name: IfName,
        /// Number of queues.
        queues: u32,
        /// `IFF_VNET_HDR`.
        vnet_hdr: bool,
        /// `TUNSETOWNER`.
        owner: Option<u32>,
        /// `TUNSETGROUP`.
        group: Option<u32>,
        /// `TUNSETPERSIST`: the device outlives its queue descriptors.
        persist: bool,
    },
    /// Create a macvtap in bridge mode on `parent`, with the parent's MTU and txqueuelen and
    /// the MAC `mac`; undone by deleting it.
    CreateMacvtap {
        /// The macvtap's name.
        name: IfName,
        /// The link it sits on.
        parent: IfName,
        /// Its MAC (the guest's).
        mac: MacAddr,
    },
    /// Set the MTU of `link`; undone by setting `original` back.
    SetMtu {
        /// The link.
        link: IfName,
        /// The new MTU.
        mtu: u32,
        /// The MTU before.
        original: u32,
    },
    /// Set the MAC of `link`; undone by setting `original` back.
    SetMac {
        /// The link.
        link: IfName,
        /// The new MAC.
        mac: MacAddr,
        /// The MAC before.
        original: MacAddr,
    },
    /// Set `link` administratively up; undone by setting it down if it was down.
    SetUp {
        /// The link.
        link: IfName,
        /// Whether it was up before.
        original_up: bool,
    },
    /// Make `link` receive all multicast (a macvtap, so that the guest sees IPv6 neighbour
    /// solicitations); undone by turning it off.
    SetAllmulticast {
        /// The link.
        link: IfName,
    },
    /// Keep the queue length of `link` at `original` (0) across the qdiscs added after this
    /// step: the kernel raises a link's length from 0 to 1000 when a qdisc (ingress, HTB) is
    /// added, and does not lower it when the qdisc goes (the veths of the CNI ptp and bridge
    /// plugins are made with length 0). Nothing to apply; undone, after those qdiscs, by
    /// setting the length back (`ip link set DEV txqueuelen 0`).
    RestoreTxQueueLen {
        /// The link.
        link: IfName,
        /// Its queue length before.
        original: u32,
    },
    /// Add an ingress qdisc to `link`; undone by deleting it (and the filters under it).
    /// Planned only for a link that has no ingress qdisc: one it has is used instead
    /// ([`Step::UseIngressQdisc`]).
    AddIngressQdisc {
        /// The link.
        link: IfName,
    },
    /// Use the ingress qdisc (`ingress` or `clsact`) that `link` already had when the plan
    /// was made: someone else's, so nothing to apply (the redirect that follows needs it and
    /// fails if it has gone) and nothing to undo: it stays, with its filters, as it was.
    UseIngressQdisc {
        /// The link.
        link: IfName,
        /// The qdisc's kind, as found.
        kind: String,
    },
    /// Redirect every frame arriving at `from` to the egress of `to` (u32 match-all, mirred
    /// egress redirect, stolen, the action marked with sandbox-net's cookie), at `priority`
    /// of `from`'s ingress: one no filter of anyone else held when the plan was made. Undone
    /// by deleting the filter at that priority, and only that one.
    AddRedirect {
        /// Where frames arrive.
        from: IfName,
        /// Where they are sent.
        to: IfName,
        /// The filter's priority. Documents of earlier versions have none: their redirects
        /// were at Kata's 49152 and under an ingress qdisc of their own.
        #[serde(default = "kata_redirect_priority")]
        priority: u16,
    },
    /// Create an IFB device and set it up (`ip link add NAME type ifb`); undone by deleting it
    /// (its qdiscs go with it).
    CreateIfb {
        /// The IFB's name, derived from the endpoint's id.
        name: IfName,
    },
    /// Shape the egress of `link` with an HTB tree: root `1:` (default class 2), class `1:1`
    /// and class `1:2`, rate = ceil = `rate_bits`; undone by deleting the root qdisc.
    AddHtb {
        /// The link.
        link: IfName,
        /// The largest rate, bits/s, as configured.
        rate_bits: u64,
    },
    /// Remove every address of `link`. The kernel drops with them the routes through the link
    /// (with the last IPv4 address, every IPv4 route through it, in every table) and may
    /// flush its neighbours, so the step records those too; undone by adding back the
    /// addresses, deleting the routes the kernel then makes that the link did not have (a
    /// prefix route a CNI plugin had replaced), adding back the missing routes, then the
    /// neighbours.
    ClearAddresses {
        /// The link.
        link: IfName,
        /// Its addresses before.
        addresses: Vec<Address>,
        /// Its routes before: with `all_routes`, every route through it in every table;
        /// otherwise (documents of earlier versions) the main table's, without the kernel's.
        routes: Vec<Route>,
        /// Its permanent neighbours before.
        neighbours: Vec<Neighbour>,
        /// Whether `routes` holds every route through the link, the kernel's included, so
        /// that undoing may delete kernel routes it does not list.
        #[serde(default)]
        all_routes: bool,
    },
    /// Hand the PCI function `bdf` (a physical endpoint's NIC) to vfio-pci through sysfs:
    /// `vfio-pci` written to its `driver_override`, the function unbound from its driver, its
    /// address written to `drivers_probe`. Its network interface leaves the pod's namespace
    /// with the driver. Not a netlink change: the endpoint applies and undoes it (interworking
    /// skips it). Undone by writing `original_override` back (clearing it when `None`),
    /// unbinding the function from vfio-pci and binding `original_driver`, then making the
    /// interface the driver registers in the host's namespace the pod's again.
    BindVfio {
        /// The function.
        bdf: PciAddress,
        /// The driver it was bound to before (`None`: no driver).
        original_driver: Option<String>,
        /// Its `driver_override` before (`None`: not set).
        original_override: Option<String>,
    },
}

impl Step {
    /// The link the step creates or acts on (for a redirect, the one frames arrive at); `None`
    /// for a step on a PCI function ([`Step::BindVfio`]).
    pub fn link(&self) -> Option<&IfName> {
        match self {
            Self::CreateTap { name, .. }
            | Self::CreateMacvtap { name, .. }
            | Self::CreateIfb { name } => Some(name),
            Self::SetMtu { link, .. }
            | Self::SetMac { link, .. }
            | Self::SetUp { link, .. }
            | Self::SetAllmulticast { link }
            | Self::AddIngressQdisc { link }
            | Self::UseIngressQdisc { link, .. }
            | Self::RestoreTxQueueLen { link, .. }
            | Self::AddHtb { link, .. }
            | Self::ClearAddresses { link, .. } => Some(link),
            Self::AddRedirect { from, .. } => Some(from),
            Self::BindVfio { .. } => None,
        }
    }

    /// Whether the step is made through sysfs ([`Step::BindVfio`]) rather than netlink in the
    /// pod's namespace: such a step outlives the namespace, and only the endpoint undoes it.
    pub fn is_sysfs(&self) -> bool {
        matches!(self, Self::BindVfio { .. })
    }

    /// A short human description, as `ip`/`tc` would phrase the change.
    pub fn describe(&self) -> String {
        match self {
            Self::CreateTap { name, queues, .. } => format!("create tap {name} ({queues} queues)"),
            Self::CreateMacvtap { name, parent, .. } => {
                format!("create macvtap {name} on {parent}")
            }
            Self::SetMtu {
                link,
                mtu,
                original,
            } => format!("set MTU of {link} {original} -> {mtu}"),
            Self::SetMac {
                link,
                mac,
                original,
            } => format!("set MAC of {link} {original} -> {mac}"),
            Self::SetUp { link, .. } => format!("set {link} up"),
            Self::SetAllmulticast { link } => format!("set {link} allmulticast on"),
            Self::AddIngressQdisc { link } => format!("add ingress qdisc to {link}"),
            Self::UseIngressQdisc { link, kind } => {
                format!("use the {kind} qdisc {link} already has")
            }
            Self::RestoreTxQueueLen { link, original } => {
                format!("keep the queue length of {link} at {original}")
            }
            Self::AddRedirect {
                from,
                to,
                priority: KATA_REDIRECT_PRIORITY,
            } => format!("redirect {from} -> {to}"),
            Self::AddRedirect { from, to, priority } => {
                format!("redirect {from} -> {to} at priority {priority}")
            }
            Self::CreateIfb { name } => format!("create ifb {name}"),
            Self::AddHtb { link, rate_bits } => {
                format!("shape egress of {link} to {rate_bits} bit/s")
            }
            Self::ClearAddresses {
                link, addresses, ..
            } => {
                format!("remove {} addresses from {link}", addresses.len())
            }
            Self::BindVfio { bdf, .. } => format!("bind PCI device {bdf} to vfio-pci"),
        }
    }
}

/// The priority of Kata's redirect filters (49152), the one sandbox-net uses when the
/// link's ingress holds no other filter.
pub const KATA_REDIRECT_PRIORITY: u16 = 0xC000;

fn kata_redirect_priority() -> u16 {
    KATA_REDIRECT_PRIORITY
}

/// How a pod-side link is wired to the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterworkingModel {
    /// A tap plus ingress qdiscs and mirred redirects in both directions.
    #[serde(rename = "tcfilter")]
    TcFilter,
    /// A macvtap on the pod link, which hands its MAC and addresses to the guest.
    Macvtap,
    /// A tap that is not connected to anything.
    None,
}

/// A model name that is not one of ours: a configuration error, never a silent fallback.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown interworking model {0:?}: expected tcfilter, macvtap or none")]
pub struct UnknownModel(pub String);

impl FromStr for InterworkingModel {
    type Err = UnknownModel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcfilter" => Ok(Self::TcFilter),
            "macvtap" => Ok(Self::Macvtap),
            "none" => Ok(Self::None),
            other => Err(UnknownModel(other.to_string())),
        }
    }
}

impl fmt::Display for InterworkingModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TcFilter => "tcfilter",
            Self::Macvtap => "macvtap",
            Self::None => "none",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_round_trip_and_unknown_is_an_error() {
        for model in [
            InterworkingModel::TcFilter,
            InterworkingModel::Macvtap,
            InterworkingModel::None,
        ] {
            assert_eq!(model.to_string().parse::<InterworkingModel>(), Ok(model));
            let json = serde_json::to_string(&model).unwrap();
            assert_eq!(json, format!("\"{model}\""));
        }
        let err = "l3forwarding".parse::<InterworkingModel>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown interworking model \"l3forwarding\": expected tcfilter, macvtap or none"
        );
    }

    #[test]
    fn steps_serialize_tagged_and_round_trip() {
        let step = Step::SetMac {
            link: IfName::new("eth0").unwrap(),
            mac: "02:00:00:00:00:01".parse().unwrap(),
            original: "02:00:0a:c8:00:02".parse().unwrap(),
        };
        let json = serde_json::to_value(&step).unwrap();
        assert_eq!(json["op"], "set_mac");
        assert_eq!(json["original"], "02:00:0a:c8:00:02");
        assert_eq!(serde_json::from_value::<Step>(json).unwrap(), step);
        assert_eq!(
            step.describe(),
            "set MAC of eth0 02:00:0a:c8:00:02 -> 02:00:00:00:00:01"
        );
    }

    #[test]
    fn redirects_of_earlier_documents_load_at_katas_priority() {
        // What versions before the ownership rules wrote: no priority.
        let old = serde_json::json!({"op": "add_redirect", "from": "eth0", "to": "tap0_kata"});
        let step: Step = serde_json::from_value(old).unwrap();
        assert_eq!(
            step,
            Step::AddRedirect {
                from: IfName::new("eth0").unwrap(),
                to: IfName::new("tap0_kata").unwrap(),
                priority: 49152,
            }
        );
        assert_eq!(step.describe(), "redirect eth0 -> tap0_kata");
        let shared = Step::UseIngressQdisc {
            link: IfName::new("eth0").unwrap(),
            kind: "clsact".into(),
        };
        let json = serde_json::to_value(&shared).unwrap();
        assert_eq!(json["op"], "use_ingress_qdisc");
        assert_eq!(serde_json::from_value::<Step>(json).unwrap(), shared);
        assert_eq!(shared.describe(), "use the clsact qdisc eth0 already has");
        let at = Step::AddRedirect {
            from: IfName::new("eth0").unwrap(),
            to: IfName::new("tap0_kata").unwrap(),
            priority: 9,
        };
        assert_eq!(at.describe(), "redirect eth0 -> tap0_kata at priority 9");
    }

    #[test]
    fn a_vfio_binding_is_a_sysfs_step_without_a_link() {
        let step = Step::BindVfio {
            bdf: "0000:00:03.0".parse().unwrap(),
            original_driver: Some("e1000e".into()),
            original_override: None,
        };
        let json = serde_json::to_value(&step).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"op": "bind_vfio", "bdf": "0000:00:03.0", "original_driver": "e1000e", "original_override": null})
        );
        assert_eq!(serde_json::from_value::<Step>(json).unwrap(), step);
        assert_eq!(step.describe(), "bind PCI device 0000:00:03.0 to vfio-pci");
        assert_eq!((step.link(), step.is_sysfs()), (None, true));
        let bad = serde_json::json!({"op": "bind_vfio", "bdf": "../../etc", "original_driver": null, "original_override": null});
        let err = serde_json::from_value::<Step>(bad).unwrap_err().to_string();
        assert!(err.contains("invalid PCI address \"../../etc\""), "{err}");
        let tap = Step::SetUp {
            link: IfName::new("tap0_kata").unwrap(),
            original_up: false,
        };
        assert_eq!(
            (tap.link().map(IfName::as_str), tap.is_sysfs()),
            (Some("tap0_kata"), false)
        );
    }
}
