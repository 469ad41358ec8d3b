//! PCI function addresses, as sysfs and ethtool spell them.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A PCI function's address, `domain:bus:device.function` in hex (e.g. `0000:00:03.0`), as the
/// kernel names it under `/sys/bus/pci/devices` and in ethtool's `bus_info`.
///
/// The domain has 4 to 8 hex digits (the kernel prints at least 4; VMD domains start at
/// `10000`), bus and device 2, the function 1; device at most `1f`, function at most 7.
/// Upper-case hex digits are accepted and stored in lower case, as sysfs spells them.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PciAddress(String);

/// A string that is not a PCI address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid PCI address {0:?}: expected domain:bus:device.function in hex, e.g. 0000:00:03.0")]
pub struct PciAddressError(pub String);

impl PciAddress {
    /// The address as sysfs spells it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PciAddress {
    type Err = PciAddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if is_bdf(text) {
            Ok(Self(text.to_ascii_lowercase()))
        } else {
            Err(PciAddressError(text.to_owned()))
        }
    }
}

/// Checks the `dddd:bb:dd.f` shape and the device and function ranges.
fn is_bdf(text: &str) -> bool {
    let hex = |part: &str, min: usize, max: usize| {
        (min..=max).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_hexdigit())
    };
    let Some((domain, rest)) = text.split_once(':') else {
        return false;
    };
    let Some((bus, rest)) = rest.split_once(':') else {
        return false;
    };
    let Some((device, function)) = rest.split_once('.') else {
        return false;
    };
    hex(domain, 4, 8)
        && hex(bus, 2, 2)
        && hex(device, 2, 2)
        && u8::from_str_radix(device, 16).is_ok_and(|d| d <= 0x1f)
        && matches!(function.as_bytes(), [b'0'..=b'7'])
}

impl TryFrom<String> for PciAddress {
    type Error = PciAddressError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<PciAddress> for String {
    fn from(value: PciAddress) -> Self {
        value.0
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PciAddress({})", self.0)
    }
}
