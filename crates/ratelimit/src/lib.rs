//! Host-side rate limiting with HTB: pure encoders and dump parsers, and the kernel
//! operations that add, read and remove Kata's HTB tree on a link. The tree is host-side on
//! purpose (a guest escape cannot bypass it); Kata applies it only for hypervisors without a
//! built-in limiter.
//!
//! ```no_run
//! # async fn example(rtnl: &sandbox_net_netns::Rtnl, link: &sandbox_net_persist::scan::Link)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use sandbox_net_ratelimit::{HtbRate, PschedClock, add_htb_tree, read_htb_tree};
//!
//! let clock = PschedClock::read()?;
//! let rate = HtbRate::from_bits(10_000_000)?; // 10 Mbit/s; 0 means "no limiter" to callers
//! add_htb_tree(rtnl, link, rate, &clock).await?;
//! if let Some(tree) = read_htb_tree(rtnl, link).await? {
//!     assert_eq!(tree.classes[0].rate, 1_250_000); // bytes/s
//! }
//! # Ok(()) }
//! ```
//!
//! ## Behavior
//! - Rates are configured in bits/s and sent in bytes/s, floored ([`bits_to_bytes`]): the
//!   limiter is never faster than configured. [`HtbRate::from_bits`] accepts 8 bit/s to
//!   [`MAX_BITS_PER_SECOND`] (200 Gbit/s) and refuses the rest before anything is sent.
//! - [`add_htb_tree`] builds root qdisc `1:` (default class `1:2`), class `1:1` under it and
//!   class `1:2` under `1:1`, rate = ceil, as Kata does. Messages are hand-encoded
//!   ([`root_qdisc_message`], [`class_message`]): `tc_ratespec` with linklayer Ethernet and
//!   rate tables as tc computes them, `TCA_HTB_RATE64`/`CEIL64` from 2^32 bytes/s on, bursts
//!   in psched ticks from the kernel's clock ([`PschedClock`]), and an explicit quantum (the
//!   kernel's own clamp of `rate / 10` to 1000..=200000, without its warning).
//! - A failed add removes what it added; an add over an existing root qdisc `1:` fails with
//!   `EEXIST` and leaves it alone. [`del_htb_tree`] removes the root qdisc and its classes;
//!   without one, its error has errno `ENOENT`.
//! - [`read_htb_tree`] reads the tree back from the kernel ([`parse_class`],
//!   [`parse_qdisc`]), with exact 64-bit rates.
//! - Errors ([`RateError`], [`LimitError`]) name the link, the tc handle and the namespace,
//!   keep the errno and carry the kernel's extended-ack text when it sent one.
//!
//! ## Limitations
//! - IFB devices (the tx direction of macvtap and tap endpoints) are not handled here yet.
//! - Bursts keep fractional microseconds ([`PschedClock::xmittime`]), which differs
//!   slightly from the installed iproute2 6.1: it sends the same 20000 ticks at 10 Mbit/s
//!   but 0 ticks where this sends 5 at 40 Gbit/s, and smaller rate-table entries. The kernel
//!   ignores the rate tables for an Ethernet link layer.
//! - The dumps of [`read_htb_tree`] and of `EINVAL` handling in [`del_htb_tree`] go
//!   straight to the handle: they do not take turns with dumps that other tasks run at the
//!   same time on the same [`Rtnl`](sandbox_net_netns::Rtnl), and the kernel refuses a
//!   second concurrent dump on one socket with `EBUSY`.
//! - The kernel's success-time warnings (extended acks on an ACK) are not seen: rtnetlink
//!   does not forward ACKs.
//! - [`del_htb_tree`] deletes the root qdisc `1:` whatever its kind.
#![deny(missing_docs)]

mod encode;
mod error;
mod psched;
mod tree;

pub use encode::{
    CELL_LOG, CLASS_1_1, CLASS_1_2, DEFAULT_CLASS_MINOR, HtbClassReadback, HtbQdiscReadback,
    HtbRate, MAX_BITS_PER_SECOND, MAX_QUANTUM, MIN_BITS_PER_SECOND, MIN_QUANTUM, MTU, R2Q,
    ROOT_HANDLE, TC_H_ROOT, TC_HTB_PROTOVER, TC_LINKLAYER_ETHERNET, TCA_HTB_CEIL64, TCA_HTB_CTAB,
    TCA_HTB_DIRECT_QLEN, TCA_HTB_INIT, TCA_HTB_PARMS, TCA_HTB_RATE64, TCA_HTB_RTAB, TCA_OPTIONS,
    bits_to_bytes, class_message, htb_glob, htb_opt, parse_class, parse_qdisc, rate_table,
    ratespec, root_qdisc_message,
};
pub use error::{LimitError, RateError};
pub use psched::{PSCHED_PATH, PschedClock};
#[cfg(feature = "fault-injection")]
pub use tree::add_htb_tree_with_fault_point;
pub use tree::{HtbTree, add_htb_tree, del_htb_tree, read_htb_tree};
