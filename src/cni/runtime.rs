//! The runtime side: a sandbox's namespace filled by a CNI network configuration, as container
//! runtimes and firecracker-go-sdk do it, recorded in the sandbox's state
//! ([`CniRecord`]) so that teardown, in this process or a later one, runs the chain's DEL.
//!
//! ## Behavior
//! - [`crate::Sandbox::add_cni`] records the network (without a result) before ADD, then
//!   ADD's result: a process killed at any point leaves a record that the next teardown uses
//!   to run DEL (with the result when there is one, as libcni does with its result cache).
//! - [`crate::Sandbox::teardown`] runs DEL of every recorded network, last first, after the
//!   endpoints are undone and before a namespace the sandbox created is deleted.
//! - The container id is the sandbox's id; plugins run in this process's namespace, or in the
//!   recorded node namespace.

use std::path::PathBuf;

use sandbox_net_netns::Netns;
pub use sandbox_net_persist::state::CniRecord;

use super::{
    chain::{ChainError, ChainRunner},
    config::{ConfigError, NetworkConfigList},
    exec::{Attachment, PluginExec},
    result::{CniResult, ResultError},
};

/// A CNI network that could not be run or undone.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A plugin failed.
    #[error(transparent)]
    Chain(Box<ChainError>),
    /// The node namespace cannot be opened.
    #[error("the node namespace {} cannot be opened", .path.display())]
    Node {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: sandbox_net_netns::NetnsError,
    },
    /// The recorded result cannot be read.
    #[error(transparent)]
    Result(#[from] ResultError),
}

impl From<ChainError> for RuntimeError {
    fn from(e: ChainError) -> Self {
        Self::Chain(Box::new(e))
    }
}

/// The record's configuration, parsed.
pub fn network(record: &CniRecord) -> Result<NetworkConfigList, ConfigError> {
    NetworkConfigList::from_value("recorded network configuration", &record.config)
}

/// A runner for the record's plugins (its directories, its node namespace).
pub fn runner(record: &CniRecord) -> Result<ChainRunner, RuntimeError> {
    let node = match &record.node_netns {
        Some(path) => Some(Netns::open(path).map_err(|source| RuntimeError::Node {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    Ok(ChainRunner::new(PluginExec {
        search_path: record.plugin_dirs.clone(),
        node,
        env: Vec::new(),
    }))
}

/// The protocol's attachment parameters of the record for `container_id` in `netns`.
pub fn attachment(record: &CniRecord, container_id: &str, netns: Option<PathBuf>) -> Attachment {
    Attachment {
        container_id: container_id.to_string(),
        netns,
        ifname: record.ifname.clone(),
        args: record.args.clone(),
    }
}

/// Runs ADD of the record's network for `container_id` in `netns`; returns the final result.
pub async fn add(
    record: &CniRecord,
    container_id: &str,
    netns: PathBuf,
) -> Result<CniResult, RuntimeError> {
    let list = network(record)?;
    let runner = runner(record)?;
    Ok(runner
        .add(&list, &attachment(record, container_id, Some(netns)))
        .await?)
}

/// Runs DEL of the record's network with its recorded result, if any (`netns` is `None` once
/// the namespace is gone).
pub async fn del(
    record: &CniRecord,
    container_id: &str,
    netns: Option<PathBuf>,
) -> Result<(), RuntimeError> {
    let list = network(record)?;
    let runner = runner(record)?;
    let result = match &record.result {
        Some(r) => Some(CniResult::from_json("recorded result", r)?.1),
        None => None,
    };
    Ok(runner
        .del(
            &list,
            &attachment(record, container_id, netns),
            result.as_ref(),
        )
        .await?)
}
