//! Fuzzes the kernel option parser (`kernel::cmdline::parse`): the command line comes from the
//! hypervisor's fw_cfg, as bytes the kernel takes for UTF-8 if they are.
//!
//! Checked on every input: no panic; every option stays within its documented range whatever
//! the line says; and the line is parsed word by word: its problems are those of its words in
//! order, so the blanks between words do not matter.
#![no_main]

use kernel::cmdline::{self, KernelOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    // The kernel rejects a command line that is not UTF-8 (fw_cfg.rs); only valid lines reach
    // the parser.
    let Ok(line) = core::str::from_utf8(input) else { return };
    let (options, problems) = cmdline::parse(line);
    check_ranges(&options);
    for p in &problems {
        let _ = p.to_string();
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(problems.len() <= words.len(), "{} problems for {} words", problems.len(), words.len());
    let per_word: Vec<_> = words.iter().flat_map(|w| cmdline::parse(w).1).collect();
    assert_eq!(problems, per_word, "problems are the words' problems, in order");
    assert_eq!(cmdline::parse(&words.join(" ")), (options, problems), "blanks between words matter");
});

fn check_ranges(o: &KernelOptions) {
    assert!((1..=10_000).contains(&o.hz), "hz={}", o.hz);
    assert!((1..=600_000).contains(&o.duration_ms), "duration_ms={}", o.duration_ms);
    assert!(
        o.tsc_skew.is_none_or(|s| s.cpu <= 63 && (1..=cmdline::MAX_TSC_SKEW_NS).contains(&s.ns)),
        "tsc_skew={:?}",
        o.tsc_skew
    );
    assert!(
        o.tsc_rate_ppm.is_none_or(|n| n != 0 && n.abs() <= cmdline::MAX_TSC_RATE_PPM),
        "tsc_rate_ppm={:?}",
        o.tsc_rate_ppm
    );
}
