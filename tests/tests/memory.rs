//! The heap allocates, frees and reuses; MMIO mappings are uncached, made once, and never over RAM.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;
use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::arch::x86_64::{memory, mmio};

kernel_tests::qemu_test!(
    variants: b"
        bios:
        uefi: --uefi
    ",
    tests: [heap_allocates_and_reuses, large_allocation, mmio_maps_once_and_refuses_ram],
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
