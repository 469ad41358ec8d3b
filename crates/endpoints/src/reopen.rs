//! Opening the device of an endpoint that is already attached, from its record alone.
//!
//! A sandbox attached by one process (the CLI's `attach`, with persistent taps) is handed to
//! a VMM by another: that one opens the queues anew. A tap is reopened by name in the
//! sandbox's namespace with the flags it was created with; a macvtap's queues are opened
//! through the private-mount recipe (never `/dev/tap<ifindex>`, which may be another
//! namespace's); vhost-net is opened only when enabled.

use std::os::fd::OwnedFd;

use sandbox_net_interworking::{NetnsHandles, Step};
use sandbox_net_netns::open_vhost_net;

use crate::{
    endpoint::{Endpoint, EndpointError, EndpointFailure, EndpointVariant},
    hypervisor::{Backend, HypervisorConfig, NetDevice},
    physical::SysfsPci,
};

/// How an attached endpoint's device is opened again.
#[derive(Debug, Clone)]
pub struct ReopenOptions {
    /// Which vhost-net descriptors to open (none when `disable_vhost_net`).
    pub vhost: HypervisorConfig,
    /// Where the VFIO group of a physical endpoint is looked up.
    pub sysfs: SysfsPci,
}

impl Endpoint {
    /// Opens the device of this attached endpoint again: its queues (as many as it was
    /// attached with) and, when enabled, as many vhost-net descriptors. Changes nothing in
    /// the namespace.
    pub async fn reopen_device(
        &self,
        kernel: NetnsHandles<'_>,
        options: &ReopenOptions,
    ) -> Result<NetDevice, EndpointError> {
        self.reopen(kernel, options)
            .await
            .map_err(|source| EndpointError {
                op: "reopen",
                id: self.id.clone(),
                kind: self.kind(),
                link: self.link_name().clone(),
                failures: sandbox_net_netns::Failures::new(source, []),
            })
    }

    async fn reopen(
        &self,
        kernel: NetnsHandles<'_>,
        options: &ReopenOptions,
    ) -> Result<NetDevice, EndpointFailure> {
        if !self.attached {
            return Err(EndpointFailure::Incomplete("the endpoint is not attached"));
        }
        let queues = (self.device.queues as usize).max(1);
        let vhost = |n: usize| -> Result<Vec<OwnedFd>, EndpointFailure> {
            if options.vhost.disable_vhost_net {
                Ok(Vec::new())
            } else {
                Ok(open_vhost_net(&options.vhost.vhost_net_path, n)?)
            }
        };
        let mac = self
            .device
            .guest_mac
            .or(self.interface.link.mac)
            .ok_or(EndpointFailure::Incomplete("no guest MAC was recorded"))?;
        let created_tap = self.steps.iter().find_map(|s| match s {
            Step::CreateTap { name, vnet_hdr, .. } => Some((name, *vnet_hdr)),
            _ => None,
        });
        let created_macvtap = self.steps.iter().find_map(|s| match s {
            Step::CreateMacvtap { name, .. } => Some(name),
            _ => None,
        });
        let backend = match (created_tap, created_macvtap, &self.variant) {
            (Some((name, vnet_hdr)), _, _) => {
                let tap = kernel
                    .netns
                    .open_tap_queues(name, queues, vnet_hdr)
                    .await
                    .map_err(EndpointFailure::Tap)?;
                Backend::Tap {
                    name: tap.name,
                    queues: tap.queues,
                    vhost: vhost(queues)?,
                }
            }
            (None, Some(name), _) => self.macvtap(kernel, name, queues, vhost).await?,
            (None, None, EndpointVariant::Macvtap) => {
                self.macvtap(kernel, self.link_name(), queues, vhost)
                    .await?
            }
            (None, None, EndpointVariant::Physical { pci }) => {
                let device = options
                    .sysfs
                    .vfio_device_path(pci)
                    .map_err(|e| EndpointFailure::Vfio(Box::new(e)))?;
                Backend::Vfio {
                    bdf: pci.clone(),
                    device,
                }
            }
            (None, None, EndpointVariant::VhostUser { socket }) => Backend::VhostUser {
                socket: socket.clone(),
            },
            (None, None, _) => {
                return Err(EndpointFailure::Incomplete(
                    "the record has no VM-side device to open",
                ));
            }
        };
        Ok(NetDevice {
            endpoint: self.id.clone(),
            guest_name: self.link_name().clone(),
            mac,
            mtu: self.interface.link.mtu,
            backend,
        })
    }

    async fn macvtap(
        &self,
        kernel: NetnsHandles<'_>,
        name: &sandbox_net_persist::IfName,
        queues: usize,
        vhost: impl Fn(usize) -> Result<Vec<OwnedFd>, EndpointFailure>,
    ) -> Result<Backend, EndpointFailure> {
        let link = kernel.rtnl.link_by_name(name.as_str()).await?;
        let fds = kernel.netns.open_macvtap_queues(&link, queues).await?;
        Ok(Backend::Macvtap {
            name: link.name,
            queues: fds,
            vhost: vhost(queues)?,
        })
    }
}
