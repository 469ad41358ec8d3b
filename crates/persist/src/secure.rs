//! Opening the store's files so that they cannot be turned against the node.
//!
//! The state directory is where a root shim writes; the document names what teardown deletes
//! and restores. Someone who could plant a symbolic link there could make the shim write
//! (truncate, append to) any file of the node, and someone who could write the document
//! could make teardown act on interfaces of their choosing. So:
//! - every file (document, lock, journal) is opened with `O_NOFOLLOW`: a symbolic link is
//!   refused, never followed;
//! - an open file must be a regular file, owned by this process's effective uid, with mode
//!   `0600`; a file this code creates is made so (`fchmod`, whatever the umask);
//! - the directory must not be writable by group or others, and must belong to this uid or
//!   to root: otherwise anyone could replace the files between two checks.

use std::{
    fs::{File, Metadata, OpenOptions},
    io,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use crate::store::StoreError;

/// The mode every file of the store has.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Which of the store's files, for messages: `"state file"`, `"state lock"`, `"state journal"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFile {
    /// The document.
    Document,
    /// Its lock, `<file>.lock`.
    Lock,
    /// Its journal, `<file>.journal`.
    Journal,
}

impl std::fmt::Display for StateFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Document => "state file",
            Self::Lock => "state lock",
            Self::Journal => "state journal",
        })
    }
}

/// This process's effective uid.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Opens an existing file of the store for reading; `None` when there is none.
pub(crate) fn open_existing(path: &Path, what: StateFile) -> Result<Option<File>, StoreError> {
    open_existing_as(path, what, OpenOptions::new().read(true), "read")
}

/// Opens an existing file of the store for writing (to truncate it); `None` when there is
/// none.
pub(crate) fn open_existing_for_writing(
    path: &Path,
    what: StateFile,
) -> Result<Option<File>, StoreError> {
    open_existing_as(path, what, OpenOptions::new().write(true), "open")
}

/// Opens an existing file of the store with `options`, never through a symbolic link, and
/// checks it; `None` when there is none. `op` names the operation in an error.
fn open_existing_as(
    path: &Path,
    what: StateFile,
    options: &mut OpenOptions,
    op: &'static str,
) -> Result<Option<File>, StoreError> {
    match options
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => {
            check_file(&file, path, what)?;
            Ok(Some(file))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(open_error(e, path, what, op)),
    }
}

/// Opens a file of the store for writing (appending with `append`), creating it with mode
/// `0600` when it does not exist. An existing one must pass the checks.
pub(crate) fn open_or_create(
    path: &Path,
    what: StateFile,
    append: bool,
) -> Result<File, StoreError> {
    let options = |create: bool| {
        let mut options = OpenOptions::new();
        if append {
            options.append(true);
        } else {
            options.write(true);
        }
        options
            .create_new(create)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
        options
    };
    match options(true).open(path) {
        Ok(file) => {
            // Made here: its mode is ours to set, whatever the umask took away.
            file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
                .map_err(|source| StoreError::Io {
                    op: "set the mode of",
                    path: path.to_path_buf(),
                    source,
                })?;
            Ok(file)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let file = options(false)
                .open(path)
                .map_err(|e| open_error(e, path, what, "open"))?;
            check_file(&file, path, what)?;
            Ok(file)
        }
        Err(e) => Err(open_error(e, path, what, "create")),
    }
}

/// The error for a failed open: a symbolic link (`ELOOP` under `O_NOFOLLOW`) is named as
/// such.
fn open_error(e: io::Error, path: &Path, what: StateFile, op: &'static str) -> StoreError {
    if e.raw_os_error() == Some(libc::ELOOP) {
        StoreError::Symlink {
            what,
            path: path.to_path_buf(),
        }
    } else {
        StoreError::Io {
            op,
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// Checks an open file: regular, ours, mode `0600`.
pub(crate) fn check_file(file: &File, path: &Path, what: StateFile) -> Result<(), StoreError> {
    let metadata = file.metadata().map_err(|source| StoreError::Io {
        op: "read the attributes of",
        path: path.to_path_buf(),
        source,
    })?;
    check_metadata(&metadata, path, what)
}

fn check_metadata(metadata: &Metadata, path: &Path, what: StateFile) -> Result<(), StoreError> {
    if !metadata.file_type().is_file() {
        return Err(StoreError::NotRegular {
            what,
            path: path.to_path_buf(),
        });
    }
    let expected = euid();
    if metadata.uid() != expected {
        return Err(StoreError::WrongOwner {
            what,
            path: path.to_path_buf(),
            uid: metadata.uid(),
            expected,
        });
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode != FILE_MODE {
        return Err(StoreError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Checks the directory holding the store's files: not writable by group or others, owned
/// by this uid or by root.
pub(crate) fn check_directory(dir: &Path) -> Result<(), StoreError> {
    let metadata = std::fs::metadata(dir).map_err(|source| StoreError::Io {
        op: "read the attributes of the state directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o7777;
    let owner = metadata.uid();
    if mode & 0o022 != 0 || (owner != euid() && owner != 0) {
        return Err(StoreError::UnsafeDirectory {
            dir: dir.to_path_buf(),
            mode,
            owner,
        });
    }
    Ok(())
}

/// `path`'s directory (`.` for a bare file name).
pub(crate) fn directory_of(path: &Path) -> PathBuf {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir.to_path_buf(),
        None => PathBuf::from("."),
    }
}
