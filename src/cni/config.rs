//! Network configurations: a list of plugins (a `.conflist`) as an administrator writes it, and
//! the request configuration one plugin gets on stdin.

use std::path::Path;

use serde_json::{Map, Value};

use super::version::CniVersion;

/// A network configuration that cannot be used: names the file or field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read network configuration {path}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not JSON.
    #[error("network configuration {what} is not JSON")]
    Json {
        /// The file or `stdin`.
        what: String,
        /// Where the parser stopped.
        #[source]
        source: serde_json::Error,
    },
    /// A field is missing or wrong.
    #[error("network configuration {what}: {field}: {reason}")]
    Field {
        /// The file or `stdin`.
        what: String,
        /// The field (`plugins[1].type`).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// None of the versions named is one this module speaks.
    #[error(
        "network configuration {what}: none of the CNI versions {named:?} is supported (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)"
    )]
    Version {
        /// The file or `stdin`.
        what: String,
        /// `cniVersion` and `cniVersions`.
        named: Vec<String>,
    },
}

/// A network configuration: `name`, the versions it is written for, and its plugins in order.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    /// `name`: the network's name (host-local keeps its leases under it).
    pub name: String,
    /// The version chosen: the highest of `cniVersion` and `cniVersions` this module speaks.
    pub version: CniVersion,
    /// `disableCheck`: CHECK is not to be run.
    pub disable_check: bool,
    /// `disableGC`: GC is not to be run.
    pub disable_gc: bool,
    /// `plugins`, each as written (`type` and its own fields).
    pub plugins: Vec<Map<String, Value>>,
}

impl NetworkConfigList {
    /// Reads a configuration file: a `.conflist` (with `plugins`), or a single plugin's
    /// configuration (with `type`), which is a list of one.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_slice(&path.display().to_string(), &bytes)
    }

    /// Reads a configuration from bytes; `what` names them in errors.
    pub fn from_slice(what: &str, bytes: &[u8]) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|source| ConfigError::Json {
            what: what.to_string(),
            source,
        })?;
        Self::from_value(what, &value)
    }

    /// Reads a configuration from JSON.
    pub fn from_value(what: &str, value: &Value) -> Result<Self, ConfigError> {
        let bad = |field: &str, reason: String| ConfigError::Field {
            what: what.to_string(),
            field: field.to_string(),
            reason,
        };
        let Value::Object(map) = value else {
            return Err(bad("(top level)", "expected an object".into()));
        };
        let name = network_name(map).map_err(|reason| bad("name", reason))?;
        let named = named_versions(map).map_err(|(field, reason)| bad(&field, reason))?;
        let version = CniVersion::select(
            named.first().map(String::as_str),
            named.iter().skip(1).map(String::as_str),
        )
        .ok_or_else(|| ConfigError::Version {
            what: what.to_string(),
            named: named.clone(),
        })?;
        let flag = |key: &str| match map.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(bad(key, format!("expected true or false, found {other}"))),
        };
        let disable_check = flag("disableCheck")?;
        let disable_gc = flag("disableGC")?;
        let plugins = match (map.get("plugins"), map.get("type")) {
            (Some(Value::Array(list)), _) => list
                .iter()
                .enumerate()
                .map(|(i, p)| match p {
                    Value::Object(p) => Ok(p.clone()),
                    other => Err(bad(
                        &format!("plugins[{i}]"),
                        format!("expected an object, found {other}"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
            (Some(other), _) => {
                return Err(bad("plugins", format!("expected a list, found {other}")));
            }
            // A single plugin's configuration: the whole object is the plugin.
            (None, Some(_)) => vec![map.clone()],
            (None, None) => return Err(bad("plugins", "missing (and no \"type\" either)".into())),
        };
        if plugins.is_empty() {
            return Err(bad("plugins", "empty".into()));
        }
        for (i, plugin) in plugins.iter().enumerate() {
            match plugin.get("type") {
                Some(Value::String(t)) if valid_plugin_type(t) => {}
                Some(Value::String(t)) => {
                    return Err(bad(
                        &format!("plugins[{i}].type"),
                        format!("{t:?} is not a plugin name (no '/', not empty)"),
                    ));
                }
                Some(other) => {
                    return Err(bad(
                        &format!("plugins[{i}].type"),
                        format!("expected a string, found {other}"),
                    ));
                }
                None => return Err(bad(&format!("plugins[{i}].type"), "missing".into())),
            }
        }
        Ok(Self {
            name,
            version,
            disable_check,
            disable_gc,
            plugins,
        })
    }

    /// The `type` of plugin `index`.
    pub fn plugin_type(&self, index: usize) -> &str {
        self.plugins
            .get(index)
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The request configuration of plugin `index` for `version`: the plugin's own fields,
    /// `cniVersion` and `name` inserted, `capabilities` removed (no capability arguments are
    /// passed), `prevResult` when given. Other fields pass unchanged.
    pub fn request(&self, index: usize, version: CniVersion, prev_result: Option<Value>) -> Value {
        let mut request = self.plugins.get(index).cloned().unwrap_or_default();
        request.remove("capabilities");
        request.insert("cniVersion".into(), version.as_str().into());
        request.insert("name".into(), self.name.clone().into());
        match prev_result {
            Some(prev) => {
                request.insert("prevResult".into(), prev);
            }
            None => {
                request.remove("prevResult");
            }
        }
        Value::Object(request)
    }
}

/// `cniVersion` (first) and then `cniVersions` of a configuration object.
pub(crate) fn named_versions(map: &Map<String, Value>) -> Result<Vec<String>, (String, String)> {
    let mut named = Vec::new();
    match map.get("cniVersion") {
        Some(Value::String(v)) => named.push(v.clone()),
        None | Some(Value::Null) => {}
        Some(other) => {
            return Err((
                "cniVersion".into(),
                format!("expected a string, found {other}"),
            ));
        }
    }
    match map.get("cniVersions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (i, v) in list.iter().enumerate() {
                match v {
                    Value::String(v) => named.push(v.clone()),
                    other => {
                        return Err((
                            format!("cniVersions[{i}]"),
                            format!("expected a string, found {other}"),
                        ));
                    }
                }
            }
        }
        Some(other) => {
            return Err((
                "cniVersions".into(),
                format!("expected a list, found {other}"),
            ));
        }
    }
    if named.is_empty() {
        return Err(("cniVersion".into(), "missing".into()));
    }
    Ok(named)
}

/// The `name` of a network configuration, checked against [`valid_network_name`]; otherwise
/// why not, for the caller to report against the field `name`.
pub(crate) fn network_name(map: &Map<String, Value>) -> Result<String, String> {
    match map.get("name") {
        Some(Value::String(n)) if valid_network_name(n) => Ok(n.clone()),
        Some(Value::String(n)) => Err(format!(
            "{n:?} must start with a letter or digit, followed by letters, digits, '_', '.' or '-'"
        )),
        Some(other) => Err(format!("expected a string, found {other}")),
        None => Err("missing".into()),
    }
}

/// The specification's rule for network names (and container ids): a letter or digit, then
/// letters, digits, `_`, `.` or `-`.
pub(crate) fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn valid_plugin_type(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_conflist_chooses_its_highest_spoken_version() {
        let list = NetworkConfigList::from_value(
            "t",
            &json!({"cniVersion": "1.0.0", "cniVersions": ["0.4.0", "1.1.0", "9.9.9"], "name": "n1",
                    "plugins": [{"type": "ptp", "capabilities": {"mac": true}}, {"type": "sandbox-net-cni"}]}),
        )
        .unwrap();
        assert_eq!(list.version, CniVersion::V1_1_0);
        assert_eq!(list.plugin_type(1), "sandbox-net-cni");
        let request = list.request(0, CniVersion::V1_0_0, Some(json!({"cniVersion": "1.0.0"})));
        assert_eq!(
            request,
            json!({"type": "ptp", "cniVersion": "1.0.0", "name": "n1", "prevResult": {"cniVersion": "1.0.0"}})
        );
    }

    #[test]
    fn a_single_plugin_configuration_is_a_list_of_one() {
        let list = NetworkConfigList::from_value(
            "t",
            &json!({"cniVersion": "0.3.1", "name": "n", "type": "bridge", "bridge": "br0"}),
        )
        .unwrap();
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.request(0, list.version, None)["bridge"], "br0");
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let cases = [
            (
                json!({"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}),
                "name: missing",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "-x", "plugins": [{"type": "x"}]}),
                "name: \"-x\"",
            ),
            (
                json!({"cniVersion": "0.2.0", "name": "n", "plugins": [{"type": "x"}]}),
                "none of the CNI versions",
            ),
            (
                json!({"name": "n", "plugins": [{"type": "x"}]}),
                "cniVersion: missing",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../x"}]}),
                "plugins[0].type",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "plugins": []}),
                "plugins: empty",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{}]}),
                "plugins[0].type: missing",
            ),
        ];
        for (input, expected) in cases {
            let err = NetworkConfigList::from_value("t", &input)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }
}
