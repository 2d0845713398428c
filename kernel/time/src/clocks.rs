//! The three clocks a kernel's users ask for, as types that do not mix (Linux's
//! `CLOCK_MONOTONIC`, `CLOCK_REALTIME`, `CLOCK_BOOTTIME`):
//!
//! - MONOTONIC: [`Instant`], ns since the clocksource's origin; never
//!   steps, does not count time suspended.
//! - REALTIME: [`WallTime`], ns since 1970-01-01T00:00:00Z: MONOTONIC plus an offset, set from
//!   the RTC at boot and settable at run time (a step forwards or backwards); it counts time
//!   suspended.
//! - BOOTTIME: [`BootInstant`], MONOTONIC plus the time spent suspended; never steps.
//!
//! All three are read from one snapshot of the [`Timekeeper`](crate::clocksource::Timekeeper)
//! ([`Timekeeper::clocks`](crate::clocksource::Timekeeper::clocks)), lock-free: a reader sees
//! the three consistent with each other, before or after a step, never half of one.

use crate::instant::Instant;
use core::fmt;
use core::time::Duration;

/// Which clock a deadline or a reading is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClockId {
    /// [`Instant`].
    Monotonic,
    /// [`WallTime`].
    Realtime,
    /// [`BootInstant`].
    Boottime,
}

impl fmt::Display for ClockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClockId::Monotonic => "monotonic",
            ClockId::Realtime => "realtime",
            ClockId::Boottime => "boottime",
        })
    }
}

/// A point on REALTIME: ns since 1970-01-01T00:00:00Z (saturating at 0 and at `u64::MAX`,
/// about the year 2554).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct WallTime(u64);

impl WallTime {
    /// The epoch.
    pub const EPOCH: WallTime = WallTime(0);

    /// `ns` after the epoch.
    pub const fn from_nanos(ns: u64) -> WallTime {
        WallTime(ns)
    }

    /// Whole `seconds` after the epoch.
    pub const fn from_unix_seconds(seconds: u64) -> WallTime {
        WallTime(seconds.saturating_mul(1_000_000_000))
    }

    /// ns since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch.
    pub const fn unix_seconds(self) -> u64 {
        self.0 / 1_000_000_000
    }

    /// `self + span`, saturating.
    pub fn saturating_add(self, span: Duration) -> WallTime {
        WallTime(self.0.saturating_add(u64::try_from(span.as_nanos()).unwrap_or(u64::MAX)))
    }
}

/// A point on BOOTTIME: ns since the clocksource's origin, time suspended included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BootInstant(u64);

impl BootInstant {
    /// `ns` after the origin.
    pub const fn from_nanos(ns: u64) -> BootInstant {
        BootInstant(ns)
    }

    /// ns since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }
}

/// The offsets that make REALTIME and BOOTTIME from MONOTONIC, as one snapshot holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offsets {
    /// REALTIME minus MONOTONIC, ns.
    pub realtime_ns: i64,
    /// Time spent suspended: BOOTTIME minus MONOTONIC, ns.
    pub suspended_ns: u64,
}

impl Offsets {
    /// The three clocks at MONOTONIC `now`.
    pub fn at(&self, now: Instant) -> Clocks {
        let ns = now.as_nanos();
        let real = if self.realtime_ns >= 0 {
            ns.saturating_add(self.realtime_ns as u64)
        } else {
            ns.saturating_sub(self.realtime_ns.unsigned_abs())
        };
        Clocks {
            monotonic: now,
            realtime: WallTime(real),
            boottime: BootInstant(ns.saturating_add(self.suspended_ns)),
        }
    }

    /// The MONOTONIC instant at which REALTIME reads `t` (the epoch's side saturates at 0):
    /// where a REALTIME deadline is queued, until the next step.
    pub fn monotonic_at(&self, t: WallTime) -> Instant {
        let ns = t.as_nanos();
        Instant::from_nanos(if self.realtime_ns >= 0 {
            ns.saturating_sub(self.realtime_ns as u64)
        } else {
            ns.saturating_add(self.realtime_ns.unsigned_abs())
        })
    }
}

/// A deadline on one of the three clocks: what a timer is armed for
/// (Linux's `hrtimer_init(.., clock_id, HRTIMER_MODE_ABS)`).
///
/// The timer queue counts on MONOTONIC ([`monotonic`](Self::monotonic) says where, with the
/// offsets of the moment). A REALTIME or BOOTTIME deadline moves on MONOTONIC when the offsets
/// change (a step of REALTIME, a resume), so such a timer is queued again then
/// (`CpuTick::retime`, Linux's `clock_was_set`), and [`reached`](Self::reached) is asked
/// again when it falls due: a timer whose clock was stepped back meanwhile is queued again,
/// never run early by the clock it was armed on.
///
/// ```
/// use kernel_time::clocks::{ClockDeadline, Offsets, WallTime};
/// use kernel_time::instant::Instant;
///
/// let at = ClockDeadline::Realtime(WallTime::from_nanos(5_000));
/// let offsets = Offsets { realtime_ns: 1_000, suspended_ns: 0 };
/// assert_eq!(at.monotonic(&offsets), Instant::from_nanos(4_000));
/// assert!(at.reached(&offsets, Instant::from_nanos(4_000)));
/// // REALTIME stepped back by a second: not due at the old place any more.
/// let back = Offsets { realtime_ns: 1_000 - 1_000_000_000, ..offsets };
/// assert!(!at.reached(&back, Instant::from_nanos(4_000)));
/// assert_eq!(at.monotonic(&back), Instant::from_nanos(1_000_004_000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClockDeadline {
    /// On MONOTONIC.
    Monotonic(Instant),
    /// On REALTIME.
    Realtime(WallTime),
    /// On BOOTTIME.
    Boottime(BootInstant),
}

impl ClockDeadline {
    /// The clock it is on.
    pub fn clock(&self) -> ClockId {
        match self {
            ClockDeadline::Monotonic(_) => ClockId::Monotonic,
            ClockDeadline::Realtime(_) => ClockId::Realtime,
            ClockDeadline::Boottime(_) => ClockId::Boottime,
        }
    }

    /// ns on its own clock.
    pub fn as_nanos(&self) -> u64 {
        match *self {
            ClockDeadline::Monotonic(t) => t.as_nanos(),
            ClockDeadline::Realtime(t) => t.as_nanos(),
            ClockDeadline::Boottime(t) => t.as_nanos(),
        }
    }

    /// The MONOTONIC instant at which its clock reads it, with `offsets` (the first such
    /// instant: the clock reads the deadline or later from there on, until the offsets
    /// change; a deadline before MONOTONIC's origin maps to the origin).
    pub fn monotonic(&self, offsets: &Offsets) -> Instant {
        match *self {
            ClockDeadline::Monotonic(t) => t,
            ClockDeadline::Realtime(t) => offsets.monotonic_at(t),
            ClockDeadline::Boottime(t) => {
                Instant::from_nanos(t.as_nanos().saturating_sub(offsets.suspended_ns))
            }
        }
    }

    /// Whether its clock reads it or later at MONOTONIC `now`, with `offsets`.
    pub fn reached(&self, offsets: &Offsets, now: Instant) -> bool {
        let c = offsets.at(now);
        match *self {
            ClockDeadline::Monotonic(t) => now >= t,
            ClockDeadline::Realtime(t) => c.realtime >= t,
            ClockDeadline::Boottime(t) => c.boottime >= t,
        }
    }
}

/// The three clocks read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clocks {
    /// MONOTONIC.
    pub monotonic: Instant,
    /// REALTIME.
    pub realtime: WallTime,
    /// BOOTTIME.
    pub boottime: BootInstant,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_make_each_clock_and_map_a_wall_deadline_back() {
        let o = Offsets { realtime_ns: 1_000_000_000_000, suspended_ns: 7 };
        let c = o.at(Instant::from_nanos(500));
        assert_eq!(c.realtime, WallTime::from_nanos(1_000_000_000_500));
        assert_eq!(c.boottime, BootInstant::from_nanos(507));
        assert_eq!(o.monotonic_at(WallTime::from_nanos(1_000_000_000_900)), Instant::from_nanos(900));
        // A wall clock set before the monotonic origin's wall time: negative offset.
        let back = Offsets { realtime_ns: -300, suspended_ns: 0 };
        assert_eq!(back.at(Instant::from_nanos(200)).realtime, WallTime::EPOCH, "saturates at the epoch");
        assert_eq!(back.monotonic_at(WallTime::from_nanos(100)), Instant::from_nanos(400));
    }

    #[test]
    fn a_deadline_maps_to_the_first_monotonic_instant_its_clock_reads_it() {
        // Checked against the clock itself: at the mapped instant the clock reads the deadline
        // or later, one ns before it reads less (away from the saturating edges).
        let offsets = [
            Offsets { realtime_ns: 1_936_778_400_000_000_000, suspended_ns: 0 },
            Offsets { realtime_ns: -5_000, suspended_ns: 3_000 },
            Offsets { realtime_ns: 7, suspended_ns: 1_000_000 },
        ];
        for o in offsets {
            for ns in [10_000_000u64, 1_936_778_400_123_456_789] {
                for d in [
                    ClockDeadline::Monotonic(Instant::from_nanos(ns)),
                    ClockDeadline::Realtime(WallTime::from_nanos(ns)),
                    ClockDeadline::Boottime(BootInstant::from_nanos(ns)),
                ] {
                    let m = d.monotonic(&o);
                    let reads = |at: Instant| match d.clock() {
                        ClockId::Monotonic => at.as_nanos(),
                        ClockId::Realtime => o.at(at).realtime.as_nanos(),
                        ClockId::Boottime => o.at(at).boottime.as_nanos(),
                    };
                    if m.as_nanos() == 0 {
                        assert!(reads(m) >= ns || d.clock() == ClockId::Realtime, "{d:?} {o:?}");
                        continue;
                    }
                    assert!(reads(m) >= ns && d.reached(&o, m), "{d:?} {o:?}: early at {m:?}");
                    let before = Instant::from_nanos(m.as_nanos() - 1);
                    assert!(reads(before) < ns && !d.reached(&o, before), "{d:?} {o:?}: late");
                    assert_eq!(d.as_nanos(), ns);
                }
            }
        }
    }

    #[test]
    fn wall_time_in_seconds() {
        assert_eq!(WallTime::from_unix_seconds(1_936_778_400).unix_seconds(), 1_936_778_400);
        assert_eq!(WallTime::from_unix_seconds(u64::MAX).as_nanos(), u64::MAX, "saturates");
    }
}
