//! Undoing steps in reverse: rollback, detach and cleanup after a crash.

use std::collections::{HashMap, HashSet};

use sandbox_net_netns::{Failures, NetlinkError, Rtnl};
use sandbox_net_persist::{
    IfName, RouteProtocol,
    scan::{Link, Route},
    steps::Step,
};
use sandbox_net_ratelimit::del_htb_tree;

use crate::apply::{ApplyOptions, NetnsHandles, StepError};

/// The handle of the HTB root qdisc the limiter adds, `1:`.
const HTB_ROOT: u32 = 0x0001_0000;

/// One step that could not be undone.
#[derive(Debug, thiserror::Error)]
#[error("could not undo \"{step}\"")]
pub struct UndoFailure {
    /// Its position in the steps given to [`undo`] (from 0).
    pub index: usize,
    /// The step, described.
    pub step: String,
    /// Why.
    #[source]
    pub source: StepError,
}

/// Every step that could not be undone; the others were.
#[derive(Debug, thiserror::Error)]
#[error("not every step could be undone")]
pub struct UndoError {
    /// The failures, in the order they happened.
    #[source]
    pub failures: Failures<UndoFailure>,
}

impl UndoError {
    /// The steps of `steps` (those given to [`undo`]) that are still applied, in their
    /// order: what a later undo must still take back, so what a record must keep.
    pub fn residue(&self, steps: &[Step]) -> Vec<Step> {
        residue(&self.failures, steps)
    }
}

/// The steps of `steps` whose undo failed, in plan order.
pub(crate) fn residue(failures: &[UndoFailure], steps: &[Step]) -> Vec<Step> {
    let mut indexes: Vec<usize> = failures.iter().map(|f| f.index).collect();
    indexes.sort_unstable();
    indexes.dedup();
    indexes
        .into_iter()
        .filter_map(|i| steps.get(i).cloned())
        .collect()
}

/// Undoes `steps` in reverse order, the links they created first. What is already gone counts
/// as undone; a failure does not stop the others, and all failures are reported together.
/// Safe to run twice.
///
/// Changes to a link that the same steps created are not undone one by one: deleting the link
/// undoes them all. A step made through sysfs ([`Step::BindVfio`]) is not netlink's: it is
/// skipped, neither undone nor reported (the endpoint gives the PCI function back itself, also
/// when the namespace is gone).
pub async fn undo(kernel: NetnsHandles<'_>, steps: &[Step]) -> Result<(), UndoError> {
    undo_with(kernel, steps, ApplyOptions::default()).await
}

/// [`undo`] under `options`. With the `fault-injection` feature: its kill countdown counts
/// down before each step is undone, and the undo of the step at `hooks.fail_undo_of` fails as
/// if the kernel had refused it (that step stays applied). The device group is not used:
/// nothing is created.
#[tracing::instrument(name = "interworking.undo", skip_all, fields(netns = %kernel.netns.path().display(), steps = steps.len()), err)]
pub async fn undo_with(
    kernel: NetnsHandles<'_>,
    steps: &[Step],
    #[cfg_attr(not(feature = "fault-injection"), allow(unused_variables))] options: ApplyOptions,
) -> Result<(), UndoError> {
    let created: HashSet<&IfName> = steps
        .iter()
        .filter_map(|s| match s {
            Step::CreateTap { name, .. }
            | Step::CreateMacvtap { name, .. }
            | Step::CreateIfb { name } => Some(name),
            _ => None,
        })
        .collect();
    let mut failures = Vec::new();
    let mut links = KnownLinks::default();
    // The links the steps created go first, then the other steps are undone, each pass in
    // reverse. A created link may hold what giving a found link its state back needs: a
    // macvtap on a macvlan holds the pod link's MAC on their shared lower device (the kernel
    // refuses `EADDRINUSE` to give it back while the macvtap is up), and it is deleted
    // anyway. Nothing a found link gets back depends on a link we made.
    let creations = steps
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, s)| is_creation(s));
    let others = steps
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, s)| !is_creation(s));
    // A redirect under an ingress qdisc these steps added goes with that qdisc: its own
    // delete (and the filter dump that checks it first) waits for the qdisc's undo, and is
    // only sent if the qdisc stays (someone replaced it) or could not be deleted.
    let ours_at_ingress: HashSet<&IfName> = steps
        .iter()
        .filter_map(|s| match s {
            Step::AddIngressQdisc { link } => Some(link),
            _ => None,
        })
        .collect();
    let mut waiting: HashMap<&IfName, Vec<(usize, &Step)>> = HashMap::new();
    for (index, step) in creations.chain(others) {
        if step.is_sysfs() {
            continue;
        }
        if let Some(link) = touched_link(step)
            && created.contains(link)
        {
            continue;
        }
        if let Step::AddRedirect { from, .. } = step
            && ours_at_ingress.contains(from)
        {
            waiting.entry(from).or_default().push((index, step));
            continue;
        }
        undo_and_record(kernel, &mut links, options, index, step, &mut failures).await;
        if let Step::AddIngressQdisc { link } = step
            && let Some(redirects) = waiting.remove(link)
            && !links.ingress_gone.contains(link)
        {
            for (index, step) in redirects {
                undo_and_record(kernel, &mut links, options, index, step, &mut failures).await;
            }
        }
    }
    // Redirects whose qdisc's undo did not run (its link is gone): undone on their own.
    for (index, step) in waiting.into_values().flatten() {
        undo_and_record(kernel, &mut links, options, index, step, &mut failures).await;
    }
    match Failures::from_vec(failures) {
        None => Ok(()),
        Some(failures) => Err(UndoError { failures }),
    }
}

/// Undoes one step, with its fault points; a failure is added to `failures`.
async fn undo_and_record(
    kernel: NetnsHandles<'_>,
    links: &mut KnownLinks,
    #[cfg_attr(not(feature = "fault-injection"), allow(unused_variables))] options: ApplyOptions,
    index: usize,
    step: &Step,
    failures: &mut Vec<UndoFailure>,
) {
    #[cfg(feature = "fault-injection")]
    options
        .hooks
        .kill_point(&format_args!("undo {}", step.describe()));
    #[cfg(feature = "fault-injection")]
    let result = if options.hooks.fail_undo_of == Some(index) {
        Err(StepError::Injected)
    } else {
        undo_one(kernel, links, step).await
    };
    #[cfg(not(feature = "fault-injection"))]
    let result = undo_one(kernel, links, step).await;
    if let Err(source) = result {
        tracing::warn!(step = %step.describe(), error = %source, "undo failed");
        failures.push(UndoFailure {
            index,
            step: step.describe(),
            source,
        });
    }
}

/// Whether the step creates a link.
fn is_creation(step: &Step) -> bool {
    matches!(
        step,
        Step::CreateTap { .. } | Step::CreateMacvtap { .. } | Step::CreateIfb { .. }
    )
}

/// The link whose settings a step changes (not for steps that create or connect links).
fn touched_link(step: &Step) -> Option<&IfName> {
    match step {
        Step::CreateTap { .. }
        | Step::CreateMacvtap { .. }
        | Step::CreateIfb { .. }
        | Step::ClearAddresses { .. } => None,
        _ => step.link(),
    }
}

/// True for the answers that mean "already undone".
fn gone(err: &NetlinkError) -> bool {
    matches!(err, NetlinkError::LinkNotFound { .. })
        || matches!(
            err.errno(),
            Some(libc::ENODEV | libc::ENOENT | libc::EEXIST)
        )
}

/// Runs `result`, treating "already undone" as success.
fn tolerate<T>(result: Result<T, NetlinkError>) -> Result<(), NetlinkError> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if gone(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The links an undo has looked up, each once: an undo changes their attributes and their
/// traffic control, never their index (which is all the requests need) nor their queue
/// length (the one attribute an undo step reads), and deletes only those its steps created.
#[derive(Default)]
struct KnownLinks {
    links: HashMap<IfName, Option<Link>>,
    /// The links whose ingress qdisc is gone (deleted by this undo, or found missing): their
    /// ingress filters are gone with it.
    ingress_gone: HashSet<IfName>,
}

impl KnownLinks {
    /// The link called `name`, or `None` when it no longer exists.
    async fn get(
        &mut self,
        kernel: NetnsHandles<'_>,
        name: &IfName,
    ) -> Result<Option<Link>, NetlinkError> {
        if let Some(known) = self.links.get(name) {
            return Ok(known.clone());
        }
        let link = match kernel.link(name.as_str()).await {
            Ok(link) => Some(link),
            Err(e) if gone(&e) => None,
            Err(e) => return Err(e),
        };
        self.links.insert(name.clone(), link.clone());
        Ok(link)
    }
}

async fn undo_one(
    kernel: NetnsHandles<'_>,
    links: &mut KnownLinks,
    step: &Step,
) -> Result<(), StepError> {
    let rtnl = kernel.rtnl;
    // Not a link's: skipped by `undo_with`.
    let Some(name) = step.link() else {
        return Ok(());
    };
    // A link that no longer exists has nothing left to undo.
    let Some(link) = links.get(kernel, name).await? else {
        return Ok(());
    };
    match step {
        Step::CreateTap { .. } | Step::CreateMacvtap { .. } | Step::CreateIfb { .. } => {
            tolerate(rtnl.delete_link(&link).await)?;
            links.links.insert(name.clone(), None);
        }
        Step::SetMtu { original, .. } => tolerate(rtnl.set_link_mtu(&link, *original).await)?,
        Step::SetMac { original, .. } => tolerate(rtnl.set_link_mac(&link, *original).await)?,
        Step::SetUp {
            original_up: false, ..
        } => tolerate(rtnl.set_link_down(&link).await)?,
        Step::SetUp {
            original_up: true, ..
        } => {}
        Step::SetAllmulticast { .. } => tolerate(rtnl.set_link_allmulticast(&link, false).await)?,
        // Ours is an `ingress`; a clsact there now is someone's, who replaced ours.
        Step::AddIngressQdisc { .. } => match rtnl.ingress_qdisc(&link).await? {
            Some(ingress) if ingress.kind == "ingress" => {
                tolerate(rtnl.del_ingress_qdisc(&link).await)?;
                links.ingress_gone.insert(name.clone());
            }
            Some(other) => {
                tracing::warn!(link = %link.name, qdisc = %other, "the ingress qdisc is not the one sandbox-net added: left alone")
            }
            // No ingress qdisc: no ingress filter either.
            None => {
                links.ingress_gone.insert(name.clone());
            }
        },
        // Found there: someone else's, left as it is.
        Step::UseIngressQdisc { .. } => {}
        Step::RestoreTxQueueLen { original, .. } if link.txqueuelen != *original => {
            tolerate(rtnl.set_link_txqueuelen(&link, *original).await)?
        }
        Step::RestoreTxQueueLen { .. } => {}
        // Only the filter at our priority, and only if it is a redirect: the other filters
        // at the same ingress are someone else's.
        Step::AddRedirect { priority, .. } => {
            let redirects = rtnl.ingress_redirects(&link).await?;
            if redirects.iter().any(|r| r.priority == *priority) {
                tolerate(rtnl.del_filter_at(&link, *priority).await)?
            }
        }
        // Only an HTB root `1:`: a root qdisc of another kind there now is someone's.
        Step::AddHtb { .. } => match rtnl.root_qdisc(&link).await? {
            Some(root) if root.kind == "htb" && root.handle == HTB_ROOT => {
                match del_htb_tree(rtnl, &link).await {
                    Err(e) if e.errno() == Some(libc::ENOENT) => {}
                    other => other?,
                }
            }
            Some(other) => {
                tracing::warn!(link = %link.name, qdisc = %other, "the root qdisc is not the htb tree sandbox-net added: left alone")
            }
            None => {}
        },
        Step::ClearAddresses {
            addresses,
            routes,
            neighbours,
            all_routes,
            ..
        } => {
            // Addresses first: routes need their prefixes. Neighbours last: the kernel may
            // have flushed them with the addresses or a MAC change. What survived is EEXIST.
            let mut first_error = None;
            for address in addresses {
                if let Err(e) = tolerate(rtnl.add_recorded_address(&link, address).await) {
                    first_error.get_or_insert(e);
                }
            }
            if let Err(e) = add_recorded_routes(rtnl, &link, routes, *all_routes).await {
                first_error.get_or_insert(e);
            }
            for neighbour in neighbours {
                if let Err(e) = tolerate(rtnl.add_neighbour(neighbour).await) {
                    first_error.get_or_insert(e);
                }
            }
            if let Some(e) = first_error {
                return Err(e.into());
            }
        }
        // Not a link's: skipped by `undo_with`.
        Step::BindVfio { .. } => {}
    }
    Ok(())
}

/// Gives `link` back the routes it had (`recorded`), once its addresses are back.
///
/// The kernel has just made, for each address, its prefix route (unless `noprefixroute`)
/// and its local-table routes (for IPv6, the local route once duplicate address detection
/// is over: a second or so after this returns, when it is on). When `recorded` holds every route the link had
/// (`all_routes`), each kernel route it does not list is deleted first: a CNI plugin such as
/// ptp replaced the prefix route with one through the gateway, which could not be added
/// while the kernel's holds its place. (Adding the addresses with `noprefixroute` would avoid
/// the kernel's route, but the flag would then show on the address, and IPv4 cannot clear
/// it later.) Then every recorded route that is missing is added: routes without a gateway
/// first, since a gateway must be reachable through one of them; a route refused because its
/// gateway is not reachable yet is tried again after the others, as long as some succeed. A
/// recorded route whose place is held by a changed one (an IPv6 route the kernel kept
/// without its preferred source) replaces it.
async fn add_recorded_routes(
    rtnl: &Rtnl,
    link: &Link,
    recorded: &[Route],
    all_routes: bool,
) -> Result<(), NetlinkError> {
    let now = rtnl.routes_through(link.index).await?;
    let mut first_error = None;
    if all_routes {
        for route in now
            .iter()
            .filter(|r| r.protocol == RouteProtocol::KERNEL && !recorded.contains(r))
        {
            match rtnl.del_route(route).await {
                Ok(()) => {
                    tracing::debug!(route = ?route.destination, table = route.table, "kernel route the link did not have deleted")
                }
                Err(e) if e.errno() == Some(libc::ESRCH) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    // The kernel's own routes are the kernel's to make: it makes them from the addresses
    // (an IPv6 address's local route only once duplicate address detection is over), and
    // one added by hand would be ours, with another metric.
    let mut missing: Vec<&Route> = recorded
        .iter()
        .filter(|r| r.protocol != RouteProtocol::KERNEL && !now.contains(r))
        .collect();
    // Stable: the recorded order within each group.
    missing.sort_by_key(|r| r.needs_gateway_route());
    loop {
        let mut refused = Vec::new();
        let mut added = 0;
        for route in missing {
            // A route the kernel changed rather than deleted (an IPv6 route keeps its place
            // but loses its preferred source with the address) is replaced.
            let request = if now.iter().any(|r| r.same_place(route)) {
                rtnl.replace_route(route).await
            } else {
                rtnl.add_route(route).await
            };
            match tolerate(request) {
                Ok(()) => added += 1,
                Err(e) => refused.push((route, e)),
            }
        }
        if refused.is_empty() {
            break;
        }
        if added == 0 {
            if let Some((_, e)) = refused.into_iter().next() {
                first_error.get_or_insert(e);
            }
            break;
        }
        missing = refused.into_iter().map(|(route, _)| route).collect();
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
