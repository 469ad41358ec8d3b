//! A sandbox's network with its state on disk: attach with the plan persisted before it is
//! applied, restore in a new process, check, and tear down from the record alone.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rand::RngExt;
use sandbox_net_endpoints::{
    AttachOptions, Endpoint, EndpointError, Hypervisor, NetDevice, Plug, RecordError, ReopenOptions,
};
use sandbox_net_interworking::{Drift, NetnsHandles, check};
use sandbox_net_netns::{Failures, NetlinkError, Netns, NetnsError, NetnsId};
use sandbox_net_persist::{
    IfName, Owner, OwnerError,
    endpoint::EndpointId,
    state::{CniRecord, EndpointRecord, NetnsRecord, SandboxState},
    steps::InterworkingModel,
    store::{StateStore, StoreError},
};

/// A failure of a sandbox-level operation.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The state file could not be opened, read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A state file already exists where a new sandbox was to start.
    #[error("state file {0} already exists: restore the sandbox, or tear it down first")]
    Exists(PathBuf),
    /// The recorded namespace could not be opened.
    #[error("state file {file}: the recorded namespace cannot be opened")]
    Netns {
        /// The state file.
        file: PathBuf,
        /// Why.
        #[source]
        source: NetnsError,
    },
    /// The recorded path now holds another namespace.
    #[error(
        "state file {file}: {path} is now namespace {found}, not the recorded {expected}; refusing to touch it"
    )]
    IdentityMismatch {
        /// The state file.
        file: PathBuf,
        /// The namespace path.
        path: PathBuf,
        /// The identity recorded.
        expected: NetnsId,
        /// The identity found.
        found: NetnsId,
    },
    /// The namespace to attach in is the host's own, and the caller did not say it meant it.
    #[error(
        "refusing to attach in network namespace {path}: it is the host's own (that of PID 1 \
         or of this process), and attaching would hand the node's own interfaces to the VM; allow it explicitly \
         (NetworkConfig::allow_host_netns, sandbox-net attach --allow-host-netns) if that is meant"
    )]
    HostNetns {
        /// The path given for the namespace.
        path: PathBuf,
    },
    /// A netlink handle in the namespace could not be made.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// An endpoint failed to attach (and was rolled back).
    #[error(transparent)]
    Endpoint(Box<EndpointError>),
    /// A recorded endpoint is not valid.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// An interface could not be classified (strict mode).
    #[error("state file {file}: an interface cannot be attached")]
    Classify {
        /// The state file.
        file: PathBuf,
        /// Why.
        #[source]
        source: sandbox_net_endpoints::Unsupported,
    },
    /// No endpoint has this id.
    #[error("state file {file}: no endpoint {id}")]
    UnknownEndpoint {
        /// The state file.
        file: PathBuf,
        /// The id asked for.
        id: EndpointId,
    },
    /// An interface asked for cannot be attached.
    #[error("state file {file}: interface {name} cannot be hot-added: {why}")]
    Interface {
        /// The state file.
        file: PathBuf,
        /// The interface.
        name: IfName,
        /// Why.
        why: &'static str,
    },
    /// A tap's persistence could not be changed.
    #[error("state file {file}: cannot change the persistence of tap {tap}")]
    Tap {
        /// The state file.
        file: PathBuf,
        /// The tap.
        tap: IfName,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The sandbox has nothing attached to hand to a VMM.
    #[error("state file {file}: {what}; attach the sandbox first")]
    NotAttached {
        /// The state file.
        file: PathBuf,
        /// What is not attached.
        what: String,
    },
    /// A CNI network could not be run into the namespace, or its DEL failed.
    #[error("state file {file}: CNI network {network}")]
    Cni {
        /// The state file.
        file: PathBuf,
        /// The network's name.
        network: String,
        /// Why.
        #[source]
        source: Box<crate::cni::runtime::RuntimeError>,
    },
    /// The process to record as the sandbox's owner cannot be named.
    #[error("state file {file}: cannot name the sandbox's owner")]
    Owner {
        /// The state file.
        file: PathBuf,
        /// Why.
        #[source]
        source: OwnerError,
    },
    /// Everything this version knows of was torn down, but the document also holds endpoints
    /// of kinds it does not know: it is kept, with them in it.
    #[error(
        "state file {file} kept: it holds {} endpoint(s) of kinds this version of sandbox-net does not know, not torn down: {}; a version that knows them must detach them",
        .endpoints.len(),
        .endpoints.join(", ")
    )]
    UnknownKindsKept {
        /// The state file.
        file: PathBuf,
        /// The endpoints, `id (kind K)`.
        endpoints: Vec<String>,
    },
    /// Teardown went on past failures; these are all of them.
    #[error("teardown of {file} failed")]
    Teardown {
        /// The state file.
        file: PathBuf,
        /// Every failure, in order.
        #[source]
        failures: Failures<EndpointError>,
    },
}

impl From<EndpointError> for SandboxError {
    fn from(e: EndpointError) -> Self {
        Self::Endpoint(Box::new(e))
    }
}

/// The calling process, as the owner of the sandbox whose state is `file`.
fn current_owner(file: &Path) -> Result<Owner, SandboxError> {
    Owner::current().map_err(|source| SandboxError::Owner {
        file: file.to_path_buf(),
        source,
    })
}

/// Refuses `netns` when it is the node's own network (PID 1's, or this process's). Also when
/// that cannot be told: guessing wrong would cost the node its network.
fn refuse_host_netns(state: &Path, netns: &Netns) -> Result<(), SandboxError> {
    let host = netns
        .is_host_network()
        .map_err(|source| SandboxError::Netns {
            file: state.to_path_buf(),
            source,
        })?;
    if host {
        return Err(SandboxError::HostNetns {
            path: netns.path().to_path_buf(),
        });
    }
    Ok(())
}

/// A sandbox's network and its state file, locked for this process.
#[derive(Debug)]
pub struct Sandbox {
    /// Shared with the blocking thread of a commit while it runs.
    store: Arc<StateStore>,
    state: SandboxState,
    netns: Option<Netns>,
    /// The netlink connection attaches share, made on first use.
    rtnl: Option<sandbox_net_netns::Rtnl>,
}

impl Sandbox {
    /// Starts the state of a new sandbox in the given namespace (CNI's), to be written to
    /// `state_path` with the first endpoint's plan, before anything changes. The namespace is
    /// not the sandbox's to delete. Refuses to overwrite an existing state file, and refuses
    /// the host's own namespace (that of PID 1 or of this process, by identity): attaching
    /// there would hand the node's own interfaces to the VM ([`Sandbox::create_in_host_netns`] says it is meant).
    pub fn create(
        state_path: impl AsRef<Path>,
        sandbox_id: &str,
        netns: Netns,
        model: InterworkingModel,
    ) -> Result<Self, SandboxError> {
        refuse_host_netns(state_path.as_ref(), &netns)?;
        Self::start(state_path, sandbox_id, netns, model, false)
    }

    /// [`Sandbox::create`] without the refusal of the host's own namespace: for a caller
    /// that means to wire the node's own interfaces (`--allow-host-netns`).
    pub fn create_in_host_netns(
        state_path: impl AsRef<Path>,
        sandbox_id: &str,
        netns: Netns,
        model: InterworkingModel,
    ) -> Result<Self, SandboxError> {
        if netns.is_host_network().unwrap_or(false) {
            tracing::warn!(netns = %netns.path().display(), "attaching in the host's own network namespace, as asked");
        }
        Self::start(state_path, sandbox_id, netns, model, false)
    }

    /// Creates a new namespace at `netns_path` for a new sandbox; teardown deletes it.
    pub fn create_in_new_netns(
        state_path: impl AsRef<Path>,
        sandbox_id: &str,
        netns_path: impl AsRef<Path>,
        model: InterworkingModel,
    ) -> Result<Self, SandboxError> {
        let file = state_path.as_ref().to_path_buf();
        let store = StateStore::open(&file)?;
        if store.exists() {
            return Err(SandboxError::Exists(file));
        }
        drop(store);
        let netns = Netns::create(netns_path).map_err(|source| SandboxError::Netns {
            file: file.clone(),
            source,
        })?;
        match Self::start(&file, sandbox_id, netns.clone(), model, true) {
            Ok(sandbox) => Ok(sandbox),
            Err(e) => {
                // Nothing may be left behind: the namespace was made for this sandbox.
                let _ = netns.delete();
                Err(e)
            }
        }
    }

    fn start(
        state_path: impl AsRef<Path>,
        sandbox_id: &str,
        netns: Netns,
        model: InterworkingModel,
        created_by_us: bool,
    ) -> Result<Self, SandboxError> {
        let store = StateStore::open(state_path)?;
        if store.exists() {
            return Err(SandboxError::Exists(store.path().to_path_buf()));
        }
        // Every operation writes its records unsynced, each before the change it describes,
        // and commits once at its end (see `commit`).
        store.defer_syncs(true);
        let record = NetnsRecord {
            path: netns.path().to_path_buf(),
            id: netns.id(),
            created_by_us,
        };
        let mut state = SandboxState::new(sandbox_id, record, model);
        // Until its caller names another, the sandbox is this process's: if it dies half way,
        // the sandbox can be reaped.
        state.owner = Some(current_owner(store.path())?);
        // A random device group for the links this sandbox creates; never 0, the default
        // group every other link is in.
        state.link_group = rand::rng().random_range(1..=u32::MAX);
        // A namespace made for the sandbox is recorded at once, so that a teardown finds it.
        // Otherwise the document is first written with the first endpoint's plan: until then
        // there is nothing to tear down.
        if created_by_us {
            store.save(&state)?;
        }
        Ok(Self {
            store: Arc::new(store),
            state,
            netns: Some(netns),
            rtnl: None,
        })
    }

    /// Loads a sandbox's state in a new process. The recorded namespace must still be the
    /// same one (by device and inode); a namespace that no longer exists is fine: everything
    /// that was in it went with it. Returns the loader's warnings (endpoints of unknown kinds
    /// kept aside).
    pub fn restore(state_path: impl AsRef<Path>) -> Result<(Self, Vec<String>), SandboxError> {
        let store = StateStore::open(state_path)?;
        store.defer_syncs(true);
        let loaded = match store.load() {
            // Without a document, what is left of one describes nothing that is still done: a
            // journal (and lock) left by a teardown killed after removing the document, the
            // temporary file of a first save killed before its rename (the first plan is
            // written before its first step). They go, under the lock, so that a detach
            // after such a crash leaves no file behind; the error still says there is none.
            Err(missing @ StoreError::Missing { .. }) => {
                if let Err(e) = store.remove() {
                    tracing::warn!(error = %e, "files of a missing state file not removed");
                }
                return Err(missing.into());
            }
            other => other?,
        };
        let record = &loaded.state.netns;
        let file = store.path().to_path_buf();
        let netns = match Netns::open(&record.path) {
            Ok(found) if found.id() != record.id => {
                return Err(SandboxError::IdentityMismatch {
                    file,
                    path: record.path.clone(),
                    expected: record.id,
                    found: found.id(),
                });
            }
            Ok(found) if record.created_by_us => Some(
                Netns::open_created(found.path(), record.id)
                    .map_err(|source| SandboxError::Netns { file, source })?,
            ),
            Ok(found) => Some(found),
            Err(NetnsError::NotFound { .. }) => None,
            Err(source) => return Err(SandboxError::Netns { file, source }),
        };
        Ok((
            Self {
                store: Arc::new(store),
                state: loaded.state,
                netns,
                rtnl: None,
            },
            loaded.warnings,
        ))
    }

    /// The recorded state.
    pub fn state(&self) -> &SandboxState {
        &self.state
    }

    /// Records that the taps are persistent only until a VMM holds their queues (see
    /// `SandboxState::taps_end_with_vmm`); written with the next save.
    pub fn set_taps_end_with_vmm(&mut self, yes: bool) {
        self.state.taps_end_with_vmm = yes;
    }

    /// The namespace, unless it no longer exists.
    pub fn netns(&self) -> Option<&Netns> {
        self.netns.as_ref()
    }

    /// The state file.
    pub fn state_path(&self) -> &Path {
        self.store.path()
    }

    /// The state store (locked for this process).
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// The process recorded as the sandbox's owner, if any.
    pub fn owner(&self) -> Option<&Owner> {
        self.state.owner.as_ref()
    }

    /// Records `owner` as the sandbox's owner (none: nobody holds it), durably once the
    /// state file exists (a line of its journal). Nothing is written when it is already the
    /// owner.
    pub async fn set_owner(&mut self, owner: Option<Owner>) -> Result<(), SandboxError> {
        self.record_owner(owner)?;
        self.commit().await
    }

    /// Records `owner`, unsynced (the operation it starts or ends commits).
    fn record_owner(&mut self, owner: Option<Owner>) -> Result<(), SandboxError> {
        if self.state.owner == owner {
            return Ok(());
        }
        self.state.owner = owner;
        Ok(self.store.save_owner(&self.state)?)
    }

    /// Records the calling process as the owner, for an operation it is about to run (written
    /// before the operation changes anything; made durable with the operation's commit).
    pub fn own(&mut self) -> Result<(), SandboxError> {
        let me = current_owner(self.store.path())?;
        self.record_owner(Some(me))
    }

    /// Makes every record written so far durable: nothing, one `fdatasync` of the journal,
    /// or the document written anew and synced with its directory, whatever the operation
    /// wrote. Each public operation of a sandbox ends with it; until then its records reach
    /// the next process (they are written before each change) but not a disk that loses
    /// power, which loses the kernel objects they describe as well.
    ///
    /// The syncs run on tokio's blocking threads (see [`Sandbox::durably`]).
    pub async fn commit(&self) -> Result<(), SandboxError> {
        self.durably(|store, state| store.commit(state)).await
    }

    /// Runs `write` (a store operation that syncs to disk) on tokio's blocking threads, with
    /// a copy of the state: an `fsync` waits for the disk, milliseconds on an idle one and
    /// far more on a busy one, and an async worker that waits stalls every task queued on
    /// it. A panic of `write` is resumed in the caller.
    async fn durably(
        &self,
        write: impl FnOnce(&StateStore, &SandboxState) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), SandboxError> {
        let store = Arc::clone(&self.store);
        let state = self.state.clone();
        Ok(sandbox_net_netns::on_blocking_thread(move || write(&store, &state)).await?)
    }

    /// The result of an operation, after its commit: a failed commit is the error unless the
    /// operation failed (then it is logged, and the operation's error returned).
    async fn committed<T>(&self, result: Result<T, SandboxError>) -> Result<T, SandboxError> {
        match (result, self.commit().await) {
            (Ok(value), Ok(())) => Ok(value),
            (Ok(_), Err(e)) => Err(e),
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(commit)) => {
                tracing::warn!(error = %commit, "the state was not committed");
                Err(e)
            }
        }
    }

    /// Attaches `endpoint`: its plan is written to the state file before anything changes,
    /// and the record is marked attached once it is (each a line of the journal once the
    /// document exists). On failure the attach is rolled back and the record says so.
    pub async fn attach<H: Hypervisor>(
        &mut self,
        endpoint: Endpoint,
        hypervisor: &H,
        options: &AttachOptions,
        plug: Plug,
    ) -> Result<Endpoint, SandboxError> {
        let result = self
            .attach_uncommitted(endpoint, hypervisor, options, plug)
            .await;
        self.committed(result).await
    }

    /// [`Sandbox::attach`] without the commit, for an operation that attaches several.
    pub(crate) async fn attach_uncommitted<H: Hypervisor>(
        &mut self,
        mut endpoint: Endpoint,
        hypervisor: &H,
        options: &AttachOptions,
        plug: Plug,
    ) -> Result<Endpoint, SandboxError> {
        let netns = self.live_netns()?;
        let rtnl = self.take_rtnl(&netns).await?;
        let kernel = NetnsHandles {
            netns: &netns,
            rtnl: &rtnl,
        };
        let options = self.grouped(options);
        let (store, state) = (&self.store, &mut self.state);
        let mut record = |e: &Endpoint| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let record = EndpointRecord::from(e);
            state.upsert_endpoint(record.clone());
            store.save_endpoint(state, &record)?;
            Ok(())
        };
        let result = endpoint
            .attach_recorded(kernel, hypervisor, &options, plug, &mut record)
            .await;
        self.rtnl = Some(rtnl);
        // Whatever happened, the record now says it: attached, or rolled back, with the steps
        // the rollback could not undo (none after a clean one) for a detach or reconcile.
        let record = EndpointRecord::from(&endpoint);
        self.state.upsert_endpoint(record.clone());
        match &result {
            Ok(()) => self.store.save_endpoint(&self.state, &record)?,
            Err(_) => self.store.save(&self.state)?,
        }
        result?;
        Ok(endpoint)
    }

    /// Attaches `endpoints` to a VM that is not running yet, as one batch (see below), and
    /// commits once: at most two data syncs whatever their number. Returns their ids in
    /// order; on failure every one of them is taken back and the first error is returned.
    pub async fn attach_batch<H: Hypervisor>(
        &mut self,
        endpoints: Vec<Endpoint>,
        hypervisor: &H,
        options: &AttachOptions,
    ) -> Result<Vec<EndpointId>, SandboxError> {
        let result = self
            .attach_batch_uncommitted(endpoints, hypervisor, options)
            .await;
        self.committed(result).await
    }

    /// Attaches `endpoints` (cold-plugged: the VM is not running yet) as one batch: all of
    /// them are prepared at once, their requests interleaved on the sandbox's one netlink
    /// socket (each endpoint's plan written before its first change), then their devices are
    /// handed to the hypervisor one by one, in order. If any fails, every other one is taken
    /// back (detached if it was handed over) and the first error, in order, is returned.
    /// Not committed: the caller's operation commits.
    pub(crate) async fn attach_batch_uncommitted<H: Hypervisor>(
        &mut self,
        mut endpoints: Vec<Endpoint>,
        hypervisor: &H,
        options: &AttachOptions,
    ) -> Result<Vec<EndpointId>, SandboxError> {
        let netns = self.live_netns()?;
        let rtnl = self.take_rtnl(&netns).await?;
        let kernel = NetnsHandles {
            netns: &netns,
            rtnl: &rtnl,
        };
        let options = self.grouped(options);
        let store = &self.store;
        let state = std::sync::Mutex::new(&mut self.state);
        let record_in = |e: &Endpoint| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let record = EndpointRecord::from(e);
            // No other lock is taken while it is held; a panic elsewhere leaves it usable.
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            state.upsert_endpoint(record.clone());
            store.save_endpoint(&state, &record)?;
            Ok(())
        };
        let mut recorders: Vec<_> = endpoints.iter().map(|_| record_in).collect();
        let prepared = futures::future::join_all(endpoints.iter_mut().zip(&mut recorders).map(
            |(endpoint, record)| endpoint.prepare_recorded(kernel, hypervisor, &options, record),
        ))
        .await;
        drop(recorders);
        // Handed over in order while all goes well; when the kernel refused part of the
        // batch nothing is handed over, and after a refusal by the hypervisor the rest are
        // not: those are taken back, and those handed over before it detached.
        let refused = prepared.iter().any(Result::is_err);
        let mut first_error: Option<SandboxError> = None;
        let mut handed = Vec::new();
        for (endpoint, device) in endpoints.iter_mut().zip(prepared) {
            let device = match device {
                Ok(device) => device,
                Err(e) if first_error.is_none() => {
                    first_error = Some(e.into());
                    continue;
                }
                Err(e) => {
                    tracing::warn!(endpoint = %endpoint.id, error = %sandbox_net_netns::error_chain(&e), "another endpoint of a failed attach failed too");
                    continue;
                }
            };
            if refused || first_error.is_some() {
                if let Err(e) = endpoint.undo_prepared(kernel, &options, device).await {
                    tracing::warn!(endpoint = %endpoint.id, error = %sandbox_net_netns::error_chain(&e), "could not undo an endpoint of a failed attach");
                }
                continue;
            }
            match endpoint
                .hand_over(kernel, hypervisor, &options, device, Plug::Cold)
                .await
            {
                Ok(()) => handed.push(endpoint.id.clone()),
                Err(e) => first_error = Some(e.into()),
            }
        }
        if first_error.is_some() {
            for endpoint in endpoints.iter_mut().rev() {
                if handed.contains(&endpoint.id)
                    && let Err(e) = endpoint
                        .detach(kernel, hypervisor, &options, Plug::Cold)
                        .await
                {
                    tracing::warn!(endpoint = %endpoint.id, error = %sandbox_net_netns::error_chain(&e), "could not undo an endpoint of a failed attach");
                }
            }
        }
        self.rtnl = Some(rtnl);
        // Whatever happened, each record now says it: attached, or taken back with the steps
        // that could not be undone (none after a clean undo) for a detach or reconcile.
        let Some(e) = first_error else {
            for endpoint in &endpoints {
                let record = EndpointRecord::from(endpoint);
                self.state.upsert_endpoint(record.clone());
                self.store.save_endpoint(&self.state, &record)?;
            }
            return Ok(handed);
        };
        // Taken back: a record keeps only what could not be undone, and one with nothing
        // left goes. The document is written once (a journal line cannot drop a record).
        for endpoint in &endpoints {
            let record = EndpointRecord::from(endpoint);
            if record.steps.is_empty() {
                self.state.endpoints.retain(|e| e.id != record.id);
            } else {
                self.state.upsert_endpoint(record);
            }
        }
        self.store.save(&self.state)?;
        Err(e)
    }

    /// `options` with the sandbox's device group: the links an attach creates go in it as
    /// they are made, so that a teardown deletes them in one request.
    fn grouped(&self, options: &AttachOptions) -> AttachOptions {
        AttachOptions {
            link_group: (self.state.link_group != 0).then_some(self.state.link_group),
            ..options.clone()
        }
    }

    /// The sandbox's netlink connection, made on first use; give it back with
    /// `self.rtnl = Some(..)` when done (one connection for the sandbox's life).
    async fn take_rtnl(&mut self, netns: &Netns) -> Result<sandbox_net_netns::Rtnl, SandboxError> {
        match self.rtnl.take() {
            Some(rtnl) => Ok(rtnl),
            None => Ok(netns.rtnl().await?),
        }
    }

    /// Scans the namespace over the sandbox's netlink connection (the one attaches use next).
    pub(crate) async fn scan(
        &mut self,
        options: &sandbox_net_netns::ScanOptions,
    ) -> Result<sandbox_net_persist::scan::NamespaceScan, SandboxError> {
        let netns = self.live_netns()?;
        let rtnl = self.take_rtnl(&netns).await?;
        let scan = rtnl.scan(options).await;
        self.rtnl = Some(rtnl);
        Ok(scan?)
    }

    /// The links of the namespace, over the sandbox's netlink connection.
    pub(crate) async fn links(
        &mut self,
    ) -> Result<Vec<sandbox_net_persist::scan::Link>, SandboxError> {
        let netns = self.live_netns()?;
        let rtnl = self.take_rtnl(&netns).await?;
        let links = rtnl.links().await;
        self.rtnl = Some(rtnl);
        Ok(links?)
    }

    /// The namespace, or the error that names the state file and the recorded path when it no
    /// longer exists.
    pub(crate) fn live_netns(&self) -> Result<Netns, SandboxError> {
        self.netns.clone().ok_or_else(|| SandboxError::Netns {
            file: self.store.path().to_path_buf(),
            source: NetnsError::NotFound {
                path: self.state.netns.path.clone(),
            },
        })
    }

    /// Writes the state file (whole), unsynced: the operation's commit makes it durable.
    pub(crate) fn save_uncommitted(&self) -> Result<(), SandboxError> {
        Ok(self.store.save(&self.state)?)
    }

    /// Writes the state file (whole, including its journal), durably.
    pub async fn save(&self) -> Result<(), SandboxError> {
        self.durably(|store, state| store.save_synced(state)).await
    }

    /// Detaches one endpoint (hot-unplugged from a running VM with [`Plug::Hot`]) and drops
    /// its record. On failure the
    /// record stays, with what is left to undo.
    pub async fn detach<H: Hypervisor>(
        &mut self,
        id: &EndpointId,
        hypervisor: &H,
        options: &AttachOptions,
        plug: Plug,
    ) -> Result<(), SandboxError> {
        let result = self.detach_uncommitted(id, hypervisor, options, plug).await;
        self.committed(result).await
    }

    /// [`Sandbox::detach`] without the commit, for an operation that detaches several.
    pub(crate) async fn detach_uncommitted<H: Hypervisor>(
        &mut self,
        id: &EndpointId,
        hypervisor: &H,
        options: &AttachOptions,
        plug: Plug,
    ) -> Result<(), SandboxError> {
        let file = self.store.path().to_path_buf();
        let Some(record) = self.state.endpoint_mut(id) else {
            return Err(SandboxError::UnknownEndpoint {
                file,
                id: id.clone(),
            });
        };
        let mut endpoint = Endpoint::try_from(&*record)?;
        let rtnl = match self.netns.clone() {
            Some(netns) => Some(self.take_rtnl(&netns).await?),
            None => None,
        };
        let result = match (&self.netns, &rtnl) {
            (Some(netns), Some(rtnl)) => {
                endpoint
                    .detach(NetnsHandles { netns, rtnl }, hypervisor, options, plug)
                    .await
            }
            _ => endpoint.teardown(None, options).await,
        };
        self.rtnl = rtnl;
        match result {
            Ok(()) => self.state.endpoints.retain(|e| &e.id != id),
            Err(_) => self.state.upsert_endpoint(EndpointRecord::from(&endpoint)),
        }
        self.store.save(&self.state)?;
        Ok(result?)
    }

    /// Detaches the endpoints `ids` of a VM that is gone or stopped (no hot-unplug), all at
    /// once: when they are all of the sandbox's endpoints, their links go first as the
    /// sandbox's device group; then every endpoint's steps are undone concurrently over the
    /// one netlink socket, and the state is written once at the end (not once per endpoint).
    /// A crash part way leaves every record as it was: undoing is idempotent, and the next
    /// detach or teardown does what is left. Returns the endpoints that failed (their records
    /// keep what could not be undone); an unknown id changes nothing.
    pub(crate) async fn detach_cold_uncommitted<H: Hypervisor>(
        &mut self,
        ids: &[EndpointId],
        hypervisor: &H,
        options: &AttachOptions,
    ) -> Result<Vec<EndpointError>, SandboxError> {
        let file = self.store.path().to_path_buf();
        let mut endpoints = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(record) = self.state.endpoints.iter().find(|e| &e.id == id) else {
                return Err(SandboxError::UnknownEndpoint {
                    file,
                    id: id.clone(),
                });
            };
            endpoints.push(Endpoint::try_from(record)?);
        }
        let rtnl = match self.netns.clone() {
            Some(netns) => Some(self.take_rtnl(&netns).await?),
            None => None,
        };
        let all = self.state.endpoints.iter().all(|e| ids.contains(&e.id));
        if all && let Some(rtnl) = &rtnl {
            self.delete_link_group(rtnl, options).await;
        }
        let kernel = match (&self.netns, &rtnl) {
            (Some(netns), Some(rtnl)) => Some(NetnsHandles { netns, rtnl }),
            _ => None,
        };
        let results = futures::future::join_all(endpoints.iter_mut().map(|endpoint| async {
            match kernel {
                Some(kernel) => {
                    endpoint
                        .detach(kernel, hypervisor, options, Plug::Cold)
                        .await
                }
                None => endpoint.teardown(None, options).await,
            }
        }))
        .await;
        self.rtnl = rtnl;
        let mut failures = Vec::new();
        for (endpoint, result) in endpoints.iter().zip(results) {
            match result {
                Ok(()) => self.state.endpoints.retain(|e| e.id != endpoint.id),
                Err(e) => {
                    self.state.upsert_endpoint(EndpointRecord::from(endpoint));
                    failures.push(e);
                }
            }
        }
        self.store.save(&self.state)?;
        Ok(failures)
    }

    /// Opens again the device of every endpoint; see `Network::reopen_devices`.
    pub async fn reopen_devices(
        &mut self,
        options: &ReopenOptions,
    ) -> Result<Vec<NetDevice>, SandboxError> {
        let file = self.store.path().to_path_buf();
        if self.state.endpoints.is_empty() {
            return Err(SandboxError::NotAttached {
                file,
                what: "it records no endpoint".into(),
            });
        }
        if let Some(e) = self.state.endpoints.iter().find(|e| !e.attached) {
            return Err(SandboxError::NotAttached {
                file,
                what: format!(
                    "endpoint {} ({} {}) is not attached",
                    e.id, e.kind, e.interface.link.name
                ),
            });
        }
        let netns = self.live_netns()?;
        let rtnl = self.take_rtnl(&netns).await?;
        let kernel = NetnsHandles {
            netns: &netns,
            rtnl: &rtnl,
        };
        let mut devices = Vec::new();
        let mut failure = None;
        for record in &self.state.endpoints {
            let endpoint = match Endpoint::try_from(record) {
                Ok(endpoint) => endpoint,
                Err(e) => {
                    failure = Some(e.into());
                    break;
                }
            };
            match endpoint.reopen_device(kernel, options).await {
                Ok(device) => devices.push(device),
                Err(e) => {
                    failure = Some(e.into());
                    break;
                }
            }
        }
        self.rtnl = Some(rtnl);
        // On failure the descriptors opened so far close with `devices`.
        match failure {
            None => Ok(devices),
            Some(e) => Err(e),
        }
    }

    /// Runs `f` on a thread inside the sandbox's namespace (see `Netns::run`).
    pub async fn run<F, T>(&self, f: F) -> Result<T, SandboxError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let netns = self.live_netns()?;
        let file = self.store.path().to_path_buf();
        netns
            .run(f)
            .await
            .map_err(|source| SandboxError::Netns { file, source })
    }

    /// Compares the kernel with every attached endpoint's recorded steps.
    pub async fn check(&self) -> Result<Vec<(EndpointId, Drift)>, SandboxError> {
        let Some(netns) = &self.netns else {
            return Ok(self
                .state
                .endpoints
                .iter()
                .filter(|e| !e.steps.is_empty())
                .map(|e| {
                    let drift = Drift {
                        step: "the sandbox's namespace".into(),
                        expected: self.state.netns.path.display().to_string(),
                        found: "no such namespace".into(),
                    };
                    (e.id.clone(), drift)
                })
                .collect());
        };
        let rtnl = netns.rtnl().await?;
        let kernel = NetnsHandles { netns, rtnl: &rtnl };
        let mut drifts = Vec::new();
        for record in &self.state.endpoints {
            for drift in check(kernel, &record.steps).await? {
                drifts.push((record.id.clone(), drift));
            }
        }
        Ok(drifts)
    }

    /// Tears down every endpoint from the record alone: the sandbox's links deleted as one
    /// device group, then every endpoint's other steps undone, all endpoints at once; goes
    /// on past failures and reports them all. The state file is written only when something
    /// could not be undone (once, with what is left); a complete teardown leaves it as it
    /// was, for `forget` to remove. What is already gone (objects, or the whole namespace)
    /// counts as done. Safe to run twice: a teardown cut short is run again. Then the CNI networks the
    /// sandbox ran into its namespace get their DEL, last first. When everything is undone and
    /// this module created the namespace, the namespace is deleted too.
    pub async fn teardown(&mut self, options: &AttachOptions) -> Result<(), SandboxError> {
        match self.teardown_uncommitted(options).await {
            // A complete teardown is followed by `forget`, which removes the files: there is
            // nothing to make durable.
            Ok(()) => Ok(()),
            // What is left is, for the next try.
            Err(e) => self.committed(Err(e)).await,
        }
    }

    /// Deletes every link the sandbox's endpoints created at once, as their device group:
    /// one request and one RCU grace period for the sandbox instead of one per link. The
    /// per-endpoint undo that follows finds them gone and does the rest; if the group cannot
    /// be deleted, that undo deletes the links one by one.
    async fn delete_link_group(&self, rtnl: &sandbox_net_netns::Rtnl, options: &AttachOptions) {
        #[cfg(not(feature = "fault-injection"))]
        let _ = options;
        if self.state.link_group == 0 || self.state.endpoints.iter().all(|e| e.steps.is_empty()) {
            return;
        }
        #[cfg(feature = "fault-injection")]
        options.hooks.kill_point(&format_args!(
            "delete the links of device group {}",
            self.state.link_group
        ));
        if let Err(e) = rtnl.delete_link_group(self.state.link_group).await
            && !matches!(e.errno(), Some(libc::ENODEV | libc::ENOENT))
        {
            tracing::warn!(group = self.state.link_group, error = %e, "links not deleted as a group; deleting them one by one");
        }
    }

    async fn teardown_uncommitted(&mut self, options: &AttachOptions) -> Result<(), SandboxError> {
        // A teardown that dies half way leaves a sandbox whose owner is gone: reaped next.
        self.own()?;
        let rtnl = match self.netns.clone() {
            Some(netns) => Some(self.take_rtnl(&netns).await?),
            None => None,
        };
        if let Some(rtnl) = &rtnl {
            self.delete_link_group(rtnl, options).await;
        }
        let mut failures = Vec::new();
        let ids: Vec<EndpointId> = self
            .state
            .endpoints
            .iter()
            .rev()
            .map(|e| e.id.clone())
            .collect();
        let mut endpoints = Vec::new();
        for id in &ids {
            if let Some(record) = self.state.endpoints.iter().find(|e| &e.id == id) {
                endpoints.push(Endpoint::try_from(record)?);
            }
        }
        let kernel = match (&self.netns, &rtnl) {
            (Some(netns), Some(rtnl)) => Some(NetnsHandles { netns, rtnl }),
            _ => None,
        };
        // Every endpoint at once: their requests interleave on the one socket. Undoing is
        // idempotent, so a teardown cut short anywhere is simply run again.
        let results = futures::future::join_all(
            endpoints
                .iter_mut()
                .map(|endpoint| endpoint.teardown(kernel, options)),
        )
        .await;
        for (endpoint, result) in endpoints.iter().zip(results) {
            if let Err(e) = result {
                failures.push(e);
            }
            self.state.upsert_endpoint(EndpointRecord::from(endpoint));
        }
        if let Some(failures) = Failures::from_vec(failures) {
            // What could not be undone is written, in one save, for the next try. A
            // complete teardown writes nothing: `forget` removes the files, and a process
            // that dies before that leaves records whose undo is simply run again.
            self.store.save(&self.state)?;
            self.rtnl = rtnl;
            return Err(SandboxError::Teardown {
                file: self.store.path().to_path_buf(),
                failures,
            });
        }
        self.rtnl = rtnl;
        // The CNI networks sandbox-net ran into the namespace go after the endpoints (the
        // pod interfaces are theirs) and before the namespace.
        if !self.state.cni.is_empty() {
            self.del_cni().await?;
        }
        self.delete_created_netns()
    }

    /// Runs the CNI network of `record` into the sandbox's namespace, as a runtime does (the
    /// container id is the sandbox's id). The record is written before ADD and again with
    /// ADD's result, so that a teardown in this or a later process runs DEL even when this
    /// process dies during ADD. When ADD fails, DEL runs at once (as the specification asks)
    /// and the record goes.
    #[tracing::instrument(name = "sandbox.add_cni", skip_all, fields(ifname = %record.ifname), err)]
    pub async fn add_cni(
        &mut self,
        record: CniRecord,
    ) -> Result<crate::cni::CniResult, SandboxError> {
        let result = self.add_cni_uncommitted(record).await;
        self.committed(result).await
    }

    async fn add_cni_uncommitted(
        &mut self,
        mut record: CniRecord,
    ) -> Result<crate::cni::CniResult, SandboxError> {
        let netns = self.live_netns()?;
        let file = self.store.path().to_path_buf();
        let cni_error = |network: &str, source| SandboxError::Cni {
            file: file.clone(),
            network: network.to_string(),
            source: Box::new(source),
        };
        let list = crate::cni::runtime::network(&record)
            .map_err(|e| cni_error("(unreadable)", e.into()))?;
        record.result = None;
        self.state.cni.push(record.clone());
        self.store.save(&self.state)?;
        let sandbox_id = self.state.sandbox_id.clone();
        match crate::cni::runtime::add(&record, &sandbox_id, netns.path().to_path_buf()).await {
            Ok(result) => {
                if let Some(last) = self.state.cni.last_mut() {
                    last.result = Some(result.to_json(list.version));
                }
                self.store.save(&self.state)?;
                Ok(result)
            }
            Err(e) => {
                if let Err(undo) =
                    crate::cni::runtime::del(&record, &sandbox_id, Some(netns.path().to_path_buf()))
                        .await
                {
                    tracing::warn!(error = %sandbox_net_netns::error_chain(&undo), "DEL after a failed ADD failed; the record stays for teardown");
                    return Err(cni_error(&list.name, e));
                }
                self.state.cni.pop();
                self.store.save(&self.state)?;
                Err(cni_error(&list.name, e))
            }
        }
    }

    /// DEL of every recorded CNI network, last first; goes on past failures and keeps the
    /// records that failed, reporting the first.
    async fn del_cni(&mut self) -> Result<(), SandboxError> {
        let netns_path = self.netns.as_ref().map(|n| n.path().to_path_buf());
        let sandbox_id = self.state.sandbox_id.clone();
        let mut first_error = None;
        let mut kept = Vec::new();
        while let Some(record) = self.state.cni.pop() {
            if let Err(e) = crate::cni::runtime::del(&record, &sandbox_id, netns_path.clone()).await
            {
                let network = crate::cni::runtime::network(&record)
                    .map(|l| l.name)
                    .unwrap_or_default();
                tracing::warn!(%network, error = %sandbox_net_netns::error_chain(&e), "CNI DEL failed");
                kept.push(record);
                first_error.get_or_insert(SandboxError::Cni {
                    file: self.store.path().to_path_buf(),
                    network,
                    source: Box::new(e),
                });
            }
            self.store.save(&self.state)?;
        }
        kept.reverse();
        if !kept.is_empty() {
            self.state.cni = kept;
            self.store.save(&self.state)?;
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Deletes the namespace when this module created it (the end of a teardown).
    fn delete_created_netns(&mut self) -> Result<(), SandboxError> {
        if self.state.netns.created_by_us
            && let Some(netns) = self.netns.take_if(|n| n.created_by_us())
        {
            // The connection goes with the namespace.
            self.rtnl = None;
            netns.delete().map_err(|source| SandboxError::Netns {
                file: self.store.path().to_path_buf(),
                source,
            })?;
        }
        Ok(())
    }

    /// Removes the state file (after a complete teardown). A document that holds endpoints of
    /// kinds this version does not know is never removed: nothing here could tear them down,
    /// and without the document nothing ever would. It is written back with them alone (the
    /// endpoints torn down are dropped from it), and the error says so.
    pub async fn forget(mut self) -> Result<(), SandboxError> {
        if self.state.unknown_endpoints.is_empty() {
            // Only the blocking write of a commit whose future was dropped can still hold
            // the store: it ends on its own, and the files go after it.
            let mut store = self.store;
            let store = loop {
                match Arc::try_unwrap(store) {
                    Ok(store) => break store,
                    Err(shared) => {
                        store = shared;
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                }
            };
            return Ok(store.remove()?);
        }
        self.state.endpoints.retain(|e| !e.steps.is_empty());
        self.save().await?;
        let ids = self
            .state
            .unknown_endpoints
            .iter()
            .map(|e| {
                let id = e.get("id").and_then(|v| v.as_str()).unwrap_or("?");
                let kind = e.get("kind").map(ToString::to_string).unwrap_or_default();
                format!("{id} (kind {kind})")
            })
            .collect();
        Err(SandboxError::UnknownKindsKept {
            file: self.store.path().to_path_buf(),
            endpoints: ids,
        })
    }
}
