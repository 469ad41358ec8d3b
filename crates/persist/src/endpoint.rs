//! Endpoint identity and kinds.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An endpoint's own identity: random, persisted, never derived from a MAC or a position.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EndpointId(String);

/// A string that is not an endpoint id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an endpoint id (expected 16 lowercase hex digits)")]
pub struct EndpointIdError(pub String);

impl EndpointId {
    /// Wraps 8 random bytes as 16 hex digits.
    pub fn from_bytes(bytes: [u8; 8]) -> Self {
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EndpointId {
    type Error = EndpointIdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        if value.len() == 16
            && value
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(value))
        } else {
            Err(EndpointIdError(value))
        }
    }
}

impl From<EndpointId> for String {
    fn from(value: EndpointId) -> Self {
        value.0
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EndpointId({})", self.0)
    }
}

/// What kind of interface an endpoint is, which decides how it reaches the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    /// A veth (or a generic device): paired with a tap or macvtap by the configured model.
    Veth,
    /// A macvlan: paired by the configured model.
    Macvlan,
    /// An ipvlan: always paired by tcfilter (it cannot host a macvtap).
    Ipvlan,
    /// An L2-mode netkit (Cilium's netkit datapath): paired by the configured model, as a
    /// veth. An L3-mode netkit has no Ethernet header and is not an endpoint.
    Netkit,
    /// A macvtap that already exists: its queues are opened and handed over directly.
    Macvtap,
    /// A tap added through the hot-plug API: a fresh `tap{idx}_kata` is made for it.
    Tap,
    /// A tap-mode tun device found in the namespace: paired by the configured model.
    Tuntap,
    /// A PCI network function handed to the VM through VFIO.
    Physical,
    /// An interface served by a vhost-user backend (OVS-DPDK, VPP) through a socket.
    VhostUser,
}

impl fmt::Display for EndpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Veth => "veth",
            Self::Macvlan => "macvlan",
            Self::Ipvlan => "ipvlan",
            Self::Netkit => "netkit",
            Self::Macvtap => "macvtap",
            Self::Tap => "tap",
            Self::Tuntap => "tuntap",
            Self::Physical => "physical",
            Self::VhostUser => "vhost_user",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sixteen_hex_digits() {
        let id = EndpointId::from_bytes([0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3]);
        assert_eq!(id.as_str(), "deadbeef00010203");
        assert_eq!(
            serde_json::from_str::<EndpointId>("\"deadbeef00010203\"").unwrap(),
            id
        );
        let err = serde_json::from_str::<EndpointId>("\"02:00:00:00:00:01\"").unwrap_err();
        assert!(err.to_string().contains("is not an endpoint id"), "{err}");
    }

    #[test]
    fn kinds_serialize_snake_case() {
        assert_eq!(
            serde_json::to_string(&EndpointKind::VhostUser).unwrap(),
            "\"vhost_user\""
        );
        assert_eq!(EndpointKind::VhostUser.to_string(), "vhost_user");
    }
}
