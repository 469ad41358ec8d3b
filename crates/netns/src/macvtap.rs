//! macvtap devices: creation on a parent link, and opening their queues.
//!
//! devtmpfs names a macvtap's character device `/dev/tap<ifindex>`, but an ifindex is only
//! unique within a namespace while `/dev` is shared by all: two sandboxes with a macvtap at the
//! same ifindex get one node between them, and opening `/dev/tap<ifindex>` (what Kata does)
//! can open another sandbox's queue. The queues are opened instead on a throwaway thread that
//! enters the namespace, makes a private mount namespace, mounts a fresh sysfs (which shows the
//! thread's network namespace) to read the device number, and opens a node it makes itself on
//! a private tmpfs. The mounts vanish with the thread; the descriptors stay.

use std::{
    fs::{self, OpenOptions},
    io,
    os::{fd::OwnedFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
};

use nix::{
    mount::MsFlags,
    sched::CloneFlags,
    sys::stat::{Mode, SFlag},
};
use rand::RngExt;
use rtnetlink::{LinkMacVtap, packet_route::link::MacVtapMode};
use sandbox_net_persist::{IfName, MacAddr, scan::Link};

use crate::{
    MAX_TAP_QUEUES, Netns, Rtnl,
    error::{MacvtapError, NetlinkError},
    link::describe,
};

/// Random macvtap ifindexes are drawn from `8192 + (rand & 0xFFFF)` (Kata's `hostLinkOffset`
/// and `linkRange`), away from the small indexes the kernel hands out by itself.
pub const MACVTAP_INDEX_BASE: u32 = 8192;
/// How many random ifindexes are tried before giving up (Kata's `linkRetries`).
pub const MACVTAP_INDEX_TRIES: u32 = 128;

impl Rtnl {
    /// Creates a macvtap in bridge mode on `parent` (`ip link add NAME link PARENT type macvtap
    /// mode bridge index I`), with the parent's MTU and txqueuelen (1500 when the parent has
    /// none) and, if given, `mac`. The ifindex is `index` when given, else random (see
    /// [`MACVTAP_INDEX_BASE`]), retried on a clash up to [`MACVTAP_INDEX_TRIES`] times.
    pub async fn add_macvtap(
        &self,
        name: &IfName,
        parent: &Link,
        mac: Option<MacAddr>,
        index: Option<u32>,
    ) -> Result<Link, NetlinkError> {
        let txqueuelen = if parent.txqueuelen == 0 {
            1500
        } else {
            parent.txqueuelen
        };
        let object = || format!("macvtap {name} on {}", describe(parent));
        let mut last = None;
        let tries = if index.is_some() {
            1
        } else {
            MACVTAP_INDEX_TRIES
        };
        for _ in 0..tries {
            let index = index
                .unwrap_or_else(|| MACVTAP_INDEX_BASE + (rand::rng().random::<u32>() & 0xFFFF));
            let mut builder = LinkMacVtap::new(name.as_str(), parent.index, MacVtapMode::Bridge)
                .index(index)
                .mtu(parent.mtu)
                .txqueuelen(txqueuelen);
            if let Some(mac) = mac {
                builder = builder.address(mac.octets().to_vec());
            }
            match self.handle().link().add(builder.build()).execute().await {
                Ok(()) => return self.link_by_index(index).await,
                // EEXIST is either the name or the index; only an index clash is worth
                // another draw.
                Err(rtnetlink::Error::NetlinkError(e))
                    if e.raw_code() == -libc::EEXIST || e.raw_code() == -libc::EBUSY =>
                {
                    if self.link_by_name(name.as_str()).await.is_ok() {
                        return Err(self.request_error(
                            "add",
                            format!("{} (the name is taken)", object()),
                            rtnetlink::Error::NetlinkError(e),
                        ));
                    }
                    last = Some(rtnetlink::Error::NetlinkError(e));
                }
                Err(e) => return Err(self.request_error("add", object(), e)),
            }
        }
        let err = last.unwrap_or(rtnetlink::Error::RequestFailed);
        Err(self.request_error("find a free ifindex for", object(), err))
    }
}

impl Netns {
    /// Opens `queues` queue descriptors of the macvtap `link` of this namespace, without
    /// relying on `/dev/tap<ifindex>` (see the module documentation).
    #[tracing::instrument(name = "netns.macvtap_open", skip_all, fields(macvtap = %link.name, queues), err)]
    pub async fn open_macvtap_queues(
        &self,
        link: &Link,
        queues: usize,
    ) -> Result<Vec<OwnedFd>, MacvtapError> {
        if queues == 0 || queues > MAX_TAP_QUEUES {
            return Err(MacvtapError::InvalidQueues {
                name: link.name.clone(),
                queues,
            });
        }
        let (name, index, netns) = (link.name.clone(), link.index, self.path().to_path_buf());
        // A fresh thread each time, not `run_queued`: the thread unshares its mount namespace
        // and mounts a sysfs of its own, which a second job on the same thread would find
        // mounted (EBUSY).
        self.run(move || {
            open_queues(&name, index, queues).map_err(|(step, source)| MacvtapError::Step {
                step,
                name,
                index,
                netns,
                source,
            })
        })
        .await?
    }
}

type StepError = (&'static str, io::Error);

/// Runs on a thread inside the target network namespace; see the module documentation.
fn open_queues(name: &IfName, index: u32, queues: usize) -> Result<Vec<OwnedFd>, StepError> {
    let at = |step: &'static str| move |e: nix::errno::Errno| (step, io::Error::from(e));
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(at("make a private mount namespace"))?;
    // Nothing mounted from here on propagates back to the host.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(at("make mounts private"))?;
    nix::mount::mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(at("mount a sysfs of this namespace"))?;
    let dev_file = PathBuf::from(format!("/sys/class/net/{name}/macvtap/tap{index}/dev"));
    let dev = fs::read_to_string(&dev_file).map_err(|e| ("read the device number", e))?;
    let (major, minor) = parse_dev(dev.trim()).ok_or_else(|| {
        (
            "read the device number",
            io::Error::other(format!("{dev_file:?} holds {dev:?}")),
        )
    })?;
    let scratch = Path::new("/tmp");
    nix::mount::mount(
        Some("tmpfs"),
        scratch,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0700,size=64k"),
    )
    .map_err(at("mount a private tmpfs"))?;
    let node = scratch.join("macvtap");
    nix::sys::stat::mknod(
        &node,
        SFlag::S_IFCHR,
        Mode::S_IRUSR | Mode::S_IWUSR,
        nix::sys::stat::makedev(major, minor),
    )
    .map_err(at("make the device node"))?;
    (0..queues)
        .map(|_| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&node)
                .map(OwnedFd::from)
                .map_err(|e| ("open a queue", e))
        })
        .collect()
}

/// Parses `major:minor`.
fn parse_dev(text: &str) -> Option<(u64, u64)> {
    let (major, minor) = text.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_parse() {
        assert_eq!(parse_dev("246:1"), Some((246, 1)));
        assert_eq!(parse_dev("246"), None);
        assert_eq!(parse_dev("a:1"), None);
    }
}
