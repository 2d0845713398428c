//! The LAPIC timer's refined frequency, measured against the HPET or the ACPI PM timer over a
//! longer window, as the TSC's is (first at 1 s, then each time the window doubles); every CPU's
//! LAPIC timer device is then given it, by its own CPU, without a time step and without an
//! event early (the pending event is programmed again at the new factor).
//!
//! Measured directly when the boot CPU's LAPIC timer is not in use (its CPU has another tick
//! device, a per-CPU HPET comparator) and keeps counting in deep C-states (ARAT): its
//! count-down then runs from its maximum, masked, for up to 51 s, read every 0.5 s between two
//! reads of the reference (all CPUs' LAPIC timers run off one bus clock). A count-down in use cannot be read over a long window: every event it times
//! reloads it, and after an expiry it stands at 0 until programmed again (neither xAPIC nor
//! x2APIC offers a free-running count). Then the TSC's refinement is carried over by the boot
//! calibration's ratio: the LAPIC timer and the TSC were counted over the same windows, each
//! read right after the other at both ends, so the part of the boot calibration's error that comes from the
//! window's length as the reference's reads measured it (a PM timer tick is 279 ns, 28 ppm of
//! a 10 ms window; a descheduled vCPU) is common to both and is what the TSC's refinement
//! corrects: LAPIC Hz x refined TSC Hz / boot TSC Hz. What it cannot correct is the LAPIC
//! timer's own read error within a window, nor a LAPIC timer that does not run off the TSC's
//! clock (on hardware both come from the crystal; under QEMU's `-icount` both from the
//! instruction count; under TCG the TSC is the host's and the LAPIC timer follows QEMU's
//! virtual clock). In TSC-deadline mode the device counts TSC cycles: its frequency is the
//! TSC's.
//!
//! Both run in CPU 0's housekeeping, its deferred work (outside the timer interrupt); a new
//! frequency is published in an atomic and raised on every CPU as deferred work
//! ([`deferred::Kind::ApplyLapicRefinement`]), which each applies to its own device. The
//! devices are found without the registry's lock (each CPU's is kept here when it registers).

use super::super::clocksource::Ppb;
use super::cpu;
use super::lapic::LapicTimerConfig;
use super::registry;
use crate::arch::x86_64::deferred;
use crate::arch::x86_64::lapic;
use crate::arch::x86_64::smp::percpu;
use crate::time::clocksource::{Hardware, now_ns};
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};
use kernel_time::clockevents::ClockEventDevice;
use kernel_time::clocksource::refine::{self, Refiner};
use kernel_time::clocksource::watchdog::Sample;
use kernel_time::clocksource::{Conversion, ReadCounter};
use kernel_time::tick::DeviceId;
use spin::Mutex;
use x86_64::instructions::interrupts::without_interrupts;

/// What the refinement starts from and has found.
#[derive(Debug, Clone, Copy)]
struct LapicFrequency {
    /// The frequency the devices were registered at.
    calibrated_hz: u64,
    /// TSC-deadline mode: the device's frequency is the TSC's.
    tsc_deadline: bool,
    /// The TSC's frequency from the same boot calibration.
    boot_tsc_hz: u64,
    refined_hz: Option<u64>,
    /// The direct measurement on the boot CPU's idle LAPIC timer, while it runs.
    measuring: Option<Measurement>,
    /// Some refinement was measured directly: the TSC's no longer applies.
    measured: bool,
    vector: u8,
}

/// The boot CPU's LAPIC timer counting down from its maximum for the refinement.
#[derive(Debug, Clone, Copy)]
struct Measurement {
    refiner: Refiner,
    /// The count at the last sample, and the device's programming count then: a count that
    /// went up (written meanwhile), or a device programmed meanwhile, ends the measurement.
    last_count: u32,
    programmed: u64,
}

/// The measurement stops when the count-down falls below this (a quarter of its range: at
/// 62.5 MHz 51 s after it started, well before it expires).
const MEASURE_FLOOR: u32 = u32::MAX / 4;

static FREQUENCY: Mutex<Option<LapicFrequency>> = Mutex::new(None);

/// The latest refined frequency (0: none yet), which every CPU's deferred work applies to its
/// own LAPIC timer device.
static REFINED_HZ: AtomicU64 = AtomicU64::new(0);

/// Each CPU's LAPIC timer device, by CPU index, kept when it registers: the housekeeping and
/// each CPU's deferred work reach it without the registry's lock (which interrupt paths take).
/// A CPU back online after going offline registers a new one, which replaces the old.
static DEVICES: [Mutex<Option<Arc<ClockEventDevice>>>; percpu::MAX_CPUS] =
    [const { Mutex::new(None) }; percpu::MAX_CPUS];

/// The LAPIC timers are registered with `config` (the boot calibration's frequencies).
pub(super) fn registered(config: &LapicTimerConfig) {
    let calibrated_hz = if config.tsc_deadline { config.tsc_hz } else { config.timer_hz };
    let f = LapicFrequency {
        calibrated_hz,
        tsc_deadline: config.tsc_deadline,
        boot_tsc_hz: config.tsc_hz,
        refined_hz: None,
        measuring: None,
        measured: false,
        vector: config.vector,
    };
    without_interrupts(|| *FREQUENCY.lock() = Some(f));
    deferred::register(deferred::Kind::ApplyLapicRefinement, apply_here);
}

/// The calling CPU registered its LAPIC timer as `device` (on its start-up path, at boot or
/// back online): the refinement found so far, if any, is applied to it at once.
pub(super) fn device_registered(device: DeviceId) {
    let index = percpu::this_cpu().index;
    if let Some(d) = registry::with_registry(|r| r.device(device).clone()) {
        let name = d.spec.name.clone();
        without_interrupts(|| *DEVICES[index].lock() = Some(d));
        let hz = REFINED_HZ.load(Ordering::Acquire);
        if hz != 0 {
            // A CPU back online after going offline (hotplug).
            log::info!("lapic: {name} registered after the refinement: converts at the refined {hz} Hz");
            apply_here();
        }
    }
}

/// The TSC's frequency was refined to `tsc_hz` against `reference` over `window_ns`: every
/// CPU's LAPIC timer device converts at the frequency that follows, from now on. Called on
/// CPU 0 in its housekeeping; each CPU applies it itself (its deferred work).
pub fn tsc_refined(tsc_hz: u64, reference: &str, window_ns: u64) {
    let Some((f, previous)) = without_interrupts(|| {
        let mut guard = FREQUENCY.lock();
        let f = guard.as_mut().filter(|f| f.tsc_deadline || (!f.measured && f.measuring.is_none()))?;
        let hz = if f.tsc_deadline {
            Some(tsc_hz)
        } else {
            refine::by_ratio(f.calibrated_hz, f.boot_tsc_hz, tsc_hz)
        }?;
        let previous = f.refined_hz.replace(hz).unwrap_or(f.calibrated_hz);
        Some((*f, previous))
    }) else {
        return;
    };
    let how = if f.tsc_deadline { "the TSC's (TSC-deadline mode)" } else { "through the TSC" };
    refined(f, previous, how, reference, window_ns);
}

/// Every 0.5 s on the boot CPU (its housekeeping timer), with the reference the TSC's checks
/// use: a sample of the direct measurement, started when the boot CPU's LAPIC timer is idle
/// (registered, not in use: detached), ended when it is taken into use; a refinement at 1 s of
/// counting and each time the window doubles.
pub fn sample(reference: &'static str, conversion: &Conversion, ref_hz: u64) {
    let Some(device) = this_cpus_lapic_timer() else { return };
    let found = without_interrupts(|| {
        let mut guard = FREQUENCY.lock();
        let f = guard.as_mut().filter(|f| !f.tsc_deadline)?;
        // Not in use, and counting in deep C-states too (ARAT): a LAPIC timer that stops there
        // would count less than the window in which CPU 0 idles deeply.
        let idle = device.state() == kernel_time::clockevents::State::Detached
            && !device.spec.features.contains(kernel_time::clockevents::Features::STOPS_IN_DEEP_IDLE);
        if f.measuring.is_none() && idle && !f.measured && f.refined_hz.is_none() {
            // Starts counting; the first sample below is the window's start.
            lapic::timer_oneshot(u32::MAX, f.vector, true);
            f.measuring = Some(Measurement {
                refiner: Refiner::new(),
                last_count: u32::MAX,
                programmed: device.programmed(),
            });
        }
        let m = f.measuring.as_mut()?;
        let sample = (0..3)
            .map(|_| {
                let wd_before = Hardware.read(conversion.counter);
                let count = lapic::timer_current_count();
                (Sample { wd_before, cs: 0, wd_after: Hardware.read(conversion.counter) }, count)
            })
            .find_map(|(s, count)| s.paired(conversion).map(|paired| (paired, count)));
        let (paired, count) = sample?;
        if !idle || device.programmed() != m.programmed || count > m.last_count || count < MEASURE_FLOOR {
            f.measuring = None;
            return None;
        }
        m.last_count = count;
        let r = m.refiner.sample(u64::from(u32::MAX - count), paired, conversion, ref_hz)?;
        let previous = f.refined_hz.replace(r.hz).unwrap_or(f.calibrated_hz);
        f.measured = true;
        Some((*f, previous, r.window_ns))
    });
    if let Some((f, previous, window_ns)) = found {
        refined(f, previous, "measured on CPU 0's idle LAPIC timer", reference, window_ns);
    }
}

/// The reference stops (a suspend): a measurement running across it would be wrong by the
/// time it stood, so it ends (the frequency refined so far stays).
pub fn reference_stopped() {
    without_interrupts(|| {
        if let Some(f) = FREQUENCY.lock().as_mut() {
            f.measuring = None;
        }
    });
}

/// This CPU's LAPIC timer device, if it has one.
fn this_cpus_lapic_timer() -> Option<Arc<ClockEventDevice>> {
    without_interrupts(|| DEVICES[percpu::this_cpu().index].lock().clone())
}

/// Logs a refinement and has every CPU apply it.
fn refined(f: LapicFrequency, previous: u64, how: &str, reference: &str, window_ns: u64) {
    let hz = f.refined_hz.expect("a refinement");
    log::info!(
        "lapic: timer {hz} Hz (was {previous} Hz), {how}, refined against {reference} over {}.{:03} s (boot calibration off by {}, {} since the last value)",
        window_ns / 1_000_000_000,
        window_ns / 1_000_000 % 1_000,
        Ppb(refine::ppb(f.calibrated_hz, hz)),
        Ppb(refine::ppb(previous.max(1), hz))
    );
    REFINED_HZ.store(hz, Ordering::Release);
    for c in percpu::all() {
        deferred::raise(c.index, deferred::Kind::ApplyLapicRefinement);
    }
}

/// On each CPU, as its deferred work: its own LAPIC timer device converts at the latest
/// refined frequency; what it is programmed for, if it is the CPU's tick device, is programmed
/// again at the new factor.
fn apply_here() {
    let hz = REFINED_HZ.load(Ordering::Acquire);
    let Some(device) = this_cpus_lapic_timer() else { return };
    if hz == 0 {
        return;
    }
    let result = cpu::with_tick_and_broadcast(|t, bc| {
        let r = t.set_device_frequency(&device, hz, now_ns(), bc);
        (r, t.take_failure())
    });
    if let Some((r, failure)) = result {
        if let Err(e) = r {
            log::warn!("lapic: {} keeps its frequency: {e}", device.spec.name);
        }
        cpu::report_failure(failure);
    }
}

/// The report's refinement figures: (calibrated Hz, refined Hz, how: `lapic` measured
/// directly, `tsc` carried over from the TSC's).
pub fn figures() -> Option<(u64, Option<u64>, Option<&'static str>)> {
    without_interrupts(|| {
        FREQUENCY.lock().map(|f| {
            let how = f.refined_hz.map(|_| if f.measured { "lapic" } else { "tsc" });
            (f.calibrated_hz, f.refined_hz, how)
        })
    })
}
