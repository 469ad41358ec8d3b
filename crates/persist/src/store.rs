//! The durable store of one sandbox's state document.
//!
//! - A lock (`<file>.lock`, `flock` exclusive) held for the store's lifetime, so two processes
//!   never act on one sandbox at once.
//! - Atomic, durable writes: a temporary file in the same directory, mode 0600, written and
//!   `fsync`ed, renamed over the document, then the directory `fsync`ed. A crash leaves the old
//!   document or the new one, never a torn one.
//! - Loading refuses a document others can read or write (it names the pod's addresses and
//!   the host's devices), and never deletes anything it cannot read.

use std::{
    fs::{self, File, OpenOptions, TryLockError},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Mutex,
};

use crate::state::{DocumentError, DocumentRenderer, Loaded, SandboxState, parse_document};

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
    /// The document can be read or written by users other than its owner.
    #[error(
        "state file {path} has mode {mode:o}; it must not be readable or writable by others (chmod 600)"
    )]
    TooOpen {
        /// The document.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
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
    _lock: File,
    /// The JSON of the endpoint records saved last, reused while they are unchanged.
    renderer: Mutex<DocumentRenderer>,
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
        let lock_path = lock_path(&path);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io("open the lock", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => Ok(Self {
                path,
                _lock: lock,
                renderer: Mutex::default(),
            }),
            Err(TryLockError::WouldBlock) => Err(StoreError::Locked {
                path,
                lock: lock_path,
            }),
            Err(TryLockError::Error(source)) => Err(StoreError::Io {
                op: "lock",
                path: lock_path,
                source,
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
        let metadata = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Missing { path: path.clone() });
            }
            Err(source) => {
                return Err(StoreError::Io {
                    op: "read",
                    path: path.clone(),
                    source,
                });
            }
        };
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StoreError::TooOpen {
                path: path.clone(),
                mode,
            });
        }
        let bytes = fs::read(path).map_err(|source| StoreError::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
        parse_document(&bytes).map_err(|source| StoreError::Document {
            path: path.clone(),
            source,
        })
    }

    /// Writes the document atomically and durably (see the module documentation).
    pub fn save(&self, state: &SandboxState) -> Result<(), StoreError> {
        let path = &self.path;
        let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => dir.to_path_buf(),
            None => PathBuf::from("."),
        };
        let io = |op| {
            move |source| StoreError::Io {
                op,
                path: path.clone(),
                source,
            }
        };
        let mut temp = tempfile::Builder::new()
            .prefix(".state-")
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(&dir)
            .map_err(io("create a temporary file for"))?;
        let bytes = match self.renderer.lock() {
            Ok(mut renderer) => renderer.render(state),
            // A panic mid-render (none is known) leaves a cache that cannot be trusted.
            Err(poisoned) => {
                self.renderer.clear_poison();
                let mut renderer = poisoned.into_inner();
                *renderer = DocumentRenderer::default();
                renderer.render(state)
            }
        };
        temp.write_all(&bytes).map_err(io("write"))?;
        temp.as_file().sync_all().map_err(io("sync"))?;
        temp.persist(path).map_err(|e| StoreError::Io {
            op: "replace",
            path: path.clone(),
            source: e.error,
        })?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync the directory of"))?;
        Ok(())
    }

    /// Removes the document (at the end of a complete teardown) and its lock file.
    pub fn remove(self) -> Result<(), StoreError> {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::Io {
                    op: "remove",
                    path: self.path.clone(),
                    source,
                });
            }
        }
        let _ = fs::remove_file(lock_path(&self.path));
        Ok(())
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    path.with_file_name(name)
}
