//! Physical NICs: PCI addresses, the VFIO binding against a stand-in sysfs tree, and ethtool
//! detection on a real veth.
#![allow(clippy::unwrap_used)]

use std::{fs, path::Path};

use sandbox_net_endpoints::{
    AttachOptions, Capabilities, Endpoint, EndpointVariant, Hypervisor, HypervisorConfig,
    HypervisorError, NetDevice, Plug,
    physical::{PciAddress, VfioBinding, VfioError, ethtool_bus_info, pci_address_from_bus_info},
    testing::{self, STAND_IN_BDF as BDF, StandInNicDriver, StandInSysfs, StandInVmm},
};
use sandbox_net_interworking::{InterworkingModel, NetnsHandles, Step, TapOptions};
use sandbox_net_netns::{
    Rtnl,
    testing::{PodFixture, TestNetns, assert_same_snapshot},
};
use sandbox_net_persist::{
    IfName, NetnsId,
    state::{EndpointRecord, NetnsRecord, SandboxState},
    store::StateStore,
};

fn bdf() -> PciAddress {
    BDF.parse().unwrap()
}

fn stand_in_pci_tree(iommu: bool) -> StandInSysfs {
    StandInSysfs::new(iommu)
}

#[test]
fn pci_addresses_are_checked() {
    for good in [
        "0000:00:03.0",
        "0000:af:1f.7",
        "10000:e1:00.1",
        "ffff:ff:00.0",
    ] {
        let address: PciAddress = good.parse().unwrap();
        assert_eq!(address.to_string(), good);
        assert_eq!(pci_address_from_bus_info(good), Some(address));
    }
    // Upper case is accepted and stored as sysfs spells it.
    assert_eq!(
        "0000:AF:00.1".parse::<PciAddress>().unwrap().as_str(),
        "0000:af:00.1"
    );
    for bad in [
        "",
        "N/A",
        "platform",
        "usb-0000:00:14.0-1",
        "virtio0",
        "0000:00:03",
        "00:03.0",
        "000:00:03.0",
        "0000:000:03.0",
        "0000:00:3.0",
        "0000:00:20.0",
        "0000:00:03.8",
        "0000:00:03.00",
        "0000:0g:03.0",
        "0000:00:03.0\n",
        " 0000:00:03.0",
        "0000:00:03.0:1",
        "+000:00:03.0",
        "123456789:00:03.0",
    ] {
        assert_eq!(pci_address_from_bus_info(bad), None, "{bad:?}");
    }
    assert_eq!(
        "N/A".parse::<PciAddress>().unwrap_err().to_string(),
        "invalid PCI address \"N/A\": expected domain:bus:device.function in hex, e.g. 0000:00:03.0"
    );
}

#[test]
fn pci_addresses_serialize_as_strings_and_are_checked_on_load() {
    let binding = VfioBinding {
        bdf: bdf(),
        original_driver: Some("e1000e".into()),
        original_override: None,
    };
    let json = serde_json::to_string(&binding).unwrap();
    assert_eq!(
        json,
        r#"{"bdf":"0000:00:03.0","original_driver":"e1000e","original_override":null}"#
    );
    assert_eq!(serde_json::from_str::<VfioBinding>(&json).unwrap(), binding);
    assert!(serde_json::from_str::<PciAddress>(r#""../../etc""#).is_err());
}

#[test]
fn reads_driver_override_ids_and_iommu_group() {
    let tree = stand_in_pci_tree(true);
    let sysfs = tree.sysfs();
    assert_eq!(sysfs.driver(&bdf()).unwrap().as_deref(), Some("e1000e"));
    assert_eq!(sysfs.driver_override(&bdf()).unwrap(), None, "(null)");
    // The kernel's trailing newline is not part of the ids (Kata runtime-rs keeps it).
    assert_eq!(
        sysfs.vendor_device(&bdf()).unwrap(),
        ("0x8086".to_owned(), "0x10d3".to_owned())
    );
    assert_eq!(sysfs.iommu_group(&bdf()).unwrap(), 7);
    assert_eq!(
        sysfs.vfio_device_path(&bdf()).unwrap(),
        Path::new("/dev/vfio/7")
    );

    fs::write(tree.device().join("driver_override"), "vfio-pci\n").unwrap();
    assert_eq!(
        sysfs.driver_override(&bdf()).unwrap().as_deref(),
        Some("vfio-pci")
    );
    fs::write(tree.device().join("driver_override"), "\n").unwrap();
    assert_eq!(sysfs.driver_override(&bdf()).unwrap(), None, "empty");
    tree.set_driver(None);
    assert_eq!(sysfs.driver(&bdf()).unwrap(), None, "no driver link");
}

#[test]
fn a_missing_device_is_named() {
    let tree = stand_in_pci_tree(true);
    let other: PciAddress = "0000:00:04.0".parse().unwrap();
    let err = tree.sysfs().driver(&other).unwrap_err();
    assert!(matches!(err, VfioError::NoDevice { .. }), "{err:?}");
    assert_eq!(err.errno(), Some(libc::ENODEV));
    assert_eq!(
        err.to_string(),
        format!(
            "no PCI device 0000:00:04.0: {}/bus/pci/devices/0000:00:04.0 does not exist",
            tree.root().display()
        )
    );
}

#[test]
fn bind_writes_the_override_unbinds_and_probes() {
    let tree = stand_in_pci_tree(true);
    let binding = tree.sysfs().bind_vfio(&bdf()).unwrap();
    assert_eq!(
        binding,
        VfioBinding {
            bdf: bdf(),
            original_driver: Some("e1000e".into()),
            original_override: None,
        }
    );
    assert_eq!(
        tree.read("devices/0000:00:03.0/driver_override"),
        "vfio-pci"
    );
    assert_eq!(tree.read("drivers/e1000e/unbind"), BDF);
    assert_eq!(tree.read("drivers_probe"), BDF);
    // Binding is the kernel's job after the probe: no direct bind, nothing put back.
    assert_eq!(tree.read("drivers/vfio-pci/bind"), "");
    assert_eq!(tree.read("drivers/e1000e/bind"), "");
}

#[test]
fn bind_of_a_device_without_driver_skips_the_unbind() {
    let tree = stand_in_pci_tree(true);
    tree.set_driver(None);
    let binding = tree.sysfs().bind_vfio(&bdf()).unwrap();
    assert_eq!(binding.original_driver, None);
    assert_eq!(
        tree.read("devices/0000:00:03.0/driver_override"),
        "vfio-pci"
    );
    assert_eq!(tree.read("drivers/e1000e/unbind"), "");
    assert_eq!(tree.read("drivers_probe"), BDF);
}

#[test]
fn a_device_without_iommu_group_is_refused_before_anything_is_written() {
    let tree = stand_in_pci_tree(false);
    let before = tree.files();
    let err = tree.sysfs().bind_vfio(&bdf()).unwrap_err();
    assert!(
        matches!(&err, VfioError::NoIommuGroup { bdf: b, .. } if *b == bdf()),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "cannot pass PCI device 0000:00:03.0 to the VM: it has no IOMMU group \
             ({}/bus/pci/devices/0000:00:03.0/iommu_group is missing); \
             is the IOMMU on (intel_iommu=on or amd_iommu=on)?",
            tree.root().display()
        )
    );
    assert_eq!(tree.files(), before, "nothing written");
}

#[test]
fn an_unreadable_override_is_refused_before_any_write() {
    let tree = stand_in_pci_tree(true);
    let override_path = tree.device().join("driver_override");
    fs::remove_file(&override_path).unwrap();
    fs::create_dir(&override_path).unwrap();
    let before = tree.files();
    let err = tree.sysfs().bind_vfio(&bdf()).unwrap_err();
    // driver_override cannot even be read: refused before any write.
    assert!(matches!(err, VfioError::Read { .. }), "{err:?}");
    assert_eq!(err.errno(), Some(libc::EISDIR));
    assert_eq!(tree.files(), before);
}

#[test]
fn a_failed_probe_puts_the_original_driver_back() {
    let tree = stand_in_pci_tree(true);
    // A directory where drivers_probe should be: writing to it fails with EISDIR.
    let probe = tree.root().join("bus/pci/drivers_probe");
    fs::remove_file(&probe).unwrap();
    fs::create_dir(&probe).unwrap();

    let err = tree.sysfs().bind_vfio(&bdf()).unwrap_err();
    assert!(matches!(err, VfioError::Write { .. }), "{err:?}");
    assert_eq!(err.errno(), Some(libc::EISDIR));
    assert_eq!(
        err.to_string(),
        format!("failed to write {BDF} to {}", probe.display())
    );
    // The steps before the failure happened, then the rollback: override cleared again
    // (it was "(null)"), and e1000e bound again.
    assert_eq!(tree.read("drivers/e1000e/unbind"), BDF);
    assert_eq!(tree.read("devices/0000:00:03.0/driver_override"), "\n");
    assert_eq!(tree.read("drivers/e1000e/bind"), BDF);
    assert_eq!(tree.read("drivers/vfio-pci/bind"), "");
}

#[test]
fn a_failed_rollback_is_reported_with_the_failed_step() {
    let tree = stand_in_pci_tree(true);
    for path in ["drivers_probe", "drivers/e1000e/bind"] {
        let path = tree.root().join("bus/pci").join(path);
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
    }
    let err = tree.sysfs().bind_vfio(&bdf()).unwrap_err();
    let VfioError::BindRollback {
        bdf: failed,
        rollback,
        source,
    } = &err
    else {
        panic!("expected BindRollback, got {err:?}");
    };
    assert_eq!(*failed, bdf());
    assert!(matches!(&**source, VfioError::Write { path, .. } if path.ends_with("drivers_probe")));
    assert_eq!(rollback.errors.len(), 1, "{rollback:?}");
    assert!(
        matches!(&rollback.errors[0], VfioError::Write { path, .. } if path.ends_with("e1000e/bind"))
    );
    // The override was still put back.
    assert_eq!(tree.read("devices/0000:00:03.0/driver_override"), "\n");
    assert_eq!(err.errno(), Some(libc::EISDIR));
}

#[test]
fn unbind_leaves_vfio_pci_and_binds_the_original_driver() {
    let tree = stand_in_pci_tree(true);
    let sysfs = tree.sysfs();
    let binding = sysfs.bind_vfio(&bdf()).unwrap();
    // What the kernel does after drivers_probe.
    tree.set_driver(Some("vfio-pci"));
    sysfs.unbind_vfio(&binding).unwrap();
    assert_eq!(
        tree.read("devices/0000:00:03.0/driver_override"),
        "\n",
        "cleared"
    );
    assert_eq!(tree.read("drivers/vfio-pci/unbind"), BDF);
    assert_eq!(tree.read("drivers/e1000e/bind"), BDF);
}

#[test]
fn unbind_writes_back_a_previous_override() {
    let tree = stand_in_pci_tree(true);
    tree.set_driver(Some("vfio-pci"));
    let binding = VfioBinding {
        bdf: bdf(),
        original_driver: Some("e1000e".into()),
        original_override: Some("e1000e".into()),
    };
    tree.sysfs().unbind_vfio(&binding).unwrap();
    assert_eq!(tree.read("devices/0000:00:03.0/driver_override"), "e1000e");
    assert_eq!(tree.read("drivers/vfio-pci/unbind"), BDF);
    assert_eq!(tree.read("drivers/e1000e/bind"), BDF);
}

#[test]
fn unbind_on_the_original_driver_unbinds_nothing() {
    // A second unbind (after a restart, say): the device is on e1000e already.
    let tree = stand_in_pci_tree(true);
    let binding = VfioBinding {
        bdf: bdf(),
        original_driver: Some("e1000e".into()),
        original_override: None,
    };
    tree.sysfs().unbind_vfio(&binding).unwrap();
    assert_eq!(tree.read("devices/0000:00:03.0/driver_override"), "\n");
    assert_eq!(tree.read("drivers/e1000e/unbind"), "");
    assert_eq!(tree.read("drivers/e1000e/bind"), "");
}

#[test]
fn unbind_continues_past_failures_and_returns_them_all() {
    let tree = stand_in_pci_tree(true);
    tree.set_driver(Some("vfio-pci"));
    for path in [
        "devices/0000:00:03.0/driver_override",
        "drivers/e1000e/bind",
    ] {
        let path = tree.root().join("bus/pci").join(path);
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
    }
    let binding = VfioBinding {
        bdf: bdf(),
        original_driver: Some("e1000e".into()),
        original_override: None,
    };
    let err = tree.sysfs().unbind_vfio(&binding).unwrap_err();
    assert_eq!(err.bdf, bdf());
    assert_eq!(err.errors.len(), 2, "{err:?}");
    assert!(
        matches!(&err.errors[0], VfioError::Write { path, .. } if path.ends_with("driver_override"))
    );
    assert!(
        matches!(&err.errors[1], VfioError::Write { path, .. } if path.ends_with("e1000e/bind"))
    );
    // The step between the two failures still ran.
    assert_eq!(tree.read("drivers/vfio-pci/unbind"), BDF);
    assert_eq!(err.errno(), Some(libc::EISDIR));
    let root = tree.root().display();
    // The count, then each failure's whole chain.
    assert_eq!(
        sandbox_net_netns::error_chain(&err),
        format!(
            "failed to give PCI device {BDF} back to its original driver: 2 failures: \
             (1) failed to write \"\\n\" to {root}/bus/pci/devices/{BDF}/driver_override: Is a directory (os error 21); \
             (2) failed to write {BDF} to {root}/bus/pci/drivers/e1000e/bind: Is a directory (os error 21)"
        )
    );
}

#[test]
fn unbind_refuses_a_driver_name_that_is_a_path() {
    let tree = stand_in_pci_tree(true);
    tree.set_driver(None);
    let binding = VfioBinding {
        bdf: bdf(),
        original_driver: Some("../../../etc".into()),
        original_override: None,
    };
    let err = tree.sysfs().unbind_vfio(&binding).unwrap_err();
    assert!(
        matches!(&err.errors[..], [VfioError::InvalidDriverName { name, .. }] if name == "../../../etc"),
        "{err:?}"
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn ethtool_on_a_veth_is_not_physical() {
    sandbox_net_netns::testing::require_root();
    let pod = PodFixture::new();
    let netns = pod.pod.netns();
    let info = ethtool_bus_info(netns, &IfName::new(PodFixture::POD_IF).unwrap())
        .await
        .unwrap();
    assert_eq!(info.driver, "veth");
    assert_eq!(info.bus_info, "", "veth has no bus");
    assert_eq!(info.pci_address(), None, "not physical");
    assert_eq!(pci_address_from_bus_info(&info.bus_info), None);
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn ethtool_errors_mean_not_physical() {
    sandbox_net_netns::testing::require_root();
    let pod = PodFixture::new();
    let netns = pod.pod.netns();
    // No such link: ENODEV.
    assert_eq!(
        ethtool_bus_info(netns, &IfName::new("nope0").unwrap()).await,
        None
    );
    // Loopback has no driver info: EOPNOTSUPP.
    assert_eq!(
        ethtool_bus_info(netns, &IfName::new("lo").unwrap()).await,
        None
    );
}

/// Waits (up to 5 s) until the stand-in function is on `driver`, as the stand-in kernel
/// driver puts it after a write.
/// The step that binds the stand-in function, as recorded before anything is written.
fn bind_step() -> Step {
    Step::BindVfio {
        bdf: bdf(),
        original_driver: Some("e1000e".into()),
        original_override: None,
    }
}

/// A VMM that refuses every device once the stand-in function is on vfio-pci: the attach
/// fails after the binding was made.
struct RefusingOnceBound<'a> {
    vmm: StandInVmm,
    sysfs: &'a StandInSysfs,
}

impl Hypervisor for RefusingOnceBound<'_> {
    fn capabilities(&self) -> Capabilities {
        self.vmm.capabilities()
    }

    fn config(&self) -> HypervisorConfig {
        self.vmm.config()
    }

    async fn add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        self.sysfs.wait_for_driver("vfio-pci");
        self.vmm.add_device(device).await
    }

    async fn hot_add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        self.add_device(device).await
    }

    async fn hot_remove_device(
        &self,
        endpoint: &sandbox_net_endpoints::EndpointId,
    ) -> Result<(), HypervisorError> {
        self.vmm.hot_remove_device(endpoint).await
    }
}

/// The pod's eth0 as a physical endpoint of the stand-in function.
async fn nic(fx: &PodFixture) -> Endpoint {
    let eps = testing::endpoints(fx.pod.netns()).await;
    Endpoint::new(
        0,
        EndpointVariant::Physical { pci: bdf() },
        eps[0].interface.clone(),
    )
}

/// A pod whose eth0 stands for the NIC of the stand-in PCI tree (on e1000e), the host
/// namespace its stand-in driver registers the interface in once the NIC is back on it, and
/// attach options that bind through that tree.
struct VfioScene {
    fx: PodFixture,
    before: serde_json::Value,
    host_initial: TestNetns,
    tree: StandInSysfs,
    _driver: StandInNicDriver,
    rtnl: Rtnl,
    opts: AttachOptions,
}

impl VfioScene {
    async fn new() -> Self {
        let fx = PodFixture::new();
        let before = fx.pod.snapshot();
        let host_initial = TestNetns::new();
        let tree = stand_in_pci_tree(true);
        let driver = StandInNicDriver::start(&tree, &fx, &host_initial);
        let rtnl = fx.pod.netns().rtnl().await.unwrap();
        let opts = AttachOptions {
            sysfs: tree.sysfs().with_driver_netns(host_initial.netns().path()),
            ..testing::options(InterworkingModel::TcFilter, TapOptions::default())
        };
        Self {
            fx,
            before,
            host_initial,
            tree,
            _driver: driver,
            rtnl,
            opts,
        }
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn an_attach_refused_after_the_vfio_binding_gives_the_nic_back() {
    let VfioScene {
        fx,
        before,
        host_initial,
        tree,
        _driver,
        rtnl,
        opts,
    } = VfioScene::new().await;
    let kernel = NetnsHandles {
        netns: fx.pod.netns(),
        rtnl: &rtnl,
    };
    let vmm = RefusingOnceBound {
        vmm: StandInVmm::new().with_queues(1).refusing("no slot left"),
        sysfs: &tree,
    };
    let mut nic = nic(&fx).await;
    let mut recorded = Vec::new();
    let err = nic
        .attach_recorded(kernel, &vmm, &opts, Plug::Cold, &mut |e| {
            // Recorded before sysfs is touched.
            assert_eq!(
                tree.read("devices/0000:00:03.0/driver_override"),
                "(null)\n"
            );
            recorded.push(e.steps.clone());
            Ok(())
        })
        .await
        .unwrap_err();
    assert_eq!(recorded, [vec![bind_step()]]);
    let chain = sandbox_net_netns::error_chain(&err);
    assert!(
        chain.contains(&format!("failed to attach endpoint {}", nic.id))
            && chain.contains("no slot left"),
        "{chain}"
    );
    assert_eq!(
        err.failures.len(),
        1,
        "only the refusal: the binding was undone: {:?}",
        err.failures
    );
    // Bound (the probe was written), then given back: override cleared, vfio-pci left,
    // e1000e bound again, and the NIC back in the pod as it was.
    assert_eq!(tree.read("drivers_probe"), BDF);
    assert_eq!(tree.read("devices/0000:00:03.0/driver_override"), "\n");
    assert_eq!(tree.read("drivers/vfio-pci/unbind"), BDF);
    assert_eq!(tree.read("drivers/e1000e/bind"), BDF);
    tree.wait_for_driver("e1000e");
    assert_eq!(nic.steps, [], "nothing left to undo");
    assert!(!nic.attached);
    assert_eq!(host_initial.link_names(), ["lo"]);
    assert_same_snapshot(&before, &fx.pod.snapshot());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and a real kernel: run with --features root-tests"
)]
async fn a_vfio_binding_in_a_state_file_is_undone_by_teardown() {
    let VfioScene {
        fx,
        before,
        host_initial,
        tree,
        _driver,
        rtnl,
        opts,
    } = VfioScene::new().await;
    let kernel = NetnsHandles {
        netns: fx.pod.netns(),
        rtnl: &rtnl,
    };
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path().join("state.json")).unwrap();
    let netns = NetnsRecord {
        path: fx.pod.netns().path().to_path_buf(),
        id: NetnsId { dev: 0, ino: 0 },
        created_by_us: false,
    };
    // As this version records the binding (a step), and as earlier ones did (a `vfio` field
    // beside the steps).
    for old_format in [false, true] {
        let vmm = StandInVmm::new().with_queues(1);
        let mut nic = nic(&fx).await;
        nic.attach(kernel, &vmm, &opts, Plug::Cold).await.unwrap();
        tree.wait_for_driver("vfio-pci");
        assert_eq!(fx.pod.link_names(), ["lo"], "old format: {old_format}");
        let mut state = SandboxState::new("s", netns.clone(), InterworkingModel::TcFilter);
        state.endpoints.push(EndpointRecord::from(&nic));
        store.save(&state).unwrap();
        if old_format {
            let path = dir.path().join("state.json");
            let mut doc: serde_json::Value =
                serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
            let endpoint = &mut doc["endpoints"][0];
            assert_eq!(endpoint["steps"][0]["op"], "bind_vfio");
            endpoint["steps"] = serde_json::json!([]);
            endpoint["vfio"] = serde_json::json!({"bdf": BDF, "original_driver": "e1000e", "original_override": null});
            fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        }
        // A later process: the VM is gone, the endpoint is what the file says.
        drop(nic);
        vmm.shutdown();
        let loaded = store.load().unwrap().state;
        let mut nic = Endpoint::try_from(&loaded.endpoints[0]).unwrap();
        assert_eq!(nic.steps, [bind_step()], "old format: {old_format}");
        nic.teardown(Some(kernel), &opts).await.unwrap();
        assert_eq!(nic.steps, [], "old format: {old_format}");
        assert_eq!(tree.read("devices/0000:00:03.0/driver_override"), "\n");
        assert_eq!(tree.read("drivers/vfio-pci/unbind"), BDF);
        assert_eq!(tree.read("drivers/e1000e/bind"), BDF);
        assert_eq!(host_initial.link_names(), ["lo"]);
        assert_same_snapshot(&before, &fx.pod.snapshot());
        // The stand-in files keep the last write: cleared for the next round.
        for file in ["drivers/vfio-pci/unbind", "drivers/e1000e/bind"] {
            fs::write(tree.root().join("bus/pci").join(file), "").unwrap();
        }
    }
}
