//! Host side of the kernel: disk images, QEMU, serial logs.
//!
//! `boot [ELF] [ARGS...]` is the run command's engine (`cargo run` at the root runs it, as the
//! workspace's default member) and cargo's runner for the `x86_64-unknown-none` target (see
//! `.cargo/config.toml` and `scripts/runner`):
//! - without an ELF (no arguments, or the first one is an option), it boots the kernel it was
//!   built with: `kernel`'s binary, an artifact dependency built for bare metal (Cargo.toml);
//! - an ELF with a `.kernel_test` section is a QEMU test: each line of that section is a variant
//!   (`name: options`), booted in turn and reported in libtest's format; ARGS are test filters;
//! - any other ELF is booted once with ARGS as run options, its serial log streamed to stdout.

mod bench;
mod compare_linux;
mod elf;
mod hpet_table;
mod image;
mod options;
mod qemu;
mod report;
mod trace;

use options::{Expect, RunOptions, split_words};
use qemu::Outcome;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// The section test kernels declare their variants in (written by `kernel_tests::qemu_test!`).
const TEST_SECTION: &str = ".kernel_test";

/// The kernel ELF this runner was built with: the `kernel` package's binary, an artifact
/// dependency built for `x86_64-unknown-none` (`-Z bindeps`, see Cargo.toml and
/// docs/cargo-and-debugging.md, "Why artifact dependencies"). What `cargo run` boots.
const BUILT_KERNEL: &str = env!("CARGO_BIN_FILE_KERNEL_kernel");

const USAGE: &str = "\
usage: cargo run -- [OPTIONS] [-- QEMU-ARGS]       (at the repository root)
       boot [KERNEL-ELF] [OPTIONS] [-- QEMU-ARGS]
       boot bench [KERNEL-ELF] [--clock tcg|icount|both] [--drift-s N] [--kinds K,..] [--accel kvm] [--out DIR]
       boot compare-linux LINUX-LOG KERNEL-LOG [--config TEXT]    (scripts/compare-linux)
Without KERNEL-ELF: the kernel built with this runner.
";

/// What a command line asks for.
#[derive(Debug, PartialEq)]
enum Command<'a> {
    Help,
    /// Boot `elf` once with run options, or run its QEMU test variants with test filters.
    Boot {
        elf: PathBuf,
        args: &'a [String],
    },
    Bench {
        elf: PathBuf,
        args: &'a [String],
    },
    /// Linux's and this kernel's serial logs side by side (`scripts/compare-linux`).
    CompareLinux(&'a [String]),
}

/// Reads a command line.
fn command(args: &[String]) -> Command<'_> {
    match args.first().map(String::as_str) {
        Some("-h" | "--help") => Command::Help,
        Some("compare-linux") => Command::CompareLinux(&args[1..]),
        Some("bench") => {
            let (elf, args) = split_elf(&args[1..]);
            Command::Bench { elf, args }
        }
        _ => {
            let (elf, args) = split_elf(args);
            Command::Boot { elf, args }
        }
    }
}

/// Splits off the kernel ELF: the first argument names one unless it is missing or an option
/// (every option starts with `-`, `--` included); then it is the kernel built with this runner.
fn split_elf(args: &[String]) -> (PathBuf, &[String]) {
    match args.split_first() {
        Some((elf, rest)) if !elf.starts_with('-') => (PathBuf::from(elf), rest),
        _ => (PathBuf::from(BUILT_KERNEL), args),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match command(&args) {
        Command::Help => {
            // Ignore a closed pipe (`cargo run -- --help | head`).
            let _ = writeln!(std::io::stdout(), "{USAGE}\n{}", options::HELP);
            ExitCode::SUCCESS
        }
        Command::Bench { elf, args } => bench::run(&elf, args),
        Command::CompareLinux(args) => compare_linux::run(args),
        Command::Boot { elf, args } => {
            let bytes = match std::fs::read(&elf) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("boot: cannot read {}: {e}\n\n{USAGE}", elf.display());
                    return ExitCode::from(2);
                }
            };
            match elf::section(&bytes, TEST_SECTION) {
                Some(spec) => run_tests(&elf, &String::from_utf8_lossy(spec), args),
                None => run_once(&elf, args),
            }
        }
    }
}

fn run_once(elf: &Path, args: &[String]) -> ExitCode {
    let mut opts = match RunOptions::default().parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("boot: {e}\n\n{USAGE}\n{}", options::HELP);
            return ExitCode::from(2);
        }
    };
    if let Some(file) = &opts.trace {
        if !cfg!(feature = "trace") {
            eprintln!(
                "boot: --trace needs the kernel's trace points, and this runner was built without them: \
                 run `scripts/run --trace {0}` (or `cargo run --features trace -- --trace {0}`)",
                file.display()
            );
            return ExitCode::from(2);
        }
        opts.cmdline = format!("{} {}", opts.cmdline, trace::KERNEL_OPTION).trim_start().to_string();
    }
    if opts.gdb {
        // The ELF `cargo run` boots sits deep in the target directory; say where.
        eprintln!("boot: QEMU waits for a debugger: gdb {} -ex 'target remote :1234'", elf.display());
    }
    // The trace's lines (thousands) are kept out of the echoed log.
    let echo = |l: &str| {
        if !trace::is_trace_line(l) {
            println!("{l}")
        }
    };
    let result = image::disk_image(elf, opts.firmware).and_then(|img| qemu::boot(&opts, &img, echo));
    match result {
        Ok(boot) => {
            // A trace that cannot be written fails a run that otherwise succeeded.
            let trace_failed = opts.trace.as_deref().is_some_and(|file| {
                write_trace(file, &boot.log)
                    .map_err(|e| eprintln!("boot: --trace {}: {e}", file.display()))
                    .is_err()
            });
            let hint = boot.outcome.kvm_hint(opts.accel).map(|h| format!("; {h}")).unwrap_or_default();
            eprintln!(
                "boot: {}{hint} ({:.1} s)",
                boot.outcome.describe_with_log(&boot.log),
                boot.elapsed.as_secs_f64()
            );
            match boot.outcome {
                Outcome::KernelSuccess if trace_failed => ExitCode::from(2),
                Outcome::KernelSuccess => ExitCode::SUCCESS,
                Outcome::KernelFailure => ExitCode::from(1),
                Outcome::Timeout(_) => ExitCode::from(124),
                Outcome::SuspendedNoWake(_) => ExitCode::from(5),
                _ => ExitCode::from(3),
            }
        }
        Err(e) => {
            eprintln!("boot: {e}");
            ExitCode::from(2)
        }
    }
}

/// Converts the trace in `log` and writes it to `file`, saying what it holds.
fn write_trace(file: &Path, log: &str) -> Result<(), String> {
    let (json, summary) = trace::convert(log).map_err(|e| e.to_string())?;
    let text = serde_json::to_string(&json).map_err(|e| e.to_string())?;
    std::fs::write(file, text).map_err(|e| format!("cannot write it: {e}"))?;
    eprintln!("boot: trace written to {} ({summary}); open it in ui.perfetto.dev", file.display());
    Ok(())
}

/// One test variant as declared by a test kernel.
#[derive(Debug, PartialEq)]
struct Variant {
    name: String,
    options: RunOptions,
}

/// Parses the `.kernel_test` section: one `name: options` per line; blank lines and `#` comments
/// are skipped. Test variants default to a shorter timeout than interactive runs.
fn parse_variants(spec: &str) -> Result<Vec<Variant>, String> {
    let mut variants = Vec::new();
    for line in spec.lines().map(|l| l.trim_matches(|c: char| c.is_whitespace() || c == '\0')) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) =
            line.split_once(':').ok_or_else(|| format!("variant line without 'name:': {line}"))?;
        let base = RunOptions { timeout: std::time::Duration::from_secs(90), ..RunOptions::default() };
        let words = split_words(rest).map_err(|e| e.to_string())?;
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(format!("variant name '{name}': use a-z, 0-9 and _"));
        }
        let mut options = base.parse(&words).map_err(|e| format!("variant {name}: {e}"))?;
        options.variant = Some(name.to_string());
        variants.push(Variant { name: name.to_string(), options });
    }
    if variants.is_empty() {
        return Err("the test declares no variant".into());
    }
    Ok(variants)
}

/// Why a finished boot does not meet the variant's expectations, if it does not: its exit
/// status and TIMER-REPORT verdict (`--expect`, default `ok`; a kernel that reports nothing
/// passes only a variant that declares `--expect crash`), its log texts and report checks.
fn verdict(v: &Variant, outcome: &Outcome, log: &str) -> Result<(), String> {
    let expect = v.options.expect;
    let wanted = match expect {
        Expect::Ok | Expect::Degraded => Outcome::KernelSuccess,
        Expect::Failed | Expect::Crash => Outcome::KernelFailure,
        Expect::NoWake => Outcome::SuspendedNoWake(v.options.wake_within),
    };
    if *outcome != wanted {
        return Err(format!("expected: {}; got: {}", wanted.describe(), outcome.describe_with_log(log)));
    }
    let report = report::find(log);
    match (expect.verdict(), &report) {
        (None, Ok(_)) => {
            return Err(format!(
                "{}; but the variant expects a crash before any report, and the log has a TIMER-REPORT line",
                outcome.describe()
            ));
        }
        (None, Err(_)) => {}
        (Some(_), Err(why)) => {
            return Err(format!(
                "{}; but {why} (a variant whose kernel does not report says --expect crash)",
                outcome.describe()
            ));
        }
        (Some(wanted), Ok(r)) => {
            let got = r.get("verdict").and_then(|v| v.as_str()).unwrap_or("(none)");
            if got != wanted {
                let fallbacks = r.get("fallbacks").map(|f| f.to_string()).unwrap_or_default();
                return Err(format!(
                    "{}; but the TIMER-REPORT verdict is {got}, expected {wanted} (fallbacks: {fallbacks}; lost {}, early {})",
                    outcome.describe(),
                    r.get("lost_events").unwrap_or(&serde_json::Value::Null),
                    r.get("early_events").unwrap_or(&serde_json::Value::Null),
                ));
            }
        }
    }
    let missing: Vec<&String> = v.options.expect_log.iter().filter(|t| !log.contains(t.as_str())).collect();
    if !missing.is_empty() {
        return Err(format!("{}; but the serial log lacks {missing:?}", outcome.describe()));
    }
    if !v.options.expect_report.is_empty() {
        let r = report?;
        let failures: Vec<String> =
            v.options.expect_report.iter().filter_map(|c| report::check(&r, c).err()).collect();
        if !failures.is_empty() {
            return Err(format!("{}; but the report fails: {}", outcome.describe(), failures.join("; ")));
        }
    }
    Ok(())
}

fn test_name(elf: &Path) -> String {
    let stem = elf.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    // cargo names test binaries `<name>-<16 hex digits>`.
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            name.to_string()
        }
        _ => stem,
    }
}

/// `TEST_TIMEOUT_SCALE=N` (set by `scripts/test --load`): every variant's wall-clock limit
/// times N, for a loaded host, where QEMU itself runs slower (a 10 s icount variant took over
/// 90 s beside two busy processes per core); the kernel's verdicts do not depend on it.
fn timeout_scale(value: Option<&str>) -> Result<u32, String> {
    match value {
        None | Some("") => Ok(1),
        Some(v) => match v.parse::<u32>() {
            Ok(n @ 1..=100) => Ok(n),
            _ => Err(format!("TEST_TIMEOUT_SCALE={v}: expected a whole number from 1 to 100")),
        },
    }
}

/// What one variant's boot came to.
enum VariantResult {
    Passed(std::time::Duration),
    /// A configuration this QEMU cannot run (x2APIC on QEMU 7.2): reported, not failed.
    Ignored(String),
    /// Why, with the serial log.
    Failed(String),
}

/// Boots one variant and judges it.
fn run_variant(elf: &Path, v: &Variant, full: &str, show_log: bool) -> VariantResult {
    if let Some(why) = qemu::version().ok().and_then(|q| qemu::cpu_model(&v.options, q).err()) {
        return VariantResult::Ignored(why.0);
    }
    let result = image::disk_image(elf, v.options.firmware)
        .and_then(|img| {
            qemu::boot(&v.options, &img, move |line| {
                if show_log {
                    println!("    | {line}");
                }
            })
        })
        .and_then(|boot| {
            verdict(v, &boot.outcome, &boot.log)
                .map(|()| boot.elapsed)
                .map_err(|why| format!("{why}\n---- serial log of {full} ----\n{}---- end ----", boot.log))
        });
    match result {
        Ok(elapsed) => VariantResult::Passed(elapsed),
        Err(why) => VariantResult::Failed(why),
    }
}

/// How many variants boot at once: libtest's `--test-threads N` (or `=N`), else
/// `RUST_TEST_THREADS`, else two (or one on a one-core host). Two QEMUs side by side is also
/// the load the guide asks every QEMU test to pass under: a vCPU descheduled for milliseconds.
fn test_threads(args: &[String]) -> Result<usize, String> {
    let mut value = std::env::var("RUST_TEST_THREADS").ok();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--test-threads" {
            value = it.next().cloned();
        } else if let Some(v) = a.strip_prefix("--test-threads=") {
            value = Some(v.to_string());
        }
    }
    match value {
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get()).min(2)),
        Some(v) => match v.parse::<usize>() {
            Ok(n @ 1..=64) => Ok(n),
            _ => Err(format!("--test-threads {v}: expected a whole number from 1 to 64")),
        },
    }
}

/// The test filters among the arguments: the words that are neither options nor an option's value.
fn test_filters(args: &[String]) -> Vec<&String> {
    let mut filters = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--test-threads" {
            it.next();
        } else if !a.starts_with('-') {
            filters.push(a);
        }
    }
    filters
}

fn run_tests(elf: &Path, spec: &str, args: &[String]) -> ExitCode {
    let binary = test_name(elf);
    let scaled = timeout_scale(std::env::var("TEST_TIMEOUT_SCALE").ok().as_deref()).and_then(|n| {
        let mut variants = parse_variants(spec)?;
        variants.iter_mut().for_each(|v| v.options.timeout *= n);
        Ok(variants)
    });
    let variants = match scaled {
        Ok(v) => v,
        Err(e) => {
            eprintln!("boot: {}: {e}", elf.display());
            return ExitCode::from(2);
        }
    };
    let jobs = match test_threads(args) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("boot: {e}");
            return ExitCode::from(2);
        }
    };
    let filters: Vec<&String> = test_filters(args);
    let list_only = args.iter().any(|a| a == "--list");
    // As with libtest, `--nocapture` shows the output (here: the serial log) of passing tests too,
    // one variant at a time so that the logs do not interleave.
    let show_log = args.iter().any(|a| a == "--nocapture");
    let jobs = if show_log { 1 } else { jobs };
    let selected: Vec<&Variant> = variants
        .iter()
        .filter(|v| {
            let full = format!("{binary}::{}", v.name);
            filters.is_empty() || filters.iter().any(|f| full.contains(f.as_str()))
        })
        .collect();
    if list_only {
        for v in &selected {
            println!("{binary}::{}: test", v.name);
        }
        return ExitCode::SUCCESS;
    }
    let start = Instant::now();
    println!("\nrunning {} QEMU variant(s) of {binary}, {jobs} at a time", selected.len());
    // Each disk image is built before any boot, so that no two boots write the same file.
    for v in &selected {
        let _ = image::disk_image(elf, v.options.firmware);
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, VariantResult)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.min(selected.len()).max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(v) = selected.get(i) else { break };
                    let full = format!("{binary}::{}", v.name);
                    let result = run_variant(elf, v, &full, show_log);
                    match &result {
                        VariantResult::Passed(elapsed) => {
                            println!("test {full} ... ok ({:.1} s)", elapsed.as_secs_f64())
                        }
                        VariantResult::Ignored(why) => println!("test {full} ... ignored, {why}"),
                        VariantResult::Failed(_) => println!("test {full} ... FAILED"),
                    }
                    results.lock().unwrap_or_else(|e| e.into_inner()).push((i, result));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(i, _)| *i);
    let ignored = results.iter().filter(|(_, r)| matches!(r, VariantResult::Ignored(_))).count();
    let failed: Vec<(String, String)> = results
        .into_iter()
        .filter_map(|(i, r)| match r {
            VariantResult::Failed(why) => Some((format!("{binary}::{}", selected[i].name), why)),
            _ => None,
        })
        .collect();
    for (name, why) in &failed {
        println!("\n---- {name} ----\n{why}");
    }
    let passed = selected.len() - failed.len() - ignored;
    let status = if failed.is_empty() { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {status}. {passed} passed; {} failed; {ignored} ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        failed.len(),
        variants.len() - selected.len(),
        start.elapsed().as_secs_f64()
    );
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse_with_comments_and_padding() {
        let v = parse_variants("# a comment\nbios: --smp 2\n\n uefi : --uefi --expect crash\0\0").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].name, "bios");
        assert_eq!(v[0].options.smp, 2);
        assert_eq!(v[1].name, "uefi");
        assert_eq!(v[1].options.expect, Expect::Crash);
        assert_eq!(v[0].options.expect, Expect::Ok, "by default a variant expects verdict ok");
        assert_eq!(v[1].options.variant.as_deref(), Some("uefi"), "the kernel is told its variant");
    }

    #[test]
    fn test_threads_come_from_libtest_options_and_are_not_filters() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(test_threads(&args(&["--test-threads", "3", "smp"])), Ok(3));
        assert_eq!(test_threads(&args(&["--test-threads=1"])), Ok(1));
        assert!(test_threads(&args(&["--test-threads=0"])).is_err());
        assert!(test_threads(&args(&["--test-threads", "many"])).is_err());
        let a = args(&["--test-threads", "3", "smp", "--nocapture", "hotplug"]);
        assert_eq!(test_filters(&a), [&a[2], &a[4]], "the option's value is not a filter");
    }

    #[test]
    fn empty_or_malformed_spec_is_an_error() {
        assert!(parse_variants("").is_err());
        assert_eq!(timeout_scale(None), Ok(1));
        assert_eq!(timeout_scale(Some("4")), Ok(4));
        assert!(timeout_scale(Some("0")).is_err());
        assert!(timeout_scale(Some("four")).is_err());
        assert!(parse_variants("no colon here").is_err());
        assert!(parse_variants("a: --smp").is_err());
        assert!(parse_variants("Bad-Name: --smp 2").is_err(), "names are a-z, 0-9 and _");
    }

    #[test]
    fn expected_crash_needs_its_log_text_and_no_report() {
        let v = &parse_variants("panic: --expect crash --expect-log 'panicked at'").unwrap()[0];
        assert!(verdict(v, &Outcome::KernelFailure, "KERNEL panicked at x.rs:1").is_ok());
        assert!(verdict(v, &Outcome::KernelFailure, "page fault").is_err());
        assert!(verdict(v, &Outcome::KernelSuccess, "panicked at").is_err());
        assert!(verdict(v, &Outcome::NoVerdict, "panicked at").is_err());
        let reported = "panicked at\nTIMER-REPORT {\"verdict\":\"failed\"}";
        assert!(verdict(v, &Outcome::KernelFailure, reported).is_err(), "a crash does not report");
    }

    #[test]
    fn every_variant_checks_its_verdict() {
        let report = |verdict: &str| format!("TIMER-REPORT {{\"verdict\":\"{verdict}\"}}");
        let plain = &parse_variants("plain:").unwrap()[0];
        assert!(verdict(plain, &Outcome::KernelSuccess, &report("ok")).is_ok());
        let why = verdict(plain, &Outcome::KernelSuccess, &report("degraded")).unwrap_err();
        assert!(why.contains("verdict is degraded, expected ok"), "{why}");
        let why = verdict(plain, &Outcome::KernelSuccess, "no report at all").unwrap_err();
        assert!(why.contains("no TIMER-REPORT"), "{why}");
        let degraded = &parse_variants("d: --expect degraded").unwrap()[0];
        assert!(verdict(degraded, &Outcome::KernelSuccess, &report("degraded")).is_ok());
        assert!(verdict(degraded, &Outcome::KernelSuccess, &report("ok")).is_err());
        let failed = &parse_variants("f: --expect failed").unwrap()[0];
        assert!(verdict(failed, &Outcome::KernelFailure, &report("failed")).is_ok());
        assert!(
            verdict(failed, &Outcome::KernelSuccess, &report("failed")).is_err(),
            "failed exits with failure"
        );
        assert!(
            verdict(failed, &Outcome::KernelFailure, "KERNEL PANIC: x").is_err(),
            "a panic is not a verdict"
        );
    }

    #[test]
    fn unexpected_failure_says_what_the_log_shows() {
        let v = &parse_variants("ok:").unwrap()[0];
        let why = verdict(v, &Outcome::KernelFailure, "EXCEPTION: Double Fault (vector 8)\n").unwrap_err();
        assert!(why.contains("got: kernel reported failure: the log shows a fatal exception"), "{why}");
    }

    #[test]
    fn report_expectations_are_checked() {
        let v = &parse_variants("r: --expect-report /verdict=ok --expect-report /hpet/comparators#=3")
            .unwrap()[0];
        let good = "TIMER-REPORT {\"verdict\":\"ok\",\"hpet\":{\"comparators\":[1,2,3]}}";
        let bad = "TIMER-REPORT {\"verdict\":\"ok\",\"hpet\":{\"comparators\":[1]}}";
        assert!(verdict(v, &Outcome::KernelSuccess, good).is_ok());
        assert!(verdict(v, &Outcome::KernelSuccess, bad).is_err());
        assert!(verdict(v, &Outcome::KernelSuccess, "no report").is_err());
    }

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn without_an_elf_the_built_kernel_boots_with_every_argument() {
        let built = PathBuf::from(BUILT_KERNEL);
        for line in ["", "--smp 4", "--smp 4 -- -global hpet.timers=8", "-- -machine pc"] {
            let args = words(line);
            assert_eq!(command(&args), Command::Boot { elf: built.clone(), args: &args }, "{line:?}");
        }
        let args = words("bench --clock icount");
        assert_eq!(command(&args), Command::Bench { elf: built, args: &args[1..] });
    }

    #[test]
    fn a_first_word_that_is_no_option_names_the_elf() {
        let args = words("/t/deps/smp-0123456789abcdef memory::uefi --nocapture");
        let elf = PathBuf::from(&args[0]);
        assert_eq!(command(&args), Command::Boot { elf, args: &args[1..] });
        let args = words("bench /t/kernel --drift-s 0");
        assert_eq!(command(&args), Command::Bench { elf: PathBuf::from("/t/kernel"), args: &args[2..] });
        assert_eq!(command(&words("--help --smp 2")), Command::Help);
        assert_eq!(command(&words("-h")), Command::Help);
        let args = words("compare-linux linux.log kernel.log");
        assert_eq!(command(&args), Command::CompareLinux(&args[1..]));
    }

    #[test]
    fn the_built_kernel_is_a_bare_metal_elf() {
        let bytes = std::fs::read(BUILT_KERNEL).expect("the artifact dependency's kernel ELF");
        assert_eq!(&bytes[..4], b"\x7fELF");
        assert!(elf::section(&bytes, TEST_SECTION).is_none(), "the main kernel is no test kernel");
    }

    #[test]
    fn the_built_kernel_records_a_trace_only_with_the_feature() {
        // The recorder prints TRACE-BEGIN; without the feature only its empty stand-in is built
        // (the benchmark's builds: docs/cargo-and-debugging.md, "Trace timeline").
        let bytes = std::fs::read(BUILT_KERNEL).expect("the artifact dependency's kernel ELF");
        let recorder = bytes.windows(b"TRACE-BEGIN".len()).any(|w| w == b"TRACE-BEGIN");
        assert_eq!(recorder, cfg!(feature = "trace"));
    }

    #[test]
    fn cargo_hash_is_stripped_from_test_names() {
        assert_eq!(test_name(Path::new("/t/deps/heap-0123456789abcdef")), "heap");
        assert_eq!(test_name(Path::new("/t/debug/kernel")), "kernel");
        assert_eq!(test_name(Path::new("/t/deps/page-fault-xyz")), "page-fault-xyz");
    }
}
