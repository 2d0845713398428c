//! Clocksources: which counter is behind `now_ns` on each machine shape (`-cpu max` and
//! `qemu64`, TCG and icount), a forced choice and what happens when it cannot be honoured, a
//! TSC skewed on one CPU (`tsc_skew`: the sync check catches it, the kernel leaves the TSC for
//! the HPET), a TSC whose rate changes (`tsc_rate_ppm`: the watchdog catches it), the refined
//! TSC and LAPIC timer frequencies (the latter measured directly, or through the TSC while the
//! LAPIC timers are in use, with the workload's timers pending as it is applied), and the clock's promises on every CPU: it never goes back, it agrees across CPUs
//! (a reading taken after another CPU's is not smaller), and the timer workload on it fires
//! every timer once, never early; the housekeeping runs as CPU 0's deferred work, outside the
//! timer interrupt (`/housekeeping/in_hard_irq=0`), and a refinement reaches every CPU as its own.
#![no_std]
#![no_main]

extern crate alloc;

use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::arch::x86_64::smp::{self, percpu};
use kernel_tests::kernel::time::clocksource::now_ns;
use kernel_tests::kernel::workload;

kernel_tests::qemu_test!(
    variants: b"
        default: --smp 2 --cmdline duration_ms=1200 --expect-report /clocksource=hpet --expect-report /clocksources#=3 --expect-report /clocksources/0/name=tsc --expect-report /clocksources/0/rating=100 --expect-report /clocksources/0/stable=true --expect-report /clocksources/1/name=hpet --expect-report /clocksources/1/hz=100000000 --expect-report /clocksources/2/name=acpi_pm --expect-report /clocksources/2/hz=3579545 --expect-report /clocksources/2/rating=200 --expect-report /clocksource_switches/0/from=tsc --expect-report /clocksource_switches/0/to=hpet --expect-report '/clocksource_switches/0/reason=hpet (rating 250) rated above tsc (rating 100)' --expect-report /tsc/invariant=false --expect-report /tsc/warp_ns=0 --expect-report /tsc/watchdog_checks>=1 --expect-log 'tsc: not invariant' --expect-log 'CPU 1 TSC sync check against CPU 0: largest warp 0 ns' --expect-report /housekeeping/runs>=2 --expect-report /housekeeping/in_hard_irq=0 --expect-report /cpus/0/deferred_runs>=2
        qemu64: --smp 2 --cmdline duration_ms=200 --expect-report /clocksource=hpet --expect-report /tsc/invariant=false --expect-log 'RDTSCP no' -- -cpu qemu64
        forced_tsc: --smp 2 --cmdline 'duration_ms=200 clocksource=tsc' --expect-report /clocksource=tsc --expect-report /clocksource_switches#=0
        forced_absent: --smp 2 --cmdline 'duration_ms=200 clocksource=hpet' --expect-report /clocksource=acpi_pm --expect-report /clocksources#=2 --expect degraded --expect-log 'clocksource=hpet: this machine has no hpet; using acpi_pm' -- -machine q35,hpet=off
        forced_acpi_pm: --smp 2 --cmdline 'duration_ms=1200 clocksource=acpi_pm' --expect-report /clocksource=acpi_pm --expect-report /clocksource_switches/0/to=acpi_pm --expect-report /clocksource_switches/0/reason=clocksource=acpi_pm --expect-report /tsc/watchdog_checks>=1
        hpet_off: --smp 2 --cmdline duration_ms=1200 --expect-report /hpet=null --expect-report /clocksource=acpi_pm --expect-report /clocksources#=2 --expect-report /tsc/watchdog_checks>=1 --expect-log 'FADT: ACPI PM timer at I/O port 0x608, 24-bit' --expect-report /housekeeping/runs>=2 --expect-report /housekeeping/in_hard_irq=0 --expect-report /cpus/0/deferred_runs>=2 -- -machine q35,hpet=off
        hpet_off_skew: --smp 2 --cmdline 'duration_ms=300 clocksource=tsc tsc_skew=1:20000000' --expect-report /clocksource=acpi_pm --expect-report /clocksources/0/stable=false --expect-report /clocksource_switches/0/to=acpi_pm --expect-report /lost_events=0 --expect-report /early_events=0 --expect degraded -- -machine q35,hpet=off
        pc: --smp 2 --cmdline duration_ms=200 --expect-report /clocksource=hpet --expect-report /clocksources/2/name=acpi_pm -- -machine pc,hpet=on
        icount_hpet_off: --smp 2 --cmdline duration_ms=1200 --expect-report /clocksource=acpi_pm --expect-report /tsc/watchdog_checks>=1 -- -machine q35,hpet=off -icount shift=0,sleep=off
        skew_smp2: --smp 2 --cmdline 'duration_ms=300 clocksource=tsc tsc_skew=1:20000000' --expect-report /clocksource=hpet --expect-report /clocksources/0/stable=false --expect-report /clocksource_switches/0/from=tsc --expect-report /clocksource_switches/0/to=hpet --expect-report /tsc/warp_ns>=1000000 --expect-report /lost_events=0 --expect-report /early_events=0 --expect degraded --expect-log 'added in software' --expect-log 'TSCs unsynchronized: CPU 1 is'
        skew_smp4: --smp 4 --cmdline 'duration_ms=300 clocksource=tsc tsc_skew=2:20000000' --expect-report /clocksource=hpet --expect-report /clocksources/0/stable=false --expect-report /tsc/warp_ns>=1000000 --expect-report /lost_events=0 --expect-report /early_events=0 --expect degraded --expect-log 'TSCs unsynchronized: CPU 2 is'
        skew_default: --smp 2 --cmdline 'duration_ms=300 tsc_skew=1:20000000' --expect-report /clocksource=hpet --expect-report /clocksources/0/stable=false --expect degraded --expect-log 'switched clocksource tsc -> hpet at'
        skew_icount: --smp 2 --cmdline 'duration_ms=200 clocksource=tsc tsc_skew=1:100000' --expect-report /clocksource=hpet --expect-report /tsc/warp_ns>=50000 --expect-report /lost_events=0 --expect-report /early_events=0 --expect degraded -- -icount shift=0,sleep=off
        rate_fault: --smp 2 --cmdline 'duration_ms=1500 clocksource=tsc tsc_rate_ppm=20000' --expect-report /clocksource=hpet --expect-report /clocksources/0/name=tsc --expect-report /clocksources/0/stable=false --expect-report /clocksource_switches#=1 --expect-report /clocksource_switches/0/from=tsc --expect-report /clocksource_switches/0/to=hpet --expect-report /clocksource_switches/0/at_ns>=1 --expect-report /tsc/warp_ns=0 --expect-report /lost_events=0 --expect-report /early_events=0 --expect-report /fallbacks#=1 --expect degraded --expect-log 'runs 20000 ppm off its calibrated rate' --expect-log 'tsc: marked unstable: watchdog: over' --expect-log 'switched clocksource tsc -> hpet at' --expect-log 'tsc unstable: watchdog: over'
        icount: --smp 2 --cmdline duration_ms=2500 --expect-report /clocksource=hpet --expect-report /tsc/warp_ns=0 --expect-report /tsc/watchdog_checks>=1 --expect-report /tsc/refined_hz>=1 --expect-report /tsc/calibration_ppb<=2000 --expect-report /tsc/calibration_ppb>=-2000 --expect-log 'refined against hpet over' --expect-report /lapic/refined_by=lapic --expect-report /lapic/refined_hz>=62499990 --expect-report /lapic/refined_hz<=62500010 --expect-log 'measured on CPU 0' --expect-report /housekeeping/runs>=2 --expect-report /housekeeping/in_hard_irq=0 --expect-report /cpus/0/deferred_runs>=2 -- -icount shift=0,sleep=off
        lapic_refined_tcg: --smp 2 --cmdline duration_ms=2500 --expect-report /lapic/refined_by=lapic --expect-report /lapic/refined_hz>=1 --expect-report /lapic/calibrated_hz>=1 --expect-log 'measured on CPU 0'
        lapic_in_use: --smp 2 --cmdline 'duration_ms=2500 clockevents=lapic' --expect-report /tick_devices/0/device=lapic0 --expect-report /lapic/refined_by=tsc --expect-report /lapic/refined_hz>=1 --expect-report /lost_events=0 --expect-report /early_events=0 --expect-log 'through the TSC, refined against hpet' --expect-report /housekeeping/runs>=2 --expect-report /housekeeping/in_hard_irq=0 --expect-report /cpus/0/deferred_runs>=2 --expect-report /cpus/1/deferred_runs>=1
    ",
    tests: [
        clock_never_goes_back_on_any_cpu,
        clock_agrees_across_cpus,
        workload_fires_every_timer_once_never_early,
    ],
);

fn monotonic_here(_: u64) -> u64 {
    let mut last = now_ns();
    for _ in 0..10_000 {
        let t = now_ns();
        assert!(t >= last, "CPU {}: the clock went back from {last} to {t}", percpu::this_cpu().index);
        last = t;
    }
    last
}

fn clock_never_goes_back_on_any_cpu(_: &Kernel) {
    for cpu in percpu::all() {
        smp::call_on(cpu.index, || monotonic_here(0)).expect("the CPU runs the call");
    }
}

/// Causality: a reading on another CPU, taken after ours (it is asked for after it), is not
/// smaller, and ours after its answer is not smaller than it.
fn clock_agrees_across_cpus(_: &Kernel) {
    for cpu in percpu::all() {
        for _ in 0..100 {
            let before = now_ns();
            let there = smp::call_on(cpu.index, now_ns).expect("the CPU runs the call");
            let after = now_ns();
            assert!(before <= there, "CPU {} read {there}, before CPU 0's earlier {before}", cpu.index);
            assert!(there <= after, "CPU {} read {there}, after CPU 0's later {after}", cpu.index);
        }
    }
}

fn workload_fires_every_timer_once_never_early(k: &Kernel) {
    let out = workload::run(k.options.duration_ms);
    kernel_tests::assert_workload_clean(&out);
}
