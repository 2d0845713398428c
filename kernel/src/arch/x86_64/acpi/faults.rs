//! Fault injection for the firmware's MADT and FADT (`madt_fault=`, `fadt_fault=`; the runner's
//! `--madt-table` / `--fadt-table`): QEMU always supplies its own MADT and FADT and a second
//! table from `-acpitable` cannot stand in for them, so the kernel itself replaces the table it
//! read with a copy carrying the fault (rebuilt here, checksum fixed) before parsing it, and
//! says so. Each fault is one that firmware has been seen to ship; the parsers and the platform
//! bring-up must reject or repair it with a logged reason and boot on what is left.

use super::build::{fix_checksum, interrupt_override, io_apic, local_x2apic};
use super::{FADT_MIN_LEN, MADT_FIXED_LEN};
use alloc::vec::Vec;
use core::fmt;

/// A malformed MADT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MadtFault {
    /// The first IOAPIC's address is 0.
    IoapicAtZero,
    /// The first IOAPIC's address is the HPET block's (0xfed00000).
    IoapicOverHpet,
    /// A second IOAPIC claims the first one's GSIs.
    GsiOverlap,
    /// An interrupt source override sends ISA IRQ 3 to GSI 200, which no IOAPIC serves.
    OverrideUnknownGsi,
    /// The first processor is listed twice.
    DuplicateProcessor,
    /// An enabled Local x2APIC entry with the invalid id 0xffffffff.
    X2apicIdInvalid,
    /// The table ends in the middle of its last entry.
    Truncated,
    /// No IOAPIC entry.
    NoIoapic,
}

/// A malformed FADT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FadtFault {
    /// PM_TMR_BLK and X_PM_TMR_BLK are 0.
    PmTimerPortZero,
    /// PM_TMR_LEN is 3, not 4.
    PmTimerWidthWrong,
    /// PM1a_CNT_BLK and X_PM1a_CNT_BLK are 0.
    Pm1aCntZero,
    /// FIRMWARE_CTRL and X_FIRMWARE_CTRL (the FACS) are 0.
    FirmwareCtrlZero,
    /// CENTURY names CMOS byte 0x90, beyond CMOS RAM.
    CenturyOutOfRange,
    /// The table's length says 100 bytes, less than the fields every revision has.
    Truncated,
}

impl MadtFault {
    pub const ALL: [(&'static str, MadtFault); 8] = [
        ("ioapic-at-zero", MadtFault::IoapicAtZero),
        ("ioapic-over-hpet", MadtFault::IoapicOverHpet),
        ("gsi-overlap", MadtFault::GsiOverlap),
        ("override-unknown-gsi", MadtFault::OverrideUnknownGsi),
        ("duplicate-processor", MadtFault::DuplicateProcessor),
        ("x2apic-id-invalid", MadtFault::X2apicIdInvalid),
        ("truncated", MadtFault::Truncated),
        ("no-ioapic", MadtFault::NoIoapic),
    ];

    pub fn from_name(name: &str) -> Option<MadtFault> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|&(_, f)| f)
    }

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, f)| *f == self).map(|(n, _)| *n).unwrap_or("?")
    }

    /// A copy of the MADT `table` (already validated) with the fault.
    pub fn apply(self, table: &[u8]) -> Vec<u8> {
        let entries = entries(table, MADT_FIXED_LEN);
        let first_ioapic = entries.iter().position(|e| e[0] == 1);
        let mut out: Vec<Vec<u8>> = entries.iter().map(|e| e.to_vec()).collect();
        match self {
            MadtFault::IoapicAtZero | MadtFault::IoapicOverHpet => {
                if let Some(i) = first_ioapic {
                    let address: u32 = if self == MadtFault::IoapicAtZero { 0 } else { 0xfed0_0000 };
                    out[i][4..8].copy_from_slice(&address.to_le_bytes());
                }
            }
            MadtFault::GsiOverlap => {
                if let Some(i) = first_ioapic {
                    let gsi_base = u32::from_le_bytes([out[i][8], out[i][9], out[i][10], out[i][11]]);
                    // Another chip's window (the first one's plus 4 KiB) claiming the same GSIs.
                    let address = u32::from_le_bytes([out[i][4], out[i][5], out[i][6], out[i][7]]) + 0x1000;
                    out.insert(i + 1, io_apic(out[i][2].wrapping_add(1), address, gsi_base));
                }
            }
            MadtFault::OverrideUnknownGsi => {
                out.retain(|e| !(e[0] == 2 && e[3] == 3));
                out.push(interrupt_override(3, 200, 0));
            }
            MadtFault::DuplicateProcessor => {
                if let Some(i) = out.iter().position(|e| e[0] == 0 || e[0] == 9) {
                    let copy = out[i].clone();
                    out.insert(i + 1, copy);
                }
            }
            MadtFault::X2apicIdInvalid => out.push(local_x2apic(u32::MAX, 1, 0xfe)),
            MadtFault::NoIoapic => out.retain(|e| e[0] != 1),
            MadtFault::Truncated => {}
        }
        let mut t = table[..MADT_FIXED_LEN].to_vec();
        for e in &out {
            t.extend_from_slice(e);
        }
        if self == MadtFault::Truncated
            && let Some(last) = out.last()
        {
            // The header's length ends halfway through the last entry.
            t.truncate(t.len() - last.len() / 2);
        }
        finish(t)
    }
}

impl FadtFault {
    pub const ALL: [(&'static str, FadtFault); 6] = [
        ("pm-timer-port-zero", FadtFault::PmTimerPortZero),
        ("pm-timer-width-wrong", FadtFault::PmTimerWidthWrong),
        ("pm1a-cnt-zero", FadtFault::Pm1aCntZero),
        ("firmware-ctrl-zero", FadtFault::FirmwareCtrlZero),
        ("century-out-of-range", FadtFault::CenturyOutOfRange),
        ("truncated", FadtFault::Truncated),
    ];

    pub fn from_name(name: &str) -> Option<FadtFault> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|&(_, f)| f)
    }

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, f)| *f == self).map(|(n, _)| *n).unwrap_or("?")
    }

    /// A copy of the FADT `table` (already validated) with the fault.
    pub fn apply(self, table: &[u8]) -> Vec<u8> {
        let mut t = table.to_vec();
        let mut zero = |range: core::ops::Range<usize>| {
            if range.end <= t.len() {
                t[range].fill(0);
            }
        };
        match self {
            FadtFault::PmTimerPortZero => {
                zero(76..80);
                zero(208..220);
            }
            FadtFault::PmTimerWidthWrong => t[91] = 3,
            FadtFault::Pm1aCntZero => {
                zero(64..68);
                zero(172..184);
            }
            FadtFault::FirmwareCtrlZero => {
                zero(36..40);
                zero(132..140);
            }
            FadtFault::CenturyOutOfRange => t[108] = 0x90,
            FadtFault::Truncated => t.truncate(FADT_MIN_LEN - 16),
        }
        finish(t)
    }
}

impl fmt::Display for MadtFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for FadtFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The entries after a table's fixed part (each `[type, length, ..]`), up to the first that
/// does not fit.
fn entries(table: &[u8], fixed: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = fixed;
    while at + 2 <= table.len() {
        let len = usize::from(table[at + 1]);
        if len < 2 || at + len > table.len() {
            break;
        }
        out.push(&table[at..at + len]);
        at += len;
    }
    out
}

/// The header's length set to the bytes' and the checksum fixed.
fn finish(mut t: Vec<u8>) -> Vec<u8> {
    let len = t.len() as u32;
    t[4..8].copy_from_slice(&len.to_le_bytes());
    fix_checksum(&mut t);
    t
}
