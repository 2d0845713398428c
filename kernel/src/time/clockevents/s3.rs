//! A real ACPI S3 suspend and resume of the machine (`s3_test=SECONDS`), sequenced above the
//! drivers: the APs taken offline (`hotplug`), every tick suspended and the devices' state
//! saved (HPET, IOAPIC entries, 8259), the RTC alarm set SECONDS ahead, then the sleep
//! (`arch::x86_64::sleep`: waking vector, PM1 registers, SLP_EN). The firmware's reset on wake
//! leaves every counter and device as after power-on; the boot CPU comes back through the
//! waking vector with its registers restored, then: MONOTONIC continues from where it stopped
//! whatever the counters read (`clocksource::resumed_from_reset`), BOOTTIME and REALTIME count
//! the sleep as the RTC measured it; the LAPIC, the IOAPIC entries, the 8259s and ELCR, the
//! HPET's configuration, comparators and routes are restored; the ticks resume (each
//! programs its pending deadline again), the APs come back online, and every CPU places its
//! timers on REALTIME and BOOTTIME again. A machine that does not sleep (no `\_S3_`, S3
//! disabled) falls back with the reason: the verdict says degraded, the run goes on.

use super::hotplug;
use crate::arch::x86_64::hpet::Hpet;
use crate::arch::x86_64::ioapic::IOAPICS;
use crate::arch::x86_64::rtc::{self, RtcLayout};
use crate::arch::x86_64::sleep::{S3, SleepError};
use crate::arch::x86_64::smp::percpu;
use crate::arch::x86_64::{lapic, pic};
use crate::time::clocksource::now_ns;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use kernel_time::calendar::DateTime;
use x86_64::instructions::interrupts::without_interrupts;

/// How often the RTC alarm is set again when the RTC's second turns over while it is set.
const ALARM_TRIES: usize = 3;

/// Why the S3 test did not sleep (logged as a fallback by the caller).
#[derive(Debug)]
pub enum S3Fallback {
    /// The firmware offers no S3, or the sleep itself failed.
    Sleep(SleepError),
    /// No CMOS RTC to wake the machine (or it could not be read or set).
    Rtc(String),
    /// An AP could not be taken offline.
    Hotplug(String),
}

impl core::fmt::Display for S3Fallback {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            S3Fallback::Sleep(e) => write!(f, "{e}"),
            S3Fallback::Rtc(e) => write!(f, "no RTC alarm to wake the machine: {e}"),
            S3Fallback::Hotplug(e) => write!(f, "{e}"),
        }
    }
}

/// What an S3 test needs: how long to sleep, the machine's S3 (or why it has none), its CMOS
/// RTC (whose alarm wakes it) and its HPET (whose state the sleep loses).
pub struct S3Plan {
    pub seconds: u64,
    pub s3: Result<S3, SleepError>,
    pub rtc: Option<RtcLayout>,
    pub hpet: Option<&'static Hpet>,
    /// False (`s3_no_wake`): no RTC alarm is set, nothing wakes the machine.
    pub wake: bool,
}

/// Where the sleep stands, for the caller's `phase` callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Phase {
    /// Every tick suspended, MONOTONIC read for the last time before the sleep.
    Suspended,
    /// First thing after the wake, before the clock is set right (nothing may read it).
    Woke,
    /// The machine did not sleep; the ticks resume next.
    NotSlept,
}

/// What one S3 cycle measured.
#[derive(Debug, Clone, Copy)]
pub struct S3Outcome {
    /// The sleep by the RTC (whole seconds).
    pub asleep_ns: u64,
    /// Timers pending at the suspend (every CPU's, the APs' adopted by the boot CPU).
    pub pending: usize,
    /// MONOTONIC when the sleep began and when the ticks resumed.
    pub stopped_ns: u64,
    pub resumed_ns: u64,
}

/// Suspends the machine to RAM for `plan.seconds` (by the RTC alarm) and resumes it; called on the
/// boot CPU with interrupts enabled. `phase` is called at each [`S3Phase`] (interrupts off: no
/// timer runs in between). Errors leave the machine running as
/// before (the APs back online).
pub fn suspend_to_ram(plan: S3Plan, phase: &mut dyn FnMut(S3Phase)) -> Result<S3Outcome, S3Fallback> {
    let requested = now_ns();
    let S3Plan { seconds, s3, rtc, hpet, wake } = plan;
    let s3 = s3.map_err(S3Fallback::Sleep)?;
    let layout = rtc.ok_or_else(|| S3Fallback::Rtc("the FADT describes no CMOS RTC".into()))?;
    rtc::read(&layout).map_err(|e| S3Fallback::Rtc(alloc::format!("{e}")))?;
    let t = s3.sleep_type();
    log::info!(
        "s3: entering S3 for {seconds} s (SLP_TYPa {}, SLP_TYPb {}; PM I/O decode restored on wake: {}): APs offline first",
        t.a,
        t.b,
        s3.chipset()
    );
    let aps: Vec<usize> = percpu::all().map(|c| c.index).filter(|&c| c != 0).collect();
    let mut offline = Vec::new();
    for &ap in &aps {
        match hotplug::offline(ap) {
            Ok(_) => offline.push(ap),
            Err(e) => {
                bring_back(&offline);
                return Err(S3Fallback::Hotplug(alloc::format!("CPU {ap} not taken offline: {e}")));
            }
        }
    }
    let result = without_interrupts(|| {
        // The figure's probe: due at once, pending through the sleep (interrupts are off), the
        // first timer after the wake.
        let probe =
            super::Timer::at(0, kernel_time::instant::Instant::from_nanos(now_ns() + 1_000), move |_| {
                if SLEPT.load(Ordering::Acquire) {
                    super::suspend::record_first_timer(now_ns().saturating_sub(requested));
                }
            });
        match probe {
            Ok(t) => {
                t.detach();
            }
            Err(e) => log::warn!("s3: no probe timer for the resume figure: {e:?}"),
        }
        let slept = sleep(&s3, &layout, wake.then_some(seconds), hpet, phase);
        SLEPT.store(slept.is_ok(), Ordering::Release);
        slept
    });
    bring_back(&offline);
    let outcome = result?;
    // REALTIME and BOOTTIME moved on by the sleep: every CPU places its timers on them again.
    super::clock_was_set();
    log::info!(
        "s3: resumed; asleep {} s by the RTC, MONOTONIC stopped at {} ns and resumed at {} ns; {} timers were pending",
        outcome.asleep_ns / 1_000_000_000,
        outcome.stopped_ns,
        outcome.resumed_ns,
        outcome.pending
    );
    super::suspend::record(
        crate::timer_report::SuspendKind::S3,
        outcome.resumed_ns - outcome.stopped_ns + outcome.asleep_ns,
        outcome.pending as u64,
        outcome.asleep_ns,
    );
    Ok(outcome)
}

/// The APs taken offline, online again (a failure is a fallback: the run goes on without it).
fn bring_back(cpus: &[usize]) {
    for &cpu in cpus {
        if let Err(e) = hotplug::online(cpu) {
            super::record_fallback(alloc::format!("s3: CPU {cpu} not back online: {e}"));
        }
    }
}

/// How long the RTC's second may take to turn over (by MONOTONIC, generous: a busy host stalls
/// a vCPU).
const TURNOVER_LIMIT_NS: u64 = 3_000_000_000;

/// Sets the RTC alarm `seconds` after the RTC's time now; returns that time (Unix seconds).
/// The alarm is set just after the RTC's second turned over, so that it lies `seconds` (not
/// anything between `seconds - 1` and `seconds`) ahead: the sleep's last steps have most of a
/// second before [`alarm_too_close`] says to set it again.
fn set_alarm(layout: &RtcLayout, seconds: u64) -> Result<u64, S3Fallback> {
    let rtc_err = |e: rtc::RtcProblem| S3Fallback::Rtc(alloc::format!("{e}"));
    for _ in 0..ALARM_TRIES {
        let was = rtc::read(layout).map_err(rtc_err)?.to_unix_seconds();
        let start = now_ns();
        let mut now = was;
        // Read in the update's own window: a read that meets the update-in-progress bit for
        // longer than the driver's poll bound says so, and is only tried again.
        while now == was && now_ns().saturating_sub(start) < TURNOVER_LIMIT_NS {
            now = rtc::read(layout).map_or(was, |t| t.to_unix_seconds());
        }
        let at = DateTime::from_unix_seconds(now + seconds)
            .ok_or_else(|| S3Fallback::Rtc("the alarm's date is out of range".into()))?;
        rtc::set_alarm(layout, &at).map_err(rtc_err)?;
        // The second turned over meanwhile: the alarm may be too close to match; set it again.
        if rtc::read(layout).map_err(rtc_err)?.to_unix_seconds() == now {
            *ALARM_SET.lock() = Some((*layout, now));
            return Ok(now);
        }
    }
    Err(S3Fallback::Rtc("the RTC's second kept turning over while the alarm was set".into()))
}

/// Whether the last S3 attempt slept (the resume figure's probe records only then).
static SLEPT: AtomicBool = AtomicBool::new(false);

/// The alarm last set: the RTC layout and the second (Unix) it was set in.
static ALARM_SET: spin::Mutex<Option<(RtcLayout, u64)>> = spin::Mutex::new(None);

/// For [`S3::enter`], right before SLP_EN: whether the alarm is too close to sleep on, that is
/// matched already (status C's AF) or the RTC's second moved on from the one the alarm was set
/// in. QEMU suspends some time after SLP_EN (in its main loop) and drops an alarm that matches
/// before, and raises AF only when its main loop runs the alarm's timer: the RTC's own time,
/// read now, is the check that does not depend on that loop; the second kept is the margin.
fn alarm_too_close() -> bool {
    let Some((layout, set_in)) = *ALARM_SET.lock() else { return false };
    // A read that fails (the update-in-progress window outlasting the driver's poll bound:
    // the second turning over, just when an alarm matches) counts as too close.
    rtc::alarm_fired() || rtc::read(&layout).map_or(true, |t| t.to_unix_seconds() != set_in)
}

/// The sleep itself, interrupts off, the boot CPU alone online.
fn sleep(
    s3: &S3,
    layout: &RtcLayout,
    seconds: Option<u64>,
    hpet: Option<&'static Hpet>,
    phase: &mut dyn FnMut(S3Phase),
) -> Result<S3Outcome, S3Fallback> {
    // The IOAPIC's entries as they serve (the comparators' suspend masks theirs next).
    let ioapic_entries = IOAPICS.lock().save();
    let pic_state = pic::save();
    let (pending, saved_hpet) = super::suspend::suspend_ticks_and_hpet(hpet);
    // The alarm and the waking vector first (they log and wait on the clock), then MONOTONIC's
    // last reading before the sleep: nothing reads the clock after it but the sleep's own bound.
    // An alarm that matched before SLP_EN (a vCPU stalled past it) would never wake the
    // machine: `enter` then does not sleep, and the alarm is set again.
    let mut stopped_ns = now_ns();
    let mut tries = 0;
    let slept = loop {
        tries += 1;
        let alarm = match seconds {
            Some(seconds) => set_alarm(layout, seconds).inspect(|_| {
                log::info!("s3: RTC alarm at +{seconds} s, RTC_EN set; sleeping");
            }),
            None => {
                rtc::clear_alarm();
                log::warn!("s3: no RTC alarm (s3_no_wake): nothing will wake the machine; sleeping");
                rtc::read(layout)
                    .map(|t| t.to_unix_seconds())
                    .map_err(|e| S3Fallback::Rtc(alloc::format!("{e}")))
            }
        };
        let passed: fn() -> bool = if seconds.is_some() { alarm_too_close } else { || false };
        let attempt = alarm.and_then(|before| {
            s3.prepare_wake().map_err(S3Fallback::Sleep)?;
            stopped_ns = now_ns();
            phase(S3Phase::Suspended);
            s3.enter(passed).map(|()| before).map_err(S3Fallback::Sleep)
        });
        match attempt {
            Err(S3Fallback::Sleep(SleepError::WakePassed)) if tries < ALARM_TRIES => {
                log::warn!(
                    "s3: the RTC alarm came too close before the machine slept (a stalled CPU): setting it again"
                );
            }
            other => break other,
        }
    };
    // Woken (or not slept): nothing reads the system clock before it is set right.
    phase(if slept.is_ok() { S3Phase::Woke } else { S3Phase::NotSlept });
    let woke = slept.map(|before| {
        let after = rtc::read(layout).map(|t| t.to_unix_seconds()).unwrap_or(before + seconds.unwrap_or(0));
        let asleep_ns = after.saturating_sub(before) * 1_000_000_000;
        crate::time::clocksource::resumed_from_reset(stopped_ns, asleep_ns);
        lapic::resume_this_cpu();
        pic::resume(&pic_state);
        IOAPICS.lock().restore(&ioapic_entries);
        asleep_ns
    });
    rtc::clear_alarm();
    super::suspend::resume_hpet_and_ticks(hpet, saved_hpet);
    woke.map(|asleep_ns| S3Outcome { asleep_ns, pending, stopped_ns, resumed_ns: now_ns() })
}
