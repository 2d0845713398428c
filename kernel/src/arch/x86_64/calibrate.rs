//! Measures the LAPIC timer and TSC frequencies against a reference clock: the HPET main
//! counter when there is one, else the ACPI PM timer, else the PIT (as the TSC's first
//! calibration did). The two counters are read at each end of a window, so a vCPU descheduled
//! meanwhile lengthens the window on both alike; the PIT's window ends when its output is
//! seen to change, which a descheduled vCPU sees late (under a loaded TCG host, off by 20 %).
//!
//! The LAPIC timer counts down from its maximum, started before the window; its count is read
//! right after the TSC at both ends, so that the two counters' windows are the same.
//!
//! Three 10 ms windows; each window's counts are divided by the window's length as the
//! reference measured it. The median is taken and the spread (max - min over median) is logged
//! as the calibration's measured error.

use super::hpet::Hpet;
use super::pm_timer::PmTimer;
use super::{lapic, pit, tsc};
use core::fmt;

const WINDOWS: usize = 3;
const WINDOW_HZ: u64 = 100; // 10 ms
/// A window that takes more than this many times its length by the TSC is abandoned.
const WINDOW_SLACK: u64 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    Hpet,
    PmTimer,
    Pit,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reference::Hpet => "hpet",
            Reference::PmTimer => "acpi_pm",
            Reference::Pit => "pit",
        })
    }
}

/// Why a reference clock could not calibrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalibrationError {
    /// A 10 ms window did not end within `WINDOW_SLACK` times its length of TSC time.
    WindowStalled { reference: Reference },
}

impl fmt::Display for CalibrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalibrationError::WindowStalled { reference } => write!(
                f,
                "the {reference} did not count a 10 ms window within {} ms of TSC time",
                1000 / WINDOW_HZ * WINDOW_SLACK
            ),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Calibration {
    pub reference: Reference,
    /// Why the preferred reference (the HPET) was not used, when this calibration is a
    /// fallback to another: for the caller to record.
    pub hpet_failure: Option<CalibrationError>,
    /// Ticks per second of the LAPIC timer (bus clock / `lapic::TIMER_DIVISOR`).
    pub lapic_timer_hz: u64,
    pub lapic_spread_ppm: u64,
    pub tsc_hz: u64,
    pub tsc_spread_ppm: u64,
}

/// One window: (LAPIC ticks, TSC cycles, window length in ns by the reference).
type Sample = (u64, u64, u64);

/// The LAPIC timer counted beside the TSC, or nothing (a CPU without a local APIC: the TSC
/// alone is calibrated, the LAPIC timer's rate reads 0).
#[derive(Debug, Clone, Copy)]
struct LapicTimer(bool);

impl LapicTimer {
    fn start(self) {
        if self.0 {
            lapic::timer_oneshot(u32::MAX, 0, true);
        }
    }
    fn count(self) -> u32 {
        if self.0 { lapic::timer_current_count() } else { 0 }
    }
    fn stop(self) {
        if self.0 {
            lapic::timer_stop();
        }
    }
}

fn window_hpet(hpet: &Hpet, lapic: LapicTimer) -> Option<Sample> {
    let ticks = hpet.frequency_hz() / WINDOW_HZ;
    let limit = (tsc::frequency_hz() / WINDOW_HZ).saturating_mul(WINDOW_SLACK);
    lapic.start();
    let start = hpet.counter();
    let tsc_start = tsc::read();
    let lapic_start = lapic.count();
    let mut now = start;
    while now.wrapping_sub(start) < ticks {
        if tsc::read() - tsc_start > limit {
            return None;
        }
        now = hpet.counter();
    }
    let tsc_cycles = tsc::read() - tsc_start;
    let lapic_ticks = u64::from(lapic_start - lapic.count());
    let ns = u128::from(now.wrapping_sub(start)) * u128::from(hpet.period_fs()) / 1_000_000;
    Some((lapic_ticks, tsc_cycles, ns as u64))
}

fn window_pm(pm: &PmTimer, lapic: LapicTimer) -> Option<Sample> {
    let ticks = (pm.frequency_hz() / WINDOW_HZ) as u32;
    let limit = (tsc::frequency_hz() / WINDOW_HZ).saturating_mul(WINDOW_SLACK);
    lapic.start();
    let start = pm.read();
    let tsc_start = tsc::read();
    let lapic_start = lapic.count();
    let mut now = start;
    while pm.elapsed(start, now) < ticks {
        if tsc::read() - tsc_start > limit {
            return None;
        }
        now = pm.read();
    }
    let tsc_cycles = tsc::read() - tsc_start;
    let lapic_ticks = u64::from(lapic_start - lapic.count());
    let ns = u128::from(pm.elapsed(start, now)) * 1_000_000_000 / u128::from(pm.frequency_hz());
    Some((lapic_ticks, tsc_cycles, ns as u64))
}

fn window_pit(lapic: LapicTimer) -> Option<Sample> {
    let ticks = (pit::PIT_HZ / WINDOW_HZ) as u16;
    let limit = (tsc::frequency_hz() / WINDOW_HZ).saturating_mul(WINDOW_SLACK);
    lapic.start();
    pit::start_channel2(ticks);
    let tsc_start = tsc::read();
    let lapic_start = lapic.count();
    while !pit::channel2_expired() {
        if tsc::read() - tsc_start > limit {
            return None;
        }
    }
    let tsc_cycles = tsc::read() - tsc_start;
    let lapic_ticks = u64::from(lapic_start - lapic.count());
    Some((lapic_ticks, tsc_cycles, u64::from(ticks) * 1_000_000_000 / pit::PIT_HZ))
}

/// Median and spread (ppm) of per-second rates.
fn median_and_spread(mut rates: [u64; WINDOWS]) -> (u64, u64) {
    rates.sort_unstable();
    let median = rates[WINDOWS / 2];
    (median, (rates[WINDOWS - 1] - rates[0]) * 1_000_000 / median.max(1))
}

fn measure(
    mut window: impl FnMut() -> Option<Sample>,
    reference: Reference,
    lapic: LapicTimer,
) -> Result<Calibration, CalibrationError> {
    let mut lapic_rates = [0; WINDOWS];
    let mut tsc_rates = [0; WINDOWS];
    for i in 0..WINDOWS {
        let Some((lapic_ticks, tsc_cycles, ns)) = window() else {
            lapic.stop();
            return Err(CalibrationError::WindowStalled { reference });
        };
        let per_second = |n: u64| (u128::from(n) * 1_000_000_000 / u128::from(ns.max(1))) as u64;
        lapic_rates[i] = per_second(lapic_ticks);
        tsc_rates[i] = per_second(tsc_cycles);
    }
    lapic.stop();
    let (lapic_timer_hz, lapic_spread_ppm) = median_and_spread(lapic_rates);
    let (tsc_hz, tsc_spread_ppm) = median_and_spread(tsc_rates);
    Ok(Calibration {
        reference,
        hpet_failure: None,
        lapic_timer_hz,
        lapic_spread_ppm,
        tsc_hz,
        tsc_spread_ppm,
    })
}

/// Calibrates the TSC (and, with `with_lapic`, the LAPIC timer) against the HPET if given and
/// working, else the PM timer if given and working, else the PIT; `None` if none runs. A calibration taken because the HPET failed carries the
/// HPET's failure in `hpet_failure` (not logged here: the caller records the fallback, one
/// line).
pub fn calibrate(hpet: Option<&Hpet>, pm: Option<&PmTimer>, with_lapic: bool) -> Option<Calibration> {
    let lapic = LapicTimer(with_lapic);
    let hpet_failure = match hpet.map(|h| measure(|| window_hpet(h, lapic), Reference::Hpet, lapic)) {
        Some(Ok(c)) => return Some(c),
        Some(Err(e)) => Some(e),
        None => None,
    };
    let fallback = |c: Calibration| Calibration { hpet_failure, ..c };
    if let Some(Ok(c)) = pm.map(|p| measure(|| window_pm(p, lapic), Reference::PmTimer, lapic)) {
        return Some(fallback(c));
    }
    measure(|| window_pit(lapic), Reference::Pit, lapic).ok().map(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_ignores_one_outlier_and_reports_the_spread() {
        assert_eq!(median_and_spread([1_000_000, 1_000_500, 2_000_000]), (1_000_500, 999_500));
        assert_eq!(median_and_spread([7, 7, 7]), (7, 0));
    }

    #[test]
    fn stalled_window_says_which_reference_and_how_long() {
        let e = CalibrationError::WindowStalled { reference: Reference::Hpet };
        assert_eq!(
            alloc::string::ToString::to_string(&e),
            "the hpet did not count a 10 ms window within 500 ms of TSC time"
        );
    }
}
