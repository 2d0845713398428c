//! Suspend and resume of timekeeping (`suspend_test=MS`) in the middle of the workload, with
//! timers pending on every CPU: every pending timer fires once after the resume, none early,
//! none lost; the HPET's routes are rewritten (IOAPIC, FSB, legacy) and every CPU's device comes
//! back, in every arrangement (per-CPU HPET, partial + global broadcast, legacy, FSB, deep
//! idle with LAPIC timers handing over). MONOTONIC stops for the halt and BOOTTIME counts it.
#![no_std]
#![no_main]

use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::time::clockevents;
use kernel_tests::kernel::workload;

kernel_tests::qemu_test!(
    variants: b"
        percpu: --smp 2 --cmdline 'suspend_test=100 duration_ms=300' --expect-report /tick_devices/1/device=hpet1 --expect-report /suspend/count=1
        partial_global: --smp 4 --cmdline 'suspend_test=100 duration_ms=300 noapictimer' --expect-report /broadcast=hpet2 --expect-report /tick_devices/3/via_broadcast=true --expect-report /suspend/count=1
        legacy: --smp 2 --cmdline 'suspend_test=100 duration_ms=300' --expect-report /hpet/comparators/0/delivery=legacy --expect-report /suspend/count=1 -- -machine pc,hpet=on
        fsb: --smp 2 --cmdline 'suspend_test=100 duration_ms=300' --expect-report /hpet/comparators/1/delivery=fsb --expect-report /suspend/count=1 -- -global hpet.msi=on
        pit_broadcast: --smp 2 --cmdline 'suspend_test=100 duration_ms=300 noapictimer' --expect-report /broadcast=pit --expect-report /tick_devices/1/via_broadcast=true --expect-report /suspend/count=1 -- -machine q35,hpet=off
        deep_idle: --smp 2 --cmdline 'suspend_test=100 duration_ms=300 idle=deep lapic_stops_in_idle clockevents=broadcast' --expect-report /broadcast=hpet0 --expect-report /suspend/count=1
    ",
    tests: [every_pending_timer_fires_once_after_the_resume],
);

fn every_pending_timer_fires_once_after_the_resume(k: &Kernel) {
    let out = workload::run_with_suspend(k.options.duration_ms, k.options.suspend_test_ms, k.platform.hpet);
    let s = clockevents::suspend::report().expect("the suspend test ran");
    assert_eq!(s.count, 1);
    assert!(s.timers_resumed > 0, "no timer was pending across the suspend: it tested nothing");
    assert!(s.suspended_ns >= 100_000_000, "suspended {} ns, less than asked", s.suspended_ns);
    // MONOTONIC stopped for the halt, as Linux's: BOOTTIME counted it, and nothing else.
    assert!(s.asleep_ns >= 100_000_000 && s.asleep_ns <= s.suspended_ns, "{s:?}");
    let c = kernel_tests::kernel::time::clocksource::clocks();
    assert_eq!(
        c.boottime.as_nanos() - c.monotonic.as_nanos(),
        s.asleep_ns,
        "BOOTTIME - MONOTONIC after {s:?}"
    );
    kernel_tests::assert_pending_timers_fire_once_after_the_suspend(&out);
    kernel_tests::assert_workload_clean(&out);
    for t in clockevents::tick_devices() {
        assert!(t.device.is_some(), "CPU {} lost its tick device in the suspend", t.cpu);
    }
}
