//! Timer stress: on every CPU, 100 000 timers at random deadlines from the device's minimum
//! delta to 10 ms, some cancelled and re-armed at random (at arming time and from inside other
//! timers' callbacks). Every surviving callback must run exactly once, never before its
//! deadline, on the CPU that armed it; a cancelled one never. Mixed in, across CPUs: callbacks
//! post timers to other CPUs (each must run there, once, never early), and the boot CPU arms
//! timers on the others and cancels them from afar (none may run). Under `--smp 4` with
//! per-CPU HPET comparators, with the global device by broadcast, and with the default mix.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::arch::x86_64::smp::{self, percpu};
use kernel_tests::kernel::time::clockevents::{self, Cancelled, Timer, TimerEvent};
use kernel_tests::kernel::time::clocksource::now_ns;
use kernel_tests::kernel_time::hrtimer::TimerId;
use spin::Mutex;

kernel_tests::qemu_test!(
    variants: b"
        mixed: --smp 4 --expect-report /broadcast=hpet2
        percpu: --smp 4 --expect-report /tick_devices/3/device=hpet3 -- -global hpet.timers=8
        global: --smp 4 --cmdline clockevents=global --expect-report /tick_devices/3/via_broadcast=true
    ",
    tests: [every_timer_runs_once_never_early_on_its_cpu_and_cancelled_ones_never],
);

const TIMERS_PER_CPU: u32 = 100_000;
/// Timers pending at once on a CPU (a batch fires within 10 ms; the next batch starts from the
/// last callback of the previous one).
const BATCH: u32 = 2_000;
const MAX_DELAY_NS: u64 = 10_000_000;
/// Slot bits in a timer's data; above them its arming generation.
const SLOT_BITS: u32 = 16;

/// One slot of the current batch.
struct Slot {
    /// Generation of the live timer in this slot: a callback with another one is a timer
    /// that was cancelled (or re-armed) and still ran.
    generation: AtomicU32,
    deadline: AtomicU64,
    fired: AtomicU32,
    live: AtomicBool,
}

struct CpuState {
    slots: Vec<Slot>,
    ids: Mutex<Vec<Option<TimerId>>>,
    /// Live timers of the batch not yet fired.
    outstanding: AtomicU32,
    batches_started: AtomicU32,
    fired: AtomicU64,
    cancelled: AtomicU64,
    rng: AtomicU64,
    done: AtomicBool,
}

static STATE: spin::Once<Vec<CpuState>> = spin::Once::new();
static EARLY: AtomicU64 = AtomicU64::new(0);
static WRONG_CPU: AtomicU64 = AtomicU64::new(0);
static STALE: AtomicU64 = AtomicU64::new(0);
static TWICE: AtomicU64 = AtomicU64::new(0);
static ARM_FAILED: AtomicU64 = AtomicU64::new(0);

/// Counts an arm refused, and logs the first few with their error (the assertion at the end
/// then says which kind of arm was refused, and why).
fn arm_failed(what: &str, e: kernel_tests::kernel_time::tick::ArmError) {
    if ARM_FAILED.fetch_add(1, Ordering::Relaxed) < 4 {
        log::warn!("stress: {what} was refused: {e}");
    }
}
static MIN_DELAY_NS: AtomicU64 = AtomicU64::new(2_000);
/// Timers posted by a callback to another CPU, and how many ran there (on time, or not).
static REMOTE_POSTED: AtomicU64 = AtomicU64::new(0);
static REMOTE_RAN: AtomicU64 = AtomicU64::new(0);
static REMOTE_WRONG: AtomicU64 = AtomicU64::new(0);
/// Timers the boot CPU arms on another CPU and cancels from afar, numbered: which ran, which a
/// cancel found pending (those must never run), and how many were armed.
const FAR_TIMERS: usize = 16 * 1024;
static FAR_RAN: [AtomicU64; FAR_TIMERS / 64] = [const { AtomicU64::new(0) }; FAR_TIMERS / 64];
static FAR_CANCELLED: [AtomicU64; FAR_TIMERS / 64] = [const { AtomicU64::new(0) }; FAR_TIMERS / 64];
static FAR_ARMED: AtomicU64 = AtomicU64::new(0);

/// A timer posted from another CPU's callback: `data` is the CPU it was posted to.
fn on_remote(e: &TimerEvent) {
    if percpu::this_cpu().index as u64 != e.data || e.cpu as u64 != e.data {
        REMOTE_WRONG.fetch_add(1, Ordering::Relaxed);
    }
    if now_ns() < e.deadline_ns {
        EARLY.fetch_add(1, Ordering::Relaxed);
    }
    REMOTE_RAN.fetch_add(1, Ordering::Relaxed);
}

fn on_cancelled(e: &TimerEvent) {
    FAR_RAN[e.data as usize / 64].fetch_or(1 << (e.data % 64), Ordering::Relaxed);
}

fn is_set(bits: &[AtomicU64], n: usize) -> bool {
    bits[n / 64].load(Ordering::Relaxed) & (1 << (n % 64)) != 0
}

/// From a callback on `cpu`: now and then, a timer for another CPU, queued to it.
fn post_to_another_cpu(cpu: usize, s: &CpuState) {
    let cpus = STATE.get().map_or(1, |v| v.len());
    if cpus < 2 || random(s) % 32 != 0 {
        return;
    }
    let target = (cpu + 1 + (random(s) % (cpus as u64 - 1)) as usize) % cpus;
    let deadline = now_ns() + 100_000 + random(s) % 2_000_000;
    REMOTE_POSTED.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = clockevents::post_on(target, deadline, on_remote, target as u64) {
        REMOTE_POSTED.fetch_sub(1, Ordering::Relaxed);
        arm_failed("a post from a callback", e);
    }
}

/// From the boot CPU: a timer on every other CPU, 1 ms ahead, cancelled from here. A cancel
/// that finds it pending means it never runs; one that finds it inactive means it ran, one
/// that finds it running means its callback runs at that moment (how long the two calls take
/// under a loaded host decides which: a vCPU stalled for milliseconds, on either side, makes
/// the last two happen; each is right).
fn arm_and_cancel_from_afar(cpus: usize) {
    for target in 1..cpus {
        let n = FAR_ARMED.load(Ordering::Relaxed) as usize;
        if n >= FAR_TIMERS {
            return;
        }
        let deadline = clockevents::now() + core::time::Duration::from_millis(1);
        match Timer::with_fn(target, deadline, on_cancelled, n as u64) {
            Ok(t) => {
                FAR_ARMED.store(n as u64 + 1, Ordering::Relaxed);
                match t.cancel() {
                    Cancelled::Pending => {
                        FAR_CANCELLED[n / 64].fetch_or(1 << (n % 64), Ordering::Relaxed);
                    }
                    Cancelled::Inactive | Cancelled::Running => {}
                }
            }
            Err(e) => {
                arm_failed("a far timer from CPU 0", e);
            }
        }
    }
}

fn state(cpu: usize) -> &'static CpuState {
    &STATE.get().expect("set before the first batch")[cpu]
}

fn random(s: &CpuState) -> u64 {
    let mut x = s.rng.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s.rng.store(x, Ordering::Relaxed);
    x
}

/// Arms slot `slot` anew (a fresh generation) at a random deadline.
fn arm_slot(cpu: usize, s: &CpuState, slot: u32) {
    let min = MIN_DELAY_NS.load(Ordering::Relaxed);
    let deadline = now_ns() + min + random(s) % (MAX_DELAY_NS - min);
    let sl = &s.slots[slot as usize];
    let generation = sl.generation.fetch_add(1, Ordering::Relaxed) + 1;
    sl.deadline.store(deadline, Ordering::Relaxed);
    sl.fired.store(0, Ordering::Relaxed);
    sl.live.store(true, Ordering::Release);
    let data = (u64::from(generation) << SLOT_BITS) | u64::from(slot);
    match clockevents::arm_at(deadline, on_timer, data) {
        Ok(id) => s.ids.lock()[slot as usize] = Some(id),
        Err(e) => {
            arm_failed("a local arm", e);
            sl.live.store(false, Ordering::Relaxed);
            s.outstanding.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let _ = cpu;
}

/// Cancels slot `slot` if its timer is still pending; re-arms it half of the time.
fn cancel_slot(cpu: usize, s: &CpuState, slot: u32) {
    let sl = &s.slots[slot as usize];
    if !sl.live.load(Ordering::Acquire) {
        return;
    }
    let Some(id) = s.ids.lock()[slot as usize] else { return };
    if clockevents::cancel(id).expect("a slot's timer is cancelled on its own CPU") {
        s.cancelled.fetch_add(1, Ordering::Relaxed);
        sl.live.store(false, Ordering::Release);
        // Invalidate the cancelled generation before anything else can run.
        sl.generation.fetch_add(1, Ordering::Relaxed);
        if random(s) % 2 == 0 {
            arm_slot(cpu, s, slot);
        } else {
            s.outstanding.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn start_batch(cpu: usize) {
    let s = state(cpu);
    let started = s.batches_started.fetch_add(1, Ordering::Relaxed);
    if started * BATCH >= TIMERS_PER_CPU {
        s.done.store(true, Ordering::Release);
        return;
    }
    s.outstanding.store(BATCH, Ordering::Release);
    for slot in 0..BATCH {
        arm_slot(cpu, s, slot);
    }
    for _ in 0..BATCH / 10 {
        cancel_slot(cpu, s, (random(s) % u64::from(BATCH)) as u32);
    }
}

fn on_timer(e: &TimerEvent) {
    let cpu = percpu::this_cpu().index;
    if cpu != e.cpu {
        WRONG_CPU.fetch_add(1, Ordering::Relaxed);
    }
    let s = state(cpu);
    let slot = (e.data & ((1 << SLOT_BITS) - 1)) as u32;
    let generation = (e.data >> SLOT_BITS) as u32;
    let sl = &s.slots[slot as usize];
    if sl.generation.load(Ordering::Relaxed) != generation || !sl.live.load(Ordering::Acquire) {
        STALE.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if e.now_ns < sl.deadline.load(Ordering::Relaxed) || e.now_ns < e.deadline_ns {
        EARLY.fetch_add(1, Ordering::Relaxed);
    }
    if sl.fired.fetch_add(1, Ordering::Relaxed) > 0 {
        TWICE.fetch_add(1, Ordering::Relaxed);
    }
    sl.live.store(false, Ordering::Release);
    s.fired.fetch_add(1, Ordering::Relaxed);
    // Now and then, cancel another pending timer of this batch from inside a callback.
    if random(s) % 16 == 0 {
        cancel_slot(cpu, s, (random(s) % u64::from(BATCH)) as u32);
    }
    post_to_another_cpu(cpu, s);
    if s.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
        start_batch(cpu);
    }
}

fn start_here(_: u64) -> u64 {
    // Each batch is armed from the last callback of the one before, where the queue does not
    // grow: room for two batches (and the posts from other CPUs) first.
    clockevents::reserve(2 * BATCH as usize);
    start_batch(percpu::this_cpu().index);
    0
}

fn every_timer_runs_once_never_early_on_its_cpu_and_cancelled_ones_never(_: &Kernel) {
    let cpus = percpu::all().count();
    STATE.call_once(|| {
        (0..cpus)
            .map(|c| CpuState {
                slots: (0..BATCH)
                    .map(|_| Slot {
                        generation: AtomicU32::new(0),
                        deadline: AtomicU64::new(0),
                        fired: AtomicU32::new(0),
                        live: AtomicBool::new(false),
                    })
                    .collect(),
                ids: Mutex::new(alloc::vec![None; BATCH as usize]),
                outstanding: AtomicU32::new(0),
                batches_started: AtomicU32::new(0),
                fired: AtomicU64::new(0),
                cancelled: AtomicU64::new(0),
                rng: AtomicU64::new(0x2545_f491_4f6c_dd1d ^ (c as u64 + 1)),
                done: AtomicBool::new(false),
            })
            .collect()
    });
    for c in 0..cpus {
        smp::call_on(c, || start_here(0)).expect("every CPU answers");
    }
    // Bounded by progress, not by a duration: fail when nothing fired for 10 s of kernel time.
    let total = || (0..cpus).map(|c| state(c).fired.load(Ordering::Relaxed)).sum::<u64>();
    let mut last = (total(), now_ns());
    while !(0..cpus).all(|c| state(c).done.load(Ordering::Acquire)) {
        let _ = clockevents::sleep_ns(5_000_000);
        arm_and_cancel_from_afar(cpus);
        let t = total();
        if t != last.0 {
            last = (t, now_ns());
        }
        assert!(now_ns() - last.1 < 10_000_000_000, "no timer fired for 10 s ({t} fired so far)");
    }
    for c in 0..cpus {
        let s = state(c);
        log::info!(
            "CPU {c}: {} timers fired, {} cancelled, {} batches",
            s.fired.load(Ordering::Relaxed),
            s.cancelled.load(Ordering::Relaxed),
            s.batches_started.load(Ordering::Relaxed) - 1
        );
        assert!(
            s.cancelled.load(Ordering::Relaxed) > 0,
            "CPU {c} cancelled nothing: the test tested nothing"
        );
        assert!(
            s.fired.load(Ordering::Relaxed) >= u64::from(TIMERS_PER_CPU) * 8 / 10,
            "CPU {c}: too few timers fired"
        );
    }
    let posted = REMOTE_POSTED.load(Ordering::Relaxed);
    assert!(
        kernel_tests::wait_for(|| REMOTE_RAN.load(Ordering::Relaxed) >= posted),
        "{} of {posted} timers posted to other CPUs ran",
        REMOTE_RAN.load(Ordering::Relaxed)
    );
    // Every far timer either ran (its cancel came too late) or was cancelled, never both.
    let far = FAR_ARMED.load(Ordering::Relaxed) as usize;
    let far_cancelled = (0..far).filter(|&n| is_set(&FAR_CANCELLED, n)).count();
    assert!(
        kernel_tests::wait_for(|| (0..far).all(|n| is_set(&FAR_CANCELLED, n) || is_set(&FAR_RAN, n))),
        "a timer whose cancel from another CPU found it gone never ran"
    );
    clockevents::sleep_ns(5_000_000).unwrap();
    for n in 0..far {
        assert!(!(is_set(&FAR_CANCELLED, n) && is_set(&FAR_RAN, n)), "far timer {n} ran after its cancel");
    }
    log::info!(
        "across CPUs: {posted} timers posted from callbacks; {far} armed on other CPUs from CPU 0, {far_cancelled} of them cancelled from CPU 0"
    );
    if cpus > 1 {
        assert!(posted > 0 && far_cancelled > 0, "nothing crossed CPUs");
    }
    assert_eq!(REMOTE_RAN.load(Ordering::Relaxed), posted, "a posted timer ran twice");
    assert_eq!(REMOTE_WRONG.load(Ordering::Relaxed), 0, "posted timers ran on another CPU");
    assert_eq!(ARM_FAILED.load(Ordering::Relaxed), 0, "arming failed");
    assert_eq!(EARLY.load(Ordering::Relaxed), 0, "timers ran before their deadline");
    assert_eq!(WRONG_CPU.load(Ordering::Relaxed), 0, "timers ran on another CPU");
    assert_eq!(STALE.load(Ordering::Relaxed), 0, "cancelled timers ran");
    assert_eq!(TWICE.load(Ordering::Relaxed), 0, "timers ran twice");
}
