//! The harness of the QEMU integration tests.
//!
//! Each file in `tests/tests/` is a kernel of its own. [`qemu_test!`] gives it an entry point
//! that brings the kernel up, runs its test functions in order (printing libtest-style lines),
//! and exits QEMU with success when all returned. A failing assertion panics, and the kernel's
//! panic handler exits with failure. The macro also writes the test's QEMU variants into the
//! ELF section `.kernel_test`, where the runner (`boot`) reads them: one `name: options` per
//! line, options as for `scripts/run` plus `--expect` and `--expect-log`.
#![no_std]

pub use bootloader_api;
pub use kernel;

/// Generous bound for anything a test waits for: 5 s of kernel time (a bound on a wait, never
/// an assertion about how long something took).
pub const WAIT_LIMIT_NS: u64 = 5_000_000_000;

/// Spins until `done` or [`WAIT_LIMIT_NS`] of the kernel's clocksource pass; true if `done`.
pub fn wait_for(done: impl Fn() -> bool) -> bool {
    let now = kernel::time::clocksource::now_ns;
    let start = now();
    while now() - start < WAIT_LIMIT_NS {
        if done() {
            return true;
        }
        core::hint::spin_loop();
    }
    done()
}

/// A test function gets what the bring-up found.
pub type TestFn = fn(&kernel::Kernel);

/// Runs `tests` in order, then exits QEMU with success.
pub fn run(k: &kernel::Kernel, tests: &[(&str, TestFn)]) -> ! {
    log::info!("running {} test(s)", tests.len());
    for (name, test) in tests {
        log::info!("test {name} ...");
        test(k);
        log::info!("test {name} ... ok");
    }
    log::info!("test result: ok. {} passed; 0 failed", tests.len());
    // Variants may check the report (`--expect-report`), as for the main run.
    kernel::exit_with_report(kernel::ExitCode::Success, &kernel::report(k))
}

/// Declares a QEMU test kernel: `qemu_test!(variants: b"name: options\n...", tests: [f, g]);`
#[macro_export]
macro_rules! qemu_test {
    (variants: $variants:literal, tests: [$($test:path),* $(,)?] $(,)?) => {
        #[unsafe(link_section = ".kernel_test")]
        #[used]
        static KERNEL_TEST_VARIANTS: [u8; $variants.len()] = *$variants;

        $crate::bootloader_api::entry_point!(test_kernel_main, config = &$crate::kernel::BOOTLOADER_CONFIG);

        fn test_kernel_main(boot_info: &'static mut $crate::bootloader_api::BootInfo) -> ! {
            // Refer to the variants so the linker keeps their section.
            core::hint::black_box(&KERNEL_TEST_VARIANTS);
            let k = $crate::kernel::init(boot_info);
            $crate::run(&k, &[$((stringify!($test), $test as $crate::TestFn)),*])
        }
    };
}
