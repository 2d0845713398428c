//! The clocksource watchdog: a counter that must be verified (the TSC) is compared, every
//! [`INTERVAL_NS`], with a trusted one (the HPET or the ACPI PM timer) over the same interval.
//! A disagreement beyond [`threshold_ns`] marks it unstable (Linux's `clocksource_watchdog`,
//! whose threshold is a much looser 31.25 ms per 0.5 s).
//!
//! Each sample brackets the verified counter's reading between two readings of the watchdog's;
//! a bracket wider than [`MAX_BRACKET_NS`] (the CPU was interrupted or descheduled between the
//! reads) is retried rather than trusted, and an interval too long for the watchdog's counter
//! to measure without wrapping is skipped.

use super::Conversion;

/// How often the watchdog compares (Linux: `WATCHDOG_INTERVAL`, 0.5 s).
pub const INTERVAL_NS: u64 = 500_000_000;
/// Allowed disagreement per interval, in parts per million of it...
pub const THRESHOLD_PPM: u64 = 1_000;
/// ...plus this much for the reads themselves.
pub const THRESHOLD_FLOOR_NS: u64 = 100_000;
/// A sample whose two watchdog readings are further apart than this is not trusted.
pub const MAX_BRACKET_NS: u64 = 50_000;

/// The largest disagreement allowed over an interval of `interval_ns`.
pub fn threshold_ns(interval_ns: u64) -> u64 {
    threshold_ns_within(interval_ns, 0)
}

/// The largest disagreement allowed over `interval_ns` for a counter whose rate is known only
/// to within `uncertainty_ppm` (a boot calibration's spread, until a refinement replaces it):
/// the larger of [`THRESHOLD_PPM`] and that, plus the floor. A rate the calibration could not
/// pin down is not a rate fault; a counter off by more than its calibration allows still is.
pub fn threshold_ns_within(interval_ns: u64, uncertainty_ppm: u64) -> u64 {
    let ppm = THRESHOLD_PPM.max(uncertainty_ppm);
    let allowed = u128::from(interval_ns) * u128::from(ppm) / 1_000_000;
    THRESHOLD_FLOOR_NS.saturating_add(u64::try_from(allowed).unwrap_or(u64::MAX))
}

/// Readings taken together: the watchdog's counter before and after the verified one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The watchdog's counter, just before.
    pub wd_before: u64,
    /// The counter being verified.
    pub cs: u64,
    /// The watchdog's counter, just after.
    pub wd_after: u64,
}

impl Sample {
    /// The watchdog reading paired with `cs` (the bracket's middle), or `None` if the bracket
    /// is wider than [`MAX_BRACKET_NS`].
    pub fn paired(&self, wd: &Conversion) -> Option<u64> {
        let width = wd.delta(self.wd_before, self.wd_after);
        (wd.rate.apply(width) <= MAX_BRACKET_NS).then(|| self.wd_before.wrapping_add(width / 2) & wd.mask)
    }
}

/// What one comparison found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The first sample (or the first after a skip): nothing to compare yet.
    Started,
    /// The two counters agree within the threshold.
    Agrees {
        /// The interval since the previous sample, by the watchdog.
        interval_ns: u64,
        /// The verified counter's ns over it minus the watchdog's.
        deviation_ns: i64,
    },
    /// No comparison: the bracket was too wide, or the interval too long for the watchdog.
    Skipped(SkipReason),
    /// They disagree: over the watchdog's `wd_ns` the verified counter counted `cs_ns`.
    Unstable {
        /// The interval by the verified counter.
        cs_ns: u64,
        /// The interval by the watchdog.
        wd_ns: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// Why a comparison was skipped.
pub enum SkipReason {
    /// The watchdog's readings around the verified one were more than [`MAX_BRACKET_NS`] apart.
    WideBracket,
    /// So long since the previous sample that a counter may have wrapped unseen (over half
    /// the watchdog's wrap).
    IntervalTooLong,
}

/// The previous sample, for the next comparison.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watchdog {
    last: Option<(u64, u64)>,
}

impl Watchdog {
    /// No previous sample.
    pub const fn new() -> Watchdog {
        Watchdog { last: None }
    }

    /// Compares the interval since the last sample on both counters.
    pub fn check(&mut self, sample: Sample, cs: &Conversion, wd: &Conversion) -> Verdict {
        self.check_within(sample, cs, wd, 0)
    }

    /// [`check`](Self::check) for a verified counter whose rate is known only to within
    /// `uncertainty_ppm` ([`threshold_ns_within`]).
    pub fn check_within(
        &mut self,
        sample: Sample,
        cs: &Conversion,
        wd: &Conversion,
        uncertainty_ppm: u64,
    ) -> Verdict {
        let Some(wd_now) = sample.paired(wd) else { return Verdict::Skipped(SkipReason::WideBracket) };
        let Some((cs_last, wd_last)) = self.last.replace((sample.cs, wd_now)) else {
            return Verdict::Started;
        };
        let cs_ns = cs.rate.apply(cs.delta(cs_last, sample.cs));
        let wd_ns = wd.rate.apply(wd.delta(wd_last, wd_now));
        // The watchdog's counter may have wrapped unseen if the interval was long.
        let wd_limit = wd.rate.apply(wd.mask / 2);
        if cs_ns > wd_limit || wd_ns > wd_limit {
            return Verdict::Skipped(SkipReason::IntervalTooLong);
        }
        let deviation_ns = cs_ns as i64 - wd_ns as i64;
        if deviation_ns.unsigned_abs() > threshold_ns_within(wd_ns, uncertainty_ppm) {
            return Verdict::Unstable { cs_ns, wd_ns };
        }
        Verdict::Agrees { interval_ns: wd_ns, deviation_ns }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clocksource::{CounterId, MultShift, mask_of};

    fn conv(hz: u64, bits: u32) -> Conversion {
        let mask = mask_of(bits);
        Conversion { counter: CounterId(1), rate: MultShift::ticks_to_ns(hz), mask, max_delta: mask }
    }

    const TSC_HZ: u64 = 2_000_000_000;
    const PM_HZ: u64 = 3_579_545;

    /// A sample at `t_ns` of true time: a TSC running `ppm` fast and a 24-bit PM timer.
    fn at(t_ns: u64, ppm: i64) -> Sample {
        let tsc =
            (t_ns as i128 * TSC_HZ as i128 * (1_000_000 + ppm as i128) / 1_000_000 / 1_000_000_000) as u64;
        let pm = |t: u64| (u128::from(t) * u128::from(PM_HZ) / 1_000_000_000) as u64 & mask_of(24);
        Sample { wd_before: pm(t_ns), cs: tsc, wd_after: pm(t_ns + 1_000) }
    }

    #[test]
    fn threshold_is_the_floor_plus_a_thousandth() {
        assert_eq!(threshold_ns(0), 100_000);
        assert_eq!(threshold_ns(INTERVAL_NS), 600_000);
    }

    #[test]
    fn counters_that_agree_pass_and_the_deviation_is_reported() {
        let (cs, wd) = (conv(TSC_HZ, 64), conv(PM_HZ, 24));
        let mut w = Watchdog::new();
        assert_eq!(w.check(at(INTERVAL_NS, 0), &cs, &wd), Verdict::Started);
        for i in 2..20 {
            match w.check(at(i * INTERVAL_NS, 0), &cs, &wd) {
                Verdict::Agrees { interval_ns, deviation_ns } => {
                    assert!(interval_ns.abs_diff(INTERVAL_NS) < 1_000, "{interval_ns}");
                    assert!(deviation_ns.abs() < 1_000, "{deviation_ns}");
                }
                v => panic!("interval {i}: {v:?}"),
            }
        }
    }

    #[test]
    fn a_drift_within_the_threshold_passes_and_beyond_it_fails() {
        let (cs, wd) = (conv(TSC_HZ, 64), conv(PM_HZ, 24));
        // 500 ppm over 0.5 s: 250 us, within 600 us.
        let mut w = Watchdog::new();
        w.check(at(INTERVAL_NS, 500), &cs, &wd);
        assert!(matches!(w.check(at(2 * INTERVAL_NS, 500), &cs, &wd), Verdict::Agrees { .. }));
        // 2000 ppm: 1 ms over 0.5 s, beyond.
        let mut w = Watchdog::new();
        w.check(at(INTERVAL_NS, 2_000), &cs, &wd);
        match w.check(at(2 * INTERVAL_NS, 2_000), &cs, &wd) {
            Verdict::Unstable { cs_ns, wd_ns } => {
                assert!(cs_ns > wd_ns + threshold_ns(wd_ns), "{cs_ns} vs {wd_ns}")
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_step_of_the_verified_counter_is_caught() {
        let (cs, wd) = (conv(TSC_HZ, 64), conv(PM_HZ, 24));
        let mut w = Watchdog::new();
        w.check(at(INTERVAL_NS, 0), &cs, &wd);
        let mut jumped = at(2 * INTERVAL_NS, 0);
        jumped.cs += TSC_HZ / 1000; // 1 ms ahead
        assert!(matches!(w.check(jumped, &cs, &wd), Verdict::Unstable { .. }));
    }

    #[test]
    fn a_wide_bracket_is_not_trusted() {
        let (cs, wd) = (conv(TSC_HZ, 64), conv(PM_HZ, 24));
        let mut w = Watchdog::new();
        let mut s = at(INTERVAL_NS, 0);
        s.wd_after = s.wd_before + PM_HZ / 1000; // 1 ms between the watchdog's two reads
        assert_eq!(w.check(s, &cs, &wd), Verdict::Skipped(SkipReason::WideBracket));
        assert_eq!(w.check(at(2 * INTERVAL_NS, 0), &cs, &wd), Verdict::Started, "nothing was kept");
    }

    #[test]
    fn an_interval_beyond_half_the_watchdogs_wrap_is_skipped_not_judged() {
        // The 24-bit PM timer wraps every 4.69 s: 3 s cannot be measured on it.
        let (cs, wd) = (conv(TSC_HZ, 64), conv(PM_HZ, 24));
        let mut w = Watchdog::new();
        w.check(at(INTERVAL_NS, 0), &cs, &wd);
        assert_eq!(
            w.check(at(INTERVAL_NS + 3_000_000_000, 0), &cs, &wd),
            Verdict::Skipped(SkipReason::IntervalTooLong)
        );
        assert!(matches!(w.check(at(2 * INTERVAL_NS + 3_000_000_000, 0), &cs, &wd), Verdict::Agrees { .. }));
    }

    #[test]
    fn the_watchdogs_wrap_inside_an_interval_is_measured_across() {
        let (cs, wd) = (conv(TSC_HZ, 64), conv(PM_HZ, 24));
        let mut w = Watchdog::new();
        // 4.5 s and 5.0 s straddle the PM timer's wrap at 4.69 s.
        w.check(at(4_500_000_000, 0), &cs, &wd);
        assert!(matches!(w.check(at(5_000_000_000, 0), &cs, &wd), Verdict::Agrees { .. }));
    }

    #[test]
    fn a_rate_within_its_calibrations_uncertainty_is_not_a_fault_until_refined() {
        let (tsc, pm) = (conv(TSC_HZ, 64), conv(PM_HZ, 24));
        // Calibrated 1 255 ppm off (a loaded host's PIT windows), within a 150 000 ppm spread.
        let mut lenient = Watchdog::new();
        let mut strict = Watchdog::new();
        for w in [&mut lenient, &mut strict] {
            assert_eq!(w.check(at(0, 1_255), &tsc, &pm), Verdict::Started);
        }
        assert!(matches!(
            lenient.check_within(at(INTERVAL_NS, 1_255), &tsc, &pm, 150_000),
            Verdict::Agrees { .. }
        ));
        assert!(matches!(strict.check(at(INTERVAL_NS, 1_255), &tsc, &pm), Verdict::Unstable { .. }));
        // A fault beyond the uncertainty is still caught.
        let mut faulty = Watchdog::new();
        faulty.check(at(0, 5_000), &tsc, &pm);
        assert!(matches!(
            faulty.check_within(at(INTERVAL_NS, 5_000), &tsc, &pm, 2_000),
            Verdict::Unstable { .. }
        ));
        assert_eq!(threshold_ns_within(INTERVAL_NS, 0), threshold_ns(INTERVAL_NS));
    }
}
