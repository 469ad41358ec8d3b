//! Interface names as the kernel accepts them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kernel's `IFNAMSIZ` (16) minus the terminating NUL.
pub const IFNAME_MAX_LEN: usize = 15;

/// A network interface name that the kernel would accept: 1 to 15 bytes, no `/`, no
/// whitespace, no NUL, not `.` or `..` (the rules of the kernel's `dev_valid_name`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);

/// Why a string is not a valid interface name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IfNameError {
    /// The name is empty.
    #[error("interface name is empty")]
    Empty,
    /// The name is longer than the kernel allows.
    #[error("interface name {name:?} is {len} bytes long; the kernel allows at most 15")]
    TooLong {
        /// The offending name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The name holds a character the kernel refuses.
    #[error("interface name {name:?} contains {ch:?}, which the kernel refuses")]
    BadCharacter {
        /// The offending name.
        name: String,
        /// The refused character.
        ch: char,
    },
    /// `.` and `..` are refused by the kernel.
    #[error("interface name {0:?} is reserved")]
    Reserved(String),
}

impl IfName {
    /// Checks `name` against the kernel's rules.
    pub fn new(name: impl Into<String>) -> Result<Self, IfNameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(IfNameError::Empty);
        }
        if name.len() > IFNAME_MAX_LEN {
            let len = name.len();
            return Err(IfNameError::TooLong { name, len });
        }
        if name == "." || name == ".." {
            return Err(IfNameError::Reserved(name));
        }
        if let Some(ch) = name
            .chars()
            .find(|c| *c == '/' || *c == ':' || *c == '\0' || c.is_whitespace())
        {
            return Err(IfNameError::BadCharacter { name, ch });
        }
        Ok(Self(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IfName {
    type Error = IfNameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<&str> for IfName {
    type Error = IfNameError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<IfName> for String {
    fn from(value: IfName) -> Self {
        value.0
    }
}

impl AsRef<str> for IfName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kernel_names() {
        for ok in ["eth0", "tap0_kata", "a", "123456789012345", "veth-x.1"] {
            assert_eq!(IfName::new(ok).map(String::from), Ok(ok.to_string()));
        }
    }

    #[test]
    fn refuses_what_the_kernel_refuses() {
        assert_eq!(IfName::new(""), Err(IfNameError::Empty));
        assert_eq!(
            IfName::new("1234567890123456"),
            Err(IfNameError::TooLong {
                name: "1234567890123456".into(),
                len: 16
            })
        );
        assert_eq!(IfName::new(".."), Err(IfNameError::Reserved("..".into())));
        assert_eq!(
            IfName::new("a/b"),
            Err(IfNameError::BadCharacter {
                name: "a/b".into(),
                ch: '/'
            })
        );
        assert_eq!(
            IfName::new("a b"),
            Err(IfNameError::BadCharacter {
                name: "a b".into(),
                ch: ' '
            })
        );
    }

    #[test]
    fn too_long_name_in_json_is_an_error_naming_it() {
        let err = serde_json::from_str::<IfName>("\"waytoolongname0123\"").unwrap_err();
        assert!(err.to_string().contains("waytoolongname0123"), "{err}");
    }
}
