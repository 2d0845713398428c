//! The `log` facade on the serial console: `[seconds.micros] LEVEL module: message`.
//!
//! Timestamps come from the current clocksource (`time::clocksource::now_ns`): the TSC
//! at first, the best-rated one as soon as it is registered. A line logged in interrupt context
//! never waits on the console's lock: it goes into its CPU's [`LogRing`], stamped with the time
//! it was logged, and that CPU prints it (in order, before its next line) once it is outside
//! interrupt context again: its next log line, its idle loop, or the exit.

use crate::arch::x86_64::serial;
use crate::arch::x86_64::smp::percpu::{self, MAX_CPUS};
use crate::log_ring::LogRing;
use crate::time::clocksource;
use log::{LevelFilter, Log, Metadata, Record};
use spin::Mutex;
use x86_64::instructions::interrupts::without_interrupts;

/// Each CPU's lines logged in interrupt context, by CPU index. Taken by its own CPU with
/// interrupts off (in a handler, or to drain), and at the exit by the exiting CPU.
static RINGS: [Mutex<LogRing>; MAX_CPUS] = [const { Mutex::new(LogRing::new()) }; MAX_CPUS];

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

fn print_line(at_ns: u64, level: log::Level, text: core::fmt::Arguments) {
    let (s, us) = timestamp_parts(at_ns);
    serial::print(format_args!("[{s:5}.{us:06}] {level:5} {text}\n"));
}

/// Prints what CPU `cpu`'s handlers logged (called on that CPU outside interrupt context, or
/// at the exit), one line at a time: the ring is held only to take a line out.
pub fn drain(cpu: usize) {
    let Some(ring) = RINGS.get(cpu) else { return };
    loop {
        let taken = without_interrupts(|| {
            let mut r = ring.try_lock()?;
            if r.is_empty() {
                return None;
            }
            Some(r.pop().map_or_else(|| Err(r.take_dropped()), Ok))
        });
        match taken {
            None => return,
            Some(Ok(line)) => print_line(line.at_ns, line.level(), format_args!("{}", line.text())),
            Some(Err(dropped)) => print_line(
                clocksource::now_ns(),
                log::Level::Warn,
                format_args!(
                    "log: {dropped} lines logged in interrupt context on CPU {cpu} were dropped (its ring was full)"
                ),
            ),
        }
    }
}

/// Lines CPU `cpu`'s handlers logged that are not printed yet.
pub fn pending(cpu: usize) -> usize {
    RINGS.get(cpu).map_or(0, |r| without_interrupts(|| r.lock().held()))
}

/// Prints every CPU's pending interrupt-context lines (before the exit).
pub fn drain_all() {
    for cpu in percpu::every() {
        drain(cpu.index);
    }
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
        let at_ns = clocksource::now_ns();
        let target = short_target(record.target());
        if percpu::ready() {
            let cpu = percpu::this_cpu();
            if cpu.in_interrupt() {
                // A handler runs with interrupts off: nothing else on this CPU holds its ring.
                RINGS[cpu.index].lock().push(
                    at_ns,
                    record.level(),
                    format_args!("{target}: {}", record.args()),
                );
                return;
            }
            drain(cpu.index);
        }
        print_line(at_ns, record.level(), format_args!("{target}: {}", record.args()));
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
