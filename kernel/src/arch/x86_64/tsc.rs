//! The time-stamp counter: the first clocksource, calibrated against the PIT at boot so that the
//! log has real timestamps from its first line; the platform bring-up recalibrates it against
//! the HPET once that is up.

use super::pit;
use super::smp::percpu;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use spin::Once;

/// What changes in the TSC as a clock reads it, told to whoever keeps time on it (the
/// listener handed over by [`set_listener`]; nobody is told before that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TscChange {
    /// A better measurement of the frequency ([`set_frequency`]): time continues at it.
    Frequency(u64),
    /// The `tsc_rate_ppm` fault is injected: read the TSC through [`read_ordered_faulted`].
    RateFaulted,
    /// The `tsc_skew` fault is added in software: read the TSC through
    /// [`read_ordered_skewed`] (or [`read_ordered_faulted`] if the rate is faulted too).
    SkewedInSoftware,
}

static LISTENER: Once<fn(TscChange)> = Once::new();

/// Hands the TSC the function it tells its changes to (the clocksource's). The first call wins.
pub fn set_listener(listener: fn(TscChange)) {
    LISTENER.call_once(|| listener);
}

fn tell(change: TscChange) {
    if let Some(listener) = LISTENER.get() {
        listener(change);
    }
}

/// This CPU's TSC, for intervals measured on one CPU (a constant `tsc_skew` does not change
/// them: see [`read_skewed`] for readings compared across CPUs).
pub fn read() -> u64 {
    // SAFETY: RDTSC is available on every x86_64 CPU and has no side effects (CR4.TSD is clear,
    // and we run in ring 0 regardless).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// This CPU's TSC as it compares with other CPUs' readings, with the `tsc_skew` fault added
/// in software where the machine ignored the MSR write: what the clocksource (through
/// [`read_ordered_skewed`]) and the sync check read. Kept apart from [`read`] so that the
/// clock event programming paths, which read the TSC for CPU-local intervals, pay nothing.
pub fn read_skewed() -> u64 {
    let tsc = read();
    if SKEW_IN_SOFTWARE.load(Ordering::Relaxed) { tsc.wrapping_add(skew_here()) } else { tsc }
}

/// RDTSC after every earlier instruction has completed (LFENCE first, as Linux's
/// `rdtsc_ordered`): a clock read cannot be taken before the loads that precede it, such as the
/// timekeeper's sequence number.
#[inline(always)]
pub fn read_ordered() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: LFENCE and RDTSC have no side effects; both exist on every x86_64 CPU. (Inline
    // assembly rather than `_mm_lfence`, which is an SSE2 intrinsic this soft-float target
    // cannot inline.)
    unsafe {
        core::arch::asm!("lfence", "rdtsc", out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags))
    };
    (u64::from(high) << 32) | u64::from(low)
}

/// [`read_ordered`] with the `tsc_skew` fault added in software: the clocksource's read once
/// the fault is injected that way.
#[inline]
pub fn read_ordered_skewed() -> u64 {
    read_ordered().wrapping_add(skew_here())
}

/// [`read_ordered`] with the `tsc_rate_ppm` fault (and a software `tsc_skew`) applied: the
/// clocksource's read once the rate fault is injected.
#[inline]
pub fn read_ordered_faulted() -> u64 {
    let tsc = with_rate_fault(read_ordered());
    if SKEW_IN_SOFTWARE.load(Ordering::Relaxed) { tsc.wrapping_add(skew_here()) } else { tsc }
}

/// `tsc_rate_ppm=N`: the TSC's readings as the clocksource sees them run N ppm fast (or slow,
/// N < 0) from the moment the fault was injected (`RATE_BASE`); 0: no fault.
static RATE_PPM: AtomicI64 = AtomicI64::new(0);
static RATE_BASE: AtomicU64 = AtomicU64::new(0);

/// `raw` as a TSC running `RATE_PPM` off its rate since `RATE_BASE` reads: continuous at the
/// base, monotonic (|N| < 10^6: the added term moves by at most one cycle per cycle).
fn with_rate_fault(raw: u64) -> u64 {
    let ppm = RATE_PPM.load(Ordering::Relaxed);
    // Signed: another CPU's reading may be a few cycles behind the base.
    let elapsed = raw.wrapping_sub(RATE_BASE.load(Ordering::Relaxed)) as i64;
    let extra = i128::from(elapsed) * i128::from(ppm) / 1_000_000;
    raw.wrapping_add(extra as i64 as u64)
}

/// Whether the `tsc_rate_ppm` fault is injected.
pub fn rate_faulted() -> bool {
    RATE_PPM.load(Ordering::Relaxed) != 0
}

/// Fault injection (`tsc_rate_ppm=N`), once the TSC is calibrated: from now on the TSC as the
/// clocksource and its watchdog read it runs N ppm off the rate it was calibrated at, as a TSC
/// whose rate changed with the CPU's P-state would. Added in software, below the clocksource
/// layer, for every CPU alike (their TSCs stay in step); CPU-local intervals (calibration,
/// programming an event) read the plain TSC.
pub fn configure_rate(ppm: i64) {
    RATE_BASE.store(read_ordered(), Ordering::Relaxed);
    RATE_PPM.store(ppm, Ordering::Release);
    tell(TscChange::RateFaulted);
    log::warn!(
        "tsc_rate_ppm: the TSC as the clocksource reads it now runs {ppm} ppm off its calibrated rate"
    );
}

/// IA32_TIME_STAMP_COUNTER (Intel SDM vol. 4 table 2-2, MSR 0x10): writable, on hardware that
/// honours it.
const IA32_TIME_STAMP_COUNTER: u32 = 0x10;

/// `tsc_skew=CPU:NS`: the CPU whose TSC leads (`usize::MAX`: none) and by how many cycles.
static SKEW_CPU: AtomicUsize = AtomicUsize::new(usize::MAX);
static SKEW_CYCLES: AtomicU64 = AtomicU64::new(0);
/// The machine ignored the MSR write: the skew is added to that CPU's reads in software.
static SKEW_IN_SOFTWARE: AtomicBool = AtomicBool::new(false);

/// This CPU's index; before the per-CPU state exists only the boot CPU runs.
#[inline(always)]
fn this_index() -> usize {
    if percpu::ready() { percpu::this_cpu().index } else { 0 }
}

#[inline(always)]
fn skew_here() -> u64 {
    if this_index() == SKEW_CPU.load(Ordering::Relaxed) { SKEW_CYCLES.load(Ordering::Relaxed) } else { 0 }
}

/// Fault injection (`tsc_skew=CPU:NS`): CPU `cpu`'s TSC is to lead by `ns`; applied by that CPU
/// itself ([`apply_skew`]: the boot CPU now if it is the one, an AP on its way online).
pub fn configure_skew(cpu: usize, ns: u64) {
    let cycles = (u128::from(frequency_hz()) * u128::from(ns) / 1_000_000_000) as u64;
    SKEW_CYCLES.store(cycles, Ordering::Relaxed);
    SKEW_CPU.store(cpu, Ordering::Release);
    apply_skew();
}

/// Makes this CPU's TSC lead by the configured skew if it is the CPU `tsc_skew` names: by
/// writing IA32_TIME_STAMP_COUNTER where the machine honours it; QEMU's TCG ignores that write
/// (and IA32_TSC_ADJUST: both read back 0, RDTSC does not move), so then the skew is added to
/// this CPU's TSC readings that are compared across CPUs ([`read_skewed`]: the clocksource's
/// and the sync check's), below the clocksource layer, and everything above it sees a skewed
/// TSC.
pub fn apply_skew() {
    let cpu = this_index();
    if SKEW_CPU.load(Ordering::Acquire) != cpu {
        return;
    }
    let cycles = SKEW_CYCLES.load(Ordering::Relaxed);
    let before = read();
    // SAFETY: writing the TSC changes only what RDTSC returns on this CPU, which is the fault
    // being injected; the MSR exists on every x86_64 CPU.
    unsafe { x86_64::registers::model_specific::Msr::new(IA32_TIME_STAMP_COUNTER).write(before + cycles) };
    let moved = read().wrapping_sub(before);
    if moved >= cycles / 2 {
        log::warn!(
            "tsc_skew: CPU {cpu}'s TSC made to lead by {cycles} cycles (IA32_TIME_STAMP_COUNTER written)"
        );
        return;
    }
    SKEW_IN_SOFTWARE.store(true, Ordering::Release);
    tell(TscChange::SkewedInSoftware);
    log::warn!(
        "tsc_skew: this machine ignores IA32_TIME_STAMP_COUNTER writes (RDTSC moved {moved} cycles): CPU {cpu}'s TSC reads lead by {cycles} cycles, added in software"
    );
}

/// Length of one calibration window in PIT ticks (10 ms).
const WINDOW_PIT_TICKS: u16 = (pit::PIT_HZ / 100) as u16;
const WINDOWS: usize = 3;
/// Gives up on a window after this many TSC cycles (10 s at 1 GHz): no PIT, or it does not run.
const WINDOW_LIMIT_CYCLES: u64 = 10_000_000_000;
/// What the TSC is assumed to run at when nothing could measure it.
const FALLBACK_HZ: u64 = 1_000_000_000;

/// How the TSC frequency was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calibration {
    /// Median of three 10 ms PIT windows; `spread_ppm` is (max - min) / median.
    Pit { spread_ppm: u64 },
    /// CPUID leaf 0x16's nominal base frequency, `hz`.
    Cpuid { hz: u64 },
    /// Nothing measured it: timestamps are in assumed units (`FALLBACK_HZ`).
    Assumed,
}

impl Calibration {
    /// The fallback this calibration is, if it is one (the PIT did not count).
    pub fn fallback(self) -> Option<EarlyFallback> {
        match self {
            Calibration::Pit { .. } => None,
            Calibration::Cpuid { hz } => Some(EarlyFallback::FromCpuid { hz }),
            Calibration::Assumed => Some(EarlyFallback::Assumed { hz: FALLBACK_HZ }),
        }
    }
}

/// Why the boot-time TSC frequency is not a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyFallback {
    /// The PIT did not count; CPUID leaf 0x16 gave the nominal frequency.
    FromCpuid { hz: u64 },
    /// The PIT did not count and CPUID has no leaf 0x16: a frequency was assumed.
    Assumed { hz: u64 },
}

impl fmt::Display for EarlyFallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EarlyFallback::FromCpuid { hz } => write!(
                f,
                "the PIT did not count at boot: TSC frequency {} MHz taken from CPUID leaf 0x16, not measured",
                hz / 1_000_000
            ),
            EarlyFallback::Assumed { hz } => write!(
                f,
                "the PIT did not count at boot and CPUID has no leaf 0x16: TSC assumed to run at {} MHz, \
                 early timestamps are not ns",
                hz / 1_000_000
            ),
        }
    }
}

/// The TSC frequency in use (the clocksource's conversion follows it).
static HZ: AtomicU64 = AtomicU64::new(0);
/// How far off the frequency may be: the spread of the windows it was measured over, in ppm
/// (0: not measured, e.g. from CPUID).
static SPREAD_PPM: AtomicU64 = AtomicU64::new(0);
static CALIBRATION: spin::Once<Calibration> = spin::Once::new();

/// Cycles the TSC advances during one PIT window, or `None` if the PIT never expired.
fn measure_window() -> Option<u64> {
    pit::start_channel2(WINDOW_PIT_TICKS);
    let start = read();
    while !pit::channel2_expired() {
        if read() - start > WINDOW_LIMIT_CYCLES {
            return None;
        }
        core::hint::spin_loop();
    }
    Some(read() - start)
}

/// CPUID 0x80000007 EDX bit 8, "Invariant TSC" (Intel SDM vol. 3 17.17.1): the TSC runs at a
/// constant rate in every P-, C- and T-state. QEMU's TCG never offers it (`-cpu max,+invtsc`
/// is refused: "TCG doesn't support requested feature").
pub fn invariant() -> bool {
    const LEAF: u32 = 0x8000_0007;
    const INVARIANT_TSC: u32 = 1 << 8;
    core::arch::x86_64::__cpuid(0x8000_0000).eax >= LEAF
        && core::arch::x86_64::__cpuid(LEAF).edx & INVARIANT_TSC != 0
}

/// What CPUID says of the TSC, for the log: (RDTSCP, IA32_TSC_ADJUST, TSC-deadline timer).
pub fn cpuid_flags() -> (bool, bool, bool) {
    use core::arch::x86_64::{__cpuid, __cpuid_count};
    let max_ext = __cpuid(0x8000_0000).eax;
    let rdtscp = max_ext >= 0x8000_0001 && __cpuid(0x8000_0001).edx & (1 << 27) != 0;
    let tsc_adjust = __cpuid(0).eax >= 7 && __cpuid_count(7, 0).ebx & (1 << 1) != 0;
    let deadline = __cpuid(1).ecx & (1 << 24) != 0;
    (rdtscp, tsc_adjust, deadline)
}

fn cpuid_base_hz() -> Option<u64> {
    let max_leaf = core::arch::x86_64::__cpuid(0).eax;
    if max_leaf < 0x16 {
        return None;
    }
    let mhz = core::arch::x86_64::__cpuid(0x16).eax & 0xffff;
    (mhz != 0).then_some(u64::from(mhz) * 1_000_000)
}

/// Measures the TSC frequency (the time room then installs the TSC as the first clocksource,
/// whose origin, 0 ns, is then).
pub fn init_early() {
    let mut samples = [0u64; WINDOWS];
    let mut ok = true;
    for s in samples.iter_mut() {
        match measure_window() {
            Some(cycles) => *s = cycles,
            None => {
                ok = false;
                break;
            }
        }
    }
    let (hz, calibration) = if ok {
        samples.sort_unstable();
        let median = samples[WINDOWS / 2];
        let spread_ppm = (samples[WINDOWS - 1] - samples[0]) * 1_000_000 / median.max(1);
        (median * pit::PIT_HZ / u64::from(WINDOW_PIT_TICKS), Calibration::Pit { spread_ppm })
    } else if let Some(hz) = cpuid_base_hz() {
        (hz, Calibration::Cpuid { hz })
    } else {
        (FALLBACK_HZ, Calibration::Assumed)
    };
    HZ.store(hz, Ordering::Relaxed);
    if let Calibration::Pit { spread_ppm } = calibration {
        SPREAD_PPM.store(spread_ppm, Ordering::Relaxed);
    }
    CALIBRATION.call_once(|| calibration);
}

/// Changes the frequency (after a better calibration, whose windows spread `spread_ppm`).
/// Time continues from the current reading, at the new rate.
pub fn set_frequency(hz: u64, spread_ppm: u64) {
    HZ.store(hz, Ordering::Relaxed);
    SPREAD_PPM.store(spread_ppm, Ordering::Relaxed);
    tell(TscChange::Frequency(hz));
}

/// How far off the last calibration may be: its windows' spread, in ppm.
pub fn calibration_spread_ppm() -> u64 {
    SPREAD_PPM.load(Ordering::Relaxed)
}

pub fn frequency_hz() -> u64 {
    HZ.load(Ordering::Relaxed)
}

/// How `init_early` found the frequency (`None` before it ran).
pub fn calibration() -> Option<Calibration> {
    CALIBRATION.get().copied()
}

/// The fallback the boot-time calibration took, if any, for the platform to record.
pub fn early_fallback() -> Option<EarlyFallback> {
    calibration().and_then(Calibration::fallback)
}

/// One log line saying how the TSC frequency was found and how sure it is. A fallback (no PIT)
/// is only described here; the platform bring-up records it (`early_fallback`) with its warning.
pub fn log_calibration() {
    let hz = frequency_hz();
    match CALIBRATION.get() {
        Some(Calibration::Pit { spread_ppm }) => log::info!(
            "TSC {}.{:03} MHz, calibrated against the PIT ({WINDOWS} x 10 ms windows, spread {spread_ppm} ppm)",
            hz / 1_000_000,
            hz / 1_000 % 1_000
        ),
        Some(Calibration::Cpuid { .. }) => {
            log::info!("TSC {} MHz from CPUID 0x16 (the PIT did not count; not measured)", hz / 1_000_000)
        }
        _ => log::info!("TSC frequency unknown (no PIT, no CPUID 0x16): assuming {} MHz", hz / 1_000_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn only_an_unmeasured_frequency_is_a_fallback() {
        assert_eq!(Calibration::Pit { spread_ppm: 40 }.fallback(), None);
        let cpuid = Calibration::Cpuid { hz: 2_100_000_000 }.fallback().unwrap();
        assert_eq!(cpuid, EarlyFallback::FromCpuid { hz: 2_100_000_000 });
        assert!(cpuid.to_string().contains("2100 MHz taken from CPUID leaf 0x16"));
        let assumed = Calibration::Assumed.fallback().unwrap();
        assert!(assumed.to_string().contains("assumed to run at 1000 MHz"), "{assumed}");
    }
}
