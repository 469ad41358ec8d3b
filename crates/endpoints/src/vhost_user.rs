//! vhost-user discovery, Kata Go's convention (used by the VPP and OVS-DPDK CNM plugins).
//!
//! ## Behavior
//! For each address of an interface, a Unix socket at `<dir>/vhostuser_<IP>/vhu.sock` makes
//! that interface a vhost-user endpoint: the backend serves the socket and the VMM connects
//! to it. `dir` is `/tmp` in Kata ([`DEFAULT_VHOST_USER_DIR`]).
//!
//! ## Limitations
//! Only the socket's existence and file type are checked: nobody connects to it here.

use std::{
    net::IpAddr,
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
};

/// Where Kata Go looks for vhost-user sockets.
pub const DEFAULT_VHOST_USER_DIR: &str = "/tmp";

/// The socket path for `address`: `<dir>/vhostuser_<address>/vhu.sock`.
///
/// The address is formatted as Go's `net.IP.String()` does, which for the common cases is how
/// Rust prints it (dotted IPv4; IPv6 in RFC 5952 form, e.g. `fd00:200::2`). The one
/// difference, an IPv4-mapped IPv6 address, is printed as Go does, as plain IPv4
/// (`10.0.0.1`, not `::ffff:10.0.0.1`).
pub fn vhost_user_socket_path(dir: &Path, address: IpAddr) -> PathBuf {
    let address = match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        IpAddr::V4(_) => address,
    };
    dir.join(format!("vhostuser_{address}")).join("vhu.sock")
}

/// The vhost-user socket of the first address that has one, if any.
///
/// The path must exist and be a Unix socket (symlinks followed); a regular file or directory
/// there does not count (Kata Go only checks that the path exists).
pub fn find_vhost_user_socket(dir: &Path, addresses: &[IpAddr]) -> Option<PathBuf> {
    addresses
        .iter()
        .map(|address| vhost_user_socket_path(dir, *address))
        .find(|path| std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket()))
}
