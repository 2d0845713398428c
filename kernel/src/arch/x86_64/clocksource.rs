//! This machine's clocksources: the counters behind `now_ns` (the time layer's
//! [`ReadCounter`] for [`Hardware`]: one `match`, each arm a direct read), the registry of
//! sources behind an interrupts-off lock, registration of the TSC and the HPET main counter,
//! the `clocksource=` choice, and the report's clocksource part.

use super::{hpet::Hpet, tsc};
use crate::time::clocksource::{
    Clocksources, CounterId, Hardware, ReadCounter, SourceDesc, SourceFlags, Switch, TIMEKEEPER,
};
use crate::time::report::{ClocksourceReport, SwitchReport, TimerReport, Verdict};
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, Ordering};
use spin::Mutex;
use x86_64::instructions::interrupts::without_interrupts;

/// The counters `now_ns` can read.
pub const TSC: CounterId = CounterId(1);
pub const HPET: CounterId = CounterId(2);

/// Linux's ratings: the TSC is the cheapest to read, the HPET an MMIO read away.
pub const TSC_RATING: u32 = 300;
pub const HPET_RATING: u32 = 250;

/// The main counter register of the HPET that is the `hpet` clocksource (null until then).
static HPET_COUNTER: AtomicPtr<u64> = AtomicPtr::new(core::ptr::null_mut());

impl ReadCounter for Hardware {
    #[inline(always)]
    fn read(&self, counter: CounterId) -> u64 {
        match counter {
            TSC => tsc::read_ordered(),
            HPET => read_hpet(),
            _ => 0,
        }
    }
}

#[inline(always)]
fn read_hpet() -> u64 {
    let counter = HPET_COUNTER.load(Ordering::Relaxed);
    if counter.is_null() {
        return 0;
    }
    // SAFETY: a non-null pointer is the main counter register of a probed HPET, mapped
    // uncached for the kernel's lifetime (`register_hpet`); reading it has no side effects.
    unsafe { counter.read_volatile() }
}

static SOURCES: Mutex<Clocksources> = Mutex::new(Clocksources::new());
/// Fallbacks taken by the clocksource code (at bring-up or at run time), for the report.
static FALLBACKS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Runs `f` on the registry with interrupts off: a switch writes the timekeeper, which a
/// reader interrupting it on this CPU would wait for forever.
pub fn with_sources<R>(f: impl FnOnce(&mut Clocksources) -> R) -> R {
    without_interrupts(|| f(&mut SOURCES.lock()))
}

/// Registers `desc` and makes the best source current; logs the outcome (once there is a
/// log). Returns the switch, if one happened.
fn register(desc: SourceDesc) -> Option<Switch> {
    let (registered, switch) = with_sources(|s| (s.register(desc), s.select(&TIMEKEEPER, &Hardware)));
    match registered {
        Ok(()) => log::info!(
            "{}: {} Hz, {}-bit, rating {}{}",
            desc.name,
            desc.hz,
            desc.bits,
            desc.rating,
            flags_note(desc.flags)
        ),
        Err(e) => log::warn!("clocksource {} not registered: {e}", desc.name),
    }
    log_switch(switch.as_ref());
    switch
}

fn flags_note(flags: SourceFlags) -> &'static str {
    match (flags.contains(SourceFlags::CPU_CONSISTENT), flags.contains(SourceFlags::MUST_VERIFY)) {
        (true, _) => ", one counter for every CPU",
        (false, true) => ", per CPU, to be verified",
        (false, false) => ", per CPU",
    }
}

fn log_switch(switch: Option<&Switch>) {
    if let Some(s) = switch {
        if s.from == "none" {
            log::info!("clocksource {} from {} ns", s.to, s.at_ns);
        } else {
            log::info!("switched clocksource {} -> {} at {} ns: {}", s.from, s.to, s.at_ns, s.reason);
        }
    }
}

/// The TSC at `hz`, installed as the first clocksource (before there is a heap or a log).
pub fn register_tsc(hz: u64) {
    register(SourceDesc {
        name: "tsc",
        rating: TSC_RATING,
        hz,
        bits: 64,
        flags: SourceFlags::MUST_VERIFY,
        counter: TSC,
    });
}

/// A better measurement of the TSC's frequency: time continues at the new rate from now.
pub fn set_tsc_frequency(hz: u64) {
    with_sources(|s| s.set_frequency(&TIMEKEEPER, &Hardware, "tsc", hz));
}

/// The HPET main counter as the `hpet` clocksource.
pub fn register_hpet(hpet: &'static Hpet) {
    HPET_COUNTER.store(hpet.main_counter_ptr().cast_mut(), Ordering::Relaxed);
    register(SourceDesc {
        name: "hpet",
        rating: HPET_RATING,
        hz: hpet.frequency_hz(),
        bits: if hpet.capabilities().counter_64bit() { 64 } else { 32 },
        flags: SourceFlags::CONTINUOUS | SourceFlags::CPU_CONSISTENT,
        counter: HPET,
    });
}

/// `clocksource=NAME`: preferred while usable (applied at the next selection).
pub fn force(name: &'static str) {
    with_sources(|s| s.force(name));
    log::info!("clocksource={name} asked for");
}

/// After bring-up: narrow counters may be selected (nothing rebases them yet, so this only
/// selects among the others again), and a `clocksource=` that could not be honoured is
/// recorded as a fallback.
pub fn init_late() {
    let (switch, problem) = with_sources(|s| (s.select(&TIMEKEEPER, &Hardware), s.forced_problem()));
    log_switch(switch.as_ref());
    if let Some(p) = problem {
        record_fallback(p);
    }
    log::info!("clocksource {}", current_name());
}

fn record_fallback(reason: String) {
    log::warn!("fallback: {reason}");
    without_interrupts(|| FALLBACKS.lock().push(reason));
}

/// Name of the clock behind `now_ns`.
pub fn current_name() -> &'static str {
    with_sources(|s| s.current_name())
}

/// The clocksource part of the report: the current source, every source, the switches, and
/// the fallbacks taken (which degrade an `ok` verdict).
pub fn fill_report(report: &mut TimerReport) {
    with_sources(|s| {
        report.clocksource = s.current_name().into();
        report.clocksources = s
            .sources()
            .map(|c| ClocksourceReport {
                name: c.name().into(),
                rating: c.desc.rating,
                hz: c.hz,
                stable: c.stable(),
            })
            .collect();
        report.clocksource_switches = s
            .switches()
            .iter()
            .map(|w| SwitchReport {
                from: w.from.into(),
                to: w.to.into(),
                reason: w.reason.clone(),
                at_ns: w.at_ns,
            })
            .collect();
    });
    let fallbacks = without_interrupts(|| FALLBACKS.lock().clone());
    if !fallbacks.is_empty() && report.verdict == Verdict::Ok {
        report.verdict = Verdict::Degraded;
    }
    report.fallbacks.extend(fallbacks);
}
