//! x86_64 platform: one module per device or CPU facility.
pub mod acpi;
pub mod calibrate;
pub mod fw_cfg;
pub mod gdt;
pub mod hpet;
pub mod interrupts;
pub mod ioapic;
pub mod lapic;
pub mod memory;
pub mod mmio;
pub mod pic;
pub mod pit;
pub mod platform;
pub mod qemu;
pub mod serial;
pub mod smp;
pub mod tsc;
