//! sandbox-net: gives a microVM sandbox its network.
//!
//! A container-runtime shim links this crate to scan the pod's network namespace prepared by
//! CNI, connect each interface to the VM, shape it and persist what teardown needs. The
//! building blocks live in the workspace's crates (`sandbox-net-netns` for namespaces, netlink
//! and the scan; `sandbox-net-persist` for the data model); this crate holds the pieces the
//! `sandbox-net` binary shows to people.

pub mod render;
