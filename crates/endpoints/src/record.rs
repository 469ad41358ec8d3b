//! An endpoint to and from its persisted record.

use sandbox_net_persist::{endpoint::EndpointKind, state::EndpointRecord};

use crate::{
    endpoint::{AttachedDevice, Endpoint, EndpointVariant},
    limiter::RateLimits,
    physical::PciAddress,
};

/// A record that cannot become an endpoint again.
#[derive(Debug, thiserror::Error)]
#[error("endpoint {id}: {}", match .value {
    Some(value) => format!("recorded {what} {value:?} is not valid"),
    None => format!("the record has no {what}, which its kind needs"),
})]
pub struct RecordError {
    /// The endpoint.
    pub id: String,
    /// The field.
    pub what: &'static str,
    /// Its value; `None` when the field is missing.
    pub value: Option<String>,
}

impl From<&Endpoint> for EndpointRecord {
    fn from(e: &Endpoint) -> Self {
        EndpointRecord {
            id: e.id.clone(),
            index: e.index,
            kind: e.kind(),
            model: e.device.model,
            interface: e.interface.clone(),
            guest_mac: e.device.guest_mac,
            queues: e.device.queues,
            rx_rate_bits: e.device.limits.rx_bits,
            tx_rate_bits: e.device.limits.tx_bits,
            pci: e.variant.pci().map(|p| p.to_string()),
            vhost_user_socket: e.variant.vhost_user_socket().cloned(),
            steps: e.steps.clone(),
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
                value: Some(value.to_string()),
            })
        };
        let missing = |what| RecordError {
            id: r.id.to_string(),
            what,
            value: None,
        };
        let variant = match r.kind {
            EndpointKind::Veth => EndpointVariant::Veth,
            EndpointKind::Macvlan => EndpointVariant::Macvlan,
            EndpointKind::Ipvlan => EndpointVariant::Ipvlan,
            EndpointKind::Netkit => EndpointVariant::Netkit,
            EndpointKind::Macvtap => EndpointVariant::Macvtap,
            EndpointKind::Tap => EndpointVariant::Tap,
            EndpointKind::Tuntap => EndpointVariant::Tuntap,
            EndpointKind::Physical => EndpointVariant::Physical {
                pci: pci_address(r.pci.as_deref().ok_or_else(|| missing("pci"))?)?,
            },
            EndpointKind::VhostUser => EndpointVariant::VhostUser {
                socket: r
                    .vhost_user_socket
                    .clone()
                    .ok_or_else(|| missing("vhost_user_socket"))?,
            },
        };
        let mut endpoint = Endpoint::new(r.index, variant, r.interface.clone());
        endpoint.id = r.id.clone();
        endpoint.steps = r.steps.clone();
        endpoint.attached = r.attached;
        endpoint.device = AttachedDevice {
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

#[cfg(test)]
mod tests {
    use sandbox_net_persist::IfName;

    use super::*;

    fn endpoint(variant: EndpointVariant) -> Endpoint {
        let mut endpoint = Endpoint::tap(
            3,
            IfName::new("eth1").unwrap(),
            "02:00:00:00:00:03".parse().unwrap(),
            1500,
        );
        endpoint.variant = variant;
        endpoint
    }

    #[test]
    fn the_variant_round_trips_through_the_record_fields() {
        let physical = endpoint(EndpointVariant::Physical {
            pci: "0000:00:03.0".parse().unwrap(),
        });
        let record = EndpointRecord::from(&physical);
        assert_eq!(record.kind, EndpointKind::Physical);
        assert_eq!(record.pci.as_deref(), Some("0000:00:03.0"));
        assert_eq!(record.vhost_user_socket, None);
        assert_eq!(Endpoint::try_from(&record).unwrap(), physical);

        let vhost_user = endpoint(EndpointVariant::VhostUser {
            socket: "/tmp/vhostuser_10.0.0.2/vhu.sock".into(),
        });
        let record = EndpointRecord::from(&vhost_user);
        assert_eq!(record.kind, EndpointKind::VhostUser);
        assert_eq!(record.pci, None);
        assert_eq!(
            record.vhost_user_socket.as_deref(),
            Some(std::path::Path::new("/tmp/vhostuser_10.0.0.2/vhu.sock"))
        );
        assert_eq!(Endpoint::try_from(&record).unwrap(), vhost_user);

        let tap = endpoint(EndpointVariant::Tap);
        let record = EndpointRecord::from(&tap);
        assert_eq!(
            (record.pci.as_ref(), record.vhost_user_socket.as_ref()),
            (None, None)
        );
        assert_eq!(Endpoint::try_from(&record).unwrap(), tap);
    }

    #[test]
    fn a_record_missing_what_its_kind_needs_names_the_endpoint_and_the_field() {
        let physical = endpoint(EndpointVariant::Physical {
            pci: "0000:00:03.0".parse().unwrap(),
        });
        let mut record = EndpointRecord::from(&physical);
        record.pci = None;
        let err = Endpoint::try_from(&record).unwrap_err();
        assert_eq!((err.what, err.value.as_deref()), ("pci", None));
        assert_eq!(
            err.to_string(),
            format!(
                "endpoint {}: the record has no pci, which its kind needs",
                physical.id
            )
        );
        record.pci = Some("0000:00:03".into());
        assert_eq!(
            Endpoint::try_from(&record).unwrap_err().to_string(),
            format!(
                "endpoint {}: recorded PCI address \"0000:00:03\" is not valid",
                physical.id
            )
        );

        let vhost_user = endpoint(EndpointVariant::VhostUser {
            socket: "/tmp/vhu.sock".into(),
        });
        let mut record = EndpointRecord::from(&vhost_user);
        record.vhost_user_socket = None;
        assert_eq!(
            Endpoint::try_from(&record).unwrap_err().to_string(),
            format!(
                "endpoint {}: the record has no vhost_user_socket, which its kind needs",
                vhost_user.id
            )
        );
    }
}
