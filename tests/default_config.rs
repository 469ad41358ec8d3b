//! The library's defaults end to end: a `Network` with `NetworkConfig::default()` (tcfilter)
//! for a VMM configured as `HypervisorConfig::default()` (vhost-net on, one queue pair), on a
//! kernel that has vhost-net. It skips here (no vhost-net) and runs in the CI kernel lane.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::{
    net::IpAddr,
    os::fd::{AsFd, OwnedFd},
    path::Path,
    sync::Mutex,
    time::Duration,
};

use sandbox_net::{NetnsSource, Network, NetworkConfig};
use sandbox_net_endpoints::{
    Backend, Capabilities, EndpointId, Hypervisor, HypervisorConfig, HypervisorError, NetDevice,
};
use sandbox_net_guest::{Guest, GuestConfig, packet::Identity, ping::ping};
use sandbox_net_netns::{
    VHOST_NET_F_VIRTIO_NET_HDR, VHOST_NET_PATH, open_vhost_net, skip_if_unsupported,
    testing::{PodFixture, assert_same_snapshot},
    vhost_features,
};

/// A stand-in for a VMM (none can run here) with the default configuration: it checks the
/// vhost-net descriptors it is given with `VHOST_GET_FEATURES`, holds them, and runs the
/// user-space guest on the tap's queues.
#[derive(Default)]
struct DefaultVmm {
    devices: Mutex<Vec<Held>>,
}

/// What the stand-in holds of one device.
struct Held {
    /// `tap NAME xQUEUES vhost xN`.
    what: String,
    /// What each vhost-net descriptor answered to `VHOST_GET_FEATURES`.
    features: Vec<u64>,
    guest: Guest,
    /// The vhost-net descriptors, held as a VMM holds them.
    _vhost: Vec<OwnedFd>,
}

impl Hypervisor for DefaultVmm {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            multi_queue: true,
            rate_limiter: false,
        }
    }

    fn config(&self) -> HypervisorConfig {
        HypervisorConfig::default()
    }

    async fn add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        let refuse = |reason: String| HypervisorError {
            op: "add",
            endpoint: device.endpoint.clone(),
            reason,
        };
        let Backend::Tap {
            name,
            queues,
            vhost,
        } = device.backend
        else {
            return Err(refuse("the default configuration makes taps".into()));
        };
        let features = vhost
            .iter()
            .map(|fd| vhost_features(fd.as_fd()).map_err(|e| refuse(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let what = format!("tap {name} x{} vhost x{}", queues.len(), vhost.len());
        let identity = Identity {
            mac: device.mac,
            ipv4: vec!["10.200.0.2".parse().unwrap()],
            ipv6: vec!["fd00:200::2".parse().unwrap()],
        };
        let config = GuestConfig {
            identity,
            vnet_hdr: true,
        };
        let guest = Guest::start(config, queues).map_err(|e| refuse(e.to_string()))?;
        self.devices.lock().unwrap().push(Held {
            what,
            features,
            guest,
            _vhost: vhost,
        });
        Ok(())
    }

    async fn hot_add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        self.add_device(device).await
    }

    async fn hot_remove_device(&self, _: &EndpointId) -> Result<(), HypervisorError> {
        Ok(())
    }
}

async fn ping_count(fx: &PodFixture, dst: &str) -> u16 {
    let dst: IpAddr = dst.parse().unwrap();
    fx.host
        .netns()
        .run(move || ping(dst, 2, Duration::from_secs(2)))
        .await
        .unwrap()
        .unwrap()
        .received
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn the_default_configuration_attaches_with_vhost_net_end_to_end() {
    // Feature detection by trying: a kernel without vhost-net has no /dev/vhost-net.
    skip_if_unsupported!(
        open_vhost_net(Path::new(VHOST_NET_PATH), 1),
        "vhost-net",
        libc::ENOENT
    )
    .unwrap();
    assert!(!HypervisorConfig::default().disable_vhost_net);
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let mut network = Network::create(
        dir.path().join("state.json"),
        "defaults",
        NetnsSource::Given(fx.pod.netns().clone()),
        NetworkConfig::default(),
    )
    .unwrap();
    let vmm = DefaultVmm::default();
    let (ids, skipped) = network.add_endpoints(&vmm, None).await.unwrap();
    assert_eq!((ids.len(), skipped.len()), (1, 0));
    {
        let devices = vmm.devices.lock().unwrap();
        assert_eq!(devices[0].what, "tap tap0_kata x1 vhost x1");
        let features = &devices[0].features;
        // One vhost-net descriptor, and it answered VHOST_GET_FEATURES as vhost-net.
        assert_eq!(features.len(), 1, "{features:x?}");
        assert!(
            features.iter().all(|f| f & VHOST_NET_F_VIRTIO_NET_HDR != 0),
            "{features:x?}"
        );
    }
    assert_eq!(ping_count(&fx, "10.200.0.2").await, 2);
    assert_eq!(ping_count(&fx, "fd00:200::2").await, 2);
    let stats = vmm.devices.lock().unwrap()[0].guest.stats();
    assert_eq!((stats.icmp_echo_replies, stats.icmpv6_echo_replies), (2, 2));
    assert_eq!(network.check().await.unwrap(), []);
    // The VM stops: its guest gives the tap's queues back.
    vmm.devices.lock().unwrap().clear();
    network.remove_endpoints(&vmm, None).await.unwrap();
    network.teardown().await.unwrap();
    assert_same_snapshot(&before, &fx.pod.snapshot());
}
