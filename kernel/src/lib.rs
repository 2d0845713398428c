//! A timer-centred x86_64 kernel.
//!
//! The library holds everything; `main.rs` and the QEMU test kernels in `tests/` are thin
//! entry points over [`init`]. Built for `x86_64-unknown-none` it is the kernel; built for the
//! host under `cfg(test)` it links `std`, so the hardware-independent parts run as unit tests.
#![cfg_attr(not(test), no_std)]
#![feature(abi_x86_interrupt)]

extern crate alloc;

pub mod arch;
pub mod bench;
pub mod cmdline;
pub mod log_ring;
pub mod logger;
pub mod time;
pub mod timer_report;
pub mod workload;

use arch::x86_64::{fw_cfg, gdt, interrupts, memory, platform, qemu, serial, tsc};
use bootloader_api::BootInfo;
use bootloader_api::config::{BootloaderConfig, Mapping};
pub use qemu::{ExitCode, exit_qemu};
use time::{clockevents, clocksource};

/// Where the bootloader may place its own mappings (kernel image, stack, boot info, the map of
/// all physical memory); the rest of the upper half is the kernel's, see `memory.rs`.
pub const BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    config.mappings.dynamic_range_start = Some(memory::BOOTLOADER_RANGE_START);
    config.mappings.dynamic_range_end = Some(memory::BOOTLOADER_RANGE_END);
    config.kernel_stack_size = 256 * 1024;
    config
};

/// What the bring-up found and decided, for the code that runs after it.
pub struct Kernel {
    pub options: cmdline::KernelOptions,
    /// The command line as QEMU's fw_cfg delivered it (empty when there was none).
    pub cmdline: alloc::string::String,
    pub option_problems: alloc::vec::Vec<cmdline::OptionProblem>,
    /// Physical address of the ACPI RSDP, as the bootloader found it.
    pub rsdp_addr: Option<u64>,
    pub platform: arch::x86_64::platform::Platform,
    /// What the clockevents bring-up decided (HPET comparators' delivery, role, self-test).
    pub clockevents: time::clockevents::Setup,
}

/// Brings up the boot CPU's base: serial log, GDT/IDT, TSC timestamps, memory and heap, kernel
/// options. Everything after this may allocate and log.
pub fn init(boot_info: &'static mut BootInfo) -> Kernel {
    // The drivers bound their waits by the system clock, handed to them (they never import
    // the time code).
    arch::x86_64::clock::set(clocksource::now_ns);
    serial::init();
    gdt::init_bsp();
    interrupts::init_bsp();
    tsc::init_early();
    clocksource::register_tsc(tsc::frequency_hz());
    logger::init(log::LevelFilter::Info);
    log::info!("timer kernel {} starting on the boot CPU", env!("CARGO_PKG_VERSION"));
    tsc::log_calibration();
    clocksource::log_tsc();

    let boot_info: &'static BootInfo = boot_info;
    // Where the bootloader put the (position-independent) image: what a debugger adds to the
    // ELF's addresses (`add-symbol-file ELF -o OFFSET`, docs/cargo-and-debugging.md, "Debugging").
    log::info!("kernel image at offset {:#x}", boot_info.kernel_image_offset);
    memory::init(boot_info);

    let cmdline = fw_cfg::kernel_cmdline().unwrap_or_default();
    let (options, option_problems) = cmdline::parse(&cmdline);
    logger::set_level(options.loglevel);
    log::info!("command line: \"{cmdline}\"");
    for problem in &option_problems {
        log::warn!("{problem}; using the default");
    }
    if let Some(c) = options.clocksource {
        clocksource::force(c.into());
    }
    let rsdp_addr = boot_info.rsdp_addr.into_option();
    let mut platform = platform::init_bsp(
        rsdp_addr,
        options.table_faults,
        options.hpet_counter_stopped,
        options.lapic_silent,
        clocksource::register_counter,
    );
    arch::x86_64::trace::init(platform.firmware.cpus_enabled.max(1) as usize, options.trace);
    // Fault injection, once the TSC is calibrated: the boot CPU's skew now, an AP's as it starts.
    if let Some(skew) = options.tsc_skew {
        tsc::configure_skew(skew.cpu as usize, skew.ns);
    }
    if let Some(ppm) = options.tsc_rate_ppm {
        tsc::configure_rate(ppm);
    }
    // Each CPU sets up its own tick: the boot CPU now, every AP on its start-up path.
    clockevents::init_on_bsp(&mut platform, &options);
    time::idle::init(options.idle);
    arch::x86_64::smp::set_hooks(time::ap_hooks());
    for left_out in platform.start_application_processors() {
        platform.fall_back(left_out);
    }
    let clockevents = clockevents::init_hpet(&mut platform, &options);
    clocksource::init_late();
    if let Some(reason) = time::wallclock::init(platform.firmware.rtc.as_ref(), options.rtc_local) {
        platform.fall_back(reason);
    }
    Kernel { options, cmdline, option_problems, rsdp_addr, platform, clockevents }
}

/// The TIMER-REPORT of this boot: the platform, the clockevents, and the timer workload's
/// figures if it ran.
/// The `s3_test=` plan (`None` without the option): the machine's S3 from its firmware tables
/// (or why it has none, logged once) and its CMOS RTC.
pub fn s3_plan(k: &Kernel) -> Option<workload::S3Plan> {
    let seconds = k.options.s3_test_s?;
    let fw = &k.platform.firmware;
    let s3 = arch::x86_64::sleep::S3::new(fw.sleep, fw.s3);
    // Why it cannot sleep is logged once, as the fallback the test then takes.
    if s3.is_ok() {
        log::info!("s3_test={seconds}: this machine offers S3");
    }
    let rtc = fw.rtc.filter(|r| !r.not_present).map(|r| r.layout);
    Some(workload::S3Plan { seconds, s3, rtc, hpet: k.platform.hpet, wake: !k.options.s3_no_wake })
}

pub fn report(k: &Kernel) -> timer_report::TimerReport {
    let mut report = k.platform.report();
    clocksource::fill_report(&mut report);
    clockevents::fill_report(&mut report, &k.clockevents);
    report.clocks = time::wallclock::report();
    if let Some(step) = time::clock_step::report() {
        let failed = step.fired < step.armed || step.fired_twice > 0 || step.early > 0 || step.wrong_cpu > 0;
        report.clock_step = Some(step);
        if failed {
            report.verdict = timer_report::Verdict::Failed;
        }
    }
    if let Some(outcome) = workload::last() {
        workload::fill_report(&mut report, &outcome);
    }
    report
}

/// Logs the verdict and leaves QEMU with it (halts on hardware without the exit device).
pub fn exit(code: ExitCode) -> ! {
    logger::drain_all();
    log::info!("exit: {code:?}");
    exit_qemu(code)
}

/// Logs the verdict, prints the report as the log's last line, and leaves QEMU.
pub fn exit_with_report(code: ExitCode, report: &timer_report::TimerReport) -> ! {
    arch::x86_64::trace::drain(&clockevents::device_names());
    logger::drain_all();
    log::info!("exit: {code:?}");
    serial::print(format_args!("{}\n", report.to_line()));
    exit_qemu(code)
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    x86_64::instructions::interrupts::disable();
    match info.location() {
        Some(l) => serial::emergency_print(format_args!(
            "\nKERNEL PANIC: panicked at {}:{}:{}: {}\n",
            l.file(),
            l.line(),
            l.column(),
            info.message()
        )),
        None => serial::emergency_print(format_args!("\nKERNEL PANIC: {}\n", info.message())),
    }
    exit_qemu(ExitCode::Failure)
}
