//! The LAPIC timer as a per-CPU clock event device (Linux's `lapic` clockevent): one-shot and
//! periodic at the calibrated bus clock / 16, rating 100, stopping in deep C-states unless the
//! CPU has ARAT.
//!
//! A LAPIC is reachable only from its own CPU, so each CPU registers its own timer and only
//! that CPU ever programs it (the time layer programs a local device from its CPU).

use super::super::smp::percpu;
use super::super::{interrupts, lapic};
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
    /// Calls that arrived on another CPU and were refused (a bug in the caller if ever > 0).
    pub wrong_cpu: AtomicU64,
}

/// The time-layer device of each CPU's LAPIC timer, + 1 (0: none), for the shared vector.
static DEVICE_OF_CPU: [AtomicUsize; percpu::MAX_CPUS] = [const { AtomicUsize::new(0) }; percpu::MAX_CPUS];

impl LapicTimer {
    /// The calling CPU's timer, on the shared timer `vector`, and its description.
    pub fn for_this_cpu(vector: u8, timer_hz: u64, arat: bool) -> (&'static LapicTimer, DeviceSpec) {
        let cpu = percpu::this_cpu().index;
        let timer: &'static LapicTimer = alloc::boxed::Box::leak(alloc::boxed::Box::new(LapicTimer {
            cpu,
            vector,
            wrong_cpu: AtomicU64::new(0),
        }));
        let mut features = Features::ONESHOT | Features::PERIODIC | Features::PER_CPU;
        if !arat {
            features |= Features::STOPS_IN_DEEP_IDLE;
        }
        let spec = DeviceSpec {
            name: format!("lapic{cpu}"),
            features,
            rating: RATING,
            cpus: CpuSet::single(cpu),
            frequency_hz: timer_hz,
            min_delta_ticks: MIN_DELTA_TICKS,
            max_delta_ticks: MAX_DELTA_TICKS,
        };
        (timer, spec)
    }

    pub fn attach(&self, device: usize) {
        DEVICE_OF_CPU[self.cpu].store(device + 1, Ordering::Release);
    }

    fn on_own_cpu(&self) -> bool {
        let here = percpu::this_cpu().index == self.cpu;
        if !here {
            self.wrong_cpu.fetch_add(1, Ordering::Relaxed);
        }
        here
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
        if self.on_own_cpu() {
            // A count-down cannot be passed while written: it starts from the value written.
            lapic::timer_oneshot(
                delta_ticks.clamp(MIN_DELTA_TICKS, MAX_DELTA_TICKS) as u32,
                self.vector,
                false,
            );
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
