//! A user-space stand-in for a VM's network stack, for tests and the demo.
//!
//! A [`Guest`] owns the queue descriptors of a tap (or macvtap) as a VMM would, and answers
//! on them like a booted guest with one interface: ARP requests and IPv6 neighbour
//! solicitations for its addresses, and ICMP / ICMPv6 echo requests. It understands the
//! virtio-net header that `IFF_VNET_HDR` puts in front of every frame. It proves the data path
//! with real frames: a ping from the host side of a pod's veth is answered only if the wiring
//! carries it to the guest and the reply back.
//!
//! ## Behavior
//! - One thread per queue, polling its descriptor; [`Guest::stop`] ends them and hands the
//!   descriptors back.
//! - Replies come from the guest's own MAC, so a test can tell them from the pod kernel's.
//! - Counters ([`GuestStats`]) tell what was answered.
//!
//! ## Limitations
//! No IP options or IPv6 extension headers, no fragments, no offloads (the virtio-net header
//! of every frame written is zero: no checksum or segmentation offload).
#![deny(missing_docs)]

pub mod flood;
mod guest;
pub mod packet;
pub mod ping;

pub use guest::{Guest, GuestConfig, GuestStats, VIRTIO_NET_HDR_LEN};
