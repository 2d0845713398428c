//! A page fault is reported with its faulting address and error code, and fails the run.
#![no_std]
#![no_main]

use kernel_tests::kernel::Kernel;

kernel_tests::qemu_test!(
    variants: b"
        bios: --expect crash --expect-log 'EXCEPTION: page fault (vector 14) error code 0x2' --expect-log 'cr2=0xdeadbeef000' --expect-log 'stack at rsp: 0x'
    ",
    tests: [write_to_unmapped_page],
);

fn write_to_unmapped_page(_: &Kernel) {
    let p = core::hint::black_box(0x0dea_dbee_f000_u64) as *mut u64;
    // SAFETY: none; this write is meant to fault (nothing is mapped at 0xdeadbeef000).
    unsafe { p.write_volatile(1) };
    panic!("the write to an unmapped page did not fault");
}
