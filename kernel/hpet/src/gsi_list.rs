//! A route capability mask printed as the IOAPIC inputs it allows.

use core::fmt;

/// Formats a route capability mask ([`crate::ComparatorConfig::route_capability`]) as a GSI
/// list: `2, 8, 16-23`, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GsiList(pub u32);

impl fmt::Display for GsiList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return write!(f, "none");
        }
        let mut first = true;
        let mut n = 0;
        while n < 32 {
            if self.0 & (1 << n) == 0 {
                n += 1;
                continue;
            }
            let start = n;
            while n + 1 < 32 && self.0 & (1 << (n + 1)) != 0 {
                n += 1;
            }
            if !first {
                write!(f, ", ")?;
            }
            first = false;
            if start == n {
                write!(f, "{start}")?
            } else {
                write!(f, "{start}-{n}")?
            }
            n += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_capability_prints_as_gsi_ranges() {
        assert_eq!(GsiList(0x00ff_0104).to_string(), "2, 8, 16-23");
        assert_eq!(GsiList(0x4).to_string(), "2");
        assert_eq!(GsiList(0).to_string(), "none");
        assert_eq!(GsiList(0x8000_0001).to_string(), "0, 31");
        assert_eq!(GsiList(u32::MAX).to_string(), "0-31");
    }
}
