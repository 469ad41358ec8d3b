//! The durable store of one sandbox's state document.
//!
//! - A lock (`<file>.lock`, a POSIX record lock, see [`crate::lock`]) held for the store's
//!   lifetime, so two processes (or two stores of one process) never act on one sandbox at
//!   once.
//! - Atomic, durable writes: a temporary file in the same directory, mode 0600, written and
//!   `fsync`ed, renamed over the document, then the directory `fsync`ed. A crash leaves the old
//!   document or the new one, never a torn one.
//! - The document, the lock and the journal are opened without following symbolic links and
//!   must be regular files owned by this process's uid with mode 0600; the directory must not
//!   be writable by group or others (see `secure`): a symbolic link planted there would
//!   otherwise make a root shim write any file of the node, and a document written by someone
//!   else would make teardown act on links of their choosing. Loading never deletes anything
//!   it cannot read.
//! - A journal (`<file>.journal`, mode 0600) for the records of an attach under way: each is
//!   one appended, `fdatasync`ed line, where rewriting the document would cost a write of every
//!   record. The next full save includes the journal (the document says up to which entry) and
//!   empties it. Loading applies the entries the document does not include; a last line cut
//!   short by a crash was never acted on (the write returns before the step is applied) and is
//!   ignored, and cut off before the next line is appended.
//! - Syncs can be deferred ([`StateStore::defer_syncs`], what a sandbox does): every record is
//!   still written before the kernel change it describes, so a process that dies at any point
//!   leaves it for the next one (written data sits in the kernel's page cache, which outlives
//!   the process), and [`StateStore::commit`] makes everything durable at the end of the
//!   operation, with at most two syncs whatever was written. Only a machine crash can lose
//!   the records written since the last commit, and it loses the kernel objects they describe
//!   (taps, qdiscs, namespaces, driver bindings) with them.

use std::{
    fs::{self, File},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Mutex,
};

use crate::lock::SandboxLock;
pub use crate::secure::StateFile;
use crate::secure::{check_directory, open_existing, open_existing_for_writing, open_or_create};
use crate::state::{
    DocumentError, EndpointRecord, JournalEntry, Loaded, OwnerChange, SandboxState, parse_document,
    render_document_with_journal,
};

/// A failure of the store, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the sandbox's lock.
    #[error("state file {path} is locked by another process (lock {lock})")]
    Locked {
        /// The document.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// There is no document.
    #[error("state file {path} does not exist")]
    Missing {
        /// The document.
        path: PathBuf,
    },
    /// A file of the store does not have mode 0600 (others could read or write it).
    #[error(
        "{path} has mode {mode:o}; the files of a sandbox's state must have mode 600, readable and writable by their owner only (chmod 600)"
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file of the store is a symbolic link: it is never followed.
    #[error("{what} {path} is a symbolic link; refusing to follow it")]
    Symlink {
        /// Which file.
        what: StateFile,
        /// The link.
        path: PathBuf,
    },
    /// A file of the store is not a regular file (a FIFO, a device, a directory).
    #[error("{what} {path} is not a regular file")]
    NotRegular {
        /// Which file.
        what: StateFile,
        /// The path.
        path: PathBuf,
    },
    /// A file of the store belongs to another user.
    #[error("{what} {path} is owned by uid {uid}, not by this process's uid {expected}")]
    WrongOwner {
        /// Which file.
        what: StateFile,
        /// The path.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// This process's effective uid.
        expected: u32,
    },
    /// The state directory could be written by others, who could then replace its files.
    #[error(
        "state directory {dir} (mode {mode:o}, owner uid {owner}) is not safe: it must not be writable by group or others and must belong to this user or root"
    )]
    UnsafeDirectory {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        owner: u32,
    },
    /// The document cannot be understood.
    #[error("state file {path} cannot be loaded")]
    Document {
        /// The document.
        path: PathBuf,
        /// Why.
        #[source]
        source: DocumentError,
    },
    /// A complete line of the journal cannot be understood.
    #[error("state journal {path}: line {line} cannot be read")]
    Journal {
        /// The journal.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A file operation failed.
    #[error("failed to {op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    /// The errno behind this error, if the system gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Io { source, .. } => source.raw_os_error(),
            Self::Missing { .. } => Some(libc_enoent()),
            _ => None,
        }
    }
}

const fn libc_enoent() -> i32 {
    2
}

/// The state document of one sandbox, locked for this process.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    _lock: SandboxLock,
    /// The journal.
    inner: Mutex<Inner>,
}

/// What a store remembers between writes.
#[derive(Debug, Default)]
struct Inner {
    /// The journal, open for appending once a first entry was written.
    journal: Option<File>,
    /// The last journal entry written (or read back), and the last one the document includes.
    last_seq: u64,
    included_seq: u64,
    /// Whether a document exists that journal entries can be read over.
    document_written: bool,
    /// Where the journal's last line, cut short by a crash, starts (as loaded).
    torn_from: Option<u64>,
    /// The kill points' countdown (feature `fault-injection`).
    #[cfg(feature = "fault-injection")]
    kill_countdown: Option<&'static std::sync::atomic::AtomicUsize>,
    /// Whether writes are left unsynced until [`StateStore::commit`].
    deferred: bool,
    /// What was written and not synced: the document (or its directory entry), the journal's
    /// data, the journal's directory entry.
    unsynced_document: bool,
    unsynced_journal: bool,
    unsynced_journal_entry: bool,
}

impl StateStore {
    /// Takes the sandbox's lock (without waiting) for the document at `path`. The directory
    /// is created (mode 0700) if needed.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { op, path, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io("create the directory of", &path))?;
        }
        check_directory(&crate::secure::directory_of(&path))?;
        let lock_path = lock_path(&path);
        match SandboxLock::try_take(
            &lock_path,
            || open_or_create(&lock_path, StateFile::Lock, false),
            io("take the lock", &lock_path),
        )? {
            Some(lock) => Ok(Self {
                path,
                _lock: lock,
                inner: Mutex::default(),
            }),
            None => Err(StoreError::Locked {
                path,
                lock: lock_path,
            }),
        }
    }

    /// The document's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a document exists.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Loads the document. Refuses one that others may read or write; a missing, cut-short,
    /// invalid or newer document is an error naming the file, and nothing is deleted.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let path = &self.path;
        let Some(mut file) = open_existing(path, StateFile::Document)? else {
            return Err(StoreError::Missing { path: path.clone() });
        };
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut file, &mut bytes).map_err(|source| StoreError::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
        let mut loaded = parse_document(&bytes).map_err(|source| StoreError::Document {
            path: path.clone(),
            source,
        })?;
        let last_seq = self.apply_journal(&mut loaded)?;
        let mut inner = self.inner();
        inner.document_written = true;
        inner.journal = None;
        inner.included_seq = loaded.journal_seq;
        inner.last_seq = last_seq.max(loaded.journal_seq);
        Ok(loaded)
    }

    /// Applies the journal's entries after `loaded.journal_seq` to the loaded state; returns
    /// the last entry's number (0 when there is no journal).
    fn apply_journal(&self, loaded: &mut Loaded) -> Result<u64, StoreError> {
        let path = journal_path(&self.path);
        self.inner().torn_from = None;
        let Some(mut file) = open_existing(&path, StateFile::Journal)? else {
            return Ok(0);
        };
        let read_error = |source| StoreError::Io {
            op: "read",
            path: path.clone(),
            source,
        };
        let mut text = Vec::new();
        io::Read::read_to_end(&mut file, &mut text).map_err(read_error)?;
        let mut last = 0;
        let mut offset = 0;
        for (number, line) in text.split_inclusive(|b| *b == b'\n').enumerate() {
            if !line.ends_with(b"\n") {
                // Only the last line can lack its newline.
                tracing::warn!(journal = %path.display(), line = number + 1, "journal line cut short by a crash ignored");
                self.inner().torn_from = Some(offset);
                break;
            }
            offset += line.len() as u64;
            let entry: JournalEntry =
                serde_json::from_slice(line).map_err(|source| StoreError::Journal {
                    path: path.clone(),
                    line: number + 1,
                    source,
                })?;
            last = last.max(entry.seq);
            if entry.seq > loaded.journal_seq {
                entry.apply_to(&mut loaded.state);
            }
        }
        Ok(last)
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(inner) => inner,
            // A panic mid-write (none is known) leaves the journal's numbers good.
            Err(poisoned) => {
                self.inner.clear_poison();
                poisoned.into_inner()
            }
        }
    }

    /// Records `record`, the new or changed record of one endpoint of `state`, durably: one
    /// line appended to the journal once a document exists, the whole document before that.
    pub fn save_endpoint(
        &self,
        state: &SandboxState,
        record: &EndpointRecord,
    ) -> Result<(), StoreError> {
        self.append(
            state,
            JournalEntry {
                seq: 0,
                endpoint: Some(record.clone()),
                owner: None,
            },
        )
    }

    /// Records `state`'s owner, durably: one line appended to the journal once a document
    /// exists. Before that nothing is written: there is nothing on disk to own yet, and the
    /// first save writes the owner with the rest.
    pub fn save_owner(&self, state: &SandboxState) -> Result<(), StoreError> {
        if !self.inner().document_written {
            return Ok(());
        }
        self.append(
            state,
            JournalEntry {
                seq: 0,
                endpoint: None,
                owner: Some(OwnerChange {
                    owner: state.owner.clone(),
                }),
            },
        )
    }

    /// Appends `entry` (numbered here) to the journal, or saves the whole of `state` when
    /// there is no document yet.
    fn append(&self, state: &SandboxState, mut entry: JournalEntry) -> Result<(), StoreError> {
        let mut inner = self.inner();
        if !inner.document_written {
            drop(inner);
            return self.save(state);
        }
        let path = journal_path(&self.path);
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { op, path, source }
        };
        if inner.journal.is_none() {
            let journal = open_or_create(&path, StateFile::Journal, true)?;
            // A line cut short by a crash is cut off before anything follows it: appended to,
            // it would become a complete line that cannot be read, and the journal with it.
            if let Some(length) = inner.torn_from.take() {
                journal
                    .set_len(length)
                    .and_then(|()| journal.sync_data())
                    .map_err(io("cut the torn last line off", &path))?;
            }
            // The journal's own entry in the directory must outlive a crash too.
            if inner.deferred {
                inner.unsynced_journal_entry = true;
            } else {
                sync_dir(&self.path).map_err(io("sync the directory of", &self.path))?;
            }
            inner.journal = Some(journal);
        }
        entry.seq = inner.last_seq + 1;
        // Serializing our own types cannot fail: every map key is a string.
        let mut line = serde_json::to_vec(&entry).unwrap_or_default();
        line.push(b'\n');
        #[cfg(feature = "fault-injection")]
        let countdown = inner.kill_countdown;
        let deferred = inner.deferred;
        if let Some(journal) = inner.journal.as_mut() {
            // A process killed in the middle of the write leaves half a line.
            #[cfg(feature = "fault-injection")]
            crate::fault::kill_point_then(
                countdown,
                &format_args!("append to {}: half a line written", file_name(&path)),
                || {
                    let _ = journal.write_all(&line[..line.len() / 2]);
                },
            );
            journal
                .write_all(&line)
                .and_then(|()| {
                    if deferred {
                        Ok(())
                    } else {
                        journal.sync_data()
                    }
                })
                .map_err(io("append to", &path))?;
        }
        inner.unsynced_journal |= deferred;
        inner.last_seq = entry.seq;
        Ok(())
    }

    /// Arms the kill points of this store's writes (feature `fault-injection`, for the crash
    /// tests; see `crate::fault`) with `countdown`, usually the one the kernel steps count
    /// down too: in a save, once the temporary file is written and before it is renamed over
    /// the document, and once renamed before the directory is synced; in a journal append,
    /// with half the line written; in a removal, before each file.
    #[cfg(feature = "fault-injection")]
    pub fn set_kill_countdown(&self, countdown: Option<&'static std::sync::atomic::AtomicUsize>) {
        self.inner().kill_countdown = countdown;
    }

    /// Leaves the writes that follow unsynced (`true`) until [`StateStore::commit`], or syncs
    /// each one again (`false`; what was written unsynced before stays so until a commit).
    pub fn defer_syncs(&self, defer: bool) {
        self.inner().deferred = defer;
    }

    /// Writes the document and makes it durable at once, whether syncs are deferred or not
    /// (see [`StateStore::save`]).
    pub fn save_synced(&self, state: &SandboxState) -> Result<(), StoreError> {
        let deferred = std::mem::replace(&mut self.inner().deferred, false);
        let saved = self.save(state);
        self.inner().deferred = deferred;
        saved
    }

    /// Makes everything written so far durable, `state` being the whole state it describes:
    /// nothing when all is synced; one `fdatasync` when only journal lines are new; else the
    /// document written anew, synced, with its directory (two), which includes the journal.
    pub fn commit(&self, state: &SandboxState) -> Result<(), StoreError> {
        let mut inner = self.inner();
        if inner.unsynced_document || inner.unsynced_journal_entry {
            drop(inner);
            return self.save_synced(state);
        }
        if inner.unsynced_journal {
            if let Some(journal) = &inner.journal {
                journal.sync_data().map_err(|source| StoreError::Io {
                    op: "sync",
                    path: journal_path(&self.path),
                    source,
                })?;
            }
            inner.unsynced_journal = false;
        }
        Ok(())
    }

    /// Writes the document atomically and durably (see the module documentation).
    pub fn save(&self, state: &SandboxState) -> Result<(), StoreError> {
        let path = &self.path;
        let io = |op| {
            move |source| StoreError::Io {
                op,
                path: path.clone(),
                source,
            }
        };
        // Named after the document (`.<file>.<random>.tmp`), so that one left by a crash can be
        // told apart and removed by whoever holds the document's lock next.
        let mut prefix = std::ffi::OsString::from(".");
        prefix.push(path.file_name().unwrap_or_default());
        prefix.push(".");
        let mut temp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(TEMP_SUFFIX)
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(directory_of(path))
            .map_err(io("create a temporary file for"))?;
        let mut inner = self.inner();
        if !inner.document_written {
            // A new sandbox: a journal left at this path by another one (a teardown cut short
            // between removing its document and its journal) must not be read over ours.
            remove_if_present(&journal_path(path)).map_err(io("remove the stale journal of"))?;
        }
        // The document includes every entry written so far: `state` holds them all.
        let included = inner.last_seq;
        let bytes = render_document_with_journal(state, included);
        temp.write_all(&bytes).map_err(io("write"))?;
        if !inner.deferred {
            temp.as_file().sync_all().map_err(io("sync"))?;
        }
        #[cfg(feature = "fault-injection")]
        crate::fault::kill_point(
            inner.kill_countdown,
            &format_args!("save {}: written, before the rename", file_name(path)),
        );
        temp.persist(path).map_err(|e| StoreError::Io {
            op: "replace",
            path: path.clone(),
            source: e.error,
        })?;
        #[cfg(feature = "fault-injection")]
        crate::fault::kill_point(
            inner.kill_countdown,
            &format_args!(
                "save {}: renamed, before the directory sync",
                file_name(path)
            ),
        );
        if inner.deferred {
            inner.unsynced_document = true;
        } else {
            sync_dir(path).map_err(io("sync the directory of"))?;
            // The directory's sync made the journal's entry durable too, and the document
            // holds every journal line.
            inner.unsynced_document = false;
            inner.unsynced_journal = false;
            inner.unsynced_journal_entry = false;
        }
        inner.document_written = true;
        if included > inner.included_seq || inner.torn_from.is_some() {
            inner.included_seq = included;
            inner.torn_from = None;
            // The document now includes every entry: the journal can be emptied. Not synced:
            // entries left by a crash before this point are numbered at most `included`, and
            // loading skips them.
            let emptied = match &inner.journal {
                Some(journal) => journal.set_len(0),
                None => match open_existing_for_writing(&journal_path(path), StateFile::Journal) {
                    Ok(Some(journal)) => journal.set_len(0),
                    Ok(None) => Ok(()),
                    Err(e) => Err(io::Error::other(e.to_string())),
                },
            };
            if let Err(e) = emptied
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::debug!(journal = %journal_path(path).display(), error = %e, "journal not emptied (its entries are included in the document)");
            }
        }
        Ok(())
    }

    /// Removes the document (at the end of a complete teardown), with every other file of
    /// it: the temporary files of saves cut short by a crash (while this store holds the
    /// lock, no save can be writing one), the journal, then the lock file. Also what is left
    /// of a document that is gone (see [`StoreError::Missing`]).
    pub fn remove(self) -> Result<(), StoreError> {
        let directory = directory_of(&self.path);
        let mut files = self.stale_temporaries().map_err(|source| StoreError::Io {
            op: "list the temporary files in",
            path: directory.to_path_buf(),
            source,
        })?;
        files.extend([self.path.clone(), journal_path(&self.path)]);
        for file in files {
            #[cfg(feature = "fault-injection")]
            crate::fault::kill_point(
                self.inner().kill_countdown,
                &format_args!("remove {}", file_name(&file)),
            );
            remove_if_present(&file).map_err(|source| StoreError::Io {
                op: "remove",
                path: file.clone(),
                source,
            })?;
        }
        let lock = lock_path(&self.path);
        #[cfg(feature = "fault-injection")]
        crate::fault::kill_point(
            self.inner().kill_countdown,
            &format_args!("remove {}", file_name(&lock)),
        );
        let _ = fs::remove_file(lock);
        Ok(())
    }

    /// The temporary files of this document's saves in its directory (see [`StoreFile`]).
    fn stale_temporaries(&self) -> io::Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(directory_of(&self.path))? {
            let path = entry?.path();
            if let StoreFile::Temporary(Some(document)) = StoreFile::of(&path)
                && document.file_name() == self.path.file_name()
            {
                found.push(path);
            }
        }
        Ok(found)
    }
}

/// The end of a temporary file's name.
const TEMP_SUFFIX: &str = ".tmp";
/// The prefix of temporary files written before they were named after their document.
const LEGACY_TEMP_PREFIX: &str = ".state-";

/// What a file in a state directory is to the store, by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreFile {
    /// A state document (or a file of someone else: only reading it tells).
    Document,
    /// The lock of the document at this path.
    Lock(PathBuf),
    /// The journal of the document at this path.
    Journal(PathBuf),
    /// A temporary file of a save, of the document at this path when its name says so; one
    /// that outlives its save was left by a crash.
    Temporary(Option<PathBuf>),
}

impl StoreFile {
    /// What the file at `path` is, by its name.
    pub fn of(path: &Path) -> Self {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let document = |name: &str| path.with_file_name(name);
        if let Some(doc) = name.strip_suffix(".lock") {
            return Self::Lock(document(doc));
        }
        if let Some(doc) = name.strip_suffix(".journal") {
            return Self::Journal(document(doc));
        }
        if name.starts_with(LEGACY_TEMP_PREFIX) {
            return Self::Temporary(None);
        }
        if let Some(inner) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(TEMP_SUFFIX))
            && let Some((doc, random)) = inner.rsplit_once('.')
            && !doc.is_empty()
            && !random.is_empty()
            && random.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Self::Temporary(Some(document(doc)));
        }
        Self::Document
    }
}

impl StateStore {
    /// Removes `temporary`, a temporary file of this document's saves (see [`StoreFile`])
    /// left by a crash: while this store holds the lock, no save of another process can be
    /// writing it. Returns false, removing nothing, for a file that is not one of them.
    pub fn remove_stale_temporary(&self, temporary: &Path) -> Result<bool, StoreError> {
        if StoreFile::of(temporary) != StoreFile::Temporary(Some(self.path.clone())) {
            return Ok(false);
        }
        remove_if_present(temporary).map_err(|source| StoreError::Io {
            op: "remove the stale temporary file",
            path: temporary.to_path_buf(),
            source,
        })?;
        Ok(true)
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn directory_of(path: &Path) -> &Path {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir,
        None => Path::new("."),
    }
}

/// The file name of `path`, for the names of kill points.
#[cfg(feature = "fault-injection")]
fn file_name(path: &Path) -> std::borrow::Cow<'_, str> {
    path.file_name().unwrap_or_default().to_string_lossy()
}

/// `fsync` of the directory holding `path`.
fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(directory_of(path))?.sync_all()
}

/// Removes `path`; one that is already gone is not an error.
fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// `<file><suffix>` next to the document at `path`.
fn next_to(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// The journal of the document at `path`: `<file>.journal`.
fn journal_path(path: &Path) -> PathBuf {
    next_to(path, ".journal")
}

fn lock_path(path: &Path) -> PathBuf {
    next_to(path, ".lock")
}
