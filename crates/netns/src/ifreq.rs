//! The `struct ifreq` that interface ioctls (`TUNSETIFF`, `SIOCETHTOOL`, ...) take.

use sandbox_net_persist::IfName;

/// An all-zero `ifreq` whose `ifr_name` is `name`. `IfName` holds at most 15 bytes and no
/// NUL, so the name stays NUL-terminated in the 16-byte field the kernel reads.
pub fn ifreq_named(name: &IfName) -> libc::ifreq {
    // SAFETY: ifreq is plain old data for which all-zero bytes are a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(name.as_str().bytes()) {
        *dst = src as libc::c_char;
    }
    request
}
