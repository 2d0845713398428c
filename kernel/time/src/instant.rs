//! Points and spans of the clocksource's time line as types: an [`Instant`] is nanoseconds
//! since the clocksource's origin, a span is a `core::time::Duration`. Arithmetic saturates:
//! a deadline past the end of time is "never", not a wrap into the past that would fire at once.

use core::ops::{Add, Sub};
use core::time::Duration;

/// A point on the monotonic clocksource, in nanoseconds since its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The last representable instant: "never".
    pub const NEVER: Instant = Instant(u64::MAX);

    /// The instant `ns` nanoseconds after the origin.
    #[inline]
    pub const fn from_nanos(ns: u64) -> Instant {
        Instant(ns)
    }

    /// Nanoseconds since the origin.
    #[inline]
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The span from `earlier` to `self`, zero if `earlier` is later.
    #[inline]
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `self + span`, `None` beyond the end of time.
    #[inline]
    pub fn checked_add(self, span: Duration) -> Option<Instant> {
        let ns = u64::try_from(span.as_nanos()).ok()?;
        self.0.checked_add(ns).map(Instant)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    /// Saturates at [`Instant::NEVER`].
    fn add(self, span: Duration) -> Instant {
        self.checked_add(span).unwrap_or(Instant::NEVER)
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    /// Saturates at zero.
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        let t = Instant::from_nanos(1_000);
        assert_eq!((t + Duration::from_micros(2)).as_nanos(), 3_000);
        assert_eq!(Instant::from_nanos(u64::MAX - 5) + Duration::from_secs(1), Instant::NEVER);
        assert_eq!(t + Duration::MAX, Instant::NEVER, "a Duration beyond u64 ns is never");
        assert_eq!(t - Instant::from_nanos(5_000), Duration::ZERO);
        assert_eq!(Instant::from_nanos(5_000) - t, Duration::from_nanos(4_000));
        assert!(t < t + Duration::from_nanos(1));
    }
}
