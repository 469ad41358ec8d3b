//! Route and neighbour primitives (`ip route`, `ip neigh`).

use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;
use sandbox_net_persist::scan::{Neighbour, Route};

use crate::{Rtnl, convert, error::NetlinkError};

impl Rtnl {
    /// Every IPv4 and IPv6 route of every table (`ip route show table all` for both families).
    pub async fn routes(&self) -> Result<Vec<Route>, NetlinkError> {
        let v4 = self
            .dump("list", "IPv4 routes", |h| {
                h.route()
                    .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                    .execute()
            })
            .await?;
        let v6 = self
            .dump("list", "IPv6 routes", |h| {
                h.route()
                    .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
                    .execute()
            })
            .await?;
        v4.iter()
            .chain(&v6)
            .map(|m| convert::route(m).map_err(|e| self.decode("routes", e)))
            .collect()
    }

    /// Every IPv4 and IPv6 neighbour entry, whatever its state (`ip neigh show nud all`).
    pub async fn neighbours(&self) -> Result<Vec<Neighbour>, NetlinkError> {
        let get = |family| {
            move |h: &rtnetlink::Handle| h.neighbours().get().set_address_family(family).execute()
        };
        let v4 = self
            .dump("list", "IPv4 neighbours", get(AddressFamily::Inet))
            .await?;
        let v6 = self
            .dump("list", "IPv6 neighbours", get(AddressFamily::Inet6))
            .await?;
        let mut out = Vec::with_capacity(v4.len() + v6.len());
        for msg in v4.iter().chain(&v6) {
            if let Some(n) = convert::neighbour(msg).map_err(|e| self.decode("neighbours", e))? {
                out.push(n);
            }
        }
        Ok(out)
    }
}
