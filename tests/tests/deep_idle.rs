//! Deep idle (`idle=deep lapic_stops_in_idle`): a CPU whose tick device stops in deep idle
//! hands its deadline to the broadcast device before every deep sleep and takes it back on
//! waking; one whose device keeps running (a per-CPU HPET comparator) never hands over; without
//! an HPET the PIT is the broadcast device (`q35` and `pc` with `hpet=off`); without any
//! hardware broadcast device (`pit=off` too) one CPU's own timer serves the others
//! (`bc_hrtimer`: that CPU halts instead of sleeping deeply while it serves, the others sleep
//! deeply). In each arrangement the workload loses no timer and fires none early.
#![no_std]
#![no_main]

use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::time::clockevents;
use kernel_tests::kernel::workload;

kernel_tests::qemu_test!(
    variants: b"
        percpu_smp1: --smp 1 --cmdline 'idle=deep lapic_stops_in_idle duration_ms=200' --expect-report /tick_devices/0/device=hpet0 --expect-report /cpus/0/idle/state=deep --expect-report /cpus/0/idle/handovers=0
        percpu_smp2: --smp 2 --cmdline 'idle=deep lapic_stops_in_idle duration_ms=200' --expect-report /tick_devices/1/device=hpet1 --expect-report /cpus/1/idle/handovers=0
        partial_smp4: --smp 4 --cmdline 'idle=deep lapic_stops_in_idle duration_ms=200' --expect-report /broadcast=hpet2 --expect-report /tick_devices/3/device=lapic3 --expect-report /cpus/0/idle/handovers=0
        lapic_broadcast_smp2: --smp 2 --cmdline 'idle=deep lapic_stops_in_idle clockevents=broadcast duration_ms=200' --expect-report /broadcast=hpet0 --expect-report /tick_devices/1/device=lapic1 --expect-report /cpus/1/idle/state=deep
        lapic_broadcast_smp4: --smp 4 --cmdline 'idle=deep lapic_stops_in_idle clockevents=broadcast duration_ms=200' --expect-report /broadcast=hpet0 --expect-report /tick_devices/3/device=lapic3
        hpet_off_pit_broadcast_smp4: --smp 4 --cmdline 'idle=deep lapic_stops_in_idle duration_ms=200' --expect-report /hpet=null --expect-report /broadcast=pit --expect-report /tick_devices/3/device=lapic3 --expect-report /cpus/1/idle/deep_entries>=1 --expect-report /cpus/2/idle/deep_entries>=1 --expect-report /cpus/3/idle/deep_entries>=1 --expect-report /cpus/3/idle/handovers>=1 --expect-log 'PIT channel 0: IRQ0 -> GSI 2' -- -machine q35,hpet=off
        hpet_off_pit_off_bc_hrtimer_smp4: --smp 4 --cmdline 'idle=deep lapic_stops_in_idle duration_ms=200 pit=off' --expect-report /hpet=null --expect-report /broadcast=bc_hrtimer --expect ok --expect-log 'PIT not registered: pit=off' --expect-log 'no hardware broadcast device: bc_hrtimer registered' -- -machine q35,hpet=off
        pc_hpet_off_pit_broadcast: --smp 2 --cmdline 'idle=deep lapic_stops_in_idle duration_ms=200' --expect-report /broadcast=pit --expect-report /cpus/1/idle/deep_entries>=1 --expect-report /cpus/1/idle/handovers>=1 -- -machine pc,hpet=off
        pc_legacy: --smp 2 --cmdline 'idle=deep lapic_stops_in_idle clockevents=broadcast duration_ms=200' --expect-report /hpet/comparators/0/delivery=legacy --expect-report /broadcast=hpet0 --expect-log 'PIT not registered: IRQ0 (GSI 2) is taken by the HPET legacy route' -- -machine pc,hpet=on
        lapic_broadcast_fsb_smp4: --smp 4 --cmdline 'idle=deep lapic_stops_in_idle clockevents=broadcast duration_ms=200' --expect-report /broadcast=hpet0 --expect-report /hpet/comparators/0/delivery=fsb --expect-log 'HPET comparator 0: global, its interrupt (FSB message) follows the CPU due first' -- -global hpet.msi=on
        lapic_broadcast_fixed_smp4: --smp 4 --cmdline 'idle=deep lapic_stops_in_idle clockevents=broadcast duration_ms=200 broadcast_follows=off' --expect-report /broadcast=hpet0 --expect-log 'its interrupt stays on CPU 0 (broadcast_follows=off)'
        icount_lapic_broadcast: --smp 2 --cmdline 'idle=deep lapic_stops_in_idle clockevents=broadcast duration_ms=100' --expect-report /broadcast=hpet0 -- -icount shift=0,sleep=off
        icount_percpu: --smp 2 --cmdline 'idle=deep lapic_stops_in_idle duration_ms=100' --expect-report /cpus/1/idle/handovers=0 -- -icount shift=0,sleep=off
    ",
    tests: [
        workload_loses_nothing_in_deep_idle,
        handovers_happen_exactly_where_devices_stop,
        one_cpus_timer_serves_the_others_where_no_hardware_can,
        the_broadcast_follows_its_sleepers_where_it_can
    ],
);

fn workload_loses_nothing_in_deep_idle(k: &Kernel) {
    let out = workload::run(k.options.duration_ms);
    kernel_tests::assert_workload_clean(&out);
}

/// A CPU whose device stops in deep idle, with a broadcast device to take over, handed over
/// (it slept deeply while the workload ran); one whose device keeps running never did; and
/// without a broadcast device nobody did. Served by one CPU's timer (bc_hrtimer), a CPU may
/// have served all along and never handed over.
fn handovers_happen_exactly_where_devices_stop(_: &Kernel) {
    let broadcast = clockevents::broadcast_device();
    if broadcast.as_deref() == Some("bc_hrtimer") {
        return;
    }
    for t in clockevents::tick_devices() {
        match (t.stops_in_idle, &broadcast) {
            (true, Some(_)) => assert!(
                t.handovers > 0,
                "CPU {} ({:?}) stops in deep idle but never handed over",
                t.cpu,
                t.device
            ),
            _ => assert_eq!(
                t.handovers, 0,
                "CPU {} ({:?}) handed over needlessly or to nobody",
                t.cpu, t.device
            ),
        }
    }
}

/// A global HPET comparator serving as broadcast device with a movable route (FSB or IOAPIC,
/// `broadcast_follows` on) was moved to the CPU due first at least once while several CPUs
/// slept deeply, and one with a fixed route never was; either way its interrupts landed only
/// on CPUs it was aimed at (an interrupt on the previous target during a move is expected).
fn the_broadcast_follows_its_sleepers_where_it_can(k: &Kernel) {
    use kernel_tests::kernel::time::clockevents::ComparatorRole;
    let (_, _, moves) = clockevents::broadcast_counts();
    let global = k.clockevents.comparators.iter().find(|c| c.role == ComparatorRole::Global);
    let sleepers = clockevents::tick_devices().iter().filter(|t| t.handovers > 0).count();
    match global.and_then(|c| c.channel) {
        Some(ch)
            if clockevents::broadcast_device()
                .is_some_and(|b| b.strip_prefix("hpet").and_then(|n| n.parse().ok()) == Some(ch.index)) =>
        {
            if k.options.broadcast_follows && ch.can_move() && sleepers > 1 {
                assert!(moves > 0, "{sleepers} CPUs slept on the broadcast, but its interrupt never moved");
            } else if !k.options.broadcast_follows {
                assert_eq!(moves, 0, "broadcast_follows=off, yet the interrupt moved");
            }
            kernel_tests::assert_interrupts_land_where_routed(k);
        }
        _ => assert_eq!(moves, 0, "no movable HPET broadcast, yet something moved"),
    }
}

/// Without an HPET and without the PIT the broadcast is one CPU's timer (bc_hrtimer): every CPU
/// but at most one (the one serving all along) slept deeply and handed its deadline over, the
/// CPU serving at the end is online and not asleep deeply, and the broadcast's events woke the
/// sleepers (the workload, run before, lost nothing and ran nothing early, on its CPU).
fn one_cpus_timer_serves_the_others_where_no_hardware_can(_: &Kernel) {
    if clockevents::broadcast_device().as_deref() != Some("bc_hrtimer") {
        return;
    }
    let ticks = clockevents::tick_devices();
    let sleepers = ticks.iter().filter(|t| t.stops_in_idle && t.handovers > 0).count();
    assert!(ticks.len() >= 2, "a broadcast by one CPU's timer needs another CPU: {}", ticks.len());
    assert!(sleepers + 1 >= ticks.len(), "only {sleepers} of {} CPUs slept deeply", ticks.len());
    let (events, wakeups, _) = clockevents::broadcast_counts();
    assert!(
        events > 0 && wakeups > 0,
        "the serving CPU's timer never woke a sleeper: {events} events, {wakeups} IPIs"
    );
    let (server, moves) = clockevents::broadcast_server();
    log::info!(
        "bc_hrtimer: {sleepers} CPUs slept deeply; served by {server:?} at the end, moved {moves} times, {events} events, {wakeups} wake-up IPIs"
    );
}
