//! This machine's clocksources: the system clock [`now_ns`] (the time layer's [`Timekeeper`]
//! read through [`ReadCounter`] for [`Hardware`]: one `match`, each arm a direct read), the registry of
//! sources behind an interrupts-off lock, registration of the TSC and the HPET main counter,
//! the `clocksource=` choice, and the report's clocksource part.

use super::clockevents::{self, TimerEvent};
use crate::arch::x86_64::deferred;
use crate::arch::x86_64::hpet::{CounterChange, Hpet};
use crate::arch::x86_64::platform::Counter;
use crate::arch::x86_64::pm_timer::{self, PmTimer};
use crate::arch::x86_64::tsc::{self, TscChange};
use crate::timer_report::{
    ClocksourceReport, HousekeepingReport, SwitchReport, TimerReport, TscReport, Verdict,
};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicPtr, AtomicU16, AtomicU64, Ordering};
use kernel_time::clocksource::refine::{self, Refined, Refiner};
use kernel_time::clocksource::sync::{self, SyncResult, SyncVerdict};
use kernel_time::clocksource::watchdog::{self, Sample, Watchdog};
use kernel_time::clocksource::{
    Clocksources, CounterId, ReadCounter, RegisterError, SourceDesc, SourceFlags, Switch, Timekeeper,
};
use spin::Mutex;
use x86_64::instructions::interrupts::without_interrupts;

/// The system clock behind [`now_ns`].
pub static TIMEKEEPER: Timekeeper = Timekeeper::new();

/// The system clock's nanoseconds (0 before the first source is installed): a sequence-counter
/// read of the snapshot and one direct read of the current counter.
#[inline(always)]
pub fn now_ns() -> u64 {
    TIMEKEEPER.now(&Hardware)
}

/// MONOTONIC, REALTIME and BOOTTIME now, from one snapshot (`kernel_time::clocks`).
pub fn clocks() -> kernel_time::clocks::Clocks {
    TIMEKEEPER.clocks(&Hardware)
}

/// Steps REALTIME to read `to` now (serialised with the other writers of the snapshot);
/// returns the step in ns. Every CPU then places its timers on REALTIME again
/// (`clockevents::clock_was_set`: Linux's `clock_was_set` after `do_settimeofday64`).
pub fn set_realtime(to: kernel_time::clocks::WallTime) -> i64 {
    let step = with_sources(|_| TIMEKEEPER.set_realtime(&Hardware, to));
    clockevents::clock_was_set();
    step
}

/// Steps REALTIME by `delta_ns` exactly (negative: back); returns the step made. Every CPU then
/// places its timers on REALTIME again, as after [`set_realtime`].
pub fn step_realtime(delta_ns: i64) -> i64 {
    let step = with_sources(|_| TIMEKEEPER.step_realtime(delta_ns));
    clockevents::clock_was_set();
    step
}

/// The offsets that make REALTIME and BOOTTIME from MONOTONIC, now (lock-free).
#[inline]
pub fn offsets() -> kernel_time::clocks::Offsets {
    TIMEKEEPER.offsets()
}

/// The machine was asleep for the last `asleep_ns` (nobody read the clock meanwhile):
/// MONOTONIC takes them back and BOOTTIME and REALTIME count them
/// (`Timekeeper::resume_after`); the caller then has every CPU place its timers on those
/// clocks again (`clockevents::clock_was_set`). Returns MONOTONIC now.
pub fn resume_after(asleep_ns: u64) -> u64 {
    with_sources(|_| TIMEKEEPER.resume_after(&Hardware, asleep_ns))
}

/// The machine slept with its counters reset (ACPI S3): MONOTONIC continues from `stopped_ns`
/// (its reading when the sleep began) whatever the counter reads now, BOOTTIME and REALTIME
/// count `asleep_ns` (`Timekeeper::resume_from_reset`); the TSC checks against the reference
/// counter and the LAPIC timer's refinement start their windows again (their readings before
/// the reset mean nothing after it). Nobody may read the clock between the two.
pub fn resumed_from_reset(stopped_ns: u64, asleep_ns: u64) {
    with_sources(|_| TIMEKEEPER.resume_from_reset(&Hardware, stopped_ns, asleep_ns));
    without_interrupts(|| {
        let mut c = TSC_CHECKS.lock();
        c.watchdog = Watchdog::new();
        c.refiner = Refiner::new();
    });
    clockevents::lapic_refine::reference_stopped();
}

/// `hpet`'s main counter reading at which the system clock reads `ns` or later, while the
/// clock runs on that block's counter (`None` on any other counter, another HPET block's
/// included: each block's counter has its own rate and offset): what one of its comparators is
/// set to for an event at `ns`, with no counter read of its own and no lean.
#[inline]
pub fn hpet_counter_at(hpet: &Hpet, ns: u64) -> Option<u64> {
    if !is_the_clocks_hpet(hpet) {
        return None;
    }
    TIMEKEEPER.cycles_at(ns).filter(|&(counter, _)| counter == HPET).map(|(_, cycles)| cycles)
}

/// A count-down device's count for an event at `at_ns`, which the layer converted into
/// `delta_ticks` at its clock read `now_ns`: the snapshot and the device's ticks per ns taken
/// before a read of the clock's counter (`kernel_time::clocksource::Countdown`), so that the
/// reading's conversion, a subtraction and a multiply lie between that read and `write`, which
/// starts the count; without a counter, counted from a clock read (`remaining_ticks`). Returns
/// the ticks handed to `write`.
#[inline]
pub fn count_down(at_ns: u64, now_ns: u64, delta_ticks: u64, write: impl FnOnce(u64)) -> u64 {
    let ticks = match TIMEKEEPER.countdown(at_ns, now_ns, delta_ticks) {
        Some(c) => c.ticks_left(Hardware.read(c.counter)),
        None => kernel_time::clockevents::remaining_ticks(at_ns, now_ns, self::now_ns(), delta_ticks),
    };
    write(ticks);
    ticks
}

/// Whether `hpet` is the block whose main counter the `hpet` clocksource reads.
fn is_the_clocks_hpet(hpet: &Hpet) -> bool {
    HPET_COUNTER.load(Ordering::Relaxed).cast_const() == hpet.main_counter_ptr().cast::<u32>()
}

/// This machine's counters, as the time layer reads them: a unit type whose [`ReadCounter`]
/// implementation is a `match` of direct reads, so [`now_ns`] compiles to a direct call, not a
/// dynamic one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hardware;

/// The counters `now_ns` can read.
/// This machine's clocksources. The time crate knows them by name: [`Clock::name`] is that
/// name, used only where the crate's API or the report asks for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    Tsc,
    Hpet,
    AcpiPm,
}

impl Clock {
    /// The name the clocksource is registered under (and the report shows).
    pub const fn name(self) -> &'static str {
        match self {
            Clock::Tsc => "tsc",
            Clock::Hpet => "hpet",
            Clock::AcpiPm => "acpi_pm",
        }
    }
}

impl From<crate::cmdline::ClocksourceChoice> for Clock {
    fn from(choice: crate::cmdline::ClocksourceChoice) -> Clock {
        use crate::cmdline::ClocksourceChoice as C;
        match choice {
            C::Tsc => Clock::Tsc,
            C::Hpet => Clock::Hpet,
            C::AcpiPm => Clock::AcpiPm,
        }
    }
}

/// The clocks the TSC is checked against and the LAPIC timer refined against, best first
/// (while stable).
const REFERENCES: [Clock; 2] = [Clock::Hpet, Clock::AcpiPm];

pub const TSC: CounterId = CounterId(1);
pub const HPET: CounterId = CounterId(2);
/// The TSC with the `tsc_skew` fault added in software (only once that fault is injected).
pub const TSC_SKEWED: CounterId = CounterId(3);
pub const PM_TIMER: CounterId = CounterId(4);
/// The TSC with the `tsc_rate_ppm` fault (and any software `tsc_skew`) applied.
pub const TSC_FAULTED: CounterId = CounterId(5);

/// Linux's ratings: the TSC is the cheapest to read, the HPET an MMIO read away.
pub const TSC_RATING: u32 = 300;
pub const HPET_RATING: u32 = 250;
/// A TSC that is not invariant may change its rate with the CPU's P- and C-states: it is not
/// preferred, rated below the HPET and the ACPI PM timer (200), and used only without them or
/// when forced.
pub const TSC_NOT_INVARIANT_RATING: u32 = 100;
pub const PM_TIMER_RATING: u32 = 200;

/// The main counter register of the HPET that is the `hpet` clocksource ([`NO_HPET_COUNTER`]
/// until then), read as its low 32 bits, as Linux does: QEMU splits a 64-bit read of it into
/// two 32-bit ones, which tear when the low half wraps (the clock then leaps 43 s ahead and
/// back).
static HPET_COUNTER: AtomicPtr<u32> = AtomicPtr::new(core::ptr::addr_of!(NO_HPET_COUNTER).cast_mut());

/// What the `hpet` counter reads before an HPET is the clocksource: 0, from memory, so that a
/// read needs no test for "none" (it is on every clock read of the interrupt path).
static NO_HPET_COUNTER: u32 = 0;

/// The I/O port of the ACPI PM timer that is the `acpi_pm` clocksource (0 until then).
static PM_TIMER_PORT: AtomicU16 = AtomicU16::new(0);

#[inline(always)]
fn read_pm_timer() -> u64 {
    match PM_TIMER_PORT.load(Ordering::Relaxed) {
        0 => 0,
        port => u64::from(pm_timer::read_port(port)),
    }
}

impl ReadCounter for Hardware {
    #[inline(always)]
    fn read(&self, counter: CounterId) -> u64 {
        match counter {
            TSC => tsc::read_ordered(),
            HPET => read_hpet(),
            PM_TIMER => read_pm_timer(),
            _ => read_rare(counter),
        }
    }
}

/// The counters only fault injection uses, out of the hot path's way (a call there would
/// make every read save registers around it).
#[cold]
#[inline(never)]
fn read_rare(counter: CounterId) -> u64 {
    match counter {
        TSC_SKEWED => tsc::read_ordered_skewed(),
        TSC_FAULTED => tsc::read_ordered_faulted(),
        _ => 0,
    }
}

#[inline(always)]
fn read_hpet() -> u64 {
    let counter = HPET_COUNTER.load(Ordering::Relaxed);
    // SAFETY: `counter` is either the low half of the main counter register of a probed HPET,
    // mapped uncached for the kernel's lifetime (`register_hpet`), whose read has no side
    // effects, or `NO_HPET_COUNTER`, a static; both aligned and valid for reads forever.
    u64::from(unsafe { counter.read_volatile() })
}

static SOURCES: Mutex<Clocksources> = Mutex::new(Clocksources::new());
/// Fallbacks taken by the clocksource code (at bring-up or at run time), for the report.
static FALLBACKS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Runs `f` on the registry with interrupts off: a switch writes the timekeeper, which a
/// reader interrupting it on this CPU would wait for forever.
pub fn with_sources<R>(f: impl FnOnce(&mut Clocksources) -> R) -> R {
    without_interrupts(|| f(&mut SOURCES.lock()))
}

/// Registers `desc` and makes the best source current; logs the outcome (once there is a
/// log). Returns the switch, if one happened.
fn register(desc: SourceDesc) -> Option<Switch> {
    let (registered, switch) = with_sources(|s| (s.register(desc), s.select(&TIMEKEEPER, &Hardware)));
    match registered {
        Ok(()) => log::info!(
            "{}: {} Hz, {}-bit, rating {}{}",
            desc.name,
            desc.hz,
            desc.bits,
            desc.rating,
            flags_note(desc.flags)
        ),
        Err(e) => log::warn!("clocksource {} not registered: {e}", desc.name),
    }
    log_switch(switch.as_ref());
    switch
}

fn flags_note(flags: SourceFlags) -> &'static str {
    match (flags.contains(SourceFlags::CPU_CONSISTENT), flags.contains(SourceFlags::MUST_VERIFY)) {
        (true, _) => ", one counter for every CPU",
        (false, true) => ", per CPU, to be verified",
        (false, false) => ", per CPU",
    }
}

fn log_switch(switch: Option<&Switch>) {
    if let Some(s) = switch {
        if s.from == "none" {
            log::info!("clocksource {} from {} ns", s.to, s.at_ns);
        } else {
            log::info!("switched clocksource {} -> {} at {} ns: {}", s.from, s.to, s.at_ns, s.reason);
        }
    }
}

/// The TSC at `hz`, installed as the first clocksource (before there is a heap or a log:
/// [`log_tsc`] says it later).
pub fn register_tsc(hz: u64) {
    register(tsc_desc(hz));
    tsc::set_listener(tsc_changed);
}

/// What the TSC driver tells its clock: the `tsc` clocksource follows.
fn tsc_changed(change: TscChange) {
    match change {
        TscChange::Frequency(hz) => set_tsc_frequency(hz),
        TscChange::RateFaulted => tsc_rate_faulted(),
        TscChange::SkewedInSoftware => tsc_skewed_in_software(),
    }
}

fn tsc_desc(hz: u64) -> SourceDesc {
    let invariant = tsc::invariant();
    SourceDesc {
        name: Clock::Tsc.name(),
        rating: if invariant { TSC_RATING } else { TSC_NOT_INVARIANT_RATING },
        hz,
        bits: 64,
        flags: if invariant {
            SourceFlags::MUST_VERIFY | SourceFlags::CONTINUOUS
        } else {
            SourceFlags::MUST_VERIFY
        },
        counter: TSC,
    }
}

/// The TSC's registration, once there is a log.
pub fn log_tsc() {
    let desc = tsc_desc(tsc::frequency_hz());
    let yes = |b: bool| if b { "yes" } else { "no" };
    let (rdtscp, tsc_adjust, deadline) = tsc::cpuid_flags();
    log::info!(
        "tsc: CPUID: invariant {}, RDTSCP {}, IA32_TSC_ADJUST {}, TSC-deadline timer {}",
        yes(tsc::invariant()),
        yes(rdtscp),
        yes(tsc_adjust),
        yes(deadline)
    );
    if tsc::invariant() {
        log::info!("tsc: invariant (CPUID 0x80000007 EDX bit 8): rating {}", desc.rating);
    } else {
        log::info!(
            "tsc: not invariant (CPUID 0x80000007 EDX bit 8 clear): rating {}, below the HPET ({HPET_RATING}) and the ACPI PM timer",
            desc.rating
        );
    }
    log::info!("clocksource {} for now", current_name());
}

/// A better measurement of the TSC's frequency: time continues at the new rate from now.
pub fn set_tsc_frequency(hz: u64) {
    with_sources(|s| s.set_frequency(&TIMEKEEPER, &Hardware, Clock::Tsc.name(), hz));
}

/// Registers a counter the platform's bring-up found (`platform::init_bsp`'s counter sink).
pub fn register_counter(counter: Counter) -> Result<(), String> {
    match counter {
        Counter::Hpet(hpet) => {
            register_hpet(hpet);
            Ok(())
        }
        Counter::PmTimer(pm) => register_pm_timer(pm).map_err(|e| e.to_string()),
    }
}

/// The HPET main counter as the `hpet` clocksource.
pub fn register_hpet(hpet: &'static Hpet) {
    HPET_COUNTER.store(hpet.main_counter_ptr().cast::<u32>().cast_mut(), Ordering::Relaxed);
    register(SourceDesc {
        name: Clock::Hpet.name(),
        rating: HPET_RATING,
        hz: hpet.frequency_hz(),
        // Read as 32 bits (see `HPET_COUNTER`): it wraps every 43 s at 100 MHz, and is rebased
        // every 0.5 s once that runs.
        bits: 32,
        flags: SourceFlags::CONTINUOUS | SourceFlags::CPU_CONSISTENT,
        counter: HPET,
    });
    crate::arch::x86_64::hpet::set_counter_listener(hpet_counter_changed);
}

/// What the HPET tells its clock of its main counter.
fn hpet_counter_changed(hpet: &Hpet, change: CounterChange) {
    match change {
        CounterChange::Stopping => hpet_stopping(hpet),
        CounterChange::Started => hpet_started(hpet),
    }
}

/// The `tsc_skew` fault is added to the TSC in software: the `tsc` clocksource reads it so.
pub fn tsc_skewed_in_software() {
    let counter = if tsc::rate_faulted() { TSC_FAULTED } else { TSC_SKEWED };
    with_sources(|s| s.set_counter(&TIMEKEEPER, Clock::Tsc.name(), counter));
}

/// The `tsc_rate_ppm` fault is injected: the `tsc` clocksource, and the watchdog comparing it,
/// read the TSC so (a software `tsc_skew` included).
pub fn tsc_rate_faulted() {
    with_sources(|s| s.set_counter(&TIMEKEEPER, Clock::Tsc.name(), TSC_FAULTED));
}

/// The HPET's main counter is about to stop (a suspend, a test writing it): if it is the
/// clocksource, the TSC keeps time meanwhile (even a TSC not preferred runs on).
pub fn hpet_stopping(hpet: &Hpet) {
    // Another block's counter is nobody's reference.
    if !is_the_clocks_hpet(hpet) {
        return;
    }
    reference_stopping(Clock::Hpet);
    if with_sources(|s| s.counter_stopping(&TIMEKEEPER, &Hardware, Clock::Hpet.name(), Clock::Tsc.name())) {
        log::debug!("the HPET counter stops: the TSC keeps time until it runs again");
    }
}

/// The counter `name` stops: the TSC checks and the LAPIC timer's measurement against it
/// cannot span the stop (the TSC and the LAPIC timer count on): the watchdog starts its
/// comparisons again, and the refinements their windows (keeping the frequencies refined so far).
fn reference_stopping(clock: Clock) {
    let against =
        with_sources(|s| REFERENCES.into_iter().find(|c| s.get(c.name()).is_some_and(|r| r.stable())));
    if against != Some(clock) {
        return;
    }
    without_interrupts(|| {
        let mut c = TSC_CHECKS.lock();
        c.watchdog = Watchdog::new();
        c.refiner = Refiner::new();
    });
    clockevents::lapic_refine::reference_stopped();
}

/// The HPET's main counter runs again (from whatever value it was given): the clock continues
/// on it.
pub fn hpet_started(hpet: &Hpet) {
    if is_the_clocks_hpet(hpet)
        && with_sources(|s| s.counter_restarted(&TIMEKEEPER, &Hardware, Clock::Hpet.name()))
    {
        log::debug!("the HPET counter runs again: the clock continues on it");
    }
}

/// The ACPI PM timer (3.579545 MHz, 24 or 32 bits, seen to count) as the `acpi_pm`
/// clocksource.
pub fn register_pm_timer(pm: PmTimer) -> Result<(), RegisterError> {
    PM_TIMER_PORT.store(pm.port, Ordering::Relaxed);
    let desc = SourceDesc {
        name: Clock::AcpiPm.name(),
        rating: PM_TIMER_RATING,
        hz: pm.frequency_hz(),
        bits: pm.bits,
        flags: SourceFlags::CONTINUOUS | SourceFlags::CPU_CONSISTENT,
        counter: PM_TIMER,
    };
    with_sources(|s| s.register(desc))?;
    log::info!(
        "acpi_pm: {} Hz, {}-bit, rating {PM_TIMER_RATING}, one counter for every CPU",
        desc.hz,
        desc.bits
    );
    Ok(())
}

/// `clocksource=NAME`: preferred while usable (applied at the next selection).
pub fn force(clock: Clock) {
    with_sources(|s| s.force(clock.name()));
    log::info!("clocksource={} asked for", clock.name());
}

/// After bring-up, once CPU 0 has a tick device: the housekeeping timer starts (every 0.5 s on
/// CPU 0), so narrow counters may be selected; the best source becomes current, and a
/// `clocksource=` that could not be honoured is recorded as a fallback.
pub fn init_late() {
    let uncertainty_ppm = tsc::calibration_spread_ppm();
    without_interrupts(|| {
        let mut c = TSC_CHECKS.lock();
        c.boot_hz = tsc::frequency_hz();
        c.uncertainty_ppm = uncertainty_ppm;
    });
    let period = core::time::Duration::from_nanos(watchdog::INTERVAL_NS);
    deferred::register(deferred::Kind::Housekeeping, housekeeping);
    match clockevents::Timer::periodic(0, clockevents::now() + period, period, raise_housekeeping) {
        Ok(t) => {
            t.detach();
            with_sources(|s| s.allow_narrow());
        }
        Err(e) => record_fallback(alloc::format!(
            "no timer for the clocksource's housekeeping on CPU 0 ({e}): wrapping counters (hpet, acpi_pm) are not used"
        )),
    }
    let (switch, problem) = with_sources(|s| (s.select(&TIMEKEEPER, &Hardware), s.forced_problem()));
    log_switch(switch.as_ref());
    if let Some(p) = problem {
        record_fallback(p);
    }
    log::info!("clocksource {}", current_name());
}

/// Every [`watchdog::INTERVAL_NS`] on CPU 0, in its timer interrupt: the housekeeping is
/// raised, to run at that interrupt's exit, outside it.
fn raise_housekeeping(_: &TimerEvent) {
    deferred::raise(0, deferred::Kind::Housekeeping);
}

/// Housekeeping passes run, and those that ran inside a hard interrupt or with interrupts off
/// (none should: it runs as CPU 0's deferred work), for the report.
static HOUSEKEEPING_RUNS: AtomicU64 = AtomicU64::new(0);
static HOUSEKEEPING_IN_HARD_IRQ: AtomicU64 = AtomicU64::new(0);

/// The housekeeping, on CPU 0 as its deferred work (interrupts enabled, outside the timer
/// interrupt that raised it, which ends a few instructions earlier): a wrapping counter's base
/// is moved to now, well within half its wrap (the 24-bit PM timer's half wrap is 2.3 s, the
/// period 0.5 s); the TSC's checks; the LAPIC timer's refinement. It takes the clocksources',
/// the TSC checks' and the LAPIC refinement's locks (each with interrupts off), which no
/// interrupt path takes, and posts nothing to other CPUs: a refinement is raised on each.
fn housekeeping() {
    let cpu = crate::arch::x86_64::smp::percpu::this_cpu();
    HOUSEKEEPING_RUNS.fetch_add(1, Ordering::Relaxed);
    if cpu.in_interrupt() || !x86_64::instructions::interrupts::are_enabled() {
        HOUSEKEEPING_IN_HARD_IRQ.fetch_add(1, Ordering::Relaxed);
    }
    with_sources(|s| s.rebase_narrow(&TIMEKEEPER, &Hardware));
    tsc_checks();
    if let Some((name, conversion, hz)) = reference() {
        clockevents::lapic_refine::sample(name.name(), &conversion, hz);
    }
}

/// The counter the TSC checks and the LAPIC timer's refinement measure against: the HPET, else
/// the ACPI PM timer (while stable): its name, conversion and frequency.
fn reference() -> Option<(Clock, kernel_time::clocksource::Conversion, u64)> {
    with_sources(|s| {
        REFERENCES
            .into_iter()
            .find_map(|c| s.get(c.name()).filter(|r| r.stable()).map(|r| (c, r.conversion(), r.hz)))
    })
}

/// What the TSC checks found, for the report.
struct TscChecks {
    warp_ns: u64,
    watchdog: Watchdog,
    watchdog_checks: u64,
    /// Largest disagreement the watchdog measured over one interval (signed, TSC minus
    /// reference), while the TSC was found stable.
    watchdog_max_deviation_ns: i64,
    refiner: Refiner,
    /// The frequency before the first refinement (the boot calibration's).
    boot_hz: u64,
    /// How far off the boot calibration may be (its windows' spread), until the first
    /// refinement: the watchdog allows that much before calling the TSC's rate a fault.
    uncertainty_ppm: u64,
    refined: Option<Refined>,
}

static TSC_CHECKS: Mutex<TscChecks> = Mutex::new(TscChecks {
    warp_ns: 0,
    watchdog: Watchdog::new(),
    watchdog_checks: 0,
    watchdog_max_deviation_ns: 0,
    refiner: Refiner::new(),
    boot_hz: 0,
    uncertainty_ppm: 0,
    refined: None,
});

/// The result of the sync check with AP `cpu`: the warp is recorded (a switch away from the
/// TSC then starts that far ahead, so that no CPU sees time go back); beyond the threshold, or
/// with too few handovers to judge, the TSC is marked unstable (the check fails closed).
pub fn tsc_warp(cpu: usize, r: SyncResult) {
    without_interrupts(|| {
        let mut c = TSC_CHECKS.lock();
        c.warp_ns = c.warp_ns.max(r.warp_ns);
    });
    with_sources(|s| s.record_warp(Clock::Tsc.name(), r.warp_ns));
    match r.verdict {
        SyncVerdict::Synchronized => {}
        SyncVerdict::Warped => tsc_unstable(alloc::format!(
            "TSCs unsynchronized: CPU {cpu} is {} ns off CPU 0 (threshold {} ns)",
            r.warp_ns,
            sync::SYNC_THRESHOLD_NS
        )),
        SyncVerdict::Unjudged => tsc_unchecked(
            cpu,
            &alloc::format!(
                "{} handovers, fewer than the {} needed to judge",
                r.handovers,
                sync::MIN_JUDGED_HANDOVERS
            ),
        ),
    }
}

/// The sync check with AP `cpu` could not judge its TSC (`why`): an unjudged TSC is not
/// trusted as synchronized, so it is marked unstable and the clocksource falls back.
pub fn tsc_unchecked(cpu: usize, why: &str) {
    tsc_unstable(alloc::format!("TSC sync with CPU {cpu} not judged ({why}): not trusted as synchronized"));
}

/// Marks the TSC unstable (once): it is no longer selected; if it was the clocksource, the
/// best other source takes over now (or, if that is a wrapping counter not yet allowed, when
/// the housekeeping starts).
fn tsc_unstable(reason: String) {
    let (newly, switch) = with_sources(|s| {
        let newly = s.mark_unstable(Clock::Tsc.name(), reason.clone());
        (newly, if newly { s.select(&TIMEKEEPER, &Hardware) } else { None })
    });
    if newly {
        log::warn!("tsc: marked unstable: {reason}");
        log_switch(switch.as_ref());
        record_fallback(alloc::format!("TSC unstable ({reason}): not used as the clocksource"));
    }
}

/// The TSC checks' turn, every 0.5 s on CPU 0, against the HPET, else the ACPI PM timer: one
/// sample brackets a TSC read between two reads of the reference (retried up to three times
/// when the bracket is too wide to trust); the watchdog compares the last interval on both,
/// and the refinement measures the TSC's frequency over the whole window since bring-up.
fn tsc_checks() {
    let Some((tsc_conv, name, wd)) = with_sources(|s| {
        let tsc = s.get(Clock::Tsc.name()).filter(|t| t.stable())?.conversion();
        let (clock, reference) =
            REFERENCES.into_iter().find_map(|c| s.get(c.name()).filter(|r| r.stable()).map(|r| (c, r)))?;
        Some((tsc, clock, reference.conversion()))
    }) else {
        return;
    };
    // Named from here on: for the log, and the crate's lookup.
    let name = name.name();
    let ref_hz = with_sources(|s| s.get(name).map_or(0, |r| r.hz));
    let (verdict, refined) = without_interrupts(|| {
        let mut c = TSC_CHECKS.lock();
        let sample = (0..3)
            .map(|_| {
                let wd_before = Hardware.read(wd.counter);
                // The TSC as the clocksource reads it (a constant `tsc_skew` cancels out).
                let cs = Hardware.read(tsc_conv.counter);
                Sample { wd_before, cs, wd_after: Hardware.read(wd.counter) }
            })
            .find(|s| s.paired(&wd).is_some());
        let Some(sample) = sample else {
            return (watchdog::Verdict::Skipped(watchdog::SkipReason::WideBracket), None);
        };
        let uncertainty_ppm = c.uncertainty_ppm;
        let verdict = c.watchdog.check_within(sample, &tsc_conv, &wd, uncertainty_ppm);
        if let watchdog::Verdict::Agrees { deviation_ns, .. } = verdict {
            c.watchdog_checks += 1;
            if deviation_ns.abs() > c.watchdog_max_deviation_ns.abs() {
                c.watchdog_max_deviation_ns = deviation_ns;
            }
        }
        let paired = sample.paired(&wd).expect("found above");
        let refined = c.refiner.sample(sample.cs, paired, &wd, ref_hz);
        if let Some(r) = refined {
            let previous = c.refined.map_or(c.boot_hz, |p| p.hz);
            c.refined = Some(r);
            // Refined against the reference itself: its rate is known now.
            c.uncertainty_ppm = 0;
            return (verdict, Some((r, previous)));
        }
        (verdict, None)
    });
    match verdict {
        watchdog::Verdict::Unstable { cs_ns, wd_ns } => {
            let uncertainty_ppm = without_interrupts(|| TSC_CHECKS.lock().uncertainty_ppm);
            return tsc_unstable(alloc::format!(
                "watchdog: over {wd_ns} ns of {name} the TSC counted {cs_ns} ns (threshold {} ns)",
                watchdog::threshold_ns_within(wd_ns, uncertainty_ppm)
            ));
        }
        watchdog::Verdict::Agrees { interval_ns, deviation_ns } => {
            log::trace!("watchdog: TSC within {deviation_ns} ns of {name} over {interval_ns} ns")
        }
        v => log::debug!("watchdog: {v:?}"),
    }
    if let Some((r, previous)) = refined {
        let boot_hz = without_interrupts(|| TSC_CHECKS.lock().boot_hz);
        tsc::set_frequency(r.hz, 0);
        let ppb = |a: u64, b: u64| refine::ppb(a, b);
        log::info!(
            "tsc: {} Hz, refined against {name} over {}.{:03} s (boot calibration off by {}, {} since the last value)",
            r.hz,
            r.window_ns / 1_000_000_000,
            r.window_ns / 1_000_000 % 1_000,
            Ppb(ppb(boot_hz, r.hz)),
            Ppb(ppb(previous.max(1), r.hz))
        );
        clockevents::lapic_refine::tsc_refined(r.hz, name, r.window_ns);
    }
}

/// Parts per billion shown as ppm with three decimals: `+12.345 ppm`.
pub struct Ppb(pub i64);

impl fmt::Display for Ppb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { '-' } else { '+' };
        let a = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:03} ppm", a / 1_000, a % 1_000)
    }
}

fn record_fallback(reason: String) {
    log::warn!("fallback: {reason}");
    without_interrupts(|| FALLBACKS.lock().push(reason));
}

/// A counter read raw, with its frequency and width: what the workload checks the clock
/// against (see `workload::oracle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawCounter {
    pub counter: CounterId,
    pub hz: u64,
    pub mask: u64,
}

/// The registered HPET main counter (its low 32 bits) and ACPI PM timer, and the plain TSC
/// (this CPU's, without fault injection), each with the frequency the clocksources know it by.
pub fn raw_counters() -> [Option<RawCounter>; 3] {
    with_sources(|s| {
        let raw = |clock: Clock, counter: CounterId| {
            s.get(clock.name()).map(|c| RawCounter { counter, hz: c.hz, mask: c.conversion().mask })
        };
        [
            raw(Clock::Hpet, HPET),
            raw(Clock::AcpiPm, PM_TIMER),
            raw(Clock::Tsc, TSC).map(|t| RawCounter { mask: u64::MAX, ..t }),
        ]
    })
}

/// Reads one of [`raw_counters`] (0 for one that is not registered).
#[inline]
pub fn read_raw(counter: CounterId) -> u64 {
    Hardware.read(counter)
}

/// The counter behind `now_ns` now (lock-free).
#[inline]
pub fn current_counter() -> CounterId {
    TIMEKEEPER.snapshot().conv.counter
}

/// Name of the clock behind `now_ns`.
pub fn current_name() -> &'static str {
    with_sources(|s| s.current_name())
}

/// The clocksource part of the report: the current source, every source, the switches, and
/// the fallbacks taken (which degrade an `ok` verdict).
pub fn fill_report(report: &mut TimerReport) {
    with_sources(|s| {
        report.clocksource = s.current_name().into();
        report.clocksources = s
            .sources()
            .map(|c| ClocksourceReport {
                name: c.name().into(),
                rating: c.desc.rating,
                hz: c.hz,
                stable: c.stable(),
            })
            .collect();
        report.clocksource_switches = s
            .switches()
            .iter()
            .map(|w| SwitchReport {
                from: w.from.into(),
                to: w.to.into(),
                reason: w.reason.clone(),
                at_ns: w.at_ns,
            })
            .collect();
    });
    report.tsc = without_interrupts(|| {
        let c = TSC_CHECKS.lock();
        TscReport {
            invariant: tsc::invariant(),
            warp_ns: c.warp_ns,
            refined_hz: c.refined.map(|r| r.hz),
            calibration_ppm: c.refined.map(|r| refine::ppm(c.boot_hz, r.hz)),
            calibration_ppb: c.refined.map(|r| refine::ppb(c.boot_hz, r.hz)),
            watchdog_checks: c.watchdog_checks,
            watchdog_max_deviation_ns: c.watchdog_max_deviation_ns,
        }
    });
    report.housekeeping = HousekeepingReport {
        runs: HOUSEKEEPING_RUNS.load(Ordering::Relaxed),
        in_hard_irq: HOUSEKEEPING_IN_HARD_IRQ.load(Ordering::Relaxed),
    };
    let fallbacks = without_interrupts(|| FALLBACKS.lock().clone());
    if !fallbacks.is_empty() && report.verdict == Verdict::Ok {
        report.verdict = Verdict::Degraded;
    }
    report.fallbacks.extend(fallbacks);
}

#[cfg(test)]
mod tests {
    use super::Clock;
    use crate::cmdline::ClocksourceChoice;

    #[test]
    fn clocksource_option_names_the_clock_it_chooses() {
        for choice in [ClocksourceChoice::Tsc, ClocksourceChoice::Hpet, ClocksourceChoice::AcpiPm] {
            assert_eq!(Clock::from(choice).name(), choice.name());
        }
    }
}
