//! Network namespaces, netlink handles bound to one, kernel primitives, and the scan of a
//! namespace. This is the only crate of sandbox-net that calls `setns(2)` or `unshare(2)`.
//!
//! ## Behavior
//! - [`Netns`] holds a namespace by file descriptor and identifies it by `(device, inode)`.
//!   It opens `/run/netns/NAME`, `/proc/PID/ns/net` or any bind mount, creates namespaces
//!   without forking, and deletes only those it created, never the host's.
//! - [`Netns::run`] runs a synchronous closure on a fresh OS thread inside the namespace; no
//!   tokio worker ever changes namespace. The tracing context follows the closure.
//! - [`Netns::rtnl`] makes an rtnetlink socket inside the namespace (on such a thread) and
//!   hands it to tokio; all later requests are ordinary async code on any thread.
//! - [`Rtnl`] offers the primitives (links, addresses, routes, neighbours) and
//!   [`Rtnl::scan`], with Kata's filtering rules as visible [`ScanOptions`].
//! - [`Netns::spawn_with_fds`] starts a program (a VMM) inside the namespace with exactly the
//!   descriptors it is handed open across `exec`.
//! - Errors ([`NetnsError`], [`NetlinkError`]) name the namespace and the object and keep the
//!   errno.
//!
//! - A request the kernel refuses reads as the kernel's reason (its extended ack, which
//!   every socket of this crate asks for) with the errno underneath: see [`kernel_reason`].
//!   [`Rtnl::exchange`] sends a request built by the caller under the same rules.
#![deny(missing_docs)]

mod address;
mod convert;
mod error;
mod exec;
mod ext_ack;
mod failures;
mod ifreq;
mod lean_dump;
mod link;
mod macvtap;
mod namespace;
mod route;
mod rtnl;
mod run;
mod scan;
mod spawn;
mod tap;
mod tc;
#[cfg(feature = "testing")]
pub mod testing;
mod vhost;

pub use error::{
    MacvtapError, NetlinkError, NetnsError, TapError, errno_in_chain, error_chain, rtnetlink_to_io,
};
pub use ext_ack::{ext_ack_text, kernel_reason, refusal_to_io};
pub use failures::Failures;
pub use ifreq::ifreq_named;
pub use link::LinkChange;
pub use macvtap::{MACVTAP_INDEX_BASE, MACVTAP_INDEX_TRIES};
pub use namespace::{NETNS_RUN_DIR, Netns, PID1_NETNS, named_path};
pub use rtnl::Rtnl;
pub use run::{RUNNER_THREAD_NAME, on_blocking_thread};
pub use sandbox_net_persist::NetnsId;
pub use scan::ScanOptions;
pub use spawn::SpawnError;
pub use tap::{MAX_TAP_QUEUES, Tap, TapConfig, set_tap_persist};
pub use tc::{
    INGRESS_FILTER_PARENT, INGRESS_HOOK, IngressHook, LinkQdiscs, Qdisc, REDIRECT_COOKIE,
    REDIRECT_PRIORITY, Redirect,
};
pub use vhost::{
    NotVhostError, VHOST_NET_F_VIRTIO_NET_HDR, VHOST_NET_PATH, VhostError, open_vhost_net,
    vhost_features,
};
