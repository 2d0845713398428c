//! Clocksources: free-running counters turned into the system's monotonic nanoseconds (what
//! Linux's `clocksource.c` and `timekeeping.c` do, reduced to this kernel's needs).
//!
//! A counter describes itself ([`SourceDesc`]: name, rating, frequency, width, flags) and is
//! registered with [`Clocksources`], which selects the best usable one: the one `clocksource=`
//! forces if it is usable, else the highest rating among those not marked unstable. A switch
//! (a better source registered, the current one found unstable, a forced choice) rebases the
//! [`Timekeeper`], so `now` continues from where it was: never back, and forward by no more
//! than one counter read (or by the measured warp when leaving a TSC whose CPUs disagree, so
//! that none of them sees time go back). Pending deadlines are ns on this one timeline and
//! keep their meaning.
//!
//! Rooms: `timekeeper` (the lock-free hot path, [`Timekeeper::now`]), `watchdog` (a counter
//! checked against another), `refine` (a frequency measured over a long window), `sync`
//! (the cross-CPU warp arithmetic). Reading the hardware is the architecture's, through
//! [`ReadCounter`]; everything here runs on the host against fake counters.

mod countdown;
#[cfg(test)]
mod proptests;
pub mod refine;
pub mod sync;
mod timekeeper;
pub mod watchdog;

pub use countdown::Countdown;
pub use timekeeper::{Conversion, CounterId, ReadCounter, Snapshot, Timekeeper, extend, mask_of};

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use bitflags::bitflags;
use core::fmt;

bitflags! {
    /// What a counter promises.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct SourceFlags: u32 {
        /// Keeps counting in deep idle states (an invariant TSC, the HPET, the PM timer).
        const CONTINUOUS = 1 << 0;
        /// One counter for every CPU (HPET, PM timer); a per-CPU counter (the TSC) is only
        /// consistent across CPUs if the synchronisation check says so.
        const CPU_CONSISTENT = 1 << 1;
        /// Checked by the watchdog against another counter before it is trusted (the TSC).
        const MUST_VERIFY = 1 << 2;
    }
}

/// A counter as its driver describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceDesc {
    /// The name `clocksource=` and the report use (`tsc`, `hpet`, `acpi_pm`).
    pub name: &'static str,
    /// Linux's scale: 300 TSC, 250 HPET, 200 ACPI PM timer; higher wins.
    pub rating: u32,
    /// The counter's nominal frequency, in Hz.
    pub hz: u64,
    /// Counter width: 24, 32 or 64.
    pub bits: u32,
    /// What the counter promises.
    pub flags: SourceFlags,
    /// Which counter [`ReadCounter::read`] reads for it.
    pub counter: CounterId,
}

/// A registered counter and what has been learnt about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// How its driver described it.
    pub desc: SourceDesc,
    /// Current frequency (the description's, or a refined one).
    pub hz: u64,
    /// Why it must not be used, once found unstable.
    pub unstable: Option<String>,
    /// Largest backward step measured between CPUs (0 for a global counter).
    pub warp_ns: u64,
}

impl Source {
    fn new(desc: SourceDesc) -> Source {
        Source { desc, hz: desc.hz, unstable: None, warp_ns: 0 }
    }

    /// Its name ([`SourceDesc::name`]).
    pub fn name(&self) -> &'static str {
        self.desc.name
    }

    /// Whether it has not been found unstable.
    pub fn stable(&self) -> bool {
        self.unstable.is_none()
    }

    /// Whether its counter wraps, so that the timekeeper must rebase it periodically.
    pub fn narrow(&self) -> bool {
        self.desc.bits < 64
    }

    /// How the timekeeper converts its readings.
    pub fn conversion(&self) -> Conversion {
        let mask = mask_of(self.desc.bits);
        let per_cpu = !self.desc.flags.contains(SourceFlags::CPU_CONSISTENT);
        Conversion {
            counter: self.desc.counter,
            rate: MultShift::ticks_to_ns(self.hz),
            mask,
            max_delta: if per_cpu { mask / 2 } else { mask },
        }
    }

    /// Nanoseconds for the counter to wrap (`u64::MAX` for 64-bit counters).
    pub fn wrap_ns(&self) -> u64 {
        if self.narrow() { MultShift::ticks_to_ns(self.hz).apply(mask_of(self.desc.bits)) } else { u64::MAX }
    }
}

/// A change of the current source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    /// The source that was current (`none` before the first).
    pub from: &'static str,
    /// The source that took over.
    pub to: &'static str,
    /// Why it took over.
    pub reason: String,
    /// The time at which the new source took over.
    pub at_ns: u64,
}

/// Why a source could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// Every slot is taken ([`MAX_SOURCES`]).
    Full,
    /// A source of this name is already registered.
    Duplicate(&'static str),
    /// Its frequency is 0 Hz.
    ZeroFrequency(&'static str),
    /// Its counter is narrower than 16 or wider than 64 bits.
    BadWidth {
        /// The source's name.
        name: &'static str,
        /// The width it gave.
        bits: u32,
    },
    /// A narrow counter wrapping in less than [`MIN_WRAP_NS`]: it could wrap unseen between
    /// two rebases.
    WrapsTooFast {
        /// The source's name.
        name: &'static str,
        /// The time its counter takes to wrap.
        wrap_ns: u64,
    },
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RegisterError::Full => write!(f, "no room for another clocksource ({MAX_SOURCES})"),
            RegisterError::Duplicate(n) => write!(f, "{n} is already registered"),
            RegisterError::ZeroFrequency(n) => write!(f, "{n} has a frequency of 0 Hz"),
            RegisterError::BadWidth { name, bits } => write!(f, "{name} is {bits} bits wide (16..=64)"),
            RegisterError::WrapsTooFast { name, wrap_ns } => write!(
                f,
                "{name} wraps every {} ms, under the {} ms a narrow counter needs",
                wrap_ns / 1_000_000,
                MIN_WRAP_NS / 1_000_000
            ),
        }
    }
}

impl core::error::Error for RegisterError {}

/// Most sources registered at once (TSC, HPET, ACPI PM timer, one spare).
pub const MAX_SOURCES: usize = 4;
/// A narrow counter must take at least this long to wrap: four times the 0.5 s at which the
/// kernel rebases it, so that it is rebased well within half a wrap (the 24-bit ACPI PM timer
/// wraps every 4.69 s).
pub const MIN_WRAP_NS: u64 = 2_000_000_000;

/// Every registered source, the current one, and the switches so far. Plain data: the kernel
/// keeps it behind a lock with interrupts off (a switch writes the timekeeper, see
/// [`Timekeeper::rebase`]); registering needs no heap, so the TSC can be installed before
/// there is one.
///
/// ```
/// use core::cell::Cell;
/// use kernel_time::clocksource::{Clocksources, CounterId, ReadCounter, SourceDesc, SourceFlags, Timekeeper};
///
/// /// Two fake counters a test sets by hand: 1 MHz and 1 GHz.
/// struct Counters {
///     slow: Cell<u64>,
///     fast: Cell<u64>,
/// }
///
/// impl ReadCounter for Counters {
///     fn read(&self, counter: CounterId) -> u64 {
///         match counter {
///             CounterId(1) => self.slow.get(),
///             CounterId(2) => self.fast.get(),
///             _ => 0,
///         }
///     }
/// }
///
/// let hw = Counters { slow: Cell::new(0), fast: Cell::new(0) };
/// let clock = Timekeeper::new();
/// let mut sources = Clocksources::new();
/// let desc = |name, rating, hz, id| SourceDesc {
///     name,
///     rating,
///     hz,
///     bits: 64,
///     flags: SourceFlags::CONTINUOUS | SourceFlags::CPU_CONSISTENT,
///     counter: CounterId(id),
/// };
/// sources.register(desc("slow", 200, 1_000_000, 1)).unwrap();
/// sources.select(&clock, &hw);
/// hw.slow.set(5_000);
/// assert_eq!(clock.now(&hw), 5_000_000); // 5000 ticks at 1 MHz
///
/// // A better-rated source: the clock goes on from where it was, never back.
/// hw.fast.set(987_654_321);
/// sources.register(desc("fast", 300, 1_000_000_000, 2)).unwrap();
/// let switch = sources.select(&clock, &hw).unwrap();
/// assert_eq!((switch.from, switch.to), ("slow", "fast"));
/// assert_eq!(clock.now(&hw), 5_000_000);
/// hw.fast.set(987_654_321 + 1_000);
/// assert_eq!(clock.now(&hw), 5_001_000);
/// ```
#[derive(Debug)]
pub struct Clocksources {
    sources: [Option<Source>; MAX_SOURCES],
    current: Option<usize>,
    forced: Option<&'static str>,
    /// Narrow (wrapping) counters are only selected once something rebases them in time.
    rebased_periodically: bool,
    /// The source keeping time while the current one's counter is stopped.
    standing_in: Option<usize>,
    switches: Vec<Switch>,
}

impl Default for Clocksources {
    fn default() -> Self {
        Self::new()
    }
}

impl Clocksources {
    /// No source registered, none current; `const` so that it can be a `static`.
    pub const fn new() -> Clocksources {
        Clocksources {
            sources: [const { None }; MAX_SOURCES],
            current: None,
            forced: None,
            rebased_periodically: false,
            standing_in: None,
            switches: Vec::new(),
        }
    }

    /// Adds a source; it is not selected until [`Clocksources::select`].
    pub fn register(&mut self, desc: SourceDesc) -> Result<(), RegisterError> {
        if desc.hz == 0 {
            return Err(RegisterError::ZeroFrequency(desc.name));
        }
        if !(16..=64).contains(&desc.bits) {
            return Err(RegisterError::BadWidth { name: desc.name, bits: desc.bits });
        }
        if self.get(desc.name).is_some() {
            return Err(RegisterError::Duplicate(desc.name));
        }
        let wrap_ns = Source::new(desc).wrap_ns();
        if wrap_ns < MIN_WRAP_NS {
            return Err(RegisterError::WrapsTooFast { name: desc.name, wrap_ns });
        }
        let slot = self.sources.iter_mut().find(|s| s.is_none()).ok_or(RegisterError::Full)?;
        *slot = Some(Source::new(desc));
        Ok(())
    }

    /// Every registered source, in registration order.
    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        self.sources.iter().flatten()
    }

    /// The source called `name`.
    pub fn get(&self, name: &str) -> Option<&Source> {
        self.sources().find(|s| s.name() == name)
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.sources.iter().position(|s| s.as_ref().is_some_and(|s| s.name() == name))
    }

    fn at(&self, i: usize) -> &Source {
        self.sources[i].as_ref().expect("indices point at registered sources")
    }

    /// The source behind the timekeeper, once one is selected.
    pub fn current(&self) -> Option<&Source> {
        self.current.map(|i| self.at(i))
    }

    /// Its name, `none` before one is selected.
    pub fn current_name(&self) -> &'static str {
        self.current().map_or("none", Source::name)
    }

    /// Every change of the current source, in order.
    pub fn switches(&self) -> &[Switch] {
        &self.switches
    }

    /// `clocksource=NAME`: preferred over any rating while it is usable.
    pub fn force(&mut self, name: &'static str) {
        self.forced = Some(name);
    }

    /// The name `clocksource=` asked for, if any.
    pub fn forced(&self) -> Option<&'static str> {
        self.forced
    }

    /// From now on narrow counters are rebased in time (the caller runs [`Clocksources::rebase_narrow`]
    /// well within half their wrap), so they may be selected.
    pub fn allow_narrow(&mut self) {
        self.rebased_periodically = true;
    }

    fn usable(&self, s: &Source) -> bool {
        s.stable() && (!s.narrow() || self.rebased_periodically)
    }

    /// The source that should be current: the forced one if usable, else the best-rated usable
    /// one (the first registered among equals).
    pub fn best(&self) -> Option<usize> {
        let usable = |i: &usize| self.usable(self.at(*i));
        let registered = (0..MAX_SOURCES).filter(|&i| self.sources[i].is_some());
        if let Some(i) = self.forced.and_then(|f| self.index_of(f)).filter(usable) {
            return Some(i);
        }
        registered.filter(usable).fold(None, |best: Option<usize>, i| match best {
            Some(b) if self.at(b).desc.rating >= self.at(i).desc.rating => Some(b),
            _ => Some(i),
        })
    }

    /// Makes the best source current if it is not; returns the switch (its `from` is "none"
    /// for the first source, which is not recorded as a switch). With no usable source the
    /// current one stays, unstable or not: a clock that may be wrong beats none.
    pub fn select<H: ReadCounter>(&mut self, tk: &Timekeeper, hw: &H) -> Option<Switch> {
        let best = self.best()?;
        // While the current counter is stopped, the switch waits for it to run again.
        if self.current == Some(best) || self.standing_in.is_some() {
            return None;
        }
        let to = self.at(best);
        let reason = match self.current.map(|c| self.at(c)) {
            // The first source is installed before there is a heap: no allocation.
            None => String::new(),
            Some(from) if !from.stable() => {
                format!("{} unstable: {}", from.name(), from.unstable.as_deref().unwrap_or(""))
            }
            Some(_) if self.forced == Some(to.name()) => format!("clocksource={}", to.name()),
            Some(from) => format!(
                "{} (rating {}) rated above {} (rating {})",
                to.name(),
                to.desc.rating,
                from.name(),
                from.desc.rating
            ),
        };
        // Leaving a counter whose CPUs disagree: start ahead of every CPU's reading.
        let forward_ns = self.current().map_or(0, |c| c.warp_ns);
        let at_ns = tk.rebase(hw, Some(to.conversion()), forward_ns);
        let switch = Switch { from: self.current_name(), to: to.name(), reason, at_ns };
        if self.current.is_some() {
            self.switches.push(switch.clone());
        }
        self.current = Some(best);
        Some(switch)
    }

    /// Marks `name` unstable (it stays so); true if it was stable. The caller then selects.
    pub fn mark_unstable(&mut self, name: &str, reason: String) -> bool {
        match self.index_of(name).and_then(|i| self.sources[i].as_mut()) {
            Some(s) if s.stable() => {
                s.unstable = Some(reason);
                true
            }
            _ => false,
        }
    }

    /// Records the largest cross-CPU warp measured on `name` (kept if larger than before).
    pub fn record_warp(&mut self, name: &str, warp_ns: u64) {
        if let Some(s) = self.index_of(name).and_then(|i| self.sources[i].as_mut()) {
            s.warp_ns = s.warp_ns.max(warp_ns);
        }
    }

    /// A better measurement of `name`'s frequency; if it is current, the timekeeper continues
    /// at the new rate from now, without a step.
    pub fn set_frequency<H: ReadCounter>(&mut self, tk: &Timekeeper, hw: &H, name: &str, hz: u64) {
        let Some(i) = self.index_of(name) else { return };
        if hz == 0 {
            return;
        }
        let s = self.sources[i].as_mut().expect("found above");
        s.hz = hz;
        if (self.current == Some(i) && self.standing_in.is_none()) || self.standing_in == Some(i) {
            tk.rebase(hw, Some(self.at(i).conversion()), 0);
        }
    }

    /// `name` is now read through `counter` (the same counter read another way: the base is
    /// kept, see [`Timekeeper::set_counter`]).
    pub fn set_counter(&mut self, tk: &Timekeeper, name: &str, counter: CounterId) {
        let Some(i) = self.index_of(name) else { return };
        self.sources[i].as_mut().expect("found above").desc.counter = counter;
        if (self.current == Some(i) && self.standing_in.is_none()) || self.standing_in == Some(i) {
            tk.set_counter(counter);
        }
    }

    /// `name`'s counter is about to stop (a suspend, a test writing the counter): if it is
    /// the current source, `stand_in` (a counter that runs on) keeps time until
    /// [`Clocksources::counter_restarted`], so the clock neither stops nor jumps. Linux measures
    /// suspended time the same way, on a "suspend-nonstop" clocksource. True if it stood in.
    pub fn counter_stopping<H: ReadCounter>(
        &mut self,
        tk: &Timekeeper,
        hw: &H,
        name: &str,
        stand_in: &str,
    ) -> bool {
        let (Some(current), Some(si)) = (self.current, self.index_of(stand_in)) else { return false };
        if self.at(current).name() != name || current == si || self.standing_in.is_some() {
            return false;
        }
        tk.rebase(hw, Some(self.at(si).conversion()), 0);
        self.standing_in = Some(si);
        true
    }

    /// `name`'s counter runs again (from any value): the clock continues on it from now.
    pub fn counter_restarted<H: ReadCounter>(&mut self, tk: &Timekeeper, hw: &H, name: &str) -> bool {
        match self.current {
            Some(c) if self.standing_in.is_some() && self.at(c).name() == name => {
                tk.rebase(hw, Some(self.at(c).conversion()), 0);
                self.standing_in = None;
                true
            }
            _ => false,
        }
    }

    /// Moves the timekeeper's base to now if the current counter wraps; to be called well
    /// within half its wrap (every 0.5 s does: see [`MIN_WRAP_NS`]).
    pub fn rebase_narrow<H: ReadCounter>(&self, tk: &Timekeeper, hw: &H) {
        if self.standing_in.is_none() && self.current().is_some_and(Source::narrow) {
            tk.rebase(hw, None, 0);
        }
    }

    /// Why `clocksource=` could not be honoured, if it could not.
    pub fn forced_problem(&self) -> Option<String> {
        let forced = self.forced?;
        let using = self.current_name();
        match self.get(forced) {
            None => Some(format!("clocksource={forced}: this machine has no {forced}; using {using}")),
            Some(s) if !s.stable() => Some(format!(
                "clocksource={forced}: {forced} is unstable ({}); using {using}",
                s.unstable.as_deref().unwrap_or("")
            )),
            Some(_) => None,
        }
    }
}

/// Fixed-point conversion from counter ticks to nanoseconds: `ns = ticks * mult >> shift`.
///
/// The product is taken in 128 bits, so no tick count overflows it; the shift is as large as a
/// 64-bit `mult` allows, which keeps the rounding error below one part in 2^32 for counters up to
/// 4 GHz. Conversion rounds down, so a converted time is never later than the true one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultShift {
    /// Nanoseconds per tick, scaled by `2^shift`.
    pub mult: u64,
    /// At most 63.
    pub shift: u32,
}

/// Nanoseconds in a second.
pub const NS_PER_S: u64 = 1_000_000_000;

impl MultShift {
    /// The conversion for a counter of `hz` ticks per second. `hz` must not be 0.
    pub fn ticks_to_ns(hz: u64) -> MultShift {
        assert!(hz > 0, "a counter of 0 Hz has no conversion");
        MultShift::ns_per_tick(NS_PER_S, hz)
    }

    /// The conversion for a counter whose tick lasts `numerator / denominator` ns (e.g. an
    /// HPET period in femtoseconds over 10^6 fs/ns). `denominator` must not be 0.
    pub fn ns_per_tick(numerator: u64, denominator: u64) -> MultShift {
        assert!(denominator > 0, "a tick length needs a non-zero denominator");
        let mult_for = |shift: u32| (u128::from(numerator) << shift) / u128::from(denominator);
        let mut shift = 63;
        while shift > 0 && mult_for(shift) > u128::from(u64::MAX) {
            shift -= 1;
        }
        MultShift { mult: mult_for(shift) as u64, shift }
    }

    /// `ticks * mult >> shift`, saturating. On the clock's hot path: the shift is masked to
    /// the 0..=63 it always is, so the compiler needs no check for larger ones.
    #[inline]
    pub fn apply(self, ticks: u64) -> u64 {
        let ns = (u128::from(ticks) * u128::from(self.mult)) >> (self.shift & 63);
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

    /// A TSC-like counter (id 1, 1 GHz) and an HPET-like one (id 2, 100 MHz) that can be
    /// stopped and set; the true time advances only when the test says so.
    struct Machine {
        t_ns: Cell<u64>,
        hpet_running: Cell<bool>,
        hpet: Cell<u64>,
        hpet_at: Cell<u64>,
    }

    impl Machine {
        fn new() -> Machine {
            Machine {
                t_ns: Cell::new(0),
                hpet_running: Cell::new(true),
                hpet: Cell::new(0),
                hpet_at: Cell::new(0),
            }
        }
        fn advance(&self, ns: u64) {
            self.sync_hpet();
            self.t_ns.set(self.t_ns.get() + ns);
        }
        fn sync_hpet(&self) {
            if self.hpet_running.get() {
                self.hpet.set(self.hpet.get() + (self.t_ns.get() - self.hpet_at.get()) / 10);
            }
            self.hpet_at.set(self.t_ns.get());
        }
    }

    impl ReadCounter for Machine {
        fn read(&self, c: CounterId) -> u64 {
            match c.0 {
                1 => self.t_ns.get(),
                2 => {
                    self.sync_hpet();
                    self.hpet.get()
                }
                _ => 0,
            }
        }
    }

    fn desc(name: &'static str, rating: u32, hz: u64, counter: u32) -> SourceDesc {
        SourceDesc {
            name,
            rating,
            hz,
            bits: 64,
            flags: SourceFlags::CPU_CONSISTENT,
            counter: CounterId(counter),
        }
    }

    fn tsc_and_hpet(tsc_rating: u32) -> (Machine, Timekeeper, Clocksources) {
        let (m, tk, mut cs) = (Machine::new(), Timekeeper::new(), Clocksources::new());
        cs.register(desc("tsc", tsc_rating, 1_000_000_000, 1)).unwrap();
        cs.select(&tk, &m);
        cs.register(desc("hpet", 250, 100_000_000, 2)).unwrap();
        cs.select(&tk, &m);
        (m, tk, cs)
    }

    #[test]
    fn the_highest_rating_wins_and_a_forced_source_beats_it_while_usable() {
        let (m, tk, mut cs) = tsc_and_hpet(300);
        assert_eq!(cs.current_name(), "tsc");
        cs.force("hpet");
        let s = cs.select(&tk, &m).expect("switched");
        assert_eq!((s.from, s.to, s.reason.as_str()), ("tsc", "hpet", "clocksource=hpet"));
        cs.mark_unstable("hpet", "test".into());
        let s = cs.select(&tk, &m).expect("switched back");
        assert_eq!(s.reason, "hpet unstable: test");
        assert_eq!(
            cs.forced_problem().as_deref(),
            Some("clocksource=hpet: hpet is unstable (test); using tsc")
        );
        assert_eq!(cs.switches().len(), 2);
    }

    #[test]
    fn a_tsc_rated_below_the_hpet_gives_way_to_it() {
        let (_, _, cs) = tsc_and_hpet(100);
        assert_eq!(cs.current_name(), "hpet");
        assert_eq!(cs.switches()[0].reason, "hpet (rating 250) rated above tsc (rating 100)");
    }

    #[test]
    fn a_narrow_counter_waits_until_it_is_rebased_periodically() {
        let (m, tk, mut cs) = (Machine::new(), Timekeeper::new(), Clocksources::new());
        cs.register(desc("tsc", 100, 1_000_000_000, 1)).unwrap();
        cs.register(SourceDesc { bits: 24, ..desc("acpi_pm", 200, 3_579_545, 3) }).unwrap();
        cs.select(&tk, &m);
        assert_eq!(cs.current_name(), "tsc");
        cs.allow_narrow();
        cs.select(&tk, &m);
        assert_eq!(cs.current_name(), "acpi_pm");
    }

    #[test]
    fn registration_refuses_what_it_cannot_keep_time_with() {
        let mut cs = Clocksources::new();
        assert_eq!(cs.register(desc("x", 1, 0, 1)), Err(RegisterError::ZeroFrequency("x")));
        assert_eq!(
            cs.register(SourceDesc { bits: 8, ..desc("x", 1, 1, 1) }),
            Err(RegisterError::BadWidth { name: "x", bits: 8 })
        );
        let fast = SourceDesc { bits: 24, ..desc("x", 1, 100_000_000, 1) };
        assert!(matches!(cs.register(fast), Err(RegisterError::WrapsTooFast { .. })));
        cs.register(desc("x", 1, 1, 1)).unwrap();
        assert_eq!(cs.register(desc("x", 1, 1, 1)), Err(RegisterError::Duplicate("x")));
    }

    #[test]
    fn a_stopped_counter_is_stood_in_for_and_may_restart_from_anywhere() {
        let (m, tk, mut cs) = tsc_and_hpet(100);
        m.advance(1_000_000);
        let before = tk.now(&m);
        assert!(cs.counter_stopping(&tk, &m, "hpet", "tsc"));
        m.hpet_running.set(false);
        m.advance(5_000_000);
        let during = tk.now(&m);
        assert!(during >= before + 5_000_000, "the TSC kept time: {before} -> {during}");
        // Set while stopped (a test near the wrap, or a power loss), then restarted.
        m.hpet.set(0xffff_ff00);
        m.hpet_running.set(true);
        assert!(cs.counter_restarted(&tk, &m, "hpet"));
        m.advance(1_000);
        let after = tk.now(&m);
        assert!(after >= during && after <= during + 2_000, "{during} -> {after}");
        assert!(!cs.counter_restarted(&tk, &m, "hpet"), "only once");
        assert!(!cs.counter_stopping(&tk, &m, "tsc", "tsc"), "not for a counter that is not current");
    }

    #[test]
    fn hundred_megahertz_is_ten_ns_per_tick() {
        let c = MultShift::ticks_to_ns(100_000_000);
        assert_eq!(c.apply(1), 10);
        assert_eq!(c.apply(100_000_000), NS_PER_S);
    }

    #[test]
    fn conversion_never_rounds_up() {
        for hz in [1u64, 32_768, 1_193_182, 14_318_180, 2_999_999_999, 4_000_000_000] {
            let c = MultShift::ticks_to_ns(hz);
            for ticks in [1u64, 7, hz, hz * 3 + 1, u64::from(u32::MAX), 1 << 50] {
                let exact = u128::from(ticks) * u128::from(NS_PER_S) / u128::from(hz);
                let got = u128::from(c.apply(ticks));
                if exact > u128::from(u64::MAX) {
                    assert_eq!(got, u128::from(u64::MAX), "{hz} Hz, {ticks} ticks must saturate");
                    continue;
                }
                assert!(got <= exact, "{hz} Hz, {ticks} ticks: {got} > {exact}");
                // Error below one part in 2^32, plus the final truncation.
                assert!(exact - got <= exact / (1 << 32) + 1, "{hz} Hz, {ticks} ticks: {got} vs {exact}");
            }
        }
    }

    #[test]
    fn hpet_period_in_femtoseconds_converts_exactly() {
        let c = MultShift::ns_per_tick(10_000_000, 1_000_000); // q35: 10 ns per tick
        assert_eq!(c.apply(123), 1230);
        let c = MultShift::ns_per_tick(69_841_279, 1_000_000); // 14.318 MHz
        assert_eq!(c.apply(14_318_180), 1_000_000_004); // exact: 1 000 000 004.6
    }

    #[test]
    fn huge_tick_counts_saturate_instead_of_wrapping() {
        let c = MultShift::ticks_to_ns(1);
        assert_eq!(c.apply(u64::MAX), u64::MAX);
    }
}
