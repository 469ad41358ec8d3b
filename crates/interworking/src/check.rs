//! Comparing the kernel with the steps that were applied.

use std::fmt;

use sandbox_net_netns::NetlinkError;
use sandbox_net_persist::steps::Step;

use crate::apply::NetnsHandles;

/// One difference between what a step made and what the kernel has now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// The step, described.
    pub step: String,
    /// What the step made.
    pub expected: String,
    /// What the kernel has.
    pub found: String,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: expected {}, found {}",
            self.step, self.expected, self.found
        )
    }
}

/// Checks every applied step against the kernel and returns every difference (empty when the
/// wiring is intact). Only errors other than a missing link stop the check.
#[tracing::instrument(name = "interworking.check", skip_all, fields(netns = %kernel.netns.path().display()), err)]
pub async fn check(kernel: NetnsHandles<'_>, steps: &[Step]) -> Result<Vec<Drift>, NetlinkError> {
    let rtnl = kernel.rtnl;
    let mut drifts = Vec::new();
    for step in steps {
        let mut drift = |expected: String, found: String| {
            drifts.push(Drift {
                step: step.describe(),
                expected,
                found,
            })
        };
        // A PCI function's binding is in sysfs, not in the namespace: not compared here.
        let Some(link_name) = step.link() else {
            continue;
        };
        let link = match rtnl.link_by_name(link_name.as_str()).await {
            Ok(link) => link,
            Err(NetlinkError::LinkNotFound { .. }) => {
                drift(format!("link {link_name}"), "no such link".into());
                continue;
            }
            Err(e) => return Err(e),
        };
        match step {
            Step::CreateTap { .. } if link.kind.as_deref() != Some("tun") => {
                drift("a tap".into(), format!("a link of kind {:?}", link.kind));
            }
            Step::CreateMacvtap { parent, .. } => {
                let parent_index = rtnl
                    .link_by_name(parent.as_str())
                    .await
                    .ok()
                    .map(|p| p.index);
                if link.kind.as_deref() != Some("macvtap") || link.parent_index != parent_index {
                    drift(
                        format!("a macvtap on {parent} (ifindex {parent_index:?})"),
                        format!("{:?} on ifindex {:?}", link.kind, link.parent_index),
                    );
                }
            }
            Step::SetMtu { mtu, .. } if link.mtu != *mtu => {
                drift(format!("MTU {mtu}"), format!("MTU {}", link.mtu))
            }
            Step::SetMac { mac, .. } if link.mac != Some(*mac) => {
                drift(format!("MAC {mac}"), format!("MAC {:?}", link.mac))
            }
            Step::SetUp { .. } if !link.up => drift("up".into(), "down".into()),
            Step::AddIngressQdisc { .. } if !rtnl.has_ingress_qdisc(&link).await? => {
                drift("an ingress qdisc".into(), "none".into())
            }
            Step::UseIngressQdisc { kind, .. } => {
                let found = rtnl.link_qdiscs(&link).await?.ingress;
                if found.as_ref().map(|i| &i.qdisc.kind) != Some(kind) {
                    drift(
                        format!("the {kind} qdisc found at attach"),
                        found.map_or_else(|| "none".into(), |i| i.qdisc.to_string()),
                    );
                }
            }
            // Ours only: the redirect at the priority we chose. Other filters at the same
            // ingress are someone else's and not compared.
            Step::AddRedirect { to, priority, .. } => {
                let target = rtnl.link_by_name(to.as_str()).await.ok().map(|t| t.index);
                let redirects = rtnl.ingress_redirects(&link).await?;
                if !redirects.iter().any(|r| {
                    r.priority == *priority && Some(r.target_index) == target && r.egress_redirect
                }) {
                    let found: Vec<String> = redirects
                        .iter()
                        .map(|r| format!("ifindex {} at priority {}", r.target_index, r.priority))
                        .collect();
                    drift(
                        format!("a redirect to {to} at priority {priority}"),
                        format!("redirects to [{}]", found.join(", ")),
                    );
                }
            }
            Step::CreateIfb { .. } if link.kind.as_deref() != Some("ifb") => {
                drift("an ifb".into(), format!("a link of kind {:?}", link.kind));
            }
            Step::AddHtb { rate_bits, .. } => {
                let expected = sandbox_net_ratelimit::bits_to_bytes(*rate_bits);
                let tree = sandbox_net_ratelimit::read_htb_tree(rtnl, &link)
                    .await
                    .map_err(|e| NetlinkError::Decode {
                        object: format!("htb tree of {}", link.name),
                        netns: rtnl.netns().to_path_buf(),
                        what: e.to_string(),
                    })?;
                let rates: Vec<(u64, u64)> = tree
                    .as_ref()
                    .map(|t| t.classes.iter().map(|c| (c.rate, c.ceil)).collect())
                    .unwrap_or_default();
                if rates != [(expected, expected), (expected, expected)] {
                    drift(
                        format!("htb 1:1 and 1:2 at {expected} B/s"),
                        format!("classes at {rates:?} B/s"),
                    );
                }
            }
            Step::ClearAddresses { .. } => {
                let left = rtnl.addresses_of(&link).await?;
                if !left.is_empty() {
                    let left: Vec<String> = left.iter().map(|a| a.prefix.to_string()).collect();
                    drift("no address".into(), left.join(" "));
                }
            }
            _ => {}
        }
    }
    Ok(drifts)
}
