//! Property tests of the clocksource layer over arbitrary sequences of operations: sources of
//! any rate, width and rating registered, made unstable, re-measured, forced, and time passing
//! between reads. Whatever happens, the clock never goes back, and between two reads it
//! advances by the true time that passed, give or take the pauses a switch may cause (one read
//! of a counter each) and the conversion's rounding.

use super::{Clocksources, CounterId, ReadCounter, SourceDesc, SourceFlags, Timekeeper, mask_of};
use core::cell::Cell;
use proptest::prelude::*;

/// Up to three counters on one true timeline; every read takes `read_ns` of it.
struct Machine {
    t_ns: Cell<u64>,
    hz: [u64; 4],
    bits: [u32; 4],
    read_ns: [u64; 4],
}

impl ReadCounter for Machine {
    fn read(&self, c: CounterId) -> u64 {
        let i = c.0 as usize;
        if i == 0 {
            return 0;
        }
        let t = self.t_ns.get();
        self.t_ns.set(t + self.read_ns[i]);
        let ticks = u128::from(t) * u128::from(self.hz[i]) / 1_000_000_000;
        ticks as u64 & mask_of(self.bits[i])
    }
}

#[derive(Debug, Clone)]
enum Op {
    Register {
        i: usize,
        rating: u32,
    },
    Unstable(usize),
    /// A new frequency within +-`ppm` of the true one.
    Refine {
        i: usize,
        ppm: i32,
    },
    Force(usize),
    AllowNarrow,
    /// Time passes (then narrow counters are rebased, as the watchdog does every 0.5 s).
    Advance(u64),
    Read,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1usize..4, 1u32..400).prop_map(|(i, rating)| Op::Register { i, rating }),
        (1usize..4).prop_map(Op::Unstable),
        (1usize..4, -1000i32..=1000).prop_map(|(i, ppm)| Op::Refine { i, ppm }),
        (1usize..4).prop_map(Op::Force),
        Just(Op::AllowNarrow),
        (0u64..500_000_000).prop_map(Op::Advance),
        Just(Op::Read),
        Just(Op::Read),
    ]
}

const NAMES: [&str; 4] = ["none", "a", "b", "c"];

/// The selection rule restated: the forced source if usable, else the first registered of the
/// highest rating among the usable ones (stable, and not narrow unless narrow ones are allowed).
fn expected_best(cs: &Clocksources) -> Option<&'static str> {
    let usable = |s: &&super::Source| s.stable() && (!s.narrow() || cs.rebased_periodically);
    if let Some(f) = cs.forced().and_then(|f| cs.get(f)).filter(usable) {
        return Some(f.name());
    }
    let best_rating = cs.sources().filter(usable).map(|s| s.desc.rating).max()?;
    cs.sources().filter(usable).find(|s| s.desc.rating == best_rating).map(|s| s.name())
}

proptest! {
    #[test]
    fn the_clock_is_monotonic_and_continuous_across_switches(
        hz in prop::array::uniform3(prop_oneof![Just(3_579_545u64), Just(100_000_000u64), 1_000_000u64..5_000_000_000]),
        bits in prop::array::uniform3(prop_oneof![Just(24u32), Just(32u32), Just(64u32)]),
        read_ns in prop::array::uniform3(1u64..2_000),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let m = Machine {
            t_ns: Cell::new(1_000_000),
            hz: [0, hz[0], hz[1], hz[2]],
            bits: [0, bits[0], bits[1], bits[2]],
            read_ns: [0, read_ns[0], read_ns[1], read_ns[2]],
        };
        let tk = Timekeeper::new();
        let mut cs = Clocksources::new();
        // The largest rate error any source may have (refinements stay within 1000 ppm).
        let max_ppm = 1_000u128;
        let mut last: Option<(u64, u64)> = None; // (clock, true time) of the last read
        let mut pauses_ns = 0u64; // what the switches since the last read may have lost
        for op in ops {
            match op {
                Op::Register { i, rating } => {
                    let desc = SourceDesc {
                        name: NAMES[i], rating, hz: m.hz[i], bits: m.bits[i],
                        flags: SourceFlags::CPU_CONSISTENT, counter: CounterId(i as u32),
                    };
                    let _ = cs.register(desc);
                }
                Op::Unstable(i) => { cs.mark_unstable(NAMES[i], "test".into()); }
                Op::Refine { i, ppm } => {
                    let hz = (i128::from(m.hz[i]) * (1_000_000 + i128::from(ppm)) / 1_000_000) as u64;
                    cs.set_frequency(&tk, &m, NAMES[i], hz);
                    pauses_ns += 2 * m.read_ns[i] + 2;
                }
                Op::Force(i) => cs.force(NAMES[i]),
                Op::AllowNarrow => cs.allow_narrow(),
                Op::Advance(ns) => {
                    m.t_ns.set(m.t_ns.get() + ns);
                    cs.rebase_narrow(&tk, &m);
                    pauses_ns += 2 * 2_000 + 2;
                }
                Op::Read => {
                    let t_before = m.t_ns.get();
                    let now = tk.now(&m);
                    if let Some((prev, t_prev)) = last {
                        prop_assert!(now >= prev, "the clock went back from {} to {}", prev, now);
                        let truth = u128::from(t_before - t_prev);
                        // Rounding: one tick of the slowest counter (< 1 us) per read and rebase.
                        let rounding = 1_000 + pauses_ns;
                        let upper = truth + truth * max_ppm / 1_000_000 + 2 * 2_000 + rounding as u128;
                        prop_assert!(u128::from(now - prev) <= upper, "jumped {} ns over {} ns", now - prev, truth);
                        let lower = truth.saturating_sub(truth * max_ppm / 1_000_000 + u128::from(rounding) + 2 * 2_000);
                        prop_assert!(u128::from(now - prev) >= lower, "advanced {} ns over {} ns", now - prev, truth);
                    }
                    if cs.current().is_some() {
                        last = Some((now, t_before));
                        pauses_ns = 0;
                    }
                }
            }
            // Every operation ends with the best source current, as the kernel keeps it.
            let before = tk.now(&m);
            cs.select(&tk, &m);
            pauses_ns += 2 * 2_000 + 2;
            prop_assert!(tk.now(&m) >= before, "a switch stepped back");
            // With no usable source the current one stays (a clock that may be wrong beats none).
            if let Some(best) = expected_best(&cs) {
                prop_assert_eq!(cs.current().map(|c| c.name()), Some(best), "not the best source");
            }
        }
    }
}
