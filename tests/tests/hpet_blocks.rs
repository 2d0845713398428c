//! A second HPET table beside QEMU's own (the runner's `--second-hpet-table KIND`, added with
//! `-acpitable`; QEMU keeps its HPET and its table). QEMU has one HPET block, so the second
//! table can only be rejected: naming block #0 again, over block #0's registers, or where
//! nothing answers. Each rejection is logged with its reason and reported in `hpet_blocks`,
//! costs no fallback, and block #0 keeps its counter and serves every CPU (verdict ok).
#![no_std]
#![no_main]

use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::time::clockevents;

kernel_tests::qemu_test!(
    variants: b"
        same_block: --smp 2 --second-hpet-table same-block --cmdline duration_ms=100 --expect-report /hpet_blocks#=2 --expect-report /hpet_blocks/0/accepted=true --expect-report /hpet_blocks/1/accepted=false --expect-report /hpet_blocks/1/number=0 --expect-report '/hpet_blocks/1/reason=block #0 is the block at 0xfed00000 already' --expect-report /tick_devices/1/device=hpet1 --expect-log 'HPET table 1: block #0 at 0xfed01000, 3 comparators, minimum tick 128: rejected: block #0 is the block at 0xfed00000 already; block #0 at 0xfed00000 serves'
        overlap: --smp 2 --second-hpet-table overlap --cmdline duration_ms=100 --expect-report /hpet_blocks/1/accepted=false --expect-report /hpet_blocks/1/address=4275044352 --expect-report '/hpet_blocks/1/reason=its registers overlap those of block #0 at 0xfed00000..0xfed00400' --expect-report /tick_devices/1/device=hpet1 --expect-log 'HPET table 1: block #1 at 0xfed00000, 3 comparators, minimum tick 128: rejected: its registers overlap those of block #0'
        nothing: --smp 2 --second-hpet-table nothing --cmdline duration_ms=100 --expect-report /hpet_blocks/1/accepted=false --expect-report /hpet_blocks/1/address=3220176896 --expect-report '/hpet_blocks/1/reason=its capabilities read all ones (no device decodes the address)' --expect-report /tick_devices/1/device=hpet1 --expect-log 'HPET table 1: block #1 at 0xbff00000, 3 comparators, minimum tick 128: rejected: its capabilities read all ones'
    ",
    tests: [block_0_is_the_only_block_and_keeps_time, the_rejection_is_no_fallback, every_cpu_ticks_on_block_0],
);

fn block_0_is_the_only_block_and_keeps_time(k: &Kernel) {
    let h = k.platform.hpet.expect("QEMU's block was not taken into use");
    assert_eq!(h.phys(), 0xfed0_0000);
    assert!(k.platform.more_hpets.is_empty(), "a second block was accepted");
    let blocks = &k.platform.hpet_blocks;
    assert_eq!(blocks.len(), 2, "expected QEMU's table and ours: {blocks:?}");
    assert!(blocks[0].accepted && !blocks[1].accepted, "{blocks:?}");
    assert!(blocks[1].reason.is_some(), "a rejection without its reason");
    let (a, b) = (h.counter(), h.counter());
    assert!(b > a, "block 0's counter does not count after the second table: {a:#x} then {b:#x}");
}

fn the_rejection_is_no_fallback(k: &Kernel) {
    assert!(
        k.platform.fallbacks.iter().all(|f| !f.contains("HPET")),
        "a rejected second table cost a fallback: {:?}",
        k.platform.fallbacks
    );
}

fn every_cpu_ticks_on_block_0(_: &Kernel) {
    let devices = clockevents::tick_devices();
    assert_eq!(devices.len(), 2);
    for d in &devices {
        let name = d.device.as_deref().unwrap_or("none");
        assert_eq!(
            name,
            alloc::format!("hpet{}", d.cpu),
            "CPU {} is not served by block 0's comparator",
            d.cpu
        );
    }
}

extern crate alloc;
