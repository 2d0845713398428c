//! The checks of the capabilities register before the block is used (spec 2.3.4, 2.3.9.2.1).

use crate::Capabilities;
use core::fmt;

/// Spec 2.3.9.2.1: COUNTER_CLK_PERIOD must be non-zero and at most 0x05F5E100 fs (100 ns).
pub const MAX_PERIOD_FS: u32 = 100_000_000;
/// The shortest period believed: 100 fs, a 10 THz counter. The specification only says
/// "non-zero"; anything faster is firmware reporting nonsense (real blocks run at 10-25 MHz),
/// and frequencies derived from it would overflow the multiplications that use them.
pub const MIN_PERIOD_FS: u32 = 100;

/// Why a capabilities value shows a block that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapabilityError {
    /// Every bit reads 1: nothing decodes the address (no device there).
    ReadsAllOnes,
    /// COUNTER_CLK_PERIOD is 0.
    PeriodZero,
    /// COUNTER_CLK_PERIOD is above [`MAX_PERIOD_FS`].
    PeriodTooLong {
        /// The period read, in femtoseconds.
        period_fs: u32,
    },
    /// COUNTER_CLK_PERIOD is non-zero but below [`MIN_PERIOD_FS`].
    PeriodTooShort {
        /// The period read, in femtoseconds.
        period_fs: u32,
    },
}

impl fmt::Display for CapabilityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CapabilityError::ReadsAllOnes => {
                write!(f, "its capabilities read all ones (no device decodes the address)")
            }
            CapabilityError::PeriodZero => write!(f, "its counter period is 0 fs"),
            CapabilityError::PeriodTooLong { period_fs } => write!(
                f,
                "its counter period {period_fs} fs exceeds the specification's {MAX_PERIOD_FS} fs (100 ns)"
            ),
            CapabilityError::PeriodTooShort { period_fs } => write!(
                f,
                "its counter period {period_fs} fs is below {MIN_PERIOD_FS} fs (a counter above 10 THz)"
            ),
        }
    }
}

/// The specification's checks on a capabilities value: something answers at the address, and
/// its counter period is within [`MIN_PERIOD_FS`]..=[`MAX_PERIOD_FS`]. Whether the counter counts needs the
/// hardware and a second clock, so it is the driver's check.
#[inline]
pub fn check_capabilities(caps: Capabilities) -> Result<(), CapabilityError> {
    if caps.0 == u64::MAX {
        return Err(CapabilityError::ReadsAllOnes);
    }
    match caps.period_fs() {
        0 => Err(CapabilityError::PeriodZero),
        p if p > MAX_PERIOD_FS => Err(CapabilityError::PeriodTooLong { period_fs: p }),
        p if p < MIN_PERIOD_FS => Err(CapabilityError::PeriodTooShort { period_fs: p }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registers::Q35_CAPS;

    #[test]
    fn q35_capabilities_pass() {
        assert_eq!(check_capabilities(Capabilities(Q35_CAPS)), Ok(()));
    }

    #[test]
    fn period_zero_or_above_100ns_is_rejected() {
        let with_period = |p: u64| Capabilities((Q35_CAPS & 0xffff_ffff) | (p << 32));
        assert_eq!(check_capabilities(with_period(0)), Err(CapabilityError::PeriodZero));
        assert_eq!(check_capabilities(with_period(100_000_000)), Ok(()));
        assert_eq!(
            check_capabilities(with_period(100_000_001)),
            Err(CapabilityError::PeriodTooLong { period_fs: 100_000_001 })
        );
        assert_eq!(check_capabilities(Capabilities(u64::MAX)), Err(CapabilityError::ReadsAllOnes));
    }

    #[test]
    fn period_below_100fs_is_rejected_and_fast_legal_ones_pass() {
        let with_period = |p: u64| Capabilities((Q35_CAPS & 0xffff_ffff) | (p << 32));
        assert_eq!(check_capabilities(with_period(1)), Err(CapabilityError::PeriodTooShort { period_fs: 1 }));
        assert_eq!(
            check_capabilities(with_period(99)),
            Err(CapabilityError::PeriodTooShort { period_fs: 99 })
        );
        assert_eq!(check_capabilities(with_period(100)), Ok(()));
        // 50 000 fs (20 GHz): legal, and above the 18.4 GHz where 1 s of ticks times 10^9
        // overflows a u64.
        assert_eq!(check_capabilities(with_period(50_000)), Ok(()));
        assert_eq!(with_period(100).frequency_hz(), 10_000_000_000_000);
    }

    #[test]
    fn errors_say_what_was_read() {
        assert_eq!(CapabilityError::PeriodZero.to_string(), "its counter period is 0 fs");
        assert_eq!(
            CapabilityError::PeriodTooLong { period_fs: 100_000_001 }.to_string(),
            "its counter period 100000001 fs exceeds the specification's 100000000 fs (100 ns)"
        );
        assert_eq!(
            CapabilityError::PeriodTooShort { period_fs: 7 }.to_string(),
            "its counter period 7 fs is below 100 fs (a counter above 10 THz)"
        );
    }
}
