//! Interrupt destinations: how an IOAPIC redirection entry and an MSI (HPET FSB) message name
//! the CPU they interrupt, and which CPUs they can name at all.
//!
//! APIC ids are 32 bits in x2APIC mode (IPIs carry all 32 in the ICR), but without interrupt
//! remapping an IOAPIC entry or an MSI address holds an 8-bit physical destination (IOAPIC
//! bits 63:56, MSI address bits 19:12; SDM vol. 3A 11.11.1, 82093AA 3.2.4), and 0xff there
//! means every CPU: ids 0..=254 are reachable. A hypervisor that offers the extended
//! destination id (KVM's `KVM_FEATURE_MSI_EXT_DEST_ID`) takes 7 more bits (IOAPIC bits 55:49,
//! MSI address bits 11:5), ids up to 0x7fff. A CPU beyond the format cannot be interrupted this
//! way: an id is refused ([`Unreachable`]), never truncated onto another CPU or the broadcast id.
//!
//! Which format a machine uses is the kernel's to find out (the hypervisor's CPUID leaves);
//! this module encodes and checks ids for a format it is given.

use core::fmt;

/// How interrupt messages name their destination CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationFormat {
    /// 8-bit physical APIC id (0xff is the broadcast id): ids 0..=254.
    Physical8,
    /// 15-bit physical APIC id, bits 14:8 in the extended destination id field: ids 0..=0x7ffe.
    Extended15,
}

/// A CPU that the format cannot name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable {
    /// The APIC id asked for.
    pub apic_id: u32,
    /// The format that cannot name it.
    pub format: DestinationFormat,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "APIC id {} is beyond what {} destinations name (up to {})",
            self.apic_id,
            self.format,
            self.format.max_apic_id()
        )
    }
}

impl fmt::Display for DestinationFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// MSI address: the fixed 0xfee prefix (bits 31:20), physical destination mode, no
/// redirection hint (SDM 11.11.1).
const MSI_ADDRESS_BASE: u32 = 0xfee0_0000;

impl DestinationFormat {
    /// How the format is named in messages (`8-bit`, `15-bit (extended destination id)`).
    #[inline]
    pub fn name(self) -> &'static str {
        match self {
            DestinationFormat::Physical8 => "8-bit",
            DestinationFormat::Extended15 => "15-bit (extended destination id)",
        }
    }

    /// The highest APIC id a message in this format can name alone.
    #[inline]
    pub const fn max_apic_id(self) -> u32 {
        match self {
            // 0xff is "every CPU".
            DestinationFormat::Physical8 => 0xfe,
            // 0x7fff is its broadcast too.
            DestinationFormat::Extended15 => 0x7ffe,
        }
    }

    /// Whether a message in this format can name `apic_id` alone.
    #[inline]
    pub fn reaches(self, apic_id: u32) -> bool {
        apic_id <= self.max_apic_id()
    }

    fn check(self, apic_id: u32) -> Result<u32, Unreachable> {
        if self.reaches(apic_id) { Ok(apic_id) } else { Err(Unreachable { apic_id, format: self }) }
    }

    /// The destination bits of an IOAPIC redirection entry (its upper 32 bits' share of the
    /// 64-bit entry: bits 63:56 the id's low 8 bits, bits 55:49 bits 14:8 when extended).
    #[inline]
    pub fn ioapic_bits(self, apic_id: u32) -> Result<u64, Unreachable> {
        let id = u64::from(self.check(apic_id)?);
        Ok((id & 0xff) << 56 | (id >> 8 & 0x7f) << 49)
    }

    /// The MSI address and data delivering `vector` to `apic_id`: fixed delivery, edge,
    /// physical destination (SDM 11.11.1-2); the HPET's FSB route takes them as they are.
    #[inline]
    pub fn msi_message(self, apic_id: u32, vector: u8) -> Result<(u32, u32), Unreachable> {
        let id = self.check(apic_id)?;
        Ok((MSI_ADDRESS_BASE | (id & 0xff) << 12 | (id >> 8 & 0x7f) << 5, u32::from(vector)))
    }
}

/// The APIC id an IOAPIC entry's destination bits name (the inverse of `ioapic_bits`).
#[inline]
pub const fn apic_id_from_ioapic_bits(raw: u64) -> u32 {
    ((raw >> 56) & 0xff | ((raw >> 49) & 0x7f) << 8) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use DestinationFormat::{Extended15, Physical8};

    #[test]
    fn eight_bit_ids_fill_ioapic_bits_63_56() {
        assert_eq!(Physical8.ioapic_bits(0), Ok(0));
        assert_eq!(Physical8.ioapic_bits(3), Ok(0x0300_0000_0000_0000));
        assert_eq!(Physical8.ioapic_bits(254), Ok(0xfe00_0000_0000_0000));
        assert_eq!(apic_id_from_ioapic_bits(0xfe00_0000_0000_0000), 254);
    }

    #[test]
    fn ids_beyond_the_format_are_unreachable_not_truncated() {
        // 0xff would reach every CPU, 0x100 would wrap to CPU 0.
        for id in [0xff, 0x100, 0x1_0003, u32::MAX] {
            assert_eq!(Physical8.ioapic_bits(id), Err(Unreachable { apic_id: id, format: Physical8 }));
            assert!(Physical8.msi_message(id, 0x41).is_err());
        }
        assert!(Extended15.msi_message(0x7fff, 0x41).is_err());
        assert!(Extended15.ioapic_bits(0x8000).is_err());
        assert_eq!(
            Physical8.ioapic_bits(300).unwrap_err().to_string(),
            "APIC id 300 is beyond what 8-bit destinations name (up to 254)"
        );
    }

    #[test]
    fn extended_ids_put_bits_14_8_in_the_extended_field() {
        // IOAPIC: bits 55:49 hold id bits 14:8.
        let bits = Extended15.ioapic_bits(0x1234).unwrap();
        assert_eq!(bits, 0x34u64 << 56 | 0x12u64 << 49);
        assert_eq!(apic_id_from_ioapic_bits(bits), 0x1234);
        // Below 256 both formats agree.
        assert_eq!(Extended15.ioapic_bits(200), Physical8.ioapic_bits(200));
    }

    #[test]
    fn msi_address_carries_the_id_and_data_the_vector() {
        assert_eq!(Physical8.msi_message(0, 0x41), Ok((0xfee0_0000, 0x41)));
        assert_eq!(Physical8.msi_message(3, 0x41), Ok((0xfee0_3000, 0x41)));
        assert_eq!(Physical8.msi_message(254, 0x30), Ok((0xfeef_e000, 0x30)));
        // Extended: bits 19:12 the low 8 bits, bits 11:5 bits 14:8.
        assert_eq!(Extended15.msi_message(0x1ff, 0x30), Ok((0xfee0_0000 | 0xff << 12 | 0x01 << 5, 0x30)));
        assert_eq!(Extended15.msi_message(0x7ffe, 0x30).unwrap().0, 0xfee0_0000 | 0xfe << 12 | 0x7f << 5);
    }
}
