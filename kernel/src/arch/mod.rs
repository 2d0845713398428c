//! Everything that touches hardware. Only x86_64 exists; the time layer reaches it solely
//! through the traits it defines (`time::clocksource::ReadCounter`,
//! `time::clockevents::EventDriver`, ...).
pub mod x86_64;
