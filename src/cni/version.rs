//! The CNI specification versions this module speaks, and how one is chosen.

use std::{fmt, str::FromStr};

/// A version of the CNI specification that sandbox-net reads and writes: the ones with
/// chaining (`prevResult`), from 0.3.0 on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    /// 0.3.0: results with `interfaces`, `ips` (with `version`), `routes`, `dns`.
    V0_3_0,
    /// 0.3.1: as 0.3.0.
    V0_3_1,
    /// 0.4.0: adds CHECK; results as 0.3.x.
    V0_4_0,
    /// 1.0.0: `ips` lose `version`.
    V1_0_0,
    /// 1.1.0: STATUS and GC; interfaces gain `mtu`, `socketPath`, `pciID`; routes gain
    /// `mtu`, `advmss`, `priority`, `table`, `scope`.
    V1_1_0,
}

impl CniVersion {
    /// Every version this module speaks, oldest first (what VERSION reports).
    pub const ALL: [CniVersion; 5] = [
        Self::V0_3_0,
        Self::V0_3_1,
        Self::V0_4_0,
        Self::V1_0_0,
        Self::V1_1_0,
    ];

    /// The newest one.
    pub const LATEST: CniVersion = Self::V1_1_0;

    /// Its text, as in `cniVersion`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    /// Whether results of this version carry `version` ("4"/"6") in each of `ips`.
    pub fn ips_have_version(self) -> bool {
        self < Self::V1_0_0
    }

    /// Whether this version has the 1.1.0 fields (interface `mtu`, route `mtu`...).
    pub fn has_1_1_fields(self) -> bool {
        self >= Self::V1_1_0
    }

    /// Whether a plugin of this version may be asked to CHECK (0.4.0 on).
    pub fn has_check(self) -> bool {
        self >= Self::V0_4_0
    }

    /// Whether STATUS and GC exist (1.1.0).
    pub fn has_status_and_gc(self) -> bool {
        self >= Self::V1_1_0
    }

    /// The version to speak for a configuration that says `cni_version` and, optionally,
    /// `cni_versions`: the highest of all those named that this module speaks (as the
    /// specification asks a runtime to choose). `None` when it speaks none of them.
    pub fn select<'a>(
        cni_version: Option<&'a str>,
        cni_versions: impl IntoIterator<Item = &'a str>,
    ) -> Option<CniVersion> {
        cni_version
            .into_iter()
            .chain(cni_versions)
            .filter_map(|v| v.parse().ok())
            .max()
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `cniVersion` this module does not speak.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI version {0:?} is not supported (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)")]
pub struct UnsupportedVersion(pub String);

impl FromStr for CniVersion {
    type Err = UnsupportedVersion;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == text)
            .ok_or_else(|| UnsupportedVersion(text.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_and_refuses_others() {
        for v in CniVersion::ALL {
            assert_eq!(v.as_str().parse::<CniVersion>(), Ok(v));
        }
        for bad in ["0.1.0", "0.2.0", "1.2.0", "1.0", "", "v1.0.0"] {
            assert_eq!(
                bad.parse::<CniVersion>(),
                Err(UnsupportedVersion(bad.to_string()))
            );
        }
    }

    #[test]
    fn selection_takes_the_highest_spoken_version() {
        assert_eq!(
            CniVersion::select(Some("1.0.0"), ["0.4.0", "1.1.0", "2.0.0"]),
            Some(CniVersion::V1_1_0)
        );
        assert_eq!(
            CniVersion::select(Some("3.0.0"), ["0.3.1"]),
            Some(CniVersion::V0_3_1)
        );
        assert_eq!(CniVersion::select(Some("0.2.0"), []), None);
        assert_eq!(CniVersion::select(None, []), None);
    }
}
