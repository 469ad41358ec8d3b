//! An endpoint: one pod interface, its identity, and its attach and detach.

use std::{error::Error as StdError, os::fd::OwnedFd, path::PathBuf};

use rand::RngExt;
use sandbox_net_interworking::{
    ApplyOptions, AttachError, FitError, InterworkingModel, NetnsHandles, NetworkPair, PairError,
    Step, TapOptions, UndoError, apply_with, fit_to_kernel, random_local_mac, undo_with,
    vm_link_name,
};
use sandbox_net_netns::{
    Failures, MacvtapError, NetlinkError, VhostError, on_blocking_thread, open_vhost_net,
};
use sandbox_net_persist::{
    IfName, MacAddr,
    endpoint::{EndpointId, EndpointKind},
    scan::{Interface, Link},
};

use crate::{
    give_back::give_back,
    hypervisor::{Backend, Hypervisor, HypervisorError, NetDevice, Plug},
    limiter::{RateLimits, VmLink, limiter_steps},
    physical::{PciAddress, SysfsPci, VfioBinding},
};

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// How endpoints are attached.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    /// The interworking model for veth, macvlan, tuntap (ipvlan always uses tcfilter).
    pub model: InterworkingModel,
    /// How taps are made; the queue count comes from the hypervisor.
    pub tap: TapOptions,
    /// Where PCI functions are bound to vfio-pci (`SysfsPci::host()` in production).
    pub sysfs: SysfsPci,
    /// Fault points of the kernel steps (feature `fault-injection`, for tests).
    #[cfg(feature = "fault-injection")]
    pub hooks: sandbox_net_interworking::ApplyHooks,
    /// The device group every link the attach creates is put in (the sandbox's), so that a
    /// teardown deletes them in one request; `None` for none.
    pub link_group: Option<u32>,
}

impl AttachOptions {
    /// How plans are applied under these options.
    fn apply_options(&self) -> ApplyOptions {
        ApplyOptions {
            #[cfg(feature = "fault-injection")]
            hooks: self.hooks,
            link_group: self.link_group,
        }
    }
}

impl Default for AttachOptions {
    /// tcfilter, default taps, the host's sysfs, no device group.
    fn default() -> Self {
        Self {
            model: InterworkingModel::TcFilter,
            tap: TapOptions::default(),
            sysfs: SysfsPci::host(),
            #[cfg(feature = "fault-injection")]
            hooks: sandbox_net_interworking::ApplyHooks::default(),
            link_group: None,
        }
    }
}

/// One step of attaching or detaching that failed.
#[derive(Debug, thiserror::Error)]
pub enum EndpointFailure {
    /// The pair could not be set up as configured.
    #[error(transparent)]
    Pair(#[from] PairError),
    /// The kernel steps failed and were rolled back.
    #[error(transparent)]
    Steps(Box<AttachError>),
    /// The kernel steps could not all be undone.
    #[error(transparent)]
    Undo(#[from] UndoError),
    /// A link could not be looked up.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The macvtap's queues could not be opened.
    #[error(transparent)]
    Queues(#[from] MacvtapError),
    /// A tap's queues could not be opened again.
    #[error(transparent)]
    Tap(sandbox_net_netns::TapError),
    /// vhost-net could not be opened.
    #[error(transparent)]
    Vhost(#[from] VhostError),
    /// The PCI function could not be bound to vfio-pci, or given back to its driver.
    #[error("VFIO")]
    Vfio(#[source] BoxError),
    /// The PCI function is back on its driver, but its network interface could not be made
    /// the pod's again as it was.
    #[error(transparent)]
    GiveBack(crate::give_back::GiveBackError),
    /// The rate limits cannot be applied to this endpoint.
    #[error(transparent)]
    Limits(#[from] crate::limiter::LimitPlacementError),
    /// The plan would touch traffic control someone else put on a pod link (or the links
    /// could not be read to know); nothing was changed.
    #[error(transparent)]
    Fit(#[from] FitError),
    /// Something the device needs is missing (a MAC address, a device for this kind).
    #[error("{0}")]
    Incomplete(&'static str),
    /// The VMM refused the device.
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    /// The plan could not be recorded before it was applied; nothing was changed.
    #[error("the plan could not be recorded")]
    Record(#[source] BoxError),
}

impl From<AttachError> for EndpointFailure {
    fn from(e: AttachError) -> Self {
        Self::Steps(Box::new(e))
    }
}

/// Attaching or detaching one endpoint failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to {op} endpoint {id} ({kind} {link})")]
pub struct EndpointError {
    /// `"attach"` or `"detach"`.
    pub op: &'static str,
    /// The endpoint.
    pub id: EndpointId,
    /// Its kind.
    pub kind: EndpointKind,
    /// Its pod link.
    pub link: IfName,
    /// Every failure, in order: one for an attach (which stops at its first), possibly
    /// several for a detach or a teardown (which go on past failures).
    #[source]
    pub failures: Failures<EndpointFailure>,
}

impl EndpointError {
    /// The first failure.
    pub fn first(&self) -> &EndpointFailure {
        self.failures.first()
    }
}

/// What an endpoint is, with what its kind needs to reach the VM: a physical endpoint always
/// has its PCI function, a vhost-user one its socket, and no other kind has either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointVariant {
    /// A veth (or a device without a kind), paired by the configured model.
    Veth,
    /// A macvlan, paired by the configured model.
    Macvlan,
    /// An ipvlan, always paired by tcfilter.
    Ipvlan,
    /// An L2-mode netkit, paired by the configured model.
    Netkit,
    /// A macvtap that exists already: its own queues go to the VM.
    Macvtap,
    /// A tap of the hot-plug API: a fresh `tap{index}_kata` is made for it.
    Tap,
    /// A tap-mode tun device of the pod, paired by the configured model.
    Tuntap,
    /// A PCI network function, handed to the VM through vfio-pci.
    Physical {
        /// The function (ethtool's bus info of the pod interface).
        pci: PciAddress,
    },
    /// An interface served by a vhost-user backend through a socket.
    VhostUser {
        /// The backend's socket.
        socket: PathBuf,
    },
}

impl EndpointVariant {
    /// The plain kind, as persisted and shown.
    pub fn kind(&self) -> EndpointKind {
        match self {
            Self::Veth => EndpointKind::Veth,
            Self::Macvlan => EndpointKind::Macvlan,
            Self::Ipvlan => EndpointKind::Ipvlan,
            Self::Netkit => EndpointKind::Netkit,
            Self::Macvtap => EndpointKind::Macvtap,
            Self::Tap => EndpointKind::Tap,
            Self::Tuntap => EndpointKind::Tuntap,
            Self::Physical { .. } => EndpointKind::Physical,
            Self::VhostUser { .. } => EndpointKind::VhostUser,
        }
    }

    /// The PCI function of a physical endpoint.
    pub fn pci(&self) -> Option<&PciAddress> {
        match self {
            Self::Physical { pci } => Some(pci),
            _ => None,
        }
    }

    /// The socket of a vhost-user endpoint.
    pub fn vhost_user_socket(&self) -> Option<&PathBuf> {
        match self {
            Self::VhostUser { socket } => Some(socket),
            _ => None,
        }
    }
}

/// A pod interface as the VM gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its own identity, random and persisted.
    pub id: EndpointId,
    /// Its index among the sandbox's endpoints (names `tap{index}_kata`).
    pub index: u32,
    /// What it is, with the PCI function or socket its kind reaches the VM through.
    pub variant: EndpointVariant,
    /// The pod interface as scanned.
    pub interface: Interface,
    /// The changes of the current attach, recorded before they are applied: netlink steps in
    /// the pod's namespace, and for a physical endpoint the binding of its PCI function to
    /// vfio-pci ([`Step::BindVfio`], in sysfs).
    pub steps: Vec<Step>,
    /// Whether it is attached.
    pub attached: bool,
    /// What the current attach gave the VM (queues, guest MAC, model, host-side limits).
    pub device: AttachedDevice,
    /// The name the VM-side link (tap or macvtap) gets instead of `tap{index}_kata`, when the
    /// caller was asked for one (CNI's `TC_REDIRECT_TAP_NAME`). Set before attaching; the
    /// recorded steps carry the name for everything after.
    pub vm_link: Option<IfName>,
}

/// What an attach gave the VM, kept with the endpoint's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachedDevice {
    /// The model used, when the endpoint has a pair.
    pub model: Option<InterworkingModel>,
    /// Queue pairs.
    pub queues: u32,
    /// The guest's MAC.
    pub guest_mac: Option<MacAddr>,
    /// Host-side limits applied.
    pub limits: RateLimits,
}

impl Endpoint {
    /// An endpoint of `variant` for the scanned `interface`, with a fresh random id.
    pub fn new(index: u32, variant: EndpointVariant, interface: Interface) -> Self {
        let id = EndpointId::from_bytes(rand::rng().random());
        Self {
            id,
            index,
            variant,
            interface,
            steps: Vec::new(),
            attached: false,
            device: AttachedDevice::default(),
            vm_link: None,
        }
    }

    /// A tap endpoint for the hot-plug API: a fresh `tap{index}_kata` with the given guest
    /// name, MAC and MTU (Kata's `TapEndpoint`).
    pub fn tap(index: u32, guest_name: IfName, mac: MacAddr, mtu: u32) -> Self {
        let link = Link {
            name: guest_name,
            index: 0,
            kind: Some("tun".into()),
            mtu,
            mac: Some(mac),
            up: false,
            lower_up: false,
            loopback: false,
            parent_index: None,
            parent_netnsid: None,
            txqueuelen: 0,
            tuntap: None,
            netkit: None,
        };
        let interface = Interface {
            link,
            addresses: vec![],
            routes: vec![],
            neighbours: vec![],
            all_routes: vec![],
        };
        Self::new(index, EndpointVariant::Tap, interface)
    }

    /// What kind of endpoint it is.
    pub fn kind(&self) -> EndpointKind {
        self.variant.kind()
    }

    /// The pod link's name.
    pub fn link_name(&self) -> &IfName {
        &self.interface.link.name
    }

    /// The model this endpoint's kind uses with `configured`: ipvlan is always tcfilter, a
    /// hot-plugged tap is a bare tap, and kinds without a pair have none.
    pub fn model(&self, configured: InterworkingModel) -> Option<InterworkingModel> {
        match self.kind() {
            EndpointKind::Veth
            | EndpointKind::Macvlan
            | EndpointKind::Tuntap
            | EndpointKind::Netkit => Some(configured),
            EndpointKind::Ipvlan => Some(InterworkingModel::TcFilter),
            EndpointKind::Tap => Some(InterworkingModel::None),
            EndpointKind::Macvtap | EndpointKind::Physical | EndpointKind::VhostUser => None,
        }
    }

    fn error(&self, op: &'static str, failures: Failures<EndpointFailure>) -> EndpointError {
        EndpointError {
            op,
            id: self.id.clone(),
            kind: self.kind(),
            link: self.link_name().clone(),
            failures,
        }
    }

    /// `Ok` when nothing failed, else the error of `op` with every failure.
    fn outcome(
        &self,
        op: &'static str,
        failures: Vec<EndpointFailure>,
    ) -> Result<(), EndpointError> {
        match Failures::from_vec(failures) {
            None => Ok(()),
            Some(failures) => Err(self.error(op, failures)),
        }
    }

    /// Attaches the endpoint: makes the kernel changes its kind and model need (rolled back if
    /// anything fails), builds the device and hands it to the hypervisor, cold- or hot-plugged
    /// as `plug` says. On failure nothing of this attach is left.
    pub async fn attach<H: Hypervisor>(
        &mut self,
        kernel: NetnsHandles<'_>,
        hypervisor: &H,
        options: &AttachOptions,
        plug: Plug,
    ) -> Result<(), EndpointError> {
        self.attach_recorded(kernel, hypervisor, options, plug, &mut |_| Ok(()))
            .await
    }

    /// Like [`Endpoint::attach`], calling `record` with the endpoint once its plan (the
    /// kernel steps, the VFIO binding it will make) is known and before anything changes, so
    /// that the plan is persisted before it is applied. If `record` fails, nothing is changed.
    #[tracing::instrument(name = "endpoint.attach", skip_all, fields(endpoint = %self.id, link = %self.interface.link.name, kind = %self.kind(), model = ?options.model, netns = %kernel.netns.path().display()))]
    pub async fn attach_recorded<H: Hypervisor>(
        &mut self,
        kernel: NetnsHandles<'_>,
        hypervisor: &H,
        options: &AttachOptions,
        plug: Plug,
        record: &mut (dyn FnMut(&Endpoint) -> Result<(), BoxError> + Send),
    ) -> Result<(), EndpointError> {
        let result = self
            .build_and_hand_over(kernel, hypervisor, options, plug, record)
            .await;
        if let Err(e) = &result {
            // As `instrument(err)` would, with the whole chain: the span's status then names
            // the step that failed, not only the endpoint.
            tracing::error!(error = %sandbox_net_netns::error_chain(e));
        }
        result
    }

    /// The work of [`Endpoint::attach_recorded`], inside its span: builds the device (the
    /// kernel changes recorded, then applied) and hands it over.
    async fn build_and_hand_over<H: Hypervisor>(
        &mut self,
        kernel: NetnsHandles<'_>,
        hypervisor: &H,
        options: &AttachOptions,
        plug: Plug,
        record: &mut (dyn FnMut(&Endpoint) -> Result<(), BoxError> + Send),
    ) -> Result<(), EndpointError> {
        let device = match self.build_device(kernel, hypervisor, options, record).await {
            Ok(device) => device,
            Err(e) => return Err(self.error("attach", Failures::new(e, []))),
        };
        self.hand_over(kernel, hypervisor, options, device, plug)
            .await
    }

    /// The first half of [`Endpoint::attach_recorded`]: the kernel changes (recorded first,
    /// rolled back if one fails) and the device for the VMM, not handed over yet. The
    /// endpoints of one sandbox can be prepared at once (their requests share one netlink
    /// socket), then handed over one by one in order, so that the guest sees its devices in
    /// the order of their indices. A prepared endpoint whose device is not handed over is
    /// undone with [`Endpoint::undo_prepared`].
    /// Its span is the endpoint's `endpoint.attach`, as for a whole attach.
    #[tracing::instrument(name = "endpoint.attach", skip_all, fields(endpoint = %self.id, link = %self.interface.link.name, kind = %self.kind(), model = ?options.model, netns = %kernel.netns.path().display()))]
    pub async fn prepare_recorded<H: Hypervisor>(
        &mut self,
        kernel: NetnsHandles<'_>,
        hypervisor: &H,
        options: &AttachOptions,
        record: &mut (dyn FnMut(&Endpoint) -> Result<(), BoxError> + Send),
    ) -> Result<NetDevice, EndpointError> {
        match self.build_device(kernel, hypervisor, options, record).await {
            Ok(device) => Ok(device),
            Err(e) => {
                tracing::error!(error = %sandbox_net_netns::error_chain(&e));
                Err(self.error("attach", Failures::new(e, [])))
            }
        }
    }

    /// Undoes a prepared endpoint whose device is not handed over (another endpoint of
    /// the same attach failed): its descriptors close with `device`, then its kernel changes
    /// are undone. Returns what could not be undone (it stays recorded).
    pub async fn undo_prepared(
        &mut self,
        kernel: NetnsHandles<'_>,
        options: &AttachOptions,
        device: NetDevice,
    ) -> Result<(), EndpointError> {
        drop(device);
        let failures = self.undo_all(kernel, options).await;
        self.outcome("undo the prepared attach of", failures)
    }

    /// The second half of [`Endpoint::attach_recorded`]: hands the prepared `device` to the
    /// hypervisor, cold- or hot-plugged as `plug` says; if it refuses, the kernel changes are
    /// undone.
    pub async fn hand_over<H: Hypervisor>(
        &mut self,
        kernel: NetnsHandles<'_>,
        hypervisor: &H,
        options: &AttachOptions,
        device: NetDevice,
        plug: Plug,
    ) -> Result<(), EndpointError> {
        let handed = match plug {
            Plug::Hot => hypervisor.hot_add_device(device).await,
            Plug::Cold => hypervisor.add_device(device).await,
        };
        if let Err(refused) = handed {
            let more = self.undo_all(kernel, options).await;
            return Err(self.error("attach", Failures::new(refused.into(), more)));
        }
        self.attached = true;
        tracing::info!("endpoint attached");
        Ok(())
    }

    /// Detaches the endpoint: hot-unplugs the device from a running VM ([`Plug::Hot`]; nothing
    /// is asked of the VMM for [`Plug::Cold`]), undoes the kernel changes and gives a PCI
    /// function back to its driver. Goes on past failures and reports them all; safe to run
    /// twice.
    #[tracing::instrument(name = "endpoint.detach", skip_all, fields(endpoint = %self.id, link = %self.interface.link.name, kind = %self.kind()), err)]
    pub async fn detach<H: Hypervisor>(
        &mut self,
        kernel: NetnsHandles<'_>,
        hypervisor: &H,
        options: &AttachOptions,
        plug: Plug,
    ) -> Result<(), EndpointError> {
        let mut failures = Vec::new();
        if plug == Plug::Hot
            && self.attached
            && let Err(e) = hypervisor.hot_remove_device(&self.id).await
        {
            failures.push(e.into());
        }
        failures.extend(self.undo_all(kernel, options).await);
        self.attached = false;
        self.outcome("detach", failures)?;
        tracing::info!("endpoint detached");
        Ok(())
    }

    /// Tears the endpoint down from its recorded state alone, without a VMM (after a restart,
    /// or once the VM is gone): undoes the kernel steps in the namespace (`None` when the
    /// namespace no longer exists) and gives a PCI function back to its driver. Goes on past
    /// failures and reports them all; safe to run twice.
    #[tracing::instrument(name = "endpoint.teardown", skip_all, fields(endpoint = %self.id, link = %self.interface.link.name, kind = %self.kind()), err)]
    pub async fn teardown(
        &mut self,
        kernel: Option<NetnsHandles<'_>>,
        options: &AttachOptions,
    ) -> Result<(), EndpointError> {
        let failures = self.undo_all_in(kernel, options).await;
        self.attached = false;
        self.outcome("tear down", failures)
    }

    /// Undoes every recorded step; returns what failed.
    async fn undo_all(
        &mut self,
        kernel: NetnsHandles<'_>,
        options: &AttachOptions,
    ) -> Vec<EndpointFailure> {
        self.undo_all_in(Some(kernel), options).await
    }

    /// Undoes every recorded step, in reverse: the netlink steps in the pod's namespace (when
    /// it still exists: `kernel` is `None` when it is gone, and everything in it with it),
    /// then the VFIO binding (host sysfs, always), which was made first. The steps left are
    /// those that could not be undone, for a later detach to take back: none after a clean
    /// undo, so that a second detach has nothing left to do.
    async fn undo_all_in(
        &mut self,
        kernel: Option<NetnsHandles<'_>>,
        options: &AttachOptions,
    ) -> Vec<EndpointFailure> {
        let mut failures = Vec::new();
        match kernel {
            Some(kernel) => {
                if let Err(e) = self.undo_steps(kernel, options.apply_options()).await {
                    failures.push(e.into());
                }
            }
            // Gone with the namespace; what lives in sysfs stays to be undone.
            None => self.steps.retain(Step::is_sysfs),
        }
        failures.extend(self.undo_vfio_bindings(kernel, options).await);
        failures
    }

    /// Undoes the recorded netlink steps; those that could not be undone stay recorded, and
    /// so do the steps in sysfs (see [`Endpoint::undo_vfio_bindings`]).
    async fn undo_steps(
        &mut self,
        kernel: NetnsHandles<'_>,
        options: ApplyOptions,
    ) -> Result<(), UndoError> {
        let (sysfs, netlink): (Vec<Step>, Vec<Step>) = std::mem::take(&mut self.steps)
            .into_iter()
            .partition(Step::is_sysfs);
        let result = undo_with(kernel, &netlink, options).await;
        self.steps = sysfs;
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                self.steps.extend(e.residue(&netlink));
                Err(e)
            }
        }
    }

    /// Undoes the recorded VFIO bindings, last first: the PCI function leaves vfio-pci for
    /// its original driver ([`SysfsPci::unbind_vfio`]), and the network interface that driver
    /// registers in the host's namespace becomes the pod's again, as it was ([`give_back`]),
    /// unless the pod's namespace is gone. A binding that could not be undone stays recorded,
    /// so that a later detach tries again.
    async fn undo_vfio_bindings(
        &mut self,
        kernel: Option<NetnsHandles<'_>>,
        options: &AttachOptions,
    ) -> Vec<EndpointFailure> {
        let mut failures = Vec::new();
        let mut kept = Vec::new();
        for step in std::mem::take(&mut self.steps).into_iter().rev() {
            let Some(binding) = VfioBinding::of_step(&step) else {
                kept.push(step);
                continue;
            };
            let unbound = {
                let (sysfs, binding) = (options.sysfs.clone(), binding.clone());
                on_blocking_thread(move || sysfs.unbind_vfio(&binding)).await
            };
            let given_back = match (unbound, kernel) {
                (Err(e), _) => Err(EndpointFailure::Vfio(Box::new(e))),
                // The NIC's driver registered a new interface in the host's namespace: the
                // pod gets it back as it had it.
                (Ok(()), Some(kernel)) => {
                    give_back(kernel, &options.sysfs, &binding.bdf, &self.interface)
                        .await
                        .map_err(EndpointFailure::GiveBack)
                }
                (Ok(()), None) => {
                    tracing::warn!(bdf = %binding.bdf, "the pod's namespace is gone: the NIC stays in the host's namespace, where its driver put it");
                    Ok(())
                }
            };
            if let Err(e) = given_back {
                failures.push(e);
                kept.push(step);
            }
        }
        kept.reverse();
        self.steps = kept;
        failures
    }

    /// Applies the recorded kernel steps; on failure the record keeps what the rollback could
    /// not undo.
    async fn apply_steps(
        &mut self,
        kernel: NetnsHandles<'_>,
        options: &AttachOptions,
    ) -> Result<sandbox_net_interworking::AppliedPair, EndpointFailure> {
        match apply_with(kernel, &self.steps, options.apply_options()).await {
            Ok(applied) => Ok(applied),
            Err(e) => {
                self.steps = e.residue.clone();
                Err(e.into())
            }
        }
    }

    /// Makes the kernel changes and builds the device for the VMM.
    async fn build_device<H: Hypervisor>(
        &mut self,
        kernel: NetnsHandles<'_>,
        hypervisor: &H,
        options: &AttachOptions,
        record: &mut (dyn FnMut(&Endpoint) -> Result<(), BoxError> + Send),
    ) -> Result<NetDevice, EndpointFailure> {
        let config = hypervisor.config();
        // Kata Go hands a non-multi-queue VMM zero queues; one is the least a device has.
        let queues = if hypervisor.capabilities().multi_queue {
            config.queues.max(1)
        } else {
            1
        };
        let vhost = |n: usize| -> Result<Vec<OwnedFd>, EndpointFailure> {
            if config.disable_vhost_net {
                Ok(Vec::new())
            } else {
                Ok(open_vhost_net(&config.vhost_net_path, n)?)
            }
        };
        let guest_name = self.link_name().clone();
        let endpoint = self.id.clone();
        let model = self.model(options.model);
        // Limits are checked and placed before anything changes.
        let limits = RateLimits::from_hypervisor(hypervisor.capabilities(), &config);
        let vm_name = match (model, &self.vm_link) {
            (Some(_), Some(name)) => Some(name.clone()),
            (Some(_), None) => Some(vm_link_name(self.index)?),
            (None, _) => None,
        };
        let vm_link = match (self.kind(), model, vm_name.as_ref()) {
            (_, Some(InterworkingModel::Macvtap), Some(macvtap)) => {
                Some(VmLink::Macvtap { macvtap })
            }
            (_, Some(model), Some(tap)) => Some(VmLink::Tap {
                tap,
                pod: &self.interface.link.name,
                model,
            }),
            (EndpointKind::Macvtap, None, _) => Some(VmLink::Macvtap {
                macvtap: &self.interface.link.name,
            }),
            _ => None,
        };
        let limiter = limiter_steps(self.kind(), vm_link, &self.id, limits)?;
        self.device = AttachedDevice {
            model,
            queues: queues as u32,
            guest_mac: self.interface.link.mac,
            limits,
        };
        // A copy: the arms record into `self` while they use what the variant carries.
        let (mac, mtu, backend) = match (self.variant.clone(), model) {
            (_, Some(model)) => {
                let tap = TapOptions {
                    queues,
                    // vhost-net exchanges frames with the tap together with their virtio-net
                    // header: a tap for vhost always carries one.
                    vnet_hdr: options.tap.vnet_hdr || !config.disable_vhost_net,
                    ..options.tap.clone()
                };
                let mut pair = NetworkPair::new(self.index, model, self.interface.clone(), tap)?;
                if let Some(name) = &self.vm_link {
                    pair = pair.with_vm_link(name.clone());
                }
                let mut steps = pair.plan(random_local_mac());
                steps.extend(limiter);
                // Someone else's qdiscs on the pod link: shared or refused, before anything
                // is recorded or changed.
                self.steps = fit_to_kernel(kernel, steps).await?;
                record(self).map_err(EndpointFailure::Record)?;
                let applied = self.apply_steps(kernel, options).await?;
                let backend = match self
                    .finish_pair(kernel, &pair, applied.tap, queues, vhost)
                    .await
                {
                    Ok(backend) => backend,
                    Err(e) => {
                        // The steps were applied: take them back before reporting (what
                        // cannot be undone stays recorded; the first failure is the one told).
                        let _ = self.undo_steps(kernel, ApplyOptions::default()).await;
                        return Err(e);
                    }
                };
                (pair.guest_mac, pair.pod.link.mtu, backend)
            }
            (EndpointVariant::Macvtap, None) => {
                self.steps = fit_to_kernel(kernel, limiter).await?;
                record(self).map_err(EndpointFailure::Record)?;
                self.apply_steps(kernel, options).await?;
                let opened = async {
                    let link = kernel.rtnl.link_by_name(self.link_name().as_str()).await?;
                    let fds = kernel.netns.open_macvtap_queues(&link, queues).await?;
                    let mac = link.mac.ok_or(EndpointFailure::Incomplete(
                        "the macvtap has no MAC address",
                    ))?;
                    let backend = Backend::Macvtap {
                        name: link.name.clone(),
                        queues: fds,
                        vhost: vhost(queues)?,
                    };
                    Ok::<_, EndpointFailure>((mac, link.mtu, backend))
                }
                .await;
                match opened {
                    Ok(device) => device,
                    Err(e) => {
                        let _ = self.undo_steps(kernel, ApplyOptions::default()).await;
                        return Err(e);
                    }
                }
            }
            (EndpointVariant::Physical { pci: bdf }, None) => {
                let vfio = |e: crate::physical::VfioError| EndpointFailure::Vfio(Box::new(e));
                let mac = self
                    .interface
                    .link
                    .mac
                    .ok_or(EndpointFailure::Incomplete("the NIC has no MAC address"))?;
                let device = options.sysfs.vfio_device_path(&bdf).map_err(vfio)?;
                // What will be given back is recorded before the device is touched, as the
                // step that binds it.
                let binding = options.sysfs.vfio_binding(&bdf).map_err(vfio)?;
                self.steps = vec![Step::from(binding.clone())];
                record(self).map_err(EndpointFailure::Record)?;
                let bound = {
                    let sysfs = options.sysfs.clone();
                    on_blocking_thread(move || sysfs.apply_vfio_binding(&binding)).await
                };
                if let Err(e) = bound {
                    // The binding put the device back itself; only when that failed too is
                    // there something left for a later detach.
                    if !matches!(e, crate::physical::VfioError::BindRollback { .. }) {
                        self.steps.clear();
                    }
                    return Err(vfio(e));
                }
                (mac, self.interface.link.mtu, Backend::Vfio { bdf, device })
            }
            (EndpointVariant::VhostUser { socket }, None) => {
                let mac = self
                    .interface
                    .link
                    .mac
                    .ok_or(EndpointFailure::Incomplete("the link has no MAC address"))?;
                (mac, self.interface.link.mtu, Backend::VhostUser { socket })
            }
            (_, None) => {
                return Err(EndpointFailure::Incomplete(
                    "this kind has no way to the VM",
                ));
            }
        };
        Ok(NetDevice {
            endpoint,
            guest_name,
            mac,
            mtu,
            backend,
        })
    }

    /// After the steps of a pair: the queue descriptors (the tap's, or the macvtap's opened
    /// now) and vhost-net.
    async fn finish_pair(
        &self,
        kernel: NetnsHandles<'_>,
        pair: &NetworkPair,
        tap: Option<sandbox_net_netns::Tap>,
        queues: usize,
        vhost: impl Fn(usize) -> Result<Vec<OwnedFd>, EndpointFailure>,
    ) -> Result<Backend, EndpointFailure> {
        match tap {
            Some(tap) => Ok(Backend::Tap {
                name: tap.name,
                queues: tap.queues,
                vhost: vhost(queues)?,
            }),
            None => {
                let link = kernel.rtnl.link_by_name(pair.vm_link.as_str()).await?;
                let fds = kernel.netns.open_macvtap_queues(&link, queues).await?;
                Ok(Backend::Macvtap {
                    name: link.name,
                    queues: fds,
                    vhost: vhost(queues)?,
                })
            }
        }
    }
}
