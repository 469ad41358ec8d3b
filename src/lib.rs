//! sandbox-net: gives a microVM sandbox its network.
//!
//! A container-runtime shim links this crate to scan the pod's network namespace prepared by
//! CNI, connect each interface to the VM, shape it and persist what teardown needs. The
//! building blocks live in the workspace's crates; this crate holds the sandbox-level pieces:
//! [`Sandbox`] (state on disk, restore after a restart, teardown) and what the `sandbox-net`
//! binary shows to people.

pub mod cni;
pub mod demo;
pub mod guest_config;
pub mod handover;
pub mod network;
pub mod render;
pub mod sandbox;
pub mod telemetry;
pub mod vmm;

pub use network::{NetnsSource, Network, NetworkConfig};
pub use sandbox::{Sandbox, SandboxError};
