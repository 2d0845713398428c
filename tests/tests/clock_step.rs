//! REALTIME stepped in the middle of the workload (`clock_step_test=SECONDS`), forwards and
//! back, with timers on REALTIME pending on every CPU (armed through their handles, and one
//! locally): each runs once, on its CPU, never before REALTIME reads its deadline (judged on
//! MONOTONIC with the test's own arithmetic); after a step forwards past them they run at once,
//! before the MONOTONIC instant they had been placed at (queued again: Linux's
//! `clock_was_set`), and REALTIME at the end reads the RTC's start plus the run plus the step.
#![no_std]
#![no_main]

use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::time::clock_step;
use kernel_tests::kernel::time::clocksource::clocks;
use kernel_tests::kernel::workload;

kernel_tests::qemu_test!(
    variants: b"
        forward: --smp 2 --cmdline 'clock_step_test=3600 duration_ms=200' --expect-report /clock_step/pulled_in>=1 --expect-report /clocks/realtime_ns>=1936782000000000000 -- -rtc base=2031-05-17T10:00:00
        back: --smp 4 --cmdline 'clock_step_test=-1 duration_ms=200' --expect-report /clock_step/step_ns=-1000000000 -- -rtc base=2031-05-17T10:00:00
        forward_global: --smp 4 --cmdline 'clock_step_test=2 duration_ms=200 noapictimer' --expect-report /broadcast=hpet2 --expect-report /clock_step/pulled_in>=1 -- -rtc base=2031-05-17T10:00:00
        back_icount: --smp 2 --cmdline 'clock_step_test=-1 duration_ms=100' -- -icount shift=0,sleep=off -rtc base=2031-05-17T10:00:00,clock=vm
    ",
    tests: [timers_on_realtime_follow_the_step],
);

fn timers_on_realtime_follow_the_step(k: &Kernel) {
    let seconds = k.options.clock_step_test_s.expect("every variant steps the clock");
    let wall_before = clocks().realtime.as_nanos();
    assert!(wall_before >= 1_936_778_400_000_000_000, "the variants start the RTC at 2031-05-17T10:00:00Z");
    workload::step_clock_midway(Some(seconds));
    let out = workload::run(k.options.duration_ms);
    kernel_tests::assert_workload_clean(&out);
    let r = clock_step::report().expect("the step ran halfway through the workload");
    assert_eq!(r.step_ns, seconds * 1_000_000_000, "the step as asked");
    let cpus = kernel_tests::kernel::arch::x86_64::smp::percpu::all().count() as u64;
    assert!(r.armed > 3 * cpus, "three probes on every CPU and one more: {r:?}");
    assert_eq!((r.fired, r.fired_twice, r.early, r.wrong_cpu), (r.armed, 0, 0, 0), "{r:?}");
    if seconds > 0 {
        // Every probe but the one past the step was passed by it: at least those the step
        // found still pending (a vCPU stalled for the whole span before the step would have
        // run them already) ran before their old place.
        assert!(r.pulled_in >= 1, "a step forwards ran none of the timers it passed at once: {r:?}");
    } else {
        assert_eq!(r.pulled_in, 0, "a step back pulled a timer in: {r:?}");
    }
}
