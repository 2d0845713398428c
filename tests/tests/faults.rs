//! The fault matrix's malformed HPET tables: the runner's `--hpet-table FAULT` boots q35 without
//! QEMU's HPET and injects a table of ours (built by the kernel's ACPI table builder, see
//! `boot/src/hpet_table.rs`). Each table is rejected with its reason, logged once; the kernel
//! calibrates against the ACPI PM timer, runs on the LAPIC timer, and reports `degraded`,
//! never a panic or a hang. (A bad checksum cannot be injected, QEMU recomputes it: host tests cover it.)
//! A main counter that does not count cannot come from a table either: `hpet_counter_stopped`
//! leaves QEMU's halted at the probe, and the counting check must reject it the same way.
#![no_std]
#![no_main]

use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::arch::x86_64::calibrate::Reference;
use kernel_tests::kernel::time::clockevents;
use kernel_tests::kernel::time::clocksource::now_ns;

kernel_tests::qemu_test!(
    variants: b"
        base_zero: --hpet-table base-zero --cmdline duration_ms=100 --expect-report /hpet=null --expect degraded --expect-report /tick_devices/0/device=lapic0 --expect-log 'HPET table 0: rejected: HPET base address is 0; no HPET'
        truncated: --hpet-table truncated --cmdline duration_ms=100 --expect-report /hpet=null --expect degraded --expect-report /tick_devices/0/device=lapic0 --expect-log 'HPET table 0: rejected: HPET table truncated: 44 bytes, at least 56 needed; no HPET'
        base_in_ram: --hpet-table base-in-ram --cmdline duration_ms=100 --expect-report /hpet=null --expect degraded --expect-report /tick_devices/0/device=lapic0 --expect-log 'HPET table 0: block #0 at 0x100000, 3 comparators, minimum tick 128: rejected: cannot map its registers: MMIO range 0x100000+0x1000 overlaps RAM 0x100000..'
        base_in_kernel_image: --hpet-table base-in-ram@0x1000000 --cmdline duration_ms=100 --expect-report /hpet=null --expect degraded --expect-report /tick_devices/0/device=lapic0 --expect-log 'HPET table 0: block #0 at 0x1000000, 3 comparators, minimum tick 128: rejected: cannot map its registers: MMIO range 0x1000000+0x1000 overlaps RAM 0x1000000..'
        base_unbacked: --hpet-table base-unbacked --cmdline duration_ms=100 --expect-report /hpet=null --expect degraded --expect-report /tick_devices/0/device=lapic0 --expect-log 'HPET table 0: block #0 at 0xbff00000, 3 comparators, minimum tick 128: rejected: its capabilities read all ones (no device decodes the address)'
        period_zero: --hpet-table period-zero --cmdline duration_ms=100 --expect-report /hpet=null --expect degraded --expect-report /tick_devices/0/device=lapic0 --expect-log 'HPET table 0: block #0 at 0xfec00000, 3 comparators, minimum tick 128: rejected: its counter period is 0 fs'
        period_too_long: --hpet-table period-too-long --cmdline duration_ms=100 --expect-report /hpet=null --expect degraded --expect-report /tick_devices/0/device=lapic0 --expect-log \"HPET table 0: block #0 at 0xfeb85400, 3 comparators, minimum tick 128: rejected: its counter period 2147505716 fs exceeds the specification's 100000000 fs (100 ns)\"
        counter_stopped: --cmdline 'hpet_counter_stopped duration_ms=100' --expect-report /hpet=null --expect degraded --expect-report /tick_devices/0/device=lapic0 --expect-report /lapic/calibrated_against=acpi_pm --expect-log 'at 0xfed00000, 3 comparators, minimum tick 0: rejected: its main counter stayed at 0x0 for 100 us: it does not count'
        counter_stopped_smp2: --smp 2 --cmdline 'hpet_counter_stopped duration_ms=100' --expect-report /hpet=null --expect-report /tick_devices/1/device=lapic1 --expect degraded
    ",
    tests: [
        hpet_is_rejected_once_as_a_fallback,
        lapic_timer_is_calibrated_against_the_pm_timer,
        every_cpu_ticks_on_its_lapic_timer,
        sleep_of_one_ms_returns_after_its_deadline,
    ],
);

fn hpet_is_rejected_once_as_a_fallback(k: &Kernel) {
    assert!(k.platform.hpet.is_none(), "the malformed HPET table's device was taken into use");
    let rejections = k.platform.fallbacks.iter().filter(|f| f.starts_with("HPET")).count();
    assert_eq!(rejections, 1, "expected one HPET fallback, got {:?}", k.platform.fallbacks);
}

fn lapic_timer_is_calibrated_against_the_pm_timer(k: &Kernel) {
    let c = k.platform.calibration.as_ref().expect("the LAPIC timer was not calibrated");
    assert!(matches!(c.reference, Reference::PmTimer), "calibrated against {}", c.reference);
    assert!(c.lapic_timer_hz > 0 && c.tsc_hz > 0);
}

fn every_cpu_ticks_on_its_lapic_timer(_: &Kernel) {
    let devices = clockevents::tick_devices();
    assert!(!devices.is_empty(), "no CPU has a tick device");
    for d in &devices {
        let name = d.device.as_deref().unwrap_or("none");
        assert!(name.starts_with("lapic"), "CPU {} ticks on {name}, not its LAPIC timer", d.cpu);
        assert!(!d.via_broadcast, "CPU {} is served by broadcast without an HPET", d.cpu);
    }
}

fn sleep_of_one_ms_returns_after_its_deadline(_: &Kernel) {
    const ONE_MS: u64 = 1_000_000;
    let start = now_ns();
    clockevents::sleep_ns(ONE_MS).expect("arming a 1 ms sleep on the LAPIC timer");
    let slept = now_ns() - start;
    assert!(slept >= ONE_MS, "a 1 ms sleep returned after {slept} ns");
}
