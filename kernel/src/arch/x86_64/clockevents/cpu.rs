//! Each CPU's own timekeeping: its [`CpuTick`] in its per-CPU area, reached only through
//! [`TickGuard`] (interrupts off for the guard's lifetime, so nothing on this CPU can interleave
//! and no other CPU ever takes it), and the interrupt paths that feed it: a device interrupt,
//! the broadcast wake-up IPI, and the expiry that runs the callbacks outside the guard.

use super::registry;
use super::timer::{Payload, TimerEvent};
use crate::arch::x86_64::clocksource::now_ns;
use crate::arch::x86_64::path_trace::{self, Stage};
use crate::arch::x86_64::smp::percpu;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use kernel_time::hrtimer::Expired;
use kernel_time::tick::{CpuTick, DeviceFailure, DeviceId};
use spin::{Mutex, MutexGuard};

/// Timers each CPU has room for before arming allocates (the slab then doubles).
const TIMERS_PER_CPU: usize = 1024;

/// A CPU's timekeeping state, in its `PerCpu`.
pub struct CpuTime {
    /// Taken only by its own CPU, with interrupts off ([`TickGuard`]): never contended.
    tick: Mutex<Option<CpuTick<Payload>>>,
    /// When this CPU last entered a clock event interrupt, for the benchmark.
    pub interrupt_entry_ns: AtomicU64,
    /// Completed `sleep_ns` wake-ups.
    pub sleep_wakeups: AtomicU64,
    /// The time-layer id of this CPU's LAPIC timer (`usize::MAX`: none), for its vector.
    pub lapic_device: AtomicUsize,
    /// Times this CPU went idle, how many of those were deep, the TSC cycles its deep sleeps
    /// spent entering and leaving (the handover included), and whether deep idle was refused
    /// (it then halts).
    pub idle_entries: AtomicU64,
    pub deep_entries: AtomicU64,
    pub idle_overhead_cycles: AtomicU64,
    pub deep_idle_refused: AtomicBool,
}

impl Default for CpuTime {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuTime {
    pub const fn new() -> CpuTime {
        CpuTime {
            tick: Mutex::new(None),
            interrupt_entry_ns: AtomicU64::new(0),
            sleep_wakeups: AtomicU64::new(0),
            lapic_device: AtomicUsize::new(usize::MAX),
            idle_entries: AtomicU64::new(0),
            deep_entries: AtomicU64::new(0),
            idle_overhead_cycles: AtomicU64::new(0),
            deep_idle_refused: AtomicBool::new(false),
        }
    }
}

/// The calling CPU's tick, with interrupts disabled until it is dropped (then restored as they
/// were). Code holding it cannot be interrupted or moved, so "this CPU's state" is a type; it
/// is `!Send`, so it cannot be handed to code running on another CPU either.
pub struct TickGuard {
    tick: Option<MutexGuard<'static, Option<CpuTick<Payload>>>>,
    interrupts_were_enabled: bool,
    /// `!Send` (and `!Sync`): the guard means "this CPU", and only on this CPU.
    _this_cpu: PhantomData<*mut ()>,
}

/// A compile-time check that `TickGuard` is not `Send` (the `static_assertions` crate's
/// `assert_not_impl_any`): were it `Send`, both impls below would apply and the name in the
/// constant would be ambiguous, which fails the build.
const _: fn() = || {
    trait AmbiguousIfSend<A> {
        fn some_item() {}
    }
    impl<T: ?Sized> AmbiguousIfSend<()> for T {}
    impl<T: ?Sized + Send> AmbiguousIfSend<u8> for T {}
    let _ = <TickGuard as AmbiguousIfSend<_>>::some_item;
};

impl core::ops::Deref for TickGuard {
    type Target = CpuTick<Payload>;
    fn deref(&self) -> &CpuTick<Payload> {
        self.tick.as_ref().and_then(|t| t.as_ref()).expect("checked at creation")
    }
}

impl core::ops::DerefMut for TickGuard {
    fn deref_mut(&mut self) -> &mut CpuTick<Payload> {
        self.tick.as_mut().and_then(|t| t.as_mut()).expect("checked at creation")
    }
}

impl Drop for TickGuard {
    fn drop(&mut self) {
        // Release the tick before interrupts can come back.
        drop(self.tick.take());
        if self.interrupts_were_enabled {
            x86_64::instructions::interrupts::enable();
        }
    }
}

/// The calling CPU's tick, or `None` before its `init_on_*` made one.
pub fn this_cpu_tick() -> Option<TickGuard> {
    use x86_64::instructions::interrupts;
    let interrupts_were_enabled = interrupts::are_enabled();
    interrupts::disable();
    let guard = percpu::this_cpu().time.tick.try_lock();
    // Only this CPU takes it, with interrupts off: a busy lock means the code holding the
    // guard re-entered the tick (e.g. a callback run inside it), a bug in this module.
    let guard = guard.expect("a CPU's tick re-entered while its guard is held");
    if guard.is_none() {
        drop(guard);
        if interrupts_were_enabled {
            interrupts::enable();
        }
        return None;
    }
    Some(TickGuard { tick: Some(guard), interrupts_were_enabled, _this_cpu: PhantomData })
}

/// Runs `f` on the calling CPU's tick; `None` before it has one.
pub fn with_tick<R>(f: impl FnOnce(&mut CpuTick<Payload>) -> R) -> Option<R> {
    this_cpu_tick().map(|mut t| f(&mut t))
}

/// Gives the calling CPU its tick (not yet served by any device).
pub(super) fn create_tick(mode: kernel_time::tick::TickMode) {
    let cpu = percpu::this_cpu();
    x86_64::instructions::interrupts::without_interrupts(|| {
        *cpu.time.tick.lock() = Some(CpuTick::new(cpu.index, mode, now_ns(), TIMERS_PER_CPU));
    });
}

/// Reports a local device that gave up programming to the registry, which takes it out and
/// reassigns this CPU (and any other it served). Called with the guard released.
pub(super) fn report_failure(failure: Option<kernel_time::tick::DeviceFailure>) {
    if let Some(f) = failure {
        registry::take_out(f.device, &alloc::format!("{}", f.error));
    }
}

/// A clock event device interrupted this CPU (called by the device drivers' handlers).
pub(super) fn device_interrupt(device: DeviceId) {
    let now = now_ns();
    path_trace::stamp(Stage::ClockRead);
    let cpu = percpu::this_cpu();
    cpu.time.interrupt_entry_ns.store(now, Ordering::Relaxed);
    if registry::is_broadcast_device(device) {
        broadcast_interrupt(cpu.index, now);
        return;
    }
    // One guard: the event taken and the first due timer popped (or, none due, the device
    // programmed again).
    match with_tick(|t| t.device_event(device, now).then(|| next_or_end(t, now))) {
        Some(Some(step)) => run_expiry(cpu.index, now, step),
        Some(None) => registry::wake_owner_of(device),
        None => {}
    }
}

/// The broadcast device fired on this CPU: every CPU whose deadline passed is woken, this one
/// directly.
fn broadcast_interrupt(here: usize, now: u64) {
    let due = registry::broadcast_event(now, here);
    for cpu in due.iter() {
        if cpu == here {
            wakeup(now);
        } else {
            registry::send_wakeup(cpu);
        }
    }
}

/// The broadcast wake-up IPI (or a wake-up for a misrouted event of this CPU's device).
pub(super) fn wake_interrupt(_vector: u8) {
    path_trace::stamp(Stage::Acked);
    let now = now_ns();
    path_trace::stamp(Stage::ClockRead);
    percpu::this_cpu().time.interrupt_entry_ns.store(now, Ordering::Relaxed);
    wakeup(now);
}

fn wakeup(now: u64) {
    if let Some(Some(step)) = with_tick(|t| t.wakeup(now).then(|| next_or_end(t, now))) {
        run_expiry(percpu::this_cpu().index, now, step);
    }
}

/// One step of an expiry, decided under the CPU's guard.
enum Step {
    /// A due timer, popped: run its callback (outside the guard).
    Run(Expired<Payload>),
    /// None left: the expiry is ended and the next event programmed; a device that gave up
    /// programming, if one did.
    Done(Option<DeviceFailure>),
}

/// Under the guard: the next due timer, or, none being left, the end of the expiry (the next
/// event programmed from a fresh clock read: the callbacks took time).
fn next_or_end(t: &mut CpuTick<Payload>, now: u64) -> Step {
    match t.pop_expired(now) {
        Some(expired) => Step::Run(expired),
        None => {
            path_trace::stamp(Stage::CallbacksDone);
            t.end_expiry(now_ns(), registry::broadcast());
            path_trace::stamp(Stage::Reprogrammed);
            Step::Done(t.take_failure())
        }
    }
}

/// Runs the due timers' callbacks one at a time outside the guard (a callback may arm or
/// cancel timers), re-arms periodic ones from their deadline, then programs the next event
/// once. One guard per callback (completing it and popping the next together); nothing here
/// allocates.
fn run_expiry(cpu: usize, now: u64, mut step: Step) {
    if matches!(step, Step::Run(_)) {
        path_trace::stamp(Stage::Popped);
    }
    while let Step::Run(expired) = step {
        let mut payload = expired.payload;
        let event = TimerEvent {
            cpu,
            id: expired.id,
            deadline_ns: expired.deadline_ns,
            now_ns: now,
            data: payload.data,
        };
        payload.callback.run(&event);
        let again = payload.next_deadline(expired.deadline_ns, now).map(|at| (at, payload));
        step = with_tick(|t| {
            t.complete(expired.id, again);
            next_or_end(t, now)
        })
        .unwrap_or(Step::Done(None));
    }
    if let Step::Done(failure) = step {
        report_failure(failure);
    }
}

/// Before deep idle (interrupts off): a CPU whose tick device stops there stops it and hands
/// its next deadline to the broadcast; refused when no broadcast device can take it.
pub fn deep_idle_enter() -> Result<kernel_time::tick::Handover, kernel_time::tick::DeepIdleRefused> {
    let result = with_tick(|t| t.broadcast_enter(now_ns(), registry::broadcast()))
        .unwrap_or(Ok(kernel_time::tick::Handover::NotNeeded));
    registry::report_broadcast_failure();
    result
}

/// After deep idle (interrupts off): the CPU takes its deadline back from the broadcast.
pub fn deep_idle_exit() {
    let failure = with_tick(|t| {
        t.broadcast_exit(now_ns(), registry::broadcast());
        t.take_failure()
    })
    .flatten();
    report_failure(failure);
}
