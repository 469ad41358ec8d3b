//! What one invocation of the plugin is asked: the environment and the request configuration,
//! checked, with every problem a CNI error naming the variable or field.

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::cni::{
    CniVersion,
    config::{named_versions, network_name, valid_network_name},
    error::{CniError, code},
    exec::CniCommand,
    result::CniResult,
};
use sandbox_net_interworking::InterworkingModel;
use sandbox_net_persist::IfName;

/// Where attachment state lives unless the configuration says `stateDir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cni/sandbox-net";

/// `CNI_ARGS` keys of tc-redirect-tap, honoured for its users.
pub const ARG_TAP_NAME: &str = "TC_REDIRECT_TAP_NAME";
/// The tap owner's uid.
pub const ARG_TAP_UID: &str = "TC_REDIRECT_TAP_UID";
/// The tap owner's gid.
pub const ARG_TAP_GID: &str = "TC_REDIRECT_TAP_GID";

/// The protocol's environment variables, as read (unchecked).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Option<String>,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`.
    pub args: Option<String>,
    /// `CNI_PATH`.
    pub path: Option<String>,
    /// `TRACEPARENT`: the runtime's span, to continue as the parent of the plugin's.
    pub traceparent: Option<String>,
    /// `TRACESTATE`.
    pub tracestate: Option<String>,
}

impl CniEnv {
    /// Reads the variables through `lookup` (the process environment, or a test's map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            command: lookup("CNI_COMMAND"),
            container_id: lookup("CNI_CONTAINERID"),
            netns: lookup("CNI_NETNS"),
            ifname: lookup("CNI_IFNAME"),
            args: lookup("CNI_ARGS"),
            path: lookup("CNI_PATH"),
            traceparent: lookup("TRACEPARENT"),
            tracestate: lookup("TRACESTATE"),
        }
    }

    /// Reads this process's environment.
    pub fn from_process() -> Self {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// `CNI_COMMAND`, checked.
    pub fn command(&self) -> Result<CniCommand, CniError> {
        match self.command.as_deref() {
            None | Some("") => Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                "CNI_COMMAND is not set",
            )),
            Some(text) => CniCommand::parse(text).ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!(
                        "CNI_COMMAND={text:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
                    ),
                )
            }),
        }
    }
}

/// The attachment an ADD, DEL or CHECK is about, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentEnv {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: IfName,
    /// `CNI_NETNS` (`None` when empty: DEL after the namespace is gone).
    pub netns: Option<PathBuf>,
    /// `CNI_ARGS`.
    pub args: Vec<(String, String)>,
}

impl AttachmentEnv {
    /// Checks the attachment variables; `CNI_NETNS` is required unless `netns_optional`.
    pub fn from_env(env: &CniEnv, netns_optional: bool) -> Result<Self, CniError> {
        let invalid = |msg: String| CniError::new(code::INVALID_ENVIRONMENT, msg);
        let container_id = match env.container_id.as_deref() {
            None | Some("") => return Err(invalid("CNI_CONTAINERID is not set".into())),
            Some(id) if valid_network_name(id) => id.to_string(),
            Some(id) => {
                return Err(invalid(format!(
                    "CNI_CONTAINERID={id:?} must start with a letter or digit, followed by letters, digits, '_', '.' or '-'"
                )));
            }
        };
        let ifname = match env.ifname.as_deref() {
            None | Some("") => return Err(invalid("CNI_IFNAME is not set".into())),
            Some(name) => IfName::new(name).map_err(|e| {
                invalid(format!("CNI_IFNAME={name:?} is not an interface name: {e}"))
            })?,
        };
        let netns = match env.netns.as_deref() {
            None | Some("") if netns_optional => None,
            None | Some("") => return Err(invalid("CNI_NETNS is not set".into())),
            Some(path) => Some(PathBuf::from(path)),
        };
        let args = parse_args(env.args.as_deref().unwrap_or_default())?;
        Ok(Self {
            container_id,
            ifname,
            netns,
            args,
        })
    }

    /// The value of `CNI_ARGS` key `key`.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `CNI_ARGS`: `K=V` pairs separated by `;`.
pub fn parse_args(text: &str) -> Result<Vec<(String, String)>, CniError> {
    text.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
            )),
        })
        .collect()
}

/// The plugin's configuration, read from the request.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// The version spoken (the result is written in it).
    pub version: CniVersion,
    /// `name`: the network.
    pub network: String,
    /// `model`: `tcfilter` (default) or `macvtap`.
    pub model: InterworkingModel,
    /// `queues`: queue pairs of each tap (default 1).
    pub queues: usize,
    /// `rxRate`: host-side limit into the VM, bits/s (0: none).
    pub rx_rate: u64,
    /// `txRate`: host-side limit out of the VM, bits/s (0: none).
    pub tx_rate: u64,
    /// `tapOwner`: the uid allowed to open the taps (a jailed VMM).
    pub tap_owner: Option<u32>,
    /// `tapGroup`: the gid allowed to open the taps.
    pub tap_group: Option<u32>,
    /// `allInterfaces`: wire every interface of `prevResult` in the namespace, not only
    /// `CNI_IFNAME`.
    pub all_interfaces: bool,
    /// `stateDir`: where attachments are recorded (default [`DEFAULT_STATE_DIR`]).
    pub state_dir: PathBuf,
    /// `prevResult`, read in its own version.
    pub prev_result: Option<CniResult>,
    /// `cni.dev/valid-attachments` (GC): `(containerID, ifname)`.
    pub valid_attachments: Option<Vec<(String, String)>>,
}

/// Reads the request's version: its `cniVersion` when spoken, else the highest of its
/// `cniVersions` spoken. The result is written in it.
pub fn request_version(map: &Map<String, Value>) -> Result<CniVersion, CniError> {
    let named = named_versions(map).map_err(|(field, reason)| {
        CniError::new(code::INVALID_CONFIG, format!("{field}: {reason}"))
    })?;
    if let Some(v) = named.first().and_then(|v| v.parse().ok()) {
        return Ok(v);
    }
    CniVersion::select(None, named.iter().map(String::as_str)).ok_or_else(|| {
        CniError {
            code: code::INCOMPATIBLE_VERSION,
            msg: "incompatible CNI versions".into(),
            details: format!(
                "config is {named:?}, sandbox-net-cni supports [\"0.3.0\" \"0.3.1\" \"0.4.0\" \"1.0.0\" \"1.1.0\"]"
            ),
        }
    })
}

/// Parses stdin as a JSON object.
pub fn parse_stdin(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(CniError::new(
            code::DECODE,
            format!("the configuration on stdin is not a JSON object: {other}"),
        )),
        Err(e) => Err(CniError::caused(
            code::DECODE,
            "the configuration on stdin is not valid JSON",
            &e,
        )),
    }
}

impl PluginConfig {
    /// Reads the configuration of a request (whose version is `version`).
    pub fn from_request(map: &Map<String, Value>, version: CniVersion) -> Result<Self, CniError> {
        let bad = |field: &str, reason: String| {
            CniError::new(code::INVALID_CONFIG, format!("{field}: {reason}"))
        };
        let network = network_name(map).map_err(|reason| bad("name", reason))?;
        let model = match map.get("model") {
            None | Some(Value::Null) => InterworkingModel::TcFilter,
            Some(Value::String(m)) => match m.parse::<InterworkingModel>() {
                Ok(model @ (InterworkingModel::TcFilter | InterworkingModel::Macvtap)) => model,
                _ => {
                    return Err(bad(
                        "model",
                        format!("{m:?} is not \"tcfilter\" or \"macvtap\""),
                    ));
                }
            },
            Some(other) => return Err(bad("model", format!("expected a string, found {other}"))),
        };
        let number = |key: &str, max: u64| -> Result<Option<u64>, CniError> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(v) if v <= max => Ok(Some(v)),
                    _ => Err(bad(key, format!("{n} is not an integer from 0 to {max}"))),
                },
                Some(other) => Err(bad(key, format!("expected a number, found {other}"))),
            }
        };
        let queues = number("queues", sandbox_net_netns::MAX_TAP_QUEUES as u64)?.unwrap_or(1);
        if queues == 0 {
            return Err(bad("queues", "0 is not an integer from 1 to 256".into()));
        }
        let rx_rate = number("rxRate", u64::MAX)?.unwrap_or(0);
        let tx_rate = number("txRate", u64::MAX)?.unwrap_or(0);
        let id = |key: &str| -> Result<Option<u32>, CniError> {
            Ok(number(key, u32::MAX as u64)?.map(|v| v as u32))
        };
        let tap_owner = id("tapOwner")?;
        let tap_group = id("tapGroup")?;
        let all_interfaces = match map.get("allInterfaces") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(bad(
                    "allInterfaces",
                    format!("expected true or false, found {other}"),
                ));
            }
        };
        let state_dir = match map.get("stateDir") {
            None | Some(Value::Null) => PathBuf::from(DEFAULT_STATE_DIR),
            Some(Value::String(d)) if d.starts_with('/') => PathBuf::from(d),
            Some(other) => {
                return Err(bad(
                    "stateDir",
                    format!("expected an absolute path, found {other}"),
                ));
            }
        };
        let prev_result = match map.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(prev) => {
                // A prevResult without its own cniVersion is in the request's.
                let read = match prev.get("cniVersion") {
                    Some(_) => CniResult::from_json("prevResult", prev).map(|(_, r)| r),
                    None => CniResult::from_json_as("prevResult", prev, version),
                };
                Some(read.map_err(|e| {
                    CniError::caused(code::INVALID_CONFIG, "prevResult cannot be read", &e)
                })?)
            }
        };
        let valid_attachments = match map.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => None,
            Some(Value::Array(list)) => {
                let mut valid = Vec::new();
                for (i, item) in list.iter().enumerate() {
                    let field = |k: &str| item.get(k).and_then(Value::as_str).map(String::from);
                    match (field("containerID"), field("ifname")) {
                        (Some(c), Some(i)) => valid.push((c, i)),
                        _ => {
                            return Err(bad(
                                &format!("cni.dev/valid-attachments[{i}]"),
                                format!(
                                    "expected {{\"containerID\": ..., \"ifname\": ...}}, found {item}"
                                ),
                            ));
                        }
                    }
                }
                Some(valid)
            }
            Some(other) => {
                return Err(bad(
                    "cni.dev/valid-attachments",
                    format!("expected a list, found {other}"),
                ));
            }
        };
        Ok(Self {
            version,
            network,
            model,
            queues: queues as usize,
            rx_rate,
            tx_rate,
            tap_owner,
            tap_group,
            all_interfaces,
            state_dir,
            prev_result,
            valid_attachments,
        })
    }

    /// What DEL needs alone, `name` and `stateDir`, read from a request whose other fields may
    /// be invalid; the rest takes default values.
    pub fn for_del(map: &Map<String, Value>, version: CniVersion) -> Result<Self, CniError> {
        let mut only = Map::new();
        for key in ["name", "stateDir"] {
            if let Some(v) = map.get(key) {
                only.insert(key.to_string(), v.clone());
            }
        }
        Self::from_request(&only, version)
    }

    /// The directory of this network's attachments.
    pub fn network_dir(&self) -> PathBuf {
        self.state_dir.join(&self.network)
    }

    /// The state file of attachment `(container_id, ifname)`:
    /// `<stateDir>/<network>/<container id>/<ifname>.json`.
    pub fn state_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.network_dir()
            .join(container_id)
            .join(format!("{ifname}.json"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn the_version_is_the_requests_when_spoken_else_the_highest_of_cni_versions() {
        assert_eq!(
            request_version(&map(json!({"cniVersion": "0.3.1"}))),
            Ok(CniVersion::V0_3_1)
        );
        assert_eq!(
            request_version(&map(
                json!({"cniVersion": "2.0.0", "cniVersions": ["0.4.0", "1.0.0", "2.0.0"]})
            )),
            Ok(CniVersion::V1_0_0)
        );
        let err = request_version(&map(json!({"cniVersion": "0.2.0"}))).unwrap_err();
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
        assert!(err.details.contains("0.2.0"), "{err:?}");
        assert_eq!(
            request_version(&map(json!({}))).unwrap_err().code,
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn configuration_fields_are_checked_and_named() {
        let base = json!({"cniVersion": "1.0.0", "name": "n", "type": "sandbox-net-cni"});
        let ok = PluginConfig::from_request(&map(base.clone()), CniVersion::V1_0_0).unwrap();
        assert_eq!(ok.model, InterworkingModel::TcFilter);
        assert_eq!(ok.queues, 1);
        assert_eq!(
            ok.state_path("c1", "eth0"),
            PathBuf::from("/var/lib/cni/sandbox-net/n/c1/eth0.json")
        );
        for (field, value, expected) in [
            ("model", json!("none"), "model: \"none\" is not"),
            ("queues", json!(0), "queues: 0"),
            ("queues", json!(300), "queues: 300"),
            ("rxRate", json!(-1), "rxRate: -1"),
            (
                "stateDir",
                json!("relative"),
                "stateDir: expected an absolute path",
            ),
            (
                "allInterfaces",
                json!("yes"),
                "allInterfaces: expected true or false",
            ),
            (
                "prevResult",
                json!({"cniVersion": "1.0.0", "ips": [{"address": "x"}]}),
                "prevResult cannot be read",
            ),
            (
                "cni.dev/valid-attachments",
                json!([{"containerID": "a"}]),
                "cni.dev/valid-attachments[0]",
            ),
        ] {
            let mut bad = base.clone();
            bad[field] = value;
            let err = PluginConfig::from_request(&map(bad), CniVersion::V1_0_0).unwrap_err();
            assert_eq!(err.code, code::INVALID_CONFIG, "{field}");
            assert!(
                err.msg.starts_with(expected),
                "{field}: {:?} should start with {expected:?}",
                err.msg
            );
        }
    }

    #[test]
    fn the_environment_is_checked_and_named() {
        let env = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            CniEnv::from_lookup(|key| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
        };
        assert_eq!(
            env(&[]).command().unwrap_err().msg,
            "CNI_COMMAND is not set"
        );
        assert!(
            env(&[("CNI_COMMAND", "PUT")])
                .command()
                .unwrap_err()
                .msg
                .contains("\"PUT\"")
        );
        let full = [
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_ARGS", "IgnoreUnknown=1;TC_REDIRECT_TAP_NAME=tap7"),
        ];
        let a = AttachmentEnv::from_env(&env(&full), false).unwrap();
        assert_eq!(a.arg(ARG_TAP_NAME), Some("tap7"));
        for (drop, expected) in [
            ("CNI_CONTAINERID", "CNI_CONTAINERID is not set"),
            ("CNI_IFNAME", "CNI_IFNAME is not set"),
            ("CNI_NETNS", "CNI_NETNS is not set"),
        ] {
            let partial: Vec<(&str, &str)> =
                full.iter().copied().filter(|(k, _)| *k != drop).collect();
            let err = AttachmentEnv::from_env(&env(&partial), false).unwrap_err();
            assert_eq!(
                (err.code, err.msg.as_str()),
                (code::INVALID_ENVIRONMENT, expected)
            );
        }
        let no_netns: Vec<(&str, &str)> = full
            .iter()
            .copied()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        assert_eq!(
            AttachmentEnv::from_env(&env(&no_netns), true)
                .unwrap()
                .netns,
            None
        );
        let bad_args = [
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "A=1;B"),
        ];
        assert_eq!(
            AttachmentEnv::from_env(&env(&bad_args), true)
                .unwrap_err()
                .msg,
            "CNI_ARGS: \"B\" is not KEY=VALUE"
        );
        let bad_id = [("CNI_CONTAINERID", "../x"), ("CNI_IFNAME", "eth0")];
        assert!(
            AttachmentEnv::from_env(&env(&bad_id), true)
                .unwrap_err()
                .msg
                .starts_with("CNI_CONTAINERID=\"../x\"")
        );
    }
}
