//! Running a network configuration's plugins as a runtime does: ADD in order, each getting the
//! previous plugin's result as `prevResult`; DEL in reverse order and CHECK in order, each
//! getting the final ADD result; GC and STATUS to every plugin, going on past failures.
//!
//! ## Versions
//! The list's version is the highest of its `cniVersion`/`cniVersions` this module speaks.
//! A plugin that does not speak it (the reference plugins 1.1.1 stop at 1.0.0, a list may say
//! 1.1.0) is asked its VERSION and given the highest version it speaks below the list's, with
//! `prevResult` converted to that version; its result is read in its own version and converted
//! back. libcni fails such a list instead; converting keeps every plugin working, and what a
//! lower version cannot say (1.1.0's interface `mtu`, say) is only missing for that plugin.
//! GC and STATUS exist from 1.1.0 on: plugins that stop below it are not asked.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use sandbox_net_netns::Failures;
use serde_json::Value;

use super::{
    config::NetworkConfigList,
    exec::{Attachment, CniCommand, ExecError, PluginExec},
    result::{CniResult, ResultError},
    version::CniVersion,
};

/// A chain operation that failed: names the plugin (its position and type).
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The plugin failed.
    #[error("network {network}: plugin {index} ({plugin})")]
    Exec {
        /// The network's name.
        network: String,
        /// The plugin's position in the list.
        index: usize,
        /// Its type.
        plugin: String,
        /// Why.
        #[source]
        source: ExecError,
    },
    /// The plugin's result cannot be read.
    #[error("network {network}: plugin {index} ({plugin}) printed a result that cannot be read")]
    Result {
        /// The network's name.
        network: String,
        /// The plugin's position.
        index: usize,
        /// Its type.
        plugin: String,
        /// Why.
        #[source]
        source: ResultError,
    },
    /// The plugin speaks no version of the chain's range.
    #[error(
        "network {network}: plugin {index} ({plugin}) speaks {supported:?}, none of them a chaining version up to {wanted}"
    )]
    NoVersion {
        /// The network's name.
        network: String,
        /// The plugin's position.
        index: usize,
        /// Its type.
        plugin: String,
        /// What it speaks.
        supported: Vec<String>,
        /// The list's version.
        wanted: CniVersion,
    },
    /// The list's version has no such command.
    #[error("network {network}: CNI version {version} has no {command}")]
    Unsupported {
        /// The network's name.
        network: String,
        /// The command.
        command: CniCommand,
        /// The list's version.
        version: CniVersion,
    },
    /// GC or STATUS went on past failures; these are all of them.
    #[error("network {network}: {command} failed")]
    Several {
        /// The network's name.
        network: String,
        /// The command.
        command: CniCommand,
        /// Every failure.
        #[source]
        failures: Failures<ChainError>,
    },
}

impl ChainError {
    /// The CNI error a plugin answered with, if the failure is one.
    pub fn cni_error(&self) -> Option<&super::CniError> {
        match self {
            Self::Exec { source, .. } => source.cni_error(),
            _ => None,
        }
    }
}

/// One attachment that is still valid, for GC (`cni.dev/valid-attachments`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidAttachment {
    /// `containerID`.
    pub container_id: String,
    /// `ifname`.
    pub ifname: String,
}

/// Runs network configurations' plugins with a [`PluginExec`]; remembers what each plugin's
/// VERSION said.
#[derive(Debug, Default)]
pub struct ChainRunner {
    /// How plugins are found and started.
    pub exec: PluginExec,
    versions: Mutex<HashMap<String, Vec<String>>>,
}

impl ChainRunner {
    /// A runner over `exec`.
    pub fn new(exec: PluginExec) -> Self {
        Self {
            exec,
            versions: Mutex::new(HashMap::new()),
        }
    }

    /// The version plugin `index` of `list` is spoken to in: the list's when the plugin
    /// speaks it, else the highest it speaks below the list's (from 0.3.0 on).
    pub async fn plugin_version(
        &self,
        list: &NetworkConfigList,
        index: usize,
    ) -> Result<CniVersion, ChainError> {
        let plugin = list.plugin_type(index).to_string();
        let cached = self
            .versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&plugin)
            .cloned();
        let supported = match cached {
            Some(s) => s,
            None => {
                let s = self
                    .exec
                    .supported_versions(&plugin)
                    .await
                    .map_err(|source| ChainError::Exec {
                        network: list.name.clone(),
                        index,
                        plugin: plugin.clone(),
                        source,
                    })?;
                self.versions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(plugin.clone(), s.clone());
                s
            }
        };
        supported
            .iter()
            .filter_map(|v| v.parse::<CniVersion>().ok())
            .filter(|v| *v <= list.version)
            .max()
            .ok_or_else(|| ChainError::NoVersion {
                network: list.name.clone(),
                index,
                plugin,
                supported,
                wanted: list.version,
            })
    }

    /// Runs plugin `index` of `list` alone: `command` with `prev_result` (converted to the
    /// plugin's version) as `prevResult`, and `extra` fields added to its request (GC's
    /// `cni.dev/valid-attachments`). Returns its result for ADD, `None` otherwise.
    pub async fn run_plugin(
        &self,
        list: &NetworkConfigList,
        index: usize,
        command: CniCommand,
        attachment: Option<&Attachment>,
        prev_result: Option<&CniResult>,
        extra: &[(&str, Value)],
    ) -> Result<Option<CniResult>, ChainError> {
        let plugin = list.plugin_type(index).to_string();
        let version = self.plugin_version(list, index).await?;
        let mut request = list.request(index, version, prev_result.map(|r| r.to_json(version)));
        for (key, value) in extra {
            request[*key] = value.clone();
        }
        let answer = self
            .exec
            .exec(&plugin, command, attachment, &request)
            .await
            .map_err(|source| ChainError::Exec {
                network: list.name.clone(),
                index,
                plugin: plugin.clone(),
                source,
            })?;
        if command != CniCommand::Add {
            return Ok(None);
        }
        let Some(answer) = answer else {
            // ADD with nothing printed: nothing changed in the result.
            return Ok(Some(prev_result.cloned().unwrap_or_default()));
        };
        let (_, result) =
            CniResult::from_json("result", &answer).map_err(|source| ChainError::Result {
                network: list.name.clone(),
                index,
                plugin,
                source,
            })?;
        Ok(Some(result))
    }

    /// ADD of every plugin in order, each with the previous one's result; stops at the first
    /// failure (the caller then runs DEL, as the specification asks). Returns the last result.
    #[tracing::instrument(name = "cni.add", skip_all, fields(network = %list.name, container = %attachment.container_id, ifname = %attachment.ifname), err)]
    pub async fn add(
        &self,
        list: &NetworkConfigList,
        attachment: &Attachment,
    ) -> Result<CniResult, ChainError> {
        let mut prev: Option<CniResult> = None;
        for index in 0..list.plugins.len() {
            prev = self
                .run_plugin(
                    list,
                    index,
                    CniCommand::Add,
                    Some(attachment),
                    prev.as_ref(),
                    &[],
                )
                .await?;
        }
        Ok(prev.unwrap_or_default())
    }

    /// DEL of every plugin in reverse order, each with the final ADD result (`None` when it
    /// is not known); stops at the first failure, as the specification says.
    #[tracing::instrument(name = "cni.del", skip_all, fields(network = %list.name, container = %attachment.container_id, ifname = %attachment.ifname), err)]
    pub async fn del(
        &self,
        list: &NetworkConfigList,
        attachment: &Attachment,
        result: Option<&CniResult>,
    ) -> Result<(), ChainError> {
        for index in (0..list.plugins.len()).rev() {
            self.run_plugin(list, index, CniCommand::Del, Some(attachment), result, &[])
                .await?;
        }
        Ok(())
    }

    /// CHECK of every plugin in order with the final ADD result; nothing when the list says
    /// `disableCheck`. Plugins spoken to below 0.4.0 have no CHECK and are skipped.
    #[tracing::instrument(name = "cni.check", skip_all, fields(network = %list.name, container = %attachment.container_id, ifname = %attachment.ifname), err)]
    pub async fn check(
        &self,
        list: &NetworkConfigList,
        attachment: &Attachment,
        result: &CniResult,
    ) -> Result<(), ChainError> {
        if list.disable_check {
            return Ok(());
        }
        if !list.version.has_check() {
            return Err(ChainError::Unsupported {
                network: list.name.clone(),
                command: CniCommand::Check,
                version: list.version,
            });
        }
        for index in 0..list.plugins.len() {
            if !self.plugin_version(list, index).await?.has_check() {
                continue;
            }
            self.run_plugin(
                list,
                index,
                CniCommand::Check,
                Some(attachment),
                Some(result),
                &[],
            )
            .await?;
        }
        Ok(())
    }

    /// GC of every plugin that speaks 1.1.0, with the attachments still valid; goes on past
    /// failures and reports them all. Nothing when the list says `disableGC`.
    #[tracing::instrument(name = "cni.gc", skip_all, fields(network = %list.name, valid = valid.len()), err)]
    pub async fn gc(
        &self,
        list: &NetworkConfigList,
        valid: &[ValidAttachment],
    ) -> Result<(), ChainError> {
        if list.disable_gc {
            return Ok(());
        }
        let attachments: Vec<Value> = valid
            .iter()
            .map(|a| serde_json::json!({"containerID": a.container_id, "ifname": a.ifname}))
            .collect();
        let extra = [("cni.dev/valid-attachments", Value::Array(attachments))];
        self.to_every_plugin(list, CniCommand::Gc, &extra).await
    }

    /// STATUS of every plugin that speaks 1.1.0; goes on past failures and reports them all.
    #[tracing::instrument(name = "cni.status", skip_all, fields(network = %list.name), err)]
    pub async fn status(&self, list: &NetworkConfigList) -> Result<(), ChainError> {
        self.to_every_plugin(list, CniCommand::Status, &[]).await
    }

    async fn to_every_plugin(
        &self,
        list: &NetworkConfigList,
        command: CniCommand,
        extra: &[(&str, Value)],
    ) -> Result<(), ChainError> {
        if !list.version.has_status_and_gc() {
            return Err(ChainError::Unsupported {
                network: list.name.clone(),
                command,
                version: list.version,
            });
        }
        let mut failures = Vec::new();
        for index in 0..list.plugins.len() {
            match self.plugin_version(list, index).await {
                Ok(v) if v.has_status_and_gc() => {}
                Ok(_) => continue,
                Err(e) => {
                    failures.push(e);
                    continue;
                }
            }
            if let Err(e) = self
                .run_plugin(list, index, command, None, None, extra)
                .await
            {
                failures.push(e);
            }
        }
        match Failures::from_vec(failures) {
            None => Ok(()),
            Some(failures) => Err(ChainError::Several {
                network: list.name.clone(),
                command,
                failures,
            }),
        }
    }
}
