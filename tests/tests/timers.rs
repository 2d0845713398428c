//! The timer API across CPUs: a timer armed on another CPU runs there, a cancel from another
//! CPU stops it, a timer posted from interrupt context arrives, a dropped handle cancels, and
//! a cancel from a timer's own callback says it is running. Each variant is a device
//! arrangement the timers must work on: per-CPU HPET, a CPU served by broadcast, LAPIC only.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;
use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::arch::x86_64::clockevents::{self, Cancelled, Timer, TimerEvent};
use kernel_tests::kernel::arch::x86_64::clocksource::now_ns;
use kernel_tests::kernel::arch::x86_64::smp::percpu;
use kernel_tests::kernel_time::instant::Instant;
use kernel_tests::wait_for;

kernel_tests::qemu_test!(
    variants: b"
        percpu_hpet: --smp 2 --cmdline duration_ms=100 --expect-report /tick_devices/1/device=hpet1
        broadcast: --smp 2 --cmdline 'duration_ms=100 clockevents=global' --expect-report /tick_devices/0/via_broadcast=true --expect-report /tick_devices/1/via_broadcast=true
        lapic_only: --smp 2 --cmdline 'duration_ms=100 clockevents=lapic' --expect-report /tick_devices/1/device=lapic1
        x2apic: --x2apic on --smp 2 --cmdline duration_ms=100 --expect-report /lapic/mode=x2apic --expect-report /tick_devices/1/device=hpet1
        icount: --smp 2 --cmdline duration_ms=100 --expect-report /tick_devices/1/device=hpet1 -- -icount shift=0,sleep=off
    ",
    tests: [
        a_timer_armed_from_another_cpu_runs_on_its_cpu,
        a_timer_cancelled_from_another_cpu_never_runs,
        a_timer_posted_from_a_callback_runs_on_its_cpu,
        dropping_a_handle_cancels_its_timer,
        cancelling_a_timer_from_its_own_callback_says_it_is_running,
    ],
);

const MS: u64 = 1_000_000;

/// Every CPU but 0: a timer armed on CPU 0 for each runs on it, once, not early.
fn a_timer_armed_from_another_cpu_runs_on_its_cpu(_: &Kernel) {
    for target in percpu::all().map(|c| c.index).filter(|&c| c != 0) {
        let ran = Arc::new(AtomicUsize::new(0));
        let seen = ran.clone();
        let deadline = clockevents::now() + Duration::from_millis(1);
        let timer = Timer::at(target, deadline, move |e: &TimerEvent| {
            assert_eq!(percpu::this_cpu().index, target, "ran on CPU {}", percpu::this_cpu().index);
            assert_eq!(e.cpu, target);
            assert!(
                clockevents::now() >= e.deadline() && e.deadline() == deadline,
                "ran early or for another deadline"
            );
            seen.fetch_add(1, Ordering::Relaxed);
        })
        .expect("armed on the other CPU");
        assert_eq!(timer.cpu(), target);
        assert!(wait_for(|| ran.load(Ordering::Relaxed) > 0), "the timer for CPU {target} never ran");
        clockevents::sleep_ns(2 * MS).unwrap();
        assert_eq!(ran.load(Ordering::Relaxed), 1, "ran more than once");
        assert_eq!(timer.cancel(), Cancelled::Inactive, "a timer that ran has nothing to cancel");
    }
}

/// Runs `try_once` with a deadline 20 ms ahead (it arms a timer for it, takes the timer back,
/// and returns when the take-back returned) until a try beat its deadline: a host stall can make
/// the timer due first, and only a try that beat it says anything. Returns that try's deadline.
fn before_its_deadline(mut try_once: impl FnMut(Instant) -> Instant) -> Instant {
    for _ in 0..20 {
        let deadline = clockevents::now() + Duration::from_millis(20);
        if try_once(deadline) < deadline {
            return deadline;
        }
    }
    panic!("no try took its timer back before the deadline in 20 tries");
}

fn a_timer_cancelled_from_another_cpu_never_runs(_: &Kernel) {
    let ran = Arc::new(AtomicBool::new(false));
    let deadline = before_its_deadline(|deadline| {
        ran.store(false, Ordering::Relaxed);
        let seen = ran.clone();
        let timer = Timer::at(1, deadline, move |_: &TimerEvent| seen.store(true, Ordering::Relaxed))
            .expect("armed on CPU 1");
        let cancelled = timer.cancel();
        let back = clockevents::now();
        if back < deadline {
            assert_eq!(cancelled, Cancelled::Pending, "a pending timer on CPU 1 is cancelled from CPU 0");
        }
        back
    });
    clockevents::sleep_until(deadline + Duration::from_millis(20)).unwrap();
    assert!(!ran.load(Ordering::Relaxed), "a timer cancelled from another CPU ran");
}

static POSTED_RAN_ON: AtomicU64 = AtomicU64::new(u64::MAX);

fn posted(e: &TimerEvent) {
    assert!(now_ns() >= e.deadline_ns, "a posted timer ran early");
    POSTED_RAN_ON.store(percpu::this_cpu().index as u64, Ordering::Relaxed);
}

fn post_from_callback(_: &TimerEvent) {
    // Interrupt context: a timer for CPU 1 is queued to it, not waited for.
    clockevents::post_on(1, now_ns() + MS, posted, 0).expect("posted to CPU 1");
}

fn a_timer_posted_from_a_callback_runs_on_its_cpu(_: &Kernel) {
    clockevents::arm_after(MS, post_from_callback, 0).unwrap();
    assert!(wait_for(|| POSTED_RAN_ON.load(Ordering::Relaxed) != u64::MAX), "the posted timer never ran");
    assert_eq!(POSTED_RAN_ON.load(Ordering::Relaxed), 1, "the posted timer ran on the wrong CPU");
}

fn dropping_a_handle_cancels_its_timer(_: &Kernel) {
    let ran = Arc::new(AtomicBool::new(false));
    for cpu in [0, 1] {
        let last = before_its_deadline(|deadline| {
            ran.store(false, Ordering::Relaxed);
            let seen = ran.clone();
            let timer = Timer::at(cpu, deadline, move |_: &TimerEvent| seen.store(true, Ordering::Relaxed))
                .expect("armed");
            drop(timer);
            clockevents::now()
        });
        clockevents::sleep_until(last + Duration::from_millis(10)).unwrap();
        assert!(!ran.load(Ordering::Relaxed), "a dropped handle's timer ran on CPU {cpu}");
    }
    let kept = Arc::new(AtomicBool::new(false));
    let seen = kept.clone();
    Timer::after(1, Duration::from_millis(10), move |_: &TimerEvent| seen.store(true, Ordering::Relaxed))
        .expect("armed")
        .detach();
    assert!(wait_for(|| kept.load(Ordering::Relaxed)), "a detached timer was cancelled");
}

static SELF_CANCEL_RUNS: AtomicU64 = AtomicU64::new(0);
static SELF_CANCEL_WITH_HANDLE: AtomicU64 = AtomicU64::new(0);

fn cancelling_a_timer_from_its_own_callback_says_it_is_running(_: &Kernel) {
    let handle: Arc<spin::Mutex<Option<Timer>>> = Arc::new(spin::Mutex::new(None));
    let inside = handle.clone();
    let ms = Duration::from_millis(1);
    // The handle is stored after arming, so under host noise the first expiries can come
    // before it: those runs find no handle and leave the timer armed. The first run that finds
    // it cancels, and from then on the timer must never run again.
    let timer = Timer::periodic(0, clockevents::now() + ms, ms, move |_: &TimerEvent| {
        SELF_CANCEL_RUNS.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = inside.lock().as_ref() {
            SELF_CANCEL_WITH_HANDLE.fetch_add(1, Ordering::Relaxed);
            assert_eq!(t.cancel(), Cancelled::Running, "its own callback is running");
        }
    })
    .expect("armed");
    *handle.lock() = Some(timer);
    assert!(
        wait_for(|| SELF_CANCEL_WITH_HANDLE.load(Ordering::Relaxed) > 0),
        "the periodic timer never ran with its handle stored"
    );
    let runs = SELF_CANCEL_RUNS.load(Ordering::Relaxed);
    clockevents::sleep_ns(10 * MS).unwrap();
    assert_eq!(SELF_CANCEL_WITH_HANDLE.load(Ordering::Relaxed), 1, "cancelled in its callback, it ran again");
    assert_eq!(SELF_CANCEL_RUNS.load(Ordering::Relaxed), runs, "cancelled in its callback, it ran again");
    let timer = handle.lock().take().expect("kept");
    assert_eq!(timer.cancel(), Cancelled::Inactive);
    assert_eq!(
        Timer::periodic(0, clockevents::now(), Duration::ZERO, |_: &TimerEvent| {}).err(),
        Some(kernel_tests::kernel_time::tick::ArmError::ZeroPeriod),
        "a zero period is refused"
    );
}
