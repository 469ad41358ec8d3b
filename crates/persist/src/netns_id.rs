//! The identity of a network namespace.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A network namespace's identity: the device and inode of its nsfs file. Two paths name the
/// same namespace exactly when their identities are equal; a path alone proves nothing (a
/// name can be deleted and reused for another namespace).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetnsId {
    /// `st_dev` of the namespace file.
    pub dev: u64,
    /// `st_ino` of the namespace file, as `ls -iL /proc/self/ns/net` prints it.
    pub ino: u64,
}

impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}] (dev {})", self.ino, self.dev)
    }
}

impl fmt::Debug for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
