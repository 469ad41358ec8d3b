//! Real QEMU guests booted on the descriptors the library hands over (never by tap name):
//! the guest configures itself from the kernel `ip=` the guest configuration renders, reports
//! its NIC (MAC, MTU, queues), and answers ping from the pod's peer namespace; after detach
//! the pod is as it was.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod qemu_guest;

use std::net::IpAddr;

use qemu_guest::{TestVm, add_second_pod_link, ping_until_answered};
use sandbox_net::{
    NetnsSource, Network, NetworkConfig,
    guest_config::GuestNetwork,
    vmm::{
        descriptors,
        qemu::{Qemu, QemuConfig},
    },
};
use sandbox_net_interworking::InterworkingModel;
use sandbox_net_netns::testing::{PodFixture, assert_same_snapshot};

/// The guest's ICMP counter `name` (`/proc/net/snmp`).
fn guest_icmp(vm: &mut TestVm, name: &str) -> u64 {
    let lines = vm.must("grep ^Icmp: /proc/net/snmp");
    let [keys, values] = lines.as_slice() else {
        panic!("unexpected /proc/net/snmp: {lines:?}");
    };
    let at = keys
        .split_whitespace()
        .position(|k| k == name)
        .unwrap_or_else(|| panic!("no {name} in {keys}"));
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// Attaches the pod with `model` for a QEMU of `vcpus` vCPUs and `queues` queue pairs, boots
/// it on the handed-over descriptors with the guest configured from `ip=`, and checks what
/// the guest sees and that it answers ping; then detaches.
async fn boot_and_ping(model: InterworkingModel, vcpus: usize, queues: usize) {
    let fx = PodFixture::new();
    let before = fx.pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let config = NetworkConfig {
        model,
        ..NetworkConfig::default()
    };
    let mut network = Network::create(
        dir.path().join("state.json"),
        "qemu",
        NetnsSource::Given(fx.pod.netns().clone()),
        config,
    )
    .unwrap();
    let qemu = Qemu::new(QemuConfig {
        vcpus,
        queues,
        ..QemuConfig::default()
    });
    let (ids, skipped) = network.add_endpoints(&qemu, None).await.unwrap();
    assert_eq!((ids.len(), skipped.len()), (1, 0));
    let devices = qemu.take_devices();
    let args = qemu.command_line(&devices).unwrap();
    let ip = GuestNetwork::from_state(network.sandbox().state())
        .kernel_ip(None, &[])
        .unwrap();
    assert_eq!(ip, "ip=10.200.0.2::10.200.0.1:255.255.255.0::eth0:off");

    let fds = descriptors(&devices);
    assert_eq!(fds.len(), queues, "one descriptor per queue pair, no vhost");
    let mut vm = TestVm::boot(fx.pod.netns(), vcpus, &ip, &args, &fds);
    // From here only QEMU holds the queues.
    drop(fds);
    drop(devices);

    let eth0 = vm
        .boot_report
        .iter()
        .find(|i| i.name == "eth0")
        .unwrap_or_else(|| panic!("no eth0 in the guest: {:?}", vm.boot_report))
        .clone();
    assert_eq!(eth0.mac, PodFixture::POD_MAC);
    assert_eq!(eth0.mtu, 1500);
    assert_eq!(
        (eth0.rx_queues, eth0.tx_queues),
        (queues as u32, queues as u32)
    );
    // The address from ip= (and, a moment later, the kernel's own IPv6 link-local one).
    assert_eq!(eth0.addresses[0], PodFixture::POD_V4, "{eth0:?}");

    let replies_before = guest_icmp(&mut vm, "OutEchoReps");
    let pod_ip: IpAddr = "10.200.0.2".parse().unwrap();
    let report = ping_until_answered(fx.host.netns(), pod_ip, 3).await;
    assert_eq!(report.received, 3, "{report:?}");
    // The guest, not the pod's own stack, answered.
    assert!(guest_icmp(&mut vm, "OutEchoReps") >= replies_before + 4);
    // And the guest reaches the pod's gateway through its default route.
    vm.must("ping -c 1 -W 10 10.200.0.1");

    assert!(vm.power_off().success());
    network.teardown().await.unwrap();
    assert_same_snapshot(&before, &fx.pod.snapshot());
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root, a real kernel and QEMU: run with --features root-tests"
)]
async fn tcfilter_with_one_and_two_queue_pairs_boots_and_answers_ping() {
    boot_and_ping(InterworkingModel::TcFilter, 1, 1).await;
    boot_and_ping(InterworkingModel::TcFilter, 2, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root, a real kernel and QEMU: run with --features root-tests"
)]
async fn macvtap_with_one_and_two_queue_pairs_boots_and_answers_ping() {
    boot_and_ping(InterworkingModel::Macvtap, 1, 1).await;
    boot_and_ping(InterworkingModel::Macvtap, 2, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root, a real kernel and QEMU: run with --features root-tests"
)]
async fn qmp_hot_adds_and_removes_a_second_interface_of_a_running_guest() {
    use sandbox_net::vmm::qmp::Qmp;
    use sandbox_net_netns::ScanOptions;
    use sandbox_net_persist::IfName;

    let fx = PodFixture::new();
    add_second_pod_link(&fx);
    let before = fx.pod.snapshot();
    let dir = tempfile::tempdir().unwrap();
    let mut network = Network::create(
        dir.path().join("state.json"),
        "hotplug",
        NetnsSource::Given(fx.pod.netns().clone()),
        NetworkConfig::default(),
    )
    .unwrap();
    // The VM starts with eth0 only.
    let scan = fx
        .pod
        .netns()
        .rtnl()
        .await
        .unwrap()
        .scan(&ScanOptions::default())
        .await
        .unwrap();
    let eth0 = scan
        .interfaces
        .iter()
        .find(|i| i.link.name.as_str() == "eth0")
        .unwrap()
        .clone();
    let eth1_mac = scan
        .interfaces
        .iter()
        .find(|i| i.link.name.as_str() == "eth1")
        .unwrap()
        .link
        .mac
        .unwrap();
    let cold = Qemu::new(QemuConfig::default());
    network
        .add_endpoints(&cold, Some(vec![eth0]))
        .await
        .unwrap();
    let devices = cold.take_devices();
    let ip = GuestNetwork::from_state(network.sandbox().state())
        .kernel_ip(Some("eth0"), &[])
        .unwrap();
    let mut vm = TestVm::boot(
        fx.pod.netns(),
        1,
        &ip,
        &cold.command_line(&devices).unwrap(),
        &descriptors(&devices),
    );
    drop(devices);
    let with_eth0 = fx.pod.snapshot();

    // Hot-add eth1 through QMP; the library picks its index.
    let qemu = Qemu::with_qmp(QemuConfig::default(), Qmp::connect(&vm.qmp).unwrap());
    let eth1 = IfName::new("eth1").unwrap();
    let (ids, _) = network
        .hot_add(&qemu, Some(std::slice::from_ref(&eth1)))
        .await
        .unwrap();
    assert_eq!(ids.len(), 1);
    let record = network.sandbox().state().endpoints[1].clone();
    assert_eq!((record.index, record.attached), (1, true));
    let seen = vm.wait_for_interface("eth1", std::time::Duration::from_secs(120));
    assert_eq!(seen.mac, eth1_mac.to_string());
    // The guest is told its address from the guest configuration.
    let config = GuestNetwork::from_state(network.sandbox().state());
    let guest_eth1 = config.interfaces.iter().find(|i| i.name == eth1).unwrap();
    assert_eq!(guest_eth1.mac, eth1_mac);
    for address in &guest_eth1.addresses {
        vm.must(&format!(
            "ip addr add {}/{} dev eth1",
            address.address, address.prefix_len
        ));
    }
    vm.must("ip link set eth1 up");
    let report = ping_until_answered(fx.host.netns(), "10.201.0.2".parse().unwrap(), 3).await;
    assert_eq!(report.received, 3, "{report:?}");

    // Hot-remove: the guest releases the device, the pod is back to eth0 alone.
    network.hot_remove(&qemu, &ids[0]).await.unwrap();
    assert!(
        !vm.interfaces().iter().any(|i| i.name == "eth1"),
        "{:?}",
        vm.interfaces()
    );
    assert_eq!(network.sandbox().state().endpoints.len(), 1);
    assert_same_snapshot(&with_eth0, &fx.pod.snapshot());

    // Plugged again: a new endpoint, the same free index, new QEMU ids.
    let (again, _) = network
        .hot_add(&qemu, Some(std::slice::from_ref(&eth1)))
        .await
        .unwrap();
    assert_ne!(again, ids);
    assert_eq!(network.sandbox().state().endpoints[1].index, 1);
    vm.wait_for_interface("eth1", std::time::Duration::from_secs(120));

    assert!(vm.power_off().success());
    network.teardown().await.unwrap();
    assert_same_snapshot(&before, &fx.pod.snapshot());
}
