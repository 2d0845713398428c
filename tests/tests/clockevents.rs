//! Clock events on every machine shape the issue names: which device serves each CPU (per-CPU
//! HPET comparators, a global HPET device by broadcast, the LAPIC timer, the PIT as the device
//! of last resort), how comparators are delivered (IOAPIC, legacy replacement, FSB), the
//! self-test's fallback, a device failing in its own interrupt (taken out after it, by the CPU's deferred work), and the timer API:
//! every timer fires once, never early, on the CPU that armed it; cancelled ones never.
#![no_std]
#![no_main]

extern crate alloc;

use core::sync::atomic::{AtomicU64, Ordering};
use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::arch::x86_64::smp::{self, percpu};
use kernel_tests::kernel::time::clockevents::{self, TimerEvent};
use kernel_tests::kernel::time::clocksource::now_ns;
use kernel_tests::kernel::workload;
use kernel_tests::wait_for;
use kernel_time::clockevents::ProgramError;
use kernel_time::tick::{DeviceFailure, DeviceId};
use x86_64::instructions::interrupts::without_interrupts;

kernel_tests::qemu_test!(
    variants: b"
        smp1: --smp 1 --cmdline duration_ms=200 --expect-report /tick_devices/0/device=hpet0 --expect-report /hpet/comparators/0/role=percpu --expect-report /hpet/comparators/0/selftest_irqs>=5 --expect-report /hpet/comparators/0/selftest/passed=true
        smp2: --smp 2 --cmdline duration_ms=200 --expect-report /tick_devices/0/device=hpet0 --expect-report /tick_devices/1/device=hpet1 --expect-report /hpet/comparators/1/cpu=1 --expect-report /hpet/comparators/1/delivery=ioapic --expect-report /hpet/comparators/1/selftest/irqs_by_cpu/1>=5 --expect-report /broadcast=pit
        smp4_partial: --smp 4 --cmdline duration_ms=200 --expect-report /hpet/comparators/2/role=global --expect-report /broadcast=hpet2 --expect-report /tick_devices/1/device=hpet1 --expect-report /tick_devices/3/device=lapic3 --expect-report /tick_devices#=4
        smp4_broadcast: --smp 4 --cmdline 'duration_ms=200 noapictimer' --expect-report /tick_devices/2/device=hpet2 --expect-report /tick_devices/2/via_broadcast=true --expect-report /tick_devices/3/via_broadcast=true --expect-report /tick_devices/0/via_broadcast=false
        smp4_timers8: --smp 4 --cmdline duration_ms=200 --expect-report /tick_devices/3/device=hpet3 --expect-report /broadcast=pit -- -global hpet.timers=8
        workload_cpu0_smp4: --smp 4 --cmdline 'duration_ms=200 workload_cpus=1' --expect-report /workload_cpus=1 --expect-report /handler_to_callback_ns/samples>=100 --expect-report /tick_devices/3/device=lapic3
        smp8_timers8: --smp 8 --cmdline duration_ms=200 --expect-report /tick_devices/7/device=hpet7 --expect-report /hpet/comparators/7/delivery=ioapic --expect-report /hpet/comparators/7/gsi=23 --expect-report /broadcast=pit -- -global hpet.timers=8
        hpet_off: --smp 2 --cmdline duration_ms=200 --expect-report /hpet=null --expect-report /tick_devices/1/device=lapic1 -- -machine q35,hpet=off
        hpet_off_noapictimer_smp4: --smp 4 --cmdline 'duration_ms=200 noapictimer' --expect-report /hpet=null --expect-report /broadcast=pit --expect-report /tick_devices/0/device=pit --expect-report /tick_devices/3/device=pit --expect-report /tick_devices/3/via_broadcast=true -- -machine q35,hpet=off
        pc_hpet_off_noapictimer_smp2: --smp 2 --cmdline 'duration_ms=200 noapictimer' --expect-report /hpet=null --expect-report /broadcast=pit --expect-report /tick_devices/0/device=pit --expect-report /tick_devices/1/device=pit --expect-report /tick_devices/1/via_broadcast=true -- -machine pc,hpet=off
        pc_hpet_off_noapictimer_periodic: --smp 2 --cmdline 'duration_ms=200 noapictimer tick=periodic hz=250' --expect-report /broadcast=pit --expect-report /tick_devices/1/device=pit -- -machine pc,hpet=off
        lapic_silent: --smp 2 --cmdline 'duration_ms=200 lapic_silent' --expect degraded --expect-report /lapic=null --expect-report /cpus_online=1 --expect-report /hpet/comparators/0/delivery=legacy_8259 --expect-report /tick_devices/0/device=hpet0 --expect-report /cpus/0/interrupts/0x20>=1 --expect-log 'the local APIC does not answer'
        no_apic: --smp 1 --cmdline duration_ms=200 --expect degraded --expect-report /lapic=null --expect-report /hpet/comparators/0/delivery=legacy_8259 --expect-report /tick_devices/0/device=hpet0 --expect-report /cpus/0/interrupts/0x20>=1 --expect-log 'this CPU has no local APIC' --expect-log 'PIT not registered: IRQ0 (8259) is taken by the HPET legacy route' -- -cpu qemu64,-apic
        no_apic_pc_legacy: --smp 1 --cmdline duration_ms=200 --expect degraded --expect-report /lapic=null --expect-report /hpet/comparators/0/delivery=legacy_8259 --expect-report /tick_devices/0/device=hpet0 -- -cpu qemu64,-apic -machine pc,hpet=on
        no_apic_hpet_off: --smp 1 --cmdline duration_ms=200 --expect degraded --expect-report /lapic=null --expect-report /hpet=null --expect-report /tick_devices/0/device=pit --expect-report /broadcast=pit --expect-report /cpus/0/interrupts/0x20>=1 --expect-log 'IRQ0 through the 8259' -- -cpu qemu64,-apic -machine q35,hpet=off
        no_apic_pc: --smp 1 --cmdline duration_ms=200 --expect degraded --expect-report /lapic=null --expect-report /tick_devices/0/device=pit -- -cpu qemu64,-apic -machine pc,hpet=off
        pc_legacy: --smp 2 --cmdline duration_ms=200 --expect-report /hpet/comparators/0/delivery=legacy --expect-report /hpet/comparators/1/delivery=legacy --expect-report /hpet/comparators/1/gsi=8 --expect-report /tick_devices/1/device=hpet1 -- -machine pc,hpet=on
        pc_smp1: --smp 1 --cmdline duration_ms=200 --expect-report /hpet/comparators/0/delivery=legacy --expect-report /tick_devices/0/device=hpet0 -- -machine pc,hpet=on
        pc_smp4: --smp 4 --cmdline 'duration_ms=200 noapictimer' --expect-report /hpet/comparators/1/delivery=legacy --expect-report /hpet/comparators/1/role=global --expect-report /tick_devices/3/via_broadcast=true -- -machine pc,hpet=on
        pc_smp8: --smp 8 --cmdline duration_ms=200 --expect-report /hpet/comparators/1/role=global --expect-report /broadcast=hpet1 --expect-report /tick_devices/7/device=lapic7 -- -machine pc,hpet=on
        msi: --smp 2 --cmdline duration_ms=200 --expect-report /hpet/comparators/0/delivery=fsb --expect-report /tick_devices/1/device=hpet1 -- -global hpet.msi=on
        msi_smp1: --smp 1 --cmdline duration_ms=200 --expect-report /hpet/comparators/0/delivery=fsb --expect-report /tick_devices/0/device=hpet0 -- -global hpet.msi=on
        msi_smp4: --smp 4 --cmdline duration_ms=200 --expect-report /hpet/comparators/3/delivery=fsb --expect-report /tick_devices/3/device=hpet3 -- -global hpet.msi=on -global hpet.timers=4
        msi_smp8: --smp 8 --cmdline duration_ms=200 --expect-report /hpet/comparators/7/delivery=fsb --expect-report /tick_devices/7/device=hpet7 -- -global hpet.msi=on -global hpet.timers=8
        x2apic_smp2: --x2apic on --smp 2 --cmdline duration_ms=200 --expect-report /lapic/mode=x2apic --expect-report /hpet/comparators/1/delivery=ioapic --expect-report /tick_devices/1/device=hpet1
        x2apic_msi_smp4: --x2apic on --smp 4 --cmdline duration_ms=200 --expect-report /lapic/mode=x2apic --expect-report /hpet/comparators/3/delivery=fsb --expect-report /tick_devices/3/device=hpet3 -- -global hpet.msi=on -global hpet.timers=4
        x2apic_pc_smp2: --x2apic on --smp 2 --cmdline duration_ms=200 --expect-report /lapic/mode=x2apic --expect-report /hpet/comparators/1/delivery=legacy --expect-report /tick_devices/1/device=hpet1 -- -machine pc,hpet=on
        x2apic_global_smp4: --x2apic on --smp 4 --cmdline 'duration_ms=200 clockevents=global' --expect-report /lapic/mode=x2apic --expect-report /tick_devices/3/via_broadcast=true
        x2apic_unreachable_cpu: --x2apic on --cmdline duration_ms=200 --expect-report /cpus/1/apic_id=256 --expect-report /destinations/unreachable_cpus/0=1 --expect-report /hpet/comparators/0/cpu=0 --expect-report /broadcast=hpet1 --expect-report /tick_devices/1/device=lapic1 --expect-log 'CPU 1 (APIC id 256): no IOAPIC entry or MSI can name it' -- -smp 1,sockets=2,cores=256,maxcpus=512 -device max-x86_64-cpu,socket-id=1,core-id=0,thread-id=0 -device intel-iommu,intremap=on,eim=on
        x2apic_unreachable_cpu_broadcast: --x2apic on --cmdline 'duration_ms=200 noapictimer' --expect-report /destinations/unreachable_cpus/0=1 --expect-report /tick_devices/1/device=hpet1 --expect-report /tick_devices/1/via_broadcast=true --expect-report /tick_devices/0/device=hpet0 -- -smp 1,sockets=2,cores=256,maxcpus=512 -device max-x86_64-cpu,socket-id=1,core-id=0,thread-id=0 -device intel-iommu,intremap=on,eim=on
        xapic_smp2: --x2apic off --smp 2 --cmdline duration_ms=200 --expect-report /lapic/mode=xapic --expect-report /tick_devices/1/device=hpet1
        forced_global: --smp 2 --cmdline 'duration_ms=200 clockevents=global' --expect-report /hpet/comparators/0/role=global --expect-report /hpet/comparators/1/role=unused --expect-report /tick_devices/0/via_broadcast=true --expect-report /tick_devices/1/via_broadcast=true
        global_smp1: --smp 1 --cmdline 'duration_ms=200 clockevents=global' --expect-report /hpet/comparators/0/role=global --expect-report /tick_devices/0/via_broadcast=true
        global_smp4: --smp 4 --cmdline 'duration_ms=200 clockevents=global' --expect-report /hpet/comparators/0/role=global --expect-report /tick_devices/3/via_broadcast=true --expect-report /broadcast=hpet0
        global_smp8: --smp 8 --cmdline 'duration_ms=200 clockevents=global' --expect-report /hpet/comparators/0/role=global --expect-report /tick_devices/7/via_broadcast=true --expect-report /broadcast=hpet0
        forced_percpu: --smp 4 --cmdline 'duration_ms=200 clockevents=percpu' --expect-report /hpet/comparators/2/role=percpu --expect-report /broadcast=pit --expect-report /tick_devices/3/device=lapic3
        forced_lapic: --smp 2 --cmdline 'duration_ms=200 clockevents=lapic' --expect-report /hpet/comparators/0/role=unused --expect-report /tick_devices/0/device=lapic0
        periodic: --smp 2 --cmdline 'duration_ms=200 tick=periodic hz=1000' --expect-report /tick_mode=periodic --expect-report /tick_devices/1/mode=periodic
        selftest_fails: --smp 2 --cmdline 'duration_ms=200 hpet_irq_masked=1' --expect-report /hpet/comparators/1/role=failed --expect-report /hpet/comparators/1/selftest/passed=false --expect-report /tick_devices/1/device=hpet2 --expect degraded --expect-log 'HPET comparator 1 failed its interrupt self-test'
        selftest_fails_retarget: --smp 2 --cmdline 'duration_ms=200 hpet_irq_masked=0' --expect-report /hpet/comparators/0/role=failed --expect-report /hpet/comparators/1/cpu=0 --expect-report /hpet/comparators/1/selftest/irqs_by_cpu/0>=5 --expect-report /tick_devices/0/device=hpet1 --expect-report /tick_devices/1/device=hpet2 --expect degraded
        pc_legacy_selftest_fails: --smp 1 --cmdline 'duration_ms=100 noapictimer hpet_irq_masked=0,1' --expect degraded --expect-report /hpet/comparators/0/role=failed --expect-report /hpet/comparators/1/role=failed --expect-report /tick_devices/0/device=pit --expect-log 'HPET legacy route off: no comparator serves through it (comparators [0, 1] failed)' --expect-log 'PIT channel 0: IRQ0 -> GSI 2' -- -machine pc,hpet=on
        misrouted: --smp 2 --cmdline 'duration_ms=200 hpet_misroute=1' --expect-report /hpet/comparators/1/role=percpu --expect failed --expect-log 'hpet_misroute=1: comparator 1 serves CPU 1 but its interrupt now goes to CPU 0'
        misrouted_msi: --smp 2 --cmdline 'duration_ms=200 hpet_misroute=0' --expect-report /hpet/comparators/0/delivery=fsb --expect failed -- -global hpet.msi=on
        misrouted_legacy: --smp 2 --cmdline 'duration_ms=200 hpet_misroute=1' --expect-report /hpet/comparators/1/delivery=legacy --expect failed -- -machine pc,hpet=on
        fails_in_interrupt: --smp 2 --cmdline duration_ms=200 --expect-report /hpet/comparators/1/role=failed --expect-report /tick_devices/1/device=lapic1 --expect-report /take_outs/count=1 --expect-report /take_outs/in_hard_irq=0 --expect degraded
        storm: --smp 1 --cmdline 'duration_ms=200 hpet_storm=0' --expect-report /hpet/comparators/0/role=failed --expect-report /tick_devices/0/device=lapic0 --expect degraded --expect-log 'interrupt storm on GSI 16' --expect-report /take_outs/count=1 --expect-report /take_outs/in_hard_irq=0
        storm_icount: --smp 1 --cmdline 'duration_ms=200 hpet_storm=0' --expect-report /hpet/comparators/0/role=failed --expect-report /tick_devices/0/device=lapic0 --expect degraded --expect-log 'interrupt storm on GSI 16' --expect-report /take_outs/count=1 --expect-report /take_outs/in_hard_irq=0 -- -icount shift=6,sleep=off
        icount: --smp 2 --cmdline duration_ms=100 --expect-report /tick_devices/1/device=hpet1 --expect-report /lapic/mode=xapic -- -icount shift=0,sleep=off
        icount_hpet_off: --smp 2 --cmdline duration_ms=100 --expect-report /tick_devices/1/device=lapic1 -- -machine q35,hpet=off -icount shift=0,sleep=off
        icount_pc_legacy: --smp 2 --cmdline duration_ms=100 --expect-report /hpet/comparators/1/delivery=legacy -- -machine pc,hpet=on -icount shift=0,sleep=off
        icount_msi_global: --smp 2 --cmdline 'duration_ms=100 clockevents=global' --expect-report /hpet/comparators/0/delivery=fsb --expect-report /tick_devices/1/via_broadcast=true -- -global hpet.msi=on -icount shift=0,sleep=off
        icount_broadcast: --smp 4 --cmdline 'duration_ms=100 noapictimer' --expect-report /tick_devices/3/via_broadcast=true --expect-report /broadcast=hpet2 -- -icount shift=0,sleep=off
    ",
    tests: [
        every_cpu_has_a_tick_device,
        sleep_never_returns_before_its_deadline,
        cancelled_timer_never_runs,
        past_deadline_fires_and_is_not_lost,
        timers_run_on_the_cpu_that_armed_them,
        thirty_two_bit_comparators_fire_across_the_counter_wrap => "smp1 smp2 smp4_partial smp4_broadcast smp4_timers8 smp8_timers8 pc_legacy pc_smp1 pc_smp4 pc_smp8 msi msi_smp1 msi_smp4 msi_smp8 forced_global global_smp1 global_smp4 global_smp8 x2apic_smp2 x2apic_msi_smp4 x2apic_pc_smp2 x2apic_global_smp4 x2apic_unreachable_cpu x2apic_unreachable_cpu_broadcast xapic_smp2 forced_percpu selftest_fails icount icount_pc_legacy icount_msi_global icount_broadcast",
        workload_fires_every_timer_once_never_early,
        interrupts_land_on_the_cpu_they_are_routed_to => "smp1 smp2 smp4_partial smp4_broadcast smp4_timers8 smp8_timers8 pc_legacy pc_smp1 pc_smp4 pc_smp8 msi msi_smp1 msi_smp4 msi_smp8 forced_global global_smp1 global_smp4 global_smp8 x2apic_smp2 x2apic_msi_smp4 x2apic_pc_smp2 x2apic_global_smp4 x2apic_unreachable_cpu x2apic_unreachable_cpu_broadcast xapic_smp2 forced_percpu selftest_fails icount icount_pc_legacy icount_msi_global icount_broadcast smp4_partial periodic selftest_fails_retarget",
        a_wrong_destination_is_counted_and_fails_the_verdict => "misrouted misrouted_msi misrouted_legacy",
        a_device_failing_in_its_interrupt_is_taken_out_after_it => "fails_in_interrupt",
        legacy_route_carries_the_firmware_s_line_properties => "pc_legacy pc_smp1 pc_smp4 pc_smp8 x2apic_pc_smp2 icount_pc_legacy",
    ],
);

fn every_cpu_has_a_tick_device(_: &Kernel) {
    let devices = clockevents::tick_devices();
    assert_eq!(devices.len(), percpu::all().count(), "one tick device entry per online CPU");
    for t in devices {
        assert!(t.device.is_some(), "CPU {} has no clock event device", t.cpu);
    }
}

fn sleep_never_returns_before_its_deadline(_: &Kernel) {
    for ns in [1_000, 50_000, 2_000_000] {
        let start = now_ns();
        clockevents::sleep_ns(ns).expect("the boot CPU has a tick device");
        let slept = now_ns() - start;
        assert!(slept >= ns, "sleep of {ns} ns returned after {slept} ns");
    }
}

static CANCELLED_RAN: AtomicU64 = AtomicU64::new(0);

fn cancelled(_: &TimerEvent) {
    CANCELLED_RAN.fetch_add(1, Ordering::Relaxed);
}

fn cancelled_timer_never_runs(_: &Kernel) {
    // Both timers run here, on CPU 0: with interrupts off until the cancel, neither can run
    // first, however long the host stalls this vCPU.
    let later = without_interrupts(|| {
        let id = clockevents::arm_after(3_000_000, cancelled, 0).unwrap();
        let later = clockevents::arm_after(1_000_000, cancelled, 0).unwrap();
        assert_eq!(clockevents::cancel(id), Ok(true), "a pending timer can be cancelled");
        later
    });
    clockevents::sleep_ns(10_000_000).unwrap();
    assert_eq!(CANCELLED_RAN.load(Ordering::Relaxed), 1, "only the timer not cancelled ran");
    assert_eq!(clockevents::cancel(later), Ok(false), "a timer that ran cannot be cancelled");
}

static PAST_FIRED: AtomicU64 = AtomicU64::new(0);

fn past(e: &TimerEvent) {
    assert!(e.now_ns >= e.deadline_ns);
    PAST_FIRED.fetch_add(1, Ordering::Relaxed);
}

fn past_deadline_fires_and_is_not_lost(_: &Kernel) {
    let now = now_ns();
    clockevents::arm_at(now.saturating_sub(1_000_000), past, 0).unwrap();
    clockevents::arm_at(now, past, 0).unwrap();
    assert!(
        wait_for(|| PAST_FIRED.load(Ordering::Relaxed) == 2),
        "a timer whose deadline had passed was lost"
    );
}

static ON_CPU: [AtomicU64; percpu::MAX_CPUS] = [const { AtomicU64::new(0) }; percpu::MAX_CPUS];

fn record_cpu(e: &TimerEvent) {
    assert_eq!(percpu::this_cpu().index, e.cpu, "callback ran on another CPU than its event says");
    assert_eq!(e.data as usize, e.cpu, "timer armed on CPU {} ran on CPU {}", e.data, e.cpu);
    ON_CPU[e.cpu].fetch_add(1, Ordering::Relaxed);
}

fn arm_here(_: u64) -> u64 {
    let cpu = percpu::this_cpu().index;
    for i in 0..3 {
        clockevents::arm_after(20_000 * (i + 1), record_cpu, cpu as u64).expect("armed");
    }
    0
}

fn timers_run_on_the_cpu_that_armed_them(_: &Kernel) {
    for cpu in percpu::all() {
        smp::call_on(cpu.index, || arm_here(0)).unwrap();
    }
    for cpu in percpu::all() {
        let n = &ON_CPU[cpu.index];
        assert!(wait_for(|| n.load(Ordering::Relaxed) == 3), "CPU {}'s timers did not all run", cpu.index);
    }
}

static FAILED_DEVICE: AtomicU64 = AtomicU64::new(u64::MAX);
/// Take-outs counted right after the failure was reported, inside the timer interrupt.
static TAKE_OUTS_IN_CALLBACK: AtomicU64 = AtomicU64::new(u64::MAX);
static AFTER_FAILURE: AtomicU64 = AtomicU64::new(0);

/// In CPU 1's timer interrupt: its own tick device reports a failure, as the time layer does
/// for a comparator that kept being passed.
fn fail_own_device(e: &TimerEvent) {
    let failure = DeviceFailure {
        device: DeviceId(e.data as usize),
        error: ProgramError::GaveUp { min_delta_ns: 10_000_000 },
    };
    clockevents::device_failed(failure);
    TAKE_OUTS_IN_CALLBACK.store(clockevents::take_outs().0, Ordering::Relaxed);
}

fn after_failure(_: &TimerEvent) {
    AFTER_FAILURE.fetch_add(1, Ordering::Relaxed);
}

/// A device failure found in interrupt context is taken out by that CPU's deferred work, after
/// the interrupt (not inside it: nothing is taken out by the time the callback returns); the
/// CPU moves to its next best device (its LAPIC timer) and its timers keep firing.
fn a_device_failing_in_its_interrupt_is_taken_out_after_it(_: &Kernel) {
    let hpet1 =
        clockevents::with_registry(|r| r.devices().find(|(_, d)| d.spec.name == "hpet1").map(|(id, _)| id))
            .flatten()
            .expect("CPU 1 has hpet1");
    assert_eq!(clockevents::take_outs(), (0, 0), "nothing taken out before");
    FAILED_DEVICE.store(hpet1.0 as u64, Ordering::Relaxed);
    smp::call_on(1, move || clockevents::arm_after(1_000_000, fail_own_device, hpet1.0 as u64))
        .unwrap()
        .expect("armed on CPU 1");
    assert!(wait_for(|| clockevents::take_outs().0 == 1), "hpet1 was never taken out");
    assert_eq!(
        TAKE_OUTS_IN_CALLBACK.load(Ordering::Relaxed),
        0,
        "hpet1 was taken out inside the interrupt that found it failing"
    );
    assert_eq!(clockevents::take_outs(), (1, 0));
    assert!(wait_for(|| clockevents::tick_devices()[1].device.as_deref() == Some("lapic1")));
    smp::call_on(1, || clockevents::arm_after(1_000_000, after_failure, 0)).unwrap().expect("armed on CPU 1");
    assert!(
        wait_for(|| AFTER_FAILURE.load(Ordering::Relaxed) == 1),
        "CPU 1's timer did not fire on its new device"
    );
}

/// The workload (plain-function timers) on every CPU: every timer fires once, never early, and
/// the timer path allocates and frees nothing on any CPU (the heap's lock, which every CPU
/// takes, is never taken in a timer interrupt, a wake-up or the inbox's drain).
fn workload_fires_every_timer_once_never_early(k: &Kernel) {
    let heap_use = || {
        percpu::all()
            .map(|c| (c.irq_heap_allocs.load(Ordering::Relaxed), c.irq_heap_frees.load(Ordering::Relaxed)))
            .collect::<alloc::vec::Vec<_>>()
    };
    let before = heap_use();
    workload::limit_cpus(k.options.workload_cpus);
    let out = workload::run(k.options.duration_ms);
    let after = heap_use();
    kernel_tests::assert_workload_clean(&out);
    let online = percpu::all().count();
    assert_eq!(
        out.cpus,
        k.options.workload_cpus.unwrap_or(online).min(online),
        "the CPUs the workload ran on"
    );
    assert_eq!(
        out.handler_to_callback.samples, out.latency.samples,
        "one handler -> callback figure per event"
    );
    for t in clockevents::tick_devices().into_iter().filter(|t| t.cpu < out.cpus) {
        assert!(t.events > 0, "CPU {} handled no timer event", t.cpu);
    }
    for (cpu, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_eq!(a, b, "CPU {cpu}: heap allocations / frees in interrupt context during the workload");
    }
}

static ACROSS_WRAP: AtomicU64 = AtomicU64::new(0);

fn across_wrap(e: &TimerEvent) {
    assert!(e.now_ns >= e.deadline_ns, "a timer across the wrap fired early");
    ACROSS_WRAP.fetch_add(1, Ordering::Relaxed);
}

/// The comparators run in 32-bit mode: with the main counter 0.5 ms before its low 32 bits
/// wrap, timers on both sides of the wrap must fire (a comparator compared as a plain
/// number would not fire until the next wrap, 43 s later).
/// Listed for the variants whose boot CPU ticks on an HPET comparator (its own or the global
/// one) in one-shot mode.
fn thirty_two_bit_comparators_fire_across_the_counter_wrap(k: &Kernel) {
    let hpet = k.platform.hpet.expect("an HPET");
    let cpu0 = &clockevents::tick_devices()[0];
    let device = cpu0.device.as_deref().unwrap_or("none");
    assert!(device.starts_with("hpet") && cpu0.mode == "oneshot", "CPU 0 ticks on {device} ({})", cpu0.mode);
    let near_wrap = (1u64 << 32) - hpet.frequency_hz() / 2_000;
    // The jump must skip no comparator: no other CPU has a timer pending (the earlier tests
    // waited for theirs), and CPU 0's next event (the clocksource's housekeeping, every 0.5 s)
    // is due after the first timer armed below, whose arming then reprograms its comparator
    // from the jumped counter.
    for cpu in percpu::all().filter(|c| c.index != 0) {
        let pending =
            smp::call_on(cpu.index, || clockevents::with_tick(|t| t.pending()).unwrap_or(0)).unwrap();
        assert_eq!(pending, 0, "CPU {} has timers pending: the counter jump would skip them", cpu.index);
    }
    let cpu0_next = || clockevents::with_tick(|t| t.next_event_ns()).unwrap_or(u64::MAX);
    for _ in 0..3 {
        if cpu0_next() > now_ns() + 1_000_000 {
            break;
        }
        clockevents::sleep_ns(2_000_000).unwrap();
    }
    assert!(cpu0_next() > now_ns() + 1_000_000, "CPU 0's next event is due before the test's first timer");
    hpet.stop();
    hpet.set_counter(near_wrap);
    hpet.start();
    for delay in [100_000, 400_000, 600_000, 2_000_000] {
        clockevents::arm_after(delay, across_wrap, 0).unwrap();
    }
    assert!(
        wait_for(|| ACROSS_WRAP.load(Ordering::Relaxed) == 4),
        "{} of 4 timers across the 32-bit wrap fired",
        ACROSS_WRAP.load(Ordering::Relaxed)
    );
    assert!(hpet.counter() > near_wrap, "the counter did not run across the wrap");
}

/// After the workload: every clock event interrupt landed on a CPU its device serves, and each
/// comparator's on the CPU it is routed to only (IOAPIC, FSB or legacy delivery).
fn interrupts_land_on_the_cpu_they_are_routed_to(k: &Kernel) {
    let checked = kernel_tests::assert_interrupts_land_where_routed(k);
    assert!(checked > 0, "no comparator event was counted: the check checked nothing");
}

/// `hpet_misroute=N`: comparator N serves one CPU but its interrupt goes to another. The timers
/// still fire (the layer wakes the owner by IPI), but the counts show where the interrupts
/// landed and the verdict fails.
fn a_wrong_destination_is_counted_and_fails_the_verdict(k: &Kernel) {
    let n = k.options.hpet_misroute.expect("hpet_misroute=N") as usize;
    let c = &k.clockevents.comparators[n];
    let own = c.cpu.expect("the comparator serves a CPU");
    let ch = c.channel.expect("it has a driver");
    let elsewhere: u64 = ch.irqs_by_cpu.nonzero().filter(|&(cpu, _)| cpu != own).map(|(_, n)| n).sum();
    assert!(elsewhere > 0, "no interrupt of comparator {n} landed off CPU {own}");
    assert_eq!(ch.irqs_by_cpu.get(own), 0, "comparator {n}'s interrupts still reach CPU {own}");
    let misrouted: u64 = clockevents::tick_devices().iter().map(|t| t.misrouted).sum();
    assert!(misrouted >= elsewhere, "{elsewhere} landed elsewhere, {misrouted} counted misrouted");
    let report = kernel_tests::kernel::report(k);
    assert_eq!(report.verdict, kernel_tests::kernel::timer_report::Verdict::Failed);
}

/// The legacy route's IOAPIC entries carry what the MADT says of IRQ0 and IRQ8 (the IRQ0 ->
/// GSI 2 override's polarity and trigger on `-machine pc`), not a constant.
fn legacy_route_carries_the_firmware_s_line_properties(k: &Kernel) {
    use kernel_tests::kernel::arch::x86_64::ioapic::IOAPICS;
    use kernel_tests::kernel::time::clockevents::hpet_plan::Delivery;
    let mut legacy = 0;
    for c in &k.clockevents.comparators {
        let (Some(Delivery::Legacy { route }), Some(ch)) = (c.delivery, c.channel) else { continue };
        let firmware = k.platform.firmware.isa_routes[usize::from(route.irq)];
        assert_eq!(route, firmware, "comparator {}'s route is not the firmware's IRQ{}", c.index, route.irq);
        let entry = IOAPICS.lock().entry(route.gsi).expect("the GSI is an IOAPIC's");
        assert_eq!(
            (entry.polarity, entry.trigger, entry.vector, entry.masked),
            (firmware.polarity, firmware.trigger, ch.vector, false),
            "GSI {}'s entry",
            route.gsi
        );
        legacy += 1;
    }
    assert!(legacy > 0, "no comparator on the legacy route");
}
