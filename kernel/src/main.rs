//! The kernel's main run: bring-up in order, the timer workload on every CPU, the verdict.
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};
use kernel::ExitCode;
use kernel::arch::x86_64::smp;
use kernel::timer_report::Verdict;
use kernel::workload;

entry_point!(kernel_main, config = &kernel::BOOTLOADER_CONFIG);

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    let k = kernel::init(boot_info);
    match k.rsdp_addr {
        Some(a) => log::info!("boot CPU up; ACPI RSDP at {a:#x}"),
        None => log::warn!("boot CPU up; the bootloader found no ACPI RSDP"),
    }
    if k.options.bench {
        let cpu = k.options.bench_cpu as usize;
        let part = if k.options.bench_stages {
            kernel::bench::run_stages(&k, cpu)
        } else {
            kernel::bench::run(&k, cpu, k.options.bench_drift_s)
        };
        kernel::bench::print(&part);
    } else {
        workload::limit_cpus(k.options.workload_cpus);
        workload::step_clock_midway(k.options.clock_step_test_s);
        workload::hotplug_halfway(k.options.hotplug_test.map(|t| (t.cpu as usize, t.ms)));
        workload::s3_halfway(kernel::s3_plan(&k));
        workload::run_with_suspend(k.options.duration_ms, k.options.suspend_test_ms, k.platform.hpet);
    }
    smp::log_interrupt_table();
    let report = kernel::report(&k);
    let code = match report.verdict {
        Verdict::Failed => ExitCode::Failure,
        Verdict::Ok | Verdict::Degraded => ExitCode::Success,
    };
    kernel::exit_with_report(code, &report)
}
