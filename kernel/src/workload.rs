//! The main run's timer workload: on every CPU, a few chains of one-shot timers at varied
//! delays for `duration_ms`; each callback measures its lateness against the clocksource and
//! arms the chain's next timer. At the end every armed timer must have fired exactly once and
//! none before its deadline; the numbers go into the TIMER-REPORT.
//!
//! Each timer carries its identity in its `data`: its chain and its sequence number in the
//! chain. A chain has one timer pending at a time, so its slot (fixed, per CPU: nothing is
//! allocated on the interrupt path) knows the one timer that may fire next: a timer that fires
//! again, or a stale one, is counted `fired_twice` and does not arm anything, so a double fire
//! cannot hide a lost timer behind a matching count.
//!
//! With `suspend_test=`, the chains' timers pending when every tick is suspended are
//! recorded; each must fire once after the resume (`Outcome::suspend_*`), and no workload timer
//! may run while timekeeping is suspended.
//!
//! "Never early" and "on its CPU" are also judged by independent oracles ([`oracle`]): the
//! deadline on a counter that is not the clocksource's, and the APIC id the hardware reports
//! in the callback against the one of the CPU the timer was armed on.

pub mod oracle;

use crate::arch::x86_64::smp::{self, percpu};
use crate::time::clockevents::{self, TimerEvent};
use crate::time::clocksource::now_ns;
use crate::timer_report::{LatencyReport, TimerReport, Verdict};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Mutex;

/// Timer chains per CPU: several timers pending at once, so the queue really orders them.
const CHAINS_PER_CPU: u64 = 4;
/// Delays drawn for each timer: from the HPET's minimum delta to a few ms.
const DELAYS_NS: [u64; 8] = [2_000, 10_000, 30_000, 100_000, 250_000, 500_000, 1_000_000, 3_000_000];
/// Lateness samples kept per CPU (the first ones; the counts go on): 400 KiB a CPU for each of
/// the two latencies, so that a long run cannot exhaust the heap...
const MAX_SAMPLES_PER_CPU: usize = 50_000;
/// ...and at most this many over all CPUs (6.4 MiB), so that many CPUs cannot either.
const MAX_SAMPLES: usize = 400_000;
/// This run's share of samples per CPU.
static SAMPLES_PER_CPU: core::sync::atomic::AtomicUsize =
    core::sync::atomic::AtomicUsize::new(MAX_SAMPLES_PER_CPU);
/// After the run ends, how long the last timers get to fire before they count as lost.
const GRACE_NS: u64 = 2_000_000_000;

/// One CPU's counters, on cache lines of their own: each CPU writes only its own, and on a
/// real machine two CPUs writing one line would pass it back and forth on every event.
#[repr(align(64))]
struct CpuCounts {
    armed: AtomicU64,
    /// Timers that fired for the first time (a second firing is counted in `fired_twice`).
    fired: AtomicU64,
    fired_twice: AtomicU64,
    early: AtomicU64,
    /// Fired before their deadline on the independent counter, and timers judged on it.
    early_independent: AtomicU64,
    judged_independent: AtomicU64,
    /// Callbacks that ran where the hardware's APIC id is not the arming CPU's.
    wrong_cpu: AtomicU64,
    rng: AtomicU64,
    chains: [Chain; CHAINS_PER_CPU as usize],
}

/// One chain's slot: the sequence numbers of its last armed and last fired timer (equal when
/// nothing is pending; `fired + 1 == armed` while its one timer is pending).
struct Chain {
    armed_seq: AtomicU64,
    fired_seq: AtomicU64,
    /// Its pending timer's deadline on the other counter and its CPU's APIC id. Written on
    /// its CPU before the timer is armed, read in its callback: never contended.
    stamp: Mutex<oracle::Stamp>,
    /// The sequence number of its timer that was pending at the suspend (0: none).
    pending_at_suspend: AtomicU64,
}

static COUNTS: [CpuCounts; percpu::MAX_CPUS] = [const {
    CpuCounts {
        armed: AtomicU64::new(0),
        fired: AtomicU64::new(0),
        fired_twice: AtomicU64::new(0),
        early: AtomicU64::new(0),
        early_independent: AtomicU64::new(0),
        judged_independent: AtomicU64::new(0),
        wrong_cpu: AtomicU64::new(0),
        rng: AtomicU64::new(0),
        chains: [const {
            Chain {
                armed_seq: AtomicU64::new(0),
                fired_seq: AtomicU64::new(0),
                stamp: Mutex::new(oracle::Stamp {
                    reference: None,
                    start: 0,
                    min_ticks: 0,
                    clock: kernel_time::clocksource::CounterId(0),
                    armed_ns: 0,
                    suspends: 0,
                    apic_id: 0,
                }),
                pending_at_suspend: AtomicU64::new(0),
            }
        }; CHAINS_PER_CPU as usize],
    }
}; percpu::MAX_CPUS];

/// A timer's `data`: its chain in the low byte, its sequence number in the chain above.
const fn timer_data(home: usize, chain: usize, seq: u64) -> u64 {
    (seq << 16) | ((home as u64 & 0xff) << 8) | chain as u64
}

/// The home CPU (whose counters it counts in: the CPU it started on, wherever a CPU going
/// offline sent it since), the chain and the sequence number a timer's `data` names.
const fn timer_identity(data: u64) -> (usize, usize, u64) {
    (((data >> 8) & 0xff) as usize, (data & 0xff) as usize, data >> 16)
}
/// One CPU's samples, pushed by its callbacks only, on cache lines of their own.
#[repr(align(64))]
struct Samples {
    /// Deadline -> the callback's own clock read.
    callback: Vec<u64>,
    /// Deadline -> interrupt handler entry of the same events (index for index): what the
    /// emulator and the way in add, before the time layer runs.
    handler: Vec<u64>,
}
static SAMPLES: [Mutex<Samples>; percpu::MAX_CPUS] =
    [const { Mutex::new(Samples { callback: Vec::new(), handler: Vec::new() }) }; percpu::MAX_CPUS];
/// How many CPUs (the first, by index) run the workload (`workload_cpus=`; `usize::MAX`: all).
static WORKLOAD_CPUS: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(usize::MAX);
static END_NS: AtomicU64 = AtomicU64::new(0);
/// A halfway test (suspend, step, hotplug, S3) has yet to run: the chains go on past the end
/// until it has (the boot CPU, late on a busy host, may wake from its wait past the end: the
/// test must still find timers pending).
static HOLD: AtomicBool = AtomicBool::new(false);
/// The last run's outcome, for the report.
static LAST: Mutex<Option<Outcome>> = Mutex::new(None);
static ARM_FAILURES: AtomicU64 = AtomicU64::new(0);
/// Set while timekeeping is suspended (`suspend_test=`): no workload timer may run then.
static SUSPENDED: AtomicBool = AtomicBool::new(false);
/// Workload timers pending at the suspend, those of them that fired after it, and workload
/// timers that ran while timekeeping was suspended.
static SUSPEND_PENDING: AtomicU64 = AtomicU64::new(0);
static SUSPEND_FIRED_AFTER: AtomicU64 = AtomicU64::new(0);
static FIRED_WHILE_SUSPENDED: AtomicU64 = AtomicU64::new(0);

/// A xorshift step per CPU (deterministic delays, no shared state between CPUs).
fn next_delay(cpu: usize) -> u64 {
    let c = &COUNTS[cpu];
    let mut x = c.rng.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c.rng.store(x, Ordering::Relaxed);
    let base = DELAYS_NS[(x % DELAYS_NS.len() as u64) as usize];
    base + (x >> 32) % (base / 2 + 1)
}

/// Arms the chain's next timer. `armed` counts it first: another CPU deciding that every chain
/// has run out compares `fired` with `armed`, and must never see this timer fired but not armed.
fn arm_next(cpu: usize, chain: usize) {
    let armed = &COUNTS[cpu].armed;
    let slot = &COUNTS[cpu].chains[chain];
    let seq = slot.armed_seq.load(Ordering::Relaxed) + 1;
    slot.armed_seq.store(seq, Ordering::Relaxed);
    armed.fetch_add(1, Ordering::AcqRel);
    let (deadline, stamp) = oracle::arm_stamp(next_delay(cpu), percpu::this_cpu().apic_id);
    *slot.stamp.lock() = stamp;
    if let Err(e) = clockevents::arm_at(deadline, on_timer, timer_data(cpu, chain, seq)) {
        slot.armed_seq.store(seq - 1, Ordering::Relaxed);
        armed.fetch_sub(1, Ordering::AcqRel);
        if ARM_FAILURES.fetch_add(1, Ordering::Relaxed) == 0 {
            log::error!("cannot arm a timer on CPU {cpu}: {e}");
        }
    }
}

fn on_timer(e: &TimerEvent) {
    let (home, chain, seq) = timer_identity(e.data);
    let c = &COUNTS[home];
    // Lateness to the callback, on its own clock read (`e.now_ns` is the handler's).
    let now = now_ns();
    // The chain's pending timer fires once: anything else (the same timer again, an older one,
    // a chain or number that was never armed) is a timer firing twice.
    let first = c.chains.get(chain).is_some_and(|slot| {
        seq == slot.armed_seq.load(Ordering::Relaxed)
            && slot
                .fired_seq
                .compare_exchange(seq.wrapping_sub(1), seq, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    });
    if !first {
        if c.fired_twice.fetch_add(1, Ordering::Relaxed) == 0 {
            log::error!("timer {seq} of chain {chain} fired again on CPU {}", e.cpu);
        }
        return;
    }
    if SUSPENDED.load(Ordering::Acquire) && FIRED_WHILE_SUSPENDED.fetch_add(1, Ordering::Relaxed) == 0 {
        log::error!("timer {seq} of chain {chain} ran on CPU {} while timekeeping was suspended", e.cpu);
    }
    if c.chains[chain].pending_at_suspend.load(Ordering::Acquire) == seq {
        SUSPEND_FIRED_AFTER.fetch_add(1, Ordering::Relaxed);
    }
    let stamp = *c.chains[chain].stamp.lock();
    match oracle::judge(&stamp) {
        oracle::Judgement::NotEarly => {
            c.judged_independent.fetch_add(1, Ordering::Relaxed);
        }
        oracle::Judgement::Early { ticks_short, reference } => {
            c.judged_independent.fetch_add(1, Ordering::Relaxed);
            if c.early_independent.fetch_add(1, Ordering::Relaxed) == 0 {
                log::error!(
                    "timer {seq} of chain {chain} ran on CPU {} {ticks_short} ticks of counter {} before its deadline",
                    e.cpu,
                    reference.0
                );
            }
        }
        oracle::Judgement::Unjudged => {}
    }
    let apic_id = oracle::apic_id_here();
    // Its CPU, or the CPU that adopted the timers of its CPU gone offline (`hotplug_test=`).
    let adopted = clockevents::hotplug::adopter_apic_of(stamp.apic_id) == Some(apic_id);
    if apic_id != stamp.apic_id && !adopted && c.wrong_cpu.fetch_add(1, Ordering::Relaxed) == 0 {
        log::error!(
            "timer {seq} of chain {chain}, armed on APIC id {}, ran on APIC id {apic_id}",
            stamp.apic_id
        );
    }
    if now < e.deadline_ns {
        c.early.fetch_add(1, Ordering::Relaxed);
        log::error!("timer fired {} ns early on CPU {}", e.deadline_ns - now, e.cpu);
    }
    let mut samples = SAMPLES[e.cpu].lock();
    if samples.callback.len() < SAMPLES_PER_CPU.load(Ordering::Relaxed) {
        samples.callback.push(now.saturating_sub(e.deadline_ns));
        // The clock read the expiry popped it at: the interrupt's first, or a retry pass's.
        samples.handler.push(e.now_ns.saturating_sub(e.deadline_ns));
    }
    drop(samples);
    if e.now_ns < END_NS.load(Ordering::Relaxed) || HOLD.load(Ordering::Acquire) {
        arm_next(home, chain);
    }
    c.fired.fetch_add(1, Ordering::Release);
}

fn start_on_this_cpu(_: u64) -> u64 {
    let cpu = percpu::this_cpu().index;
    COUNTS[cpu].rng.store(0x9e37_79b9_7f4a_7c15 ^ (cpu as u64 + 1), Ordering::Relaxed);
    for chain in 0..CHAINS_PER_CPU as usize {
        arm_next(cpu, chain);
    }
    0
}

/// While every CPU's tick is suspended (nothing runs a timer): records each chain's pending
/// timer, which must then fire once after the resume.
fn at_suspend(cpus: &[usize], halted: bool) {
    // Counted once per sleep: an S3 whose alarm came too close tries again (no timer runs in
    // between: interrupts stay off).
    if halted && !SUSPENDED.load(Ordering::Acquire) {
        for &cpu in cpus {
            for slot in &COUNTS[cpu].chains {
                let armed = slot.armed_seq.load(Ordering::Acquire);
                if armed > slot.fired_seq.load(Ordering::Acquire) {
                    slot.pending_at_suspend.store(armed, Ordering::Release);
                    SUSPEND_PENDING.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    SUSPENDED.store(halted, Ordering::Release);
}

/// What the run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub armed: u64,
    /// Timers that fired (each counted once).
    pub fired: u64,
    /// Firings of a timer that had fired already (or was never armed).
    pub fired_twice: u64,
    pub early: u64,
    /// Fired before their deadline on a counter that is not the clocksource's, and the timers
    /// judged on one (see [`oracle`]).
    pub early_independent: u64,
    pub judged_independent: u64,
    /// Ran on a CPU whose APIC id (from the hardware) is not the arming CPU's.
    pub wrong_cpu: u64,
    /// With `suspend_test=`: the workload's timers pending at the suspend, those of them that
    /// fired after the resume (each once: a second firing is in `fired_twice`), and workload
    /// timers that ran while timekeeping was suspended.
    pub suspend_pending: u64,
    pub suspend_fired_after: u64,
    pub fired_while_suspended: u64,
    pub latency: LatencyReport,
    pub handler_latency: LatencyReport,
    /// The same events' handler -> callback (each event's callback lateness minus its handler
    /// lateness): the time layer's own part of the path.
    pub handler_to_callback: LatencyReport,
    /// The CPUs the workload ran on.
    pub cpus: usize,
}

impl Outcome {
    /// Armed timers that never fired: `fired` counts each timer once, so a double fire
    /// cannot make up for a lost one.
    pub fn lost(&self) -> u64 {
        self.armed - self.fired.min(self.armed)
    }
}

/// `clock_step_test=`: REALTIME is stepped by this many seconds halfway through the run (0:
/// not).
static CLOCK_STEP_S: core::sync::atomic::AtomicI64 = core::sync::atomic::AtomicI64::new(0);

/// Steps REALTIME by `seconds` halfway through the next run, with timers on REALTIME pending
/// on its CPUs (`time::clock_step`); `None`: no step.
pub fn step_clock_midway(seconds: Option<i64>) {
    CLOCK_STEP_S.store(seconds.unwrap_or(0), Ordering::Relaxed);
}

/// Runs the workload on the first `cpus` online CPUs only from now on (`None`: every CPU).
pub fn limit_cpus(cpus: Option<usize>) {
    WORKLOAD_CPUS.store(cpus.unwrap_or(usize::MAX), Ordering::Relaxed);
}

/// `hotplug_test=CPU:MS`: halfway through the run, CPU goes offline for MS ms, then comes back.
static HOTPLUG_TEST: spin::Mutex<Option<(usize, u64)>> = spin::Mutex::new(None);

/// Takes CPU `cpu` offline for `ms` ms halfway through the run (`hotplug_test=`; `None`: not).
pub fn hotplug_halfway(test: Option<(usize, u64)>) {
    x86_64::instructions::interrupts::without_interrupts(|| *HOTPLUG_TEST.lock() = test);
}

/// The hotplug test, on the boot CPU (interrupts enabled): a refusal or failure is logged and
/// recorded as a fallback, and the run goes on.
fn hotplug_test(cpu: usize, ms: u64) {
    if let Err(e) = clockevents::hotplug::offline(cpu) {
        clockevents::record_fallback(alloc::format!("hotplug test: CPU {cpu} not taken offline: {e}"));
        return;
    }
    let back_at = now_ns() + ms * 1_000_000;
    while now_ns() < back_at {
        if clockevents::sleep_ns(1_000_000).is_err() {
            core::hint::spin_loop();
        }
    }
    if let Err(e) = clockevents::hotplug::online(cpu) {
        clockevents::record_fallback(alloc::format!("hotplug test: CPU {cpu} not back online: {e}"));
    }
}

pub use clockevents::s3::S3Plan;

static S3_TEST: spin::Mutex<Option<S3Plan>> = spin::Mutex::new(None);

/// Puts the machine in S3 halfway through the next run (`s3_test=`; `None`: not).
pub fn s3_halfway(plan: Option<S3Plan>) {
    x86_64::instructions::interrupts::without_interrupts(|| *S3_TEST.lock() = plan);
}

/// The S3 test, on the boot CPU (interrupts enabled): a machine that does not sleep is a
/// fallback, and the run goes on.
fn s3_test(plan: S3Plan, cpus: &[usize]) {
    use clockevents::s3::S3Phase;
    let mut phase = |p: S3Phase| match p {
        S3Phase::Suspended => {
            oracle::counters_sleeping();
            at_suspend(cpus, true);
        }
        S3Phase::Woke => {
            oracle::counters_woke();
            at_suspend(cpus, false);
        }
        S3Phase::NotSlept => at_suspend(cpus, false),
    };
    if let Err(e) = clockevents::s3::suspend_to_ram(plan, &mut phase) {
        clockevents::record_fallback(alloc::format!("s3 test: {e}; the run goes on without the sleep"));
    }
}

/// Runs the workload on every online CPU (or those [`limit_cpus`] leaves) for `duration_ms`,
/// then waits for the last timers.
pub fn run(duration_ms: u64) -> Outcome {
    run_with_suspend(duration_ms, None, None)
}

/// The workload, with timekeeping suspended for `suspend_ms` halfway through (`suspend_test=`)
/// while timers are pending on every CPU.
pub fn run_with_suspend(
    duration_ms: u64,
    suspend_ms: Option<u64>,
    hpet: Option<&'static crate::arch::x86_64::hpet::Hpet>,
) -> Outcome {
    let start = now_ns();
    let mut suspend_at = suspend_ms.map(|ms| (start + duration_ms * 1_000_000 / 2, ms));
    let step = CLOCK_STEP_S.swap(0, Ordering::Relaxed);
    let mut step_at = (step != 0).then_some(start + duration_ms * 1_000_000 / 2);
    let hotplug = x86_64::instructions::interrupts::without_interrupts(|| *HOTPLUG_TEST.lock());
    let mut hotplug_at = hotplug.map(|(cpu, ms)| (start + duration_ms * 1_000_000 / 2, cpu, ms));
    let mut s3_at = x86_64::instructions::interrupts::without_interrupts(|| S3_TEST.lock().take())
        .map(|plan| (start + duration_ms * 1_000_000 / 2, plan));
    let cpus: Vec<usize> =
        percpu::all().map(|c| c.index).take(WORKLOAD_CPUS.load(Ordering::Relaxed)).collect();
    let samples_per_cpu = MAX_SAMPLES_PER_CPU.min(MAX_SAMPLES / cpus.len().max(1));
    SAMPLES_PER_CPU.store(samples_per_cpu, Ordering::Relaxed);
    // Room for every sample now: the callbacks push without allocating, so the report's
    // `interrupt_allocations` measures the time layer's own (none), not this workload's.
    for &cpu in &cpus {
        x86_64::instructions::interrupts::without_interrupts(|| {
            let mut guard = SAMPLES[cpu].lock();
            let Samples { callback, handler } = &mut *guard;
            for samples in [callback, handler] {
                let room = samples_per_cpu.saturating_sub(samples.len());
                samples.reserve_exact(room);
            }
        });
    }
    oracle::set_counters(crate::time::clocksource::raw_counters());
    HOLD.store(
        suspend_at.is_some() || step_at.is_some() || hotplug_at.is_some() || s3_at.is_some(),
        Ordering::Release,
    );
    END_NS.store(now_ns() + duration_ms * 1_000_000, Ordering::Relaxed);
    log::info!("{CHAINS_PER_CPU} timer chains on each of {} CPUs for {duration_ms} ms", cpus.len());
    for &cpu in &cpus {
        if let Err(e) = smp::call_on(cpu, || start_on_this_cpu(0)) {
            log::error!("CPU {cpu} did not start: {e}");
        }
    }
    let mut end = END_NS.load(Ordering::Relaxed);
    let all_fired = || {
        cpus.iter()
            .all(|&c| COUNTS[c].fired.load(Ordering::Acquire) >= COUNTS[c].armed.load(Ordering::Acquire))
    };
    // Sleep on our own timers until the end, then until every chain has run out (bounded).
    while HOLD.load(Ordering::Acquire) || (now_ns() < end + GRACE_NS && (now_ns() < end || !all_fired())) {
        if let Some((at, ms)) = suspend_at
            && now_ns() >= at
        {
            suspend_at = None;
            if let Err(e) =
                clockevents::suspend::suspend_for(ms, hpet, &mut |halted| at_suspend(&cpus, halted))
            {
                clockevents::record_fallback(alloc::format!("suspend test: {e}"));
            }
        }
        if step_at.is_some_and(|at| now_ns() >= at) {
            step_at = None;
            crate::time::clock_step::step(step, &cpus);
        }
        if let Some((at, cpu, ms)) = hotplug_at
            && now_ns() >= at
        {
            hotplug_at = None;
            hotplug_test(cpu, ms);
        }
        if s3_at.as_ref().is_some_and(|(at, _)| now_ns() >= *at)
            && let Some((_, plan)) = s3_at.take()
        {
            s3_test(plan, &cpus);
        }
        if HOLD.load(Ordering::Acquire)
            && suspend_at.is_none()
            && step_at.is_none()
            && hotplug_at.is_none()
            && s3_at.is_none()
        {
            // The last halfway test done: the run ends (or ended) now at the latest.
            HOLD.store(false, Ordering::Release);
            end = end.max(now_ns());
        }
        if clockevents::sleep_ns(1_000_000).is_err() {
            core::hint::spin_loop();
        }
    }
    if step != 0 {
        crate::time::clock_step::finish();
    }
    let mut samples: Vec<u64> = Vec::new();
    let mut handler_samples: Vec<u64> = Vec::new();
    let mut handler_to_callback: Vec<u64> = Vec::new();
    let mut out = Outcome::default();
    for &c in &cpus {
        let counts = &COUNTS[c];
        let (armed, fired, fired_twice, early) = x86_64::instructions::interrupts::without_interrupts(|| {
            let s = SAMPLES[c].lock();
            samples.extend(s.callback.iter());
            handler_samples.extend(s.handler.iter());
            handler_to_callback.extend(s.callback.iter().zip(&s.handler).map(|(c, h)| c.saturating_sub(*h)));
            drop(s);
            (
                counts.armed.load(Ordering::Acquire),
                counts.fired.load(Ordering::Acquire),
                counts.fired_twice.load(Ordering::Acquire),
                counts.early.load(Ordering::Acquire),
            )
        });
        let early_independent = counts.early_independent.load(Ordering::Acquire);
        let judged = counts.judged_independent.load(Ordering::Acquire);
        let wrong_cpu = counts.wrong_cpu.load(Ordering::Acquire);
        log::info!(
            "CPU {c}: {armed} timers armed, {fired} fired, {fired_twice} fired twice, {early} early; \
             {judged} judged on another counter, {early_independent} early there; {wrong_cpu} on another APIC id"
        );
        out.armed += armed;
        out.fired += fired;
        out.fired_twice += fired_twice;
        out.early += early;
        out.early_independent += early_independent;
        out.judged_independent += judged;
        out.wrong_cpu += wrong_cpu;
    }
    out.suspend_pending = SUSPEND_PENDING.load(Ordering::Acquire);
    out.suspend_fired_after = SUSPEND_FIRED_AFTER.load(Ordering::Acquire);
    out.fired_while_suspended = FIRED_WHILE_SUSPENDED.load(Ordering::Acquire);
    if suspend_ms.is_some() || out.suspend_pending > 0 {
        log::info!(
            "suspend: {} workload timers were pending, {} of them fired after the resume; {} ran while suspended",
            out.suspend_pending,
            out.suspend_fired_after,
            out.fired_while_suspended
        );
    }
    out.latency = LatencyReport::from_samples(&mut samples);
    out.handler_latency = LatencyReport::from_samples(&mut handler_samples);
    out.handler_to_callback = LatencyReport::from_samples(&mut handler_to_callback);
    out.cpus = cpus.len();
    *LAST.lock() = Some(out);
    let l = out.latency;
    log::info!(
        "lateness over {} events: min {} ns, p50 {} ns, p99 {} ns, max {} ns; {} lost, {} fired twice, {} early",
        l.samples,
        l.min,
        l.p50,
        l.p99,
        l.max,
        out.lost(),
        out.fired_twice,
        out.early
    );
    out
}

/// The outcome of the last run, if the workload ran.
pub fn last() -> Option<Outcome> {
    *LAST.lock()
}

/// Adds the run's figures to the report; lost, twice-fired or early events fail the verdict.
pub fn fill_report(report: &mut TimerReport, out: &Outcome) {
    report.latency_ns = out.latency;
    report.handler_latency_ns = out.handler_latency;
    report.handler_to_callback_ns = out.handler_to_callback;
    report.workload_cpus = out.cpus;
    report.events_armed = out.armed;
    report.lost_events = out.lost();
    report.fired_twice = out.fired_twice;
    report.early_events = out.early;
    report.early_independent = out.early_independent;
    report.wrong_cpu = out.wrong_cpu;
    if out.lost() > 0
        || out.fired_twice > 0
        || out.early > 0
        || out.early_independent > 0
        || out.wrong_cpu > 0
        || out.armed == 0
    {
        report.verdict = Verdict::Failed;
    }
}
