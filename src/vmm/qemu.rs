//! QEMU: command-line arguments for the devices, QMP hot-plug, and the [`Qemu`] adapter.
//!
//! What QEMU is told, per device (QEMU 7.2 names; ids derive from the endpoint id so that a
//! later hot-remove finds the device from the record alone):
//!
//! | backend | arguments |
//! |---|---|
//! | tap or macvtap, 1 queue pair | `-netdev tap,id=N,fd=Q[,vhost=on,vhostfd=V]` |
//! | tap or macvtap, N pairs | `-netdev tap,id=N,fds=Q1:Q2[,vhost=on,vhostfds=V1:V2]` |
//! | tap by name | `-netdev tap,id=N,ifname=TAP,script=no,downscript=no[,queues=N][,vhost=on]` |
//! | vhost-user | `-chardev socket,id=C,path=SOCK -netdev vhost-user,id=N,chardev=C[,queues=N]` |
//! | all of the above | `-device virtio-net-pci,id=D,netdev=N,mac=M,host_mtu=MTU,romfile=[,mq=on,vectors=2N+2]` |
//! | VFIO | `-device vfio-pci,host=BDF,id=D` |
//!
//! QEMU takes a macvtap's queue descriptors exactly like a tap's; it never needs the device's
//! name nor the namespace. A macvtap cannot be opened by name safely (its `/dev/tap<ifindex>`
//! may be another namespace's), so it is always handed over by descriptor. Without `mq=on`
//! the guest sees one queue pair; `vectors` is one MSI-X vector per queue, plus config and
//! control. `romfile=` (empty) leaves out the PXE option ROM, which a direct kernel boot never
//! runs. vhost-user needs the guest's memory shared with the backend:
//! `-object memory-backend-memfd,id=sbx-mem,size=M,share=on -numa node,memdev=sbx-mem`.

use std::{
    os::fd::AsFd,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use sandbox_net_endpoints::{
    Backend, Capabilities, EndpointId, Hypervisor, HypervisorConfig, HypervisorError, NetDevice,
};
use serde_json::{Value, json};

use super::{
    FdRef, Queues, Vhost, VmmBackend, VmmDevice, VmmError, VmmKind, clamp_queue_pairs, fd_name,
    qmp::{Qmp, QmpError},
};

/// QEMU's id of the backend (`-netdev`) of `endpoint`'s device.
pub fn netdev_id(endpoint: &EndpointId) -> String {
    format!("sbx-net-{endpoint}")
}

/// QEMU's id of `endpoint`'s device (`-device`).
pub fn device_id(endpoint: &EndpointId) -> String {
    format!("sbx-dev-{endpoint}")
}

/// QEMU's id of the socket chardev of `endpoint`'s vhost-user device.
pub fn chardev_id(endpoint: &EndpointId) -> String {
    format!("sbx-chr-{endpoint}")
}

/// The id of the shared memory backend vhost-user devices need.
pub const MEMORY_BACKEND_ID: &str = "sbx-mem";

/// Linux's smallest MTU (`ETH_MIN_MTU`) and the largest `host_mtu` (a 16-bit property).
const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;

/// How devices are rendered beyond the devices themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// The option ROM of virtio-net devices; `None` for none (`romfile=`).
    pub option_rom: Option<String>,
    /// The guest's memory in MiB (QEMU's `-m`), to share it with vhost-user backends; needed
    /// only when there is a vhost-user device.
    pub memory_mib: Option<u64>,
}

/// A value in QEMU's `key=value,...` syntax: commas are doubled.
fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn join(fds: &[FdRef]) -> String {
    fds.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(":")
}

/// The `-netdev` / `-device` (and `-chardev`) arguments of one device.
pub fn device_args(device: &VmmDevice, options: &RenderOptions) -> Result<Vec<String>, VmmError> {
    let netdev = netdev_id(&device.endpoint);
    let mut args = Vec::new();
    match &device.backend {
        VmmBackend::Tap {
            name,
            queues,
            vhost,
        }
        | VmmBackend::Macvtap {
            name,
            queues,
            vhost,
        } => {
            let mut spec = format!("tap,id={netdev}");
            match queues {
                Queues::Fds(fds) if fds.len() == 1 => spec.push_str(&format!(",fd={}", fds[0])),
                Queues::Fds(fds) => spec.push_str(&format!(",fds={}", join(fds))),
                Queues::ByName(n) => {
                    if matches!(device.backend, VmmBackend::Macvtap { .. }) {
                        return Err(VmmError::Unsupported {
                            vmm: VmmKind::Qemu,
                            endpoint: device.endpoint.clone(),
                            what: "a macvtap opened by name",
                            why: "its /dev/tap<ifindex> node may be another namespace's macvtap; \
                                  hand its queue descriptors over instead (sandbox-net exec)",
                        });
                    }
                    spec.push_str(&format!(
                        ",ifname={},script=no,downscript=no",
                        escape(name.as_str())
                    ));
                    if *n > 1 {
                        spec.push_str(&format!(",queues={n}"));
                    }
                }
            }
            match vhost {
                Vhost::Off => {}
                Vhost::ByVmm => spec.push_str(",vhost=on"),
                Vhost::Fds(fds) if fds.len() == 1 => {
                    spec.push_str(&format!(",vhost=on,vhostfd={}", fds[0]));
                }
                Vhost::Fds(fds) => spec.push_str(&format!(",vhost=on,vhostfds={}", join(fds))),
            }
            args.extend(["-netdev".to_string(), spec]);
            args.extend(["-device".to_string(), virtio_net(device, options)?]);
        }
        VmmBackend::VhostUser { socket, queues } => {
            let chardev = chardev_id(&device.endpoint);
            args.extend([
                "-chardev".to_string(),
                format!(
                    "socket,id={chardev},path={}",
                    escape(&socket.to_string_lossy())
                ),
            ]);
            let mut spec = format!("vhost-user,id={netdev},chardev={chardev}");
            if *queues > 1 {
                spec.push_str(&format!(",queues={queues}"));
            }
            args.extend(["-netdev".to_string(), spec]);
            args.extend(["-device".to_string(), virtio_net(device, options)?]);
        }
        VmmBackend::Vfio { bdf, .. } => {
            args.extend([
                "-device".to_string(),
                format!("vfio-pci,host={bdf},id={}", device_id(&device.endpoint)),
            ]);
        }
    }
    Ok(args)
}

/// The `virtio-net-pci` device of `device`.
fn virtio_net(device: &VmmDevice, options: &RenderOptions) -> Result<String, VmmError> {
    check_mtu(device)?;
    let mut spec = format!(
        "virtio-net-pci,id={},netdev={},mac={},host_mtu={},romfile={}",
        device_id(&device.endpoint),
        netdev_id(&device.endpoint),
        device.mac,
        device.mtu,
        escape(options.option_rom.as_deref().unwrap_or("")),
    );
    let pairs = device.queue_pairs();
    if pairs > 1 {
        spec.push_str(&format!(",mq=on,vectors={}", 2 * pairs + 2));
    }
    Ok(spec)
}

fn check_mtu(device: &VmmDevice) -> Result<(), VmmError> {
    if MTU_RANGE.contains(&device.mtu) {
        Ok(())
    } else {
        Err(VmmError::OutOfRange {
            vmm: VmmKind::Qemu,
            endpoint: device.endpoint.clone(),
            field: "MTU (host_mtu)",
            value: u64::from(device.mtu),
            range: "68 to 65535",
        })
    }
}

/// The arguments of all `devices`, with the VM-wide ones they need (shared memory for
/// vhost-user), in order.
pub fn command_line(
    devices: &[VmmDevice],
    options: &RenderOptions,
) -> Result<Vec<String>, VmmError> {
    let mut args = Vec::new();
    if devices
        .iter()
        .any(|d| matches!(d.backend, VmmBackend::VhostUser { .. }))
    {
        let mib = options.memory_mib.ok_or(VmmError::Missing {
            vmm: VmmKind::Qemu,
            what: "a vhost-user device needs the guest's memory shared with its backend: \
                   give the VM's memory size (QEMU's -m)",
        })?;
        args.extend([
            "-object".to_string(),
            format!("memory-backend-memfd,id={MEMORY_BACKEND_ID},size={mib}M,share=on"),
            "-numa".to_string(),
            format!("node,memdev={MEMORY_BACKEND_ID}"),
        ]);
    }
    for device in devices {
        args.extend(device_args(device, options)?);
    }
    Ok(args)
}

/// The arguments of QMP `netdev_add` for `device` (descriptors named as sent with `getfd`);
/// `None` for a VFIO function, which has no backend.
pub fn qmp_netdev_add(device: &VmmDevice) -> Option<Value> {
    let id = netdev_id(&device.endpoint);
    match &device.backend {
        VmmBackend::Tap { queues, vhost, .. } | VmmBackend::Macvtap { queues, vhost, .. } => {
            let mut args = json!({ "type": "tap", "id": id });
            match queues {
                Queues::Fds(fds) if fds.len() == 1 => args["fd"] = fds[0].to_string().into(),
                Queues::Fds(fds) => args["fds"] = join(fds).into(),
                Queues::ByName(n) => {
                    args["queues"] = (*n).into();
                }
            }
            match vhost {
                Vhost::Off => args["vhost"] = false.into(),
                Vhost::ByVmm => args["vhost"] = true.into(),
                Vhost::Fds(fds) => {
                    args["vhost"] = true.into();
                    if fds.len() == 1 {
                        args["vhostfd"] = fds[0].to_string().into();
                    } else {
                        args["vhostfds"] = join(fds).into();
                    }
                }
            }
            Some(args)
        }
        VmmBackend::VhostUser { queues, .. } => Some(json!({
            "type": "vhost-user",
            "id": id,
            "chardev": chardev_id(&device.endpoint),
            "queues": queues,
        })),
        VmmBackend::Vfio { .. } => None,
    }
}

/// The arguments of QMP `device_add` for `device`: typed values, as QMP's JSON requires.
pub fn qmp_device_add(device: &VmmDevice, options: &RenderOptions) -> Result<Value, VmmError> {
    if let VmmBackend::Vfio { bdf, .. } = &device.backend {
        return Ok(json!({
            "driver": "vfio-pci",
            "id": device_id(&device.endpoint),
            "host": bdf.as_str(),
        }));
    }
    check_mtu(device)?;
    let mut args = json!({
        "driver": "virtio-net-pci",
        "id": device_id(&device.endpoint),
        "netdev": netdev_id(&device.endpoint),
        "mac": device.mac.to_string(),
        "host_mtu": device.mtu,
        "romfile": options.option_rom.clone().unwrap_or_default(),
    });
    let pairs = device.queue_pairs();
    if pairs > 1 {
        args["mq"] = true.into();
        args["vectors"] = (2 * pairs + 2).into();
    }
    Ok(args)
}

/// The arguments of QMP `chardev-add` for a vhost-user device's socket (QEMU the client).
pub fn qmp_chardev_add(device: &VmmDevice) -> Option<Value> {
    match &device.backend {
        VmmBackend::VhostUser { socket, .. } => Some(json!({
            "id": chardev_id(&device.endpoint),
            "backend": {
                "type": "socket",
                "data": {
                    "addr": { "type": "unix", "data": { "path": socket.to_string_lossy() } },
                    "server": false,
                },
            },
        })),
        _ => None,
    }
}

/// How a QEMU is configured, as far as its network devices go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// vCPUs of the VM (`-smp`): queue pairs are never more.
    pub vcpus: usize,
    /// Queue pairs per device asked for.
    pub queues: usize,
    /// Use vhost-net (one `/dev/vhost-net` descriptor per queue pair). The descriptors must
    /// be vhost-net's: QEMU 7.2 aborts (an assertion in `net_client_init1`) when a hot-added
    /// backend's vhost descriptor cannot be initialised.
    pub vhost_net: bool,
    /// The vhost-net device.
    pub vhost_net_path: PathBuf,
    /// Limit into the VM, bits/s (0: none), applied on the host: QEMU has no limiter.
    pub rx_rate: u64,
    /// Limit out of the VM, bits/s (0: none), applied on the host.
    pub tx_rate: u64,
    /// How devices are rendered.
    pub render: RenderOptions,
    /// How long a hot-remove waits for the guest to release the device (`DEVICE_DELETED`).
    pub unplug_timeout: Duration,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            vcpus: 1,
            queues: 1,
            vhost_net: false,
            vhost_net_path: PathBuf::from(sandbox_net_netns::VHOST_NET_PATH),
            rx_rate: 0,
            tx_rate: 0,
            render: RenderOptions::default(),
            unplug_timeout: Duration::from_secs(60),
        }
    }
}

/// QEMU as endpoints see it: devices for a VM about to start are kept until
/// [`Qemu::take_devices`] (their arguments: [`command_line`] over [`VmmDevice::from_device`]);
/// a running VM gets devices through QMP.
#[derive(Debug)]
pub struct Qemu {
    config: QemuConfig,
    queues: usize,
    devices: Mutex<Vec<NetDevice>>,
    qmp: Option<Arc<Mutex<Qmp>>>,
}

impl Qemu {
    /// An adapter for a QEMU not started yet (or one without QMP: no hot-plug).
    pub fn new(config: QemuConfig) -> Self {
        let queues = clamp_queue_pairs(VmmKind::Qemu, config.queues, config.vcpus);
        Self {
            config,
            queues,
            devices: Mutex::new(Vec::new()),
            qmp: None,
        }
    }

    /// An adapter for a running QEMU reached through `qmp`.
    pub fn with_qmp(config: QemuConfig, qmp: Qmp) -> Self {
        Self {
            qmp: Some(Arc::new(Mutex::new(qmp))),
            ..Self::new(config)
        }
    }

    /// Queue pairs per device (the configured ones, clamped to the vCPUs).
    pub fn queue_pairs(&self) -> usize {
        self.queues
    }

    /// The configuration.
    pub fn qemu_config(&self) -> &QemuConfig {
        &self.config
    }

    /// The devices handed over for the VM to start with, in order; they leave the adapter.
    pub fn take_devices(&self) -> Vec<NetDevice> {
        self.devices
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
    }

    /// The arguments that give a QEMU started with `devices`' descriptors (inherited at their
    /// numbers in this process) those devices.
    pub fn command_line(&self, devices: &[NetDevice]) -> Result<Vec<String>, VmmError> {
        let views: Vec<VmmDevice> = devices
            .iter()
            .map(|d| VmmDevice::from_device(d, self.queues))
            .collect();
        command_line(&views, &self.config.render)
    }

    fn qmp(
        &self,
        op: &'static str,
        endpoint: &EndpointId,
    ) -> Result<Arc<Mutex<Qmp>>, HypervisorError> {
        self.qmp.clone().ok_or_else(|| HypervisorError {
            op,
            endpoint: endpoint.clone(),
            reason: "no QMP connection: a running QEMU is changed only through its QMP socket"
                .into(),
        })
    }
}

/// Plugs `device` into a running QEMU: its socket chardev (vhost-user), its descriptors (one
/// `getfd` each), `netdev_add`, `device_add`. On failure, what was added is taken back.
fn hot_plug(
    qmp: &mut Qmp,
    device: &NetDevice,
    view: &VmmDevice,
    options: &RenderOptions,
) -> Result<(), String> {
    let describe = |e: &dyn std::error::Error| {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    };
    let device_add = qmp_device_add(view, options).map_err(|e| describe(&e))?;
    let chardev = qmp_chardev_add(view);
    let mut undo = Undo::default();
    let result = (|| -> Result<(), QmpError> {
        if let Some(chardev) = chardev {
            qmp.execute("chardev-add", chardev)?;
            undo.chardev = Some(chardev_id(&view.endpoint));
        }
        let fds = match &device.backend {
            Backend::Tap { queues, vhost, .. } | Backend::Macvtap { queues, vhost, .. } => {
                let queues = queues.iter().enumerate().map(|(i, fd)| (false, i, fd));
                let vhost = vhost.iter().enumerate().map(|(i, fd)| (true, i, fd));
                queues.chain(vhost).collect()
            }
            _ => Vec::new(),
        };
        for (is_vhost, i, fd) in fds {
            let name = fd_name(&view.endpoint, is_vhost, i);
            qmp.send_fd(&name, fd.as_fd())?;
            undo.fds.push(name);
        }
        if let Some(netdev) = qmp_netdev_add(view) {
            qmp.execute("netdev_add", netdev)?;
            // netdev_add took the named descriptors.
            undo.fds.clear();
            undo.netdev = Some(netdev_id(&view.endpoint));
        }
        qmp.execute("device_add", device_add)?;
        Ok(())
    })();
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            undo.run(qmp);
            Err(describe(&e))
        }
    }
}

/// What a failed hot-plug takes back, in reverse order of its making.
#[derive(Debug, Default)]
struct Undo {
    chardev: Option<String>,
    fds: Vec<String>,
    netdev: Option<String>,
}

impl Undo {
    fn run(self, qmp: &mut Qmp) {
        if let Some(id) = self.netdev
            && let Err(e) = qmp.execute("netdev_del", json!({ "id": id }))
        {
            tracing::warn!(netdev = %id, error = %e, "could not take back a hot-plugged netdev");
        }
        for name in self.fds {
            // A descriptor some command already consumed is gone: nothing to close.
            let _ = qmp.execute("closefd", json!({ "fdname": name }));
        }
        if let Some(id) = self.chardev
            && let Err(e) = qmp.execute("chardev-remove", json!({ "id": id }))
        {
            tracing::warn!(chardev = %id, error = %e, "could not take back a hot-plugged chardev");
        }
    }
}

/// Takes `endpoint`'s device out of a running QEMU: `device_del`, then waits for the
/// guest to release it (`DEVICE_DELETED` with its id; until then the backend is still in
/// use), then `netdev_del` and, for vhost-user, `chardev-remove`. A device or backend that is
/// already gone counts as removed.
fn hot_unplug(qmp: &mut Qmp, endpoint: &EndpointId, timeout: Duration) -> Result<(), QmpError> {
    let device = device_id(endpoint);
    match qmp.execute("device_del", json!({ "id": device })) {
        Ok(_) => {
            qmp.wait_event(
                "DEVICE_DELETED",
                |data| data.get("device").and_then(Value::as_str) == Some(device.as_str()),
                timeout,
            )?;
        }
        Err(e) if e.class() == Some("DeviceNotFound") => {}
        Err(e) => return Err(e),
    }
    match qmp.execute("netdev_del", json!({ "id": netdev_id(endpoint) })) {
        Ok(_) => {}
        Err(e) if e.class() == Some("DeviceNotFound") => {}
        Err(e) => return Err(e),
    }
    let chardev = chardev_id(endpoint);
    let chardevs = qmp.execute("query-chardev", Value::Null)?;
    let present = chardevs.as_array().is_some_and(|list| {
        list.iter()
            .any(|c| c.get("label").and_then(Value::as_str) == Some(chardev.as_str()))
    });
    if present {
        qmp.execute("chardev-remove", json!({ "id": chardev }))?;
    }
    Ok(())
}

impl Hypervisor for Qemu {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            multi_queue: true,
            rate_limiter: false,
        }
    }

    fn config(&self) -> HypervisorConfig {
        HypervisorConfig {
            queues: self.queues,
            disable_vhost_net: !self.config.vhost_net,
            vhost_net_path: self.config.vhost_net_path.clone(),
            rx_rate_limiter_max_rate: self.config.rx_rate,
            tx_rate_limiter_max_rate: self.config.tx_rate,
        }
    }

    async fn add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        let view = VmmDevice::from_device(&device, self.queues);
        // Refused now rather than when QEMU starts: the attach rolls back.
        if let Err(e) = device_args(&view, &self.config.render) {
            return Err(HypervisorError {
                op: "add",
                endpoint: device.endpoint.clone(),
                reason: e.to_string(),
            });
        }
        let mut devices = self.devices.lock().map_err(|_| HypervisorError {
            op: "add",
            endpoint: device.endpoint.clone(),
            reason: "internal lock poisoned".into(),
        })?;
        devices.push(device);
        Ok(())
    }

    async fn hot_add_device(&self, device: NetDevice) -> Result<(), HypervisorError> {
        let endpoint = device.endpoint.clone();
        let qmp = self.qmp("hot-add", &endpoint)?;
        let view = VmmDevice::from_device_named(&device, self.queues);
        let options = self.config.render.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut qmp = qmp
                .lock()
                .map_err(|_| "internal lock poisoned".to_string())?;
            // QEMU keeps its own copies of the descriptors; ours close with `device`.
            hot_plug(&mut qmp, &device, &view, &options)
        })
        .await;
        let reason = match done {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(reason)) => reason,
            Err(e) => format!("the QMP thread failed: {e}"),
        };
        Err(HypervisorError {
            op: "hot-add",
            endpoint,
            reason,
        })
    }

    async fn hot_remove_device(&self, endpoint: &EndpointId) -> Result<(), HypervisorError> {
        let qmp = self.qmp("hot-remove", endpoint)?;
        let id = endpoint.clone();
        let timeout = self.config.unplug_timeout;
        let done = tokio::task::spawn_blocking(move || {
            let mut qmp = qmp
                .lock()
                .map_err(|_| "internal lock poisoned".to_string())?;
            hot_unplug(&mut qmp, &id, timeout).map_err(|e| e.to_string())
        })
        .await;
        let reason = match done {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(reason)) => reason,
            Err(e) => format!("the QMP thread failed: {e}"),
        };
        Err(HypervisorError {
            op: "hot-remove",
            endpoint: endpoint.clone(),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::RawFd;

    use sandbox_net_persist::{IfName, MacAddr};

    use super::*;

    fn endpoint() -> EndpointId {
        EndpointId::from_bytes([0xab, 0xcd, 0, 1, 2, 3, 4, 5])
    }

    fn device(backend: VmmBackend) -> VmmDevice {
        VmmDevice {
            endpoint: endpoint(),
            guest_name: IfName::new("eth0").unwrap(),
            mac: "02:00:0a:c8:00:02".parse::<MacAddr>().unwrap(),
            mtu: 1450,
            backend,
        }
    }

    fn numbers(fds: &[RawFd]) -> Vec<FdRef> {
        fds.iter().copied().map(FdRef::Number).collect()
    }

    fn tap(queues: &[RawFd], vhost: &[RawFd]) -> VmmBackend {
        VmmBackend::Tap {
            name: IfName::new("tap0_kata").unwrap(),
            queues: Queues::Fds(numbers(queues)),
            vhost: if vhost.is_empty() {
                Vhost::Off
            } else {
                Vhost::Fds(numbers(vhost))
            },
        }
    }

    fn render(backend: VmmBackend) -> Vec<String> {
        device_args(&device(backend), &RenderOptions::default()).unwrap()
    }

    #[test]
    fn one_queue_pair_is_fd_and_no_mq() {
        assert_eq!(
            render(tap(&[3], &[])),
            [
                "-netdev",
                "tap,id=sbx-net-abcd000102030405,fd=3",
                "-device",
                "virtio-net-pci,id=sbx-dev-abcd000102030405,netdev=sbx-net-abcd000102030405,\
                 mac=02:00:0a:c8:00:02,host_mtu=1450,romfile=",
            ]
        );
    }

    #[test]
    fn several_queue_pairs_are_fds_with_mq_and_vectors() {
        let args = render(tap(&[3, 4, 5], &[]));
        assert_eq!(args[1], "tap,id=sbx-net-abcd000102030405,fds=3:4:5");
        assert!(args[3].ends_with(",mq=on,vectors=8"), "{}", args[3]);
    }

    #[test]
    fn vhost_descriptors_go_with_vhost_on() {
        assert_eq!(
            render(tap(&[3], &[4]))[1],
            "tap,id=sbx-net-abcd000102030405,fd=3,vhost=on,vhostfd=4"
        );
        assert_eq!(
            render(tap(&[3, 4], &[5, 6]))[1],
            "tap,id=sbx-net-abcd000102030405,fds=3:4,vhost=on,vhostfds=5:6"
        );
    }

    #[test]
    fn a_macvtap_is_handed_over_like_a_tap_and_never_by_name() {
        let macvtap = |queues| VmmBackend::Macvtap {
            name: IfName::new("tap0_kata").unwrap(),
            queues,
            vhost: Vhost::Off,
        };
        let args = render(macvtap(Queues::Fds(numbers(&[7, 8]))));
        assert_eq!(args[1], "tap,id=sbx-net-abcd000102030405,fds=7:8");
        assert!(args[3].contains(",mq=on,vectors=6"));
        let err = device_args(
            &device(macvtap(Queues::ByName(1))),
            &RenderOptions::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "qemu cannot take endpoint abcd000102030405 (a macvtap opened by name)"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_tap_by_name_is_opened_by_qemu_without_scripts() {
        let args = render(VmmBackend::Tap {
            name: IfName::new("tap3_kata").unwrap(),
            queues: Queues::ByName(2),
            vhost: Vhost::ByVmm,
        });
        assert_eq!(
            args[1],
            "tap,id=sbx-net-abcd000102030405,ifname=tap3_kata,script=no,downscript=no,queues=2,vhost=on"
        );
    }

    #[test]
    fn vhost_user_is_a_socket_chardev_and_needs_shared_memory() {
        let dev = device(VmmBackend::VhostUser {
            socket: PathBuf::from("/tmp/vhostuser_10.0.0.2/vhu.sock"),
            queues: 2,
        });
        let err = command_line(std::slice::from_ref(&dev), &RenderOptions::default()).unwrap_err();
        assert!(err.to_string().contains("QEMU's -m"), "{err}");
        let options = RenderOptions {
            memory_mib: Some(512),
            ..RenderOptions::default()
        };
        assert_eq!(
            command_line(&[dev], &options).unwrap(),
            [
                "-object",
                "memory-backend-memfd,id=sbx-mem,size=512M,share=on",
                "-numa",
                "node,memdev=sbx-mem",
                "-chardev",
                "socket,id=sbx-chr-abcd000102030405,path=/tmp/vhostuser_10.0.0.2/vhu.sock",
                "-netdev",
                "vhost-user,id=sbx-net-abcd000102030405,chardev=sbx-chr-abcd000102030405,queues=2",
                "-device",
                "virtio-net-pci,id=sbx-dev-abcd000102030405,netdev=sbx-net-abcd000102030405,\
                 mac=02:00:0a:c8:00:02,host_mtu=1450,romfile=,mq=on,vectors=6",
            ]
        );
    }

    #[test]
    fn vfio_is_a_vfio_pci_device() {
        let args = render(VmmBackend::Vfio {
            bdf: "0000:03:00.1".parse().unwrap(),
            group: PathBuf::from("/dev/vfio/12"),
        });
        assert_eq!(
            args,
            [
                "-device",
                "vfio-pci,host=0000:03:00.1,id=sbx-dev-abcd000102030405"
            ]
        );
    }

    #[test]
    fn commas_in_values_are_doubled() {
        let dev = device(VmmBackend::VhostUser {
            socket: PathBuf::from("/run/a,b/vhu.sock"),
            queues: 1,
        });
        let args = device_args(&dev, &RenderOptions::default()).unwrap();
        assert_eq!(
            args[1],
            "socket,id=sbx-chr-abcd000102030405,path=/run/a,,b/vhu.sock"
        );
    }

    #[test]
    fn an_mtu_qemu_cannot_take_is_refused() {
        let mut dev = device(tap(&[3], &[]));
        dev.mtu = 70000;
        let err = device_args(&dev, &RenderOptions::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "qemu: endpoint abcd000102030405: MTU (host_mtu) 70000 is out of range (68 to 65535)"
        );
    }

    #[test]
    fn qmp_arguments_are_typed_and_name_the_descriptors() {
        let named = |prefix: &str, n: usize| -> Vec<FdRef> {
            (0..n)
                .map(|i| FdRef::Name(format!("{prefix}{i}")))
                .collect()
        };
        let dev = device(VmmBackend::Tap {
            name: IfName::new("tap1_kata").unwrap(),
            queues: Queues::Fds(named("q", 2)),
            vhost: Vhost::Off,
        });
        assert_eq!(
            qmp_netdev_add(&dev).unwrap(),
            json!({"type": "tap", "id": "sbx-net-abcd000102030405", "fds": "q0:q1", "vhost": false})
        );
        assert_eq!(
            qmp_device_add(&dev, &RenderOptions::default()).unwrap(),
            json!({
                "driver": "virtio-net-pci",
                "id": "sbx-dev-abcd000102030405",
                "netdev": "sbx-net-abcd000102030405",
                "mac": "02:00:0a:c8:00:02",
                "host_mtu": 1450,
                "romfile": "",
                "mq": true,
                "vectors": 6,
            })
        );
        let one = device(VmmBackend::Tap {
            name: IfName::new("tap1_kata").unwrap(),
            queues: Queues::Fds(named("q", 1)),
            vhost: Vhost::Fds(named("v", 1)),
        });
        assert_eq!(
            qmp_netdev_add(&one).unwrap(),
            json!({"type": "tap", "id": "sbx-net-abcd000102030405", "fd": "q0", "vhost": true, "vhostfd": "v0"})
        );
        let vfio = device(VmmBackend::Vfio {
            bdf: "0000:03:00.1".parse().unwrap(),
            group: PathBuf::from("/dev/vfio/12"),
        });
        assert_eq!(qmp_netdev_add(&vfio), None);
        assert_eq!(
            qmp_device_add(&vfio, &RenderOptions::default()).unwrap(),
            json!({"driver": "vfio-pci", "id": "sbx-dev-abcd000102030405", "host": "0000:03:00.1"})
        );
    }

    #[test]
    fn qmp_chardev_for_vhost_user_is_a_unix_client_socket() {
        let dev = device(VmmBackend::VhostUser {
            socket: PathBuf::from("/tmp/vhu.sock"),
            queues: 1,
        });
        assert_eq!(
            qmp_chardev_add(&dev).unwrap(),
            json!({
                "id": "sbx-chr-abcd000102030405",
                "backend": {"type": "socket", "data": {
                    "addr": {"type": "unix", "data": {"path": "/tmp/vhu.sock"}},
                    "server": false,
                }},
            })
        );
        assert_eq!(
            qmp_netdev_add(&dev).unwrap(),
            json!({"type": "vhost-user", "id": "sbx-net-abcd000102030405", "chardev": "sbx-chr-abcd000102030405", "queues": 1})
        );
    }

    #[test]
    fn the_adapter_clamps_queues_to_the_vcpus() {
        let qemu = Qemu::new(QemuConfig {
            vcpus: 2,
            queues: 8,
            ..QemuConfig::default()
        });
        assert_eq!(qemu.config().queues, 2);
        assert!(qemu.config().disable_vhost_net);
        assert!(!qemu.capabilities().rate_limiter);
    }
}
