//! A [`Hypervisor`] for a VMM that opens its taps by name, as the CLI's `attach` serves.
//!
//! The CLI cannot hand descriptors to a VMM that is not running yet, so it makes persistent
//! taps (they outlive their descriptors), closes the descriptors and prints what the VMM needs
//! to open them: device name, guest MAC, MTU and queue count.

use std::sync::Mutex;

use sandbox_net_endpoints::{
    Backend, Capabilities, EndpointId, Hypervisor, HypervisorConfig, HypervisorError, NetDevice,
};
use serde::Serialize;

/// What a VMM needs to open one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    /// The endpoint.
    pub endpoint: String,
    /// The guest's interface name (the pod's).
    pub guest_name: String,
    /// `tap`, `macvtap`, `vhost-user` or `vfio`.
    pub backend: &'static str,
    /// The tap or macvtap name, the vhost-user socket, or the VFIO group device.
    pub device: String,
    /// The guest's MAC.
    pub mac: String,
    /// The MTU.
    pub mtu: u32,
    /// Queue pairs.
    pub queues: usize,
}

/// Takes devices for a VMM that opens them by name later; records what it needs.
#[derive(Debug, Default)]
pub struct HandOver {
    /// Queue pairs per device.
    pub queues: usize,
    /// Host-side rate into the VM, bits/s (0: none).
    pub rx_rate: u64,
    /// Host-side rate out of the VM, bits/s (0: none).
    pub tx_rate: u64,
    devices: Mutex<Vec<DeviceInfo>>,
}

impl HandOver {
    /// A hand-over for devices of `queues` queue pairs, with host-side limits.
    pub fn new(queues: usize, rx_rate: u64, tx_rate: u64) -> Self {
        Self {
            queues,
            rx_rate,
            tx_rate,
            devices: Mutex::new(Vec::new()),
        }
    }

    /// The devices taken so far.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.devices.lock().map(|d| d.clone()).unwrap_or_default()
    }

    fn take(&self, device: NetDevice) -> Result<(), HypervisorError> {
        let (backend, name, queues) = match &device.backend {
            Backend::Tap { name, queues, .. } => ("tap", name.to_string(), queues.len()),
            Backend::Macvtap { name, queues, .. } => ("macvtap", name.to_string(), queues.len()),
            Backend::VhostUser { socket } => ("vhost-user", socket.display().to_string(), 0),
            Backend::Vfio { device: path, .. } => ("vfio", path.display().to_string(), 0),
        };
        let info = DeviceInfo {
            endpoint: device.endpoint.to_string(),
            guest_name: device.guest_name.to_string(),
            backend,
            device: name,
            mac: device.mac.to_string(),
            mtu: device.mtu,
            queues,
        };
        let mut devices = self.devices.lock().map_err(|_| HypervisorError {
            op: "add",
            endpoint: device.endpoint.clone(),
            reason: "internal lock poisoned".into(),
        })?;
        devices.push(info);
        // The descriptors close here; persistent taps and macvtaps stay for the VMM.
        Ok(())
    }
}

impl Hypervisor for HandOver {
    fn capabilities(&self) -> Capabilities {
        // The VMM is unknown: limits, when asked for, are applied on the host.
        Capabilities {
            multi_queue: self.queues > 1,
            rate_limiter: false,
        }
    }

    fn config(&self) -> HypervisorConfig {
        HypervisorConfig {
            queues: self.queues,
            disable_vhost_net: true,
            rx_rate_limiter_max_rate: self.rx_rate,
            tx_rate_limiter_max_rate: self.tx_rate,
            ..HypervisorConfig::default()
        }
    }

    async fn add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        self.take(device)
    }

    async fn hot_add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        self.take(device)
    }

    async fn hot_remove_device(&self, _endpoint: &EndpointId) -> Result<(), HypervisorError> {
        Ok(())
    }
}
