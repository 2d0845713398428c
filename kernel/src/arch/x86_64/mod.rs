//! x86_64 platform: one module per device or CPU facility.
pub mod acpi;
pub mod fw_cfg;
pub mod gdt;
pub mod interrupts;
pub mod memory;
pub mod mmio;
pub mod pit;
pub mod qemu;
pub mod serial;
pub mod tsc;
