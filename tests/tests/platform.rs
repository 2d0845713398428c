//! The platform drivers on the machines QEMU offers: what the firmware tables and the devices
//! say (checked on the TIMER-REPORT), interrupts that really arrive through the IOAPIC and the
//! LAPIC, and the HPET's stop / reset / restart path.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::arch::x86_64::hpet::{ComparatorConfig, Hpet};
use kernel_tests::kernel::arch::x86_64::ioapic::{
    DeliveryMode, IOAPICS, Polarity, RedirectionEntry, Trigger,
};
use kernel_tests::kernel::arch::x86_64::smp::percpu;
use kernel_tests::kernel::arch::x86_64::{destination, interrupts, lapic, tsc};
use kernel_tests::kernel::time::clockevents::{self, ComparatorRole};
use kernel_tests::kernel::time::clocksource::now_ns;
use kernel_tests::kernel_time::clockevents::State;
use kernel_tests::wait_for;

kernel_tests::qemu_test!(
    variants: b"
        timers3: --expect-report /hpet/comparators#=3 --expect-report /hpet/comparators/0/route_cap=16711940 --expect-report /hpet/comparators/1/route_cap=16711940 --expect-report /hpet/comparators/2/route_cap=16711940 --expect-report /hpet/period_fs=10000000 --expect-report /hpet/counter_bits=64 --expect-report /ioapics/0/pins=24 --expect-report /lapic/calibrated_against=hpet
        timers8: --expect-report /hpet/comparators#=8 --expect-report /hpet/comparators/7/route_cap=16711940 -- -global hpet.timers=8
        timers32: --expect-report /hpet/comparators#=32 -- -global hpet.timers=32
        uefi: --uefi --expect-report /hpet/comparators#=3 --expect-report /ioapics#=1
        hpet_off: --expect-report /hpet=null --expect-report /lapic/calibrated_against=acpi_pm -- -machine q35,hpet=off
        pc: --expect-report /hpet/comparators/0/route_cap=4 --expect-report /hpet/comparators/0/delivery=legacy -- -machine pc,hpet=on
        msi: --expect-report /hpet/comparators/0/fsb=true --expect-report /hpet/comparators/0/delivery=fsb -- -global hpet.msi=on
        x2apic: --x2apic on --expect-report /lapic/mode=x2apic --expect-report /tick_devices/0/device=hpet0
        xapic: --x2apic off --expect-report /lapic/mode=xapic --expect-report /tick_devices/0/device=hpet0
        hpet_free: --cmdline clockevents=lapic --expect-report /hpet/comparators/0/role=unused --expect-report /tick_devices/0/device=lapic0
        hpet_free_msi: --cmdline clockevents=lapic --expect-report /hpet/comparators/2/fsb=true --expect-log 'by FSB message' -- -global hpet.msi=on
    ",
    tests: [
        hpet_interrupt_arrives_through_the_ioapic => "timers3 timers8 timers32 uefi msi x2apic xapic hpet_free hpet_free_msi",
        lapic_timer_interrupt_arrives => "timers3 timers8 timers32 uefi pc msi x2apic xapic",
        hpet_stops_resets_and_restarts => "hpet_free hpet_free_msi",
        unhandled_vector_is_counted_as_spurious,
        hpet_fsb_interrupt_arrives_when_offered => "msi hpet_free_msi",
        lapic_periodic_timer_repeats => "timers3 timers8 timers32 uefi pc msi x2apic xapic",
        ioapic_refuses_bad_and_double_claims,
        clocksource_is_monotonic_and_advances,
        timer_interrupts_land_where_routed,
    ],
);

/// A comparator the clockevents layer does not own: not in service and never set up by it
/// (no channel), so a test may program it.
fn free_comparator(k: &Kernel, usable: impl Fn(usize) -> bool) -> usize {
    k.clockevents
        .comparators
        .iter()
        .rev()
        .find(|c| c.role == ComparatorRole::Unused && c.channel.is_none() && usable(c.index))
        .map(|c| c.index)
        .expect("a comparator the clockevents layer does not use")
}

/// CPU 0's LAPIC timer is not the clockevents layer's now: CPU 0 ticks on another device and
/// its LAPIC timer device (if registered) is detached, so a test may program it.
fn assert_lapic_timer_is_free() {
    let cpu0 = &clockevents::tick_devices()[0];
    assert!(
        cpu0.device.as_deref().is_some_and(|d| !d.starts_with("lapic")),
        "CPU 0 ticks on {:?}: its LAPIC timer is in use",
        cpu0.device
    );
    let state = clockevents::with_registry(|r| {
        r.devices().find(|(_, d)| d.spec.name == "lapic0").map(|(_, d)| d.state())
    })
    .flatten();
    assert!(matches!(state, None | Some(State::Detached)), "lapic0 is {state:?}, not detached");
}

static HPET: spin::Once<&'static Hpet> = spin::Once::new();
static TEST_COMPARATOR: AtomicU64 = AtomicU64::new(0);
static HPET_IRQS: AtomicU64 = AtomicU64::new(0);
static HPET_NOT_OURS: AtomicU64 = AtomicU64::new(0);

fn hpet_irq(_: interrupts::Irq) {
    let hpet = HPET.get().expect("set before the comparator is enabled");
    let n = TEST_COMPARATOR.load(Ordering::Relaxed) as usize;
    // Level-triggered: our status bit holds the line until we write 1 to it.
    if hpet.interrupt_status() & (1 << n) != 0 {
        hpet.clear_interrupt(n);
        HPET_IRQS.fetch_add(1, Ordering::Relaxed);
    } else {
        HPET_NOT_OURS.fetch_add(1, Ordering::Relaxed);
    }
}

fn hpet_interrupt_arrives_through_the_ioapic(k: &Kernel) {
    let hpet = k.platform.hpet.expect("an HPET");
    HPET.call_once(|| hpet);
    // The highest free comparator that can reach any GSI (with more than 24, QEMU's extra
    // ones read as zeros: no route at all).
    let n = free_comparator(k, |n| hpet.comparator_config(n).route_capability() != 0);
    TEST_COMPARATOR.store(n as u64, Ordering::Relaxed);
    let config = hpet.comparator_config(n);
    let mut ioapics = IOAPICS.lock();
    let gsi = ioapics
        .find_free(config.route_capability(), &k.platform.firmware.isa_gsis)
        .expect("a free IOAPIC pin the comparator can reach");
    ioapics.claim(gsi, "platform test").unwrap();
    let vector = interrupts::allocate(hpet_irq).unwrap();
    let entry = RedirectionEntry {
        vector,
        delivery: DeliveryMode::Fixed,
        logical: false,
        polarity: Polarity::ActiveLow,
        trigger: Trigger::Level,
        masked: false,
        destination: lapic::id(),
    };
    ioapics.route(gsi, entry).unwrap();
    drop(ioapics);
    let armed =
        config.with_route(gsi as u8) | ComparatorConfig::LEVEL_TRIGGERED | ComparatorConfig::INTERRUPT_ENABLE;
    hpet.set_comparator_config(n, armed - ComparatorConfig::PERIODIC);
    log::info!("comparator {n} -> GSI {gsi} -> vector {vector:#x}, level, active low");

    let one_ms = hpet.frequency_hz() / 1000;
    for i in 1..=5 {
        hpet.set_comparator(n, hpet.counter() + one_ms);
        assert!(wait_for(|| HPET_IRQS.load(Ordering::Relaxed) >= i), "HPET interrupt {i} of 5 never arrived");
    }
    assert_eq!(interrupts::count(vector), 5 + HPET_NOT_OURS.load(Ordering::Relaxed));
    assert_eq!(HPET_NOT_OURS.load(Ordering::Relaxed), 0, "interrupts whose status bit was clear");
    let here = percpu::this_cpu();
    assert_eq!(here.interrupts[usize::from(vector)].load(Ordering::Relaxed), 5, "all on the CPU routed to");
    hpet.set_comparator_config(n, config - ComparatorConfig::INTERRUPT_ENABLE);
    IOAPICS.lock().release(gsi).unwrap();
}

static LAPIC_IRQS: AtomicU64 = AtomicU64::new(0);

fn lapic_tick(_: interrupts::Irq) {
    LAPIC_IRQS.fetch_add(1, Ordering::Relaxed);
}

fn lapic_timer_interrupt_arrives(k: &Kernel) {
    assert_lapic_timer_is_free();
    let c = k.platform.calibration.expect("the LAPIC timer was calibrated");
    assert!(c.lapic_timer_hz > 0 && c.tsc_hz > 0);
    let vector = interrupts::allocate(lapic_tick).unwrap();
    for i in 1..=3 {
        lapic::timer_oneshot((c.lapic_timer_hz / 1000) as u32, vector, false);
        assert!(
            wait_for(|| LAPIC_IRQS.load(Ordering::Relaxed) >= i),
            "LAPIC timer interrupt {i} never arrived"
        );
    }
    lapic::timer_stop();
}

/// Stops and resets the main counter and rewrites comparator 0: listed only where the
/// clockevents layer uses no comparator (`clockevents=lapic`).
fn hpet_stops_resets_and_restarts(k: &Kernel) {
    let hpet = k.platform.hpet.expect("an HPET");
    for c in &k.clockevents.comparators {
        assert!(c.channel.is_none(), "comparator {} is the clockevents layer's ({:?})", c.index, c.role);
    }
    hpet.stop();
    let frozen = hpet.counter();
    let t = tsc::read();
    while tsc::read() - t < tsc::frequency_hz() / 1000 {}
    assert_eq!(hpet.counter(), frozen, "the stopped counter moved");
    hpet.reset_counter();
    assert_eq!(hpet.counter(), 0, "reset did not zero the counter");
    hpet.start();
    assert!(wait_for(|| hpet.counter() > 0), "the restarted counter does not count");

    // Suspend and resume keep the comparators' programming and restart the counter.
    let programmed = hpet.comparator_config(0) | ComparatorConfig::MODE_32BIT;
    hpet.set_comparator_config(0, programmed);
    hpet.set_comparator(0, 0x1234_5678);
    let saved = hpet.suspend();
    hpet.set_comparator_config(0, programmed - ComparatorConfig::MODE_32BIT);
    hpet.set_comparator(0, 0);
    hpet.resume(&saved);
    assert_eq!(hpet.comparator_config(0), programmed, "comparator configuration not restored");
    assert_eq!(hpet.comparator(0), 0x1234_5678, "comparator value not restored");
    let before = hpet.counter();
    assert!(wait_for(|| hpet.counter() > before), "the resumed counter does not count");
    hpet.set_comparator_config(0, programmed - ComparatorConfig::MODE_32BIT);
}

fn unhandled_vector_is_counted_as_spurious(_: &Kernel) {
    let before = interrupts::spurious_count();
    let here = percpu::this_cpu();
    let here_before = here.spurious.load(Ordering::Relaxed);
    // SAFETY: vector 0xe0 has no handler; the IDT's device entry counts it and returns.
    unsafe { core::arch::asm!("int 0xe0") };
    assert_eq!(interrupts::spurious_count(), before + 1);
    assert_eq!(here.spurious.load(Ordering::Relaxed), here_before + 1, "counted on the CPU that took it");
    assert_eq!(interrupts::count(0xe0), 1);
}

static FSB_IRQS: AtomicU64 = AtomicU64::new(0);

fn fsb_irq(_: interrupts::Irq) {
    FSB_IRQS.fetch_add(1, Ordering::Relaxed);
}

fn hpet_fsb_interrupt_arrives_when_offered(k: &Kernel) {
    let hpet = k.platform.hpet.expect("an HPET");
    let n = free_comparator(k, |n| hpet.comparator_config(n).contains(ComparatorConfig::FSB_CAPABLE));
    let vector = interrupts::allocate(fsb_irq).unwrap();
    let (address, data) = destination::format().msi_message(lapic::id(), vector).expect("CPU 0 is reachable");
    hpet.set_fsb_route(n, address, data);
    let config = hpet.comparator_config(n);
    // Edge: an FSB message is a write, nothing holds a line.
    let armed = (config | ComparatorConfig::FSB_ENABLE | ComparatorConfig::INTERRUPT_ENABLE)
        - ComparatorConfig::LEVEL_TRIGGERED
        - ComparatorConfig::PERIODIC;
    hpet.set_comparator_config(n, armed);
    log::info!("comparator {n} -> vector {vector:#x} by FSB message to {address:#x}");
    for i in 1..=5 {
        hpet.set_comparator(n, hpet.counter() + hpet.frequency_hz() / 1000);
        assert!(wait_for(|| FSB_IRQS.load(Ordering::Relaxed) >= i), "FSB interrupt {i} of 5 never arrived");
    }
    hpet.set_comparator_config(n, config - ComparatorConfig::INTERRUPT_ENABLE - ComparatorConfig::FSB_ENABLE);
}

static PERIODIC_IRQS: AtomicU64 = AtomicU64::new(0);

fn periodic_tick(_: interrupts::Irq) {
    PERIODIC_IRQS.fetch_add(1, Ordering::Relaxed);
}

fn lapic_periodic_timer_repeats(k: &Kernel) {
    assert_lapic_timer_is_free();
    let c = k.platform.calibration.expect("the LAPIC timer was calibrated");
    let vector = interrupts::allocate(periodic_tick).unwrap();
    lapic::timer_periodic((c.lapic_timer_hz / 1000) as u32, vector);
    assert!(
        wait_for(|| PERIODIC_IRQS.load(Ordering::Relaxed) >= 5),
        "the periodic LAPIC timer stopped repeating"
    );
    lapic::timer_stop();
}

fn ioapic_refuses_bad_and_double_claims(_: &Kernel) {
    use kernel_tests::kernel::arch::x86_64::ioapic::IoApicError;
    let mut io = IOAPICS.lock();
    assert_eq!(io.claim(200, "test"), Err(IoApicError::GsiOutOfRange(200)));
    io.claim(23, "first owner").unwrap();
    assert_eq!(io.claim(23, "second owner"), Err(IoApicError::GsiInUse { gsi: 23, owner: "first owner" }));
    assert_eq!(io.route(22, RedirectionEntry::masked()), Err(IoApicError::NotClaimed(22)));
    io.release(23).unwrap();
    assert_eq!(io.release(23), Err(IoApicError::NotClaimed(23)));
}

fn clocksource_is_monotonic_and_advances(_: &Kernel) {
    let mut last = now_ns();
    for _ in 0..1000 {
        let t = now_ns();
        assert!(t >= last, "the clocksource went back from {last} to {t}");
        last = t;
    }
    let first = now_ns();
    assert!(wait_for(|| now_ns() > first + 1_000_000), "the clocksource does not advance");
}

/// The clock event device of every configuration takes its interrupts where it is routed:
/// after a hundred short sleeps, nothing landed on a CPU its device does not serve, and each
/// comparator in service (IOAPIC, FSB or legacy) took its events on its CPU only.
fn timer_interrupts_land_where_routed(k: &Kernel) {
    for _ in 0..100 {
        clockevents::sleep_ns(20_000).expect("CPU 0 has a tick device");
    }
    let checked = kernel_tests::assert_interrupts_land_where_routed(k);
    let comparators_serve = k.clockevents.comparators.iter().any(|c| c.role == ComparatorRole::PerCpu);
    assert_eq!(checked > 0, comparators_serve, "{checked} comparator events counted");
}
