//! The CNI error result: `{"cniVersion", "code", "msg", "details"}` on stdout with a non-zero
//! exit, and the codes this module uses.

use sandbox_net_netns::error_chain;
use serde::{Deserialize, Serialize};

use super::version::CniVersion;

/// The well-known error codes of the specification (0-99), and sandbox-net-cni's own (100+).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration (the message names key and value).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (the message names them).
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure (reading the configuration from stdin, say).
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (the configuration is not JSON, say).
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: a transient condition (another process holds the attachment).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot service ADD requests.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: not available, and existing attachments may have limited connectivity.
    pub const NOT_AVAILABLE_DEGRADED: u32 = 51;
    /// ADD: the attachment `(CNI_CONTAINERID, CNI_IFNAME)` already exists (DEL it first).
    pub const ATTACHMENT_EXISTS: u32 = 100;
    /// CHECK: no attachment `(CNI_CONTAINERID, CNI_IFNAME)` is recorded.
    pub const NO_ATTACHMENT: u32 = 101;
    /// CHECK: the kernel or the previous result differs from what ADD made (the message names
    /// the difference).
    pub const DRIFT: u32 = 102;
    /// A kernel operation of ADD or DEL failed (ADD was rolled back).
    pub const KERNEL: u32 = 103;
    /// The attachment's state could not be read or written.
    pub const STATE: u32 = 104;
}

/// A CNI error, as a plugin prints it and a runtime reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", details_suffix(.details))]
pub struct CniError {
    /// The code (see [`code`]).
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// The longer story: the whole chain of causes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({details})")
    }
}

impl CniError {
    /// An error with `code` and a message.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// An error with `code` whose message is `msg` and whose details are the whole chain of
    /// `cause`.
    pub fn caused(
        code: u32,
        msg: impl Into<String>,
        cause: &(dyn std::error::Error + 'static),
    ) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: error_chain(cause),
        }
    }

    /// The error as printed on stdout, in `version` (the configuration's, or the newest when
    /// the configuration could not be read).
    pub fn to_json(&self, version: CniVersion) -> serde_json::Value {
        let mut value = serde_json::json!({
            "cniVersion": version.as_str(),
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            value["details"] = self.details.clone().into();
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_prints_the_specification_shape() {
        let e = CniError {
            code: code::INVALID_CONFIG,
            msg: "bad".into(),
            details: "field x".into(),
        };
        assert_eq!(
            e.to_json(CniVersion::V1_0_0),
            serde_json::json!({"cniVersion": "1.0.0", "code": 7, "msg": "bad", "details": "field x"})
        );
        let bare = CniError::new(code::DECODE, "not JSON");
        assert_eq!(
            bare.to_json(CniVersion::V0_3_1),
            serde_json::json!({"cniVersion": "0.3.1", "code": 6, "msg": "not JSON"})
        );
        let read: CniError = serde_json::from_value(
            serde_json::json!({"cniVersion": "1.0.0", "code": 11, "msg": "busy"}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read, CniError::new(11, "busy"));
    }
}
