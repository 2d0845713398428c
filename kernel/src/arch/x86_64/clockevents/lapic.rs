//! The LAPIC timer as a per-CPU clock event device (Linux's `lapic` clockevent): one-shot and
//! periodic at the calibrated bus clock / 16, rating 100, stopping in deep C-states unless the
//! CPU has ARAT. Where CPUID offers TSC-deadline mode it is used instead (Linux's
//! `lapic-deadline`): one-shot only, counted in TSC cycles, an absolute deadline so that a
//! delta can never be "passed" while written.
//!
//! A LAPIC is reachable only from its own CPU, so each CPU registers its own timer and only
//! that CPU ever programs it (the time layer programs a local device from its CPU).

use super::super::smp::percpu;
use super::super::{interrupts, lapic, tsc};
use crate::time::clockevents::{CpuSet, DeviceSpec, DriverState, EventDriver, EventPassed, Features};
use alloc::format;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub const RATING: u32 = 100;
/// Linux's lapic_clockevent min_delta_ticks (0xF); the counter is 32 bits, and deltas stay
/// below 2^31 as Linux's do.
const MIN_DELTA_TICKS: u64 = 0xf;
const MAX_DELTA_TICKS: u64 = 0x7fff_ffff;

/// The LAPIC timer of one CPU.
pub struct LapicTimer {
    cpu: usize,
    vector: u8,
    /// TSC-deadline mode instead of the count-down.
    tsc_deadline: bool,
    /// Calls that arrived on another CPU and were refused (a bug in the caller if ever > 0).
    pub wrong_cpu: AtomicU64,
}

/// The time-layer device of each CPU's LAPIC timer, + 1 (0: none), for the shared vector.
static DEVICE_OF_CPU: [AtomicUsize; percpu::MAX_CPUS] = [const { AtomicUsize::new(0) }; percpu::MAX_CPUS];

impl LapicTimer {
    /// The calling CPU's timer, on the shared timer `vector`, and its description: TSC-deadline
    /// mode at `tsc_hz` when `tsc_deadline`, else the count-down at `timer_hz`.
    pub fn for_this_cpu(
        vector: u8,
        timer_hz: u64,
        tsc_hz: u64,
        tsc_deadline: bool,
        arat: bool,
    ) -> (&'static LapicTimer, DeviceSpec) {
        let cpu = percpu::this_cpu().index;
        let timer: &'static LapicTimer = alloc::boxed::Box::leak(alloc::boxed::Box::new(LapicTimer {
            cpu,
            vector,
            tsc_deadline,
            wrong_cpu: AtomicU64::new(0),
        }));
        let mut features = Features::ONESHOT | Features::PER_CPU;
        if !tsc_deadline {
            features |= Features::PERIODIC;
        }
        if !arat {
            features |= Features::STOPS_IN_DEEP_IDLE;
        }
        let (name, frequency_hz, max_delta_ticks) = if tsc_deadline {
            // A minute of TSC cycles: far beyond any tick, and the conversion keeps precision.
            (format!("lapic-deadline{cpu}"), tsc_hz, tsc_hz.saturating_mul(60))
        } else {
            (format!("lapic{cpu}"), timer_hz, MAX_DELTA_TICKS)
        };
        let spec = DeviceSpec {
            name,
            features,
            rating: RATING,
            cpus: CpuSet::single(cpu),
            frequency_hz,
            min_delta_ticks: MIN_DELTA_TICKS,
            max_delta_ticks,
        };
        (timer, spec)
    }

    pub fn attach(&self, device: usize) {
        DEVICE_OF_CPU[self.cpu].store(device + 1, Ordering::Release);
    }

    fn on_own_cpu(&self) -> bool {
        let here = percpu::this_cpu().index;
        if here == self.cpu {
            return true;
        }
        // The time layer programs a local device from its own CPU only; a call from elsewhere
        // is a bug in that rule, reported once rather than touching the wrong LAPIC.
        if self.wrong_cpu.fetch_add(1, Ordering::Relaxed) == 0 {
            log::error!(
                "lapic{} driven from CPU {here}: ignored (a LAPIC is reachable only from its CPU)",
                self.cpu
            );
        }
        false
    }
}

impl EventDriver for LapicTimer {
    fn switch_state(&self, state: DriverState) {
        if !self.on_own_cpu() {
            return;
        }
        match state {
            DriverState::Shutdown | DriverState::OneshotStopped => lapic::timer_stop(),
            DriverState::Oneshot => {}
            DriverState::Periodic { period_ticks } => lapic::timer_periodic(
                period_ticks.clamp(MIN_DELTA_TICKS, MAX_DELTA_TICKS) as u32,
                self.vector,
            ),
        }
    }

    fn set_next_event(&self, delta_ticks: u64) -> Result<(), EventPassed> {
        if !self.on_own_cpu() {
            // Not programmed: say so, so that the layer gives the device up (and moves its CPU
            // on) rather than believe an event is coming.
            return Err(EventPassed);
        }
        if self.tsc_deadline {
            // A deadline already reached when written fires at once (SDM 11.5.4.1).
            lapic::timer_tsc_deadline(tsc::read() + delta_ticks.max(MIN_DELTA_TICKS), self.vector);
        } else {
            // A count-down cannot be passed while written: it starts from the value written.
            let count = delta_ticks.clamp(MIN_DELTA_TICKS, MAX_DELTA_TICKS) as u32;
            lapic::timer_oneshot(count, self.vector, false);
        }
        Ok(())
    }
}

/// The LAPIC timer interrupt, on whichever CPU it fires (its own).
pub fn timer_interrupt(_vector: u8) {
    match DEVICE_OF_CPU[percpu::this_cpu().index].load(Ordering::Acquire) {
        0 => {}
        d => super::device_interrupt(d - 1),
    }
}

/// Registers the shared LAPIC timer vector.
pub fn allocate_vector() -> Result<u8, interrupts::RegisterError> {
    interrupts::allocate(timer_interrupt)
}
