//! Route and neighbour primitives (`ip route`, `ip neigh`).

use netlink_packet_route::AddressFamily;
use sandbox_net_persist::scan::{Neighbour, Route};

use crate::{Rtnl, convert, error::NetlinkError};

impl Rtnl {
    /// Every IPv4 and IPv6 route of every table (`ip route show table all` for both families).
    pub async fn routes(&self) -> Result<Vec<Route>, NetlinkError> {
        self.routes_of_table(None).await
    }

    /// The IPv4 and IPv6 routes of one table (`ip route show table T`), or of all with
    /// `None`. The kernel does the filtering.
    pub async fn routes_of_table(&self, table: Option<u32>) -> Result<Vec<Route>, NetlinkError> {
        let mut routes = self.dump_routes_lean(AddressFamily::Inet, table).await?;
        routes.extend(self.dump_routes_lean(AddressFamily::Inet6, table).await?);
        Ok(routes)
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
