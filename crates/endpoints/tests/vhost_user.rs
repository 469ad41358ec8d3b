//! vhost-user discovery against real Unix sockets in a temporary directory.
#![allow(clippy::unwrap_used)]

use std::{fs, net::IpAddr, os::unix::net::UnixListener, path::Path};

use sandbox_net_endpoints::vhost_user::{
    DEFAULT_VHOST_USER_DIR, find_vhost_user_socket, vhost_user_socket_path,
};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Binds a listening socket at `<dir>/vhostuser_<ip>/vhu.sock`: a stand-in for the socket an
/// OVS-DPDK or VPP vhost-user backend serves.
fn stand_in_backend(dir: &Path, ip: &str) -> UnixListener {
    let sub = dir.join(format!("vhostuser_{ip}"));
    fs::create_dir(&sub).unwrap();
    UnixListener::bind(sub.join("vhu.sock")).unwrap()
}

#[test]
fn a_socket_for_one_of_the_addresses_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let _backend = stand_in_backend(dir.path(), "10.200.0.2");
    let expected = dir.path().join("vhostuser_10.200.0.2/vhu.sock");
    assert_eq!(
        find_vhost_user_socket(dir.path(), &[ip("10.200.0.2")]),
        Some(expected.clone())
    );
    // The first address with a socket wins, wherever it is in the list.
    assert_eq!(
        find_vhost_user_socket(dir.path(), &[ip("fd00:200::2"), ip("10.200.0.2")]),
        Some(expected)
    );
}

#[test]
fn no_socket_for_other_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let _backend = stand_in_backend(dir.path(), "10.200.0.2");
    assert_eq!(
        find_vhost_user_socket(dir.path(), &[ip("10.200.0.3")]),
        None
    );
    assert_eq!(find_vhost_user_socket(dir.path(), &[]), None);
}

#[test]
fn a_regular_file_or_directory_is_not_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("vhostuser_10.200.0.2");
    fs::create_dir(&sub).unwrap();
    fs::write(sub.join("vhu.sock"), "").unwrap();
    assert_eq!(
        find_vhost_user_socket(dir.path(), &[ip("10.200.0.2")]),
        None
    );
    fs::remove_file(sub.join("vhu.sock")).unwrap();
    fs::create_dir(sub.join("vhu.sock")).unwrap();
    assert_eq!(
        find_vhost_user_socket(dir.path(), &[ip("10.200.0.2")]),
        None
    );
}

#[test]
fn ipv6_addresses_are_spelled_as_go_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let _backend = stand_in_backend(dir.path(), "fd00:200::2");
    assert_eq!(
        find_vhost_user_socket(dir.path(), &[ip("10.200.0.2"), ip("fd00:200:0::0002")]),
        Some(dir.path().join("vhostuser_fd00:200::2/vhu.sock"))
    );
    // Go prints an IPv4-mapped address as plain IPv4.
    assert_eq!(
        vhost_user_socket_path(Path::new("/tmp"), ip("::ffff:10.0.0.1")),
        Path::new("/tmp/vhostuser_10.0.0.1/vhu.sock")
    );
    assert_eq!(
        vhost_user_socket_path(Path::new(DEFAULT_VHOST_USER_DIR), ip("2001:db8::1:0:0:1")),
        Path::new("/tmp/vhostuser_2001:db8::1:0:0:1/vhu.sock")
    );
}
