//! Adding, reading and removing the HTB tree of a link over a namespace-bound netlink
//! handle. The tree is Kata's: root qdisc `1:` with default class `1:2`, class `1:1` under
//! it and `1:2` under `1:1`, each with rate = ceil = the limit.

use std::io;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcHandle, TcHeader, TcMessage},
};
use sandbox_net_netns::Rtnl;
use sandbox_net_persist::scan::Link;

use crate::{
    CLASS_1_1, CLASS_1_2, HtbClassReadback, HtbRate, LimitError, PschedClock, ROOT_HANDLE,
    RateError, TC_H_ROOT, class_message, parse_class, parse_qdisc, root_qdisc_message,
};

/// Flags of a request that creates an object and fails if it exists.
const ADD_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
/// Flags of a request that deletes an object.
const DEL_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK;

/// The HTB tree found on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtbTree {
    /// The minor of the root qdisc's default class (2 for `1:2`).
    pub default_class: u32,
    /// The qdisc's classes, sorted by handle.
    pub classes: Vec<HtbClassReadback>,
}

/// Adds Kata's tree to the link's egress: root qdisc `1:` with default class `1:2`, class
/// `1:1` under it and class `1:2` under `1:1`, both with rate = ceil = `rate`.
///
/// Fails with `EEXIST` (leaving it untouched) when the link already has a root qdisc `1:`.
/// If a class cannot be added, the root qdisc this call added is deleted again (with any
/// class under it) before the error is returned.
#[tracing::instrument(
    name = "ratelimit.htb_add",
    skip_all,
    fields(link = %link.name, ifindex = link.index, bytes_per_second = rate.bytes_per_second())
)]
pub async fn add_htb_tree(
    rtnl: &Rtnl,
    link: &Link,
    rate: HtbRate,
    clock: &PschedClock,
) -> Result<(), LimitError> {
    add_tree(
        rtnl,
        link,
        rate,
        clock,
        #[cfg(feature = "fault-injection")]
        &|_| {},
    )
    .await
}

/// [`add_htb_tree`] with a fault point between its requests (feature `fault-injection`, for
/// the crash tests): `between` is called with the object a request added (`htb root qdisc
/// 1:`, `htb class 1:1`) once the kernel has acknowledged it and before the next request, so
/// that a test can kill the process with a half-built tree.
#[cfg(feature = "fault-injection")]
#[tracing::instrument(
    name = "ratelimit.htb_add",
    skip_all,
    fields(link = %link.name, ifindex = link.index, bytes_per_second = rate.bytes_per_second())
)]
pub async fn add_htb_tree_with_fault_point(
    rtnl: &Rtnl,
    link: &Link,
    rate: HtbRate,
    clock: &PschedClock,
    between: &(dyn Fn(&str) + Sync),
) -> Result<(), LimitError> {
    add_tree(rtnl, link, rate, clock, between).await
}

async fn add_tree(
    rtnl: &Rtnl,
    link: &Link,
    rate: HtbRate,
    clock: &PschedClock,
    #[cfg(feature = "fault-injection")] between: &(dyn Fn(&str) + Sync),
) -> Result<(), LimitError> {
    let on = On { rtnl, link };
    const ROOT: &str = "htb root qdisc 1:";
    on.send(
        RouteNetlinkMessage::NewQueueDiscipline(root_qdisc_message(link.index)),
        ADD_FLAGS,
        "add",
        ROOT,
    )
    .await?;
    #[cfg(feature = "fault-injection")]
    between(ROOT);
    let classes = [
        (CLASS_1_1, ROOT_HANDLE, "htb class 1:1"),
        (CLASS_1_2, CLASS_1_1, "htb class 1:2"),
    ];
    for (handle, parent, object) in classes {
        let message = class_message(link.index, handle, parent, rate, clock);
        let added = on
            .send(
                RouteNetlinkMessage::NewTrafficClass(message),
                ADD_FLAGS,
                "add",
                object,
            )
            .await;
        if let Err(add) = added {
            return Err(match on.del_root().await {
                Ok(()) => add,
                Err(rollback) => LimitError::PartialTree {
                    link: link.name.to_string(),
                    index: link.index,
                    netns: rtnl.netns().to_path_buf(),
                    rollback: Box::new(rollback),
                    source: Box::new(add),
                },
            });
        }
        // After the last class the tree is whole: no longer between requests.
        #[cfg(feature = "fault-injection")]
        if handle != CLASS_1_2 {
            between(object);
        }
    }
    tracing::info!("htb tree added");
    Ok(())
}

/// Reads the link's HTB tree: the root qdisc `1:` and its classes. `None` when the link has
/// no root qdisc `1:` of kind `htb`.
///
/// Two requests: a get of the link's root qdisc and a dump of the link's classes.
#[tracing::instrument(name = "ratelimit.htb_read", skip_all, fields(link = %link.name, ifindex = link.index))]
pub async fn read_htb_tree(rtnl: &Rtnl, link: &Link) -> Result<Option<HtbTree>, LimitError> {
    let on = On { rtnl, link };
    let Some(default_class) = on.root_default_class().await? else {
        return Ok(None);
    };
    let messages = rtnl.classes_of(link).await?;
    let mut classes = Vec::new();
    for message in &messages {
        let parsed = parse_class(message).map_err(|e| on.parse_error("htb classes", e))?;
        if let Some(class) = parsed.filter(|c| c.handle >> 16 == ROOT_HANDLE >> 16) {
            classes.push(class);
        }
    }
    classes.sort_by_key(|c| c.handle);
    Ok(Some(HtbTree {
        default_class,
        classes,
    }))
}

/// Deletes the link's root qdisc `1:` and, with it, its classes (`tc qdisc del dev DEV root
/// handle 1:`). The request names parent root and handle `1:0`: rtnetlink's qdisc delete
/// request would send parent 0 and handle 0, which the kernel answers with `ENOENT`.
///
/// When the link has no root qdisc `1:` the error is [`LimitError::NoTree`], whose
/// [`errno`](LimitError::errno) is `ENOENT`: the caller decides whether that means "already
/// done". A root qdisc `1:` of another kind than `htb` is deleted as well.
#[tracing::instrument(name = "ratelimit.htb_del", skip_all, fields(link = %link.name, ifindex = link.index))]
pub async fn del_htb_tree(rtnl: &Rtnl, link: &Link) -> Result<(), LimitError> {
    On { rtnl, link }.del_root().await?;
    tracing::info!("htb tree deleted");
    Ok(())
}

/// A link of a namespace, for requests and their errors.
struct On<'a> {
    rtnl: &'a Rtnl,
    link: &'a Link,
}

impl On<'_> {
    /// Deletes the root qdisc `1:`, translating the kernel's `EINVAL` for a link without one
    /// into [`LimitError::NoTree`].
    async fn del_root(&self) -> Result<(), LimitError> {
        let header = TcHeader {
            index: self.link.index as i32,
            handle: TcHandle::from(ROOT_HANDLE),
            parent: TcHandle::from(TC_H_ROOT),
            ..TcHeader::default()
        };
        let message = TcMessage::from_parts(header, Vec::new());
        let deleted = self
            .send(
                RouteNetlinkMessage::DelQueueDiscipline(message),
                DEL_FLAGS,
                "delete",
                "htb root qdisc 1:",
            )
            .await;
        match deleted {
            // The kernel answers EINVAL ("Invalid handle") when the root qdisc is another
            // one, such as the default noqueue (handle 0:), and ENOENT only in rarer cases.
            Err(e) if matches!(e.errno(), Some(libc::EINVAL | libc::ENOENT)) => {
                if self.root_qdisc_1().await?.is_none() {
                    return Err(LimitError::NoTree {
                        link: self.link.name.to_string(),
                        index: self.link.index,
                        netns: self.rtnl.netns().to_path_buf(),
                    });
                }
                Err(e)
            }
            other => other,
        }
    }

    /// The root qdisc `1:` of the link, whatever its kind.
    async fn root_qdisc_1(&self) -> Result<Option<TcMessage>, LimitError> {
        let root = self
            .rtnl
            .qdisc_at(self.link, TcHandle::from(TC_H_ROOT))
            .await?;
        Ok(root.filter(|q| u32::from(q.header.handle) == ROOT_HANDLE))
    }

    /// The default class of the link's root qdisc `1:`, if it is an HTB qdisc.
    async fn root_default_class(&self) -> Result<Option<u32>, LimitError> {
        let Some(root) = self.root_qdisc_1().await? else {
            return Ok(None);
        };
        let parsed = parse_qdisc(&root).map_err(|e| self.parse_error("the htb root qdisc", e))?;
        Ok(parsed.map(|q| q.default_class))
    }

    /// Sends one request and reads the kernel's answer: the ACK, or its refusal, kept with
    /// its errno and the kernel's reason.
    async fn send(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
        op: &'static str,
        object: &str,
    ) -> Result<(), LimitError> {
        self.rtnl
            .exchange(message, flags)
            .await
            .map(drop)
            .map_err(|source| self.request_error(op, object, source))
    }

    fn request_error(&self, op: &'static str, object: &str, source: io::Error) -> LimitError {
        LimitError::Request {
            op,
            object: object.to_string(),
            link: self.link.name.to_string(),
            index: self.link.index,
            netns: self.rtnl.netns().to_path_buf(),
            source,
        }
    }

    fn parse_error(&self, object: &'static str, source: RateError) -> LimitError {
        LimitError::Parse {
            object,
            link: self.link.name.to_string(),
            index: self.link.index,
            netns: self.rtnl.netns().to_path_buf(),
            source,
        }
    }
}
