//! Malformed HPET tables for the fault matrix (`--hpet-table FAULT`).
//!
//! The tables are built by the kernel's own ACPI table builder and handed to QEMU with
//! `-acpitable file=...` on `-machine q35,hpet=off`, where QEMU provides neither an HPET device
//! nor an HPET table of its own: the kernel sees only ours. QEMU 7.2 (`hw/acpi/core.c`,
//! `acpi_table_install`) rewrites the length field of an injected table to the file's size and
//! recomputes its checksum, so a truncated table is a short file with a correct checksum, and a
//! bad checksum cannot reach the guest at all: that fault is built and checked by host tests only.

use kernel::arch::x86_64::acpi::SDT_HEADER_LEN;
use kernel::arch::x86_64::acpi::build::{HpetTableSpec, finish_table};
use std::fmt;

/// What is wrong with the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HpetFault {
    /// The bytes do not sum to 0 (host tests only: QEMU recomputes the checksum).
    BadChecksum,
    /// The base address is 0.
    BaseZero,
    /// The base address lies in guest RAM.
    BaseInRam,
    /// Nothing decodes the base address: its registers read all ones.
    BaseUnbacked,
    /// The capabilities register's upper half (COUNTER_CLK_PERIOD) reads 0.
    PeriodZero,
    /// COUNTER_CLK_PERIOD reads above the specification's 100 ns.
    PeriodTooLong,
    /// The table is shorter than the HPET table's fixed 56 bytes (checksum correct).
    Truncated,
}

/// Where the base-address faults point on QEMU 7.2's q35 with `hpet=off`, SeaBIOS and the
/// runner's default devices; each was checked by booting the kernel on it.
pub mod q35 {
    /// The HPET's own address (HPET spec 2.3.1; the table's default).
    pub const HPET: u64 = 0xfed0_0000;
    /// The first page of usable RAM above 1 MiB.
    pub const RAM: u64 = 0x10_0000;
    /// PCI Express configuration space (ECAM at 0xb000_0000, SeaBIOS's PCIEXBAR) of bus 255,
    /// where no device exists: reads return all ones, as from an address nothing decodes.
    /// (Holes in q35's PCI MMIO window, such as 0xfeb0_0000, read 0 under QEMU, not all ones.)
    pub const UNBACKED: u64 = 0xbff0_0000;
    /// The IOAPIC: IOREGSEL at offset 0, and offset 4 reads 0, so the "period" is 0.
    pub const PERIOD_ZERO: u64 = 0xfec0_0000;
    /// The default e1000e NIC's receive address register 0 (BAR0 0xfeb8_0000 as SeaBIOS assigns
    /// it, + RAL0 0x5400): offset 4 is RAH0, the address-valid bit 31 and the MAC's last two
    /// bytes (52:54:00:12:34:56 -> 0x8000_5634), a "period" of 2147505716 fs.
    pub const PERIOD_TOO_LONG: u64 = 0xfeb8_5400;
}

/// The length of the truncated table: header, event timer block id and the Generic Address
/// Structure's first four bytes; the base address is cut off.
pub const TRUNCATED_LEN: usize = SDT_HEADER_LEN + 8;

impl HpetFault {
    pub const ALL: [HpetFault; 7] = [
        HpetFault::BadChecksum,
        HpetFault::BaseZero,
        HpetFault::BaseInRam,
        HpetFault::BaseUnbacked,
        HpetFault::PeriodZero,
        HpetFault::PeriodTooLong,
        HpetFault::Truncated,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HpetFault::BadChecksum => "bad-checksum",
            HpetFault::BaseZero => "base-zero",
            HpetFault::BaseInRam => "base-in-ram",
            HpetFault::BaseUnbacked => "base-unbacked",
            HpetFault::PeriodZero => "period-zero",
            HpetFault::PeriodTooLong => "period-too-long",
            HpetFault::Truncated => "truncated",
        }
    }

    /// The base address the table names unless `@ADDR` says otherwise.
    pub fn default_base(self) -> u64 {
        match self {
            HpetFault::BaseZero => 0,
            HpetFault::BaseInRam => q35::RAM,
            HpetFault::BaseUnbacked => q35::UNBACKED,
            HpetFault::PeriodZero => q35::PERIOD_ZERO,
            HpetFault::PeriodTooLong => q35::PERIOD_TOO_LONG,
            HpetFault::BadChecksum | HpetFault::Truncated => q35::HPET,
        }
    }
}

/// A table to inject: the fault and the base address it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HpetTable {
    pub fault: HpetFault,
    pub base: u64,
}

impl HpetTable {
    /// Parses `FAULT` or `FAULT@ADDR` (ADDR hexadecimal with `0x`, or decimal).
    pub fn parse(s: &str) -> Result<HpetTable, &'static str> {
        let (name, addr) = match s.split_once('@') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let fault = HpetFault::ALL.into_iter().find(|f| f.name() == name).ok_or(
            "one of base-zero, base-in-ram, base-unbacked, period-zero, period-too-long, truncated, optionally @ADDR",
        )?;
        if fault == HpetFault::BadChecksum {
            return Err("QEMU recomputes the checksum of every -acpitable table; host tests cover it");
        }
        let base = match addr {
            None => fault.default_base(),
            Some(_) if fault == HpetFault::BaseZero => return Err("base-zero takes no @ADDR"),
            Some(a) => parse_address(a).ok_or("ADDR is not a number")?,
        };
        Ok(HpetTable { fault, base })
    }

    /// The table's bytes, as the kernel's builder makes them, with the fault applied.
    pub fn bytes(&self) -> Vec<u8> {
        let mut t = HpetTableSpec { base: self.base, ..HpetTableSpec::default() }.bytes();
        match self.fault {
            HpetFault::BadChecksum => t[9] = t[9].wrapping_add(1),
            HpetFault::Truncated => {
                t = finish_table(b"HPET", 1, t[SDT_HEADER_LEN..TRUNCATED_LEN].to_vec());
            }
            _ => {}
        }
        t
    }

    /// A name for the file the table is written to (no `,` or `:`, which QEMU's option syntax
    /// would split at).
    pub fn file_stem(&self) -> String {
        if self.base == self.fault.default_base() {
            format!("hpet-{}", self.fault.name())
        } else {
            format!("hpet-{}-{:#x}", self.fault.name(), self.base)
        }
    }
}

impl fmt::Display for HpetTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (base {:#x})", self.fault.name(), self.base)
    }
}

/// What a second HPET table beside QEMU's own names (`--second-hpet-table KIND[@ADDR]`). QEMU
/// has one HPET block, so a second table can only be one the kernel must reject while block 0
/// keeps serving: each kind is one of the kernel's reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecondHpet {
    /// Block number 0 again, at another address (0xfed01000): the number is taken.
    SameBlock,
    /// Block number 1 over QEMU's block (0xfed00000): probing it would reset block 0.
    Overlap,
    /// Block number 1 where nothing answers (0xbff00000, as `base-unbacked`): reads all ones.
    Nothing,
}

impl SecondHpet {
    pub const ALL: [SecondHpet; 3] = [SecondHpet::SameBlock, SecondHpet::Overlap, SecondHpet::Nothing];

    pub fn name(self) -> &'static str {
        match self {
            SecondHpet::SameBlock => "same-block",
            SecondHpet::Overlap => "overlap",
            SecondHpet::Nothing => "nothing",
        }
    }

    /// The block number the table names.
    pub fn number(self) -> u8 {
        match self {
            SecondHpet::SameBlock => 0,
            SecondHpet::Overlap | SecondHpet::Nothing => 1,
        }
    }

    /// The base address the table names unless `@ADDR` says otherwise.
    pub fn default_base(self) -> u64 {
        match self {
            SecondHpet::SameBlock => q35::HPET + 0x1000,
            SecondHpet::Overlap => q35::HPET,
            SecondHpet::Nothing => q35::UNBACKED,
        }
    }
}

/// A second HPET table to add beside QEMU's own: its kind and the base address it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecondHpetTable {
    pub kind: SecondHpet,
    pub base: u64,
}

impl SecondHpetTable {
    /// Parses `KIND` or `KIND@ADDR`.
    pub fn parse(s: &str) -> Result<SecondHpetTable, &'static str> {
        let (name, addr) = match s.split_once('@') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let kind = SecondHpet::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or("one of same-block, overlap, nothing, optionally @ADDR")?;
        let base = match addr {
            None => kind.default_base(),
            Some(a) => parse_address(a).ok_or("ADDR is not a number")?,
        };
        Ok(SecondHpetTable { kind, base })
    }

    /// The table's bytes, as the kernel's builder makes them: QEMU's own table's fields but
    /// for the block number and the base address.
    pub fn bytes(&self) -> Vec<u8> {
        HpetTableSpec { hpet_number: self.kind.number(), base: self.base, ..HpetTableSpec::default() }.bytes()
    }

    /// A name for the file the table is written to (no `,` or `:`).
    pub fn file_stem(&self) -> String {
        format!("hpet2-{}-{:#x}", self.kind.name(), self.base)
    }
}

fn parse_address(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16).ok(),
        None => s.replace('_', "").parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hpet_regs::{Capabilities, CapabilityError, check_capabilities};
    use kernel::arch::x86_64::acpi::{AcpiProblem, HPET_TABLE_LEN, parse_hpet};

    fn table(fault: HpetFault) -> HpetTable {
        HpetTable { fault, base: fault.default_base() }
    }

    #[test]
    fn second_tables_name_block_0_again_block_1_over_it_or_block_1_at_nothing() {
        use kernel::arch::x86_64::acpi::hpet_blocks::{BlockRejection, judge};
        let qemu = parse_hpet(&kernel::arch::x86_64::acpi::build::HpetTableSpec::default().bytes());
        let expected = [
            ("same-block", BlockRejection::SameNumber { number: 0, address: q35::HPET }),
            ("overlap", BlockRejection::Overlaps { number: 0, address: q35::HPET }),
            ("nothing", BlockRejection::Probe("nothing there".into())),
        ];
        for (name, rejection) in expected {
            let second = SecondHpetTable::parse(name).unwrap();
            let parsed = parse_hpet(&second.bytes());
            assert_eq!(parsed.map(|t| (t.hpet_number, t.base)), Ok((second.kind.number(), second.base)));
            // Judged beside QEMU's table by the kernel's rules, a probe finding only QEMU's block.
            let d = judge(
                &[qemu, parsed],
                |t, _| if t.base == q35::HPET { Ok(()) } else { Err("nothing there") },
            );
            assert!(d[0].accepted(), "{name}: QEMU's block stays");
            assert_eq!(d[1].outcome, Err(rejection), "{name}");
        }
        assert_eq!(SecondHpetTable::parse("nothing@0xfed02000").unwrap().base, 0xfed0_2000);
        assert!(SecondHpetTable::parse("bogus").is_err());
        assert_eq!(SecondHpetTable::parse("overlap").unwrap().file_stem(), "hpet2-overlap-0xfed00000");
    }

    #[test]
    fn every_fault_but_bad_checksum_parses_with_its_default_base() {
        for f in HpetFault::ALL.into_iter().filter(|&f| f != HpetFault::BadChecksum) {
            assert_eq!(HpetTable::parse(f.name()), Ok(table(f)), "{}", f.name());
        }
        assert_eq!(HpetTable::parse("base-in-ram").unwrap().base, 0x10_0000);
    }

    #[test]
    fn address_suffix_overrides_the_base() {
        let t = HpetTable::parse("base-in-ram@0x100_0000").unwrap();
        assert_eq!(t, HpetTable { fault: HpetFault::BaseInRam, base: 0x100_0000 });
        assert_eq!(HpetTable::parse("period-zero@4272947200").unwrap().base, 0xfeb0_0000);
        assert_eq!(t.file_stem(), "hpet-base-in-ram-0x1000000");
        assert_eq!(table(HpetFault::Truncated).file_stem(), "hpet-truncated");
    }

    #[test]
    fn unknown_faults_bad_addresses_and_bad_checksum_are_refused() {
        assert!(HpetTable::parse("base-nowhere").is_err());
        assert!(HpetTable::parse("").is_err());
        assert!(HpetTable::parse("base-in-ram@").is_err());
        assert!(HpetTable::parse("base-in-ram@0xfoo").is_err());
        assert!(HpetTable::parse("base-zero@0x1000").is_err());
        let why = HpetTable::parse("bad-checksum").unwrap_err();
        assert!(why.contains("recomputes the checksum"), "{why}");
    }

    #[test]
    fn bad_checksum_table_is_rejected_by_the_kernel_parser() {
        let b = table(HpetFault::BadChecksum).bytes();
        assert_eq!(b.len(), HPET_TABLE_LEN);
        assert_eq!(parse_hpet(&b), Err(AcpiProblem::BadChecksum { table: "HPET", sum: 1 }));
    }

    #[test]
    fn base_zero_table_is_rejected_by_the_kernel_parser() {
        assert_eq!(parse_hpet(&table(HpetFault::BaseZero).bytes()), Err(AcpiProblem::HpetBaseZero));
    }

    #[test]
    fn truncated_table_has_a_correct_checksum_and_is_rejected_for_its_length() {
        let b = table(HpetFault::Truncated).bytes();
        assert_eq!(b.len(), TRUNCATED_LEN);
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize, TRUNCATED_LEN);
        assert_eq!(b.iter().fold(0u8, |s, &x| s.wrapping_add(x)), 0);
        assert_eq!(
            parse_hpet(&b),
            Err(AcpiProblem::Truncated { table: "HPET", length: TRUNCATED_LEN, needed: HPET_TABLE_LEN })
        );
    }

    #[test]
    fn base_pointing_faults_parse_and_leave_the_rejection_to_the_device_checks() {
        for f in
            [HpetFault::BaseInRam, HpetFault::BaseUnbacked, HpetFault::PeriodZero, HpetFault::PeriodTooLong]
        {
            let t = parse_hpet(&table(f).bytes()).unwrap();
            assert_eq!(t.base, f.default_base(), "{}", f.name());
            assert_eq!(t.base % 0x400, 0, "{}: the base must pass the alignment check", f.name());
        }
    }

    /// What the capabilities register reads at each base under QEMU 7.2 (seen by booting), and
    /// what the checks the kernel runs on it (`hpet-regs`) make of it.
    #[test]
    fn capabilities_read_at_the_fault_bases_are_rejected() {
        let unbacked = Capabilities(u64::MAX);
        let ioapic = Capabilities(0x3e); // IOREGSEL as the kernel last left it; offset 4 reads 0
        let e1000e_ra0 = Capabilities(0x8000_5634_1200_5452); // RAH0:RAL0 of 52:54:00:12:34:56
        assert_eq!(check_capabilities(unbacked), Err(CapabilityError::ReadsAllOnes));
        assert_eq!(check_capabilities(ioapic), Err(CapabilityError::PeriodZero));
        assert_eq!(
            check_capabilities(e1000e_ra0),
            Err(CapabilityError::PeriodTooLong { period_fs: 2_147_505_716 })
        );
        // Just above the limit is too long; the limit itself and q35's HPET are fine.
        let period = |fs: u64| Capabilities(fs << 32 | 0x8086_a201);
        assert_eq!(
            check_capabilities(period(100_000_001)),
            Err(CapabilityError::PeriodTooLong { period_fs: 100_000_001 })
        );
        assert_eq!(check_capabilities(period(100_000_000)), Ok(()));
        assert_eq!(check_capabilities(period(10_000_000)), Ok(()));
    }
}
