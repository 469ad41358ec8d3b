//! Test support (feature `testing`, for this crate's and downstream tests and benches; never in
//! a release build): the one stand-in VMM, the stand-in sysfs tree of a PCI NIC and the
//! stand-in kernel driver that acts on it, and the attach options and endpoints the tests
//! build.
//!
//! The stand-ins exist because neither can exist on the build machines: no VMM is started by
//! these tests (the QEMU tests boot a real one), and there is no PCI NIC to hand over.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Mutex,
};

use sandbox_net_guest::{Guest, GuestConfig, GuestStats, packet::Identity};
use sandbox_net_interworking::{InterworkingModel, TapOptions};
use sandbox_net_netns::{
    Netns, ScanOptions,
    testing::{PodFixture, TestNetns},
};

use crate::{
    AttachOptions, Backend, Capabilities, ClassifyOptions, Endpoint, EndpointId, Hypervisor,
    HypervisorConfig, HypervisorError, NetDevice, endpoints_from_scan, physical::SysfsPci,
};

/// What the stand-in VMM does with a device's descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDevice {
    /// Keep them, as a VMM holds its queues until it stops.
    Keep,
    /// Close them at once, as when a VMM opens persistent taps by name later.
    Drop,
    /// Run the user-space guest on the queues, answering ARP, NDP and ping for
    /// [`GUEST_IPV4`] and [`GUEST_IPV6`] with the device's MAC.
    RunGuest,
}

/// The IPv4 address the stand-in's guests answer for.
pub const GUEST_IPV4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
/// The IPv6 address the stand-in's guests answer for.
pub const GUEST_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2);

/// One device the stand-in VMM holds.
#[derive(Debug)]
struct Held {
    /// `tap NAME xQUEUES`, `macvtap NAME xQUEUES`, `vhost-user SOCKET` or `vfio BDF DEVICE`.
    description: String,
    /// The device itself, while kept.
    device: Option<NetDevice>,
    /// The guest running on its queues.
    guest: Option<Guest>,
    /// The vhost-net descriptors it holds (unless kept in `device`).
    vhost: Vec<OwnedFd>,
    /// What `VHOST_GET_FEATURES` answered on each vhost-net descriptor, as QEMU asks first.
    vhost_features: Vec<u64>,
}

/// A VMM stand-in with knobs: queue pairs, multi-queue, a limiter of its own or rates for the
/// host to apply, vhost-net, what it does with the descriptors, and refusing devices.
/// It records every hot-plug operation.
#[derive(Debug)]
pub struct StandInVmm {
    /// Queue pairs asked for per device.
    pub queues: usize,
    /// Whether it drives more than one queue pair.
    pub multi_queue: bool,
    /// Whether it has a rate limiter of its own (then the host applies none).
    pub builtin_limiter: bool,
    /// Rate into the VM, bits/s (0: none).
    pub rx: u64,
    /// Rate out of the VM, bits/s (0: none).
    pub tx: u64,
    /// Whether it asks for vhost-net descriptors (the build machines have no vhost-net).
    pub vhost_net: bool,
    /// The vhost-net device it asks for.
    pub vhost_net_path: PathBuf,
    /// The addresses its guests answer for (with [`OnDevice::RunGuest`]).
    pub guest_ipv4: Vec<Ipv4Addr>,
    /// The IPv6 addresses its guests answer for.
    pub guest_ipv6: Vec<Ipv6Addr>,
    /// What it does with the descriptors.
    pub on_device: OnDevice,
    /// Refuse every device with this reason.
    pub refuse: Option<String>,
    devices: Mutex<HashMap<EndpointId, Held>>,
    hot_ops: Mutex<Vec<String>>,
    /// The devices taken, in the order they arrived (`tap tap0_kata x1`, ...).
    arrivals: Mutex<Vec<String>>,
}

impl Default for StandInVmm {
    fn default() -> Self {
        Self::new()
    }
}

impl StandInVmm {
    /// Like QEMU without vhost-net: multi-queue, one queue pair, no limiter of its own, no
    /// rates; it keeps the descriptors.
    pub fn new() -> Self {
        Self {
            queues: 1,
            multi_queue: true,
            builtin_limiter: false,
            rx: 0,
            tx: 0,
            vhost_net: false,
            vhost_net_path: PathBuf::from(sandbox_net_netns::VHOST_NET_PATH),
            guest_ipv4: vec![GUEST_IPV4],
            guest_ipv6: vec![GUEST_IPV6],
            on_device: OnDevice::Keep,
            refuse: None,
            devices: Mutex::new(HashMap::new()),
            hot_ops: Mutex::new(Vec::new()),
            arrivals: Mutex::new(Vec::new()),
        }
    }

    /// Asks for `queues` queue pairs per device.
    pub fn with_queues(mut self, queues: usize) -> Self {
        self.queues = queues;
        self
    }

    /// Drives one queue pair only.
    pub fn single_queue(mut self) -> Self {
        self.multi_queue = false;
        self
    }

    /// Configured with these rates (bits/s), applied on the host unless it has its own limiter.
    pub fn with_limits(mut self, rx: u64, tx: u64) -> Self {
        self.rx = rx;
        self.tx = tx;
        self
    }

    /// Has a rate limiter of its own (as Cloud Hypervisor and Firecracker).
    pub fn with_builtin_limiter(mut self) -> Self {
        self.builtin_limiter = true;
        self
    }

    /// Asks for vhost-net descriptors.
    pub fn with_vhost_net(mut self) -> Self {
        self.vhost_net = true;
        self
    }

    /// Asks for vhost-net descriptors of this device (a missing one proves the error path).
    pub fn with_vhost_net_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.vhost_net = true;
        self.vhost_net_path = path.into();
        self
    }

    /// Its guests answer for these addresses instead of [`GUEST_IPV4`] and [`GUEST_IPV6`].
    pub fn with_guest_addresses(mut self, ipv4: Vec<Ipv4Addr>, ipv6: Vec<Ipv6Addr>) -> Self {
        self.guest_ipv4 = ipv4;
        self.guest_ipv6 = ipv6;
        self
    }

    /// Does this with the descriptors.
    pub fn on_device(mut self, on_device: OnDevice) -> Self {
        self.on_device = on_device;
        self
    }

    /// Refuses every device.
    pub fn refusing(mut self, reason: &str) -> Self {
        self.refuse = Some(reason.to_owned());
        self
    }

    fn take(&self, op: &'static str, device: NetDevice) -> Result<(), HypervisorError> {
        if let Some(reason) = &self.refuse {
            return Err(HypervisorError {
                op,
                endpoint: device.endpoint,
                reason: reason.clone(),
            });
        }
        let endpoint = device.endpoint.clone();
        let fail = |reason: String| HypervisorError {
            op,
            endpoint: endpoint.clone(),
            reason,
        };
        let (description, vhost_features) = match &device.backend {
            Backend::Tap {
                name,
                queues,
                vhost,
            } => (format!("tap {name} x{}", queues.len()), check_vhost(vhost)),
            Backend::Macvtap {
                name,
                queues,
                vhost,
            } => (
                format!("macvtap {name} x{}", queues.len()),
                check_vhost(vhost),
            ),
            Backend::VhostUser { socket } => {
                (format!("vhost-user {}", socket.display()), Ok(Vec::new()))
            }
            Backend::Vfio { bdf, device } => {
                (format!("vfio {bdf} {}", device.display()), Ok(Vec::new()))
            }
        };
        let vhost_features = vhost_features.map_err(&fail)?;
        let mut held = Held {
            description,
            device: None,
            guest: None,
            vhost: Vec::new(),
            vhost_features,
        };
        match self.on_device {
            OnDevice::Keep => held.device = Some(device),
            OnDevice::Drop => {}
            OnDevice::RunGuest => match device.backend {
                Backend::Tap { queues, vhost, .. } | Backend::Macvtap { queues, vhost, .. } => {
                    let identity = Identity {
                        mac: device.mac,
                        ipv4: self.guest_ipv4.clone(),
                        ipv6: self.guest_ipv6.clone(),
                    };
                    let config = GuestConfig {
                        identity,
                        vnet_hdr: true,
                    };
                    let guest = Guest::start(config, queues)
                        .map_err(|e| fail(format!("the test guest did not start: {e}")))?;
                    held.guest = Some(guest);
                    held.vhost = vhost;
                }
                Backend::VhostUser { .. } | Backend::Vfio { .. } => {}
            },
        }
        self.arrivals.lock().unwrap().push(held.description.clone());
        self.devices.lock().unwrap().insert(endpoint, held);
        Ok(())
    }

    /// How the device of `endpoint` reached the VMM (`tap tap0_kata x2`, ...), if it holds one.
    pub fn device(&self, endpoint: &EndpointId) -> Option<String> {
        self.devices
            .lock()
            .unwrap()
            .get(endpoint)
            .map(|held| held.description.clone())
    }

    /// How many devices it holds.
    pub fn device_count(&self) -> usize {
        self.devices.lock().unwrap().len()
    }

    /// The counters of the guest running on the device of `endpoint`.
    pub fn guest_stats(&self, endpoint: &EndpointId) -> Option<GuestStats> {
        self.devices
            .lock()
            .unwrap()
            .get(endpoint)
            .and_then(|held| held.guest.as_ref().map(Guest::stats))
    }

    /// What each vhost-net descriptor of the device of `endpoint` answered to
    /// `VHOST_GET_FEATURES` (empty without vhost-net).
    pub fn vhost_features(&self, endpoint: &EndpointId) -> Vec<u64> {
        self.devices
            .lock()
            .unwrap()
            .get(endpoint)
            .map(|held| held.vhost_features.clone())
            .unwrap_or_default()
    }

    /// The device of `endpoint`, taken out of the VMM (its descriptors with it), if kept.
    pub fn take_device(&self, endpoint: &EndpointId) -> Option<NetDevice> {
        self.devices
            .lock()
            .unwrap()
            .get_mut(endpoint)
            .and_then(|held| held.device.take())
    }

    /// Lets go of the device of `endpoint`, as when the VM unplugs it.
    pub fn release(&self, endpoint: &EndpointId) {
        self.devices.lock().unwrap().remove(endpoint);
    }

    /// Stops: every descriptor is closed, every guest stopped, as at VM shutdown.
    pub fn shutdown(&self) {
        self.devices.lock().unwrap().clear();
    }

    /// Every device it took, in the order they arrived (`tap tap0_kata x1`, ...).
    pub fn arrivals(&self) -> Vec<String> {
        self.arrivals.lock().unwrap().clone()
    }

    /// The hot-plug operations so far: `hot-add ID`, `hot-remove ID`.
    pub fn hot_ops(&self) -> Vec<String> {
        self.hot_ops.lock().unwrap().clone()
    }
}

/// `VHOST_GET_FEATURES` on each descriptor: a VMM's first question, which only a vhost
/// descriptor answers.
fn check_vhost(vhost: &[OwnedFd]) -> Result<Vec<u64>, String> {
    vhost
        .iter()
        .map(|fd| sandbox_net_netns::vhost_features(fd.as_fd()).map_err(|e| e.to_string()))
        .collect()
}

impl Hypervisor for StandInVmm {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            multi_queue: self.multi_queue,
            rate_limiter: self.builtin_limiter,
        }
    }

    fn config(&self) -> HypervisorConfig {
        HypervisorConfig {
            queues: self.queues,
            disable_vhost_net: !self.vhost_net,
            vhost_net_path: self.vhost_net_path.clone(),
            rx_rate_limiter_max_rate: self.rx,
            tx_rate_limiter_max_rate: self.tx,
        }
    }

    async fn add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        self.take("add", device)
    }

    async fn hot_add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        self.hot_ops
            .lock()
            .unwrap()
            .push(format!("hot-add {}", device.endpoint));
        self.take("hot-add", device)
    }

    async fn hot_remove_device(&self, endpoint: &EndpointId) -> Result<(), HypervisorError> {
        self.hot_ops
            .lock()
            .unwrap()
            .push(format!("hot-remove {endpoint}"));
        self.release(endpoint);
        Ok(())
    }
}

/// Attach options for tests: `model`, taps as given, no PCI functions to bind (a sysfs root
/// that does not exist), no device group, no fault points.
pub fn options(model: InterworkingModel, tap: TapOptions) -> AttachOptions {
    AttachOptions {
        model,
        tap,
        sysfs: SysfsPci::new("/nonexistent-sysfs"),
        ..AttachOptions::default()
    }
}

/// Persistent taps (a VMM reopens them by name), as the CLI makes them.
pub fn persistent_taps() -> TapOptions {
    TapOptions {
        persist: true,
        ..TapOptions::default()
    }
}

/// The endpoints of `netns` under Kata's scan rules, classified strictly (an unsupported
/// interface fails the test) with vhost-user sockets looked for in `vhost_user_dir`.
pub async fn endpoints_in(netns: &Netns, vhost_user_dir: PathBuf) -> Vec<Endpoint> {
    let rtnl = netns.rtnl().await.unwrap();
    let scan = rtnl.scan(&ScanOptions::default()).await.unwrap();
    let classify = ClassifyOptions {
        strict: true,
        vhost_user_dir,
    };
    endpoints_from_scan(netns, &scan.interfaces, 0, &classify)
        .await
        .unwrap()
        .0
}

/// [`endpoints_in`] with no vhost-user socket directory of the test's own.
pub async fn endpoints(netns: &Netns) -> Vec<Endpoint> {
    endpoints_in(netns, std::env::temp_dir()).await
}

/// The PCI function of the stand-in sysfs tree.
pub const STAND_IN_BDF: &str = "0000:00:03.0";

/// A directory tree standing in for the sysfs of a PCI NIC (vendor `0x8086`, device `0x10d3`,
/// bound to e1000e, in IOMMU group 7 when `iommu`), because the build machines have no PCI NIC
/// to hand over:
///
/// ```text
/// bus/pci/devices/0000:00:03.0/{vendor, device, driver_override = "(null)\n"}
/// bus/pci/devices/0000:00:03.0/driver      -> ../../drivers/e1000e
/// bus/pci/devices/0000:00:03.0/iommu_group -> <root>/kernel/iommu_groups/7 (if iommu)
/// bus/pci/drivers/{e1000e, vfio-pci}/{bind, unbind}
/// bus/pci/drivers_probe
/// ```
///
/// Plain files do not act like the kernel's (no driver symlink moves by themselves): each holds
/// the last value written to it, which is what the tests check; [`StandInSysfs::set_driver`]
/// moves the symlink as the kernel would.
#[derive(Debug)]
pub struct StandInSysfs {
    dir: tempfile::TempDir,
}

impl StandInSysfs {
    /// Builds the tree in a fresh temporary directory.
    pub fn new(iommu: bool) -> Self {
        use std::fs;
        let stand_in = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        let root = stand_in.root();
        let device = stand_in.device();
        fs::create_dir_all(&device).unwrap();
        fs::write(device.join("vendor"), "0x8086\n").unwrap();
        fs::write(device.join("device"), "0x10d3\n").unwrap();
        fs::write(device.join("driver_override"), "(null)\n").unwrap();
        for driver in ["e1000e", "vfio-pci"] {
            let dir = root.join("bus/pci/drivers").join(driver);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("bind"), "").unwrap();
            fs::write(dir.join("unbind"), "").unwrap();
        }
        fs::write(root.join("bus/pci/drivers_probe"), "").unwrap();
        stand_in.set_driver(Some("e1000e"));
        if iommu {
            fs::create_dir_all(root.join("kernel/iommu_groups/7")).unwrap();
            std::os::unix::fs::symlink(
                root.join("kernel/iommu_groups/7"),
                device.join("iommu_group"),
            )
            .unwrap();
        }
        stand_in
    }

    /// The tree's root (what `/sys` is on a real machine).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A [`SysfsPci`] working on this tree.
    pub fn sysfs(&self) -> SysfsPci {
        SysfsPci::new(self.root())
    }

    /// The PCI function's directory.
    pub fn device(&self) -> PathBuf {
        self.root().join("bus/pci/devices").join(STAND_IN_BDF)
    }

    /// Waits (up to 5 s) until the function's `driver` link points at `driver`: the
    /// stand-in driver thread binds it a moment after the write that asks for it. Panics
    /// otherwise.
    pub fn wait_for_driver(&self, driver: &str) {
        let link = self.device().join("driver");
        for _ in 0..500 {
            if std::fs::read_link(&link).is_ok_and(|t| t.ends_with(driver)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the stand-in function is not on {driver}");
    }

    /// Points the function's `driver` link at `driver` (or removes it), as the kernel does
    /// when a driver binds or unbinds.
    pub fn set_driver(&self, driver: Option<&str>) {
        let link = self.device().join("driver");
        let _ = std::fs::remove_file(&link);
        if let Some(driver) = driver {
            // Relative, as the kernel's links are.
            std::os::unix::fs::symlink(format!("../../drivers/{driver}"), &link).unwrap();
        }
    }

    /// What the last write to `relative` (under `bus/pci`) left in it.
    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.root().join("bus/pci").join(relative)).unwrap()
    }

    /// Every regular file of the tree and its contents.
    pub fn files(&self) -> std::collections::BTreeMap<PathBuf, String> {
        fn walk(dir: &Path, out: &mut std::collections::BTreeMap<PathBuf, String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
                if kind.is_dir() {
                    walk(&path, out);
                } else if kind.is_file() {
                    out.insert(path.clone(), std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        let mut out = std::collections::BTreeMap::new();
        walk(self.root(), &mut out);
        out
    }
}

/// The name the stand-in driver gives the interface it registers, as a kernel driver with
/// udev's naming would (`enp0s3` for `0000:00:03.0`).
pub const STAND_IN_NIC_NAME: &str = "enp0s3";
/// The stand-in NIC's factory MAC: what its interface has when its driver registers it.
pub const STAND_IN_FACTORY_MAC: &str = "02:00:00:00:03:00";

/// The kernel's side of the stand-in PCI NIC of a [`StandInSysfs`], because the build
/// machines have no PCI NIC: a thread that watches the tree's driver files (inotify) and does
/// what the kernel does when they are written, for the NIC of a [`PodFixture`] (its `eth0`,
/// whose other end, `veth-host`, is the wire to the host namespace):
///
/// - `drivers/e1000e/unbind` (also through `devices/<bdf>/driver/unbind`): the function
///   leaves e1000e and its interface is unregistered wherever it is (the wire is deleted,
///   and with it both ends); `devices/<bdf>/net` empties;
/// - `drivers/vfio-pci/unbind`: the function leaves vfio-pci;
/// - `drivers_probe`, or `drivers/<driver>/bind`: a function without a driver is bound to
///   its `driver_override` (or to e1000e when there is none) — for e1000e, a new interface
///   [`STAND_IN_NIC_NAME`] is registered in the driver's namespace (`driver_netns`, standing
///   in for the host's initial one), with the [`STAND_IN_FACTORY_MAC`], MTU 1500, down, no
///   address, its wire end `veth-host` back in the fixture's host namespace with the
///   fixture's host MAC and addresses; `devices/<bdf>/net/enp0s3/ifindex` names it.
///
/// Stopped and joined on drop.
#[derive(Debug)]
pub struct StandInNicDriver {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandInNicDriver {
    /// Starts the stand-in driver of `sysfs`'s function, whose interface is `fx`'s `eth0`
    /// now, and registers new interfaces in `driver_netns`.
    pub fn start(sysfs: &StandInSysfs, fx: &PodFixture, driver_netns: &TestNetns) -> Self {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).unwrap();
        let bus = sysfs.root().join("bus/pci");
        let mut watched = std::collections::HashMap::new();
        for file in [
            "drivers/e1000e/bind",
            "drivers/e1000e/unbind",
            "drivers/vfio-pci/bind",
            "drivers/vfio-pci/unbind",
            "drivers_probe",
        ] {
            let wd = inotify
                .add_watch(&bus.join(file), AddWatchFlags::IN_CLOSE_WRITE)
                .unwrap();
            watched.insert(wd, file);
        }
        let kernel = StandInKernel {
            device: sysfs.device(),
            host: fx.host.name().to_owned(),
            driver_netns: driver_netns.name().to_owned(),
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                match inotify.read_events() {
                    Ok(events) => {
                        for event in events {
                            if let Some(file) = watched.get(&event.wd) {
                                kernel.written(file);
                            }
                        }
                    }
                    Err(nix::errno::Errno::EAGAIN) => {
                        std::thread::sleep(std::time::Duration::from_millis(2))
                    }
                    Err(e) => panic!("stand-in driver: inotify: {e}"),
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StandInNicDriver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the stand-in driver acts on.
struct StandInKernel {
    device: PathBuf,
    host: String,
    driver_netns: String,
}

impl StandInKernel {
    fn ip(netns: &str, args: &[&str]) {
        let out = std::process::Command::new("ip")
            .args(["-n", netns])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "stand-in driver: ip -n {netns} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn driver(&self) -> Option<String> {
        std::fs::read_link(self.device.join("driver"))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    fn set_driver(&self, driver: Option<&str>) {
        let link = self.device.join("driver");
        let _ = std::fs::remove_file(&link);
        if let Some(driver) = driver {
            std::os::unix::fs::symlink(format!("../../drivers/{driver}"), &link).unwrap();
        }
    }

    fn written(&self, file: &str) {
        match file {
            "drivers/e1000e/unbind" | "drivers/vfio-pci/unbind" => {
                let driver = file.split('/').nth(1).unwrap();
                if self.driver().as_deref() == Some(driver) {
                    self.set_driver(None);
                    if driver == "e1000e" {
                        self.unregister();
                    }
                }
            }
            "drivers_probe" => self.probe(None),
            "drivers/e1000e/bind" => self.probe(Some("e1000e")),
            "drivers/vfio-pci/bind" => self.probe(Some("vfio-pci")),
            _ => {}
        }
    }

    /// Binds a function without a driver to `asked` (a `bind` file) or to the one that
    /// matches (`drivers_probe`), as `driver_override` allows.
    fn probe(&self, asked: Option<&str>) {
        if self.driver().is_some() {
            return;
        }
        let over = std::fs::read_to_string(self.device.join("driver_override")).unwrap();
        let over = over.trim();
        let over = (!over.is_empty() && over != "(null)").then_some(over);
        let driver = match (asked, over) {
            (Some(asked), Some(over)) if asked != over => return,
            (Some(asked), _) => asked,
            (None, Some(over)) => over,
            (None, None) => "e1000e",
        };
        self.set_driver(Some(driver));
        if driver == "e1000e" {
            self.register();
        }
    }

    /// The NIC's interface goes, wherever it is: deleting its wire end deletes both.
    fn unregister(&self) {
        Self::ip(&self.host, &["link", "del", PodFixture::HOST_IF]);
        let _ = std::fs::remove_dir_all(self.device.join("net"));
    }

    /// A new interface in the driver's namespace, as a driver's probe makes it.
    fn register(&self) {
        Self::ip(
            &self.driver_netns,
            &[
                "link",
                "add",
                STAND_IN_NIC_NAME,
                "address",
                STAND_IN_FACTORY_MAC,
                "mtu",
                "1500",
                "type",
                "veth",
                "peer",
                "name",
                PodFixture::HOST_IF,
                "address",
                PodFixture::HOST_MAC,
                "netns",
                &self.host,
            ],
        );
        for args in [
            vec![
                "addr",
                "add",
                PodFixture::HOST_V4,
                "dev",
                PodFixture::HOST_IF,
            ],
            vec![
                "addr",
                "add",
                PodFixture::HOST_V6,
                "dev",
                PodFixture::HOST_IF,
                "nodad",
            ],
            vec!["link", "set", PodFixture::HOST_IF, "up"],
        ] {
            Self::ip(&self.host, &args);
        }
        // `ip -o link show` starts with the index: `7: enp0s3@if6: <...`.
        let shown = std::process::Command::new("ip")
            .args([
                "-n",
                &self.driver_netns,
                "-o",
                "link",
                "show",
                STAND_IN_NIC_NAME,
            ])
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
        let index: u32 = shown.split(':').next().unwrap().trim().parse().unwrap();
        let dir = self.device.join("net").join(STAND_IN_NIC_NAME);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ifindex"), format!("{index}\n")).unwrap();
    }
}

/// How many of `count` echo requests from inside `netns` to `dst` were answered (within two
/// seconds each), sent with the raw-socket ping of the test guest crate.
pub async fn ping_count(netns: &Netns, dst: &str, count: u16) -> u16 {
    let dst: std::net::IpAddr = dst.parse().unwrap();
    netns
        .run(move || sandbox_net_guest::ping::ping(dst, count, std::time::Duration::from_secs(2)))
        .await
        .unwrap()
        .unwrap()
        .received
}
