//! The boundary with the VMM: what it can do, how it is configured, and the devices it gets.

use std::{future::Future, os::fd::OwnedFd, path::PathBuf};

use sandbox_net_persist::{IfName, MacAddr, endpoint::EndpointId};

use crate::physical::PciAddress;

/// What the VMM can do by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// It drives more than one queue pair per network device (QEMU, Cloud Hypervisor).
    pub multi_queue: bool,
    /// It rate-limits network devices itself (Cloud Hypervisor, Firecracker); when false,
    /// limits are applied on the host side with HTB.
    pub rate_limiter: bool,
}

/// The VMM configuration that matters for networking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HypervisorConfig {
    /// Queue pairs per device (usually the vCPU count); used only with multi-queue.
    pub queues: usize,
    /// Do not open vhost-net descriptors (the VMM moves frames itself).
    pub disable_vhost_net: bool,
    /// The vhost-net device to open when vhost is enabled (`/dev/vhost-net`).
    pub vhost_net_path: PathBuf,
    /// Largest rate into the VM, bits/s; 0 for none.
    pub rx_rate_limiter_max_rate: u64,
    /// Largest rate out of the VM, bits/s; 0 for none.
    pub tx_rate_limiter_max_rate: u64,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        Self {
            queues: 1,
            disable_vhost_net: false,
            vhost_net_path: PathBuf::from(sandbox_net_netns::VHOST_NET_PATH),
            rx_rate_limiter_max_rate: 0,
            tx_rate_limiter_max_rate: 0,
        }
    }
}

/// How frames reach the guest's device.
#[derive(Debug)]
pub enum Backend {
    /// A tap: one descriptor per queue, and as many vhost-net descriptors when vhost is on.
    Tap {
        /// The tap's name (a VMM may reopen it by name when the tap is persistent).
        name: IfName,
        /// Queue descriptors.
        queues: Vec<OwnedFd>,
        /// vhost-net descriptors, one per queue, or none.
        vhost: Vec<OwnedFd>,
    },
    /// A macvtap: one descriptor per queue, and vhost-net descriptors when vhost is on.
    Macvtap {
        /// The macvtap's name.
        name: IfName,
        /// Queue descriptors.
        queues: Vec<OwnedFd>,
        /// vhost-net descriptors, one per queue, or none.
        vhost: Vec<OwnedFd>,
    },
    /// A vhost-user socket served by a backend such as OVS-DPDK.
    VhostUser {
        /// The socket.
        socket: PathBuf,
    },
    /// A PCI function bound to vfio-pci.
    Vfio {
        /// The function.
        bdf: PciAddress,
        /// Its VFIO group device (`/dev/vfio/<group>`).
        device: PathBuf,
    },
}

/// A network device for the VM. Descriptors are owned: handing the device over moves them.
#[derive(Debug)]
pub struct NetDevice {
    /// The endpoint it belongs to.
    pub endpoint: EndpointId,
    /// The interface name inside the guest.
    pub guest_name: IfName,
    /// The guest's MAC.
    pub mac: MacAddr,
    /// The MTU to give the guest.
    pub mtu: u32,
    /// How frames reach it.
    pub backend: Backend,
}

/// The VMM refused or failed an operation on a device.
#[derive(Debug, thiserror::Error)]
#[error("the hypervisor could not {op} the device of endpoint {endpoint}: {reason}")]
pub struct HypervisorError {
    /// What was asked (`"add"`, `"hot-add"`, `"hot-remove"`).
    pub op: &'static str,
    /// The endpoint.
    pub endpoint: EndpointId,
    /// The VMM's explanation.
    pub reason: String,
}

/// How a device reaches the VM, and leaves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Plug {
    /// The VM is not running yet: the device is part of its configuration
    /// ([`Hypervisor::add_device`]); nothing is asked of the VMM on detach.
    Cold,
    /// The VM is running: the device is hot-plugged ([`Hypervisor::hot_add_device`]), and
    /// hot-unplugged on detach ([`Hypervisor::hot_remove_device`]).
    Hot,
}

/// The VMM as endpoints see it.
pub trait Hypervisor: Sync {
    /// What it can do.
    fn capabilities(&self) -> Capabilities;
    /// How it is configured.
    fn config(&self) -> HypervisorConfig;
    /// Adds a device to a VM that is not running yet.
    fn add_device(
        &self,
        device: NetDevice,
    ) -> impl Future<Output = Result<(), HypervisorError>> + Send;
    /// Adds a device to a running VM.
    fn hot_add_device(
        &self,
        device: NetDevice,
    ) -> impl Future<Output = Result<(), HypervisorError>> + Send;
    /// Removes the endpoint's device from a running VM.
    fn hot_remove_device(
        &self,
        endpoint: &EndpointId,
    ) -> impl Future<Output = Result<(), HypervisorError>> + Send;
}
