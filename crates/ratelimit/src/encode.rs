//! Pure HTB encoders and dump parsers: `tc_htb_glob`, `tc_ratespec`,
//! `tc_htb_opt`, the rate tables, the qdisc and class messages, and the parsers of what the
//! kernel dumps back. No I/O.

use netlink_packet_core::{DefaultNla, NLA_TYPE_MASK, Nla, NlasIterator};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcHeader, TcMessage, TcOption};

use crate::{PschedClock, RateError};

/// `TCA_OPTIONS`: the attribute that nests a qdisc's or class's own attributes.
pub const TCA_OPTIONS: u16 = 2;
/// `TCA_HTB_PARMS`: a class's `tc_htb_opt`.
pub const TCA_HTB_PARMS: u16 = 1;
/// `TCA_HTB_INIT`: the root qdisc's `tc_htb_glob`.
pub const TCA_HTB_INIT: u16 = 2;
/// `TCA_HTB_CTAB`: the ceil's rate table.
pub const TCA_HTB_CTAB: u16 = 3;
/// `TCA_HTB_RTAB`: the rate's rate table.
pub const TCA_HTB_RTAB: u16 = 4;
/// `TCA_HTB_DIRECT_QLEN`: the qdisc's direct queue length (dumped, never sent here).
pub const TCA_HTB_DIRECT_QLEN: u16 = 5;
/// `TCA_HTB_RATE64`: the rate in bytes/s when it does not fit in 32 bits.
pub const TCA_HTB_RATE64: u16 = 6;
/// `TCA_HTB_CEIL64`: the ceil in bytes/s when it does not fit in 32 bits.
pub const TCA_HTB_CEIL64: u16 = 7;

/// `TC_HTB_PROTOVER`, the `tc_htb_glob` version.
pub const TC_HTB_PROTOVER: u32 = 3;
/// The rate-to-quantum divisor of the root qdisc (`r2q`, tc's default).
pub const R2Q: u32 = 10;
/// The minor of the default class: unclassified traffic goes to `1:2`.
pub const DEFAULT_CLASS_MINOR: u32 = 2;
/// The MTU the bursts and rate tables are sized for (tc's default for HTB).
pub const MTU: u32 = 1600;
/// The rate tables' `cell_log`: 256 cells of 8 bytes cover [`MTU`].
pub const CELL_LOG: u8 = 3;
/// `TC_LINKLAYER_ETHERNET`.
pub const TC_LINKLAYER_ETHERNET: u8 = 1;
/// The smallest quantum sent; the kernel's floor for an automatic one.
pub const MIN_QUANTUM: u32 = 1000;
/// The largest quantum sent; the kernel's ceiling for an automatic one.
pub const MAX_QUANTUM: u32 = 200_000;

/// The root qdisc `1:`.
pub const ROOT_HANDLE: u32 = 0x0001_0000;
/// Class `1:1`, the child of the root qdisc.
pub const CLASS_1_1: u32 = 0x0001_0001;
/// Class `1:2`, the child of `1:1` and the default class.
pub const CLASS_1_2: u32 = 0x0001_0002;
/// `TC_H_ROOT`: the parent of a root qdisc, and how the kernel reports the parent of `1:1`.
pub const TC_H_ROOT: u32 = 0xFFFF_FFFF;

/// The smallest rate accepted: 1 byte/s.
pub const MIN_BITS_PER_SECOND: u64 = 8;
/// The largest rate accepted: 200 Gbit/s (25 000 000 000 bytes/s).
///
/// The kernel itself accepts every 64-bit rate (a class at `u64::MAX` bytes/s is created and
/// dumps back unchanged), so this is our choice, not the kernel's: it is a round value just
/// below 203.125 Gbit/s, the rate above which tc's burst rule (`rate / hz + mtu` bytes) gives
/// 0 psched ticks on the build machines' clock (64 ns ticks, hz 1e9). Above it the class
/// would get no burst at all and software HTB could not shape at the configured rate anyway;
/// 0 (no limiter) is the honest configuration there.
pub const MAX_BITS_PER_SECOND: u64 = 200_000_000_000;

/// An attribute as `(type, value)`.
type Attribute = (u16, Vec<u8>);

/// Size of `tc_htb_glob`.
const GLOB_LEN: usize = 20;
/// Size of `tc_htb_opt`.
const OPT_LEN: usize = 44;

/// Converts a configured rate in bits/s to the bytes/s the kernel takes: `floor(bits / 8)`.
/// Flooring never exceeds the configured maximum: the limiter may be up to 7 bit/s slower
/// than asked, never faster.
pub fn bits_to_bytes(bits_per_second: u64) -> u64 {
    bits_per_second / 8
}

/// A rate HTB can be given: between [`MIN_BITS_PER_SECOND`] and [`MAX_BITS_PER_SECOND`],
/// held in bytes/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HtbRate {
    bytes_per_second: u64,
}

impl HtbRate {
    /// Validates a configured rate in bits/s. Callers treat 0 as "no limit" before calling:
    /// here it is [`RateError::Zero`].
    pub fn from_bits(bits: u64) -> Result<Self, RateError> {
        if bits == 0 {
            return Err(RateError::Zero);
        }
        if bits < MIN_BITS_PER_SECOND {
            return Err(RateError::TooSmall {
                bits,
                min: MIN_BITS_PER_SECOND,
            });
        }
        if bits > MAX_BITS_PER_SECOND {
            return Err(RateError::TooLarge {
                bits,
                max: MAX_BITS_PER_SECOND,
            });
        }
        Ok(Self {
            bytes_per_second: bits_to_bytes(bits),
        })
    }

    /// The rate in bytes/s.
    pub fn bytes_per_second(self) -> u64 {
        self.bytes_per_second
    }

    /// The 32-bit `tc_ratespec.rate`: the rate, or `u32::MAX` when it needs `RATE64`.
    pub fn ratespec_rate(self) -> u32 {
        u32::try_from(self.bytes_per_second).unwrap_or(u32::MAX)
    }

    /// Whether the rate needs `TCA_HTB_RATE64`/`TCA_HTB_CEIL64` (≥ 2^32 bytes/s).
    pub fn needs_rate64(self) -> bool {
        self.bytes_per_second > u64::from(u32::MAX)
    }

    /// The explicit quantum sent for a class of this rate: `rate / r2q` clamped to
    /// 1000..=200000, which is what the kernel would pick for an automatic quantum, but
    /// without its "quantum of class ... is big/small" warning (an explicit quantum is used
    /// as given).
    pub fn quantum(self) -> u32 {
        let quantum = self.bytes_per_second / u64::from(R2Q);
        quantum.clamp(u64::from(MIN_QUANTUM), u64::from(MAX_QUANTUM)) as u32
    }
}

/// `tc_htb_glob` (20 bytes, native-endian): version 3, r2q 10, the default class minor,
/// debug 0, direct_pkts 0.
pub fn htb_glob(default_class_minor: u32) -> [u8; GLOB_LEN] {
    let mut out = [0u8; GLOB_LEN];
    out[0..4].copy_from_slice(&TC_HTB_PROTOVER.to_ne_bytes());
    out[4..8].copy_from_slice(&R2Q.to_ne_bytes());
    out[8..12].copy_from_slice(&default_class_minor.to_ne_bytes());
    out
}

/// `tc_ratespec` (12 bytes): cell_log 3, linklayer ETHERNET, overhead 0, cell_align -1,
/// mpu 0, rate in bytes/s or `u32::MAX` when it needs `RATE64`.
pub fn ratespec(rate: HtbRate) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[0] = CELL_LOG;
    out[1] = TC_LINKLAYER_ETHERNET;
    out[4..6].copy_from_slice(&(-1i16).to_ne_bytes());
    out[8..12].copy_from_slice(&rate.ratespec_rate().to_ne_bytes());
    out
}

/// `tc_htb_opt` (44 bytes): rate, ceil, buffer and cbuffer in psched ticks (the time to send
/// `rate / hz + 1600` bytes), the explicit quantum of `rate`, level 0, prio 0.
pub fn htb_opt(rate: HtbRate, ceil: HtbRate, clock: &PschedClock) -> [u8; OPT_LEN] {
    let mut out = [0u8; OPT_LEN];
    out[0..12].copy_from_slice(&ratespec(rate));
    out[12..24].copy_from_slice(&ratespec(ceil));
    let buffer = clock.burst_ticks(rate.bytes_per_second(), MTU);
    let cbuffer = clock.burst_ticks(ceil.bytes_per_second(), MTU);
    out[24..28].copy_from_slice(&buffer.to_ne_bytes());
    out[28..32].copy_from_slice(&cbuffer.to_ne_bytes());
    out[32..36].copy_from_slice(&rate.quantum().to_ne_bytes());
    out
}

/// The rate table of iproute2's `tc_calc_rtable` for [`MTU`] and an Ethernet link layer:
/// entry `i` is the time in ticks to send `(i + 1) << 3` bytes at the 32-bit
/// `tc_ratespec.rate` (so `u32::MAX` bytes/s for 64-bit rates, as tc does). The kernel
/// reads it only for `TC_LINKLAYER_UNAWARE`; it is sent to match tc.
pub fn rate_table(rate: HtbRate, clock: &PschedClock) -> [u32; 256] {
    let bytes_per_second = u64::from(rate.ratespec_rate());
    std::array::from_fn(|i| clock.xmittime(bytes_per_second, ((i as u64) + 1) << CELL_LOG))
}

fn table_bytes(table: &[u32; 256]) -> Vec<u8> {
    table.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

fn option(kind: u16, value: impl Into<Vec<u8>>) -> TcOption {
    TcOption::Other(DefaultNla::new(kind, value.into()))
}

/// The `RTM_NEWQDISC` payload for the root qdisc `1:` with default class `1:2`: parent
/// root, handle `1:0`, kind `htb`, options `[TCA_HTB_INIT(tc_htb_glob)]`.
pub fn root_qdisc_message(ifindex: u32) -> TcMessage {
    let header = TcHeader {
        index: ifindex as i32,
        handle: TcHandle::from(ROOT_HANDLE),
        parent: TcHandle::from(TC_H_ROOT),
        ..TcHeader::default()
    };
    TcMessage::from_parts(
        header,
        vec![
            TcAttribute::Kind("htb".to_string()),
            TcAttribute::Options(vec![option(TCA_HTB_INIT, htb_glob(DEFAULT_CLASS_MINOR))]),
        ],
    )
}

/// The `RTM_NEWTCLASS` payload for an HTB class with rate = ceil = `rate`: kind `htb`,
/// options `[PARMS, RTAB, CTAB]`, plus `RATE64` and `CEIL64` when the rate needs 64 bits.
pub fn class_message(
    ifindex: u32,
    handle: u32,
    parent: u32,
    rate: HtbRate,
    clock: &PschedClock,
) -> TcMessage {
    let header = TcHeader {
        index: ifindex as i32,
        handle: TcHandle::from(handle),
        parent: TcHandle::from(parent),
        ..TcHeader::default()
    };
    let table = table_bytes(&rate_table(rate, clock));
    let mut options = vec![
        option(TCA_HTB_PARMS, htb_opt(rate, rate, clock)),
        option(TCA_HTB_RTAB, table.clone()),
        option(TCA_HTB_CTAB, table),
    ];
    if rate.needs_rate64() {
        let bytes = rate.bytes_per_second().to_ne_bytes();
        options.push(option(TCA_HTB_RATE64, bytes));
        options.push(option(TCA_HTB_CEIL64, bytes));
    }
    TcMessage::from_parts(
        header,
        vec![
            TcAttribute::Kind("htb".to_string()),
            TcAttribute::Options(options),
        ],
    )
}

/// An HTB class as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HtbClassReadback {
    /// The class id (`1:2` = `0x0001_0002`).
    pub handle: u32,
    /// The parent; a top-level class such as `1:1` reports [`TC_H_ROOT`], not `1:`.
    pub parent: u32,
    /// The rate in bytes/s (`TCA_HTB_RATE64` when present).
    pub rate: u64,
    /// The ceil in bytes/s (`TCA_HTB_CEIL64` when present).
    pub ceil: u64,
    /// The burst in psched ticks.
    pub buffer: u32,
    /// The ceil burst in psched ticks.
    pub cbuffer: u32,
    /// The quantum in bytes.
    pub quantum: u32,
}

/// An HTB qdisc as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HtbQdiscReadback {
    /// The qdisc's handle (`1:` = [`ROOT_HANDLE`]).
    pub handle: u32,
    /// Its parent ([`TC_H_ROOT`] for a root qdisc).
    pub parent: u32,
    /// The `tc_htb_glob` version.
    pub version: u32,
    /// The rate-to-quantum divisor.
    pub r2q: u32,
    /// The minor of the default class (2 for `1:2`).
    pub default_class: u32,
    /// `TCA_HTB_DIRECT_QLEN`, when present.
    pub direct_qlen: Option<u32>,
}

/// Parses an HTB class from a class message (a kernel dump, or a message built by
/// [`class_message`]). `None` when the message is not of kind `htb` or is an HTB qdisc.
pub fn parse_class(msg: &TcMessage) -> Result<Option<HtbClassReadback>, RateError> {
    let malformed = |what: String| RateError::Malformed {
        object: "class",
        what,
    };
    let Some(attributes) = htb_attributes(msg, "class")? else {
        return Ok(None);
    };
    if find(&attributes, TCA_HTB_INIT).is_some() {
        return Ok(None);
    }
    let parms = find(&attributes, TCA_HTB_PARMS)
        .ok_or_else(|| malformed("no TCA_HTB_PARMS".to_string()))?;
    if parms.len() < OPT_LEN {
        return Err(malformed(format!(
            "TCA_HTB_PARMS has {} bytes, tc_htb_opt has {OPT_LEN}",
            parms.len()
        )));
    }
    let u32_at =
        |at: usize| u32::from_ne_bytes([parms[at], parms[at + 1], parms[at + 2], parms[at + 3]]);
    let rate64 = |kind, name| -> Result<Option<u64>, RateError> {
        find(&attributes, kind)
            .map(|v| {
                <[u8; 8]>::try_from(v.as_slice())
                    .map(u64::from_ne_bytes)
                    .map_err(|_| malformed(format!("{name} has {} bytes, not 8", v.len())))
            })
            .transpose()
    };
    let rate = rate64(TCA_HTB_RATE64, "TCA_HTB_RATE64")?.unwrap_or(u64::from(u32_at(8)));
    let ceil = rate64(TCA_HTB_CEIL64, "TCA_HTB_CEIL64")?.unwrap_or(u64::from(u32_at(20)));
    Ok(Some(HtbClassReadback {
        handle: msg.header.handle.into(),
        parent: msg.header.parent.into(),
        rate,
        ceil,
        buffer: u32_at(24),
        cbuffer: u32_at(28),
        quantum: u32_at(32),
    }))
}

/// Parses an HTB qdisc from a qdisc message (a kernel dump, or [`root_qdisc_message`]).
/// `None` when the message is not of kind `htb` or is an HTB class.
pub fn parse_qdisc(msg: &TcMessage) -> Result<Option<HtbQdiscReadback>, RateError> {
    let malformed = |what: String| RateError::Malformed {
        object: "qdisc",
        what,
    };
    let Some(attributes) = htb_attributes(msg, "qdisc")? else {
        return Ok(None);
    };
    if find(&attributes, TCA_HTB_PARMS).is_some() {
        return Ok(None);
    }
    let glob =
        find(&attributes, TCA_HTB_INIT).ok_or_else(|| malformed("no TCA_HTB_INIT".to_string()))?;
    if glob.len() < GLOB_LEN {
        return Err(malformed(format!(
            "TCA_HTB_INIT has {} bytes, tc_htb_glob has {GLOB_LEN}",
            glob.len()
        )));
    }
    let u32_at =
        |at: usize| u32::from_ne_bytes([glob[at], glob[at + 1], glob[at + 2], glob[at + 3]]);
    let direct_qlen = find(&attributes, TCA_HTB_DIRECT_QLEN)
        .map(|v| {
            <[u8; 4]>::try_from(v.as_slice())
                .map(u32::from_ne_bytes)
                .map_err(|_| malformed(format!("TCA_HTB_DIRECT_QLEN has {} bytes", v.len())))
        })
        .transpose()?;
    Ok(Some(HtbQdiscReadback {
        handle: msg.header.handle.into(),
        parent: msg.header.parent.into(),
        version: u32_at(0),
        r2q: u32_at(4),
        default_class: u32_at(8),
        direct_qlen,
    }))
}

/// The last value of attribute `kind`, as the kernel's `nla_parse` keeps the last one.
fn find(attributes: &[Attribute], kind: u16) -> Option<&Vec<u8>> {
    attributes
        .iter()
        .rev()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v)
}

/// The HTB attributes of a message as `(type, value)` pairs, or `None` when it is not of
/// kind `htb`.
///
/// A kernel dump carries `TCA_OPTIONS` as one `TcOption::Other` of type 2 whose value is
/// the nested attribute stream (netlink-packet-route has no HTB types): it is copied out
/// (`DefaultNla`'s value field is private, so through `value_len` and `emit_value`) and walked. A message built by
/// this crate carries the HTB attributes directly, one `TcOption::Other` each; a lone
/// 20-byte `TCA_HTB_INIT` (also type 2) is told apart from the wrapper by not being an
/// attribute stream.
fn htb_attributes(
    msg: &TcMessage,
    object: &'static str,
) -> Result<Option<Vec<Attribute>>, RateError> {
    let malformed = |what: String| RateError::Malformed { object, what };
    if !msg
        .attributes
        .iter()
        .any(|a| matches!(a, TcAttribute::Kind(kind) if kind == "htb"))
    {
        return Ok(None);
    }
    let mut flat = Vec::new();
    let mut has_options = false;
    for attribute in &msg.attributes {
        let TcAttribute::Options(options) = attribute else {
            continue;
        };
        has_options = true;
        for option in options {
            let TcOption::Other(nla) = option else {
                return Err(malformed(format!("unexpected decoded option {option:?}")));
            };
            let mut value = vec![0u8; nla.value_len()];
            nla.emit_value(&mut value);
            flat.push((nla.kind() & NLA_TYPE_MASK, value));
        }
    }
    if !has_options {
        return Err(malformed("no TCA_OPTIONS".to_string()));
    }
    if let [(TCA_OPTIONS, value)] = flat.as_slice() {
        match walk(value) {
            Ok(nested) => return Ok(Some(nested)),
            Err(_) if value.len() == GLOB_LEN => {}
            Err(what) => return Err(malformed(what)),
        }
    }
    Ok(Some(flat))
}

/// Walks a nested attribute stream.
fn walk(stream: &[u8]) -> Result<Vec<Attribute>, String> {
    NlasIterator::new(stream)
        .map(|nla| {
            nla.map(|nla| (nla.kind(), nla.value().to_vec()))
                .map_err(|e| format!("bad attribute in TCA_OPTIONS: {e}"))
        })
        .collect()
}
