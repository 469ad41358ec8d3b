//! Child processes that start inside a namespace.
//!
//! A runtime executes CNI plugins "in the node's namespace"; tests and a runtime whose node is
//! itself a namespace need the plugin process to start inside that namespace, so that the host
//! side of a veth, a bridge or a sysctl write lands there and never in the real host.

use std::{os::fd::AsRawFd, os::unix::process::CommandExt, process::Command};

use crate::Netns;

impl Netns {
    /// Makes `command`'s child enter this network namespace between `fork` and `exec`
    /// (`setns(fd, CLONE_NEWNET)`, as `ip netns exec` does, without its remount of `/sys`).
    /// The whole child process, every thread it starts, lives in the namespace; the caller's
    /// threads are untouched. If the `setns` fails, the spawn fails with that error.
    pub fn enter_before_exec(&self, command: &mut Command) {
        // The descriptor stays open in the parent for as long as `self` (and its clones) live,
        // which is past the spawn: `fd` is valid in the child when the closure runs.
        let fd = self.shared_fd();
        // SAFETY: the closure runs in the child after fork, where only async-signal-safe calls
        // are allowed: it makes one `setns(2)` system call and reads errno, nothing else (no
        // allocation, no lock). The Arc moved into it is not touched in the child.
        unsafe {
            command.pre_exec(move || {
                // SAFETY: setns on a valid namespace descriptor; a failure is reported by errno.
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
}
