//! Typed errors of the namespace and netlink layers.
//!
//! Every variant names the namespace (by path) and the object involved, and keeps the kernel's
//! errno in its source so that callers can decide on idempotency (`EEXIST`, `ENOENT`, `ENODEV`)
//! and tests can assert on it.

use std::{error::Error as StdError, io, path::PathBuf};

use sandbox_net_persist::NetnsId;

/// Walks an error's chain for the first OS error number.
pub fn errno_in_chain(err: &(dyn StdError + 'static)) -> Option<i32> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return Some(code);
        }
        current = e.source();
    }
    None
}

/// A failure to open, create, enter or delete a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The path does not exist.
    #[error("network namespace {path} does not exist")]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The path exists but could not be opened.
    #[error("failed to open network namespace {path}")]
    Open {
        /// The path given.
        path: PathBuf,
        /// What `open(2)` said.
        #[source]
        source: io::Error,
    },
    /// The path exists but is not a network namespace.
    #[error("{path} is not a network namespace: it is {what}")]
    NotANetns {
        /// The path given.
        path: PathBuf,
        /// What it is instead ("a directory", "a regular file", "a mount namespace", ...).
        what: String,
    },
    /// A namespace name that cannot be a file name under `/run/netns`.
    #[error("invalid network namespace name {name:?}: {why}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Something already exists where a namespace was to be created.
    #[error("cannot create network namespace {path}: the path already exists")]
    AlreadyExists {
        /// The path given.
        path: PathBuf,
    },
    /// One step of creating a namespace failed; nothing of it is left behind.
    #[error("failed to create network namespace {path}: {step}")]
    Create {
        /// The path given.
        path: PathBuf,
        /// The step that failed.
        step: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A destructive operation on a namespace this process did not create.
    #[error("refusing to delete network namespace {path}: this process did not create it")]
    NotCreatedByUs {
        /// The path of the namespace.
        path: PathBuf,
    },
    /// A destructive operation aimed at the host's own network namespace.
    #[error("refusing to {op} {path}: it is the host's own network namespace")]
    HostNamespace {
        /// What was refused.
        op: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// The path now names another namespace than the one recorded.
    #[error("network namespace {path} is {found}, not the recorded {expected}")]
    IdentityMismatch {
        /// The path given.
        path: PathBuf,
        /// The identity recorded earlier.
        expected: NetnsId,
        /// The identity the path has now.
        found: NetnsId,
    },
    /// One step of deleting a namespace failed.
    #[error("failed to delete network namespace {path}: {step}")]
    Delete {
        /// The path of the namespace.
        path: PathBuf,
        /// The step that failed.
        step: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A thread could not be started for work in the namespace.
    #[error("failed to start a thread for network namespace {path}")]
    Thread {
        /// The path of the namespace.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `setns(2)` into the namespace failed.
    #[error("failed to enter network namespace {path}")]
    Enter {
        /// The path of the namespace.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl NetnsError {
    /// The errno behind this error, if the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::NotFound { .. } => Some(libc::ENOENT),
            Self::AlreadyExists { .. } => Some(libc::EEXIST),
            _ => errno_in_chain(self),
        }
    }
}

/// A failed netlink request, or a failure to get a netlink socket in a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be created inside the namespace.
    #[error("failed to open a netlink socket in network namespace {netns}")]
    Socket {
        /// The namespace's path.
        netns: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn StdError + Send + Sync + 'static>,
    },
    /// The kernel refused or failed a request.
    #[error("failed to {op} {object} in network namespace {netns}")]
    Request {
        /// What was asked, as a verb phrase (`"set MTU of"`, `"list addresses of"`).
        op: &'static str,
        /// The object (`"link eth0 (ifindex 2)"`).
        object: String,
        /// The namespace's path.
        netns: PathBuf,
        /// The kernel's answer, with its errno.
        #[source]
        source: io::Error,
    },
    /// A link looked up by name or index does not exist.
    #[error("no link {link} in network namespace {netns}")]
    LinkNotFound {
        /// The name or index looked up.
        link: String,
        /// The namespace's path.
        netns: PathBuf,
    },
    /// The kernel's answer could not be understood.
    #[error("unexpected netlink answer for {object} in network namespace {netns}: {what}")]
    Decode {
        /// The object concerned.
        object: String,
        /// The namespace's path.
        netns: PathBuf,
        /// What was wrong.
        what: String,
    },
}

impl NetlinkError {
    /// The errno behind this error, if the kernel gave one (`ENODEV` for a missing link).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::LinkNotFound { .. } => Some(libc::ENODEV),
            _ => errno_in_chain(self),
        }
    }
}

/// An error and its sources joined with `: `, as the CLI prints them. A source whose text the
/// chain already ends with is said once: thiserror's `transparent` repeats its inner message,
/// and a message written as `"...: {0}"` repeats its source's.
pub fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        let said = text == more || text.ends_with(&format!(": {more}"));
        if !said {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// Turns rtnetlink's error into an `io::Error` that keeps the errno when there is one, and
/// reads as the kernel's reason when it gave one (see [`crate::ext_ack::refusal_to_io`]).
pub fn rtnetlink_to_io(err: rtnetlink::Error) -> io::Error {
    match err {
        // rtnetlink keeps the refusal, not the flags of its message. The sockets of this
        // crate do not set `NETLINK_CAP_ACK`, so the kernel echoes the whole request and the
        // extended ack's attributes, when there are any, follow it.
        rtnetlink::Error::NetlinkError(msg) => {
            crate::ext_ack::refusal_to_io(netlink_packet_core::NLM_F_ACK_TLVS, &msg)
        }
        other => io::Error::other(other.to_string()),
    }
}

/// A failure to create a tap device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The queue count is outside 1..=256.
    #[error("tap {name}: {queues} queues requested; 1 to {max} are supported")]
    InvalidQueues {
        /// The tap's name.
        name: sandbox_net_persist::IfName,
        /// The count asked for.
        queues: usize,
        /// The largest count supported.
        max: usize,
    },
    /// There is no tap of that name to open (a tap's queues are only reopened, never made
    /// anew by the open: `TUNSETIFF` on a free name would create a fresh, unwired tap).
    #[error("tap {name} does not exist in network namespace {netns}")]
    Missing {
        /// The tap's name.
        name: sandbox_net_persist::IfName,
        /// The namespace's path.
        netns: PathBuf,
    },
    /// A link with the tap's name already exists in the namespace.
    #[error(
        "cannot create tap {name} in network namespace {netns}: a link with that name already exists"
    )]
    NameTaken {
        /// The tap's name.
        name: sandbox_net_persist::IfName,
        /// The namespace's path.
        netns: PathBuf,
    },
    /// One step of creating the tap failed; nothing of it is left behind.
    #[error("failed to {step} for tap {name} (queue {queue}) in network namespace {netns}")]
    Step {
        /// The step (`"open /dev/net/tun"`, `"TUNSETIFF"`, ...).
        step: &'static str,
        /// The tap's name.
        name: sandbox_net_persist::IfName,
        /// The queue being opened when it failed.
        queue: usize,
        /// The namespace's path.
        netns: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The work could not be run inside the namespace.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

impl TapError {
    /// The errno behind this error, if the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::NameTaken { .. } => Some(libc::EEXIST),
            Self::Missing { .. } => Some(libc::ENODEV),
            Self::InvalidQueues { .. } => Some(libc::EINVAL),
            _ => errno_in_chain(self),
        }
    }
}

/// A failure to open the queues of a macvtap.
#[derive(Debug, thiserror::Error)]
pub enum MacvtapError {
    /// One step of the private-mount recipe failed; nothing of it is left behind.
    #[error("failed to {step} for macvtap {name} (ifindex {index}) in network namespace {netns}")]
    Step {
        /// The step that failed.
        step: &'static str,
        /// The macvtap's name.
        name: sandbox_net_persist::IfName,
        /// Its ifindex.
        index: u32,
        /// The namespace's path.
        netns: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The queue count is outside 1..=256.
    #[error("macvtap {name}: {queues} queues requested; 1 to 256 are supported")]
    InvalidQueues {
        /// The macvtap's name.
        name: sandbox_net_persist::IfName,
        /// The count asked for.
        queues: usize,
    },
    /// The work could not be run inside the namespace.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

impl MacvtapError {
    /// The errno behind this error, if the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::InvalidQueues { .. } => Some(libc::EINVAL),
            _ => errno_in_chain(self),
        }
    }
}
