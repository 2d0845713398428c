//! A panic ends the run with the failure verdict and says where it happened.
#![no_std]
#![no_main]

use kernel_tests::kernel::Kernel;

kernel_tests::qemu_test!(
    variants: b"
        bios: --expect crash --expect-log 'KERNEL PANIC: panicked at tests/tests/panic.rs' --expect-log 'deliberate panic 42'
    ",
    tests: [deliberate_panic],
);

fn deliberate_panic(_: &Kernel) {
    let answer = core::hint::black_box(42);
    panic!("deliberate panic {answer}");
}
