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
//!
//! **Deferred timers** (Linux's `HRTIMER_MODE_SOFT`): a timer whose payload asks for it
//! ([`ExpiryContext::is_deferred`]) is popped by the expiry as any other, never early, but its
//! callback does not run here: it is handed to the CPU's deferred list
//! ([`CpuTick::defer`], on the pop's cold path), the expiry counts it ([`Expiry::deferred`]) and the
//! platform has the CPU's deferred run ([`run_deferred`]) come soon, outside the interrupt
//! (the kernel: at the exit of its outermost interrupt, after the EOI, with interrupts
//! enabled). That run takes the waiting timers in the order they were popped, runs each
//! callback and completes it in the queue (a cancel during the callback answers running and
//! stops a periodic re-arm; a periodic timer is re-armed on its grid after its callback,
//! once). It is bounded as a pass is: it takes at most the timers waiting when it began, and
//! says whether others are left ([`DeferredRun::left`]) for the platform to run again soon. A cancel while a timer waits
//! answers pending and it never runs ([`crate::hrtimer::TimerQueue::defer`]); the list lives in
//! the queue's slots, so it is never full and allocates nothing.

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
    /// A device interrupt's clock read taken ([`device_interrupt`]: under the guard, the event
    /// known to be this CPU's, right before the first pop; the broadcast device's: first,
    /// [`super::glue::device_interrupt`]).
    ClockRead,
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
    /// fresh), and queued again if not (its clock was stepped back), never run early. Only hard
    /// timers are asked: a timer [`is_deferred`](Self::is_deferred) goes to the deferred list
    /// unasked, so keep timers on REALTIME and BOOTTIME hard (the kernel's are).
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
    /// Whether a payload is a plain timer: hard and on MONOTONIC, neither
    /// [`is_deferred`](Self::is_deferred) nor on another clock
    /// ([`clock_deadline`](Self::clock_deadline)), as the default says; asked of every timer
    /// popped before the other two, so a platform that can answer it in one test should.
    #[inline(always)]
    fn is_plain(&self, payload: &Self::Payload) -> bool {
        !self.is_deferred(payload) && self.clock_deadline(payload).is_none()
    }
    /// Whether a payload asks for its callback to run deferred, outside the hard interrupt
    /// (see the module's documentation); false by default. Asked of every timer popped: one
    /// load and a branch.
    #[inline(always)]
    fn is_deferred(&self, payload: &Self::Payload) -> bool {
        let _ = payload;
        false
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
    /// Timers popped and handed to the CPU's deferred list instead of run here: the platform
    /// has [`run_deferred`] come soon when this is not 0.
    pub deferred: u32,
    /// Passes run (at least 1).
    pub passes: u32,
    /// Set when the expiry could not catch up (see the module's documentation).
    pub hang: Option<Hang>,
    /// The local (or broadcast) device gave up programming: the platform reports it to the
    /// registry, which takes it out and reassigns the CPUs it served.
    pub failure: Option<DeviceFailure>,
    /// The broadcast's timer this CPU carries fell due ([`CpuTick::take_broadcast_due`]): the
    /// platform runs the broadcast's event ([`super::glue::expiry_done`] does).
    pub broadcast_due: bool,
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

/// Device `device` interrupted this CPU: takes the event and runs the expiry it starts. The
/// event, the interrupt's clock read and the first pop share one guard, in that order: the
/// clock is read once the guard is held and the event is known to be this CPU's, right before
/// the pop (Linux's `hrtimer_interrupt` reads it under its lock too), so what is due is
/// judged by the freshest reading and nothing but the pop stands between the reading and the
/// first callback. An event that is not this CPU's reads no clock.
#[inline]
pub fn device_interrupt<C: ExpiryContext>(cx: &C, device: DeviceId) -> Outcome {
    // Made before the guard: nothing of it waits on the clock read but its two times.
    let mut pass = Pass::new(0);
    let first = cx.with_tick(|t, bc| {
        if !t.claim_device_event(device) {
            return None;
        }
        let now_ns = cx.now_ns();
        cx.trace(ExpiryPoint::ClockRead);
        t.device_event_at(now_ns);
        pass.entry_ns = now_ns;
        pass.now_ns = now_ns;
        Some(next_step(cx, t, bc, &mut pass))
    });
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
    /// Callbacks run; added to wrapping (a pass runs at most the queue's length), as the dev
    /// build's overflow check would cost every callback.
    callbacks: u32,
    deferred: u32,
    hang: Option<Hang>,
    broadcast_due: bool,
}

impl Pass {
    #[inline]
    fn new(now_ns: u64) -> Pass {
        Pass {
            entry_ns: now_ns,
            now_ns,
            passes: 1,
            callbacks: 0,
            deferred: 0,
            hang: None,
            broadcast_due: false,
        }
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
        // A plain timer (the common case) is told apart in one test; a deferred one goes to
        // the CPU's deferred list, one on another clock is asked whether its clock has come.
        if let Some(expired) = t.pop_expired(pass.now_ns) {
            if cx.is_plain(&expired.payload) {
                return Step::Run(expired);
            }
            match not_plain(cx, t, expired, pass) {
                Some(due) => return Step::Run(due),
                None => continue,
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
        pass.deferred = pass.deferred.wrapping_add(t.take_deferred_popped());
        pass.broadcast_due = t.take_broadcast_due();
        return Step::Done(t.take_failure());
    }
}

/// A timer popped that is not plain: a deferred one goes to the CPU's deferred list (counted:
/// `None`); one on another clock runs if its clock has reached its deadline ([`not_yet`]);
/// any other runs (`Some`).
#[cold]
#[inline(never)]
fn not_plain<C: ExpiryContext>(
    cx: &C,
    t: &mut CpuTick<C::Payload>,
    expired: Expired<C::Payload>,
    pass: &mut Pass,
) -> Option<Expired<C::Payload>> {
    if cx.is_deferred(&expired.payload) {
        // Popped under this guard: no cancel came since, so it is never refused.
        if let Err(payload) = t.defer(expired) {
            unreachable_drop(payload);
        }
        pass.deferred = pass.deferred.wrapping_add(1);
        return None;
    }
    match cx.clock_deadline(&expired.payload) {
        None => Some(expired),
        Some(at) => not_yet(cx, t, expired, at, pass.now_ns),
    }
}

/// A payload that cannot come back here; if it did, it is leaked rather than dropped under
/// the guard (its drop may touch this CPU's timers).
#[cold]
fn unreachable_drop<T>(payload: T) {
    debug_assert!(false, "a timer popped under this guard was refused its deferral");
    core::mem::forget(payload);
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
        pass.callbacks = pass.callbacks.wrapping_add(1);
        return cx.run(expired, pass.now_ns);
    };
    // Its own CPU's table, or the table of the CPU it came from (gone offline).
    let handles = match cx.handles() {
        Some(own) if own.cpu() == handle.cpu() => Some(own),
        _ => cx.handles_of(handle.cpu()),
    };
    let Some(handles) = handles else {
        pass.callbacks = pass.callbacks.wrapping_add(1);
        return cx.run(expired, pass.now_ns);
    };
    if !handles.begin_run(handle) {
        drop(expired);
        return None;
    }
    pass.callbacks = pass.callbacks.wrapping_add(1);
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
                    pass.callbacks = pass.callbacks.wrapping_add(1);
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
                return Expiry {
                    callbacks: pass.callbacks,
                    deferred: pass.deferred,
                    passes: pass.passes,
                    hang: pass.hang,
                    failure,
                    broadcast_due: pass.broadcast_due,
                };
            }
        }
    }
}

/// What a deferred run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeferredRun {
    /// Deferred callbacks run.
    pub callbacks: u32,
    /// Timers taken but not run: cancelled through their handle while they waited.
    pub cancelled: u32,
    /// Timers still waiting (deferred by interrupts during this run): the platform runs the
    /// deferred list again soon.
    pub left: bool,
    /// Completing a periodic timer reprogrammed the device, which gave up: the platform
    /// reports it to the registry, as after an expiry.
    pub failure: Option<DeviceFailure>,
}

/// The CPU's deferred run (on its CPU, outside any expiry and any interrupt handler, never
/// nested in another run of its own: the platform keeps one run at a time per CPU): takes the
/// timers waiting in its deferred list, at most as many as were waiting when it began, in the
/// order they were popped; runs each callback outside the guard (a handle's only if no cancel
/// came first), with the clock read just before it as `now_ns`, and completes it in the queue
/// (a periodic timer re-armed on its grid, the device programmed for it). Payloads are dropped
/// outside the guard.
pub fn run_deferred<C: ExpiryContext>(cx: &C) -> DeferredRun {
    let mut run = DeferredRun::default();
    let budget = cx.with_tick(|t, _| t.deferred_waiting()).unwrap_or(0);
    for _ in 0..budget {
        let Some(expired) = cx.with_tick(|t, _| t.take_deferred()).flatten() else { break };
        let id = expired.id;
        let mut pass = Pass::new(cx.now_ns());
        let again = if cx.has_handle(&expired.payload) {
            run_handle(cx, expired, &mut pass)
        } else {
            pass.callbacks = pass.callbacks.wrapping_add(1);
            cx.run(expired, pass.now_ns)
        };
        if pass.callbacks == 0 {
            run.cancelled += 1;
        }
        run.callbacks += pass.callbacks;
        let refused = cx.with_tick(|t, bc| {
            let refused = t.complete_deferred(id, again, cx.now_ns(), bc).err();
            run.failure = run.failure.or(t.take_failure());
            refused
        });
        // A refused re-arm's payload (cancelled during its callback) is dropped after the guard.
        drop(refused);
    }
    run.left = cx.with_tick(|t, _| t.deferred_waiting() > 0).unwrap_or(false);
    run
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::remote::harness::{DEFERRED, Owner};
    use crate::remote::{Cancelled, Handles};
    use core::sync::atomic::Ordering;
    use std::vec;
    use std::vec::Vec;

    const SOFT: u64 = DEFERRED | 1;
    const HARD: u64 = 2;

    /// The owner's expiry at `now` (after draining its inbox), as its device's interrupt.
    fn interrupt(cpu1: &Owner, now: u64) -> Expiry {
        cpu1.clock.store(now, Ordering::Relaxed);
        crate::remote::drain(cpu1, &cpu1.inbox, |m| panic!("no other messages here: {m:?}"))
            .expect("not nested");
        match wakeup(cpu1, now) {
            Outcome::Expired(e) => e,
            other => panic!("no expiry: {other:?}"),
        }
    }

    fn deferred_run(cpu1: &Owner, now: u64) -> DeferredRun {
        cpu1.clock.store(now, Ordering::Relaxed);
        run_deferred(cpu1)
    }

    #[test]
    fn a_deferred_timer_is_popped_never_early_and_runs_only_in_the_deferred_run_once() {
        let cpu1 = Owner::new(8, 8);
        let id = cpu1.post(1_000, SOFT, 0).ok().unwrap();
        assert_eq!(interrupt(&cpu1, 999).deferred, 0, "never early");
        let e = interrupt(&cpu1, 1_000);
        assert_eq!((e.deferred, e.callbacks), (1, 0), "popped and handed over, not run in the interrupt");
        assert!(cpu1.tags_ran().is_empty());
        assert_eq!(cpu1.tick.lock().deferred_waiting(), 1);
        let run = deferred_run(&cpu1, 1_200);
        assert_eq!(run, DeferredRun { callbacks: 1, ..DeferredRun::default() });
        assert_eq!(*cpu1.ran.lock().unwrap(), vec![(SOFT, 1_000, 1_200)], "once, its now the deferred run's");
        assert_eq!(deferred_run(&cpu1, 1_300), DeferredRun::default(), "nothing left");
        assert_eq!(interrupt(&cpu1, 5_000).deferred, 0);
        assert_eq!(cpu1.tags_ran(), vec![SOFT], "once");
        assert_eq!(cpu1.handles.cancel(id), Ok(Cancelled::Inactive));
        assert_eq!(cpu1.handles.in_use(), 0);
    }

    #[test]
    fn a_hard_timer_due_during_a_long_deferred_callback_runs_inside_it_never_early() {
        let cpu1 = Owner::new(8, 8);
        cpu1.post(1_000, SOFT, 0).ok().unwrap();
        cpu1.post(1_100, HARD, 0).ok().unwrap();
        assert_eq!(interrupt(&cpu1, 1_000).deferred, 1);
        // The deferred callback runs long: the hard timer's interrupt comes in the middle.
        *cpu1.interrupt_during_deferred.lock().unwrap() = Some(1_100);
        assert_eq!(deferred_run(&cpu1, 1_000).callbacks, 1);
        assert_eq!(*cpu1.ran.lock().unwrap(), vec![(SOFT, 1_000, 1_000), (HARD, 1_100, 1_100)]);
        assert_eq!(
            *cpu1.ran_during.lock().unwrap(),
            vec![(SOFT, vec![]), (HARD, vec![SOFT])],
            "the hard callback ran while the deferred one was running"
        );
        assert_eq!(cpu1.handles.in_use(), 0);
    }

    #[test]
    fn a_cancel_while_it_waits_answers_pending_and_it_never_runs() {
        // Reclaimed by its cancel message before the deferred run, or found cancelled by it.
        for message in [true, false] {
            let cpu1 = Owner::new(8, 8);
            let id = cpu1.post(1_000, SOFT, 0).ok().unwrap();
            interrupt(&cpu1, 1_000);
            assert_eq!(
                cpu1.handles.cancel(id),
                Ok(Cancelled::Pending),
                "it has not run: pending, truthfully"
            );
            if message {
                cpu1.inbox.try_send(Handles::<crate::remote::harness::Pay>::cancel_message(id)).unwrap();
                cpu1.turn(1_001);
                assert_eq!(cpu1.tick.lock().deferred_waiting(), 0, "taken out of the list");
                assert_eq!(deferred_run(&cpu1, 1_002), DeferredRun::default());
            } else {
                assert_eq!(
                    deferred_run(&cpu1, 1_002),
                    DeferredRun { cancelled: 1, ..DeferredRun::default() }
                );
            }
            assert!(cpu1.tags_ran().is_empty(), "a cancel answered pending: it never runs");
            assert_eq!(cpu1.handles.cancel(id), Ok(Cancelled::Inactive));
            assert_eq!(cpu1.handles.in_use(), 0);
        }
        // A timer of the queue itself, cancelled on its CPU while it waits.
        let cpu1 = Owner::new(8, 8);
        let id = {
            let pay = crate::remote::harness::Pay { tag: SOFT, period_ns: 0, handle: None };
            let mut t = cpu1.tick.lock();
            t.arm(1_000, pay, 0, &cpu1.bc).ok().unwrap()
        };
        interrupt(&cpu1, 1_000);
        let cancelled = cpu1.tick.lock().cancel(id);
        assert!(matches!(cancelled, Ok(crate::hrtimer::Cancel::Cancelled(_))), "pending, its payload back");
        assert_eq!(deferred_run(&cpu1, 1_002), DeferredRun::default());
        assert!(cpu1.tags_ran().is_empty());
    }

    #[test]
    fn a_cancel_during_the_deferred_callback_answers_running_and_stops_a_periodic_rearm() {
        let cpu1 = Owner::new(8, 8);
        let id = cpu1.post(1_000, SOFT, 1_000).ok().unwrap();
        interrupt(&cpu1, 1_000);
        *cpu1.during_run.lock().unwrap() = Some(id);
        assert_eq!(deferred_run(&cpu1, 1_000).callbacks, 1);
        assert_eq!(*cpu1.cancels_during_run.lock().unwrap(), vec![Ok(Cancelled::Running)]);
        assert_eq!(interrupt(&cpu1, 10_000).deferred, 0, "not re-armed");
        assert_eq!(cpu1.tags_ran(), vec![SOFT]);
        assert_eq!(cpu1.handles.in_use(), 0);
        assert_eq!(cpu1.tick.lock().pending(), 0);
    }

    #[test]
    fn a_periodic_deferred_timer_is_rearmed_on_its_grid_after_each_callback_once() {
        let cpu1 = Owner::new(8, 8);
        cpu1.post(1_000, SOFT, 1_000).ok().unwrap();
        interrupt(&cpu1, 1_000);
        assert_eq!(
            cpu1.tick.lock().pending(),
            0,
            "waiting, not pending: nothing re-armed before its callback"
        );
        // The deferred run comes late, past the next grid point: the one after now.
        assert_eq!(deferred_run(&cpu1, 2_500).callbacks, 1);
        assert_eq!(cpu1.tick.lock().pending(), 1, "re-armed once");
        assert_eq!(cpu1.tick.lock().next_event_ns(), 3_000, "on its grid, the device programmed for it");
        assert_eq!(interrupt(&cpu1, 2_999).deferred, 0, "never early");
        assert_eq!(interrupt(&cpu1, 3_000).deferred, 1);
        assert_eq!(deferred_run(&cpu1, 3_000).callbacks, 1);
        let ran: Vec<(u64, u64)> = cpu1.ran.lock().unwrap().iter().map(|r| (r.1, r.2)).collect();
        assert_eq!(ran, vec![(1_000, 2_500), (3_000, 3_000)]);
    }

    #[test]
    fn a_deferred_run_takes_only_the_timers_waiting_when_it_began() {
        let cpu1 = Owner::new(8, 8);
        cpu1.post(1_000, SOFT, 0).ok().unwrap();
        cpu1.post(1_500, DEFERRED | 2, 0).ok().unwrap();
        interrupt(&cpu1, 1_000);
        // An interrupt during the first callback defers the second: left for the next run.
        *cpu1.interrupt_during_deferred.lock().unwrap() = Some(1_500);
        let run = deferred_run(&cpu1, 1_000);
        assert_eq!((run.callbacks, run.left), (1, true));
        assert_eq!(cpu1.tick.lock().max_deferred_waiting(), 1);
        assert_eq!(deferred_run(&cpu1, 1_600), DeferredRun { callbacks: 1, ..DeferredRun::default() });
        assert_eq!(cpu1.tags_ran(), vec![SOFT, DEFERRED | 2]);
    }

    #[test]
    fn waiting_timers_leave_with_a_cpu_going_offline_first_and_none_is_lost() {
        let cpu1 = Owner::new(8, 8);
        let (hard, soft) = {
            let mut t = cpu1.tick.lock();
            let pay = |tag| crate::remote::harness::Pay { tag, period_ns: 0, handle: None };
            (
                t.arm(5_000, pay(HARD), 0, &cpu1.bc).ok().unwrap(),
                t.arm(1_000, pay(SOFT), 0, &cpu1.bc).ok().unwrap(),
            )
        };
        interrupt(&cpu1, 1_000);
        assert_eq!(cpu1.tick.lock().deferred_waiting(), 1);
        let timers = cpu1.tick.lock().go_offline(&cpu1.bc);
        let left: Vec<_> = timers.iter().map(|m| (m.id, m.deadline_ns, m.payload.tag)).collect();
        assert_eq!(left, vec![(soft, 1_000, SOFT), (hard, 5_000, HARD)], "the waiting one first");
        assert_eq!(cpu1.tick.lock().deferred_waiting(), 0);
        assert!(cpu1.tags_ran().is_empty());
    }
}
