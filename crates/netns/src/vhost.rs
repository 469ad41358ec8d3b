//! vhost-net descriptors, one per queue, for a VMM that moves the data path into the kernel.

use std::{
    fs::OpenOptions,
    io,
    os::{fd::OwnedFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
};

/// Where the vhost-net device usually is.
pub const VHOST_NET_PATH: &str = "/dev/vhost-net";

/// A failure to open vhost-net.
#[derive(Debug, thiserror::Error)]
#[error("failed to open vhost-net device {path} (queue {queue})")]
pub struct VhostError {
    /// The device path.
    pub path: PathBuf,
    /// The queue being opened.
    pub queue: usize,
    /// The cause; `ENOENT` when the kernel has no vhost-net.
    #[source]
    pub source: io::Error,
}

impl VhostError {
    /// The errno (`ENOENT`: no vhost-net on this machine).
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// Opens the vhost-net device at `path` (normally [`VHOST_NET_PATH`]) once per queue, read and
/// write, close-on-exec. Only call it when vhost is enabled: the descriptors pin kernel
/// resources. vhost-net is not namespaced, so this runs on any thread.
pub fn open_vhost_net(path: &Path, queues: usize) -> Result<Vec<OwnedFd>, VhostError> {
    (0..queues)
        .map(|queue| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .map(OwnedFd::from)
                .map_err(|source| VhostError {
                    path: path.to_path_buf(),
                    queue,
                    source,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_one_descriptor_per_queue_at_the_given_path() {
        // A regular file stands in for the device: what is tested is the path and the count.
        let stand_in =
            std::env::temp_dir().join(format!("sbx-vhost-stand-in-{}", std::process::id()));
        std::fs::write(&stand_in, b"").unwrap();
        assert_eq!(open_vhost_net(&stand_in, 4).unwrap().len(), 4);
        std::fs::remove_file(&stand_in).unwrap();
        let err = open_vhost_net(&stand_in, 2).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENOENT));
        assert_eq!(
            err.to_string(),
            format!(
                "failed to open vhost-net device {} (queue 0)",
                stand_in.display()
            )
        );
    }
}
