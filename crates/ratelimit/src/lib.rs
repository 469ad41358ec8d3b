//! Host-side rate limiting: HTB trees and per-endpoint IFB devices (issue 4).
//!
//! Nothing is implemented yet: this crate exists so that the direction of dependencies
//! (`netns <- ratelimit <- endpoints`) is fixed from the start.
