//! Endpoints: what each interface of a pod becomes, and how it is attached to the VM.
//!
//! ## Behavior
//! - [`classify()`] decides, in Kata's order, which [`EndpointVariant`] a scanned interface is:
//!   physical (a PCI function, through ethtool's bus info), vhost-user (a socket exists for one
//!   of its addresses), macvlan, macvtap, tuntap (tap mode only), veth, ipvlan. Anything else is
//!   skipped with a warning, or refused in strict mode. A physical endpoint carries its PCI
//!   function and a vhost-user one its socket; [`EndpointKind`] is the plain tag.
//! - An [`Endpoint`] has its own stable id, never its MAC or its position.
//! - Attaching builds what a VMM needs ([`NetDevice`]: queue descriptors, guest MAC, MTU, or a
//!   vhost-user socket / VFIO device) and hands it to the [`Hypervisor`].
//! - An attached endpoint's device can be opened again from its record alone
//!   ([`Endpoint::reopen_device`]), for a VMM started by another process than the attach.
//!
//! - A physical NIC is handed to the VM through VFIO and, on detach, given back to the pod
//!   with its name, MAC, MTU, addresses and routes ([`give_back()`]), not left in the host's
//!   namespace where its driver registers it.
//!
//! ## Limitations
//! VFIO binding and ethtool detection are exercised against a stand-in sysfs tree and veths;
//! the build machines have no PCI NIC to hand over.
#![deny(missing_docs)]

pub mod classify;
pub mod endpoint;
pub mod give_back;
pub mod hypervisor;
pub mod limiter;
pub mod physical;
pub mod record;
pub mod reopen;
#[cfg(feature = "testing")]
pub mod testing;
pub mod vhost_user;

pub use classify::{
    ClassifyOptions, SkippedInterface, Unsupported, classify, classify_in, endpoints_from_scan,
};
pub use endpoint::{
    AttachOptions, AttachedDevice, Endpoint, EndpointError, EndpointFailure, EndpointVariant,
};
pub use give_back::{GiveBackError, give_back};
pub use hypervisor::{
    Backend, Capabilities, Hypervisor, HypervisorConfig, HypervisorError, NetDevice, Plug,
};
pub use limiter::{RateLimits, ifb_name};
pub use record::RecordError;
pub use reopen::ReopenOptions;
pub use sandbox_net_persist::endpoint::{EndpointId, EndpointKind};
