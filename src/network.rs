//! `Network`: what a shim links to give a sandbox its network.
//!
//! It holds the sandbox's namespace, state file and configuration, and offers the operations
//! of a sandbox's life: add the pod's endpoints (all of a scan, or given interfaces), remove
//! them (all, or by id), hot-plug one, restore after a restart, check for drift, run code in
//! the namespace. Every operation is a tracing span carrying the namespace and model.

use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use sandbox_net_endpoints::{
    AttachOptions, Backend, ClassifyOptions, Endpoint, EndpointId, Hypervisor, NetDevice, Plug,
    ReopenOptions, SkippedInterface, endpoints_from_scan, physical::SysfsPci,
};
use sandbox_net_interworking::{Drift, InterworkingModel, TapOptions};
use sandbox_net_netns::{Failures, Netns, ScanOptions, set_tap_persist};
use sandbox_net_persist::{
    IfName, MacAddr, Owner,
    scan::{Interface, NamespaceScan},
};

use crate::sandbox::{Sandbox, SandboxError};

/// How a sandbox's network is built.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The interworking model (ipvlan endpoints always use tcfilter).
    pub model: InterworkingModel,
    /// How taps are made (the queue count comes from the hypervisor).
    pub tap: TapOptions,
    /// How interfaces are classified (strict mode, vhost-user socket directory).
    pub classify: ClassifyOptions,
    /// Which interfaces a scan keeps (Kata's rules by default).
    pub scan: ScanOptions,
    /// Where PCI functions are bound to vfio-pci.
    pub sysfs: SysfsPci,
    /// Attach even in the host's own network namespace (that of PID 1, compared by
    /// identity), handing the node's own interfaces to the VM. Off: such a namespace is
    /// refused before anything is written or changed.
    pub allow_host_netns: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            model: InterworkingModel::TcFilter,
            tap: TapOptions::default(),
            classify: ClassifyOptions::default(),
            scan: ScanOptions::default(),
            sysfs: SysfsPci::host(),
            allow_host_netns: false,
        }
    }
}

impl NetworkConfig {
    // The update fills the fault points of test builds (feature `fault-injection`).
    #[allow(clippy::needless_update)]
    fn attach_options(&self) -> AttachOptions {
        AttachOptions {
            model: self.model,
            tap: self.tap.clone(),
            sysfs: self.sysfs.clone(),
            link_group: None,
            ..AttachOptions::default()
        }
    }
}

/// Where the sandbox's namespace comes from.
#[derive(Debug)]
pub enum NetnsSource {
    /// An existing namespace (CNI's): never deleted by sandbox-net.
    Given(Netns),
    /// A namespace to create at this path; deleted at teardown.
    Create(PathBuf),
}

/// A sandbox's network.
///
/// Its state records an owner: while an operation runs, this process; between operations,
/// the process named with [`Network::set_owner`] (the shim, or the VMM it started), or none.
/// `reconcile` reaps a sandbox whose owner is gone and leaves a live one alone.
#[derive(Debug)]
pub struct Network {
    sandbox: Sandbox,
    config: NetworkConfig,
    /// The owner between operations, as named by the caller.
    holder: Option<Owner>,
}

impl Network {
    /// Starts a new sandbox network with its state in `state_path`.
    #[tracing::instrument(name = "network.create", skip_all, fields(sandbox = sandbox_id, model = %config.model), err)]
    pub fn create(
        state_path: impl AsRef<Path>,
        sandbox_id: &str,
        netns: NetnsSource,
        config: NetworkConfig,
    ) -> Result<Self, SandboxError> {
        let sandbox = match netns {
            NetnsSource::Given(netns) if config.allow_host_netns => {
                Sandbox::create_in_host_netns(state_path, sandbox_id, netns, config.model)?
            }
            NetnsSource::Given(netns) => {
                Sandbox::create(state_path, sandbox_id, netns, config.model)?
            }
            NetnsSource::Create(path) => {
                Sandbox::create_in_new_netns(state_path, sandbox_id, path, config.model)?
            }
        };
        Ok(Self {
            sandbox,
            config,
            holder: None,
        })
    }

    /// Loads a sandbox's network from its state file, in a new process.
    ///
    /// What the state records wins over `config`: the interworking model is the recorded one
    /// (a caller's default must not re-plug a macvtap sandbox as tcfilter), and every undo
    /// works from the recorded steps. `config` supplies only what is not recorded (scan and
    /// classification rules, tap ownership, the sysfs root) for endpoints hot-added later.
    #[tracing::instrument(name = "network.restore", skip_all, fields(state = %state_path.as_ref().display()), err)]
    pub fn restore(
        state_path: impl AsRef<Path>,
        config: NetworkConfig,
    ) -> Result<Self, SandboxError> {
        let (sandbox, warnings) = Sandbox::restore(state_path)?;
        for warning in warnings {
            tracing::warn!(%warning, "state file");
        }
        let recorded = sandbox.state().model;
        if recorded != config.model {
            tracing::info!(%recorded, given = %config.model, "the recorded interworking model is used");
        }
        let config = NetworkConfig {
            model: recorded,
            ..config
        };
        let holder = sandbox.owner().cloned();
        Ok(Self {
            sandbox,
            config,
            holder,
        })
    }

    /// Names the process that holds the sandbox between operations (a shim names itself,
    /// or the VMM it started: see [`Owner::of_pid`]), or nobody. Recorded at once, durably.
    /// While the owner runs, `reconcile` only checks the sandbox; once it is gone, the
    /// sandbox is reaped. A sandbox with no owner is kept.
    pub async fn set_owner(&mut self, owner: Option<Owner>) -> Result<(), SandboxError> {
        self.sandbox.set_owner(owner.clone()).await?;
        self.holder = owner;
        Ok(())
    }

    /// The owner named between operations.
    pub fn owner(&self) -> Option<&Owner> {
        self.holder.as_ref()
    }

    /// Runs after an operation: the sandbox goes back to the owner named by the caller. A
    /// failure to record that is returned unless the operation itself failed (then it is
    /// logged, and the operation's error returned).
    async fn hand_back<T>(&mut self, result: Result<T, SandboxError>) -> Result<T, SandboxError> {
        let handed = self.sandbox.set_owner(self.holder.clone()).await;
        match (result, handed) {
            (Ok(value), Ok(())) => Ok(value),
            (Ok(_), Err(e)) => Err(e),
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(handed)) => {
                tracing::warn!(error = %handed, "the sandbox's owner was not handed back");
                Err(e)
            }
        }
    }

    /// Records that the sandbox's taps are persistent only until a VMM holds their queues:
    /// [`Network::end_tap_persistence`] then makes them go with the VMM. Written with the
    /// next save (the first attach's).
    pub fn set_taps_end_with_vmm(&mut self, yes: bool) {
        self.sandbox.set_taps_end_with_vmm(yes);
    }

    /// Clears the persistence of the taps among `devices` (reopened for a VMM that now holds
    /// their queues too), so that each tap goes when the VMM closes its queues. Stops at the
    /// first failure.
    pub fn end_tap_persistence(&self, devices: &[NetDevice]) -> Result<(), SandboxError> {
        for device in devices {
            if let Backend::Tap { name, queues, .. } = &device.backend
                && let Some(first) = queues.first()
            {
                set_tap_persist(first.as_fd(), false).map_err(|source| SandboxError::Tap {
                    file: self.sandbox.state_path().to_path_buf(),
                    tap: name.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// The configuration in force (after [`Network::restore`], with the recorded model).
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// The sandbox underneath (state, namespace).
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Attaches the pod's endpoints: those of a scan (`None`) or the given interfaces. If one
    /// fails, the ones this call attached are detached again before the error is returned.
    /// Returns the new endpoints' ids and the interfaces skipped as unsupported.
    #[tracing::instrument(name = "network.add_endpoints", skip_all, fields(netns = %self.netns_label(), model = %self.config.model), err)]
    pub async fn add_endpoints<H: Hypervisor>(
        &mut self,
        hypervisor: &H,
        interfaces: Option<Vec<Interface>>,
    ) -> Result<(Vec<EndpointId>, Vec<SkippedInterface>), SandboxError> {
        self.sandbox.own()?;
        let result = self.add_endpoints_owned(hypervisor, interfaces).await;
        self.hand_back(result).await
    }

    async fn add_endpoints_owned<H: Hypervisor>(
        &mut self,
        hypervisor: &H,
        interfaces: Option<Vec<Interface>>,
    ) -> Result<(Vec<EndpointId>, Vec<SkippedInterface>), SandboxError> {
        let netns = self.sandbox.live_netns()?;
        let scan = self.sandbox.scan(&self.config.scan).await?;
        let first_index = self.next_index(&scan);
        let interfaces = match interfaces {
            Some(given) => given,
            None => scan.interfaces,
        };
        let (endpoints, skipped) =
            endpoints_from_scan(&netns, &interfaces, first_index, &self.config.classify)
                .await
                .map_err(|source| SandboxError::Classify {
                    file: self.sandbox.state_path().to_path_buf(),
                    source,
                })?;
        let added = self.attach_all(endpoints, hypervisor, Plug::Cold).await?;
        if added.is_empty() {
            // Nothing was recorded: the document says so (an empty pod is a sandbox too; the
            // operation's commit makes it durable).
            self.sandbox.save_uncommitted()?;
        }
        Ok((added, skipped))
    }

    /// Attaches `endpoints`: cold-plugged, as one batch (see `Sandbox::attach_batch_uncommitted`);
    /// hot-plugged into a running VM ([`Plug::Hot`]), one after the other. If one fails, those
    /// this call attached are taken back, last first, before its error is returned; a failure
    /// to take one back is logged, the attach error is what the caller gets. Returns the ids
    /// of the attached endpoints.
    async fn attach_all<H: Hypervisor>(
        &mut self,
        endpoints: Vec<Endpoint>,
        hypervisor: &H,
        plug: Plug,
    ) -> Result<Vec<EndpointId>, SandboxError> {
        let options = self.config.attach_options();
        if plug == Plug::Cold {
            return self
                .sandbox
                .attach_batch_uncommitted(endpoints, hypervisor, &options)
                .await;
        }
        let mut added = Vec::new();
        for endpoint in endpoints {
            match self
                .sandbox
                .attach_uncommitted(endpoint, hypervisor, &options, plug)
                .await
            {
                Ok(endpoint) => added.push(endpoint.id),
                Err(e) => {
                    let what = match plug {
                        Plug::Hot => "hot-add",
                        Plug::Cold => "add",
                    };
                    for id in added.iter().rev() {
                        if let Err(undo) = self
                            .sandbox
                            .detach_uncommitted(id, hypervisor, &options, plug)
                            .await
                        {
                            tracing::warn!(endpoint = %id, error = %undo, "could not undo an endpoint of a failed {what}");
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(added)
    }

    /// Detaches endpoints of a stopped VM: all (`None`) or those with the given ids (an
    /// unknown id changes nothing). Works on a copy of the id list, so every one asked for is
    /// detached (Kata's remove-while-iterating skipped some); goes on past failures and
    /// reports them all. All at once: with every endpoint asked for, their links go first as
    /// the sandbox's device group (one request); the undo of each endpoint's steps runs
    /// concurrently over one netlink socket, and the state is written once, then committed.
    #[tracing::instrument(name = "network.remove_endpoints", skip_all, fields(netns = %self.netns_label()), err)]
    pub async fn remove_endpoints<H: Hypervisor>(
        &mut self,
        hypervisor: &H,
        ids: Option<&[EndpointId]>,
    ) -> Result<(), SandboxError> {
        self.sandbox.own()?;
        let result = self.remove_endpoints_owned(hypervisor, ids).await;
        self.hand_back(result).await
    }

    async fn remove_endpoints_owned<H: Hypervisor>(
        &mut self,
        hypervisor: &H,
        ids: Option<&[EndpointId]>,
    ) -> Result<(), SandboxError> {
        let ids: Vec<EndpointId> = match ids {
            Some(ids) => ids.to_vec(),
            None => self
                .sandbox
                .state()
                .endpoints
                .iter()
                .rev()
                .map(|e| e.id.clone())
                .collect(),
        };
        let options = self.config.attach_options();
        let failures = self
            .sandbox
            .detach_cold_uncommitted(&ids, hypervisor, &options)
            .await?;
        match Failures::from_vec(failures) {
            None => Ok(()),
            Some(failures) => Err(SandboxError::Teardown {
                file: self.sandbox.state_path().to_path_buf(),
                failures,
            }),
        }
    }

    /// Hot-plugs interfaces of the sandbox's namespace into the running VM: those named, or
    /// (`None`) every one of the scan that is not attached yet. Each gets the next free index
    /// (above every recorded one and every `tap{N}_kata` link in the namespace), so its
    /// VM-side link never collides with one in use. If one fails, those this call plugged are
    /// taken out again. Returns the new endpoints' ids and the interfaces skipped as
    /// unsupported.
    #[tracing::instrument(name = "network.hot_add", skip_all, fields(netns = %self.netns_label()), err)]
    pub async fn hot_add<H: Hypervisor>(
        &mut self,
        hypervisor: &H,
        names: Option<&[IfName]>,
    ) -> Result<(Vec<EndpointId>, Vec<SkippedInterface>), SandboxError> {
        self.sandbox.own()?;
        let result = self.hot_add_owned(hypervisor, names).await;
        self.hand_back(result).await
    }

    async fn hot_add_owned<H: Hypervisor>(
        &mut self,
        hypervisor: &H,
        names: Option<&[IfName]>,
    ) -> Result<(Vec<EndpointId>, Vec<SkippedInterface>), SandboxError> {
        let netns = self.sandbox.live_netns()?;
        let scan = self.sandbox.scan(&self.config.scan).await?;
        let first_index = self.next_index(&scan);
        let file = self.sandbox.state_path().to_path_buf();
        let attached: Vec<&IfName> = self
            .sandbox
            .state()
            .endpoints
            .iter()
            .map(|e| &e.interface.link.name)
            .collect();
        let interfaces: Vec<Interface> = match names {
            None => scan
                .interfaces
                .iter()
                .filter(|i| !attached.contains(&&i.link.name))
                .cloned()
                .collect(),
            Some(names) => {
                let mut chosen = Vec::new();
                for name in names {
                    if attached.contains(&name) {
                        return Err(SandboxError::Interface {
                            file,
                            name: name.clone(),
                            why: "it is attached already",
                        });
                    }
                    let found = scan.interfaces.iter().find(|i| &i.link.name == name);
                    let Some(found) = found else {
                        return Err(SandboxError::Interface {
                            file,
                            name: name.clone(),
                            why: "the namespace has no such interface with an address",
                        });
                    };
                    chosen.push(found.clone());
                }
                chosen
            }
        };
        let (endpoints, skipped) =
            endpoints_from_scan(&netns, &interfaces, first_index, &self.config.classify)
                .await
                .map_err(|source| SandboxError::Classify {
                    file: file.clone(),
                    source,
                })?;
        let added = self.attach_all(endpoints, hypervisor, Plug::Hot).await?;
        Ok((added, skipped))
    }

    /// Hot-plugs a new tap for the VM (Kata's tap endpoint): a fresh `tap{N}_kata`, with the
    /// next free index, that the guest sees as `guest_name` with `mac` and `mtu`.
    #[tracing::instrument(name = "network.hot_add_tap", skip_all, fields(netns = %self.netns_label(), guest = %guest_name), err)]
    pub async fn hot_add_tap<H: Hypervisor>(
        &mut self,
        hypervisor: &H,
        guest_name: IfName,
        mac: MacAddr,
        mtu: u32,
    ) -> Result<EndpointId, SandboxError> {
        let scan = self.sandbox.scan(&ScanOptions::unfiltered()).await?;
        let endpoint = Endpoint::tap(self.next_index(&scan), guest_name, mac, mtu);
        let options = self.config.attach_options();
        self.sandbox.own()?;
        let result = self
            .sandbox
            .attach(endpoint, hypervisor, &options, Plug::Hot)
            .await
            .map(|endpoint| endpoint.id);
        self.hand_back(result).await
    }

    /// Opens again the devices of every endpoint of an attached sandbox, for a VMM started
    /// by another process than the attach (see [`Endpoint::reopen_device`]). Refuses a sandbox
    /// with no endpoint, or with one not attached, naming it; nothing is changed then.
    #[tracing::instrument(name = "network.reopen_devices", skip_all, fields(netns = %self.netns_label()), err)]
    pub async fn reopen_devices(
        &mut self,
        options: &ReopenOptions,
    ) -> Result<Vec<NetDevice>, SandboxError> {
        self.sandbox.reopen_devices(options).await
    }

    /// The index the next endpoint gets: above every recorded one, and above every
    /// `tap{N}_kata` link the namespace has (a leftover of another attach), so that its
    /// VM-side link never takes a name in use.
    fn next_index(&self, scan: &NamespaceScan) -> u32 {
        let recorded = self.sandbox.state().endpoints.iter().map(|e| e.index + 1);
        let in_use = scan
            .interfaces
            .iter()
            .map(|i| i.link.name.as_str())
            .chain(scan.skipped.iter().map(|s| s.name.as_str()))
            .filter_map(|name| {
                name.strip_prefix("tap")?
                    .strip_suffix("_kata")?
                    .parse::<u32>()
                    .ok()
            })
            .map(|n| n.saturating_add(1));
        recorded.chain(in_use).max().unwrap_or(0)
    }

    /// Hot-unplugs one endpoint from the running VM.
    #[tracing::instrument(name = "network.hot_remove", skip_all, fields(netns = %self.netns_label(), endpoint = %id), err)]
    pub async fn hot_remove<H: Hypervisor>(
        &mut self,
        hypervisor: &H,
        id: &EndpointId,
    ) -> Result<(), SandboxError> {
        let options = self.config.attach_options();
        self.sandbox.own()?;
        let result = self
            .sandbox
            .detach_uncommitted(id, hypervisor, &options, Plug::Hot)
            .await;
        self.hand_back(result).await
    }

    /// Differences between the kernel and the recorded state (empty when intact).
    #[tracing::instrument(name = "network.check", skip_all, fields(netns = %self.netns_label()), err)]
    pub async fn check(&self) -> Result<Vec<(EndpointId, Drift)>, SandboxError> {
        self.sandbox.check().await
    }

    /// Tears everything down from the record (no VMM needed), deletes a namespace the
    /// sandbox created, and removes the state file. Goes on past failures and reports them
    /// all; on failure the state file stays, for another try.
    #[tracing::instrument(name = "network.teardown", skip_all, fields(netns = %self.netns_label()), err)]
    pub async fn teardown(mut self) -> Result<(), SandboxError> {
        // The teardown records this process as the owner before it changes anything; the
        // sandbox goes back to its owner only if something is left.
        match self.sandbox.teardown(&self.config.attach_options()).await {
            Ok(()) => self.sandbox.forget().await,
            Err(e) => self.hand_back(Err(e)).await,
        }
    }

    /// Runs a CNI network configuration into the sandbox's namespace (see
    /// [`Sandbox::add_cni`]); teardown runs its DEL.
    #[tracing::instrument(name = "network.add_cni", skip_all, fields(netns = %self.netns_label()), err)]
    pub async fn add_cni(
        &mut self,
        record: sandbox_net_persist::state::CniRecord,
    ) -> Result<crate::cni::CniResult, SandboxError> {
        self.sandbox.add_cni(record).await
    }

    /// Runs `f` on a thread inside the sandbox's namespace.
    pub async fn run<F, T>(&self, f: F) -> Result<T, SandboxError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.sandbox.run(f).await
    }

    fn netns_label(&self) -> String {
        self.sandbox.state().netns.path.display().to_string()
    }
}
