//! `cargo run` at the root boots the kernel as `scripts/run` does: the run options after `--`,
//! QEMU's after a second `--`, and `scripts/run`'s exit status.

mod common;

use std::process::Output;

/// `cargo run --quiet -- ARGS` at the root.
fn cargo_run(args: &[&str]) -> Output {
    common::cargo().args(["run", "--quiet", "--"]).args(args).output().expect("cargo runs")
}

/// The TIMER-REPORT line's JSON, or a panic showing everything the run printed.
fn timer_report(run: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&run.stdout);
    let shown = || format!("status {}\n{stdout}{}", run.status, String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "cargo run failed: {}", shown());
    let line = stdout.lines().find_map(|l| l.strip_prefix("TIMER-REPORT ")).unwrap_or_else(|| {
        panic!("no TIMER-REPORT line: {}", shown());
    });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("TIMER-REPORT is no JSON ({e}): {}", shown()))
}

#[test]
fn cargo_run_smp2_boots_both_cpus_and_reports() {
    let report = timer_report(&cargo_run(&["--smp", "2"]));
    assert_eq!(report["cpus_online"], 2);
    assert_ne!(report["verdict"], "failed");
}

#[test]
fn arguments_after_a_second_separator_reach_qemu() {
    let run = cargo_run(&["--cmdline", "duration_ms=10", "--", "-global", "hpet.timers=8"]);
    let comparators = timer_report(&run)["hpet"]["comparators"].as_array().map(Vec::len);
    assert_eq!(comparators, Some(8));
}

#[test]
fn exit_status_is_the_runners() {
    // A usage error is 2 (not cargo's 101).
    assert_eq!(cargo_run(&["--smp"]).status.code(), Some(2));
    // A run that outlives --timeout is 124.
    let run = cargo_run(&["--timeout", "1", "--cmdline", "duration_ms=600000"]);
    assert_eq!(run.status.code(), Some(124), "{}", String::from_utf8_lossy(&run.stderr));
}
