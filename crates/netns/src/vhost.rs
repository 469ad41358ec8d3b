//! vhost-net descriptors, one per queue, for a VMM that moves the data path into the kernel.

use std::{
    fs::OpenOptions,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd},
        unix::fs::OpenOptionsExt,
    },
    path::{Path, PathBuf},
};

/// Where the vhost-net device usually is.
pub const VHOST_NET_PATH: &str = "/dev/vhost-net";

/// `VHOST_NET_F_VIRTIO_NET_HDR` (`linux/vhost_types.h`, bit 27): vhost-net offers it, as no
/// other vhost device (vsock, scsi, vdpa) does. It lets the backend add the virtio-net header.
pub const VHOST_NET_F_VIRTIO_NET_HDR: u64 = 1 << 27;

// VHOST_GET_FEATURES = _IOR(VHOST_VIRTIO 0xAF, 0x00, __u64) (linux/vhost.h).
nix::ioctl_read!(vhost_get_features, 0xAF, 0x00, u64);

/// A descriptor that is not a vhost device: `VHOST_GET_FEATURES` failed on it.
#[derive(Debug, thiserror::Error)]
#[error("descriptor {fd} is not a vhost device: VHOST_GET_FEATURES failed")]
pub struct NotVhostError {
    /// The descriptor.
    pub fd: RawFd,
    /// The kernel's answer (`ENOTTY` for a descriptor of another kind).
    #[source]
    pub source: io::Error,
}

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

/// The features a vhost descriptor offers (`VHOST_GET_FEATURES`), which a VMM negotiates with
/// the guest's virtio-net driver. A vhost-net descriptor has [`VHOST_NET_F_VIRTIO_NET_HDR`]
/// among them. Needs no owner: it is the first thing a VMM asks.
pub fn vhost_features(fd: BorrowedFd<'_>) -> Result<u64, NotVhostError> {
    let mut features = 0u64;
    // SAFETY: VHOST_GET_FEATURES writes one u64 through the pointer, which points at a live
    // local; on a descriptor of another kind the kernel writes nothing and fails.
    unsafe { vhost_get_features(fd.as_raw_fd(), &mut features) }.map_err(|errno| {
        NotVhostError {
            fd: fd.as_raw_fd(),
            source: errno.into(),
        }
    })?;
    Ok(features)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn a_descriptor_of_another_kind_is_not_taken_for_vhost() {
        let file = tempfile_in_tmp("features");
        let err = vhost_features(file.as_fd()).unwrap_err();
        assert_eq!(err.source.raw_os_error(), Some(libc::ENOTTY));
        assert_eq!(
            err.to_string(),
            format!(
                "descriptor {} is not a vhost device: VHOST_GET_FEATURES failed",
                file.as_raw_fd()
            )
        );
    }

    /// An open regular file, removed at once.
    fn tempfile_in_tmp(tag: &str) -> std::fs::File {
        let path = std::env::temp_dir().join(format!("sbx-vhost-{tag}-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

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
