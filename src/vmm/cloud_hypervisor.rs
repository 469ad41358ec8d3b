//! Cloud Hypervisor: the `--net` argument, the `vm.add-net` body, and the
//! [`CloudHypervisor`] adapter.
//!
//! - `--net fd=[3,4],mac=M,mtu=MTU,num_queues=4,id=N`: `num_queues` counts queues, two per
//!   tap descriptor (one rx, one tx). `tap=NAME` instead of `fd=` makes Cloud Hypervisor open
//!   the tap itself; `vhost_user=on,socket=PATH` for vhost-user (the VM's memory must then be
//!   shared: `--memory ...,shared=on`). A VFIO function is `--device path=/sys/bus/pci/devices/BDF/`.
//! - `PUT /api/v1/vm.add-net` takes a `NetConfig` body (`tap`, `mac`, `mtu`, `num_queues`,
//!   `vhost_user`, `vhost_socket`, `id`, `rate_limiter_config`, ...); descriptors travel as
//!   `SCM_RIGHTS` on the API socket, never in the body.
//! - Cloud Hypervisor has its own rate limiter: limits become `rate_limiter_config` token
//!   buckets (`bw_size`, `bw_one_time_burst`, `bw_refill_time` on the command line), not HTB
//!   on the host. One configuration serves both directions, and every queue gets its own
//!   bucket from it: the configured rate is split among the queue pairs so that the device as
//!   a whole stays within it, and rx and tx must be equal.
//! - It has no vhost-net, and takes tap descriptors only (not a macvtap's).

use std::sync::Mutex;

use sandbox_net_endpoints::{
    Capabilities, EndpointId, Hypervisor, HypervisorConfig, HypervisorError, NetDevice,
};
use serde_json::{Value, json};

use super::{
    FdRef, Queues, RateLimiter, Vhost, VmmBackend, VmmDevice, VmmError, VmmKind, clamp_queue_pairs,
};

/// Cloud Hypervisor's id of `endpoint`'s device.
pub fn device_id(endpoint: &EndpointId) -> String {
    format!("sbx-net-{endpoint}")
}

fn unsupported(device: &VmmDevice, what: &'static str, why: &'static str) -> VmmError {
    VmmError::Unsupported {
        vmm: VmmKind::CloudHypervisor,
        endpoint: device.endpoint.clone(),
        what,
        why,
    }
}

/// The per-queue limiter of `device` (see the module documentation).
fn queue_limiter(device: &VmmDevice, limiter: Option<RateLimiter>) -> Option<RateLimiter> {
    limiter.map(|l| l.split(device.queue_pairs()))
}

/// The value of `--net` for `device`, or of `--device` for a VFIO function (see
/// [`command_line`]).
pub fn net_arg(device: &VmmDevice, limiter: Option<RateLimiter>) -> Result<String, VmmError> {
    let id = device_id(&device.endpoint);
    let common = |spec: &mut String| {
        spec.push_str(&format!(
            ",mac={},mtu={},num_queues={},id={id}",
            device.mac,
            device.mtu,
            2 * device.queue_pairs()
        ));
        if let Some(l) = queue_limiter(device, limiter) {
            spec.push_str(&format!(
                ",bw_size={},bw_one_time_burst={},bw_refill_time={}",
                l.bandwidth.size,
                l.bandwidth.one_time_burst.unwrap_or(0),
                l.bandwidth.refill_time
            ));
        }
    };
    match &device.backend {
        VmmBackend::Tap {
            name,
            queues,
            vhost,
        } => {
            if *vhost != Vhost::Off {
                return Err(unsupported(
                    device,
                    "vhost-net",
                    "Cloud Hypervisor has no vhost-net: configure it without",
                ));
            }
            let mut spec = match queues {
                Queues::Fds(fds) => format!(
                    "fd=[{}]",
                    fds.iter()
                        .map(|f| match f {
                            FdRef::Number(n) => Ok(n.to_string()),
                            FdRef::Name(_) => Err(unsupported(
                                device,
                                "named descriptors",
                                "the command line takes descriptor numbers",
                            )),
                        })
                        .collect::<Result<Vec<_>, _>>()?
                        .join(",")
                ),
                Queues::ByName(_) => format!("tap={name}"),
            };
            common(&mut spec);
            Ok(spec)
        }
        VmmBackend::Macvtap { .. } => Err(unsupported(
            device,
            "a macvtap",
            "Cloud Hypervisor takes tap devices: use the tcfilter model",
        )),
        VmmBackend::VhostUser { socket, .. } => {
            if limiter.is_some() {
                return Err(unsupported(
                    device,
                    "a rate-limited vhost-user socket",
                    "the backend, not Cloud Hypervisor, moves its frames",
                ));
            }
            let mut spec = format!("vhost_user=on,socket={}", socket.display());
            common(&mut spec);
            Ok(spec)
        }
        VmmBackend::Vfio { bdf, .. } => Ok(format!("path=/sys/bus/pci/devices/{bdf}/,id={id}")),
    }
}

/// The Cloud Hypervisor arguments of `devices`: `--net VALUE` for each network device,
/// `--device VALUE` for each VFIO function.
pub fn command_line(
    devices: &[VmmDevice],
    limiter: Option<RateLimiter>,
) -> Result<Vec<String>, VmmError> {
    let mut args = Vec::new();
    for device in devices {
        let flag = match device.backend {
            VmmBackend::Vfio { .. } => "--device",
            _ => "--net",
        };
        args.extend([flag.to_string(), net_arg(device, limiter)?]);
    }
    Ok(args)
}

/// The body of `PUT /api/v1/vm.add-net` for `device` (a `NetConfig`). For descriptors handed
/// over, the body names no tap: the descriptors go as `SCM_RIGHTS` with the request.
pub fn add_net_body(device: &VmmDevice, limiter: Option<RateLimiter>) -> Result<Value, VmmError> {
    // The same checks as the command line.
    net_arg(device, limiter)?;
    let mut body = json!({
        "id": device_id(&device.endpoint),
        "mac": device.mac.to_string(),
        "mtu": device.mtu,
        "num_queues": 2 * device.queue_pairs(),
    });
    match &device.backend {
        VmmBackend::Tap {
            name,
            queues: Queues::ByName(_),
            ..
        } => body["tap"] = name.as_str().into(),
        VmmBackend::Tap { .. } => {}
        VmmBackend::VhostUser { socket, .. } => {
            body["vhost_user"] = true.into();
            body["vhost_socket"] = socket.to_string_lossy().into();
        }
        VmmBackend::Macvtap { .. } | VmmBackend::Vfio { .. } => {
            return Err(unsupported(
                device,
                "a device for vm.add-net",
                "vm.add-net takes taps and vhost-user sockets (VFIO goes by vm.add-device)",
            ));
        }
    }
    if let Some(l) = queue_limiter(device, limiter) {
        body["rate_limiter_config"] = json!({ "bandwidth": l.bandwidth });
    }
    Ok(body)
}

/// The limiter Cloud Hypervisor gets for rx and tx limits: one configuration serves both
/// directions, so they must be equal (or both 0).
pub fn limiter_for(rx: u64, tx: u64) -> Result<Option<RateLimiter>, VmmError> {
    if rx != tx {
        return Err(VmmError::Limits {
            vmm: VmmKind::CloudHypervisor,
            rx,
            tx,
            why: "one token bucket limits both directions of a device: give rx and tx the same rate",
        });
    }
    Ok(RateLimiter::for_rate(rx))
}

/// How a Cloud Hypervisor is configured, as far as its network devices go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudHypervisorConfig {
    /// vCPUs of the VM (`--cpus boot=N`): queue pairs are never more.
    pub vcpus: usize,
    /// Queue pairs per device asked for.
    pub queues: usize,
    /// Limit into the VM, bits/s (0: none).
    pub rx_rate: u64,
    /// Limit out of the VM, bits/s (0: none).
    pub tx_rate: u64,
}

/// Cloud Hypervisor as endpoints see it: devices for a VM about to start are kept until
/// [`CloudHypervisor::take_devices`], rendered with [`CloudHypervisor::command_line`]. Limits
/// are the VMM's own; hot-plug through its HTTP API is not implemented by this adapter (it
/// refuses, and the attach rolls back): [`add_net_body`] gives the request's body.
#[derive(Debug)]
pub struct CloudHypervisor {
    config: CloudHypervisorConfig,
    queues: usize,
    limiter: Option<RateLimiter>,
    devices: Mutex<Vec<NetDevice>>,
}

impl CloudHypervisor {
    /// An adapter; refuses limits Cloud Hypervisor cannot express.
    pub fn new(config: CloudHypervisorConfig) -> Result<Self, VmmError> {
        let limiter = limiter_for(config.rx_rate, config.tx_rate)?;
        let queues = clamp_queue_pairs(VmmKind::CloudHypervisor, config.queues, config.vcpus);
        Ok(Self {
            config,
            queues,
            limiter,
            devices: Mutex::new(Vec::new()),
        })
    }

    /// The devices handed over for the VM to start with, in order; they leave the adapter.
    pub fn take_devices(&self) -> Vec<NetDevice> {
        self.devices
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
    }

    /// The arguments that give a Cloud Hypervisor started with `devices`' descriptors
    /// (inherited at their numbers in this process) those devices, with the limiter.
    pub fn command_line(&self, devices: &[NetDevice]) -> Result<Vec<String>, VmmError> {
        let views: Vec<VmmDevice> = devices
            .iter()
            .map(|d| VmmDevice::from_device(d, self.queues))
            .collect();
        command_line(&views, self.limiter)
    }

    /// The limiter each device gets.
    pub fn limiter(&self) -> Option<RateLimiter> {
        self.limiter
    }
}

impl Hypervisor for CloudHypervisor {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            multi_queue: true,
            rate_limiter: true,
        }
    }

    fn config(&self) -> HypervisorConfig {
        HypervisorConfig {
            queues: self.queues,
            disable_vhost_net: true,
            rx_rate_limiter_max_rate: self.config.rx_rate,
            tx_rate_limiter_max_rate: self.config.tx_rate,
            ..HypervisorConfig::default()
        }
    }

    async fn add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        let view = VmmDevice::from_device(&device, self.queues);
        let refused = |reason: String| HypervisorError {
            op: "add",
            endpoint: device.endpoint.clone(),
            reason,
        };
        net_arg(&view, self.limiter).map_err(|e| refused(e.to_string()))?;
        let mut devices = self
            .devices
            .lock()
            .map_err(|_| refused("internal lock poisoned".into()))?;
        devices.push(device);
        Ok(())
    }

    async fn hot_add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        Err(HypervisorError {
            op: "hot-add",
            endpoint: device.endpoint,
            reason: "this adapter does not talk to Cloud Hypervisor's API: send vm.add-net \
                     (add_net_body) with the descriptors yourself"
                .into(),
        })
    }

    async fn hot_remove_device(&self, endpoint: &EndpointId) -> Result<(), HypervisorError> {
        Err(HypervisorError {
            op: "hot-remove",
            endpoint: endpoint.clone(),
            reason: format!(
                "this adapter does not talk to Cloud Hypervisor's API: send vm.remove-device \
                 with id {}",
                device_id(endpoint)
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use sandbox_net_persist::{IfName, MacAddr};

    use super::*;

    fn device(backend: VmmBackend) -> VmmDevice {
        VmmDevice {
            endpoint: EndpointId::from_bytes([1, 2, 3, 4, 5, 6, 7, 8]),
            guest_name: IfName::new("eth0").unwrap(),
            mac: "02:00:0a:c8:00:02".parse::<MacAddr>().unwrap(),
            mtu: 1500,
            backend,
        }
    }

    fn tap_fds(fds: &[i32]) -> VmmBackend {
        VmmBackend::Tap {
            name: IfName::new("tap0_kata").unwrap(),
            queues: Queues::Fds(fds.iter().copied().map(FdRef::Number).collect()),
            vhost: Vhost::Off,
        }
    }

    #[test]
    fn num_queues_counts_two_queues_per_descriptor() {
        assert_eq!(
            net_arg(&device(tap_fds(&[3, 4])), None).unwrap(),
            "fd=[3,4],mac=02:00:0a:c8:00:02,mtu=1500,num_queues=4,id=sbx-net-0102030405060708"
        );
        assert_eq!(
            net_arg(&device(tap_fds(&[3])), None).unwrap(),
            "fd=[3],mac=02:00:0a:c8:00:02,mtu=1500,num_queues=2,id=sbx-net-0102030405060708"
        );
    }

    #[test]
    fn a_tap_by_name_is_tap_equals() {
        let dev = device(VmmBackend::Tap {
            name: IfName::new("tap2_kata").unwrap(),
            queues: Queues::ByName(2),
            vhost: Vhost::Off,
        });
        assert_eq!(
            net_arg(&dev, None).unwrap(),
            "tap=tap2_kata,mac=02:00:0a:c8:00:02,mtu=1500,num_queues=4,id=sbx-net-0102030405060708"
        );
        assert_eq!(
            add_net_body(&dev, None).unwrap(),
            json!({"id": "sbx-net-0102030405060708", "mac": "02:00:0a:c8:00:02", "mtu": 1500,
                   "num_queues": 4, "tap": "tap2_kata"})
        );
    }

    #[test]
    fn limits_become_one_bucket_per_queue() {
        let limiter = limiter_for(8_000_000, 8_000_000).unwrap();
        let dev = device(tap_fds(&[3, 4]));
        assert!(
            net_arg(&dev, limiter)
                .unwrap()
                .ends_with(",bw_size=500000,bw_one_time_burst=0,bw_refill_time=1000")
        );
        assert_eq!(
            add_net_body(&dev, limiter).unwrap(),
            json!({
                "id": "sbx-net-0102030405060708",
                "mac": "02:00:0a:c8:00:02",
                "mtu": 1500,
                "num_queues": 4,
                "rate_limiter_config": {"bandwidth": {"size": 500000, "refill_time": 1000}},
            })
        );
        let err = limiter_for(8_000_000, 0).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "cloud-hypervisor: rate limits rx 8000000 bit/s and tx 0 bit/s cannot be configured"
            ),
            "{err}"
        );
        assert_eq!(limiter_for(0, 0).unwrap(), None);
    }

    #[test]
    fn vhost_user_is_a_socket() {
        let dev = device(VmmBackend::VhostUser {
            socket: PathBuf::from("/tmp/vhostuser_10.0.0.2/vhu.sock"),
            queues: 1,
        });
        assert_eq!(
            net_arg(&dev, None).unwrap(),
            "vhost_user=on,socket=/tmp/vhostuser_10.0.0.2/vhu.sock,mac=02:00:0a:c8:00:02,\
             mtu=1500,num_queues=2,id=sbx-net-0102030405060708"
        );
        let body = add_net_body(&dev, None).unwrap();
        assert_eq!(body["vhost_user"], true);
        assert_eq!(body["vhost_socket"], "/tmp/vhostuser_10.0.0.2/vhu.sock");
        assert!(net_arg(&dev, RateLimiter::for_rate(1000)).is_err());
    }

    #[test]
    fn vfio_is_a_device_path_and_macvtap_vhost_net_are_refused() {
        let vfio = device(VmmBackend::Vfio {
            bdf: "0000:03:00.1".parse().unwrap(),
            group: PathBuf::from("/dev/vfio/12"),
        });
        assert_eq!(
            command_line(&[vfio], None).unwrap(),
            [
                "--device",
                "path=/sys/bus/pci/devices/0000:03:00.1/,id=sbx-net-0102030405060708"
            ]
        );
        let macvtap = device(VmmBackend::Macvtap {
            name: IfName::new("tap0_kata").unwrap(),
            queues: Queues::Fds(vec![FdRef::Number(3)]),
            vhost: Vhost::Off,
        });
        assert!(
            net_arg(&macvtap, None)
                .unwrap_err()
                .to_string()
                .contains("use the tcfilter model")
        );
        let vhost = device(VmmBackend::Tap {
            name: IfName::new("tap0_kata").unwrap(),
            queues: Queues::Fds(vec![FdRef::Number(3)]),
            vhost: Vhost::Fds(vec![FdRef::Number(4)]),
        });
        assert!(
            net_arg(&vhost, None)
                .unwrap_err()
                .to_string()
                .contains("no vhost-net")
        );
    }

    #[test]
    fn the_adapter_has_its_own_limiter_and_no_vhost() {
        let ch = CloudHypervisor::new(CloudHypervisorConfig {
            vcpus: 2,
            queues: 4,
            rx_rate: 1000,
            tx_rate: 1000,
        })
        .unwrap();
        assert!(ch.capabilities().rate_limiter);
        assert!(ch.config().disable_vhost_net);
        assert_eq!(ch.config().queues, 2);
        assert!(
            CloudHypervisor::new(CloudHypervisorConfig {
                rx_rate: 1,
                ..CloudHypervisorConfig::default()
            })
            .is_err()
        );
    }
}
