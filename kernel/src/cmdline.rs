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
}

impl Default for KernelOptions {
    fn default() -> Self {
        KernelOptions { loglevel: LevelFilter::Info }
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
        match name {
            "loglevel" => {
                const EXPECTED: &str = "off, error, warn, info, debug or trace";
                match value {
                    None | Some("") => {
                        problems.push(OptionProblem::MissingValue { name: "loglevel", expected: EXPECTED })
                    }
                    Some(v) => match parse_level(v) {
                        Some(level) => options.loglevel = level,
                        None => problems.push(OptionProblem::BadValue {
                            name: "loglevel",
                            value: v.to_string(),
                            expected: EXPECTED,
                        }),
                    },
                }
            }
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
}
