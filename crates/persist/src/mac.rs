//! Ethernet MAC addresses.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A 48-bit Ethernet address, written `aa:bb:cc:dd:ee:ff` (lowercase) in JSON and in
/// `Display`, as `ip link` prints it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

/// A string that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (expected six hex octets like aa:bb:cc:dd:ee:ff)")]
pub struct MacAddrError(pub String);

impl MacAddr {
    /// The octets.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Builds a MAC from a byte slice as netlink carries it; `None` unless it has 6 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(bytes).ok().map(Self)
    }

    /// True for a locally administered address (bit `0x02` of the first octet).
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// True for a multicast or broadcast address (bit `0x01` of the first octet).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }
}

impl FromStr for MacAddr {
    type Err = MacAddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacAddrError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self(out))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = MacAddrError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<MacAddr> for String {
    fn from(value: MacAddr) -> Self {
        value.to_string()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_and_prints_like_ip() {
        let mac: MacAddr = "02:AB:cd:00:01:ff".parse().unwrap();
        assert_eq!(mac.octets(), [0x02, 0xab, 0xcd, 0x00, 0x01, 0xff]);
        assert_eq!(mac.to_string(), "02:ab:cd:00:01:ff");
        assert!(mac.is_local());
        assert!(!mac.is_multicast());
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "02:ab:cd:00:01",
            "02:ab:cd:00:01:ff:00",
            "2:ab:cd:00:01:ff",
            "zz:ab:cd:00:01:ff",
        ] {
            assert_eq!(bad.parse::<MacAddr>(), Err(MacAddrError(bad.to_string())));
        }
    }

    proptest! {
        #[test]
        fn json_round_trip(octets in any::<[u8; 6]>()) {
            let mac = MacAddr(octets);
            let json = serde_json::to_string(&mac).unwrap();
            prop_assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), mac);
        }
    }
}
