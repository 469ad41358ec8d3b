//! Deciding what each scanned interface becomes, in Kata's order.

use std::{net::IpAddr, path::PathBuf};

use sandbox_net_netns::Netns;
use sandbox_net_persist::{
    IfName,
    scan::{Interface, NetkitMode, TunTapMode},
};

use crate::{
    endpoint::EndpointVariant,
    physical::{PciAddress, ethtool_bus_info, pci_address_from_bus_info},
    vhost_user::find_vhost_user_socket,
};

/// Why an interface cannot become an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    /// A tun device in tun mode carries IP packets without Ethernet headers; a virtio-net
    /// device cannot use it.
    #[error(
        "link {link} is a tun device in tun mode (no Ethernet header); only tap mode can be attached"
    )]
    TunMode {
        /// The link.
        link: IfName,
    },
    /// An L3-mode netkit carries IP packets without an Ethernet header and has no MAC: a
    /// virtio-net device, which sends and expects Ethernet frames, cannot be wired to it.
    #[error(
        "link {link} is a netkit device in {mode} mode ({why}); only L2-mode netkit can be \
         attached: make the pair with `mode l2`"
    )]
    NetkitMode {
        /// The link.
        link: IfName,
        /// Its mode as `ip -d link` shows it (`l3`, or the kernel's number).
        mode: String,
        /// What stands in the way.
        why: &'static str,
    },
    /// A kind of link no endpoint handles.
    #[error("link {link} of kind {kind} cannot be attached to a VM")]
    Kind {
        /// The link.
        link: IfName,
        /// Its kind, as the kernel reports it.
        kind: String,
    },
}

/// Where classification looks for what the scan does not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassifyOptions {
    /// Refuse the whole scan when one interface is unsupported, instead of skipping it.
    pub strict: bool,
    /// The directory holding `vhostuser_<IP>/vhu.sock` sockets (Kata: `/tmp`).
    pub vhost_user_dir: PathBuf,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        Self {
            strict: false,
            vhost_user_dir: PathBuf::from(crate::vhost_user::DEFAULT_VHOST_USER_DIR),
        }
    }
}

/// What `iface` becomes, looked up in the namespace: ethtool's bus info of the interface
/// (asked inside the namespace; any failure means "not physical") and a vhost-user socket for
/// one of its addresses, then [`classify`].
pub async fn classify_in(
    netns: &Netns,
    iface: &Interface,
    options: &ClassifyOptions,
) -> Result<EndpointVariant, Unsupported> {
    let info = ethtool_bus_info(netns, &iface.link.name).await;
    classify_with(iface, info, options)
}

/// [`classify`] with the interface's ethtool answer and the vhost-user socket directory.
fn classify_with(
    iface: &Interface,
    info: Option<crate::physical::DriverInfo>,
    options: &ClassifyOptions,
) -> Result<EndpointVariant, Unsupported> {
    let addresses: Vec<IpAddr> = iface.addresses.iter().map(|a| a.prefix.addr()).collect();
    classify(
        iface,
        info.and_then(|i| pci_address_from_bus_info(&i.bus_info)),
        find_vhost_user_socket(&options.vhost_user_dir, &addresses),
    )
}

/// What `iface` becomes, in Kata's order: physical when it is a PCI function (`pci`, from
/// ethtool's bus info), vhost-user when a socket was found for one of its addresses
/// (`vhost_user_socket`), then by link kind (macvlan, macvtap, tap-mode tun, veth or a device
/// without kind, ipvlan), and L2-mode netkit, which Kata refuses.
pub fn classify(
    iface: &Interface,
    pci: Option<PciAddress>,
    vhost_user_socket: Option<PathBuf>,
) -> Result<EndpointVariant, Unsupported> {
    if let Some(pci) = pci {
        return Ok(EndpointVariant::Physical { pci });
    }
    if let Some(socket) = vhost_user_socket {
        return Ok(EndpointVariant::VhostUser { socket });
    }
    let link = &iface.link;
    match link.kind.as_deref() {
        Some("macvlan") => Ok(EndpointVariant::Macvlan),
        Some("macvtap") => Ok(EndpointVariant::Macvtap),
        Some("tun") => match link.tuntap.as_ref().map(|t| t.mode) {
            Some(TunTapMode::Tun) => Err(Unsupported::TunMode {
                link: link.name.clone(),
            }),
            _ => Ok(EndpointVariant::Tuntap),
        },
        // A device without a kind (a NIC that is not PCI, an SF) is driven like a veth.
        Some("veth") | None => Ok(EndpointVariant::Veth),
        Some("ipvlan") => Ok(EndpointVariant::Ipvlan),
        // An L2 netkit moves Ethernet frames like a veth; the mode decides (a netkit without
        // its mode in the scan is not trusted to be L2). An L3 netkit reports an all-zero
        // address (6.12), which is no MAC either.
        Some("netkit") => match link.netkit.as_ref().map(|n| n.mode) {
            Some(NetkitMode::L2) if link.mac.is_some_and(|m| m.octets() != [0; 6]) => {
                Ok(EndpointVariant::Netkit)
            }
            mode => {
                let (mode, why) = match mode {
                    Some(NetkitMode::L2) => ("l2".into(), "but it reports no MAC"),
                    Some(NetkitMode::L3) => ("l3".into(), "no Ethernet header, no MAC"),
                    Some(NetkitMode::Other(n)) => (n.to_string(), "a mode unknown here"),
                    None => ("unknown".into(), "the kernel did not report the mode"),
                };
                Err(Unsupported::NetkitMode {
                    link: link.name.clone(),
                    mode,
                    why,
                })
            }
        },
        Some(other) => Err(Unsupported::Kind {
            link: link.name.clone(),
            kind: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use sandbox_net_persist::{
        MacAddr,
        scan::{Link, NetkitInfo, TunTapInfo},
    };

    use super::*;

    /// Classified without a PCI address or vhost-user socket.
    fn plain(iface: &Interface) -> Result<EndpointVariant, Unsupported> {
        classify(iface, None, None)
    }

    fn iface(kind: Option<&str>) -> Interface {
        Interface {
            link: Link {
                name: IfName::new("eth0").unwrap(),
                index: 2,
                kind: kind.map(String::from),
                mtu: 1500,
                mac: Some("02:00:00:00:00:02".parse().unwrap()),
                up: true,
                lower_up: true,
                loopback: false,
                parent_index: None,
                parent_netnsid: None,
                txqueuelen: 1000,
                tuntap: None,
                netkit: None,
            },
            addresses: vec![],
            routes: vec![],
            neighbours: vec![],
            all_routes: vec![],
        }
    }

    fn tun(mode: TunTapMode) -> Interface {
        let mut i = iface(Some("tun"));
        i.link.tuntap = Some(TunTapInfo {
            mode,
            packet_info: false,
            vnet_hdr: true,
            multi_queue: false,
            persist: true,
            queues: None,
            owner: None,
            group: None,
        });
        i
    }

    #[test]
    fn each_link_kind_gets_its_endpoint_kind() {
        assert_eq!(plain(&iface(Some("veth"))), Ok(EndpointVariant::Veth));
        assert_eq!(plain(&iface(None)), Ok(EndpointVariant::Veth));
        assert_eq!(plain(&iface(Some("macvlan"))), Ok(EndpointVariant::Macvlan));
        assert_eq!(plain(&iface(Some("macvtap"))), Ok(EndpointVariant::Macvtap));
        assert_eq!(plain(&iface(Some("ipvlan"))), Ok(EndpointVariant::Ipvlan));
        assert_eq!(plain(&tun(TunTapMode::Tap)), Ok(EndpointVariant::Tuntap));
    }

    fn netkit(mode: Option<NetkitMode>, mac: bool) -> Interface {
        let mut i = iface(Some("netkit"));
        i.link.netkit = mode.map(|mode| NetkitInfo {
            mode,
            primary: false,
        });
        if !mac {
            i.link.mac = None;
        }
        i
    }

    #[test]
    fn an_l2_netkit_is_an_endpoint_and_an_l3_netkit_is_refused_with_the_reason() {
        assert_eq!(
            plain(&netkit(Some(NetkitMode::L2), true)),
            Ok(EndpointVariant::Netkit)
        );
        let refused = |i: Interface| plain(&i).unwrap_err().to_string();
        assert_eq!(
            refused(netkit(Some(NetkitMode::L3), false)),
            "link eth0 is a netkit device in l3 mode (no Ethernet header, no MAC); only \
             L2-mode netkit can be attached: make the pair with `mode l2`"
        );
        assert_eq!(
            refused(netkit(Some(NetkitMode::Other(9)), true)),
            "link eth0 is a netkit device in 9 mode (a mode unknown here); only L2-mode netkit \
             can be attached: make the pair with `mode l2`"
        );
        assert!(
            refused(netkit(None, true))
                .contains("in unknown mode (the kernel did not report the mode)")
        );
        assert!(refused(netkit(Some(NetkitMode::L2), false)).contains("but it reports no MAC"));
        let mut zero = netkit(Some(NetkitMode::L2), true);
        zero.link.mac = MacAddr::from_slice(&[0; 6]);
        assert!(refused(zero).contains("but it reports no MAC"));
        // Never asked for a PCI bus: netkit is software.
        assert!(!may_be_pci(&netkit(Some(NetkitMode::L2), true).link));
    }

    #[test]
    fn physical_and_vhost_user_come_first() {
        let pci: PciAddress = "0000:00:03.0".parse().unwrap();
        assert_eq!(
            classify(
                &iface(Some("veth")),
                Some(pci.clone()),
                Some("/tmp/x".into())
            ),
            Ok(EndpointVariant::Physical { pci })
        );
        let socket = PathBuf::from("/tmp/vhostuser_10.0.0.2/vhu.sock");
        assert_eq!(
            classify(&iface(Some("veth")), None, Some(socket.clone())),
            Ok(EndpointVariant::VhostUser { socket })
        );
    }

    #[test]
    fn only_links_without_a_software_kind_are_asked_for_a_pci_bus() {
        for kind in SOFTWARE_KINDS {
            assert!(!may_be_pci(&iface(Some(kind)).link), "{kind}");
        }
        // A NIC driver registers no kind; a kind we do not know may be anything.
        assert!(may_be_pci(&iface(None).link));
        assert!(may_be_pci(&iface(Some("ipoib")).link));
    }

    #[test]
    fn tun_mode_and_unknown_kinds_are_refused_with_the_reason() {
        assert_eq!(
            plain(&tun(TunTapMode::Tun)).unwrap_err().to_string(),
            "link eth0 is a tun device in tun mode (no Ethernet header); only tap mode can be attached"
        );
        assert_eq!(
            plain(&iface(Some("bridge"))).unwrap_err().to_string(),
            "link eth0 of kind bridge cannot be attached to a VM"
        );
    }
}

/// Link kinds of software devices, whose drivers report no bus to ethtool: asking is a thread
/// in the namespace and an ioctl for an answer known in advance.
const SOFTWARE_KINDS: [&str; 6] = ["veth", "macvlan", "macvtap", "tun", "ipvlan", "netkit"];

/// Whether ethtool may report a PCI bus for `link`: a device without a kind (a NIC driver
/// registers none) or of a kind other than the software ones we know.
fn may_be_pci(link: &sandbox_net_persist::scan::Link) -> bool {
    link.kind
        .as_deref()
        .is_none_or(|kind| !SOFTWARE_KINDS.contains(&kind))
}

/// An interface of the scan that did not become an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedInterface {
    /// The link.
    pub link: IfName,
    /// Why.
    pub reason: Unsupported,
}

/// Classifies every interface of a scan into endpoints, numbered from `first_index`.
/// Unsupported interfaces are skipped with a warning, or refused in strict mode (the error of
/// the first one).
pub async fn endpoints_from_scan(
    netns: &Netns,
    interfaces: &[Interface],
    first_index: u32,
    options: &ClassifyOptions,
) -> Result<(Vec<crate::Endpoint>, Vec<SkippedInterface>), Unsupported> {
    let mut endpoints = Vec::new();
    let mut skipped = Vec::new();
    // One thread in the namespace for the ethtool queries, and none when no interface can be a
    // PCI function.
    let queried: Vec<&Interface> = interfaces.iter().filter(|i| may_be_pci(&i.link)).collect();
    let mut infos = if queried.is_empty() {
        Vec::new()
    } else {
        let names = queried.iter().map(|i| i.link.name.clone()).collect();
        crate::physical::ethtool_bus_infos(netns, names).await
    }
    .into_iter();
    for iface in interfaces {
        let info = if may_be_pci(&iface.link) {
            infos.next().flatten()
        } else {
            None
        };
        match classify_with(iface, info, options) {
            Ok(variant) => {
                let index = first_index + endpoints.len() as u32;
                endpoints.push(crate::Endpoint::new(index, variant, iface.clone()));
            }
            Err(reason) if options.strict => return Err(reason),
            Err(reason) => {
                tracing::warn!(link = %iface.link.name, %reason, "interface skipped");
                skipped.push(SkippedInterface {
                    link: iface.link.name.clone(),
                    reason,
                });
            }
        }
    }
    Ok((endpoints, skipped))
}
