//! Everything that touches hardware. Only x86_64 exists; the time layer (the `kernel-time`
//! crate) reaches it solely through the traits it defines
//! (`kernel_time::clocksource::ReadCounter`, `kernel_time::clockevents::EventDriver`, ...).
pub mod x86_64;
