//! The cross-CPU TSC synchronisation check's arithmetic (in the spirit of Linux's
//! `check_tsc_sync_source/target`): two CPUs take turns, each under a shared lock reading its
//! counter and storing the reading as "last"; a reading below the "last" the other CPU stored
//! is a backward step. The largest backward step is the warp: how far one CPU's counter lags
//! (or leads) the other's at the same instant.

use super::MultShift;

/// A warp above this marks the TSC unsynchronised. Under TCG both vCPUs read the host's
/// counter and the check measures 0; a real unsynchronised TSC (or `tsc_skew`) differs by
/// microseconds to seconds. Linux allows none; a few hundred ns of allowance keeps the check
/// meaningful on hosts whose counters differ by a cache miss.
pub const SYNC_THRESHOLD_NS: u64 = 1_000;

/// A check whose turn passed between the CPUs fewer times than this compared too little to
/// say the counters agree: its verdict is [`SyncVerdict::Unjudged`], which is not trusted as
/// synchronized (the check fails closed).
pub const MIN_JUDGED_HANDOVERS: u64 = 2;

/// The shared state of one check: the last reading stored by either CPU and which CPU took
/// it, the largest backward step seen so far, and how often the turn passed from one CPU to
/// the other (a check in which it never did compared nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarpMeter {
    last: u64,
    last_cpu: usize,
    /// The largest backward step seen, in counter ticks.
    pub max_warp: u64,
    /// Readings taken by both CPUs together.
    pub steps: u64,
    /// Readings behind the one before them.
    pub backward_steps: u64,
    /// Times the turn passed from one CPU to the other.
    pub handovers: u64,
}

impl WarpMeter {
    /// A meter that has seen nothing.
    pub const fn new() -> WarpMeter {
        WarpMeter { last: 0, last_cpu: 0, max_warp: 0, steps: 0, backward_steps: 0, handovers: 0 }
    }

    /// One turn: CPU `cpu` read `now` while holding the lock the other CPU also takes. Returns
    /// the backward step it made, if any.
    pub fn step(&mut self, cpu: usize, now: u64) -> Option<u64> {
        let previous = self.last;
        self.last = now;
        self.steps += 1;
        if self.steps > 1 && cpu != self.last_cpu {
            self.handovers += 1;
        }
        self.last_cpu = cpu;
        if self.steps > 1 && previous > now {
            let warp = previous - now;
            self.backward_steps += 1;
            self.max_warp = self.max_warp.max(warp);
            return Some(warp);
        }
        None
    }

    /// The verdict, the warp converted at `hz` (rounded up, so a warp of 1 cycle is not 0 ns).
    pub fn result(&self, hz: u64) -> SyncResult {
        let warp_ns = if self.max_warp == 0 {
            0
        } else {
            let ns = MultShift::ticks_to_ns(hz.max(1)).apply(self.max_warp);
            ns.max(1)
        };
        // A backward step beyond the threshold is evidence however few handovers showed it;
        // no such step is evidence of agreement only if the CPUs really took turns.
        let verdict = if warp_ns > SYNC_THRESHOLD_NS {
            SyncVerdict::Warped
        } else if self.handovers < MIN_JUDGED_HANDOVERS {
            SyncVerdict::Unjudged
        } else {
            SyncVerdict::Synchronized
        };
        SyncResult { warp_ns, steps: self.steps, handovers: self.handovers, verdict }
    }
}

/// What a check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncVerdict {
    /// The CPUs took turns often enough and no backward step exceeded [`SYNC_THRESHOLD_NS`].
    Synchronized,
    /// A backward step exceeded [`SYNC_THRESHOLD_NS`].
    Warped,
    /// Fewer than [`MIN_JUDGED_HANDOVERS`] handovers: nothing to trust either way.
    Unjudged,
}

impl core::fmt::Display for SyncVerdict {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SyncVerdict::Synchronized => "synchronized",
            SyncVerdict::Warped => "beyond the threshold",
            SyncVerdict::Unjudged => "too few handovers to judge",
        })
    }
}

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncResult {
    /// The largest backward step, in ns (rounded up: a warp of one tick is not 0 ns).
    pub warp_ns: u64,
    /// Readings taken by both CPUs together.
    pub steps: u64,
    /// Times the turn passed from one CPU to the other.
    pub handovers: u64,
    /// What it concluded.
    pub verdict: SyncVerdict,
}

impl SyncResult {
    /// Whether the counters can be trusted as synchronized: only a judged check within the
    /// threshold says so (an [`Unjudged`](SyncVerdict::Unjudged) one does not).
    pub fn synchronized(&self) -> bool {
        self.verdict == SyncVerdict::Synchronized
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two CPUs alternating over a true timeline, the second `offset` ticks ahead.
    fn alternate(offset: i64, turns: u64) -> WarpMeter {
        let mut m = WarpMeter::new();
        for t in 0..turns {
            let truth = 1_000_000 + t * 10;
            let reading = if t % 2 == 0 { truth } else { (truth as i64 + offset) as u64 };
            m.step((t % 2) as usize, reading);
        }
        m
    }

    #[test]
    fn synchronized_counters_never_step_back() {
        let m = alternate(0, 1000);
        assert_eq!(m.max_warp, 0);
        assert_eq!(m.backward_steps, 0);
        assert_eq!(
            m.result(2_000_000_000),
            SyncResult { warp_ns: 0, steps: 1000, handovers: 999, verdict: SyncVerdict::Synchronized }
        );
    }

    #[test]
    fn a_leading_cpu_shows_its_lead_minus_one_turn() {
        // CPU 1 leads by 1000 ticks; CPU 0 reads 10 ticks later than CPU 1's last reading.
        let m = alternate(1000, 100);
        assert_eq!(m.max_warp, 990);
        assert_eq!(m.backward_steps, 49, "each of CPU 0's turns after the first");
    }

    #[test]
    fn a_lagging_cpu_is_caught_too() {
        let m = alternate(-1000, 100);
        assert_eq!(m.max_warp, 990);
        assert_eq!(m.backward_steps, 50, "each of CPU 1's turns");
    }

    #[test]
    fn warp_is_converted_and_judged_against_the_threshold() {
        let mut m = WarpMeter::new();
        m.step(0, 10_000);
        m.step(1, 10_000 - 2_000); // 2000 cycles at 1 GHz: 2 us back
        let r = m.result(1_000_000_000);
        assert_eq!(r.warp_ns, 2_000);
        assert_eq!(r.verdict, SyncVerdict::Warped, "2 us is beyond {SYNC_THRESHOLD_NS} ns");
        assert!(!r.synchronized());
        let mut m = WarpMeter::new();
        m.step(0, 10);
        m.step(1, 9); // one cycle of a 3 GHz TSC: 0.33 ns, rounded up to 1
        m.step(0, 11);
        assert_eq!(
            m.result(3_000_000_000),
            SyncResult { warp_ns: 1, steps: 3, handovers: 2, verdict: SyncVerdict::Synchronized }
        );
    }

    #[test]
    fn the_first_reading_is_not_compared_with_nothing() {
        let mut m = WarpMeter::new();
        assert_eq!(m.step(1, 5), None);
        assert_eq!(m.step(0, 3), Some(2));
    }

    #[test]
    fn too_few_handovers_are_not_trusted_as_synchronized() {
        // The other CPU never took a turn: nothing was compared.
        let mut m = WarpMeter::new();
        for t in 0..1000 {
            m.step(0, t);
        }
        let r = m.result(1_000_000_000);
        assert_eq!(r.verdict, SyncVerdict::Unjudged, "no handover");
        assert!(!r.synchronized(), "an unjudged check is not trusted as synchronized");
        assert_eq!(r.verdict.to_string(), "too few handovers to judge");
        // One handover: a single comparison, not enough either.
        let mut m = WarpMeter::new();
        m.step(0, 10);
        m.step(1, 11);
        assert!(!m.result(1_000_000_000).synchronized(), "one handover: unjudged");
        // Two are: the minimum judged.
        m.step(0, 12);
        assert_eq!(m.result(1_000_000_000).verdict, SyncVerdict::Synchronized);
        // A warp beyond the threshold is a warp even with one handover.
        let mut m = WarpMeter::new();
        m.step(0, 10_000);
        m.step(1, 5_000);
        assert_eq!(m.result(1_000_000_000).verdict, SyncVerdict::Warped);
    }

    #[test]
    fn handovers_count_the_turns_that_changed_hands() {
        let mut m = WarpMeter::new();
        for (cpu, t) in [(0, 1), (0, 2), (1, 3), (1, 4), (0, 5), (1, 6)] {
            m.step(cpu, t);
        }
        assert_eq!(m.handovers, 3);
    }
}
