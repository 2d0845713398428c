//! Clocksources: free-running counters turned into monotonic nanoseconds.
//!
//! A device implements [`Clocksource`]; [`install`] makes it the one behind [`now_ns`], which
//! the logger and every timeout use. A later, better source replaces an earlier one (the TSC is
//! first, before any platform timer is known).

use spin::RwLock;

/// A monotonic clock as a device offers it.
pub trait Clocksource: Sync {
    fn name(&self) -> &'static str;
    /// Nanoseconds since an origin of the device's choosing; never decreases.
    fn now_ns(&self) -> u64;
}

static CURRENT: RwLock<Option<&'static dyn Clocksource>> = RwLock::new(None);

/// Makes `source` the system clock. Callers keep the times they already took: the new source
/// should start from the old one's `now_ns` (see `MultShift` users).
pub fn install(source: &'static dyn Clocksource) {
    *CURRENT.write() = Some(source);
}

/// The system clock's nanoseconds, or 0 before any clocksource is installed.
pub fn now_ns() -> u64 {
    CURRENT.read().map_or(0, |c| c.now_ns())
}

/// Name of the clock behind [`now_ns`].
pub fn current_name() -> &'static str {
    CURRENT.read().map_or("none", |c| c.name())
}

/// Fixed-point conversion from counter ticks to nanoseconds: `ns = ticks * mult >> shift`.
///
/// The product is taken in 128 bits, so no tick count overflows it; the shift is as large as a
/// 64-bit `mult` allows, which keeps the rounding error below one part in 2^32 for counters up to
/// 4 GHz. Conversion rounds down, so a converted time is never later than the true one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultShift {
    pub mult: u64,
    pub shift: u32,
}

pub const NS_PER_S: u64 = 1_000_000_000;

impl MultShift {
    /// The conversion for a counter of `hz` ticks per second. `hz` must not be 0.
    pub fn ticks_to_ns(hz: u64) -> MultShift {
        assert!(hz > 0, "a counter of 0 Hz has no conversion");
        MultShift::ns_per_tick(NS_PER_S, hz)
    }

    /// The conversion for a counter whose tick lasts `numerator / denominator` ns (e.g. an
    /// HPET period in femtoseconds over 10^6 fs/ns). `denominator` must not be 0.
    pub fn ns_per_tick(numerator: u64, denominator: u64) -> MultShift {
        assert!(denominator > 0, "a tick length needs a non-zero denominator");
        let mult_for = |shift: u32| (u128::from(numerator) << shift) / u128::from(denominator);
        let mut shift = 63;
        while shift > 0 && mult_for(shift) > u128::from(u64::MAX) {
            shift -= 1;
        }
        MultShift { mult: mult_for(shift) as u64, shift }
    }

    pub fn apply(self, ticks: u64) -> u64 {
        let ns = (u128::from(ticks) * u128::from(self.mult)) >> self.shift;
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hundred_megahertz_is_ten_ns_per_tick() {
        let c = MultShift::ticks_to_ns(100_000_000);
        assert_eq!(c.apply(1), 10);
        assert_eq!(c.apply(100_000_000), NS_PER_S);
    }

    #[test]
    fn conversion_never_rounds_up() {
        for hz in [1u64, 32_768, 1_193_182, 14_318_180, 2_999_999_999, 4_000_000_000] {
            let c = MultShift::ticks_to_ns(hz);
            for ticks in [1u64, 7, hz, hz * 3 + 1, u64::from(u32::MAX), 1 << 50] {
                let exact = u128::from(ticks) * u128::from(NS_PER_S) / u128::from(hz);
                let got = u128::from(c.apply(ticks));
                if exact > u128::from(u64::MAX) {
                    assert_eq!(got, u128::from(u64::MAX), "{hz} Hz, {ticks} ticks must saturate");
                    continue;
                }
                assert!(got <= exact, "{hz} Hz, {ticks} ticks: {got} > {exact}");
                // Error below one part in 2^32, plus the final truncation.
                assert!(exact - got <= exact / (1 << 32) + 1, "{hz} Hz, {ticks} ticks: {got} vs {exact}");
            }
        }
    }

    #[test]
    fn hpet_period_in_femtoseconds_converts_exactly() {
        let c = MultShift::ns_per_tick(10_000_000, 1_000_000); // q35: 10 ns per tick
        assert_eq!(c.apply(123), 1230);
        let c = MultShift::ns_per_tick(69_841_279, 1_000_000); // 14.318 MHz
        assert_eq!(c.apply(14_318_180), 1_000_000_004); // exact: 1 000 000 004.6
    }

    #[test]
    fn huge_tick_counts_saturate_instead_of_wrapping() {
        let c = MultShift::ticks_to_ns(1);
        assert_eq!(c.apply(u64::MAX), u64::MAX);
    }
}
