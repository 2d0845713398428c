//! A periodic timer over 1 000 periods under icount (deterministic time): every run is on the
//! deadline grid `first + k * period`, one per period, none early, so it does not drift. On a
//! per-CPU HPET comparator and on the LAPIC timer, on the boot CPU and on another.
#![no_std]
#![no_main]

extern crate alloc;

use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::arch::x86_64::smp::percpu;
use kernel_tests::kernel::time::clockevents::{self, Cancelled, Timer, TimerEvent};
use kernel_tests::kernel::time::clocksource::now_ns;
use kernel_tests::wait_for;

kernel_tests::qemu_test!(
    variants: b"
        hpet: --smp 2 --cmdline duration_ms=10 --expect-report /tick_devices/1/device=hpet1 -- -icount shift=0,sleep=off
        lapic: --smp 2 --cmdline 'duration_ms=10 clockevents=lapic' --expect-report /tick_devices/1/device=lapic1 -- -icount shift=0,sleep=off
    ",
    tests: [periodic_timer_runs_once_per_period_on_its_grid],
);

const PERIOD_NS: u64 = 100_000;
const PERIODS: u64 = 1_000;

static RUNS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
static OFF_GRID: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

fn periodic_timer_runs_once_per_period_on_its_grid(_: &Kernel) {
    for cpu in [0usize, 1] {
        let start = clockevents::now() + Duration::from_millis(1);
        let first = start.as_nanos();
        let timer = Timer::periodic(cpu, start, Duration::from_nanos(PERIOD_NS), move |e: &TimerEvent| {
            assert_eq!(percpu::this_cpu().index, cpu);
            let k = RUNS[cpu].fetch_add(1, Ordering::Relaxed);
            assert!(now_ns() >= e.deadline_ns, "period {k} ran early");
            if e.deadline_ns != first + k * PERIOD_NS {
                OFF_GRID[cpu].fetch_add(1, Ordering::Relaxed);
            }
        })
        .expect("armed");
        assert!(
            wait_for(|| RUNS[cpu].load(Ordering::Relaxed) >= PERIODS),
            "CPU {cpu}: {} of {PERIODS} periods ran",
            RUNS[cpu].load(Ordering::Relaxed)
        );
        assert_eq!(timer.cancel(), Cancelled::Pending, "a periodic timer stays pending between runs");
        let cancelled_by = now_ns();
        let runs = RUNS[cpu].load(Ordering::Relaxed);
        assert_eq!(
            OFF_GRID[cpu].load(Ordering::Relaxed),
            0,
            "CPU {cpu}: runs left the grid (drift or skipped periods)"
        );
        // Each run is at its own grid point, none early: never more runs than points due by the
        // time the cancel returned (a host stall may leave fewer, which the grid check covers).
        let due = (cancelled_by - first) / PERIOD_NS + 1;
        assert!(runs <= due, "CPU {cpu}: {runs} runs for {due} grid points");
        clockevents::sleep_ns(5 * PERIOD_NS).unwrap();
        assert_eq!(RUNS[cpu].load(Ordering::Relaxed), runs, "CPU {cpu}: ran after its cancel");
    }
}
