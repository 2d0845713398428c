//! A counter's frequency measured against a reference over a long window (Linux refines the
//! TSC over about a second after boot): the boot calibration's 3 x 10 ms windows leave an
//! error of tens to hundreds of ppm; a window of seconds brings it under one.
//!
//! Fed one paired sample per watchdog interval; gives a frequency once the window reaches
//! [`FIRST_WINDOW_NS`], then again each time the window has doubled.

use super::{Conversion, extend};

/// The first refinement (Linux: about 1 s).
pub const FIRST_WINDOW_NS: u64 = 1_000_000_000;

/// One refinement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refined {
    /// The measured frequency, in Hz.
    pub hz: u64,
    /// The window it was measured over, in ns of the reference.
    pub window_ns: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
/// A counter's frequency measured against a reference over windows that double in length
/// (the first [`FIRST_WINDOW_NS`]): feed it samples, it returns a [`Refined`] frequency at the
/// end of each window.
pub struct Refiner {
    /// The counter and the extended reference at the window's start.
    start: Option<(u64, u64)>,
    /// The reference's last raw reading and its extended value.
    ref_raw: u64,
    ref_ext: u64,
    next_window_ns: u64,
}

impl Refiner {
    /// Nothing sampled yet.
    pub const fn new() -> Refiner {
        Refiner { start: None, ref_raw: 0, ref_ext: 0, next_window_ns: FIRST_WINDOW_NS }
    }

    /// A sample: the counter's reading `cycles` taken at the reference's reading `ref_raw`
    /// (a `ref_bits`-wide counter at `reference`'s rate, `ref_hz` Hz). Samples must come more
    /// often than half the reference's wrap.
    pub fn sample(
        &mut self,
        cycles: u64,
        ref_raw: u64,
        reference: &Conversion,
        ref_hz: u64,
    ) -> Option<Refined> {
        let bits = 64 - reference.mask.leading_zeros();
        let Some((c0, r0)) = self.start else {
            self.ref_raw = ref_raw;
            self.ref_ext = ref_raw;
            self.start = Some((cycles, ref_raw));
            return None;
        };
        self.ref_ext = extend(self.ref_ext, ref_raw, bits);
        self.ref_raw = ref_raw;
        let ref_ticks = self.ref_ext.wrapping_sub(r0);
        let window_ns = reference.rate.apply(ref_ticks);
        if window_ns < self.next_window_ns || ref_ticks == 0 {
            return None;
        }
        self.next_window_ns = window_ns.saturating_mul(2);
        let counted = u128::from(cycles.wrapping_sub(c0));
        let hz = counted * u128::from(ref_hz) / u128::from(ref_ticks);
        Some(Refined { hz: u64::try_from(hz).ok()?, window_ns })
    }
}

/// The frequency of a counter that counted `ticks` while another counted `cycles` over the
/// same window, given the other's frequency `cycles_hz`: how a counter that cannot be read
/// over a long window (the LAPIC timer's count-down, in use by its events) follows another's
/// refinement (`ticks` and `cycles` its and the other's boot frequencies, `cycles_hz` the
/// other's refined one). Rounded up (a device then converts to more ticks: later, never earlier).
/// `None` without cycles or beyond 64 bits.
pub fn by_ratio(ticks: u64, cycles: u64, cycles_hz: u64) -> Option<u64> {
    if cycles == 0 {
        return None;
    }
    let hz = (u128::from(ticks) * u128::from(cycles_hz)).div_ceil(u128::from(cycles));
    u64::try_from(hz).ok()
}

/// Signed difference of `measured` from `reference`, in ppm of `reference`.
pub fn ppm(measured: u64, reference: u64) -> i64 {
    ppb(measured, reference) / 1_000
}

/// Signed difference of `measured` from `reference`, in parts per billion of `reference`.
pub fn ppb(measured: u64, reference: u64) -> i64 {
    if reference == 0 {
        return 0;
    }
    ((i128::from(measured) - i128::from(reference)) * 1_000_000_000 / i128::from(reference)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clocksource::{CounterId, MultShift, mask_of};

    fn conv(hz: u64, bits: u32) -> Conversion {
        let mask = mask_of(bits);
        Conversion { counter: CounterId(2), rate: MultShift::ticks_to_ns(hz), mask, max_delta: mask }
    }

    #[test]
    fn refines_at_one_second_then_at_each_doubling() {
        let true_hz = 2_345_678_901u64;
        let ref_hz = 3_579_545u64;
        let reference = conv(ref_hz, 24);
        let mut r = Refiner::new();
        let mut results = Vec::new();
        for i in 0..40u64 {
            let t = 100_000_000 + i * 500_000_000; // every 0.5 s
            let cycles = (u128::from(t) * u128::from(true_hz) / 1_000_000_000) as u64;
            let pm = (u128::from(t) * u128::from(ref_hz) / 1_000_000_000) as u64 & mask_of(24);
            if let Some(x) = r.sample(cycles, pm, &reference, ref_hz) {
                results.push(x);
            }
        }
        let windows: Vec<u64> = results.iter().map(|x| x.window_ns / 100_000_000).collect();
        // The first sample at >= 1 s (1.0 s reads 0.9999997 s on the PM timer, so 1.5 s), then
        // the first at twice that window, and so on; the reference wraps every 4.69 s.
        assert_eq!(windows, [15, 35, 75, 155]);
        for x in &results {
            assert!(ppm(x.hz, true_hz).abs() <= 1, "{} Hz over {} ns", x.hz, x.window_ns);
        }
    }

    /// The LAPIC timer at 62.5 MHz beside a 2.6 GHz TSC: the boot window's counts carry the
    /// TSC's refined frequency over exactly, whatever the window's length was taken to be.
    #[test]
    fn a_ratio_carries_the_refined_frequency_over() {
        let (lapic_hz, tsc_hz) = (62_500_000u64, 2_596_115_600u64);
        // 30 ms of counting, as the boot windows do.
        let (ticks, cycles) = (lapic_hz * 3 / 100, tsc_hz * 3 / 100);
        assert_eq!(by_ratio(ticks, cycles, tsc_hz), Some(lapic_hz));
        let refined = by_ratio(ticks, cycles, tsc_hz + tsc_hz / 1_000).unwrap(); // TSC +1000 ppm
        assert_eq!(ppm(refined, lapic_hz), 1_000);
        assert_eq!(by_ratio(ticks, 0, tsc_hz), None);
        assert_eq!(by_ratio(u64::MAX, 1, u64::MAX), None);
        assert_eq!(by_ratio(1, 3, 10), Some(4), "rounded up");
    }

    #[test]
    fn ppm_is_signed_relative_to_the_reference() {
        assert_eq!(ppm(1_000_100, 1_000_000), 100);
        assert_eq!(ppm(999_900, 1_000_000), -100);
        assert_eq!(ppm(5, 0), 0);
        assert_eq!(ppb(1_000_000_123, 1_000_000_000), 123);
        assert_eq!(ppm(1_000_000_999, 1_000_000_000), 0, "ppm truncates towards zero");
    }
}
