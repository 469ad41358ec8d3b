//! Which traffic-control objects are sandbox-net's: a plan fitted to what the links it acts
//! on already hold, before anything changes.
//!
//! A plan is made from the scan and names the tc objects the models and limiters need: an
//! ingress qdisc and a redirect on the links frames arrive at, an HTB root `1:` on the links
//! whose egress is shaped. On a link the plan creates (tap, macvtap, IFB) they are all ours.
//! On a link found in the pod (the pod's veth, a macvtap endpoint) someone else may have put
//! theirs first, and [`fit`] decides, link by link:
//!
//! - an **ingress qdisc** (`ingress` or `clsact`) that is there is used, not made:
//!   [`Step::UseIngressQdisc`] records that it was found, so that undo leaves it with its
//!   filters exactly as they are;
//! - our **redirect** gets a priority no filter holds: Kata's 49152 when the ingress holds no
//!   filter, else the closest free one in front of the first filter there. In front, because
//!   the first filter that matches a frame ends its classification at an ingress qdisc: a
//!   user's classifying filter before ours would keep its frames from the guest. Undo deletes
//!   the filter at that priority only. With a filter already at priority 1 there is no place
//!   in front, and the plan is refused ([`OwnershipError::NoPriorityLeft`]);
//! - a **root qdisc** that is not the kernel's default (handle `0:`) is someone's: shaping the
//!   link would replace it, so the plan is refused ([`OwnershipError::ForeignRootQdisc`]).
//!
//! A refusal comes before anything is recorded or changed. The links are read once, just
//! before the plan is recorded and applied; a filter someone adds at our priority in between
//! would be joined by ours (u32 joins a filter to the classifier at its priority), which the
//! kernel does not let us prevent.

use std::collections::{HashMap, HashSet};

use sandbox_net_netns::{LinkQdiscs, NetlinkError, Qdisc, REDIRECT_PRIORITY};
use sandbox_net_persist::{IfName, steps::Step};

use crate::apply::NetnsHandles;

/// Why a plan cannot be applied to the links as they are; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnershipError {
    /// The link's egress has a root qdisc someone else added.
    #[error(
        "link {link} has a root qdisc {qdisc} that sandbox-net did not make: shaping its egress \
         would replace it, so nothing was changed (remove that qdisc, or let the VMM limit the rate)"
    )]
    ForeignRootQdisc {
        /// The link.
        link: IfName,
        /// Its root qdisc.
        qdisc: Qdisc,
    },
    /// Every priority in front of the link's first ingress filter is taken.
    #[error(
        "link {link} has a filter at priority 1 at its ingress (qdisc {qdisc}): no priority is \
         left in front of it for the redirect to {to}, so nothing was changed"
    )]
    NoPriorityLeft {
        /// The link.
        link: IfName,
        /// Its ingress qdisc.
        qdisc: Qdisc,
        /// Where the redirect was to send the frames.
        to: IfName,
    },
}

/// Why [`fit_to_kernel`] failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// The links could not be read.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The plan would touch someone else's qdisc.
    #[error(transparent)]
    Ownership(#[from] OwnershipError),
}

/// The links that `steps` put traffic control on without creating them.
fn found_links(steps: &[Step]) -> Vec<&IfName> {
    let created = created_links(steps);
    let mut links: Vec<&IfName> = Vec::new();
    for step in steps {
        if let Step::AddIngressQdisc { link }
        | Step::AddRedirect { from: link, .. }
        | Step::AddHtb { link, .. } = step
            && !created.contains(link)
            && !links.contains(&link)
        {
            links.push(link);
        }
    }
    links
}

fn created_links(steps: &[Step]) -> HashSet<&IfName> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::CreateTap { name, .. }
            | Step::CreateMacvtap { name, .. }
            | Step::CreateIfb { name } => Some(name),
            _ => None,
        })
        .collect()
}

/// Reads what the links `steps` acts on but does not create hold in traffic control (see
/// [`Rtnl::link_qdiscs`](sandbox_net_netns::Rtnl::link_qdiscs)). A link that does not exist is
/// left out: applying the plan names it.
pub async fn survey(
    kernel: NetnsHandles<'_>,
    steps: &[Step],
) -> Result<HashMap<IfName, LinkQdiscs>, NetlinkError> {
    let mut found = HashMap::new();
    for name in found_links(steps) {
        let link = match kernel.link(name.as_str()).await {
            Ok(link) => link,
            Err(NetlinkError::LinkNotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        found.insert(name.clone(), kernel.rtnl.link_qdiscs(&link).await?);
    }
    Ok(found)
}

/// `steps` fitted to what the links hold (`found`, from [`survey`]): an ingress qdisc found
/// is used instead of added, each redirect on a found link gets a free priority in front of
/// the filters there, and shaping a link whose root qdisc is someone else's is refused.
/// Links the steps create, and links not in `found`, keep the plan as it is.
pub fn fit(
    mut steps: Vec<Step>,
    found: &HashMap<IfName, LinkQdiscs>,
) -> Result<Vec<Step>, OwnershipError> {
    let created: HashSet<IfName> = created_links(&steps).into_iter().cloned().collect();
    // Priorities taken on each link, ours included as they are handed out.
    let mut taken: HashMap<IfName, Vec<u16>> = HashMap::new();
    for step in &mut steps {
        let Some(qdiscs) = step
            .link()
            .filter(|link| !created.contains(*link))
            .and_then(|link| found.get(link))
        else {
            continue;
        };
        match step {
            Step::AddIngressQdisc { link } => {
                if let Some(ingress) = &qdiscs.ingress {
                    *step = Step::UseIngressQdisc {
                        link: link.clone(),
                        kind: ingress.qdisc.kind.clone(),
                    };
                }
            }
            Step::AddRedirect { from, to, priority } => {
                let Some(ingress) = &qdiscs.ingress else {
                    continue;
                };
                let held = taken
                    .entry(from.clone())
                    .or_insert_with(|| ingress.priorities.clone());
                *priority = match held.iter().min() {
                    None => REDIRECT_PRIORITY,
                    Some(1) => {
                        return Err(OwnershipError::NoPriorityLeft {
                            link: from.clone(),
                            qdisc: ingress.qdisc.clone(),
                            to: to.clone(),
                        });
                    }
                    Some(first) => first - 1,
                };
                held.push(*priority);
            }
            Step::AddHtb { link, .. } => {
                if let Some(root) = &qdiscs.root {
                    return Err(OwnershipError::ForeignRootQdisc {
                        link: link.clone(),
                        qdisc: root.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    Ok(steps)
}

/// [`survey`] then [`fit`]: the plan as it may be recorded and applied.
pub async fn fit_to_kernel(
    kernel: NetnsHandles<'_>,
    steps: Vec<Step>,
) -> Result<Vec<Step>, FitError> {
    let found = survey(kernel, &steps).await?;
    Ok(fit(steps, &found)?)
}

#[cfg(test)]
mod tests {
    use sandbox_net_netns::IngressHook;

    use super::*;

    fn name(n: &str) -> IfName {
        IfName::new(n).unwrap()
    }

    fn qdisc(kind: &str, handle: u32) -> Qdisc {
        Qdisc {
            kind: kind.into(),
            handle,
        }
    }

    /// The pod-link part of a tcfilter plan and its tx limit.
    fn tcfilter_steps() -> Vec<Step> {
        vec![
            Step::CreateTap {
                name: name("tap0_kata"),
                queues: 1,
                vnet_hdr: true,
                owner: None,
                group: None,
                persist: false,
            },
            Step::AddIngressQdisc { link: name("eth0") },
            Step::AddIngressQdisc {
                link: name("tap0_kata"),
            },
            Step::AddRedirect {
                from: name("eth0"),
                to: name("tap0_kata"),
                priority: REDIRECT_PRIORITY,
            },
            Step::AddRedirect {
                from: name("tap0_kata"),
                to: name("eth0"),
                priority: REDIRECT_PRIORITY,
            },
            Step::AddHtb {
                link: name("eth0"),
                rate_bits: 10_000_000,
            },
        ]
    }

    fn found(qdiscs: LinkQdiscs) -> HashMap<IfName, LinkQdiscs> {
        // The tap is listed too, to show that a link the plan creates is never fitted.
        HashMap::from([(name("eth0"), qdiscs.clone()), (name("tap0_kata"), qdiscs)])
    }

    #[test]
    fn a_bare_link_keeps_the_plan() {
        let steps = tcfilter_steps();
        assert_eq!(
            fit(steps.clone(), &found(LinkQdiscs::default())).unwrap(),
            steps
        );
        assert_eq!(fit(steps.clone(), &HashMap::new()).unwrap(), steps);
        let names: Vec<&str> = found_links(&steps).iter().map(|l| l.as_str()).collect();
        assert_eq!(names, ["eth0"]);
    }

    #[test]
    fn a_users_ingress_qdisc_is_used_and_our_filter_goes_in_front_of_theirs() {
        let user = LinkQdiscs {
            ingress: Some(IngressHook {
                qdisc: qdisc("ingress", 0xFFFF_0000),
                priorities: vec![10, 49152],
            }),
            root: None,
        };
        let fitted = fit(tcfilter_steps(), &found(user)).unwrap();
        let mut expected = tcfilter_steps();
        expected[1] = Step::UseIngressQdisc {
            link: name("eth0"),
            kind: "ingress".into(),
        };
        expected[3] = Step::AddRedirect {
            from: name("eth0"),
            to: name("tap0_kata"),
            priority: 9,
        };
        assert_eq!(fitted, expected);
        // An empty clsact: used, and Kata's priority is free.
        let clsact = LinkQdiscs {
            ingress: Some(IngressHook {
                qdisc: qdisc("clsact", 0xFFFF_0000),
                priorities: vec![],
            }),
            root: None,
        };
        let fitted = fit(tcfilter_steps(), &found(clsact)).unwrap();
        assert_eq!(
            fitted[1].describe(),
            "use the clsact qdisc eth0 already has"
        );
        assert_eq!(fitted[3], tcfilter_steps()[3]);
    }

    #[test]
    fn two_redirects_on_one_found_link_get_two_priorities() {
        let steps = vec![
            Step::AddIngressQdisc { link: name("mvt0") },
            Step::AddRedirect {
                from: name("mvt0"),
                to: name("sbx1"),
                priority: REDIRECT_PRIORITY,
            },
            Step::AddRedirect {
                from: name("mvt0"),
                to: name("sbx2"),
                priority: REDIRECT_PRIORITY,
            },
        ];
        let user = LinkQdiscs {
            ingress: Some(IngressHook {
                qdisc: qdisc("ingress", 0xFFFF_0000),
                priorities: vec![3],
            }),
            root: None,
        };
        let fitted = fit(steps, &HashMap::from([(name("mvt0"), user)])).unwrap();
        let described: Vec<String> = fitted.iter().map(Step::describe).collect();
        assert_eq!(
            described,
            [
                "use the ingress qdisc mvt0 already has",
                "redirect mvt0 -> sbx1 at priority 2",
                "redirect mvt0 -> sbx2 at priority 1",
            ]
        );
    }

    #[test]
    fn a_foreign_root_qdisc_or_a_full_ingress_is_refused_naming_link_and_qdisc() {
        let user_root = LinkQdiscs {
            ingress: None,
            root: Some(qdisc("htb", 0x0001_0000)),
        };
        let err = fit(tcfilter_steps(), &found(user_root.clone())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "link eth0 has a root qdisc htb 1: that sandbox-net did not make: shaping its egress \
             would replace it, so nothing was changed (remove that qdisc, or let the VMM limit the rate)"
        );
        // Without shaping, the root qdisc is not in the way.
        let mut unshaped = tcfilter_steps();
        unshaped.pop();
        assert_eq!(fit(unshaped.clone(), &found(user_root)).unwrap(), unshaped);
        let full = LinkQdiscs {
            ingress: Some(IngressHook {
                qdisc: qdisc("clsact", 0xFFFF_0000),
                priorities: vec![1, 7],
            }),
            root: None,
        };
        let err = fit(tcfilter_steps(), &found(full)).unwrap_err();
        assert_eq!(
            err,
            OwnershipError::NoPriorityLeft {
                link: name("eth0"),
                qdisc: qdisc("clsact", 0xFFFF_0000),
                to: name("tap0_kata"),
            }
        );
        assert_eq!(
            err.to_string(),
            "link eth0 has a filter at priority 1 at its ingress (qdisc clsact ffff:): no \
             priority is left in front of it for the redirect to tap0_kata, so nothing was changed"
        );
    }
}
