//! The heap allocates, frees and reuses, serves whatever one of its gaps fits however fragmented
//! it is, and is whole again once freed; MMIO mappings are uncached, made once, and never over
//! RAM.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::alloc::Layout;
use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::arch::x86_64::{memory, mmio};

kernel_tests::qemu_test!(
    variants: b"
        bios:
        uefi: --uefi --expect-log 'BdsDxe: starting Boot'
    ",
    tests: [
        heap_allocates_and_reuses,
        large_allocation,
        fragmented_heap_serves_what_one_gap_fits_and_merges_back_whole,
        mmio_maps_once_and_refuses_ram,
    ],
);

fn heap_allocates_and_reuses(_: &Kernel) {
    // Allocating four times the heap's size in total only works if frees are reused.
    let chunk = 64 * 1024;
    for round in 0..(4 * memory::HEAP_SIZE as usize / chunk) {
        let v: Vec<u8> = alloc::vec![round as u8; chunk];
        assert!(v.iter().all(|&b| b == round as u8));
    }
    let boxes: Vec<Box<u64>> = (0..10_000).map(Box::new).collect();
    assert!(boxes.iter().enumerate().all(|(i, b)| **b == i as u64));
}

fn large_allocation(_: &Kernel) {
    let big: Vec<u64> = (0..(1 << 20)).collect(); // 8 MiB
    assert_eq!(big[(1 << 20) - 1], (1 << 20) - 1);
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).expect("a valid layout")
}

/// Whether `size` bytes can be allocated now (given back at once).
fn fits(size: usize) -> bool {
    // SAFETY: the layout's size is nonzero; a block allocated is freed with the same layout.
    unsafe {
        // `black_box`: an allocation nothing uses may be optimised away, and its null check with it.
        let p = core::hint::black_box(alloc::alloc::alloc(layout(size)));
        if !p.is_null() {
            alloc::alloc::dealloc(p, layout(size));
        }
        !p.is_null()
    }
}

/// The largest allocation the heap can serve now, to the byte.
fn largest_allocation() -> usize {
    let (mut yes, mut no) = (8, memory::HEAP_SIZE as usize + 1);
    while no - yes > 1 {
        let mid = yes + (no - yes) / 2;
        if fits(mid) { yes = mid } else { no = mid }
    }
    yes
}

/// Blocks of the fill below, at most (their sizes average about 1 KiB; the heap is 16 MiB).
const MAX_BLOCKS: usize = 64 * 1024;

/// Fills the heap to the last gap with blocks of random sizes (64..2048 bytes, then ever
/// smaller ones down to 8 for what is left), frees every other one in address order, so that
/// half the heap is free in thousands of holes between live blocks, then checks that:
/// - a request as large as the largest hole is served: an allocation fails only when no gap
///   fits it (talc searches the size class below before it fails; an allocator that rounds the
///   request up to the next class, as a pure TLSF does, would miss it);
/// - one twice as large fails cleanly (a null pointer, no panic), however much is free in all;
/// - once everything is freed the holes have merged back: the largest allocation is exactly as
///   large as before.
///
/// Nothing may log or allocate while the heap is full.
fn fragmented_heap_serves_what_one_gap_fits_and_merges_back_whole(_: &Kernel) {
    let largest_before = largest_allocation();
    let mut blocks: Vec<(*mut u8, usize)> = Vec::with_capacity(MAX_BLOCKS);
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut random = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut size_limit = 2048;
    while size_limit >= 8 && blocks.len() < MAX_BLOCKS {
        let size = if size_limit == 2048 { 64 + (random() % (2048 - 64)) as usize } else { size_limit };
        // SAFETY: the layout's size is nonzero; every block is freed below with its layout.
        let p = unsafe { alloc::alloc::alloc(layout(size)) };
        if p.is_null() {
            size_limit /= 2;
        } else {
            blocks.push((p, size));
        }
    }
    assert!(blocks.len() < MAX_BLOCKS, "the heap did not fill up with {MAX_BLOCKS} blocks");
    // In place: a stable sort would allocate, and the heap is full.
    blocks.sort_unstable_by_key(|&(p, _)| p as usize);
    let (mut holes, mut free, mut largest_hole) = (0, 0, 0);
    for &(p, size) in blocks.iter().step_by(2) {
        // SAFETY: `p` was allocated above with `layout(size)` and is freed once.
        unsafe { alloc::alloc::dealloc(p, layout(size)) };
        holes += 1;
        free += size;
        largest_hole = largest_hole.max(size);
    }
    let served = fits(largest_hole);
    let refused = !fits(2 * largest_hole);
    for &(p, size) in blocks.iter().skip(1).step_by(2) {
        // SAFETY: `p` was allocated above with `layout(size)`, and only every other block was
        // freed before.
        unsafe { alloc::alloc::dealloc(p, layout(size)) };
    }
    drop(blocks);
    let largest_after = largest_allocation();
    log::info!(
        "{holes} holes, {free} bytes free, the largest {largest_hole}: served {served}, twice that refused {refused}; largest allocation {largest_before} before, {largest_after} after"
    );
    assert!(holes > 1000 && free > memory::HEAP_SIZE as usize / 4, "the heap was hardly fragmented");
    assert!(served, "no allocation of {largest_hole} bytes though a hole of that size was free");
    assert!(
        refused,
        "an allocation larger than every hole was served: the holes were not the only free memory"
    );
    assert_eq!(
        largest_after, largest_before,
        "the freed blocks did not merge back into the gaps they came from"
    );
}

/// HPET's register block on q35 (its ACPI table says so; this test only needs some MMIO).
const Q35_HPET: u64 = 0xfed0_0000;

fn mmio_maps_once_and_refuses_ram(_: &Kernel) {
    let a = mmio::map(Q35_HPET, 0x400).expect("mapping the HPET block");
    let b = mmio::map(Q35_HPET + 0x100, 8).expect("mapping inside the HPET block");
    assert_eq!(b.virt.as_u64(), a.virt.as_u64() + 0x100, "a second request must reuse the mapping");
    // SAFETY: `a` maps the HPET block uncached; offset 0 is its read-only capabilities register.
    let caps = unsafe { a.virt.as_ptr::<u64>().read_volatile() };
    let vendor = caps >> 16 & 0xffff;
    assert_eq!(vendor, 0x8086, "capabilities {caps:#x}");

    let (ram_start, _) = memory::usable_ram().next().expect("some usable RAM");
    match mmio::map(ram_start, 0x1000) {
        Err(mmio::MmioError::OverlapsRam { .. }) => {}
        other => panic!("mapping RAM as MMIO gave {other:?}"),
    }
    assert!(matches!(mmio::map(Q35_HPET + 0x800, 0x1000), Err(mmio::MmioError::PartlyMapped { .. })));
}
