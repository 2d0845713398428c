//! A count-down device's count, taken from one raw counter read.
//!
//! A count-down device (the LAPIC timer, the PIT) starts counting when its count is written,
//! so a count computed from a clock read fires late by the path from that read to the write.
//! Reading the clock and scaling what is left puts the sequence counter's check, the
//! snapshot's loads and a division on that path (about 100 instructions in the dev build). A
//! [`Countdown`] does that work before the read: the snapshot's conversion, the deadline as
//! an offset from its base, and the device's ticks per ns as a fixed-point factor (one
//! division); after the read, the reading's conversion, a subtraction and one multiply remain.
//!
//! Never earlier than counting from a clock read: [`Countdown::ticks_left`] at a counter
//! reading is at least [`crate::clockevents::remaining_ticks`] at the clock's time for that
//! reading, and at most a tick more and the factor's rounding (a tick per 2^32 ns of the
//! delta: none below four seconds): the tests below check both against that function, which
//! the layer has always used.

use super::MultShift;
use super::timekeeper::{Conversion, CounterId, Snapshot, Timekeeper};

/// A deadline as an offset from a snapshot's base, the snapshot's conversion, and the
/// device's ticks per ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Countdown {
    /// The counter to read (the clock's, when the countdown was made).
    pub counter: CounterId,
    conv: Conversion,
    base_cycles: u64,
    /// The deadline's distance from the snapshot's base time (0: at or before it).
    at_offset_ns: u64,
    /// Device ticks per ns, scaled by 2^32, rounded up.
    ticks_per_ns: u64,
    /// The layer's whole delta: never more.
    delta_ticks: u64,
}

/// Fractional bits of the factor.
const FRACTION: u32 = 32;

impl Countdown {
    /// For an event at `at_ns` that the layer converted, at its clock read `now_ns`, into
    /// `delta_ticks` of the device, with the clock's snapshot `snap`: `None` if the snapshot
    /// has no counter, the deadline is not ahead of `now_ns` or the factor does not fit (the
    /// caller then counts from a clock read).
    #[inline]
    pub fn new(snap: &Snapshot, at_ns: u64, now_ns: u64, delta_ticks: u64) -> Option<Countdown> {
        let whole_ns = at_ns.checked_sub(now_ns).filter(|&w| w > 0)?;
        if snap.conv.counter == CounterId::NONE {
            return None;
        }
        let ticks_per_ns = if delta_ticks >> FRACTION == 0 {
            (delta_ticks << FRACTION).div_ceil(whole_ns)
        } else {
            u64::try_from((u128::from(delta_ticks) << FRACTION).div_ceil(u128::from(whole_ns))).ok()?
        };
        Some(Countdown {
            counter: snap.conv.counter,
            conv: snap.conv,
            base_cycles: snap.base_cycles,
            at_offset_ns: at_ns.saturating_sub(snap.base_ns),
            ticks_per_ns,
            delta_ticks,
        })
    }

    /// The device's ticks left at counter reading `cycles` (the snapshot's time for it),
    /// rounded up, at most the layer's delta; 0 once the clock has reached the deadline there.
    #[inline(always)]
    pub fn ticks_left(&self, cycles: u64) -> u64 {
        // The snapshot's time for the reading, as an offset from its base (`Snapshot::ns_at`
        // less the base): compared in 128 bits, so no saturation is needed.
        let MultShift { mult, shift } = self.conv.rate;
        let elapsed =
            (u128::from(self.conv.delta(self.base_cycles, cycles)) * u128::from(mult)) >> (shift & 63);
        if elapsed >= u128::from(self.at_offset_ns) {
            return 0;
        }
        let left = self.at_offset_ns - elapsed as u64;
        let ticks =
            (u128::from(left) * u128::from(self.ticks_per_ns) + ((1u128 << FRACTION) - 1)) >> FRACTION;
        if ticks >= u128::from(self.delta_ticks) { self.delta_ticks } else { ticks as u64 }
    }
}

impl Timekeeper {
    /// A [`Countdown`] from the snapshot as published now (see [`Countdown::new`]).
    #[inline]
    pub fn countdown(&self, at_ns: u64, now_ns: u64, delta_ticks: u64) -> Option<Countdown> {
        Countdown::new(&self.snapshot(), at_ns, now_ns, delta_ticks)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::clockevents::{NsToTicks, remaining_ticks};

    fn snapshot(hz: u64, bits: u32, base_cycles: u64, base_ns: u64) -> Snapshot {
        let mask = if bits == 64 { u64::MAX } else { (1 << bits) - 1 };
        Snapshot {
            conv: Conversion {
                counter: CounterId(2),
                rate: MultShift::ticks_to_ns(hz),
                mask,
                max_delta: mask,
            },
            base_cycles,
            base_ns,
        }
    }

    /// The oracle: what counting from a clock read at `cycles` programs.
    fn from_clock_read(snap: &Snapshot, at: u64, now: u64, delta: u64, cycles: u64) -> u64 {
        remaining_ticks(at, now, snap.ns_at(cycles), delta)
    }

    #[test]
    fn never_fewer_ticks_than_counting_from_a_clock_read_and_at_most_one_more() {
        // (clock Hz, counter bits, device Hz): the HPET, the ACPI PM timer and the TSC against
        // QEMU's LAPIC timer (1 GHz / 16), a real one (25 MHz / 16) and the PIT.
        let cases = [
            (100_000_000, 32, 62_500_000),
            (14_318_180, 32, 1_562_500),
            (3_579_545, 24, 62_500_000),
            (2_400_000_000, 64, 62_500_000),
            (100_000_000, 32, 1_193_182),
        ];
        for (clock_hz, bits, device_hz) in cases {
            let conv = NsToTicks::new(device_hz, 60_000_000_000);
            let snap = snapshot(clock_hz, bits, 0xffff_f000 & ((1u64 << bits.min(63)) - 1), 7_000_000_123);
            for (now, whole) in
                [(7_000_000_200, 10_000), (7_000_100_000, 100_000), (7_001_000_000, 1_000_001)]
            {
                let at = now + whole;
                let delta = conv.ticks(whole);
                let c = Countdown::new(&snap, at, now, delta).expect("fits");
                let first = snap.cycles_at(now).unwrap();
                for step in 0..2_000u64 {
                    let cycles = first
                        .wrapping_add(step * (whole / 1_000).max(1) * clock_hz / 1_000_000_000 + step % 3)
                        & snap.conv.mask;
                    let got = c.ticks_left(cycles);
                    let oracle = from_clock_read(&snap, at, now, delta, cycles);
                    assert!(
                        got >= oracle,
                        "{clock_hz} Hz, {device_hz} Hz, {whole} ns: {got} < {oracle} at {cycles}"
                    );
                    assert!(got <= oracle + 1, "{clock_hz} Hz: {got} > {oracle} + 1");
                    assert!(got <= delta);
                }
            }
        }
    }

    #[test]
    fn a_reading_at_or_past_the_deadline_counts_nothing_across_the_counters_wrap() {
        let snap = snapshot(100_000_000, 32, 0xffff_fff0, 1_000);
        let (now, at) = (1_000, 1_000 + 1_000);
        let c = Countdown::new(&snap, at, now, 62).unwrap();
        let at_cycles = snap.cycles_at(at).unwrap();
        assert!(at_cycles < 0xffff_fff0, "the deadline lies past the wrap");
        assert_eq!(c.ticks_left(at_cycles), 0);
        assert_eq!(c.ticks_left(at_cycles.wrapping_add(5) & 0xffff_ffff), 0);
        assert!(c.ticks_left(0xffff_fff0) > 0);
        assert_eq!(c.ticks_left(0xffff_fff0), 62, "at the layer's read: its whole delta");
    }

    #[test]
    fn no_countdown_without_a_counter_or_a_deadline_ahead() {
        let none = Snapshot { conv: Conversion::NONE, base_cycles: 0, base_ns: 0 };
        assert_eq!(Countdown::new(&none, 2_000, 1_000, 62), None);
        let snap = snapshot(100_000_000, 32, 0, 0);
        assert_eq!(Countdown::new(&snap, 1_000, 1_000, 0), None, "not ahead");
        assert_eq!(Countdown::new(&snap, 999, 1_000, 0), None);
    }

    /// Property tests (named so that Miri skips them: proptest keeps its failures in files).
    mod proptests {
        use super::*;

        proptest::proptest! {
            /// Any clock (1 kHz..4 GHz, 24..64 bits, any base), any device (1 kHz..2 GHz), any
            /// delta up to 10 s, any reading from the layer's read to past the deadline: never
            /// fewer ticks than counting from a clock read, at most a tick more and the factor's
            /// rounding.
            #[test]
            fn never_fewer_ticks_than_from_a_clock_read(
                clock_hz in 1_000u64..4_000_000_000,
                bits in proptest::sample::select(vec![24u32, 32, 64]),
                device_hz in 1_000u64..2_000_000_000,
                base in proptest::num::u64::ANY,
                base_ns in 0u64..1 << 50,
                lead in 0u64..1_000_000_000,
                whole in 1u64..10_000_000_000,
                at_fraction in 0u64..=1_100,
            ) {
                let mask = if bits == 64 { u64::MAX } else { (1 << bits) - 1 };
                let snap = snapshot(clock_hz, bits, base & mask, base_ns);
                // Within the counter's range, as the clock keeps its base (a wrap apart at most).
                let range_ns = snap.conv.rate.apply(mask >> 2);
                let lead = lead % range_ns.max(1);
                let whole = 1 + whole % range_ns.saturating_sub(lead).max(1);
                let (now, at) = (base_ns + lead, base_ns + lead + whole);
                let conv = NsToTicks::new(device_hz, whole);
                let delta = conv.ticks(whole);
                let Some(c) = Countdown::new(&snap, at, now, delta) else { return Ok(()) };
                let cycles = snap.cycles_at(now + whole / 1_000 * at_fraction).unwrap_or(snap.base_cycles);
                let got = c.ticks_left(cycles);
                let oracle = from_clock_read(&snap, at, now, delta, cycles);
                // The factor's rounding: a tick per 2^32 ns.
                let rounding = whole >> 32;
                let cycle_ticks = 1 + rounding;
                proptest::prop_assert!(got >= oracle, "{} < {}", got, oracle);
                proptest::prop_assert!(got <= oracle + cycle_ticks, "{} > {} + {}", got, oracle, cycle_ticks);
            }
        }
    }
}
