//! The async sleep (`kernel_time::sleep::Sleep` on this kernel's timers) under a minimal
//! executor on two CPUs: one task, polled first on CPU 0 and then on CPU 1, sleeps twice; each
//! sleep's timer wakes the task's waker from the CPU it was armed on; every sleep ends at or
//! after its deadline on a clock the sleep did not read (the TSC); a sleep dropped before its
//! deadline cancels its timer, whose callback then never wakes anyone.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::task::Wake;
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use core::task::{Context, Poll, Waker};
use core::time::Duration;
use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::arch::x86_64::smp::{self, percpu};
use kernel_tests::kernel::arch::x86_64::tsc;
use kernel_tests::kernel::time::clocksource::now_ns;
use kernel_tests::kernel::time::sleep::{sleep_for, sleep_until};
use kernel_tests::wait_for;

kernel_tests::qemu_test!(
    variants: b"
        percpu_hpet: --smp 2 --cmdline duration_ms=50 --expect-report /tick_devices/1/device=hpet1
        broadcast: --smp 2 --cmdline 'duration_ms=50 clockevents=global' --expect-report /tick_devices/1/via_broadcast=true
        icount: --smp 2 --cmdline duration_ms=50 -- -icount shift=0,sleep=off
    ",
    tests: [a_task_sleeps_across_two_cpus_and_is_woken_by_its_timers, a_dropped_sleep_never_wakes],
);

/// The task's body: its TSC reads and its first deadline.
type Body = Pin<Box<dyn Future<Output = [u64; 4]> + Send>>;

/// A one-task executor: the task's future, and how many times its waker was woken.
struct Task {
    future: spin::Mutex<Option<Body>>,
    wakes: AtomicU64,
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::Release);
    }
}

/// Polls the task once on this CPU: its output once it completed.
fn poll(task: &Arc<Task>) -> Option<[u64; 4]> {
    let waker = Waker::from(task.clone());
    let mut cx = Context::from_waker(&waker);
    let mut slot = task.future.lock();
    let out = slot.as_mut().expect("not polled after it completed").as_mut().poll(&mut cx);
    match out {
        Poll::Ready(v) => {
            *slot = None;
            Some(v)
        }
        Poll::Pending => None,
    }
}

/// The CPU each poll of the task ran on, in order.
static POLLED_ON: spin::Mutex<alloc::vec::Vec<usize>> = spin::Mutex::new(alloc::vec::Vec::new());

fn a_task_sleeps_across_two_cpus_and_is_woken_by_its_timers(_: &Kernel) {
    assert!(percpu::all().count() >= 2, "the variants give two CPUs");
    let ns_per_tsc = |cycles: u64| cycles as u128 * 1_000_000_000 / tsc::frequency_hz() as u128;
    // The task: two sleeps, each bracketed by TSC reads (the oracle) and clock reads.
    let future = async move {
        POLLED_ON.lock().push(percpu::this_cpu().index);
        let t0 = tsc::read();
        let d1 = now_ns() + 2_000_000;
        sleep_until(kernel_time::instant::Instant::from_nanos(d1)).await.expect("armed");
        let t1 = tsc::read();
        POLLED_ON.lock().push(percpu::this_cpu().index);
        sleep_for(Duration::from_millis(1)).await.expect("armed");
        let t2 = tsc::read();
        [t0, t1, t2, d1]
    };
    let task = Arc::new(Task { future: spin::Mutex::new(Some(Box::pin(future))), wakes: AtomicU64::new(0) });
    // First poll on CPU 0: arms the first sleep's timer here.
    assert!(poll(&task).is_none(), "the first poll sleeps");
    assert!(
        wait_for(|| task.wakes.load(Ordering::Acquire) == 1),
        "the first sleep's timer never woke the task"
    );
    // Second poll on CPU 1: the first sleep completes there, the second is armed on CPU 1.
    let t = task.clone();
    let second = smp::call_on(1, move || poll(&t).is_some()).expect("CPU 1 polls");
    assert!(!second, "the second sleep is pending");
    assert!(
        wait_for(|| task.wakes.load(Ordering::Acquire) == 2),
        "the second sleep's timer never woke the task"
    );
    // Third poll back on CPU 0: done.
    let [t0, t1, t2, _] = poll(&task).expect("both sleeps are over");
    assert_eq!(*POLLED_ON.lock(), [0, 1], "the task's body ran on CPU 0, then on CPU 1");
    assert!(
        ns_per_tsc(t1 - t0) >= 2_000_000 - 200_000,
        "the first sleep took {} ns of TSC time",
        ns_per_tsc(t1 - t0)
    );
    assert!(
        ns_per_tsc(t2 - t1) >= 1_000_000 - 200_000,
        "the second took {} ns of TSC time",
        ns_per_tsc(t2 - t1)
    );
    assert_eq!(task.wakes.load(Ordering::Acquire), 2, "one wake per sleep");
}

static STRAY: AtomicUsize = AtomicUsize::new(0);

struct Counting;
impl Wake for Counting {
    fn wake(self: Arc<Self>) {
        STRAY.fetch_add(1, Ordering::Relaxed);
    }
}

fn a_dropped_sleep_never_wakes(_: &Kernel) {
    let waker = Waker::from(Arc::new(Counting));
    let mut cx = Context::from_waker(&waker);
    let mut sleep = sleep_for(Duration::from_millis(2));
    let deadline = sleep.deadline().as_nanos();
    assert!(Pin::new(&mut sleep).poll(&mut cx).is_pending());
    drop(sleep); // cancels its timer
    let mut after = sleep_until(kernel_time::instant::Instant::from_nanos(deadline + 3_000_000));
    while Pin::new(&mut after).poll(&mut Context::from_waker(Waker::noop())).is_pending() {
        core::hint::spin_loop();
    }
    assert_eq!(STRAY.load(Ordering::Relaxed), 0, "a cancelled sleep's timer woke its task");
}
