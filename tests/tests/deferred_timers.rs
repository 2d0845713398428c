//! Deferred timers (Linux's soft hrtimers): a deferred callback runs on its CPU outside the hard
//! interrupt, with interrupts enabled, so a long one cannot delay a hard timer of the same CPU,
//! which runs in the middle of it, on time; a cancel while it waits in the CPU's deferred list
//! answers pending and it never runs; a periodic one runs on its grid, once per period.
//!
//! Bounds are the kernel's own clock and generous (a vCPU stalled by the host only delays
//! things): the long callback runs at least 5 ms and then until the hard timer has run, or 2 s.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::time::Duration;
use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::arch::x86_64::smp::percpu;
use kernel_tests::kernel::time::clockevents::{self, Cancelled, Timer, TimerEvent};
use kernel_tests::kernel::time::clocksource::now_ns;
use kernel_tests::wait_for;
use x86_64::instructions::interrupts;

kernel_tests::qemu_test!(
    variants: b"
        one_cpu: --smp 1 --cmdline duration_ms=100 --expect-report /cpus/0/deferred_timers/callbacks>=3 --expect-report /cpus/0/deferred_timers/max_waiting>=1
        two_cpus: --smp 2 --cmdline duration_ms=100 --expect-report /cpus/1/deferred_timers/callbacks>=1 --expect-report /tick_devices/1/device=hpet1
        broadcast: --smp 2 --cmdline 'duration_ms=100 clockevents=global' --expect-report /tick_devices/0/via_broadcast=true --expect-report /cpus/0/deferred_timers/callbacks>=3
        lapic_only: --smp 2 --cmdline 'duration_ms=100 clockevents=lapic' --expect-report /tick_devices/0/device=lapic0
        icount: --smp 2 --cmdline duration_ms=100 -- -icount shift=0,sleep=off
    ",
    tests: [
        a_hard_timer_runs_on_time_in_the_middle_of_a_long_deferred_callback,
        a_cancel_while_a_deferred_timer_waits_answers_pending_and_it_never_runs,
        a_periodic_deferred_timer_runs_on_its_grid_once_per_period_until_cancelled,
    ],
);

const US: u64 = 1_000;
const MS: u64 = 1_000_000;

/// How long the deferred callback runs at least, and at most while it waits for the hard one.
const LONG_CALLBACK_NS: u64 = 5 * MS;
const LONG_CALLBACK_LIMIT_NS: u64 = 2_000 * MS;

/// What the two callbacks of one try saw.
#[derive(Default)]
struct Seen {
    deferred_runs: AtomicU64,
    /// The deferred callback: interrupts were enabled throughout, it was not inside an
    /// interrupt handler, its event said deferred, it ran on its CPU.
    deferred_interrupts_enabled: AtomicBool,
    deferred_outside_handler: AtomicBool,
    deferred_event_flag: AtomicBool,
    deferred_cpu: AtomicU64,
    /// Set while the deferred callback runs.
    deferred_running: AtomicBool,
    hard_deadline: AtomicU64,
    hard_runs: AtomicU64,
    /// The clock read in the hard callback, and whether the deferred one was running then.
    hard_now: AtomicU64,
    hard_saw_deferred_running: AtomicBool,
    hard_event_flag: AtomicBool,
    hard_interrupts_enabled: AtomicBool,
}

/// The try in progress: the hard callback is a plain function (armed from the deferred one,
/// with no allocation), which finds its record here.
static CURRENT: spin::Mutex<Option<Arc<Seen>>> = spin::Mutex::new(None);

fn hard_callback(e: &TimerEvent) {
    let now = now_ns();
    let Some(seen) = CURRENT.lock().clone() else { return };
    seen.hard_now.store(now, Ordering::Relaxed);
    seen.hard_saw_deferred_running.store(seen.deferred_running.load(Ordering::Relaxed), Ordering::Relaxed);
    seen.hard_event_flag.store(e.deferred, Ordering::Relaxed);
    seen.hard_interrupts_enabled.store(interrupts::are_enabled(), Ordering::Relaxed);
    seen.hard_runs.fetch_add(1, Ordering::Relaxed);
}

/// The test, on each CPU in turn: a deferred callback that runs 5 ms (busy on the
/// kernel's clock, interrupts enabled) arms a hard timer 100 us after it starts; the hard
/// callback runs while the deferred one is still running, never early, each once. Routing
/// deferred callbacks into the hard interrupt fails it: the hard timer then waits for the
/// long callback to end.
fn a_hard_timer_runs_on_time_in_the_middle_of_a_long_deferred_callback(_: &Kernel) {
    for cpu in percpu::all().map(|c| c.index) {
        let seen = Arc::new(Seen::default());
        // Interrupts off while the lock is held: the hard callback takes it on this CPU.
        interrupts::without_interrupts(|| *CURRENT.lock() = Some(seen.clone()));
        let inside = seen.clone();
        let deadline = clockevents::now() + Duration::from_millis(1);
        let timer = Timer::deferred_at(cpu, deadline, move |e: &TimerEvent| {
            let s = &inside;
            let start = now_ns();
            let mut enabled = interrupts::are_enabled();
            s.deferred_outside_handler.store(!percpu::this_cpu().in_interrupt(), Ordering::Relaxed);
            s.deferred_event_flag.store(e.deferred, Ordering::Relaxed);
            s.deferred_cpu.store(percpu::this_cpu().index as u64, Ordering::Relaxed);
            s.deferred_running.store(true, Ordering::Relaxed);
            let hard_deadline = start + 100 * US;
            s.hard_deadline.store(hard_deadline, Ordering::Relaxed);
            clockevents::arm_at(hard_deadline, hard_callback, 0)
                .expect("hard timer armed from the deferred callback");
            // At least 5 ms, then until the hard callback has run (a stalled vCPU only
            // delays it), at most 2 s.
            loop {
                enabled &= interrupts::are_enabled();
                let ran = now_ns() - start;
                if (ran >= LONG_CALLBACK_NS && s.hard_runs.load(Ordering::Relaxed) > 0)
                    || ran >= LONG_CALLBACK_LIMIT_NS
                {
                    break;
                }
                core::hint::spin_loop();
            }
            s.deferred_interrupts_enabled.store(enabled, Ordering::Relaxed);
            s.deferred_running.store(false, Ordering::Relaxed);
            s.deferred_runs.fetch_add(1, Ordering::Relaxed);
        })
        .expect("deferred timer armed");
        assert!(
            wait_for(|| seen.deferred_runs.load(Ordering::Relaxed) > 0
                && seen.hard_runs.load(Ordering::Relaxed) > 0),
            "CPU {cpu}: the deferred callback or the hard one never ran"
        );
        clockevents::sleep_ns(10 * MS).unwrap();
        let load = |a: &AtomicBool| a.load(Ordering::Relaxed);
        assert!(
            load(&seen.hard_saw_deferred_running),
            "CPU {cpu}: the hard callback did not run while the deferred one was running"
        );
        assert!(
            load(&seen.deferred_interrupts_enabled),
            "CPU {cpu}: interrupts were disabled in the deferred callback"
        );
        assert!(
            load(&seen.deferred_outside_handler),
            "CPU {cpu}: the deferred callback ran inside an interrupt handler"
        );
        assert!(
            load(&seen.deferred_event_flag),
            "CPU {cpu}: the deferred callback's event does not say deferred"
        );
        assert_eq!(
            seen.deferred_cpu.load(Ordering::Relaxed),
            cpu as u64,
            "the deferred callback ran on another CPU"
        );
        assert!(!load(&seen.hard_event_flag), "CPU {cpu}: the hard callback's event says deferred");
        assert!(
            !load(&seen.hard_interrupts_enabled),
            "CPU {cpu}: the hard callback ran with interrupts enabled"
        );
        assert!(
            seen.hard_now.load(Ordering::Relaxed) >= seen.hard_deadline.load(Ordering::Relaxed),
            "CPU {cpu}: the hard callback ran early"
        );
        assert_eq!(
            seen.deferred_runs.load(Ordering::Relaxed),
            1,
            "CPU {cpu}: the deferred callback ran twice"
        );
        assert_eq!(seen.hard_runs.load(Ordering::Relaxed), 1, "CPU {cpu}: the hard callback ran twice");
        assert_eq!(timer.cancel(), Cancelled::Inactive, "CPU {cpu}: it ran, nothing to cancel");
        interrupts::without_interrupts(|| *CURRENT.lock() = None);
    }
}

/// A deferred timer that comes due while its CPU's deferred run is busy with another waits in
/// the CPU's deferred list; a cancel then answers pending (it has not run) and it never runs.
fn a_cancel_while_a_deferred_timer_waits_answers_pending_and_it_never_runs(_: &Kernel) {
    for cpu in percpu::all().map(|c| c.index) {
        let waiting_ran = Arc::new(AtomicBool::new(false));
        let answer = Arc::new(spin::Mutex::new(None));
        let done = Arc::new(AtomicBool::new(false));
        let (ran, answered, finished) = (waiting_ran.clone(), answer.clone(), done.clone());
        let first =
            Timer::deferred_at(cpu, clockevents::now() + Duration::from_millis(1), move |_: &TimerEvent| {
                let ran = ran.clone();
                let second = Timer::deferred_at(
                    cpu,
                    clockevents::now() + Duration::from_micros(100),
                    move |_: &TimerEvent| ran.store(true, Ordering::Relaxed),
                )
                .expect("second deferred timer armed");
                // Its interrupt pops it into the deferred list, where it waits for this run.
                let start = now_ns();
                let waits = || clockevents::with_tick(|t| t.deferred_waiting()).unwrap_or(0) > 0;
                while !waits() && now_ns() - start < LONG_CALLBACK_LIMIT_NS {
                    core::hint::spin_loop();
                }
                *answered.lock() = Some((waits(), second.cancel()));
                finished.store(true, Ordering::Relaxed);
            })
            .expect("deferred timer armed");
        assert!(
            wait_for(|| done.load(Ordering::Relaxed)),
            "CPU {cpu}: the first deferred callback never ran"
        );
        clockevents::sleep_ns(10 * MS).unwrap();
        let (waited, cancelled) = answer.lock().take().expect("answered");
        assert!(waited, "CPU {cpu}: the second timer never waited in the deferred list");
        assert_eq!(cancelled, Cancelled::Pending, "CPU {cpu}: a cancel while it waits is pending");
        assert!(!waiting_ran.load(Ordering::Relaxed), "CPU {cpu}: a timer cancelled while it waited ran");
        assert_eq!(first.cancel(), Cancelled::Inactive);
        if cpu == percpu::this_cpu().index {
            assert_eq!(clockevents::with_tick(|t| t.deferred_waiting()), Some(0), "nothing left waiting");
        }
    }
}

/// A periodic deferred timer: each run deferred, never early, on its grid, once per grid
/// point reached; a cancel stops it.
fn a_periodic_deferred_timer_runs_on_its_grid_once_per_period_until_cancelled(_: &Kernel) {
    const RUNS: u64 = 5;
    let period = Duration::from_millis(2);
    let first = clockevents::now() + period;
    let runs = Arc::new(AtomicU64::new(0));
    let last_deadline = Arc::new(AtomicU64::new(0));
    let faults = Arc::new(AtomicU64::new(0));
    let (r, last, bad) = (runs.clone(), last_deadline.clone(), faults.clone());
    let timer = Timer::deferred_periodic(0, first, period, move |e: &TimerEvent| {
        let off_grid = !(e.deadline_ns - first.as_nanos()).is_multiple_of(period.as_nanos() as u64);
        let not_after_last = e.deadline_ns <= last.load(Ordering::Relaxed);
        let fault = !e.deferred
            || !interrupts::are_enabled()
            || now_ns() < e.deadline_ns
            || off_grid
            || not_after_last;
        if fault {
            bad.fetch_add(1, Ordering::Relaxed);
        }
        last.store(e.deadline_ns, Ordering::Relaxed);
        r.fetch_add(1, Ordering::Relaxed);
    })
    .expect("armed");
    assert!(wait_for(|| runs.load(Ordering::Relaxed) >= RUNS), "the periodic deferred timer stopped");
    let cancelled = timer.cancel();
    let after = runs.load(Ordering::Relaxed);
    assert_ne!(cancelled, Cancelled::Inactive, "a periodic timer is pending or running until cancelled");
    clockevents::sleep_ns(10 * MS).unwrap();
    // A cancel that found it running lets that run finish (counted at its end), no more.
    let allowed = after + u64::from(cancelled == Cancelled::Running);
    assert!(runs.load(Ordering::Relaxed) <= allowed, "it ran on after its cancel ({cancelled:?})");
    assert_eq!(
        faults.load(Ordering::Relaxed),
        0,
        "a run that was not deferred, early, off its grid or for a deadline not after the last"
    );
    assert_eq!(timer.cancel(), Cancelled::Inactive);
}
