//! Starting a program (a VMM) inside a namespace, handing it chosen descriptors.
//!
//! A VMM that is given its queue descriptors needs them open across `exec`, at the numbers it
//! is told on its command line. Between `fork` and `exec`, the child marks every descriptor
//! above the standard streams close-on-exec (`close_range(CLOSE_RANGE_CLOEXEC)`: this also
//! covers descriptors the process inherited without the flag, such as a build tool's
//! jobserver pipe), then clears `FD_CLOEXEC` on exactly the descriptors handed over and on
//! nothing else: other descriptors of the process (netlink sockets, namespace files,
//! state-file locks) never reach the VMM. The child also enters the namespace there, so the
//! VMM's own sockets and any device it opens by name are the sandbox's.

use std::{
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, RawFd},
        unix::process::CommandExt,
    },
    path::PathBuf,
    process::{Child, Command},
};

use crate::Netns;

/// The program could not be started.
#[derive(Debug, thiserror::Error)]
#[error("failed to start {program} in network namespace {netns}")]
pub struct SpawnError {
    /// The program.
    pub program: String,
    /// The namespace's path.
    pub netns: PathBuf,
    /// Why (from `fork`, `setns`, `fcntl` or `exec`).
    #[source]
    pub source: io::Error,
}

impl Netns {
    /// Starts `command` inside this namespace with `inherit` (and the standard streams as the
    /// command sets them) open in the new program; every other descriptor keeps its
    /// close-on-exec flag. The descriptors stay at their numbers, so a command line may name
    /// them by `as_raw_fd()`. This process keeps its own copies: drop them once the child has
    /// started so that only the child holds the devices.
    pub fn spawn_with_fds(
        &self,
        command: &mut Command,
        inherit: &[BorrowedFd<'_>],
    ) -> Result<Child, SpawnError> {
        let netns_fd: RawFd = self.fd().as_raw_fd();
        let fds: Vec<RawFd> = inherit.iter().map(AsRawFd::as_raw_fd).collect();
        let program = command.get_program().to_string_lossy().into_owned();
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: it calls setns(2), close_range(2) and fcntl(2)
        // on descriptors that are open in the parent (and so in the child), reads a vector
        // allocated before the fork, and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as _) != 0 {
                    return Err(io::Error::last_os_error());
                }
                for &fd in &fds {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        command.spawn().map_err(|source| SpawnError {
            program,
            netns: self.path().to_path_buf(),
            source,
        })
    }
}
