//! The register window and the indirect registers behind it (82093AA datasheet 3.0-3.2).
//!
//! The chip decodes two 32-bit registers in its window: IOREGSEL selects an indirect register
//! by index, IOWIN then reads or writes it. Every indirect register is 32 bits; a redirection
//! entry is two of them.

use crate::RedirectionEntry;

/// IOREGSEL, the register select: its byte offset in the window.
pub const IOREGSEL: usize = 0x00;
/// IOWIN, the register data window: its byte offset in the window.
pub const IOWIN: usize = 0x10;
/// The window's size in bytes: what a driver maps.
pub const WINDOW_SIZE: usize = 0x20;

/// IOAPICID, the id register ([`Id`]).
pub const IOAPICID: u32 = 0x00;
/// IOAPICVER, the version register ([`Version`]).
pub const IOAPICVER: u32 = 0x01;
/// IOAPICARB, the arbitration id register.
pub const IOAPICARB: u32 = 0x02;
/// IOREDTBL: redirection entry N's low half is at index 0x10 + 2N, its high half at 0x11 + 2N.
pub const IOREDTBL: u32 = 0x10;
/// The redirection table has at most this many entries (the version register's 8-bit field
/// holds the last entry's index).
pub const MAX_PINS: u32 = 256;

/// The index of pin `pin`'s redirection entry, low half (vector, mode, polarity, trigger, mask).
#[inline]
pub const fn redirection_low(pin: u8) -> u32 {
    IOREDTBL + 2 * pin as u32
}

/// The index of pin `pin`'s redirection entry, high half (the destination).
#[inline]
pub const fn redirection_high(pin: u8) -> u32 {
    redirection_low(pin) + 1
}

/// The writes, (index, value) in order, that program pin `pin` with `entry` without the line
/// ever firing half-programmed: the low half masked first, then the high half, then the low
/// half as it should be.
#[inline]
pub fn redirection_writes(pin: u8, entry: RedirectionEntry) -> [(u32, u32); 3] {
    let raw = entry.encode();
    let low = raw as u32;
    [
        (redirection_low(pin), low | RedirectionEntry::MASK_BIT),
        (redirection_high(pin), (raw >> 32) as u32),
        (redirection_low(pin), low),
    ]
}

/// IOAPICVER as read (datasheet 3.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version(pub u32);

impl Version {
    /// The implementation's version (bits 7:0): 0x11 for the 82093AA, 0x20 for later chips.
    #[inline]
    pub fn version(self) -> u8 {
        self.0 as u8
    }

    /// Maximum Redirection Entry (bits 23:16): the index of the last entry.
    #[inline]
    pub fn max_redirection_entry(self) -> u8 {
        (self.0 >> 16) as u8
    }

    /// How many pins (redirection entries) the chip has: the last entry's index plus one.
    #[inline]
    pub fn pins(self) -> u32 {
        u32::from(self.max_redirection_entry()) + 1
    }
}

/// IOAPICID as read (datasheet 3.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Id(pub u32);

impl Id {
    /// The chip's 4-bit id (bits 27:24); the MADT's 8-bit id should agree in its low 4 bits.
    #[inline]
    pub fn id(self) -> u8 {
        ((self.0 >> 24) & 0xf) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirection_indices_interleave_low_and_high_halves() {
        assert_eq!((redirection_low(0), redirection_high(0)), (0x10, 0x11));
        assert_eq!((redirection_low(23), redirection_high(23)), (0x3e, 0x3f));
        assert_eq!(redirection_high(255), 0x20f, "no overflow at the last pin");
    }

    #[test]
    fn programming_masks_the_line_until_the_destination_is_written() {
        let entry =
            RedirectionEntry { vector: 0x30, masked: false, destination: 1, ..RedirectionEntry::masked() };
        let [first, high, last] = redirection_writes(2, entry);
        assert_eq!(first, (0x14, 0x0001_0030), "masked while the destination changes");
        assert_eq!(high, (0x15, 0x0100_0000));
        assert_eq!(last, (0x14, 0x30));
        let masked = redirection_writes(2, RedirectionEntry::masked());
        assert_eq!(masked[0], masked[2], "a masked entry stays masked throughout");
    }

    #[test]
    fn version_gives_the_pin_count() {
        // QEMU's IOAPIC: version 0x20, 24 entries.
        assert_eq!(Version(0x0017_0020).pins(), 24);
        assert_eq!(Version(0x0017_0020).max_redirection_entry(), 23);
        assert_eq!(Version(0x00ff_0011).pins(), MAX_PINS);
        assert_eq!(Version(0).pins(), 1);
    }

    #[test]
    fn id_is_bits_27_24() {
        assert_eq!(Id(0x0100_0000).id(), 1);
        assert_eq!(Id(0xff00_0000).id(), 0xf);
    }
}
