//! A kernel stack overflow hits the guard page and ends in a double fault handled on its own IST
//! stack (reported, failure verdict), not in a triple fault (which QEMU would show as a reset).
#![no_std]
#![no_main]

use kernel_tests::kernel::Kernel;

kernel_tests::qemu_test!(
    variants: b"
        bios: --expect failure --expect-log 'EXCEPTION: double fault (vector 8)' --expect-log 'not mapped>'
    ",
    tests: [overflow_the_stack],
);

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 16]);
    recurse(depth + 1) + frame[3]
}

fn overflow_the_stack(_: &Kernel) {
    core::hint::black_box(recurse(0));
}
