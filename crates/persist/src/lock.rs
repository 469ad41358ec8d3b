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
//! And the holder removes the file when it is done with the sandbox, so a lock taken on a file
//! no longer at its path is let go (see [`SandboxLock::try_take`]).

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

/// How many times a lock file removed under us is looked for again before giving up.
const ATTEMPTS: usize = 8;

/// One try at the lock.
enum Attempt {
    Taken(SandboxLock),
    /// Another process, or another store of this one, holds it.
    Busy,
    /// The file locked is no longer the one at the path.
    Replaced,
}

impl SandboxLock {
    /// Takes the lock at `path` without waiting, opening the file with `open` (which creates
    /// it when missing and checks it); `None` when another process or another store of this
    /// process holds it. `os_error` names a failure of the kernel's lock call.
    ///
    /// The holder of a sandbox removes the lock file while it still holds it (at the end of a
    /// teardown, or of a restore that found no document). A process that opened the file just
    /// before could take the lock just after, on a file no longer at the path, while a third
    /// takes the new file's: both would act on the sandbox. So a lock counts only if the path
    /// still names the file locked; otherwise it is let go and the file now there is tried.
    pub(crate) fn try_take<E>(
        path: &Path,
        mut open: impl FnMut() -> Result<File, E>,
        os_error: impl FnOnce(io::Error) -> E,
    ) -> Result<Option<Self>, E> {
        for _ in 0..ATTEMPTS {
            match Self::attempt(path, &mut open)? {
                Ok(Attempt::Taken(lock)) => return Ok(Some(lock)),
                Ok(Attempt::Busy) => return Ok(None),
                Ok(Attempt::Replaced) => continue,
                Err(e) => return Err(os_error(e)),
            }
        }
        // Removed again each time: others are done with it faster than it can be locked.
        Ok(None)
    }

    fn attempt<E>(
        path: &Path,
        open: &mut impl FnMut() -> Result<File, E>,
    ) -> Result<Result<Attempt, io::Error>, E> {
        let mut held = held();
        // Opened (and so, on failure, closed) only when this process does not hold it. A
        // symbolic link is not followed here: `open` refuses it.
        if let Ok(m) = std::fs::symlink_metadata(path)
            && held.contains(&(m.dev(), m.ino()))
        {
            return Ok(Ok(Attempt::Busy));
        }
        let file = open()?;
        let m = match file.metadata() {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        let id = (m.dev(), m.ino());
        if held.contains(&id) {
            // The path was pointed at a lock file this process holds between the look and the
            // open (by another process: opens of this one run under the registry's mutex).
            // Closing this descriptor would release that lock; it is kept open instead.
            std::mem::forget(file);
            return Ok(Ok(Attempt::Busy));
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
            return Ok(match err.raw_os_error() {
                Some(libc::EAGAIN | libc::EACCES) => Ok(Attempt::Busy),
                _ => Err(err),
            });
        }
        match std::fs::symlink_metadata(path) {
            Ok(now) if (now.dev(), now.ino()) == id => {}
            // Closing the descriptor lets go of the lock on the file that was removed.
            Ok(_) => return Ok(Ok(Attempt::Replaced)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Ok(Attempt::Replaced)),
            Err(e) => return Ok(Err(e)),
        }
        held.insert(id);
        Ok(Ok(Attempt::Taken(Self {
            file: Some(file),
            id,
        })))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::fs::{self, OpenOptions};

    use super::*;

    #[test]
    fn a_lock_file_removed_before_it_is_locked_is_let_go_for_the_one_at_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json.lock");
        let mut first = true;
        let lock = SandboxLock::try_take(
            &path,
            || {
                let file = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .read(true)
                    .write(true)
                    .open(&path)?;
                if std::mem::take(&mut first) {
                    // The holder removes it at the end of its teardown, between this open and
                    // the lock.
                    fs::remove_file(&path)?;
                }
                Ok::<_, io::Error>(file)
            },
            |e| e,
        )
        .unwrap()
        .unwrap();
        let now = fs::symlink_metadata(&path).unwrap();
        assert_eq!(lock.id, (now.dev(), now.ino()));
    }
}
