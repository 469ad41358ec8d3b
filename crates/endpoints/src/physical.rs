//! Physical NICs (PCI functions) handed to the VM through VFIO.
//!
//! ## Behavior
//! - Detection, [`ethtool_bus_info`]: `ETHTOOL_GDRVINFO` on the interface through a socket
//!   made inside the pod's namespace (what `ethtool -i eth0` prints there). The NIC is physical
//!   when its `bus_info` is a PCI address ([`pci_address_from_bus_info`]). Any ethtool error
//!   means "not physical" (Kata Go's rule; runtime-rs aborts the sandbox instead).
//! - Binding, [`SysfsPci::bind_vfio`]: write `vfio-pci` to the device's `driver_override`,
//!   unbind it from its driver, write its address to `drivers_probe`; the kernel then binds
//!   vfio-pci and the VMM opens `/dev/vfio/<iommu group>`. A device without an IOMMU group is
//!   refused before anything is written; when a step after the unbind fails, the original
//!   driver and `driver_override` are put back before the error is returned (kata-containers
//!   PR #13790). An endpoint first reads what it will overwrite ([`SysfsPci::vfio_binding`]),
//!   records it as a [`Step::BindVfio`], then binds ([`SysfsPci::apply_vfio_binding`]).
//! - Unbinding, [`SysfsPci::unbind_vfio`]: the original `driver_override` is written back,
//!   the device leaves vfio-pci and returns to its original driver. It continues past
//!   failures and returns all of them. The driver then registers a new network interface in
//!   the host's namespace, which [`crate::give_back::give_back`] makes the pod's again, as it
//!   was.
//! - The sysfs root is a parameter ([`SysfsPci::new`]) so that tests run against a directory
//!   tree standing in for a PCI device.
//!
//! ## Limitations
//! - `bind_vfio` does not check that vfio-pci took the device: the kernel accepts the write
//!   to `drivers_probe` even when no driver matches (vfio-pci not loaded). Check
//!   [`SysfsPci::driver`] afterwards.
//! - The other functions of the IOMMU group are not checked; the VMM can only open the group
//!   when all of them are bound to vfio-pci or to no driver (kata-containers #1259).
//! - No VF admin MAC through the PF, no `modprobe`.

use std::{
    fs::{self, OpenOptions},
    io::{self, Write as _},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use nix::sys::socket::{AddressFamily, SockFlag, SockType};
use sandbox_net_netns::{Failures, Netns, errno_in_chain, error_chain};
pub use sandbox_net_persist::pci::{PciAddress, PciAddressError};
use sandbox_net_persist::{IfName, steps::Step};
use serde::{Deserialize, Serialize};

/// The driver that hands PCI functions to user space (the VMM).
pub const VFIO_PCI_DRIVER: &str = "vfio-pci";

/// Where the kernel puts the VFIO group devices (`/dev/vfio/<group>`).
pub const VFIO_DEV_DIR: &str = "/dev/vfio";

/// What is written to `driver_override` to clear it (an empty line; `write(2)` of zero bytes
/// would not reach the kernel).
const CLEAR_OVERRIDE: &str = "\n";

/// The PCI function behind ethtool's `bus_info`, if it names one.
///
/// Kata Go's rule is "three `:`-separated parts"; this one checks the whole address, so that
/// `""` (veth, bridges), `"N/A"`, `"platform"` or `"usb-0000:00:14.0-1"` are not PCI.
pub fn pci_address_from_bus_info(bus_info: &str) -> Option<PciAddress> {
    bus_info.parse().ok()
}

/// What `ETHTOOL_GDRVINFO` says about an interface (`ethtool -i`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverInfo {
    /// The driver's name (`veth`, `e1000e`, `mlx5_core`).
    pub driver: String,
    /// Where the device sits: a PCI address for a PCI NIC, `""` for virtual links.
    pub bus_info: String,
}

impl DriverInfo {
    /// The PCI function, when `bus_info` is one: the interface is then a physical NIC.
    pub fn pci_address(&self) -> Option<PciAddress> {
        pci_address_from_bus_info(&self.bus_info)
    }
}

/// `ETHTOOL_GDRVINFO` from `linux/ethtool.h`.
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo` from `linux/ethtool.h`: the kernel fills it for `ETHTOOL_GDRVINFO`.
/// Strings are NUL-terminated within their arrays.
#[repr(C)]
#[derive(Default)]
#[allow(dead_code, reason = "the kernel's layout; only some fields are read")]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

const _: () = {
    assert!(std::mem::size_of::<EthtoolDrvinfo>() == 196);
    assert!(std::mem::offset_of!(EthtoolDrvinfo, driver) == 4);
    assert!(std::mem::offset_of!(EthtoolDrvinfo, bus_info) == 100);
    assert!(std::mem::offset_of!(EthtoolDrvinfo, regdump_len) == 192);
};

mod ioctl {
    //! The macro makes a `pub` function: kept out of the public API.
    nix::ioctl_readwrite_bad!(siocethtool, libc::SIOCETHTOOL, libc::ifreq);
}

/// Asks the interface's driver for its name and bus (`ethtool -i IFNAME` in the namespace).
///
/// Runs on a thread inside `netns`, where it opens an `AF_INET` datagram socket for the
/// `SIOCETHTOOL` ioctl. Any failure (no such link, a driver without `get_drvinfo` answering
/// `EOPNOTSUPP`, the namespace) gives `None`, logged at debug level: the interface is then
/// not physical.
#[tracing::instrument(name = "endpoints.ethtool_drvinfo", skip_all, fields(ifname = %ifname))]
pub async fn ethtool_bus_info(netns: &Netns, ifname: &IfName) -> Option<DriverInfo> {
    let name = ifname.clone();
    match netns.run(move || driver_info_here(&name)).await {
        Ok(Ok(info)) => {
            tracing::debug!(driver = %info.driver, bus_info = %info.bus_info, "ethtool driver info");
            Some(info)
        }
        Ok(Err(error)) => {
            tracing::debug!(netns = %netns.path().display(), error = %error_chain(&error),
                "ETHTOOL_GDRVINFO failed: not a physical NIC");
            None
        }
        Err(error) => {
            tracing::debug!(error = %error_chain(&error),
                "ETHTOOL_GDRVINFO not run: not a physical NIC");
            None
        }
    }
}

/// Like [`ethtool_bus_info`] for several interfaces, all on one thread in the namespace
/// (one thread instead of one per interface, which counts for pods with many interfaces).
pub async fn ethtool_bus_infos(netns: &Netns, ifnames: Vec<IfName>) -> Vec<Option<DriverInfo>> {
    let count = ifnames.len();
    match netns
        .run(move || {
            ifnames
                .iter()
                .map(|name| driver_info_here(name).ok())
                .collect::<Vec<_>>()
        })
        .await
    {
        Ok(infos) => infos,
        Err(error) => {
            tracing::debug!(error = %error_chain(&error), "ETHTOOL_GDRVINFO not run: not physical NICs");
            vec![None; count]
        }
    }
}

/// Runs inside the namespace: `SIOCETHTOOL` with `ETHTOOL_GDRVINFO` on a fresh socket.
fn driver_info_here(ifname: &IfName) -> io::Result<DriverInfo> {
    let socket = nix::sys::socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut info = EthtoolDrvinfo {
        cmd: ETHTOOL_GDRVINFO,
        ..EthtoolDrvinfo::default()
    };
    let mut request = sandbox_net_netns::ifreq_named(ifname);
    request.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: `request` is an initialised ifreq naming the interface, whose ifr_data points to
    // `info`, a live `struct ethtool_drvinfo` (the size the kernel copies back for
    // ETHTOOL_GDRVINFO) that outlives the call; `socket` is an open socket we own.
    unsafe { ioctl::siocethtool(socket.as_raw_fd(), &mut request) }?;
    Ok(DriverInfo {
        driver: c_string(&info.driver),
        bus_info: c_string(&info.bus_info),
    })
}

/// The text before the first NUL.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A failed step of reading or changing a PCI function's driver through sysfs.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// The device has no directory under `bus/pci/devices`.
    #[error("no PCI device {bdf}: {path} does not exist")]
    NoDevice {
        /// The device.
        bdf: PciAddress,
        /// Its expected sysfs directory.
        path: PathBuf,
    },
    /// The device has no IOMMU group, so VFIO cannot hand it over.
    #[error(
        "cannot pass PCI device {bdf} to the VM: it has no IOMMU group ({path} is missing); \
         is the IOMMU on (intel_iommu=on or amd_iommu=on)?"
    )]
    NoIommuGroup {
        /// The device.
        bdf: PciAddress,
        /// The missing `iommu_group` link.
        path: PathBuf,
    },
    /// A symlink could not be read.
    #[error("failed to read symlink {path}")]
    ReadLink {
        /// The symlink.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A symlink points somewhere unexpected (an `iommu_group` not ending in a number).
    #[error("unexpected target {target} of symlink {path}")]
    UnexpectedLink {
        /// The symlink.
        path: PathBuf,
        /// Where it points.
        target: PathBuf,
    },
    /// A sysfs attribute could not be read.
    #[error("failed to read {path}")]
    Read {
        /// The attribute.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A sysfs attribute could not be written.
    #[error("failed to write {} to {path}", shown(.value))]
    Write {
        /// What was written (`"\n"` clears `driver_override`).
        value: String,
        /// The attribute.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A driver name that cannot be a directory under `bus/pci/drivers` (from edited state).
    #[error("invalid driver name {name:?} for PCI device {bdf}")]
    InvalidDriverName {
        /// The device.
        bdf: PciAddress,
        /// The name.
        name: String,
    },
    /// Binding to vfio-pci failed after the device left its driver, and putting it back
    /// failed too: the device may be left without a driver.
    #[error(
        "failed to bind PCI device {bdf} to vfio-pci, and rolling back failed as well ({})",
        error_chain(.rollback)
    )]
    BindRollback {
        /// The device.
        bdf: PciAddress,
        /// What failed during the rollback.
        rollback: UnbindVfioError,
        /// The step of the binding that failed.
        #[source]
        source: Box<VfioError>,
    },
}

/// How a written value shows in a message: the clearing newline as `"\n"`.
fn shown(value: &str) -> &str {
    if value == CLEAR_OVERRIDE {
        r#""\n""#
    } else {
        value
    }
}

impl VfioError {
    /// The errno behind this error, if the kernel gave one (`ENODEV` for a missing device).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::NoDevice { .. } => Some(libc::ENODEV),
            _ => errno_in_chain(self),
        }
    }
}

/// Every step that failed while putting a PCI function back to its original driver.
#[derive(Debug, thiserror::Error)]
#[error("failed to give PCI device {bdf} back to its original driver")]
pub struct UnbindVfioError {
    /// The device.
    pub bdf: PciAddress,
    /// The failed steps, in order.
    #[source]
    pub errors: Failures<VfioError>,
}

impl UnbindVfioError {
    /// The first errno among the failed steps.
    pub fn errno(&self) -> Option<i32> {
        self.errors.iter().find_map(VfioError::errno)
    }
}

/// What [`SysfsPci::bind_vfio`] changed, so that [`SysfsPci::unbind_vfio`] can put it back,
/// also from persisted state after a restart (recorded as a [`Step::BindVfio`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfioBinding {
    /// The device.
    pub bdf: PciAddress,
    /// The driver it was bound to before (`None`: no driver).
    pub original_driver: Option<String>,
    /// Its `driver_override` before (`None`: not set).
    pub original_override: Option<String>,
}

impl VfioBinding {
    /// The binding a recorded step makes, if it is a [`Step::BindVfio`].
    pub fn of_step(step: &Step) -> Option<Self> {
        match step {
            Step::BindVfio {
                bdf,
                original_driver,
                original_override,
            } => Some(Self {
                bdf: bdf.clone(),
                original_driver: original_driver.clone(),
                original_override: original_override.clone(),
            }),
            _ => None,
        }
    }
}

impl From<VfioBinding> for Step {
    /// The binding as the step that records it.
    fn from(binding: VfioBinding) -> Self {
        Step::BindVfio {
            bdf: binding.bdf,
            original_driver: binding.original_driver,
            original_override: binding.original_override,
        }
    }
}

/// PCI devices and drivers under a sysfs root (`/sys` on a host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsPci {
    root: PathBuf,
    /// Where the network interface of a function bound to its driver appears; `None`: the
    /// host's initial namespace.
    driver_netns: Option<PathBuf>,
}

impl SysfsPci {
    /// The PCI bus of the sysfs mounted at `root` (a stand-in tree in tests).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            driver_netns: None,
        }
    }

    /// The host's sysfs, `/sys`.
    pub fn host() -> Self {
        Self::new("/sys")
    }

    /// The same, with the network interfaces of the functions bound to their drivers
    /// appearing in the namespace at `path` (a namespace standing in for the host's in tests).
    pub fn with_driver_netns(mut self, path: impl Into<PathBuf>) -> Self {
        self.driver_netns = Some(path.into());
        self
    }

    /// The namespace in which a driver that binds a function registers its network
    /// interface: the kernel puts the interfaces of the devices it probes in its initial
    /// namespace, the host's: PID 1's (`/proc/1/ns/net`), or, when that cannot be read (a
    /// container whose PID 1 has more privileges), this process's own, which is the host's
    /// for a shim.
    pub fn driver_netns(&self) -> PathBuf {
        match &self.driver_netns {
            Some(path) => path.clone(),
            None if fs::metadata(sandbox_net_netns::PID1_NETNS).is_ok() => {
                PathBuf::from(sandbox_net_netns::PID1_NETNS)
            }
            None => PathBuf::from("/proc/self/ns/net"),
        }
    }

    /// The sysfs root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/bus/pci/devices/<bdf>/net`: where the function's network interface is listed
    /// while a network driver has it (a sysfs mounted in the namespace the interface is in).
    pub fn net_dir(&self, bdf: &PciAddress) -> PathBuf {
        self.bus().join("devices").join(bdf.as_str()).join("net")
    }

    /// The function's network interfaces as sysfs lists them: name and `ifindex` (empty
    /// while no network driver has the function, or its interface is in another namespace).
    pub fn net_interfaces(&self, bdf: &PciAddress) -> Result<Vec<(String, u32)>, VfioError> {
        let dir = self.net_dir(bdf);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(VfioError::Read { path: dir, source }),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| VfioError::Read {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path().join("ifindex");
            let text = read_trimmed(&path)?;
            let index = text.parse().map_err(|_| VfioError::Read {
                path: path.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not an interface index: {text:?}"),
                ),
            })?;
            found.push((entry.file_name().to_string_lossy().into_owned(), index));
        }
        found.sort();
        Ok(found)
    }

    /// `<root>/bus/pci`.
    fn bus(&self) -> PathBuf {
        self.root.join("bus/pci")
    }

    /// `<root>/bus/pci/devices/<bdf>`, which must exist.
    fn device_dir(&self, bdf: &PciAddress) -> Result<PathBuf, VfioError> {
        let path = self.bus().join("devices").join(bdf.as_str());
        if path.exists() {
            Ok(path)
        } else {
            Err(VfioError::NoDevice {
                bdf: bdf.clone(),
                path,
            })
        }
    }

    /// The driver the device is bound to (the basename of `devices/<bdf>/driver`), `None` if
    /// it has none.
    pub fn driver(&self, bdf: &PciAddress) -> Result<Option<String>, VfioError> {
        let link = self.device_dir(bdf)?.join("driver");
        match fs::read_link(&link) {
            Ok(target) => link_name(&link, &target).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(VfioError::ReadLink { path: link, source }),
        }
    }

    /// The device's `driver_override`: the only driver the kernel may bind it to. `None`
    /// when unset (the kernel shows `(null)`).
    pub fn driver_override(&self, bdf: &PciAddress) -> Result<Option<String>, VfioError> {
        let value = read_trimmed(&self.device_dir(bdf)?.join("driver_override"))?;
        Ok((!value.is_empty() && value != "(null)").then_some(value))
    }

    /// The device's IOMMU group (the basename of `devices/<bdf>/iommu_group`).
    pub fn iommu_group(&self, bdf: &PciAddress) -> Result<u32, VfioError> {
        let link = self.device_dir(bdf)?.join("iommu_group");
        let target = match fs::read_link(&link) {
            Ok(target) => target,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VfioError::NoIommuGroup {
                    bdf: bdf.clone(),
                    path: link,
                });
            }
            Err(source) => return Err(VfioError::ReadLink { path: link, source }),
        };
        link_name(&link, &target)?
            .parse()
            .map_err(|_| VfioError::UnexpectedLink { path: link, target })
    }

    /// The VFIO group device the VMM opens for this device: `/dev/vfio/<iommu group>`.
    pub fn vfio_device_path(&self, bdf: &PciAddress) -> Result<PathBuf, VfioError> {
        Ok(Path::new(VFIO_DEV_DIR).join(self.iommu_group(bdf)?.to_string()))
    }

    /// The vendor and device ids (`devices/<bdf>/vendor` and `device`, e.g. `0x8086` and
    /// `0x10d3`), without the kernel's trailing newline.
    pub fn vendor_device(&self, bdf: &PciAddress) -> Result<(String, String), VfioError> {
        let dir = self.device_dir(bdf)?;
        Ok((
            read_trimmed(&dir.join("vendor"))?,
            read_trimmed(&dir.join("device"))?,
        ))
    }

    /// Hands the device to vfio-pci (`driverctl set-override <bdf> vfio-pci`):
    /// [`SysfsPci::vfio_binding`], then [`SysfsPci::apply_vfio_binding`]. Returns what it
    /// overwrote.
    pub fn bind_vfio(&self, bdf: &PciAddress) -> Result<VfioBinding, VfioError> {
        let binding = self.vfio_binding(bdf)?;
        self.apply_vfio_binding(&binding)?;
        Ok(binding)
    }

    /// What binding the device to vfio-pci will overwrite, read without writing anything:
    /// checks the device exists and has an IOMMU group (the VMM cannot open it without), and
    /// reads its driver and `driver_override`.
    pub fn vfio_binding(&self, bdf: &PciAddress) -> Result<VfioBinding, VfioError> {
        self.device_dir(bdf)?;
        self.iommu_group(bdf)?;
        Ok(VfioBinding {
            bdf: bdf.clone(),
            original_driver: self.driver(bdf)?,
            original_override: self.driver_override(bdf)?,
        })
    }

    /// Hands the device of `binding` (from [`SysfsPci::vfio_binding`]) to vfio-pci:
    /// 1. writes `vfio-pci` to `devices/<bdf>/driver_override`;
    /// 2. writes the address to `devices/<bdf>/driver/unbind`, if it had a driver: the
    ///    driver unregisters the function's network interface;
    /// 3. writes the address to `bus/pci/drivers_probe`: the kernel binds vfio-pci.
    ///
    /// If step 2 or 3 fails, the original `driver_override` and driver are put back before
    /// the error is returned ([`VfioError::BindRollback`] when that fails too).
    #[tracing::instrument(name = "endpoints.bind_vfio", skip_all, fields(bdf = %binding.bdf))]
    pub fn apply_vfio_binding(&self, binding: &VfioBinding) -> Result<(), VfioError> {
        let bdf = &binding.bdf;
        let dir = self.device_dir(bdf)?;
        write(&dir.join("driver_override"), VFIO_PCI_DRIVER)?;
        if binding.original_driver.is_some()
            && let Err(error) = write(&dir.join("driver/unbind"), bdf.as_str())
        {
            return Err(self.roll_back(binding, false, error));
        }
        if let Err(error) = write(&self.bus().join("drivers_probe"), bdf.as_str()) {
            return Err(self.roll_back(binding, true, error));
        }
        tracing::info!(original_driver = ?binding.original_driver, "handed to vfio-pci");
        Ok(())
    }

    /// Takes the device from vfio-pci and gives it back to its original driver, as `binding`
    /// recorded them:
    /// 1. writes the original `driver_override` back (or `"\n"`, which clears it);
    /// 2. unless it is on its original driver already: writes the address to
    ///    `devices/<bdf>/driver/unbind` if it has a driver, then to
    ///    `drivers/<original>/bind` if it had one; that driver then registers a network
    ///    interface for it in the host's namespace.
    ///
    /// Continues past failures and returns all of them. Running it again after success
    /// changes nothing but step 1.
    #[tracing::instrument(name = "endpoints.unbind_vfio", skip_all, fields(bdf = %binding.bdf))]
    pub fn unbind_vfio(&self, binding: &VfioBinding) -> Result<(), UnbindVfioError> {
        match Failures::from_vec(self.put_back(binding, false)) {
            None => {
                tracing::info!(driver = ?binding.original_driver, "original driver restored");
                Ok(())
            }
            Some(errors) => Err(UnbindVfioError {
                bdf: binding.bdf.clone(),
                errors,
            }),
        }
    }

    /// The error `bind_vfio` returns after putting the device back.
    fn roll_back(&self, binding: &VfioBinding, unbound: bool, error: VfioError) -> VfioError {
        let Some(errors) = Failures::from_vec(self.put_back(binding, unbound)) else {
            return error;
        };
        VfioError::BindRollback {
            bdf: binding.bdf.clone(),
            rollback: UnbindVfioError {
                bdf: binding.bdf.clone(),
                errors,
            },
            source: Box::new(error),
        }
    }

    /// Restores `driver_override`, unbinds the device from a driver other than the original
    /// one and binds the original driver, if the device is not on it or `unbound` says this
    /// code took it off. Returns the failed steps.
    fn put_back(&self, binding: &VfioBinding, unbound: bool) -> Vec<VfioError> {
        let bdf = &binding.bdf;
        let mut errors = Vec::new();
        let dir = match self.device_dir(bdf) {
            Ok(dir) => dir,
            Err(e) => return vec![e],
        };
        let value = binding
            .original_override
            .as_deref()
            .unwrap_or(CLEAR_OVERRIDE);
        if let Err(e) = write(&dir.join("driver_override"), value) {
            errors.push(e);
        }
        let current = match self.driver(bdf) {
            Ok(current) => current,
            Err(e) => {
                errors.push(e);
                return errors;
            }
        };
        let original = binding.original_driver.as_deref();
        if current.is_some() && current.as_deref() != original {
            if let Err(e) = write(&dir.join("driver/unbind"), bdf.as_str()) {
                errors.push(e);
            }
        } else if current.as_deref() == original && !unbound {
            return errors;
        }
        if let Some(driver) = original {
            if driver.is_empty() || driver.contains('/') || driver == "." || driver == ".." {
                errors.push(VfioError::InvalidDriverName {
                    bdf: bdf.clone(),
                    name: driver.to_owned(),
                });
            } else if let Err(e) = write(
                &self.bus().join("drivers").join(driver).join("bind"),
                bdf.as_str(),
            ) {
                errors.push(e);
            }
        }
        errors
    }
}

/// The last component of a symlink's target, as text.
fn link_name(link: &Path, target: &Path) -> Result<String, VfioError> {
    target
        .file_name()
        .and_then(|name| name.to_str())
        .map(str::to_owned)
        .ok_or_else(|| VfioError::UnexpectedLink {
            path: link.to_path_buf(),
            target: target.to_path_buf(),
        })
}

/// A sysfs attribute without surrounding whitespace (the kernel ends values with a newline).
fn read_trimmed(path: &Path) -> Result<String, VfioError> {
    fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|source| VfioError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes `value` to a sysfs attribute in one `write(2)`, like `echo -n value > path`. The
/// file must exist (sysfs creates no files; a stand-in tree must not either).
fn write(path: &Path, value: &str) -> Result<(), VfioError> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .map_err(|source| VfioError::Write {
            value: value.to_owned(),
            path: path.to_path_buf(),
            source,
        })?;
    tracing::debug!(path = %path.display(), value = shown(value), "sysfs write");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_strings_stop_at_the_first_nul() {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(b"veth");
        assert_eq!(c_string(&bytes), "veth");
        assert_eq!(c_string(&[0u8; 32]), "");
        assert_eq!(c_string(&[b'x'; 32]), "x".repeat(32));
    }
}
