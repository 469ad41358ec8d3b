//! Adding, reading and removing the HTB tree of a link over a namespace-bound netlink
//! handle. The tree is Kata's: root qdisc `1:` with default class `1:2`, class `1:1` under
//! it and `1:2` under `1:1`, each with rate = ceil = the limit.

use std::io;

use futures::StreamExt;
use netlink_packet_core::{
    ErrorMessage, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
    NetlinkMessage, NetlinkPayload, NlasIterator,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcHandle, TcHeader, TcMessage},
};
use sandbox_net_netns::{Rtnl, rtnetlink_to_io};
use sandbox_net_persist::scan::Link;

use crate::{
    CLASS_1_1, CLASS_1_2, HtbClassReadback, HtbRate, LimitError, PschedClock, ROOT_HANDLE,
    RateError, TC_H_ROOT, class_message, parse_class, parse_qdisc, root_qdisc_message,
};

/// Flags of a request that creates an object and fails if it exists.
const ADD_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
/// Flags of a request that deletes an object.
const DEL_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK;
/// `NLMSGERR_ATTR_MSG`: the extended ack's text.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Size of `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;

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

    /// Sends one request and drains its answers. An `NLMSG_ERROR` without a code is the
    /// ACK; one with a code (a negative errno) is the kernel's refusal, kept with its errno and
    /// extended-ack text.
    async fn send(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
        op: &'static str,
        object: &str,
    ) -> Result<(), LimitError> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = flags;
        let mut handle = self.rtnl.handle().clone();
        let mut answers = handle
            .request(request)
            .map_err(|e| self.request_error(op, object, None, rtnetlink_to_io(e)))?;
        let mut refusal = None;
        while let Some(answer) = answers.next().await {
            if let NetlinkPayload::Error(err) = &answer.payload
                && err.code.is_some()
                && refusal.is_none()
            {
                refusal = Some((err.to_io(), ext_ack_text(answer.header.flags, err)));
            }
        }
        match refusal {
            Some((source, ext_ack)) => Err(self.request_error(op, object, ext_ack, source)),
            None => Ok(()),
        }
    }

    fn request_error(
        &self,
        op: &'static str,
        object: &str,
        ext_ack: Option<String>,
        source: io::Error,
    ) -> LimitError {
        LimitError::Request {
            op,
            object: object.to_string(),
            link: self.link.name.to_string(),
            index: self.link.index,
            netns: self.rtnl.netns().to_path_buf(),
            ext_ack,
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

/// The text of an extended ack (`NLMSGERR_ATTR_MSG`), if the kernel sent one. `flags` are
/// those of the `NLMSG_ERROR` message; the error's payload is the request's header, the
/// request's body unless `NLM_F_CAPPED`, then the attributes if `NLM_F_ACK_TLVS`.
pub(crate) fn ext_ack_text(flags: u16, err: &ErrorMessage) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        u32::from_ne_bytes(err.header.get(0..4)?.try_into().ok()?) as usize
    };
    let tlvs = err.header.get(echoed.checked_add(3)? & !3..)?;
    NlasIterator::new(tlvs)
        .map_while(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            let text = nla.value();
            let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
            String::from_utf8_lossy(&text[..end]).into_owned()
        })
        .filter(|text| !text.is_empty())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::num::NonZeroI32;

    use super::*;

    fn error_message(code: i32, header: Vec<u8>) -> ErrorMessage {
        let mut err = ErrorMessage::default();
        err.code = NonZeroI32::new(code);
        err.header = header;
        err
    }

    fn msg_tlv(text: &str) -> Vec<u8> {
        let mut value = text.as_bytes().to_vec();
        value.push(0);
        let len = 4 + value.len();
        let mut out = (len as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        out.extend_from_slice(&value);
        out.resize(len.next_multiple_of(4), 0);
        out
    }

    #[test]
    fn ext_ack_after_an_echoed_request() {
        // The echoed request: a 16-byte header with nlmsg_len 36 and a 20-byte body.
        let mut header = 36u32.to_ne_bytes().to_vec();
        header.resize(36, 0xAA);
        header.extend(msg_tlv("Invalid handle."));
        let err = error_message(-libc::EINVAL, header);
        assert_eq!(
            ext_ack_text(NLM_F_ACK_TLVS, &err).as_deref(),
            Some("Invalid handle.")
        );
        assert_eq!(ext_ack_text(0, &err), None);
    }

    #[test]
    fn ext_ack_after_a_capped_request() {
        let mut header = 999u32.to_ne_bytes().to_vec();
        header.resize(16, 0);
        header.extend(msg_tlv(
            "quantum of class 10002 is big. Consider r2q change.",
        ));
        let err = error_message(-libc::EINVAL, header);
        assert_eq!(
            ext_ack_text(NLM_F_ACK_TLVS | NLM_F_CAPPED, &err).as_deref(),
            Some("quantum of class 10002 is big. Consider r2q change.")
        );
    }

    #[test]
    fn ext_ack_never_panics_on_short_payloads() {
        for len in 0..40 {
            let err = error_message(-1, vec![0xFF; len]);
            let _ = ext_ack_text(NLM_F_ACK_TLVS, &err);
            let _ = ext_ack_text(NLM_F_ACK_TLVS | NLM_F_CAPPED, &err);
        }
    }
}
