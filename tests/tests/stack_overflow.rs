//! A kernel stack overflow hits the guard page and ends in a double fault handled on its own IST
//! stack (reported, failure verdict), not in a triple fault (which QEMU would show as a reset).
#![no_std]
#![no_main]

use kernel_tests::kernel::Kernel;

kernel_tests::qemu_test!(
    variants: b"
        bios: --expect crash --expect-log 'EXCEPTION: double fault (vector 8)' --expect-log 'not mapped>'
    ",
    tests: [overflow_the_stack],
);

/// Each frame is larger than a page, so the compiler probes the stack page by page as it
/// grows it: the fault is the probe of the guard page, with the stack pointer inside it,
/// whatever depth the caller started at (with small frames, whether the stack pointer is
/// still above the guard page when the fault hits depends on the caller's frames).
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 1024]);
    recurse(depth + 1) + frame[3]
}

fn overflow_the_stack(_: &Kernel) {
    core::hint::black_box(recurse(0));
}
