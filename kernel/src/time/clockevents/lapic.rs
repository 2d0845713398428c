//! The LAPIC timer as a per-CPU clock event device (Linux's `lapic` clockevent): one-shot and
//! periodic at the calibrated bus clock / 16, rating 100, stopping in deep C-states unless the
//! CPU has ARAT. Where CPUID offers TSC-deadline mode it is used instead (Linux's
//! `lapic-deadline`): one-shot only, counted in TSC cycles, an absolute deadline so that a
//! delta can never be "passed" while written.
//!
//! A LAPIC is reachable only from its own CPU, so each CPU registers its own timer on its own
//! start-up path (`init_on_bsp` / `init_on_ap`), and only that CPU ever programs it: the time
//! layer carries a CPU's device changes out on that CPU.

use super::cpu::{this_cpu_time, time_of};
use crate::arch::x86_64::path_trace::{self, Stage};
use crate::arch::x86_64::smp::percpu;
use crate::arch::x86_64::{interrupts, lapic, tsc};
use crate::time::clocksource::count_down;
use alloc::format;
use core::sync::atomic::{AtomicU64, Ordering};
use kernel_time::clockevents::{
    CpuSet, DeviceSpec, DriverState, EventDriver, EventPassed, Features, remaining_ticks,
};
use kernel_time::tick::DeviceId;

pub const RATING: u32 = 100;
/// Linux's lapic_clockevent min_delta_ticks (0xF); the counter is 32 bits, and deltas stay
/// below 2^31 as Linux's do.
const MIN_DELTA_TICKS: u64 = 0xf;
const MAX_DELTA_TICKS: u64 = 0x7fff_ffff;

/// What every CPU's LAPIC timer shares, decided once on the boot CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LapicTimerConfig {
    /// The timer vector, shared by every CPU.
    pub vector: u8,
    /// The calibrated count-down frequency (bus clock / 16).
    pub timer_hz: u64,
    pub tsc_hz: u64,
    /// TSC-deadline mode instead of the count-down.
    pub tsc_deadline: bool,
    /// Keeps running in deep C-states.
    pub arat: bool,
}

/// The LAPIC timer of one CPU.
pub struct LapicTimer {
    cpu: usize,
    config: LapicTimerConfig,
    /// Calls that arrived on another CPU (a bug in the caller if ever > 0).
    pub wrong_cpu: AtomicU64,
}

/// Each CPU's timer, made at its first registration and kept: a CPU back online (hotplug, a
/// wake from S3) registers the same one again instead of leaking another each time.
static TIMERS: [spin::Once<&'static LapicTimer>; percpu::MAX_CPUS] =
    [const { spin::Once::new() }; percpu::MAX_CPUS];

impl LapicTimer {
    /// The calling CPU's timer and its description: TSC-deadline mode at the TSC frequency, or
    /// the count-down at the calibrated timer frequency. The CPU's timer of an earlier
    /// registration is reused (its configuration is the machine's, the same every time; one
    /// that differs gets a timer of its own, said in the log).
    pub fn for_this_cpu(config: LapicTimerConfig) -> (&'static LapicTimer, DeviceSpec) {
        let cpu = percpu::this_cpu().index;
        let make = || -> &'static LapicTimer {
            alloc::boxed::Box::leak(alloc::boxed::Box::new(LapicTimer {
                cpu,
                config,
                wrong_cpu: AtomicU64::new(0),
            }))
        };
        let kept = *TIMERS[cpu].call_once(make);
        let timer = if kept.config == config {
            kept
        } else {
            log::warn!("lapic{cpu}: registered again with another configuration ({config:?}): a new timer");
            make()
        };
        let mut features = Features::ONESHOT | Features::PER_CPU;
        if !config.tsc_deadline {
            features |= Features::PERIODIC;
        }
        if !config.arat {
            features |= Features::STOPS_IN_DEEP_IDLE;
        }
        let (name, frequency_hz, max_delta_ticks) = if config.tsc_deadline {
            // A minute of TSC cycles: far beyond any tick, and the conversion keeps precision.
            (format!("lapic-deadline{cpu}"), config.tsc_hz, config.tsc_hz.saturating_mul(60))
        } else {
            (format!("lapic{cpu}"), config.timer_hz, MAX_DELTA_TICKS)
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

    /// Its time-layer device id, for the trace (`usize::MAX` before it is attached).
    fn trace_id(&self) -> usize {
        this_cpu_time().lapic_device.load(Ordering::Relaxed).wrapping_sub(1)
    }

    /// Links this CPU's timer vector to its time-layer device.
    pub fn attach(&self, device: DeviceId) {
        this_cpu_time().lapic_device.store(device.0 + 1, Ordering::Release);
    }

    /// The time layer programs a local device from its own CPU only (it carries device changes
    /// out on that CPU). A call from elsewhere is a bug in that rule: a debug build stops on
    /// it; a release build counts it, logs it once and leaves the other CPU's LAPIC alone.
    fn on_own_cpu(&self) -> bool {
        let here = percpu::this_cpu().index;
        debug_assert_eq!(here, self.cpu, "lapic{} driven from CPU {here}", self.cpu);
        if here == self.cpu {
            return true;
        }
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
                self.config.vector,
            ),
        }
    }

    fn set_next_event(&self, delta_ticks: u64) -> Result<(), EventPassed> {
        if !self.on_own_cpu() {
            return Ok(());
        }
        crate::arch::x86_64::trace::program(delta_ticks, || (self.trace_id(), self.config.timer_hz));
        if self.config.tsc_deadline {
            // A deadline already reached when written fires at once (SDM 11.5.4.1).
            lapic::timer_tsc_deadline(tsc::read() + delta_ticks.max(MIN_DELTA_TICKS), self.config.vector);
        } else {
            // A count-down cannot be passed while written: it starts from the value written.
            let count = delta_ticks.clamp(MIN_DELTA_TICKS, MAX_DELTA_TICKS) as u32;
            lapic::timer_oneshot(count, self.config.vector, false);
        }
        Ok(())
    }

    /// Counts from a fresh read just before the write: the count (or the TSC deadline) starts
    /// here, so what is left of the layer's delta is programmed, not the whole of it, and the
    /// event is not late by the path from the layer's clock read to this write (about 170
    /// instructions in the dev profile). The layer's frequency (refined or not) stays the one
    /// used. A count-down has its CPU checked, its mode written and the clock's snapshot and
    /// its ticks per ns taken before the read of the clock's counter
    /// (`clocksource::count_down`), so that the reading's conversion, a subtraction and a
    /// multiply lie between that read and the count's write (the benchmark's `delivery`,
    /// icount, dev: 177 -> 127 with a clock read, -> 59 with the counter's).
    fn set_next_event_at(&self, at_ns: u64, now_ns: u64, delta_ticks: u64) -> Result<(), EventPassed> {
        if self.config.tsc_deadline {
            let left = remaining_ticks(at_ns, now_ns, crate::time::clocksource::now_ns(), delta_ticks);
            return self.set_next_event(left);
        }
        if !self.on_own_cpu() {
            return Ok(());
        }
        lapic::timer_oneshot_mode(self.config.vector);
        // A count-down cannot be passed while written: it starts from the value written.
        let left = count_down(at_ns, now_ns, delta_ticks, |left| {
            lapic::timer_count(left.clamp(MIN_DELTA_TICKS, MAX_DELTA_TICKS) as u32)
        });
        crate::arch::x86_64::trace::program(left, || (self.trace_id(), self.config.timer_hz));
        Ok(())
    }
}

/// The LAPIC timer interrupt, on whichever CPU it fires (its own).
pub fn timer_interrupt(irq: interrupts::Irq) {
    path_trace::stamp(Stage::Acked);
    let Some(cpu) = irq.cpu else {
        return interrupts::spurious(format_args!("a LAPIC timer interrupt before per-CPU state"));
    };
    match time_of(cpu).lapic_device.load(Ordering::Acquire) {
        0 => interrupts::spurious(format_args!("a LAPIC timer interrupt with no LAPIC timer device here")),
        d => super::cpu::device_interrupt(DeviceId(d - 1), cpu),
    }
}

/// Registers the shared LAPIC timer vector.
pub fn allocate_vector() -> Result<u8, interrupts::RegisterError> {
    interrupts::allocate(timer_interrupt)
}

/// Registers the calling CPU's LAPIC timer with the time layer.
pub fn register_this_cpu(config: LapicTimerConfig) -> Option<DeviceId> {
    let (timer, spec) = LapicTimer::for_this_cpu(config);
    super::registry::register(spec, timer, |id| timer.attach(id))
}
