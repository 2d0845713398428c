//! Uncached mappings of device registers.
//!
//! `map(phys, len)` maps a physical range with PCD|PWT in the MMIO window, exactly once: asking
//! again for a range inside an existing mapping returns that mapping, a range that only partly
//! overlaps one is refused, and so is any range that overlaps RAM, usable or already in use (a
//! firmware table that points a device into RAM is lying, and probing "registers" there would
//! write into the kernel's own memory).

use super::memory;
use alloc::vec::Vec;
use core::fmt;
use spin::Mutex;
use x86_64::structures::paging::{Page, PageTableFlags, Size4KiB};
use x86_64::{PhysAddr, VirtAddr};

/// A mapped device range: `virt` corresponds to `phys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioRegion {
    pub phys: u64,
    pub virt: VirtAddr,
    pub len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioError {
    Empty,
    /// The range wraps around or is not addressable.
    OutOfRange {
        phys: u64,
        len: u64,
    },
    OverlapsRam {
        phys: u64,
        len: u64,
        ram_start: u64,
        ram_end: u64,
    },
    PartlyMapped {
        phys: u64,
        len: u64,
        mapped_start: u64,
        mapped_end: u64,
    },
    WindowFull,
    MapFailed,
}

impl fmt::Display for MmioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MmioError::Empty => write!(f, "empty MMIO range"),
            MmioError::OutOfRange { phys, len } => {
                write!(f, "MMIO range {phys:#x}+{len:#x} is not addressable")
            }
            MmioError::OverlapsRam { phys, len, ram_start, ram_end } => {
                write!(f, "MMIO range {phys:#x}+{len:#x} overlaps RAM {ram_start:#x}..{ram_end:#x}")
            }
            MmioError::PartlyMapped { phys, len, mapped_start, mapped_end } => write!(
                f,
                "MMIO range {phys:#x}+{len:#x} overlaps the existing mapping of {mapped_start:#x}..{mapped_end:#x}"
            ),
            MmioError::WindowFull => write!(f, "the MMIO window is full"),
            MmioError::MapFailed => write!(f, "page table update failed (out of frames)"),
        }
    }
}

/// One page-granular mapping: physical pages `start..end` at `virt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    virt: u64,
}

/// What to do with a request, decided from the existing mappings and the RAM ranges alone.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Reuse { virt: u64 },
    MapNew { start: u64, end: u64 },
}

fn decide(
    phys: u64,
    len: u64,
    existing: &[Mapping],
    mut ram: impl Iterator<Item = (u64, u64)>,
) -> Result<Decision, MmioError> {
    if len == 0 {
        return Err(MmioError::Empty);
    }
    let end = phys.checked_add(len).filter(|&e| e <= 1 << 52).ok_or(MmioError::OutOfRange { phys, len })?;
    if let Some((ram_start, ram_end)) = ram.find(|&(s, e)| phys < e && s < end) {
        return Err(MmioError::OverlapsRam { phys, len, ram_start, ram_end });
    }
    let start_page = phys & !0xfff;
    let end_page = end.next_multiple_of(4096);
    for m in existing {
        if m.start <= phys && end <= m.end {
            return Ok(Decision::Reuse { virt: m.virt + (phys - m.start) });
        }
        if start_page < m.end && m.start < end_page {
            return Err(MmioError::PartlyMapped { phys, len, mapped_start: m.start, mapped_end: m.end });
        }
    }
    Ok(Decision::MapNew { start: start_page, end: end_page })
}

struct Window {
    mappings: Vec<Mapping>,
    next_virt: u64,
}

static WINDOW: Mutex<Window> =
    Mutex::new(Window { mappings: Vec::new(), next_virt: memory::MMIO_WINDOW_START });

/// Maps `phys..phys+len` uncached (see the module comment for the rules).
pub fn map(phys: u64, len: u64) -> Result<MmioRegion, MmioError> {
    let mut w = WINDOW.lock();
    let (start, end) = match decide(phys, len, &w.mappings, memory::ram())? {
        Decision::Reuse { virt } => {
            return Ok(MmioRegion { phys, virt: VirtAddr::new(virt), len });
        }
        Decision::MapNew { start, end } => (start, end),
    };
    let virt = w.next_virt;
    if virt + (end - start) > memory::MMIO_WINDOW_START + memory::MMIO_WINDOW_SIZE {
        return Err(MmioError::WindowFull);
    }
    let flags = PageTableFlags::PRESENT
        | PageTableFlags::WRITABLE
        | PageTableFlags::NO_CACHE
        | PageTableFlags::WRITE_THROUGH
        | PageTableFlags::NO_EXECUTE;
    let first = Page::<Size4KiB>::containing_address(VirtAddr::new(virt));
    memory::map_range(first, (end - start) / 4096, Some(PhysAddr::new(start)), flags)
        .map_err(|_| MmioError::MapFailed)?;
    w.next_virt = virt + (end - start);
    w.mappings.push(Mapping { start, end, virt });
    Ok(MmioRegion { phys, virt: VirtAddr::new(virt + (phys - start)), len })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: [(u64, u64); 2] = [(0x10_0000, 0x800_0000), (0x1_0000_0000, 0x1_4000_0000)];

    #[test]
    fn new_range_is_page_aligned() {
        let d = decide(0xfed0_0010, 0x20, &[], RAM.into_iter()).unwrap();
        assert_eq!(d, Decision::MapNew { start: 0xfed0_0000, end: 0xfed0_1000 });
    }

    #[test]
    fn range_inside_an_existing_mapping_is_reused_not_mapped_twice() {
        let existing = [Mapping { start: 0xfed0_0000, end: 0xfed0_1000, virt: 0xffff_d000_0000_0000 }];
        let d = decide(0xfed0_0100, 8, &existing, RAM.into_iter()).unwrap();
        assert_eq!(d, Decision::Reuse { virt: 0xffff_d000_0000_0100 });
    }

    #[test]
    fn partial_overlap_with_a_mapping_is_refused() {
        let existing = [Mapping { start: 0xfec0_0000, end: 0xfec0_1000, virt: 0xffff_d000_0000_0000 }];
        let e = decide(0xfec0_0800, 0x1000, &existing, RAM.into_iter()).unwrap_err();
        assert!(matches!(e, MmioError::PartlyMapped { .. }));
    }

    #[test]
    fn ranges_touching_ram_are_refused() {
        for (phys, len) in [(0x7ff_fff8, 16), (0x20_0000, 0x1000), (0x1_3fff_ffff, 1)] {
            let e = decide(phys, len, &[], RAM.into_iter()).unwrap_err();
            assert!(matches!(e, MmioError::OverlapsRam { .. }), "{phys:#x}");
        }
        // Right after the RAM region is fine.
        assert!(decide(0x800_0000, 0x1000, &[], RAM.into_iter()).is_ok());
    }

    #[test]
    fn empty_and_wrapping_ranges_are_refused() {
        assert_eq!(decide(0xfed0_0000, 0, &[], RAM.into_iter()), Err(MmioError::Empty));
        assert!(matches!(decide(u64::MAX - 4, 16, &[], RAM.into_iter()), Err(MmioError::OutOfRange { .. })));
    }
}
