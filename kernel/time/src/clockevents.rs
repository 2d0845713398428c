//! Clock event devices: hardware that can interrupt a CPU at a chosen time, described the way
//! Linux's `clockevents.c` describes it (features, rating, the CPUs it can serve, a ns -> ticks
//! conversion, minimum and maximum delta) and driven through a small state machine.
//!
//! Drivers (`arch/x86_64`) implement [`EventDriver`] and hand a [`DeviceSpec`] to the layer; the
//! layer decides what each device is used for (see `tick.rs`). A driver never decides policy.

use alloc::string::String;
use bitflags::bitflags;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

use super::clocksource::NS_PER_S;

bitflags! {
    /// What a device can do.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Features: u32 {
        /// Interrupts once at a programmed time.
        const ONESHOT = 1 << 0;
        /// Interrupts at a fixed period by itself.
        const PERIODIC = 1 << 1;
        /// Stops counting in deep C-states (Linux's C3STOP): a CPU using it needs a broadcast
        /// device standing by before it sleeps deeply.
        const STOPS_IN_DEEP_IDLE = 1 << 2;
        /// Belongs to one CPU and interrupts only that CPU.
        const PER_CPU = 1 << 3;
        /// Its interrupt can be moved to another CPU while in use (Linux's
        /// CLOCK_EVT_FEAT_DYNIRQ): as the broadcast device, it is aimed at the CPU whose
        /// deadline is next ([`EventDriver::retarget`]), which then wakes without an IPI.
        const DYNIRQ = 1 << 4;
        /// Not hardware: the broadcast's timer kept on one CPU's own tick (Linux's
        /// `ce_broadcast_hrtimer`, CLOCK_EVT_FEAT_HRTIMER). Programming it arms that timer on
        /// the CPU that programs it, which then serves the broadcast and stays out of deep idle
        /// while it does ([`hrtimer_broadcast_spec`], [`crate::broadcast`]).
        const HRTIMER = 1 << 5;
    }
}

/// The broadcast served by one CPU's own timer, as a device ([`Features::HRTIMER`]): rating 0,
/// so that any hardware broadcast device (an HPET comparator, the PIT) is chosen before it;
/// counted in ns; for `cpus`, the CPUs it may serve. Its driver is [`HrtimerBroadcast`].
pub fn hrtimer_broadcast_spec(cpus: CpuSet) -> DeviceSpec {
    DeviceSpec {
        name: "bc_hrtimer".into(),
        features: Features::ONESHOT | Features::HRTIMER,
        rating: 0,
        cpus,
        frequency_hz: NS_PER_S,
        min_delta_ticks: 1,
        max_delta_ticks: MAX_PROGRAMMED_DELTA_NS,
    }
}

/// The driver of the [`hrtimer_broadcast_spec`] device: no hardware. What it is programmed for
/// the layer keeps (the device's next event), and the serving CPU's tick arms its own device
/// for it ([`crate::tick::CpuTick`]), so every call here does nothing.
#[derive(Debug)]
pub struct HrtimerBroadcast;

impl EventDriver for HrtimerBroadcast {
    fn switch_state(&self, _state: DriverState) {}
    fn set_next_event(&self, _delta_ticks: u64) -> Result<(), EventPassed> {
        Ok(())
    }
}

/// Most CPUs the time layer keeps track of (CPU indices 0..MAX_CPUS): x2APIC machines reach
/// 255 CPUs without interrupt remapping.
pub const MAX_CPUS: usize = 256;
const CPU_WORDS: usize = MAX_CPUS / 64;

/// A set of CPU indices below [`MAX_CPUS`], one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuSet([u64; CPU_WORDS]);

impl CpuSet {
    /// No CPU.
    pub const EMPTY: CpuSet = CpuSet([0; CPU_WORDS]);

    /// CPUs 0..64 as the bits of `bits` (bit n = CPU n).
    pub fn from_bits(bits: u64) -> CpuSet {
        let mut set = CpuSet::EMPTY;
        set.0[0] = bits;
        set
    }
    /// CPU `cpu` alone (an index beyond [`MAX_CPUS`] is a caller's bug: it panics).
    pub fn single(cpu: usize) -> CpuSet {
        let mut set = CpuSet::EMPTY;
        set.insert(cpu);
        set
    }
    /// CPUs 0..n (all of them for n >= MAX_CPUS).
    pub fn first(n: usize) -> CpuSet {
        let mut set = CpuSet::EMPTY;
        for (i, w) in set.0.iter_mut().enumerate() {
            let below = n.saturating_sub(i * 64).min(64);
            *w = if below == 64 { u64::MAX } else { (1u64 << below) - 1 };
        }
        set
    }
    /// Whether `cpu` is in the set (never for an index beyond [`MAX_CPUS`]).
    #[inline]
    pub fn contains(self, cpu: usize) -> bool {
        cpu < MAX_CPUS && self.0[cpu / 64] & (1 << (cpu % 64)) != 0
    }
    /// Adds `cpu` (an index beyond [`MAX_CPUS`] is a caller's bug: it panics).
    pub fn insert(&mut self, cpu: usize) {
        assert!(cpu < MAX_CPUS, "CPU {cpu} beyond the {MAX_CPUS} a CpuSet holds");
        self.0[cpu / 64] |= 1 << (cpu % 64);
    }
    /// Removes `cpu` (nothing for a CPU not in the set).
    pub fn remove(&mut self, cpu: usize) {
        if cpu < MAX_CPUS {
            self.0[cpu / 64] &= !(1 << (cpu % 64));
        }
    }
    /// Adds every CPU of `other`.
    pub fn insert_all(&mut self, other: CpuSet) {
        for (w, o) in self.0.iter_mut().zip(other.0) {
            *w |= o;
        }
    }
    /// Removes every CPU of `other`.
    pub fn remove_all(&mut self, other: CpuSet) {
        for (w, o) in self.0.iter_mut().zip(other.0) {
            *w &= !o;
        }
    }
    /// Whether the set holds no CPU.
    #[inline]
    pub fn is_empty(self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }
    /// How many CPUs the set holds.
    #[inline]
    pub fn len(self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
    /// The lowest CPU in the set.
    #[inline]
    pub fn first_cpu(self) -> Option<usize> {
        self.0.iter().enumerate().find(|(_, w)| **w != 0).map(|(i, w)| i * 64 + w.trailing_zeros() as usize)
    }
    /// The only CPU in the set, if it has exactly one.
    #[inline]
    pub fn only(self) -> Option<usize> {
        if self.len() == 1 { self.first_cpu() } else { None }
    }
    /// The CPUs in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..CPU_WORDS).flat_map(move |i| {
            let mut w = self.0[i];
            core::iter::from_fn(move || {
                (w != 0).then(|| {
                    let bit = w.trailing_zeros() as usize;
                    w &= w - 1;
                    i * 64 + bit
                })
            })
        })
    }
}

impl fmt::Display for CpuSet {
    /// The CPUs as ranges: `0-3, 8, 10-11`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut cpus = self.iter().peekable();
        let mut first = true;
        while let Some(start) = cpus.next() {
            let mut end = start;
            while cpus.peek() == Some(&(end + 1)) {
                end = cpus.next().expect("peeked");
            }
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            if end == start { write!(f, "{start}")? } else { write!(f, "{start}-{end}")? }
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// Index of a registered device (in registration order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub usize);

/// The device state machine (Linux's `clock_event_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Registered but not in use by anyone.
    Detached,
    /// In use, not interrupting.
    Shutdown,
    /// Interrupts at a fixed period by itself (hardware periodic mode).
    Periodic,
    /// Interrupts once at each programmed time.
    Oneshot,
    /// One-shot mode with nothing programmed (tickless idle with an empty queue).
    OneshotStopped,
}

impl State {
    #[inline]
    fn from_u8(value: u8) -> State {
        match value {
            0 => State::Detached,
            1 => State::Shutdown,
            2 => State::Periodic,
            3 => State::Oneshot,
            _ => State::OneshotStopped,
        }
    }

    /// Whether the layer may move a device from `self` to `next`. Only a shut-down device
    /// detaches or attaches; a stopped one-shot device only restarts or shuts down.
    #[inline]
    pub fn can_switch_to(self, next: State) -> bool {
        use State::*;
        match (self, next) {
            (a, b) if a == b => true,
            (Detached, Shutdown) | (Shutdown, Detached) => true,
            (Detached, _) | (_, Detached) => false,
            (_, Shutdown) => true,
            (Shutdown | Oneshot, Periodic) | (Shutdown | Periodic | OneshotStopped, Oneshot) => true,
            (Oneshot, OneshotStopped) => true,
            _ => false,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Detached => "detached",
            State::Shutdown => "shutdown",
            State::Periodic => "periodic",
            State::Oneshot => "oneshot",
            State::OneshotStopped => "oneshot-stopped",
        })
    }
}

/// What a driver is asked to do on a state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverState {
    /// Stop interrupting.
    Shutdown,
    /// Interrupt every `period_ticks` by itself.
    Periodic {
        /// The period, in device ticks.
        period_ticks: u64,
    },
    /// Interrupt once at each time [`EventDriver::set_next_event`] asks for.
    Oneshot,
    /// Stay in one-shot mode with nothing programmed.
    OneshotStopped,
}

/// The counter passed the programmed time while it was being written (Linux's -ETIME): the
/// event would fire only after a full counter wrap, so the layer must program it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPassed;

impl fmt::Display for EventPassed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the counter passed the event while it was programmed")
    }
}

impl core::error::Error for EventPassed {}

/// The hardware side of a clock event device: what a kernel implements for each device.
///
/// The driver only carries out what the layer asks; the layer decides who uses the device,
/// in which mode, and for which deadline. `set_next_event` must report [`EventPassed`] when
/// the counter may have passed the comparator while it was written (on an HPET: the counter
/// read after the write is already at or past the comparator), so that the layer retries at
/// the minimum delta and, after [`RETRIES_BEFORE_GROWING`] failures, grows the minimum delta:
///
/// ```
/// use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
/// use kernel_time::broadcast::Broadcast;
/// use kernel_time::clockevents::{
///     ClockEventDevice, CpuSet, DeviceSpec, DriverState, EventDriver, EventPassed, Features,
/// };
/// use kernel_time::tick::{CpuTick, DeviceId, Service, TickMode};
/// use spin::Mutex;
/// use std::sync::Arc;
///
/// /// A 1 MHz comparator whose counter runs past the first two writes.
/// struct Racy {
///     misses_left: AtomicU32,
///     delta_ticks: AtomicU64,
/// }
///
/// impl EventDriver for Racy {
///     fn switch_state(&self, _state: DriverState) {}
///     fn set_next_event(&self, delta_ticks: u64) -> Result<(), EventPassed> {
///         if self.misses_left.load(Ordering::Relaxed) > 0 {
///             self.misses_left.fetch_sub(1, Ordering::Relaxed);
///             return Err(EventPassed);
///         }
///         self.delta_ticks.store(delta_ticks, Ordering::Relaxed);
///         Ok(())
///     }
/// }
///
/// static RACY: Racy = Racy { misses_left: AtomicU32::new(2), delta_ticks: AtomicU64::new(0) };
///
/// let spec = DeviceSpec {
///     name: "racy".into(),
///     features: Features::ONESHOT,
///     rating: 50,
///     cpus: CpuSet::single(0),
///     frequency_hz: 1_000_000,
///     min_delta_ticks: 5,
///     max_delta_ticks: 0xffff_ffff,
/// };
/// // A device is programmed only through the tick of the CPU it serves (or the broadcast).
/// let device = Arc::new(ClockEventDevice::new(spec, &RACY));
/// let bc = Mutex::new(Broadcast::new());
/// let mut cpu0 = CpuTick::new(0, TickMode::Oneshot, 2_000, 4);
/// cpu0.assign(Service::Local(DeviceId(0)), Some(device.clone()), 2_000, &bc);
/// // A deadline already past (1 us, now 2 us) is programmed at the minimum delta, not
/// // dropped; the two passed writes are retried.
/// cpu0.arm(1_000, "late", 2_000, &bc).ok().expect("armed");
/// assert_eq!(cpu0.next_event_ns(), 1_000);
/// assert_eq!(RACY.delta_ticks.load(Ordering::Relaxed), 5);
/// assert_eq!(device.retries(), 2);
/// ```
pub trait EventDriver: Send + Sync {
    /// Puts the hardware in `state`; the layer asks only for changes [`State::can_switch_to`]
    /// allows, and only from the one party using the device at a time.
    fn switch_state(&self, state: DriverState);
    /// Interrupts `delta_ticks` device ticks from now (within the spec's min/max delta).
    fn set_next_event(&self, delta_ticks: u64) -> Result<(), EventPassed>;
    /// Interrupts at `at_ns` on the clocksource, which is `delta_ticks` after the layer's clock
    /// read `now_ns`. A driver whose counter is the clocksource's own may program the counter
    /// value at which the clock reads `at_ns` (at it or after it, never before); one that
    /// counts down from its programming may read the clock afresh and count only what is left
    /// of `delta_ticks` (see [`remaining_ticks`]): either way the event does not fire late by
    /// the instructions between the layer's clock read and the device's write. The default
    /// counts `delta_ticks` from now ([`set_next_event`](Self::set_next_event)).
    #[inline]
    fn set_next_event_at(&self, at_ns: u64, now_ns: u64, delta_ticks: u64) -> Result<(), EventPassed> {
        let _ = (at_ns, now_ns);
        self.set_next_event(delta_ticks)
    }
    /// Aims the interrupt at CPU `cpu` from now on (only for a [`Features::DYNIRQ`] device,
    /// only by its one user: the broadcast, under its lock); returns whether it moved. An
    /// interrupt already on its way may still land on the previous CPU. The default moves
    /// nothing.
    fn retarget(&self, cpu: usize) -> bool {
        let _ = cpu;
        false
    }
}

/// How a driver describes its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The name the layer logs and reports (`hpet2`, `lapic0`).
    pub name: String,
    /// What the device can do.
    pub features: Features,
    /// Higher is better (Linux: LAPIC 100, per-CPU HPET 110 in the 2007 patch, global HPET 90).
    pub rating: u32,
    /// The CPUs whose interrupts it can raise; a per-CPU device has exactly one.
    pub cpus: CpuSet,
    /// The rate its deltas count at, in Hz.
    pub frequency_hz: u64,
    /// Smallest delta the hardware honours, in its ticks.
    pub min_delta_ticks: u64,
    /// Largest delta the hardware honours, in its ticks.
    pub max_delta_ticks: u64,
}

/// A device that cannot wait this long is refused: it would interrupt thousands of times a
/// second just to wait for a later deadline (hardware offers seconds: HPET 21 s, LAPIC 34 s).
pub const MIN_USABLE_MAX_DELTA_NS: u64 = 1_000_000;

impl DeviceSpec {
    /// Why the layer cannot use a device so described, if it cannot.
    pub fn problem(&self) -> Option<&'static str> {
        if self.frequency_hz == 0 {
            return Some("its frequency is 0 Hz");
        }
        if !self.features.intersects(Features::ONESHOT | Features::PERIODIC) {
            return Some("it offers neither one-shot nor periodic mode");
        }
        if ticks_to_ns(self.max_delta_ticks, self.frequency_hz, false) < MIN_USABLE_MAX_DELTA_NS {
            return Some("its maximum delta is under 1 ms");
        }
        if ticks_to_ns(self.min_delta_ticks, self.frequency_hz, true) > MIN_DELTA_LIMIT_NS {
            return Some("its minimum delta is over 10 ms");
        }
        None
    }
}

/// The longest delta the layer programs a device for, whatever its hardware allows (Linux's
/// `clockevents_config` bounds its conversion at the same 600 s). The ns -> ticks conversion
/// gets its shift from the longest delta it must convert: the longer that is, the coarser the
/// conversion. Bounded here, [`NsToTicks`] keeps shift 32 (exact below 4.3 s) up to 7.1 MHz and
/// above that stays within 600 s / 2^63, 65 ns a second; unbounded, a maximum of 2^63 ticks
/// at 3.58 MHz left shift 8 and programmed every delta up to 9 % long, and `u64::MAX` ticks of
/// a 2.1 GHz TSC-deadline timer 43 % long. What it costs: a CPU whose next deadline is further
/// away than this wakes once every 10 minutes to program its device again.
pub const MAX_PROGRAMMED_DELTA_NS: u64 = 600 * NS_PER_S;

/// Fixed-point ns -> ticks conversion, rounding up: a device is never programmed to fire
/// before its deadline because of the conversion.
///
/// `ticks ~ ns * mult >> shift` with `mult` rounded up; the shift is the largest (at most 32)
/// for which `max_ns * mult` still fits in 64 bits, so no delta up to the device's maximum
/// overflows. The estimate is then checked against the exact product `ns * hz` (one 128-bit
/// multiply, no division) and raised by the one tick it can be short, so the result is never
/// below `ceil(ns * hz / 10^9)` and above it by at most `ns >> shift` ticks (the rounded-up
/// mult's error): exact below 2^shift ns (4.3 s at shift 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsToTicks {
    /// Ticks per ns, scaled by `2^shift`, rounded up.
    pub mult: u64,
    /// The scale of `mult`: at most 32.
    pub shift: u32,
    /// The device's frequency, for the exact check of each estimate.
    pub frequency_hz: u64,
    /// The largest delta it converts: the `max_ns` asked for, or less where even shift 0
    /// cannot keep `max_ns * mult` in 64 bits (above 1 GHz, deltas near `u64::MAX` ns).
    pub max_ns: u64,
}

impl NsToTicks {
    /// For a device of `frequency_hz` whose deltas never exceed `max_ns`.
    pub fn new(frequency_hz: u64, max_ns: u64) -> NsToTicks {
        assert!(frequency_hz > 0, "a device of 0 Hz cannot be programmed");
        let mult_for = |shift: u32| (u128::from(frequency_hz) << shift).div_ceil(u128::from(NS_PER_S));
        let mut shift = 32;
        while shift > 0 && mult_for(shift) * u128::from(max_ns.max(1)) > u128::from(u64::MAX) {
            shift -= 1;
        }
        let mult = u64::try_from(mult_for(shift)).expect("frequency below 2^64 Hz");
        NsToTicks { mult, shift, frequency_hz, max_ns: max_ns.min(u64::MAX / mult) }
    }

    /// Ticks for `ns` (which must not exceed [`NsToTicks::max_ns`]).
    #[inline]
    pub fn ticks(self, ns: u64) -> u64 {
        let estimate = ns.checked_mul(self.mult).expect("delta beyond the device's maximum") >> self.shift;
        let exact = u128::from(ns) * u128::from(self.frequency_hz);
        if u128::from(estimate) * u128::from(NS_PER_S) >= exact { estimate } else { estimate + 1 }
    }
}

/// What is left of `delta_ticks` (the layer's conversion of `at_ns - now_ns`) at a fresher
/// clock read `fresh_ns`: the same conversion scaled to `at_ns - fresh_ns`, rounded up, so a
/// device counting it from now fires no earlier than the layer's own conversion of the time
/// left would (0 once `at_ns` has passed). For a count-down device's
/// [`EventDriver::set_next_event_at`].
pub fn remaining_ticks(at_ns: u64, now_ns: u64, fresh_ns: u64, delta_ticks: u64) -> u64 {
    let (whole, left) = (at_ns.saturating_sub(now_ns), at_ns.saturating_sub(fresh_ns));
    if left >= whole {
        return delta_ticks;
    }
    if left == 0 {
        return 0;
    }
    match delta_ticks.checked_mul(left) {
        Some(p) => p.div_ceil(whole),
        None => u64::try_from((u128::from(delta_ticks) * u128::from(left)).div_ceil(u128::from(whole)))
            .unwrap_or(delta_ticks),
    }
}

/// Nanoseconds in `ticks` of a `frequency_hz` counter, rounded up (`up`) or down.
pub fn ticks_to_ns(ticks: u64, frequency_hz: u64, up: bool) -> u64 {
    let num = u128::from(ticks) * u128::from(NS_PER_S);
    let den = u128::from(frequency_hz);
    let ns = if up { num.div_ceil(den) } else { num / den };
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// After this many failed attempts at the minimum delta, the minimum grows (as in Linux).
pub const RETRIES_BEFORE_GROWING: u32 = 3;
/// The first grown minimum delta; later ones grow by half each time (Linux: 5 us, x1.5).
pub const FIRST_GROWN_MIN_DELTA_NS: u64 = 5_000;
/// A device whose minimum delta would have to exceed this is given up on.
pub const MIN_DELTA_LIMIT_NS: u64 = 10_000_000;

/// Why an event could not be programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramError {
    /// The device is not in one-shot mode.
    NotOneshot(State),
    /// Even at the largest minimum delta the counter kept passing the comparator.
    GaveUp {
        /// The minimum delta it gave up at.
        min_delta_ns: u64,
    },
}

impl fmt::Display for ProgramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProgramError::NotOneshot(s) => write!(f, "device is {s}, not oneshot"),
            ProgramError::GaveUp { min_delta_ns } => {
                write!(f, "the counter passed every deadline up to a minimum delta of {min_delta_ns} ns")
            }
        }
    }
}

impl core::error::Error for ProgramError {}

/// Why a device's frequency could not be changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrequencyError {
    /// A frequency of 0 Hz converts nothing.
    Zero,
    /// So high that the device's maximum delta no longer converts without overflow.
    TooHigh {
        /// The frequency refused.
        hz: u64,
    },
}

impl fmt::Display for FrequencyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrequencyError::Zero => f.write_str("a frequency of 0 Hz"),
            FrequencyError::TooHigh { hz } => {
                write!(f, "{hz} Hz: the device's maximum delta would overflow the conversion")
            }
        }
    }
}

impl core::error::Error for FrequencyError {}

/// An illegal state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IllegalTransition {
    /// The state the device was in.
    pub from: State,
    /// The state it was asked to enter.
    pub to: State,
}

impl fmt::Display for IllegalTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "illegal clock event state change {} -> {}", self.from, self.to)
    }
}

impl core::error::Error for IllegalTransition {}

/// A registered device: its description, conversion, state and statistics.
///
/// Shared (the registry, the CPU it serves or the broadcast, the report), but used by one
/// party at a time: a local device only by its CPU, the broadcast device only under the
/// broadcast lock. Its changing fields are atomics so that sharing needs no lock; the user's
/// loads and stores are plain moves on x86.
pub struct ClockEventDevice {
    /// How its driver described it.
    pub spec: DeviceSpec,
    driver: &'static dyn EventDriver,
    /// The ns -> ticks conversion in use ([`NsToTicks`]'s fields), in atomics so that a better
    /// measurement of the frequency can replace it ([`set_frequency`](Self::set_frequency)).
    /// Written and read by the device's one user, so the fields never mix two conversions.
    mult: AtomicU64,
    shift: AtomicU32,
    frequency_hz: AtomicU64,
    conversion_max_ns: AtomicU64,
    /// The longest delta the layer programs, in ns: the hardware's maximum, at most
    /// [`MAX_PROGRAMMED_DELTA_NS`] and what the conversion can take.
    pub max_delta_ns: u64,
    /// The hardware's limits in ticks, the maximum within [`MAX_PROGRAMMED_DELTA_NS`]; a
    /// converted delta is clamped to them.
    min_delta_ticks: u64,
    max_delta_ticks: u64,
    min_delta_ns: AtomicU64,
    state: AtomicU8,
    /// The time the device is programmed for (`u64::MAX`: nothing programmed).
    next_event_ns: AtomicU64,
    /// Events programmed, retries after a passed comparator, minimum-delta increases.
    programmed: AtomicU64,
    retries: AtomicU64,
    min_delta_increases: AtomicU32,
    /// Taken out of service (self-test or programming failure); never selected again.
    failed: AtomicBool,
    /// Why the layer refused the device at registration, if it did.
    pub refused: Option<&'static str>,
}

impl fmt::Debug for ClockEventDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClockEventDevice")
            .field("name", &self.spec.name)
            .field("state", &self.state())
            .field("next_event_ns", &self.next_event_ns())
            .finish()
    }
}

/// Adds one to a counter only its user writes (a load and a store, no locked instruction).
fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

impl ClockEventDevice {
    /// A device as `spec` describes it; one with a [`DeviceSpec::problem`] starts out failed.
    pub fn new(mut spec: DeviceSpec, driver: &'static dyn EventDriver) -> ClockEventDevice {
        let problem = spec.problem();
        spec.frequency_hz = spec.frequency_hz.max(1);
        let min_ticks = spec.min_delta_ticks.max(1);
        // The ticks of the longest programmed delta, rounded down so that the maximum delta in
        // ns (rounded down again) converts back to no more than this. Not below the minimum:
        // a device whose minimum is so long is refused anyway.
        let bounded_ticks =
            u128::from(MAX_PROGRAMMED_DELTA_NS) * u128::from(spec.frequency_hz) / u128::from(NS_PER_S);
        let bounded_ticks = u64::try_from(bounded_ticks).unwrap_or(u64::MAX);
        let max_ticks = spec.max_delta_ticks.min(bounded_ticks).max(min_ticks);
        let min_delta_ns = ticks_to_ns(min_ticks, spec.frequency_hz, true);
        // The minimum rounds up and the maximum down, so with min = max ticks they would cross;
        // and the conversion caps the maximum where ns * mult would overflow.
        let wanted_max_ns = ticks_to_ns(max_ticks, spec.frequency_hz, false).max(min_delta_ns);
        let conversion = NsToTicks::new(spec.frequency_hz, wanted_max_ns.max(MIN_DELTA_LIMIT_NS));
        let max_delta_ns = wanted_max_ns.min(conversion.max_ns);
        ClockEventDevice {
            min_delta_ns: AtomicU64::new(min_delta_ns.min(max_delta_ns)),
            max_delta_ns,
            min_delta_ticks: min_ticks,
            max_delta_ticks: max_ticks,
            mult: AtomicU64::new(conversion.mult),
            shift: AtomicU32::new(conversion.shift),
            frequency_hz: AtomicU64::new(conversion.frequency_hz),
            conversion_max_ns: AtomicU64::new(conversion.max_ns),
            spec,
            driver,
            state: AtomicU8::new(State::Detached as u8),
            next_event_ns: AtomicU64::new(u64::MAX),
            programmed: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            min_delta_increases: AtomicU32::new(0),
            failed: AtomicBool::new(problem.is_some()),
            refused: problem,
        }
    }

    /// Its current state.
    #[inline]
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }
    /// The hardware side, for measurements that program it directly (then `resync`).
    pub fn driver(&self) -> &'static dyn EventDriver {
        self.driver
    }
    /// The ns -> ticks conversion in use.
    #[inline]
    pub fn conversion(&self) -> NsToTicks {
        NsToTicks {
            mult: self.mult.load(Ordering::Relaxed),
            shift: self.shift.load(Ordering::Relaxed),
            frequency_hz: self.frequency_hz.load(Ordering::Relaxed),
            max_ns: self.conversion_max_ns.load(Ordering::Relaxed),
        }
    }
    /// The frequency the conversion in use assumes (the spec's, until [`set_frequency`](Self::set_frequency)).
    #[inline]
    pub fn frequency_hz(&self) -> u64 {
        self.frequency_hz.load(Ordering::Relaxed)
    }

    /// A better measurement of the device's frequency: the conversion for every later
    /// programming. Called by the device's user (its CPU for a local device), which must then
    /// program what is pending again (`CpuTick::set_device_frequency` does both): an event
    /// converted with a factor that was too high fires late, one too low fires early, which
    /// the tick tolerates (an interrupt before the earliest deadline runs nothing and
    /// programs the device again) but should not rely on. The limits stay as registered: a
    /// delta is clamped to the hardware's ticks and to the same ns bounds. Returns the
    /// conversion replaced.
    pub fn set_frequency(&self, hz: u64) -> Result<NsToTicks, FrequencyError> {
        if hz == 0 {
            return Err(FrequencyError::Zero);
        }
        let new = NsToTicks::new(hz, self.max_delta_ns.max(MIN_DELTA_LIMIT_NS));
        if new.max_ns < self.max_delta_ns {
            return Err(FrequencyError::TooHigh { hz });
        }
        let old = self.conversion();
        self.mult.store(new.mult, Ordering::Relaxed);
        self.shift.store(new.shift, Ordering::Relaxed);
        self.frequency_hz.store(new.frequency_hz, Ordering::Relaxed);
        self.conversion_max_ns.store(new.max_ns, Ordering::Relaxed);
        Ok(old)
    }
    /// Aims its interrupt at `cpu` if it can ([`Features::DYNIRQ`]); whether it moved.
    pub fn retarget(&self, cpu: usize) -> bool {
        self.spec.features.contains(Features::DYNIRQ) && self.driver.retarget(cpu)
    }
    /// Whether it belongs to one CPU ([`Features::PER_CPU`]).
    #[inline]
    pub fn is_per_cpu(&self) -> bool {
        self.spec.features.contains(Features::PER_CPU)
    }
    /// The current minimum delta (grown if the counter kept passing its comparators).
    #[inline]
    pub fn min_delta_ns(&self) -> u64 {
        self.min_delta_ns.load(Ordering::Relaxed)
    }
    /// The time the device is programmed for (`u64::MAX`: nothing programmed).
    #[inline]
    pub fn next_event_ns(&self) -> u64 {
        self.next_event_ns.load(Ordering::Relaxed)
    }
    /// Forgets what the device is programmed for: its event was consumed, or something
    /// programmed the hardware behind the layer's back (then [`resync`](Self::resync)).
    #[inline]
    pub fn forget_event(&self) {
        self.next_event_ns.store(u64::MAX, Ordering::Relaxed);
    }
    /// Something programmed the hardware behind the layer's back (a measurement): forgets
    /// what the device is programmed for and, if it is stopped, stops the hardware again, so
    /// that what was programmed does not interrupt for nothing. Its user then programs what
    /// it needs.
    pub fn resync(&self) {
        self.forget_event();
        if self.state() == State::OneshotStopped {
            self.driver.switch_state(DriverState::OneshotStopped);
        }
    }
    /// Events programmed so far.
    pub fn programmed(&self) -> u64 {
        self.programmed.load(Ordering::Relaxed)
    }
    /// Programming attempts repeated because the counter had passed the comparator.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
    /// How often the minimum delta grew.
    pub fn min_delta_increases(&self) -> u32 {
        self.min_delta_increases.load(Ordering::Relaxed)
    }
    /// Taken out of service or refused: never selected again.
    #[inline]
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
    /// Takes the device out of service for good (the registry then moves its CPUs on).
    pub fn mark_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
    /// Whether the device would be used by the selection (not failed, not refused).
    #[inline]
    pub fn is_usable(&self) -> bool {
        !self.is_failed()
    }

    /// Moves to `state`; periodic mode takes its period in ns.
    pub fn switch_state(&self, state: State, period_ns: u64) -> Result<(), IllegalTransition> {
        let current = self.state();
        if !current.can_switch_to(state) {
            return Err(IllegalTransition { from: current, to: state });
        }
        if state == current && state != State::Periodic {
            return Ok(());
        }
        let driver_state = match state {
            State::Detached | State::Shutdown => DriverState::Shutdown,
            State::Periodic => {
                let ns = period_ns.clamp(self.min_delta_ns(), self.max_delta_ns);
                DriverState::Periodic { period_ticks: self.delta_ticks(ns) }
            }
            State::Oneshot => DriverState::Oneshot,
            State::OneshotStopped => DriverState::OneshotStopped,
        };
        if state != State::Oneshot {
            self.forget_event();
        }
        self.driver.switch_state(driver_state);
        self.state.store(state as u8, Ordering::Relaxed);
        Ok(())
    }

    /// Brings a detached device into use in `state` (through shutdown).
    pub fn attach(&self, state: State, period_ns: u64) {
        if self.state() == State::Detached {
            self.switch_state(State::Shutdown, 0).expect("detached -> shutdown is legal");
        }
        self.switch_state(state, period_ns).expect("a shut-down device enters periodic or oneshot");
    }

    /// Releases a device: shut down and detached.
    pub fn detach(&self) {
        if self.state() != State::Detached {
            self.switch_state(State::Shutdown, 0).expect("any state shuts down");
            self.switch_state(State::Detached, 0).expect("shutdown -> detached is legal");
        }
    }

    /// Stops a one-shot device that has nothing to wait for.
    pub fn stop(&self) {
        if self.state() == State::Oneshot {
            self.switch_state(State::OneshotStopped, 0).expect("oneshot -> stopped is legal");
        }
        self.forget_event();
    }

    #[inline]
    fn delta_ticks(&self, ns: u64) -> u64 {
        self.conversion().ticks(ns).clamp(self.min_delta_ticks, self.max_delta_ticks)
    }

    /// Programs an interrupt at `deadline_ns` (`now_ns` is the clock now). A deadline already
    /// past, or closer than the minimum delta, is programmed at the minimum delta: late by at
    /// most that, never lost. When the driver reports that the counter passed the comparator
    /// while it was written, the event is retried at the minimum delta, and after
    /// [`RETRIES_BEFORE_GROWING`] failures the minimum delta grows. Returns the time the device
    /// was programmed for.
    ///
    /// Crate-private: a device is programmed only by the tick of the CPU it serves, behind
    /// that CPU's guard ([`crate::tick::CpuTick`]), or by the broadcast, behind its lock.
    pub(crate) fn program(&self, deadline_ns: u64, now_ns: u64) -> Result<u64, ProgramError> {
        match self.state() {
            State::Oneshot => {}
            State::OneshotStopped => {
                self.switch_state(State::Oneshot, 0).expect("oneshot-stopped -> oneshot is legal")
            }
            s => return Err(ProgramError::NotOneshot(s)),
        }
        let delta = deadline_ns.saturating_sub(now_ns).clamp(self.min_delta_ns(), self.max_delta_ns);
        bump(&self.programmed);
        if self.driver.set_next_event_at(now_ns + delta, now_ns, self.delta_ticks(delta)).is_ok() {
            self.next_event_ns.store(now_ns + delta, Ordering::Relaxed);
            return Ok(now_ns + delta);
        }
        let mut failures = 0;
        loop {
            bump(&self.retries);
            let min_delta_ns = self.min_delta_ns();
            if self.driver.set_next_event(self.delta_ticks(min_delta_ns)).is_ok() {
                self.next_event_ns.store(now_ns + min_delta_ns, Ordering::Relaxed);
                return Ok(now_ns + min_delta_ns);
            }
            failures += 1;
            if failures >= RETRIES_BEFORE_GROWING {
                failures = 0;
                self.grow_min_delta()?;
            }
        }
    }

    fn grow_min_delta(&self) -> Result<(), ProgramError> {
        let current = self.min_delta_ns();
        let grown =
            if current < FIRST_GROWN_MIN_DELTA_NS { FIRST_GROWN_MIN_DELTA_NS } else { current + current / 2 };
        // Beyond the limit, or beyond what the device can be programmed for at all.
        if grown > MIN_DELTA_LIMIT_NS || grown > self.max_delta_ns {
            self.forget_event();
            return Err(ProgramError::GaveUp { min_delta_ns: current });
        }
        self.min_delta_ns.store(grown, Ordering::Relaxed);
        self.min_delta_increases.store(self.min_delta_increases() + 1, Ordering::Relaxed);
        log::warn!("{} increased its minimum delta to {grown} ns", self.spec.name);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake device for host tests: records what it was asked, and can refuse deadlines.
    use super::*;
    use alloc::vec::Vec;
    use spin::Mutex;

    pub struct FakeDriver {
        /// Every call, in order.
        pub log: Mutex<Vec<Call>>,
        /// `set_next_event` reports a passed comparator for deltas below this many ticks.
        pub passes_below_ticks: Mutex<u64>,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Call {
        State(DriverState),
        Next(u64),
        Retarget(usize),
    }

    impl FakeDriver {
        pub fn leak() -> &'static FakeDriver {
            alloc::boxed::Box::leak(alloc::boxed::Box::new(FakeDriver {
                log: Mutex::new(Vec::new()),
                passes_below_ticks: Mutex::new(0),
            }))
        }
        pub fn calls(&self) -> Vec<Call> {
            self.log.lock().clone()
        }
        pub fn last_next(&self) -> Option<u64> {
            self.log.lock().iter().rev().find_map(|c| if let Call::Next(t) = c { Some(*t) } else { None })
        }
    }

    impl EventDriver for FakeDriver {
        fn switch_state(&self, state: DriverState) {
            self.log.lock().push(Call::State(state));
        }
        fn set_next_event(&self, delta_ticks: u64) -> Result<(), EventPassed> {
            self.log.lock().push(Call::Next(delta_ticks));
            if delta_ticks < *self.passes_below_ticks.lock() { Err(EventPassed) } else { Ok(()) }
        }
        fn retarget(&self, cpu: usize) -> bool {
            self.log.lock().push(Call::Retarget(cpu));
            true
        }
    }

    /// A 100 MHz one-shot device (like q35's HPET) serving `cpus`.
    pub fn spec(name: &str, rating: u32, cpus: CpuSet, features: Features) -> DeviceSpec {
        DeviceSpec {
            name: name.into(),
            features: features | Features::ONESHOT,
            rating,
            cpus,
            frequency_hz: 100_000_000,
            min_delta_ticks: 192,
            max_delta_ticks: u32::MAX as u64 >> 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    fn oneshot_device(driver: &'static FakeDriver) -> ClockEventDevice {
        let d = ClockEventDevice::new(spec("hpet0", 110, CpuSet::single(0), Features::PER_CPU), driver);
        d.switch_state(State::Shutdown, 0).unwrap();
        d.switch_state(State::Oneshot, 0).unwrap();
        d
    }

    #[test]
    fn illegal_transitions_are_refused() {
        use State::*;
        assert!(!Detached.can_switch_to(Oneshot));
        assert!(!Detached.can_switch_to(Periodic));
        assert!(!Periodic.can_switch_to(OneshotStopped));
        assert!(!Shutdown.can_switch_to(OneshotStopped));
        assert!(!Oneshot.can_switch_to(Detached));
        assert!(Shutdown.can_switch_to(Detached));
        assert!(OneshotStopped.can_switch_to(Oneshot));
        let driver = FakeDriver::leak();
        let d = ClockEventDevice::new(spec("x", 1, CpuSet::single(0), Features::empty()), driver);
        assert_eq!(
            d.switch_state(State::Oneshot, 0),
            Err(IllegalTransition { from: State::Detached, to: State::Oneshot })
        );
        assert!(driver.calls().is_empty(), "a refused change must not reach the driver");
    }

    #[test]
    fn conversion_never_overflows_up_to_the_maximum_delta() {
        for hz in [32_768u64, 1_000_000, 14_318_180, 100_000_000, 1_000_000_000, 3_000_000_000] {
            for max_ticks in [0xffffu64, u64::from(u32::MAX), 1 << 40, u64::MAX >> 1] {
                let max_ns = ticks_to_ns(max_ticks, hz, false);
                let c = NsToTicks::new(hz, max_ns);
                assert!(c.mult.checked_mul(max_ns.max(1)).is_some(), "{hz} Hz, max {max_ns} ns overflows");
                // The rounded-up tick count, late by at most the rounded-up mult's error.
                for ns in [1, 999, 1_000_000, max_ns / 3, max_ns] {
                    let exact = (u128::from(ns) * u128::from(hz)).div_ceil(u128::from(NS_PER_S));
                    let got = u128::from(c.ticks(ns));
                    assert!(got >= exact, "{hz} Hz {ns} ns: {got} ticks is early");
                    let slack = u128::from(ns >> c.shift);
                    assert!(got <= exact + slack, "{hz} Hz {ns} ns: {got} ticks, {exact} needed");
                }
            }
        }
    }

    #[test]
    fn hpet_conversion_is_exact_at_100mhz() {
        let c = NsToTicks::new(100_000_000, 21_474_836_470);
        assert_eq!(c.ticks(10), 1);
        assert_eq!(c.ticks(11), 2, "rounds up: never early");
        assert_eq!(c.ticks(1_000_000), 100_000);
    }

    /// Found by the `tick` fuzz target: a maximum of 2^63 - 1 ticks at 3.58 MHz left the
    /// conversion at shift 8 and mult 1, which programmed a 1 s period 9 % long.
    #[test]
    fn huge_maximum_delta_keeps_the_conversion_exact() {
        let driver = FakeDriver::leak();
        let acpi_pm_like = DeviceSpec {
            frequency_hz: 3_579_545,
            min_delta_ticks: 12_264,
            max_delta_ticks: (1 << 63) - 1,
            ..spec("x", 1, CpuSet::single(0), Features::PERIODIC)
        };
        let d = ClockEventDevice::new(acpi_pm_like, driver);
        d.switch_state(State::Shutdown, 0).unwrap();
        d.switch_state(State::Periodic, NS_PER_S).unwrap();
        assert_eq!(
            driver.calls().last(),
            Some(&Call::State(DriverState::Periodic { period_ticks: 3_579_545 }))
        );
        assert_eq!(d.conversion().shift, 32);
        assert_eq!(d.max_delta_ns, MAX_PROGRAMMED_DELTA_NS, "the maximum is bounded");
        d.switch_state(State::Oneshot, 0).unwrap();
        assert_eq!(d.program(u64::MAX, 0), Ok(MAX_PROGRAMMED_DELTA_NS));
        assert_eq!(driver.last_next(), Some(600 * 3_579_545), "the longest delta is exact too");
    }

    /// A TSC-deadline timer registered as Linux does, with `max_delta = ~0`: converted at shift
    /// 0 and mult 3 it fired 43 % late.
    #[test]
    fn tsc_deadline_registered_without_a_maximum_keeps_full_precision() {
        const HZ: u64 = 2_100_000_000;
        let driver = FakeDriver::leak();
        let tsc_deadline_like = DeviceSpec {
            frequency_hz: HZ,
            min_delta_ticks: 1,
            max_delta_ticks: u64::MAX,
            ..spec("x", 1, CpuSet::single(0), Features::PER_CPU)
        };
        let d = ClockEventDevice::new(tsc_deadline_like, driver);
        d.switch_state(State::Shutdown, 0).unwrap();
        d.switch_state(State::Oneshot, 0).unwrap();
        let shift = d.conversion().shift;
        let exact = |ns: u64| (u128::from(ns) * u128::from(HZ)).div_ceil(u128::from(NS_PER_S)) as u64;
        // Within a tick below 2^shift ns (8.4 ms); never early.
        for ns in [1_000, 1_000_001, 4_000_000, (1 << shift) - 1] {
            d.program(ns, 0).unwrap();
            let (ticks, exact) = (driver.last_next().unwrap(), exact(ns));
            assert!((exact..=exact + 1).contains(&ticks), "{ns} ns: {ticks} ticks, {exact} exact");
        }
        // Beyond, within 600 s / 2^63 of the delta: under 65 ns a second.
        for ns in [NS_PER_S, 37 * NS_PER_S + 123, MAX_PROGRAMMED_DELTA_NS] {
            d.program(ns, 0).unwrap();
            let (ticks, exact) = (driver.last_next().unwrap(), exact(ns));
            assert!(ticks >= exact, "{ns} ns: {ticks} ticks, below {exact}");
            let late_ns = ticks_to_ns(ticks - exact, HZ, true);
            assert!(late_ns <= ns / NS_PER_S * 65, "{ns} ns: {ticks} ticks, {late_ns} ns late");
        }
        assert_eq!(driver.last_next(), Some(600 * HZ), "the longest delta is exact");
        assert_eq!(shift, 23, "the largest shift for 600 s at 2.1 GHz");
        assert_eq!(d.max_delta_ns, MAX_PROGRAMMED_DELTA_NS);
    }

    /// A minimum delta beyond the bound (refused, as over 10 ms) must not invert the limits.
    #[test]
    fn bound_never_puts_the_maximum_below_the_minimum() {
        let slow = DeviceSpec {
            frequency_hz: 1,
            min_delta_ticks: 1_000,
            max_delta_ticks: u64::MAX,
            ..spec("x", 1, CpuSet::single(0), Features::empty())
        };
        let d = ClockEventDevice::new(slow, FakeDriver::leak());
        assert!(d.refused.is_some());
        assert!(d.min_delta_ticks <= d.max_delta_ticks && d.min_delta_ns() <= d.max_delta_ns);
    }

    #[test]
    fn min_and_max_delta_come_from_ticks() {
        let d = ClockEventDevice::new(spec("x", 1, CpuSet::single(0), Features::empty()), FakeDriver::leak());
        assert_eq!(d.min_delta_ns(), 1920);
        assert_eq!(d.max_delta_ns, 21_474_836_470);
    }

    /// Found by the `tick` fuzz target: rounding the minimum up and the maximum down must not
    /// make them cross, and a grown minimum must stay programmable.
    #[test]
    fn minimum_delta_never_exceeds_the_maximum() {
        let slow = DeviceSpec {
            frequency_hz: 32_768,
            min_delta_ticks: 1,
            max_delta_ticks: 1,
            ..fake::spec("x", 1, CpuSet::single(0), Features::empty())
        };
        let d = ClockEventDevice::new(slow, FakeDriver::leak());
        assert!(d.min_delta_ns() <= d.max_delta_ns);
        d.switch_state(State::Shutdown, 0).unwrap();
        d.switch_state(State::Oneshot, 0).unwrap();
        assert!(d.program(1_000_000, 0).is_ok());
        let driver = FakeDriver::leak();
        *driver.passes_below_ticks.lock() = 60_000;
        let fast = DeviceSpec {
            frequency_hz: 1_000_000_000,
            min_delta_ticks: 100,
            max_delta_ticks: 0xffff,
            ..fake::spec("y", 1, CpuSet::single(0), Features::empty())
        };
        let d = ClockEventDevice::new(fast, driver);
        d.switch_state(State::Shutdown, 0).unwrap();
        d.switch_state(State::Oneshot, 0).unwrap();
        let _ = d.program(1_000, 0);
        assert!(d.min_delta_ns() <= d.max_delta_ns, "{} > {}", d.min_delta_ns(), d.max_delta_ns);
        let _ = d.program(1_000, 0); // panicked on an inverted clamp before
    }

    #[test]
    fn remaining_ticks_scale_the_layers_conversion_to_what_is_left_rounding_up() {
        assert_eq!(remaining_ticks(1_000, 0, 0, 100), 100, "nothing elapsed: all of it");
        assert_eq!(remaining_ticks(1_000, 0, 400, 100), 60);
        assert_eq!(remaining_ticks(1_000, 0, 401, 100), 60, "59.9 rounds up");
        assert_eq!(remaining_ticks(1_000, 0, 1_000, 100), 0, "at the deadline: nothing left");
        assert_eq!(remaining_ticks(1_000, 0, 5_000, 100), 0, "past it: nothing left");
        assert_eq!(
            remaining_ticks(1_000, 500, 100, 100),
            100,
            "a fresh read behind the layer's changes nothing"
        );
        // A product past 64 bits is taken in 128.
        assert_eq!(remaining_ticks(u64::MAX, 0, u64::MAX / 2, u64::MAX / 4), u64::MAX / 8 + 1);
        // Never below the exact conversion of what is left, whenever the layer's delta was not
        // below the exact conversion of the whole (an independent oracle: ceil(left * hz / 1e9)).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let hz = 1_000_000 + x % 4_000_000_000;
            let whole = 1 + (x >> 20) % 35_000_000_000;
            let elapsed = (x >> 7) % (whole + 1000);
            let exact = |ns: u64| (u128::from(ns) * u128::from(hz)).div_ceil(1_000_000_000) as u64;
            let delta_ticks = exact(whole);
            let r = remaining_ticks(whole, 0, elapsed, delta_ticks);
            assert!(r >= exact(whole.saturating_sub(elapsed)), "{hz} Hz, {whole} ns, {elapsed} elapsed: {r}");
            assert!(r <= delta_ticks);
        }
    }

    #[test]
    fn past_deadline_is_programmed_at_the_minimum_delta() {
        let driver = FakeDriver::leak();
        let d = oneshot_device(driver);
        let at = d.program(1_000, 50_000).unwrap();
        assert_eq!(at, 50_000 + 1920);
        assert_eq!(driver.last_next(), Some(192));
    }

    #[test]
    fn far_deadline_is_clamped_to_the_maximum_delta() {
        let driver = FakeDriver::leak();
        let d = oneshot_device(driver);
        let at = d.program(u64::MAX, 0).unwrap();
        assert_eq!(at, d.max_delta_ns);
        assert_eq!(driver.last_next(), Some(u64::from(u32::MAX) >> 1));
    }

    #[test]
    fn passed_comparator_is_retried_not_lost() {
        let driver = FakeDriver::leak();
        *driver.passes_below_ticks.lock() = 193; // the first try at the minimum passes too
        let d = oneshot_device(driver);
        let at = d.program(1_000, 0).unwrap();
        // 3 tries at 192 ticks, then the minimum grows to 5 us = 500 ticks, which sticks.
        assert_eq!(d.min_delta_increases(), 1);
        assert_eq!(d.min_delta_ns(), 5_000);
        assert_eq!(at, 5_000);
        assert_eq!(driver.last_next(), Some(500));
        assert_eq!(d.retries(), 4);
    }

    #[test]
    fn minimum_delta_grows_by_half_until_the_limit_then_gives_up() {
        let driver = FakeDriver::leak();
        *driver.passes_below_ticks.lock() = u64::MAX;
        let d = oneshot_device(driver);
        let err = d.program(10_000, 0).unwrap_err();
        assert!(matches!(err, ProgramError::GaveUp { min_delta_ns } if min_delta_ns <= MIN_DELTA_LIMIT_NS));
        assert!(d.min_delta_increases() > 5);
        assert_eq!(d.next_event_ns(), u64::MAX, "nothing is programmed after giving up");
    }

    #[test]
    fn programming_needs_oneshot_mode_and_restarts_a_stopped_device() {
        let driver = FakeDriver::leak();
        let d = ClockEventDevice::new(spec("x", 1, CpuSet::single(0), Features::PERIODIC), driver);
        d.switch_state(State::Shutdown, 0).unwrap();
        assert_eq!(d.program(5_000, 0), Err(ProgramError::NotOneshot(State::Shutdown)));
        d.switch_state(State::Oneshot, 0).unwrap();
        d.switch_state(State::OneshotStopped, 0).unwrap();
        assert_eq!(d.program(5_000, 0), Ok(5_000));
        assert_eq!(d.state(), State::Oneshot);
    }

    #[test]
    fn periodic_mode_passes_the_period_in_ticks() {
        let driver = FakeDriver::leak();
        let d = ClockEventDevice::new(spec("x", 1, CpuSet::single(0), Features::PERIODIC), driver);
        d.switch_state(State::Shutdown, 0).unwrap();
        d.switch_state(State::Periodic, 4_000_000).unwrap();
        assert_eq!(
            driver.calls().last(),
            Some(&Call::State(DriverState::Periodic { period_ticks: 400_000 }))
        );
    }

    /// A refined frequency changes the next programming's ticks, not the limits; the ticks
    /// stay rounded up at the new rate, so a deadline is never early by the conversion.
    #[test]
    fn a_new_frequency_converts_the_next_programming() {
        let driver = FakeDriver::leak();
        let lapic_like = DeviceSpec {
            frequency_hz: 62_557_624, // a boot calibration 922 ppm high
            min_delta_ticks: 0xf,
            max_delta_ticks: 0x7fff_ffff,
            ..spec("lapic0", 100, CpuSet::single(0), Features::PER_CPU)
        };
        let d = ClockEventDevice::new(lapic_like, driver);
        d.switch_state(State::Shutdown, 0).unwrap();
        d.switch_state(State::Oneshot, 0).unwrap();
        let (min_ns, max_ns) = (d.min_delta_ns(), d.max_delta_ns);
        d.program(1_000_000, 0).unwrap();
        assert_eq!(driver.last_next(), Some(62_558));
        let old = d.set_frequency(62_500_000).unwrap();
        assert_eq!(old.frequency_hz, 62_557_624);
        assert_eq!((d.frequency_hz(), d.conversion().frequency_hz), (62_500_000, 62_500_000));
        assert_eq!(d.spec.frequency_hz, 62_557_624, "the spec keeps what was registered");
        d.program(1_000_000, 0).unwrap();
        assert_eq!(driver.last_next(), Some(62_500));
        d.program(1_000_001, 0).unwrap();
        assert_eq!(driver.last_next(), Some(62_501), "rounded up at the new rate");
        assert_eq!((d.min_delta_ns(), d.max_delta_ns), (min_ns, max_ns));
        // The longest delta (34.328 s, from the registered rate) still converts, now to fewer
        // ticks; a faster new rate would be clamped to the hardware's 0x7fff_ffff.
        assert_eq!(d.program(u64::MAX, 0), Ok(34_328_088_403));
        assert_eq!(driver.last_next(), Some(2_145_505_526));
        d.set_frequency(62_600_000).unwrap();
        d.program(u64::MAX, 0).unwrap();
        assert_eq!(driver.last_next(), Some(0x7fff_ffff));
    }

    #[test]
    fn an_impossible_frequency_is_refused_and_changes_nothing() {
        let d = oneshot_device(FakeDriver::leak());
        let before = d.conversion();
        assert_eq!(d.set_frequency(0), Err(FrequencyError::Zero));
        assert!(matches!(d.set_frequency(u64::MAX), Err(FrequencyError::TooHigh { .. })));
        assert_eq!(d.conversion(), before);
    }

    #[test]
    fn cpu_sets() {
        let mut s = CpuSet::first(3);
        assert_eq!(s.iter().collect::<alloc::vec::Vec<_>>(), [0, 1, 2]);
        s.remove(1);
        assert!(!s.contains(1) && s.contains(2));
        assert_eq!(CpuSet::single(5).only(), Some(5));
        assert_eq!(s.only(), None);
        assert_eq!(CpuSet::first(64).len(), 64);
    }

    #[test]
    fn cpu_sets_hold_every_cpu_up_to_the_maximum() {
        let mut s = CpuSet::EMPTY;
        for cpu in [0, 63, 64, 127, 200, MAX_CPUS - 1] {
            s.insert(cpu);
        }
        assert_eq!(s.len(), 6);
        assert!(s.contains(200) && !s.contains(199) && !s.contains(MAX_CPUS));
        assert_eq!(s.iter().collect::<alloc::vec::Vec<_>>(), [0, 63, 64, 127, 200, MAX_CPUS - 1]);
        assert_eq!(s.first_cpu(), Some(0));
        assert_eq!(CpuSet::single(130).only(), Some(130));
        assert_eq!(s.only(), None);
        assert_eq!(CpuSet::first(65).len(), 65);
        assert!(CpuSet::first(65).contains(64) && !CpuSet::first(65).contains(65));
        assert_eq!(CpuSet::first(usize::MAX).len(), MAX_CPUS);
        assert_eq!(CpuSet::first(0), CpuSet::EMPTY);
        let mut t = CpuSet::first(130);
        t.remove_all(CpuSet::first(64));
        let mut u = CpuSet::single(255);
        u.insert_all(CpuSet::single(1));
        assert_eq!(u.iter().collect::<alloc::vec::Vec<_>>(), [1, 255]);
        assert_eq!(t.first_cpu(), Some(64));
        assert_eq!(t.len(), 66);
        s.remove(200);
        assert!(!s.contains(200));
        assert_eq!(CpuSet::from_bits(0b1100), {
            let mut x = CpuSet::single(2);
            x.insert(3);
            x
        });
    }

    #[test]
    fn cpu_sets_print_as_ranges() {
        let mut s = CpuSet::first(4);
        s.insert(8);
        s.insert(100);
        s.insert(101);
        assert_eq!(alloc::format!("{s}"), "0-3, 8, 100-101");
        assert_eq!(alloc::format!("{}", CpuSet::EMPTY), "none");
    }
}
