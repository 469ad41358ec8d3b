//! Applying a plan, with rollback on failure.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
};

use sandbox_net_netns::{NetlinkError, Netns, Rtnl, Tap, TapConfig, TapError};
use sandbox_net_persist::{IfName, scan::Link, steps::Step};
use sandbox_net_ratelimit::{HtbRate, LimitError, PschedClock, RateError, add_htb_tree};

use crate::undo::{UndoFailure, undo};

/// The namespace a plan acts on: its handle (for work that must run inside it, such as
/// opening `/dev/net/tun`) and a netlink connection bound to it.
#[derive(Debug, Clone, Copy)]
pub struct Kernel<'a> {
    /// The namespace.
    pub netns: &'a Netns,
    /// A netlink handle inside it.
    pub rtnl: &'a Rtnl,
}

impl Kernel<'_> {
    /// The link called `name`, as it is now.
    pub(crate) async fn link(&self, name: &str) -> Result<Link, NetlinkError> {
        self.rtnl.link_by_name(name).await
    }
}

/// Test-only fault points, to prove that every partial attach is undone: `ApplyHooks::default()`
/// injects nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyHooks {
    /// Fail instead of applying the step at this position, as if the kernel had refused it.
    pub fail_before: Option<usize>,
    /// Counts down once per step about to be applied, across every `apply` that shares it;
    /// when it is at zero the process kills itself with SIGKILL before the step, as a shim
    /// crashing at that point would.
    pub kill_countdown: Option<&'static AtomicUsize>,
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
    /// The test-only fault point fired.
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
            Self::Rate(_) | Self::Injected => None,
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

/// Applies `steps` in order. On the first failure the steps already applied are undone in
/// reverse, and the error says which step failed and what the rollback could not undo.
pub async fn apply(
    kernel: Kernel<'_>,
    steps: &[Step],
    hooks: ApplyHooks,
) -> Result<AppliedPair, AttachError> {
    apply_grouped(kernel, steps, hooks, None).await
}

/// Like [`apply`], putting every link the steps create in device group `group` as soon as it
/// exists, so that a teardown can delete them all in one request.
#[tracing::instrument(name = "interworking.apply", skip_all, fields(netns = %kernel.netns.path().display(), steps = steps.len()), err)]
pub async fn apply_grouped(
    kernel: Kernel<'_>,
    steps: &[Step],
    hooks: ApplyHooks,
    group: Option<u32>,
) -> Result<AppliedPair, AttachError> {
    let mut applied = AppliedPair::default();
    let mut links = Links {
        kernel,
        known: HashMap::new(),
        group,
        clock: None,
    };
    for (position, step) in steps.iter().enumerate() {
        if let Some(countdown) = hooks.kill_countdown {
            match countdown.load(Ordering::SeqCst) {
                0 => {
                    tracing::warn!(step = %step.describe(), "test fault point: killing this process");
                    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
                }
                left => countdown.store(left - 1, Ordering::SeqCst),
            }
        }
        let result = if hooks.fail_before == Some(position) {
            Err(StepError::Injected)
        } else {
            apply_one(&mut links, step, &mut applied).await
        };
        if let Err(source) = result {
            // The tap's descriptors close before the undo, so that a non-persistent tap can go.
            drop(applied.tap.take());
            let rollback = match undo(kernel, &steps[..position]).await {
                Ok(()) => Vec::new(),
                Err(e) => e.failures,
            };
            return Err(AttachError {
                step: step.describe(),
                position: position + 1,
                total: steps.len(),
                source,
                rollback,
            });
        }
        tracing::debug!(step = %step.describe(), "applied");
    }
    Ok(applied)
}

/// The links the steps name, each looked up once per apply (an index does not change while
/// its link exists), the device group for created links, and the psched clock, read once.
struct Links<'a> {
    kernel: Kernel<'a>,
    known: HashMap<IfName, Link>,
    group: Option<u32>,
    clock: Option<PschedClock>,
}

impl Links<'_> {
    async fn get(&mut self, name: &IfName) -> Result<Link, NetlinkError> {
        if let Some(link) = self.known.get(name) {
            return Ok(link.clone());
        }
        let link = self.kernel.link(name.as_str()).await?;
        self.known.insert(name.clone(), link.clone());
        Ok(link)
    }

    /// Records a link the steps just created and puts it in the device group.
    async fn created(&mut self, link: Link) -> Result<(), NetlinkError> {
        if let Some(group) = self.group {
            self.kernel.rtnl.set_link_group(&link, group).await?;
        }
        self.known.insert(link.name.clone(), link);
        Ok(())
    }

    fn clock(&mut self) -> Result<PschedClock, RateError> {
        match &self.clock {
            Some(clock) => Ok(*clock),
            None => {
                let clock = PschedClock::read()?;
                self.clock = Some(clock);
                Ok(clock)
            }
        }
    }
}

async fn apply_one(
    links: &mut Links<'_>,
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
            links.created(tap).await?;
        }
        Step::CreateMacvtap { name, parent, mac } => {
            let parent = links.get(parent).await?;
            let macvtap = rtnl.add_macvtap(name, &parent, Some(*mac), None).await?;
            links.created(macvtap).await?;
        }
        Step::SetMtu { link, mtu, .. } => rtnl.set_link_mtu(&links.get(link).await?, *mtu).await?,
        Step::SetMac { link, mac, .. } => rtnl.set_link_mac(&links.get(link).await?, *mac).await?,
        Step::SetUp { link, .. } => rtnl.set_link_up(&links.get(link).await?).await?,
        Step::SetAllmulticast { link } => {
            rtnl.set_link_allmulticast(&links.get(link).await?, true)
                .await?
        }
        Step::AddIngressQdisc { link } => rtnl.add_ingress_qdisc(&links.get(link).await?).await?,
        Step::AddRedirect { from, to } => {
            let (from, to) = (links.get(from).await?, links.get(to).await?);
            rtnl.add_redirect(&from, &to).await?;
        }
        Step::CreateIfb { name } => {
            let ifb = rtnl.add_ifb(name).await?;
            rtnl.set_link_up(&ifb).await?;
            links.created(ifb).await?;
        }
        Step::AddHtb { link, rate_bits } => {
            let rate = HtbRate::from_bits(*rate_bits)?;
            let clock = links.clock()?;
            add_htb_tree(rtnl, &links.get(link).await?, rate, &clock).await?;
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
    }
    Ok(())
}
