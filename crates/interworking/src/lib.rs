//! Interworking models: how a pod-side link is wired to the VM side.
//!
//! Owns `NetworkPair` and the `tcfilter`, `macvtap` and `none` models (issue 3). It works on
//! link names, never on endpoint kinds. Nothing is implemented yet: this crate exists so that
//! the direction of dependencies (`netns <- interworking <- endpoints`) is fixed from the start.
