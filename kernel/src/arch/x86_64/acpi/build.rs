//! Builds ACPI tables as bytes: for the parsers' tests here, and for tools that hand QEMU
//! malformed tables (`-acpitable file=...`) to check the kernel's fallbacks.

use super::{FADT_X_PM_TMR_END, HPET_TABLE_LEN, MADT_FIXED_LEN};
use alloc::vec::Vec;

/// Fills in the standard header (signature, length, revision, OEM ids) and the checksum.
pub fn finish_table(signature: &[u8; 4], revision: u8, mut body_after_header: Vec<u8>) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body_after_header.len());
    t.extend_from_slice(signature);
    t.extend_from_slice(&((36 + body_after_header.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, below
    t.extend_from_slice(b"TIMERK"); // OEM id
    t.extend_from_slice(b"TIMERKRN"); // OEM table id
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(b"TKRN"); // creator id
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.append(&mut body_after_header);
    fix_checksum(&mut t);
    t
}

/// Sets byte 9 so that all bytes sum to 0.
pub fn fix_checksum(table: &mut [u8]) {
    table[9] = 0;
    let sum = table.iter().fold(0u8, |s, &b| s.wrapping_add(b));
    table[9] = 0u8.wrapping_sub(sum);
}

/// An HPET table's fields; `Default` is QEMU q35's.
#[derive(Debug, Clone, Copy)]
pub struct HpetTableSpec {
    pub event_timer_block_id: u32,
    pub address_space: u8,
    pub base: u64,
    pub hpet_number: u8,
    pub minimum_tick: u16,
    pub page_protection: u8,
}

impl Default for HpetTableSpec {
    fn default() -> Self {
        HpetTableSpec {
            // Vendor 0x8086, legacy capable, 64-bit counter, comparators 0..=2, revision 1.
            event_timer_block_id: 0x8086_a201,
            address_space: 0,
            base: 0xfed0_0000,
            hpet_number: 0,
            minimum_tick: 0x80,
            page_protection: 0,
        }
    }
}

impl HpetTableSpec {
    pub fn bytes(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&self.event_timer_block_id.to_le_bytes());
        // Generic Address Structure: space, bit width, bit offset, access size, address.
        body.extend_from_slice(&[self.address_space, 64, 0, 0]);
        body.extend_from_slice(&self.base.to_le_bytes());
        body.push(self.hpet_number);
        body.extend_from_slice(&self.minimum_tick.to_le_bytes());
        body.push(self.page_protection);
        let t = finish_table(b"HPET", 1, body);
        debug_assert_eq!(t.len(), HPET_TABLE_LEN);
        t
    }
}

/// MADT entries, as bytes.
pub fn local_apic(uid: u8, apic_id: u8, flags: u32) -> Vec<u8> {
    let mut e = alloc::vec![0, 8, uid, apic_id];
    e.extend_from_slice(&flags.to_le_bytes());
    e
}

pub fn io_apic(id: u8, address: u32, gsi_base: u32) -> Vec<u8> {
    let mut e = alloc::vec![1, 12, id, 0];
    e.extend_from_slice(&address.to_le_bytes());
    e.extend_from_slice(&gsi_base.to_le_bytes());
    e
}

pub fn interrupt_override(irq: u8, gsi: u32, flags: u16) -> Vec<u8> {
    let mut e = alloc::vec![2, 10, 0, irq];
    e.extend_from_slice(&gsi.to_le_bytes());
    e.extend_from_slice(&flags.to_le_bytes());
    e
}

pub fn local_apic_nmi(uid: u8, flags: u16, lint: u8) -> Vec<u8> {
    let mut e = alloc::vec![4, 6, uid];
    e.extend_from_slice(&flags.to_le_bytes());
    e.push(lint);
    e
}

pub fn local_x2apic(x2apic_id: u32, flags: u32, uid: u32) -> Vec<u8> {
    let mut e = alloc::vec![9, 16, 0, 0];
    e.extend_from_slice(&x2apic_id.to_le_bytes());
    e.extend_from_slice(&flags.to_le_bytes());
    e.extend_from_slice(&uid.to_le_bytes());
    e
}

/// A MADT with the given entries.
pub fn madt(local_apic_address: u32, flags: u32, entries: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&local_apic_address.to_le_bytes());
    body.extend_from_slice(&flags.to_le_bytes());
    debug_assert_eq!(36 + body.len(), MADT_FIXED_LEN);
    for e in entries {
        body.extend_from_slice(e);
    }
    finish_table(b"APIC", 3, body)
}

/// QEMU 7.2 q35's MADT for `cpus` processors: IOAPIC 0 at 0xfec00000, IRQ0 -> GSI 2, IRQ 5, 9,
/// 10, 11 level / active high, NMI on LINT1 of all processors.
pub fn q35_madt(cpus: u8) -> Vec<u8> {
    let mut entries: Vec<Vec<u8>> = (0..cpus).map(|i| local_apic(i, i, 1)).collect();
    entries.push(io_apic(0, 0xfec0_0000, 0));
    entries.push(interrupt_override(0, 2, 0));
    for irq in [5, 9, 10, 11] {
        entries.push(interrupt_override(irq, u32::from(irq), 0b1101));
    }
    entries.push(local_apic_nmi(0xff, 0, 1));
    madt(0xfee0_0000, 1, &entries)
}

/// The FADT fields the PM timer needs; `Default` is QEMU q35's (revision 3, PM_TMR_BLK and
/// X_PM_TMR_BLK at I/O port 0x608, 24-bit).
#[derive(Debug, Clone, Copy)]
pub struct FadtSpec {
    pub revision: u8,
    pub pm_tmr_blk: u32,
    pub pm_tmr_len: u8,
    pub flags: u32,
    /// X_PM_TMR_BLK: (address space, address); written only from revision 2 on.
    pub x_pm_tmr_blk: (u8, u64),
    /// DAY_ALRM, MON_ALRM, CENTURY: CMOS RAM indices (0: none).
    pub rtc: [u8; 3],
    /// IAPC_BOOT_ARCH.
    pub boot_arch: u16,
    /// FIRMWARE_CTRL (the FACS) and PM1a_CNT_BLK, 32-bit fields (the extended ones left 0).
    pub firmware_ctrl: u32,
    pub pm1a_cnt_blk: u32,
    /// PM1a_EVT_BLK and PM1_EVT_LEN.
    pub pm1a_evt_blk: u32,
    pub pm1_evt_len: u8,
}

impl Default for FadtSpec {
    fn default() -> Self {
        FadtSpec {
            revision: 3,
            pm_tmr_blk: 0x608,
            pm_tmr_len: 4,
            flags: 0,
            x_pm_tmr_blk: (1, 0x608),
            rtc: [0, 0, 0x32],
            boot_arch: 0,
            firmware_ctrl: 0x7ffe_0000,
            pm1a_cnt_blk: 0x604,
            pm1a_evt_blk: 0x600,
            pm1_evt_len: 4,
        }
    }
}

impl FadtSpec {
    /// A revision 1 FADT is 116 bytes; later ones run to X_PM_TMR_BLK's end here (220: the
    /// fields after it are left out, as a truncated but sufficient table).
    pub fn bytes(&self) -> Vec<u8> {
        let len = if self.revision >= 2 { FADT_X_PM_TMR_END } else { super::FADT_MIN_LEN };
        let mut t = alloc::vec![0u8; len - 36];
        let at = |offset: usize| offset - 36;
        t[at(36)..at(40)].copy_from_slice(&self.firmware_ctrl.to_le_bytes());
        t[at(56)..at(60)].copy_from_slice(&self.pm1a_evt_blk.to_le_bytes());
        t[at(64)..at(68)].copy_from_slice(&self.pm1a_cnt_blk.to_le_bytes());
        t[at(88)] = self.pm1_evt_len;
        t[at(76)..at(80)].copy_from_slice(&self.pm_tmr_blk.to_le_bytes());
        t[at(91)] = self.pm_tmr_len;
        t[at(106)..at(109)].copy_from_slice(&self.rtc);
        t[at(109)..at(111)].copy_from_slice(&self.boot_arch.to_le_bytes());
        t[at(112)..at(116)].copy_from_slice(&self.flags.to_le_bytes());
        if self.revision >= 2 {
            let (space, address) = self.x_pm_tmr_blk;
            t[at(208)] = space;
            t[at(209)] = 32; // register bit width
            t[at(211)] = 3; // access size: dword
            t[at(212)..at(220)].copy_from_slice(&address.to_le_bytes());
        }
        finish_table(b"FACP", self.revision, t)
    }
}
