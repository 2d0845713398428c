//! ACPI tables -> plain Rust structs.
//!
//! The `acpi` crate finds the tables (RSDP -> XSDT/RSDT -> headers); it neither checks their
//! checksums nor bounds its parsing by their lengths, so the HPET table and the MADT are then
//! read from their raw bytes by the pure functions below, which validate signature, length and
//! checksum first and never read past the table: any input, however corrupt, gives a struct or
//! an [`AcpiProblem`], never a panic. Those functions run as host unit tests on hand-built tables.

use super::memory;
use alloc::vec::Vec;
use core::fmt;

/// ACPI 6.5 table 5.4: every system description table starts with this 36-byte header.
pub const SDT_HEADER_LEN: usize = 36;
/// IA-PC HPET spec 1.0a table 3: the HPET description table is 56 bytes.
pub const HPET_TABLE_LEN: usize = 56;
/// ACPI 6.5 table 5.43: MADT fixed part (header, local APIC address, flags).
pub const MADT_FIXED_LEN: usize = 44;
/// The HPET register block is 1 KiB and aligned to it (HPET spec 2.3.1).
pub const HPET_BLOCK_ALIGN: u64 = 0x400;
/// ACPI 6.5 table 5.25: Generic Address Structure address space 0 = system memory.
pub const GAS_SYSTEM_MEMORY: u8 = 0;
/// ACPI 6.5 table 5.9: the FADT up to and including its Flags field (offset 112, 4 bytes),
/// which holds TMR_VAL_EXT; the PM_TMR_BLK (offset 76) and PM_TMR_LEN (offset 91) come before.
pub const FADT_MIN_LEN: usize = 116;
/// The FADT up to and including X_PM_TMR_BLK (offset 208, a 12-byte Generic Address
/// Structure), which the `acpi` crate reads from revision 2 on.
pub const FADT_X_PM_TMR_END: usize = 220;
/// ACPI 6.5 4.8.3.3: the power management timer counts at 3.579545 MHz.
pub const PM_TIMER_HZ: u64 = 3_579_545;

/// Why a table was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiProblem {
    NoRsdp,
    /// The `acpi` crate could not walk RSDP -> XSDT/RSDT.
    RootTables,
    TableNotFound(&'static str),
    WrongSignature {
        expected: &'static str,
    },
    /// The header's length is below the table's fixed size, or beyond what was mapped.
    Truncated {
        table: &'static str,
        length: usize,
        needed: usize,
    },
    BadChecksum {
        table: &'static str,
        sum: u8,
    },
    HpetBaseNotMemory {
        space_id: u8,
    },
    HpetBaseZero,
    HpetBaseMisaligned {
        base: u64,
    },
    /// A MADT entry's length is 0, too short for its type, or runs past the table.
    MadtEntry {
        offset: usize,
        kind: u8,
        length: u8,
    },
    /// The FADT has no power management timer (PM_TMR_LEN is not 4, or no address).
    NoPmTimer,
    /// The PM timer's Generic Address Structure is malformed.
    PmTimerAddress,
    /// The PM timer is not in I/O space (only I/O-port PM timers are supported).
    PmTimerNotIo {
        space_id: u8,
    },
    /// PM_TMR_LEN is not 4 (ACPI 6.5 table 5.9: 4 when there is a PM timer).
    PmTimerLength {
        length: u8,
    },
    /// The FADT has no PM1a control block (PM1a_CNT_BLK and X_PM1a_CNT_BLK are 0).
    NoPm1aControl,
    /// The FADT names no FACS (FIRMWARE_CTRL and X_FIRMWARE_CTRL are 0).
    NoFacs,
    /// The FADT has no PM1a event block (PM1a_EVT_BLK and X_PM1a_EVT_BLK are 0).
    NoPm1aEvent,
    /// PM1_EVT_LEN is not an even number of at least 4 (ACPI 6.5 table 5.9).
    Pm1EventLength {
        length: u8,
    },
}

impl fmt::Display for AcpiProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AcpiProblem::NoRsdp => write!(f, "the bootloader found no RSDP"),
            AcpiProblem::RootTables => write!(f, "the RSDP does not lead to a valid XSDT/RSDT"),
            AcpiProblem::TableNotFound(t) => write!(f, "no {t} table"),
            AcpiProblem::WrongSignature { expected } => write!(f, "the table is not a {expected} table"),
            AcpiProblem::Truncated { table, length, needed } => {
                write!(f, "{table} table truncated: {length} bytes, at least {needed} needed")
            }
            AcpiProblem::BadChecksum { table, sum } => {
                write!(f, "{table} table checksum is wrong (bytes sum to {sum:#04x})")
            }
            AcpiProblem::HpetBaseNotMemory { space_id } => {
                write!(f, "HPET base address is in address space {space_id}, not system memory")
            }
            AcpiProblem::HpetBaseZero => write!(f, "HPET base address is 0"),
            AcpiProblem::HpetBaseMisaligned { base } => {
                write!(f, "HPET base address {base:#x} is not 1 KiB aligned")
            }
            AcpiProblem::MadtEntry { offset, kind, length } => {
                write!(f, "MADT entry at offset {offset} (type {kind}, length {length}) is malformed")
            }
            AcpiProblem::NoPmTimer => write!(f, "the FADT describes no power management timer"),
            AcpiProblem::PmTimerAddress => write!(f, "the FADT's PM timer address is malformed"),
            AcpiProblem::PmTimerNotIo { space_id } => {
                write!(f, "the PM timer is in address space {space_id}, not I/O space")
            }
            AcpiProblem::PmTimerLength { length } => {
                write!(f, "the FADT's PM_TMR_LEN is {length}, not 4")
            }
            AcpiProblem::NoPm1aControl => write!(f, "the FADT has no PM1a control block (PM1a_CNT_BLK is 0)"),
            AcpiProblem::NoFacs => write!(f, "the FADT names no FACS (FIRMWARE_CTRL is 0)"),
            AcpiProblem::NoPm1aEvent => write!(f, "the FADT has no PM1a event block (PM1a_EVT_BLK is 0)"),
            AcpiProblem::Pm1EventLength { length } => {
                write!(f, "the FADT's PM1_EVT_LEN is {length}, not an even number of at least 4")
            }
        }
    }
}

/// The HPET description table (HPET spec table 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HpetTable {
    pub hardware_revision: u8,
    /// Comparators in the block (the table's field holds the last index).
    pub comparators: u8,
    pub counter_64bit: bool,
    pub legacy_route_capable: bool,
    pub pci_vendor_id: u16,
    pub base: u64,
    pub hpet_number: u8,
    /// Minimum clock ticks for periodic mode without lost interrupts.
    pub minimum_tick: u16,
    /// Bits 3:0 page protection (0 none, 1 4 KiB, 2 64 KiB), 7:4 OEM attributes.
    pub page_protection: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polarity {
    ConformsToBus,
    ActiveHigh,
    ActiveLow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerMode {
    ConformsToBus,
    Edge,
    Level,
}

/// MPS INTI flags (ACPI table 5.50): bits 1:0 polarity, 3:2 trigger mode; 2 is reserved.
fn inti_flags(flags: u16) -> (Polarity, TriggerMode) {
    let polarity = match flags & 0b11 {
        0b01 => Polarity::ActiveHigh,
        0b11 => Polarity::ActiveLow,
        _ => Polarity::ConformsToBus,
    };
    let trigger = match (flags >> 2) & 0b11 {
        0b01 => TriggerMode::Edge,
        0b11 => TriggerMode::Level,
        _ => TriggerMode::ConformsToBus,
    };
    (polarity, trigger)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Processor {
    pub uid: u32,
    pub apic_id: u32,
    pub enabled: bool,
    /// Not enabled now but may be brought online (ACPI 6.3+).
    pub online_capable: bool,
    /// From a Local x2APIC entry.
    pub x2apic: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoApicEntry {
    pub id: u8,
    pub address: u64,
    pub gsi_base: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptOverride {
    pub bus: u8,
    pub source_irq: u8,
    pub gsi: u32,
    pub polarity: Polarity,
    pub trigger: TriggerMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LapicNmi {
    /// `None`: all processors (UID 0xff / 0xffffffff).
    pub processor_uid: Option<u32>,
    pub lint: u8,
    pub polarity: Polarity,
    pub trigger: TriggerMode,
}

/// The MADT, summarised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Madt {
    pub local_apic_address: u64,
    /// PCAT_COMPAT: dual 8259s are present (and must be masked).
    pub pcat_compat: bool,
    pub processors: Vec<Processor>,
    pub ioapics: Vec<IoApicEntry>,
    pub overrides: Vec<InterruptOverride>,
    pub nmis: Vec<LapicNmi>,
    /// A malformed entry ended the parse: the entries before it are kept (as Linux's
    /// `acpi_parse_entries`), this says where it stopped.
    pub malformed: Option<AcpiProblem>,
    /// Entries left out, one sentence each: a processor listed twice (the first is kept), an
    /// x2APIC id of 0xffffffff.
    pub ignored: Vec<alloc::string::String>,
}

impl Madt {
    pub fn enabled_processors(&self) -> impl Iterator<Item = &Processor> {
        self.processors.iter().filter(|p| p.enabled)
    }

    /// The GSI, polarity and trigger of ISA IRQ `irq`: its override, or identity with the ISA
    /// defaults (edge, active high).
    pub fn isa_irq_to_gsi(&self, irq: u8) -> (u32, Polarity, TriggerMode) {
        match self.overrides.iter().find(|o| o.bus == 0 && o.source_irq == irq) {
            Some(o) => (
                o.gsi,
                if o.polarity == Polarity::ConformsToBus { Polarity::ActiveHigh } else { o.polarity },
                if o.trigger == TriggerMode::ConformsToBus { TriggerMode::Edge } else { o.trigger },
            ),
            None => (u32::from(irq), Polarity::ActiveHigh, TriggerMode::Edge),
        }
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | u64::from(le32(b, at + 4)) << 32
}

/// Checks signature, length (against `min_len` and the bytes available) and checksum; returns
/// exactly the table's bytes.
pub fn validate_table<'a>(
    bytes: &'a [u8],
    signature: &'static str,
    min_len: usize,
) -> Result<&'a [u8], AcpiProblem> {
    if bytes.len() < SDT_HEADER_LEN {
        return Err(AcpiProblem::Truncated { table: signature, length: bytes.len(), needed: SDT_HEADER_LEN });
    }
    if &bytes[0..4] != signature.as_bytes() {
        return Err(AcpiProblem::WrongSignature { expected: signature });
    }
    let length = le32(bytes, 4) as usize;
    if length < min_len {
        return Err(AcpiProblem::Truncated { table: signature, length, needed: min_len });
    }
    if length > bytes.len() {
        return Err(AcpiProblem::Truncated { table: signature, length: bytes.len(), needed: length });
    }
    let table = &bytes[..length];
    let sum = table.iter().fold(0u8, |s, &b| s.wrapping_add(b));
    if sum != 0 {
        return Err(AcpiProblem::BadChecksum { table: signature, sum });
    }
    Ok(table)
}

/// Parses and validates an HPET description table.
pub fn parse_hpet(bytes: &[u8]) -> Result<HpetTable, AcpiProblem> {
    let t = validate_table(bytes, "HPET", HPET_TABLE_LEN)?;
    let id = le32(t, 36);
    let (space_id, base) = (t[40], le64(t, 44));
    if space_id != GAS_SYSTEM_MEMORY {
        return Err(AcpiProblem::HpetBaseNotMemory { space_id });
    }
    if base == 0 {
        return Err(AcpiProblem::HpetBaseZero);
    }
    if base % HPET_BLOCK_ALIGN != 0 {
        return Err(AcpiProblem::HpetBaseMisaligned { base });
    }
    Ok(HpetTable {
        hardware_revision: id as u8,
        comparators: ((id >> 8) & 0x1f) as u8 + 1,
        counter_64bit: id & (1 << 13) != 0,
        legacy_route_capable: id & (1 << 15) != 0,
        pci_vendor_id: (id >> 16) as u16,
        base,
        hpet_number: t[52],
        minimum_tick: le16(t, 53),
        page_protection: t[55],
    })
}

/// The FADT's offsets of the RTC's CMOS RAM indices (ACPI 6.5 table 5.9): DAY_ALRM, MON_ALRM,
/// CENTURY, then IAPC_BOOT_ARCH (2 bytes) whose bit 5 says "CMOS RTC not present".
const FADT_DAY_ALRM: usize = 106;
const FADT_MON_ALRM: usize = 107;
const FADT_CENTURY: usize = 108;
const FADT_IAPC_BOOT_ARCH: usize = 109;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// CMOS RAM past the RTC's own registers (0x00-0x0d), in the first bank.
const CMOS_RAM: core::ops::RangeInclusive<u8> = 0x0e..=0x7f;

/// What the FADT says of the CMOS RTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FadtRtc {
    /// The century, day-alarm and month-alarm registers it names (0: none).
    pub layout: super::rtc::RtcLayout,
    /// IAPC_BOOT_ARCH says there is no CMOS RTC.
    pub not_present: bool,
    /// Fields naming a byte that is not CMOS RAM (its name and value), ignored.
    pub ignored: [Option<(&'static str, u8)>; 3],
}

/// Reads the FADT's RTC fields; the table is validated as for the PM timer. A field naming a
/// byte outside CMOS RAM (0x0e-0x7f) is ignored and listed.
pub fn parse_fadt_rtc(bytes: &[u8]) -> Result<FadtRtc, AcpiProblem> {
    let t = validate_table(bytes, "FACP", FADT_MIN_LEN)?;
    let mut rtc = FadtRtc::default();
    let fields = [("CENTURY", FADT_CENTURY), ("DAY_ALRM", FADT_DAY_ALRM), ("MON_ALRM", FADT_MON_ALRM)];
    let mut found = [None; 3];
    for (i, (name, offset)) in fields.into_iter().enumerate() {
        match t[offset] {
            0 => {}
            index if CMOS_RAM.contains(&index) => found[i] = Some(index),
            index => rtc.ignored[i] = Some((name, index)),
        }
    }
    rtc.layout = super::rtc::RtcLayout { century: found[0], day_alarm: found[1], month_alarm: found[2] };
    let boot_arch = u16::from_le_bytes([t[FADT_IAPC_BOOT_ARCH], t[FADT_IAPC_BOOT_ARCH + 1]]);
    rtc.not_present = boot_arch & IAPC_CMOS_RTC_NOT_PRESENT != 0;
    Ok(rtc)
}

/// FADT offsets (ACPI 6.5 table 5.9): FIRMWARE_CTRL (the FACS, 32-bit), DSDT (32-bit),
/// PM1a/PM1b_EVT_BLK and PM1a/PM1b_CNT_BLK (I/O ports), PM1_EVT_LEN, PM_TMR_LEN, and from
/// revision 2 X_FIRMWARE_CTRL and X_DSDT (64-bit) and X_PM1a/b_EVT_BLK, X_PM1a/b_CNT_BLK
/// (Generic Address Structures, their address at +4).
const FADT_FIRMWARE_CTRL: usize = 36;
const FADT_DSDT: usize = 40;
const FADT_PM1A_EVT_BLK: usize = 56;
const FADT_PM1B_EVT_BLK: usize = 60;
const FADT_PM1A_CNT_BLK: usize = 64;
const FADT_PM1B_CNT_BLK: usize = 68;
const FADT_PM1_EVT_LEN: usize = 88;
const FADT_PM_TMR_LEN: usize = 91;
const FADT_X_FIRMWARE_CTRL: usize = 132;
const FADT_X_DSDT: usize = 140;
const FADT_X_PM1A_EVT_BLK: usize = 148;
const FADT_X_PM1B_EVT_BLK: usize = 160;
const FADT_X_PM1A_CNT_BLK: usize = 172;
const FADT_X_PM1B_CNT_BLK: usize = 184;

/// What a sleep state (S3) needs from the FADT: the PM1 event and control blocks (PM1_STS and
/// PM1_EN are the event block's two halves), the FACS (the waking vector) and the DSDT (the
/// `\_S3_` package).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FadtSleep {
    /// PM1a_CNT's address (an I/O port where the GAS says so).
    pub pm1a_cnt: u64,
    /// PM1b_CNT's, if the machine has a second block.
    pub pm1b_cnt: Option<u64>,
    /// PM1a_EVT's (PM1a_STS; PM1a_EN at + `pm1_evt_len` / 2).
    pub pm1a_evt: u64,
    pub pm1b_evt: Option<u64>,
    /// PM1_EVT_LEN: bytes of each event block (at least 4).
    pub pm1_evt_len: u8,
    /// The FACS's physical address.
    pub facs: u64,
    /// The DSDT's physical address (0: none named).
    pub dsdt: u64,
}

/// Reads the FADT's PM1 blocks, FACS and DSDT addresses (the extended fields where the
/// revision has them and they are set, else the 32-bit ones); a missing PM1a control or event
/// block or FACS is an error that says which.
pub fn parse_fadt_sleep(bytes: &[u8]) -> Result<FadtSleep, AcpiProblem> {
    let t = validate_table(bytes, "FACP", FADT_MIN_LEN)?;
    let extended = |at: usize| (t[8] >= 2 && t.len() >= at + 8).then(|| le64(t, at)).filter(|&a| a != 0);
    let field = |x: usize, legacy: usize| {
        extended(x).or_else(|| Some(u64::from(le32(t, legacy))).filter(|&a| a != 0))
    };
    let pm1a_cnt = field(FADT_X_PM1A_CNT_BLK + 4, FADT_PM1A_CNT_BLK).ok_or(AcpiProblem::NoPm1aControl)?;
    let facs = field(FADT_X_FIRMWARE_CTRL, FADT_FIRMWARE_CTRL).ok_or(AcpiProblem::NoFacs)?;
    let pm1a_evt = field(FADT_X_PM1A_EVT_BLK + 4, FADT_PM1A_EVT_BLK).ok_or(AcpiProblem::NoPm1aEvent)?;
    let pm1_evt_len = t[FADT_PM1_EVT_LEN];
    if pm1_evt_len < 4 || pm1_evt_len % 2 != 0 {
        return Err(AcpiProblem::Pm1EventLength { length: pm1_evt_len });
    }
    Ok(FadtSleep {
        pm1a_cnt,
        pm1b_cnt: field(FADT_X_PM1B_CNT_BLK + 4, FADT_PM1B_CNT_BLK),
        pm1a_evt,
        pm1b_evt: field(FADT_X_PM1B_EVT_BLK + 4, FADT_PM1B_EVT_BLK),
        pm1_evt_len,
        facs,
        dsdt: field(FADT_X_DSDT, FADT_DSDT).unwrap_or(0),
    })
}

/// The ACPI power management timer, as the FADT describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmTimerInfo {
    /// The I/O port of PM_TMR (a 32-bit read).
    pub port: u16,
    /// 24, or 32 when the FADT's TMR_VAL_EXT flag is set.
    pub bits: u32,
}

/// Finds the PM timer in a FADT: the table is validated here (signature, length, checksum,
/// then a length that covers every field the `acpi` crate reads for its revision), then read
/// through the `acpi` crate's `Fadt` (`pm_timer_block`, the TMR_VAL_EXT flag). The crate reads
/// past the table's length; it is given a copy padded with zeros, so nothing beyond the
/// table is ever read and an absent extended field reads as "no address".
pub fn parse_fadt_pm_timer(bytes: &[u8]) -> Result<PmTimerInfo, AcpiProblem> {
    use ::acpi::address::AddressSpace;
    use ::acpi::sdt::fadt::Fadt;
    let t = validate_table(bytes, "FACP", FADT_MIN_LEN)?;
    let pm_tmr_len = t[FADT_PM_TMR_LEN];
    if pm_tmr_len != 4 && pm_tmr_len != 0 {
        return Err(AcpiProblem::PmTimerLength { length: pm_tmr_len });
    }
    // The crate reads X_PM_TMR_BLK from revision 2 on.
    if t[8] >= 2 && t.len() < FADT_X_PM_TMR_END {
        return Err(AcpiProblem::Truncated { table: "FACP", length: t.len(), needed: FADT_X_PM_TMR_END });
    }
    let mut padded = [0u8; core::mem::size_of::<Fadt>()];
    let n = t.len().min(padded.len());
    padded[..n].copy_from_slice(&t[..n]);
    // SAFETY: `padded` holds exactly `size_of::<Fadt>()` bytes; `Fadt` is a packed struct of
    // integers and `MaybeUninit` fields, valid for any bytes, and is read unaligned.
    let fadt: Fadt = unsafe { core::ptr::read_unaligned(padded.as_ptr().cast::<Fadt>()) };
    let block =
        fadt.pm_timer_block().map_err(|_| AcpiProblem::PmTimerAddress)?.ok_or(AcpiProblem::NoPmTimer)?;
    if block.address_space != AddressSpace::SystemIo {
        // Only X_PM_TMR_BLK can name another space: its first byte (offset 208).
        return Err(AcpiProblem::PmTimerNotIo { space_id: t[208] });
    }
    let port = u16::try_from(block.address).map_err(|_| AcpiProblem::PmTimerAddress)?;
    if port == 0 {
        return Err(AcpiProblem::NoPmTimer);
    }
    Ok(PmTimerInfo { port, bits: if { fadt.flags }.pm_timer_is_32_bit() { 32 } else { 24 } })
}

/// MADT entry types (ACPI 6.5 table 5.45) and their minimum lengths.
const MADT_LOCAL_APIC: (u8, u8) = (0, 8);
const MADT_IO_APIC: (u8, u8) = (1, 12);
const MADT_INTERRUPT_OVERRIDE: (u8, u8) = (2, 10);
const MADT_LOCAL_APIC_NMI: (u8, u8) = (4, 6);
const MADT_LOCAL_APIC_ADDRESS_OVERRIDE: (u8, u8) = (5, 12);
const MADT_LOCAL_X2APIC: (u8, u8) = (9, 16);
const MADT_LOCAL_X2APIC_NMI: (u8, u8) = (10, 12);
/// Local APIC flags (table 5.47): bit 0 enabled, bit 1 online capable.
const LAPIC_ENABLED: u32 = 1 << 0;
const LAPIC_ONLINE_CAPABLE: u32 = 1 << 1;
/// MADT flags bit 0.
const MADT_PCAT_COMPAT: u32 = 1 << 0;

/// Parses and validates a MADT.
pub fn parse_madt(bytes: &[u8]) -> Result<Madt, AcpiProblem> {
    let t = validate_table(bytes, "APIC", MADT_FIXED_LEN)?;
    let mut madt = Madt {
        local_apic_address: u64::from(le32(t, 36)),
        pcat_compat: le32(t, 40) & MADT_PCAT_COMPAT != 0,
        ..Madt::default()
    };
    let mut at = MADT_FIXED_LEN;
    while at + 2 <= t.len() {
        match parse_madt_entry(t, at, &mut madt) {
            Ok(length) => at += length,
            Err(bad) => {
                madt.malformed = Some(bad);
                break;
            }
        }
    }
    // A processor listed twice would be started twice; an x2APIC id of all ones names none.
    let mut seen: Vec<u32> = Vec::new();
    let mut ignored = Vec::new();
    madt.processors.retain(|p| {
        if p.x2apic && p.apic_id == u32::MAX {
            ignored.push(alloc::format!("processor {} has the invalid x2APIC id 0xffffffff", p.uid));
            return false;
        }
        if seen.contains(&p.apic_id) {
            ignored.push(alloc::format!("APIC id {} is listed twice: the first entry is used", p.apic_id));
            return false;
        }
        seen.push(p.apic_id);
        true
    });
    madt.ignored = ignored;
    Ok(madt)
}

/// Parses the MADT entry at `at` of the validated table `t` into `madt`; returns its length.
fn parse_madt_entry(t: &[u8], at: usize, madt: &mut Madt) -> Result<usize, AcpiProblem> {
    {
        let (kind, length) = (t[at], t[at + 1]);
        let bad = AcpiProblem::MadtEntry { offset: at, kind, length };
        if length < 2 || at + usize::from(length) > t.len() {
            return Err(bad);
        }
        let e = &t[at..at + usize::from(length)];
        let need = |min: (u8, u8)| if length < min.1 { Err(bad) } else { Ok(()) };
        match kind {
            k if k == MADT_LOCAL_APIC.0 => {
                need(MADT_LOCAL_APIC)?;
                let flags = le32(e, 4);
                madt.processors.push(Processor {
                    uid: u32::from(e[2]),
                    apic_id: u32::from(e[3]),
                    enabled: flags & LAPIC_ENABLED != 0,
                    online_capable: flags & LAPIC_ONLINE_CAPABLE != 0,
                    x2apic: false,
                });
            }
            k if k == MADT_IO_APIC.0 => {
                need(MADT_IO_APIC)?;
                madt.ioapics.push(IoApicEntry {
                    id: e[2],
                    address: u64::from(le32(e, 4)),
                    gsi_base: le32(e, 8),
                });
            }
            k if k == MADT_INTERRUPT_OVERRIDE.0 => {
                need(MADT_INTERRUPT_OVERRIDE)?;
                let (polarity, trigger) = inti_flags(le16(e, 8));
                madt.overrides.push(InterruptOverride {
                    bus: e[2],
                    source_irq: e[3],
                    gsi: le32(e, 4),
                    polarity,
                    trigger,
                });
            }
            k if k == MADT_LOCAL_APIC_NMI.0 => {
                need(MADT_LOCAL_APIC_NMI)?;
                let (polarity, trigger) = inti_flags(le16(e, 3));
                let uid = (e[2] != 0xff).then_some(u32::from(e[2]));
                madt.nmis.push(LapicNmi { processor_uid: uid, lint: e[5], polarity, trigger });
            }
            k if k == MADT_LOCAL_APIC_ADDRESS_OVERRIDE.0 => {
                need(MADT_LOCAL_APIC_ADDRESS_OVERRIDE)?;
                madt.local_apic_address = le64(e, 4);
            }
            k if k == MADT_LOCAL_X2APIC.0 => {
                need(MADT_LOCAL_X2APIC)?;
                let flags = le32(e, 8);
                madt.processors.push(Processor {
                    uid: le32(e, 12),
                    apic_id: le32(e, 4),
                    enabled: flags & LAPIC_ENABLED != 0,
                    online_capable: flags & LAPIC_ONLINE_CAPABLE != 0,
                    x2apic: true,
                });
            }
            k if k == MADT_LOCAL_X2APIC_NMI.0 => {
                need(MADT_LOCAL_X2APIC_NMI)?;
                let (polarity, trigger) = inti_flags(le16(e, 2));
                let uid = le32(e, 4);
                madt.nmis.push(LapicNmi {
                    processor_uid: (uid != u32::MAX).then_some(uid),
                    lint: e[8],
                    polarity,
                    trigger,
                });
            }
            _ => {} // other entry types (SAPIC, GIC, wake-up mailbox) do not concern x86 timers
        }
        Ok(usize::from(length))
    }
}

/// What the firmware tables said: each table, or why it was not used.
pub struct PlatformTables {
    /// Every HPET table, in the order the RSDT/XSDT lists them (one block each); empty when
    /// there is none.
    pub hpets: Vec<Result<HpetTable, AcpiProblem>>,
    pub madt: Result<Madt, AcpiProblem>,
    pub pm_timer: Result<PmTimerInfo, AcpiProblem>,
    pub rtc: Result<FadtRtc, AcpiProblem>,
    pub sleep: Result<FadtSleep, AcpiProblem>,
    /// S3's SLP_TYP values from the DSDT's `\\_S3_`.
    pub s3: Result<sleep_type::SleepType, sleep_type::SleepTypeProblem>,
}

/// `acpi::Handler` over the bootloader's map of all physical memory: mapping is an offset.
#[derive(Clone, Copy)]
struct PhysMapHandler;

impl PhysMapHandler {
    fn ptr<T>(address: usize) -> *mut T {
        memory::phys_to_virt(address as u64).as_mut_ptr()
    }
}

impl acpi::Handler for PhysMapHandler {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> acpi::PhysicalMapping<Self, T> {
        acpi::PhysicalMapping {
            physical_start: physical_address,
            virtual_start: core::ptr::NonNull::new(Self::ptr(physical_address))
                .expect("the physical map is not at 0"),
            region_length: size,
            mapped_length: size,
            handler: *self,
        }
    }
    fn unmap_physical_region<T>(_region: &acpi::PhysicalMapping<Self, T>) {}
    // The table walk needs only the mappings above; the AML accessors below are never called
    // (the `aml` feature is off) and answer as absent hardware would.
    fn read_u8(&self, _: usize) -> u8 {
        0xff
    }
    fn read_u16(&self, _: usize) -> u16 {
        0xffff
    }
    fn read_u32(&self, _: usize) -> u32 {
        u32::MAX
    }
    fn read_u64(&self, _: usize) -> u64 {
        u64::MAX
    }
    fn write_u8(&self, _: usize, _: u8) {}
    fn write_u16(&self, _: usize, _: u16) {}
    fn write_u32(&self, _: usize, _: u32) {}
    fn write_u64(&self, _: usize, _: u64) {}
    fn read_io_u8(&self, _: u16) -> u8 {
        0xff
    }
    fn read_io_u16(&self, _: u16) -> u16 {
        0xffff
    }
    fn read_io_u32(&self, _: u16) -> u32 {
        u32::MAX
    }
    fn write_io_u8(&self, _: u16, _: u8) {}
    fn write_io_u16(&self, _: u16, _: u16) {}
    fn write_io_u32(&self, _: u16, _: u32) {}
    fn read_pci_u8(&self, _: acpi::PciAddress, _: u16) -> u8 {
        0xff
    }
    fn read_pci_u16(&self, _: acpi::PciAddress, _: u16) -> u16 {
        0xffff
    }
    fn read_pci_u32(&self, _: acpi::PciAddress, _: u16) -> u32 {
        u32::MAX
    }
    fn write_pci_u8(&self, _: acpi::PciAddress, _: u16, _: u8) {}
    fn write_pci_u16(&self, _: acpi::PciAddress, _: u16, _: u16) {}
    fn write_pci_u32(&self, _: acpi::PciAddress, _: u16, _: u32) {}
    fn nanos_since_boot(&self) -> u64 {
        super::clock::now_ns()
    }
    fn stall(&self, _: u64) {}
    fn sleep(&self, _: u64) {}
}

/// Longest table we read: a MADT for 256 x2APIC CPUs is about 4 KiB; this leaves room.
const MAX_TABLE_LEN: usize = 64 * 1024;

/// The bytes of the first table with `signature`, bounded by `MAX_TABLE_LEN`.
fn table_bytes(tables: &acpi::AcpiTables<PhysMapHandler>, signature: &str) -> Option<&'static [u8]> {
    all_table_bytes(tables, signature).next()
}

/// The bytes of every table with `signature`, in the order the RSDT/XSDT lists them, each
/// bounded by `MAX_TABLE_LEN`.
fn all_table_bytes<'a>(
    tables: &'a acpi::AcpiTables<PhysMapHandler>,
    signature: &'a str,
) -> impl Iterator<Item = &'static [u8]> + 'a {
    tables.table_headers().filter(move |(_, h)| h.signature.as_str() == signature).map(|(phys, header)| {
        let len = (header.length as usize).clamp(SDT_HEADER_LEN, MAX_TABLE_LEN);
        // SAFETY: all physical memory is mapped at the physical-memory offset for the kernel's
        // lifetime, and ACPI tables are firmware-reserved memory nobody writes.
        unsafe { core::slice::from_raw_parts(PhysMapHandler::ptr::<u8>(phys), len) }
    })
}

/// Faults to inject into the firmware's tables as they are read (`madt_fault=`, `fadt_fault=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableFaults {
    pub madt: Option<faults::MadtFault>,
    pub fadt: Option<faults::FadtFault>,
}

/// `table`'s bytes with `fault` applied (a copy the kernel keeps), logged; as they are without.
fn with_fault<F: Copy + core::fmt::Display>(
    table: Option<&'static [u8]>,
    name: &str,
    fault: Option<F>,
    apply: fn(F, &[u8]) -> Vec<u8>,
) -> Option<&'static [u8]> {
    match (table, fault) {
        (Some(t), Some(f)) => {
            log::warn!("fault injection: the firmware's {name} replaced by a copy with the fault {f}");
            Some(alloc::boxed::Box::leak(apply(f, t).into_boxed_slice()))
        }
        (t, _) => t,
    }
}

/// Reads the HPET table and the MADT from the RSDP at `rsdp` (physical), with `faults`
/// injected into the MADT and FADT.
pub fn read_platform_tables(rsdp: Option<u64>, faults: TableFaults) -> PlatformTables {
    let none = |p: AcpiProblem| PlatformTables {
        hpets: alloc::vec![Err(p)],
        madt: Err(p),
        pm_timer: Err(p),
        rtc: Err(p),
        sleep: Err(p),
        s3: Err(sleep_type::SleepTypeProblem::Dsdt(p)),
    };
    let Some(rsdp) = rsdp else { return none(AcpiProblem::NoRsdp) };
    // SAFETY: the bootloader found the RSDP at this physical address; the handler maps it.
    let Ok(tables) = (unsafe { acpi::AcpiTables::from_rsdp(PhysMapHandler, rsdp as usize) }) else {
        return none(AcpiProblem::RootTables);
    };
    let hpets = all_table_bytes(&tables, "HPET").map(parse_hpet).collect();
    let madt = with_fault(table_bytes(&tables, "APIC"), "MADT", faults.madt, faults::MadtFault::apply)
        .ok_or(AcpiProblem::TableNotFound("MADT"))
        .and_then(parse_madt);
    let fadt = with_fault(table_bytes(&tables, "FACP"), "FADT", faults.fadt, faults::FadtFault::apply)
        .ok_or(AcpiProblem::TableNotFound("FADT"));
    let pm_timer = fadt.and_then(parse_fadt_pm_timer);
    let rtc = fadt.and_then(parse_fadt_rtc);
    let sleep = fadt.and_then(parse_fadt_sleep);
    let s3 = match sleep {
        Ok(s) if s.dsdt != 0 => dsdt_bytes(s.dsdt)
            .map_err(sleep_type::SleepTypeProblem::Dsdt)
            .and_then(|aml| sleep_type::find(aml, "_S3_")),
        Ok(_) => Err(sleep_type::SleepTypeProblem::Dsdt(AcpiProblem::TableNotFound("DSDT"))),
        Err(e) => Err(sleep_type::SleepTypeProblem::Dsdt(e)),
    };
    PlatformTables { hpets, madt, pm_timer, rtc, sleep, s3 }
}

/// Longest DSDT read: real machines' run to a few hundred KiB.
const MAX_DSDT_LEN: usize = 1 << 20;

/// The DSDT at `phys`, validated (signature, length up to `MAX_DSDT_LEN`, checksum): its AML,
/// after the header.
fn dsdt_bytes(phys: u64) -> Result<&'static [u8], AcpiProblem> {
    // SAFETY: all physical memory is mapped at the physical-memory offset for the kernel's
    // lifetime; the FADT names this firmware-reserved table, which nobody writes. The header is
    // read first, then no more than the length it gives (bounded).
    let header =
        unsafe { core::slice::from_raw_parts(PhysMapHandler::ptr::<u8>(phys as usize), SDT_HEADER_LEN) };
    let len = (le32(header, 4) as usize).clamp(SDT_HEADER_LEN, MAX_DSDT_LEN);
    // SAFETY: as above, `len` bytes of the table.
    let bytes = unsafe { core::slice::from_raw_parts(PhysMapHandler::ptr::<u8>(phys as usize), len) };
    Ok(&validate_table(bytes, "DSDT", SDT_HEADER_LEN)?[SDT_HEADER_LEN..])
}

impl HpetTable {
    pub fn log(&self) {
        log::info!(
            "HPET table: block #{} at {:#x}, rev {}, {} comparators, {}-bit counter, legacy route {}, vendor {:#06x}, minimum periodic tick {}, page protection {:#x}",
            self.hpet_number,
            self.base,
            self.hardware_revision,
            self.comparators,
            if self.counter_64bit { 64 } else { 32 },
            if self.legacy_route_capable { "capable" } else { "not capable" },
            self.pci_vendor_id,
            self.minimum_tick,
            self.page_protection
        );
    }
}

impl Madt {
    pub fn log(&self) {
        log::info!(
            "MADT: local APIC at {:#x}, dual 8259s {}",
            self.local_apic_address,
            if self.pcat_compat { "present" } else { "absent" }
        );
        for p in &self.processors {
            log::info!(
                "MADT: processor uid {} APIC id {} ({}){}{}",
                p.uid,
                p.apic_id,
                if p.x2apic { "x2APIC entry" } else { "LAPIC entry" },
                if p.enabled { ", enabled" } else { ", disabled" },
                if p.online_capable { ", online capable" } else { "" }
            );
        }
        for io in &self.ioapics {
            log::info!("MADT: IOAPIC id {} at {:#x}, GSI base {}", io.id, io.address, io.gsi_base);
        }
        for o in &self.overrides {
            log::info!(
                "MADT: override bus {} IRQ {} -> GSI {}, {:?}, {:?}",
                o.bus,
                o.source_irq,
                o.gsi,
                o.polarity,
                o.trigger
            );
        }
        for n in &self.nmis {
            match n.processor_uid {
                Some(uid) => log::info!(
                    "MADT: NMI on LINT{} of processor uid {uid}, {:?}, {:?}",
                    n.lint,
                    n.polarity,
                    n.trigger
                ),
                None => log::info!(
                    "MADT: NMI on LINT{} of all processors, {:?}, {:?}",
                    n.lint,
                    n.polarity,
                    n.trigger
                ),
            }
        }
    }
}

pub mod build;
pub mod faults;
pub mod hpet_blocks;
pub mod sleep_type;

#[cfg(test)]
mod tests;
