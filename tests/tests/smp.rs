//! Every CPU the MADT enables comes online, runs what it is sent by IPI, takes the interrupts
//! routed to it (and only those), and loses no IPI under a round-robin storm.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::arch::x86_64::hpet::ComparatorConfig;
use kernel_tests::kernel::arch::x86_64::ioapic::{
    DeliveryMode, IOAPICS, Polarity, RedirectionEntry, Trigger,
};
use kernel_tests::kernel::arch::x86_64::smp::{self, percpu};
use kernel_tests::kernel::arch::x86_64::{interrupts, lapic};
use kernel_tests::kernel::time::clockevents::ComparatorRole;
use kernel_tests::wait_for;

kernel_tests::qemu_test!(
    variants: b"
        smp1: --smp 1 --expect-report /cpus_enabled=1 --expect-report /cpus_online=1 --expect-report /hpet/comparators/0/delivery=ioapic
        smp2: --smp 2 --expect-report /cpus_enabled=2 --expect-report /cpus_online=2 --expect-report /tick_devices/1/device=hpet1
        smp3: --smp 3 --expect-report /cpus_enabled=3 --expect-report /cpus_online=3 --expect-report /tick_devices/2/device=hpet2 -- -global hpet.timers=4
        smp4: --smp 4 --expect-report /cpus_enabled=4 --expect-report /cpus_online=4 --expect-report /cpus#=4 --expect-report /tick_devices/3/device=hpet3 -- -global hpet.timers=5
        smp8: --smp 8 --expect-report /cpus_enabled=8 --expect-report /cpus_online=8 --expect-log 'CPU 7 online: APIC id 7' --expect-report /hpet/comparators/7/delivery=fsb --expect-report /tick_devices/7/device=hpet7 -- -global hpet.timers=9 -global hpet.msi=on
        smp16: --smp 16 --expect-report /cpus_online=16 --expect-report /hpet/comparators#=24 --expect-report /tick_devices/15/device=hpet15 --expect-report /broadcast=pit -- -global hpet.timers=24 -global hpet.msi=on
        smp64: --smp 64 --expect-report /cpus_online=64 --expect-log 'CPU 63 online: APIC id 63' --expect-report /tick_devices/22/device=hpet22 --expect-report /broadcast=hpet23 --expect-report /tick_devices/63/device=lapic63 -- -global hpet.timers=24 -global hpet.msi=on
        x2apic_smp4: --x2apic on --smp 4 --expect-report /lapic/mode=x2apic --expect-report /cpus_online=4 --expect-report /tick_devices/3/device=hpet3 -- -global hpet.timers=5
        x2apic_smp64: --x2apic on --smp 64 --expect-report /lapic/mode=x2apic --expect-report /cpus_online=64 --expect-report /broadcast=hpet23 -- -global hpet.timers=24 -global hpet.msi=on
        x2apic_uefi_smp2: --x2apic on --uefi --smp 2 --expect-report /lapic/mode=x2apic --expect-report /cpus_online=2
        xapic_smp4: --x2apic off --smp 4 --expect-report /lapic/mode=xapic --expect-report /cpus_online=4 -- -global hpet.timers=5
        pc_smp2: --smp 2 --expect-report /cpus_online=2 --expect-report /hpet/comparators/1/delivery=legacy --expect-report /tick_devices/1/device=hpet1 -- -machine pc,hpet=on
        pc_smp4: --smp 4 --expect-report /cpus_online=4 --expect-report /hpet/comparators/1/role=global -- -machine pc,hpet=on
        global_smp4: --smp 4 --cmdline clockevents=global --expect-report /cpus_online=4 --expect-report /tick_devices/3/via_broadcast=true -- -global hpet.timers=4
        uefi_smp2: --uefi --smp 2 --expect-report /cpus_online=2
        uefi_smp4: --uefi --smp 4 --expect-report /cpus_online=4 -- -global hpet.timers=6
        uefi_smp8: --uefi --smp 8 --expect-report /cpus_online=8 -- -global hpet.timers=9 -global hpet.msi=on
    ",
    tests: [
        every_enabled_cpu_is_online,
        closure_sent_by_ipi_runs_on_its_cpu,
        ioapic_interrupt_is_counted_on_the_chosen_cpu_only => "smp1 smp2 smp3 smp4 smp8 smp16 global_smp4 uefi_smp2 uefi_smp4 uefi_smp8 x2apic_smp4 x2apic_uefi_smp2 xapic_smp4",
        round_robin_ipi_storm_loses_nothing,
        ipi_to_all_others_reaches_each_other_cpu_once,
        timer_interrupts_land_where_routed,
    ],
);

fn every_enabled_cpu_is_online(k: &Kernel) {
    let online = percpu::all().count();
    assert_eq!(online as u32, k.platform.firmware.cpus_enabled, "CPUs online vs enabled in the MADT");
    for (i, cpu) in percpu::all().enumerate() {
        assert_eq!(cpu.index, i);
        assert!(i == 0 || cpu.online_ns.load(Ordering::Relaxed) > 0, "CPU {i} has no online time");
    }
}

fn whoami(arg: u64) -> u64 {
    let cpu = percpu::this_cpu();
    assert_eq!(u64::from(lapic::id()), u64::from(cpu.apic_id), "per-CPU state of another CPU");
    cpu.index as u64 * 1000 + arg
}

fn closure_sent_by_ipi_runs_on_its_cpu(_: &Kernel) {
    for cpu in percpu::all() {
        for arg in [7, 8] {
            let r = smp::call_on(cpu.index, move || whoami(arg)).expect("the call returns");
            assert_eq!(r, cpu.index as u64 * 1000 + arg);
        }
    }
}

static HPET_HITS: AtomicU64 = AtomicU64::new(0);
static COMPARATOR: AtomicU64 = AtomicU64::new(0);

fn hpet_irq(_: interrupts::Irq) {
    let k = KERNEL_HPET.get().unwrap();
    let n = COMPARATOR.load(Ordering::Relaxed) as usize;
    if k.interrupt_status() & (1 << n) != 0 {
        k.clear_interrupt(n);
        HPET_HITS.fetch_add(1, Ordering::Relaxed);
    }
}

static KERNEL_HPET: spin::Once<&'static kernel_tests::kernel::arch::x86_64::hpet::Hpet> = spin::Once::new();

/// Programs a comparator the clockevents layer does not use (the variants listed have one
/// with a free IOAPIC pin) to interrupt the last CPU.
fn ioapic_interrupt_is_counted_on_the_chosen_cpu_only(k: &Kernel) {
    let hpet = k.platform.hpet.expect("q35 has an HPET");
    KERNEL_HPET.call_once(|| hpet);
    let n = k
        .clockevents
        .comparators
        .iter()
        .rev()
        .find(|c| c.role == ComparatorRole::Unused && c.channel.is_none())
        .expect("a comparator the clockevents layer does not use")
        .index;
    COMPARATOR.store(n as u64, Ordering::Relaxed);
    let config = hpet.comparator_config(n);
    let vector = interrupts::allocate(hpet_irq).unwrap();
    let gsi = {
        let mut io = IOAPICS.lock();
        let gsi = io.find_free(config.route_capability(), &k.platform.firmware.isa_gsis).unwrap();
        io.claim(gsi, "smp test").unwrap();
        gsi
    };
    hpet.set_comparator_config(
        n,
        (config.with_route(gsi as u8)
            | ComparatorConfig::LEVEL_TRIGGERED
            | ComparatorConfig::INTERRUPT_ENABLE)
            - ComparatorConfig::PERIODIC,
    );
    let target = percpu::all().last().unwrap();
    let entry = RedirectionEntry {
        vector,
        delivery: DeliveryMode::Fixed,
        logical: false,
        polarity: Polarity::ActiveLow,
        trigger: Trigger::Level,
        masked: false,
        destination: target.apic_id,
    };
    IOAPICS.lock().route(gsi, entry).unwrap();
    for i in 1..=3 {
        hpet.set_comparator(n, hpet.counter() + hpet.frequency_hz() / 1000);
        assert!(wait_for(|| HPET_HITS.load(Ordering::Relaxed) >= i), "interrupt {i} never arrived");
    }
    for cpu in percpu::all() {
        let got = cpu.interrupts[usize::from(vector)].load(Ordering::Relaxed);
        let want = if cpu.index == target.index { 3 } else { 0 };
        assert_eq!(
            got, want,
            "CPU {} took {got} of the interrupts routed to CPU {}",
            cpu.index, target.index
        );
    }
    hpet.set_comparator_config(n, config - ComparatorConfig::INTERRUPT_ENABLE);
    IOAPICS.lock().release(gsi).unwrap();
}

fn count_ipi(_: interrupts::Irq) {}

fn round_robin_ipi_storm_loses_nothing(_: &Kernel) {
    const IPIS: u64 = 5000;
    let vector = interrupts::allocate(count_ipi).unwrap();
    let cpus: alloc::vec::Vec<_> = percpu::all().collect();
    let received =
        || cpus.iter().map(|c| c.interrupts[usize::from(vector)].load(Ordering::Relaxed)).sum::<u64>();
    for i in 0..IPIS {
        let target = cpus[(i as usize) % cpus.len()];
        lapic::send_ipi(target.apic_id, vector);
        // A fixed IPI to a CPU that already has this vector pending merges with it (one IRR
        // bit): pace the storm so each IPI is taken before the next to the same CPU.
        let expected = i + 1;
        assert!(wait_for(|| received() >= expected), "IPI {i} to CPU {} lost", target.index);
    }
    assert_eq!(received(), IPIS);
}

extern crate alloc;

fn ipi_to_all_others_reaches_each_other_cpu_once(_: &Kernel) {
    let vector = interrupts::allocate(count_ipi).unwrap();
    let me = percpu::this_cpu().index;
    lapic::send_ipi_all_others(vector);
    let got = |c: &percpu::PerCpu| c.interrupts[usize::from(vector)].load(Ordering::Relaxed);
    for cpu in percpu::all().filter(|c| c.index != me) {
        assert!(wait_for(|| got(cpu) == 1), "CPU {} did not get the broadcast IPI", cpu.index);
    }
    assert_eq!(got(percpu::this_cpu()), 0, "the sender got its own all-but-self IPI");
}

/// With timers running on every CPU for 100 ms, every clock event interrupt lands on a CPU its
/// device serves, and each comparator's on the CPU it is routed to only (IOAPIC, FSB or legacy
/// delivery, per-CPU or global).
fn timer_interrupts_land_where_routed(k: &Kernel) {
    let out = kernel_tests::kernel::workload::run(100);
    kernel_tests::assert_workload_clean(&out);
    let checked = kernel_tests::assert_interrupts_land_where_routed(k);
    assert!(checked > 0, "no comparator event was counted: the check checked nothing");
}
