//! The timer benchmark's kernel side (`bench` option): on one CPU (`bench_cpu=`), whatever
//! device serves it, measures
//! - lateness of one-shot events at fixed deltas (1 us, 10 us, 100 us, 1 ms): deadline ->
//!   interrupt handler entry and deadline -> callback, on the clocksource;
//! - the cost of programming one event (TSC cycles, register accesses);
//! - the events per second one CPU sustains back to back (each armed at its predecessor's
//!   callback, already due: the device's minimum delta), and the minimum delta it ends with;
//! - with `bench_drift_s=N` in periodic tick mode, the tick's drift against the clocksource;
//! - the bring-up time (from the clocksource's start, right after the TSC's first calibration
//!   at kernel entry, to every CPU having its tick device).
//!
//! It prints one `BENCH-PART {json}` line; the host (`boot bench`, `scripts/bench`) runs it on
//! every device kind, in both clocks, and builds the table, `BENCH {json}` and the plots.
//! Numbers are printed, never asserted.

use crate::arch::x86_64::clockevents::{self, TimerEvent};
use crate::arch::x86_64::smp::{self, percpu};
use crate::time::clocksource::now_ns;
use crate::time::report::{LatencyReport, nearest_rank};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use serde::Serialize;
use spin::Mutex;

/// The deltas measured, and how many events each.
const DELTAS: [(u64, usize); 4] = [(1_000, 2_000), (10_000, 2_000), (100_000, 1_000), (1_000_000, 300)];
/// How long the back-to-back phase runs.
const THROUGHPUT_NS: u64 = 200_000_000;
/// A phase that makes no progress for this long is abandoned (its events count as lost).
const STALL_NS: u64 = 5_000_000_000;
/// Log2 buckets of the lateness histograms (bucket b: [2^b, 2^(b+1)) ns; bucket 0 also 0).
const HISTOGRAM_BUCKETS: usize = 40;

/// Percentiles of one set of samples, in ns.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub min: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    /// The report's nearest-rank percentiles of `samples` (sorted in place), plus p99.9.
    pub fn of(samples: &mut [u64]) -> Percentiles {
        let l = LatencyReport::from_samples(samples);
        let p999 = if samples.is_empty() { 0 } else { nearest_rank(samples, 999) };
        Percentiles { samples: l.samples, min: l.min, p50: l.p50, p99: l.p99, p999, max: l.max }
    }
}

/// Counts of samples per log2 bucket, trailing empty buckets dropped.
pub fn log2_histogram(samples: &[u64]) -> Vec<u64> {
    let mut buckets = alloc::vec![0u64; HISTOGRAM_BUCKETS];
    for &s in samples {
        let b = (63 - s.max(1).leading_zeros() as usize).min(HISTOGRAM_BUCKETS - 1);
        buckets[b] += 1;
    }
    while buckets.last() == Some(&0) {
        buckets.pop();
    }
    buckets
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DeltaResult {
    pub handler: Percentiles,
    pub callback: Percentiles,
    /// Callback lateness per log2 bucket.
    pub histogram: Vec<u64>,
    pub early: u64,
    pub lost: u64,
}

/// One boot's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchPart {
    pub cpu: usize,
    /// The device that interrupts the measured CPU, and whether through broadcast.
    pub device: Option<String>,
    pub via_broadcast: bool,
    pub tick_mode: String,
    /// Per delta in ns.
    pub lateness_ns: BTreeMap<u64, DeltaResult>,
    pub program_cycles: u64,
    pub program_mmio: u64,
    pub max_events_per_s: u64,
    /// The device's minimum delta after the back-to-back phase (grown if it had to be).
    pub min_delta_ns: u64,
    /// Periodic tick drift against the clocksource, parts per million (null if not measured).
    pub drift_ppm: Option<i64>,
    pub bringup_us: u64,
}

/// The chain of the phase in progress: every callback records itself and arms the next.
struct Phase {
    delta_ns: AtomicU64,
    remaining: AtomicU64,
    fired: AtomicU64,
    early: AtomicU64,
    /// Back-to-back phase: run until this time instead of a count.
    until_ns: AtomicU64,
    done: AtomicBool,
    handler: Mutex<Vec<u64>>,
    callback: Mutex<Vec<u64>>,
}

static PHASE: Phase = Phase {
    delta_ns: AtomicU64::new(0),
    remaining: AtomicU64::new(0),
    fired: AtomicU64::new(0),
    early: AtomicU64::new(0),
    until_ns: AtomicU64::new(0),
    done: AtomicBool::new(true),
    handler: Mutex::new(Vec::new()),
    callback: Mutex::new(Vec::new()),
};

fn arm_next() {
    let delta = PHASE.delta_ns.load(Ordering::Relaxed);
    if clockevents::arm_at(now_ns() + delta, on_event, 0).is_err() {
        PHASE.done.store(true, Ordering::Release);
    }
}

fn on_event(e: &TimerEvent) {
    let entry = clockevents::last_interrupt_entry_ns(e.cpu);
    if e.now_ns < e.deadline_ns || entry < e.deadline_ns {
        PHASE.early.fetch_add(1, Ordering::Relaxed);
    }
    PHASE.handler.lock().push(entry.saturating_sub(e.deadline_ns));
    PHASE.callback.lock().push(e.now_ns.saturating_sub(e.deadline_ns));
    PHASE.fired.fetch_add(1, Ordering::Release);
    let more = match PHASE.until_ns.load(Ordering::Relaxed) {
        0 => PHASE.remaining.fetch_sub(1, Ordering::AcqRel) > 1,
        until => e.now_ns < until,
    };
    if more {
        arm_next();
    } else {
        PHASE.done.store(true, Ordering::Release);
    }
}

fn start_phase(_: u64) -> u64 {
    arm_next();
    0
}

/// Runs one chain on `cpu` and waits for it (bounded by progress); returns the samples taken.
fn run_phase(cpu: usize, delta_ns: u64, count: u64, until_ns: u64) -> (Vec<u64>, Vec<u64>, u64, u64) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        PHASE.handler.lock().clear();
        PHASE.callback.lock().clear();
    });
    PHASE.delta_ns.store(delta_ns, Ordering::Relaxed);
    PHASE.remaining.store(count, Ordering::Relaxed);
    PHASE.until_ns.store(until_ns, Ordering::Relaxed);
    PHASE.fired.store(0, Ordering::Relaxed);
    PHASE.early.store(0, Ordering::Relaxed);
    PHASE.done.store(false, Ordering::Release);
    if smp::call_on(cpu, || start_phase(0)).is_err() {
        return (Vec::new(), Vec::new(), 0, count);
    }
    let mut progress = (0, now_ns());
    while !PHASE.done.load(Ordering::Acquire) {
        let _ = clockevents::sleep_ns(1_000_000);
        let fired = PHASE.fired.load(Ordering::Relaxed);
        if fired != progress.0 {
            progress = (fired, now_ns());
        } else if now_ns() - progress.1 > STALL_NS {
            log::error!("the chain on CPU {cpu} stalled after {fired} events: the next one was lost");
            break;
        }
    }
    let lost = u64::from(!PHASE.done.load(Ordering::Acquire));
    let (handler, callback) = x86_64::instructions::interrupts::without_interrupts(|| {
        (core::mem::take(&mut *PHASE.handler.lock()), core::mem::take(&mut *PHASE.callback.lock()))
    });
    (handler, callback, PHASE.early.load(Ordering::Relaxed), lost)
}

static COST: Mutex<Option<clockevents::ProgrammingCost>> = Mutex::new(None);
static HPET: spin::Once<Option<&'static crate::arch::x86_64::hpet::Hpet>> = spin::Once::new();

fn measure_cost_here(_: u64) -> u64 {
    let cost = clockevents::measure_programming(200, HPET.get().copied().flatten());
    *COST.lock() = cost;
    0
}

/// Runs the benchmark on CPU `cpu` and returns its figures.
pub fn run(k: &crate::Kernel, cpu: usize, drift_s: u64) -> BenchPart {
    let cpu = if percpu::cpu(cpu).is_some() { cpu } else { 0 };
    HPET.call_once(|| k.platform.hpet);
    let info = clockevents::tick_devices().into_iter().find(|t| t.cpu == cpu).unwrap_or_default();
    log::info!(
        "bench on CPU {cpu}: device {:?}{}, tick {}",
        info.device,
        if info.via_broadcast { " via broadcast" } else { "" },
        info.mode
    );
    let mut part = BenchPart {
        cpu,
        device: info.device.clone(),
        via_broadcast: info.via_broadcast,
        tick_mode: info.mode.clone(),
        bringup_us: clockevents::bringup_ns() / 1000,
        ..BenchPart::default()
    };
    for (delta, count) in DELTAS {
        let (mut handler, mut callback, early, lost) = run_phase(cpu, delta, count as u64, 0);
        let result = DeltaResult {
            histogram: log2_histogram(&callback),
            handler: Percentiles::of(&mut handler),
            callback: Percentiles::of(&mut callback),
            early,
            lost,
        };
        log::info!(
            "delta {delta} ns: deadline -> handler p50 {} p99 {} max {} ns; -> callback p50 {} p99 {} p99.9 {} max {} ns; {early} early, {lost} lost",
            result.handler.p50,
            result.handler.p99,
            result.handler.max,
            result.callback.p50,
            result.callback.p99,
            result.callback.p999,
            result.callback.max
        );
        part.lateness_ns.insert(delta, result);
    }
    let start = now_ns();
    let (_, callback, early, lost) = run_phase(cpu, 0, 0, start + THROUGHPUT_NS);
    let elapsed = (now_ns() - start).max(1);
    part.max_events_per_s = callback.len() as u64 * 1_000_000_000 / elapsed;
    log::info!("back to back: {} events/s ({early} early, {lost} lost)", part.max_events_per_s);
    part.min_delta_ns = info.device.as_deref().and_then(clockevents::min_delta_ns).unwrap_or(0);
    if smp::call_on(cpu, || measure_cost_here(0)).is_ok()
        && let Some(cost) = *COST.lock()
    {
        part.program_cycles = cost.cycles;
        part.program_mmio = cost.register_accesses;
        log::info!(
            "programming one event: {} cycles, {} register accesses",
            cost.cycles,
            cost.register_accesses
        );
    }
    if drift_s > 0 {
        part.drift_ppm = if k.options.periodic_tick {
            Some(measure_drift(cpu, drift_s, k.options.hz))
        } else {
            log::warn!("bench_drift_s needs tick=periodic; drift not measured");
            None
        };
    }
    part
}

/// Counts the periodic tick's interrupts on `cpu` over `seconds` of clocksource time.
fn measure_drift(cpu: usize, seconds: u64, hz: u32) -> i64 {
    let events = || clockevents::tick_devices().into_iter().find(|t| t.cpu == cpu).map_or(0, |t| t.events);
    let (e0, t0) = (events(), now_ns());
    while now_ns() - t0 < seconds * 1_000_000_000 {
        let _ = clockevents::sleep_ns(10_000_000);
    }
    let (e1, t1) = (events(), now_ns());
    let expected = (t1 - t0) as i128 * i128::from(hz) / 1_000_000_000;
    let ppm = ((e1 - e0) as i128 - expected) * 1_000_000 / expected.max(1);
    log::info!(
        "periodic tick over {} ms: {} interrupts, {expected} expected: {ppm} ppm",
        (t1 - t0) / 1_000_000,
        e1 - e0
    );
    ppm as i64
}

/// The line the host collects.
pub fn print(part: &BenchPart) {
    let json = serde_json::to_string(part).unwrap_or_default();
    crate::arch::x86_64::serial::print(format_args!("BENCH-PART {json}\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_include_p999() {
        let mut s: Vec<u64> = (1..=2000).collect();
        let p = Percentiles::of(&mut s);
        assert_eq!((p.min, p.p50, p.p99, p.p999, p.max), (1, 1000, 1980, 1998, 2000));
    }

    #[test]
    fn histogram_buckets_are_log2() {
        assert_eq!(log2_histogram(&[0, 1, 2, 3, 4, 1000]), [2, 2, 1, 0, 0, 0, 0, 0, 0, 1]);
        assert!(log2_histogram(&[]).is_empty());
    }
}
