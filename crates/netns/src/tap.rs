//! Tap devices created through `/dev/net/tun`, one file descriptor per queue.
//!
//! rtnetlink cannot create tun/tap devices (the kernel answers `EOPNOTSUPP`), so this is the
//! ioctl path. `/dev/net/tun` binds a device to the namespace of the thread that *opens* it,
//! so the opens happen on a thread inside the target namespace ([`Netns::run`]).

use std::{
    fs::OpenOptions,
    os::{
        fd::{AsRawFd, BorrowedFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
};

use sandbox_net_persist::IfName;

use crate::{Netns, error::TapError};

/// The most queues a tap may have (Kata's `MAX_NETWORK_QUEUES`, the kernel's `MAX_TAP_QUEUES`).
pub const MAX_TAP_QUEUES: usize = 256;

nix::ioctl_write_ptr_bad!(tun_set_iff, libc::TUNSETIFF, libc::ifreq);
nix::ioctl_read_bad!(tun_get_iff, libc::TUNGETIFF, libc::ifreq);
nix::ioctl_write_int_bad!(tun_set_persist, libc::TUNSETPERSIST);
nix::ioctl_write_int_bad!(tun_set_owner, libc::TUNSETOWNER);
nix::ioctl_write_int_bad!(tun_set_group, libc::TUNSETGROUP);

/// What tap to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapConfig {
    /// The device name (e.g. `tap0_kata`).
    pub name: IfName,
    /// Number of queues, 1..=256; more than one sets `IFF_MULTI_QUEUE`.
    pub queues: usize,
    /// Frames carry a virtio-net header (`IFF_VNET_HDR`), as virtio-net VMMs expect.
    pub vnet_hdr: bool,
    /// `TUNSETOWNER`: the user allowed to open the tap (a jailed, non-root VMM).
    pub owner: Option<u32>,
    /// `TUNSETGROUP`: the group allowed to open the tap.
    pub group: Option<u32>,
    /// `TUNSETPERSIST`: keep the device when its last queue is closed, for a VMM that reopens
    /// it by name. A persistent tap must be deleted explicitly.
    pub persist: bool,
}

impl TapConfig {
    /// A non-persistent tap with a virtio-net header and `queues` queues.
    pub fn new(name: IfName, queues: usize) -> Self {
        Self {
            name,
            queues,
            vnet_hdr: true,
            owner: None,
            group: None,
            persist: false,
        }
    }

    /// The `ifr_flags` sent with `TUNSETIFF`: always `IFF_TAP | IFF_NO_PI`.
    pub fn flags(&self) -> u16 {
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if self.vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        if self.queues > 1 {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        // The IFF_* tun flags all fit in ifr_flags' 16 bits.
        flags as u16
    }
}

/// A tap device and one open descriptor per queue, as a VMM consumes them.
///
/// Unless created persistent, the kernel deletes the device when the last queue descriptor
/// is closed: dropping this value (without handing the descriptors on) removes the tap. The
/// descriptors are close-on-exec; a child forked by another thread holds copies until it
/// execs, which can delay the removal by that long.
#[derive(Debug)]
pub struct Tap {
    /// The device name.
    pub name: IfName,
    /// One descriptor per queue, in queue order.
    pub queues: Vec<OwnedFd>,
    /// The flags the kernel reports for the device (`TUNGETIFF`).
    pub flags: u16,
}

impl Netns {
    /// Creates a tap in this namespace (`ip tuntap add` with `multi_queue`, `vnet_hdr`, `user`,
    /// `group`), opening all its queues. Fails if a link of that name exists (`TUNSETIFF` would
    /// silently attach to an existing tap). On failure nothing is left behind.
    #[tracing::instrument(name = "netns.tap_create", skip_all, fields(tap = %config.name, queues = config.queues), err)]
    pub async fn create_tap(&self, config: &TapConfig) -> Result<Tap, TapError> {
        if config.queues == 0 || config.queues > MAX_TAP_QUEUES {
            return Err(TapError::InvalidQueues {
                name: config.name.clone(),
                queues: config.queues,
                max: MAX_TAP_QUEUES,
            });
        }
        let config = config.clone();
        let netns = self.path().to_path_buf();
        let tap = self.run_queued(move || open_tap(&config, netns)).await??;
        tracing::info!(tap = %tap.name, flags = format_args!("{:#x}", tap.flags), "tap created");
        Ok(tap)
    }

    /// Opens `queues` queue descriptors of the existing tap `name` in this namespace, the way
    /// a VMM that reopens a persistent tap does: `TUNSETIFF` with the same flags as
    /// [`TapConfig::flags`] (`IFF_MULTI_QUEUE` only for more than one queue, which must match
    /// how the tap was created, or the kernel answers `EINVAL`). Refuses with
    /// [`TapError::Missing`] when there is no link of that name, since `TUNSETIFF` would
    /// otherwise create a new, unwired tap.
    #[tracing::instrument(name = "netns.tap_open", skip_all, fields(tap = %name, queues), err)]
    pub async fn open_tap_queues(
        &self,
        name: &IfName,
        queues: usize,
        vnet_hdr: bool,
    ) -> Result<Tap, TapError> {
        if queues == 0 || queues > MAX_TAP_QUEUES {
            return Err(TapError::InvalidQueues {
                name: name.clone(),
                queues,
                max: MAX_TAP_QUEUES,
            });
        }
        let config = TapConfig {
            vnet_hdr,
            ..TapConfig::new(name.clone(), queues)
        };
        let netns = self.path().to_path_buf();
        self.run_queued(move || reopen_tap(&config, netns)).await?
    }
}

/// Sets or clears `TUNSETPERSIST` on the tap that `queue` (one of its queue descriptors) is
/// attached to. A tap that is not persistent is deleted by the kernel when its last queue
/// descriptor closes: clearing it once a VMM holds the queues makes the tap live exactly as
/// long as the VMM does.
pub fn set_tap_persist(queue: BorrowedFd<'_>, persist: bool) -> std::io::Result<()> {
    // SAFETY: an integer-argument ioctl on a descriptor the caller keeps open; on anything but
    // an attached tun descriptor the kernel answers an error.
    unsafe { tun_set_persist(queue.as_raw_fd(), i32::from(persist) as _) }?;
    Ok(())
}

/// Runs inside the namespace: attaches `config.queues` new descriptors to the existing tap.
fn reopen_tap(config: &TapConfig, netns: std::path::PathBuf) -> Result<Tap, TapError> {
    let name = &config.name;
    let Ok(before) = nix::net::if_::if_nametoindex(name.as_str()) else {
        return Err(TapError::Missing {
            name: name.clone(),
            netns,
        });
    };
    let mut request = ifreq_with_flags(name, config.flags());
    let queues = open_queues(config, &request, &netns)?;
    // The tap could have gone between the look-up and the opens, and TUNSETIFF then made a
    // new one: that one vanishes with `queues` when they are dropped here.
    if nix::net::if_::if_nametoindex(name.as_str()) != Ok(before) {
        return Err(TapError::Missing {
            name: name.clone(),
            netns,
        });
    }
    let flags = read_flags(&queues, &mut request, name, &netns)?;
    Ok(Tap {
        name: name.clone(),
        queues,
        flags,
    })
}

/// Opens `/dev/net/tun` once per queue and attaches each descriptor with `request`.
fn open_queues(
    config: &TapConfig,
    request: &libc::ifreq,
    netns: &std::path::Path,
) -> Result<Vec<OwnedFd>, TapError> {
    let step = |step: &'static str, queue: usize| {
        let (name, netns) = (config.name.clone(), netns.to_path_buf());
        move |source: std::io::Error| TapError::Step {
            step,
            name,
            queue,
            netns,
            source,
        }
    };
    let mut queues = Vec::with_capacity(config.queues);
    for queue in 0..config.queues {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(step("open /dev/net/tun", queue))?;
        // SAFETY: `request` is a fully initialised ifreq that outlives the call, and the fd is
        // an open /dev/net/tun descriptor owned by `file`.
        unsafe { tun_set_iff(file.as_raw_fd(), request) }
            .map_err(|e| step("attach (TUNSETIFF)", queue)(e.into()))?;
        queues.push(OwnedFd::from(file));
    }
    Ok(queues)
}

/// The flags the kernel reports for the tap (`TUNGETIFF` on its first queue).
fn read_flags(
    queues: &[OwnedFd],
    request: &mut libc::ifreq,
    name: &IfName,
    netns: &std::path::Path,
) -> Result<u16, TapError> {
    let step = |source: std::io::Error| TapError::Step {
        step: "read back (TUNGETIFF)",
        name: name.clone(),
        queue: 0,
        netns: netns.to_path_buf(),
        source,
    };
    let first = queues
        .first()
        .ok_or_else(|| step(std::io::Error::from_raw_os_error(libc::EBADF)))?;
    // SAFETY: `request` is a valid ifreq the kernel writes the device's name and flags into.
    unsafe { tun_get_iff(first.as_raw_fd(), request) }.map_err(|e| step(e.into()))?;
    // SAFETY: TUNGETIFF filled ifr_flags.
    Ok(unsafe { request.ifr_ifru.ifru_flags } as u16)
}

/// Runs inside the namespace: checks the name is free, opens every queue, then sets owner,
/// group and persistence.
fn open_tap(config: &TapConfig, netns: std::path::PathBuf) -> Result<Tap, TapError> {
    let name = &config.name;
    if nix::net::if_::if_nametoindex(name.as_str()).is_ok() {
        return Err(TapError::NameTaken {
            name: name.clone(),
            netns,
        });
    }
    let step = |step: &'static str, queue: usize| {
        let (name, netns) = (name.clone(), netns.clone());
        move |source: std::io::Error| TapError::Step {
            step,
            name,
            queue,
            netns,
            source,
        }
    };
    let mut request = ifreq_with_flags(name, config.flags());
    let queues = open_queues(config, &request, &netns)?;
    // `config.queues >= 1` was checked by the caller, so there is a first queue.
    let first = queues[0].as_raw_fd();
    if let Some(owner) = config.owner {
        // SAFETY: an integer-argument ioctl on an attached tun descriptor that `queues` owns.
        unsafe { tun_set_owner(first, owner as _) }
            .map_err(|e| step("set owner (TUNSETOWNER)", 0)(e.into()))?;
    }
    if let Some(group) = config.group {
        // SAFETY: as above.
        unsafe { tun_set_group(first, group as _) }
            .map_err(|e| step("set group (TUNSETGROUP)", 0)(e.into()))?;
    }
    if config.persist {
        // SAFETY: as above. Last step: a failure before it leaves a non-persistent device that
        // vanishes with the descriptors.
        unsafe { tun_set_persist(first, 1) }
            .map_err(|e| step("make persistent (TUNSETPERSIST)", 0)(e.into()))?;
    }
    let flags = read_flags(&queues, &mut request, name, &netns)?;
    Ok(Tap {
        name: name.clone(),
        queues,
        flags,
    })
}

/// An `ifreq` carrying `name` (NUL-terminated; `IfName` guarantees at most 15 bytes) and flags.
fn ifreq_with_flags(name: &IfName, flags: u16) -> libc::ifreq {
    let mut request = crate::ifreq_named(name);
    request.ifr_ifru.ifru_flags = flags as libc::c_short;
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_follow_the_config() {
        let name = IfName::new("tap0_kata").unwrap();
        assert_eq!(TapConfig::new(name.clone(), 1).flags(), 0x5002);
        assert_eq!(TapConfig::new(name.clone(), 4).flags(), 0x5102);
        let plain = TapConfig {
            vnet_hdr: false,
            ..TapConfig::new(name, 1)
        };
        assert_eq!(plain.flags(), 0x1002);
    }

    #[test]
    fn ifreq_carries_name_and_flags() {
        let req = ifreq_with_flags(&IfName::new("123456789012345").unwrap(), 0x5102);
        let name: Vec<u8> = req.ifr_name.iter().map(|c| *c as u8).collect();
        assert_eq!(&name[..15], b"123456789012345");
        assert_eq!(name[15], 0, "NUL-terminated");
        // SAFETY: the flags member was the one written.
        assert_eq!(unsafe { req.ifr_ifru.ifru_flags } as u16, 0x5102);
    }
}
