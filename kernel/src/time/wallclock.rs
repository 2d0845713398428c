//! Wall-clock time: the CMOS RTC, read once at boot, sets REALTIME (Linux's
//! `read_persistent_clock64` in `timekeeping_init`): the timekeeper's REALTIME offset from
//! MONOTONIC, read with the other clocks from one snapshot without a lock
//! (`clocksource::clocks`); the RTC is not read again on the way.
//!
//! `rtc=utc` (the default) says the RTC holds UTC; `rtc=local` that it holds local time, in
//! which case the kernel, which knows no time zone, keeps REALTIME on the RTC's local time and
//! says so (the report's `rtc` then carries no `Z`). An RTC that cannot be read (lost power,
//! garbage, no RTC) leaves REALTIME at MONOTONIC from the epoch, as a fallback with its reason.

use crate::arch::x86_64::acpi::FadtRtc;
use crate::arch::x86_64::rtc::{self, RtcLayout};
use crate::time::clocksource;
use crate::timer_report::ClocksReport;
use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicBool, Ordering};
use kernel_time::calendar::DateTime;
use kernel_time::clocks::WallTime;

/// The RTC holds local time (`rtc=local`).
static LOCAL: AtomicBool = AtomicBool::new(false);
/// Where the FADT says the century and alarm registers are.
static LAYOUT: spin::Once<RtcLayout> = spin::Once::new();

/// Reads the RTC and sets REALTIME from it; returns the fallback to record if it could not.
pub fn init(fadt: Option<&FadtRtc>, rtc_local: bool) -> Option<String> {
    LOCAL.store(rtc_local, Ordering::Relaxed);
    let layout = *LAYOUT.call_once(|| fadt.map(|f| f.layout).unwrap_or_default());
    if let Some(f) = fadt {
        for (name, index) in f.ignored.iter().flatten() {
            log::warn!("FADT: {name} names CMOS byte {index:#04x}, which is not CMOS RAM: ignored");
        }
        if f.not_present {
            let reason = "the FADT says there is no CMOS RTC: REALTIME counts from the epoch".into();
            return Some(reason);
        }
    }
    match layout.century {
        Some(c) => log::info!("RTC: century in CMOS byte {c:#04x} (FADT)"),
        None => log::info!("RTC: no century register: years 70-99 are 19xx, 00-69 20xx"),
    }
    match rtc::read(&layout) {
        Ok(dt) => {
            clocksource::set_realtime(WallTime::from_unix_seconds(dt.to_unix_seconds()));
            log::info!("wall clock: {} (RTC, {})", stamp(&dt), if rtc_local { "local time" } else { "UTC" });
            None
        }
        Err(e) => Some(format!("RTC unreadable ({e}): REALTIME counts from the epoch")),
    }
}

/// `dt` in ISO 8601, with `Z` when the RTC holds UTC.
fn stamp(dt: &DateTime) -> String {
    if LOCAL.load(Ordering::Relaxed) { format!("{dt}") } else { format!("{dt}Z") }
}

/// REALTIME: ns since 1970-01-01T00:00:00 (UTC, or the RTC's local time with `rtc=local`).
pub fn realtime_ns() -> u64 {
    clocksource::clocks().realtime.as_nanos()
}

/// The clocks now, and what the RTC holds now (read again: the report shows both side by side).
pub fn report() -> ClocksReport {
    let layout = LAYOUT.get().copied().unwrap_or_default();
    let rtc = rtc::read(&layout).ok().map(|dt| stamp(&dt));
    let c = clocksource::clocks();
    let (clock_was_set, timers_requeued) = crate::time::clockevents::clock_changes();
    ClocksReport {
        rtc,
        rtc_holds: if LOCAL.load(Ordering::Relaxed) { "local" } else { "utc" },
        realtime_ns: c.realtime.as_nanos(),
        boottime_ns: c.boottime.as_nanos(),
        monotonic_ns: c.monotonic.as_nanos(),
        clock_was_set,
        timers_requeued,
    }
}
