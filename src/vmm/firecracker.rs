//! Firecracker: `network-interfaces` entries and the [`Firecracker`] adapter.
//!
//! Firecracker opens its tap itself, by name (`host_dev_name`), inside its own (jailer's)
//! namespace, with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and one queue pair. So its taps must
//! be persistent (they outlive the descriptors of the attach) and made without
//! `IFF_MULTI_QUEUE`: the kernel refuses (`EINVAL`) to attach a queue whose multi-queue flag
//! differs from the tap's, and a one-queue tap made multi-queue would make Firecracker's open
//! fail. It takes taps only (no macvtap, vhost-user or VFIO), cannot hot-plug network
//! devices, and has no MTU setting (the guest sets it: see the guest configuration). Its
//! limiter is its own: `rx_rate_limiter` (into the VM) and `tx_rate_limiter` token buckets.

use std::sync::Mutex;

use sandbox_net_endpoints::{
    Backend, Capabilities, EndpointId, Hypervisor, HypervisorConfig, HypervisorError, NetDevice,
};
use sandbox_net_interworking::TapOptions;
use serde::Serialize;

use super::{Queues, RateLimiter, Vhost, VmmBackend, VmmDevice, VmmError, VmmKind};

/// The queue pairs Firecracker drives per network device.
pub const MAX_QUEUE_PAIRS: usize = 1;

/// One entry of Firecracker's `network-interfaces` (configuration file) or the body of
/// `PUT /network-interfaces/{iface_id}` (API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkInterface {
    /// The interface's id: the guest's interface name.
    pub iface_id: String,
    /// The tap Firecracker opens.
    pub host_dev_name: String,
    /// The guest's MAC.
    pub guest_mac: String,
    /// Limit into the VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Limit out of the VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

fn unsupported(device: &VmmDevice, what: &'static str, why: &'static str) -> VmmError {
    VmmError::Unsupported {
        vmm: VmmKind::Firecracker,
        endpoint: device.endpoint.clone(),
        what,
        why,
    }
}

/// The `network-interfaces` entry of `device`, with limits in bits/s (0: none).
pub fn network_interface(
    device: &VmmDevice,
    rx_rate: u64,
    tx_rate: u64,
) -> Result<NetworkInterface, VmmError> {
    let pairs = device.queue_pairs();
    if pairs > MAX_QUEUE_PAIRS {
        return Err(VmmError::TooManyQueues {
            vmm: VmmKind::Firecracker,
            endpoint: Some(device.endpoint.clone()),
            queues: pairs,
            max: MAX_QUEUE_PAIRS,
        });
    }
    let name = match &device.backend {
        VmmBackend::Tap { name, vhost, .. } => {
            if *vhost != Vhost::Off {
                return Err(unsupported(
                    device,
                    "vhost-net",
                    "Firecracker has no vhost-net: configure it without",
                ));
            }
            name
        }
        VmmBackend::Macvtap { .. } => {
            return Err(unsupported(
                device,
                "a macvtap",
                "Firecracker opens a tap by name: use the tcfilter model",
            ));
        }
        VmmBackend::VhostUser { .. } => {
            return Err(unsupported(
                device,
                "a vhost-user socket",
                "Firecracker has no vhost-user network device",
            ));
        }
        VmmBackend::Vfio { .. } => {
            return Err(unsupported(
                device,
                "a PCI function",
                "Firecracker has no device pass-through",
            ));
        }
    };
    Ok(NetworkInterface {
        iface_id: device.guest_name.to_string(),
        host_dev_name: name.to_string(),
        guest_mac: device.mac.to_string(),
        rx_rate_limiter: RateLimiter::for_rate(rx_rate),
        tx_rate_limiter: RateLimiter::for_rate(tx_rate),
    })
}

/// How a Firecracker is configured, as far as its network devices go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrackerConfig {
    /// Queue pairs per device asked for: at most [`MAX_QUEUE_PAIRS`].
    pub queues: usize,
    /// Limit into the VM, bits/s (0: none).
    pub rx_rate: u64,
    /// Limit out of the VM, bits/s (0: none).
    pub tx_rate: u64,
}

impl Default for FirecrackerConfig {
    fn default() -> Self {
        Self {
            queues: 1,
            rx_rate: 0,
            tx_rate: 0,
        }
    }
}

/// Firecracker as endpoints see it: it records the `network-interfaces` entry of each tap and
/// closes the descriptors, since Firecracker reopens the (persistent) tap by name.
#[derive(Debug)]
pub struct Firecracker {
    config: FirecrackerConfig,
    interfaces: Mutex<Vec<NetworkInterface>>,
}

impl Firecracker {
    /// An adapter; refuses more queue pairs than Firecracker drives.
    pub fn new(config: FirecrackerConfig) -> Result<Self, VmmError> {
        if config.queues > MAX_QUEUE_PAIRS {
            return Err(VmmError::TooManyQueues {
                vmm: VmmKind::Firecracker,
                endpoint: None,
                queues: config.queues,
                max: MAX_QUEUE_PAIRS,
            });
        }
        Ok(Self {
            config,
            interfaces: Mutex::new(Vec::new()),
        })
    }

    /// The tap options Firecracker needs, from `base`: persistent (it reopens the tap by
    /// name after the attach's descriptors close), one queue (so not `IFF_MULTI_QUEUE`),
    /// with the virtio-net header it sets itself.
    pub fn tap_options(base: TapOptions) -> TapOptions {
        TapOptions {
            queues: 1,
            vnet_hdr: true,
            persist: true,
            ..base
        }
    }

    /// The `network-interfaces` entries of the devices taken, in order.
    pub fn network_interfaces(&self) -> Vec<NetworkInterface> {
        self.interfaces
            .lock()
            .map(|i| i.clone())
            .unwrap_or_default()
    }
}

impl Hypervisor for Firecracker {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            multi_queue: false,
            rate_limiter: true,
        }
    }

    fn config(&self) -> HypervisorConfig {
        HypervisorConfig {
            queues: 1,
            disable_vhost_net: true,
            rx_rate_limiter_max_rate: self.config.rx_rate,
            tx_rate_limiter_max_rate: self.config.tx_rate,
            ..HypervisorConfig::default()
        }
    }

    async fn add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        let refused = |reason: String| HypervisorError {
            op: "add",
            endpoint: device.endpoint.clone(),
            reason,
        };
        let mut view = VmmDevice::from_device(&device, 1);
        // Firecracker opens the tap by name; the descriptors only count its queues.
        if let VmmBackend::Tap { queues, .. } = &mut view.backend {
            *queues = Queues::ByName(queues.pairs());
        }
        let entry = network_interface(&view, self.config.rx_rate, self.config.tx_rate)
            .map_err(|e| refused(e.to_string()))?;
        if matches!(device.backend, Backend::Tap { .. }) {
            self.interfaces
                .lock()
                .map_err(|_| refused("internal lock poisoned".into()))?
                .push(entry);
        }
        // The descriptors close here; the tap must be persistent (`tap_options`).
        Ok(())
    }

    async fn hot_add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        Err(HypervisorError {
            op: "hot-add",
            endpoint: device.endpoint,
            reason: "Firecracker cannot add network devices to a running VM".into(),
        })
    }

    async fn hot_remove_device(&self, endpoint: &EndpointId) -> Result<(), HypervisorError> {
        Err(HypervisorError {
            op: "hot-remove",
            endpoint: endpoint.clone(),
            reason: "Firecracker cannot remove network devices from a running VM".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use sandbox_net_persist::{IfName, MacAddr};
    use serde_json::json;

    use super::*;

    fn tap(queues: usize) -> VmmDevice {
        VmmDevice {
            endpoint: EndpointId::from_bytes([9, 9, 9, 9, 0, 0, 0, 1]),
            guest_name: IfName::new("eth0").unwrap(),
            mac: "02:00:0a:c8:00:02".parse::<MacAddr>().unwrap(),
            mtu: 1500,
            backend: VmmBackend::Tap {
                name: IfName::new("tap0_kata").unwrap(),
                queues: Queues::ByName(queues),
                vhost: Vhost::Off,
            },
        }
    }

    #[test]
    fn an_entry_names_the_tap_and_the_guest_mac_with_both_buckets() {
        let entry = network_interface(&tap(1), 8_000_000, 16_000_000).unwrap();
        assert_eq!(
            serde_json::to_value(&entry).unwrap(),
            json!({
                "iface_id": "eth0",
                "host_dev_name": "tap0_kata",
                "guest_mac": "02:00:0a:c8:00:02",
                "rx_rate_limiter": {"bandwidth": {"size": 1_000_000, "refill_time": 1000}},
                "tx_rate_limiter": {"bandwidth": {"size": 2_000_000, "refill_time": 1000}},
            })
        );
        let plain = network_interface(&tap(1), 0, 0).unwrap();
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            json!({"iface_id": "eth0", "host_dev_name": "tap0_kata", "guest_mac": "02:00:0a:c8:00:02"})
        );
    }

    #[test]
    fn more_than_one_queue_pair_is_refused() {
        let err = network_interface(&tap(2), 0, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "firecracker takes at most 1 queue pair(s) per network device; 2 requested by endpoint 0909090900000001"
        );
        let err = Firecracker::new(FirecrackerConfig {
            queues: 4,
            ..FirecrackerConfig::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "firecracker takes at most 1 queue pair(s) per network device; 4 requested"
        );
    }

    #[test]
    fn its_taps_are_persistent_single_queue_taps() {
        let options = Firecracker::tap_options(TapOptions {
            queues: 4,
            persist: false,
            owner: Some(1000),
            ..TapOptions::default()
        });
        assert_eq!(
            (options.queues, options.persist, options.owner),
            (1, true, Some(1000))
        );
        let flags = sandbox_net_netns::TapConfig {
            vnet_hdr: options.vnet_hdr,
            ..sandbox_net_netns::TapConfig::new(IfName::new("tap0_kata").unwrap(), options.queues)
        }
        .flags();
        // IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, what Firecracker opens with: no IFF_MULTI_QUEUE.
        assert_eq!(
            u32::from(flags),
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as u32
        );
    }

    #[test]
    fn other_backends_are_refused_by_name() {
        let mut dev = tap(1);
        dev.backend = VmmBackend::VhostUser {
            socket: "/tmp/vhu.sock".into(),
            queues: 1,
        };
        let err = network_interface(&dev, 0, 0).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "firecracker cannot take endpoint 0909090900000001 (a vhost-user socket)"
            ),
            "{err}"
        );
        // vmm-config --vhost-net: a tap that the VMM would open vhost-net for itself.
        let mut dev = tap(1);
        dev.backend = VmmBackend::Tap {
            name: IfName::new("tap0_kata").unwrap(),
            queues: Queues::ByName(1),
            vhost: Vhost::ByVmm,
        };
        assert_eq!(
            network_interface(&dev, 0, 0).unwrap_err().to_string(),
            "firecracker cannot take endpoint 0909090900000001 (vhost-net): Firecracker has no \
             vhost-net: configure it without"
        );
    }

    /// What an attach hands the adapter: a macvtap's queues, a tap with vhost-net descriptors,
    /// a VFIO function. Each is refused with the endpoint and the reason, and nothing is
    /// recorded; a plain tap next to them is taken.
    #[tokio::test]
    async fn the_adapter_refuses_macvtap_vhost_net_and_vfio_and_records_nothing() {
        let fc = Firecracker::new(FirecrackerConfig::default()).unwrap();
        // Any descriptor serves: the adapter only counts them, Firecracker opens by name.
        let fd = || std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let device = |backend| NetDevice {
            endpoint: EndpointId::from_bytes([9, 9, 9, 9, 0, 0, 0, 1]),
            guest_name: IfName::new("eth0").unwrap(),
            mac: "02:00:0a:c8:00:02".parse::<MacAddr>().unwrap(),
            mtu: 1500,
            backend,
        };
        let name = || IfName::new("tap0_kata").unwrap();
        let refused = "the hypervisor could not add the device of endpoint 0909090900000001: \
                       firecracker cannot take endpoint 0909090900000001";
        let cases = [
            (
                Backend::Macvtap {
                    name: name(),
                    queues: vec![fd()],
                    vhost: vec![],
                },
                "(a macvtap): Firecracker opens a tap by name: use the tcfilter model",
            ),
            (
                Backend::Tap {
                    name: name(),
                    queues: vec![fd()],
                    vhost: vec![fd()],
                },
                "(vhost-net): Firecracker has no vhost-net: configure it without",
            ),
            (
                Backend::Vfio {
                    bdf: "0000:03:00.1".parse().unwrap(),
                    device: "/dev/vfio/12".into(),
                },
                "(a PCI function): Firecracker has no device pass-through",
            ),
        ];
        for (backend, why) in cases {
            let err = fc.add_device(device(backend)).await.unwrap_err();
            assert_eq!(err.to_string(), format!("{refused} {why}"));
        }
        assert_eq!(fc.network_interfaces(), []);

        fc.add_device(device(Backend::Tap {
            name: name(),
            queues: vec![fd()],
            vhost: vec![],
        }))
        .await
        .unwrap();
        assert_eq!(
            fc.network_interfaces(),
            [NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: "tap0_kata".into(),
                guest_mac: "02:00:0a:c8:00:02".into(),
                rx_rate_limiter: None,
                tx_rate_limiter: None,
            }]
        );
    }
}
