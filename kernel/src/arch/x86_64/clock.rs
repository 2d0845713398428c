//! The clock the drivers bound their waits with (an AP's start-up, a cross-CPU call, ACPI's
//! `nanos_since_boot`), handed to them at bring-up by the kernel's time room ([`set`]): the
//! drivers never import the time code. Until it is handed over (the first lines of the boot),
//! the TSC at its calibrated frequency stands in.

use super::tsc;
use spin::Once;

static NOW_NS: Once<fn() -> u64> = Once::new();

/// Hands the drivers the system clock (monotonic nanoseconds). The first call wins.
pub fn set(now_ns: fn() -> u64) {
    NOW_NS.call_once(|| now_ns);
}

/// The system clock in nanoseconds, as handed over by [`set`]; before that, the TSC's own.
#[inline]
pub fn now_ns() -> u64 {
    match NOW_NS.get() {
        Some(now) => now(),
        None => tsc_ns(),
    }
}

/// The TSC in nanoseconds at its calibrated frequency (1 GHz assumed before calibration).
fn tsc_ns() -> u64 {
    let hz = match tsc::frequency_hz() {
        0 => 1_000_000_000,
        hz => hz,
    };
    (u128::from(tsc::read()) * 1_000_000_000 / u128::from(hz)) as u64
}
