//! `clock_step_test=SECONDS`: REALTIME stepped by SECONDS, forwards or back, in the middle of
//! the main run, with timers on REALTIME pending on every CPU (Linux's `clock_was_set` put to
//! work). Just before the step, each CPU gets probes through its handles (`Timer::on_clock`),
//! and the stepping CPU one more armed locally (`arm_on_clock`):
//! - a step forwards: probes spread over the span the step passes (they fall due with the
//!   step: each runs at once, before the MONOTONIC instant it was first placed at, which is
//!   counted as `pulled_in`), and one past it (its place moves closer);
//! - a step back: probes 20, 40, 60 ms ahead (each waits the step more).
//!
//! Each probe must run once, on its CPU, never before REALTIME reads its deadline: judged on
//! MONOTONIC with the test's own arithmetic (REALTIME and MONOTONIC read as one pair before the
//! step, and the step as the timekeeper made it), not on REALTIME, whose offsets are under test.

use super::clockevents::{self, Timer, TimerEvent};
use super::clocksource::{self, now_ns};
use crate::arch::x86_64::smp::percpu;
use crate::timer_report::ClockStepReport;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use kernel_time::clocks::{ClockDeadline, WallTime};
use spin::Once;

/// Probes through handles per CPU.
const PROBES_PER_CPU: usize = 3;

/// How long past the last probe's due time the run waits for it (by the kernel's clock).
const WAIT_LIMIT_NS: u64 = 10_000_000_000;

struct Probe {
    cpu: usize,
    /// Its deadline on REALTIME.
    wall_ns: u64,
    /// Times it ran, and the last MONOTONIC reading in its callback and the APIC id (from the
    /// hardware) of the CPU it ran on.
    runs: AtomicU32,
    ran_at_ns: AtomicU64,
    ran_on: AtomicU32,
}

/// The probes and the REALTIME - MONOTONIC offset before the step, from one snapshot.
struct Armed {
    probes: Vec<Probe>,
    offset_before: i64,
}

static ARMED: Once<Armed> = Once::new();
/// The step as the timekeeper made it, and MONOTONIC just before and just after it.
static STEP_NS: AtomicI64 = AtomicI64::new(0);
static STEP_BEFORE_NS: AtomicU64 = AtomicU64::new(0);
static STEP_AFTER_NS: AtomicU64 = AtomicU64::new(u64::MAX);

/// The report of the step test, once [`finish`] has run.
static REPORT: Once<ClockStepReport> = Once::new();

/// The step test's figures for the report (`None` if it did not run).
pub fn report() -> Option<ClockStepReport> {
    REPORT.get().cloned()
}

fn lapic_id_here() -> u32 {
    use crate::arch::x86_64::lapic;
    if lapic::mode().is_some() { lapic::id() } else { lapic::initial_id() }
}

fn probe_ran(e: &TimerEvent) {
    let now = now_ns();
    let Some(p) = ARMED.get().and_then(|a| a.probes.get(e.data as usize)) else { return };
    p.ran_at_ns.store(now, Ordering::Relaxed);
    // The APIC id the hardware reports, not the kernel's idea of which CPU this is.
    p.ran_on.store(lapic_id_here(), Ordering::Relaxed);
    p.runs.fetch_add(1, Ordering::AcqRel);
}

/// Arms the probes on `cpus` and steps REALTIME by `seconds`; called once, on the boot CPU
/// with interrupts enabled.
pub fn step(seconds: i64, cpus: &[usize]) {
    let step_ns = seconds * 1_000_000_000;
    let before = clocksource::clocks();
    let wall = before.realtime.as_nanos();
    let offsets: Vec<u64> = if step_ns > 0 {
        let span = step_ns as u64;
        (1..=PROBES_PER_CPU as u64).map(|k| k * span / (PROBES_PER_CPU as u64 + 1)).collect()
    } else {
        (1..=PROBES_PER_CPU as u64).map(|k| k * 20_000_000).collect()
    };
    let mut probes = Vec::new();
    for &cpu in cpus {
        for &ahead in &offsets {
            probes.push((cpu, wall + ahead));
        }
    }
    let here = percpu::this_cpu().index;
    // One past the step (forwards), or one more (back), armed locally on this CPU.
    probes.push((here, wall + step_ns.max(0) as u64 + 100_000_000));
    let armed = ARMED.call_once(|| Armed {
        probes: probes
            .iter()
            .map(|&(cpu, wall_ns)| Probe {
                cpu,
                wall_ns,
                runs: AtomicU32::new(0),
                ran_at_ns: AtomicU64::new(0),
                ran_on: AtomicU32::new(u32::MAX),
            })
            .collect(),
        offset_before: before.realtime.as_nanos() as i64 - before.monotonic.as_nanos() as i64,
    });
    let last = armed.probes.len() - 1;
    for (i, p) in armed.probes.iter().enumerate() {
        let at = ClockDeadline::Realtime(WallTime::from_nanos(p.wall_ns));
        let result = if i == last {
            clockevents::arm_on_clock(at, probe_ran, i as u64).map(drop)
        } else {
            Timer::on_clock(p.cpu, at, move |e| probe_ran(&TimerEvent { data: i as u64, ..*e }))
                .map(Timer::detach)
                .map(drop)
        };
        if let Err(e) = result {
            log::error!("clock step test: probe {i} on CPU {} not armed: {e}", p.cpu);
        }
    }
    STEP_BEFORE_NS.store(now_ns(), Ordering::Relaxed);
    let made = clocksource::step_realtime(step_ns);
    STEP_AFTER_NS.store(now_ns(), Ordering::Relaxed);
    STEP_NS.store(made, Ordering::Relaxed);
    log::info!(
        "clock step test: REALTIME stepped by {made} ns with {} timers on it pending on {} CPU(s)",
        armed.probes.len(),
        cpus.len()
    );
}

/// Waits (bounded by the kernel's clock) until every probe has run and judges them; `None` if
/// no step ran.
pub fn finish() -> Option<ClockStepReport> {
    let armed = ARMED.get()?;
    let step = STEP_NS.load(Ordering::Relaxed);
    let before = STEP_BEFORE_NS.load(Ordering::Relaxed);
    let after = STEP_AFTER_NS.load(Ordering::Relaxed);
    // Where MONOTONIC reaches a REALTIME deadline with the offset before the step and after it.
    let mono_before = |wall: u64| (wall as i64 - armed.offset_before).max(0) as u64;
    let mono_after = |wall: u64| (wall as i64 - armed.offset_before - step).max(0) as u64;
    let last_due = armed.probes.iter().map(|p| mono_after(p.wall_ns)).max().unwrap_or(0);
    let limit = last_due.max(now_ns()) + WAIT_LIMIT_NS;
    while armed.probes.iter().any(|p| p.runs.load(Ordering::Acquire) == 0) && now_ns() < limit {
        if clockevents::sleep_ns(1_000_000).is_err() {
            core::hint::spin_loop();
        }
    }
    let mut r = ClockStepReport { step_ns: step, armed: armed.probes.len() as u64, ..Default::default() };
    for (i, p) in armed.probes.iter().enumerate() {
        let runs = p.runs.load(Ordering::Acquire);
        if runs == 0 {
            log::error!("clock step test: probe {i} (CPU {}) never ran", p.cpu);
            continue;
        }
        r.fired += 1;
        r.fired_twice += u64::from(runs - 1);
        let at = p.ran_at_ns.load(Ordering::Relaxed);
        // Before the step (it was due then), its place before the step; else its place after
        // it (a run between the two reads around the step is judged on the earlier place).
        let due = if at < before {
            mono_before(p.wall_ns)
        } else if at < after {
            mono_before(p.wall_ns).min(mono_after(p.wall_ns))
        } else {
            mono_after(p.wall_ns)
        };
        if at < due {
            r.early += 1;
            log::error!(
                "clock step test: probe {i} ran at {at} ns, before {due} ns, where REALTIME reads its deadline"
            );
        }
        let apic = percpu::cpu(p.cpu).map(|c| c.apic_id);
        if Some(p.ran_on.load(Ordering::Relaxed)) != apic {
            r.wrong_cpu += 1;
        }
        if at >= before && at < mono_before(p.wall_ns) {
            r.pulled_in += 1;
        }
    }
    log::info!(
        "clock step test: {} of {} timers on REALTIME ran, {} twice, {} early, {} on another CPU; {} ran before the place they had before the step",
        r.fired,
        r.armed,
        r.fired_twice,
        r.early,
        r.wrong_cpu,
        r.pulled_in
    );
    Some(REPORT.call_once(|| r).clone())
}
