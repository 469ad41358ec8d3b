//! Route and neighbour primitives (`ip route`, `ip neigh`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_route::{
    AddressFamily,
    neighbour::NeighbourState as NlNeighbourState,
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric, RouteNextHop,
        RouteNextHopFlags, RoutePreference, RouteProtocol as NlRouteProtocol, RouteScope,
        RouteType,
    },
};
use rtnetlink::RouteMessageBuilder;
use sandbox_net_persist::scan::{Neighbour, NextHop, RT_TABLE_MAIN, Route};

use crate::{Rtnl, convert, error::NetlinkError};

/// `RT_TABLE_UNSPEC`: the header's table when the table is given by `RTA_TABLE` only.
const RT_TABLE_UNSPEC: u8 = 0;

/// How errors name a route: `route 0.0.0.0/0 via 10.200.0.1 on ifindex 2`, with ` table T`
/// when the table is not the main one.
pub(crate) fn describe_route(route: &Route) -> String {
    let mut text = format!("route {}", route.destination);
    if let Some(gateway) = route.gateway {
        text.push_str(&format!(" via {gateway}"));
    }
    if let Some(index) = route.device_index {
        text.push_str(&format!(" on ifindex {index}"));
    }
    if route.table != RT_TABLE_MAIN {
        text.push_str(&format!(" table {}", route.table));
    }
    text
}

/// How errors name a neighbour entry: `neighbour 10.200.0.1 on ifindex 2`.
pub(crate) fn describe_neighbour(neighbour: &Neighbour) -> String {
    format!(
        "neighbour {} on ifindex {}",
        neighbour.ip, neighbour.device_index
    )
}

impl Rtnl {
    /// Every IPv4 and IPv6 route of every table (`ip route show table all` for both families).
    pub async fn routes(&self) -> Result<Vec<Route>, NetlinkError> {
        self.routes_of_table(None).await
    }

    /// The IPv4 and IPv6 routes of one table (`ip route show table T`), or of all with
    /// `None`: one dump of every family (the kernel answers with each family's routes in
    /// turn), of which the IPv4 and IPv6 ones are kept.
    pub async fn routes_of_table(&self, table: Option<u32>) -> Result<Vec<Route>, NetlinkError> {
        let routes = self.dump_routes_lean(AddressFamily::Unspec, table).await?;
        Ok(match table {
            // Not every family's dump honours the table attribute: filtered here as well.
            Some(table) => routes.into_iter().filter(|r| r.table == table).collect(),
            None => routes,
        })
    }

    /// Every route of every table, IPv4 and IPv6, that goes out through the link with index
    /// `index` (its outgoing interface, or a next hop's): `ip route show table all dev DEV`
    /// for both families, multipath routes included.
    pub async fn routes_through(&self, index: u32) -> Result<Vec<Route>, NetlinkError> {
        let mut routes = self.routes().await?;
        routes.retain(|r| r.goes_through(index));
        Ok(routes)
    }

    /// Re-creates a route as a scan recorded it (`ip route add`): destination (a default
    /// route too), gateway, outgoing interface, preferred source, scope, protocol, type,
    /// table, metric, TOS, `onlink`, MTU, advertised MSS and the other metrics, IPv6
    /// preference and the next hops of a multipath route, so that `ip -d route` shows it as
    /// it was. The family is the destination's;
    /// a gateway or source of the other family is refused before anything is sent.
    ///
    /// The kernel refuses a route that exists already (`EEXIST`) and a gateway with no
    /// on-link prefix (`ENETUNREACH` for IPv4, `EHOSTUNREACH` for IPv6); the error names the
    /// route and keeps the errno, for the caller to judge.
    pub async fn add_route(&self, route: &Route) -> Result<(), NetlinkError> {
        let message = route_message(route).map_err(|why| self.invalid_route("add", route, why))?;
        self.handle()
            .route()
            .add(message)
            .execute()
            .await
            .map_err(|e| self.request_error("add", describe_route(route), e))
    }

    /// Like [`Rtnl::add_route`], replacing the route that holds the same place (destination,
    /// table, TOS and metric) if there is one (`ip route replace`): for a route the kernel
    /// changed, such as an IPv6 route whose preferred source it dropped with the address.
    pub async fn replace_route(&self, route: &Route) -> Result<(), NetlinkError> {
        let message =
            route_message(route).map_err(|why| self.invalid_route("replace", route, why))?;
        self.handle()
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(|e| self.request_error("replace", describe_route(route), e))
    }

    /// Deletes the route that matches a scanned one in every recorded field (`ip route del`);
    /// `ESRCH` if there is none.
    pub async fn del_route(&self, route: &Route) -> Result<(), NetlinkError> {
        let message =
            route_message(route).map_err(|why| self.invalid_route("delete", route, why))?;
        self.handle()
            .route()
            .del(message)
            .execute()
            .await
            .map_err(|e| self.request_error("delete", describe_route(route), e))
    }

    /// Every IPv4 and IPv6 neighbour entry, whatever its state (`ip neigh show nud all`): one
    /// dump of every neighbour table, of which the IP entries are kept.
    pub async fn neighbours(&self) -> Result<Vec<Neighbour>, NetlinkError> {
        let all = self
            .dump("list", "neighbours", |h: &rtnetlink::Handle| {
                h.neighbours()
                    .get()
                    .set_address_family(AddressFamily::Unspec)
                    .execute()
            })
            .await?;
        let mut out = Vec::with_capacity(all.len());
        for msg in &all {
            if let Some(n) = convert::neighbour(msg).map_err(|e| self.decode("neighbours", e))? {
                out.push(n);
            }
        }
        Ok(out)
    }

    /// Re-creates a neighbour entry as a scan recorded it, IPv4 (ARP) or IPv6 (NDP), with its
    /// state (e.g. `permanent`) and link-layer address (`ip neigh add IP lladdr MAC dev DEV
    /// nud STATE`). `EEXIST` if an entry for the address exists on the link.
    pub async fn add_neighbour(&self, neighbour: &Neighbour) -> Result<(), NetlinkError> {
        let mut request = self
            .handle()
            .neighbours()
            .add(neighbour.device_index, neighbour.ip)
            .state(NlNeighbourState::from(neighbour.state.0));
        if let Some(mac) = neighbour.mac {
            request = request.link_layer_address(&mac.octets());
        }
        request
            .execute()
            .await
            .map_err(|e| self.request_error("add", describe_neighbour(neighbour), e))
    }

    /// The error for a route that cannot be expressed as one request, before anything is
    /// sent: it has no errno, only the reason.
    fn invalid_route(&self, op: &'static str, route: &Route, why: String) -> NetlinkError {
        NetlinkError::Request {
            op,
            object: describe_route(route),
            netns: self.netns().to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
        }
    }
}

/// The `RTM_NEWROUTE` / `RTM_DELROUTE` message for a scanned route, every recorded field
/// included, so that an add re-creates it and a delete matches only it. Fails if the
/// gateway or the source is not of the destination's family.
fn route_message(route: &Route) -> Result<RouteMessage, String> {
    let mut message = match route.destination {
        IpNet::V4(destination) => {
            let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(destination.addr(), destination.prefix_len());
            if let Some(gateway) = route.gateway {
                builder = builder.gateway(ipv4(gateway, "gateway", route)?);
            }
            if let Some(source) = route.source {
                builder = builder.pref_source(ipv4(source, "preferred source", route)?);
            }
            with_common_fields(builder, route).build()
        }
        IpNet::V6(destination) => {
            let mut builder = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(destination.addr(), destination.prefix_len());
            if let Some(gateway) = route.gateway {
                builder = builder.gateway(ipv6(gateway, "gateway", route)?);
            }
            if let Some(source) = route.source {
                builder = builder.pref_source(ipv6(source, "preferred source", route)?);
            }
            with_common_fields(builder, route).build()
        }
    };
    set_table(&mut message, route.table);
    message.header.tos = route.tos;
    if route.onlink {
        message.header.flags |= RouteFlags::Onlink;
    }
    let mut metrics = Vec::new();
    if let Some(mtu) = route.mtu {
        metrics.push(RouteMetric::Mtu(mtu));
    }
    if let Some(mss) = route.advmss {
        metrics.push(RouteMetric::Advmss(mss));
    }
    for metric in &route.other_metrics {
        metrics.push(convert::metric_to_netlink(*metric).ok_or_else(|| {
            format!("route metric {} is not one this module can send", metric.id)
        })?);
    }
    if !metrics.is_empty() {
        message.attributes.push(RouteAttribute::Metrics(metrics));
    }
    if let Some(pref) = route.pref {
        message
            .attributes
            .push(RouteAttribute::Preference(RoutePreference::from(pref)));
    }
    if !route.multipath.is_empty() {
        let mut hops = Vec::with_capacity(route.multipath.len());
        for hop in &route.multipath {
            hops.push(next_hop_message(hop, route)?);
        }
        message.attributes.push(RouteAttribute::MultiPath(hops));
    }
    Ok(message)
}

/// One `struct rtnexthop` with its gateway, for `RTA_MULTIPATH`.
fn next_hop_message(hop: &NextHop, route: &Route) -> Result<RouteNextHop, String> {
    let mut next = RouteNextHop::default();
    next.interface_index = hop.device_index.unwrap_or(0);
    next.hops = u8::try_from(hop.weight.saturating_sub(1))
        .map_err(|_| format!("next hop weight {} is above 256", hop.weight))?;
    if hop.onlink {
        next.flags |= RouteNextHopFlags::Onlink;
    }
    if let Some(gateway) = hop.gateway {
        let address = match route.destination {
            IpNet::V4(_) => RouteAddress::Inet(ipv4(gateway, "next hop gateway", route)?),
            IpNet::V6(_) => RouteAddress::Inet6(ipv6(gateway, "next hop gateway", route)?),
        };
        next.attributes.push(RouteAttribute::Gateway(address));
    }
    Ok(next)
}

/// Sets what does not depend on the family: outgoing interface, protocol, scope, type and
/// metric (the table is set apart, see [`set_table`]).
fn with_common_fields<T>(builder: RouteMessageBuilder<T>, route: &Route) -> RouteMessageBuilder<T> {
    let mut builder = builder
        .protocol(NlRouteProtocol::from(route.protocol.0))
        .scope(RouteScope::from(route.scope.0))
        .kind(RouteType::from(route.kind.0));
    if let Some(index) = route.device_index {
        builder = builder.output_interface(index);
    }
    if let Some(metric) = route.metric {
        builder = builder.priority(metric);
    }
    builder
}

/// Puts the table in the header when it fits in `rtm_table`, else in `RTA_TABLE` with an
/// unspecified header table, as `ip route` does.
fn set_table(message: &mut RouteMessage, table: u32) {
    match u8::try_from(table) {
        Ok(table) => message.header.table = table,
        Err(_) => {
            message.header.table = RT_TABLE_UNSPEC;
            message.attributes.push(RouteAttribute::Table(table));
        }
    }
}

/// `ip` as IPv4, for a route whose destination is IPv4.
fn ipv4(ip: IpAddr, what: &str, route: &Route) -> Result<Ipv4Addr, String> {
    match ip {
        IpAddr::V4(v4) => Ok(v4),
        IpAddr::V6(_) => Err(family_mismatch(ip, what, route)),
    }
}

/// `ip` as IPv6, for a route whose destination is IPv6.
fn ipv6(ip: IpAddr, what: &str, route: &Route) -> Result<Ipv6Addr, String> {
    match ip {
        IpAddr::V6(v6) => Ok(v6),
        IpAddr::V4(_) => Err(family_mismatch(ip, what, route)),
    }
}

fn family_mismatch(ip: IpAddr, what: &str, route: &Route) -> String {
    format!(
        "the {what} {ip} is not of the family of the destination {}",
        route.destination
    )
}

#[cfg(test)]
mod tests {
    use sandbox_net_persist::{AddressScope, RouteProtocol, RouteType as PersistRouteType};

    use super::*;

    fn default_v6() -> Route {
        Route {
            destination: "::/0".parse().unwrap(),
            gateway: Some("fd00:200::1".parse().unwrap()),
            device_index: Some(2),
            source: None,
            scope: AddressScope::GLOBAL,
            protocol: RouteProtocol::BOOT,
            kind: PersistRouteType::UNICAST,
            table: RT_TABLE_MAIN,
            metric: Some(1024),
            ..Route::default()
        }
    }

    #[test]
    fn message_carries_every_recorded_field() {
        let message = route_message(&default_v6()).unwrap();
        let h = &message.header;
        assert_eq!(h.address_family, AddressFamily::Inet6);
        assert_eq!(h.destination_prefix_length, 0);
        assert_eq!(h.protocol, NlRouteProtocol::Boot);
        assert_eq!(h.scope, RouteScope::Universe);
        assert_eq!(h.kind, RouteType::Unicast);
        assert_eq!(h.table, 254);
        let attrs = &message.attributes;
        assert!(attrs.contains(&RouteAttribute::Gateway(RouteAddress::Inet6(
            "fd00:200::1".parse().unwrap()
        ))));
        assert!(attrs.contains(&RouteAttribute::Oif(2)));
        assert!(attrs.contains(&RouteAttribute::Priority(1024)));
        assert!(!attrs.iter().any(|a| matches!(a, RouteAttribute::Table(_))));
    }

    #[test]
    fn a_large_table_goes_in_rta_table() {
        let mut route = default_v6();
        route.table = 1000;
        let message = route_message(&route).unwrap();
        assert_eq!(message.header.table, RT_TABLE_UNSPEC);
        assert!(message.attributes.contains(&RouteAttribute::Table(1000)));
    }

    #[test]
    fn the_family_is_the_destinations() {
        let mut route = default_v6();
        route.gateway = Some("10.200.0.1".parse().unwrap());
        assert_eq!(
            route_message(&route).unwrap_err(),
            "the gateway 10.200.0.1 is not of the family of the destination ::/0"
        );
        let mut route = default_v6();
        route.destination = "0.0.0.0/0".parse().unwrap();
        route.gateway = None;
        route.source = Some("fd00:200::2".parse().unwrap());
        assert_eq!(
            route_message(&route).unwrap_err(),
            "the preferred source fd00:200::2 is not of the family of the destination 0.0.0.0/0"
        );
    }

    #[test]
    fn routes_are_named_by_destination_gateway_device_and_table() {
        let mut route = default_v6();
        assert_eq!(
            describe_route(&route),
            "route ::/0 via fd00:200::1 on ifindex 2"
        );
        route.gateway = None;
        route.device_index = None;
        route.table = 100;
        assert_eq!(describe_route(&route), "route ::/0 table 100");
    }
}
