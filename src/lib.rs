//! sandbox-net: gives a microVM sandbox its network.
//!
//! A container-runtime shim links this crate to scan the pod's network namespace prepared by
//! CNI, connect each interface to the VM, shape it and persist what teardown needs. This crate
//! is the one dependency a shim needs: it re-exports the types of the workspace's crates that
//! appear in its API (the [`Hypervisor`] boundary, [`Netns`], [`EndpointId`], the errors, the
//! configuration), and holds the sandbox-level pieces: [`Network`] (the orchestrator a shim
//! drives) and [`Sandbox`] (the state on disk, restore after a restart, teardown).
//!
//! Depend on it without the default `cli` feature to leave out the command line, its
//! telemetry export and the demo:
//!
//! ```toml
//! [dependencies]
//! sandbox-net = { version = "0.1", default-features = false }
//! ```
//!
//! The README below is part of these docs, and its code blocks are compiled as doctests.
#![doc = include_str!("../README.md")]

pub mod cni;
pub mod guest_config;
pub mod handover;
pub mod network;
pub mod reconcile;
pub mod sandbox;
#[cfg(feature = "cli")]
pub mod telemetry;
pub mod vmm;

pub use network::{NetnsSource, Network, NetworkConfig};
pub use reconcile::{ReconcileError, ReconcileOptions, ReconcileReport, reconcile};
pub use sandbox::{Sandbox, SandboxError};

// The VMM boundary: what a shim implements and what it is handed.
pub use sandbox_net_endpoints::{
    Backend, Capabilities, Hypervisor, HypervisorConfig, HypervisorError, NetDevice, Plug,
    physical::{PciAddress, SysfsPci},
};
// Endpoints and their errors.
pub use sandbox_net_endpoints::{
    AttachOptions, ClassifyOptions, Endpoint, EndpointError, EndpointFailure, EndpointId,
    EndpointKind, EndpointVariant, RateLimits, RecordError, ReopenOptions, SkippedInterface,
    Unsupported,
};
// Wiring: the models, their options and what `check` reports.
pub use sandbox_net_interworking::{Drift, InterworkingModel, TapOptions, UnknownModel};
// Namespaces, netlink and the scan.
pub use sandbox_net_netns::{
    Failures, NetlinkError, Netns, NetnsError, NetnsId, ScanOptions, errno_in_chain, error_chain,
};
// The building blocks, one level down, for a shim that drives endpoints itself.
pub use sandbox_net_endpoints as endpoints;
pub use sandbox_net_interworking as interworking;
// The data model: names, addresses, the scan and the state document.
pub use sandbox_net_persist::{IfName, IfNameError, MacAddr, MacAddrError, scan, state};
// Who holds a sandbox, for `Network::set_owner` and `reconcile`.
pub use sandbox_net_persist::{Liveness, Owner, OwnerError};
