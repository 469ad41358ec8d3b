//! Applying a plan, with rollback on failure.

use std::collections::HashMap;
#[cfg(feature = "fault-injection")]
use std::sync::atomic::AtomicUsize;

use sandbox_net_netns::{LinkChange, NetlinkError, Netns, Rtnl, Tap, TapConfig, TapError};
use sandbox_net_persist::{IfName, scan::Link, steps::Step};
use sandbox_net_ratelimit::{HtbRate, LimitError, PschedClock, RateError};

use crate::undo::{UndoFailure, undo_with};

/// The handles of the namespace a plan acts on: the namespace itself (for work that must run
/// inside it, such as opening `/dev/net/tun`) and a netlink connection bound to it. Every
/// request of the plan goes to that namespace's kernel state, and nowhere else.
#[derive(Debug, Clone, Copy)]
pub struct NetnsHandles<'a> {
    /// The namespace.
    pub netns: &'a Netns,
    /// A netlink handle inside it.
    pub rtnl: &'a Rtnl,
}

impl NetnsHandles<'_> {
    /// The link called `name`, as it is now.
    pub(crate) async fn link(&self, name: &str) -> Result<Link, NetlinkError> {
        self.rtnl.link_by_name(name).await
    }
}

/// Fault points, to prove that every partial attach is undone: `ApplyHooks::default()` injects
/// nothing. Only in builds with the `fault-injection` feature (the tests turn it on): a release
/// build cannot be configured to fail or kill itself.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyHooks {
    /// Fail instead of applying the step at this position, as if the kernel had refused it.
    pub fail_before: Option<usize>,
    /// During the rollback of a failed apply, fail the undo of the step at this position, as
    /// if the kernel had refused it: the step stays applied, and is the rollback's residue.
    pub fail_undo_of: Option<usize>,
    /// Counts down once per kill point passed, across every `apply`, undo and teardown that
    /// shares it (and the state store, given the same counter): before each step, between the
    /// requests of an HTB tree, after the combined change of a link just created, before each
    /// undo step. When it is at zero the process kills itself with SIGKILL there, as a shim
    /// crashing at that point would (see `sandbox_net_persist::fault`).
    pub kill_countdown: Option<&'static AtomicUsize>,
}

#[cfg(feature = "fault-injection")]
impl ApplyHooks {
    /// A kill point named `what` (also outside `apply`: before an undo step, before a
    /// teardown's request): counts down [`ApplyHooks::kill_countdown`] and, when it is at
    /// zero, kills this process with SIGKILL before `what` is done.
    pub fn kill_point(&self, what: &dyn std::fmt::Display) {
        sandbox_net_persist::fault::kill_point(self.kill_countdown, what);
    }
}

/// What applying a plan produced that the VMM needs.
#[derive(Debug, Default)]
pub struct AppliedPair {
    /// The tap and its queue descriptors, when the plan created one.
    pub tap: Option<Tap>,
}

/// Why one step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The tap could not be created.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// An HTB tree could not be added or removed.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// A rate the kernel cannot take, or no psched clock to encode it with.
    #[error(transparent)]
    Rate(#[from] RateError),
    /// A fault point of the `fault-injection` feature fired.
    #[cfg(feature = "fault-injection")]
    #[error("fault injected for a test")]
    Injected,
}

impl StepError {
    /// The errno behind the failure, if the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink(e) => e.errno(),
            Self::Tap(e) => e.errno(),
            Self::Limit(e) => e.errno(),
            Self::Rate(_) => None,
            #[cfg(feature = "fault-injection")]
            Self::Injected => None,
        }
    }
}

/// An attach that failed at one step and was rolled back.
#[derive(Debug, thiserror::Error)]
#[error("failed to {step} (step {position} of {total}){}", rollback_summary(.rollback))]
pub struct AttachError {
    /// The failed step, described.
    pub step: String,
    /// Its position, from 1.
    pub position: usize,
    /// How many steps the plan had.
    pub total: usize,
    /// Why it failed.
    #[source]
    pub source: StepError,
    /// Steps that could not be undone during the rollback (empty when the rollback was clean).
    pub rollback: Vec<UndoFailure>,
    /// Those steps themselves, in plan order: still applied, so what the endpoint's record
    /// must keep for a later detach or reconcile to take back.
    pub residue: Vec<Step>,
}

fn rollback_summary(failures: &[UndoFailure]) -> String {
    if failures.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = failures.iter().map(ToString::to_string).collect();
        format!(
            "; rollback left {} step(s) undone: {}",
            failures.len(),
            list.join("; ")
        )
    }
}

/// How [`apply_with`] runs a plan.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Fault points (feature `fault-injection`).
    #[cfg(feature = "fault-injection")]
    pub hooks: ApplyHooks,
    /// The device group every link the steps create is put in, as it is created, so that a
    /// teardown can delete them all in one request.
    pub link_group: Option<u32>,
}

/// Applies `steps` in order. On the first failure the steps already applied are undone in
/// reverse, and the error says which step failed and what the rollback could not undo.
/// A step made through sysfs ([`Step::BindVfio`]) is not netlink's: it is skipped (the
/// endpoint binds the PCI function itself).
pub async fn apply(kernel: NetnsHandles<'_>, steps: &[Step]) -> Result<AppliedPair, AttachError> {
    apply_with(kernel, steps, ApplyOptions::default()).await
}

/// [`apply`] with a device group for the links the steps create.
///
/// Every link a step names is looked up by name once per apply, never taken from the scan the
/// plan came from: the recorded steps name links, and the requests must reach the links of
/// those names, even if one was renamed or replaced since.
///
/// The attribute steps (MTU, MAC, allmulticast, up) that follow the creation of a link and act
/// on it go to the kernel as one request, with the device group: on a link this plan created a
/// partial change is harmless, since undoing the creation deletes the link.
#[tracing::instrument(name = "interworking.apply", skip_all, fields(netns = %kernel.netns.path().display(), steps = steps.len()), err)]
pub async fn apply_with(
    kernel: NetnsHandles<'_>,
    steps: &[Step],
    options: ApplyOptions,
) -> Result<AppliedPair, AttachError> {
    #[cfg(feature = "fault-injection")]
    let hooks = options.hooks;
    let mut applied = AppliedPair::default();
    let mut links = LinkTracker {
        kernel,
        known: HashMap::new(),
        group: options.link_group,
        pending: None,
        #[cfg(feature = "fault-injection")]
        hooks,
    };
    let mut failure = None;
    for (position, step) in steps.iter().enumerate() {
        #[cfg(feature = "fault-injection")]
        hooks.kill_point(&format_args!("before {}", step.describe()));
        #[cfg(feature = "fault-injection")]
        if hooks.fail_before == Some(position) {
            failure = Some(Failure::at(position, StepError::Injected));
            break;
        }
        if links.defer(position, step) {
            continue;
        }
        if let Err(e) = links.flush().await {
            failure = Some(e);
            break;
        }
        if let Err(source) = apply_one(&mut links, position, step, &mut applied).await {
            failure = Some(Failure::at(position, source));
            break;
        }
        tracing::debug!(step = %step.describe(), "applied");
    }
    if failure.is_none()
        && let Err(e) = links.flush().await
    {
        failure = Some(e);
    }
    let Some(failure) = failure else {
        return Ok(applied);
    };
    // The tap's descriptors close before the undo, so that a non-persistent tap can go.
    drop(applied.tap.take());
    let undone = &steps[..failure.undo_to];
    // The rollback keeps the rollback's own fault point, not the attach's kill countdown.
    #[cfg(feature = "fault-injection")]
    let rollback_options = ApplyOptions {
        hooks: ApplyHooks {
            kill_countdown: None,
            ..hooks
        },
        ..options
    };
    #[cfg(not(feature = "fault-injection"))]
    let rollback_options = ApplyOptions::default();
    let rollback = match undo_with(kernel, undone, rollback_options).await {
        Ok(()) => Vec::new(),
        Err(e) => e.failures.into_vec(),
    };
    let residue = crate::undo::residue(&rollback, undone);
    let step = steps[failure.first..=failure.last]
        .iter()
        .map(Step::describe)
        .collect::<Vec<_>>()
        .join(", then ");
    Err(AttachError {
        step,
        position: failure.first + 1,
        total: steps.len(),
        source: failure.source,
        rollback,
        residue,
    })
}

/// A request that failed: the steps it stood for, and how far the rollback goes.
struct Failure {
    first: usize,
    last: usize,
    /// The steps before this position are undone.
    undo_to: usize,
    source: StepError,
}

impl Failure {
    /// One step failed: the steps before it are undone.
    fn at(position: usize, source: StepError) -> Self {
        Self {
            first: position,
            last: position,
            undo_to: position,
            source,
        }
    }
}

/// The links the steps name, each looked up once per apply (an index does not change while
/// its link exists), the device group for created links, and the attribute changes of a link
/// just created that wait to go out as one request.
struct LinkTracker<'a> {
    kernel: NetnsHandles<'a>,
    known: HashMap<IfName, Link>,
    group: Option<u32>,
    pending: Option<PendingChange>,
    /// For the kill points inside requests of several parts.
    #[cfg(feature = "fault-injection")]
    hooks: ApplyHooks,
}

/// Changes to a link this plan created, not yet sent.
struct PendingChange {
    link: Link,
    change: LinkChange,
    /// The step that created the link.
    created_at: usize,
    /// The first and last attribute steps folded in, if any.
    folded: Option<(usize, usize)>,
}

impl LinkTracker<'_> {
    async fn get(&mut self, name: &IfName) -> Result<Link, NetlinkError> {
        if let Some(link) = self.known.get(name) {
            return Ok(link.clone());
        }
        let link = self.kernel.link(name.as_str()).await?;
        self.known.insert(name.clone(), link.clone());
        Ok(link)
    }

    /// Records a link the steps just created; its device group goes out with the attribute
    /// changes that follow, or alone before the next other step. `grouped`: the creation
    /// request carried the group already.
    fn created(&mut self, position: usize, link: Link, grouped: bool) {
        self.known.insert(link.name.clone(), link.clone());
        let change = LinkChange {
            group: if grouped { None } else { self.group },
            ..LinkChange::default()
        };
        self.pending = Some(PendingChange {
            link,
            change,
            created_at: position,
            folded: None,
        });
    }

    /// Folds `step` into the pending change when it is an attribute change of the link just
    /// created; false when it must be applied on its own.
    fn defer(&mut self, position: usize, step: &Step) -> bool {
        let Some(pending) = &mut self.pending else {
            return false;
        };
        if step.link() != Some(&pending.link.name) {
            return false;
        }
        let change = &mut pending.change;
        match step {
            Step::SetMtu { mtu, .. } if change.mtu.is_none() => change.mtu = Some(*mtu),
            Step::SetMac { mac, .. } if change.mac.is_none() => change.mac = Some(*mac),
            Step::SetAllmulticast { .. } if change.allmulticast.is_none() => {
                change.allmulticast = Some(true)
            }
            Step::SetUp { .. } if change.up.is_none() => change.up = Some(true),
            _ => return false,
        }
        pending.folded = Some(match pending.folded {
            Some((first, _)) => (first, position),
            None => (position, position),
        });
        true
    }

    /// Sends the pending change, if any. On failure the error stands for the steps folded in
    /// (the creation itself when there were none), and the rollback takes back everything up
    /// to the last of them, the creation included, whatever part of the request the kernel
    /// took.
    async fn flush(&mut self) -> Result<(), Failure> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        if pending.change.is_empty() {
            return Ok(());
        }
        let (first, last) = pending
            .folded
            .unwrap_or((pending.created_at, pending.created_at));
        self.kernel
            .rtnl
            .change_link_attributes(&pending.link, &pending.change)
            .await
            .map_err(|e| Failure {
                first,
                last,
                undo_to: last + 1,
                source: e.into(),
            })?;
        tracing::debug!(link = %pending.link.name, first = first + 1, last = last + 1, "applied as one request");
        // The kernel took the change; the steps it stands for are not done until the next.
        #[cfg(feature = "fault-injection")]
        self.hooks.kill_point(&format_args!(
            "after the combined change of {}",
            pending.link.name
        ));
        Ok(())
    }
}

async fn apply_one(
    links: &mut LinkTracker<'_>,
    position: usize,
    step: &Step,
    applied: &mut AppliedPair,
) -> Result<(), StepError> {
    let kernel = links.kernel;
    let rtnl = kernel.rtnl;
    match step {
        Step::CreateTap {
            name,
            queues,
            vnet_hdr,
            owner,
            group,
            persist,
        } => {
            let config = TapConfig {
                name: name.clone(),
                queues: *queues as usize,
                vnet_hdr: *vnet_hdr,
                owner: *owner,
                group: *group,
                persist: *persist,
            };
            applied.tap = Some(kernel.netns.create_tap(&config).await?);
            let tap = kernel.link(name.as_str()).await?;
            links.created(position, tap, false);
        }
        Step::CreateMacvtap { name, parent, mac } => {
            let parent = links.get(parent).await?;
            let macvtap = rtnl.add_macvtap(name, &parent, Some(*mac), None).await?;
            links.created(position, macvtap, false);
        }
        Step::SetMtu { link, mtu, .. } => rtnl.set_link_mtu(&links.get(link).await?, *mtu).await?,
        Step::SetMac { link, mac, .. } => rtnl.set_link_mac(&links.get(link).await?, *mac).await?,
        Step::SetUp { link, .. } => rtnl.set_link_up(&links.get(link).await?).await?,
        Step::SetAllmulticast { link } => {
            rtnl.set_link_allmulticast(&links.get(link).await?, true)
                .await?
        }
        Step::AddIngressQdisc { link } => rtnl.add_ingress_qdisc(&links.get(link).await?).await?,
        // Only its undo acts (see the step). A found qdisc is not ours: nothing to make.
        Step::RestoreTxQueueLen { .. } | Step::UseIngressQdisc { .. } => {}
        Step::AddRedirect { from, to, priority } => {
            let (from, to) = (links.get(from).await?, links.get(to).await?);
            rtnl.add_redirect_at(&from, &to, *priority).await?;
        }
        Step::CreateIfb { name } => {
            let ifb = rtnl.add_ifb(name, true, links.group).await?;
            links.created(position, ifb, true);
        }
        Step::AddHtb { link, rate_bits } => {
            let rate = HtbRate::from_bits(*rate_bits)?;
            let clock = PschedClock::read()?;
            let link = links.get(link).await?;
            #[cfg(feature = "fault-injection")]
            {
                let hooks = links.hooks;
                let between = |done: &str| {
                    hooks.kill_point(&format_args!("htb tree of {}: after {done}", link.name))
                };
                sandbox_net_ratelimit::add_htb_tree_with_fault_point(
                    rtnl, &link, rate, &clock, &between,
                )
                .await?;
            }
            #[cfg(not(feature = "fault-injection"))]
            sandbox_net_ratelimit::add_htb_tree(rtnl, &link, rate, &clock).await?;
        }
        Step::ClearAddresses {
            link, addresses, ..
        } => {
            let link = links.get(link).await?;
            for address in addresses {
                match rtnl.del_address(&link, address.prefix).await {
                    // Already gone: removing it again is what was asked.
                    Err(e) if e.errno() == Some(libc::EADDRNOTAVAIL) => {}
                    other => other?,
                }
            }
        }
        // Sysfs, not netlink: the endpoint binds the PCI function (see `apply`).
        Step::BindVfio { .. } => {}
    }
    Ok(())
}
