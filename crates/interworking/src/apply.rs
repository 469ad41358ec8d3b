//! Applying a plan, with rollback on failure.

use std::sync::atomic::{AtomicUsize, Ordering};

use sandbox_net_netns::{NetlinkError, Netns, Rtnl, Tap, TapConfig, TapError};
use sandbox_net_persist::{scan::Link, steps::Step};
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
#[tracing::instrument(name = "interworking.apply", skip_all, fields(netns = %kernel.netns.path().display(), steps = steps.len()), err)]
pub async fn apply(
    kernel: Kernel<'_>,
    steps: &[Step],
    hooks: ApplyHooks,
) -> Result<AppliedPair, AttachError> {
    let mut applied = AppliedPair::default();
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
            apply_one(kernel, step, &mut applied).await
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

async fn apply_one(
    kernel: Kernel<'_>,
    step: &Step,
    applied: &mut AppliedPair,
) -> Result<(), StepError> {
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
        }
        Step::CreateMacvtap { name, parent, mac } => {
            let parent = kernel.link(parent.as_str()).await?;
            rtnl.add_macvtap(name, &parent, Some(*mac), None).await?;
        }
        Step::SetMtu { link, mtu, .. } => {
            rtnl.set_link_mtu(&kernel.link(link.as_str()).await?, *mtu)
                .await?
        }
        Step::SetMac { link, mac, .. } => {
            rtnl.set_link_mac(&kernel.link(link.as_str()).await?, *mac)
                .await?
        }
        Step::SetUp { link, .. } => rtnl.set_link_up(&kernel.link(link.as_str()).await?).await?,
        Step::SetAllmulticast { link } => {
            rtnl.set_link_allmulticast(&kernel.link(link.as_str()).await?, true)
                .await?
        }
        Step::AddIngressQdisc { link } => {
            rtnl.add_ingress_qdisc(&kernel.link(link.as_str()).await?)
                .await?
        }
        Step::AddRedirect { from, to } => {
            let (from, to) = (
                kernel.link(from.as_str()).await?,
                kernel.link(to.as_str()).await?,
            );
            rtnl.add_redirect(&from, &to).await?;
        }
        Step::CreateIfb { name } => {
            let ifb = rtnl.add_ifb(name).await?;
            rtnl.set_link_up(&ifb).await?;
        }
        Step::AddHtb { link, rate_bits } => {
            let rate = HtbRate::from_bits(*rate_bits)?;
            let clock = PschedClock::read()?;
            add_htb_tree(rtnl, &kernel.link(link.as_str()).await?, rate, &clock).await?;
        }
        Step::ClearAddresses {
            link, addresses, ..
        } => {
            let link = kernel.link(link.as_str()).await?;
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
