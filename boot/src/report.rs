//! Checks on the kernel's `TIMER-REPORT {json}` line, for test variants:
//! `--expect-report '/hpet/period_fs=10000000'` (the value at a JSON pointer equals a JSON
//! value), `--expect-report '/hpet/comparators#=8'` (an array's length) and
//! `--expect-report '/tsc/warp_ns>=1000'` or `<=` (a number's bound).

use serde_json::Value;

pub const PREFIX: &str = "TIMER-REPORT ";

/// The JSON of the last report line in `log`.
pub fn find(log: &str) -> Result<Value, String> {
    let line = log
        .lines()
        .rev()
        .find_map(|l| l.find(PREFIX).map(|i| &l[i + PREFIX.len()..]))
        .ok_or("the serial log has no TIMER-REPORT line")?;
    serde_json::from_str(line.trim()).map_err(|e| format!("the TIMER-REPORT line is not valid JSON: {e}"))
}

/// Checks one `POINTER=VALUE` or `POINTER#=LENGTH` expectation.
pub fn check(report: &Value, expectation: &str) -> Result<(), String> {
    for (op, at_least) in [(">=", true), ("<=", false)] {
        if let Some((pointer, bound)) = expectation.split_once(op) {
            let bound: f64 = bound.parse().map_err(|_| format!("'{bound}' is not a number"))?;
            let found = report.pointer(pointer).ok_or_else(|| format!("the report has no {pointer}"))?;
            let n = found.as_f64().ok_or_else(|| format!("{pointer} is {found}, not a number"))?;
            let holds = if at_least { n >= bound } else { n <= bound };
            return if holds { Ok(()) } else { Err(format!("{pointer} is {found}, expected {op} {bound}")) };
        }
    }
    let (pointer, wanted, length) = if let Some((p, n)) = expectation.split_once("#=") {
        (p, n, true)
    } else if let Some((p, v)) = expectation.split_once('=') {
        (p, v, false)
    } else {
        return Err(format!("report expectation '{expectation}' has no '=', '#=', '>=' or '<='"));
    };
    let found = report.pointer(pointer).ok_or_else(|| format!("the report has no {pointer}"))?;
    if length {
        let n: usize = wanted.parse().map_err(|_| format!("'{wanted}' is not a length"))?;
        let len = found.as_array().map(Vec::len).ok_or_else(|| format!("{pointer} is not an array"))?;
        return if len == n { Ok(()) } else { Err(format!("{pointer} has {len} elements, expected {n}")) };
    }
    let wanted: Value = serde_json::from_str(wanted).unwrap_or_else(|_| Value::String(wanted.to_string()));
    if *found == wanted { Ok(()) } else { Err(format!("{pointer} is {found}, expected {wanted}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "[ 0.1] INFO main: x\nTIMER-REPORT {\"schema\":1}\nTIMER-REPORT {\"schema\":1,\"hpet\":{\"comparators\":[{},{}],\"period_fs\":10000000},\"verdict\":\"ok\",\"lapic\":null}\n";

    #[test]
    fn last_report_line_wins() {
        let r = find(LOG).unwrap();
        assert!(r.pointer("/hpet").is_some());
    }

    #[test]
    fn values_lengths_strings_and_nulls_compare() {
        let r = find(LOG).unwrap();
        assert_eq!(check(&r, "/hpet/period_fs=10000000"), Ok(()));
        assert_eq!(check(&r, "/hpet/comparators#=2"), Ok(()));
        assert_eq!(check(&r, "/verdict=ok"), Ok(()));
        assert_eq!(check(&r, "/verdict=\"ok\""), Ok(()));
        assert_eq!(check(&r, "/lapic=null"), Ok(()));
        assert!(check(&r, "/hpet/comparators#=3").is_err());
        assert!(check(&r, "/hpet/period_fs=1").is_err());
        assert!(check(&r, "/nothing=1").is_err());
        assert!(check(&r, "no-operator").is_err());
    }

    #[test]
    fn numbers_compare_against_bounds() {
        let r = find(LOG).unwrap();
        assert_eq!(check(&r, "/hpet/period_fs>=10000000"), Ok(()));
        assert_eq!(check(&r, "/hpet/period_fs<=10000000"), Ok(()));
        assert_eq!(check(&r, "/schema>=0.5"), Ok(()));
        assert_eq!(
            check(&r, "/hpet/period_fs>=10000001"),
            Err("/hpet/period_fs is 10000000, expected >= 10000001".into())
        );
        assert!(check(&r, "/hpet/period_fs<=9").is_err());
        assert!(check(&r, "/verdict>=1").is_err(), "a string is not a number");
        assert!(check(&r, "/hpet/period_fs>=ten").is_err());
    }

    #[test]
    fn missing_or_broken_report_is_an_error() {
        assert!(find("no report here").is_err());
        assert!(find("TIMER-REPORT {broken").is_err());
    }
}
