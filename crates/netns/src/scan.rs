//! The scan of a namespace: every interface with its addresses, routes and neighbours.

use std::collections::HashMap;

use sandbox_net_persist::{
    NeighbourState, RouteProtocol,
    scan::{Address, Interface, NamespaceScan, RT_TABLE_MAIN, Route, SkipReason, SkippedLink},
};

use crate::{Rtnl, error::NetlinkError};

/// Which interfaces, routes and neighbours a scan keeps.
///
/// [`ScanOptions::default`] applies Kata's rules; [`ScanOptions::unfiltered`] keeps everything
/// the kernel reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOptions {
    /// Leave out the loopback device (Kata: yes).
    pub skip_loopback: bool,
    /// Leave out links without any IP address, IPv6 link-local included (Kata: yes).
    pub skip_without_address: bool,
    /// Order interfaces by name rather than by ifindex (Kata: yes).
    pub sort_by_name: bool,
    /// Keep only routes a guest must be told about: all but `proto kernel`, which the guest's
    /// kernel makes itself from the addresses (Kata: yes).
    pub guest_routes_only: bool,
    /// Keep only `permanent` neighbour entries, the static ones CNI set up (Kata: yes).
    pub permanent_neighbours_only: bool,
    /// Keep only routes of the main table, what `ip route` shows (Kata: yes).
    pub main_table_only: bool,
    /// Also record, in each interface's `all_routes`, every route through it in every table,
    /// the kernel's own included, whatever the filters above keep: what giving the pod its
    /// configuration back exactly needs (a model that takes the link's addresses away makes
    /// the kernel flush those routes). On by default.
    pub record_all_routes: bool,
}

impl Default for ScanOptions {
    /// Kata's rules: every filter on.
    fn default() -> Self {
        Self {
            skip_loopback: true,
            skip_without_address: true,
            sort_by_name: true,
            guest_routes_only: true,
            permanent_neighbours_only: true,
            main_table_only: true,
            record_all_routes: true,
        }
    }
}

impl ScanOptions {
    /// No filter at all: every link, route of every table and neighbour entry, in ifindex order.
    pub fn unfiltered() -> Self {
        Self {
            skip_loopback: false,
            skip_without_address: false,
            sort_by_name: false,
            guest_routes_only: false,
            permanent_neighbours_only: false,
            main_table_only: false,
            record_all_routes: true,
        }
    }
}

/// Adds `route` to the `all_routes` of each interface it goes through (a multipath route may
/// go through several).
fn record_through_links(
    interfaces: &mut [Interface],
    position: &HashMap<u32, usize>,
    route: &Route,
) {
    let mut through: Vec<usize> = route
        .device_index
        .into_iter()
        .chain(route.multipath.iter().filter_map(|hop| hop.device_index))
        .filter_map(|index| position.get(&index).copied())
        .collect();
    through.sort_unstable();
    through.dedup();
    for at in through {
        interfaces[at].all_routes.push(route.clone());
    }
}

impl Rtnl {
    /// Scans the namespace: one dump each of links, addresses, routes and neighbours (one
    /// after the other: a netlink socket runs one dump at a time), then grouped per interface
    /// and filtered by `options`.
    #[tracing::instrument(name = "netns.scan", skip_all, fields(netns = %self.netns().display()), err)]
    pub async fn scan(&self, options: &ScanOptions) -> Result<NamespaceScan, NetlinkError> {
        let links = self.links().await?;
        let addresses = self.addresses().await?;
        // One dump of every table when every route is recorded; of the main table otherwise.
        let table =
            (options.main_table_only && !options.record_all_routes).then_some(RT_TABLE_MAIN);
        let routes = self.routes_of_table(table).await?;
        let neighbours = self.neighbours().await?;

        let mut addresses_by_link: HashMap<u32, Vec<Address>> = HashMap::new();
        for (index, address) in addresses {
            addresses_by_link.entry(index).or_default().push(address);
        }

        let mut scan = NamespaceScan::default();
        let mut position: HashMap<u32, usize> = HashMap::new();
        for link in links {
            let addresses = addresses_by_link.remove(&link.index).unwrap_or_default();
            let skip = if options.skip_loopback && link.loopback {
                Some(SkipReason::Loopback)
            } else if options.skip_without_address && addresses.is_empty() {
                Some(SkipReason::NoAddress)
            } else {
                None
            };
            if let Some(reason) = skip {
                tracing::debug!(link = %link.name, ?reason, "link skipped");
                scan.skipped.push(SkippedLink {
                    name: link.name,
                    index: link.index,
                    reason,
                });
                continue;
            }
            position.insert(link.index, scan.interfaces.len());
            scan.interfaces.push(Interface {
                link,
                addresses,
                routes: Vec::new(),
                all_routes: Vec::new(),
                neighbours: Vec::new(),
            });
        }

        for route in routes {
            if options.record_all_routes {
                record_through_links(&mut scan.interfaces, &position, &route);
            }
            if options.main_table_only && route.table != RT_TABLE_MAIN {
                continue;
            }
            if options.guest_routes_only && route.protocol == RouteProtocol::KERNEL {
                continue;
            }
            match route.device_index {
                Some(index) => {
                    if let Some(&at) = position.get(&index) {
                        scan.interfaces[at].routes.push(route);
                    }
                }
                None => scan.routes_without_device.push(route),
            }
        }
        for neighbour in neighbours {
            if options.permanent_neighbours_only && neighbour.state != NeighbourState::PERMANENT {
                continue;
            }
            if let Some(&at) = position.get(&neighbour.device_index) {
                scan.interfaces[at].neighbours.push(neighbour);
            }
        }

        if options.sort_by_name {
            scan.interfaces
                .sort_by(|a, b| a.link.name.cmp(&b.link.name));
        }
        tracing::debug!(
            interfaces = scan.interfaces.len(),
            skipped = scan.skipped.len(),
            "namespace scanned"
        );
        Ok(scan)
    }
}
