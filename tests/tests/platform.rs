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
use kernel_tests::kernel::arch::x86_64::{interrupts, lapic, tsc};
use kernel_tests::kernel::time::clocksource::now_ns;
use kernel_tests::wait_for;

kernel_tests::qemu_test!(
    variants: b"
        timers3: --expect-report /hpet/comparators#=3 --expect-report /hpet/comparators/0/route_cap=16711940 --expect-report /hpet/comparators/1/route_cap=16711940 --expect-report /hpet/comparators/2/route_cap=16711940 --expect-report /hpet/period_fs=10000000 --expect-report /hpet/counter_bits=64 --expect-report /ioapics/0/pins=24 --expect-report /lapic/calibrated_against=hpet --expect-report /verdict=ok
        timers8: --expect-report /hpet/comparators#=8 --expect-report /hpet/comparators/7/route_cap=16711940 -- -global hpet.timers=8
        timers32: --expect-report /hpet/comparators#=32 -- -global hpet.timers=32
        uefi: --uefi --expect-report /hpet/comparators#=3 --expect-report /ioapics#=1
        hpet_off: --expect-report /hpet=null --expect-report /lapic/calibrated_against=acpi_pm -- -machine q35,hpet=off
        pc: --expect-report /hpet/comparators/0/route_cap=4 -- -machine pc,hpet=on
        msi: --expect-report /hpet/comparators/0/fsb=true --expect-log 'by FSB message' -- -global hpet.msi=on
    ",
    tests: [
        hpet_interrupt_arrives_through_the_ioapic,
        lapic_timer_interrupt_arrives,
        hpet_stops_resets_and_restarts,
        unhandled_vector_is_counted_as_spurious,
        hpet_fsb_interrupt_arrives_when_offered,
        lapic_periodic_timer_repeats,
        ioapic_refuses_bad_and_double_claims,
        clocksource_is_monotonic_and_advances,
    ],
);

static HPET: spin::Once<&'static Hpet> = spin::Once::new();
static TEST_COMPARATOR: AtomicU64 = AtomicU64::new(0);
static HPET_IRQS: AtomicU64 = AtomicU64::new(0);
static HPET_NOT_OURS: AtomicU64 = AtomicU64::new(0);

fn hpet_irq(_vector: u8) {
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
    let Some(hpet) = k.platform.hpet else {
        assert!(
            k.platform.firmware.hpet_base.is_none(),
            "an HPET table was found but the HPET was not probed"
        );
        return;
    };
    HPET.call_once(|| hpet);
    // The highest comparator that can reach any GSI (with more than 24, QEMU's extra ones read
    // as zeros: no route at all).
    let n =
        (0..hpet.comparators()).rev().find(|&n| hpet.comparator_config(n).route_capability() != 0).unwrap();
    TEST_COMPARATOR.store(n as u64, Ordering::Relaxed);
    let config = hpet.comparator_config(n);
    let mut ioapics = IOAPICS.lock();
    let Some(gsi) = ioapics.find_free(config.route_capability(), &k.platform.firmware.isa_gsis) else {
        // -machine pc: GSI 2 only, owned by the PIT. Legacy replacement is the clockevents' job.
        assert_eq!(config.route_capability(), 1 << 2, "a routable comparator found no GSI");
        return;
    };
    ioapics.claim(gsi, "platform test").unwrap();
    let vector = interrupts::allocate(hpet_irq).unwrap();
    let entry = RedirectionEntry {
        vector,
        delivery: DeliveryMode::Fixed,
        logical: false,
        polarity: Polarity::ActiveLow,
        trigger: Trigger::Level,
        masked: false,
        destination: lapic::id() as u8,
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
    hpet.set_comparator_config(n, config - ComparatorConfig::INTERRUPT_ENABLE);
    IOAPICS.lock().release(gsi).unwrap();
}

static LAPIC_IRQS: AtomicU64 = AtomicU64::new(0);

fn lapic_tick(_vector: u8) {
    LAPIC_IRQS.fetch_add(1, Ordering::Relaxed);
}

fn lapic_timer_interrupt_arrives(k: &Kernel) {
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

fn hpet_stops_resets_and_restarts(k: &Kernel) {
    let Some(hpet) = k.platform.hpet else { return };
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
    // SAFETY: vector 0xe0 has no handler; the IDT's device entry counts it and returns.
    unsafe { core::arch::asm!("int 0xe0") };
    assert_eq!(interrupts::spurious_count(), before + 1);
    assert_eq!(interrupts::count(0xe0), 1);
}

static FSB_IRQS: AtomicU64 = AtomicU64::new(0);

fn fsb_irq(_vector: u8) {
    FSB_IRQS.fetch_add(1, Ordering::Relaxed);
}

fn hpet_fsb_interrupt_arrives_when_offered(k: &Kernel) {
    let Some(hpet) = k.platform.hpet else { return };
    let Some(n) =
        (0..hpet.comparators()).find(|&n| hpet.comparator_config(n).contains(ComparatorConfig::FSB_CAPABLE))
    else {
        return;
    };
    let vector = interrupts::allocate(fsb_irq).unwrap();
    let (address, data) = lapic::msi_message(lapic::id(), vector);
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

fn periodic_tick(_vector: u8) {
    PERIODIC_IRQS.fetch_add(1, Ordering::Relaxed);
}

fn lapic_periodic_timer_repeats(k: &Kernel) {
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
