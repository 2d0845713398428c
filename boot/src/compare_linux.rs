//! `boot compare-linux LINUX-LOG KERNEL-LOG [--config TEXT]`: reads the serial log of Debian's
//! Linux booted by `scripts/compare-linux` (its initrd's `/init` prints what Linux chose, the
//! sleeper's deadlines and the ftrace lines of the sleeper's timers between `COMPARE-LINUX
//! BEGIN` and `COMPARE-LINUX END`) and this kernel's serial log on the same QEMU configuration
//! (its TIMER-REPORT line), and prints them side by side, then one line `COMPARE-LINUX {json}`.
//! Numbers only: nothing here passes or fails on a timing.
//!
//! Linux's lateness is ftrace's `hrtimer_expire_entry` `now` (the clock read at the top of
//! `hrtimer_interrupt`, CLOCK_MONOTONIC) minus the sleeper's absolute deadline: the sleeper's
//! `hrtimer_start` (task `sleeper`, `function=hrtimer_wakeup`, `softexpires` = the deadline it
//! printed) names the timer, the next `hrtimer_expire_entry` of that timer gives `now`. It pairs
//! with this kernel's `handler_latency_ns` (deadline -> the interrupt's first clock read), not
//! with its callback lateness.

use kernel::timer_report::nearest_rank;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::ExitCode;

const USAGE: &str = "usage: boot compare-linux LINUX-LOG KERNEL-LOG [--config TEXT]";

/// Nearest-rank percentiles of lateness samples in ns (the TIMER-REPORT's method).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lateness {
    pub samples: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Lateness {
    fn from_samples(samples: &mut [u64]) -> Option<Lateness> {
        samples.sort_unstable();
        let max = *samples.last()?;
        Some(Lateness {
            samples: samples.len() as u64,
            p50: nearest_rank(samples, 500),
            p99: nearest_rank(samples, 990),
            max,
        })
    }

    fn from_report(v: &Value) -> Option<Lateness> {
        let field = |k: &str| v.get(k).and_then(Value::as_u64);
        let l = Lateness {
            samples: field("samples")?,
            p50: field("p50")?,
            p99: field("p99")?,
            max: field("max")?,
        };
        (l.samples > 0).then_some(l)
    }
}

/// One sleep of the sleeper, as it printed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sleep {
    cpu: u32,
    delta_ns: u64,
    deadline_ns: u64,
}

/// What Linux chose and measured, from its serial log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxRun {
    /// `uname -r`.
    pub release: String,
    /// Each CPU's clock event device (`/sys/devices/system/clockevents/clockeventN`), by CPU.
    pub clockevents: Vec<(u32, String)>,
    /// The broadcast device, `None` when Linux has none.
    pub broadcast: Option<String>,
    pub clocksource: String,
    /// Deadline -> `hrtimer_expire_entry` `now`, all sleeps.
    pub handler: Option<Lateness>,
    /// The same, per sleep length (ns), ascending.
    pub handler_by_delta: Vec<(u64, Lateness)>,
    /// Deadline -> the sleeper's first clock read after waking (user space, for reference).
    pub user_wake: Option<Lateness>,
    /// Sleeps printed, and those without a matching expiry in the trace.
    pub sleeps: usize,
    pub unmatched: usize,
    /// Expiries read before their deadline (a matching error: Linux never runs a timer early).
    pub early: usize,
    /// The ftrace ring's lost-event marks (the trace is then incomplete).
    pub trace_lost: u64,
}

/// The `key=value` fields of a trace event's text.
fn fields(text: &str) -> HashMap<&str, &str> {
    text.split_whitespace().filter_map(|w| w.split_once('=')).collect()
}

/// The number a `key=` field holds.
fn number(f: &HashMap<&str, &str>, key: &str) -> Option<u64> {
    f.get(key)?.parse().ok()
}

/// Parses the part of Linux's serial log between `COMPARE-LINUX BEGIN` and `COMPARE-LINUX END`.
pub fn parse_linux(log: &str) -> Result<LinuxRun, String> {
    let begin = log.find("COMPARE-LINUX BEGIN").ok_or(
        "the Linux log has no `COMPARE-LINUX BEGIN` line: Linux or its /init did not get that far (see the log)",
    )?;
    let body = &log[begin..];
    let body = &body[..body.find("COMPARE-LINUX END").ok_or(
        "the Linux log stops before `COMPARE-LINUX END`: the dump was cut short (timeout or panic?)",
    )?];
    if let Some(line) = body.lines().find(|l| l.starts_with("COMPARE-LINUX ERROR")) {
        return Err(format!("Linux's /init reported: {line}"));
    }
    let mut run = LinuxRun {
        release: String::new(),
        clockevents: Vec::new(),
        broadcast: None,
        clocksource: String::new(),
        handler: None,
        handler_by_delta: Vec::new(),
        user_wake: None,
        sleeps: 0,
        unmatched: 0,
        early: 0,
        trace_lost: 0,
    };
    let mut sleeps: Vec<Sleep> = Vec::new();
    let mut woke: Vec<u64> = Vec::new();
    let mut trace: Vec<&str> = Vec::new();
    for line in body.lines() {
        let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        match tag {
            "LINUX-VERSION" => run.release = rest.split_whitespace().next().unwrap_or("").to_string(),
            "LINUX-CLOCKEVENT" => {
                let (cpu, dev) = rest.split_once(' ').ok_or_else(|| format!("bad line: {line}"))?;
                let cpu = cpu.parse().map_err(|_| format!("bad CPU number in: {line}"))?;
                run.clockevents.push((cpu, dev.trim().to_string()));
            }
            "LINUX-BROADCAST" => {
                run.broadcast = Some(rest.to_string()).filter(|b| !b.is_empty() && b != "(null)")
            }
            "LINUX-CLOCKSOURCE" => run.clocksource = rest.to_string(),
            "LINUX-TRACE-LOST" => run.trace_lost = rest.parse().unwrap_or(0),
            "SLEEP" => {
                let f = fields(rest);
                let bad = || format!("bad sleeper line: {line}");
                let s = Sleep {
                    cpu: number(&f, "cpu").ok_or_else(bad)? as u32,
                    delta_ns: number(&f, "delta_ns").ok_or_else(bad)?,
                    deadline_ns: number(&f, "deadline_ns").ok_or_else(bad)?,
                };
                woke.push(number(&f, "woke_ns").ok_or_else(bad)?.saturating_sub(s.deadline_ns));
                sleeps.push(s);
            }
            "TRACE" => trace.push(rest),
            _ => {}
        }
    }
    if run.clocksource.is_empty() || run.clockevents.is_empty() {
        return Err("the Linux log names no clocksource or no clock event device".into());
    }
    run.clockevents.sort();
    if sleeps.is_empty() {
        return Err("the Linux log has no SLEEP lines: the sleeper did not run".into());
    }

    // The sleeper's deadlines -> their sleep; its hrtimer_start names the timer (the pointer
    // is hashed, but the same for the same timer), the timer's next expiry gives `now`.
    let by_deadline: HashMap<u64, usize> =
        sleeps.iter().enumerate().map(|(i, s)| (s.deadline_ns, i)).collect();
    let mut armed: HashMap<&str, usize> = HashMap::new();
    let mut now: Vec<Option<u64>> = vec![None; sleeps.len()];
    for line in &trace {
        if let Some((_, event)) = line.split_once("hrtimer_start: ") {
            let f = fields(event);
            if f.get("function") != Some(&"hrtimer_wakeup") || !line.trim_start().starts_with("sleeper-") {
                continue;
            }
            let soft = number(&f, "softexpires").or_else(|| number(&f, "expires"));
            if let (Some(&timer), Some(&i)) = (f.get("hrtimer"), soft.and_then(|d| by_deadline.get(&d))) {
                armed.insert(timer, i);
            }
        } else if let Some((_, event)) = line.split_once("hrtimer_expire_entry: ") {
            let f = fields(event);
            let sleep = f.get("hrtimer").and_then(|t| armed.remove(t));
            if let (Some(i), Some(n)) = (sleep, number(&f, "now")) {
                now[i].get_or_insert(n);
            }
        }
    }
    let mut all = Vec::new();
    let mut by_delta: HashMap<u64, Vec<u64>> = HashMap::new();
    for (s, n) in sleeps.iter().zip(&now) {
        match n {
            None => run.unmatched += 1,
            Some(n) if *n < s.deadline_ns => run.early += 1,
            Some(n) => {
                all.push(n - s.deadline_ns);
                by_delta.entry(s.delta_ns).or_default().push(n - s.deadline_ns);
            }
        }
    }
    run.sleeps = sleeps.len();
    run.handler = Lateness::from_samples(&mut all);
    let mut deltas: Vec<_> = by_delta.into_iter().collect();
    deltas.sort_by_key(|(d, _)| *d);
    run.handler_by_delta =
        deltas.into_iter().filter_map(|(d, mut v)| Some((d, Lateness::from_samples(&mut v)?))).collect();
    run.user_wake = Lateness::from_samples(&mut woke);
    Ok(run)
}

/// What this kernel chose and measured, from its TIMER-REPORT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRun {
    pub clockevents: Vec<(u32, String)>,
    pub broadcast: Option<String>,
    pub clocksource: String,
    /// `handler_latency_ns`: deadline -> the interrupt handler's first clock read.
    pub handler: Option<Lateness>,
    /// `latency_ns`: deadline -> the callback's own clock read.
    pub callback: Option<Lateness>,
    pub verdict: String,
}

/// Reads this kernel's serial log (its last TIMER-REPORT line).
pub fn parse_kernel(log: &str) -> Result<KernelRun, String> {
    let r = crate::report::find(log)?;
    let str_at = |p: &str| r.pointer(p).and_then(Value::as_str).map(str::to_string);
    let clockevents = r
        .get("tick_devices")
        .and_then(Value::as_array)
        .ok_or("the TIMER-REPORT has no tick_devices")?
        .iter()
        .map(|t| {
            let cpu = t.get("cpu").and_then(Value::as_u64).unwrap_or(0) as u32;
            (cpu, t.get("device").and_then(Value::as_str).unwrap_or("none").to_string())
        })
        .collect();
    Ok(KernelRun {
        clockevents,
        broadcast: str_at("/broadcast"),
        clocksource: str_at("/clocksource").ok_or("the TIMER-REPORT has no clocksource")?,
        handler: r.get("handler_latency_ns").and_then(Lateness::from_report),
        callback: r.get("latency_ns").and_then(Lateness::from_report),
        verdict: str_at("/verdict").unwrap_or_default(),
    })
}

/// A clock event device's kind: its name without the CPU or channel number (`hpet3` -> `hpet`,
/// `lapic-deadline2` -> `lapic-deadline`).
fn device_kind(name: &str) -> &str {
    name.trim_end_matches(|c: char| c.is_ascii_digit())
}

fn cell(l: Option<Lateness>, f: impl Fn(&Lateness) -> u64) -> String {
    l.map(|l| f(&l).to_string()).unwrap_or_else(|| "-".into())
}

/// The side-by-side table.
pub fn table(config: &str, linux: &LinuxRun, kernel: &KernelRun) -> String {
    let mut s = String::new();
    let linux_name = format!("Linux {}", linux.release);
    let row = |s: &mut String, what: &str, l: &str, k: &str| {
        let _ = writeln!(s, "  {what:<34} {l:<30} {k}");
    };
    let _ = writeln!(s, "compare-linux: {config}");
    row(&mut s, "", &linux_name, "this kernel");
    let cpus: Vec<u32> = {
        let mut c: Vec<u32> = linux.clockevents.iter().chain(&kernel.clockevents).map(|(c, _)| *c).collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    let device = |list: &[(u32, String)], cpu| {
        list.iter().find(|(c, _)| *c == cpu).map(|(_, d)| d.clone()).unwrap_or_else(|| "-".into())
    };
    for cpu in cpus {
        row(
            &mut s,
            &format!("CPU {cpu} clock event device"),
            &device(&linux.clockevents, cpu),
            &device(&kernel.clockevents, cpu),
        );
    }
    let none = || "none".to_string();
    row(
        &mut s,
        "broadcast device",
        &linux.broadcast.clone().unwrap_or_else(none),
        &kernel.broadcast.clone().unwrap_or_else(none),
    );
    row(&mut s, "clocksource", &linux.clocksource, &kernel.clocksource);
    let _ = writeln!(s, "  like for like: deadline -> the timer interrupt's first clock read, ns");
    let _ = writeln!(
        s,
        "  (Linux: ftrace hrtimer_expire_entry `now` - the sleeper's deadline; this kernel: handler_latency_ns)"
    );
    for (name, f) in [
        ("p50", (|l: &Lateness| l.p50) as fn(&Lateness) -> u64),
        ("p99", |l| l.p99),
        ("max", |l| l.max),
        ("samples", |l| l.samples),
    ] {
        row(&mut s, &format!("  {name}"), &cell(linux.handler, f), &cell(kernel.handler, f));
    }
    for (delta, l) in &linux.handler_by_delta {
        row(
            &mut s,
            &format!("  Linux at {} us sleeps p50 / p99", delta / 1000),
            &format!("{} / {}", l.p50, l.p99),
            "",
        );
    }
    let _ = writeln!(s, "  not like for like (different end points), ns p50 / p99 / max:");
    let triple = |l: Option<Lateness>| {
        l.map(|l| format!("{} / {} / {}", l.p50, l.p99, l.max)).unwrap_or_else(|| "-".into())
    };
    row(
        &mut s,
        "  Linux: deadline -> sleeper awake",
        &triple(linux.user_wake),
        "(user space: syscall return)",
    );
    row(&mut s, "  this kernel: deadline -> callback", "(no ftrace counterpart)", &triple(kernel.callback));
    let _ = writeln!(
        s,
        "  workloads: Linux one SCHED_FIFO sleeper, 10 us and 100 us absolute sleeps, one CPU at a time;\n  this kernel its main run, 4 timer chains per CPU at 2 us - 3 ms, all CPUs at once"
    );
    let kinds_differ = linux.clockevents.iter().any(|(cpu, d)| {
        let k = device(&kernel.clockevents, *cpu);
        device_kind(d) != device_kind(&k)
    });
    if kinds_differ {
        let _ = writeln!(
            s,
            "  note: the two chose different kinds of clock event device: the lateness rows compare two\n  interrupt paths (`--kernel-cmdline clockevents=lapic` puts this kernel on the LAPIC timer;\n  `-- -cpu max,-x2apic,-arat -global hpet.msi=on` and enough channels put Linux on a per-CPU HPET)"
        );
    }
    if kernel.verdict != "ok" {
        let _ = writeln!(s, "  note: this kernel's verdict is `{}` (see its log)", kernel.verdict);
    }
    if linux.unmatched > 0 || linux.early > 0 || linux.trace_lost > 0 {
        let _ = writeln!(
            s,
            "  note: {} of {} Linux sleeps had no expiry in the trace, {} read before the deadline, {} lost-event marks",
            linux.unmatched, linux.sleeps, linux.early, linux.trace_lost
        );
    }
    s
}

fn lateness_json(l: Option<Lateness>) -> Value {
    l.map(|l| json!({"samples": l.samples, "p50": l.p50, "p99": l.p99, "max": l.max})).unwrap_or(Value::Null)
}

/// The `COMPARE-LINUX {json}` line's object.
pub fn summary(config: &str, linux: &LinuxRun, kernel: &KernelRun) -> Value {
    let devices =
        |list: &[(u32, String)]| list.iter().map(|(c, d)| json!({"cpu": c, "device": d})).collect::<Vec<_>>();
    json!({
        "config": config,
        "linux": {
            "release": linux.release,
            "clockevents": devices(&linux.clockevents),
            "broadcast": linux.broadcast,
            "clocksource": linux.clocksource,
            "handler_latency_ns": lateness_json(linux.handler),
            "handler_latency_ns_by_delta": linux.handler_by_delta.iter().map(|(d, l)| json!({"delta_ns": d, "latency": lateness_json(Some(*l))})).collect::<Vec<_>>(),
            "user_wake_ns": lateness_json(linux.user_wake),
            "sleeps": linux.sleeps,
            "unmatched": linux.unmatched,
        },
        "kernel": {
            "clockevents": devices(&kernel.clockevents),
            "broadcast": kernel.broadcast,
            "clocksource": kernel.clocksource,
            "handler_latency_ns": lateness_json(kernel.handler),
            "latency_ns": lateness_json(kernel.callback),
            "verdict": kernel.verdict,
        },
    })
}

/// The subcommand: exit 0 with the table, 2 on unreadable or unparsable logs.
pub fn run(args: &[String]) -> ExitCode {
    let mut paths = Vec::new();
    let mut config = String::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => match it.next() {
                Some(c) => config = c.clone(),
                None => return usage("--config needs a value"),
            },
            _ if a.starts_with('-') => return usage(&format!("unknown option {a}")),
            _ => paths.push(a.clone()),
        }
    }
    let [linux_path, kernel_path] = paths.as_slice() else {
        return usage("two logs expected");
    };
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("cannot read {p}: {e}"));
    let result = read(linux_path)
        .and_then(|l| parse_linux(&l).map_err(|e| format!("{linux_path}: {e}")))
        .and_then(|linux| {
            let k = read(kernel_path)?;
            Ok((linux, parse_kernel(&k).map_err(|e| format!("{kernel_path}: {e}"))?))
        });
    match result {
        Ok((linux, kernel)) => {
            print!("{}", table(&config, &linux, &kernel));
            println!("COMPARE-LINUX {}", summary(&config, &linux, &kernel));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("compare-linux: {e}");
            ExitCode::from(2)
        }
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("compare-linux: {why}\n{USAGE}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's Linux 6.1.192 at `--smp 2` under icount (QEMU 10.0.2, 2026-12-06), trimmed by a
    /// one-off script: 30 sleeps per CPU and every sleep whose lateness was not the usual 630 or
    /// 640 ns, with their trace lines, the sleeper's first warm-up timers (deadlines it did not
    /// print) and the dmesg lines on clocks.
    const LINUX_SMP2: &str = include_str!("../../scripts/testdata/linux-6.1-icount-smp2.log");

    /// This kernel's serial log (`scripts/run --smp 2 -- -icount shift=0,sleep=off`, the same
    /// sitting as LINUX_SMP2, dev profile), as recorded.
    const KERNEL_SMP2: &str = include_str!("../../scripts/testdata/kernel-icount-smp2.log");

    #[test]
    fn kernel_report_gives_each_cpus_device_and_the_handler_lateness() {
        let run = parse_kernel(KERNEL_SMP2).unwrap();
        assert_eq!(run.clockevents, vec![(0, "hpet0".to_string()), (1, "hpet1".to_string())]);
        assert_eq!((run.broadcast, run.clocksource.as_str(), run.verdict.as_str()), (None, "hpet", "ok"));
        assert_eq!(run.handler, Some(Lateness { samples: 10349, p50: 395, p99: 1524, max: 4666 }));
        assert_eq!(run.callback, Some(Lateness { samples: 10349, p50: 936, p99: 2453, max: 5206 }));
        assert!(parse_kernel("no report").is_err());
    }

    #[test]
    fn the_table_pairs_the_handler_figures_and_says_what_differs() {
        let (linux, kernel) = (parse_linux(LINUX_SMP2).unwrap(), parse_kernel(KERNEL_SMP2).unwrap());
        let t = table("--smp 2", &linux, &kernel);
        let row = |what: &str| {
            t.lines()
                .find(|l| l.trim_start().starts_with(what))
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(row("CPU 1 clock event device"), "CPU 1 clock event device lapic hpet1");
        assert_eq!(row("clocksource"), "clocksource hpet hpet");
        assert_eq!(row("p50"), "p50 640 395");
        assert_eq!(row("p99"), "p99 2090 1524");
        assert!(t.contains("different kinds of clock event device"), "{t}");
        let j = summary("--smp 2", &linux, &kernel);
        assert_eq!(j.pointer("/linux/handler_latency_ns/p99"), Some(&json!(2090)));
        assert_eq!(j.pointer("/kernel/handler_latency_ns/p99"), Some(&json!(1524)));
        // The same kind (lapic vs lapic0) is no difference.
        let lapic = KernelRun { clockevents: vec![(0, "lapic0".into()), (1, "lapic1".into())], ..kernel };
        assert!(!table("", &linux, &lapic).contains("different kinds"));
        assert!(!t.contains("verdict"), "{t}");
        let failed = KernelRun { verdict: "failed".into(), ..lapic };
        assert!(table("", &linux, &failed).contains("this kernel's verdict is `failed`"));
    }

    #[test]
    fn linux_log_gives_each_cpus_device_the_broadcast_and_the_clocksource() {
        let run = parse_linux(LINUX_SMP2).unwrap();
        assert_eq!(run.release, "6.1.0-57-amd64");
        assert_eq!(run.clockevents, vec![(0, "lapic".to_string()), (1, "lapic".to_string())]);
        assert_eq!(run.broadcast.as_deref(), Some("hpet"));
        // At smp 2 under TCG Linux finds the TSCs unsynchronized and takes the HPET.
        assert_eq!(run.clocksource, "hpet");
        assert_eq!(run.trace_lost, 0);
    }

    #[test]
    fn linux_lateness_is_expiry_now_minus_the_sleepers_deadline() {
        // Expected values computed apart from this parser (a Python reading of the same file).
        let run = parse_linux(LINUX_SMP2).unwrap();
        assert_eq!((run.sleeps, run.unmatched, run.early), (117, 0, 0));
        assert_eq!(run.handler, Some(Lateness { samples: 117, p50: 640, p99: 2090, max: 3080 }));
        assert_eq!(
            run.handler_by_delta,
            vec![
                (10_000, Lateness { samples: 47, p50: 640, p99: 2090, max: 2090 }),
                (100_000, Lateness { samples: 70, p50: 650, p99: 3080, max: 3080 }),
            ]
        );
        assert_eq!(run.user_wake, Some(Lateness { samples: 117, p50: 5140, p99: 7760, max: 8420 }));
    }

    /// The fixture's header and the lines of one sleep (deadline 1000, printed by the sleeper).
    fn synthetic(trace: &str) -> String {
        format!(
            "COMPARE-LINUX BEGIN\nLINUX-VERSION 6.1.0-57-amd64 x\nLINUX-CLOCKEVENT 0 lapic\n\
             LINUX-BROADCAST \nLINUX-CLOCKSOURCE tsc\n\
             SLEEP cpu=0 delta_ns=10000 deadline_ns=1000 woke_ns=6000\n{trace}COMPARE-LINUX END\n"
        )
    }

    #[test]
    fn only_the_sleepers_own_timer_is_matched() {
        let start = |task: &str, timer: &str, soft: u64| {
            format!(
                "TRACE {task} [000] d..1. 0.000001: hrtimer_start: hrtimer={timer} function=hrtimer_wakeup expires={soft} softexpires={soft} mode=ABS\n"
            )
        };
        let expire = |timer: &str, now: u64| {
            format!(
                "TRACE <idle>-0 [000] d.h1. 0.000002: hrtimer_expire_entry: hrtimer={timer} function=hrtimer_wakeup now={now}\n"
            )
        };
        // Another task's timer with the same deadline, and an expiry of a timer never armed
        // by the sleeper, come first: neither counts.
        let log = synthetic(&format!(
            "{}{}{}{}{}",
            start("sh-1", "aa", 1000),
            expire("aa", 1100),
            expire("bb", 1200),
            start("sleeper-9", "bb", 1000),
            expire("bb", 1400)
        ));
        let run = parse_linux(&log).unwrap();
        assert_eq!(run.handler, Some(Lateness { samples: 1, p50: 400, p99: 400, max: 400 }));
        assert_eq!(run.broadcast, None);
        // Without its expiry the sleep is counted unmatched, not measured.
        let run = parse_linux(&synthetic(&start("sleeper-9", "bb", 1000))).unwrap();
        assert_eq!((run.sleeps, run.unmatched, run.handler), (1, 1, None));
    }

    #[test]
    fn a_log_cut_short_or_without_a_dump_is_an_error_that_says_so() {
        let cut = &LINUX_SMP2[..LINUX_SMP2.find("COMPARE-LINUX END").unwrap()];
        assert!(parse_linux(cut).unwrap_err().contains("before `COMPARE-LINUX END`"));
        assert!(
            parse_linux("[ 1.0] Kernel panic - not syncing")
                .unwrap_err()
                .contains("no `COMPARE-LINUX BEGIN`")
        );
        let no_sleeps: String =
            LINUX_SMP2.lines().filter(|l| !l.starts_with("SLEEP")).map(|l| format!("{l}\n")).collect();
        assert!(parse_linux(&no_sleeps).unwrap_err().contains("no SLEEP lines"));
        let error =
            LINUX_SMP2.replace("LINUX-ITERATIONS", "COMPARE-LINUX ERROR no tracefs\nLINUX-ITERATIONS");
        assert!(parse_linux(&error).unwrap_err().contains("no tracefs"));
    }
}
