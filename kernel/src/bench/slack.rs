//! The benchmark's slack phase: many timers on the measured CPU, their deadlines spread
//! evenly, armed with slack 0, 50 us and 1 ms ([`SLACKS_NS`]); for each, how many device
//! interrupts (or broadcast wake-ups) ran them, per timer, and their lateness from the
//! deadline (the callback's own clock read minus the deadline), which slack lets grow up to
//! the slack: the power argument in numbers (fewer interrupts) and its price (later timers).
//!
//! An interrupt is counted when it ran at least one of the phase's timers: each callback reads
//! its CPU's event count (`CpuTick::events`, bumped once per device interrupt or wake-up), and
//! the interrupts are the distinct counts seen, so that nothing else on the CPU is counted
//! unless it ran one of them (the waiting loop halts: no timer of its own; CPU 0's 0.5 s
//! housekeeping may land in a phase and run a few of them, as any other timer would).

use super::Percentiles;
use crate::arch::x86_64::smp;
use crate::time::clockevents::{self, TimerEvent};
use crate::time::clocksource::now_ns;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use serde::Serialize;
use spin::Mutex;

/// The slacks measured, in ns.
pub const SLACKS_NS: [u64; 3] = [0, 50_000, 1_000_000];
/// Timers per slack, and the distance between two deadlines (256 over 2.56 ms).
const TIMERS: usize = 256;
const SPACING_NS: u64 = 10_000;
/// From the arm to the first deadline: arming them all takes less (under TCG on a busy host
/// too, where a dev build arms 256 in about 2 ms).
const LEAD_NS: u64 = 20_000_000;
/// A phase whose timers have not all run after this long is abandoned (the rest count lost).
const STALL_NS: u64 = 5_000_000_000;

/// One slack's figures.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SlackResult {
    /// Timers armed.
    pub timers: u64,
    /// Device interrupts (or wake-ups) that ran at least one of them (the host divides by the
    /// timers that ran: `interrupts_per_timer`).
    pub interrupts: u64,
    /// Callback lateness from the deadline, ns.
    pub lateness_ns: Percentiles,
    /// Ran before the deadline (must be 0).
    pub early: u64,
    /// Ran after the end of its range (deadline + slack), by however little: the path's own
    /// latency (and a stalled vCPU) lands here, so this is a figure, not a failure.
    pub past_range: u64,
    /// Never ran.
    pub lost: u64,
}

/// What each callback records: its lateness, and the event count of the interrupt running it.
static SAMPLES: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());
static FIRED: AtomicU64 = AtomicU64::new(0);
static EARLY: AtomicU64 = AtomicU64::new(0);

fn on_timer(e: &TimerEvent) {
    let now = now_ns();
    let events = clockevents::with_tick(|t| t.events()).unwrap_or(0);
    if now < e.deadline_ns || e.now_ns < e.deadline_ns {
        EARLY.fetch_add(1, Ordering::Relaxed);
    }
    // Room was reserved before the arms: no allocation here.
    SAMPLES.lock().push((now.saturating_sub(e.deadline_ns), events));
    FIRED.fetch_add(1, Ordering::Release);
}

/// On the measured CPU: arms the phase's timers, `slack_ns` each; how many were refused.
fn arm_all(slack_ns: u64) -> u64 {
    let first = now_ns() + LEAD_NS;
    let mut refused = 0;
    for k in 0..TIMERS as u64 {
        if clockevents::arm_at_range(first + k * SPACING_NS, slack_ns, on_timer, k).is_err() {
            refused += 1;
        }
    }
    refused
}

fn measure(cpu: usize, slack_ns: u64) -> SlackResult {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut s = SAMPLES.lock();
        s.clear();
        s.reserve(TIMERS);
    });
    FIRED.store(0, Ordering::Relaxed);
    EARLY.store(0, Ordering::Relaxed);
    let refused = smp::call_on(cpu, move || arm_all(slack_ns)).unwrap_or(TIMERS as u64);
    let armed = TIMERS as u64 - refused;
    // Halting, not sleeping on a timer: a sleep's timer on the measured CPU would run the
    // phase's timers whose ranges had begun, and its interrupts would be counted with theirs;
    // nor spinning on the clock (under TCG, a loop of HPET reads holds QEMU's lock and delays
    // the very interrupts measured). Checked with interrupts off, then `sti; hlt`, so that an
    // interrupt after the check still ends the halt; CPU 0's housekeeping ends it at least
    // every 0.5 s, for the stall check.
    let mut progress = (0, now_ns());
    loop {
        x86_64::instructions::interrupts::disable();
        if FIRED.load(Ordering::Acquire) >= armed {
            x86_64::instructions::interrupts::enable();
            break;
        }
        x86_64::instructions::interrupts::enable_and_hlt();
        let fired = FIRED.load(Ordering::Relaxed);
        if fired != progress.0 {
            progress = (fired, now_ns());
        } else if now_ns() - progress.1 > STALL_NS {
            log::error!("slack {slack_ns} ns: {fired} of {armed} timers ran, the rest were lost");
            break;
        }
    }
    let samples =
        x86_64::instructions::interrupts::without_interrupts(|| core::mem::take(&mut *SAMPLES.lock()));
    let mut interrupts: Vec<u64> = samples.iter().map(|&(_, events)| events).collect();
    interrupts.sort_unstable();
    interrupts.dedup();
    let mut lateness: Vec<u64> = samples.iter().map(|&(l, _)| l).collect();
    let ran = lateness.len() as u64;
    let past_range = lateness.iter().filter(|&&l| l > slack_ns).count() as u64;
    SlackResult {
        timers: armed,
        interrupts: interrupts.len() as u64,
        lateness_ns: Percentiles::of(&mut lateness),
        early: EARLY.load(Ordering::Relaxed),
        past_range,
        lost: TIMERS as u64 - ran,
    }
}

/// Runs the phase on CPU `cpu`: per slack in ns, its figures.
pub fn run(cpu: usize) -> BTreeMap<u64, SlackResult> {
    SLACKS_NS.iter().map(|&slack_ns| (slack_ns, measure(cpu, slack_ns))).collect()
}
