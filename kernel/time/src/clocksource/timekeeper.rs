//! The system clock's hot path: one snapshot of "which counter, from which base, at what
//! rate", published under a sequence counter, and [`Timekeeper::now`], which reads it without
//! a lock and turns one counter reading into nanoseconds.
//!
//! A reader loads the sequence number, the snapshot, reads the counter, and loads the sequence
//! number again; if a writer was at work meanwhile (the number is odd or changed) it reads
//! again. Writers (a switch of source, a new rate, moving the base ahead of a narrow counter's
//! wrap) are serialised by the caller and must not be interrupted by a reader on their own CPU
//! (they run with interrupts off): a reader there would spin forever.
//!
//! Every write moves the base to "now": `base_ns` is the old snapshot's time at the moment of
//! the write, `base_cycles` the new counter's reading just after it, so time continues from
//! where it was, never stepping back, and pauses at most for the length of one counter read.

use super::MultShift;
use crate::clocks::{Clocks, Offsets, WallTime};
use crate::instant::Instant;
use core::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering, fence};

/// Which hardware counter a snapshot reads: an opaque number the architecture code assigns
/// and [`ReadCounter`] understands. [`CounterId::NONE`] reads 0 (before any source exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CounterId(pub u32);

impl CounterId {
    /// No counter: it reads 0.
    pub const NONE: CounterId = CounterId(0);
}

/// Reads a hardware counter: the one static dispatch of the hot path. A kernel implements it
/// on a unit type of its own (a `match` on the id, each arm a direct read), so that reading
/// the clock compiles to direct calls; host tests implement it on fakes.
pub trait ReadCounter {
    /// The counter's current raw reading.
    fn read(&self, counter: CounterId) -> u64;
}

/// How a snapshot turns counter readings into ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conversion {
    /// The counter it reads.
    pub counter: CounterId,
    /// Ticks -> ns.
    pub rate: MultShift,
    /// `2^bits - 1` for a `bits`-wide counter.
    pub mask: u64,
    /// A delta above this is a reading behind the base (a CPU whose counter lags the one that
    /// took the base): it counts as 0, so that CPU's time waits instead of leaping a wrap.
    /// `mask / 2` for counters that differ per CPU (the TSC), `mask` for global ones.
    pub max_delta: u64,
}

impl Conversion {
    /// Reads no counter and turns every reading into 0 ns: the clock before the first source.
    pub const NONE: Conversion =
        Conversion { counter: CounterId::NONE, rate: MultShift { mult: 0, shift: 0 }, mask: 0, max_delta: 0 };

    /// Ticks from `base` to `cycles`, across the counter's wrap; 0 for a reading behind.
    #[inline(always)]
    pub fn delta(&self, base: u64, cycles: u64) -> u64 {
        let d = cycles.wrapping_sub(base) & self.mask;
        if d > self.max_delta { 0 } else { d }
    }
}

/// One consistent view of the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// How readings become ns.
    pub conv: Conversion,
    /// The counter's reading at the base.
    pub base_cycles: u64,
    /// The time at the base, in ns.
    pub base_ns: u64,
}

impl Snapshot {
    /// The time at counter reading `cycles`.
    #[inline(always)]
    pub fn ns_at(&self, cycles: u64) -> u64 {
        self.base_ns.saturating_add(self.conv.rate.apply(self.conv.delta(self.base_cycles, cycles)))
    }

    /// The first counter reading at which the clock reads `ns` or later ([`ns_at`](Self::ns_at)
    /// of it is at least `ns`): what a comparator on this counter is set to for an event at
    /// `ns`, never early. `None` for a time before the base, beyond the readings the snapshot
    /// converts (`max_delta`), or without a counter.
    #[inline]
    pub fn cycles_at(&self, ns: u64) -> Option<u64> {
        let since = ns.checked_sub(self.base_ns)?;
        let mult = u128::from(self.conv.rate.mult);
        if mult == 0 {
            return None;
        }
        // ns_at(base + t) = base_ns + floor(t * mult >> shift) >= ns once t * mult >= since << shift.
        let ticks = (u128::from(since) << (self.conv.rate.shift & 63)).div_ceil(mult);
        let ticks = u64::try_from(ticks).ok().filter(|&t| t <= self.conv.max_delta)?;
        Some(self.base_cycles.wrapping_add(ticks) & self.conv.mask)
    }
}

/// The published snapshot. Its fields are atomics so that a torn read is a defined one; the
/// sequence number tells the reader whether it was torn.
pub struct Timekeeper {
    seq: AtomicU32,
    counter: AtomicU32,
    shift: AtomicU32,
    mult: AtomicU64,
    mask: AtomicU64,
    max_delta: AtomicU64,
    base_cycles: AtomicU64,
    base_ns: AtomicU64,
    /// REALTIME minus MONOTONIC, and the time suspended ([`Offsets`]): read only by
    /// [`clocks`](Timekeeper::clocks), under the same sequence number as the rest.
    offs_real: AtomicI64,
    offs_suspended: AtomicU64,
}

impl Default for Timekeeper {
    fn default() -> Self {
        Self::new()
    }
}

impl Timekeeper {
    /// A clock that reads 0 until a source is installed.
    pub const fn new() -> Timekeeper {
        Timekeeper {
            seq: AtomicU32::new(0),
            counter: AtomicU32::new(0),
            shift: AtomicU32::new(0),
            mult: AtomicU64::new(0),
            mask: AtomicU64::new(0),
            max_delta: AtomicU64::new(0),
            base_cycles: AtomicU64::new(0),
            base_ns: AtomicU64::new(0),
            offs_real: AtomicI64::new(0),
            offs_suspended: AtomicU64::new(0),
        }
    }

    #[inline(always)]
    fn load(&self) -> Snapshot {
        self.load_for(CounterId(self.counter.load(Ordering::Relaxed)))
    }

    /// The snapshot, its counter loaded already.
    #[inline(always)]
    fn load_for(&self, counter: CounterId) -> Snapshot {
        Snapshot {
            conv: Conversion {
                counter,
                rate: MultShift {
                    mult: self.mult.load(Ordering::Relaxed),
                    shift: self.shift.load(Ordering::Relaxed),
                },
                mask: self.mask.load(Ordering::Relaxed),
                max_delta: self.max_delta.load(Ordering::Relaxed),
            },
            base_cycles: self.base_cycles.load(Ordering::Relaxed),
            base_ns: self.base_ns.load(Ordering::Relaxed),
        }
    }

    fn store(&self, s: &Snapshot) {
        self.counter.store(s.conv.counter.0, Ordering::Relaxed);
        self.mult.store(s.conv.rate.mult, Ordering::Relaxed);
        self.shift.store(s.conv.rate.shift, Ordering::Relaxed);
        self.mask.store(s.conv.mask, Ordering::Relaxed);
        self.max_delta.store(s.conv.max_delta, Ordering::Relaxed);
        self.base_cycles.store(s.base_cycles, Ordering::Relaxed);
        self.base_ns.store(s.base_ns, Ordering::Relaxed);
    }

    /// The time now: one counter read, no lock, no write to shared memory. The counter is
    /// read as soon as its id is known, the rest of the snapshot loaded after it: the reading
    /// is the time the caller asked at, so the conversion's loads belong after it (all of
    /// them between the two loads of the sequence number, as before).
    ///
    /// One attempt in line, straight through; a write in progress sends the reader to
    /// `now_retry`, out of line. A loop here would have the compiler keep
    /// the statics' addresses in registers across it, which costs every caller (interrupt
    /// handlers and timer callbacks among them) their saving and restoring before the read.
    #[inline(always)]
    pub fn now<H: ReadCounter>(&self, hw: &H) -> u64 {
        let seq = self.seq.load(Ordering::Acquire);
        // The counter is read before the writer check: a reading taken during a write is
        // thrown away below, and reading a counter has no side effects.
        let counter = CounterId(self.counter.load(Ordering::Relaxed));
        let cycles = hw.read(counter);
        let snap = self.load_for(counter);
        // The snapshot's loads (and the counter read) happen before the re-check.
        fence(Ordering::Acquire);
        if seq & 1 == 0 && self.seq.load(Ordering::Relaxed) == seq {
            return snap.ns_at(cycles);
        }
        self.now_retry(hw)
    }

    /// [`now`](Self::now) after a first attempt met a write: attempts until one meets none.
    /// The attempt is written out in both places on purpose: shared as one `Option`-returning
    /// function it measured 10 ns (instructions) more per callback's read under icount, dev
    /// build (`scripts/bench`, per-CPU HPET 280 -> 290).
    #[cold]
    #[inline(never)]
    fn now_retry<H: ReadCounter>(&self, hw: &H) -> u64 {
        loop {
            core::hint::spin_loop();
            let seq = self.seq.load(Ordering::Acquire);
            if seq & 1 == 0 {
                let counter = CounterId(self.counter.load(Ordering::Relaxed));
                let cycles = hw.read(counter);
                let snap = self.load_for(counter);
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == seq {
                    return snap.ns_at(cycles);
                }
            }
        }
    }

    /// The counter the clock reads and its reading at which the clock reads `ns` or later
    /// ([`Snapshot::cycles_at`]), from one consistent snapshot.
    #[inline]
    pub fn cycles_at(&self, ns: u64) -> Option<(CounterId, u64)> {
        loop {
            let seq = self.seq.load(Ordering::Acquire);
            if seq & 1 == 0 {
                let snap = self.load();
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == seq {
                    return snap.cycles_at(ns).map(|c| (snap.conv.counter, c));
                }
            }
            core::hint::spin_loop();
        }
    }

    /// The snapshot as published (for reports and tests; not consistent with a concurrent write).
    pub fn snapshot(&self) -> Snapshot {
        loop {
            let seq = self.seq.load(Ordering::Acquire);
            let snap = self.load();
            fence(Ordering::Acquire);
            if seq & 1 == 0 && self.seq.load(Ordering::Relaxed) == seq {
                return snap;
            }
            core::hint::spin_loop();
        }
    }

    /// Moves the base to now and continues with `next` (the current conversion if `None`):
    /// `base_ns` is the current time plus `forward_ns`, `base_cycles` a reading of the next
    /// counter taken after it. Returns the new `base_ns`. Callers serialise writes and keep
    /// interrupts off (see the module documentation).
    ///
    /// `forward_ns` lets a switch away from a counter that differs between CPUs (a TSC with a
    /// measured warp) start ahead of every CPU's reading, so that no CPU sees time go back.
    pub fn rebase<H: ReadCounter>(&self, hw: &H, next: Option<Conversion>, forward_ns: u64) -> u64 {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        let old = self.load();
        let now = old.ns_at(hw.read(old.conv.counter));
        let conv = next.unwrap_or(old.conv);
        let base_cycles = hw.read(conv.counter);
        let new = Snapshot { conv, base_cycles, base_ns: now.saturating_add(forward_ns) };
        self.store(&new);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
        new.base_ns
    }
}

impl Timekeeper {
    /// MONOTONIC, REALTIME and BOOTTIME now, from one snapshot and one counter read (a step
    /// of REALTIME is seen whole or not at all). [`now`](Self::now) alone does not load the
    /// offsets.
    pub fn clocks<H: ReadCounter>(&self, hw: &H) -> Clocks {
        loop {
            let seq = self.seq.load(Ordering::Acquire);
            if seq & 1 == 0 {
                let snap = self.load();
                let offsets = Offsets {
                    realtime_ns: self.offs_real.load(Ordering::Relaxed),
                    suspended_ns: self.offs_suspended.load(Ordering::Relaxed),
                };
                let cycles = hw.read(snap.conv.counter);
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == seq {
                    return offsets.at(Instant::from_nanos(snap.ns_at(cycles)));
                }
            }
            core::hint::spin_loop();
        }
    }

    /// The offsets as published (consistent with each other).
    pub fn offsets(&self) -> Offsets {
        loop {
            let seq = self.seq.load(Ordering::Acquire);
            let o = Offsets {
                realtime_ns: self.offs_real.load(Ordering::Relaxed),
                suspended_ns: self.offs_suspended.load(Ordering::Relaxed),
            };
            fence(Ordering::Acquire);
            if seq & 1 == 0 && self.seq.load(Ordering::Relaxed) == seq {
                return o;
            }
            core::hint::spin_loop();
        }
    }

    /// Steps REALTIME to read `to` now (MONOTONIC and BOOTTIME do not move); returns the step,
    /// in ns (negative: backwards). Callers serialise writes as for [`rebase`](Self::rebase).
    pub fn set_realtime<H: ReadCounter>(&self, hw: &H, to: WallTime) -> i64 {
        self.write(|tk| {
            let snap = tk.load();
            let now = snap.ns_at(hw.read(snap.conv.counter));
            let offset =
                (i128::from(to.as_nanos()) - i128::from(now)).clamp(i64::MIN.into(), i64::MAX.into()) as i64;
            let old = tk.offs_real.swap(offset, Ordering::Relaxed);
            offset.saturating_sub(old)
        })
    }

    /// Steps REALTIME by `delta_ns` (negative: backwards), exactly (MONOTONIC and BOOTTIME do
    /// not move); returns the step made (saturating). Serialised as [`rebase`](Self::rebase).
    pub fn step_realtime(&self, delta_ns: i64) -> i64 {
        self.write(|tk| {
            let old = tk.offs_real.load(Ordering::Relaxed);
            let new = old.saturating_add(delta_ns);
            tk.offs_real.store(new, Ordering::Relaxed);
            new - old
        })
    }

    /// Time spent suspended, `ns`, is added: BOOTTIME and REALTIME move on by it, MONOTONIC
    /// does not (the caller has kept MONOTONIC from counting it). Serialised as
    /// [`rebase`](Self::rebase).
    pub fn add_suspended(&self, ns: u64) {
        self.write(|tk| tk.count_suspended(ns))
    }

    /// BOOTTIME and REALTIME move on by `ns` (inside a write).
    fn count_suspended(&self, ns: u64) {
        let s = self.offs_suspended.load(Ordering::Relaxed);
        self.offs_suspended.store(s.saturating_add(ns), Ordering::Relaxed);
        let r = self.offs_real.load(Ordering::Relaxed);
        self.offs_real.store(r.saturating_add(i64::try_from(ns).unwrap_or(i64::MAX)), Ordering::Relaxed);
    }

    /// The machine was asleep for the last `asleep_ns` (by a clock that ran meanwhile, the
    /// clocksource included): MONOTONIC takes them back, continuing from where it stood when
    /// the sleep began, and BOOTTIME and REALTIME count them (Linux's
    /// `timekeeping_resume`/`__timekeeping_inject_sleeptime`). The caller guarantees nobody
    /// read MONOTONIC during the sleep, so nobody sees it go back. Returns MONOTONIC now.
    /// Serialised as [`rebase`](Self::rebase).
    pub fn resume_after<H: ReadCounter>(&self, hw: &H, asleep_ns: u64) -> u64 {
        self.write(|tk| {
            let snap = tk.load();
            let cycles = hw.read(snap.conv.counter);
            let now = snap.ns_at(cycles);
            let asleep = asleep_ns.min(now.saturating_sub(snap.base_ns));
            let base_ns = now - asleep;
            tk.store(&Snapshot { conv: snap.conv, base_cycles: cycles, base_ns });
            tk.count_suspended(asleep);
            base_ns
        })
    }

    /// The machine slept with its counters reset (ACPI S3: the firmware's reset leaves the
    /// TSC, the HPET and the rest at whatever they read after it): MONOTONIC continues from
    /// `stopped_ns`, its reading when the sleep began (never below the current base), from the
    /// counter's reading now, and BOOTTIME and REALTIME move on by `asleep_ns` (measured by a
    /// clock that ran meanwhile, the RTC). The caller guarantees nobody read the clock between
    /// `stopped_ns` and this call. Returns MONOTONIC now. Serialised as [`rebase`](Self::rebase).
    pub fn resume_from_reset<H: ReadCounter>(&self, hw: &H, stopped_ns: u64, asleep_ns: u64) -> u64 {
        self.write(|tk| {
            let snap = tk.load();
            let cycles = hw.read(snap.conv.counter);
            let base_ns = stopped_ns.max(snap.base_ns);
            tk.store(&Snapshot { conv: snap.conv, base_cycles: cycles, base_ns });
            tk.count_suspended(asleep_ns);
            base_ns
        })
    }

    /// Runs `f` as a writer: the sequence number odd around it.
    fn write<R>(&self, f: impl FnOnce(&Self) -> R) -> R {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        let r = f(self);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
        r
    }

    /// Reads the same counter through `counter` from now on, keeping the base: for a counter
    /// read another way that gives the same values (the TSC with the `tsc_skew` fault added,
    /// which differs only on the skewed CPU, where the skew then shows). Callers serialise
    /// writes as for [`Timekeeper::rebase`].
    pub fn set_counter(&self, counter: CounterId) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.counter.store(counter.0, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }
}

/// `2^bits - 1`, for `bits` in 1..=64.
pub const fn mask_of(bits: u32) -> u64 {
    if bits >= 64 { u64::MAX } else { (1u64 << bits) - 1 }
}

/// Extends a `bits`-wide counter reading `raw` to 64 bits given `previous`, the last extended
/// value: readings less than half a wrap apart advance it exactly, across the wrap if need be;
/// a reading behind it (at least half a wrap "ahead") leaves it unchanged, never a jump of
/// nearly a whole wrap.
pub fn extend(previous: u64, raw: u64, bits: u32) -> u64 {
    let mask = mask_of(bits);
    let elapsed = raw.wrapping_sub(previous) & mask;
    if elapsed > mask / 2 { previous } else { previous.wrapping_add(elapsed) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

    /// Counters that advance by a fixed step on every read.
    pub(crate) struct Fake {
        pub values: [Cell<u64>; 3],
        pub steps: [u64; 3],
        pub masks: [u64; 3],
    }

    impl ReadCounter for Fake {
        fn read(&self, c: CounterId) -> u64 {
            let i = c.0 as usize;
            if i == 0 {
                return 0;
            }
            let v = self.values[i].get();
            self.values[i].set(v.wrapping_add(self.steps[i]));
            v & self.masks[i]
        }
    }

    fn conv(counter: u32, hz: u64, bits: u32) -> Conversion {
        let mask = mask_of(bits);
        Conversion { counter: CounterId(counter), rate: MultShift::ticks_to_ns(hz), mask, max_delta: mask }
    }

    #[test]
    fn cycles_at_is_the_first_reading_at_or_after_the_time() {
        // The comparator value for an event at `ns`: the clock reads `ns` or later there, and
        // before `ns` one tick earlier (never early, and no later than needed), across a wrap.
        for (hz, bits) in
            [(1_000_000_000, 64), (100_000_000, 64), (14_318_180, 32), (3_579_545, 24), (32_768, 32)]
        {
            let conv = conv(2, hz, bits);
            let snap = Snapshot { conv, base_cycles: conv.mask - 1_000, base_ns: 5_000_000 };
            for since in [0, 1, 7, 999, 10_000, 123_456_789, 4_000_000_000] {
                let ns = snap.base_ns + since;
                let c = snap.cycles_at(ns).expect("within the counter's range");
                assert!(snap.ns_at(c) >= ns, "{hz} Hz: reading {c} is at {} < {ns}", snap.ns_at(c));
                if c != snap.base_cycles {
                    let before = c.wrapping_sub(1) & conv.mask;
                    assert!(snap.ns_at(before) < ns, "{hz} Hz: {before} reads {ns} already");
                }
            }
            assert_eq!(snap.cycles_at(snap.base_ns - 1), None, "before the base");
        }
        assert_eq!(Snapshot { conv: Conversion::NONE, base_cycles: 0, base_ns: 0 }.cycles_at(5), None);
    }

    #[test]
    fn clock_reads_zero_before_any_source() {
        let tk = Timekeeper::new();
        let hw = Fake { values: Default::default(), steps: [0, 1, 1], masks: [0, u64::MAX, u64::MAX] };
        assert_eq!(tk.now(&hw), 0);
    }

    #[test]
    fn installing_a_source_starts_it_at_the_previous_time() {
        let tk = Timekeeper::new();
        let hw = Fake {
            values: [Cell::new(0), Cell::new(5_000), Cell::new(77)],
            steps: [0, 1_000, 10],
            masks: [0, u64::MAX, mask_of(24)],
        };
        assert_eq!(tk.rebase(&hw, Some(conv(1, 1_000_000_000, 64)), 0), 0);
        // 1 GHz counter, 1000 ticks per read: each read is 1 us later.
        assert_eq!(tk.now(&hw), 1_000);
        assert_eq!(tk.now(&hw), 2_000);
        // Switch to a 100 MHz 24-bit counter: time continues from the old counter's reading.
        let at = tk.rebase(&hw, Some(conv(2, 100_000_000, 24)), 0);
        assert_eq!(at, 3_000);
        assert_eq!(tk.now(&hw), 3_100, "one read (10 ticks = 100 ns) later");
    }

    #[test]
    fn narrow_counter_wraps_into_the_future_not_the_past() {
        let tk = Timekeeper::new();
        let hw = Fake {
            values: [Cell::new(0), Cell::new(mask_of(24) - 5), Cell::new(0)],
            steps: [0, 10, 0],
            masks: [0, mask_of(24), 0],
        };
        tk.rebase(&hw, Some(conv(1, 1_000_000_000, 24)), 0);
        assert_eq!(tk.now(&hw), 10, "across the 24-bit wrap");
    }

    #[test]
    fn a_lagging_reading_waits_at_the_base() {
        let tk = Timekeeper::new();
        let hw = Fake {
            values: [Cell::new(0), Cell::new(1_000), Cell::new(0)],
            steps: [0, 0, 0],
            masks: [0, u64::MAX, 0],
        };
        let c = Conversion { max_delta: u64::MAX / 2, ..conv(1, 1_000_000_000, 64) };
        tk.rebase(&hw, Some(c), 500);
        // Another CPU's counter is 100 ticks behind the base.
        hw.values[1].set(900);
        assert_eq!(tk.now(&hw), 500, "held at the base instead of wrapping 2^64 ticks ahead");
    }

    #[test]
    fn reading_the_same_counter_another_way_keeps_the_base() {
        let tk = Timekeeper::new();
        // Counter 2 reads counter 1 plus a skew of 500 ticks.
        let hw = Fake {
            values: [Cell::new(0), Cell::new(10_000), Cell::new(10_500)],
            steps: [0, 0, 0],
            masks: [0, u64::MAX, u64::MAX],
        };
        tk.rebase(&hw, Some(conv(1, 1_000_000_000, 64)), 0);
        let before = tk.snapshot();
        tk.set_counter(CounterId(2));
        let after = tk.snapshot();
        assert_eq!((after.base_cycles, after.base_ns), (before.base_cycles, before.base_ns));
        assert_eq!(tk.now(&hw), 500, "the skew shows as a lead");
    }

    #[test]
    fn the_three_clocks_come_from_one_snapshot_and_a_step_moves_realtime_alone() {
        let hw = Fake { values: Default::default(), steps: [0; 3], masks: [0, u64::MAX, u64::MAX] };
        let tk = Timekeeper::new();
        tk.rebase(&hw, Some(conv(1, 1_000_000_000, 64)), 0);
        hw.values[1].set(5_000);
        let c = tk.clocks(&hw);
        assert_eq!(
            (c.monotonic.as_nanos(), c.realtime.as_nanos(), c.boottime.as_nanos()),
            (5_000, 5_000, 5_000)
        );
        let wall = WallTime::from_unix_seconds(1_936_778_400);
        assert_eq!(tk.set_realtime(&hw, wall), wall.as_nanos() as i64 - 5_000, "the step");
        assert_eq!((tk.step_realtime(-7), tk.step_realtime(7)), (-7, 7), "a step by, exactly");
        hw.values[1].set(6_000);
        let c = tk.clocks(&hw);
        assert_eq!(
            c.realtime,
            WallTime::from_nanos(wall.as_nanos() + 1_000),
            "REALTIME runs on from the step"
        );
        assert_eq!(
            (c.monotonic.as_nanos(), c.boottime.as_nanos()),
            (6_000, 6_000),
            "the others did not move"
        );
        assert_eq!(tk.now(&hw), 6_000);
        // Back by a minute: REALTIME alone steps back.
        let back = WallTime::from_nanos(c.realtime.as_nanos() - 60_000_000_000);
        assert_eq!(tk.set_realtime(&hw, back), -60_000_000_000);
        assert_eq!(tk.clocks(&hw).realtime, back);
        // A suspend of 2 s: BOOTTIME and REALTIME move on, MONOTONIC does not.
        tk.add_suspended(2_000_000_000);
        let c = tk.clocks(&hw);
        assert_eq!(c.monotonic.as_nanos(), 6_000);
        assert_eq!(c.boottime.as_nanos(), 2_000_006_000);
        assert_eq!(c.realtime.as_nanos(), back.as_nanos() + 2_000_000_000);
        assert_eq!(tk.offsets().suspended_ns, 2_000_000_000);
    }

    #[test]
    fn a_resume_takes_the_sleep_out_of_monotonic_and_puts_it_in_boottime_and_realtime() {
        let hw = Fake { values: Default::default(), steps: [0; 3], masks: [0, u64::MAX, u64::MAX] };
        let tk = Timekeeper::new();
        tk.rebase(&hw, Some(conv(1, 1_000_000_000, 64)), 0);
        hw.values[1].set(1_000);
        tk.set_realtime(&hw, WallTime::from_nanos(5_000_000));
        let before = tk.clocks(&hw);
        // 700 ns awake after the read, then 10 000 ns asleep.
        hw.values[1].set(1_000 + 700 + 10_000);
        let mono = tk.resume_after(&hw, 10_000);
        let after = tk.clocks(&hw);
        assert_eq!(mono, 1_700);
        assert_eq!(after.monotonic.as_nanos(), before.monotonic.as_nanos() + 700, "MONOTONIC stopped asleep");
        assert_eq!(
            after.boottime.as_nanos(),
            before.boottime.as_nanos() + 10_700,
            "BOOTTIME counts the sleep"
        );
        assert_eq!(after.realtime.as_nanos(), before.realtime.as_nanos() + 10_700, "so does REALTIME");
        hw.values[1].set(1_000 + 700 + 10_000 + 50);
        assert_eq!(tk.now(&hw), 1_750, "and runs on from there");
        // A sleep longer than the clock has run since its base is cut to that, never below.
        assert_eq!(tk.resume_after(&hw, u64::MAX), 1_750 - 50);
    }

    #[test]
    fn a_resume_from_reset_continues_monotonic_whatever_the_counter_reads_after_it() {
        let hw = Fake { values: Default::default(), steps: [0; 3], masks: [0, u64::MAX, u64::MAX] };
        let tk = Timekeeper::new();
        tk.rebase(&hw, Some(conv(1, 1_000_000_000, 64)), 0);
        hw.values[1].set(5_000_000);
        tk.set_realtime(&hw, WallTime::from_nanos(9_000_000_000));
        let before = tk.clocks(&hw);
        // The counters reset in the sleep: the counter reads far less than before.
        hw.values[1].set(300);
        let mono = tk.resume_from_reset(&hw, before.monotonic.as_nanos(), 2_000_000_000);
        assert_eq!(mono, 5_000_000, "MONOTONIC continues from where it stopped");
        let after = tk.clocks(&hw);
        assert_eq!(after.monotonic.as_nanos(), 5_000_000, "not back to the counter's 300");
        assert_eq!(
            after.boottime.as_nanos(),
            before.boottime.as_nanos() + 2_000_000_000,
            "BOOTTIME counts the sleep"
        );
        assert_eq!(after.realtime.as_nanos(), before.realtime.as_nanos() + 2_000_000_000, "so does REALTIME");
        hw.values[1].set(300 + 40);
        assert_eq!(tk.now(&hw), 5_000_040, "and runs on from the counter's new reading");
        // A counter reset to more than it read (a TSC starting high) does not move it either.
        hw.values[1].set(u64::MAX / 2);
        assert_eq!(tk.resume_from_reset(&hw, 5_000_040, 0), 5_000_040);
        // A stop time behind the base (a caller's mistake) never takes the clock back.
        hw.values[1].set(7);
        assert_eq!(tk.resume_from_reset(&hw, 1, 0), 5_000_040);
    }

    #[test]
    fn extension_handles_every_width() {
        assert_eq!(extend(0, 5, 24), 5);
        assert_eq!(extend(0xff_fff0, 0x10, 24), 0x100_0010);
        assert_eq!(extend(0xffff_fff0, 0x10, 32), 0x1_0000_0010);
        assert_eq!(extend(u64::MAX - 1, 3, 64), 3, "64-bit wraps like the counter");
        assert_eq!(extend(0x180, 0x100, 32), 0x180, "a reading behind leaves it unchanged");
        assert_eq!(extend(0, (1 << 23) - 1, 24), (1 << 23) - 1, "just under half a wrap advances");
        assert_eq!(extend(0, 1 << 23, 24), 0, "half a wrap ahead counts as behind");
    }
}
