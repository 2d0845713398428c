//! The redirection table entry, typed (82093AA datasheet 3.2.4).

use crate::destination;

/// How the interrupt is delivered (bits 10:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// To the destination CPU(s), at the entry's vector.
    Fixed = 0b000,
    /// To the lowest-priority CPU among the destination.
    LowestPriority = 0b001,
    /// A system management interrupt (the vector is ignored).
    Smi = 0b010,
    /// A non-maskable interrupt (the vector is ignored).
    Nmi = 0b100,
    /// An INIT (the vector is ignored).
    Init = 0b101,
    /// As from an external 8259A-compatible controller.
    ExtInt = 0b111,
}

/// The input pin's polarity (bit 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polarity {
    /// Active high (bit clear).
    ActiveHigh,
    /// Active low (bit set).
    ActiveLow,
}

/// The input pin's trigger mode (bit 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Edge-sensitive (bit clear).
    Edge,
    /// Level-sensitive (bit set): the CPU's EOI ends the interrupt at the chip.
    Level,
}

/// One redirection table entry: what interrupt an input pin raises, and at which CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedirectionEntry {
    /// The interrupt vector (bits 7:0).
    pub vector: u8,
    /// The delivery mode (bits 10:8).
    pub delivery: DeliveryMode,
    /// Logical destination mode (bit 11); physical (false) names one CPU by APIC id.
    pub logical: bool,
    /// The input's polarity (bit 13).
    pub polarity: Polarity,
    /// The input's trigger mode (bit 15).
    pub trigger: Trigger,
    /// The pin is masked (bit 16).
    pub masked: bool,
    /// The physical APIC id of the destination CPU: bits 63:56 hold its low 8 bits, bits 55:49
    /// its bits 14:8 where the platform has extended destination ids. [`Self::encode`] keeps
    /// 15 bits; whether the platform's format can name the id at all is
    /// [`crate::destination::DestinationFormat::ioapic_bits`]'s check.
    pub destination: u32,
}

impl RedirectionEntry {
    /// The mask bit (bit 16), in the entry's low 32-bit half.
    pub const MASK_BIT: u32 = 1 << 16;

    /// A masked entry: vector 0, fixed, physical, active high, edge, APIC id 0.
    #[inline]
    pub fn masked() -> RedirectionEntry {
        RedirectionEntry {
            vector: 0,
            delivery: DeliveryMode::Fixed,
            logical: false,
            polarity: Polarity::ActiveHigh,
            trigger: Trigger::Edge,
            masked: true,
            destination: 0,
        }
    }

    /// The entry's 64-bit value (low half at IOREDTBL + 2N, high half at + 1).
    #[inline]
    pub fn encode(self) -> u64 {
        u64::from(self.vector)
            | (self.delivery as u64) << 8
            | u64::from(self.logical) << 11
            | u64::from(self.polarity == Polarity::ActiveLow) << 13
            | u64::from(self.trigger == Trigger::Level) << 15
            | u64::from(self.masked) << 16
            | (u64::from(self.destination) & 0xff) << 56
            | (u64::from(self.destination) >> 8 & 0x7f) << 49
    }

    /// Decodes an entry; reserved delivery modes read as `Fixed`. The read-only status bits
    /// (delivery status, bit 12; remote IRR, bit 14) are dropped.
    #[inline]
    pub fn decode(raw: u64) -> RedirectionEntry {
        let delivery = match (raw >> 8) & 0b111 {
            0b001 => DeliveryMode::LowestPriority,
            0b010 => DeliveryMode::Smi,
            0b100 => DeliveryMode::Nmi,
            0b101 => DeliveryMode::Init,
            0b111 => DeliveryMode::ExtInt,
            _ => DeliveryMode::Fixed,
        };
        RedirectionEntry {
            vector: raw as u8,
            delivery,
            logical: raw & (1 << 11) != 0,
            polarity: if raw & (1 << 13) != 0 { Polarity::ActiveLow } else { Polarity::ActiveHigh },
            trigger: if raw & (1 << 15) != 0 { Trigger::Level } else { Trigger::Edge },
            masked: raw & (1 << 16) != 0,
            destination: destination::apic_id_from_ioapic_bits(raw),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_encoding_matches_the_datasheet() {
        let e = RedirectionEntry {
            vector: 0x31,
            delivery: DeliveryMode::Fixed,
            logical: false,
            polarity: Polarity::ActiveLow,
            trigger: Trigger::Level,
            masked: false,
            destination: 3,
        };
        assert_eq!(e.encode(), 0x0300_0000_0000_a031);
        assert_eq!(RedirectionEntry::decode(e.encode()), e);
        assert_eq!(RedirectionEntry::masked().encode(), 1 << 16);
        let nmi = RedirectionEntry { delivery: DeliveryMode::Nmi, ..RedirectionEntry::masked() };
        assert_eq!(RedirectionEntry::decode(nmi.encode()).delivery, DeliveryMode::Nmi);
    }

    #[test]
    fn every_delivery_mode_round_trips() {
        use DeliveryMode::*;
        for mode in [Fixed, LowestPriority, Smi, Nmi, Init, ExtInt] {
            let e = RedirectionEntry { delivery: mode, logical: true, ..RedirectionEntry::masked() };
            assert_eq!(RedirectionEntry::decode(e.encode()), e, "{mode:?}");
        }
        // Reserved encodings 0b011 and 0b110 read as fixed.
        assert_eq!(RedirectionEntry::decode(0b011 << 8).delivery, Fixed);
        assert_eq!(RedirectionEntry::decode(0b110 << 8).delivery, Fixed);
    }

    #[test]
    fn destination_is_an_apic_id_split_as_the_extended_format_says() {
        let e = RedirectionEntry { destination: 0x1234, ..RedirectionEntry::masked() };
        assert_eq!(e.encode() >> 49, 0x34 << 7 | 0x12, "bits 63:56 low byte, 55:49 bits 14:8");
        assert_eq!(RedirectionEntry::decode(e.encode()).destination, 0x1234);
        let e = RedirectionEntry { destination: 254, ..RedirectionEntry::masked() };
        assert_eq!(e.encode() >> 49, 254 << 7, "an 8-bit id leaves the extended bits clear");
    }

    #[test]
    fn decode_ignores_read_only_status_bits() {
        // Delivery status (bit 12) and remote IRR (bit 14) set.
        let e = RedirectionEntry::decode(0x5031);
        assert_eq!(e.vector, 0x31);
        assert_eq!(e.encode() & (1 << 12 | 1 << 14), 0);
    }
}
