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

/// `--trace FILE`: without the feature `trace` a usage error naming the command to run; with
/// it (as `scripts/run --trace` builds) a Chrome / Perfetto JSON file with both CPUs' tracks,
/// balanced interrupt slices, callbacks, device programming and arms, each CPU's timestamps in
/// order; the trace lines stay out of the echo. One test, in this order: a `cargo run` that
/// starts as the trace build is uplifted (`target/debug/boot` is shared) could run it.
#[test]
fn trace_needs_the_feature_then_writes_a_perfetto_timeline_of_both_cpus() {
    let run = cargo_run(&["--trace", "t.json"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("scripts/run --trace t.json"), "{stderr}");

    let file = std::env::temp_dir().join(format!("cargo-run-trace-{}.json", std::process::id()));
    let run = common::cargo()
        .args(["run", "--quiet", "--features", "trace", "--", "--smp", "2", "--trace"])
        .arg(&file)
        .args(["--cmdline", "duration_ms=200"])
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "status {}\n{stdout}{stderr}", run.status);
    assert!(!stdout.lines().any(|l| l.starts_with("TRACE")), "trace lines echoed:\n{stdout}");
    assert!(stderr.contains("trace written to"), "{stderr}");
    let text = std::fs::read_to_string(&file).expect("the trace file");
    let _ = std::fs::remove_file(&file);
    let json: serde_json::Value = serde_json::from_str(&text).expect("the trace is JSON");
    let events = json["traceEvents"].as_array().expect("traceEvents");
    for cpu in 0..2u64 {
        let name = format!("CPU {cpu}");
        assert!(
            events.iter().any(|e| e["name"] == "thread_name" && e["tid"] == cpu && e["args"]["name"] == name),
            "no track named {name}"
        );
        let mine: Vec<&serde_json::Value> =
            events.iter().filter(|e| e["tid"] == cpu && e["ph"] != "M").collect();
        assert!(!mine.is_empty(), "CPU {cpu} has no events");
        // Slices nest and close; timestamps never go back.
        let mut open: Vec<&str> = Vec::new();
        let mut last = f64::MIN;
        for e in &mine {
            let ts = e["ts"].as_f64().expect("ts");
            assert!(ts >= last, "CPU {cpu}: ts {ts} after {last}: {e}");
            last = ts;
            let name = e["name"].as_str().expect("name");
            match e["ph"].as_str() {
                Some("B") => open.push(name),
                Some("E") => assert_eq!(open.pop(), Some(name), "CPU {cpu}: unbalanced at {e}"),
                _ => {}
            }
        }
        assert!(open.is_empty(), "CPU {cpu}: slices left open: {open:?}");
        let irqs =
            mine.iter().filter(|e| e["ph"] == "B" && e["name"].as_str().unwrap().starts_with("irq ")).count();
        assert!(irqs > 0, "CPU {cpu} took no interrupt");
    }
    // The converter closed no slice for the kernel: every end was recorded (a few slices cut
    // by the ring's start or by the stop of recording aside).
    let meta = &json["otherData"];
    assert_eq!(meta["closed_inside"], 0, "slices whose end was never recorded: {meta}");
    assert!(
        meta["unmatched_ends"].as_u64() <= Some(8) && meta["closed_at_end"].as_u64() <= Some(8),
        "{meta}"
    );
    let count = |prefix: &str| {
        events.iter().filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with(prefix))).count()
    };
    assert!(count("callback") > 0 && count("program ") > 0, "no callback or no device programming");
    assert!(count("timer armed") + count("timer posted") > 0, "no timer armed");
    assert!(
        events.iter().any(|e| e["name"] == "callback" && e["args"]["lateness_ns"].is_i64()),
        "callbacks carry their lateness"
    );
}
