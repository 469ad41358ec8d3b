//! The lock of one sandbox's state: a POSIX record lock on `<file>.lock`, plus a registry
//! that excludes the other stores of the same process.
//!
//! Why not `flock`: an `flock` belongs to the open file description, which every process
//! forked from the holder shares until it execs or exits. A process that spawns another (a
//! shim starting a VMM, a test running `ip`) so keeps the lock held for a moment after its
//! store let go, and another process taking it just then is told the sandbox is locked. A
//! record lock (`fcntl(F_SETLK)`) belongs to the process and is never inherited by a fork.
//!
//! Record locks have two traits this module guards against: they do not exclude the holder's
//! own process (so a registry of the files this process holds does), and closing any
//! descriptor of the file releases the process's lock (so the file is never opened again
//! while it is held: the registry is consulted, under its mutex, before the file is opened).

use std::{
    collections::BTreeSet,
    fs::File,
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
    sync::{Mutex, MutexGuard},
};

/// The lock files this process holds, by device and inode.
static HELD: Mutex<BTreeSet<(u64, u64)>> = Mutex::new(BTreeSet::new());

fn held() -> MutexGuard<'static, BTreeSet<(u64, u64)>> {
    // The set stays consistent through a panic elsewhere: every change is one insert or remove.
    HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A held lock; dropping it lets go.
#[derive(Debug)]
pub(crate) struct SandboxLock {
    /// Always `Some` until dropped.
    file: Option<File>,
    id: (u64, u64),
}

impl SandboxLock {
    /// Takes the lock at `path` without waiting, opening the file with `open` (which creates
    /// it when missing and checks it); `None` when another process or another store of this
    /// process holds it. `os_error` names a failure of the kernel's lock call.
    pub(crate) fn try_take<E>(
        path: &Path,
        open: impl FnOnce() -> Result<File, E>,
        os_error: impl FnOnce(io::Error) -> E,
    ) -> Result<Option<Self>, E> {
        let mut held = held();
        // Opened (and so, on failure, closed) only when this process does not hold it. A
        // symbolic link is not followed here: `open` refuses it.
        if let Ok(m) = std::fs::symlink_metadata(path)
            && held.contains(&(m.dev(), m.ino()))
        {
            return Ok(None);
        }
        let file = open()?;
        let m = match file.metadata() {
            Ok(m) => m,
            Err(e) => return Err(os_error(e)),
        };
        let id = (m.dev(), m.ino());
        if held.contains(&id) {
            // The path was pointed at a lock file this process holds between the look and the
            // open (by another process: opens of this one run under the registry's mutex).
            // Closing this descriptor would release that lock; it is kept open instead.
            std::mem::forget(file);
            return Ok(None);
        }
        let lock = libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        // SAFETY: `file` is an open descriptor for the whole call and `lock` a valid `flock`
        // the kernel only reads.
        let answer = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) };
        if answer == -1 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN | libc::EACCES) => Ok(None),
                _ => Err(os_error(err)),
            };
        }
        held.insert(id);
        Ok(Some(Self {
            file: Some(file),
            id,
        }))
    }
}

impl Drop for SandboxLock {
    fn drop(&mut self) {
        let mut held = held();
        // The descriptor closes (and the record lock goes) before the registry forgets it, so
        // that no other store of this process opens the file while it is still held.
        drop(self.file.take());
        held.remove(&self.id);
    }
}
