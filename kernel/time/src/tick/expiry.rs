//! The expiry loop: what a CPU does when its tick device interrupts it or it is woken, written
//! once for every platform (the kernel, the host simulator, the fuzz target). The platform says
//! how to reach this CPU's tick behind its guard, how to read the clock and how to run a timer's
//! callback ([`ExpiryContext`]); the loop decides everything else.
//!
//! An expiry runs in passes (Linux's `hrtimer_interrupt`). A pass pops the timers due at its
//! clock read, one at a time under the guard, and runs each callback outside it (a callback may
//! arm and cancel timers, and a payload dropped may run code of its own, so nothing is dropped
//! under the guard either). A pass pops at most as many timers as were pending when it began,
//! so a callback that re-arms a timer in the past cannot keep a pass going. When a pass ends,
//! the clock is read again: if something is already due (callbacks took long, or re-armed in
//! the past), another pass runs, up to [`MAX_PASSES`]; after that the expiry has not caught up
//! (a hang): the device is programmed no earlier than the interrupt's own duration from now,
//! at most [`MAX_HANG_DELAY_NS`], so the CPU leaves its interrupt and the due timers run then,
//! late but never lost. Otherwise the next event is programmed once, from the fresh read.

use super::{CpuTick, DeviceFailure, DeviceId};
use crate::broadcast::Broadcast;
use crate::clocks::{ClockDeadline, Offsets};
use crate::hrtimer::{Expired, TimerId};
use crate::instant::Instant;
use crate::remote::Handles;
use spin::Mutex;

/// Passes of one expiry before it is judged a hang: the first and three retries, as Linux's
/// `hrtimer_interrupt`.
pub const MAX_PASSES: u32 = 4;

/// The longest a hang holds the CPU's next event back (Linux: 100 ms).
pub const MAX_HANG_DELAY_NS: u64 = 100_000_000;

/// Points of the expiry a platform may stamp (a benchmark's per-stage breakdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryPoint {
    /// The first due timer popped, its callback about to run.
    Popped,
    /// The last callback of a pass returned (or none was due).
    CallbacksDone,
    /// The next event programmed (or nothing needed).
    Reprogrammed,
}

/// What an expiry needs from the platform it runs on. Every method is called on the CPU whose
/// expiry it is. [`run`](Self::run) is never called with the tick's guard held;
/// [`now_ns`](Self::now_ns) and [`trace`](Self::trace) may be, so they must not touch the tick.
pub trait ExpiryContext {
    /// What each timer carries (its callback).
    type Payload;
    /// Runs `f` on this CPU's tick behind its guard (interrupts off, nothing else on this CPU
    /// can touch it), with the broadcast state; `None` if this CPU has no tick.
    fn with_tick<R>(&self, f: impl FnOnce(&mut CpuTick<Self::Payload>, &Mutex<Broadcast>) -> R) -> Option<R>;
    /// The clocksource now, in ns.
    fn now_ns(&self) -> u64;
    /// Runs a due timer's callback (outside the guard); `now_ns` is the pass's clock read.
    /// Returns the next deadline and the payload of a periodic timer to re-arm; a one-shot
    /// timer's payload is dropped here, outside the guard.
    fn run(&self, timer: Expired<Self::Payload>, now_ns: u64) -> Option<(u64, Self::Payload)>;
    /// The handle a payload was armed through ([`crate::remote::Handles::post`]), if any: its
    /// timer runs only if no cancel got there first. None by default (no handles).
    #[inline]
    fn handle_of(&self, payload: &Self::Payload) -> Option<TimerId> {
        let _ = payload;
        None
    }
    /// Whether a payload was armed through a handle: [`handle_of`](Self::handle_of)`.is_some()`,
    /// which a platform may answer more cheaply (it is asked before every callback).
    #[inline]
    fn has_handle(&self, payload: &Self::Payload) -> bool {
        self.handle_of(payload).is_some()
    }
    /// This CPU's table of handles, if it has one (none by default).
    #[inline]
    fn handles(&self) -> Option<&Handles<Self::Payload>> {
        None
    }
    /// The clock a payload's timer was armed on and its deadline there, for a timer not on
    /// MONOTONIC (none by default: every timer is on MONOTONIC). Such a timer is asked again
    /// whether its clock has reached its deadline when it falls due ([`offsets`](Self::offsets)
    /// fresh), and queued again if not (its clock was stepped back), never run early.
    #[inline]
    fn clock_deadline(&self, payload: &Self::Payload) -> Option<ClockDeadline> {
        let _ = payload;
        None
    }
    /// The clocks' offsets now (the timekeeper's, read afresh), for timers on REALTIME and
    /// BOOTTIME ([`clock_deadline`](Self::clock_deadline)); read only when such a timer is due.
    #[inline]
    fn offsets(&self) -> Offsets {
        Offsets::default()
    }
    /// CPU `cpu`'s table of handles: a timer that came from a CPU gone offline
    /// ([`crate::remote::leave`]) keeps its handle in that CPU's table, which its expiry here
    /// asks before its callback. By default only this CPU's own ([`handles`](Self::handles)).
    #[inline]
    fn handles_of(&self, cpu: usize) -> Option<&Handles<Self::Payload>> {
        self.handles().filter(|h| h.cpu() == cpu)
    }
    /// A point of the path reached (no-op by default).
    #[inline]
    fn trace(&self, point: ExpiryPoint) {
        let _ = point;
    }
}

/// An expiry that could not catch up with its due timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hang {
    /// How long the interrupt had run, from its first clock read to the last, in ns.
    pub took_ns: u64,
    /// No event is programmed before this time.
    pub held_until_ns: u64,
}

/// What an expiry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expiry {
    /// Callbacks run.
    pub callbacks: u32,
    /// Passes run (at least 1).
    pub passes: u32,
    /// Set when the expiry could not catch up (see the module's documentation).
    pub hang: Option<Hang>,
    /// The local (or broadcast) device gave up programming: the platform reports it to the
    /// registry, which takes it out and reassigns the CPUs it served.
    pub failure: Option<DeviceFailure>,
}

/// What an interrupt or a wake-up came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An expiry ran.
    Expired(Expiry),
    /// The device does not serve this CPU (stale or misrouted): the platform wakes the
    /// device's owner, which programs it again from its own CPU.
    NotOurs,
    /// Nothing to do: this CPU has no tick yet, or nothing serves it.
    Idle,
}

/// Device `device` interrupted this CPU, whose clock read `now_ns`: takes the event and runs
/// the expiry it starts. The event and the first pop share one guard.
#[inline]
pub fn device_interrupt<C: ExpiryContext>(cx: &C, device: DeviceId, now_ns: u64) -> Outcome {
    let mut pass = Pass::new(now_ns);
    let first = cx.with_tick(|t, bc| t.device_event(device, now_ns).then(|| next_step(cx, t, bc, &mut pass)));
    match first {
        None => Outcome::Idle,
        Some(None) => Outcome::NotOurs,
        Some(Some(step)) => Outcome::Expired(expire(cx, &mut pass, step)),
    }
}

/// This CPU was woken (by the broadcast, or for a misrouted event of its own device) at
/// `now_ns`: runs the expiry the wake-up starts.
#[inline]
pub fn wakeup<C: ExpiryContext>(cx: &C, now_ns: u64) -> Outcome {
    let mut pass = Pass::new(now_ns);
    let first = cx.with_tick(|t, bc| t.wakeup(now_ns).then(|| next_step(cx, t, bc, &mut pass)));
    match first.flatten() {
        None => Outcome::Idle,
        Some(step) => Outcome::Expired(expire(cx, &mut pass, step)),
    }
}

/// The state of an expiry between guards.
struct Pass {
    /// When the interrupt read the clock first.
    entry_ns: u64,
    /// This pass's clock read: what is due.
    now_ns: u64,
    passes: u32,
    callbacks: u32,
    hang: Option<Hang>,
}

impl Pass {
    #[inline]
    fn new(now_ns: u64) -> Pass {
        Pass { entry_ns: now_ns, now_ns, passes: 1, callbacks: 0, hang: None }
    }
}

/// One step of an expiry, decided under the guard.
enum Step<T> {
    /// A due timer, popped: run its callback (outside the guard).
    Run(Expired<T>),
    /// None left: the expiry is ended and the next event programmed.
    Done(Option<DeviceFailure>),
}

/// Under the guard: the next due timer of this pass; the pass over, another pass if something
/// is due already (up to [`MAX_PASSES`], then a hang), else the end of the expiry (the next
/// event programmed from a fresh clock read: the callbacks took time).
#[inline(always)]
fn next_step<C: ExpiryContext>(
    cx: &C,
    t: &mut CpuTick<C::Payload>,
    bc: &Mutex<Broadcast>,
    pass: &mut Pass,
) -> Step<C::Payload> {
    loop {
        if let Some(expired) = t.pop_expired(pass.now_ns) {
            match cx.clock_deadline(&expired.payload) {
                None => return Step::Run(expired),
                Some(at) => match not_yet(cx, t, expired, at, pass.now_ns) {
                    Some(due) => return Step::Run(due),
                    None => continue,
                },
            }
        }
        cx.trace(ExpiryPoint::CallbacksDone);
        let now_ns = cx.now_ns();
        if !t.end_pass(now_ns, bc) {
            if pass.passes < MAX_PASSES {
                pass.passes += 1;
                pass.now_ns = now_ns;
                t.next_pass(now_ns);
                continue;
            }
            let took_ns = now_ns.saturating_sub(pass.entry_ns);
            let held_until_ns = now_ns.saturating_add(took_ns.clamp(1, MAX_HANG_DELAY_NS));
            t.hold_until(held_until_ns, took_ns);
            pass.hang = Some(Hang { took_ns, held_until_ns });
            t.end_expiry(now_ns, bc);
        }
        cx.trace(ExpiryPoint::Reprogrammed);
        return Step::Done(t.take_failure());
    }
}

/// A timer on REALTIME or BOOTTIME fell due on MONOTONIC: if its clock has not reached its
/// deadline (stepped back since it was queued, and this CPU not told yet), it is queued again
/// where the fresh offsets place it (same id) and `None` says so; else it runs.
#[inline(never)]
fn not_yet<C: ExpiryContext>(
    cx: &C,
    t: &mut CpuTick<C::Payload>,
    expired: Expired<C::Payload>,
    at: ClockDeadline,
    now_ns: u64,
) -> Option<Expired<C::Payload>> {
    let offsets = cx.offsets();
    if at.reached(&offsets, Instant::from_nanos(now_ns)) {
        return Some(expired);
    }
    // Later than `now_ns` on MONOTONIC (its clock has not reached it): not due in this pass.
    let again = at.monotonic(&offsets).as_nanos().max(now_ns + 1);
    // Never refused: it is running, and nothing cancels it under this guard.
    let _ = t.complete(expired.id, Some((again, expired.payload)));
    None
}

/// A handle's timer runs only if no cancel got there first (from any CPU: the handle's state
/// says), and a periodic one is re-armed only if no cancel came while it ran. A payload not
/// run or not re-armed is dropped here, outside the guard.
#[inline(never)]
fn run_handle<C: ExpiryContext>(
    cx: &C,
    expired: Expired<C::Payload>,
    pass: &mut Pass,
) -> Option<(u64, C::Payload)> {
    let Some(handle) = cx.handle_of(&expired.payload) else {
        pass.callbacks += 1;
        return cx.run(expired, pass.now_ns);
    };
    // Its own CPU's table, or the table of the CPU it came from (gone offline).
    let handles = match cx.handles() {
        Some(own) if own.cpu() == handle.cpu() => Some(own),
        _ => cx.handles_of(handle.cpu()),
    };
    let Some(handles) = handles else {
        pass.callbacks += 1;
        return cx.run(expired, pass.now_ns);
    };
    if !handles.begin_run(handle) {
        drop(expired);
        return None;
    }
    pass.callbacks += 1;
    let again = cx.run(expired, pass.now_ns);
    if handles.end_run(handle, again.is_some()) { again } else { None }
}

/// Runs the popped timers' callbacks one at a time outside the guard, completing each (a
/// periodic one re-armed, a refused re-arm's payload dropped outside the guard) and popping the
/// next under one guard, until the expiry ends.
#[inline(always)]
fn expire<C: ExpiryContext>(cx: &C, pass: &mut Pass, mut step: Step<C::Payload>) -> Expiry {
    if matches!(step, Step::Run(_)) {
        cx.trace(ExpiryPoint::Popped);
    }
    loop {
        match step {
            Step::Run(expired) => {
                let id = expired.id;
                let again = if cx.has_handle(&expired.payload) {
                    run_handle(cx, expired, pass)
                } else {
                    pass.callbacks += 1;
                    cx.run(expired, pass.now_ns)
                };
                let next = cx.with_tick(|t, bc| {
                    let refused = t.complete(id, again).err();
                    (refused, next_step(cx, t, bc, pass))
                });
                // A payload whose re-arm was refused (cancelled by its own callback) is
                // dropped here, after the guard: its drop may touch this CPU's timers.
                step = match next {
                    Some((refused, next)) => {
                        drop(refused);
                        next
                    }
                    None => Step::Done(None),
                };
            }
            Step::Done(failure) => {
                return Expiry { callbacks: pass.callbacks, passes: pass.passes, hang: pass.hang, failure };
            }
        }
    }
}
