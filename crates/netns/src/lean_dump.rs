//! Dumps on a second socket of the namespace, decoded lean, and filtered by the kernel.
//!
//! Two costs dominate a scan of a namespace with hundreds of links, and neither is the
//! kernel's: rtnetlink decodes every attribute of every link message (`IFLA_AF_SPEC` alone
//! holds hundreds of IPv4 and IPv6 settings per device), and a route dump of every table
//! carries two local-table routes per address that a scan throws away. This socket:
//! - decodes link messages attribute by attribute, only those [`LINK_ATTRIBUTES`] lists;
//! - has strict dump checking on (`NETLINK_GET_STRICT_CHK`), so a route dump can ask the
//!   kernel for one table;
//! - receives into a 64 KiB buffer, because the kernel sizes each dump datagram after the
//!   largest receive buffer it has seen (peeking for the exact size first, as
//!   `recv_from_full` does, keeps datagrams small and doubles the round trips).

use std::sync::atomic::{AtomicU32, Ordering};

use futures::future::poll_fn;
use netlink_packet_core::{
    DecodeError, ErrorBuffer, ErrorMessage, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
    NetlinkBuffer, NetlinkMessage, NlasIterator, Parseable, ParseableParametrized,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkExtentMask, LinkHeader, LinkMessage},
    route::{RouteAttribute, RouteMessage},
};
use netlink_sys::{AsyncSocket, TokioSocket};
use sandbox_net_persist::scan::{Link, Route};

use crate::{Rtnl, convert, error::NetlinkError};

/// `RTM_NEWLINK`.
const RTM_NEWLINK: u16 = 16;
/// `RTM_NEWROUTE`.
const RTM_NEWROUTE: u16 = 24;
/// Size of `struct ifinfomsg`.
const IFINFOMSG_LEN: usize = 16;
/// The `IFLA_*` attributes [`convert::link`] reads: ADDRESS, IFNAME, MTU, LINK, TXQLEN,
/// LINKINFO, LINK_NETNSID.
const LINK_ATTRIBUTES: [u16; 7] = [1, 3, 4, 5, 13, 18, 37];
/// Receive buffer for dump datagrams; the kernel fills at most 32 KiB per datagram.
const RECEIVE_BUFFER: usize = 64 * 1024;

/// The second socket of an [`Rtnl`], used for one lean dump at a time.
pub(crate) struct LeanSocket {
    socket: tokio::sync::Mutex<TokioSocket>,
    sequence: AtomicU32,
}

impl LeanSocket {
    /// Wraps a socket made inside the namespace, turning strict dump checking on.
    pub(crate) fn new(socket: TokioSocket) -> std::io::Result<Self> {
        socket.socket_ref().set_netlink_get_strict_chk(true)?;
        Ok(Self {
            socket: tokio::sync::Mutex::new(socket),
            sequence: AtomicU32::new(1),
        })
    }
}

impl std::fmt::Debug for LeanSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanSocket")
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

impl Rtnl {
    /// Dumps every link (`RTM_GETLINK` without counters) and decodes only what a [`Link`]
    /// holds.
    pub(crate) async fn dump_links_lean(&self) -> Result<Vec<Link>, NetlinkError> {
        let mut request = LinkMessage::default();
        request
            .attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let mut links = Vec::new();
        self.lean_dump(
            "links",
            RouteNetlinkMessage::GetLink(request),
            RTM_NEWLINK,
            |payload| {
                let message =
                    lean_link(payload).map_err(|e| convert::ConvertError(e.to_string()))?;
                links.push(convert::link(&message)?);
                Ok(())
            },
        )
        .await?;
        Ok(links)
    }

    /// Dumps the IPv4 and IPv6 routes of one address family (`Unspec`: of both), of one table
    /// (`ip route show table T`) or of all (`table: None`).
    pub(crate) async fn dump_routes_lean(
        &self,
        family: AddressFamily,
        table: Option<u32>,
    ) -> Result<Vec<Route>, NetlinkError> {
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        if let Some(table) = table {
            request.attributes.push(RouteAttribute::Table(table));
        }
        let object = match family {
            AddressFamily::Inet6 => "IPv6 routes",
            AddressFamily::Inet => "IPv4 routes",
            _ => "routes",
        };
        let mut routes = Vec::new();
        self.lean_dump(
            object,
            RouteNetlinkMessage::GetRoute(request),
            RTM_NEWROUTE,
            |payload| {
                let message = RouteMessage::parse(payload)
                    .map_err(|e| convert::ConvertError(e.to_string()))?;
                // A dump of every family also brings multicast routing caches and the like.
                if matches!(
                    message.header.address_family,
                    AddressFamily::Inet | AddressFamily::Inet6
                ) {
                    routes.push(convert::route(&message)?);
                }
                Ok(())
            },
        )
        .await?;
        Ok(routes)
    }

    /// Sends `request` as a dump and hands the payload of every answer of type `wanted` to
    /// `on_message`, until the kernel says the dump is done.
    async fn lean_dump(
        &self,
        object: &str,
        request: RouteNetlinkMessage,
        wanted: u16,
        mut on_message: impl FnMut(&[u8]) -> Result<(), convert::ConvertError>,
    ) -> Result<(), NetlinkError> {
        let lean = self.lean();
        let socket = lean.socket.lock().await;
        let sequence = lean.sequence.fetch_add(1, Ordering::Relaxed);
        let io_error = |source: std::io::Error| NetlinkError::Request {
            op: "list",
            object: object.to_string(),
            netns: self.netns().to_path_buf(),
            source,
        };
        let decode_error =
            |e: DecodeError| self.decode(object, convert::ConvertError(e.to_string()));

        let mut request = NetlinkMessage::from(request);
        request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        request.header.sequence_number = sequence;
        request.finalize();
        let mut bytes = vec![0u8; request.buffer_len()];
        request.serialize(&mut bytes);
        poll_fn(|cx| socket.poll_send(cx, &bytes))
            .await
            .map_err(io_error)?;

        let mut datagram: Vec<u8> = Vec::with_capacity(RECEIVE_BUFFER);
        loop {
            datagram.clear();
            poll_fn(|cx| socket.poll_recv_from(cx, &mut datagram))
                .await
                .map_err(io_error)?;
            let mut offset = 0;
            while offset < datagram.len() {
                let message =
                    NetlinkBuffer::new_checked(&datagram[offset..]).map_err(decode_error)?;
                let length = message.length() as usize;
                // Messages of a dump abandoned earlier (its future dropped) are skipped.
                if message.sequence_number() == sequence {
                    match message.message_type() {
                        NLMSG_DONE => return Ok(()),
                        NLMSG_ERROR => {
                            let error = ErrorMessage::parse(&ErrorBuffer::new(&message.payload()))
                                .map_err(decode_error)?;
                            if error.code.is_some() {
                                return Err(io_error(error.to_io()));
                            }
                        }
                        kind if kind == wanted => {
                            on_message(message.payload()).map_err(|e| self.decode(object, e))?
                        }
                        _ => {}
                    }
                }
                if length == 0 {
                    break;
                }
                offset += (length + 3) & !3;
            }
        }
    }
}

/// Parses the header of an `RTM_NEWLINK` payload and only the attributes a [`Link`] needs.
fn lean_link(payload: &[u8]) -> Result<LinkMessage, DecodeError> {
    let header = LinkHeader::parse(payload)?;
    let attributes = payload
        .get(IFINFOMSG_LEN..)
        .ok_or("link message shorter than its header")?;
    let mut message = LinkMessage::default();
    for nla in NlasIterator::new(attributes) {
        let nla = nla?;
        if LINK_ATTRIBUTES.contains(&nla.kind()) {
            message.attributes.push(LinkAttribute::parse_with_param(
                &nla,
                header.interface_family,
            )?);
        }
    }
    message.header = header;
    Ok(message)
}
