//! The data model of sandbox-net: what a scan of a network namespace finds, written as our own
//! serde types so that the on-disk format never depends on a netlink crate's structs.
//!
//! ## Behavior
//! - Every value that the kernel reports as a number with well-known names (scopes, route
//!   protocols, neighbour states) is stored under its `ip`-style name (`"global"`, `"kernel"`,
//!   `"permanent"`) and falls back to the number for values without a name, so an unusual value
//!   read from the kernel is never lost and never makes a document unreadable.
//! - MAC addresses are `"aa:bb:cc:dd:ee:ff"` strings, prefixes are `"10.0.0.2/24"` strings and
//!   interface names are checked against the kernel's rules when a document is read.
//!
//! ## Limitations
//! This crate holds no I/O with the kernel; `sandbox-net-netns` fills these types in.
#![deny(missing_docs)]

pub mod endpoint;
#[cfg(feature = "fault-injection")]
pub mod fault;
mod ifname;
mod lock;
mod mac;
mod named;
mod netns_id;
pub mod owner;
pub mod pci;
pub mod scan;
mod secure;
pub mod state;
pub mod steps;
pub mod store;

pub use ifname::{IfName, IfNameError};
pub use mac::{MacAddr, MacAddrError};
pub use named::{AddressScope, NeighbourState, RouteProtocol, RouteType};
pub use netns_id::NetnsId;
pub use owner::{Liveness, Owner, OwnerError};
