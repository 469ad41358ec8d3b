//! Typed errors: [`RateError`] for the pure core (rates, the psched clock, dump parsing) and
//! [`LimitError`] for the kernel operations.

use std::{io, path::PathBuf};

use sandbox_net_netns::errno_in_chain;

/// A rate the encoder refuses, a psched clock it cannot read, or a class or qdisc message it
/// cannot parse. Raised before anything is sent to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum RateError {
    /// A rate of 0, which configurations use for "no limit": there is nothing to shape.
    #[error("rate 0 bit/s means no limit: do not install a rate limiter for it")]
    Zero,
    /// A rate below one byte per second.
    #[error("rate {bits} bit/s is too small: the smallest is {min} bit/s")]
    TooSmall {
        /// The rate asked for, in bits per second.
        bits: u64,
        /// The smallest rate accepted, in bits per second.
        min: u64,
    },
    /// A rate above [`MAX_BITS_PER_SECOND`](crate::MAX_BITS_PER_SECOND).
    #[error("rate {bits} bit/s is too large: the largest is {max} bit/s (use 0 for no limit)")]
    TooLarge {
        /// The rate asked for, in bits per second.
        bits: u64,
        /// The largest rate accepted, in bits per second.
        max: u64,
    },
    /// The content of `/proc/net/psched` is not what iproute2 expects.
    #[error("cannot understand the psched clock {text:?}: {what}")]
    PschedFormat {
        /// The text read.
        text: String,
        /// What is wrong with it.
        what: &'static str,
    },
    /// `/proc/net/psched` could not be read.
    #[error("failed to read {path}")]
    PschedRead {
        /// The file's path.
        path: PathBuf,
        /// What the read said.
        #[source]
        source: io::Error,
    },
    /// An htb class or qdisc message that does not have the kernel's layout.
    #[error("malformed htb {object} message: {what}")]
    Malformed {
        /// `"class"` or `"qdisc"`.
        object: &'static str,
        /// What is wrong.
        what: String,
    },
}

impl RateError {
    /// The errno behind this error: `EINVAL` for a refused rate or a malformed message, the
    /// read's errno for `/proc/net/psched`.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::PschedRead { source, .. } => source.raw_os_error(),
            _ => Some(libc::EINVAL),
        }
    }
}

/// A failure to add, read or remove an HTB tree on a link.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// The rate or the clock was refused before anything was sent.
    #[error(transparent)]
    Rate(#[from] RateError),
    /// The kernel refused or failed a request.
    #[error(
        "failed to {op} {object} on link {link} (ifindex {index}) in network namespace {netns}"
    )]
    Request {
        /// What was asked (`"add"`, `"delete"`, `"list"`).
        op: &'static str,
        /// The object (`"htb class 1:2"`, `"htb root qdisc 1:"`).
        object: String,
        /// The link's name.
        link: String,
        /// The link's index.
        index: u32,
        /// The namespace's path.
        netns: PathBuf,
        /// The kernel's answer: its reason (extended ack) when it gave one, with the errno.
        #[source]
        source: io::Error,
    },
    /// The link has no root qdisc `1:` to delete. The kernel says `EINVAL` ("Invalid
    /// handle") for this, as for other invalid requests; it is reported with `ENOENT`.
    #[error("no htb root qdisc 1: on link {link} (ifindex {index}) in network namespace {netns}")]
    NoTree {
        /// The link's name.
        link: String,
        /// The link's index.
        index: u32,
        /// The namespace's path.
        netns: PathBuf,
    },
    /// A message of the kernel's dump could not be parsed.
    #[error(
        "unexpected answer listing {object} on link {link} (ifindex {index}) in network namespace {netns}"
    )]
    Parse {
        /// What was listed.
        object: &'static str,
        /// The link's name.
        link: String,
        /// The link's index.
        index: u32,
        /// The namespace's path.
        netns: PathBuf,
        /// What was wrong.
        #[source]
        source: RateError,
    },
    /// A question to the kernel through the namespace's [`Rtnl`](sandbox_net_netns::Rtnl)
    /// helpers failed; the error names the link and the namespace.
    #[error(transparent)]
    Netlink(#[from] sandbox_net_netns::NetlinkError),
    /// Adding failed part-way and removing the part already added failed too: the link may
    /// keep a partial tree. The source is the failure of the add; `rollback` that of the
    /// removal.
    #[error(
        "failed to add htb tree on link {link} (ifindex {index}) in network namespace {netns}, \
         and failed to remove its partial tree (errno {})",
        rollback.errno().map_or_else(|| "unknown".to_string(), |e| e.to_string())
    )]
    PartialTree {
        /// The link's name.
        link: String,
        /// The link's index.
        index: u32,
        /// The namespace's path.
        netns: PathBuf,
        /// Why removing the partial tree failed.
        rollback: Box<LimitError>,
        /// Why adding failed.
        #[source]
        source: Box<LimitError>,
    },
}

impl LimitError {
    /// The errno behind this error, if the kernel gave one (`EEXIST` when the link already
    /// has a root qdisc `1:`, `ENOENT` when there is none to delete). For
    /// [`LimitError::PartialTree`], the errno of the failed add.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Rate(e) => e.errno(),
            Self::NoTree { .. } => Some(libc::ENOENT),
            Self::Parse { source, .. } => source.errno(),
            Self::PartialTree { source, .. } => source.errno(),
            Self::Request { .. } => errno_in_chain(self),
            Self::Netlink(e) => e.errno(),
        }
    }

    /// The kernel's extended-ack text for a refused request, if it sent one.
    pub fn ext_ack(&self) -> Option<&str> {
        match self {
            Self::Request { source, .. } => sandbox_net_netns::kernel_reason(source),
            Self::PartialTree { source, .. } => source.ext_ack(),
            _ => None,
        }
    }
}
