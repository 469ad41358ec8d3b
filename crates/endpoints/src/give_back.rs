//! Giving a physical NIC back to the pod once the VM has let go of its PCI function.
//!
//! While the function is bound to vfio-pci its network interface does not exist: unbinding
//! the NIC's driver unregistered it, and its addresses and routes went with it. When the
//! function goes back to its driver ([`SysfsPci::unbind_vfio`]), the driver registers a new
//! interface, and the kernel puts the interfaces of the devices it probes in the host's
//! initial namespace, with the driver's name (which udev may change), the NIC's factory MAC,
//! the default MTU, down, without an address. [`give_back`] makes it the pod's again:
//!
//! 1. waits for the function's interface to appear in sysfs (`devices/<bdf>/net/<name>`),
//!    and takes its `ifindex` there: the index does not change when udev renames it;
//! 2. moves it from the driver's namespace into the pod's, under the pod's name for it, in
//!    one request (`ip link set DEV netns POD name eth0`);
//! 3. gives it the MAC and MTU the pod's scan recorded and sets it up (IPv4 routes cannot be
//!    added through a link that is down);
//! 4. restores its addresses, routes (every route through it, in every table) and permanent
//!    neighbours exactly as the scan recorded them: the same restore as a macvtap detach's
//!    (the undo of [`Step::ClearAddresses`]);
//! 5. sets it down again if it was down.
//!
//! If the interface does not appear (a driver that failed to probe), or a link of the pod's
//! name is already in the pod when sysfs shows none, the error says so; a later detach tries
//! again (the binding stays recorded until the NIC is back), and finds the interface in the
//! pod if an earlier attempt moved it there.

use std::time::{Duration, Instant};

use sandbox_net_interworking::{NetnsHandles, Step, UndoError, undo};
use sandbox_net_netns::{LinkChange, NetlinkError, Netns, NetnsError};
use sandbox_net_persist::{IfName, scan::Interface};

use crate::physical::{PciAddress, SysfsPci, VfioError};

/// How long the driver has to register the function's interface after it is bound.
pub const PROBE_WAIT: Duration = Duration::from_secs(10);

/// Why the NIC could not be given back to the pod.
#[derive(Debug, thiserror::Error)]
pub enum GiveBackError {
    /// The function's sysfs entries could not be read.
    #[error(transparent)]
    Sysfs(#[from] VfioError),
    /// The driver registered no interface for the function in time.
    #[error(
        "PCI device {bdf} is back on its driver but no network interface appeared for it under \
         {path} within {waited:?}, and the pod has no {name}"
    )]
    NoInterface {
        /// The function.
        bdf: PciAddress,
        /// The sysfs directory watched.
        path: std::path::PathBuf,
        /// How long.
        waited: Duration,
        /// The pod's name for the NIC.
        name: IfName,
    },
    /// The namespace the driver registers interfaces in could not be opened.
    #[error(transparent)]
    DriverNetns(#[from] NetnsError),
    /// A netlink request (finding, moving or configuring the interface) failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// Addresses, routes or neighbours could not all be given back.
    #[error("NIC {name} is back in the pod, but its configuration is not complete")]
    Configuration {
        /// The pod's name for the NIC.
        name: IfName,
        /// What failed.
        #[source]
        source: UndoError,
    },
}

/// Moves the NIC of PCI function `bdf`, back on its driver, into the pod (`pod`) and gives it
/// what the pod's scan recorded of it (`interface`): name, MAC, MTU, addresses, routes,
/// permanent neighbours, up or down. See the module's documentation.
#[tracing::instrument(name = "endpoints.give_back_nic", skip_all, fields(bdf = %bdf, link = %interface.link.name))]
pub async fn give_back(
    pod: NetnsHandles<'_>,
    sysfs: &SysfsPci,
    bdf: &PciAddress,
    interface: &Interface,
) -> Result<(), GiveBackError> {
    let name = &interface.link.name;
    let started = Instant::now();
    let found = loop {
        if let Some(found) = sysfs.net_interfaces(bdf)?.into_iter().next() {
            break Some(found);
        }
        if started.elapsed() >= PROBE_WAIT {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    match found {
        Some((driver_name, ifindex)) => {
            let driver_netns = Netns::open(sysfs.driver_netns())?;
            let rtnl = driver_netns.rtnl().await?;
            let link = rtnl.link_by_index(ifindex).await?;
            rtnl.move_link_named(&link, pod.netns, name).await?;
            tracing::info!(%driver_name, ifindex, "interface moved into the pod");
        }
        // An earlier attempt moved it, and failed after.
        None if pod.rtnl.link_by_name(name.as_str()).await.is_ok() => {
            tracing::info!("interface already in the pod");
        }
        None => {
            return Err(GiveBackError::NoInterface {
                bdf: bdf.clone(),
                path: sysfs.net_dir(bdf),
                waited: PROBE_WAIT,
                name: name.clone(),
            });
        }
    }
    let link = pod.rtnl.link_by_name(name.as_str()).await?;
    let change = LinkChange {
        mtu: Some(interface.link.mtu),
        mac: interface.link.mac,
        up: Some(true),
        ..LinkChange::default()
    };
    pod.rtnl.change_link_attributes(&link, &change).await?;
    // The interface is a new one: the routes and neighbours the scan recorded through the old
    // one's index go through the new one's.
    let renumbered = renumbered(interface, link.index);
    let all_routes = !renumbered.all_routes.is_empty();
    let configuration = Step::ClearAddresses {
        link: name.clone(),
        addresses: renumbered.addresses,
        routes: if all_routes {
            renumbered.all_routes
        } else {
            renumbered.routes
        },
        neighbours: renumbered.neighbours,
        all_routes,
    };
    undo(pod, &[configuration])
        .await
        .map_err(|source| GiveBackError::Configuration {
            name: name.clone(),
            source,
        })?;
    if !interface.link.up {
        pod.rtnl.set_link_down(&link).await?;
    }
    tracing::info!("NIC given back to the pod");
    Ok(())
}

/// `interface` as it is once its link has the index `index`: its routes (their next hops
/// included) and neighbours through the old index go through the new one; those through other
/// links are unchanged.
fn renumbered(interface: &Interface, index: u32) -> Interface {
    let old = interface.link.index;
    let mut renumbered = interface.clone();
    renumbered.link.index = index;
    let renumber = |device: &mut Option<u32>| {
        if *device == Some(old) {
            *device = Some(index);
        }
    };
    for route in renumbered
        .routes
        .iter_mut()
        .chain(renumbered.all_routes.iter_mut())
    {
        renumber(&mut route.device_index);
        for hop in &mut route.multipath {
            renumber(&mut hop.device_index);
        }
    }
    for neighbour in &mut renumbered.neighbours {
        if neighbour.device_index == old {
            neighbour.device_index = index;
        }
    }
    renumbered
}

#[cfg(test)]
mod tests {
    use sandbox_net_persist::scan::{Link, NextHop, Route};

    use super::*;

    #[test]
    fn routes_and_neighbours_of_the_old_index_move_to_the_new_one() {
        let through = |index: u32| Route {
            device_index: Some(index),
            multipath: vec![
                NextHop {
                    gateway: None,
                    device_index: Some(index),
                    weight: 1,
                    onlink: false,
                },
                NextHop {
                    gateway: None,
                    device_index: Some(9),
                    weight: 1,
                    onlink: false,
                },
            ],
            ..Route::default()
        };
        let interface = Interface {
            link: Link {
                name: IfName::new("eth0").unwrap(),
                index: 2,
                kind: None,
                mtu: 1500,
                mac: None,
                up: true,
                lower_up: true,
                loopback: false,
                parent_index: None,
                parent_netnsid: None,
                txqueuelen: 1000,
                tuntap: None,
                netkit: None,
            },
            addresses: vec![],
            routes: vec![through(2)],
            all_routes: vec![
                through(2),
                Route {
                    device_index: Some(9),
                    ..Route::default()
                },
            ],
            neighbours: vec![],
        };
        let moved = renumbered(&interface, 7);
        assert_eq!(moved.link.index, 7);
        assert_eq!(moved.routes[0].device_index, Some(7));
        assert_eq!(moved.routes[0].multipath[0].device_index, Some(7));
        assert_eq!(moved.routes[0].multipath[1].device_index, Some(9));
        assert_eq!(moved.all_routes[1].device_index, Some(9));
    }
}
