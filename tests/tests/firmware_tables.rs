//! The fault matrix's malformed MADT and FADT (`--madt-table FAULT`, `--fadt-table FAULT`: QEMU
//! always supplies its own tables, so the runner hands the fault over as a kernel option and the
//! kernel replaces the table it read by a copy with the fault, saying so). Each is rejected or
//! repaired with its reason, logged once, and the kernel boots on what is left: every CPU has a
//! tick device and the workload loses nothing, never a panic or a hang.
#![no_std]
#![no_main]

use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::time::clockevents;
use kernel_tests::kernel::workload;

kernel_tests::qemu_test!(
    variants: b"
        ioapic_at_zero: --smp 2 --madt-table ioapic-at-zero --cmdline duration_ms=100 --expect degraded --expect-report /ioapics#=0 --expect-report /tick_devices/1/device=lapic1 --expect-log 'IOAPIC 0 at 0x0 skipped: the MADT gives it address 0'
        ioapic_over_hpet: --smp 2 --madt-table ioapic-over-hpet --cmdline duration_ms=100 --expect degraded --expect-report /ioapics#=0 --expect-log 'IOAPIC 0 at 0xfed00000 skipped: its registers would overlap the HPET block at 0xfed00000'
        gsi_overlap: --smp 2 --madt-table gsi-overlap --cmdline duration_ms=100 --expect degraded --expect-report /ioapics#=1 --expect-report /tick_devices/1/device=hpet1 --expect-log 'IOAPIC 1 at 0xfec01000 skipped: its first GSI 0 is served by IOAPIC 0 already'
        override_unknown_gsi: --smp 2 --madt-table override-unknown-gsi --cmdline duration_ms=100 --expect degraded --expect-report /tick_devices/0/device=hpet0 --expect-log 'the override of ISA IRQ 3 to GSI 200 is ignored: no IOAPIC serves GSI 200'
        duplicate_processor: --smp 2 --madt-table duplicate-processor --cmdline duration_ms=100 --expect degraded --expect-report /cpus_online=2 --expect-log 'APIC id 0 is listed twice: the first entry is used'
        x2apic_id_invalid: --smp 2 --madt-table x2apic-id-invalid --cmdline duration_ms=100 --expect degraded --expect-report /cpus_online=2 --expect-log 'has the invalid x2APIC id 0xffffffff'
        madt_truncated: --smp 2 --madt-table truncated --cmdline duration_ms=100 --expect degraded --expect-report /cpus_online=2 --expect-report /ioapics#=1 --expect-log \"the MADT's entries before it are used\"
        no_ioapic: --smp 2 --madt-table no-ioapic --cmdline duration_ms=100 --expect degraded --expect-report /ioapics#=0 --expect-report /tick_devices/0/device=lapic0 --expect-report /broadcast=pit --expect-log 'no usable IOAPIC'
        no_ioapic_hpet_off_pit: --smp 2 --madt-table no-ioapic --cmdline 'duration_ms=100 noapictimer' --expect degraded --expect-report /ioapics#=0 --expect-report /tick_devices/0/device=pit --expect-report /tick_devices/1/device=pit --expect-report /cpus/0/interrupts/0x20>=20 --expect-log 'IRQ0 through the 8259 (no IOAPIC serves GSI 2: virtual-wire mode, LINT0 as ExtINT) -> CPU 0 vector 0x20' -- -machine q35,hpet=off
        pm_timer_port_zero: --fadt-table pm-timer-port-zero --cmdline duration_ms=100 --expect-report /clocksources#=2 --expect-log 'no ACPI PM timer: the FADT describes no power management timer'
        pm_timer_width_wrong: --fadt-table pm-timer-width-wrong --cmdline duration_ms=100 --expect degraded --expect-report /clocksources#=2 --expect-log \"ACPI PM timer not used: the FADT's PM_TMR_LEN is 3, not 4\"
        pm1a_cnt_zero: --fadt-table pm1a-cnt-zero --cmdline duration_ms=100 --expect degraded --expect-log 'the FADT has no PM1a control block (PM1a_CNT_BLK is 0): no sleep states (S3)'
        firmware_ctrl_zero: --fadt-table firmware-ctrl-zero --cmdline duration_ms=100 --expect degraded --expect-log 'the FADT names no FACS (FIRMWARE_CTRL is 0): no sleep states (S3)'
        century_out_of_range: --fadt-table century-out-of-range --cmdline duration_ms=100 --expect-log 'FADT: CENTURY names CMOS byte 0x90, which is not CMOS RAM: ignored'
        fadt_truncated: --fadt-table truncated --cmdline duration_ms=100 --expect degraded --expect-report /clocksources#=2 --expect-log 'ACPI PM timer not used: FACP table truncated: 100 bytes, at least 116 needed'
    ",
    tests: [the_kernel_runs_on_what_is_left],
);

fn the_kernel_runs_on_what_is_left(k: &Kernel) {
    let injected = (k.options.table_faults.madt.is_some(), k.options.table_faults.fadt.is_some());
    assert_ne!(injected, (false, false), "every variant injects a fault into the MADT or the FADT");
    let out = workload::run(k.options.duration_ms);
    kernel_tests::assert_workload_clean(&out);
    for t in clockevents::tick_devices() {
        assert!(t.device.is_some(), "CPU {} has no tick device", t.cpu);
    }
    // Each reason once: a table is judged where it is read, not again downstream.
    let mut reasons = k.platform.fallbacks.clone();
    reasons.sort();
    reasons.dedup();
    assert_eq!(
        reasons.len(),
        k.platform.fallbacks.len(),
        "a fallback logged twice: {:?}",
        k.platform.fallbacks
    );
}
