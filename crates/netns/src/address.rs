//! Address primitives (`ip addr`).

use ipnet::IpNet;
use sandbox_net_persist::scan::{Address, Link};

use crate::{Rtnl, convert, error::NetlinkError, link::describe};

impl Rtnl {
    /// Every address of the namespace, IPv4 and IPv6, each with its link's index
    /// (`ip addr show`). One dump: rtnetlink's address filters (index, prefix, address) are
    /// applied client-side over a full dump anyway.
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

    /// Adds `address` back to the link as it was scanned: its prefix, scope, label, the
    /// flags a user may set (`nodad`, `optimistic`, `homeaddress`, `mngtmpaddr`,
    /// `noprefixroute`, `autojoin`), the metric of its prefix route, its protocol and, for an
    /// address that expires, the lifetimes it had left (`ip addr add PREFIX dev DEV [metric
    /// N] [proto P] [valid_lft V preferred_lft P] [FLAGS]`); the kernel recomputes the other
    /// flags. Like `ip addr add`, the kernel then makes the address's prefix route unless
    /// `noprefixroute` is among the flags.
    pub async fn add_recorded_address(
        &self,
        link: &Link,
        address: &Address,
    ) -> Result<(), NetlinkError> {
        use netlink_packet_route::address::{
            AddressAttribute, AddressFlags, AddressProtocol, AddressScope, CacheInfo,
        };
        /// `IFA_F_NODAD | OPTIMISTIC | HOMEADDRESS | MANAGETEMPADDR | NOPREFIXROUTE | MCAUTOJOIN`.
        const SETTABLE_FLAGS: u32 = 0x02 | 0x04 | 0x10 | 0x100 | 0x200 | 0x400;
        let prefix = address.prefix;
        let mut request =
            self.handle()
                .address()
                .add(link.index, prefix.addr(), prefix.prefix_len());
        let message = request.message_mut();
        message.header.scope = AddressScope::from(address.scope.0);
        let flags = address.flags & SETTABLE_FLAGS;
        if flags != 0 {
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::from_bits_retain(
                    flags,
                )));
        }
        // rtnetlink adds the broadcast address of the prefix by itself; put back exactly the
        // one that was there, or none.
        message
            .attributes
            .retain(|a| !matches!(a, AddressAttribute::Broadcast(_)));
        if let Some(broadcast) = address.broadcast {
            message
                .attributes
                .push(AddressAttribute::Broadcast(broadcast));
        }
        if let Some(metric) = address.route_metric {
            message
                .attributes
                .push(AddressAttribute::RoutePriority(metric));
        }
        if let Some(protocol) = address.protocol {
            message
                .attributes
                .push(AddressAttribute::Protocol(AddressProtocol::from(protocol)));
        }
        if address.valid_lifetime.is_some() || address.preferred_lifetime.is_some() {
            // All ones is forever (`INFINITY_LIFE_TIME`).
            let mut lifetimes = CacheInfo::default();
            lifetimes.ifa_valid = address.valid_lifetime.unwrap_or(u32::MAX);
            lifetimes.ifa_preferred = address.preferred_lifetime.unwrap_or(u32::MAX);
            message
                .attributes
                .push(AddressAttribute::CacheInfo(lifetimes));
        }
        if let Some(label) = &address.label {
            message
                .attributes
                .retain(|a| !matches!(a, AddressAttribute::Label(_)));
            message
                .attributes
                .push(AddressAttribute::Label(label.clone()));
        }
        request.execute().await.map_err(|e| {
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
