//! The pure encoders and parsers: exact bytes against the layouts of `linux/pkt_sched.h`
//! (and what iproute2 6.1's `tc` sends), the rate limits, and property tests of the round trip through the wire format.
#![allow(clippy::unwrap_used)]

use netlink_packet_core::{DefaultNla, Emitable, Nla, Parseable};
use netlink_packet_route::tc::{TcAttribute, TcMessage, TcOption};
use proptest::prelude::*;
use sandbox_net_ratelimit::{
    CLASS_1_1, CLASS_1_2, HtbRate, MAX_BITS_PER_SECOND, MIN_BITS_PER_SECOND, PschedClock,
    ROOT_HANDLE, RateError, TC_H_ROOT, TCA_HTB_CEIL64, TCA_HTB_CTAB, TCA_HTB_INIT, TCA_HTB_PARMS,
    TCA_HTB_RATE64, TCA_HTB_RTAB, TCA_OPTIONS, bits_to_bytes, class_message, parse_class,
    parse_qdisc, rate_table, root_qdisc_message,
};

const CLOCK: PschedClock = PschedClock::DEFAULT;

/// The options of a message built by this crate, as `(type, value)`.
fn options(msg: &TcMessage) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    for attribute in &msg.attributes {
        if let TcAttribute::Options(options) = attribute {
            for option in options {
                let TcOption::Other(nla) = option else {
                    panic!("unexpected option {option:?}");
                };
                let mut value = vec![0; nla.value_len()];
                nla.emit_value(&mut value);
                out.push((nla.kind(), value));
            }
        }
    }
    out
}

fn kind(msg: &TcMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        TcAttribute::Kind(kind) => Some(kind.as_str()),
        _ => None,
    })
}

/// Emits the message as the kernel would receive it and parses it back as a dump would be.
fn through_the_wire(msg: &TcMessage) -> TcMessage {
    let mut buf = vec![0; msg.buffer_len()];
    msg.emit(&mut buf);
    TcMessage::parse(&buf[..]).unwrap()
}

fn u32s(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

fn le(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// `tc_ratespec` bytes with cell_log 3, linklayer 1, overhead 0, cell_align -1, mpu 0.
fn ratespec_le(rate: u32) -> Vec<u8> {
    let mut out = vec![3, 1, 0, 0, 0xff, 0xff, 0, 0];
    out.extend_from_slice(&rate.to_le_bytes());
    out
}

#[test]
#[cfg(target_endian = "little")]
fn ten_mbit_class_is_byte_exact() {
    let rate = HtbRate::from_bits(10_000_000).unwrap();
    assert_eq!(rate.bytes_per_second(), 1_250_000);
    let msg = class_message(7, CLASS_1_2, CLASS_1_1, rate, &CLOCK);
    assert_eq!(msg.header.index, 7);
    assert_eq!(u32::from(msg.header.handle), 0x0001_0002);
    assert_eq!(u32::from(msg.header.parent), 0x0001_0001);
    assert_eq!(kind(&msg), Some("htb"));

    let options = options(&msg);
    let kinds: Vec<u16> = options.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, [TCA_HTB_PARMS, TCA_HTB_RTAB, TCA_HTB_CTAB]);

    // rate = ceil = 1 250 000 B/s (d0 12 13 00), buffer = cbuffer = 20000 ticks (1600 B in
    // 1280 µs of 15.625 ticks), quantum 125000, level 0, prio 0. iproute2 6.1 sends exactly
    // these 44 bytes for `rate 10mbit ceil 10mbit`, except its quantum 0 (auto).
    let mut parms = ratespec_le(1_250_000);
    parms.extend(ratespec_le(1_250_000));
    parms.extend(le(&[20_000, 20_000, 125_000, 0, 0]));
    assert_eq!(options[0].1, parms);
    assert_eq!(
        &parms[..32],
        b"\x03\x01\x00\x00\xff\xff\x00\x00\xd0\x12\x13\x00\x03\x01\x00\x00\xff\xff\x00\x00\
          \xd0\x12\x13\x00\x20\x4e\x00\x00\x20\x4e\x00\x00"
    );

    // Entry i: (i + 1) * 8 bytes at 6.4 µs per 8 bytes = 100 ticks each.
    let rtab = u32s(&options[1].1);
    assert_eq!(rtab.len(), 256);
    assert_eq!(rtab, (1..=256).map(|i| 100 * i).collect::<Vec<u32>>());
    assert_eq!(options[2].1, options[1].1);
}

#[test]
#[cfg(target_endian = "little")]
fn forty_gbit_class_uses_rate64() {
    let rate = HtbRate::from_bits(40_000_000_000).unwrap();
    assert_eq!(rate.bytes_per_second(), 5_000_000_000);
    assert!(rate.needs_rate64());
    let msg = class_message(3, CLASS_1_1, ROOT_HANDLE, rate, &CLOCK);
    let options = options(&msg);
    let kinds: Vec<u16> = options.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        [
            TCA_HTB_PARMS,
            TCA_HTB_RTAB,
            TCA_HTB_CTAB,
            TCA_HTB_RATE64,
            TCA_HTB_CEIL64
        ]
    );
    // 32-bit rates saturate; buffer = 1605 B in 0.321 µs = 5 ticks; quantum clamped.
    let mut parms = ratespec_le(u32::MAX);
    parms.extend(ratespec_le(u32::MAX));
    parms.extend(le(&[5, 5, 200_000, 0, 0]));
    assert_eq!(options[0].1, parms);
    // 5 000 000 000 = 0x1_2A05_F200, the bytes iproute2 sends for `rate 40gbit`.
    assert_eq!(options[3].1, b"\x00\xf2\x05\x2a\x01\x00\x00\x00");
    assert_eq!(options[4].1, options[3].1);
    // The tables are computed at the 32-bit rate, as tc does: sub-tick up to 64 bytes.
    let rtab = u32s(&options[1].1);
    assert_eq!(rtab[..8], [0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(rtab[255], 7);
}

#[test]
#[cfg(target_endian = "little")]
fn root_qdisc_is_byte_exact() {
    let msg = root_qdisc_message(9);
    assert_eq!(msg.header.index, 9);
    assert_eq!(u32::from(msg.header.handle), 0x0001_0000);
    assert_eq!(u32::from(msg.header.parent), 0xFFFF_FFFF);
    assert_eq!(kind(&msg), Some("htb"));
    // version 3, r2q 10, defcls 2, debug 0, direct_pkts 0.
    assert_eq!(options(&msg), [(TCA_HTB_INIT, le(&[3, 10, 2, 0, 0]))]);
}

#[test]
fn rate_limits() {
    assert!(matches!(HtbRate::from_bits(0), Err(RateError::Zero)));
    let err = HtbRate::from_bits(7).unwrap_err();
    assert!(matches!(err, RateError::TooSmall { bits: 7, min: 8 }));
    assert_eq!(
        err.to_string(),
        "rate 7 bit/s is too small: the smallest is 8 bit/s"
    );
    assert_eq!(HtbRate::from_bits(8).unwrap().bytes_per_second(), 1);
    assert_eq!(
        HtbRate::from_bits(MAX_BITS_PER_SECOND)
            .unwrap()
            .bytes_per_second(),
        25_000_000_000
    );
    for bits in [MAX_BITS_PER_SECOND + 1, 1 << 63, u64::MAX] {
        let err = HtbRate::from_bits(bits).unwrap_err();
        assert!(
            matches!(err, RateError::TooLarge { bits: b, max: MAX_BITS_PER_SECOND } if b == bits)
        );
        assert_eq!(
            err.to_string(),
            format!(
                "rate {bits} bit/s is too large: the largest is 200000000000 bit/s (use 0 for no limit)"
            )
        );
        assert_eq!(err.errno(), Some(libc::EINVAL));
    }
}

#[test]
fn bits_floor_to_bytes() {
    assert_eq!(bits_to_bytes(0), 0);
    assert_eq!(bits_to_bytes(15), 1);
    assert_eq!(bits_to_bytes(16), 2);
    assert_eq!(bits_to_bytes(u64::MAX), u64::MAX / 8);
}

#[test]
fn quantum_is_the_kernels_clamp_of_rate_over_r2q() {
    let q = |bits| HtbRate::from_bits(bits).unwrap().quantum();
    assert_eq!(q(8), 1000);
    assert_eq!(q(80_000), 1000);
    assert_eq!(q(1_000_000), 12_500);
    assert_eq!(q(10_000_000), 125_000);
    assert_eq!(q(16_000_000), 200_000);
    assert_eq!(q(16_000_080), 200_000);
    assert_eq!(q(1_000_000_000), 200_000);
}

#[test]
fn rate64_starts_at_two_to_the_32_bytes() {
    let below = HtbRate::from_bits((u64::from(u32::MAX)) * 8).unwrap();
    assert!(!below.needs_rate64());
    assert_eq!(below.ratespec_rate(), u32::MAX);
    let at = HtbRate::from_bits((1u64 << 32) * 8).unwrap();
    assert!(at.needs_rate64());
    assert_eq!(at.ratespec_rate(), u32::MAX);
    assert_eq!(
        options(&class_message(1, CLASS_1_1, ROOT_HANDLE, below, &CLOCK)).len(),
        3
    );
    assert_eq!(
        options(&class_message(1, CLASS_1_1, ROOT_HANDLE, at, &CLOCK)).len(),
        5
    );
}

#[test]
fn a_dump_nests_the_options_in_one_tca_options() {
    // How the kernel's dump looks: after the wire, an htb class's TCA_OPTIONS is one
    // `Other` of type 2 holding the nested stream.
    let rate = HtbRate::from_bits(1_000_000_000).unwrap();
    let parsed = through_the_wire(&class_message(4, CLASS_1_2, CLASS_1_1, rate, &CLOCK));
    let options = options(&parsed);
    assert_eq!(options.len(), 1);
    assert_eq!(options[0].0, TCA_OPTIONS);
    let class = parse_class(&parsed).unwrap().unwrap();
    assert_eq!(class.handle, CLASS_1_2);
    assert_eq!(class.parent, CLASS_1_1);
    assert_eq!((class.rate, class.ceil), (125_000_000, 125_000_000));
    assert_eq!((class.buffer, class.cbuffer), (200, 200));
    assert_eq!(class.quantum, 200_000);
}

#[test]
fn parse_built_and_wire_messages() {
    let rate = HtbRate::from_bits(10_000_000).unwrap();
    let class = class_message(4, CLASS_1_1, ROOT_HANDLE, rate, &CLOCK);
    let root = root_qdisc_message(4);
    for (class, root) in [
        (class.clone(), root.clone()),
        (through_the_wire(&class), through_the_wire(&root)),
    ] {
        let parsed = parse_class(&class).unwrap().unwrap();
        assert_eq!(
            (parsed.rate, parsed.buffer, parsed.quantum),
            (1_250_000, 20_000, 125_000)
        );
        assert_eq!(parse_qdisc(&class).unwrap(), None);
        assert_eq!(parse_class(&root).unwrap(), None);
        let qdisc = parse_qdisc(&root).unwrap().unwrap();
        assert_eq!(qdisc.handle, ROOT_HANDLE);
        assert_eq!(qdisc.parent, TC_H_ROOT);
        assert_eq!((qdisc.version, qdisc.r2q, qdisc.default_class), (3, 10, 2));
    }
}

#[test]
fn not_htb_is_none_and_broken_htb_is_an_error() {
    let mut ingress = TcMessage::default();
    ingress.attributes.push(TcAttribute::Kind("ingress".into()));
    assert_eq!(parse_class(&ingress).unwrap(), None);
    assert_eq!(parse_qdisc(&ingress).unwrap(), None);

    let htb = |options: Vec<TcOption>| {
        let mut msg = TcMessage::default();
        msg.attributes.push(TcAttribute::Kind("htb".into()));
        msg.attributes.push(TcAttribute::Options(options));
        msg
    };
    let other = |kind, value: &[u8]| TcOption::Other(DefaultNla::new(kind, value.to_vec()));
    let broken = [
        htb(vec![]),
        htb(vec![other(TCA_HTB_PARMS, &[0; 43])]),
        htb(vec![
            other(TCA_HTB_PARMS, &[0; 44]),
            other(TCA_HTB_RATE64, &[1; 4]),
        ]),
        htb(vec![other(TCA_OPTIONS, &[0xff; 7])]),
    ];
    for msg in broken {
        let err = parse_class(&msg).unwrap_err();
        assert!(
            matches!(
                err,
                RateError::Malformed {
                    object: "class",
                    ..
                }
            ),
            "{err}"
        );
    }
    let mut no_options = TcMessage::default();
    no_options.attributes.push(TcAttribute::Kind("htb".into()));
    assert!(parse_class(&no_options).is_err());
}

#[test]
fn rate_table_matches_the_guide_burst() {
    // Entry 199 is 1600 bytes: the same time as the burst at 10 Mbit/s without rate / hz.
    let rate = HtbRate::from_bits(10_000_000).unwrap();
    assert_eq!(rate_table(rate, &CLOCK)[199], 20_000);
}

/// Rates over the whole accepted range, with extra weight around 2^32 bytes/s.
fn rates() -> impl Strategy<Value = u64> {
    let edge = (1u64 << 32) * 8;
    prop_oneof![
        MIN_BITS_PER_SECOND..=MAX_BITS_PER_SECOND,
        (edge - 80_000)..=(edge + 80_000),
        Just(MIN_BITS_PER_SECOND),
        Just(MAX_BITS_PER_SECOND),
        Just(edge - 8),
        Just(edge),
        Just(edge + 7),
    ]
}

proptest! {
    #[test]
    fn rate_survives_encode_wire_and_parse(bits in rates(), ifindex in 1u32..100_000) {
        let rate = HtbRate::from_bits(bits).unwrap();
        let wire = through_the_wire(&class_message(ifindex, CLASS_1_2, CLASS_1_1, rate, &CLOCK));
        prop_assert_eq!(wire.header.index, ifindex as i32);
        let class = parse_class(&wire).unwrap().unwrap();
        prop_assert_eq!(class.rate, bits / 8);
        prop_assert_eq!(class.ceil, bits / 8);
        prop_assert_eq!(class.buffer, CLOCK.burst_ticks(bits / 8, 1600));
        prop_assert_eq!(class.cbuffer, class.buffer);
        prop_assert_eq!(class.quantum, rate.quantum());
        prop_assert_eq!((class.handle, class.parent), (CLASS_1_2, CLASS_1_1));
    }

    #[test]
    fn flooring_never_exceeds_the_configured_rate(bits in rates()) {
        let rate = HtbRate::from_bits(bits).unwrap();
        prop_assert!(rate.bytes_per_second() * 8 <= bits);
        prop_assert!(bits - rate.bytes_per_second() * 8 < 8);
    }

    #[test]
    fn accepted_rates_have_a_burst_of_at_least_one_tick(bits in rates()) {
        let bytes = HtbRate::from_bits(bits).unwrap().bytes_per_second();
        prop_assert!(CLOCK.burst_ticks(bytes, 1600) >= 1);
    }

    #[test]
    fn xmittime_is_monotonic(
        r1 in 1u64..=u64::MAX / 2,
        dr in 0u64..=1 << 40,
        s1 in 0u64..=1 << 20,
        ds in 0u64..=1 << 20,
    ) {
        let r2 = r1 + dr;
        let s2 = s1 + ds;
        // Slower rate or bigger size: never fewer ticks.
        prop_assert!(CLOCK.xmittime(r1, s1) >= CLOCK.xmittime(r2, s1));
        prop_assert!(CLOCK.xmittime(r1, s1) <= CLOCK.xmittime(r1, s2));
    }

    #[test]
    fn parsers_never_panic_on_nested_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut msg = TcMessage::default();
        msg.attributes.push(TcAttribute::Kind("htb".into()));
        msg.attributes.push(TcAttribute::Options(vec![TcOption::Other(DefaultNla::new(
            TCA_OPTIONS,
            bytes.clone(),
        ))]));
        let _ = parse_class(&msg);
        let _ = parse_qdisc(&msg);
        // The same bytes as the flat attributes of a built message.
        for kind in 0..9 {
            let mut flat = TcMessage::default();
            flat.attributes.push(TcAttribute::Kind("htb".into()));
            flat.attributes.push(TcAttribute::Options(vec![
                TcOption::Other(DefaultNla::new(kind, bytes.clone())),
                TcOption::Other(DefaultNla::new(TCA_HTB_RATE64, bytes.clone())),
            ]));
            let _ = parse_class(&flat);
            let _ = parse_qdisc(&flat);
        }
    }

    #[test]
    fn parsers_never_panic_on_wire_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        // A tc header, Kind "htb", then TCA_OPTIONS with arbitrary content, through the
        // same parser a dump goes through.
        let mut buf = vec![0u8; 20];
        buf.extend_from_slice(&[8, 0, 1, 0, b'h', b't', b'b', 0]);
        let len = 4 + bytes.len();
        if len <= usize::from(u16::MAX) {
            buf.extend_from_slice(&(len as u16).to_ne_bytes());
            buf.extend_from_slice(&TCA_OPTIONS.to_ne_bytes());
            buf.extend_from_slice(&bytes);
            buf.resize(buf.len().next_multiple_of(4), 0);
            if let Ok(msg) = TcMessage::parse(&buf[..]) {
                let _ = parse_class(&msg);
                let _ = parse_qdisc(&msg);
            }
        }
    }

    #[test]
    fn psched_parse_never_panics(text in ".{0,80}") {
        let _ = PschedClock::parse(&text);
    }
}
