//! The library's defaults end to end: a `Network` with `NetworkConfig::default()` (tcfilter)
//! for a VMM configured as `HypervisorConfig::default()` (vhost-net on, one queue pair), on a
//! kernel that has vhost-net. It skips here (no vhost-net) and runs in the CI kernel lane.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::{net::IpAddr, path::Path, time::Duration};

use sandbox_net::{NetnsSource, Network, NetworkConfig};
use sandbox_net_endpoints::{
    Hypervisor, HypervisorConfig,
    testing::{OnDevice, StandInVmm},
};
use sandbox_net_guest::ping::ping;
use sandbox_net_netns::{
    VHOST_NET_F_VIRTIO_NET_HDR, VHOST_NET_PATH, open_vhost_net, skip_if_unsupported,
    testing::{PodFixture, assert_same_snapshot},
};

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
    // The stand-in VMM (none can run here) with vhost-net on, running the user-space guest on
    // the tap's queues: configured exactly as the default.
    let vmm = StandInVmm::new()
        .with_vhost_net()
        .on_device(OnDevice::RunGuest);
    assert_eq!(vmm.config(), HypervisorConfig::default());
    let (ids, skipped) = network.add_endpoints(&vmm, None).await.unwrap();
    assert_eq!((ids.len(), skipped.len()), (1, 0));
    assert_eq!(vmm.device(&ids[0]).as_deref(), Some("tap tap0_kata x1"));
    let features = vmm.vhost_features(&ids[0]);
    // One vhost-net descriptor, and it answered VHOST_GET_FEATURES as vhost-net.
    assert_eq!(features.len(), 1, "{features:x?}");
    assert!(
        features.iter().all(|f| f & VHOST_NET_F_VIRTIO_NET_HDR != 0),
        "{features:x?}"
    );
    assert_eq!(ping_count(&fx, "10.200.0.2").await, 2);
    assert_eq!(ping_count(&fx, "fd00:200::2").await, 2);
    let stats = vmm.guest_stats(&ids[0]).unwrap();
    assert_eq!((stats.icmp_echo_replies, stats.icmpv6_echo_replies), (2, 2));
    assert_eq!(network.check().await.unwrap(), []);
    // The VM stops: its guest gives the tap's queues back.
    vmm.shutdown();
    network.remove_endpoints(&vmm, None).await.unwrap();
    network.teardown().await.unwrap();
    assert_same_snapshot(&before, &fx.pod.snapshot());
}
