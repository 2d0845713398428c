//! The kernel's time glue, one room above the drivers: the `kernel-time` crate's traits
//! implemented for this machine's devices, their bring-up order, the clocksources and their
//! watchdog, the TSC synchronisation check, and the timer API the rest of the kernel uses.
//!
//! Imports run one way: this room imports the drivers (`arch::x86_64`), never the other way
//! (ARCHITECTURE.md, "Layers"; `scripts/check-layers` fails on a driver that imports it). A
//! driver is handed its callback when it is attached.
pub mod clock_step;
pub mod clockevents;
pub mod clocksource;
pub mod idle;
pub mod sleep;
pub mod tsc_sync;
pub mod wallclock;

/// What each AP runs on its way online, handed to `smp` before the APs start: its TSC checked
/// against the boot CPU's before its timekeeping starts, then its own tick and LAPIC timer.
pub fn ap_hooks() -> crate::arch::x86_64::smp::ApHooks {
    crate::arch::x86_64::smp::ApHooks {
        while_waiting: tsc_sync::serve,
        on_ap: |cpu| {
            tsc_sync::check_on_ap(cpu);
            clockevents::init_on_ap();
        },
        idle: idle::wait,
    }
}
