//! CPU hotplug (issue 19): CPU 1 goes offline with timers pending on it, armed through
//! handles (one-shot and periodic): each runs on the CPU that adopted it, once, never early
//! (judged on a counter that is not the clocksource's), a periodic one on its grid, and a
//! migrated timer's handle still cancels it; CPU 1's per-CPU comparator goes to a CPU that had
//! none and becomes its tick device; an arm for the offline CPU is refused; then CPU 1 comes
//! back (INIT-SIPI), gets a tick device and runs a timer. The oracle is the test's own: every
//! callback recorded here with the hardware's APIC id.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::time::Duration;
use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::arch::x86_64::smp::percpu;
use kernel_tests::kernel::time::clockevents::{self, Cancelled, Timer, TimerEvent, hotplug};
use kernel_tests::kernel::time::clocksource::now_ns;
use kernel_tests::kernel::workload;
use kernel_tests::kernel::workload::oracle::{self, Judgement};
use kernel_tests::kernel_time::tick::ArmError;
use kernel_tests::wait_for;
use spin::Mutex;
use x86_64::instructions::interrupts::without_interrupts;

kernel_tests::qemu_test!(
    variants: b"
        percpu: --smp 4 --cmdline duration_ms=100 --expect-report /broadcast=hpet2 --expect-report /hotplug/0/comparator_released=hpet1 --expect-report /hotplug/0/comparator_to_cpu=2 --expect-report /tick_devices/2/device=hpet1 --expect-report /tick_devices/1/device=lapic1
        fsb: --smp 4 --cmdline duration_ms=100 --expect-report /hpet/comparators/1/delivery=fsb --expect-report /hotplug/0/comparator_released=hpet1 -- -global hpet.msi=on
        global: --smp 2 --cmdline 'duration_ms=100 clockevents=global' --expect-report /tick_devices/1/via_broadcast=true --expect-report /hotplug/0/cpu=1
        option: --smp 4 --cmdline 'hotplug_test=1:100 duration_ms=400' --expect-report /hotplug/0/comparator_to_cpu=2 --expect-report /hotplug/0/timers_to_cpu=2 --expect-log 'hotplug: CPU 1 offline and parked'
        option_icount: --smp 2 --cmdline 'hotplug_test=1:50 duration_ms=300' --expect-report /hotplug/0/cpu=1 --expect-report /hotplug/0/timers_to_cpu=0 --expect-report /hotplug/0/comparator_released=hpet1 --expect-report /tick_devices/1/device=hpet1 -- -icount shift=0,sleep=off
        option_to_broadcast_served: --smp 4 --cmdline 'hotplug_test=1 duration_ms=400 noapictimer' --expect-report /hotplug/0/comparator_to_cpu=2 --expect-report /tick_devices/2/device=hpet1 --expect-report /tick_devices/1/via_broadcast=true
        # The broadcast follows its sleeper here (DYNIRQ): its interrupt points at CPU 2 as it goes
        # offline only if CPU 2 is due first then, so the move itself is checked where it is fixed.
        option_broadcast_target: --smp 4 --cmdline 'hotplug_test=2 duration_ms=400 noapictimer' --expect-report /broadcast=hpet2 --expect-report /hotplug/0/cpu=2 --expect-report /hotplug/0/timers_to_cpu=0
        option_broadcast_fixed: --smp 4 --cmdline 'hotplug_test=2:50 duration_ms=300 noapictimer broadcast_follows=off' --expect-report /broadcast=hpet2 --expect-report /hotplug/0/cpu=2 --expect-report /tick_devices/3/via_broadcast=true --expect-report /hpet/comparators/2/irqs_by_cpu/0>=1 --expect-log 'global, its interrupt stays on CPU 2 (broadcast_follows=off)'
        option_deep_idle: --smp 2 --cmdline 'hotplug_test=1 duration_ms=400 idle=deep lapic_stops_in_idle clockevents=broadcast' --expect-report /broadcast=hpet0 --expect-report /hotplug/0/timers_to_cpu=0
        option_refined: --smp 2 --cmdline 'hotplug_test=1 duration_ms=4000' --expect-report /lapic/refined_by=lapic --expect-report /tick_devices/1/device=hpet1 --expect-log 'lapic: lapic1 registered after the refinement: converts at the refined'
        option_cpu0: --smp 2 --cmdline 'hotplug_test=0 duration_ms=100' --expect degraded --expect-report /hotplug#=0 --expect-log 'hotplug test: CPU 0 not taken offline: CPU 0 is the boot CPU and stays online'
    ",
    tests: [
        timers_of_an_offline_cpu_run_once_on_their_new_cpu_and_it_comes_back => "percpu fsb global",
        offline_online_cycles_take_no_more_memory_each_time => "global",
        the_main_run_loses_nothing_when_a_cpu_goes_offline_halfway => "option option_icount option_to_broadcast_served option_broadcast_target option_broadcast_fixed option_deep_idle option_refined option_cpu0",
    ],
);

/// `hotplug_test=`: the main run's workload, with the CPU offline halfway: none of its timers
/// lost, early, fired twice or run on a CPU that is neither theirs nor their adopter.
fn the_main_run_loses_nothing_when_a_cpu_goes_offline_halfway(k: &Kernel) {
    let test = k.options.hotplug_test.expect("the variant names hotplug_test");
    workload::hotplug_halfway(Some((test.cpu as usize, test.ms)));
    let out = workload::run(k.options.duration_ms);
    kernel_tests::assert_workload_clean(&out);
    let records = hotplug::report();
    if test.cpu == 0 {
        assert!(records.is_empty(), "CPU 0 went offline: {records:?}");
        return;
    }
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert!(r.timers_migrated > 0, "no workload timer was pending on CPU {}: it tested nothing", r.cpu);
    assert!(r.online_at_ns.is_some(), "CPU {} did not come back", r.cpu);
    assert!(device_of(test.cpu as usize).is_some(), "CPU {} has no tick device", test.cpu);
}

const MS: u64 = 1_000_000;

/// CPU 1 taken offline and brought back several times: each cycle reuses what the CPU had
/// (its descriptor tables, TSS and IST stack, its stack, its per-CPU area, its handle table
/// and inbox), so the heap and the frames in use do not grow by a CPU's bring-up each cycle
/// (the first cycle having grown whatever keeps growing once: the report's record table).
fn offline_online_cycles_take_no_more_memory_each_time(_: &Kernel) {
    use kernel_tests::kernel::arch::x86_64::{gdt, memory};
    const CYCLES: u64 = 4;
    let in_use = || memory::heap_used() + memory::frames_allocated();
    let cycle = || {
        hotplug::offline(1).expect("CPU 1 goes offline");
        hotplug::online(1).expect("CPU 1 comes back");
        assert!(device_of(1).is_some(), "CPU 1 came back without a tick device");
    };
    cycle();
    let before = in_use();
    let mut grew = Vec::new();
    for _ in 0..CYCLES {
        let at = in_use();
        cycle();
        grew.push(in_use() as i64 - at as i64);
    }
    let total = in_use() as i64 - before as i64;
    log::info!("memory in use grew by {total} bytes over {CYCLES} cycles: {grew:?}");
    // A CPU's bring-up leaked would cost at least its IST stack each cycle.
    assert!(
        total < gdt::IST_STACK_SIZE as i64,
        "{total} bytes more in use after {CYCLES} offline/online cycles (per cycle: {grew:?})"
    );
}

/// One callback: which timer (tag), its deadline, the clock it ran at, the APIC id it ran on
/// (from the hardware), and whether it was early on the other counter.
#[derive(Debug, Clone, Copy)]
struct Ran {
    tag: u32,
    deadline_ns: u64,
    now_ns: u64,
    apic_id: u32,
    early: bool,
}

static RAN: Mutex<Vec<Ran>> = Mutex::new(Vec::new());

fn record(tag: u32, e: &TimerEvent, stamp: &oracle::Stamp) {
    let early = matches!(oracle::judge(stamp), Judgement::Early { .. });
    let r = Ran { tag, deadline_ns: e.deadline_ns, now_ns: e.now_ns, apic_id: oracle::apic_id_here(), early };
    without_interrupts(|| RAN.lock().push(r));
}

fn ran(tag: u32) -> Vec<Ran> {
    without_interrupts(|| RAN.lock().iter().filter(|r| r.tag == tag).copied().collect())
}

fn apic_of(cpu: usize) -> u32 {
    percpu::cpu(cpu).expect("online").apic_id
}

fn device_of(cpu: usize) -> Option<alloc::string::String> {
    clockevents::tick_devices().into_iter().find(|t| t.cpu == cpu).and_then(|t| t.device)
}

fn timers_of_an_offline_cpu_run_once_on_their_new_cpu_and_it_comes_back(_: &Kernel) {
    oracle::set_counters(kernel_tests::kernel::time::clocksource::raw_counters());
    let cpu1_apic = apic_of(1);
    let had_comparator =
        device_of(1).is_some_and(|d| d.starts_with("hpet") && !clockevents::tick_devices()[1].via_broadcast);
    // Armed on CPU 1 through handles, far enough ahead to be pending when it goes offline (a
    // vCPU stalled for a while on a busy host included).
    let (a_at, a_stamp) = oracle::arm_stamp(1_000 * MS, cpu1_apic);
    let a = Timer::at(1, kernel_tests::kernel_time::instant::Instant::from_nanos(a_at), move |e| {
        record(1, e, &a_stamp)
    })
    .expect("one-shot armed on CPU 1");
    let (b_at, b_stamp) = oracle::arm_stamp(300 * MS, cpu1_apic);
    let period = Duration::from_millis(40);
    let b =
        Timer::periodic(1, kernel_tests::kernel_time::instant::Instant::from_nanos(b_at), period, move |e| {
            record(2, e, &b_stamp)
        })
        .expect("periodic armed on CPU 1");
    let (c_at, c_stamp) = oracle::arm_stamp(1_500 * MS, cpu1_apic);
    let c = Timer::at(1, kernel_tests::kernel_time::instant::Instant::from_nanos(c_at), move |e| {
        record(3, e, &c_stamp)
    })
    .expect("one-shot to cancel armed on CPU 1");

    let index = hotplug::offline(1).expect("CPU 1 goes offline");
    let rec = hotplug::report()[index].clone();
    assert_eq!(rec.cpu, 1);
    assert!(rec.timers_migrated >= 3, "{} timers migrated, 3 were pending", rec.timers_migrated);
    assert!(percpu::cpu(1).is_none(), "CPU 1 is listed online");
    assert!(percpu::all().all(|c| c.index != 1), "a 'for each CPU' still reaches CPU 1");
    let soon = clockevents::now() + Duration::from_millis(10);
    assert_eq!(Timer::at(1, soon, |_: &TimerEvent| {}).err(), Some(ArmError::CpuNotOnline(1)));
    assert!(clockevents::tick_devices().iter().all(|t| t.cpu != 1), "the report still lists CPU 1");
    if had_comparator {
        assert_eq!(rec.comparator_released.as_deref(), Some("hpet1"));
        let to = rec.comparator_to_cpu.expect("a CPU without a comparator took hpet1");
        assert!(to >= 2, "hpet1 went to CPU {to}, which had a comparator of its own");
        assert!(
            wait_for(|| device_of(to).as_deref() == Some("hpet1")),
            "CPU {to} did not take hpet1 up: {:?}",
            device_of(to)
        );
        assert_eq!(rec.timers_to_cpu, to, "the timers went with the comparator");
    }
    let owner = rec.timers_to_cpu;
    let owner_apic = apic_of(owner);
    assert_eq!(c.cancel(), Cancelled::Pending, "a migrated timer's handle cancels it");

    // Past every deadline (the cancelled one's with room to spare), on the kernel's clock.
    let until = c_at + 100 * MS;
    assert!(wait_for(|| now_ns() > until && ran(2).len() >= 4));
    let a_ran = ran(1);
    assert_eq!(a_ran.len(), 1, "the one-shot ran {} times", a_ran.len());
    assert!(ran(3).is_empty(), "the cancelled timer ran");
    let b_ran = ran(2);
    for r in a_ran.iter().chain(&b_ran) {
        assert!(!r.early && r.now_ns >= r.deadline_ns, "early: {r:?}");
        let expected = if r.now_ns < rec.offline_at_ns { cpu1_apic } else { owner_apic };
        assert_eq!(r.apic_id, expected, "ran on the wrong CPU: {r:?} (adopter CPU {owner})");
    }
    let period_ns = period.as_nanos() as u64;
    for (k, r) in b_ran.iter().enumerate() {
        assert_eq!((r.deadline_ns - b_at) % period_ns, 0, "off its grid: {r:?}");
        if k > 0 {
            assert!(r.deadline_ns > b_ran[k - 1].deadline_ns, "a deadline fired twice: {b_ran:?}");
        }
    }
    let answer = b.cancel();
    assert!(matches!(answer, Cancelled::Pending | Cancelled::Running), "the periodic one: {answer:?}");
    let after = ran(2).len();
    let wait_until = now_ns() + 4 * period_ns;
    assert!(wait_for(|| now_ns() > wait_until));
    assert!(ran(2).len() <= after + 1, "the cancelled periodic timer kept running");
    assert_eq!(a.cancel(), Cancelled::Inactive, "the one-shot already ran");

    // Back online: a tick device by the usual rules, and a timer runs there.
    hotplug::online(1).expect("CPU 1 comes back");
    assert!(percpu::cpu(1).is_some());
    assert!(device_of(1).is_some(), "CPU 1 came back without a tick device");
    let (d_at, d_stamp) = oracle::arm_stamp(20 * MS, cpu1_apic);
    let d = Timer::at(1, kernel_tests::kernel_time::instant::Instant::from_nanos(d_at), move |e| {
        record(4, e, &d_stamp)
    })
    .expect("armed on CPU 1 again");
    assert!(wait_for(|| !ran(4).is_empty()), "CPU 1's timer never ran");
    let d_ran = ran(4);
    assert_eq!(d_ran.len(), 1);
    assert_eq!(d_ran[0].apic_id, cpu1_apic, "CPU 1's timer ran elsewhere");
    assert!(!d_ran[0].early && d_ran[0].now_ns >= d_ran[0].deadline_ns);
    drop(d);
    // A timer on REALTIME there too: the CPU's fresh tick places it with the clocks' offsets
    // as they are now (a tick left with none would put it decades away).
    // (The oracle's stamp first: the deadline is then at least 20 ms after it.)
    let e_stamp = oracle::arm_stamp(20 * MS, cpu1_apic).1;
    let wall = kernel_tests::kernel::time::clocksource::clocks();
    let e_at = kernel_time::clocks::ClockDeadline::Realtime(kernel_time::clocks::WallTime::from_nanos(
        wall.realtime.as_nanos() + 20 * MS,
    ));
    let e = Timer::on_clock(1, e_at, move |e| record(5, e, &e_stamp)).expect("armed on REALTIME on CPU 1");
    assert!(wait_for(|| !ran(5).is_empty()), "CPU 1's timer on REALTIME never ran after it came back");
    let e_ran = ran(5);
    assert_eq!((e_ran.len(), e_ran[0].apic_id), (1, cpu1_apic));
    assert!(!e_ran[0].early && e_ran[0].now_ns >= wall.monotonic.as_nanos() + 20 * MS);
    drop(e);
    let rec = hotplug::report()[index].clone();
    assert!(rec.online_at_ns.is_some_and(|t| t > rec.offline_at_ns));
}
