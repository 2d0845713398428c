//! Stamps along the timer interrupt path, for the benchmark's per-stage breakdown (where the
//! instructions between a deadline and its callback go). Compiled out unless the kernel is
//! built with the `path-stamps` feature (the benchmark's stage kernel: its lateness figures come
//! from a kernel without them); with it, off until the benchmark turns it on, and off each
//! stamp costs a load and a branch.
//!
//! Stamps are raw TSC reads in the CPU's own `PerCpu`; `Eoi` also records which interrupt (a
//! per-CPU sequence number bumped at `Entry`) the stamps belong to, so a reader can tell the
//! stamps of one interrupt from those of the next.

use super::smp::percpu;
use super::tsc;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The points stamped, in path order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// First instruction of the vector's dispatch.
    Entry,
    /// The device's status read and acknowledged (HPET), or its handler reached (LAPIC).
    Acked,
    /// The clocksource read the interrupt uses.
    ClockRead,
    /// The first due timer popped from the CPU's queue, its callback about to run.
    Popped,
    /// The last callback returned.
    CallbacksDone,
    /// The next event programmed (or nothing needed).
    Reprogrammed,
    /// End of interrupt signalled, the dispatch about to return.
    Eoi,
}

pub const STAGES: usize = 7;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// One CPU's stamps.
pub struct PathStamps {
    tsc: [AtomicU64; STAGES],
    /// Interrupts dispatched on this CPU while tracing, and the one `Eoi` was stamped for.
    sequence: AtomicU64,
    eoi_sequence: AtomicU64,
}

impl Default for PathStamps {
    fn default() -> Self {
        Self::new()
    }
}

impl PathStamps {
    pub const fn new() -> PathStamps {
        PathStamps {
            tsc: [const { AtomicU64::new(0) }; STAGES],
            sequence: AtomicU64::new(0),
            eoi_sequence: AtomicU64::new(0),
        }
    }
}

/// Whether this kernel has the stamps (built with the `path-stamps` feature).
pub const BUILT_IN: bool = cfg!(feature = "path-stamps");

/// Turns tracing on or off on every CPU.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Stamps `stage` on the calling CPU (when tracing). Off, one load and a branch: the flag
/// tested alone first (`!ENABLED || !ready()` cost the dev build two more instructions per
/// stamp), the stamp inline (a call would add its own cost to the stages it measures).
#[inline(always)]
pub fn stamp(stage: Stage) {
    if !BUILT_IN || !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    if !percpu::ready() {
        return;
    }
    let p = &percpu::this_cpu().path;
    p.tsc[stage as usize].store(tsc::read(), Ordering::Relaxed);
    match stage {
        Stage::Entry => {
            p.sequence.store(p.sequence.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
        Stage::Eoi => p.eoi_sequence.store(p.sequence.load(Ordering::Relaxed), Ordering::Relaxed),
        _ => {}
    }
}

/// The calling CPU's stamps and the interrupt in progress (its sequence number).
pub fn current() -> ([u64; STAGES], u64) {
    let p = &percpu::this_cpu().path;
    (core::array::from_fn(|i| p.tsc[i].load(Ordering::Relaxed)), p.sequence.load(Ordering::Relaxed))
}

/// The stamps of the last interrupt that reached `Eoi` on the calling CPU, with its sequence
/// number.
pub fn last_complete() -> ([u64; STAGES], u64) {
    let p = &percpu::this_cpu().path;
    (core::array::from_fn(|i| p.tsc[i].load(Ordering::Relaxed)), p.eoi_sequence.load(Ordering::Relaxed))
}

/// TSC cycles in ns at the calibrated TSC frequency.
pub fn cycles_to_ns(cycles: u64) -> u64 {
    (u128::from(cycles) * 1_000_000_000 / u128::from(tsc::frequency_hz().max(1))) as u64
}
