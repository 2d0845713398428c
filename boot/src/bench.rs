//! `boot bench [KERNEL-ELF] [--clock tcg|icount|both] [--drift-s N] [--kinds K,..] [--accel kvm] [--out DIR]`:
//! the timer benchmark's host side. Boots the kernel with its `bench` option once per device
//! kind the machine offers, in each clock, collects every `BENCH-PART {json}` line, prints a
//! table per clock, writes `bench.json` and one lateness plot per clock (`lateness-CLOCK.svg`)
//! into the output directory, and ends with one line `BENCH {json}`.
//!
//! Clocks: `tcg` is QEMU's normal TCG mode (guest time follows the host's: real, noisy);
//! `icount` runs with `-icount shift=0,sleep=off`, one guest nanosecond per instruction, so
//! lateness measures the length of the kernel's interrupt path and repeats on any host.

use crate::image;
use crate::options::{Accel, RunOptions};
use crate::qemu;
use plotters::prelude::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// A device kind and the boot that measures it.
struct Kind {
    name: &'static str,
    smp: u32,
    cmdline: &'static str,
    qemu: &'static [&'static str],
}

const KINDS: &[Kind] = &[
    Kind { name: "percpu-hpet", smp: 1, cmdline: "bench", qemu: &[] },
    Kind { name: "percpu-hpet-estimate", smp: 1, cmdline: "bench hpet_counter=estimate", qemu: &[] },
    Kind {
        name: "global-hpet-broadcast",
        smp: 2,
        cmdline: "bench clockevents=global bench_cpu=1",
        qemu: &[],
    },
    Kind { name: "legacy-hpet", smp: 1, cmdline: "bench", qemu: &["-machine", "pc,hpet=on"] },
    Kind { name: "fsb-hpet", smp: 1, cmdline: "bench", qemu: &["-global", "hpet.msi=on"] },
    Kind { name: "lapic", smp: 1, cmdline: "bench clockevents=lapic", qemu: &[] },
];

/// Kinds whose periodic tick drift is measured (hardware periodic mode), with their cmdline.
const DRIFT: &[(&str, &str)] = &[
    ("percpu-hpet", "bench tick=periodic hz=1000"),
    ("lapic", "bench tick=periodic hz=1000 clockevents=lapic"),
];

const DELTAS: [&str; 4] = ["1000", "10000", "100000", "1000000"];

/// The main run's workload at each CPU count, with per-CPU HPET comparators for every CPU
/// (12 comparators by FSB where q35's 3 do not suffice) up to 8; at 64, QEMU's most (24 by
/// FSB: 23 per-CPU, a global one standing by for the CPUs on their LAPIC timer). Each also
/// gives the bring-up time (to every CPU having its tick device) and the memory per CPU.
const SCALING: &[(u32, &[&str])] = &[
    (1, &[]),
    (2, &[]),
    (4, &["-global", "hpet.timers=12", "-global", "hpet.msi=on"]),
    (8, &["-global", "hpet.timers=12", "-global", "hpet.msi=on"]),
    (64, &["-global", "hpet.timers=24", "-global", "hpet.msi=on"]),
];
/// The idle figures: `--smp 4`, `idle=deep lapic_stops_in_idle`, the workload running, on
/// (a) LAPIC timers handing over to a global HPET device, whose interrupt follows the CPU due
/// first (IOAPIC pin; FSB message), or stays on one CPU (`broadcast_follows=off`), and (b)
/// per-CPU HPET comparators (which need no handover).
const IDLE: &[(&str, &str, &[&str])] = &[
    ("lapic-handover", "idle=deep lapic_stops_in_idle clockevents=broadcast", &[]),
    ("handover-fsb", "idle=deep lapic_stops_in_idle clockevents=broadcast", &["-global", "hpet.msi=on"]),
    ("handover-fixed", "idle=deep lapic_stops_in_idle clockevents=broadcast broadcast_follows=off", &[]),
    ("percpu-hpet", "idle=deep lapic_stops_in_idle", &["-global", "hpet.timers=8"]),
];

/// The tails experiment (issue 18): the same boots as [`SCALING`] at 8 and 64 CPUs with the
/// workload on CPU 0 only, the other CPUs halted (`workload_cpus=1`), and at 8 with them
/// spinning instead (`idle=poll`: always runnable, but arming no timers). Set against the
/// entries with every CPU busy, they separate what the kernel adds as CPUs come online from
/// what the emulator's round-robin of vCPUs adds.
const TAILS: &[(u32, &str, &[&str])] = &[
    (8, "workload_cpus=1", &["-global", "hpet.timers=12", "-global", "hpet.msi=on"]),
    (8, "workload_cpus=1 idle=poll", &["-global", "hpet.timers=12", "-global", "hpet.msi=on"]),
    (64, "workload_cpus=1", &["-global", "hpet.timers=24", "-global", "hpet.msi=on"]),
];

/// How long each scaling boot runs its workload.
const SCALING_DURATION_MS: u64 = 1000;

/// The hotplug figures (issue 19): `--smp 2`, CPU 1 taken offline halfway through a short
/// main run and brought back 20 ms later, this many boots per clock (their spread shows).
const HOTPLUG_BOOTS: usize = 3;
const HOTPLUG_CMDLINE: &str = "hotplug_test=1:20 duration_ms=200";

/// The S3 figure (issue 19): a real ACPI S3 of one second halfway through a short main run at
/// `--smp 1` (no AP to bring back), this many boots per clock: MONOTONIC from the request to the
/// first timer after the wake (the report's `suspend.request_to_first_timer_ns`).
const S3_BOOTS: usize = 3;
const S3_CMDLINE: &str = "s3_test=1 duration_ms=200";

struct Args {
    clocks: Vec<&'static str>,
    drift_s: u64,
    scaling: bool,
    /// `--scaling-only`: no device kinds, drift or idle boots.
    only_scaling: bool,
    /// `--hotplug-only`: only the hotplug boots.
    only_hotplug: bool,
    /// `--kinds a,b`: only these device kinds (all when empty).
    kinds: Vec<String>,
    accel: Accel,
    out: PathBuf,
    /// `--trace-kernel ELF --trace DIR`: after each kind's measured boot, one more with `ELF`
    /// (built with the `trace` feature) and the `trace` option, whose trace goes to
    /// `DIR/CLOCK-KIND.json`; the figures come from the measured boots only.
    trace: Option<(PathBuf, PathBuf)>,
    /// `--stamps-kernel ELF`: after each kind's measured boot, one more with `ELF` (built with
    /// the `path-stamps` feature) and the `bench_stages` option, for the interrupt path's stages
    /// (`path_ns`); the measured kernel has no stamps on its path.
    stamps: Option<PathBuf>,
}

/// The device kinds' names, comma-separated.
fn kind_names() -> String {
    KINDS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        clocks: vec!["tcg", "icount"],
        drift_s: 10,
        scaling: true,
        only_scaling: false,
        only_hotplug: false,
        kinds: Vec::new(),
        accel: Accel::Tcg,
        out: PathBuf::from("target/bench"),
        trace: None,
        stamps: None,
    };
    let (mut trace_kernel, mut trace_dir) = (None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--clock" => {
                a.clocks = match value()?.as_str() {
                    "tcg" => vec!["tcg"],
                    "icount" => vec!["icount"],
                    "both" => vec!["tcg", "icount"],
                    v => return Err(format!("--clock {v}: expected tcg, icount or both")),
                }
            }
            "--drift-s" => a.drift_s = value()?.parse().map_err(|_| "--drift-s needs seconds".to_string())?,
            "--accel" => {
                a.accel = match value()?.as_str() {
                    "tcg" => Accel::Tcg,
                    "kvm" => Accel::Kvm,
                    v => return Err(format!("--accel {v}: expected tcg or kvm")),
                }
            }
            "--out" => a.out = PathBuf::from(value()?),
            "--trace-kernel" => trace_kernel = Some(PathBuf::from(value()?)),
            "--trace" => trace_dir = Some(PathBuf::from(value()?)),
            "--stamps-kernel" => a.stamps = Some(PathBuf::from(value()?)),
            "--no-scaling" => a.scaling = false,
            "--kinds" => {
                let list = value()?;
                for k in list.split(',') {
                    if !KINDS.iter().any(|kind| kind.name == k) {
                        return Err(format!("--kinds {k}: not a device kind (one of {})", kind_names()));
                    }
                    a.kinds.push(k.to_string());
                }
            }
            "--scaling-only" => {
                a.only_scaling = true;
                a.scaling = true;
            }
            "--hotplug-only" => {
                a.only_hotplug = true;
                a.only_scaling = true;
                a.scaling = false;
            }
            other => return Err(format!("unknown bench option {other}")),
        }
    }
    a.trace = match (trace_kernel, trace_dir) {
        (Some(elf), Some(dir)) => Some((elf, dir)),
        (None, None) => None,
        _ => {
            return Err("--trace DIR needs --trace-kernel ELF, a kernel built with the trace feature \
                         (scripts/bench --trace DIR builds it)"
                .into());
        }
    };
    Ok(a)
}

/// One more boot of a device kind, with the traced kernel: its trace timeline written to
/// `DIR/CLOCK-KIND.json`. Says what it wrote or why not; the measured figures are not touched.
fn trace_kind(a: &Args, clock: &str, kind: &str, smp: u32, cmdline: &str, qemu_args: &[&str]) {
    let Some((elf, dir)) = &a.trace else { return };
    let file = dir.join(format!("{clock}-{kind}.json"));
    let cmdline = format!("{cmdline} {}", crate::trace::KERNEL_OPTION);
    let written = boot_log(elf, a, clock, smp, &cmdline, qemu_args).and_then(|log| {
        let (json, summary) = crate::trace::convert(&log).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let text = serde_json::to_string(&json).map_err(|e| e.to_string())?;
        std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(summary)
    });
    match written {
        Ok(summary) => eprintln!("bench:   {kind}: trace {} ({summary})", file.display()),
        Err(e) => eprintln!("bench:   {kind}: no trace: {e}"),
    }
}

/// Boots one configuration and returns its BENCH-PART object.
fn measure(
    elf: &Path,
    a: &Args,
    clock: &str,
    smp: u32,
    cmdline: &str,
    qemu_args: &[&str],
) -> Result<Value, String> {
    let log = boot_log(elf, a, clock, smp, cmdline, qemu_args)?;
    let line = log
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("BENCH-PART "))
        .ok_or_else(|| format!("no BENCH-PART line ({})", log.lines().last().unwrap_or("")))?;
    serde_json::from_str(line).map_err(|e| format!("bad BENCH-PART line: {e}"))
}

/// The interrupt path's stages of device kind `k`, from one boot of the stamps kernel with
/// `bench_stages` (`null` without a stamps kernel, if that boot failed, or if it measured
/// another CPU or device than `measured` did: said on stderr).
fn measure_stages(a: &Args, clock: &str, k: &Kind, measured: &Value) -> Value {
    let Some(elf) = &a.stamps else { return Value::Null };
    let cmdline = format!("{} bench_stages", k.cmdline);
    let same = |part: &Value| ["cpu", "device", "via_broadcast"].iter().all(|f| part[f] == measured[f]);
    match measure(elf, a, clock, k.smp, &cmdline, k.qemu) {
        Ok(part) if !same(&part) => {
            eprintln!(
                "bench:   {}: no stages (the stamps boot measured CPU {} on {}{}, not what the measured boot did)",
                k.name,
                part["cpu"],
                part["device"],
                if part["via_broadcast"].as_bool() == Some(true) { " via broadcast" } else { "" }
            );
            Value::Null
        }
        Ok(part) if part["path_ns"]["samples"].as_u64().unwrap_or(0) > 0 => part["path_ns"].clone(),
        Ok(_) => {
            eprintln!("bench:   {}: no stages (the stamps kernel took no samples)", k.name);
            Value::Null
        }
        Err(e) => {
            eprintln!("bench:   {}: no stages: {e}", k.name);
            Value::Null
        }
    }
}

/// The main run's workload on `smp` CPUs: its lateness and throughput from the TIMER-REPORT.
fn measure_scaling(
    elf: &Path,
    a: &Args,
    clock: &str,
    smp: u32,
    options: &str,
    qemu_args: &[&str],
) -> Result<Value, String> {
    let cmdline = format!("duration_ms={SCALING_DURATION_MS} {options}");
    let log = boot_log(elf, a, clock, smp, &cmdline, qemu_args)?;
    let report = crate::report::find(&log)?;
    let events = report["events_armed"].as_u64().unwrap_or(0);
    let percpu = report["tick_devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            t["via_broadcast"] == false && t["device"].as_str().is_some_and(|d| d.starts_with("hpet"))
        })
        .count();
    Ok(json!({
        "smp": smp,
        "latency_ns": report["latency_ns"],
        "handler_latency_ns": report["handler_latency_ns"],
        "handler_to_callback_ns": report["handler_to_callback_ns"],
        "workload_cpus": report["workload_cpus"],
        "options": options,
        "events": events,
        "events_per_s": events * 1000 / SCALING_DURATION_MS,
        "lost": report["lost_events"],
        "early": report["early_events"],
        "cpus_on_percpu_hpet": percpu,
        "bringup_us": report["bringup_us"],
        "memory_per_cpu_bytes": report["memory"]["per_cpu_bytes"],
        "heap_used_bytes": report["memory"]["heap_used"],
        "verdict": report["verdict"],
    }))
}

/// One hotplug boot: how long CPU 1 took to go offline, to come back (INIT held 10 ms
/// included) and its own start-up path that time (under icount: instructions, those of the
/// boot CPU waiting beside it included), from the report's `hotplug` record; and what its
/// first bring-up took at boot (`online_us`, INIT to online).
fn measure_hotplug(elf: &Path, a: &Args, clock: &str) -> Result<Value, String> {
    let log = boot_log(elf, a, clock, 2, HOTPLUG_CMDLINE, &[])?;
    let report = crate::report::find(&log)?;
    let r = &report["hotplug"][0];
    if r.is_null() {
        return Err(format!("no hotplug record (fallbacks: {})", report["fallbacks"]));
    }
    Ok(json!({
        "offline_ns": r["offline_ns"],
        "online_ns": r["online_ns"],
        "startup_ns": r["startup_ns"],
        "boot_online_us": report["cpus"][1]["online_us"],
        "timers_migrated": r["timers_migrated"],
        "lost": report["lost_events"],
        "early": report["early_events"],
        "verdict": report["verdict"],
    }))
}

/// One S3 boot: the report's request-to-first-timer figure, and the sleep by the RTC.
fn measure_s3(elf: &Path, a: &Args, clock: &str) -> Result<Value, String> {
    let log = boot_log(elf, a, clock, 1, S3_CMDLINE, &[])?;
    let report = crate::report::find(&log)?;
    let s = &report["suspend"];
    if s["request_to_first_timer_ns"].as_u64().is_none() {
        return Err(format!("no S3 figure (suspend: {s}, fallbacks: {})", report["fallbacks"]));
    }
    Ok(json!({
        "request_to_first_timer_ns": s["request_to_first_timer_ns"],
        "asleep_ns": s["asleep_ns"],
        "lost": report["lost_events"],
        "early": report["early_events"],
        "verdict": report["verdict"],
    }))
}

/// The S3 boots' figure, its smallest and largest value over the boots.
fn s3_summary(boots: &[Value]) -> Value {
    let v: Vec<u64> = boots.iter().filter_map(|b| b["request_to_first_timer_ns"].as_u64()).collect();
    json!({
        "request_to_first_timer_ns": { "min": v.iter().min(), "max": v.iter().max() },
        "cmdline": S3_CMDLINE,
        "boots": boots,
    })
}

/// The hotplug boots' figures, each with its smallest and largest value over the boots.
fn hotplug_summary(boots: &[Value]) -> Value {
    let mut out = serde_json::Map::new();
    for field in ["offline_ns", "online_ns", "startup_ns", "boot_online_us"] {
        let v: Vec<u64> = boots.iter().filter_map(|b| b[field].as_u64()).collect();
        let (min, max) = (v.iter().min(), v.iter().max());
        out.insert(field.to_string(), json!({ "min": min, "max": max }));
    }
    out.insert("cmdline".into(), json!(HOTPLUG_CMDLINE));
    out.insert("boots".into(), json!(boots));
    Value::Object(out)
}

/// The workload in deep idle: lateness, and per timer event the handovers, broadcast wake-up
/// IPIs and time entering and leaving idle.
fn measure_idle(
    elf: &Path,
    a: &Args,
    clock: &str,
    cmdline: &str,
    qemu_args: &[&str],
) -> Result<Value, String> {
    let cmdline = format!("{cmdline} duration_ms={SCALING_DURATION_MS}");
    let log = boot_log(elf, a, clock, 4, &cmdline, qemu_args)?;
    let report = crate::report::find(&log)?;
    let events = report["events_armed"].as_u64().unwrap_or(0).max(1) as f64;
    let cpus: Vec<&Value> = report["cpus"].as_array().into_iter().flatten().collect();
    let sum = |field: &str| cpus.iter().map(|c| c["idle"][field].as_u64().unwrap_or(0)).sum::<u64>();
    let per_event = |n: u64| (n as f64 / events * 1000.0).round() / 1000.0;
    Ok(json!({
        "latency_ns": report["latency_ns"],
        "events": report["events_armed"],
        "lost": report["lost_events"],
        "early": report["early_events"],
        "deep_entries": sum("deep_entries"),
        "handovers_per_event": per_event(sum("handovers")),
        "wakeup_ipis_per_event": per_event(report["broadcast_stats"]["wakeups_sent"].as_u64().unwrap_or(0)),
        "idle_transition_ns_per_event": per_event(sum("transition_ns")),
        "verdict": report["verdict"],
    }))
}

/// Boots one configuration and returns its serial log.
fn boot_log(
    elf: &Path,
    a: &Args,
    clock: &str,
    smp: u32,
    cmdline: &str,
    qemu_args: &[&str],
) -> Result<String, String> {
    let mut opts = RunOptions {
        smp,
        accel: a.accel,
        cmdline: cmdline.to_string(),
        // icount runs the vCPUs in turn: QEMU 10 took 3 minutes for a 64-CPU boot with 200 ms
        // of workload (7 for the 1 s one) on an idle host, and over 15 with the host's two
        // cores busy beside it, so each CPU adds 30 s to the limit there.
        timeout: Duration::from_secs(300 + if clock == "icount" { 30 * u64::from(smp) } else { 0 }),
        ..RunOptions::default()
    };
    opts.qemu_args = qemu_args.iter().map(|s| s.to_string()).collect();
    if clock == "icount" {
        opts.qemu_args.extend(["-icount".to_string(), "shift=0,sleep=off".to_string()]);
    }
    let img = image::disk_image(elf, opts.firmware)?;
    let boot = qemu::boot(&opts, &img, |_| {})?;
    if !boot.log.contains("BENCH-PART ") && !boot.log.contains("TIMER-REPORT ") {
        return Err(boot.outcome.describe_with_log(&boot.log));
    }
    Ok(boot.log)
}

/// The build profile of a kernel ELF, from cargo's layout: the nearest `release` or `debug`
/// directory above it (`target/TRIPLE/PROFILE/kernel`, or for the kernel `cargo run` boots,
/// `target/TRIPLE/PROFILE/build/kernel/HASH/artifact/bin/kernel`).
fn profile_of(elf: &Path) -> &'static str {
    let dirs = elf.parent().into_iter().flat_map(Path::ancestors);
    dirs.filter_map(|d| d.file_name()?.to_str())
        .find_map(|name| match name {
            "release" => Some("release"),
            "debug" => Some("dev"),
            _ => None,
        })
        .unwrap_or("unknown")
}

pub fn run(elf: &Path, args: &[String]) -> ExitCode {
    let a = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("boot bench: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&a.out) {
        eprintln!("boot bench: cannot create {}: {e}", a.out.display());
        return ExitCode::from(2);
    }
    let mut runs = Vec::new();
    for &clock in &a.clocks {
        eprintln!("bench: clock {clock}");
        let mut kinds = serde_json::Map::new();
        let wanted =
            |k: &&Kind| !a.only_scaling && (a.kinds.is_empty() || a.kinds.iter().any(|n| n == k.name));
        for k in KINDS.iter().filter(wanted) {
            eprint!("bench:   {} ... ", k.name);
            match measure(elf, &a, clock, k.smp, k.cmdline, k.qemu) {
                Ok(mut part) => {
                    eprintln!("{}", part["device"]);
                    if part["path_stamps"].as_bool() == Some(true) {
                        eprintln!(
                            "bench:   {}: the measured kernel has the path's stamps compiled in (the \
                             path-stamps feature): its lateness includes their cost",
                            k.name
                        );
                    }
                    part["path_ns"] = measure_stages(&a, clock, k, &part);
                    kinds.insert(k.name.to_string(), part);
                }
                Err(e) => eprintln!("not measured: {e}"),
            }
            trace_kind(&a, clock, k.name, k.smp, k.cmdline, k.qemu);
        }
        let mut drift = serde_json::Map::new();
        if a.drift_s > 0 && !a.only_scaling {
            for (name, cmdline) in DRIFT {
                eprint!("bench:   drift of {name} over {} s ... ", a.drift_s);
                let cmdline = format!("{cmdline} bench_drift_s={}", a.drift_s);
                match measure(elf, &a, clock, 1, &cmdline, &[]) {
                    Ok(part) => {
                        eprintln!("{} ppm", part["drift_ppm"]);
                        drift.insert(name.to_string(), part["drift_ppm"].clone());
                    }
                    Err(e) => eprintln!("not measured: {e}"),
                }
            }
        }
        let mut scaling = Vec::new();
        if a.scaling {
            let all = SCALING.iter().map(|&(smp, q)| (smp, "", q));
            for (smp, options, qemu_args) in all.chain(TAILS.iter().copied()) {
                match options {
                    "" => eprint!("bench:   scaling: workload on {smp} CPU(s) ... "),
                    o => eprint!("bench:   scaling: {smp} CPU(s), {o} ... "),
                }
                match measure_scaling(elf, &a, clock, smp, options, qemu_args) {
                    Ok(s) => {
                        eprintln!("{} events", s["events"]);
                        scaling.push(s);
                    }
                    Err(e) => eprintln!("not measured: {e}"),
                }
            }
        }
        let mut idle = serde_json::Map::new();
        if a.scaling && !a.only_scaling {
            for &(name, cmdline, qemu_args) in IDLE {
                eprint!("bench:   idle: {name} ... ");
                match measure_idle(elf, &a, clock, cmdline, qemu_args) {
                    Ok(v) => {
                        eprintln!("{} handovers/event", v["handovers_per_event"]);
                        idle.insert(name.to_string(), v);
                    }
                    Err(e) => eprintln!("not measured: {e}"),
                }
            }
        }
        let mut hotplug = Value::Null;
        if (a.scaling && !a.only_scaling) || a.only_hotplug {
            let mut boots = Vec::new();
            for i in 0..HOTPLUG_BOOTS {
                eprint!("bench:   hotplug {} of {HOTPLUG_BOOTS} ... ", i + 1);
                match measure_hotplug(elf, &a, clock) {
                    Ok(v) => {
                        eprintln!("offline {} ns, online {} ns", v["offline_ns"], v["online_ns"]);
                        boots.push(v);
                    }
                    Err(e) => eprintln!("not measured: {e}"),
                }
            }
            hotplug = hotplug_summary(&boots);
        }
        let mut s3 = Value::Null;
        // Not under icount: QEMU's machine never woke there (-icount shift=0,sleep=off: the RTC
        // alarm did not come in 70 s, three boots of three).
        if ((a.scaling && !a.only_scaling) || a.only_hotplug) && clock != "icount" {
            let mut boots = Vec::new();
            for i in 0..S3_BOOTS {
                eprint!("bench:   s3 {} of {S3_BOOTS} ... ", i + 1);
                match measure_s3(elf, &a, clock) {
                    Ok(v) => {
                        eprintln!("request -> first timer {} ns", v["request_to_first_timer_ns"]);
                        boots.push(v);
                    }
                    Err(e) => eprintln!("not measured: {e}"),
                }
            }
            s3 = s3_summary(&boots);
        }
        let bringup_us = kinds.get("percpu-hpet").map_or(Value::Null, |p| p["bringup_us"].clone());
        let run = json!({ "clock": clock, "profile": profile_of(elf), "kinds": kinds, "drift_ppm": drift,
            "bringup_us": bringup_us, "scaling": scaling, "idle": idle, "hotplug": hotplug, "s3": s3 });
        print_table(&run);
        let svg = a.out.join(format!("lateness-{clock}.svg"));
        match plot(&run, &svg) {
            Ok(()) => println!("plot: {}", svg.display()),
            Err(e) => eprintln!("boot bench: plot failed: {e}"),
        }
        if run["idle"].as_object().is_some_and(|i| !i.is_empty()) {
            let svg = a.out.join(format!("idle-{clock}.svg"));
            match plot_idle(&run, &svg) {
                Ok(()) => println!("plot: {}", svg.display()),
                Err(e) => eprintln!("boot bench: idle plot failed: {e}"),
            }
        }
        runs.push(run);
    }
    let all = json!({ "runs": runs });
    let file = a.out.join("bench.json");
    if let Err(e) = std::fs::write(&file, serde_json::to_string_pretty(&all).unwrap_or_default()) {
        eprintln!("boot bench: cannot write {}: {e}", file.display());
    } else {
        println!("data: {}", file.display());
    }
    println!("BENCH {}", summary(&all));
    ExitCode::SUCCESS
}

/// The `BENCH` line: per clock and kind the figures docs/benchmark.md documents (the histograms stay
/// in bench.json).
fn summary(all: &Value) -> Value {
    let runs: Vec<Value> = all["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|run| {
            let mut kinds = serde_json::Map::new();
            for (name, part) in run["kinds"].as_object().into_iter().flatten() {
                let mut lateness = serde_json::Map::new();
                for d in DELTAS {
                    lateness.insert(d.to_string(), json!({
                        "handler": part["lateness_ns"][d]["handler"],
                        "callback": part["lateness_ns"][d]["callback"],
                        "early": part["lateness_ns"][d]["early"],
                        "lost": part["lateness_ns"][d]["lost"],
                    }));
                }
                kinds.insert(name.clone(), json!({
                    "device": part["device"],
                    "via_broadcast": part["via_broadcast"],
                    "lateness_ns": lateness,
                    "program_cycles": part["program_cycles"],
                    "program_mmio": part["program_mmio"],
                    "max_events_per_s": part["max_events_per_s"],
                    "min_delta_ns": part["min_delta_ns"],
                    "path_ns": part["path_ns"],
                    "arm_cancel_cycles": part["arm_cancel_cycles"],
                    "arm_cancel_boxed_cycles": part["arm_cancel_boxed_cycles"],
                    "arm_cancel_boxed_splintered_cycles": part["arm_cancel_boxed_splintered_cycles"],
                    "arm_cancel_load": part["arm_cancel_load"],
                    "arm_cancel_remote_cycles": part["arm_cancel_remote_cycles"],
                    "slack": slack_summary(&part["slack"]),
                }));
            }
            let mut hotplug = run["hotplug"].clone();
            if let Some(h) = hotplug.as_object_mut() {
                h.remove("boots");
            }
            let mut s3 = run["s3"].clone();
            if let Some(s) = s3.as_object_mut() {
                s.remove("boots");
            }
            json!({ "clock": run["clock"], "profile": run["profile"], "kinds": kinds, "drift_ppm": run["drift_ppm"],
                "bringup_us": run["bringup_us"], "scaling": run["scaling"], "idle": run["idle"], "hotplug": hotplug,
                "s3": s3 })
        })
        .collect();
    json!({ "runs": runs })
}

/// The slack phase's figures per slack in ns: device interrupts per timer that ran (those that
/// ran at least one of them), their lateness from the deadline, and the counts behind them.
fn slack_summary(slack: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for (slack_ns, r) in slack.as_object().into_iter().flatten() {
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        let ran = n("timers").saturating_sub(n("lost"));
        let per_timer = if ran == 0 {
            Value::Null
        } else {
            json!((n("interrupts") as f64 / ran as f64 * 1e4).round() / 1e4)
        };
        out.insert(
            slack_ns.clone(),
            json!({
                "interrupts_per_timer": per_timer,
                "lateness_ns": r["lateness_ns"],
                "timers": r["timers"],
                "interrupts": r["interrupts"],
                "early": r["early"],
                "past_range": r["past_range"],
                "lost": r["lost"],
            }),
        );
    }
    Value::Object(out)
}

fn print_table(run: &Value) {
    println!(
        "\nclock: {}  (callback lateness p50 / p99 / max in us; deadline -> callback on the clocksource)",
        run["clock"].as_str().unwrap_or("?")
    );
    println!(
        "{:<22} {:<14} {:>22} {:>22} {:>22} {:>22} {:>8} {:>5} {:>9} {:>9}",
        "kind", "device", "1 us", "10 us", "100 us", "1 ms", "cycles", "mmio", "events/s", "min dlt"
    );
    for (name, p) in run["kinds"].as_object().into_iter().flatten() {
        let cell = |d: &str| {
            let c = &p["lateness_ns"][d]["callback"];
            let us = |v: &Value| v.as_u64().unwrap_or(0) as f64 / 1000.0;
            format!("{:.1} / {:.1} / {:.1}", us(&c["p50"]), us(&c["p99"]), us(&c["max"]))
        };
        let device = format!(
            "{}{}",
            p["device"].as_str().unwrap_or("-"),
            if p["via_broadcast"].as_bool() == Some(true) { " (bc)" } else { "" }
        );
        println!(
            "{:<22} {:<14} {:>22} {:>22} {:>22} {:>22} {:>8} {:>5} {:>9} {:>9}",
            name,
            device,
            cell("1000"),
            cell("10000"),
            cell("100000"),
            cell("1000000"),
            p["program_cycles"].as_u64().unwrap_or(0),
            p["program_mmio"].as_u64().unwrap_or(0),
            p["max_events_per_s"].as_u64().unwrap_or(0),
            p["min_delta_ns"].as_u64().unwrap_or(0)
        );
    }
    println!("drift (ppm): {}   bring-up (us): {}", run["drift_ppm"], run["bringup_us"]);
    println!("\ninterrupt path, p50 ns per stage at 100 us deltas (under icount: instructions)");
    println!(
        "{:<22} {:>8} {:>6} {:>6} {:>6} {:>8} {:>9} {:>9} {:>5} {:>12}",
        "kind", "delivery", "ack", "clock", "pop", "to cb", "callbacks", "reprogram", "eoi", "deadline->cb"
    );
    for (name, p) in run["kinds"].as_object().into_iter().flatten() {
        let s = &p["path_ns"];
        if s.is_null() {
            println!("{name:<22} not measured (no stamps kernel, or its boot failed)");
            continue;
        }
        let v = |k: &str| s[k].as_u64().unwrap_or(0);
        println!(
            "{:<22} {:>8} {:>6} {:>6} {:>6} {:>8} {:>9} {:>9} {:>5} {:>12}",
            name,
            v("delivery"),
            v("ack"),
            v("clock"),
            v("pop"),
            v("to_callback"),
            v("callbacks"),
            v("reprogram"),
            v("eoi"),
            v("deadline_to_callback")
        );
    }
    println!(
        "\narm + cancel under load, TSC cycles p50 / p99 (under icount: instructions): a plain timer, a boxed closure, a boxed closure with the heap splintered"
    );
    println!(
        "{:<22} {:>16} {:>16} {:>16} {:>8} {:>12} {:>10} {:>18}",
        "kind",
        "plain",
        "boxed closure",
        "boxed splintered",
        "pending",
        "heap blocks",
        "splinters",
        "cross-CPU"
    );
    for (name, p) in run["kinds"].as_object().into_iter().flatten() {
        let cell =
            |c: &Value| format!("{} / {}", c["p50"].as_u64().unwrap_or(0), c["p99"].as_u64().unwrap_or(0));
        let load = &p["arm_cancel_load"];
        let remote = &p["arm_cancel_remote_cycles"];
        let remote = if remote["samples"].as_u64().unwrap_or(0) > 0 { cell(remote) } else { "-".into() };
        println!(
            "{:<22} {:>16} {:>16} {:>16} {:>8} {:>12} {:>10} {:>18}",
            name,
            cell(&p["arm_cancel_cycles"]),
            cell(&p["arm_cancel_boxed_cycles"]),
            cell(&p["arm_cancel_boxed_splintered_cycles"]),
            load["pending_timers"].as_u64().unwrap_or(0),
            load["heap_blocks"].as_u64().unwrap_or(0),
            load["splinters"].as_u64().unwrap_or(0),
            remote
        );
    }
    println!(
        "\nslack: 256 timers 10 us apart on the measured CPU, per slack: device interrupts per timer; lateness from the deadline p50 / p99 / max in us; early, past the range, lost"
    );
    for (name, p) in run["kinds"].as_object().into_iter().flatten() {
        for (slack_ns, r) in slack_summary(&p["slack"]).as_object().into_iter().flatten() {
            let l = &r["lateness_ns"];
            let us = |v: &Value| v.as_u64().unwrap_or(0) as f64 / 1000.0;
            println!(
                "  {:<22} slack {:>8} ns  {:>7} interrupts/timer  {:.1} / {:.1} / {:.1}  early {} past {} lost {}",
                name,
                slack_ns,
                r["interrupts_per_timer"],
                us(&l["p50"]),
                us(&l["p99"]),
                us(&l["max"]),
                r["early"],
                r["past_range"],
                r["lost"]
            );
        }
    }
    if let Some(scaling) = run["scaling"].as_array().filter(|s| !s.is_empty()) {
        println!(
            "\nscaling: the main run's workload (lateness p50 / p99 / max in us, handler -> callback p50 / p99 / max in ns, events/s)"
        );
        for s in scaling {
            let l = &s["latency_ns"];
            let us = |v: &Value| v.as_u64().unwrap_or(0) as f64 / 1000.0;
            let h = &s["handler_latency_ns"];
            let k = &s["handler_to_callback_ns"];
            let on = match s["options"].as_str() {
                Some(o) if !o.is_empty() => format!(" ({o})"),
                _ => String::new(),
            };
            println!(
                "  smp {:<2}{on} {:.1} / {:.1} / {:.1}   (to handler {:.1} / {:.1}; handler -> callback {} / {} / {})   {:>7} events/s   lost {} early {}   {} CPUs on per-CPU HPET   bring-up {:.0} ms   {} KiB per CPU",
                s["smp"],
                us(&l["p50"]),
                us(&l["p99"]),
                us(&l["max"]),
                us(&h["p50"]),
                us(&h["p99"]),
                k["p50"],
                k["p99"],
                k["max"],
                s["events_per_s"],
                s["lost"],
                s["early"],
                s["cpus_on_percpu_hpet"],
                s["bringup_us"].as_u64().unwrap_or(0) as f64 / 1000.0,
                s["memory_per_cpu_bytes"].as_u64().unwrap_or(0) / 1024
            );
        }
    }
    if let Some(idle) = run["idle"].as_object().filter(|i| !i.is_empty()) {
        println!(
            "\nidle=deep lapic_stops_in_idle, --smp 4 (lateness p50 / p99 in us; per timer event: handovers, wake-up IPIs, ns entering+leaving idle)"
        );
        for (name, v) in idle {
            let l = &v["latency_ns"];
            let us = |v: &Value| v.as_u64().unwrap_or(0) as f64 / 1000.0;
            println!(
                "  {:<16} {:.1} / {:.1}   handovers {}   IPIs {}   idle transitions {} ns   lost {} early {}",
                name,
                us(&l["p50"]),
                us(&l["p99"]),
                v["handovers_per_event"],
                v["wakeup_ipis_per_event"],
                v["idle_transition_ns_per_event"],
                v["lost"],
                v["early"]
            );
        }
    }
    if run["hotplug"].is_object() {
        let h = &run["hotplug"];
        let range = |f: &str| format!("{} .. {}", h[f]["min"], h[f]["max"]);
        println!(
            "\nhotplug, --smp 2, {} ({} boots; min .. max): CPU 1 offline {} ns, back online {} ns (INIT held 10 ms included), its own start-up path {} ns{}; at boot INIT -> online {} us",
            h["cmdline"].as_str().unwrap_or(""),
            h["boots"].as_array().map_or(0, Vec::len),
            range("offline_ns"),
            range("online_ns"),
            range("startup_ns"),
            if run["clock"] == "icount" { " (icount: instructions)" } else { "" },
            range("boot_online_us")
        );
    }
    if run["s3"].is_object() {
        let s = &run["s3"];
        println!(
            "\ns3, --smp 1, {} ({} boots; min .. max): request -> first timer after the wake {} .. {} ns of MONOTONIC (the sleep not counted){}",
            s["cmdline"].as_str().unwrap_or(""),
            s["boots"].as_array().map_or(0, Vec::len),
            s["request_to_first_timer_ns"]["min"],
            s["request_to_first_timer_ns"]["max"],
            if run["clock"] == "icount" { " (icount: instructions)" } else { "" },
        );
    }
    println!("profile: {}", run["profile"].as_str().unwrap_or("?"));
}

/// Lateness CDFs (deadline -> callback, linear in ns), one panel per delta, one line per device
/// kind: the share of events at most x ns late. Each panel's axis runs to its largest p99
/// (the tail past it is in the table), so a 100 ns difference between kinds shows.
fn plot(run: &Value, file: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let root = SVGBackend::new(file, (1200, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let title = format!(
        "timer lateness, clock {}: deadline -> callback CDF (share of events at most x ns late)",
        run["clock"].as_str().unwrap_or("?")
    );
    let root = root.titled(&title, ("sans-serif", 22)).map_err(|e| err(&e))?;
    let panels = root.split_evenly((2, 2));
    let kinds: Vec<(String, Value)> =
        run["kinds"].as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (panel, delta) in panels.iter().zip(DELTAS) {
        let cdfs: Vec<(&String, Vec<f64>)> =
            kinds.iter().map(|(name, part)| (name, cdf_points(&part["lateness_ns"][delta]))).collect();
        let (lo, hi) = cdf_range(cdfs.iter().map(|(_, c)| c.as_slice()));
        let caption = format!("delta {} us", delta.parse::<f64>().unwrap_or(0.0) / 1000.0);
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(lo..hi, 0f64..1f64)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("lateness, ns (to the largest p99)")
            .y_desc("share of events")
            .draw()
            .map_err(|e| err(&e))?;
        for (i, (name, points)) in cdfs.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let line = points.iter().enumerate().map(|(p, &x)| (x.min(hi), p as f64 / 100.0));
            chart
                .draw_series(LineSeries::new(line, color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label((*name).clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// One delta's CDF: the lateness in ns at p0..p100 (the report's `cdf`), empty if none.
fn cdf_points(delta: &Value) -> Vec<f64> {
    delta["cdf"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect()
}

/// The x range of a panel: from just below the smallest p0 to just above the largest p99 of its
/// CDFs (at least 100 ns wide).
fn cdf_range<'a>(cdfs: impl Iterator<Item = &'a [f64]>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::MAX, 0f64);
    for c in cdfs.filter(|c| c.len() == 101) {
        lo = lo.min(c[0]);
        hi = hi.max(c[99]);
    }
    if lo > hi {
        return (0.0, 1000.0);
    }
    let pad = ((hi - lo) * 0.05).max(50.0);
    ((lo - pad).max(0.0), hi + pad)
}

/// The idle figures as bars: lateness p50 and p99 (us) and handovers and wake-up IPIs per
/// event (x100), one group per arrangement.
fn plot_idle(run: &Value, file: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let idle: Vec<(String, Value)> =
        run["idle"].as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
    type Metric = (&'static str, fn(&Value) -> f64);
    let metrics: [Metric; 4] = [
        ("p50 us", |v| v["latency_ns"]["p50"].as_f64().unwrap_or(0.0) / 1000.0),
        ("p99 us", |v| v["latency_ns"]["p99"].as_f64().unwrap_or(0.0) / 1000.0),
        ("handovers/event x100", |v| v["handovers_per_event"].as_f64().unwrap_or(0.0) * 100.0),
        ("IPIs/event x100", |v| v["wakeup_ipis_per_event"].as_f64().unwrap_or(0.0) * 100.0),
    ];
    let top = idle.iter().flat_map(|(_, v)| metrics.iter().map(move |(_, f)| f(v))).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(file, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let title = format!(
        "deep idle, --smp 4, clock {}: handing over (LAPIC) vs per-CPU HPET",
        run["clock"].as_str().unwrap_or("?")
    );
    let n = (idle.len() * (metrics.len() + 1)) as u32;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0u32..n, 0f64..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|_| String::new())
        .y_desc("us, or per event x100")
        .draw()
        .map_err(|e| err(&e))?;
    for (m, (label, f)) in metrics.iter().enumerate() {
        let color = Palette99::pick(m).to_rgba();
        let bars: Vec<Rectangle<(u32, f64)>> = idle
            .iter()
            .enumerate()
            .map(|(g, (_, v))| {
                let x = (g * (metrics.len() + 1) + m) as u32;
                Rectangle::new([(x, 0.0), (x + 1, f(v))], color.filled())
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(|e| err(&e))?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    for (g, (name, _)) in idle.iter().enumerate() {
        let x = (g * (metrics.len() + 1)) as u32;
        chart
            .draw_series(std::iter::once(Text::new(name.clone(), (x, top * 0.95), ("sans-serif", 16))))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_options_parse() {
        let a = parse_args(&["--clock".into(), "icount".into(), "--drift-s".into(), "0".into()]).unwrap();
        assert_eq!((a.clocks, a.drift_s, a.scaling), (vec!["icount"], 0, true));
        assert!(!parse_args(&["--no-scaling".into()]).unwrap().scaling);
        let kinds = parse_args(&["--kinds".into(), "percpu-hpet,lapic".into()]).unwrap();
        assert_eq!(kinds.kinds, ["percpu-hpet", "lapic"]);
        assert!(parse_args(&["--kinds".into(), "percpu-hpet,pit".into()]).is_err());
        let only = parse_args(&["--scaling-only".into()]).unwrap();
        assert!(only.scaling && only.only_scaling);
        let only = parse_args(&["--hotplug-only".into()]).unwrap();
        assert!(only.only_hotplug && only.only_scaling && !only.scaling);
        assert!(parse_args(&["--trace".into(), "t".into()]).is_err(), "a trace needs its traced kernel");
        let traced =
            parse_args(&["--trace-kernel".into(), "k".into(), "--trace".into(), "t".into()]).unwrap();
        assert_eq!(traced.trace, Some((PathBuf::from("k"), PathBuf::from("t"))));
        assert_eq!(parse_args(&[]).unwrap().trace, None);
        assert_eq!(parse_args(&[]).unwrap().stamps, None);
        let stamped = parse_args(&["--stamps-kernel".into(), "s".into()]).unwrap();
        assert_eq!(stamped.stamps, Some(PathBuf::from("s")));
        assert_eq!(profile_of(Path::new("target/x86_64-unknown-none/release/kernel")), "release");
        let built = "target/x86_64-unknown-none/debug/build/kernel/0123/artifact/bin/kernel";
        assert_eq!(profile_of(Path::new(built)), "dev");
        assert_eq!(profile_of(Path::new("target/x86_64-unknown-none/debug/kernel")), "dev");
        assert!(parse_args(&["--clock".into(), "fast".into()]).is_err());
        assert!(parse_args(&["--bogus".into()]).is_err());
    }

    #[test]
    fn summary_keeps_the_documented_figures_and_drops_histograms() {
        let part = json!({"device": "hpet0", "via_broadcast": false, "program_cycles": 9000, "program_mmio": 3,
            "max_events_per_s": 8000, "min_delta_ns": 5000,
            "arm_cancel_cycles": {"p50": 400, "p99": 900}, "arm_cancel_boxed_cycles": {"p50": 700, "p99": 2000},
            "lateness_ns": {"1000": {"handler": {"p50": 1}, "callback": {"p50": 2}, "histogram": [1, 2]}},
            "slack": {"0": {"timers": 256, "interrupts": 256, "lost": 0, "lateness_ns": {"p50": 900}},
                      "50000": {"timers": 256, "interrupts": 52, "lost": 6, "lateness_ns": {"p50": 30000}}}});
        let all = json!({"runs": [{"clock": "tcg", "kinds": {"percpu-hpet": part}, "drift_ppm": {"lapic": 3}, "bringup_us": 90000}]});
        let s = summary(&all);
        let k = &s["runs"][0]["kinds"]["percpu-hpet"];
        assert_eq!(k["program_mmio"], 3);
        assert_eq!(k["lateness_ns"]["1000"]["callback"]["p50"], 2);
        assert_eq!(k["arm_cancel_cycles"]["p99"], 900);
        assert_eq!(k["arm_cancel_boxed_cycles"]["p50"], 700);
        assert!(k["lateness_ns"]["1000"].get("histogram").is_none());
        assert_eq!(k["slack"]["0"]["interrupts_per_timer"], 1.0);
        assert_eq!(k["slack"]["50000"]["interrupts_per_timer"], 0.208, "per timer that ran: 52 / 250");
        assert_eq!(k["slack"]["50000"]["lateness_ns"]["p50"], 30000);
        assert_eq!(s["runs"][0]["drift_ppm"]["lapic"], 3);
    }

    #[test]
    fn hotplug_figures_keep_each_boot_and_their_range() {
        let boots =
            [json!({"offline_ns": 30, "online_ns": 12_000}), json!({"offline_ns": 20, "online_ns": 13_000})];
        let h = hotplug_summary(&boots);
        assert_eq!(h["offline_ns"], json!({"min": 20, "max": 30}));
        assert_eq!(h["online_ns"], json!({"min": 12_000, "max": 13_000}));
        assert_eq!(h["startup_ns"], json!({"min": null, "max": null}), "not measured: null");
        assert_eq!(h["boots"].as_array().map(Vec::len), Some(2));
        let all = json!({"runs": [{"clock": "icount", "kinds": {}, "hotplug": h}]});
        let line = summary(&all);
        assert_eq!(line["runs"][0]["hotplug"]["offline_ns"]["max"], 30);
        assert!(line["runs"][0]["hotplug"].get("boots").is_none(), "the boots stay in bench.json");
    }

    #[test]
    fn the_cdf_axis_spans_the_kinds_p0_to_their_largest_p99_so_100_ns_shows() {
        let a: Vec<f64> = (0..=100).map(|p| 400.0 + p as f64).collect(); // p50 450
        let b: Vec<f64> = (0..=100).map(|p| 500.0 + p as f64).collect(); // p50 550
        let (lo, hi) = cdf_range([a.as_slice(), b.as_slice()].into_iter());
        assert!(lo <= 400.0 && hi >= 599.0, "both curves up to p99 are inside: {lo}..{hi}");
        assert!(hi - lo < 400.0, "the axis is not stretched by a tail: {lo}..{hi}");
        assert_eq!(cdf_range([[1.0; 3].as_slice()].into_iter()), (0.0, 1000.0), "no CDF: a default axis");
    }

    #[test]
    fn idle_plot_writes_an_svg() {
        let v = json!({"latency_ns": {"p50": 900, "p99": 3000}, "handovers_per_event": 0.9, "wakeup_ipis_per_event": 0.7});
        let run = json!({"clock": "icount", "idle": {"lapic-handover": v, "percpu-hpet": v}});
        let file = std::env::temp_dir().join(format!("bench-idle-{}.svg", std::process::id()));
        plot_idle(&run, &file).unwrap();
        let svg = std::fs::read_to_string(&file).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("lapic-handover"));
        let _ = std::fs::remove_file(file);
    }

    #[test]
    fn plot_writes_an_svg() {
        let cdf: Vec<u64> = (0..=100).map(|p| 800 + p * 4).collect();
        let run = json!({"clock": "tcg", "kinds": {"percpu-hpet": {"lateness_ns": {"1000": {"cdf": cdf}}}}});
        let file = std::env::temp_dir().join(format!("bench-plot-{}.svg", std::process::id()));
        plot(&run, &file).unwrap();
        let svg = std::fs::read_to_string(&file).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("percpu-hpet"));
        let _ = std::fs::remove_file(file);
    }
}
