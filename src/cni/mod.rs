//! CNI both ways: the protocol's types, a runtime that executes plugin chains, and the
//! `sandbox-net-cni` chained plugin.
//!
//! - [`version`], [`result`], [`config`], [`error`]: the configurations, results and errors of
//!   CNI 0.3.0 to 1.1.0.
//! - [`exec`]: executing one plugin by the protocol (environment, stdin, stdout), optionally
//!   inside a "node" namespace.
//! - [`chain`]: a network configuration's plugins run as a runtime runs them (ADD in order with
//!   `prevResult` passed on, DEL in reverse, CHECK, GC, STATUS), with per-plugin version
//!   negotiation.
//! - [`plugin`]: the `sandbox-net-cni` chained plugin (ADD, CHECK, DEL, STATUS, GC, VERSION).
//! - [`runtime`]: a sandbox's namespace filled by a CNI network, recorded in its state.
//! - [`trace`]: continuing a runtime's trace (`TRACEPARENT`).

pub mod chain;
pub mod config;
pub mod error;
pub mod exec;
pub mod plugin;
pub mod result;
pub mod runtime;
// Continuing the runtime's trace needs the OpenTelemetry layer, which only the binaries install.
#[cfg(feature = "cli")]
pub mod trace;
pub mod version;

pub use chain::{ChainError, ChainRunner, ValidAttachment};
pub use config::{ConfigError, NetworkConfigList};
pub use error::{CniError, code};
pub use exec::{Attachment, CniCommand, ExecError, PluginExec};
pub use result::{CniResult, Dns, Interface, IpConfig, ResultError, Route};
pub use version::CniVersion;
