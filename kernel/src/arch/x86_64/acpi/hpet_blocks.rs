//! Several HPET tables -> the HPET blocks to use: each table judged in the order the firmware
//! lists them, against the blocks accepted before it. Pure but for the probe it is handed, so
//! the rules run as host tests on hand-built tables and a fake probe.
//!
//! A table is rejected when it does not parse (see [`parse_hpet`](super::parse_hpet)), when it
//! names a block number an accepted block has, when its 1 KiB register range overlaps an
//! accepted block's (probing it would stop and reset that block's counter), or when the probe
//! finds nothing usable there (RAM, all ones, a counter that does not count). A rejected table
//! claims nothing: a later table may still name its number. The first block accepted is never
//! touched by what later tables say.

use super::{AcpiProblem, HpetTable};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// IA-PC HPET spec 1.0a 2.3.1: a block's registers take 1 KiB.
pub const HPET_BLOCK_LEN: u64 = 0x400;

/// Why an HPET table's block is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockRejection {
    /// The table itself is unsound.
    Table(AcpiProblem),
    /// An accepted block has this number already (at `address`).
    SameNumber { number: u8, address: u64 },
    /// Its register range overlaps that of accepted block `number` at `address`.
    Overlaps { number: u8, address: u64 },
    /// The probe found no usable block at the address (its own words).
    Probe(String),
}

impl fmt::Display for BlockRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockRejection::Table(p) => write!(f, "{p}"),
            BlockRejection::SameNumber { number, address } => {
                write!(f, "block #{number} is the block at {address:#x} already")
            }
            BlockRejection::Overlaps { number, address } => write!(
                f,
                "its registers overlap those of block #{number} at {address:#x}..{:#x}",
                address + HPET_BLOCK_LEN
            ),
            BlockRejection::Probe(why) => f.write_str(why),
        }
    }
}

/// One HPET table and what became of it.
#[derive(Debug)]
pub struct BlockDecision<T> {
    /// Its place among the HPET tables (0: the first the RSDT/XSDT lists).
    pub table: usize,
    /// Its fields, if it parsed.
    pub parsed: Option<HpetTable>,
    /// The probed block, or why there is none.
    pub outcome: Result<T, BlockRejection>,
}

impl<T> BlockDecision<T> {
    pub fn accepted(&self) -> bool {
        self.outcome.is_ok()
    }

    /// What the table says, for its log line: `HPET table 1: block #1 at 0xfed00000, 3
    /// comparators, minimum tick 128`, or `HPET table 1` when it did not parse.
    pub fn describe(&self) -> String {
        match &self.parsed {
            Some(t) => alloc::format!(
                "HPET table {}: block #{} at {:#x}, {} comparators, minimum tick {}",
                self.table,
                t.hpet_number,
                t.base,
                t.comparators,
                t.minimum_tick
            ),
            None => alloc::format!("HPET table {}", self.table),
        }
    }
}

fn overlap(a: u64, b: u64) -> bool {
    a < b.saturating_add(HPET_BLOCK_LEN) && b < a.saturating_add(HPET_BLOCK_LEN)
}

/// Judges `tables` in order; `probe` is called only for a table that passed the checks against
/// the blocks accepted so far, and told whether it is the first block (the one that keeps
/// time).
pub fn judge<T, E: fmt::Display>(
    tables: &[Result<HpetTable, AcpiProblem>],
    mut probe: impl FnMut(&HpetTable, bool) -> Result<T, E>,
) -> Vec<BlockDecision<T>> {
    let mut accepted: Vec<HpetTable> = Vec::new();
    let mut decisions = Vec::with_capacity(tables.len());
    for (table, parsed) in tables.iter().enumerate() {
        let outcome = match parsed {
            Err(p) => Err(BlockRejection::Table(*p)),
            Ok(t) => {
                if let Some(a) = accepted.iter().find(|a| a.hpet_number == t.hpet_number) {
                    Err(BlockRejection::SameNumber { number: a.hpet_number, address: a.base })
                } else if let Some(a) = accepted.iter().find(|a| overlap(a.base, t.base)) {
                    Err(BlockRejection::Overlaps { number: a.hpet_number, address: a.base })
                } else {
                    probe(t, accepted.is_empty()).map_err(|e| BlockRejection::Probe(e.to_string()))
                }
            }
        };
        if let (Ok(_), Ok(t)) = (&outcome, parsed) {
            accepted.push(*t);
        }
        decisions.push(BlockDecision { table, parsed: parsed.ok(), outcome });
    }
    decisions
}

#[cfg(test)]
mod tests {
    use super::super::build::HpetTableSpec;
    use super::super::parse_hpet;
    use super::*;

    const Q35: u64 = 0xfed0_0000;

    fn table(number: u8, base: u64) -> Result<HpetTable, AcpiProblem> {
        parse_hpet(&HpetTableSpec { hpet_number: number, base, ..HpetTableSpec::default() }.bytes())
    }

    /// A probe that finds a block at `present` addresses and records what it was asked.
    fn judge_with(
        tables: &[Result<HpetTable, AcpiProblem>],
        present: &[u64],
    ) -> (Vec<BlockDecision<u64>>, Vec<(u64, bool)>) {
        let mut asked = Vec::new();
        let decisions = judge(tables, |t, first| {
            asked.push((t.base, first));
            if present.contains(&t.base) { Ok(t.base) } else { Err("its capabilities read all ones") }
        });
        (decisions, asked)
    }

    fn verdicts(d: &[BlockDecision<u64>]) -> Vec<Result<u64, BlockRejection>> {
        d.iter().map(|d| d.outcome.clone()).collect()
    }

    #[test]
    fn two_sound_blocks_are_both_accepted_the_first_keeping_time() {
        let (d, asked) = judge_with(&[table(0, Q35), table(1, 0xfed0_1000)], &[Q35, 0xfed0_1000]);
        assert_eq!(verdicts(&d), [Ok(Q35), Ok(0xfed0_1000)]);
        assert_eq!(asked, [(Q35, true), (0xfed0_1000, false)]);
        assert_eq!(d[1].describe(), "HPET table 1: block #1 at 0xfed01000, 3 comparators, minimum tick 128");
    }

    #[test]
    fn a_second_table_naming_the_same_block_is_rejected_unprobed() {
        let (d, asked) = judge_with(&[table(0, Q35), table(0, 0xfed0_1000)], &[Q35, 0xfed0_1000]);
        assert_eq!(d[1].outcome, Err(BlockRejection::SameNumber { number: 0, address: Q35 }));
        assert_eq!(asked, [(Q35, true)], "the duplicate is never probed");
        assert!(d[0].accepted());
    }

    #[test]
    fn a_second_table_over_the_first_blocks_registers_is_rejected_unprobed() {
        // Probing it would stop and reset the first block's counter.
        let (d, asked) = judge_with(&[table(0, Q35), table(1, Q35)], &[Q35]);
        assert_eq!(d[1].outcome, Err(BlockRejection::Overlaps { number: 0, address: Q35 }));
        assert_eq!(asked.len(), 1);
        assert_eq!(
            d[1].outcome.as_ref().unwrap_err().to_string(),
            "its registers overlap those of block #0 at 0xfed00000..0xfed00400"
        );
        // The ranges are 1 KiB: the next KiB is clear.
        let (d, _) = judge_with(&[table(0, Q35), table(1, Q35 + 0x400)], &[Q35, Q35 + 0x400]);
        assert!(d[1].accepted());
    }

    #[test]
    fn a_table_pointing_at_nothing_is_rejected_by_the_probe_and_the_first_block_stays() {
        let (d, _) = judge_with(&[table(0, Q35), table(1, 0xbff0_0000)], &[Q35]);
        assert_eq!(
            verdicts(&d),
            [Ok(Q35), Err(BlockRejection::Probe("its capabilities read all ones".into()))]
        );
    }

    #[test]
    fn unparsable_tables_are_rejected_with_their_problem() {
        let (d, asked) = judge_with(&[table(1, 0), table(0, Q35), table(2, 0xfed0_0100)], &[Q35]);
        assert_eq!(
            verdicts(&d),
            [
                Err(BlockRejection::Table(AcpiProblem::HpetBaseZero)),
                Ok(Q35),
                Err(BlockRejection::Table(AcpiProblem::HpetBaseMisaligned { base: 0xfed0_0100 })),
            ]
        );
        assert_eq!(asked, [(Q35, true)], "the first sound block is the first one probed");
        assert_eq!(d[0].describe(), "HPET table 0");
    }

    #[test]
    fn a_rejected_table_claims_nothing() {
        // A first table pointing at nothing does not keep the real block 0 out, nor its range.
        let (d, asked) = judge_with(&[table(0, 0xbff0_0000), table(0, Q35)], &[Q35]);
        assert_eq!(verdicts(&d)[1], Ok(Q35));
        assert_eq!(asked, [(0xbff0_0000, true), (Q35, true)], "still the first block to be accepted");
    }

    #[test]
    fn no_tables_no_blocks() {
        assert!(judge_with(&[], &[Q35]).0.is_empty());
    }
}
