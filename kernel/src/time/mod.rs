//! The kernel's time glue, one room above the drivers: the `kernel-time` crate's traits
//! implemented for this machine's devices, their bring-up order, the clocksources and their
//! watchdog, the TSC synchronisation check, and the timer API the rest of the kernel uses.
//!
//! Imports run one way: this room imports the drivers (`arch::x86_64`), never the other way
//! (ARCHITECTURE.md, "Layers"; `scripts/check-layers` fails on a driver that imports it). A
//! driver is handed its callback when it is attached.
pub mod clockevents;
pub mod clocksource;
pub mod tsc_sync;
