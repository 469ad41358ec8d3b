//! The `sandbox-net` binary's VMM verbs: `exec`, `vmm-config`, `guest-config`, `hot-add`,
//! `hot-remove`. (Part of the binary, not of the library.)

use std::{
    net::Ipv4Addr,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus},
};

use anyhow::Context;
use sandbox_net::{
    Network, NetworkConfig, Owner,
    guest_config::GuestNetwork,
    vmm::{
        self, VmmDevice, VmmKind, cloud_hypervisor, firecracker,
        qemu::{self, Qemu, QemuConfig, RenderOptions},
        qmp::Qmp,
    },
};
use sandbox_net_endpoints::{EndpointId, HypervisorConfig, ReopenOptions, physical::SysfsPci};
use sandbox_net_interworking::TapOptions;
use sandbox_net_persist::{IfName, state::SandboxState};
use serde::Serialize;

/// Parses a VMM name for clap.
pub fn parse_vmm(text: &str) -> Result<VmmKind, String> {
    text.parse().map_err(|e: vmm::UnknownVmm| e.to_string())
}

/// How `exec` and `vmm-config` open vhost-net.
fn vhost_config(vhost_net: bool) -> HypervisorConfig {
    HypervisorConfig {
        disable_vhost_net: !vhost_net,
        ..HypervisorConfig::default()
    }
}

/// The network of a recorded sandbox, with the model it was attached with.
fn restore(state: &Path) -> anyhow::Result<Network> {
    let config = NetworkConfig {
        model: read_state(state)?.model,
        ..NetworkConfig::default()
    };
    Ok(Network::restore(state, config)?)
}

/// `exec`: what to start and how.
pub struct ExecRequest {
    /// The state file of an attached sandbox.
    pub state: PathBuf,
    /// Which VMM the arguments are for.
    pub vmm: VmmKind,
    /// Hand vhost-net descriptors over too.
    pub vhost_net: bool,
    /// The guest's memory (MiB), for vhost-user's shared memory (QEMU).
    pub memory_mib: Option<u64>,
    /// The VMM's command line; the network arguments are appended.
    pub argv: Vec<String>,
}

/// Opens the queues of every endpoint, starts the VMM inside the sandbox's namespace with
/// exactly those descriptors and its network arguments appended, and returns its exit
/// status (128 + N when killed by signal N, as a shell reports it).
pub async fn exec(request: ExecRequest) -> anyhow::Result<ExitCode> {
    let Some((program, args)) = request.argv.split_first() else {
        anyhow::bail!("no VMM command line was given after --");
    };
    if request.vmm == VmmKind::Firecracker {
        anyhow::bail!(
            "firecracker opens its taps by name and takes no descriptors: use \
             `sandbox-net vmm-config --vmm firecracker` for its network-interfaces"
        );
    }
    let mut network = restore(&request.state)?;
    let options = ReopenOptions {
        vhost: vhost_config(request.vhost_net),
        sysfs: SysfsPci::host(),
    };
    let devices = network.reopen_devices(&options).await?;
    let net_args = match request.vmm {
        VmmKind::Qemu => {
            let views: Vec<VmmDevice> = devices
                .iter()
                .map(|d| VmmDevice::from_device(d, 1))
                .collect();
            let render = RenderOptions {
                memory_mib: request.memory_mib,
                ..RenderOptions::default()
            };
            qemu::command_line(&views, &render)?
        }
        VmmKind::CloudHypervisor => {
            let views: Vec<VmmDevice> = devices
                .iter()
                .map(|d| VmmDevice::from_device(d, 1))
                .collect();
            cloud_hypervisor::command_line(&views, None)?
        }
        VmmKind::Firecracker => unreachable!("refused above"),
    };
    let netns = network
        .sandbox()
        .netns()
        .cloned()
        .context("the sandbox's namespace no longer exists")?;
    let fds = vmm::descriptors(&devices);
    let mut command = Command::new(program);
    command.args(args).args(&net_args);
    let child = netns
        .spawn_with_fds(&mut command, &fds)
        .with_context(|| format!("cannot start the VMM {program}"))?;
    let pid = child.id();
    eprintln!(
        "sandbox-net: started {program} (pid {pid}) in {} with {} descriptor(s)",
        netns.path().display(),
        fds.len()
    );
    drop(fds);
    // The VMM holds the sandbox from here on: while it runs, `reconcile` only checks the
    // sandbox; once it has exited, `reconcile` reaps it.
    let owned = match Owner::of_pid(pid) {
        Ok(vmm) => network
            .set_owner(Some(vmm))
            .await
            .map_err(anyhow::Error::from),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = owned {
        eprintln!("warning: the VMM is not recorded as the sandbox's owner: {e:#}");
    }
    let ended = if network.sandbox().state().taps_end_with_vmm {
        network.end_tap_persistence(&devices)
    } else {
        Ok(())
    };
    // Only the VMM holds the devices from here on.
    drop(devices);
    // The namespace, lock and netlink connection are not the VMM's to keep.
    drop(netns);
    drop(network);
    let status = wait_forwarding_signals(child).await?;
    if let Err(e) = ended {
        eprintln!("warning: {e:#}: the taps outlive the VMM; detach removes them");
    }
    Ok(exit_code(status))
}

/// Waits for `child`, passing SIGINT, SIGTERM and SIGHUP on to it.
async fn wait_forwarding_signals(mut child: std::process::Child) -> anyhow::Result<ExitStatus> {
    use tokio::signal::unix::{SignalKind, signal};
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut waiting = tokio::task::spawn_blocking(move || child.wait());
    loop {
        let forward = tokio::select! {
            done = &mut waiting => {
                return done
                    .context("the wait for the VMM failed")?
                    .context("cannot wait for the VMM");
            }
            _ = int.recv() => nix::sys::signal::Signal::SIGINT,
            _ = term.recv() => nix::sys::signal::Signal::SIGTERM,
            _ = hup.recv() => nix::sys::signal::Signal::SIGHUP,
        };
        let _ = nix::sys::signal::kill(pid, forward);
    }
}

/// The exit code that reports `status`: the VMM's own, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code.clamp(0, 255) as u8),
        (None, Some(signal)) => ExitCode::from((128 + signal).clamp(0, 255) as u8),
        (None, None) => ExitCode::FAILURE,
    }
}

/// `vmm-config`: what to render.
pub struct VmmConfigRequest {
    /// The state file of an attached sandbox.
    pub state: PathBuf,
    /// The VMM.
    pub vmm: VmmKind,
    /// The VMM is to use vhost-net.
    pub vhost_net: bool,
    /// Limit into the VM for the VMM's own limiter, bits/s (0: none).
    pub rx_rate: u64,
    /// Limit out of the VM for the VMM's own limiter, bits/s (0: none).
    pub tx_rate: u64,
    /// The guest's memory (MiB), for vhost-user's shared memory (QEMU).
    pub memory_mib: Option<u64>,
    /// Print JSON.
    pub json: bool,
}

/// What `vmm-config --json` prints.
#[derive(Debug, Serialize)]
struct VmmConfigOutput {
    vmm: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    args: Vec<String>,
    #[serde(rename = "vm.add-net", skip_serializing_if = "Vec::is_empty")]
    add_net: Vec<serde_json::Value>,
    #[serde(rename = "network-interfaces", skip_serializing_if = "Vec::is_empty")]
    network_interfaces: Vec<firecracker::NetworkInterface>,
}

/// Prints what a VMM that opens its devices by name needs for every endpoint of an attached
/// sandbox. Reads the state file only.
pub fn vmm_config(request: VmmConfigRequest) -> anyhow::Result<()> {
    let state = read_state(&request.state)?;
    let sysfs = SysfsPci::host();
    let mut devices = Vec::new();
    for record in &state.endpoints {
        if !record.attached {
            anyhow::bail!(
                "state file {}: endpoint {} ({}) is not attached",
                request.state.display(),
                record.id,
                record.interface.link.name
            );
        }
        devices.push(VmmDevice::from_record(record, request.vhost_net, &sysfs)?);
    }
    if devices.is_empty() {
        anyhow::bail!(
            "state file {}: it records no endpoint; attach the sandbox first",
            request.state.display()
        );
    }
    let mut output = VmmConfigOutput {
        vmm: request.vmm.name(),
        args: Vec::new(),
        add_net: Vec::new(),
        network_interfaces: Vec::new(),
    };
    match request.vmm {
        VmmKind::Qemu => {
            if request.rx_rate != 0 || request.tx_rate != 0 {
                anyhow::bail!(
                    "qemu has no rate limiter of its own: give the limits to `attach` \
                     (--rx-rate, --tx-rate), which shapes them on the host"
                );
            }
            let render = RenderOptions {
                memory_mib: request.memory_mib,
                ..RenderOptions::default()
            };
            output.args = qemu::command_line(&devices, &render)?;
        }
        VmmKind::CloudHypervisor => {
            let limiter = cloud_hypervisor::limiter_for(request.rx_rate, request.tx_rate)?;
            output.args = cloud_hypervisor::command_line(&devices, limiter)?;
            for device in &devices {
                if !matches!(device.backend, vmm::VmmBackend::Vfio { .. }) {
                    output
                        .add_net
                        .push(cloud_hypervisor::add_net_body(device, limiter)?);
                }
            }
        }
        VmmKind::Firecracker => {
            for device in &devices {
                output
                    .network_interfaces
                    .push(firecracker::network_interface(
                        device,
                        request.rx_rate,
                        request.tx_rate,
                    )?);
            }
        }
    }
    if request.json {
        println!("{}", serde_json::to_string_pretty(&output)?);
        return Ok(());
    }
    match request.vmm {
        VmmKind::Qemu | VmmKind::CloudHypervisor => {
            println!("{}", shell_words(&output.args));
            if request.vmm == VmmKind::Qemu {
                println!(
                    "# QEMU opens taps by name in its own namespace: run it inside {} \
                     (the taps are persistent)",
                    state.netns.path.display()
                );
            }
        }
        VmmKind::Firecracker => {
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({ "network-interfaces": output.network_interfaces })
                )?
            );
        }
    }
    Ok(())
}

/// The state document (the sandbox's lock is held only while it is read).
fn read_state(path: &Path) -> anyhow::Result<SandboxState> {
    // Opening the store makes its lock file: a path without a document is refused first,
    // leaving nothing behind.
    if !path.exists() {
        anyhow::bail!("state file {} does not exist", path.display());
    }
    let store = sandbox_net_persist::store::StateStore::open(path)?;
    Ok(store.load()?.state)
}

/// `args` joined for a POSIX shell, each quoted when it needs to be.
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=,.:/@%+[]".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `guest-config` output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GuestFormat {
    /// Interfaces, routes and neighbours as JSON.
    Json,
    /// The kernel's `ip=` parameter (one IPv4 interface).
    KernelIp,
}

/// Prints what the guest must be told about its network.
pub fn guest_config(
    state: &Path,
    format: GuestFormat,
    interface: Option<&str>,
    dns: &[Ipv4Addr],
    json: bool,
) -> anyhow::Result<()> {
    let network = GuestNetwork::from_state(&read_state(state)?);
    match format {
        GuestFormat::Json => println!("{}", serde_json::to_string_pretty(&network)?),
        GuestFormat::KernelIp => {
            let line = network
                .kernel_ip(interface, dns)
                .with_context(|| format!("state file {}", state.display()))?;
            if json {
                println!("{}", serde_json::json!({ "kernel_ip": line }));
            } else {
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// One endpoint as `hot-add` prints it.
#[derive(Debug, Serialize)]
struct HotAdded {
    endpoint: String,
    guest_name: String,
    device: String,
    mac: String,
    mtu: u32,
    queues: u32,
}

/// `hot-add`: plugs interfaces of the sandbox's namespace into a running QEMU.
pub async fn hot_add(
    state: &Path,
    qmp: &Path,
    interfaces: &[IfName],
    queues: usize,
    vcpus: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    // QMP first: a socket that is not QEMU's changes nothing.
    let qmp = Qmp::connect(qmp)?;
    let mut network = restore(state)?;
    let qemu = Qemu::with_qmp(
        QemuConfig {
            vcpus: vcpus.unwrap_or(queues),
            queues,
            ..QemuConfig::default()
        },
        qmp,
    );
    let names = (!interfaces.is_empty()).then_some(interfaces);
    let (ids, skipped) = network.hot_add(&qemu, names).await?;
    for s in &skipped {
        eprintln!("warning: {} skipped: {}", s.link, s.reason);
    }
    let added: Vec<HotAdded> = network
        .sandbox()
        .state()
        .endpoints
        .iter()
        .filter(|e| ids.contains(&e.id))
        .map(|e| HotAdded {
            endpoint: e.id.to_string(),
            guest_name: e.interface.link.name.to_string(),
            device: qemu::device_id(&e.id),
            mac: e.guest_mac.map(|m| m.to_string()).unwrap_or_default(),
            mtu: e.interface.link.mtu,
            queues: e.queues,
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&added)?);
    } else {
        for a in &added {
            println!(
                "hot-added {} as endpoint {} (QEMU device {}, MAC {}, MTU {}, {} queue pair(s))",
                a.guest_name, a.endpoint, a.device, a.mac, a.mtu, a.queues
            );
        }
    }
    Ok(())
}

/// `hot-remove`: takes an endpoint out of a running QEMU and detaches it.
pub async fn hot_remove(
    state: &Path,
    qmp: &Path,
    endpoint: &str,
    json: bool,
) -> anyhow::Result<()> {
    let id = EndpointId::try_from(endpoint.to_string())?;
    let qmp = Qmp::connect(qmp)?;
    let mut network = restore(state)?;
    let qemu = Qemu::with_qmp(QemuConfig::default(), qmp);
    network.hot_remove(&qemu, &id).await?;
    if json {
        println!("{}", serde_json::json!({ "removed": id.to_string() }));
    } else {
        println!("hot-removed endpoint {id}");
    }
    Ok(())
}

/// `queues`, lowered to `vcpus` (with a warning) when that is less: a Linux guest uses
/// `min(queue pairs, online vCPUs)`, and the other queues would only cost the host.
pub fn queues_for_vcpus(queues: usize, vcpus: Option<usize>) -> usize {
    match vcpus {
        Some(vcpus) if queues > vcpus.max(1) => {
            let vcpus = vcpus.max(1);
            eprintln!("warning: {queues} queue pairs for {vcpus} vCPU(s): using {vcpus}");
            vcpus
        }
        _ => queues,
    }
}

/// The tap options `attach` uses: persistent (the VMM starts later, in another process).
pub fn attach_tap_options(owner: Option<u32>, group: Option<u32>) -> TapOptions {
    TapOptions {
        queues: 1,
        vnet_hdr: true,
        owner,
        group,
        persist: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_pairs_are_never_more_than_the_vcpus() {
        assert_eq!(queues_for_vcpus(4, Some(2)), 2);
        assert_eq!(queues_for_vcpus(2, Some(4)), 2);
        assert_eq!(queues_for_vcpus(4, None), 4);
        assert_eq!(queues_for_vcpus(4, Some(0)), 1);
    }

    #[test]
    fn arguments_are_quoted_only_when_a_shell_needs_it() {
        let args: Vec<String> = ["-netdev", "tap,id=a,fds=3:4", "it's", ""]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(shell_words(&args), r"-netdev tap,id=a,fds=3:4 'it'\''s' ''");
    }
}
