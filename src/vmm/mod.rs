//! Handing the devices to real VMMs: QEMU, Cloud Hypervisor and Firecracker.
//!
//! Each VMM has an adapter that is a [`Hypervisor`](sandbox_net_endpoints::Hypervisor) (what
//! endpoints hand their devices to) and a pure rendering of what that VMM must be told: QEMU
//! command-line arguments and QMP hot-plug commands ([`qemu`], [`qmp`]), Cloud Hypervisor's
//! `--net` argument and `vm.add-net` body ([`cloud_hypervisor`]), Firecracker's
//! `network-interfaces` entries ([`firecracker`]). The renderings work on a [`VmmDevice`]: a
//! device described with its descriptors given by the number (or the QMP name) the VMM knows
//! them by, or with the devices the VMM opens by name.
//!
//! Rules common to all:
//! - A device has as many queue pairs as descriptors; a tap is `IFF_MULTI_QUEUE` only with
//!   more than one. Queue pairs are never more than the VMM's vCPUs (a Linux guest uses
//!   `min(pairs, online vCPUs)`; the rest stay unread): [`clamp_queue_pairs`] lowers them
//!   with a warning.
//! - vhost-net descriptors are opened only when configured, one per queue pair.
//! - Rate limits go to the VMM's own token buckets where it has them (Cloud Hypervisor,
//!   Firecracker: [`RateLimiter`]); QEMU has none, so they are HTB on the host.

pub mod cloud_hypervisor;
mod device;
pub mod firecracker;
pub mod qemu;
pub mod qmp;

use std::{fmt, os::fd::BorrowedFd, str::FromStr};

pub use device::{FdRef, Queues, Vhost, VmmBackend, VmmDevice, fd_name, handed_fds};
use sandbox_net_endpoints::EndpointId;
use serde::Serialize;

/// The VMMs this module has an adapter for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmmKind {
    /// QEMU (`qemu-system-*`): descriptors on the command line or through QMP.
    Qemu,
    /// Cloud Hypervisor: descriptors on the command line (`--net fd=[..]`) or its HTTP API.
    CloudHypervisor,
    /// Firecracker: opens its one-queue tap by name.
    Firecracker,
}

impl VmmKind {
    /// Every kind, in the order the CLI lists them.
    pub const ALL: [VmmKind; 3] = [Self::Qemu, Self::CloudHypervisor, Self::Firecracker];

    /// The name the CLI and errors use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Qemu => "qemu",
            Self::CloudHypervisor => "cloud-hypervisor",
            Self::Firecracker => "firecracker",
        }
    }
}

impl fmt::Display for VmmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A VMM name this module has no adapter for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown VMM {0:?}: expected qemu, cloud-hypervisor or firecracker")]
pub struct UnknownVmm(pub String);

impl FromStr for VmmKind {
    type Err = UnknownVmm;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == text)
            .ok_or_else(|| UnknownVmm(text.to_string()))
    }
}

/// What a VMM cannot be told, or a configuration it cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmmError {
    /// More queue pairs than the VMM drives per device.
    #[error("{vmm} takes at most {max} queue pair(s) per network device; {queues} requested{}", for_endpoint(.endpoint))]
    TooManyQueues {
        /// The VMM.
        vmm: VmmKind,
        /// The endpoint, when a device asked for them.
        endpoint: Option<EndpointId>,
        /// The count asked for.
        queues: usize,
        /// The most it takes.
        max: usize,
    },
    /// A device this VMM cannot take in the way asked.
    #[error("{vmm} cannot take endpoint {endpoint} ({what}): {why}")]
    Unsupported {
        /// The VMM.
        vmm: VmmKind,
        /// The endpoint.
        endpoint: EndpointId,
        /// What the device is (`"a macvtap opened by name"`, `"a vhost-user socket"`, ...).
        what: &'static str,
        /// Why, and what to do instead.
        why: &'static str,
    },
    /// The rate limits cannot be given to this VMM's limiter.
    #[error("{vmm}: rate limits rx {rx} bit/s and tx {tx} bit/s cannot be configured: {why}")]
    Limits {
        /// The VMM.
        vmm: VmmKind,
        /// Into the VM, bits/s.
        rx: u64,
        /// Out of the VM, bits/s.
        tx: u64,
        /// Why.
        why: &'static str,
    },
    /// A device property outside what the VMM accepts.
    #[error("{vmm}: endpoint {endpoint}: {field} {value} is out of range ({range})")]
    OutOfRange {
        /// The VMM.
        vmm: VmmKind,
        /// The endpoint.
        endpoint: EndpointId,
        /// The field (`"MTU"`).
        field: &'static str,
        /// Its value.
        value: u64,
        /// The accepted range.
        range: &'static str,
    },
    /// Something the rendering needs is missing.
    #[error("{vmm}: {what}")]
    Missing {
        /// The VMM.
        vmm: VmmKind,
        /// What is missing, and where to give it.
        what: &'static str,
    },
    /// An endpoint's record lacks what a VMM needs to open its device.
    #[error("endpoint {endpoint}: the record has no {what}")]
    Record {
        /// The endpoint.
        endpoint: EndpointId,
        /// What is missing.
        what: &'static str,
    },
}

fn for_endpoint(endpoint: &Option<EndpointId>) -> String {
    endpoint
        .as_ref()
        .map(|e| format!(" by endpoint {e}"))
        .unwrap_or_default()
}

/// The queue pairs a device of `vmm` gets: `requested` (at least 1), lowered to `vcpus` with a
/// warning when it is more (pairs beyond the vCPUs are never used by a Linux guest, and each
/// costs the host a queue, a descriptor and, with vhost, a kernel thread).
pub fn clamp_queue_pairs(vmm: VmmKind, requested: usize, vcpus: usize) -> usize {
    let requested = requested.max(1);
    let vcpus = vcpus.max(1);
    if requested > vcpus {
        tracing::warn!(%vmm, requested, vcpus, "more queue pairs than vCPUs: using {vcpus}");
        vcpus
    } else {
        requested
    }
}

/// How long a token bucket takes to refill, in milliseconds: one second, as Kata configures
/// Cloud Hypervisor's and Firecracker's limiters, so that the bucket's size is the rate.
pub const REFILL_TIME_MS: u64 = 1000;

/// A token bucket as Cloud Hypervisor (`TokenBucket`) and Firecracker (`TokenBucket`) define
/// it: at most `size` tokens (bytes, for bandwidth), refilled in full every `refill_time`
/// milliseconds; `one_time_burst` extra tokens at the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TokenBucket {
    /// The bucket's capacity.
    pub size: u64,
    /// Extra tokens available once, at the start (left out: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the whole bucket.
    pub refill_time: u64,
}

/// A VMM's rate limiter: a bandwidth bucket (operations are not limited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RateLimiter {
    /// Bytes.
    pub bandwidth: TokenBucket,
}

impl RateLimiter {
    /// The limiter for at most `bits_per_second` (configured in bits/s, as the host-side HTB
    /// is; VMM buckets count bytes): `size` = the rate in bytes, rounded up, refilled every
    /// [`REFILL_TIME_MS`]. `None` for 0 (no limit).
    pub fn for_rate(bits_per_second: u64) -> Option<Self> {
        (bits_per_second > 0).then(|| Self {
            bandwidth: TokenBucket {
                size: bits_per_second.div_ceil(8),
                one_time_burst: None,
                refill_time: REFILL_TIME_MS,
            },
        })
    }

    /// This limiter with its bucket divided among `parts` users that each get their own copy
    /// (Cloud Hypervisor gives every queue its own bucket), so that together they stay within
    /// the configured rate.
    pub fn split(self, parts: usize) -> Self {
        let parts = parts.max(1) as u64;
        Self {
            bandwidth: TokenBucket {
                size: self.bandwidth.size.div_ceil(parts),
                ..self.bandwidth
            },
        }
    }
}

/// The descriptors of `devices` to hand to a VMM that is started with them: every queue and
/// vhost-net descriptor, in the order the renderings name them.
pub fn descriptors(devices: &[sandbox_net_endpoints::NetDevice]) -> Vec<BorrowedFd<'_>> {
    devices.iter().flat_map(handed_fds).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_names_parse_and_unknown_ones_are_named() {
        for kind in VmmKind::ALL {
            assert_eq!(kind.name().parse::<VmmKind>(), Ok(kind));
        }
        let err = "kvmtool".parse::<VmmKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown VMM \"kvmtool\": expected qemu, cloud-hypervisor or firecracker"
        );
    }

    #[test]
    fn queue_pairs_are_clamped_to_the_vcpus() {
        assert_eq!(clamp_queue_pairs(VmmKind::Qemu, 4, 2), 2);
        assert_eq!(clamp_queue_pairs(VmmKind::Qemu, 2, 4), 2);
        assert_eq!(clamp_queue_pairs(VmmKind::Qemu, 0, 4), 1);
        assert_eq!(clamp_queue_pairs(VmmKind::Qemu, 3, 0), 1);
    }

    #[test]
    fn a_rate_in_bits_becomes_a_bucket_of_bytes_per_second() {
        assert_eq!(RateLimiter::for_rate(0), None);
        let limiter = RateLimiter::for_rate(10_000_000).unwrap();
        assert_eq!(
            serde_json::to_value(limiter).unwrap(),
            serde_json::json!({"bandwidth": {"size": 1_250_000, "refill_time": 1000}})
        );
        // Never a bucket of 0 bytes, which the VMMs read as "no limit".
        assert_eq!(RateLimiter::for_rate(1).unwrap().bandwidth.size, 1);
        assert_eq!(limiter.split(4).bandwidth.size, 312_500);
        assert_eq!(limiter.split(3).bandwidth.size, 416_667);
    }
}
