//! Address primitives (`ip addr`).

use ipnet::IpNet;
use sandbox_net_persist::scan::{Address, Link};

use crate::{Rtnl, convert, error::NetlinkError, link::describe};

impl Rtnl {
    /// Every address of the namespace, IPv4 and IPv6, each with its link's index
    /// (`ip addr show`). One dump; the kernel does not filter address dumps by link anyway
    /// (FIELD-GUIDE T7).
    pub async fn addresses(&self) -> Result<Vec<(u32, Address)>, NetlinkError> {
        let msgs = self
            .dump("list", "addresses", |h| h.address().get().execute())
            .await?;
        msgs.iter()
            .map(|m| convert::address(m).map_err(|e| self.decode("addresses", e)))
            .collect()
    }

    /// The addresses of one link.
    pub async fn addresses_of(&self, link: &Link) -> Result<Vec<Address>, NetlinkError> {
        Ok(self
            .addresses()
            .await?
            .into_iter()
            .filter(|(index, _)| *index == link.index)
            .map(|(_, a)| a)
            .collect())
    }

    /// Adds `prefix` to the link (`ip addr add PREFIX dev DEV`).
    pub async fn add_address(&self, link: &Link, prefix: IpNet) -> Result<(), NetlinkError> {
        self.handle()
            .address()
            .add(link.index, prefix.addr(), prefix.prefix_len())
            .execute()
            .await
            .map_err(|e| {
                self.request_error("add", format!("address {prefix} on {}", describe(link)), e)
            })
    }

    /// Removes `prefix` from the link (`ip addr del PREFIX dev DEV`).
    pub async fn del_address(&self, link: &Link, prefix: IpNet) -> Result<(), NetlinkError> {
        let mut msg = netlink_packet_route::address::AddressMessage::default();
        msg.header.family = match prefix {
            IpNet::V4(_) => netlink_packet_route::AddressFamily::Inet,
            IpNet::V6(_) => netlink_packet_route::AddressFamily::Inet6,
        };
        msg.header.prefix_len = prefix.prefix_len();
        msg.header.index = link.index;
        // The kernel matches IFA_LOCAL for both families.
        msg.attributes
            .push(netlink_packet_route::address::AddressAttribute::Local(
                prefix.addr(),
            ));
        self.handle()
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(|e| {
                self.request_error(
                    "delete",
                    format!("address {prefix} on {}", describe(link)),
                    e,
                )
            })
    }
}
