//! The TSC synchronisation check as each AP comes online (Linux's `check_tsc_sync_source` and
//! `check_tsc_sync_target`): the AP, on its start-up path before its timekeeping, and the boot
//! CPU, waiting for it in `smp::start_one`, take turns for [`LOOP_NS`] reading their TSCs under
//! one lock; the largest backward step between consecutive readings is the warp
//! (`kernel_time::clocksource::sync`). A warp beyond the threshold marks the TSC unstable.
//!
//! The turns must really alternate: the boot CPU goes on past [`LOOP_NS`] until the turn has
//! passed between the two CPUs [`MIN_HANDOVERS`] times (under `-icount` the vCPUs run one
//! after the other in slices, not side by side). The rendezvous is bounded on both sides by
//! each CPU's own TSC: an AP whose boot CPU never answers (or the other way round) goes on
//! without a check, and the check fails closed: an unjudged TSC (no answer, or fewer than
//! `MIN_JUDGED_HANDOVERS` handovers) is marked unstable and the clocksource falls back.

use super::clocksource;
use crate::arch::x86_64::tsc;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use kernel_time::clocksource::sync::{self, SyncResult, WarpMeter};
use spin::Mutex;

/// How long each CPU takes turns (Linux: 2 ms, 20 ms at boot): thousands of turns under TCG.
const LOOP_NS: u64 = 2_000_000;
/// How long the boot CPU takes turns once the check could judge (a vCPU may be descheduled:
/// on a loaded 2-core host handovers come milliseconds apart).
const WAIT_NS: u64 = 100_000_000;
/// How long either side waits for the other (to start, to stop), and the longest the boot CPU
/// takes turns while too few handovers were seen to judge: an unjudged check fails closed (the
/// TSC is not trusted), so a vCPU descheduled for a while (over 100 ms seen beside 8 vCPUs on
/// a loaded 2-core host) must make the check late, not unjudged. Half the AP's time to come
/// online (`smp::ONLINE_TIMEOUT_NS`), so that a withdrawal comes first.
const RENDEZVOUS_NS: u64 = 5_000_000_000;
/// The check compares the CPUs only where the turn passes from one to the other: the warp it
/// finds is the offset between them minus the time the handover took, a lower bound. More
/// handovers make a quick one, and so a close bound, likelier.
const MIN_HANDOVERS: u64 = 8;
/// How long a CPU leaves the next turn to the other before taking it again itself.
const YIELD_NS: u64 = 20_000;

/// The AP asking for a check (its index + 1; 0 when none).
static ARRIVED: AtomicUsize = AtomicUsize::new(0);
/// The boot CPU takes turns too: the AP starts.
static GO: AtomicBool = AtomicBool::new(false);
/// The boot CPU's window ended: the AP stops.
static STOP: AtomicBool = AtomicBool::new(false);
/// The AP left the loop.
static DONE: AtomicBool = AtomicBool::new(false);
static METER: Mutex<WarpMeter> = Mutex::new(WarpMeter::new());
/// Who took the last turn (a copy of the meter's, read without the lock).
static LAST_CPU: AtomicUsize = AtomicUsize::new(usize::MAX);

fn cycles(ns: u64) -> u64 {
    (u128::from(tsc::frequency_hz()) * u128::from(ns) / 1_000_000_000) as u64
}

/// Spins until `done` or `ns` of this CPU's TSC pass; true if `done`.
fn wait(ns: u64, done: impl Fn() -> bool) -> bool {
    let (start, limit) = (tsc::read(), cycles(ns));
    while !done() {
        if tsc::read().wrapping_sub(start) > limit {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// CPU `cpu` takes turns until `stop` says so (given the time it has taken turns, by its own
/// TSC, and the meter), or for at most [`RENDEZVOUS_NS`]. After each turn it leaves the next to the
/// other CPU for up to [`YIELD_NS`] (the lock alone is unfair: under TCG one CPU retakes it a
/// million times in a row), then takes another itself, so that its last reading is fresh when
/// the other CPU does come (under `-icount` they run one after the other).
fn take_turns(cpu: usize, stop: impl Fn(u64, &WarpMeter) -> bool) {
    // Intervals on this CPU's own TSC; the meter compares the readings as other CPUs see them.
    let (start, limit, yield_cycles) = (tsc::read(), cycles(RENDEZVOUS_NS), cycles(YIELD_NS));
    loop {
        let (now, done) = {
            let mut meter = METER.lock();
            meter.step(cpu, tsc::read_skewed());
            LAST_CPU.store(cpu, Ordering::Release);
            let now = tsc::read();
            (now, stop(now.wrapping_sub(start), &meter))
        };
        if done || now.wrapping_sub(start) > limit {
            return;
        }
        while LAST_CPU.load(Ordering::Acquire) == cpu && tsc::read().wrapping_sub(now) < yield_cycles {
            core::hint::spin_loop();
        }
    }
}

/// The AP's side, on its start-up path (interrupts off); the `tsc_skew` fault is injected
/// first if it names this CPU.
pub fn check_on_ap(index: usize) {
    tsc::apply_skew();
    ARRIVED.store(index + 1, Ordering::Release);
    if !wait(RENDEZVOUS_NS, || GO.load(Ordering::Acquire)) {
        // The boot CPU did not come: withdraw (it may still come, and then finds no one).
        if ARRIVED.compare_exchange(index + 1, 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            // Fails closed: a TSC nobody compared is not trusted (the clocksource falls back).
            clocksource::tsc_unchecked(index, "the boot CPU did not take part");
            return;
        }
        // It came at the last moment: take part after all.
        wait(RENDEZVOUS_NS, || GO.load(Ordering::Acquire));
    }
    take_turns(index, |_, _| STOP.load(Ordering::Acquire));
    DONE.store(true, Ordering::Release);
}

/// The boot CPU's side, from its loop waiting for an AP to come online: checks with the AP if
/// one is waiting for it, and records the result.
pub fn serve() {
    let arrived = ARRIVED.load(Ordering::Acquire);
    if arrived == 0
        || ARRIVED.compare_exchange(arrived, usize::MAX, Ordering::AcqRel, Ordering::Acquire).is_err()
    {
        return;
    }
    let cpu = arrived - 1;
    let result = x86_64::instructions::interrupts::without_interrupts(|| {
        *METER.lock() = WarpMeter::new();
        LAST_CPU.store(usize::MAX, Ordering::Release);
        // A straggler of an earlier check may have set it after that check gave up on it.
        DONE.store(false, Ordering::Release);
        GO.store(true, Ordering::Release);
        let (loop_cycles, wait_cycles) = (cycles(LOOP_NS), cycles(WAIT_NS));
        take_turns(0, |elapsed, m| {
            (elapsed > loop_cycles && m.handovers >= MIN_HANDOVERS)
                || (elapsed > wait_cycles && m.handovers >= sync::MIN_JUDGED_HANDOVERS)
        });
        STOP.store(true, Ordering::Release);
        let done = wait(RENDEZVOUS_NS, || DONE.load(Ordering::Acquire));
        // The readings taken are valid whether or not the AP saw STOP in time.
        let result = METER.lock().result(tsc::frequency_hz());
        for flag in [&GO, &STOP, &DONE] {
            flag.store(false, Ordering::Release);
        }
        ARRIVED.store(0, Ordering::Release);
        (done, result)
    });
    if !result.0 {
        log::warn!("CPU {cpu} did not stop its TSC sync check turns in time; judged on the readings taken");
    }
    record(cpu, result.1);
}

fn record(cpu: usize, r: SyncResult) {
    log::info!(
        "CPU {cpu} TSC sync check against CPU 0: largest warp {} ns over {} readings, {} handovers ({})",
        r.warp_ns,
        r.steps,
        r.handovers,
        r.verdict
    );
    clocksource::tsc_warp(cpu, r);
}
