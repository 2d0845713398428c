//! Everything that touches hardware. Only x86_64 exists; the time layer reaches it solely
//! through the traits it defines (`time::clocksource::Clocksource`, ...).
pub mod x86_64;
