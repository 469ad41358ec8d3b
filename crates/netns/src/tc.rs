//! Traffic-control primitives of the tcfilter model: ingress qdiscs and u32 match-all
//! mirred redirects (`tc qdisc ... ingress`, `tc filter ... action mirred egress redirect`).

use std::time::Duration;

use netlink_packet_route::tc::{
    TcActionAttribute, TcActionMirrorOption, TcActionOption, TcAttribute, TcFilterU32Option,
    TcHandle, TcMessage, TcMirrorActionType, TcOption,
};
use sandbox_net_persist::scan::Link;

use crate::{Rtnl, error::NetlinkError, link::describe};

/// The priority of the redirect filters (Kata's): `tc filter ... prio 49152`.
pub const REDIRECT_PRIORITY: u16 = 0xC000;
/// The parent of ingress filters, `ffff:`.
pub const INGRESS_FILTER_PARENT: u32 = 0xFFFF_0000;
/// `ETH_P_ALL`, the protocol of the redirect filters, as the kernel stores it.
const ETH_P_ALL: u16 = libc::ETH_P_ALL as u16;
/// How often an ingress qdisc add is tried when the kernel answers `EBUSY` (Kata's policy).
const INGRESS_ADD_TRIES: u32 = 5;

/// A mirred redirect found on a link's ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirect {
    /// The filter's priority.
    pub priority: u16,
    /// The filter's protocol (host byte order; `ETH_P_ALL` is 3).
    pub protocol: u16,
    /// The index of the link the frames are redirected to.
    pub target_index: u32,
    /// True for an egress redirect (`mirred egress redirect`).
    pub egress_redirect: bool,
}

impl Rtnl {
    /// Adds an ingress qdisc to the link (`tc qdisc add dev DEV ingress`). `EBUSY` is retried
    /// up to 5 times with a linear 10 ms backoff; `EEXIST` is returned as an error, for the
    /// caller to judge (an ingress qdisc it did not make is not its own).
    pub async fn add_ingress_qdisc(&self, link: &Link) -> Result<(), NetlinkError> {
        let mut attempt = 1;
        loop {
            let result = self
                .handle()
                .qdisc()
                .add(link.index as i32)
                .ingress()
                .execute()
                .await;
            match result {
                Ok(()) => return Ok(()),
                Err(rtnetlink::Error::NetlinkError(e))
                    if e.raw_code() == -libc::EBUSY && attempt < INGRESS_ADD_TRIES =>
                {
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(self.request_error("add ingress qdisc to", describe(link), e));
                }
            }
        }
    }

    /// Deletes the link's ingress qdisc and the filters under it (`tc qdisc del dev DEV
    /// ingress`). The request names the parent `ffff:fff1`: without it the kernel answers
    /// `ENOENT`: rtnetlink's qdisc delete request sends parent 0 and handle 0 unless the
    /// header is set by hand.
    pub async fn del_ingress_qdisc(&self, link: &Link) -> Result<(), NetlinkError> {
        let mut request = self.handle().qdisc().del(link.index as i32);
        request.message_mut().header.parent = TcHandle::INGRESS;
        request
            .execute()
            .await
            .map_err(|e| self.request_error("delete ingress qdisc of", describe(link), e))
    }

    /// Whether the link has an ingress qdisc. (The kernel answers a qdisc dump with every
    /// link's qdiscs whatever index the request names, so the answer is filtered here.)
    pub async fn has_ingress_qdisc(&self, link: &Link) -> Result<bool, NetlinkError> {
        let qdiscs = self
            .dump("list", "qdiscs", |h| h.qdisc().get().execute())
            .await?;
        Ok(qdiscs.iter().any(|q| {
            q.header.index == link.index as i32
                && q.header.parent == TcHandle::INGRESS
                && q.attributes
                    .iter()
                    .any(|a| matches!(a, TcAttribute::Kind(k) if k == "ingress"))
        }))
    }

    /// Redirects every frame arriving at `from` to the egress of `to` and drops it from
    /// `from`'s stack (`tc filter add dev FROM parent ffff: protocol all prio 49152 u32 match
    /// u32 0 0 action mirred egress redirect dev TO`, action `stolen`). `from` needs an
    /// ingress qdisc.
    pub async fn add_redirect(&self, from: &Link, to: &Link) -> Result<(), NetlinkError> {
        let object = || format!("redirect from {} to {}", describe(from), describe(to));
        // priority() before protocol(): priority() sets tcm_info to `prio << 16 | prio` and
        // protocol() then replaces only the low half. The protocol goes in network byte
        // order, or tc shows a wrong protocol. Only redirect(), not u32() as well: each pushes
        // the filter kind and two kinds make the request invalid.
        let request = self
            .handle()
            .traffic_filter(from.index as i32)
            .add()
            .parent(INGRESS_FILTER_PARENT)
            .priority(REDIRECT_PRIORITY)
            .protocol(ETH_P_ALL.to_be())
            .redirect(to.index)
            .map_err(|e| self.request_error("build", object(), e))?;
        request
            .execute()
            .await
            .map_err(|e| self.request_error("add", object(), e))
    }

    /// The mirred redirects on the link's ingress, as the kernel reports them.
    pub async fn ingress_redirects(&self, link: &Link) -> Result<Vec<Redirect>, NetlinkError> {
        let filters = self
            .dump(
                "list",
                &format!("ingress filters of {}", describe(link)),
                |h| {
                    h.traffic_filter(link.index as i32)
                        .get()
                        .ingress()
                        .execute()
                },
            )
            .await?;
        Ok(filters.iter().filter_map(redirect_of).collect())
    }

    /// Deletes every filter at the link's ingress (`tc filter del dev DEV parent ffff:`).
    pub async fn del_ingress_filters(&self, link: &Link) -> Result<(), NetlinkError> {
        self.handle()
            .traffic_filter(link.index as i32)
            .del()
            .parent(INGRESS_FILTER_PARENT)
            .execute()
            .await
            .map_err(|e| self.request_error("delete ingress filters of", describe(link), e))
    }
}

/// The redirect a filter message carries, if any. A u32 filter dumps as several messages;
/// only its key message holds the action (the other two are the priority root and the hash
/// table `800:`).
fn redirect_of(msg: &TcMessage) -> Option<Redirect> {
    let info = msg.header.info;
    msg.attributes.iter().find_map(|attr| {
        let TcAttribute::Options(options) = attr else {
            return None;
        };
        options.iter().find_map(|option| {
            let TcOption::U32(TcFilterU32Option::Action(actions)) = option else {
                return None;
            };
            actions.iter().flat_map(|a| &a.attributes).find_map(|a| {
                let TcActionAttribute::Options(opts) = a else {
                    return None;
                };
                opts.iter().find_map(|o| match o {
                    TcActionOption::Mirror(TcActionMirrorOption::Parms(mirror)) => Some(Redirect {
                        priority: (info >> 16) as u16,
                        protocol: u16::from_be((info & 0xFFFF) as u16),
                        target_index: mirror.ifindex,
                        egress_redirect: mirror.eaction == TcMirrorActionType::EgressRedir,
                    }),
                    _ => None,
                })
            })
        })
    })
}
