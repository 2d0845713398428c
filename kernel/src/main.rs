//! The kernel's main run: bring-up in order, then the verdict.
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};
use kernel::ExitCode;

entry_point!(kernel_main, config = &kernel::BOOTLOADER_CONFIG);

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    let k = kernel::init(boot_info);
    match k.rsdp_addr {
        Some(a) => log::info!("boot CPU up; ACPI RSDP at {a:#x}"),
        None => log::warn!("boot CPU up; the bootloader found no ACPI RSDP"),
    }
    kernel::exit(ExitCode::Success)
}
