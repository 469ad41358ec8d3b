//! The `Netns` handle: open, identify, create and delete a network namespace.
//!
//! A namespace is held as an open file descriptor of its nsfs file, so that a path renamed or
//! removed behind our back never changes which namespace we act on. Creation is fork-free (a
//! short-lived thread `unshare`s and bind-mounts its namespace onto the path), as `ip netns add`
//! does without its fork.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use nix::{
    mount::{MntFlags, MsFlags},
    sched::CloneFlags,
};
use sandbox_net_persist::NetnsId;

use crate::error::NetnsError;

/// Where `ip netns` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// The network namespace of PID 1: the node's own (in the current PID namespace).
pub const PID1_NETNS: &str = "/proc/1/ns/net";
/// The network namespace of this process (of its main thread, which never changes namespace).
const OWN_NETNS: &str = "/proc/self/ns/net";

/// `NSFS_MAGIC` from `linux/magic.h`: the filesystem type of namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// `NS_GET_NSTYPE` = `_IO(0xb7, 0x3)` from `linux/nsfs.h`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open network namespace.
///
/// Holds the namespace's nsfs file open, so the namespace stays alive and identified by
/// `(device, inode)` for as long as this value (or a clone of its descriptor) exists.
#[derive(Debug, Clone)]
pub struct Netns {
    path: PathBuf,
    fd: Arc<OwnedFd>,
    id: NetnsId,
    created_by_us: bool,
    /// The thread that runs short work queued at once (see `Netns::run_queued`).
    queued: Arc<crate::run::QueuedRunner>,
}

impl Netns {
    /// Opens the network namespace at `path`: `/run/netns/NAME`, `/proc/PID/ns/net`, or any
    /// bind mount of a namespace file. Anything else (a missing path, a directory, a regular
    /// file, another kind of namespace) is an error that names the path.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetnsError> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => NetnsError::NotFound { path: path.clone() },
                _ => NetnsError::Open {
                    path: path.clone(),
                    source,
                },
            })?;
        let id = check_is_netns(&path, &file)?;
        Ok(Self {
            path,
            fd: Arc::new(file.into()),
            id,
            created_by_us: false,
            queued: Arc::default(),
        })
    }

    /// Opens the namespace `ip netns` knows as `name` (`/run/netns/NAME`).
    pub fn open_named(name: &str) -> Result<Self, NetnsError> {
        Self::open(named_path(name)?)
    }

    /// Opens `arg` as a path when it contains a `/`, else as a name under `/run/netns`: what a
    /// `--netns` option of the CLI accepts.
    pub fn open_path_or_name(arg: &str) -> Result<Self, NetnsError> {
        if arg.contains('/') {
            Self::open(arg)
        } else {
            Self::open_named(arg)
        }
    }

    /// Opens a namespace that this module created earlier (possibly in another process),
    /// checking that the path still holds the same namespace. The result may be deleted.
    pub fn open_created(path: impl AsRef<Path>, expected: NetnsId) -> Result<Self, NetnsError> {
        let mut netns = Self::open(path)?;
        if netns.id != expected {
            return Err(NetnsError::IdentityMismatch {
                path: netns.path,
                expected,
                found: netns.id,
            });
        }
        netns.created_by_us = true;
        Ok(netns)
    }

    /// Creates a new, empty network namespace bound at `path` (whose parent must exist; for
    /// `/run/netns` it is created and made a shared mount, as `ip netns add` does). Fails if
    /// anything exists at `path`. On any failure nothing is left behind.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, NetnsError> {
        let path = path.as_ref().to_path_buf();
        let step = |step: &'static str| {
            let path = path.clone();
            move |source: io::Error| NetnsError::Create { path, step, source }
        };
        if path.parent() == Some(Path::new(NETNS_RUN_DIR)) {
            ensure_shared_run_dir().map_err(step("prepare /run/netns as a shared mount"))?;
        }
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
            .map_err(|source| match source.kind() {
                io::ErrorKind::AlreadyExists => NetnsError::AlreadyExists { path: path.clone() },
                _ => step("create the mount point file")(source),
            })?;
        let bind = {
            let target = path.clone();
            std::thread::Builder::new()
                .name("sbx-netns-new".into())
                .spawn(move || -> io::Result<()> {
                    // This thread alone moves to the new namespace, then ends: no other thread
                    // of the process ever runs in it.
                    nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                    nix::mount::mount(
                        Some("/proc/thread-self/ns/net"),
                        &target,
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .map_err(io::Error::from)
                })
                .map_err(step("start the namespace thread"))
                .and_then(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
                        .map_err(step("unshare and bind-mount the new namespace"))
                })
        };
        if let Err(err) = bind {
            let _ = fs::remove_file(&path);
            return Err(err);
        }
        match Self::open(&path) {
            Ok(mut netns) => {
                netns.created_by_us = true;
                tracing::info!(netns = %path.display(), id = %netns.id, "network namespace created");
                Ok(netns)
            }
            Err(err) => {
                let _ = nix::mount::umount2(&path, MntFlags::MNT_DETACH);
                let _ = fs::remove_file(&path);
                Err(err)
            }
        }
    }

    /// Creates `/run/netns/NAME`, visible to `ip netns` and `ip -n NAME`.
    pub fn create_named(name: &str) -> Result<Self, NetnsError> {
        Self::create(named_path(name)?)
    }

    /// Deletes a namespace this module created: unmounts its path (lazily, as `ip netns del`
    /// does) and removes the mount point. The namespace itself goes away when the last process,
    /// socket or descriptor holding it lets go. Refuses a namespace we did not create, and the
    /// host's own namespace whatever the flag says.
    pub fn delete(self) -> Result<(), NetnsError> {
        if self.is_host() {
            return Err(NetnsError::HostNamespace {
                op: "delete",
                path: self.path,
            });
        }
        if !self.created_by_us {
            return Err(NetnsError::NotCreatedByUs { path: self.path });
        }
        let Self { path, fd, .. } = self;
        drop(fd);
        match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point any more (someone unmounted it already).
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
            Err(errno) => {
                return Err(NetnsError::Delete {
                    path,
                    step: "unmount",
                    source: errno.into(),
                });
            }
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NetnsError::Delete {
                    path,
                    step: "remove",
                    source,
                });
            }
        }
        tracing::info!(netns = %path.display(), "network namespace deleted");
        Ok(())
    }

    /// The path this namespace was opened or created at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's identity.
    pub fn id(&self) -> NetnsId {
        self.id
    }

    /// Whether this process created the namespace (and so may delete it).
    pub fn created_by_us(&self) -> bool {
        self.created_by_us
    }

    /// True when this is the host's network namespace (that of PID 1) or the one this process
    /// started in: namespaces this module must never reconfigure or delete.
    pub fn is_host(&self) -> bool {
        ["/proc/1/ns/net", "/proc/self/ns/net"]
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .any(|m| {
                NetnsId {
                    dev: m.dev(),
                    ino: m.ino(),
                } == self.id
            })
    }

    /// True when this is the node's own network: the namespace of PID 1, or the one this
    /// process runs in (a shim or a CNI plugin runs in the node's). Compared by identity
    /// (device and inode of `/proc/1/ns/net` and `/proc/self/ns/net`), never by path, so that
    /// `/proc/self/ns/net`, another host process's namespace or a bind mount of the host's are
    /// all recognised. PID 1's namespace cannot always be read (`EACCES` in a container whose
    /// PID 1 has more privileges); then this process's own is the reference. Errs, naming
    /// `/proc/1/ns/net`, only when neither can be read, for the caller to refuse rather than
    /// guess.
    pub fn is_host_network(&self) -> Result<bool, NetnsError> {
        let identity = |path: &str| {
            fs::metadata(path).map(|m| NetnsId {
                dev: m.dev(),
                ino: m.ino(),
            })
        };
        let pid1 = identity(PID1_NETNS);
        let own = identity(OWN_NETNS);
        match (pid1, own) {
            (Err(source), Err(_)) => Err(NetnsError::Open {
                path: PathBuf::from(PID1_NETNS),
                source,
            }),
            (pid1, own) => {
                if let Err(e) = &pid1 {
                    tracing::debug!(error = %e, "{PID1_NETNS} cannot be read; this process's own namespace is the host's");
                }
                Ok(pid1.ok() == Some(self.id) || own.ok() == Some(self.id))
            }
        }
    }

    /// The namespace's file descriptor (for `setns`, or `IFLA_NET_NS_FD` when moving a link).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The runner of [`Netns::run_queued`], shared by the clones of this value.
    pub(crate) fn queued_runner(&self) -> &Arc<crate::run::QueuedRunner> {
        &self.queued
    }

    pub(crate) fn shared_fd(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.fd)
    }
}

/// The path of the namespace `ip netns` calls `name`.
pub fn named_path(name: &str) -> Result<PathBuf, NetnsError> {
    let invalid = |why| NetnsError::InvalidName {
        name: name.to_string(),
        why,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name == "." || name == ".." {
        return Err(invalid("it is reserved"));
    }
    if name.contains('/') || name.contains('\0') {
        return Err(invalid("it may not contain '/' or NUL"));
    }
    Ok(Path::new(NETNS_RUN_DIR).join(name))
}

/// Checks that `file` is a network namespace and returns its identity.
fn check_is_netns(path: &Path, file: &File) -> Result<NetnsId, NetnsError> {
    let not_netns = |what: String| NetnsError::NotANetns {
        path: path.to_path_buf(),
        what,
    };
    let meta = file.metadata().map_err(|source| NetnsError::Open {
        path: path.into(),
        source,
    })?;
    let fs = nix::sys::statfs::fstatfs(file).map_err(|e| NetnsError::Open {
        path: path.into(),
        source: e.into(),
    })?;
    #[allow(clippy::unnecessary_cast)] // f_type is i64 on x86_64 and u32/i32 elsewhere
    if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
        let what = if meta.is_dir() {
            "a directory"
        } else if meta.is_file() {
            "a regular file"
        } else {
            "not a namespace file"
        };
        return Err(not_netns(what.to_string()));
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor, which `file`
    // keeps open for the duration of the call.
    let nstype = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if nstype < 0 {
        return Err(NetnsError::Open {
            path: path.into(),
            source: io::Error::last_os_error(),
        });
    }
    if nstype != libc::CLONE_NEWNET {
        return Err(not_netns(format!("a {} namespace", namespace_kind(nstype))));
    }
    Ok(NetnsId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

fn namespace_kind(nstype: libc::c_int) -> &'static str {
    match nstype {
        libc::CLONE_NEWNS => "mount",
        libc::CLONE_NEWUTS => "UTS",
        libc::CLONE_NEWIPC => "IPC",
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWPID => "PID",
        libc::CLONE_NEWCGROUP => "cgroup",
        libc::CLONE_NEWTIME => "time",
        _ => "non-network",
    }
}

/// Makes `/run/netns` exist and be a shared mount point, so that namespaces bound under it
/// are seen by every mount namespace (what `ip netns add` does).
fn ensure_shared_run_dir() -> io::Result<()> {
    fs::create_dir_all(NETNS_RUN_DIR)?;
    let shared = |dir| {
        nix::mount::mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared(NETNS_RUN_DIR) {
        Ok(()) => Ok(()),
        // EINVAL: not a mount point yet; bind it onto itself first.
        Err(nix::errno::Errno::EINVAL) => {
            nix::mount::mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            Ok(shared(NETNS_RUN_DIR)?)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_path_refuses_bad_names() {
        assert_eq!(named_path("pod1").unwrap(), Path::new("/run/netns/pod1"));
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            let err = named_path(bad).unwrap_err();
            assert!(
                matches!(err, NetnsError::InvalidName { ref name, .. } if name == bad),
                "{err}"
            );
        }
    }

    #[test]
    fn open_refuses_what_is_not_a_network_namespace() {
        let dir = std::env::temp_dir().join(format!("sbx-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("plain");
        fs::write(&file, b"").unwrap();

        let err = Netns::open(&dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is not a network namespace: it is a directory",
                dir.display()
            )
        );
        let err = Netns::open(&file).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is not a network namespace: it is a regular file",
                file.display()
            )
        );
        let missing = dir.join("missing");
        let err = Netns::open(&missing).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("network namespace {} does not exist", missing.display())
        );
        assert_eq!(err.errno(), Some(libc::ENOENT));
        let err = Netns::open("/proc/self/ns/mnt").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/proc/self/ns/mnt is not a network namespace: it is a mount namespace"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn own_namespace_is_host_and_cannot_be_deleted() {
        let netns = Netns::open("/proc/self/ns/net").unwrap();
        assert!(netns.is_host());
        let err = netns.delete().unwrap_err();
        assert_eq!(
            err.to_string(),
            "refusing to delete /proc/self/ns/net: it is the host's own network namespace"
        );
    }
}
