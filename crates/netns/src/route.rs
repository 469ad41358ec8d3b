//! Route and neighbour primitives (`ip route`, `ip neigh`).

use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;
use sandbox_net_persist::scan::{Neighbour, Route};

use crate::{Rtnl, convert, error::NetlinkError};

impl Rtnl {
    /// Every IPv4 and IPv6 route of every table (`ip route show table all` for both families).
    pub async fn routes(&self) -> Result<Vec<Route>, NetlinkError> {
        let route = self.handle().route();
        let v4 = route
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let v6 = route
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute();
        let (v4, v6) = futures::try_join!(
            self.collect("list", "IPv4 routes", v4),
            self.collect("list", "IPv6 routes", v6)
        )?;
        v4.iter()
            .chain(&v6)
            .map(|m| convert::route(m).map_err(|e| self.decode("routes", e)))
            .collect()
    }

    /// Every IPv4 and IPv6 neighbour entry, whatever its state (`ip neigh show nud all`).
    pub async fn neighbours(&self) -> Result<Vec<Neighbour>, NetlinkError> {
        let get = |family| {
            self.handle()
                .neighbours()
                .get()
                .set_address_family(family)
                .execute()
        };
        let (v4, v6) = futures::try_join!(
            self.collect("list", "IPv4 neighbours", get(AddressFamily::Inet)),
            self.collect("list", "IPv6 neighbours", get(AddressFamily::Inet6))
        )?;
        let mut out = Vec::with_capacity(v4.len() + v6.len());
        for msg in v4.iter().chain(&v6) {
            if let Some(n) = convert::neighbour(msg).map_err(|e| self.decode("neighbours", e))? {
                out.push(n);
            }
        }
        Ok(out)
    }
}
