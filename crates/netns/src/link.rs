//! Link primitives: look up, list, and change links (`ip link`).

use futures::TryStreamExt;
use rtnetlink::LinkUnspec;
use sandbox_net_persist::{MacAddr, scan::Link};

use crate::{Rtnl, convert, error::NetlinkError};

/// How errors name a link: `link eth0 (ifindex 2)`.
pub(crate) fn describe(link: &Link) -> String {
    format!("link {} (ifindex {})", link.name, link.index)
}

/// Asks the kernel to leave the counters out of link messages (`RTEXT_FILTER_SKIP_STATS`, as
/// `ip link` does without `-s`): nothing here reads them, and they are most of each message.
fn without_stats(request: rtnetlink::LinkGetRequest) -> rtnetlink::LinkGetRequest {
    request.set_filter_mask(
        netlink_packet_route::AddressFamily::Unspec,
        vec![netlink_packet_route::link::LinkExtentMask::SkipStats],
    )
}

/// Attribute changes of one link made by a single request (`ip link set DEV mtu M address A
/// allmulticast on group G up`). The kernel applies them one after the other and stops at the
/// first it refuses, keeping those before it: use one where a partial change is harmless, such
/// as on a link just created, whose undo is its deletion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkChange {
    /// `IFLA_MTU`.
    pub mtu: Option<u32>,
    /// `IFLA_ADDRESS`.
    pub mac: Option<MacAddr>,
    /// `IFF_ALLMULTI`, on or off.
    pub allmulticast: Option<bool>,
    /// `IFLA_GROUP`: the device group.
    pub group: Option<u32>,
    /// `IFF_UP`: administratively up or down.
    pub up: Option<bool>,
}

impl LinkChange {
    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn message(&self, index: u32) -> netlink_packet_route::link::LinkMessage {
        let mut builder = LinkUnspec::new_with_index(index);
        if let Some(mtu) = self.mtu {
            builder = builder.mtu(mtu);
        }
        if let Some(mac) = self.mac {
            builder = builder.address(mac.octets().to_vec());
        }
        if let Some(on) = self.allmulticast {
            builder = builder.allmulticast(on);
        }
        if let Some(group) = self.group {
            builder = builder.link_group(group);
        }
        builder = match self.up {
            Some(true) => builder.up(),
            Some(false) => builder.down(),
            None => builder,
        };
        builder.build()
    }
}

impl Rtnl {
    /// Every link of the namespace (`ip -d link show`).
    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        self.dump_links_lean().await
    }

    /// The link called `name` (`ip link show NAME`); `LinkNotFound` if there is none.
    pub async fn link_by_name(&self, name: &str) -> Result<Link, NetlinkError> {
        let request = without_stats(self.handle().link().get())
            .match_name(name)
            .execute();
        self.single_link(request, name.to_string()).await
    }

    /// The link with index `index`; `LinkNotFound` if there is none.
    pub async fn link_by_index(&self, index: u32) -> Result<Link, NetlinkError> {
        let request = without_stats(self.handle().link().get())
            .match_index(index)
            .execute();
        self.single_link(request, format!("ifindex {index}")).await
    }

    /// Sets the link administratively up (`ip link set DEV up`).
    pub async fn set_link_up(&self, link: &Link) -> Result<(), NetlinkError> {
        self.change_link(
            link,
            "set up",
            LinkUnspec::new_with_index(link.index).up().build(),
        )
        .await
    }

    /// Sets the link administratively down (`ip link set DEV down`).
    pub async fn set_link_down(&self, link: &Link) -> Result<(), NetlinkError> {
        self.change_link(
            link,
            "set down",
            LinkUnspec::new_with_index(link.index).down().build(),
        )
        .await
    }

    /// Turns the reception of all multicast frames on or off (`ip link set DEV allmulticast
    /// on|off`). A macvtap passes multicast to its queues only for groups in its own list, or
    /// all of them with this flag: without it a guest behind a macvtap never sees the IPv6
    /// neighbour solicitations sent to its solicited-node group.
    pub async fn set_link_allmulticast(&self, link: &Link, on: bool) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(link.index)
            .allmulticast(on)
            .build();
        self.change_link(link, "set allmulticast of", msg).await
    }

    /// Sets the link's MTU (`ip link set DEV mtu MTU`).
    pub async fn set_link_mtu(&self, link: &Link, mtu: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(link.index).mtu(mtu).build();
        self.change_link(link, "set MTU of", msg).await
    }

    /// Sets the link's transmit queue length (`ip link set DEV txqueuelen LEN`).
    pub async fn set_link_txqueuelen(&self, link: &Link, len: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(link.index)
            .txqueuelen(len)
            .build();
        self.change_link(link, "set the queue length of", msg).await
    }

    /// Sets the link's MAC address (`ip link set DEV address MAC`).
    pub async fn set_link_mac(&self, link: &Link, mac: MacAddr) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(link.index)
            .address(mac.octets().to_vec())
            .build();
        self.change_link(link, "set MAC of", msg).await
    }

    /// Makes every change of `change` to the link in one request (see [`LinkChange`]).
    pub async fn change_link_attributes(
        &self,
        link: &Link,
        change: &LinkChange,
    ) -> Result<(), NetlinkError> {
        self.change_link(link, "change the attributes of", change.message(link.index))
            .await
    }

    /// Creates an IFB device (`ip link add NAME type ifb [group G] [up]`) and returns it. Frames
    /// redirected to an IFB's egress pass its qdiscs and then continue where they came from,
    /// which is how ingress traffic gets shaped. `up` and `group` are part of the creation
    /// request, so the device never exists without them.
    pub async fn add_ifb(
        &self,
        name: &sandbox_net_persist::IfName,
        up: bool,
        group: Option<u32>,
    ) -> Result<Link, NetlinkError> {
        let mut builder = rtnetlink::LinkIfb::new(name.as_str());
        if let Some(group) = group {
            builder = builder.link_group(group);
        }
        if up {
            builder = builder.up();
        }
        self.handle()
            .link()
            .add(builder.build())
            .execute()
            .await
            .map_err(|e| self.request_error("add", format!("ifb {name}"), e))?;
        self.link_by_name(name.as_str()).await
    }

    /// Creates a veth pair (`ip link add NAME type veth peer name PEER`) in this namespace
    /// and returns the first end.
    pub async fn add_veth(
        &self,
        name: &sandbox_net_persist::IfName,
        peer: &sandbox_net_persist::IfName,
    ) -> Result<Link, NetlinkError> {
        self.handle()
            .link()
            .add(rtnetlink::LinkVeth::new(name.as_str(), peer.as_str()).build())
            .execute()
            .await
            .map_err(|e| self.request_error("add", format!("veth pair {name}/{peer}"), e))?;
        self.link_by_name(name.as_str()).await
    }

    /// Moves the link into another namespace (`ip link set DEV netns NS`).
    pub async fn move_link(&self, link: &Link, to: &crate::Netns) -> Result<(), NetlinkError> {
        use std::os::fd::AsRawFd;
        let msg = LinkUnspec::new_with_index(link.index)
            .setns_by_fd(to.fd().as_raw_fd())
            .build();
        self.change_link(link, "move to another namespace", msg)
            .await
    }

    /// Moves the link into another namespace under the name `name` there, in one request
    /// (`ip link set DEV netns NS name NAME`): the kernel renames it as it moves, so that it
    /// never shows under its old name in `to`, and refuses (`EEXIST`) if `to` has a link of
    /// that name.
    pub async fn move_link_named(
        &self,
        link: &Link,
        to: &crate::Netns,
        name: &sandbox_net_persist::IfName,
    ) -> Result<(), NetlinkError> {
        use std::os::fd::AsRawFd;
        let msg = LinkUnspec::new_with_index(link.index)
            .setns_by_fd(to.fd().as_raw_fd())
            .name(name.as_str())
            .build();
        self.change_link(link, "rename and move to another namespace", msg)
            .await
    }

    /// Puts the link in device group `group` (`ip link set DEV group N`).
    pub async fn set_link_group(&self, link: &Link, group: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(link.index)
            .link_group(group)
            .build();
        self.change_link(link, "set the device group of", msg).await
    }

    /// Deletes every link of device group `group` in one request (`ip link del group N`):
    /// the kernel unregisters them together and waits for one RCU grace period for all of
    /// them, where deleting them one by one waits once per link.
    pub async fn delete_link_group(&self, group: u32) -> Result<(), NetlinkError> {
        let mut msg = netlink_packet_route::link::LinkMessage::default();
        msg.attributes
            .push(netlink_packet_route::link::LinkAttribute::Group(group));
        self.handle()
            .link()
            .del_with_message(msg)
            .execute()
            .await
            .map_err(|e| {
                self.request_error("delete", format!("the links of device group {group}"), e)
            })
    }

    /// Deletes the link (`ip link del DEV`); a veth takes its peer with it.
    pub async fn delete_link(&self, link: &Link) -> Result<(), NetlinkError> {
        self.handle()
            .link()
            .del(link.index)
            .execute()
            .await
            .map_err(|e| self.request_error("delete", describe(link), e))
    }

    async fn change_link(
        &self,
        link: &Link,
        op: &'static str,
        msg: netlink_packet_route::link::LinkMessage,
    ) -> Result<(), NetlinkError> {
        // `change` is RTM_NEWLINK without CREATE, what `ip link set` sends; `set` would add
        // CREATE|EXCL, which is meant for bridge ports.
        self.handle()
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(|e| self.request_error(op, describe(link), e))
    }

    async fn single_link(
        &self,
        request: impl futures::Stream<
            Item = Result<netlink_packet_route::link::LinkMessage, rtnetlink::Error>,
        >,
        what: String,
    ) -> Result<Link, NetlinkError> {
        futures::pin_mut!(request);
        match request.try_next().await {
            Ok(Some(msg)) => self.decode_link(&msg, &what),
            Ok(None) => Err(self.link_not_found(what)),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
                Err(self.link_not_found(what))
            }
            Err(e) => Err(self.request_error("look up", format!("link {what}"), e)),
        }
    }

    fn link_not_found(&self, link: String) -> NetlinkError {
        NetlinkError::LinkNotFound {
            link,
            netns: self.netns().to_path_buf(),
        }
    }

    fn decode_link(
        &self,
        msg: &netlink_packet_route::link::LinkMessage,
        what: &str,
    ) -> Result<Link, NetlinkError> {
        convert::link(msg).map_err(|e| self.decode(what, e))
    }
}
