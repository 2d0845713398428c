//! The kernel boots to its exit on every firmware and machine shape we support.
#![no_std]
#![no_main]

use kernel_tests::kernel::Kernel;

kernel_tests::qemu_test!(
    variants: b"
        bios: --expect-log 'calibrated against the PIT'
        uefi: --uefi --expect-log 'BdsDxe: starting Boot'
        smp4: --smp 4 --expect-report /cpus_online=4
        x2apic_uefi: --uefi --x2apic on --expect-report /lapic/mode=x2apic --expect-log 'BdsDxe: starting Boot'
        hpet_off: --expect-report /hpet=null -- -machine q35,hpet=off
        pc: --expect-report /hpet/comparators/0/delivery=legacy -- -machine pc,hpet=on
    ",
    tests: [log_has_a_clock, heap_is_up],
);

fn log_has_a_clock(_: &Kernel) {
    let a = kernel_tests::kernel::time::clocksource::now_ns();
    let b = kernel_tests::kernel::time::clocksource::now_ns();
    assert!(a > 0, "the clocksource reads 0 after bring-up");
    assert!(b >= a, "the clocksource went backwards: {a} then {b}");
}

fn heap_is_up(_: &Kernel) {
    let v: alloc::vec::Vec<u32> = (0..1000).collect();
    assert_eq!(v.iter().sum::<u32>(), 999 * 1000 / 2);
}

extern crate alloc;
