//! `sandbox-net-cni`: a CNI 1.1 chained plugin that wires the pod interface(s) an earlier
//! plugin (ptp, bridge, macvlan, ...) made to a tap for a VM, as tc-redirect-tap does, with
//! this module's models, limits, crash-safe state and drift check.
//!
//! ## Behavior
//! - **ADD** wires `CNI_IFNAME` (or, with `"allInterfaces": true`, every interface of
//!   `prevResult` in `CNI_NETNS`) with the configured model (`tcfilter` by default, or
//!   `macvtap`), `queues`, `rxRate`/`txRate` (host-side HTB/IFB, bits/s) and the tap's owner
//!   (`tapOwner`/`tapGroup`, or `CNI_ARGS` `TC_REDIRECT_TAP_UID`/`_GID`). The tap is
//!   persistent (the VMM opens it by name): `tap{N}_kata` with the first free `N`, or
//!   `TC_REDIRECT_TAP_NAME`. The result is `prevResult` plus, per wired interface, the tap
//!   (`sandbox` = the namespace path) and a pseudo-interface for the VM with the tap's name,
//!   the guest MAC and `sandbox` = the container id, and a copy of each IP of the wired
//!   interface pointing at the VM interface: what firecracker-go-sdk's `vmconf` reads. IPs
//!   without an `interface` index are matched to the wired interface by its addresses in the
//!   kernel. Interfaces carry `mtu` (1.1.0).
//! - **CHECK** compares the kernel with the recorded steps (tap, qdiscs, redirects, HTB/IFB,
//!   MAC, MTU) and `prevResult` with what ADD added; any difference is error 102 naming it.
//!   CHECK exists from 0.4.0, STATUS and GC from 1.1.0: a request of an older version for one
//!   of them is error 1, as the reference plugins' `skel` answers.
//! - **DEL** undoes everything from the record: when the record is gone, when the namespace is
//!   gone, twice. The pod interface is restored exactly (MAC, addresses, routes, neighbours).
//! - **STATUS** is 0 when ADD can work, else 50 with every reason: `/dev/net/tun` cannot be
//!   opened, the kernel refuses an ingress qdisc or a u32/mirred redirect (probed in a
//!   throwaway namespace), the state directory is not writable.
//! - **GC** tears down every recorded attachment of the network that is not in
//!   `cni.dev/valid-attachments`, going on past failures and reporting them all.
//! - **VERSION** lists 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0.
//! - State: `<stateDir>/<network>/<container id>/<ifname>.json` (default `stateDir`
//!   `/var/lib/cni/sandbox-net`), the sandbox state store: the plan is written before any
//!   kernel change, so a kill at any point of ADD is undone by the next DEL.
//!
//! ## Limitations
//! - With the `macvtap` model the pod interface has no addresses while attached, so the
//!   CHECK of the plugin before this one (ptp, bridge) fails: set `disableCheck`, or use
//!   `tcfilter`.
//! - A namespace path that now holds another namespace than the recorded one is refused, DEL
//!   included: the record's objects cannot be told from the new namespace's.

pub mod request;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use sandbox_net_endpoints::{
    AttachOptions, ClassifyOptions, Plug, endpoints_from_scan, physical::SysfsPci,
};
use sandbox_net_interworking::TapOptions;
use sandbox_net_netns::{Netns, ScanOptions};
use sandbox_net_persist::{IfName, steps::Step, store::StoreError};
use serde_json::Value;

use self::request::{
    ARG_TAP_GID, ARG_TAP_NAME, ARG_TAP_UID, AttachmentEnv, CniEnv, PluginConfig, parse_stdin,
    request_version,
};
use super::{
    CniVersion,
    error::{CniError, code},
    exec::CniCommand,
    result::{CniResult, Interface, IpConfig},
};
use crate::{Sandbox, SandboxError, error_chain, handover::HandOver};

/// The device every tap is made through.
const TUN_PATH: &str = "/dev/net/tun";

/// What the binary prints and how it exits.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// What goes on stdout (a result, a VERSION answer, or an error), if anything.
    pub stdout: Option<Value>,
    /// The exit status: 0 on success, 1 on error.
    pub exit_code: u8,
    /// The error, when there was one (for logs).
    pub error: Option<CniError>,
}

impl Outcome {
    fn success(stdout: Option<Value>) -> Self {
        Self {
            stdout,
            exit_code: 0,
            error: None,
        }
    }

    fn failure(error: CniError, version: CniVersion) -> Self {
        Self {
            stdout: Some(error.to_json(version)),
            exit_code: 1,
            error: Some(error),
        }
    }
}

/// Fault points of ADD, for the crash tests: only the `fault-injection` feature gives it
/// any (`Faults::default()` injects nothing).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// The kernel steps' fault points.
    #[cfg(feature = "fault-injection")]
    pub apply: sandbox_net_interworking::ApplyHooks,
}

/// Runs one invocation: the environment `env` and the request `stdin`.
pub async fn run(env: &CniEnv, stdin: &[u8], faults: Faults) -> Outcome {
    let command = match env.command() {
        Ok(c) => c,
        Err(e) => return Outcome::failure(e, CniVersion::LATEST),
    };
    if command == CniCommand::Version {
        return version(stdin);
    }
    let request = match parse_stdin(stdin) {
        Ok(r) => r,
        Err(e) => return Outcome::failure(e, CniVersion::LATEST),
    };
    let version = match request_version(&request) {
        Ok(v) => v,
        Err(e) => return Outcome::failure(e, CniVersion::LATEST),
    };
    if let Err(e) = command_exists(command, version) {
        return Outcome::failure(e, version);
    }
    let config = match PluginConfig::from_request(&request, version) {
        Ok(c) => c,
        // DEL is best effort: it needs only the network's name and the state directory, so a
        // field it does not use (a bad model, an unreadable prevResult) does not stop it, and
        // the plugins before this one in the chain still get their DEL.
        Err(e) if command == CniCommand::Del => match PluginConfig::for_del(&request, version) {
            Ok(c) => {
                tracing::warn!(error = %e, "DEL goes on with the network name and state directory only");
                c
            }
            Err(_) => return Outcome::failure(e, version),
        },
        Err(e) => return Outcome::failure(e, version),
    };
    let span = tracing::info_span!(
        "cni.plugin",
        command = %command,
        network = %config.network,
        container = tracing::field::Empty,
        ifname = tracing::field::Empty,
        version = %version
    );
    #[cfg(feature = "cli")]
    super::trace::continue_trace(&span, env.traceparent.as_deref(), env.tracestate.as_deref());
    let outcome =
        tracing::Instrument::instrument(dispatch(command, env, &config, faults), span.clone())
            .await;
    match outcome {
        Ok(stdout) => Outcome::success(stdout),
        Err(e) => {
            span.in_scope(|| tracing::error!(code = e.code, error = %e, "CNI request failed"));
            Outcome::failure(e, version)
        }
    }
}

async fn dispatch(
    command: CniCommand,
    env: &CniEnv,
    config: &PluginConfig,
    faults: Faults,
) -> Result<Option<Value>, CniError> {
    let attachment = |netns_optional| -> Result<AttachmentEnv, CniError> {
        let a = AttachmentEnv::from_env(env, netns_optional)?;
        let span = tracing::Span::current();
        span.record("container", a.container_id.as_str());
        span.record("ifname", a.ifname.as_str());
        Ok(a)
    };
    match command {
        CniCommand::Add => add(&attachment(false)?, config, faults).await.map(Some),
        CniCommand::Check => check(&attachment(false)?, config).await.map(|()| None),
        CniCommand::Del => del(&attachment(true)?, config).await.map(|()| None),
        CniCommand::Status => status(config).await.map(|()| None),
        CniCommand::Gc => gc(config).await.map(|()| None),
        CniCommand::Version => Ok(None),
    }
}

/// The error 1 for a command the request's version does not have. The specification adds
/// CHECK in 0.4.0 and STATUS and GC in 1.1.0, and the reference plugins' `skel` refuses them
/// for an older configuration with "incompatible CNI version"; a runtime of that version never
/// sends them (libcni refuses CHECK below 0.4.0 and skips STATUS and GC below 1.1.0).
fn command_exists(command: CniCommand, version: CniVersion) -> Result<(), CniError> {
    let since = match command {
        CniCommand::Check => CniVersion::V0_4_0,
        CniCommand::Status | CniCommand::Gc => CniVersion::V1_1_0,
        CniCommand::Add | CniCommand::Del | CniCommand::Version => return Ok(()),
    };
    if version >= since {
        return Ok(());
    }
    Err(CniError {
        code: code::INCOMPATIBLE_VERSION,
        msg: format!("config version {version} does not allow {command}"),
        details: format!("{command} exists from CNI {since} on"),
    })
}

/// VERSION: the versions spoken, answering with the request's `cniVersion` as the
/// specification asks (whatever it says; the newest when it has none).
fn version(stdin: &[u8]) -> Outcome {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .unwrap_or_else(|| CniVersion::LATEST.as_str().into());
    let supported: Vec<&str> = CniVersion::ALL.iter().map(|v| v.as_str()).collect();
    Outcome::success(Some(serde_json::json!({
        "cniVersion": asked,
        "supportedVersions": supported,
    })))
}

/// The error for a sandbox failure: the lock held elsewhere is "try again later".
fn sandbox_error(msg: &str, e: SandboxError) -> CniError {
    if let SandboxError::Store(StoreError::Locked { .. }) = &e {
        return CniError::new(
            code::TRY_AGAIN_LATER,
            format!("{msg}: {e}; try again later"),
        );
    }
    let code = match &e {
        SandboxError::Store(_) => code::STATE,
        SandboxError::Exists(_) => code::ATTACHMENT_EXISTS,
        _ => code::KERNEL,
    };
    CniError::caused(code, msg, &e)
}

fn open_netns(path: &Path) -> Result<Netns, CniError> {
    Netns::open(path).map_err(|e| {
        CniError::caused(
            code::INVALID_ENVIRONMENT,
            format!("CNI_NETNS={} cannot be opened", path.display()),
            &e,
        )
    })
}

/// Options for teardown from the record (the model and taps come from the recorded steps).
fn teardown_options() -> AttachOptions {
    AttachOptions::default()
}

/// The VM-side link (tap or macvtap) an endpoint's steps create.
fn vm_link_of(steps: &[Step]) -> Option<&IfName> {
    steps.iter().find_map(|s| match s {
        Step::CreateTap { name, .. } | Step::CreateMacvtap { name, .. } => Some(name),
        _ => None,
    })
}

/// What ADD made for one interface, for the result.
struct Wired {
    pod_link: IfName,
    pod_addresses: Vec<std::net::IpAddr>,
    /// The routes through the pod link, as the kernel has them (for their MTU and MSS).
    pod_routes: Vec<sandbox_net_persist::scan::Route>,
    tap: IfName,
    tap_mac: Option<String>,
    guest_mac: Option<String>,
    mtu: u32,
}

#[tracing::instrument(name = "cni.add", skip_all, err)]
async fn add(a: &AttachmentEnv, config: &PluginConfig, faults: Faults) -> Result<Value, CniError> {
    let prev = config.prev_result.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "prevResult is missing: sandbox-net-cni is a chained plugin and runs after the plugin that makes the pod interface (ptp, bridge, macvlan, ...)",
        )
    })?;
    let netns_path = a.netns.clone().unwrap_or_default();
    let netns_text = netns_path.display().to_string();
    let netns = open_netns(&netns_path)?;

    // Which interfaces: CNI_IFNAME, or every one of prevResult in this namespace.
    let wanted: Vec<IfName> = if config.all_interfaces {
        let mut seen = BTreeSet::new();
        let mut names = Vec::new();
        for i in &prev.interfaces {
            if i.sandbox.as_deref() == Some(netns_text.as_str()) && seen.insert(i.name.clone()) {
                names.push(IfName::new(&i.name).map_err(|e| {
                    CniError::new(
                        code::INVALID_CONFIG,
                        format!("prevResult names interface {:?}: {e}", i.name),
                    )
                })?);
            }
        }
        if names.is_empty() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("allInterfaces: prevResult has no interface in {netns_text}"),
            ));
        }
        names
    } else {
        vec![a.ifname.clone()]
    };
    let tap_name = a
        .arg(ARG_TAP_NAME)
        .map(|n| {
            IfName::new(n).map_err(|e| {
                CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!("CNI_ARGS {ARG_TAP_NAME}={n:?}: {e}"),
                )
            })
        })
        .transpose()?;
    if tap_name.is_some() && wanted.len() > 1 {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "CNI_ARGS {ARG_TAP_NAME} names one tap, but allInterfaces wires {} interfaces",
                wanted.len()
            ),
        ));
    }
    let id_arg = |key: &str, configured: Option<u32>| -> Result<Option<u32>, CniError> {
        match a.arg(key) {
            None => Ok(configured),
            Some(v) => v.parse().map(Some).map_err(|_| {
                CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!("CNI_ARGS {key}={v:?} is not a number"),
                )
            }),
        }
    };
    let owner = id_arg(ARG_TAP_UID, config.tap_owner)?;
    let group = id_arg(ARG_TAP_GID, config.tap_group)?;

    let state_path = config.state_path(&a.container_id, a.ifname.as_str());
    let mut sandbox = Sandbox::create(&state_path, &a.container_id, netns.clone(), config.model)
        .map_err(|e| match e {
            SandboxError::Exists(path) => CniError::new(
                code::ATTACHMENT_EXISTS,
                format!(
                    "attachment ({}, {}) already exists (state {}): DEL it first",
                    a.container_id,
                    a.ifname,
                    path.display()
                ),
            ),
            other => sandbox_error("cannot start the attachment's state", other),
        })?;

    let added = wire(
        &mut sandbox,
        &netns,
        &netns_text,
        &wanted,
        tap_name,
        owner,
        group,
        config,
        faults,
    )
    .await;
    match added {
        Ok(wired) => {
            drop(sandbox);
            Ok(
                result_with_taps(prev, &wired, &netns_text, &a.container_id)
                    .to_json(config.version),
            )
        }
        Err(error) => {
            // Nothing of this ADD may stay: what was wired is undone, the state removed.
            if let Err(e) = sandbox.teardown(&teardown_options()).await {
                tracing::warn!(error = %error_chain(&e), "could not undo a failed ADD");
            } else if let Err(e) = sandbox.forget().await {
                tracing::warn!(error = %error_chain(&e), "could not remove the state of a failed ADD");
            }
            remove_empty_parent(&state_path);
            Err(error)
        }
    }
}

/// The wiring of ADD, on a sandbox whose state is not yet written: on error the caller undoes
/// whatever is recorded.
#[allow(clippy::too_many_arguments)]
async fn wire(
    sandbox: &mut Sandbox,
    netns: &Netns,
    netns_text: &str,
    wanted: &[IfName],
    tap_name: Option<IfName>,
    owner: Option<u32>,
    group: Option<u32>,
    config: &PluginConfig,
    #[cfg_attr(not(feature = "fault-injection"), allow(unused_variables))] faults: Faults,
) -> Result<Vec<Wired>, CniError> {
    // The interfaces as the kernel has them; every one asked for must exist.
    let options = ScanOptions {
        skip_without_address: false,
        ..ScanOptions::default()
    };
    let scan = sandbox
        .scan(&options)
        .await
        .map_err(|e| sandbox_error(&format!("cannot scan {netns_text}"), e))?;
    let mut chosen = Vec::new();
    for name in wanted {
        match scan.interfaces.iter().find(|i| &i.link.name == name) {
            Some(i) => chosen.push(i.clone()),
            None => {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!(
                        "interface {name} does not exist in {netns_text} (named by {})",
                        if config.all_interfaces {
                            "prevResult"
                        } else {
                            "CNI_IFNAME"
                        }
                    ),
                ));
            }
        }
    }
    let taken: BTreeSet<String> = sandbox
        .links()
        .await
        .map_err(|e| sandbox_error(&format!("cannot list the links of {netns_text}"), e))?
        .into_iter()
        .map(|l| l.name.as_str().to_string())
        .collect();
    if let Some(name) = &tap_name
        && taken.contains(name.as_str())
    {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "CNI_ARGS {ARG_TAP_NAME}={name}: a link of that name already exists in {netns_text}"
            ),
        ));
    }
    let first_index = (0u32..)
        .find(|n| (0..chosen.len() as u32).all(|k| !taken.contains(&format!("tap{}_kata", n + k))))
        .unwrap_or(0);
    let classify = ClassifyOptions {
        strict: true,
        ..ClassifyOptions::default()
    };
    let (endpoints, _) = endpoints_from_scan(netns, &chosen, first_index, &classify)
        .await
        .map_err(|e| {
            CniError::caused(
                code::INVALID_CONFIG,
                "an interface cannot be wired to a VM",
                &e,
            )
        })?;

    let vmm = HandOver::new(config.queues, config.rx_rate, config.tx_rate);
    let attach_options = AttachOptions {
        model: config.model,
        tap: TapOptions {
            queues: config.queues,
            vnet_hdr: true,
            owner,
            group,
            persist: true,
        },
        sysfs: SysfsPci::host(),
        #[cfg(feature = "fault-injection")]
        hooks: faults.apply,
        link_group: None,
    };
    let mut wired = Vec::new();
    let mut failure = None;
    for mut endpoint in endpoints {
        endpoint.vm_link = tap_name.clone();
        let pod_link = endpoint.link_name().clone();
        let pod_routes = endpoint.interface.routes.clone();
        let pod_addresses = endpoint
            .interface
            .addresses
            .iter()
            .map(|a| a.prefix.addr())
            .collect();
        let mtu = endpoint.interface.link.mtu;
        match sandbox
            .attach(endpoint, &vmm, &attach_options, Plug::Cold)
            .await
        {
            Ok(endpoint) => {
                let Some(tap) = vm_link_of(&endpoint.steps).cloned() else {
                    failure = Some(CniError::new(
                        code::KERNEL,
                        format!("{pod_link}: the attach made no tap"),
                    ));
                    break;
                };
                wired.push(Wired {
                    pod_link,
                    pod_addresses,
                    pod_routes,
                    tap,
                    tap_mac: None,
                    guest_mac: endpoint.device.guest_mac.map(|m| m.to_string()),
                    mtu,
                });
            }
            Err(e) => {
                failure = Some(sandbox_error(
                    &format!("cannot wire {pod_link} to a tap"),
                    e,
                ));
                break;
            }
        }
    }
    if let Some(error) = failure {
        return Err(error);
    }
    let links = sandbox
        .links()
        .await
        .map_err(|e| sandbox_error(&format!("cannot list the links of {netns_text}"), e))?;
    for w in &mut wired {
        w.tap_mac = links
            .iter()
            .find(|l| l.name == w.tap)
            .and_then(|l| l.mac)
            .map(|m| m.to_string());
    }
    Ok(wired)
}

/// `prev` plus, per wired interface, the tap, the VM's pseudo-interface and the IPs of the
/// wired interface copied onto it. Routes the kernel has with a path MTU or an advertised MSS
/// through a wired interface carry them (`mtu`, `advmss`, written from 1.1.0 on): the guest
/// must be told too.
fn result_with_taps(
    mut result: CniResult,
    wired: &[Wired],
    netns: &str,
    container_id: &str,
) -> CniResult {
    for route in &mut result.routes {
        let kernel = wired
            .iter()
            .flat_map(|w| &w.pod_routes)
            .find(|k| k.destination == route.dst && (route.gw.is_none() || k.gateway == route.gw));
        if let Some(k) = kernel {
            route.mtu = route.mtu.or(k.mtu);
            route.advmss = route.advmss.or(k.advmss);
        }
    }
    for w in wired {
        let owns = |ip: &IpConfig, interfaces: &[Interface]| match ip.interface {
            Some(index) => interfaces.get(index).is_some_and(|i| {
                i.name == w.pod_link.as_str() && i.sandbox.as_deref() == Some(netns)
            }),
            // Some plugins leave the index out: the kernel says whose address it is.
            None => w.pod_addresses.contains(&ip.address.addr()),
        };
        let ips: Vec<IpConfig> = result
            .ips
            .iter()
            .filter(|ip| owns(ip, &result.interfaces))
            .cloned()
            .collect();
        result.interfaces.push(Interface {
            name: w.tap.as_str().into(),
            mac: w.tap_mac.clone(),
            mtu: Some(w.mtu),
            sandbox: Some(netns.into()),
            ..Interface::default()
        });
        result.interfaces.push(Interface {
            name: w.tap.as_str().into(),
            mac: w.guest_mac.clone(),
            mtu: Some(w.mtu),
            sandbox: Some(container_id.into()),
            ..Interface::default()
        });
        let vm_index = result.interfaces.len() - 1;
        for ip in ips {
            result.ips.push(IpConfig {
                interface: Some(vm_index),
                ..ip
            });
        }
    }
    result
}

#[tracing::instrument(name = "cni.check", skip_all, err)]
async fn check(a: &AttachmentEnv, config: &PluginConfig) -> Result<(), CniError> {
    let prev = config.prev_result.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "prevResult is missing: CHECK needs the result of ADD",
        )
    })?;
    let state_path = config.state_path(&a.container_id, a.ifname.as_str());
    if !state_path.exists() {
        return Err(CniError::new(
            code::NO_ATTACHMENT,
            format!(
                "no attachment ({}, {}) is recorded (no {})",
                a.container_id,
                a.ifname,
                state_path.display()
            ),
        ));
    }
    let (sandbox, _) = Sandbox::restore(&state_path)
        .map_err(|e| sandbox_error("cannot load the attachment's state", e))?;
    let netns_text = a
        .netns
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut differences = Vec::new();
    if sandbox.state().netns.path.display().to_string() != netns_text {
        differences.push(format!(
            "CNI_NETNS is {netns_text}, ADD was in {}",
            sandbox.state().netns.path.display()
        ));
    }
    for record in &sandbox.state().endpoints {
        let Some(tap) = vm_link_of(&record.steps) else {
            differences.push(format!(
                "endpoint {}: not attached (ADD did not complete)",
                record.interface.link.name
            ));
            continue;
        };
        let in_result = |sandbox: &str| {
            prev.interfaces
                .iter()
                .find(|i| i.name == tap.as_str() && i.sandbox.as_deref() == Some(sandbox))
        };
        if in_result(&netns_text).is_none() {
            differences.push(format!("prevResult has no interface {tap} in {netns_text}"));
        }
        let guest_mac = record.guest_mac.map(|m| m.to_string());
        match in_result(&a.container_id) {
            None => differences.push(format!(
                "prevResult has no VM interface {tap} in sandbox {}",
                a.container_id
            )),
            Some(vm) if vm.mac != guest_mac => differences.push(format!(
                "prevResult's VM interface {tap} has MAC {}, ADD gave the guest {}",
                vm.mac.as_deref().unwrap_or("(none)"),
                guest_mac.as_deref().unwrap_or("(none)")
            )),
            Some(_) => {}
        }
    }
    let drifts = sandbox
        .check()
        .await
        .map_err(|e| sandbox_error("cannot compare the kernel with the state", e))?;
    for (id, drift) in drifts {
        let link = sandbox
            .state()
            .endpoints
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.interface.link.name.to_string())
            .unwrap_or_else(|| id.to_string());
        differences.push(format!("{link}: {drift}"));
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(CniError {
            code: code::DRIFT,
            msg: format!(
                "attachment ({}, {}) differs from what ADD made: {}",
                a.container_id,
                a.ifname,
                differences.join("; ")
            ),
            details: format!("state {}", state_path.display()),
        })
    }
}

#[tracing::instrument(name = "cni.del", skip_all, err)]
async fn del(a: &AttachmentEnv, config: &PluginConfig) -> Result<(), CniError> {
    let state_path = config.state_path(&a.container_id, a.ifname.as_str());
    teardown_recorded(&state_path).await
}

/// Tears down the attachment recorded at `state_path` and removes the record; nothing to do
/// when there is none. Removes the container's directory once empty.
async fn teardown_recorded(state_path: &Path) -> Result<(), CniError> {
    if !state_path.exists() {
        // Never recorded, or already deleted. A lock file of a killed ADD that wrote no plan
        // may be left: nothing was changed before the plan was written.
        remove_leftover_lock(state_path);
        remove_empty_parent(state_path);
        return Ok(());
    }
    let (mut sandbox, warnings) = Sandbox::restore(state_path)
        .map_err(|e| sandbox_error("cannot load the attachment's state", e))?;
    for w in warnings {
        tracing::warn!(warning = %w, "attachment state");
    }
    sandbox
        .teardown(&teardown_options())
        .await
        .map_err(|e| sandbox_error("cannot undo the attachment", e))?;
    sandbox
        .forget()
        .await
        .map_err(|e| sandbox_error("cannot remove the attachment's state", e))?;
    remove_empty_parent(state_path);
    Ok(())
}

fn remove_leftover_lock(state_path: &Path) {
    let mut lock = state_path.as_os_str().to_os_string();
    lock.push(".lock");
    let lock = PathBuf::from(lock);
    // Only when nobody holds it: opening the store takes it, and dropping it releases it.
    if lock.exists()
        && let Ok(store) = sandbox_net_persist::store::StateStore::open(state_path)
        && !store.exists()
    {
        let _ = store.remove();
    }
}

fn remove_empty_parent(state_path: &Path) {
    if let Some(dir) = state_path.parent() {
        // Fails (and is left) unless empty: another attachment of the container is in it.
        let _ = std::fs::remove_dir(dir);
    }
}

#[tracing::instrument(name = "cni.gc", skip_all, err)]
async fn gc(config: &PluginConfig) -> Result<(), CniError> {
    let valid: BTreeSet<(String, String)> = config
        .valid_attachments
        .clone()
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "cni.dev/valid-attachments is missing: GC removes every attachment not in it, and will not guess",
            )
        })?
        .into_iter()
        .collect();
    let dir = config.network_dir();
    let containers = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(CniError::caused(
                code::STATE,
                format!("cannot list {}", dir.display()),
                &e,
            ));
        }
    };
    let mut failures = Vec::new();
    for container in containers.filter_map(Result::ok) {
        let container_id = container.file_name().to_string_lossy().into_owned();
        let Ok(files) = std::fs::read_dir(container.path()) else {
            continue;
        };
        for file in files.filter_map(Result::ok) {
            let name = file.file_name().to_string_lossy().into_owned();
            let Some(ifname) = name.strip_suffix(".json") else {
                continue;
            };
            if valid.contains(&(container_id.clone(), ifname.to_string())) {
                continue;
            }
            tracing::info!(container = %container_id, ifname, "GC: attachment not valid any more");
            if let Err(e) = teardown_recorded(&file.path()).await {
                failures.push(format!("({container_id}, {ifname}): {e}"));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::KERNEL,
            format!(
                "GC left {} attachment(s): {}",
                failures.len(),
                failures.join("; ")
            ),
        ))
    }
}

#[tracing::instrument(name = "cni.status", skip_all, err)]
async fn status(config: &PluginConfig) -> Result<(), CniError> {
    let mut reasons = Vec::new();
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_PATH)
    {
        reasons.push(format!("{} cannot be opened: {e}", TUN_PATH));
    }
    if let Err(reason) = probe_tc().await {
        reasons.push(reason);
    }
    if let Err(e) = probe_writable(&config.state_dir) {
        reasons.push(format!(
            "state directory {} is not writable: {e}",
            config.state_dir.display()
        ));
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::NOT_AVAILABLE,
            format!("sandbox-net-cni cannot serve ADD: {}", reasons.join("; ")),
        ))
    }
}

/// Tries what tcfilter needs (an ingress qdisc and a u32 filter with a mirred redirect) on the
/// loopback of a throwaway namespace, deleted afterwards.
async fn probe_tc() -> Result<(), String> {
    let name = format!(
        "sbxprobe-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let path = sandbox_net_netns::named_path(&name).map_err(|e| e.to_string())?;
    let netns = Netns::create(&path).map_err(|e| {
        format!(
            "cannot create a namespace to probe tc in: {}",
            error_chain(&e)
        )
    })?;
    let probed = async {
        let rtnl = netns.rtnl().await.map_err(|e| error_chain(&e))?;
        let lo = rtnl.link_by_name("lo").await.map_err(|e| error_chain(&e))?;
        rtnl.add_ingress_qdisc(&lo)
            .await
            .map_err(|e| format!("the kernel refuses an ingress qdisc: {}", error_chain(&e)))?;
        rtnl.add_redirect(&lo, &lo).await.map_err(|e| {
            format!(
                "the kernel refuses a u32 filter with a mirred redirect: {}",
                error_chain(&e)
            )
        })?;
        Ok::<(), String>(())
    }
    .await;
    if let Err(e) = netns.delete() {
        tracing::warn!(namespace = %path.display(), error = %error_chain(&e), "probe namespace not deleted");
    }
    probed
}

fn probe_writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".status-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}
