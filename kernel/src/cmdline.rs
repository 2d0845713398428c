//! Kernel options: `name=value` and bare flags separated by blanks, as Linux writes them.
//!
//! Every option the kernel knows is listed in [`KernelOptions`]; an unknown name or a value that
//! does not parse is reported (the kernel logs each problem) and the default is kept.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use log::LevelFilter;

/// The parsed options, with their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelOptions {
    /// `loglevel=error|warn|info|debug|trace|off`: the most verbose level printed (default info).
    pub loglevel: LevelFilter,
    /// `clockevents=auto|percpu|global|broadcast|lapic`: which HPET arrangement to use (default
    /// auto).
    pub clockevents: ClockeventsChoice,
    /// `noapictimer`: leave the LAPIC timer out of the clock event devices (as in Linux).
    pub no_apic_timer: bool,
    /// `pit=on|off`: whether the 8254 PIT's channel 0 is registered as the clock event device
    /// of last resort (when IRQ0 is free; default on).
    pub pit: bool,
    /// `tick=oneshot|periodic`: tickless one-shot (default) or a periodic tick at `hz`.
    pub periodic_tick: bool,
    /// `hz=N`: the periodic tick's frequency, 1..=10000 (default 250).
    pub hz: u32,
    /// `duration_ms=N`: how long the main run arms timers on every CPU (default 1000).
    pub duration_ms: u64,
    /// `workload_cpus=N`: the main run arms timers on the first N online CPUs only, the others
    /// stay idle (default: every CPU). For the benchmark's experiment on tails.
    pub workload_cpus: Option<usize>,
    /// `hpet_irq_masked=N[,N...]`: fault injection, comparator N's interrupt line is left
    /// masked so that its self-test fails; bit N set for comparator N (default 0: none).
    pub hpet_irq_masked: u32,
    /// `hpet_storm=N`: fault injection, an unused comparator raises comparator N's level line
    /// and is never cleared: an interrupt storm the comparator did not raise (default none).
    pub hpet_storm: Option<u32>,
    /// `hpet_misroute=N`: fault injection, once comparator N passed its self-test and serves,
    /// its interrupt is sent to the next CPU instead of its own (a wrong IOAPIC or FSB
    /// destination), which the counts where interrupts land must catch (default none).
    pub hpet_misroute: Option<u32>,
    /// `hpet_counter_stopped`: fault injection, the HPET's main counter is left halted when it
    /// is probed (no firmware table can make QEMU's counter stand still): the counting check
    /// must reject the HPET, and the kernel runs on the LAPIC timer calibrated against the ACPI PM timer.
    pub hpet_counter_stopped: bool,
    /// `lapic_silent`: fault injection, the boot CPU's LAPIC is treated as one that does not
    /// answer (its version register as if it read all ones): the kernel must say so and run on
    /// the 8259, as without a local APIC.
    pub lapic_silent: bool,
    /// `hpet_counter=read|estimate`: program a comparator from the main counter read first
    /// (three accesses, as Linux; the default: the estimate's 16-tick lean makes every event
    /// 160 ns later under emulation) or derived from the TSC (one write and a verifying read).
    pub hpet_counter_read: bool,
    /// `broadcast_follows=on|off`: the global HPET comparator serving as broadcast device has
    /// its interrupt moved to the CPU whose deadline is next, when its route can move (FSB or
    /// an IOAPIC pin; Linux's CLOCK_EVT_FEAT_DYNIRQ), or stays on the CPU chosen at bring-up
    /// (default on).
    pub broadcast_follows: bool,
    /// `bench`: run the timer benchmark (`bench.rs`) instead of the workload.
    pub bench: bool,
    /// `bench_cpu=N`: the CPU the benchmark measures (default 0).
    pub bench_cpu: u32,
    /// `bench_drift_s=N`: also measure the periodic tick's drift over N s (default 0: not).
    pub bench_drift_s: u64,
    /// `bench_stages`: the benchmark measures only the interrupt path stage by stage (a kernel
    /// built with the `path-stamps` feature; `scripts/bench` boots one for it).
    pub bench_stages: bool,
    /// `rtc=utc|local`: what the CMOS RTC holds (default utc).
    pub rtc_local: bool,
    /// `idle=poll|halt|deep`: how an idle CPU waits (default halt).
    pub idle: IdleChoice,
    /// `lapic_stops_in_idle`: LAPIC timers stop in deep idle even where the CPU has ARAT (so
    /// that the broadcast handover runs under QEMU, whose LAPIC timer never stops).
    pub lapic_stops_in_idle: bool,
    /// `suspend_test=MS`: suspend timekeeping for MS ms in the middle of the main run, then
    /// resume it (default none).
    pub suspend_test_ms: Option<u64>,
    /// `s3_test=SECONDS`: a real ACPI S3 suspend to RAM in the middle of the main run, woken by
    /// the RTC alarm SECONDS (1..=60) later (default none).
    pub s3_test_s: Option<u64>,
    /// `s3_no_wake`: the S3 test sets no RTC alarm: nothing wakes the machine (the runner's
    /// `--expect no-wake` watches it stay suspended).
    pub s3_no_wake: bool,
    /// `clock_step_test=SECONDS`: step REALTIME by SECONDS (-86400..=86400, not 0) in the
    /// middle of the main run, with timers on REALTIME pending on every CPU (default none).
    pub clock_step_test_s: Option<i64>,
    /// `madt_fault=NAME`, `fadt_fault=NAME`: fault injection, the firmware's MADT or FADT
    /// replaced by a copy with the fault (`arch::x86_64::acpi::faults`; the runner's
    /// `--madt-table` / `--fadt-table`).
    pub table_faults: crate::arch::x86_64::acpi::TableFaults,
    /// `hotplug_test=CPU[:MS]`: take CPU offline for MS ms (default 100) in the middle of the
    /// main run, then bring it back (default none).
    pub hotplug_test: Option<HotplugTest>,
    /// `clocksource=tsc|hpet|acpi_pm`: the clocksource to use while it is usable (default: the
    /// best-rated usable one).
    pub clocksource: Option<ClocksourceChoice>,
    /// `tsc_skew=CPU:NS`: fault injection, CPU's TSC leads the others' by NS ns (default none).
    pub tsc_skew: Option<TscSkew>,
    /// `tsc_rate_ppm=N`: fault injection, the TSC as the clocksource reads it runs N ppm off
    /// its calibrated rate from the end of the platform bring-up (default none).
    pub tsc_rate_ppm: Option<i64>,
    /// `trace`: record the per-CPU trace timeline and print it at exit (a kernel built with
    /// the cargo feature `trace`; `scripts/run --trace FILE`).
    pub trace: bool,
    /// `timer_slack_ns=N`: every CPU's default slack, 0..=[`MAX_TIMER_SLACK_NS`]: a timer armed
    /// without a slack of its own may run up to N ns after its deadline, so that timers share
    /// interrupts (default 0: exact deadlines).
    pub timer_slack_ns: u64,
}

/// The `hotplug_test=` run: which CPU goes offline, for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotplugTest {
    pub cpu: u32,
    pub ms: u64,
}

/// How long a `hotplug_test=` CPU stays offline unless told.
pub const DEFAULT_HOTPLUG_MS: u64 = 100;
/// Most default slack `timer_slack_ns=` takes (1 s).
pub const MAX_TIMER_SLACK_NS: u64 = 1_000_000_000;

/// The `tsc_skew=` fault: which CPU's TSC leads, and by how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TscSkew {
    pub cpu: u32,
    pub ns: u64,
}

/// Most a TSC's rate may be faulted by, either way (10 %).
pub const MAX_TSC_RATE_PPM: i64 = 100_000;

/// Most a TSC may be skewed by (10 s).
pub const MAX_TSC_SKEW_NS: u64 = 10_000_000_000;

/// The `clocksource=` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClocksourceChoice {
    Tsc,
    Hpet,
    AcpiPm,
}

impl ClocksourceChoice {
    /// The clocksource's name, as registered.
    pub fn name(self) -> &'static str {
        match self {
            ClocksourceChoice::Tsc => "tsc",
            ClocksourceChoice::Hpet => "hpet",
            ClocksourceChoice::AcpiPm => "acpi_pm",
        }
    }
}

/// The `idle=` choice: how a CPU with nothing to do waits for its next interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleChoice {
    /// Spins with `pause`: the fastest wake-up, the CPU never sleeps.
    Poll,
    /// `sti; hlt` (C1): every clock event device keeps running.
    Halt,
    /// The deepest state the CPU offers (MWAIT with a C-state hint where CPUID offers
    /// MONITOR/MWAIT, else `hlt`), where devices that stop in deep idle stop: their CPUs hand
    /// their deadline to the broadcast device first.
    Deep,
}

impl fmt::Display for IdleChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdleChoice::Poll => "poll",
            IdleChoice::Halt => "halt",
            IdleChoice::Deep => "deep",
        })
    }
}

/// The `clockevents=` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockeventsChoice {
    /// Per-CPU HPET comparators when there are enough, else as many as possible plus a global
    /// broadcast device.
    Auto,
    /// Per-CPU comparators only (as many CPUs as there are usable comparators), no global one.
    PerCpu,
    /// One global HPET device serving every CPU by broadcast; no per-CPU comparators.
    Global,
    /// Every CPU on its LAPIC timer, one HPET comparator as the broadcast device standing by
    /// (Linux's arrangement on machines without per-CPU HPET channels).
    Broadcast,
    /// No HPET event device at all: the LAPIC timer only.
    Lapic,
}

impl fmt::Display for ClockeventsChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClockeventsChoice::Auto => "auto",
            ClockeventsChoice::PerCpu => "percpu",
            ClockeventsChoice::Global => "global",
            ClockeventsChoice::Broadcast => "broadcast",
            ClockeventsChoice::Lapic => "lapic",
        })
    }
}

impl Default for KernelOptions {
    fn default() -> Self {
        KernelOptions {
            loglevel: LevelFilter::Info,
            clockevents: ClockeventsChoice::Auto,
            no_apic_timer: false,
            pit: true,
            periodic_tick: false,
            hz: 250,
            duration_ms: 1000,
            workload_cpus: None,
            hpet_irq_masked: 0,
            hpet_storm: None,
            hpet_misroute: None,
            hpet_counter_stopped: false,
            lapic_silent: false,
            hpet_counter_read: true,
            broadcast_follows: true,
            bench: false,
            bench_cpu: 0,
            bench_drift_s: 0,
            bench_stages: false,
            idle: IdleChoice::Halt,
            rtc_local: false,
            lapic_stops_in_idle: false,
            suspend_test_ms: None,
            s3_test_s: None,
            s3_no_wake: false,
            clock_step_test_s: None,
            table_faults: crate::arch::x86_64::acpi::TableFaults { madt: None, fadt: None },
            hotplug_test: None,
            clocksource: None,
            tsc_skew: None,
            tsc_rate_ppm: None,
            trace: false,
            timer_slack_ns: 0,
        }
    }
}

/// Something wrong with one word of the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionProblem {
    Unknown(String),
    BadValue { name: &'static str, value: String, expected: &'static str },
    MissingValue { name: &'static str, expected: &'static str },
}

impl fmt::Display for OptionProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionProblem::Unknown(word) => write!(f, "unknown kernel option '{word}'"),
            OptionProblem::BadValue { name, value, expected } => {
                write!(f, "kernel option {name}={value}: expected {expected}")
            }
            OptionProblem::MissingValue { name, expected } => {
                write!(f, "kernel option {name} needs a value ({name}=<{expected}>)")
            }
        }
    }
}

fn parse_level(value: &str) -> Option<LevelFilter> {
    match value {
        "off" => Some(LevelFilter::Off),
        "error" => Some(LevelFilter::Error),
        "warn" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    }
}

/// The value of one `name=value` word, with what it should look like.
struct OptionValue<'a> {
    name: &'static str,
    expected: &'static str,
    value: Option<&'a str>,
}

impl OptionValue<'_> {
    /// The parsed value, or `None` with the problem recorded.
    fn parse<T>(self, problems: &mut Vec<OptionProblem>, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
        let OptionValue { name, expected, value } = self;
        match value {
            None | Some("") => {
                problems.push(OptionProblem::MissingValue { name, expected });
                None
            }
            Some(v) => {
                let parsed = parse(v);
                if parsed.is_none() {
                    problems.push(OptionProblem::BadValue { name, value: v.to_string(), expected });
                }
                parsed
            }
        }
    }
}

fn in_range<T: core::str::FromStr + PartialOrd>(v: &str, range: core::ops::RangeInclusive<T>) -> Option<T> {
    v.parse().ok().filter(|n| range.contains(n))
}

/// Parses `line`; the options are complete whatever the line says, the problems list what was
/// ignored. A later occurrence of an option overrides an earlier one.
pub fn parse(line: &str) -> (KernelOptions, Vec<OptionProblem>) {
    let mut options = KernelOptions::default();
    let mut problems = Vec::new();
    for word in line.split_whitespace() {
        let (name, value) = match word.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (word, None),
        };
        let take = |name: &'static str, expected: &'static str| OptionValue { name, expected, value };
        match name {
            "loglevel" => {
                if let Some(l) = take("loglevel", "off, error, warn, info, debug or trace")
                    .parse(&mut problems, parse_level)
                {
                    options.loglevel = l;
                }
            }
            "clockevents" => {
                let choice = take("clockevents", "auto, percpu, global, broadcast or lapic").parse(
                    &mut problems,
                    |v| match v {
                        "auto" => Some(ClockeventsChoice::Auto),
                        "percpu" => Some(ClockeventsChoice::PerCpu),
                        "global" => Some(ClockeventsChoice::Global),
                        "broadcast" => Some(ClockeventsChoice::Broadcast),
                        "lapic" => Some(ClockeventsChoice::Lapic),
                        _ => None,
                    },
                );
                options.clockevents = choice.unwrap_or(options.clockevents);
            }
            "tick" => {
                let periodic = take("tick", "oneshot or periodic").parse(&mut problems, |v| match v {
                    "oneshot" => Some(false),
                    "periodic" => Some(true),
                    _ => None,
                });
                options.periodic_tick = periodic.unwrap_or(options.periodic_tick);
            }
            "hz" => {
                let hz = take("hz", "a frequency from 1 to 10000")
                    .parse(&mut problems, |v| in_range(v, 1..=10_000));
                options.hz = hz.unwrap_or(options.hz);
            }
            "duration_ms" => {
                let ms = take("duration_ms", "milliseconds from 1 to 600000")
                    .parse(&mut problems, |v| in_range(v, 1..=600_000));
                options.duration_ms = ms.unwrap_or(options.duration_ms);
            }
            "pit" => {
                let on = take("pit", "on or off").parse(&mut problems, |v| match v {
                    "on" => Some(true),
                    "off" => Some(false),
                    _ => None,
                });
                options.pit = on.unwrap_or(options.pit);
            }
            "rtc" => {
                let local = take("rtc", "utc or local").parse(&mut problems, |v| match v {
                    "utc" => Some(false),
                    "local" => Some(true),
                    _ => None,
                });
                options.rtc_local = local.unwrap_or(options.rtc_local);
            }
            "workload_cpus" => {
                let n = take("workload_cpus", "a CPU count from 1 to 255")
                    .parse(&mut problems, |v| in_range(v, 1usize..=255));
                options.workload_cpus = n.or(options.workload_cpus);
            }
            "hpet_irq_masked" => {
                let set = take("hpet_irq_masked", "comparator numbers from 0 to 31, separated by commas")
                    .parse(&mut problems, |v| {
                        v.split(',').try_fold(0u32, |set, n| in_range(n, 0u32..=31).map(|n| set | 1 << n))
                    });
                options.hpet_irq_masked = set.unwrap_or(options.hpet_irq_masked);
            }
            "hpet_storm" => {
                let n = take("hpet_storm", "a comparator number from 0 to 31")
                    .parse(&mut problems, |v| in_range(v, 0..=31));
                options.hpet_storm = n.or(options.hpet_storm);
            }
            "hpet_misroute" => {
                let n = take("hpet_misroute", "a comparator number from 0 to 31")
                    .parse(&mut problems, |v| in_range(v, 0..=31));
                options.hpet_misroute = n.or(options.hpet_misroute);
            }
            "hpet_counter" => {
                let read = take("hpet_counter", "estimate or read").parse(&mut problems, |v| match v {
                    "estimate" => Some(false),
                    "read" => Some(true),
                    _ => None,
                });
                options.hpet_counter_read = read.unwrap_or(options.hpet_counter_read);
            }
            "broadcast_follows" => {
                let on = take("broadcast_follows", "on or off").parse(&mut problems, |v| match v {
                    "on" => Some(true),
                    "off" => Some(false),
                    _ => None,
                });
                options.broadcast_follows = on.unwrap_or(options.broadcast_follows);
            }
            "bench_cpu" => {
                let n = take("bench_cpu", "a CPU index from 0 to 63")
                    .parse(&mut problems, |v| in_range(v, 0..=63));
                options.bench_cpu = n.unwrap_or(options.bench_cpu);
            }
            "bench_drift_s" => {
                let n = take("bench_drift_s", "seconds from 0 to 600")
                    .parse(&mut problems, |v| in_range(v, 0..=600));
                options.bench_drift_s = n.unwrap_or(options.bench_drift_s);
            }
            "idle" => {
                let idle = take("idle", "poll, halt or deep").parse(&mut problems, |v| match v {
                    "poll" => Some(IdleChoice::Poll),
                    "halt" => Some(IdleChoice::Halt),
                    "deep" => Some(IdleChoice::Deep),
                    _ => None,
                });
                options.idle = idle.unwrap_or(options.idle);
            }
            "suspend_test" => {
                let ms = take("suspend_test", "milliseconds from 1 to 60000")
                    .parse(&mut problems, |v| in_range(v, 1..=60_000));
                options.suspend_test_ms = ms.or(options.suspend_test_ms);
            }
            "s3_test" => {
                let s = take("s3_test", "seconds from 1 to 60 (the RTC alarm's resolution is a second)")
                    .parse(&mut problems, |v| in_range(v, 1..=60));
                options.s3_test_s = s.or(options.s3_test_s);
            }
            "madt_fault" => {
                let f = take(
                    "madt_fault",
                    "ioapic-at-zero, ioapic-over-hpet, gsi-overlap, override-unknown-gsi, duplicate-processor, x2apic-id-invalid, truncated or no-ioapic",
                )
                .parse(&mut problems, crate::arch::x86_64::acpi::faults::MadtFault::from_name);
                options.table_faults.madt = f.or(options.table_faults.madt);
            }
            "fadt_fault" => {
                let f = take(
                    "fadt_fault",
                    "pm-timer-port-zero, pm-timer-width-wrong, pm1a-cnt-zero, firmware-ctrl-zero, century-out-of-range or truncated",
                )
                .parse(&mut problems, crate::arch::x86_64::acpi::faults::FadtFault::from_name);
                options.table_faults.fadt = f.or(options.table_faults.fadt);
            }
            "clock_step_test" => {
                let s = take("clock_step_test", "seconds from -86400 to 86400, not 0")
                    .parse(&mut problems, |v| in_range(v, -86_400i64..=86_400).filter(|&s| s != 0));
                options.clock_step_test_s = s.or(options.clock_step_test_s);
            }
            "hotplug_test" => {
                // CPU 0 parses: it is refused with its reason when the test would run, as a CPU
                // that is not online is (only then is it known).
                let test = take("hotplug_test", "CPU[:MS], a CPU index from 0 to 254 and 1 to 60000 ms")
                    .parse(&mut problems, |v| {
                        let (cpu, ms) = match v.split_once(':') {
                            Some((cpu, ms)) => (cpu, Some(ms)),
                            None => (v, None),
                        };
                        let ms = match ms {
                            Some(ms) => in_range(ms, 1..=60_000)?,
                            None => DEFAULT_HOTPLUG_MS,
                        };
                        Some(HotplugTest { cpu: in_range(cpu, 0..=254)?, ms })
                    });
                options.hotplug_test = test.or(options.hotplug_test);
            }
            "lapic_stops_in_idle" if value.is_none() => options.lapic_stops_in_idle = true,
            "s3_no_wake" if value.is_none() => options.s3_no_wake = true,
            "clocksource" => {
                let choice = take("clocksource", "tsc, hpet or acpi_pm").parse(&mut problems, |v| match v {
                    "tsc" => Some(ClocksourceChoice::Tsc),
                    "hpet" => Some(ClocksourceChoice::Hpet),
                    "acpi_pm" => Some(ClocksourceChoice::AcpiPm),
                    _ => None,
                });
                options.clocksource = choice.or(options.clocksource);
            }
            "tsc_skew" => {
                let skew = take("tsc_skew", "CPU:NS, a CPU index from 0 to 63 and 1 to 10000000000 ns")
                    .parse(&mut problems, |v| {
                        let (cpu, ns) = v.split_once(':')?;
                        Some(TscSkew { cpu: in_range(cpu, 0..=63)?, ns: in_range(ns, 1..=MAX_TSC_SKEW_NS)? })
                    });
                options.tsc_skew = skew.or(options.tsc_skew);
            }
            "tsc_rate_ppm" => {
                let ppm = take("tsc_rate_ppm", "ppm from -100000 to 100000, not 0")
                    .parse(&mut problems, |v| {
                        in_range(v, -MAX_TSC_RATE_PPM..=MAX_TSC_RATE_PPM).filter(|&n| n != 0)
                    });
                options.tsc_rate_ppm = ppm.or(options.tsc_rate_ppm);
            }
            "timer_slack_ns" => {
                let ns = take("timer_slack_ns", "ns from 0 to 1000000000")
                    .parse(&mut problems, |v| in_range(v, 0..=MAX_TIMER_SLACK_NS));
                options.timer_slack_ns = ns.unwrap_or(options.timer_slack_ns);
            }
            "noapictimer" if value.is_none() => options.no_apic_timer = true,
            "hpet_counter_stopped" if value.is_none() => options.hpet_counter_stopped = true,
            "lapic_silent" if value.is_none() => options.lapic_silent = true,
            "bench" if value.is_none() => options.bench = true,
            "bench_stages" if value.is_none() => options.bench_stages = true,
            "trace" if value.is_none() => options.trace = true,
            _ => problems.push(OptionProblem::Unknown(word.to_string())),
        }
    }
    (options, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_line_gives_defaults_and_no_problems() {
        assert_eq!(parse("   "), (KernelOptions::default(), Vec::new()));
    }

    #[test]
    fn pit_is_on_unless_switched_off() {
        assert!(parse("").0.pit);
        assert!(!parse("pit=off").0.pit);
        assert!(parse("pit=off pit=on").0.pit);
        let (o, p) = parse("pit=no pit");
        assert!(o.pit, "a bad value keeps the default");
        assert_eq!(
            p,
            vec![
                OptionProblem::BadValue { name: "pit", value: "no".into(), expected: "on or off" },
                OptionProblem::MissingValue { name: "pit", expected: "on or off" },
            ]
        );
    }

    #[test]
    fn trace_is_a_flag() {
        assert!(parse("trace").0.trace);
        assert!(!parse("").0.trace);
        let (o, p) = parse("trace=1");
        assert!(!o.trace);
        assert_eq!(p, vec![OptionProblem::Unknown("trace=1".into())]);
    }

    #[test]
    fn loglevel_is_parsed_and_last_one_wins() {
        let (o, p) = parse("loglevel=trace loglevel=debug");
        assert_eq!(o.loglevel, LevelFilter::Debug);
        assert!(p.is_empty());
    }

    #[test]
    fn unknown_options_are_reported_not_ignored() {
        let (o, p) = parse("bogus=1 loglevel=warn flag");
        assert_eq!(o.loglevel, LevelFilter::Warn);
        assert_eq!(p, vec![OptionProblem::Unknown("bogus=1".into()), OptionProblem::Unknown("flag".into())]);
    }

    #[test]
    fn bad_or_missing_values_keep_the_default() {
        let (o, p) = parse("loglevel=loud loglevel loglevel=");
        assert_eq!(o.loglevel, LevelFilter::Info);
        assert_eq!(p.len(), 3);
        assert!(matches!(&p[0], OptionProblem::BadValue { value, .. } if value == "loud"));
        assert!(matches!(p[1], OptionProblem::MissingValue { .. }));
        assert_eq!(
            p[0].to_string(),
            "kernel option loglevel=loud: expected off, error, warn, info, debug or trace"
        );
    }

    #[test]
    fn timer_options_are_parsed() {
        let (o, p) =
            parse("clockevents=global noapictimer tick=periodic hz=1000 duration_ms=200 hpet_irq_masked=2");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(o.clockevents, ClockeventsChoice::Global);
        assert!(o.no_apic_timer && o.periodic_tick);
        assert_eq!((o.hz, o.duration_ms, o.hpet_irq_masked), (1000, 200, 1 << 2));
        assert_eq!(parse("hpet_irq_masked=0,1").0.hpet_irq_masked, 0b11);
        for bad in ["hpet_irq_masked=0,", "hpet_irq_masked=,1", "hpet_irq_masked=1,32"] {
            let (o, p) = parse(bad);
            assert_eq!((o.hpet_irq_masked, p.len()), (0, 1), "{bad}");
        }
        assert_eq!(parse("workload_cpus=1").0.workload_cpus, Some(1));
        assert!(parse("rtc=local").0.rtc_local && !parse("rtc=utc").0.rtc_local);
        let (o, problems) = parse("rtc=gmt");
        assert_eq!((o.rtc_local, problems.len()), (false, 1), "an unknown value keeps utc");
        let (o, problems) = parse("workload_cpus=0");
        assert_eq!((o.workload_cpus, problems.len()), (None, 1), "0 CPUs is refused, all kept");
        assert_eq!(parse("hpet_storm=0").0.hpet_storm, Some(0));
        assert_eq!(parse("hpet_misroute=1").0.hpet_misroute, Some(1));
        assert!(parse("hpet_counter_stopped").0.hpet_counter_stopped);
        assert!(parse("lapic_silent").0.lapic_silent);
        assert!(
            parse("hpet_counter=read").0.hpet_counter_read
                && !parse("hpet_counter=estimate").0.hpet_counter_read
        );
        assert!(parse("").0.broadcast_follows && !parse("broadcast_follows=off").0.broadcast_follows);
        let (o, problems) = parse("broadcast_follows=sometimes");
        assert_eq!((o.broadcast_follows, problems.len()), (true, 1), "a bad value keeps on");
        let (i, p) = parse("idle=deep lapic_stops_in_idle suspend_test=200 clockevents=broadcast");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!((i.idle, i.lapic_stops_in_idle, i.suspend_test_ms), (IdleChoice::Deep, true, Some(200)));
        assert_eq!(i.clockevents, ClockeventsChoice::Broadcast);
        assert_eq!(parse("idle=poll").0.idle, IdleChoice::Poll);
        assert_eq!(parse("idle=c6").0.idle, IdleChoice::Halt, "a bad value keeps the default");
        assert_eq!(parse("suspend_test=0").0.suspend_test_ms, None);
        assert_eq!(parse("s3_test=3").0.s3_test_s, Some(3));
        assert!(parse("s3_test=3 s3_no_wake").0.s3_no_wake);
        for bad in ["s3_test=0", "s3_test=61", "s3_test=x", "s3_test"] {
            let (o, p) = parse(bad);
            assert_eq!((o.s3_test_s, p.len()), (None, 1), "{bad}: an error, the option ignored");
        }
        assert_eq!(parse("clock_step_test=-5").0.clock_step_test_s, Some(-5));
        use crate::arch::x86_64::acpi::faults::{FadtFault, MadtFault};
        let f = parse("madt_fault=no-ioapic fadt_fault=pm1a-cnt-zero").0.table_faults;
        assert_eq!((f.madt, f.fadt), (Some(MadtFault::NoIoapic), Some(FadtFault::Pm1aCntZero)));
        let (o, problems) = parse("madt_fault=bogus");
        assert_eq!((o.table_faults.madt, problems.len()), (None, 1));
        assert_eq!(parse("clock_step_test=3600").0.clock_step_test_s, Some(3600));
        for bad in ["clock_step_test=0", "clock_step_test=86401", "clock_step_test=+-1", "clock_step_test"] {
            let (o, problems) = parse(bad);
            assert_eq!((o.clock_step_test_s, problems.len()), (None, 1), "{bad}");
        }
        let (b, p) = parse("bench bench_cpu=1 bench_drift_s=10");
        assert!(p.is_empty() && b.bench && b.bench_cpu == 1 && b.bench_drift_s == 10 && !b.bench_stages);
        let (b, p) = parse("bench bench_stages");
        assert!(p.is_empty() && b.bench && b.bench_stages);
    }

    #[test]
    fn clocksource_is_one_of_three_names() {
        assert_eq!(parse("").0.clocksource, None);
        assert_eq!(parse("clocksource=hpet").0.clocksource, Some(ClocksourceChoice::Hpet));
        assert_eq!(parse("clocksource=acpi_pm").0.clocksource.map(ClocksourceChoice::name), Some("acpi_pm"));
        let (o, p) = parse("clocksource=tsc clocksource=jiffies");
        assert_eq!(o.clocksource, Some(ClocksourceChoice::Tsc), "a bad value keeps the earlier choice");
        assert_eq!(p[0].to_string(), "kernel option clocksource=jiffies: expected tsc, hpet or acpi_pm");
    }

    #[test]
    fn hotplug_test_names_a_cpu_and_how_long_it_stays_offline() {
        assert_eq!(
            parse("hotplug_test=1").0.hotplug_test,
            Some(HotplugTest { cpu: 1, ms: DEFAULT_HOTPLUG_MS })
        );
        assert_eq!(parse("hotplug_test=3:250").0.hotplug_test, Some(HotplugTest { cpu: 3, ms: 250 }));
        assert_eq!(
            parse("hotplug_test=0").0.hotplug_test,
            Some(HotplugTest { cpu: 0, ms: 100 }),
            "refused later"
        );
        for bad in [
            "hotplug_test",
            "hotplug_test=",
            "hotplug_test=x",
            "hotplug_test=1:0",
            "hotplug_test=1:60001",
            "hotplug_test=255",
            "hotplug_test=1:",
            "hotplug_test=-1",
        ] {
            let (o, p) = parse(bad);
            assert_eq!((o.hotplug_test, p.len()), (None, 1), "{bad}");
        }
    }

    #[test]
    fn tsc_skew_names_a_cpu_and_a_lead_in_ns() {
        assert_eq!(parse("tsc_skew=1:1000000").0.tsc_skew, Some(TscSkew { cpu: 1, ns: 1_000_000 }));
        for bad in [
            "tsc_skew=1",
            "tsc_skew=64:5",
            "tsc_skew=1:0",
            "tsc_skew=1:10000000001",
            "tsc_skew=x:1",
            "tsc_skew=1:-5",
        ] {
            let (o, p) = parse(bad);
            assert_eq!((o.tsc_skew, p.len()), (None, 1), "{bad}");
        }
    }

    #[test]
    fn tsc_rate_ppm_is_a_signed_nonzero_rate_within_ten_percent() {
        assert_eq!(parse("tsc_rate_ppm=5000").0.tsc_rate_ppm, Some(5_000));
        assert_eq!(parse("tsc_rate_ppm=-100000").0.tsc_rate_ppm, Some(-100_000));
        for bad in [
            "tsc_rate_ppm=0",
            "tsc_rate_ppm=100001",
            "tsc_rate_ppm=-100001",
            "tsc_rate_ppm=x",
            "tsc_rate_ppm",
        ] {
            let (o, p) = parse(bad);
            assert_eq!((o.tsc_rate_ppm, p.len()), (None, 1), "{bad}");
        }
    }

    #[test]
    fn timer_slack_ns_is_a_default_slack_in_ns_and_a_bad_one_keeps_0() {
        assert_eq!(parse("").0.timer_slack_ns, 0);
        assert_eq!(parse("timer_slack_ns=50000").0.timer_slack_ns, 50_000);
        assert_eq!(parse("timer_slack_ns=0").0.timer_slack_ns, 0);
        assert_eq!(parse("timer_slack_ns=1000000000").0.timer_slack_ns, MAX_TIMER_SLACK_NS);
        for bad in ["timer_slack_ns=1000000001", "timer_slack_ns=-1", "timer_slack_ns=1ms", "timer_slack_ns"]
        {
            let (o, p) = parse(bad);
            assert_eq!((o.timer_slack_ns, p.len()), (0, 1), "{bad}");
        }
        assert_eq!(
            parse("timer_slack_ns=fast").1[0].to_string(),
            "kernel option timer_slack_ns=fast: expected ns from 0 to 1000000000"
        );
    }

    #[test]
    fn out_of_range_timer_options_keep_their_defaults() {
        let (o, p) =
            parse("hz=0 hz=20000 duration_ms=-5 clockevents=best tick= hpet_irq_masked=32 noapictimer=1");
        assert_eq!(o, KernelOptions::default());
        assert_eq!(p.len(), 7, "{p:?}");
        assert_eq!(p[0].to_string(), "kernel option hz=0: expected a frequency from 1 to 10000");
        assert!(matches!(p[4], OptionProblem::MissingValue { name: "tick", .. }));
        assert_eq!(p[6], OptionProblem::Unknown("noapictimer=1".into()));
    }
}
