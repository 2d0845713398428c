// A driver naming another driver and another crate's `time`: no violation.
use core::time::Duration;
use kernel_time::time;
pub fn x() -> u64 {
    let _ = Duration::ZERO;
    time::f()
}
