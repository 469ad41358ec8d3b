//! The packet-scheduler clock (`/proc/net/psched`) and the time computations of iproute2's
//! `tc_core.c` that depend on it.

use std::{path::Path, sync::OnceLock};

use crate::RateError;

/// Where the kernel publishes its packet-scheduler clock. The file is not per namespace.
pub const PSCHED_PATH: &str = "/proc/net/psched";

/// `TIME_UNITS_PER_SEC` of iproute2: its time unit is the microsecond.
const TIME_UNITS_PER_SEC: f64 = 1_000_000.0;

/// iproute2's fallback for `get_hz()` when the clock resolution is not 1 MHz.
const FALLBACK_HZ: u64 = 100;

/// The kernel's packet-scheduler clock as iproute2 sees it (`tc_core_init` and `get_hz`):
/// the length of one psched tick and the "hz" that sizes HTB bursts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PschedClock {
    /// Microseconds per psched tick, as a factor: ticks = µs × `tick_in_usec`
    /// (15.625 on a 64 ns tick).
    pub tick_in_usec: f64,
    /// `get_hz()`: the fourth word of `/proc/net/psched` when the third is 1 000 000, else 100.
    pub hz: u64,
}

impl PschedClock {
    /// The clock of the build machines (`000003e8 00000040 000f4240 3b9aca00`): 64 ns ticks,
    /// hz 1e9. For tests; use [`PschedClock::read`] at run time.
    pub const DEFAULT: PschedClock = PschedClock {
        tick_in_usec: 15.625,
        hz: 1_000_000_000,
    };

    /// Parses the content of `/proc/net/psched`: four hex words `t2us us2t clock_res hz`,
    /// computed as iproute2 does:
    /// - if `clock_res` is 1e9, `t2us = us2t` (the kernel's compatibility hack for old tc);
    /// - `tick_in_usec = t2us / us2t × clock_res / 1e6`;
    /// - `hz` = the fourth word when `clock_res` is exactly 1 000 000, otherwise 100.
    pub fn parse(text: &str) -> Result<Self, RateError> {
        let bad = |what| RateError::PschedFormat {
            text: text.to_string(),
            what,
        };
        let mut words = text.split_whitespace().map(|w| {
            if w.is_empty() || w.len() > 8 {
                return Err(bad("a word is not 1 to 8 hex digits"));
            }
            u32::from_str_radix(w, 16).map_err(|_| bad("a word is not hexadecimal"))
        });
        let mut next = || words.next().transpose();
        let (Some(mut t2us), Some(us2t), Some(clock_res)) = (next()?, next()?, next()?) else {
            return Err(bad("fewer than three words"));
        };
        let fourth = next()?;
        if us2t == 0 {
            return Err(bad("us2t is 0"));
        }
        if clock_res == 1_000_000_000 {
            t2us = us2t;
        }
        let clock_factor = f64::from(clock_res) / TIME_UNITS_PER_SEC;
        let tick_in_usec = f64::from(t2us) / f64::from(us2t) * clock_factor;
        if !(tick_in_usec.is_finite() && tick_in_usec > 0.0) {
            return Err(bad("the tick length is not positive"));
        }
        let hz = match fourth {
            Some(hz) if clock_res == 1_000_000 && hz != 0 => u64::from(hz),
            _ => FALLBACK_HZ,
        };
        Ok(Self { tick_in_usec, hz })
    }

    /// Reads and parses [`PSCHED_PATH`], once per process: the kernel computes the file from
    /// constants fixed at boot (tick length, hrtimer resolution), so the first successful read
    /// holds for the process's life. A failed read is not kept, and is tried again next time.
    pub fn read() -> Result<Self, RateError> {
        static HOST: OnceLock<PschedClock> = OnceLock::new();
        if let Some(clock) = HOST.get() {
            return Ok(*clock);
        }
        let clock = Self::read_from(Path::new(PSCHED_PATH))?;
        Ok(*HOST.get_or_init(|| clock))
    }

    /// Reads and parses a file in the format of `/proc/net/psched`.
    pub fn read_from(path: &Path) -> Result<Self, RateError> {
        let text = std::fs::read_to_string(path).map_err(|source| RateError::PschedRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Psched ticks needed to send `size` bytes at `bytes_per_second` (iproute2's
    /// `tc_calc_xmittime`): `trunc(1e6 × size / rate × tick_in_usec)`, computed in `f64`,
    /// saturating at `u32::MAX` (below about 46.6 kbit/s a 1600-byte burst does not fit in 32
    /// bits; iproute2 6.1 overflows there). A rate of 0 gives `u32::MAX`.
    ///
    /// This rule keeps sub-microsecond times. It is
    /// evaluated left to right, `(1e6 × size) / rate`, which is exact whenever the division
    /// is (iproute2's `1e6 × (size / rate)` gives 99 instead of 100 ticks for 8 bytes at
    /// 10 Mbit/s). The iproute2 6.1 of the build machines truncates the microseconds to an
    /// integer before scaling them to ticks: it sends the same 20000 ticks at 10 Mbit/s, but
    /// 0 where this gives 5 at 40 Gbit/s, and smaller rate-table entries.
    pub fn xmittime(&self, bytes_per_second: u64, size: u64) -> u32 {
        if bytes_per_second == 0 {
            return u32::MAX;
        }
        let time = TIME_UNITS_PER_SEC * size as f64 / bytes_per_second as f64;
        // `as` truncates toward zero and saturates: what the C conversion would do in range.
        (time * self.tick_in_usec) as u32
    }

    /// The HTB burst (`buffer`, or `cbuffer` for the ceil) in psched ticks, as `tc` sizes it
    /// when none is given: the time to send `rate / hz + mtu` bytes at `rate`.
    pub fn burst_ticks(&self, bytes_per_second: u64, mtu: u32) -> u32 {
        let hz = self.hz.max(1);
        self.xmittime(bytes_per_second, bytes_per_second / hz + u64::from(mtu))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn build_machine_clock() {
        let clock = PschedClock::parse("000003e8 00000040 000f4240 3b9aca00\n").unwrap();
        assert_eq!(clock, PschedClock::DEFAULT);
        assert_eq!(clock.tick_in_usec, 15.625);
        assert_eq!(clock.hz, 1_000_000_000);
    }

    #[test]
    fn nanosecond_resolution_uses_us2t_for_t2us() {
        // clock_res 1e9: t2us is replaced by us2t, the factor is 1000 ticks per µs.
        let clock = PschedClock::parse("000003e8 00000001 3b9aca00 3b9aca00").unwrap();
        assert_eq!(clock.tick_in_usec, 1000.0);
        assert_eq!(clock.hz, FALLBACK_HZ);
    }

    #[test]
    fn refuses_garbage() {
        for text in ["", "1 2", "zz 1 1 1", "1 0 f4240 1", "123456789 1 1 1"] {
            let err = PschedClock::parse(text).unwrap_err();
            assert!(
                matches!(err, RateError::PschedFormat { .. }),
                "{text}: {err}"
            );
        }
        // The fourth word is optional; hz falls back to 100.
        assert_eq!(PschedClock::parse("3e8 40 f4240").unwrap().hz, FALLBACK_HZ);
    }

    #[test]
    fn reads_the_running_kernel() {
        let clock = PschedClock::read().unwrap();
        assert!(clock.tick_in_usec > 0.0 && clock.hz > 0);
    }

    #[test]
    fn guide_bursts() {
        let c = PschedClock::DEFAULT;
        assert_eq!(c.burst_ticks(1_250_000, 1600), 20_000);
        assert_eq!(c.burst_ticks(5_000_000_000, 1600), 5);
        assert_eq!(c.xmittime(0, 1600), u32::MAX);
        assert_eq!(c.xmittime(1, 1600), u32::MAX);
    }
}
