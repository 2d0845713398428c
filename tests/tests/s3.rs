//! A real ACPI S3 suspend to RAM and resume in QEMU (issue 19, `s3_test=SECONDS`): timers
//! pending on every CPU and on BOOTTIME when the machine sleeps each fire once after the wake,
//! never early (judged on a counter that is not the clocksource's, continued across the reset)
//! and on their CPU or the one that adopted them when their CPU went offline for the sleep (the
//! APIC id the hardware reports); MONOTONIC continues from where it stopped, BOOTTIME counts
//! the sleep the RTC measured; the APs come back. Then the main run with the sleep halfway. A
//! wake-up that never comes (`s3_no_wake`: no alarm) ends in the runner's "suspended, no
//! wake-up" (QEMU's state watched over QMP), never a hang.
//! Without S3 (QEMU's disabled on `pc`: no `\_S3_` in the DSDT) the test falls back, degraded.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::arch::x86_64::smp::percpu;
use kernel_tests::kernel::arch::x86_64::{rtc, sleep, tsc};
use kernel_tests::kernel::time::clockevents::s3::{self, S3Phase};
use kernel_tests::kernel::time::clockevents::{self, Timer, TimerEvent, hotplug};
use kernel_tests::kernel::time::clocksource::{self, now_ns};
use kernel_tests::kernel::workload;
use kernel_tests::kernel::workload::oracle::{self, Judgement};
use kernel_tests::wait_for;
use spin::Mutex;
use x86_64::instructions::interrupts::without_interrupts;

kernel_tests::qemu_test!(
    variants: b"
        smp2: --smp 2 --cmdline 's3_test=1 idle=deep lapic_stops_in_idle duration_ms=300' --expect-report /suspend/kind=s3 --expect-report /suspend/count=2 --expect-report /cpus_online=2 --expect-report /tick_devices/1/device=hpet1 --expect-report /cpus/0/idle/state=deep --expect-log 's3: resumed; asleep'
        pc: --smp 2 --cmdline 's3_test=1 duration_ms=300' --expect-report /suspend/kind=s3 --expect-report /suspend/count=1 --expect-report /cpus_online=2 --expect-report /tick_devices/1/device=hpet1 --expect-log 'PIIX4' -- -machine pc,hpet=on
        disabled_pc: --no-s3 --cmdline 's3_test=1 duration_ms=200' --expect degraded --expect-report /suspend=null --expect-log 'fallback: s3 test: the DSDT has no \\_S3_' -- -machine pc,hpet=on
        no_wake: --cmdline 's3_test=1 s3_no_wake duration_ms=200' --wake-within 3 --expect no-wake --expect-log 's3: no RTC alarm (s3_no_wake)'
    ",
    tests: [
        pending_timers_fire_once_after_the_wake_never_early_on_their_cpu => "smp2",
        the_main_run_loses_nothing_across_the_sleep,
    ],
);

const MS: u64 = 1_000_000;

/// One callback: which timer, its CPU's APIC id when armed, the APIC id it ran on (from the
/// hardware), and whether it was early on the other counter or on the clock it was armed on.
#[derive(Debug, Clone, Copy)]
struct Ran {
    tag: usize,
    armed_apic: u32,
    apic_id: u32,
    early: bool,
    /// The clock it was judged on when it ran, and its deadline there (for the message).
    #[allow(dead_code)]
    clock_ns: u64,
    #[allow(dead_code)]
    deadline_ns: u64,
}

static RAN: Mutex<Vec<Ran>> = Mutex::new(Vec::new());

fn ran(tag: usize) -> Vec<Ran> {
    without_interrupts(|| RAN.lock().iter().filter(|r| r.tag == tag).copied().collect())
}

/// Arms, on each online CPU, a timer 150 ms ahead on MONOTONIC (pending when the machine
/// sleeps right after), and on CPU 0 one 150 ms ahead on BOOTTIME; sleeps; checks each ran once
/// after the wake, never early, on its CPU or its adopter.
fn pending_timers_fire_once_after_the_wake_never_early_on_their_cpu(k: &Kernel) {
    let plan = kernel_tests::kernel::s3_plan(k).expect("the variant names s3_test");
    let seconds = plan.seconds;
    oracle::set_counters(clocksource::raw_counters());
    let cpus: Vec<(usize, u32)> = percpu::all().map(|c| (c.index, c.apic_id)).collect();
    assert!(cpus.len() >= 2, "the variant runs APs");
    let mut timers = Vec::new();
    for (tag, &(cpu, apic)) in cpus.iter().enumerate() {
        let (at, stamp) = oracle::arm_stamp(150 * MS, apic);
        let t = Timer::at(
            cpu,
            kernel_tests::kernel_time::instant::Instant::from_nanos(at),
            move |e: &TimerEvent| {
                let early =
                    matches!(oracle::judge(&stamp), Judgement::Early { .. }) || now_ns() < e.deadline_ns;
                let r = Ran {
                    tag,
                    armed_apic: stamp.apic_id,
                    apic_id: oracle::apic_id_here(),
                    early,
                    clock_ns: now_ns(),
                    deadline_ns: e.deadline_ns,
                };
                without_interrupts(|| RAN.lock().push(r));
            },
        )
        .expect("armed");
        timers.push(t);
    }
    // On BOOTTIME: due 150 ms of BOOTTIME after now, which the sleep passes. The counters'
    // oracle measures MONOTONIC's time (the sleep not counted by either), so this one is judged
    // by BOOTTIME read in its callback and, independently, by not having run before the sleep
    // (a sleep of at least a second by the RTC lies between its arming and its deadline).
    let boot_tag = cpus.len();
    let boot_apic = cpus[0].1;
    let boot_at = clocksource::clocks().boottime.as_nanos() + 150 * MS;
    let deadline =
        kernel_time::clocks::ClockDeadline::Boottime(kernel_time::clocks::BootInstant::from_nanos(boot_at));
    let b = Timer::on_clock(0, deadline, move |_: &TimerEvent| {
        let boottime = clocksource::clocks().boottime.as_nanos();
        let r = Ran {
            tag: boot_tag,
            armed_apic: boot_apic,
            apic_id: oracle::apic_id_here(),
            early: boottime < boot_at,
            clock_ns: boottime,
            deadline_ns: boot_at,
        };
        without_interrupts(|| RAN.lock().push(r));
    })
    .expect("armed on BOOTTIME");
    timers.push(b);
    let hotplug_before = hotplug::report().len();
    let mut ran_before_the_sleep = usize::MAX;
    // A vCPU stalled between the alarm and SLP_EN (a busy host) injected: the first time, the
    // sleep's last step waits until the RTC alarm has matched. The machine must not sleep
    // for ever on an alarm already past (it sets the alarm again and sleeps).
    let layout = plan.rtc.expect("the machine has a CMOS RTC");
    let mut stalls = 0;
    let mut wake_stacks = Vec::new();
    let mut phase = |p: S3Phase| match p {
        S3Phase::Suspended => {
            if stalls == 0 {
                stall_past_the_alarm(&layout, seconds);
            }
            stalls += 1;
            wake_stacks.push(sleep::readied_wake_stack());
            oracle::counters_sleeping();
            ran_before_the_sleep = without_interrupts(|| RAN.lock().len());
        }
        S3Phase::Woke => oracle::counters_woke(),
        S3Phase::NotSlept => {}
    };
    let out =
        s3::suspend_to_ram(plan, &mut phase).unwrap_or_else(|e| panic!("the machine did not sleep: {e}"));
    assert!(stalls >= 2, "the alarm that matched before the sleep went unnoticed ({stalls} attempt)");
    // One waking-vector stack for every attempt (none leaked per sleep).
    assert!(wake_stacks.windows(2).all(|w| w[0] == w[1]), "a new wake stack per sleep: {wake_stacks:x?}");
    assert!(
        out.pending > cpus.len(),
        "{} timers pending at the sleep, {} armed",
        out.pending,
        cpus.len() + 1
    );
    // The RTC alarm cannot wake the machine before it is due.
    assert!(out.asleep_ns >= seconds * 1_000_000_000, "asleep {} ns by the RTC", out.asleep_ns);
    assert!(out.resumed_ns >= out.stopped_ns, "MONOTONIC went back across the sleep");
    let c = clocksource::clocks();
    assert_eq!(
        c.boottime.as_nanos() - c.monotonic.as_nanos(),
        out.asleep_ns,
        "BOOTTIME - MONOTONIC: the sleep"
    );
    // Every AP went offline for the sleep and came back.
    let cycles = &hotplug::report()[hotplug_before..];
    assert_eq!(cycles.len(), cpus.len() - 1, "{cycles:?}");
    assert!(cycles.iter().all(|r| r.online_at_ns.is_some()), "an AP did not come back: {cycles:?}");
    assert_eq!(percpu::all().count(), cpus.len());

    assert!(
        wait_for(|| (0..=boot_tag).all(|t| !ran(t).is_empty())),
        "a pending timer never ran after the wake"
    );
    for tag in 0..=boot_tag {
        let r = ran(tag);
        assert_eq!(r.len(), 1, "timer {tag} ran {} times", r.len());
        let r = r[0];
        assert!(!r.early, "timer {tag} ran early: {r:?}");
        let adopter = hotplug::adopter_apic_of(r.armed_apic);
        assert!(
            r.apic_id == r.armed_apic || adopter == Some(r.apic_id),
            "timer {tag} ran on the wrong CPU: {r:?}"
        );
    }
    drop(timers);
    for t in clockevents::tick_devices() {
        assert!(t.device.is_some(), "CPU {} has no tick device after the wake", t.cpu);
    }
}

/// Spins (interrupts off, as the sleep's last steps run) until the RTC reads `seconds + 1` past
/// its reading now: an alarm set `seconds` ahead has matched by then. Bounded by the TSC
/// (generously: the RTC may be gone).
fn stall_past_the_alarm(layout: &rtc::RtcLayout, seconds: u64) {
    // A read may fail in the RTC's update window (the driver's poll bound): 0, read again.
    let read = || rtc::read(layout).map_or(0, |t| t.to_unix_seconds());
    let (start, limit) = (tsc::read(), tsc::frequency_hz().saturating_mul(seconds + 10));
    let within = || tsc::read().wrapping_sub(start) < limit;
    let mut now = read();
    while now == 0 && within() {
        now = read();
    }
    let until = now + seconds + 1;
    while read() < until && within() {
        core::hint::spin_loop();
    }
}

/// `s3_test=`: the main run's workload with the sleep halfway: every timer pending at the sleep
/// fires once after it, none lost, early, fired twice or on the wrong CPU; without S3 the run
/// goes on and loses nothing either.
fn the_main_run_loses_nothing_across_the_sleep(k: &Kernel) {
    let sleeps = clockevents::suspend::report().map_or(0, |s| s.count);
    workload::s3_halfway(kernel_tests::kernel::s3_plan(k));
    let out = workload::run(k.options.duration_ms);
    kernel_tests::assert_workload_clean(&out);
    match clockevents::suspend::report() {
        Some(s) if s.count > sleeps => kernel_tests::assert_pending_timers_fire_once_after_the_suspend(&out),
        _ => assert_eq!(out.suspend_pending, 0, "no sleep, yet timers counted pending at one"),
    }
}
