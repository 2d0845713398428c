//! Wall-clock time: the CMOS RTC, read once at boot, sets REALTIME's offset from MONOTONIC
//! (Linux's `read_persistent_clock64` in `timekeeping_init`). REALTIME is then MONOTONIC plus
//! that offset, read without a lock; the RTC is not read again on the way.
//!
//! `rtc=utc` (the default) says the RTC holds UTC; `rtc=local` that it holds local time, in
//! which case the kernel, which knows no time zone, keeps REALTIME on the RTC's local time and
//! says so (the report's `rtc` then carries no `Z`). An RTC that cannot be read (lost power,
//! garbage, no RTC) leaves REALTIME at MONOTONIC from the epoch, as a fallback with its reason.

use crate::arch::x86_64::acpi::FadtRtc;
use crate::arch::x86_64::rtc::{self, RtcLayout};
use crate::time::clocksource::now_ns;
use crate::timer_report::ClocksReport;
use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use kernel_time::calendar::DateTime;

/// REALTIME minus MONOTONIC, in ns.
static OFFSET_NS: AtomicI64 = AtomicI64::new(0);
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
            let at = now_ns();
            let wall_ns = dt.to_unix_seconds() as i64 * 1_000_000_000;
            OFFSET_NS.store(wall_ns - at as i64, Ordering::Relaxed);
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
    (now_ns() as i64).saturating_add(OFFSET_NS.load(Ordering::Relaxed)).max(0) as u64
}

/// The clocks now, and what the RTC holds now (read again: the report shows both side by side).
pub fn report() -> ClocksReport {
    let layout = LAYOUT.get().copied().unwrap_or_default();
    let rtc = rtc::read(&layout).ok().map(|dt| stamp(&dt));
    let monotonic_ns = now_ns();
    ClocksReport {
        rtc,
        rtc_holds: if LOCAL.load(Ordering::Relaxed) { "local" } else { "utc" },
        realtime_ns: (monotonic_ns as i64).saturating_add(OFFSET_NS.load(Ordering::Relaxed)).max(0) as u64,
        // No suspend is accounted yet: BOOTTIME is MONOTONIC until then.
        boottime_ns: monotonic_ns,
        monotonic_ns,
    }
}
