//! The CMOS RTC and the wall clock: REALTIME set from the RTC at boot agrees with what the RTC
//! holds later; a date written to the RTC reads back (in whatever mode the RTC is in); the
//! alarm matches. The date QEMU starts the RTC at is checked by the variants on the log and
//! the report (`-rtc base=`).
#![no_std]
#![no_main]

use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::arch::x86_64::rtc;
use kernel_tests::kernel::time::clocksource::now_ns;
use kernel_tests::kernel::time::wallclock;
use kernel_time::calendar::DateTime;

kernel_tests::qemu_test!(
    variants: b"
        utc_2031: --expect-log 'wall clock: 2031-05-17T10:0' --expect-report /clocks/rtc_holds=utc --expect-report /clocks/realtime_ns>=1936778400000000000 --expect-report /clocks/realtime_ns<=1936779000000000000 -- -rtc base=2031-05-17T10:00:00
        local: --cmdline rtc=local --expect-log 'wall clock: 2031-05-17T10:0' --expect-report /clocks/rtc_holds=local -- -rtc base=2031-05-17T10:00:00
        pc: --expect-log 'wall clock: 2031-05-17T10:0' -- -machine pc,hpet=on -rtc base=2031-05-17T10:00:00
        icount: --expect-log 'wall clock: 2031-05-17T10:0' --expect-report /clocks/realtime_ns>=1936778400000000000 -- -icount shift=0,sleep=off -rtc base=2031-05-17T10:00:00,clock=vm
    ",
    tests: [
        realtime_agrees_with_the_rtc,
        a_step_moves_realtime_alone,
        // Under icount the 2 s of guest time the alarm waits are 2e9 instructions of polling.
        a_written_date_reads_back_and_the_alarm_matches => "utc_2031 local pc",
    ],
);

/// The RTC's layout as the kernel read it from the FADT.
fn layout(k: &Kernel) -> rtc::RtcLayout {
    k.platform.firmware.rtc.map(|f| f.layout).unwrap_or_default()
}

/// REALTIME (set from the RTC at boot, then running on the clocksource) and the RTC read now
/// (its own oscillator) agree to within the RTC's one-second resolution and a second of slack.
fn realtime_agrees_with_the_rtc(k: &Kernel) {
    // Bracketed by two REALTIME reads, so that a stalled vCPU between them widens the bound
    // instead of failing the test.
    let real_before = wallclock::realtime_ns() / 1_000_000_000;
    let rtc_s = rtc::read(&layout(k)).expect("the RTC reads").to_unix_seconds();
    let real_after = wallclock::realtime_ns() / 1_000_000_000;
    assert!(
        (real_before.saturating_sub(2)..=real_after + 2).contains(&rtc_s),
        "REALTIME says {real_before}..{real_after} s, the RTC {rtc_s} s"
    );
    assert!(rtc_s >= 1_936_778_400, "the variants start the RTC at 2031-05-17T10:00:00Z");
}

/// REALTIME stepped back a minute and forward again: it moves by each step, MONOTONIC and
/// BOOTTIME do not step, and all three come from one snapshot (REALTIME - MONOTONIC is the
/// offset before and after, never between).
fn a_step_moves_realtime_alone(_: &Kernel) {
    use kernel_tests::kernel::time::clocksource::{clocks, set_realtime};
    use kernel_time::clocks::WallTime;
    let minute = 60_000_000_000u64;
    let before = clocks();
    let step = set_realtime(WallTime::from_nanos(before.realtime.as_nanos() - minute));
    let after = clocks();
    // The step is the minute back less the time between the two reads, at most the time
    // between `before` and `after` on MONOTONIC.
    let m = minute as i64;
    let between = (after.monotonic.as_nanos() - before.monotonic.as_nanos()) as i64;
    assert!((-m - between..=-m).contains(&step), "a step of {step} ns");
    assert!(after.monotonic >= before.monotonic && after.boottime >= before.boottime, "only REALTIME steps");
    let real_back = after.realtime.as_nanos() as i128 - after.monotonic.as_nanos() as i128;
    let real_before = before.realtime.as_nanos() as i128 - before.monotonic.as_nanos() as i128;
    assert_eq!(real_back, real_before + i128::from(step), "the offset moved by the step, whole");
    let start = clocks();
    let again = set_realtime(WallTime::from_nanos(start.realtime.as_nanos() + minute));
    let end = clocks();
    let between = (end.monotonic.as_nanos() - start.monotonic.as_nanos()) as i64;
    assert!((m - between..=m).contains(&again), "forward again by {again} ns");
    let real_end = end.realtime.as_nanos() as i128 - end.monotonic.as_nanos() as i128;
    assert_eq!(real_end, real_back + i128::from(again), "the offset moved by the second step, whole");
}

/// Writes a date just before a leap day's end, reads it back, sets the alarm 2 s after it and
/// waits for the match (bounded by the kernel's clock), then puts the RTC back.
fn a_written_date_reads_back_and_the_alarm_matches(k: &Kernel) {
    let l = layout(k);
    let before = rtc::read(&l).expect("the RTC reads");
    let start = now_ns();
    let written = DateTime { year: 2040, month: 2, day: 29, hour: 23, minute: 59, second: 50 };
    rtc::write(&l, &written).expect("a valid date is written");
    let back = rtc::read(&l).expect("the RTC reads after the write");
    // It ran on from the write by about the time between (by the kernel's clock), never back.
    let elapsed_s = (now_ns() - start).div_ceil(1_000_000_000);
    let drift = back.to_unix_seconds().saturating_sub(written.to_unix_seconds());
    assert!(back >= written && drift <= elapsed_s + 1, "wrote {written}, read {back}");
    let alarm = DateTime::from_unix_seconds(written.to_unix_seconds() + 2).unwrap();
    let _ = rtc::alarm_fired(); // clears a stale flag
    rtc::set_alarm(&l, &alarm).expect("the alarm is set");
    let deadline = now_ns() + 20_000_000_000;
    let mut fired = false;
    while !fired && now_ns() < deadline {
        fired = rtc::alarm_fired();
    }
    rtc::clear_alarm();
    assert!(fired, "the alarm set for {alarm} never matched (RTC now {:?})", rtc::read(&l));
    let after = rtc::read(&l).expect("the RTC reads");
    assert!(after >= alarm, "the alarm matched at {after}, before {alarm}");
    let elapsed_s = (now_ns() - start) / 1_000_000_000;
    let restore = DateTime::from_unix_seconds(before.to_unix_seconds() + elapsed_s).unwrap();
    rtc::write(&l, &restore).expect("the RTC is put back");
}
