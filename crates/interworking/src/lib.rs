//! How a pod-side link is wired to the VM: the [`NetworkPair`] and its interworking models.
//!
//! ## Behavior
//! - [`NetworkPair::plan`] describes the wiring as a list of [`Step`]s, each carrying the
//!   values it overwrites. Planning is pure: it reads the scanned pod link and touches nothing.
//! - [`apply`] makes the changes in order. If one fails, the steps already made are undone in
//!   reverse before the error is returned, so a failed attach leaves the namespace as it was.
//! - [`undo`] reverses a list of steps: it treats what is already gone as done, goes on past
//!   failures and reports all of them. Rollback, detach and cleanup after a crash are all this
//!   one operation.
//! - [`check`] compares the kernel with the steps and reports every difference.
//! - [`fit_to_kernel`] fits a plan to the traffic control the pod's links already hold, before
//!   it is recorded: a user's ingress qdisc is shared (our redirect at a priority of our own
//!   in front of their filters; undo removes only that filter), a user's root qdisc is never
//!   replaced (shaping that link is refused, naming link and qdisc). Every tc object the
//!   steps make is recorded, and the redirects carry sandbox-net's cookie.
//!
//! | model | VM side | pod link while attached |
//! |---|---|---|
//! | `tcfilter` | tap `tap{idx}_kata`, MTU of the pod link, ingress qdiscs and mirred redirects both ways | unchanged |
//! | `macvtap` | macvtap `tap{idx}_kata` on the pod link, bridge mode, with the pod link's MAC, all multicast | random local MAC, no addresses |
//! | `none` | tap, not connected | unchanged |
//!
//! ## Limitations
//! Links are found by name at every step (one lookup each); names are what CNI and the VMM
//! use, and an ifindex is only known once a device exists.
#![deny(missing_docs)]

mod apply;
mod check;
mod ownership;
mod pair;
mod undo;

#[cfg(feature = "fault-injection")]
pub use apply::ApplyHooks;
pub use apply::{
    AppliedPair, ApplyOptions, AttachError, NetnsHandles, StepError, apply, apply_with,
};
pub use check::{Drift, check};
pub use ownership::{FitError, OwnershipError, fit, fit_to_kernel, survey};
pub use pair::{NetworkPair, PairError, TapOptions, random_local_mac, vm_link_name};
pub use sandbox_net_persist::steps::{InterworkingModel, Step, UnknownModel};
pub use undo::{UndoError, UndoFailure, undo, undo_with};
