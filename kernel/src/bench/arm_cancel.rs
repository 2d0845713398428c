//! The benchmark's arm/cancel phase: what arming and cancelling one timer costs on a CPU under
//! the stress test's load, where the queue holds many pending timers and the heap has been
//! fragmented by a random mix of allocation sizes, some freed and some kept, as the stress
//! test's boxed cross-CPU posts and growing queues leave it. Two pairs, in TSC cycles (under
//! icount, instructions):
//! - `arm_at` + `cancel` of a plain function timer: the queue's own cost (no allocation
//!   within its reserve);
//! - `Timer::at` with a boxed closure + `Timer::cancel`: the same plus one allocation and one
//!   free, where the allocator's cost shows;
//! - the boxed pair again after the heap also got splinters: thousands of small holes, each
//!   too small for the closure, between small blocks kept live (the worst case of a first-fit
//!   allocator, which walks past every one of them; a binned one does not look at them);
//! - where the measured CPU is not the calling one: `Timer::at` on it from the calling CPU and
//!   the `Timer::cancel` from there too, each a cross-CPU message and a wait for its answer
//!   (under icount the other vCPU's turn counts: QEMU runs vCPUs round-robin).

use super::Percentiles;
use crate::arch::x86_64::smp::{self, percpu};
use crate::arch::x86_64::tsc;
use crate::time::clockevents::{self, Cancelled, Timer, TimerEvent};
use crate::time::clocksource::now_ns;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use kernel_time::hrtimer::TimerId;
use kernel_time::instant::Instant;
use serde::Serialize;

/// Timers pending on the measured CPU while it is measured (the stress test keeps 2 000 per
/// CPU in flight; its queues have grown past that).
const PENDING: usize = 10_000;
/// Heap blocks allocated to fragment the heap, their sizes (bytes), and the churn after it.
const BLOCKS: usize = 20_000;
const BLOCK_SIZES: (usize, usize) = (8, 1024);
const CHURN_ROUNDS: usize = 4;
/// Splinters added for the last pair: holes of this size between blocks kept live.
const SPLINTERS: usize = 5_000;
const SPLINTER_BYTES: usize = 24;
/// Pairs measured of each kind, in calls of this many to the measured CPU (a call on another
/// CPU must finish within `smp::call_on`'s second).
const PAIRS: usize = 2_000;
const PAIRS_PER_CALL: usize = 250;
/// Cross-CPU pairs measured.
const REMOTE_PAIRS: usize = 500;
/// The pending and measured timers' deadlines: far enough that none fires meanwhile.
const FAR_NS: u64 = 1_000_000_000_000;
const SPREAD_NS: u64 = 1_000_000_000;

/// What the pairs were measured under.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Load {
    /// Timers pending on the measured CPU.
    pub pending_timers: u64,
    /// Heap blocks kept live among the holes of those freed.
    pub heap_blocks: u64,
    /// Small holes added for the splintered pair.
    pub splinters: u64,
    /// Pairs whose arm failed (not measured).
    pub failed: u64,
}

/// The phase's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct ArmCancel {
    pub load: Load,
    pub plain: Percentiles,
    pub boxed: Percentiles,
    pub boxed_splintered: Percentiles,
    /// Cross-CPU arm + cancel (no samples when the measured CPU is the calling one).
    pub remote: Percentiles,
}

/// xorshift64: the same sequence on every boot, so every allocator sees the same load.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A block size between `BLOCK_SIZES`, spread evenly over the powers of two.
    fn block_size(&mut self) -> usize {
        let (min, max) = BLOCK_SIZES;
        let octaves = (max / min).ilog2() as usize;
        let base = min << self.below(octaves);
        base + self.below(base)
    }
}

fn block(rng: &mut Rng) -> Box<[u8]> {
    alloc::vec![0xa5u8; rng.block_size()].into_boxed_slice()
}

/// Fills the heap with `BLOCKS` blocks of random sizes, churns them (a third freed and as
/// many allocated again, `CHURN_ROUNDS` times), then frees a random half; returns the rest.
fn fragment_heap(rng: &mut Rng) -> Vec<Box<[u8]>> {
    let mut live: Vec<Box<[u8]>> = Vec::with_capacity(BLOCKS);
    for _ in 0..BLOCKS {
        live.push(block(rng));
    }
    for _ in 0..CHURN_ROUNDS {
        for _ in 0..BLOCKS / 3 {
            let i = rng.below(live.len());
            live.swap_remove(i);
        }
        while live.len() < BLOCKS {
            live.push(block(rng));
        }
    }
    for _ in 0..BLOCKS / 2 {
        let i = rng.below(live.len());
        live.swap_remove(i);
    }
    live
}

/// Leaves up to `SPLINTERS` holes of `SPLINTER_BYTES` wherever the allocator puts small
/// blocks: allocates twice as many in a row and frees every other one (a freed block
/// between two live ones stays a hole of its own); returns the live ones.
fn splinter_heap() -> Vec<Box<[u8]>> {
    let mut blocks: Vec<Option<Box<[u8]>>> = Vec::with_capacity(2 * SPLINTERS);
    for _ in 0..2 * SPLINTERS {
        blocks.push(Some(alloc::vec![0x5au8; SPLINTER_BYTES].into_boxed_slice()));
    }
    let mut kept = Vec::with_capacity(SPLINTERS);
    for (i, b) in blocks.iter_mut().enumerate() {
        if i % 2 == 1 {
            kept.extend(b.take());
        }
    }
    drop(blocks);
    kept
}

fn never(_: &TimerEvent) {}

static SINK: AtomicU64 = AtomicU64::new(0);

/// Arms the pending timers on the calling CPU.
fn arm_pending(deadlines: Vec<u64>) -> Vec<TimerId> {
    deadlines.into_iter().filter_map(|d| clockevents::arm_at(d, never, 0).ok()).collect()
}

fn cancel_pending(ids: Vec<TimerId>) {
    for id in ids {
        let _ = clockevents::cancel(id).expect("armed on this CPU");
    }
}

/// One `arm_at` + `cancel` per deadline on the calling CPU: cycles, or `None` if it failed.
fn plain_pairs(deadlines: Vec<u64>) -> Vec<Option<u64>> {
    let pair = |deadline| {
        let start = tsc::read();
        let cancelled = clockevents::arm_at(deadline, never, 0).map(clockevents::cancel);
        let end = tsc::read();
        (cancelled == Ok(Ok(true))).then_some(end - start)
    };
    deadlines.into_iter().map(pair).collect()
}

/// One `Timer::at` with a boxed closure + `Timer::cancel` per deadline on the calling CPU. The
/// closure holds 48 bytes, as the one `post_on` boxes for a cross-CPU post.
fn boxed_pairs(deadlines: Vec<u64>) -> Vec<Option<u64>> {
    let cpu = percpu::this_cpu().index;
    let pair = |deadline: u64| {
        let state = [deadline; 6];
        let start = tsc::read();
        let timer = Timer::at(cpu, Instant::from_nanos(deadline), move |e| {
            SINK.fetch_add(state[e.data as usize % 6], Ordering::Relaxed);
        });
        let cancelled = timer.map(|t| {
            let c = t.cancel();
            t.detach();
            c
        });
        let end = tsc::read();
        (cancelled == Ok(Cancelled::Pending)).then_some(end - start)
    };
    deadlines.into_iter().map(pair).collect()
}

/// `Timer::at` on CPU `cpu` + `Timer::cancel`, both from the calling CPU (another one): cycles
/// of each pair that cancelled a pending timer, and the failures.
fn remote_pairs(cpu: usize, rng: &mut Rng, base: u64) -> (Vec<u64>, u64) {
    let (mut cycles, mut failed) = (Vec::with_capacity(REMOTE_PAIRS), 0);
    for _ in 0..REMOTE_PAIRS {
        let deadline = base + rng.next() % SPREAD_NS;
        let start = tsc::read();
        let cancelled = Timer::with_fn(cpu, Instant::from_nanos(deadline), never, 0).map(|t| {
            let c = t.cancel();
            t.detach(); // cancelled already: its drop must not cancel (another message) again
            c
        });
        let end = tsc::read();
        match cancelled {
            Ok(Cancelled::Pending) => cycles.push(end - start),
            _ => failed += 1,
        }
    }
    (cycles, failed)
}

/// Runs `pairs` on `cpu` in calls of `PAIRS_PER_CALL`, at deadlines spread as the pending
/// timers' from `base` (so each arm sifts through the queue alike, whenever it runs); returns
/// the cycles and the failures.
fn measure(cpu: usize, rng: &mut Rng, base: u64, pairs: fn(Vec<u64>) -> Vec<Option<u64>>) -> (Vec<u64>, u64) {
    let (mut cycles, mut failed) = (Vec::with_capacity(PAIRS), 0);
    for _ in 0..PAIRS / PAIRS_PER_CALL {
        let deadlines: Vec<u64> = (0..PAIRS_PER_CALL).map(|_| base + rng.next() % SPREAD_NS).collect();
        match smp::call_on(cpu, move || pairs(deadlines)) {
            Ok(results) => {
                for r in results {
                    match r {
                        Some(c) => cycles.push(c),
                        None => failed += 1,
                    }
                }
            }
            Err(e) => {
                log::error!("arm/cancel pairs on CPU {cpu}: {e:?}");
                failed += PAIRS_PER_CALL as u64;
            }
        }
    }
    (cycles, failed)
}

/// Loads CPU `cpu` (pending timers) and the heap (fragmentation), measures both pairs there,
/// and undoes the load.
pub fn run(cpu: usize) -> ArmCancel {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let base = now_ns() + FAR_NS;
    let deadlines: Vec<u64> = (0..PENDING).map(|_| base + rng.next() % SPREAD_NS).collect();
    let pending = smp::call_on(cpu, move || arm_pending(deadlines)).unwrap_or_default();
    let kept = fragment_heap(&mut rng);
    let (mut plain, plain_failed) = measure(cpu, &mut rng, base, plain_pairs);
    let (mut boxed, boxed_failed) = measure(cpu, &mut rng, base, boxed_pairs);
    let splinters = splinter_heap();
    let (mut splintered, splintered_failed) = measure(cpu, &mut rng, base, boxed_pairs);
    let (mut remote, remote_failed) =
        if cpu == percpu::this_cpu().index { (Vec::new(), 0) } else { remote_pairs(cpu, &mut rng, base) };
    let load = Load {
        pending_timers: pending.len() as u64,
        heap_blocks: kept.len() as u64,
        splinters: SPLINTERS as u64,
        failed: plain_failed + boxed_failed + splintered_failed + remote_failed,
    };
    drop(splinters);
    drop(kept);
    if smp::call_on(cpu, move || cancel_pending(pending)).is_err() {
        log::warn!("the pending timers on CPU {cpu} could not be cancelled");
    }
    ArmCancel {
        load,
        plain: Percentiles::of(&mut plain),
        boxed: Percentiles::of(&mut boxed),
        boxed_splintered: Percentiles::of(&mut splintered),
        remote: Percentiles::of(&mut remote),
    }
}
