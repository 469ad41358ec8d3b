//! A network device as a VMM is told about it.

use std::{
    fmt,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
    path::PathBuf,
};

use sandbox_net_endpoints::{
    Backend, EndpointId, EndpointKind, NetDevice,
    physical::{PciAddress, SysfsPci},
};
use sandbox_net_interworking::Step;
use sandbox_net_persist::{IfName, MacAddr, state::EndpointRecord};

use super::VmmError;

/// How a VMM knows a descriptor: by its number (inherited across `exec` at that number) or by
/// the name it was given with QMP's `getfd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdRef {
    /// The descriptor's number in the VMM.
    Number(RawFd),
    /// The name QMP `getfd` registered it under.
    Name(String),
}

impl fmt::Display for FdRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// A device's queues: descriptors handed over, or a count for a VMM that opens the device by
/// name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queues {
    /// One descriptor per queue pair.
    Fds(Vec<FdRef>),
    /// The VMM opens this many queues itself, by the device's name.
    ByName(usize),
}

impl Queues {
    /// The number of queue pairs.
    pub fn pairs(&self) -> usize {
        match self {
            Self::Fds(fds) => fds.len(),
            Self::ByName(n) => *n,
        }
    }
}

/// vhost-net for a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vhost {
    /// Not used: the VMM moves the frames itself.
    Off,
    /// One vhost-net descriptor per queue pair, handed over.
    Fds(Vec<FdRef>),
    /// The VMM opens `/dev/vhost-net` itself (a VMM that opens its devices by name).
    ByVmm,
}

/// How frames reach the guest's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmBackend {
    /// A tap.
    Tap {
        /// The tap's name, in the sandbox's namespace.
        name: IfName,
        /// Its queues.
        queues: Queues,
        /// vhost-net.
        vhost: Vhost,
    },
    /// A macvtap: its queues are descriptors of its character device, which VMMs take like a
    /// tap's.
    Macvtap {
        /// The macvtap's name, in the sandbox's namespace.
        name: IfName,
        /// Its queues.
        queues: Queues,
        /// vhost-net.
        vhost: Vhost,
    },
    /// A vhost-user socket served by a backend (OVS-DPDK, VPP).
    VhostUser {
        /// The socket.
        socket: PathBuf,
        /// Queue pairs.
        queues: usize,
    },
    /// A PCI function bound to vfio-pci.
    Vfio {
        /// The function.
        bdf: PciAddress,
        /// Its VFIO group device (`/dev/vfio/<group>`).
        group: PathBuf,
    },
}

/// One network device as a VMM is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmDevice {
    /// The endpoint; the VMM's ids for the device are derived from it.
    pub endpoint: EndpointId,
    /// The interface name inside the guest.
    pub guest_name: IfName,
    /// The guest's MAC.
    pub mac: MacAddr,
    /// The guest's MTU.
    pub mtu: u32,
    /// How frames reach it.
    pub backend: VmmBackend,
}

/// The descriptors of `device` that go to the VMM, queues first, then vhost-net.
pub fn handed_fds(device: &NetDevice) -> Vec<BorrowedFd<'_>> {
    match &device.backend {
        Backend::Tap { queues, vhost, .. } | Backend::Macvtap { queues, vhost, .. } => {
            queues.iter().chain(vhost.iter()).map(AsFd::as_fd).collect()
        }
        Backend::VhostUser { .. } | Backend::Vfio { .. } => Vec::new(),
    }
}

impl VmmDevice {
    /// `device` as handed over with its descriptors, named by their numbers in this process
    /// (which a VMM started with them inherits unchanged). A vhost-user device gets
    /// `vhost_user_queues` pairs.
    pub fn from_device(device: &NetDevice, vhost_user_queues: usize) -> Self {
        Self::describe(device, vhost_user_queues, |_, _, fd| {
            FdRef::Number(fd.as_raw_fd())
        })
    }

    /// `device` as handed over through QMP: each descriptor named as [`fd_name`] names it,
    /// the names it is sent under with `getfd`.
    pub fn from_device_named(device: &NetDevice, vhost_user_queues: usize) -> Self {
        let endpoint = device.endpoint.clone();
        Self::describe(device, vhost_user_queues, move |vhost, i, _| {
            FdRef::Name(fd_name(&endpoint, vhost, i))
        })
    }

    fn describe(
        device: &NetDevice,
        vhost_user_queues: usize,
        name: impl Fn(bool, usize, &OwnedFd) -> FdRef,
    ) -> Self {
        let fds = |fds: &[OwnedFd], vhost: bool| -> Vec<FdRef> {
            fds.iter()
                .enumerate()
                .map(|(i, fd)| name(vhost, i, fd))
                .collect()
        };
        let vhost_of = |v: &[OwnedFd]| {
            if v.is_empty() {
                Vhost::Off
            } else {
                Vhost::Fds(fds(v, true))
            }
        };
        let backend = match &device.backend {
            Backend::Tap {
                name,
                queues,
                vhost,
            } => VmmBackend::Tap {
                name: name.clone(),
                queues: Queues::Fds(fds(queues, false)),
                vhost: vhost_of(vhost),
            },
            Backend::Macvtap {
                name,
                queues,
                vhost,
            } => VmmBackend::Macvtap {
                name: name.clone(),
                queues: Queues::Fds(fds(queues, false)),
                vhost: vhost_of(vhost),
            },
            Backend::VhostUser { socket } => VmmBackend::VhostUser {
                socket: socket.clone(),
                queues: vhost_user_queues.max(1),
            },
            Backend::Vfio { bdf, device } => VmmBackend::Vfio {
                bdf: bdf.clone(),
                group: device.clone(),
            },
        };
        Self {
            endpoint: device.endpoint.clone(),
            guest_name: device.guest_name.clone(),
            mac: device.mac,
            mtu: device.mtu,
            backend,
        }
    }

    /// The device of an attached endpoint for a VMM that opens it by name, from its record:
    /// the tap or macvtap the attach made (or the pod's own macvtap), with the recorded queue
    /// count; the vhost-user socket; the VFIO group of the PCI function (looked up in
    /// `sysfs`). `vhost`: whether the VMM is to use vhost-net.
    pub fn from_record(
        record: &EndpointRecord,
        vhost: bool,
        sysfs: &SysfsPci,
    ) -> Result<Self, VmmError> {
        let missing = |what| VmmError::Record {
            endpoint: record.id.clone(),
            what,
        };
        let queues = (record.queues as usize).max(1);
        let vhost = if vhost { Vhost::ByVmm } else { Vhost::Off };
        let created = record.steps.iter().find_map(|s| match s {
            Step::CreateTap { name, .. } => Some((name.clone(), false)),
            Step::CreateMacvtap { name, .. } => Some((name.clone(), true)),
            _ => None,
        });
        let backend = match (created, record.kind) {
            (Some((name, false)), _) => VmmBackend::Tap {
                name,
                queues: Queues::ByName(queues),
                vhost,
            },
            (Some((name, true)), _) => VmmBackend::Macvtap {
                name,
                queues: Queues::ByName(queues),
                vhost,
            },
            (None, EndpointKind::Macvtap) => VmmBackend::Macvtap {
                name: record.interface.link.name.clone(),
                queues: Queues::ByName(queues),
                vhost,
            },
            (None, EndpointKind::VhostUser) => VmmBackend::VhostUser {
                socket: record
                    .vhost_user_socket
                    .clone()
                    .ok_or_else(|| missing("vhost-user socket"))?,
                queues,
            },
            (None, EndpointKind::Physical) => {
                let bdf: PciAddress = record
                    .pci
                    .as_deref()
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| missing("valid PCI address"))?;
                let group = sysfs
                    .vfio_device_path(&bdf)
                    .map_err(|_| missing("VFIO group in sysfs for its PCI function"))?;
                VmmBackend::Vfio { bdf, group }
            }
            (None, _) => return Err(missing("VM-side device (is it attached?)")),
        };
        Ok(Self {
            endpoint: record.id.clone(),
            guest_name: record.interface.link.name.clone(),
            mac: record
                .guest_mac
                .or(record.interface.link.mac)
                .ok_or_else(|| missing("guest MAC"))?,
            mtu: record.interface.link.mtu,
            backend,
        })
    }

    /// Queue pairs (1 for a VFIO function: the NIC's own).
    pub fn queue_pairs(&self) -> usize {
        match &self.backend {
            VmmBackend::Tap { queues, .. } | VmmBackend::Macvtap { queues, .. } => queues.pairs(),
            VmmBackend::VhostUser { queues, .. } => *queues,
            VmmBackend::Vfio { .. } => 1,
        }
    }
}

/// The name a descriptor of `endpoint` is sent under with QMP `getfd`: `sbx-<id>-q<i>` for
/// queue `i`, `sbx-<id>-v<i>` for its vhost-net descriptor.
pub fn fd_name(endpoint: &EndpointId, vhost: bool, index: usize) -> String {
    format!("sbx-{endpoint}-{}{index}", if vhost { 'v' } else { 'q' })
}

#[cfg(test)]
mod tests {
    use sandbox_net_persist::{
        scan::{Interface, Link},
        steps::InterworkingModel,
    };

    use super::*;

    fn record(kind: EndpointKind, steps: Vec<Step>) -> EndpointRecord {
        EndpointRecord {
            id: EndpointId::from_bytes([7; 8]),
            index: 3,
            kind,
            model: Some(InterworkingModel::TcFilter),
            interface: Interface {
                link: Link {
                    name: IfName::new("eth0").unwrap(),
                    index: 2,
                    kind: Some("veth".into()),
                    mtu: 1400,
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
                addresses: vec![],
                routes: vec![],
                neighbours: vec![],
                all_routes: vec![],
            },
            guest_mac: Some("02:00:0a:c8:00:02".parse().unwrap()),
            queues: 2,
            rx_rate_bits: 0,
            tx_rate_bits: 0,
            pci: None,
            vhost_user_socket: None,
            steps,
            attached: true,
        }
    }

    #[test]
    fn a_recorded_tap_or_macvtap_is_opened_by_name_with_its_queues() {
        let tap = record(
            EndpointKind::Veth,
            vec![Step::CreateTap {
                name: IfName::new("tap3_kata").unwrap(),
                queues: 2,
                vnet_hdr: true,
                owner: None,
                group: None,
                persist: true,
            }],
        );
        let device = VmmDevice::from_record(&tap, true, &SysfsPci::host()).unwrap();
        assert_eq!(
            device.backend,
            VmmBackend::Tap {
                name: IfName::new("tap3_kata").unwrap(),
                queues: Queues::ByName(2),
                vhost: Vhost::ByVmm,
            }
        );
        assert_eq!((device.mtu, device.guest_name.as_str()), (1400, "eth0"));
        let macvtap = record(
            EndpointKind::Veth,
            vec![Step::CreateMacvtap {
                name: IfName::new("tap3_kata").unwrap(),
                parent: IfName::new("eth0").unwrap(),
                mac: "02:00:0a:c8:00:02".parse().unwrap(),
            }],
        );
        assert!(matches!(
            VmmDevice::from_record(&macvtap, false, &SysfsPci::host())
                .unwrap()
                .backend,
            VmmBackend::Macvtap {
                queues: Queues::ByName(2),
                vhost: Vhost::Off,
                ..
            }
        ));
    }

    #[test]
    fn a_record_without_a_device_is_refused_by_name() {
        let err = VmmDevice::from_record(
            &record(EndpointKind::Veth, vec![]),
            false,
            &SysfsPci::host(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "endpoint 0707070707070707: the record has no VM-side device (is it attached?)"
        );
        let stand_in = tempfile::tempdir().unwrap();
        let mut physical = record(EndpointKind::Physical, vec![]);
        physical.pci = Some("0000:03:00.1".into());
        let err =
            VmmDevice::from_record(&physical, false, &SysfsPci::new(stand_in.path())).unwrap_err();
        assert!(err.to_string().contains("no VFIO group"), "{err}");
    }
}
