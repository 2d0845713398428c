//! REALTIME stepped in the middle of the workload (`clock_step_test=SECONDS`), forwards and
//! back, with timers on REALTIME pending on every CPU (armed through their handles, and one
//! locally): each runs once, on its CPU, never before REALTIME reads its deadline (judged on
//! MONOTONIC with the test's own arithmetic); after a step forwards past them they run at once,
//! before the MONOTONIC instant they had been placed at (queued again: Linux's
//! `clock_was_set`), and REALTIME at the end reads the RTC's start plus the run plus the step.
#![no_std]
#![no_main]

extern crate alloc;

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
    tests: [timers_on_each_clock_run_on_every_cpu, timers_on_realtime_follow_the_step],
);

/// Before any step: a timer on REALTIME and one on BOOTTIME, 20 ms ahead, on every CPU (the
/// APs came online after REALTIME was set from the RTC): each runs once, on its CPU by the APIC
/// id the hardware reports, and not early on a counter that is not the clocksource's (the
/// workload's oracle, stamped before the clocks were read).
fn timers_on_each_clock_run_on_every_cpu(_: &Kernel) {
    use core::sync::atomic::{AtomicU64, Ordering};
    use kernel_tests::kernel::time::clockevents::Timer;
    use kernel_tests::kernel::time::clocksource::now_ns;
    use kernel_tests::kernel::workload::oracle::{self, Judgement};
    use kernel_time::clocks::{BootInstant, ClockDeadline, WallTime};
    static RAN_AT: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];
    static RAN_ON_APIC: [AtomicU64; 16] = [const { AtomicU64::new(u64::MAX) }; 16];
    static EARLY: AtomicU64 = AtomicU64::new(0);
    oracle::set_counters(kernel_tests::kernel::time::clocksource::raw_counters());
    let cpus: alloc::vec::Vec<usize> =
        kernel_tests::kernel::arch::x86_64::smp::percpu::all().map(|c| c.index).take(8).collect();
    let ahead = 20_000_000;
    let apic =
        |cpu: usize| kernel_tests::kernel::arch::x86_64::smp::percpu::cpu(cpu).expect("online").apic_id;
    // Stamped before the clocks are read: each deadline is at least `ahead` after its stamp.
    let stamps: alloc::vec::Vec<_> = cpus.iter().map(|&cpu| oracle::arm_stamp(ahead, apic(cpu)).1).collect();
    let c = clocks();
    let mut timers = alloc::vec::Vec::new();
    for (i, &cpu) in cpus.iter().enumerate() {
        let at = [
            ClockDeadline::Realtime(WallTime::from_nanos(c.realtime.as_nanos() + ahead)),
            ClockDeadline::Boottime(BootInstant::from_nanos(c.boottime.as_nanos() + ahead)),
        ];
        for (k, at) in at.into_iter().enumerate() {
            let slot = 2 * i + k;
            let stamp = stamps[i];
            let t = Timer::on_clock(cpu, at, move |_| {
                if matches!(oracle::judge(&stamp), Judgement::Early { .. }) {
                    EARLY.fetch_add(1, Ordering::Relaxed);
                }
                RAN_ON_APIC[slot].store(u64::from(oracle::apic_id_here()), Ordering::Release);
                RAN_AT[slot].store(now_ns(), Ordering::Release);
            });
            timers.push(t.expect("armed"));
        }
    }
    let n = 2 * cpus.len();
    let limit = now_ns() + 5_000_000_000;
    while (0..n).any(|s| RAN_AT[s].load(Ordering::Acquire) == 0) && now_ns() < limit {
        core::hint::spin_loop();
    }
    for (i, &cpu) in cpus.iter().enumerate() {
        for k in 0..2 {
            let at = RAN_AT[2 * i + k].load(Ordering::Acquire);
            let clock = ["REALTIME", "BOOTTIME"][k];
            assert!(at != 0, "the timer on {clock} on CPU {cpu} never ran (placed with the wrong offsets?)");
            assert!(at >= c.monotonic.as_nanos() + ahead, "the timer on {clock} on CPU {cpu} ran early");
            let on = RAN_ON_APIC[2 * i + k].load(Ordering::Acquire);
            assert_eq!(on, u64::from(apic(cpu)), "{clock} on CPU {cpu} ran on APIC id {on}");
        }
    }
    assert_eq!(EARLY.load(Ordering::Relaxed), 0, "early on a counter that is not the clocksource's");
    drop(timers);
}

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
