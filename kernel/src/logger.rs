//! The `log` facade on the serial console: `[seconds.micros] LEVEL module: message`.
//!
//! Timestamps come from the current clocksource (`arch::x86_64::clocksource::now_ns`): the TSC
//! at first, the best-rated one as soon as it is registered.

use crate::arch::x86_64::clocksource;
use log::{LevelFilter, Log, Metadata, Record};

struct SerialLogger;

static LOGGER: SerialLogger = SerialLogger;

/// Installs the logger; later calls only change the level.
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

/// `kernel::arch::x86_64::hpet` -> `hpet`, `kernel_time::tick::registry` -> `time::tick::registry`:
/// the module is what a reader needs.
pub fn short_target(target: &str) -> &str {
    // The time crate's modules, named as when it was the kernel's `time` module.
    if let Some(t) = target.strip_prefix("kernel_time::") {
        return &target[target.len() - t.len() - "time::".len()..];
    }
    let t = target.strip_prefix("kernel::").unwrap_or(target);
    let t = t.strip_prefix("arch::x86_64::").unwrap_or(t);
    if t == "kernel" { "main" } else { t }
}

/// Splits nanoseconds into whole seconds and microseconds for the timestamp.
pub fn timestamp_parts(ns: u64) -> (u64, u64) {
    (ns / 1_000_000_000, (ns % 1_000_000_000) / 1_000)
}

impl Log for SerialLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let (s, us) = timestamp_parts(clocksource::now_ns());
        crate::arch::x86_64::serial::print(format_args!(
            "[{s:5}.{us:06}] {:5} {}: {}\n",
            record.level(),
            short_target(record.target()),
            record.args()
        ));
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_lose_the_crate_and_arch_prefixes() {
        assert_eq!(short_target("kernel::arch::x86_64::hpet"), "hpet");
        assert_eq!(short_target("kernel_time::clockevents"), "time::clockevents");
        assert_eq!(short_target("kernel_time::tick::registry"), "time::tick::registry");
        assert_eq!(short_target("kernel"), "main");
        assert_eq!(short_target("boot_and_exit"), "boot_and_exit");
    }

    #[test]
    fn timestamp_is_seconds_and_microseconds() {
        assert_eq!(timestamp_parts(1_234_567_891), (1, 234_567));
        assert_eq!(timestamp_parts(999), (0, 0));
    }
}
