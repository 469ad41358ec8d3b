//! Traffic-control primitives of the tcfilter model: ingress qdiscs and u32 match-all
//! mirred redirects (`tc qdisc ... ingress`, `tc filter ... action mirred egress redirect`),
//! and what a link already holds in the places sandbox-net uses ([`LinkQdiscs`]), so that
//! it can tell its own objects from a user's.

use std::{fmt, time::Duration};

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{
        TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
        TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
        TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
    },
};
use sandbox_net_persist::scan::Link;

use crate::{
    Rtnl,
    error::{NetlinkError, errno_in_chain},
    link::describe,
};

/// The priority of the redirect filters (Kata's): `tc filter ... prio 49152`. Used when the
/// link's ingress holds no filter of anyone else.
pub const REDIRECT_PRIORITY: u16 = sandbox_net_persist::steps::KATA_REDIRECT_PRIORITY;
/// The parent of ingress filters, `ffff:`.
pub const INGRESS_FILTER_PARENT: u32 = 0xFFFF_0000;
/// The parent of the filters at a link's ingress hook, `ffff:fff2`, what `tc filter ...
/// ingress` sends: valid under an `ingress` qdisc and under a `clsact` one (whose ingress
/// and egress are `ffff:fff2` and `ffff:fff3`), so that a redirect can sit under either.
pub const INGRESS_HOOK: u32 = 0xFFFF_FFF2;
/// The cookie on the mirred action of every redirect sandbox-net adds (`TCA_ACT_COOKIE`,
/// which the kernel keeps without reading it): `tc filter show` prints it as `cookie
/// 73616e64626f782d6e6574`. It marks the filter as sandbox-net's.
pub const REDIRECT_COOKIE: &[u8] = b"sandbox-net";
/// `TC_H_ROOT`: the parent of a root qdisc.
const TC_H_ROOT: u32 = 0xFFFF_FFFF;
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
    /// True when the action carries [`REDIRECT_COOKIE`]: sandbox-net added it.
    pub ours: bool,
}

/// A qdisc found on a link: its kind and handle (`htb 1:`, `ingress ffff:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    /// Its kind (`tc qdisc show` prints it first).
    pub kind: String,
    /// Its handle, `major << 16 | minor`.
    pub handle: u32,
}

impl fmt::Display for Qdisc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (major, minor) = (self.handle >> 16, self.handle & 0xFFFF);
        if minor == 0 {
            write!(f, "{} {major:x}:", self.kind)
        } else {
            write!(f, "{} {major:x}:{minor:x}", self.kind)
        }
    }
}

/// The qdisc at a link's ingress (an `ingress` or a `clsact`) and the filters at its ingress
/// hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressHook {
    /// The qdisc.
    pub qdisc: Qdisc,
    /// The priorities its filters of chain 0 hold, sorted, each once (u32 dumps several
    /// messages per priority). A priority is one classifier in the kernel, whatever number
    /// of rules it holds: another filter cannot be added there without joining it.
    pub priorities: Vec<u16>,
}

/// What a link holds where sandbox-net puts its own traffic control: the ingress (its
/// redirects) and the root of the egress (its HTB tree).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkQdiscs {
    /// The ingress qdisc and its filters, if the link has one.
    pub ingress: Option<IngressHook>,
    /// The root qdisc, unless it is the one the kernel attaches by itself (handle `0:`:
    /// `noqueue`, `pfifo_fast`, `mq`, `fq_codel`...), which a root qdisc added over it replaces
    /// and which the kernel puts back when that one is deleted. Anything else was added by
    /// someone: the kernel gives every qdisc it is asked for a handle other than `0:`.
    pub root: Option<Qdisc>,
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

    /// Whether the link has an ingress qdisc of kind `ingress`.
    pub async fn has_ingress_qdisc(&self, link: &Link) -> Result<bool, NetlinkError> {
        Ok(self
            .qdisc_kind_at(link, TcHandle::INGRESS)
            .await?
            .is_some_and(|q| q.kind == "ingress"))
    }

    /// The link's ingress qdisc (`ingress` or `clsact`) and its root qdisc unless it is the
    /// kernel's default (see [`LinkQdiscs::root`]): two [`Rtnl::qdisc_at`] gets at once.
    async fn qdiscs_of(&self, link: &Link) -> Result<(Option<Qdisc>, Option<Qdisc>), NetlinkError> {
        let (ingress, root) = futures::join!(
            self.qdisc_kind_at(link, TcHandle::INGRESS),
            self.qdisc_kind_at(link, TcHandle::from(TC_H_ROOT))
        );
        Ok((ingress?, root?))
    }

    /// The link's ingress qdisc (`ingress` or `clsact`), if it has one: one get, without the
    /// filter dump of [`Rtnl::link_qdiscs`].
    pub async fn ingress_qdisc(&self, link: &Link) -> Result<Option<Qdisc>, NetlinkError> {
        self.qdisc_kind_at(link, TcHandle::INGRESS).await
    }

    /// The link's root qdisc unless it is the kernel's default (see [`LinkQdiscs::root`]):
    /// one get.
    pub async fn root_qdisc(&self, link: &Link) -> Result<Option<Qdisc>, NetlinkError> {
        self.qdisc_kind_at(link, TcHandle::from(TC_H_ROOT)).await
    }

    /// The kind and handle of [`Rtnl::qdisc_at`]'s answer.
    async fn qdisc_kind_at(
        &self,
        link: &Link,
        parent: TcHandle,
    ) -> Result<Option<Qdisc>, NetlinkError> {
        Ok(self.qdisc_at(link, parent).await?.and_then(|message| {
            let kind = message.attributes.iter().find_map(|a| match a {
                TcAttribute::Kind(k) => Some(k.clone()),
                _ => None,
            })?;
            Some(Qdisc {
                kind,
                handle: u32::from(message.header.handle),
            })
        }))
    }

    /// The qdisc attached at `parent` of the link (`ffff:fff1`: the ingress hook; `TC_H_ROOT`:
    /// the root of the egress) as the kernel reports it, unless it is one of the kernel's
    /// built-in ones, which have handle 0 (`noqueue`, the default `pfifo_fast`, `fq_codel`
    /// or `mq`, and the `noop` an ingress hook keeps once its qdisc was deleted): the kernel's
    /// dumps leave those out too.
    ///
    /// One unicast get (`RTM_GETQDISC` without `NLM_F_DUMP`, naming the link and the parent),
    /// not a dump: the kernel answers a qdisc dump with every link's qdiscs whatever index the
    /// request names, which would make each link's question cost the whole namespace. The
    /// kernel answers `ENOENT` when nothing is attached there. The request carries
    /// `NLM_F_ECHO`: without it the kernel sends its answer to a get only to the
    /// `RTNLGRP_TC` multicast group, and the asker receives nothing but the ACK.
    pub async fn qdisc_at(
        &self,
        link: &Link,
        parent: TcHandle,
    ) -> Result<Option<TcMessage>, NetlinkError> {
        let mut message = TcMessage::with_index(link.index as i32);
        message.header.parent = parent;
        let answers = self
            .exchange(
                RouteNetlinkMessage::GetQueueDiscipline(message),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO,
            )
            .await;
        match answers {
            Ok(answers) => Ok(answers.into_iter().find_map(|answer| match answer {
                RouteNetlinkMessage::NewQueueDiscipline(q) if u32::from(q.header.handle) != 0 => {
                    Some(q)
                }
                _ => None,
            })),
            Err(e) if errno_in_chain(&e) == Some(libc::ENOENT) => Ok(None),
            Err(e) => {
                let place = if parent == TcHandle::INGRESS {
                    "ingress"
                } else {
                    "root"
                };
                Err(self.request_failed("get", format!("{place} qdisc of {}", describe(link)), e))
            }
        }
    }

    /// Every traffic-control class of the link (`tc class show dev DEV`), as the kernel dumps
    /// them: a class dump, which the kernel answers with the classes of the index it names.
    pub async fn classes_of(&self, link: &Link) -> Result<Vec<TcMessage>, NetlinkError> {
        let index = link.index as i32;
        self.dump("list", &format!("classes of {}", describe(link)), |h| {
            h.traffic_class(index).get().execute()
        })
        .await
    }

    /// What the link holds at its ingress and at the root of its egress: what sandbox-net
    /// must coexist with or refuse before it adds its own. A qdisc dump, and a filter dump
    /// when the link has an ingress qdisc.
    pub async fn link_qdiscs(&self, link: &Link) -> Result<LinkQdiscs, NetlinkError> {
        let (ingress, root) = self.qdiscs_of(link).await?;
        let ingress = match ingress {
            Some(qdisc) => {
                let mut priorities: Vec<u16> = self
                    .ingress_filters(link)
                    .await?
                    .iter()
                    .filter(|f| chain_of(f) == 0)
                    .map(|f| (f.header.info >> 16) as u16)
                    .collect();
                priorities.sort_unstable();
                priorities.dedup();
                Some(IngressHook { qdisc, priorities })
            }
            None => None,
        };
        Ok(LinkQdiscs { ingress, root })
    }

    /// Redirects every frame arriving at `from` to the egress of `to` and drops it from
    /// `from`'s stack, at Kata's priority 49152: [`Rtnl::add_redirect_at`].
    pub async fn add_redirect(&self, from: &Link, to: &Link) -> Result<(), NetlinkError> {
        self.add_redirect_at(from, to, REDIRECT_PRIORITY).await
    }

    /// Redirects every frame arriving at `from` to the egress of `to` and drops it from
    /// `from`'s stack: `tc filter add dev FROM ingress protocol all prio PRIORITY u32 match
    /// u32 0 0 action mirred egress redirect dev TO cookie 73616e64626f782d6e6574` (action
    /// `stolen`). `from` needs an ingress or clsact qdisc. The caller picks a priority no
    /// other filter holds: u32 joins a filter to the classifier already at its priority.
    pub async fn add_redirect_at(
        &self,
        from: &Link,
        to: &Link,
        priority: u16,
    ) -> Result<(), NetlinkError> {
        let object = || {
            format!(
                "redirect from {} to {} at priority {priority}",
                describe(from),
                describe(to)
            )
        };
        let mut message = TcMessage::with_index(from.index as i32);
        message.header.parent = INGRESS_HOOK.into();
        // The protocol goes in network byte order, or tc shows a wrong protocol.
        message.header.info = u32::from(priority) << 16 | u32::from(ETH_P_ALL.to_be());
        let mut selector = TcU32Selector::default();
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.nkeys = 1;
        selector.keys = vec![TcU32Key::default()];
        let mut mirror = TcMirror::default();
        mirror.generic = TcActionGeneric::default();
        mirror.generic.action = TcActionType::Stolen;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = to.index;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind("mirred".into()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
            TcActionAttribute::Cookie(REDIRECT_COOKIE.to_vec()),
        ];
        message.attributes = vec![
            TcAttribute::Kind("u32".into()),
            TcAttribute::Options(vec![
                TcOption::U32(TcFilterU32Option::Selector(selector)),
                TcOption::U32(TcFilterU32Option::Action(vec![action])),
            ]),
        ];
        self.exchange(
            RouteNetlinkMessage::NewTrafficFilter(message),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .await
        .map(drop)
        .map_err(|e| self.request_failed("add", object(), e))
    }

    /// Deletes the filter at `priority` of the link's ingress hook, whatever it holds (`tc
    /// filter del dev DEV ingress protocol all prio PRIORITY`); the other priorities stay.
    pub async fn del_filter_at(&self, link: &Link, priority: u16) -> Result<(), NetlinkError> {
        let mut message = TcMessage::with_index(link.index as i32);
        message.header.parent = INGRESS_HOOK.into();
        message.header.info = u32::from(priority) << 16 | u32::from(ETH_P_ALL.to_be());
        self.exchange(
            RouteNetlinkMessage::DelTrafficFilter(message),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .await
        .map(drop)
        .map_err(|e| {
            self.request_failed(
                "delete",
                format!(
                    "ingress filter at priority {priority} of {}",
                    describe(link)
                ),
                e,
            )
        })
    }

    /// The filters at the link's ingress hook, as the kernel dumps them (a u32 filter as
    /// several messages).
    async fn ingress_filters(&self, link: &Link) -> Result<Vec<TcMessage>, NetlinkError> {
        self.dump(
            "list",
            &format!("ingress filters of {}", describe(link)),
            |h| {
                h.traffic_filter(link.index as i32)
                    .get()
                    .ingress()
                    .execute()
            },
        )
        .await
    }

    /// The mirred redirects on the link's ingress, as the kernel reports them.
    pub async fn ingress_redirects(&self, link: &Link) -> Result<Vec<Redirect>, NetlinkError> {
        let filters = self.ingress_filters(link).await?;
        Ok(filters
            .iter()
            .filter(|f| chain_of(f) == 0)
            .filter_map(redirect_of)
            .collect())
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

/// The chain a filter message belongs to (`TCA_CHAIN`; 0 when absent).
fn chain_of(msg: &TcMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            TcAttribute::Chain(chain) => Some(*chain),
            _ => None,
        })
        .unwrap_or(0)
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
            actions.iter().find_map(|action| {
                let ours = action.attributes.iter().any(
                    |a| matches!(a, TcActionAttribute::Cookie(c) if c.as_slice() == REDIRECT_COOKIE),
                );
                action.attributes.iter().find_map(|a| {
                    let TcActionAttribute::Options(opts) = a else {
                        return None;
                    };
                    opts.iter().find_map(|o| match o {
                        TcActionOption::Mirror(TcActionMirrorOption::Parms(mirror)) => {
                            Some(Redirect {
                                priority: (info >> 16) as u16,
                                protocol: u16::from_be((info & 0xFFFF) as u16),
                                target_index: mirror.ifindex,
                                egress_redirect: mirror.eaction == TcMirrorActionType::EgressRedir,
                                ours,
                            })
                        }
                        _ => None,
                    })
                })
            })
        })
    })
}
