//! Executing a plugin by the CNI protocol, as a runtime does: the environment
//! (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`), the
//! request configuration on stdin, the result or the error on stdout.
//!
//! The plugin runs in the runtime's namespace (the node's): the one this process is in, or a
//! namespace given as [`PluginExec::node`], which the child enters before `exec`. Tests use
//! the latter so that the host side of what plugins make (a veth end, a bridge, a sysctl)
//! lands in a namespace of the test, never in the real host.

use std::{
    fmt,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Stdio,
};

use sandbox_net_netns::Netns;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::error::CniError;

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CniCommand {
    /// Add the container to the network (or modify what an earlier plugin made).
    Add,
    /// Undo ADD.
    Del,
    /// Check that what ADD made is as it should be.
    Check,
    /// Say whether ADD can work (1.1.0).
    Status,
    /// Remove what belongs to attachments not in a given list (1.1.0).
    Gc,
    /// Say which versions the plugin speaks.
    Version,
}

impl CniCommand {
    /// The text of `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Status => "STATUS",
            Self::Gc => "GC",
            Self::Version => "VERSION",
        }
    }

    /// Parses `CNI_COMMAND`.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Add,
            Self::Del,
            Self::Check,
            Self::Status,
            Self::Gc,
            Self::Version,
        ]
        .into_iter()
        .find(|c| c.as_str() == text)
    }

    /// Whether the command acts on one attachment (and so needs `CNI_CONTAINERID`, ...).
    pub fn has_attachment(self) -> bool {
        matches!(self, Self::Add | Self::Del | Self::Check)
    }
}

impl fmt::Display for CniCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parameters of one attachment: `(container id, interface name)` identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: the namespace path (`None`: passed empty, as a DEL after the namespace is
    /// gone may).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, as `K=V` pairs.
    pub args: Vec<(String, String)>,
}

impl Attachment {
    /// `CNI_ARGS` text: `K=V;K=V`.
    pub fn args_text(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// A plugin run that failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// No executable of that name in the search path.
    #[error("CNI plugin {plugin:?} not found in {}", list_dirs(.dirs))]
    NotFound {
        /// The plugin type.
        plugin: String,
        /// Where it was looked for.
        dirs: Vec<PathBuf>,
    },
    /// The process could not be started or fed.
    #[error("cannot run CNI plugin {}", .plugin.display())]
    Spawn {
        /// The executable.
        plugin: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The plugin answered with a CNI error.
    #[error("CNI plugin {} failed {command}: {error}{}", .plugin.display(), stderr_suffix(.stderr))]
    Plugin {
        /// The executable.
        plugin: PathBuf,
        /// The command.
        command: CniCommand,
        /// Its error.
        error: CniError,
        /// What it wrote on stderr.
        stderr: String,
    },
    /// The plugin failed without a CNI error (killed, or garbage on stdout).
    #[error("CNI plugin {} failed {command} ({status}) without a CNI error; stdout {stdout:?}{}", .plugin.display(), stderr_suffix(.stderr))]
    Failed {
        /// The executable.
        plugin: PathBuf,
        /// The command.
        command: CniCommand,
        /// How it ended.
        status: String,
        /// What it wrote on stdout.
        stdout: String,
        /// What it wrote on stderr.
        stderr: String,
    },
    /// The plugin succeeded but its output is not JSON.
    #[error("CNI plugin {} succeeded {command} but its output is not JSON: {output:?}", .plugin.display())]
    Output {
        /// The executable.
        plugin: PathBuf,
        /// The command.
        command: CniCommand,
        /// What it printed.
        output: String,
    },
}

impl ExecError {
    /// The plugin's CNI error, if it gave one.
    pub fn cni_error(&self) -> Option<&CniError> {
        match self {
            Self::Plugin { error, .. } => Some(error),
            _ => None,
        }
    }
}

fn list_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        "(no directory: CNI_PATH is empty)".into()
    } else {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }
}

fn stderr_suffix(stderr: &str) -> String {
    let stderr = stderr.trim();
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

/// How plugins are found and started.
#[derive(Debug, Clone, Default)]
pub struct PluginExec {
    /// The directories searched for a plugin's executable, in order (`CNI_PATH`).
    pub search_path: Vec<PathBuf>,
    /// The namespace the plugins start in (the node's); `None`: this process's.
    pub node: Option<Netns>,
    /// More environment for every plugin (`TRACEPARENT`, `TRACESTATE`, ...).
    pub env: Vec<(String, String)>,
}

impl PluginExec {
    /// Plugins searched in `search_path`, started in this process's namespace.
    pub fn new(search_path: Vec<PathBuf>) -> Self {
        Self {
            search_path,
            node: None,
            env: Vec::new(),
        }
    }

    /// A `CNI_PATH`-style list (`dir:dir`) as directories.
    pub fn split_path(text: &str) -> Vec<PathBuf> {
        text.split(':')
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .collect()
    }

    /// The executable of plugin `plugin_type`: the first regular, executable file of that name
    /// in the search path.
    pub fn find(&self, plugin_type: &str) -> Result<PathBuf, ExecError> {
        self.search_path
            .iter()
            .map(|dir| dir.join(plugin_type))
            .find(|path| is_executable(path))
            .ok_or_else(|| ExecError::NotFound {
                plugin: plugin_type.to_string(),
                dirs: self.search_path.clone(),
            })
    }

    /// The process for `plugin` with the protocol's environment set, stdin, stdout and stderr
    /// piped, entering the node namespace when one is set. Callers that need more (a wrapper,
    /// another mount namespace) can change it before spawning it themselves.
    pub fn command(
        &self,
        plugin: &Path,
        command: CniCommand,
        attachment: Option<&Attachment>,
    ) -> std::process::Command {
        let mut cmd = std::process::Command::new(plugin);
        // The protocol's variables come from the invocation alone, never from ours.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CNI_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("CNI_COMMAND", command.as_str());
        cmd.env(
            "CNI_PATH",
            std::env::join_paths(&self.search_path).unwrap_or_default(),
        );
        if let Some(a) = attachment {
            cmd.env("CNI_CONTAINERID", &a.container_id);
            cmd.env(
                "CNI_NETNS",
                a.netns.as_deref().map(Path::as_os_str).unwrap_or_default(),
            );
            cmd.env("CNI_IFNAME", &a.ifname);
            cmd.env("CNI_ARGS", a.args_text());
        }
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(node) = &self.node {
            node.enter_before_exec(&mut cmd);
        }
        cmd
    }

    /// Runs plugin `plugin_type` with `command` for `attachment` and the request
    /// configuration `request` on stdin. Returns what it printed on success (`None` for
    /// nothing, as DEL, CHECK, GC and STATUS do), or its CNI error.
    #[tracing::instrument(name = "cni.exec", skip_all, fields(plugin = plugin_type, command = %command), err)]
    pub async fn exec(
        &self,
        plugin_type: &str,
        command: CniCommand,
        attachment: Option<&Attachment>,
        request: &Value,
    ) -> Result<Option<Value>, ExecError> {
        let plugin = self.find(plugin_type)?;
        let cmd = self.command(&plugin, command, attachment);
        run(cmd, &plugin, command, request).await
    }

    /// The versions plugin `plugin_type` speaks (its VERSION answer's `supportedVersions`).
    pub async fn supported_versions(&self, plugin_type: &str) -> Result<Vec<String>, ExecError> {
        let request = serde_json::json!({"cniVersion": super::CniVersion::LATEST.as_str()});
        let answer = self
            .exec(plugin_type, CniCommand::Version, None, &request)
            .await?;
        let versions = answer
            .as_ref()
            .and_then(|a| a.get("supportedVersions"))
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            });
        versions.ok_or_else(|| ExecError::Output {
            plugin: self.find(plugin_type).unwrap_or_default(),
            command: CniCommand::Version,
            output: answer.map(|a| a.to_string()).unwrap_or_default(),
        })
    }
}

/// Spawns `cmd`, feeds it `request`, and reads its answer.
pub(crate) async fn run(
    cmd: std::process::Command,
    plugin: &Path,
    command: CniCommand,
    request: &Value,
) -> Result<Option<Value>, ExecError> {
    let spawn_error = |source| ExecError::Spawn {
        plugin: plugin.to_path_buf(),
        source,
    };
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        let bytes = request.to_string();
        // A plugin that exits without reading its stdin (VERSION may) closes the pipe: that
        // is not a failure of ours, its exit status says how it went.
        if let Err(e) = stdin.write_all(bytes.as_bytes()).await
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            return Err(spawn_error(e));
        }
    }
    let output = child.wait_with_output().await.map_err(spawn_error)?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !stderr.trim().is_empty() {
        tracing::debug!(plugin = %plugin.display(), %command, stderr = stderr.trim(), "plugin stderr");
    }
    if output.status.success() {
        if stdout.trim().is_empty() {
            return Ok(None);
        }
        return serde_json::from_str(&stdout)
            .map(Some)
            .map_err(|_| ExecError::Output {
                plugin: plugin.to_path_buf(),
                command,
                output: stdout,
            });
    }
    match serde_json::from_str::<CniError>(&stdout) {
        Ok(error) => Err(ExecError::Plugin {
            plugin: plugin.to_path_buf(),
            command,
            error,
            stderr,
        }),
        Err(_) => Err(ExecError::Failed {
            plugin: plugin.to_path_buf(),
            command,
            status: output.status.to_string(),
            stdout,
            stderr,
        }),
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
