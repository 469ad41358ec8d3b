//! An endpoint to and from its persisted record.

use sandbox_net_persist::state::{EndpointRecord, VfioRecord};

use crate::{
    classify::Facts,
    endpoint::{DeviceRecord, Endpoint},
    limiter::RateLimits,
    physical::{PciAddress, VfioBinding},
};

/// A record that cannot become an endpoint again.
#[derive(Debug, thiserror::Error)]
#[error("endpoint {id}: recorded {what} {value:?} is not valid")]
pub struct RecordError {
    /// The endpoint.
    pub id: String,
    /// The field.
    pub what: &'static str,
    /// Its value.
    pub value: String,
}

impl From<&Endpoint> for EndpointRecord {
    fn from(e: &Endpoint) -> Self {
        EndpointRecord {
            id: e.id.clone(),
            index: e.index,
            kind: e.kind,
            model: e.device.model,
            interface: e.interface.clone(),
            guest_mac: e.device.guest_mac,
            queues: e.device.queues,
            rx_rate_bits: e.device.limits.rx_bits,
            tx_rate_bits: e.device.limits.tx_bits,
            pci: e.facts.pci.as_ref().map(|p| p.to_string()),
            vhost_user_socket: e.facts.vhost_user_socket.clone(),
            steps: e.steps.clone(),
            vfio: e.vfio.as_ref().map(|b| VfioRecord {
                bdf: b.bdf.to_string(),
                original_driver: b.original_driver.clone(),
                original_override: b.original_override.clone(),
            }),
            attached: e.attached,
        }
    }
}

impl TryFrom<&EndpointRecord> for Endpoint {
    type Error = RecordError;

    /// The endpoint as recorded, without any descriptor: enough to detach, tear down or check.
    fn try_from(r: &EndpointRecord) -> Result<Self, Self::Error> {
        let pci_address = |value: &str| {
            value.parse::<PciAddress>().map_err(|_| RecordError {
                id: r.id.to_string(),
                what: "PCI address",
                value: value.to_string(),
            })
        };
        let pci = r.pci.as_deref().map(pci_address).transpose()?;
        let vfio = match &r.vfio {
            Some(v) => Some(VfioBinding {
                bdf: pci_address(&v.bdf)?,
                original_driver: v.original_driver.clone(),
                original_override: v.original_override.clone(),
            }),
            None => None,
        };
        let mut endpoint = Endpoint::new(
            r.index,
            r.kind,
            r.interface.clone(),
            Facts {
                pci,
                vhost_user_socket: r.vhost_user_socket.clone(),
            },
        );
        endpoint.id = r.id.clone();
        endpoint.steps = r.steps.clone();
        endpoint.vfio = vfio;
        endpoint.attached = r.attached;
        endpoint.device = DeviceRecord {
            model: r.model,
            queues: r.queues,
            guest_mac: r.guest_mac,
            limits: RateLimits {
                rx_bits: r.rx_rate_bits,
                tx_bits: r.tx_rate_bits,
            },
        };
        Ok(endpoint)
    }
}
