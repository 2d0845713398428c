//! Suspend and resume of the timer subsystem (the seed's `timer_suspend` / `timer_resume` and
//! `hpet_timer_reset(resume)`), exercised by `suspend_test=MS` in the middle of the main run:
//! every CPU parks with its tick suspended (local device shut down, timers kept); the broadcast
//! device is shut down; the HPET's counter is stopped and its configuration saved, then every
//! comparator and its route is cleared as a power loss would; the machine waits MS ms of real
//! time; then the HPET is restored and restarted, each comparator's route rewritten, and every
//! CPU brings its own device back and programs its next deadline (each step the crate's glue,
//! `kernel_time::tick::glue`, on that CPU). MONOTONIC stops for the halt, as
//! Linux's does while a machine sleeps: the clocksource's counter runs on, and the timekeeper
//! takes the halt back (`clocksource::resume_after`), adding it to BOOTTIME and REALTIME; then
//! every CPU places its timers on those two clocks again (`clockevents::clock_was_set`). A
//! timer on MONOTONIC waits the halt out (it is no later on MONOTONIC than the ticks'
//! suspension around the halt); one on BOOTTIME or REALTIME that fell due meanwhile runs at once.

use super::cpu;
use crate::arch::x86_64::hpet::{Hpet, SavedState};
use crate::arch::x86_64::smp::{self, percpu};
use crate::time::clocksource::now_ns;
use crate::timer_report::{SuspendKind, SuspendReport};
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use spin::Mutex;
use x86_64::instructions::interrupts::without_interrupts;

/// How long the CPUs get to park or resume (bounded by the clocksource, not a duration that is
/// asserted: a CPU that does not answer is reported and the suspend abandoned).
const PARK_LIMIT_NS: u64 = 1_000_000_000;

static TOTALS: Mutex<SuspendReport> = Mutex::new(SuspendReport {
    kind: SuspendKind::Simulated,
    count: 0,
    suspended_ns: 0,
    timers_resumed: 0,
    asleep_ns: 0,
    request_to_first_timer_ns: None,
});

/// Suspends begun so far (a counter a suspend stops, the HPET's, does not measure across one).
static SUSPENDS: AtomicU64 = AtomicU64::new(0);

/// How many suspends have begun (lock-free).
pub fn suspends() -> u64 {
    SUSPENDS.load(Ordering::Acquire)
}

/// The suspend tests done so far, for the report (`None` if none ran).
pub fn report() -> Option<SuspendReport> {
    let totals = without_interrupts(|| TOTALS.lock().clone());
    (totals.count > 0).then_some(totals)
}

/// What the parked CPUs and the boot CPU share during one suspend.
struct Rendezvous {
    parked: AtomicUsize,
    resumed: AtomicUsize,
    release: AtomicBool,
    pending: AtomicU64,
    /// When the first tick was suspended and the last resumed: the time any timer may have
    /// waited on the suspend.
    first_suspended_ns: AtomicU64,
    last_resumed_ns: AtomicU64,
}

/// Parks the calling CPU with its tick suspended until released, then resumes its tick.
fn park(r: &Rendezvous) {
    r.first_suspended_ns.fetch_min(now_ns(), Ordering::AcqRel);
    let pending = cpu::suspend_tick();
    r.pending.fetch_add(pending as u64, Ordering::Relaxed);
    r.parked.fetch_add(1, Ordering::AcqRel);
    while !r.release.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    cpu::resume_tick(now_ns());
    r.last_resumed_ns.fetch_max(now_ns(), Ordering::AcqRel);
    r.resumed.fetch_add(1, Ordering::AcqRel);
}

/// Suspends timekeeping on every CPU for `ms` ms of real time and resumes it; called on the
/// boot CPU with interrupts enabled. `halted(true)` runs once every CPU's tick is suspended,
/// before the halt, and `halted(false)` after it, before anything resumes (with interrupts
/// off: no timer runs anywhere in between). Errors say which CPU did not park.
pub fn suspend_for(
    ms: u64,
    hpet: Option<&'static Hpet>,
    halted: &mut dyn FnMut(bool),
) -> Result<(), alloc::string::String> {
    let others: alloc::vec::Vec<usize> =
        percpu::all().map(|c| c.index).filter(|&c| c != percpu::this_cpu().index).collect();
    let r = Arc::new(Rendezvous {
        parked: AtomicUsize::new(0),
        resumed: AtomicUsize::new(0),
        release: AtomicBool::new(false),
        pending: AtomicU64::new(0),
        first_suspended_ns: AtomicU64::new(u64::MAX),
        last_resumed_ns: AtomicU64::new(0),
    });
    log::info!("suspend: parking {} other CPU(s), timekeeping suspended for {ms} ms", others.len());
    for &cpu in &others {
        let shared = r.clone();
        smp::post(cpu, move || park(&shared)).map_err(|e| alloc::format!("CPU {cpu}: {e}"))?;
    }
    let start = now_ns();
    while r.parked.load(Ordering::Acquire) < others.len() {
        if now_ns() - start > PARK_LIMIT_NS {
            r.release.store(true, Ordering::Release);
            return Err(alloc::format!(
                "{} of {} CPUs parked within 1 s: suspend abandoned",
                r.parked.load(Ordering::Relaxed),
                others.len()
            ));
        }
        core::hint::spin_loop();
    }
    let halted_ns = without_interrupts(|| {
        SUSPENDS.fetch_add(1, Ordering::AcqRel);
        r.first_suspended_ns.fetch_min(now_ns(), Ordering::AcqRel);
        let (pending, saved) = suspend_ticks_and_hpet(hpet);
        r.pending.fetch_add(pending as u64, Ordering::Relaxed);
        // What a power loss leaves: every comparator cleared (interrupts off, no route).
        if let Some(h) = hpet {
            for n in 0..h.comparators() {
                h.set_comparator_config(n, crate::arch::x86_64::hpet::ComparatorConfig::empty());
            }
        }
        halted(true);
        let suspended_at = now_ns();
        while now_ns() - suspended_at < ms * 1_000_000 {
            core::hint::spin_loop();
        }
        // MONOTONIC stops while the machine sleeps, as Linux's: it takes the halt back (no
        // one read it meanwhile: every CPU is parked, this one spins above), and BOOTTIME and
        // REALTIME count it.
        let asleep_ns = now_ns() - suspended_at;
        crate::time::clocksource::resume_after(asleep_ns);
        halted(false);
        resume_hpet_and_ticks(hpet, saved);
        r.last_resumed_ns.fetch_max(now_ns(), Ordering::AcqRel);
        asleep_ns
    });
    r.release.store(true, Ordering::Release);
    let start = now_ns();
    while r.resumed.load(Ordering::Acquire) < others.len() {
        if now_ns() - start > PARK_LIMIT_NS {
            return Err(alloc::format!(
                "{} of {} CPUs resumed within 1 s",
                r.resumed.load(Ordering::Relaxed),
                others.len()
            ));
        }
        core::hint::spin_loop();
    }
    // REALTIME and BOOTTIME moved on by the sleep: every CPU places its timers on them again.
    super::clock_was_set();
    let pending = r.pending.load(Ordering::Relaxed);
    // From the first CPU's tick suspended to the last one's resumed: on MONOTONIC, which did
    // not count the halt, plus the halt.
    let suspended_ns =
        r.last_resumed_ns.load(Ordering::Acquire) - r.first_suspended_ns.load(Ordering::Acquire) + halted_ns;
    log::info!(
        "resume: timekeeping resumed; halted {} us, ticks suspended {} us in all; {pending} timers were pending",
        halted_ns / 1000,
        suspended_ns / 1000
    );
    record(SuspendKind::Simulated, suspended_ns, pending, halted_ns);
    Ok(())
}

/// Adds one suspend of `kind` to the report's totals.
/// The first timer after an S3 wake ran `ns` after the request (MONOTONIC).
pub(super) fn record_first_timer(ns: u64) {
    without_interrupts(|| TOTALS.lock().request_to_first_timer_ns = Some(ns));
}

pub(super) fn record(kind: SuspendKind, suspended_ns: u64, pending: u64, asleep_ns: u64) {
    without_interrupts(|| {
        let mut t = TOTALS.lock();
        t.kind = kind;
        t.count += 1;
        t.suspended_ns += suspended_ns;
        t.timers_resumed += pending;
        t.asleep_ns += asleep_ns;
    });
}

/// This CPU's tick and the broadcast suspended (their pending events kept), then the HPET's
/// configuration and each comparator's saved: what a suspend, simulated or real, takes first.
/// Returns the timers pending on this CPU and the HPET's saved state.
pub(super) fn suspend_ticks_and_hpet(hpet: Option<&'static Hpet>) -> (usize, Option<SavedState>) {
    let pending = cpu::suspend_tick();
    cpu::suspend_broadcast();
    let saved = hpet.map(|h| {
        let saved = h.suspend();
        for ch in super::hpet::channels() {
            ch.suspend();
        }
        saved
    });
    (pending, saved)
}

/// The other way: the HPET's configuration and comparators as saved, then the broadcast and
/// this CPU's tick resumed at the clock's current reading (each programs its pending event).
pub(super) fn resume_hpet_and_ticks(hpet: Option<&'static Hpet>, saved: Option<SavedState>) {
    if let (Some(h), Some(saved)) = (hpet, saved) {
        h.resume(&saved);
        for ch in super::hpet::channels() {
            ch.resume();
        }
    }
    let now = now_ns();
    cpu::resume_broadcast(now);
    cpu::resume_tick(now);
}
