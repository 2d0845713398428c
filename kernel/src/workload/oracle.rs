//! The workload's independent oracles: "never early" judged on a counter that is not the
//! clocksource's, and "on its CPU" judged from the APIC id the hardware reports in the
//! callback, never from `this_cpu()`.
//!
//! At arm time the deadline is mapped onto the other counter by a bracketed pair of reads
//! (the other counter, `now_ns`, the other counter again): the deadline is `now_ns + delay`,
//! and the other counter stood at least at its first reading when `now_ns` was read, so it
//! stands at least at that reading plus the delay's ticks when the deadline comes. A callback
//! that reads less has run early, whatever the clocksource says. The delay's ticks are counted
//! at the other counter's known frequency less a margin for the two frequencies' error, and
//! one tick for rounding, so that an on-time timer is never judged early.

use crate::arch::x86_64::lapic;
use crate::time::clockevents::suspend;
use crate::time::clocksource::{self, HPET, PM_TIMER, RawCounter, TSC, TSC_FAULTED, TSC_SKEWED, now_ns};
use core::sync::atomic::{AtomicU64, Ordering};
use kernel_time::clocksource::CounterId;

/// Margin for the other counter's frequency against the clock's, in ppm: the HPET's period and
/// the PM timer's 3.579545 MHz are given by the hardware (the specification's drift limits are
/// 500 ppm)...
const FIXED_RATE_MARGIN_PPM: u64 = 1_000;
/// ...while the TSC's frequency is calibrated at boot over 10 ms windows, which a stalled
/// emulator (a busy host) can make percents off until the refinement.
const TSC_MARGIN_PPM: u64 = 20_000;

/// Which raw counter, by index into [`clocksource::raw_counters`].
const HPET_REF: usize = 0;
const PM_REF: usize = 1;
const TSC_REF: usize = 2;

/// The counters to judge on, by index: counter id, frequency (0: absent) and mask; set once
/// per run, read lock-free on the interrupt path.
static COUNTERS: [[AtomicU64; 3]; 3] = [const { [const { AtomicU64::new(0) }; 3] }; 3];

/// Sets the counters to judge on ([`clocksource::raw_counters`]), before the run arms timers.
pub fn set_counters(raw: [Option<RawCounter>; 3]) {
    for (slot, r) in COUNTERS.iter().zip(raw) {
        let (counter, hz, mask) = r.map_or((0, 0, 0), |r| (u64::from(r.counter.0), r.hz, r.mask));
        slot[0].store(counter, Ordering::Relaxed);
        slot[2].store(mask, Ordering::Relaxed);
        slot[1].store(hz, Ordering::Release);
    }
}

/// What each counter's reading is continued by across a reset (ACPI S3): added to every
/// reading, so that the counter runs on from where it stood when the sleep began, as MONOTONIC
/// does (the sleep counted by neither); and each counter's reading when the sleep began.
static CONTINUED_BY: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
static AT_SLEEP: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// The machine is about to sleep with its counters to be reset (after MONOTONIC's last reading):
/// each counter's continued reading now.
pub fn counters_sleeping() {
    for (i, r) in counters().iter().enumerate() {
        if let Some(r) = r {
            AT_SLEEP[i].store(continued(i, r.counter), Ordering::Relaxed);
        }
    }
}

/// The machine woke (before MONOTONIC runs again): each counter continues from its reading
/// when the sleep began. The time between MONOTONIC's last reading and the sleep, and between
/// the wake and MONOTONIC's restart, is counted by the counters and not by MONOTONIC: the
/// oracle can only be ahead, never judge an on-time timer early.
pub fn counters_woke() {
    for (i, r) in counters().iter().enumerate() {
        if let Some(r) = r {
            let now = clocksource::read_raw(r.counter);
            CONTINUED_BY[i].store(AT_SLEEP[i].load(Ordering::Relaxed).wrapping_sub(now), Ordering::Relaxed);
        }
    }
}

/// Counter `counter` (index `i`), continued across resets.
fn continued(i: usize, counter: CounterId) -> u64 {
    clocksource::read_raw(counter).wrapping_add(CONTINUED_BY[i].load(Ordering::Relaxed))
}

/// The continued reading of the reference `r` (0 for none).
fn read_reference(r: Option<RawCounter>) -> u64 {
    let Some(r) = r else { return 0 };
    let slots = counters();
    slots
        .iter()
        .position(|s| s.is_some_and(|s| s.counter == r.counter))
        .map_or_else(|| clocksource::read_raw(r.counter), |i| continued(i, r.counter))
}

fn counters() -> [Option<RawCounter>; 3] {
    core::array::from_fn(|i| {
        let slot = &COUNTERS[i];
        let hz = slot[1].load(Ordering::Acquire);
        (hz != 0).then(|| RawCounter {
            counter: CounterId(slot[0].load(Ordering::Relaxed) as u32),
            hz,
            mask: slot[2].load(Ordering::Relaxed),
        })
    })
}

/// How one timer's deadline stands on the other counter, recorded when it is armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The other counter (`None`: no independent counter to judge on).
    pub reference: Option<RawCounter>,
    /// Its first reading of the bracket.
    pub start: u64,
    /// Ticks of it that must pass before the deadline can have come (the delay, less margin).
    pub min_ticks: u64,
    /// The clocksource's counter and `now_ns` at arm time, and the suspends begun by then.
    pub clock: CounterId,
    pub armed_ns: u64,
    pub suspends: u64,
    /// The APIC id of the CPU the timer is armed on (from its per-CPU record).
    pub apic_id: u32,
}

/// What the callback's reading of the other counter says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// The other counter shows the deadline passed.
    NotEarly,
    /// The other counter shows `ticks_short` ticks to go before the deadline.
    Early { ticks_short: u64, reference: CounterId },
    /// Not judged: no independent counter, the clocksource changed between arm and callback
    /// (a switch may move the clock forward by the TSC's warp), the other counter stopped in a
    /// suspend, or more than half its wrap passed.
    Unjudged,
}

/// The counter to judge the clock on when `clock` is the clocksource's: the PM timer for the
/// HPET, the HPET for the TSC, the HPET for the PM timer (each else the other one, or this
/// CPU's plain TSC); none for a TSC whose rate is faulted on purpose (`tsc_rate_ppm`: the clock
/// is wrong by design there).
fn reference_for(clock: CounterId, raw: &[Option<RawCounter>; 3]) -> Option<RawCounter> {
    let order: &[usize] = match clock {
        HPET => &[PM_REF, TSC_REF],
        TSC | TSC_SKEWED => &[HPET_REF, PM_REF],
        PM_TIMER => &[HPET_REF, TSC_REF],
        TSC_FAULTED => &[],
        _ => &[],
    };
    order.iter().find_map(|&i| raw[i])
}

/// Reads the clock between two readings of the other counter; returns the deadline
/// `delay_ns` from now and its stamp (see [`set_counters`]).
pub fn arm_stamp(delay_ns: u64, apic_id: u32) -> (u64, Stamp) {
    let clock = clocksource::current_counter();
    let reference = reference_for(clock, &counters());
    let start = read_reference(reference);
    let armed_ns = now_ns();
    // The second reading closes the bracket; only the first, the lower bound, is needed.
    let _ = read_reference(reference);
    let min_ticks = reference.map_or(0, |r| {
        let margin = if r.counter == TSC { TSC_MARGIN_PPM } else { FIXED_RATE_MARGIN_PPM };
        let ticks = u128::from(delay_ns) * u128::from(r.hz) / 1_000_000_000;
        let ticks = ticks * u128::from(1_000_000 - margin) / 1_000_000;
        (ticks as u64).saturating_sub(1)
    });
    let stamp =
        Stamp { reference, start, min_ticks, clock, armed_ns, suspends: suspend::suspends(), apic_id };
    (armed_ns.saturating_add(delay_ns), stamp)
}

/// Judges, in the timer's callback, whether it ran before its deadline on the other counter.
pub fn judge(stamp: &Stamp) -> Judgement {
    let Some(r) = stamp.reference else { return Judgement::Unjudged };
    let now = read_reference(Some(r));
    if clocksource::current_counter() != stamp.clock
        || (r.counter == HPET && suspend::suspends() != stamp.suspends)
    {
        return Judgement::Unjudged;
    }
    // The workload's delays are a few ms, well within a wrap (the 24-bit PM timer's is 4.7 s);
    // a timer held much longer (a suspend) is not judged rather than judged across a wrap.
    let half_wrap_ns = (u128::from(r.mask) * 1_000_000_000 / u128::from(r.hz.max(1)) / 2) as u64;
    if now_ns().saturating_sub(stamp.armed_ns) >= half_wrap_ns {
        return Judgement::Unjudged;
    }
    let elapsed = now.wrapping_sub(stamp.start) & r.mask;
    if elapsed < stamp.min_ticks {
        Judgement::Early { ticks_short: stamp.min_ticks - elapsed, reference: r.counter }
    } else {
        Judgement::NotEarly
    }
}

/// The APIC id of the CPU running this, from the hardware: the LAPIC's ID register (xAPIC
/// MMIO) or the x2APIC ID MSR; without a local APIC, CPUID's initial APIC id.
pub fn apic_id_here() -> u32 {
    if lapic::mode().is_some() { lapic::id() } else { lapic::initial_id() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HPET_100MHZ: RawCounter = RawCounter { counter: HPET, hz: 100_000_000, mask: u32::MAX as u64 };
    const PM: RawCounter = RawCounter { counter: PM_TIMER, hz: 3_579_545, mask: (1 << 24) - 1 };
    const TSC_3GHZ: RawCounter = RawCounter { counter: TSC, hz: 3_000_000_000, mask: u64::MAX };

    #[test]
    fn the_reference_is_never_the_clocksource() {
        let all = [Some(HPET_100MHZ), Some(PM), Some(TSC_3GHZ)];
        assert_eq!(reference_for(HPET, &all), Some(PM));
        assert_eq!(reference_for(TSC, &all), Some(HPET_100MHZ));
        assert_eq!(reference_for(TSC_SKEWED, &all), Some(HPET_100MHZ));
        assert_eq!(reference_for(PM_TIMER, &all), Some(HPET_100MHZ));
        assert_eq!(reference_for(TSC_FAULTED, &all), None, "a clock wrong by design is not judged");
        let no_hpet = [None, Some(PM), Some(TSC_3GHZ)];
        assert_eq!(reference_for(PM_TIMER, &no_hpet), Some(TSC_3GHZ));
        assert_eq!(reference_for(TSC, &no_hpet), Some(PM));
    }
}
