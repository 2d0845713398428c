//! Suspend and resume under icount (deterministic time): besides firing every pending timer
//! once and none early, no timer is later (on MONOTONIC, which stops for the halt) than the
//! time its CPU's tick was suspended less the halt, plus the interrupt path's few microseconds
//! of instructions.
#![no_std]
#![no_main]

use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::time::clockevents;
use kernel_tests::kernel::workload;

kernel_tests::qemu_test!(
    variants: b"
        percpu: --smp 2 --cmdline 'suspend_test=20 duration_ms=60' --expect-report /suspend/count=1 -- -icount shift=0,sleep=off
        lapic_broadcast: --smp 2 --cmdline 'suspend_test=20 duration_ms=60 clockevents=broadcast' --expect-report /broadcast=hpet0 -- -icount shift=0,sleep=off
    ",
    tests: [no_timer_is_later_than_the_suspend],
);

/// Slack for the way back into the timers after the resume, in instructions (ns under icount).
const PATH_SLACK_NS: u64 = 100_000;

fn no_timer_is_later_than_the_suspend(k: &Kernel) {
    let out = workload::run_with_suspend(k.options.duration_ms, k.options.suspend_test_ms, k.platform.hpet);
    let s = clockevents::suspend::report().expect("the suspend test ran");
    assert!(s.timers_resumed > 0);
    kernel_tests::assert_pending_timers_fire_once_after_the_suspend(&out);
    kernel_tests::assert_workload_clean(&out);
    assert!(s.asleep_ns >= 20_000_000, "{s:?}");
    assert!(
        out.latency.max <= s.suspended_ns - s.asleep_ns + PATH_SLACK_NS,
        "a timer was {} ns late on MONOTONIC; ticks were suspended {} ns, {} of them halted",
        out.latency.max,
        s.suspended_ns,
        s.asleep_ns
    );
}
