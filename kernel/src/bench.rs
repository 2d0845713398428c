//! The timer benchmark's kernel side (`bench` option): on one CPU (`bench_cpu=`), whatever
//! device serves it, measures
//! - lateness of one-shot events at fixed deltas (1 us, 10 us, 100 us, 1 ms): deadline ->
//!   interrupt handler entry and deadline -> callback, on the clocksource;
//! - the cost of programming one event (TSC cycles, register accesses);
//! - the events per second one CPU sustains back to back (each armed at its predecessor's
//!   callback, already due: the device's minimum delta), and the minimum delta it ends with;
//! - with `bench_drift_s=N` in periodic tick mode, the tick's drift against the clocksource;
//! - the bring-up time (from the clocksource's start, right after the TSC's first calibration
//!   at kernel entry, to every CPU having its tick device);
//! - what arming and cancelling one timer costs under the stress test's load, many timers
//!   pending and the heap fragmented ([`arm_cancel`]);
//! - device interrupts per timer and lateness for many timers armed with slack 0, 50 us and
//!   1 ms ([`slack`]);
//! - with `bench_stages` instead (alone, in a kernel built with the `path-stamps` feature),
//!   the interrupt path stage by stage ([`run_stages`]): the stamps are compiled out of the
//!   kernel the other figures come from.
//!
//! It prints one `BENCH-PART {json}` line; the host (`boot bench`, `scripts/bench`) runs it on
//! every device kind, in both clocks, and builds the table, `BENCH {json}` and the plots.
//! Numbers are printed, never asserted.

use crate::arch::x86_64::smp::{self, percpu};
use crate::time::clockevents::{self, TimerEvent};
use crate::time::clocksource::now_ns;
use crate::timer_report::{LatencyReport, nearest_rank};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use serde::Serialize;
use spin::Mutex;

pub mod arm_cancel;
pub mod slack;

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

/// The callback lateness at every percentile, p0 (the minimum) to p100 (the maximum),
/// nearest-rank, for the benchmark's CDF plot; empty without samples.
pub fn cdf(sorted: &[u64]) -> Vec<u64> {
    if sorted.is_empty() {
        return Vec::new();
    }
    (0..=100).map(|p| if p == 0 { sorted[0] } else { nearest_rank(sorted, p * 10) }).collect()
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DeltaResult {
    pub handler: Percentiles,
    pub callback: Percentiles,
    /// Callback lateness per log2 bucket.
    pub histogram: Vec<u64>,
    /// Callback lateness at p0, p1, ..., p100 ([`cdf`]).
    pub cdf: Vec<u64>,
    pub early: u64,
    pub lost: u64,
}

/// One boot's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchPart {
    pub cpu: usize,
    /// Whether this kernel has the path's stamps compiled in (the `path-stamps` feature): its
    /// lateness figures then include their cost (off, a load and a branch each).
    pub path_stamps: bool,
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
    /// Where the time from a deadline to its callback goes, stage by stage (p50 in ns, at
    /// [`PATH_DELTA_NS`]; under icount, instructions).
    pub path_ns: PathBreakdown,
    /// Periodic tick drift against the clocksource, parts per million (null if not measured).
    pub drift_ppm: Option<i64>,
    pub bringup_us: u64,
    /// `arm_at` + `cancel` of a plain function timer under load, in TSC cycles.
    pub arm_cancel_cycles: Percentiles,
    /// `Timer::at` with a boxed closure + `Timer::cancel` under the same load, in TSC cycles.
    pub arm_cancel_boxed_cycles: Percentiles,
    /// The boxed pair again with the heap also splintered (small holes between live blocks).
    pub arm_cancel_boxed_splintered_cycles: Percentiles,
    /// The load they were measured under.
    pub arm_cancel_load: arm_cancel::Load,
    /// `Timer::at` on the measured CPU + `Timer::cancel`, both from CPU 0 (another CPU), in TSC
    /// cycles; no samples when the measured CPU is CPU 0.
    pub arm_cancel_remote_cycles: Percentiles,
    /// Per slack in ns: many timers with that slack, their interrupts and lateness ([`slack`]).
    pub slack: BTreeMap<u64, slack::SlackResult>,
}

/// The delta of the traced phase, and its events.
pub const PATH_DELTA_NS: u64 = 100_000;
const PATH_EVENTS: u64 = 500;

/// Medians of each stage of the interrupt path, in ns (see `path_trace`): deadline ->
/// dispatch entry (delivery), -> device acknowledged (ack), -> clock read (clock), -> first
/// timer popped (pop), -> callback's first instruction (to_callback); the callbacks' own time
/// (callbacks), -> next event programmed (reprogram), -> end of interrupt (eoi); and the sum up
/// to the callback.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PathBreakdown {
    pub samples: u64,
    pub delivery: u64,
    pub ack: u64,
    pub clock: u64,
    pub pop: u64,
    pub to_callback: u64,
    pub callbacks: u64,
    pub reprogram: u64,
    pub eoi: u64,
    pub deadline_to_callback: u64,
}

/// Per-stage samples of the traced phase.
struct PathSamples {
    stages: [Vec<u64>; 8],
    /// The interrupt of the previous traced callback and its TSC, for the stages after it.
    previous: Option<(u64, u64)>,
}

static PATH: Mutex<PathSamples> =
    Mutex::new(PathSamples { stages: [const { Vec::new() }; 8], previous: None });
static TRACING: AtomicBool = AtomicBool::new(false);

use crate::arch::x86_64::path_trace::cycles_to_ns;

/// Records the stamps of the interrupt running this callback (whose clock reads are `now`
/// and `now_tsc`), and the tail of the previous traced one.
fn record_path(deadline_ns: u64, now: u64, now_tsc: u64) {
    use crate::arch::x86_64::path_trace::{self, Stage};
    let (stamps, sequence) = path_trace::current();
    let (tail, tail_sequence) = path_trace::last_complete();
    let at = |stage: Stage| stamps[stage as usize];
    let since = |a: u64, b: u64| cycles_to_ns(b.saturating_sub(a));
    let entry_ns = now.saturating_sub(since(at(Stage::Entry), now_tsc));
    let mut p = PATH.lock();
    let head = [
        entry_ns.saturating_sub(deadline_ns),
        since(at(Stage::Entry), at(Stage::Acked)),
        since(at(Stage::Acked), at(Stage::ClockRead)),
        since(at(Stage::ClockRead), at(Stage::Popped)),
        since(at(Stage::Popped), now_tsc),
    ];
    for (i, v) in head.into_iter().enumerate() {
        p.stages[i].push(v);
    }
    if let Some((previous, previous_tsc)) = p.previous
        && previous == tail_sequence
    {
        let tail_at = |stage: Stage| tail[stage as usize];
        let rest = [
            since(previous_tsc, tail_at(Stage::CallbacksDone)),
            since(tail_at(Stage::CallbacksDone), tail_at(Stage::Reprogrammed)),
            since(tail_at(Stage::Reprogrammed), tail_at(Stage::Eoi)),
        ];
        for (i, v) in rest.into_iter().enumerate() {
            p.stages[5 + i].push(v);
        }
    }
    p.previous = Some((sequence, now_tsc));
}

fn path_breakdown() -> PathBreakdown {
    x86_64::instructions::interrupts::without_interrupts(path_breakdown_locked)
}

fn path_breakdown_locked() -> PathBreakdown {
    let mut p = PATH.lock();
    let mut median = |i: usize| Percentiles::of(&mut p.stages[i]).p50;
    let b = PathBreakdown {
        samples: 0,
        delivery: median(0),
        ack: median(1),
        clock: median(2),
        pop: median(3),
        to_callback: median(4),
        callbacks: median(5),
        reprogram: median(6),
        eoi: median(7),
        deadline_to_callback: 0,
    };
    let samples = p.stages[0].len() as u64;
    PathBreakdown { samples, deadline_to_callback: b.delivery + b.ack + b.clock + b.pop + b.to_callback, ..b }
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

/// The callback's own clock read, first, before the frame of the work it does: deadline ->
/// callback (the event's `now_ns` is the handler's read, the interrupt's one clock read before
/// its first pop). Linux's figure counts to its callback's entry: this one counts that and the
/// read's own way to the counter.
fn on_event(e: &TimerEvent) {
    on_event_at(e, now_ns());
}

#[inline(never)]
fn on_event_at(e: &TimerEvent, now: u64) {
    if TRACING.load(Ordering::Relaxed) {
        record_path(e.deadline_ns, now, crate::arch::x86_64::tsc::read());
    }
    // The clock read the expiry popped this timer at: the interrupt's first (`handler`),
    // or a retry pass's when the expiry went round again within the same interrupt.
    let entry = e.now_ns;
    if now < e.deadline_ns || entry < e.deadline_ns {
        PHASE.early.fetch_add(1, Ordering::Relaxed);
    }
    PHASE.handler.lock().push(entry.saturating_sub(e.deadline_ns));
    PHASE.callback.lock().push(now.saturating_sub(e.deadline_ns));
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

/// The measured CPU (CPU 0 if `cpu` is not online), its tick device, and a part that says them.
fn start(k: &crate::Kernel, cpu: usize) -> (usize, clockevents::TickDeviceInfo, BenchPart) {
    let cpu = if percpu::cpu(cpu).is_some() { cpu } else { 0 };
    HPET.call_once(|| k.platform.hpet);
    let info = clockevents::tick_devices().into_iter().find(|t| t.cpu == cpu).unwrap_or_default();
    log::info!(
        "bench on CPU {cpu}: device {:?}{}, tick {}",
        info.device,
        if info.via_broadcast { " via broadcast" } else { "" },
        info.mode
    );
    let part = BenchPart {
        cpu,
        path_stamps: crate::arch::x86_64::path_trace::BUILT_IN,
        device: info.device.clone(),
        via_broadcast: info.via_broadcast,
        tick_mode: info.mode.clone(),
        bringup_us: clockevents::bringup_ns() / 1000,
        ..BenchPart::default()
    };
    (cpu, info, part)
}

/// The interrupt path stage by stage (`bench_stages`): the same chain as the lateness phases,
/// each interrupt's path stamped. Only a kernel built with the `path-stamps` feature has the
/// stamps; without them nothing is measured (said on the log, `path_ns` all 0).
pub fn run_stages(k: &crate::Kernel, cpu: usize) -> BenchPart {
    let (cpu, _, mut part) = start(k, cpu);
    if !crate::arch::x86_64::path_trace::BUILT_IN {
        log::warn!(
            "bench_stages: this kernel has no path stamps (the path-stamps feature); nothing measured"
        );
        return part;
    }
    TRACING.store(true, Ordering::Relaxed);
    crate::arch::x86_64::path_trace::enable(true);
    run_phase(cpu, PATH_DELTA_NS, PATH_EVENTS, 0);
    crate::arch::x86_64::path_trace::enable(false);
    TRACING.store(false, Ordering::Relaxed);
    part.path_ns = path_breakdown();
    log::info!("interrupt path at {PATH_DELTA_NS} ns deltas, p50 ns per stage: {:?}", part.path_ns);
    part
}

/// Runs the benchmark on CPU `cpu` and returns its figures. The interrupt path's stages are
/// not among them (a kernel with stamps, [`run_stages`], measures them).
pub fn run(k: &crate::Kernel, cpu: usize, drift_s: u64) -> BenchPart {
    let (cpu, info, mut part) = start(k, cpu);
    for (delta, count) in DELTAS {
        let (mut handler, mut callback, early, lost) = run_phase(cpu, delta, count as u64, 0);
        let histogram = log2_histogram(&callback);
        let callback_percentiles = Percentiles::of(&mut callback); // sorts it
        let result = DeltaResult {
            histogram,
            cdf: cdf(&callback),
            handler: Percentiles::of(&mut handler),
            callback: callback_percentiles,
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
    part.slack = slack::run(cpu);
    for (slack_ns, r) in &part.slack {
        log::info!(
            "slack {slack_ns} ns: {} timers ran in {} interrupts; lateness p50 {} p99 {} max {} ns; {} early, {} past their range, {} lost",
            r.timers - r.lost,
            r.interrupts,
            r.lateness_ns.p50,
            r.lateness_ns.p99,
            r.lateness_ns.max,
            r.early,
            r.past_range,
            r.lost
        );
    }
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
    let pairs = arm_cancel::run(cpu);
    log::info!(
        "arm + cancel with {} timers pending and {} heap blocks among holes: plain p50 {} p99 {} cycles; boxed closure p50 {} p99 {} cycles, with {} splinters p50 {} p99 {} cycles ({} failed)",
        pairs.load.pending_timers,
        pairs.load.heap_blocks,
        pairs.plain.p50,
        pairs.plain.p99,
        pairs.boxed.p50,
        pairs.boxed.p99,
        pairs.load.splinters,
        pairs.boxed_splintered.p50,
        pairs.boxed_splintered.p99,
        pairs.load.failed
    );
    part.arm_cancel_cycles = pairs.plain;
    part.arm_cancel_boxed_cycles = pairs.boxed;
    part.arm_cancel_boxed_splintered_cycles = pairs.boxed_splintered;
    part.arm_cancel_load = pairs.load;
    part.arm_cancel_remote_cycles = pairs.remote;
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
    fn cdf_runs_from_the_minimum_to_the_maximum_by_nearest_rank() {
        let sorted: Vec<u64> = (1..=200).collect();
        let c = cdf(&sorted);
        assert_eq!(c.len(), 101);
        assert_eq!((c[0], c[1], c[50], c[99], c[100]), (1, 2, 100, 198, 200));
        assert!(c.windows(2).all(|w| w[0] <= w[1]), "never decreasing");
        assert!(cdf(&[]).is_empty());
    }

    #[test]
    fn histogram_buckets_are_log2() {
        assert_eq!(log2_histogram(&[0, 1, 2, 3, 4, 1000]), [2, 2, 1, 0, 0, 0, 0, 0, 0, 1]);
        assert!(log2_histogram(&[]).is_empty());
    }
}
