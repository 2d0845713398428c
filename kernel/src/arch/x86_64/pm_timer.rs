//! The ACPI power management timer (ACPI 6.5 section 4.8.3.3): a free-running 24- or 32-bit
//! counter at 3.579545 MHz in I/O space, described by the FADT. A reference for calibration
//! and the watchdog, and the `acpi_pm` clocksource without an HPET.

use super::acpi::{PM_TIMER_HZ, PmTimerInfo};
use super::tsc;
use core::fmt;
use x86_64::instructions::port::Port;

/// A PM timer that was seen to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmTimer {
    pub port: u16,
    pub bits: u32,
}

/// Why the PM timer is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmTimerError {
    /// Two reads 100 us apart (by the TSC) gave the same value.
    NotCounting { value: u32 },
}

impl fmt::Display for PmTimerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PmTimerError::NotCounting { value } => {
                write!(f, "it does not count (reads {value:#x} 100 us apart)")
            }
        }
    }
}

/// Reads PM_TMR at `port` (the upper 8 bits of a 24-bit timer read as 0).
#[inline(always)]
pub fn read_port(port: u16) -> u32 {
    // SAFETY: callers pass the FADT's PM_TMR port (`PmTimer::probe` or the clocksource it
    // registered), a read-only counter register whose read has no side effects.
    unsafe { Port::<u32>::new(port).read() }
}

impl PmTimer {
    /// The FADT's PM timer, if it advances across 100 us of TSC time (about 358 ticks).
    pub fn probe(info: PmTimerInfo) -> Result<PmTimer, PmTimerError> {
        let before = read_port(info.port);
        let start = tsc::read();
        let wait = tsc::frequency_hz() / 10_000;
        while tsc::read().wrapping_sub(start) < wait {
            core::hint::spin_loop();
        }
        if read_port(info.port) == before {
            return Err(PmTimerError::NotCounting { value: before });
        }
        Ok(PmTimer { port: info.port, bits: info.bits })
    }

    pub fn read(&self) -> u32 {
        read_port(self.port)
    }

    pub fn frequency_hz(&self) -> u64 {
        PM_TIMER_HZ
    }

    /// Ticks from `earlier` to `later` across the counter's wrap.
    pub fn elapsed(&self, earlier: u32, later: u32) -> u32 {
        let mask = if self.bits >= 32 { u32::MAX } else { (1 << self.bits) - 1 };
        later.wrapping_sub(earlier) & mask
    }
}
