//! The typed registers: General Capabilities and ID, General Configuration, each comparator's
//! Configuration and Capability, and the FSB interrupt route's value.

use bitflags::bitflags;

/// General Capabilities and ID register (spec 2.3.4), as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities(pub u64);

impl Capabilities {
    /// REV_ID (bits 7:0): the implemented revision of the specification's function.
    #[inline]
    pub fn revision(self) -> u8 {
        self.0 as u8
    }

    /// How many comparators the block has: NUM_TIM_CAP (bits 12:8) holds the index of the
    /// last one.
    #[inline]
    pub fn comparators(self) -> usize {
        ((self.0 >> 8) & 0x1f) as usize + 1
    }

    /// COUNT_SIZE_CAP (bit 13): the main counter is 64 bits wide (else 32).
    #[inline]
    pub fn counter_64bit(self) -> bool {
        self.0 & (1 << 13) != 0
    }

    /// LEG_RT_CAP (bit 15): the block supports the legacy replacement route
    /// ([`GeneralConfig::LEGACY_ROUTE`]).
    #[inline]
    pub fn legacy_route_capable(self) -> bool {
        self.0 & (1 << 15) != 0
    }

    /// VENDOR_ID (bits 31:16), a PCI vendor id.
    #[inline]
    pub fn vendor_id(self) -> u16 {
        (self.0 >> 16) as u16
    }

    /// COUNTER_CLK_PERIOD (bits 63:32): the main counter's period in femtoseconds.
    #[inline]
    pub fn period_fs(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The main counter's frequency, 10^15 / period, rounded down; 0 for a period of 0 (which
    /// [`crate::check_capabilities`] rejects).
    #[inline]
    pub fn frequency_hz(self) -> u64 {
        const FS_PER_SECOND: u64 = 1_000_000_000_000_000;
        FS_PER_SECOND.checked_div(u64::from(self.period_fs())).unwrap_or(0)
    }
}

bitflags! {
    /// General Configuration register (spec 2.3.5). Other bits are kept as read
    /// (`from_bits_retain`) and written back unchanged.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct GeneralConfig: u64 {
        /// ENABLE_CNF: the main counter runs and comparators may interrupt.
        const ENABLE = 1 << 0;
        /// LEG_RT_CNF: comparator 0 drives IRQ0 / IOAPIC pin 2, comparator 1 IRQ8 / pin 8.
        const LEGACY_ROUTE = 1 << 1;
        const _ = !0;
    }
}

bitflags! {
    /// Timer N Configuration and Capability register (spec 2.3.8), its flag bits. The route
    /// field (bits 13:9) and the route capability (bits 63:32) are read and set with methods.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ComparatorConfig: u64 {
        /// Tn_INT_TYPE_CNF: level-triggered (the status bit holds the line until cleared).
        const LEVEL_TRIGGERED = 1 << 1;
        /// Tn_INT_ENB_CNF: the comparator interrupts when it matches.
        const INTERRUPT_ENABLE = 1 << 2;
        /// Tn_TYPE_CNF: periodic mode.
        const PERIODIC = 1 << 3;
        /// Tn_PER_INT_CAP (read-only): periodic mode is available.
        const PERIODIC_CAPABLE = 1 << 4;
        /// Tn_SIZE_CAP (read-only): a 64-bit comparator.
        const SIZE_64_CAPABLE = 1 << 5;
        /// Tn_VAL_SET_CNF: the next comparator write sets the periodic accumulator.
        const VALUE_SET = 1 << 6;
        /// Tn_32MODE_CNF: force a 64-bit comparator to 32 bits.
        const MODE_32BIT = 1 << 8;
        /// Tn_FSB_EN_CNF: deliver by FSB message (MSI) instead of an IOAPIC input.
        const FSB_ENABLE = 1 << 14;
        /// Tn_FSB_INT_DEL_CAP (read-only): FSB delivery is available.
        const FSB_CAPABLE = 1 << 15;
        const _ = !0;
    }
}

/// Tn_INT_ROUTE_CNF, bits 13:9.
const ROUTE_SHIFT: u32 = 9;
const ROUTE_MASK: u64 = 0x1f << ROUTE_SHIFT;

impl ComparatorConfig {
    /// Tn_INT_ROUTE_CNF: the IOAPIC input this comparator drives (unless FSB or the legacy
    /// route delivers it).
    #[inline]
    pub fn route(self) -> u8 {
        ((self.bits() & ROUTE_MASK) >> ROUTE_SHIFT) as u8
    }

    /// The same configuration driving IOAPIC input `gsi` (its low 5 bits; check it against
    /// [`ComparatorConfig::allows_route`] first: spec 2.3.8, a route the comparator does not
    /// support does not read back as written).
    #[inline]
    pub fn with_route(self, gsi: u8) -> ComparatorConfig {
        ComparatorConfig::from_bits_retain(
            (self.bits() & !ROUTE_MASK) | (u64::from(gsi & 0x1f) << ROUTE_SHIFT),
        )
    }

    /// Tn_INT_ROUTE_CAP (read-only): bit N set means IOAPIC input N is allowed.
    #[inline]
    pub fn route_capability(self) -> u32 {
        (self.bits() >> 32) as u32
    }

    /// Whether the route capability allows IOAPIC input `gsi`.
    #[inline]
    pub fn allows_route(self, gsi: u32) -> bool {
        gsi < 32 && self.route_capability() & (1 << gsi) != 0
    }
}

/// The Tn_FSB_INT_ROUTE value (spec 2.3.10) that sends `data` to `address`: FSB_INT_ADDR in
/// bits 63:32, FSB_INT_VAL in bits 31:0 (an MSI address and data).
#[inline]
pub const fn fsb_route(address: u32, data: u32) -> u64 {
    (address as u64) << 32 | data as u64
}

/// q35's HPET as QEMU 7.2 reports it: vendor 0x8086, 3 comparators, 64-bit, legacy capable.
#[cfg(test)]
pub(crate) const Q35_CAPS: u64 = (10_000_000 << 32) | (0x8086 << 16) | (1 << 15) | (1 << 13) | (2 << 8) | 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q35_capabilities_decode() {
        let c = Capabilities(Q35_CAPS);
        assert_eq!(c.revision(), 1);
        assert_eq!(c.comparators(), 3);
        assert!(c.counter_64bit() && c.legacy_route_capable());
        assert_eq!(c.vendor_id(), 0x8086);
        assert_eq!(c.period_fs(), 10_000_000);
        assert_eq!(c.frequency_hz(), 100_000_000);
    }

    #[test]
    fn frequency_of_a_zero_period_is_zero_not_a_panic() {
        assert_eq!(Capabilities(Q35_CAPS & 0xffff_ffff).frequency_hz(), 0);
        // The 14.31818 MHz HPET of many chipsets: a period of 69841279 fs, rounded down.
        assert_eq!(Capabilities(69_841_279 << 32).frequency_hz(), 14_318_179);
    }

    #[test]
    fn comparator_route_fields_round_trip() {
        let c = ComparatorConfig::from_bits_retain(0x00ff_0104_0000_8030);
        assert_eq!(c.route_capability(), 0x00ff_0104);
        assert!(c.contains(ComparatorConfig::FSB_CAPABLE | ComparatorConfig::PERIODIC_CAPABLE));
        let routed = c.with_route(17) | ComparatorConfig::LEVEL_TRIGGERED;
        assert_eq!(routed.route(), 17);
        assert_eq!(routed.route_capability(), 0x00ff_0104, "setting the route keeps the capability");
        assert_eq!(routed.with_route(2).route(), 2);
    }

    #[test]
    fn route_capability_allows_only_its_inputs() {
        let c = ComparatorConfig::from_bits_retain(0x00ff_0104 << 32);
        assert!(c.allows_route(2) && c.allows_route(8) && c.allows_route(23));
        assert!(!c.allows_route(0) && !c.allows_route(24));
        assert!(!c.allows_route(32) && !c.allows_route(u32::MAX), "no shift overflow");
    }

    #[test]
    fn fsb_route_puts_the_address_high_and_the_data_low() {
        assert_eq!(fsb_route(0xfee0_3000, 0x41), 0xfee0_3000_0000_0041);
    }
}
