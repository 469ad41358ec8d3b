//! The `Endpoint` trait, its eight kinds and their classification (issue 3).
//!
//! Nothing is implemented yet: this crate exists so that the direction of dependencies
//! (`{interworking, ratelimit} <- endpoints <- sandbox-net`) is fixed from the start.
