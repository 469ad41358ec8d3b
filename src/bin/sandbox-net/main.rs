//! The `sandbox-net` command line.

mod vmm_cli;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use sandbox_net::IfName;
use sandbox_net::{
    InterworkingModel, Netns, NetnsSource, Network, NetworkConfig, Owner, ReconcileOptions,
    ReconcileReport, SandboxError, ScanOptions, TapOptions,
    cni::{NetworkConfigList, PluginExec, runtime::CniRecord},
    reconcile::{DriftReport, Outcome},
    telemetry,
};

mod demo;
mod render;

use sandbox_net::handover::{DeviceInfo, HandOver};

/// Exit status of a failed operation.
const EXIT_FAILURE: u8 = 1;
/// Exit status of `check` when the kernel differs from the state.
const EXIT_DRIFT: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "sandbox-net",
    version,
    about = "Network wiring for microVM sandboxes",
    after_help = "Exit status: 0 on success; 1 when the operation failed (the error names the \
                  namespace, device or file and the cause); 2 on a usage error; 3 when `check` \
                  finds the kernel different from the state. `reconcile`: 0 when every state \
                  was handled, 1 when one was refused or left half reaped, 3 when only live \
                  sandboxes differ from their state.\n\
                  Logging: -v for info, -vv for debug; RUST_LOG overrides (e.g. RUST_LOG=sandbox_net_netns=trace).\n\
                  Tracing: --otel-stdout prints spans; OTEL_EXPORTER_OTLP_ENDPOINT exports them over OTLP."
)]
struct Cli {
    /// More logging on stderr (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Print OpenTelemetry spans to stdout as they end.
    #[arg(long, global = true)]
    otel_stdout: bool,
    /// At exit, print this process's peak resident memory (VmHWM) to stderr.
    #[arg(long, global = true)]
    report_peak_memory: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the interfaces of a network namespace, with addresses, routes and neighbours.
    ///
    /// By default Kata's rules apply: loopback and interfaces without an IP address are skipped,
    /// `proto kernel` routes and non-permanent neighbours are left out.
    Scan {
        /// The namespace: a name under /run/netns, or a path such as /proc/PID/ns/net.
        #[arg(long, value_name = "PATH-OR-NAME")]
        netns: String,
        /// Print the scan as JSON (the data model of sandbox-net-persist) instead of a table.
        #[arg(long)]
        json: bool,
        /// Keep everything the kernel reports: no interface, route or neighbour is left out.
        #[arg(long)]
        all: bool,
    },
    /// Attach every endpoint of a pod namespace, for a VMM that opens the taps by name.
    ///
    /// Taps are persistent; the state file records everything `detach` needs, and the
    /// devices a VMM needs are printed.
    Attach {
        /// The pod's namespace: a name under /run/netns, or a path.
        #[arg(long, value_name = "PATH-OR-NAME")]
        netns: String,
        /// The state file to write (it must not exist).
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// How interfaces reach the VM.
        #[arg(long, default_value = "tcfilter", value_parser = parse_model)]
        model: InterworkingModel,
        /// Queue pairs per device (1..=256).
        #[arg(long, default_value_t = 1)]
        queues: usize,
        /// The VM's vCPUs: queue pairs are never more (lowered with a warning).
        #[arg(long)]
        vcpus: Option<usize>,
        /// Host-side limit into the VM, bits/s (0: none).
        #[arg(long, value_name = "BITS", default_value_t = 0)]
        rx_rate: u64,
        /// Host-side limit out of the VM, bits/s (0: none).
        #[arg(long, value_name = "BITS", default_value_t = 0)]
        tx_rate: u64,
        /// The user allowed to open the taps (a jailed VMM).
        #[arg(long, value_name = "UID")]
        owner: Option<u32>,
        /// The group allowed to open the taps.
        #[arg(long, value_name = "GID")]
        group: Option<u32>,
        /// The sandbox's id, recorded in the state (default: the namespace's name).
        #[arg(long)]
        sandbox_id: Option<String>,
        /// The taps live only as long as the VMM `exec` starts holds them: persistent until
        /// `exec` hands their queues over, then not.
        #[arg(long)]
        no_persist: bool,
        /// The process that holds the sandbox once attached (the VMM, or the shim): while
        /// it runs, `reconcile` leaves the sandbox alone; once it has exited, `reconcile`
        /// tears the sandbox down. Without it the sandbox has no owner and is kept.
        #[arg(long, value_name = "PID")]
        owner_pid: Option<u32>,
        /// Print the devices as JSON.
        #[arg(long)]
        json: bool,
        /// Attach even when NS is the host's own network namespace (that of PID 1, however
        /// it is named), handing the node's own interfaces to the VM. Refused otherwise.
        #[arg(long)]
        allow_host_netns: bool,
    },
    /// Start a VMM on the devices of an attached sandbox, handing it their descriptors.
    ///
    /// Opens every endpoint's queues (and vhost-net descriptors with --vhost-net), starts
    /// VMM-ARGV inside the sandbox's namespace with exactly those descriptors inherited and
    /// the VMM's network arguments appended, waits, and exits with the VMM's status (128 + N
    /// when a signal N ended it). SIGINT, SIGTERM and SIGHUP are passed on to the VMM.
    Exec {
        /// The state file written by `attach`.
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// The VMM the arguments are for: qemu or cloud-hypervisor.
        #[arg(long, default_value = "qemu", value_parser = vmm_cli::parse_vmm)]
        vmm: sandbox_net::vmm::VmmKind,
        /// Also hand over one /dev/vhost-net descriptor per queue.
        #[arg(long)]
        vhost_net: bool,
        /// The guest's memory in MiB (QEMU's -m), needed to share it with vhost-user backends.
        #[arg(long, value_name = "MIB")]
        memory: Option<u64>,
        /// The VMM's command line.
        #[arg(last = true, required = true, value_name = "VMM-ARGV")]
        argv: Vec<String>,
    },
    /// Print what a VMM that opens its devices by name needs, for an attached sandbox.
    VmmConfig {
        /// The state file written by `attach`.
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// qemu, cloud-hypervisor or firecracker.
        #[arg(long, value_parser = vmm_cli::parse_vmm)]
        vmm: sandbox_net::vmm::VmmKind,
        /// The VMM is to use vhost-net.
        #[arg(long)]
        vhost_net: bool,
        /// The VMM's own limit into the VM, bits/s (Cloud Hypervisor, Firecracker).
        #[arg(long, value_name = "BITS", default_value_t = 0)]
        rx_rate: u64,
        /// The VMM's own limit out of the VM, bits/s (Cloud Hypervisor, Firecracker).
        #[arg(long, value_name = "BITS", default_value_t = 0)]
        tx_rate: u64,
        /// The guest's memory in MiB (QEMU's -m), needed to share it with vhost-user backends.
        #[arg(long, value_name = "MIB")]
        memory: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print what the guest must be told about its network (from the recorded scan).
    GuestConfig {
        /// The state file written by `attach`.
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// json (interfaces, routes, neighbours) or kernel-ip (`ip=` for one IPv4 interface).
        #[arg(long, value_enum, default_value = "json")]
        format: vmm_cli::GuestFormat,
        /// The interface for kernel-ip (default: the only one with an IPv4 address).
        #[arg(long, value_name = "NAME")]
        interface: Option<String>,
        /// A DNS server for kernel-ip (at most two).
        #[arg(long, value_name = "IPV4")]
        dns: Vec<std::net::Ipv4Addr>,
        /// Print JSON (kernel-ip as {"kernel_ip": ...}).
        #[arg(long)]
        json: bool,
    },
    /// Attach interfaces of the sandbox's namespace and plug them into a running QEMU (QMP).
    HotAdd {
        /// The state file written by `attach`.
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// QEMU's QMP socket.
        #[arg(long, value_name = "SOCKET")]
        qmp: PathBuf,
        /// The interfaces to add (default: every one not attached yet).
        #[arg(long, value_name = "NAME")]
        interface: Vec<String>,
        /// Queue pairs per device.
        #[arg(long, default_value_t = 1)]
        queues: usize,
        /// The VM's vCPUs (queue pairs are never more; default: --queues).
        #[arg(long)]
        vcpus: Option<usize>,
        /// Print the added endpoints as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take an endpoint out of a running QEMU (QMP) and detach it.
    HotRemove {
        /// The state file written by `attach`.
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// QEMU's QMP socket.
        #[arg(long, value_name = "SOCKET")]
        qmp: PathBuf,
        /// The endpoint's id (from the state file or hot-add's output).
        #[arg(long, value_name = "ID")]
        endpoint: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Detach everything recorded in a state file and restore the pod's own configuration.
    Detach {
        /// The state file written by `attach`.
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// Print JSON: {"detached": N, "state": FILE}.
        #[arg(long)]
        json: bool,
    },
    /// Compare the kernel with a state file; exit status 3 when they differ.
    Check {
        /// The state file written by `attach`.
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// Print JSON: {"state", "endpoints", "drifts": [{"endpoint", "step", "expected",
        /// "found"}]} (the drifts as `reconcile --json` reports them).
        #[arg(long)]
        json: bool,
    },
    /// Create a namespace, run a CNI network configuration into it (ADD of each plugin in
    /// order), and attach its endpoints, for a VMM that opens the taps by name.
    ///
    /// The state file records the namespace, the CNI network (with ADD's result) and the
    /// endpoints: `down` undoes all of it. When the state file already exists (an earlier run
    /// that died), that run is deleted first: endpoints, CNI DEL, namespace.
    Up {
        /// The namespace to create: a name under /run/netns, or a path.
        #[arg(long, value_name = "PATH-OR-NAME")]
        netns: String,
        /// The state file to write.
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// The network configuration: a .conflist, or one plugin's .conf.
        #[arg(long, value_name = "FILE")]
        conflist: PathBuf,
        /// Where the plugins are (`:`-separated; default: $CNI_PATH, else /opt/cni/bin:/usr/lib/cni).
        #[arg(long, value_name = "DIRS")]
        cni_path: Option<String>,
        /// The pod interface's name (CNI_IFNAME).
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// CNI_ARGS (`K=V;K=V`).
        #[arg(long, value_name = "ARGS", default_value = "")]
        cni_args: String,
        /// Run the plugins inside this namespace instead of this process's (a node namespace).
        #[arg(long, value_name = "PATH-OR-NAME")]
        node_netns: Option<String>,
        /// How interfaces reach the VM.
        #[arg(long, default_value = "tcfilter", value_parser = parse_model)]
        model: InterworkingModel,
        /// Queue pairs per device (1..=256).
        #[arg(long, default_value_t = 1)]
        queues: usize,
        /// Host-side limit into the VM, bits/s (0: none).
        #[arg(long, value_name = "BITS", default_value_t = 0)]
        rx_rate: u64,
        /// Host-side limit out of the VM, bits/s (0: none).
        #[arg(long, value_name = "BITS", default_value_t = 0)]
        tx_rate: u64,
        /// The sandbox's id, the CNI container id (default: the namespace's name).
        #[arg(long)]
        sandbox_id: Option<String>,
        /// Print the devices as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Undo `up`: detach the endpoints, run the CNI network's DEL (plugins in reverse order),
    /// delete the namespace, remove the state file.
    Down {
        /// The state file written by `up`.
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// Print JSON: {"detached": N, "state": FILE}.
        #[arg(long)]
        json: bool,
    },
    /// Adopt or reap every sandbox whose state lies under a directory.
    ///
    /// Owner gone (an attach or detach that died, a VMM or shim that exited): torn down from
    /// the record, the pod restored, the state removed. Owner alive: checked, nothing changed.
    /// No owner: kept (reaped with --reap-unowned). Files that cannot be read are reported by
    /// name and left alone. Sandboxes are handled in parallel.
    Reconcile {
        /// The state directory (searched with its subdirectories).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Report what would be done, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Reap sandboxes that record no owner, too.
        #[arg(long)]
        reap_unowned: bool,
        /// Sandboxes handled at once.
        #[arg(long, value_name = "N", default_value_t = sandbox_net::reconcile::DEFAULT_CONCURRENCY)]
        concurrency: usize,
        /// Also act on sandboxes recorded in the host's own network namespace.
        #[arg(long)]
        include_host_netns: bool,
    },
    /// Run a self-contained demonstration in throwaway namespaces (needs root only).
    Demo {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_model(text: &str) -> Result<InterworkingModel, String> {
    text.parse()
        .map_err(|e: sandbox_net::UnknownModel| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let export = telemetry::export_from_env(cli.otel_stdout);
    // The guard flushes the spans when main returns.
    let _telemetry = match telemetry::install(cli.verbose, export) {
        Ok(guard) => Some(guard),
        Err(err) => {
            eprintln!("warning: spans will not be exported: {err:#}");
            telemetry::install(cli.verbose, telemetry::Export::None).ok()
        }
    };
    let report_peak = cli.report_peak_memory;
    let code = match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            // The chain is printed once, here: "error: what failed: why: deeper cause".
            eprintln!("error: {}", sandbox_net::error_chain(&*err));
            ExitCode::from(EXIT_FAILURE)
        }
    };
    if report_peak {
        // VmHWM is this process's own peak: unlike getrusage's maxrss it does not include the
        // memory of the parent this process was spawned from.
        // RssAnon is this process's own; RssFile is mostly its code and libc's, pages it
        // shares with every other process of the same files.
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or("unknown")
        };
        eprintln!(
            "peak memory: {} (at exit: anonymous {}, file-backed {})",
            field("VmHWM:"),
            field("RssAnon:"),
            field("RssFile:")
        );
    }
    code
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    // One thread is enough for a CLI: the work is netlink round trips, and namespace work runs
    // on threads of its own. It keeps the footprint small.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match command {
            Command::Scan { netns, json, all } => {
                scan(&netns, json, all).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Attach {
                netns,
                state,
                model,
                queues,
                vcpus,
                rx_rate,
                tx_rate,
                owner,
                group,
                sandbox_id,
                no_persist,
                owner_pid,
                json,
                allow_host_netns,
            } => {
                let tap = vmm_cli::attach_tap_options(owner, group);
                let queues = vmm_cli::queues_for_vcpus(queues, vcpus);
                let request = AttachRequest {
                    netns,
                    state,
                    model,
                    queues,
                    rx_rate,
                    tx_rate,
                    tap,
                    sandbox_id,
                    no_persist,
                    owner_pid,
                    json,
                    allow_host_netns,
                };
                attach(request).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Detach { state, json } | Command::Down { state, json } => {
                detach(state, json).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Up {
                netns,
                state,
                conflist,
                cni_path,
                ifname,
                cni_args,
                node_netns,
                model,
                queues,
                rx_rate,
                tx_rate,
                sandbox_id,
                json,
            } => {
                let request = UpRequest {
                    netns,
                    state,
                    conflist,
                    cni_path,
                    ifname,
                    cni_args,
                    node_netns,
                    model,
                    queues,
                    rx_rate,
                    tx_rate,
                    sandbox_id,
                    json,
                };
                up(request).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Exec {
                state,
                vmm,
                vhost_net,
                memory,
                argv,
            } => {
                vmm_cli::exec(vmm_cli::ExecRequest {
                    state,
                    vmm,
                    vhost_net,
                    memory_mib: memory,
                    argv,
                })
                .await
            }
            Command::VmmConfig {
                state,
                vmm,
                vhost_net,
                rx_rate,
                tx_rate,
                memory,
                json,
            } => vmm_cli::vmm_config(vmm_cli::VmmConfigRequest {
                state,
                vmm,
                vhost_net,
                rx_rate,
                tx_rate,
                memory_mib: memory,
                json,
            })
            .map(|()| ExitCode::SUCCESS),
            Command::GuestConfig {
                state,
                format,
                interface,
                dns,
                json,
            } => vmm_cli::guest_config(&state, format, interface.as_deref(), &dns, json)
                .map(|()| ExitCode::SUCCESS),
            Command::HotAdd {
                state,
                qmp,
                interface,
                queues,
                vcpus,
                json,
            } => {
                let names = interface
                    .iter()
                    .map(|n| IfName::new(n.as_str()))
                    .collect::<Result<Vec<_>, _>>()?;
                vmm_cli::hot_add(&state, &qmp, &names, queues, vcpus, json)
                    .await
                    .map(|()| ExitCode::SUCCESS)
            }
            Command::HotRemove {
                state,
                qmp,
                endpoint,
                json,
            } => vmm_cli::hot_remove(&state, &qmp, &endpoint, json)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Check { state, json } => check(state, json).await,
            Command::Reconcile {
                dir,
                json,
                dry_run,
                reap_unowned,
                concurrency,
                include_host_netns,
            } => {
                let options = ReconcileOptions {
                    dry_run,
                    reap_unowned,
                    concurrency,
                    host_netns: include_host_netns,
                    ..ReconcileOptions::default()
                };
                reconcile(&dir, &options, json).await
            }
            Command::Demo { json } => {
                let report = demo::run().await?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report)
                            .context("cannot encode the report as JSON")?
                    );
                } else {
                    print!("{report}");
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

async fn scan(netns: &str, json: bool, all: bool) -> anyhow::Result<()> {
    let netns = Netns::open_path_or_name(netns)?;
    let options = if all {
        ScanOptions::unfiltered()
    } else {
        ScanOptions::default()
    };
    let scan = netns.rtnl().await?.scan(&options).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&scan).context("cannot encode the scan as JSON")?
        );
    } else {
        println!("namespace {} {}", netns.path().display(), netns.id());
        print!("{}", render::scan_table(&scan));
    }
    Ok(())
}

struct AttachRequest {
    netns: String,
    state: PathBuf,
    model: InterworkingModel,
    queues: usize,
    rx_rate: u64,
    tx_rate: u64,
    tap: TapOptions,
    sandbox_id: Option<String>,
    no_persist: bool,
    owner_pid: Option<u32>,
    json: bool,
    allow_host_netns: bool,
}

async fn attach(request: AttachRequest) -> anyhow::Result<()> {
    // The owner is named before anything changes: a pid without a process is a usage error.
    let owner = request
        .owner_pid
        .map(Owner::of_pid)
        .transpose()
        .context("--owner-pid")?;
    let netns = Netns::open_path_or_name(&request.netns)?;
    let sandbox_id = request.sandbox_id.clone().unwrap_or_else(|| {
        netns
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sandbox".into())
    });
    let config = NetworkConfig {
        model: request.model,
        tap: request.tap.clone(),
        allow_host_netns: request.allow_host_netns,
        ..NetworkConfig::default()
    };
    let mut network = Network::create(
        &request.state,
        &sandbox_id,
        NetnsSource::Given(netns),
        config,
    )?;
    network.set_taps_end_with_vmm(request.no_persist);
    let vmm = HandOver::new(request.queues, request.rx_rate, request.tx_rate);
    let (_, skipped) = match network.add_endpoints(&vmm, None).await {
        Ok(added) => added,
        Err(e) => {
            // Everything this attach did is undone; leave no state file either.
            network
                .teardown()
                .await
                .context("cannot remove the state of the failed attach")?;
            return Err(e.into());
        }
    };
    for s in &skipped {
        eprintln!("warning: {} skipped: {}", s.link, s.reason);
    }
    if let Some(owner) = owner {
        network
            .set_owner(Some(owner))
            .await
            .context("cannot record the sandbox's owner")?;
    }
    let devices = vmm.devices();
    if request.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&devices).context("cannot encode the devices as JSON")?
        );
    } else {
        print!("{}", device_table(&devices));
        println!("state: {}", request.state.display());
    }
    Ok(())
}

struct UpRequest {
    netns: String,
    state: PathBuf,
    conflist: PathBuf,
    cni_path: Option<String>,
    ifname: String,
    cni_args: String,
    node_netns: Option<String>,
    model: InterworkingModel,
    queues: usize,
    rx_rate: u64,
    tx_rate: u64,
    sandbox_id: Option<String>,
    json: bool,
}

/// Plugins are looked for here when neither --cni-path nor CNI_PATH says.
const DEFAULT_CNI_PATH: &str = "/opt/cni/bin:/usr/lib/cni";

async fn up(request: UpRequest) -> anyhow::Result<()> {
    if request.state.exists() {
        // A run that died (after its CNI ADD, say) left its record: delete before adding, as
        // a runtime must, so that its lease, veth and namespace do not leak.
        eprintln!(
            "note: {} is left by an earlier run that did not finish: deleting it before adding",
            request.state.display()
        );
        let network = Network::restore(&request.state, NetworkConfig::default())
            .context("cannot load the leftover of an earlier run")?;
        network
            .teardown()
            .await
            .context("cannot delete the leftover of an earlier run")?;
    }
    let list = NetworkConfigList::from_file(&request.conflist)?;
    let config_json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&request.conflist)
            .with_context(|| format!("cannot read {}", request.conflist.display()))?,
    )
    .with_context(|| format!("{} is not JSON", request.conflist.display()))?;
    let netns_path = if request.netns.contains('/') {
        PathBuf::from(&request.netns)
    } else {
        sandbox_net_netns::named_path(&request.netns)?
    };
    let node_netns = match &request.node_netns {
        Some(node) => Some(Netns::open_path_or_name(node)?.path().to_path_buf()),
        None => None,
    };
    let plugin_dirs = PluginExec::split_path(
        &request
            .cni_path
            .clone()
            .or_else(|| std::env::var("CNI_PATH").ok().filter(|p| !p.is_empty()))
            .unwrap_or_else(|| DEFAULT_CNI_PATH.into()),
    );
    let args = sandbox_net::cni::plugin::request::parse_args(&request.cni_args)
        .map_err(|e| anyhow::anyhow!("--cni-args: {}", e.msg))?;
    let sandbox_id = request.sandbox_id.clone().unwrap_or_else(|| {
        netns_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sandbox".into())
    });
    let config = NetworkConfig {
        model: request.model,
        tap: TapOptions {
            queues: 1,
            vnet_hdr: true,
            owner: None,
            group: None,
            persist: true,
        },
        ..NetworkConfig::default()
    };
    let mut network = Network::create(
        &request.state,
        &sandbox_id,
        NetnsSource::Create(netns_path),
        config,
    )?;
    let record = CniRecord {
        config: config_json,
        ifname: request.ifname.clone(),
        args,
        plugin_dirs,
        node_netns,
        result: None,
    };
    let result = match network.add_cni(record).await {
        Ok(result) => result,
        Err(e) => {
            network
                .teardown()
                .await
                .context("cannot undo the failed up")?;
            return Err(e.into());
        }
    };
    kill_point_after_cni_add();
    let vmm = HandOver::new(request.queues, request.rx_rate, request.tx_rate);
    if let Err(e) = network.add_endpoints(&vmm, None).await {
        network
            .teardown()
            .await
            .context("cannot undo the failed up")?;
        return Err(e.into());
    }
    let devices = vmm.devices();
    if request.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&devices).context("cannot encode the devices as JSON")?
        );
    } else {
        let ips: Vec<String> = result.ips.iter().map(|ip| ip.address.to_string()).collect();
        println!(
            "network {} (CNI {}): {}",
            list.name,
            list.version,
            ips.join(", ")
        );
        print!("{}", device_table(&devices));
        println!("state: {}", request.state.display());
    }
    Ok(())
}

/// With the `fault-injection` feature, `SANDBOX_NET_KILL_AFTER_CNI_ADD` makes `up` kill
/// itself with SIGKILL right after the CNI ADD, as a runtime crashing there would.
fn kill_point_after_cni_add() {
    #[cfg(feature = "fault-injection")]
    if std::env::var_os("SANDBOX_NET_KILL_AFTER_CNI_ADD").is_some() {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

fn device_table(devices: &[DeviceInfo]) -> String {
    let mut out = format!(
        "{:<18} {:<8} {:<9} {:<16} {:<19} {:>5} {:>6}\n",
        "ENDPOINT", "GUEST", "BACKEND", "DEVICE", "MAC", "MTU", "QUEUES"
    );
    for d in devices {
        out.push_str(&format!(
            "{:<18} {:<8} {:<9} {:<16} {:<19} {:>5} {:>6}\n",
            d.endpoint, d.guest_name, d.backend, d.device, d.mac, d.mtu, d.queues
        ));
    }
    out
}

async fn detach(state: PathBuf, json: bool) -> anyhow::Result<()> {
    let network = Network::restore(&state, NetworkConfig::default())?;
    let count = network.sandbox().state().endpoints.len();
    network.teardown().await?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "detached": count, "state": state })
        );
    } else {
        println!("detached {count} endpoint(s); {} removed", state.display());
    }
    Ok(())
}

async fn check(state: PathBuf, json: bool) -> anyhow::Result<ExitCode> {
    let network = Network::restore(&state, NetworkConfig::default())?;
    let drifts = network
        .check()
        .await
        .map_err(|e: SandboxError| anyhow::Error::from(e))?;
    let code = if drifts.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DRIFT)
    };
    if json {
        let endpoints = network.sandbox().state().endpoints.len();
        let drifts: Vec<DriftReport> = drifts
            .into_iter()
            .map(|(endpoint, drift)| DriftReport::new(endpoint, drift))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "state": state,
                "endpoints": endpoints,
                "drifts": drifts,
            }))
            .context("cannot encode the check as JSON")?
        );
        return Ok(code);
    }
    if drifts.is_empty() {
        println!(
            "{}: the kernel matches the state ({} endpoint(s))",
            state.display(),
            network.sandbox().state().endpoints.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for (endpoint, drift) in &drifts {
        println!("endpoint {endpoint}: {drift}");
    }
    Ok(code)
}

async fn reconcile(
    dir: &std::path::Path,
    options: &ReconcileOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let report = sandbox_net::reconcile(dir, options).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot encode the report as JSON")?
        );
    } else {
        print!("{}", reconcile_text(&report));
    }
    Ok(if !report.complete() {
        ExitCode::from(EXIT_FAILURE)
    } else if report.summary.alive_drift > 0 {
        ExitCode::from(EXIT_DRIFT)
    } else {
        ExitCode::SUCCESS
    })
}

/// One line per state file (and one per drift), then the summary.
fn reconcile_text(report: &ReconcileReport) -> String {
    let mut out = String::new();
    for sandbox in &report.sandboxes {
        let file = sandbox.file.display();
        let id = sandbox
            .sandbox_id
            .as_deref()
            .map(|id| format!(" (sandbox {id})"))
            .unwrap_or_default();
        let owner = sandbox
            .owner
            .as_ref()
            .map(|o| format!("owner {o}"))
            .unwrap_or_else(|| "no owner".into());
        let line = match &sandbox.outcome {
            Outcome::Reaped {
                why,
                endpoints,
                namespace_gone,
                steps_gone_with_namespace,
            } => {
                let gone = if *namespace_gone {
                    format!(
                        "; its namespace was gone, with {steps_gone_with_namespace} recorded step(s) in it"
                    )
                } else {
                    String::new()
                };
                format!(
                    "reaped     {file}{id}: {endpoints} endpoint(s) torn down, state removed ({why}){gone}"
                )
            }
            Outcome::WouldReap { why, endpoints } => {
                format!("would reap {file}{id}: {endpoints} endpoint(s) ({why})")
            }
            Outcome::AliveClean { endpoints } => {
                format!(
                    "alive      {file}{id}: {owner} runs; the kernel matches the state ({endpoints} endpoint(s))"
                )
            }
            Outcome::AliveDrift { drifts } => {
                let mut text =
                    format!("drift      {file}{id}: {owner} runs; the kernel differs (left as is)");
                for d in drifts {
                    text.push_str(&format!(
                        "\n             endpoint {}: {}: expected {}, found {}",
                        d.endpoint, d.step, d.expected, d.found
                    ));
                }
                text
            }
            Outcome::Unowned { endpoints } => format!(
                "unowned    {file}{id}: no owner recorded; kept ({endpoints} endpoint(s); --reap-unowned reaps it)"
            ),
            Outcome::Busy => {
                format!(
                    "busy       {file}{id}: locked by a live process (an attach or detach under way); left alone"
                )
            }
            Outcome::Refused { error } => format!("refused    {error}"),
            Outcome::Left { why, errors } => format!(
                "left       {file}{id}: reaped in part ({why}); the state stays for another try: {}",
                errors.join("; ")
            ),
        };
        out.push_str(&line);
        out.push('\n');
    }
    for file in &report.removed_leftovers {
        out.push_str(&format!("removed    {}: left by a crash\n", file.display()));
    }
    let s = &report.summary;
    let reaped = if report.dry_run {
        format!("{} would be reaped", s.would_reap)
    } else {
        format!("{} reaped", s.reaped)
    };
    out.push_str(&format!(
        "summary: {reaped}, {} alive and clean, {} alive with drift, {} unowned (kept), {} busy, {} refused, {} left\n",
        s.alive_clean, s.alive_drift, s.unowned, s.busy, s.refused, s.left
    ));
    out
}
