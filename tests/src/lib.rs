//! The harness of the QEMU integration tests.
//!
//! Each file in `tests/tests/` is a kernel of its own. [`qemu_test!`] gives it an entry point
//! that brings the kernel up, runs its test functions in order (printing libtest-style lines),
//! and, when all returned, prints the TIMER-REPORT and exits QEMU as the main run does (failure
//! when the verdict is `failed`). A failing assertion panics, and the kernel's panic handler
//! exits with failure. The macro also writes the test's QEMU variants into the ELF section
//! `.kernel_test`, where the runner (`boot`) reads them: one `name: options` per line, options
//! as for `scripts/run` plus `--expect` (the verdict: `ok` unless the variant says `degraded`,
//! `failed`, or `crash` for a kernel that stops before it reports), `--expect-log` and
//! `--expect-report`.
//!
//! A test that applies to some variants only names them: `test => "smp2 msi"` runs on those
//! variants and no other (the runner tells the kernel which variant it booted, by fw_cfg).
//! That is how a check that does not apply to a configuration is expressed: by not listing it,
//! never by returning early. A name that is not a declared variant stops the kernel.
#![no_std]

extern crate alloc;

pub use bootloader_api;
pub use kernel;
pub use kernel_time;

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

/// One test of a test kernel: its name, its function, and the variants it runs on (`None`:
/// every variant).
pub struct Test {
    pub name: &'static str,
    pub run: TestFn,
    pub only: Option<&'static str>,
}

/// The variant names a test kernel declares (the `name:` of each line of its variants).
pub fn declared_variants(spec: &[u8]) -> alloc::vec::Vec<&str> {
    core::str::from_utf8(spec)
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim()))
        .collect()
}

/// Runs `tests` in order (those listed for other variants than the one booted are left out,
/// and logged), then exits QEMU with success and the TIMER-REPORT.
pub fn run(k: &kernel::Kernel, variants: &[u8], tests: &[Test]) -> ! {
    let declared = declared_variants(variants);
    for t in tests {
        for name in t.only.unwrap_or("").split_whitespace() {
            assert!(declared.contains(&name), "test {} lists {name}, which is not a variant", t.name);
        }
    }
    let variant = kernel::arch::x86_64::fw_cfg::test_variant();
    let applies = |t: &Test| match (t.only, variant.as_deref()) {
        (None, _) => true,
        (Some(only), Some(v)) => only.split_whitespace().any(|n| n == v),
        // Booted by hand, without a variant: only the tests that apply everywhere.
        (Some(_), None) => false,
    };
    let selected: alloc::vec::Vec<&Test> = tests.iter().filter(|t| applies(t)).collect();
    log::info!(
        "running {} of {} test(s) on variant {}",
        selected.len(),
        tests.len(),
        variant.as_deref().unwrap_or("(none given)")
    );
    for t in tests.iter().filter(|t| !applies(t)) {
        log::info!("test {} not listed for this variant", t.name);
    }
    for t in &selected {
        log::info!("test {} ...", t.name);
        (t.run)(k);
        log::info!("test {} ... ok", t.name);
    }
    log::info!("test result: ok. {} passed; 0 failed", selected.len());
    // As the main run: the exit status follows the verdict, which the runner checks against the
    // variant's `--expect` (default `ok`), and variants may check more of the report.
    let report = kernel::report(k);
    let code = match report.verdict {
        kernel::timer_report::Verdict::Failed => kernel::ExitCode::Failure,
        kernel::timer_report::Verdict::Ok | kernel::timer_report::Verdict::Degraded => {
            kernel::ExitCode::Success
        }
    };
    kernel::exit_with_report(code, &report)
}

/// Declares a QEMU test kernel:
/// `qemu_test!(variants: b"name: options\n...", tests: [f, g => "name1 name2"]);`
#[macro_export]
macro_rules! qemu_test {
    (variants: $variants:literal, tests: [$($test:path $(=> $only:literal)?),* $(,)?] $(,)?) => {
        #[unsafe(link_section = ".kernel_test")]
        #[used]
        static KERNEL_TEST_VARIANTS: [u8; $variants.len()] = *$variants;

        $crate::bootloader_api::entry_point!(test_kernel_main, config = &$crate::kernel::BOOTLOADER_CONFIG);

        fn test_kernel_main(boot_info: &'static mut $crate::bootloader_api::BootInfo) -> ! {
            // Refer to the variants so the linker keeps their section.
            let variants = core::hint::black_box(&KERNEL_TEST_VARIANTS);
            let k = $crate::kernel::init(boot_info);
            $crate::run(
                &k,
                variants,
                &[$($crate::Test {
                    name: stringify!($test),
                    run: $test as $crate::TestFn,
                    only: $crate::qemu_test!(@only $($only)?),
                }),*],
            )
        }
    };
    (@only) => { None };
    (@only $only:literal) => { Some($only) };
}

/// The workload's promise: it armed timers, and every one fired exactly once, none early (on
/// the clocksource and on another counter), each on its CPU by the hardware's APIC id.
pub fn assert_workload_clean(out: &kernel::workload::Outcome) {
    assert!(out.armed > 0, "the workload armed nothing");
    assert_eq!(out.lost(), 0, "{} of {} timers never fired", out.lost(), out.armed);
    assert_eq!(out.fired_twice, 0, "{} timers fired a second time", out.fired_twice);
    assert_eq!(out.early, 0, "{} timers fired before their deadline", out.early);
    assert!(out.judged_independent > 0, "no timer was judged on a counter other than the clocksource's");
    assert_eq!(
        out.early_independent, 0,
        "{} timers fired before their deadline on a counter other than the clocksource's",
        out.early_independent
    );
    assert_eq!(out.wrong_cpu, 0, "{} callbacks ran where the APIC id is not their CPU's", out.wrong_cpu);
    assert_eq!(out.fired, out.armed, "as many timers fired as were armed");
}

/// With `suspend_test=`: the workload had timers pending at the suspend, each of them fired
/// after the resume (once: `assert_workload_clean` checks none fired twice), and none of its
/// timers ran while timekeeping was suspended.
pub fn assert_pending_timers_fire_once_after_the_suspend(out: &kernel::workload::Outcome) {
    assert!(out.suspend_pending > 0, "no workload timer was pending at the suspend: it tested nothing");
    assert_eq!(
        out.suspend_fired_after, out.suspend_pending,
        "of {} workload timers pending at the suspend, {} fired after it",
        out.suspend_pending, out.suspend_fired_after
    );
    assert_eq!(
        out.fired_while_suspended, 0,
        "{} workload timers ran while suspended",
        out.fired_while_suspended
    );
}

/// No clock event interrupt reached a CPU whose tick its device does not serve, and every HPET
/// comparator in service took its events on the CPU it is routed to and no other (a per-CPU
/// comparator on its CPU, the global one on the CPU it interrupts or any CPU the broadcast moved
/// it to while following its sleepers), whatever the delivery
/// (IOAPIC, FSB, legacy). Returns the comparators' events it checked (call it after the
/// workload, and insist on some where comparators serve).
pub fn assert_interrupts_land_where_routed(k: &kernel::Kernel) -> u64 {
    use kernel::time::clockevents::{self, ComparatorRole};
    for t in clockevents::tick_devices() {
        assert_eq!(
            t.misrouted, 0,
            "CPU {} took {} events of devices that do not serve it",
            t.cpu, t.misrouted
        );
    }
    let mut checked = 0;
    for c in &k.clockevents.comparators {
        let (Some(ch), Some(cpu)) = (c.channel, c.cpu) else { continue };
        if !matches!(c.role, ComparatorRole::PerCpu | ComparatorRole::Global) {
            continue;
        }
        for (landed, n) in ch.irqs_by_cpu.nonzero() {
            // The broadcast device's interrupt follows its sleepers: any CPU it was moved to.
            if c.role == ComparatorRole::Global && ch.was_moved_to(landed) {
                checked += n;
                continue;
            }
            assert_eq!(
                landed, cpu,
                "HPET comparator {} ({:?}, {}) is routed to CPU {cpu}, but {n} of its events landed on CPU {landed}",
                c.index, c.role, ch.delivery
            );
            checked += n;
        }
    }
    checked
}
