//! The timer API for the rest of the kernel: arm a callback at a time of the clocksource on
//! this CPU or another, cancel it from any CPU, periodic timers on a fixed grid, a [`Timer`]
//! handle that cancels on drop, and `sleep_ns`.
//!
//! Callbacks run in interrupt context (interrupts disabled) on the CPU the timer was armed
//! on, never before their deadline. A timer may carry slack (`arm_at_range`,
//! [`Timer::at_range`]): it runs anywhere in `[deadline, deadline + slack]` (plus the path's
//! own latency), so timers whose ranges overlap share one interrupt; one armed without slack
//! gets its CPU's default ([`default_slack_ns`], `timer_slack_ns=`, 0 unless asked).
//! `arm_at`/`cancel` on the calling CPU touch only its own tick and allocate nothing for a
//! plain function callback. A [`Timer`] (any CPU, from any
//! CPU) goes through its CPU's handles and inbox (`kernel_time::remote`): the arm returns its
//! handle at once and the owner arms it when the wake-up IPI drains its inbox; a cancel from
//! anywhere answers at once and never waits for the timer's CPU.
//!
//! A *deferred* timer ([`arm_deferred_at`], [`Timer::deferred_at`],
//! [`Timer::deferred_periodic`]; Linux's `HRTIMER_MODE_SOFT`) runs its callback outside the
//! hard interrupt instead: its CPU's timer interrupt pops it (never early, as any timer) and
//! leaves it in the CPU's deferred list (`kernel_time`'s `CpuTick::defer`),
//! and the CPU runs it on the way out of that interrupt, after the EOI and after every hard
//! callback of that interrupt, with interrupts enabled, as deferred work
//! (`arch::x86_64::deferred`, `Kind::Timers`: one run at a time per CPU). Such a callback may
//! run long and take interrupts: a hard timer due meanwhile on the same CPU runs in the middle
//! of it, on time. It is later than a hard one by the rest of that interrupt (the other hard
//! callbacks, programming the device, the EOI) and by the deferred callbacks before it; an
//! interrupt that comes during a deferred run leaves its deferred timers to that run, which
//! takes them after the ones it began with. A cancel while it waits answers `Pending` (it
//! never runs), one during its callback `Running`; a periodic one is re-armed on its grid
//! after each callback. The callback must not wait for another deferred callback of its CPU
//! (that one runs after it) but may wait on the clock or a hard timer.

use super::cpu::{this_cpu_tick, this_cpu_time, time_of, with_tick};
use super::registry;
use crate::arch::x86_64::smp::percpu;
use crate::time::clocksource::now_ns;
use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use kernel_time::clocks::{BootInstant, ClockDeadline, WallTime};
use kernel_time::hrtimer::{Cancel, TimerId, WrongCpu};
use kernel_time::instant::Instant;
pub use kernel_time::remote::Cancelled;
use kernel_time::remote::Handles;
use kernel_time::tick::ArmError;

/// What a timer callback learns.
#[derive(Debug, Clone, Copy)]
pub struct TimerEvent {
    pub cpu: usize,
    pub id: TimerId,
    pub deadline_ns: u64,
    /// The clocksource as the interrupt read it (once, under the CPU's guard, right before the
    /// first pop: Linux's `hrtimer_interrupt` reads it there too), or as the retry pass that
    /// popped this timer read it.
    pub now_ns: u64,
    pub data: u64,
    /// It ran deferred: outside the hard interrupt, interrupts enabled; `now_ns` is then the
    /// clock read just before the callback, in the deferred run.
    pub deferred: bool,
}

impl TimerEvent {
    /// The deadline the timer was armed for.
    pub fn deadline(&self) -> Instant {
        Instant::from_nanos(self.deadline_ns)
    }
    /// The clocksource as the interrupt read it.
    pub fn now(&self) -> Instant {
        Instant::from_nanos(self.now_ns)
    }
}

/// The clocksource now.
pub fn now() -> Instant {
    Instant::from_nanos(now_ns())
}

/// A plain timer callback; it runs in interrupt context on the CPU that armed it.
pub type TimerFn = fn(&TimerEvent);

/// What a timer runs: a function with a `u64` of data (no allocation), or a closure with
/// state of its own.
pub enum Callback {
    Fn(TimerFn),
    Closure(Box<dyn FnMut(&TimerEvent) + Send>),
}

impl Callback {
    pub(super) fn run(&mut self, event: &TimerEvent) {
        let _trace = crate::arch::x86_64::trace::callback(event.deadline_ns);
        match self {
            Callback::Fn(f) => f(event),
            Callback::Closure(f) => f(event),
        }
    }
}

/// What each queued timer carries.
pub struct Payload {
    pub(super) callback: Callback,
    pub(super) data: u64,
    /// Its period (0: one-shot), whether it runs deferred, and the clock it is on.
    pub(super) schedule: Schedule,
    /// The handle it was armed through (a [`Timer`]), if any, packed in one word with its CPU
    /// (`Handles::pack`): the payload stays small on the timer path, and a timer adopted from
    /// a CPU gone offline still names its handle's table.
    pub(super) handle: Option<core::num::NonZeroU64>,
}

// Deferred timers made the payload no larger: it is moved on every arm and pop.
const _: () = assert!(core::mem::size_of::<Payload>() == 40);

/// How a timer repeats, whether it runs deferred, and which clock its deadline is on, in one
/// word, so that the payload stays 40 bytes: the expiry moves a popped timer (payload, id and
/// deadline) whole, and on this target (no SSE) a move over 64 bytes is a call to `memcpy`,
/// which cost the interrupt path about 100 instructions when the clock was a field of its own
/// (measured under icount, `scripts/bench`: pop stage 197 -> 294 ns).
///
/// The top two bits say which: 00 a hard timer on MONOTONIC, 01 a deferred one, the low 62
/// bits its period (0: one-shot; at most 2^62 - 1 ns, 146 years); 10 a one-shot hard timer on
/// REALTIME, 11 on BOOTTIME, the low 62 bits its deadline there in ns (a deadline past 2^62 ns,
/// the year 2116 on REALTIME, is held there: it never comes). Timers on REALTIME and BOOTTIME
/// are one-shot and hard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule(u64);

impl Schedule {
    const KIND: u64 = 0b11 << 62;
    const DEFERRED: u64 = 0b01 << 62;
    const REALTIME: u64 = 0b10 << 62;
    const BOOTTIME: u64 = 0b11 << 62;
    const LOW: u64 = (1 << 62) - 1;

    /// A one-shot hard timer's on MONOTONIC.
    pub const HARD_ONESHOT: Schedule = Schedule(0);

    /// A timer on MONOTONIC every `period_ns` (0: one-shot; saturated at 2^62 - 1), deferred
    /// or not.
    pub const fn new(period_ns: u64, deferred: bool) -> Schedule {
        let period = if period_ns > Self::LOW { Self::LOW } else { period_ns };
        Schedule(period | if deferred { Self::DEFERRED } else { 0 })
    }

    /// A timer at `at`: on MONOTONIC as [`new`](Self::new) says; on REALTIME or BOOTTIME a
    /// one-shot hard timer (the period and `deferred` are not taken there).
    pub fn of(at: ClockDeadline, period_ns: u64, deferred: bool) -> Schedule {
        match at {
            ClockDeadline::Monotonic(_) => Schedule::new(period_ns, deferred),
            ClockDeadline::Realtime(t) => Schedule(Self::REALTIME | t.as_nanos().min(Self::LOW)),
            ClockDeadline::Boottime(t) => Schedule(Self::BOOTTIME | t.as_nanos().min(Self::LOW)),
        }
    }

    /// Re-armed every this many ns from its deadline; 0: one-shot.
    #[inline]
    pub fn period_ns(self) -> u64 {
        if self.0 & Self::REALTIME != 0 { 0 } else { self.0 & Self::LOW }
    }

    /// A hard timer on MONOTONIC (neither deferred nor on another clock): one test, the top
    /// two bits clear.
    #[inline(always)]
    pub const fn plain(self) -> bool {
        self.0 & Self::KIND == 0
    }

    /// Its callback runs deferred, outside the hard interrupt (the one flag the expiry reads).
    #[inline(always)]
    pub const fn deferred(self) -> bool {
        self.0 & Self::KIND == Self::DEFERRED
    }

    /// Its deadline on REALTIME or BOOTTIME; `None` on MONOTONIC.
    #[inline(always)]
    pub fn clock(self) -> Option<ClockDeadline> {
        if self.0 < Self::REALTIME {
            return None;
        }
        let ns = self.0 & Self::LOW;
        match self.0 & Self::KIND {
            Self::REALTIME => Some(ClockDeadline::Realtime(WallTime::from_nanos(ns))),
            Self::BOOTTIME => Some(ClockDeadline::Boottime(BootInstant::from_nanos(ns))),
            _ => None,
        }
    }
}

impl Payload {
    /// A periodic timer's next deadline on its grid (`kernel_time::hrtimer::forward`).
    pub(super) fn next_deadline(&self, deadline_ns: u64, now_ns: u64) -> Option<u64> {
        let period_ns = self.schedule.period_ns();
        (period_ns != 0).then(|| kernel_time::hrtimer::forward(deadline_ns, period_ns, now_ns))
    }
}

fn from_queue<T>(c: Cancel<T>) -> Cancelled {
    match c {
        Cancel::Cancelled(_) => Cancelled::Pending,
        Cancel::Running => Cancelled::Running,
        Cancel::Inactive => Cancelled::Inactive,
    }
}

fn this_cpu() -> usize {
    percpu::this_cpu().index
}

/// The calling CPU's default timer slack: what a timer armed here without a slack of its own
/// gets (`timer_slack_ns=` at boot).
pub fn default_slack_ns() -> u64 {
    default_slack_of(this_cpu())
}

/// Each CPU's default slack, by CPU index (apart from `CpuTime`, which the interrupt path
/// reads: its layout stays as it was).
static DEFAULT_SLACK_NS: [AtomicU64; percpu::MAX_CPUS] = [const { AtomicU64::new(0) }; percpu::MAX_CPUS];

fn default_slack_of(cpu: usize) -> u64 {
    DEFAULT_SLACK_NS.get(cpu).map_or(0, |s| s.load(Ordering::Relaxed))
}

/// Sets the calling CPU's default timer slack (for timers armed on it from now on).
pub fn set_default_slack_ns(slack_ns: u64) {
    if let Some(s) = DEFAULT_SLACK_NS.get(this_cpu()) {
        s.store(slack_ns, Ordering::Relaxed);
    }
}

/// Arms `payload` at `deadline_ns` on the calling CPU, with `slack_ns` (`None`: this CPU's
/// default); a payload on REALTIME or BOOTTIME where this CPU's offsets place its deadline,
/// under the guard (`CpuTick::offsets`).
fn arm_here(deadline_ns: u64, slack_ns: Option<u64>, payload: Payload) -> Result<TimerId, ArmError> {
    let cpu = this_cpu();
    let slack_ns = slack_ns.unwrap_or_else(default_slack_ns);
    let Some(mut tick) = this_cpu_tick() else { return Err(ArmError::NoTickDevice(cpu)) };
    let deadline_ns =
        payload.schedule.clock().map_or(deadline_ns, |at| at.monotonic(&tick.offsets()).as_nanos());
    crate::arch::x86_64::trace::arm(deadline_ns, None);
    let bc = registry::broadcast(&tick);
    let result = tick.arm_range(deadline_ns, slack_ns, payload, now_ns(), bc);
    let failure = tick.take_failure();
    drop(tick);
    super::cpu::report_failure(failure);
    // A refused payload is dropped here, after the guard.
    result.map_err(|refused| refused.error)
}

/// Makes room for `timers` more on the calling CPU's queue (allocating now), so that its
/// callbacks can arm that many: an arm from a callback never grows the queue (the timer
/// interrupt path allocates nothing) and fails with `ArmError::QueueFull` past its room. Each
/// CPU starts with room for 1 024; arms outside its callbacks grow it as needed.
pub fn reserve(timers: usize) {
    with_tick(|t| t.reserve(timers));
}

/// Arms a timer on the calling CPU at `deadline_ns` of the clocksource, with the CPU's default
/// slack ([`default_slack_ns`]).
pub fn arm_at(deadline_ns: u64, f: TimerFn, data: u64) -> Result<TimerId, ArmError> {
    arm_here(
        deadline_ns,
        None,
        Payload { callback: Callback::Fn(f), data, schedule: Schedule::HARD_ONESHOT, handle: None },
    )
}

/// Arms a timer on the calling CPU that runs anywhere in `[deadline_ns, deadline_ns +
/// slack_ns]` of the clocksource (plus the path's latency), never before `deadline_ns`; the
/// CPU's default slack does not apply (0 here means exact).
pub fn arm_at_range(deadline_ns: u64, slack_ns: u64, f: TimerFn, data: u64) -> Result<TimerId, ArmError> {
    let payload = Payload { callback: Callback::Fn(f), data, schedule: Schedule::HARD_ONESHOT, handle: None };
    arm_here(deadline_ns, Some(slack_ns), payload)
}

/// Arms a deferred timer on the calling CPU at `deadline_ns`: its callback runs outside the
/// hard interrupt, with interrupts enabled, after the interrupt that found it due (see the
/// module's documentation).
pub fn arm_deferred_at(deadline_ns: u64, f: TimerFn, data: u64) -> Result<TimerId, ArmError> {
    arm_here(
        deadline_ns,
        None,
        Payload { callback: Callback::Fn(f), data, schedule: Schedule::new(0, true), handle: None },
    )
}

/// Arms a timer on the calling CPU at `at` on its clock (MONOTONIC, REALTIME or BOOTTIME):
/// it runs once that clock reads `at` or later, never before, whatever steps the clock takes
/// meanwhile (a REALTIME step forwards past it runs it at once, a step back delays it).
pub fn arm_on_clock(at: ClockDeadline, f: TimerFn, data: u64) -> Result<TimerId, ArmError> {
    let payload =
        Payload { callback: Callback::Fn(f), data, schedule: Schedule::of(at, 0, false), handle: None };
    arm_here(at.as_nanos(), None, payload)
}

/// Arms a timer on the calling CPU `delay_ns` from now.
pub fn arm_after(delay_ns: u64, f: TimerFn, data: u64) -> Result<TimerId, ArmError> {
    arm_at(now_ns().saturating_add(delay_ns), f, data)
}

/// Cancels a timer of the calling CPU: `Ok(true)` if it was pending (it never runs now). An id
/// of another CPU is refused and touches nothing (cancel it on its CPU, or through its
/// [`Timer`], which cancels from anywhere); a [`Timer`]'s id is cancelled as its `cancel` does.
pub fn cancel(id: TimerId) -> Result<bool, WrongCpu> {
    if Handles::<Payload>::is_handle(id) {
        return Ok(cancel_handle(id) == Cancelled::Pending);
    }
    Ok(cancel_here(id)? == Cancelled::Pending)
}

fn cancel_here(id: TimerId) -> Result<Cancelled, WrongCpu> {
    let here = this_cpu();
    if id.cpu() != here {
        return Err(WrongCpu { id_cpu: id.cpu(), queue_cpu: here });
    }
    // A cancelled payload is dropped after the guard: dropping a closure may run code that
    // touches this CPU's timers (a `Timer` it owns cancels itself).
    match with_tick(|t| t.cancel(id)) {
        Some(found) => found.map(from_queue),
        None => Ok(Cancelled::Inactive),
    }
}

/// Arms `payload` on CPU `cpu` through its handles, from any CPU and any context (interrupts
/// are off meanwhile, so the sender's window in the inbox is a few instructions): the handle
/// comes back at once. On the calling CPU the inbox is drained now (the timer is armed when
/// this returns); another CPU is woken by an IPI and arms it then. `slack_ns` `None`: the
/// target CPU's default.
fn post(
    cpu: usize,
    at: ClockDeadline,
    slack_ns: Option<u64>,
    callback: Callback,
    data: u64,
    period_ns: u64,
    deferred: bool,
) -> Result<TimerId, ArmError> {
    let target = percpu::cpu(cpu).ok_or(ArmError::CpuNotOnline(cpu))?;
    // The owner places a deadline on REALTIME or BOOTTIME again with its own offsets when it
    // takes the timer (`kernel_time::remote::drain`); this is where it goes meanwhile.
    let schedule = Schedule::of(at, period_ns, deferred);
    let deadline_ns = match schedule.clock() {
        None => at.as_nanos(),
        Some(at) => at.monotonic(&crate::time::clocksource::offsets()).as_nanos(),
    };
    crate::arch::x86_64::trace::arm(deadline_ns, Some(cpu));
    let slack_ns = slack_ns.unwrap_or_else(|| default_slack_of(target.index));
    let (Some(handles), Some(inbox)) = (time_of(target).handles.get(), time_of(target).inbox.get()) else {
        return Err(ArmError::CpuNotOnline(cpu));
    };
    let posted = x86_64::instructions::interrupts::without_interrupts(|| {
        handles.post_range(inbox, deadline_ns, slack_ns, |handle| Payload {
            callback,
            data,
            schedule,
            handle: Some(Handles::<Payload>::pack(handle)),
        })
    });
    // A refused payload is dropped here, with interrupts as the caller had them.
    let id = posted.map_err(|refused| refused.error)?;
    deliver(cpu);
    Ok(id)
}

/// Has CPU `cpu` drain its inbox: now on the calling CPU, else by the wake-up IPI.
fn deliver(cpu: usize) {
    if cpu == this_cpu() {
        super::cpu::drain_inbox();
    } else {
        registry::send_wakeup(cpu);
    }
}

/// Cancels a [`Timer`]'s handle from any CPU, at once (see [`Cancelled`]); the timer's CPU
/// then takes it out of its queue (now, if that is the calling CPU).
fn cancel_handle(id: TimerId) -> Cancelled {
    // Offline CPUs too: a timer that left a CPU gone offline keeps its handle in that CPU's
    // table, whose state word its new CPU's expiry checks.
    let Some(target) = percpu::any(id.cpu()) else { return Cancelled::Inactive };
    let (Some(handles), Some(inbox)) = (time_of(target).handles.get(), time_of(target).inbox.get()) else {
        return Cancelled::Inactive;
    };
    let answer = handles.cancel(id).unwrap_or(Cancelled::Inactive);
    if answer == Cancelled::Pending {
        // Best effort: if the inbox is full, the owner finds it cancelled at its deadline.
        let sent = x86_64::instructions::interrupts::without_interrupts(|| {
            inbox.try_send(Handles::<Payload>::cancel_message(id)).is_ok()
        });
        if sent {
            deliver(id.cpu());
        }
    }
    answer
}

/// Arms a timer on CPU `cpu` from any CPU and any context (a callback included), without
/// waiting; it cannot be cancelled (use [`Timer::with_fn`] and keep the [`Timer`] for that).
pub fn post_on(cpu: usize, deadline_ns: u64, f: TimerFn, data: u64) -> Result<(), ArmError> {
    post(
        cpu,
        ClockDeadline::Monotonic(Instant::from_nanos(deadline_ns)),
        None,
        Callback::Fn(f),
        data,
        0,
        false,
    )
    .map(drop)
}

/// A timer armed through the typed API: cancelled when dropped (unless [`Timer::detach`]ed).
#[derive(Debug)]
pub struct Timer {
    /// Names the timer's CPU too: where it runs and where its cancel runs.
    id: TimerId,
    cancel_on_drop: bool,
}

impl Timer {
    /// A one-shot timer on CPU `cpu` at `deadline`, running `callback` there.
    pub fn at(
        cpu: usize,
        deadline: Instant,
        callback: impl FnMut(&TimerEvent) + Send + 'static,
    ) -> Result<Timer, ArmError> {
        Timer::arm(cpu, ClockDeadline::Monotonic(deadline), 0, Callback::Closure(Box::new(callback)), false)
    }

    /// A one-shot timer on CPU `cpu` at `at` on its clock (MONOTONIC, REALTIME or BOOTTIME),
    /// running `callback` there once that clock reads `at` or later: never before, whatever
    /// steps the clock takes meanwhile (a REALTIME step forwards past `at` runs it at once, a
    /// step back delays it; a resume moves REALTIME and BOOTTIME by the time asleep).
    pub fn on_clock(
        cpu: usize,
        at: ClockDeadline,
        callback: impl FnMut(&TimerEvent) + Send + 'static,
    ) -> Result<Timer, ArmError> {
        Timer::arm(cpu, at, 0, Callback::Closure(Box::new(callback)), false)
    }

    /// A one-shot timer on CPU `cpu` that runs anywhere in `[deadline, deadline + slack]` (plus
    /// the path's latency), never before `deadline`, so that it can share an interrupt with
    /// timers whose ranges overlap; the CPU's default slack does not apply. A slack above
    /// 4.29 s is narrowed to that (it travels in 32 bits).
    pub fn at_range(
        cpu: usize,
        deadline: Instant,
        slack: Duration,
        callback: impl FnMut(&TimerEvent) + Send + 'static,
    ) -> Result<Timer, ArmError> {
        let slack_ns = u64::try_from(slack.as_nanos()).unwrap_or(u64::MAX);
        let at = (ClockDeadline::Monotonic(deadline), Some(slack_ns));
        Timer::arm_with(cpu, at, 0, Callback::Closure(Box::new(callback)), false)
    }

    /// A one-shot deferred timer on CPU `cpu` at `deadline`: `callback` runs there outside
    /// the hard interrupt, interrupts enabled, after the interrupt that found it due (see the
    /// module's documentation); it may run long and take interrupts.
    pub fn deferred_at(
        cpu: usize,
        deadline: Instant,
        callback: impl FnMut(&TimerEvent) + Send + 'static,
    ) -> Result<Timer, ArmError> {
        Timer::arm(cpu, ClockDeadline::Monotonic(deadline), 0, Callback::Closure(Box::new(callback)), true)
    }

    /// A one-shot timer on CPU `cpu`, `delay` from now.
    pub fn after(
        cpu: usize,
        delay: Duration,
        callback: impl FnMut(&TimerEvent) + Send + 'static,
    ) -> Result<Timer, ArmError> {
        Timer::at(cpu, now() + delay, callback)
    }

    /// A periodic timer on CPU `cpu`, first at `first`, then every `period` after each deadline
    /// (no drift: the grid is `first + k * period`). A zero period is refused.
    pub fn periodic(
        cpu: usize,
        first: Instant,
        period: Duration,
        callback: impl FnMut(&TimerEvent) + Send + 'static,
    ) -> Result<Timer, ArmError> {
        Timer::every(cpu, first, period, Callback::Closure(Box::new(callback)), false)
    }

    /// A periodic deferred timer on CPU `cpu` (see [`Timer::periodic`] and
    /// [`Timer::deferred_at`]): re-armed on its grid after each callback, once.
    pub fn deferred_periodic(
        cpu: usize,
        first: Instant,
        period: Duration,
        callback: impl FnMut(&TimerEvent) + Send + 'static,
    ) -> Result<Timer, ArmError> {
        Timer::every(cpu, first, period, Callback::Closure(Box::new(callback)), true)
    }

    /// A periodic timer on MONOTONIC (a zero period refused), deferred or not.
    fn every(
        cpu: usize,
        first: Instant,
        period: Duration,
        callback: Callback,
        deferred: bool,
    ) -> Result<Timer, ArmError> {
        let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
        if period_ns == 0 {
            return Err(ArmError::ZeroPeriod);
        }
        Timer::arm(cpu, ClockDeadline::Monotonic(first), period_ns, callback, deferred)
    }

    /// A timer running a plain function (no allocation).
    pub fn with_fn(cpu: usize, deadline: Instant, f: TimerFn, data: u64) -> Result<Timer, ArmError> {
        Ok(Timer {
            id: post(cpu, ClockDeadline::Monotonic(deadline), None, Callback::Fn(f), data, 0, false)?,
            cancel_on_drop: true,
        })
    }

    /// A timer running a plain function (no allocation) anywhere in `[deadline, deadline +
    /// slack_ns]`, as [`at_range`](Self::at_range).
    pub fn with_fn_range(
        cpu: usize,
        deadline: Instant,
        slack_ns: u64,
        f: TimerFn,
        data: u64,
    ) -> Result<Timer, ArmError> {
        let at = ClockDeadline::Monotonic(deadline);
        let id = post(cpu, at, Some(slack_ns), Callback::Fn(f), data, 0, false)?;
        Ok(Timer { id, cancel_on_drop: true })
    }

    /// A timer at `at` with `slack_ns` (`None`: the CPU's default), every `period_ns`, deferred
    /// or not.
    fn arm_with(
        cpu: usize,
        (at, slack_ns): (ClockDeadline, Option<u64>),
        period_ns: u64,
        callback: Callback,
        deferred: bool,
    ) -> Result<Timer, ArmError> {
        Ok(Timer { id: post(cpu, at, slack_ns, callback, 0, period_ns, deferred)?, cancel_on_drop: true })
    }

    fn arm(
        cpu: usize,
        at: ClockDeadline,
        period_ns: u64,
        callback: Callback,
        deferred: bool,
    ) -> Result<Timer, ArmError> {
        Timer::arm_with(cpu, (at, None), period_ns, callback, deferred)
    }

    pub fn cpu(&self) -> usize {
        self.id.cpu()
    }
    pub fn id(&self) -> TimerId {
        self.id
    }

    /// Cancels it, from any CPU and any context, at once: it was pending and never runs now,
    /// its callback is running now on its CPU (a periodic one is not re-armed), or it already
    /// ran or was cancelled. Never waits for the timer's CPU.
    pub fn cancel(&self) -> Cancelled {
        cancel_handle(self.id)
    }

    /// Lets the timer live on after the handle is dropped.
    pub fn detach(mut self) -> TimerId {
        self.cancel_on_drop = false;
        self.id
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if self.cancel_on_drop {
            let _ = self.cancel();
        }
    }
}

fn sleep_done(e: &TimerEvent) {
    this_cpu_time().sleep_wakeups.fetch_add(1, Ordering::Release);
    let _ = e;
}

/// Halts the calling CPU for at least `ns` (interrupts must be enabled).
pub fn sleep_ns(ns: u64) -> Result<(), ArmError> {
    sleep_until_ns(now_ns().saturating_add(ns))
}

/// Halts the calling CPU until `deadline` has passed (interrupts must be enabled).
pub fn sleep_until(deadline: Instant) -> Result<(), ArmError> {
    sleep_until_ns(deadline.as_nanos())
}

fn sleep_until_ns(deadline_ns: u64) -> Result<(), ArmError> {
    use x86_64::instructions::interrupts;
    let wakeups = &this_cpu_time().sleep_wakeups;
    let before = wakeups.load(Ordering::Acquire);
    arm_at(deadline_ns, sleep_done, 0)?;
    loop {
        // Check with interrupts off, then idle (`sti; hlt` or `sti; mwait`, which take no
        // interrupt between the two instructions): a wake-up that lands after the check still
        // ends the wait. (Checking with interrupts on loses a wake-up that lands between the
        // check and the `hlt`.)
        interrupts::disable();
        if wakeups.load(Ordering::Acquire) != before {
            interrupts::enable();
            return Ok(());
        }
        crate::time::idle::wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_gives_back_its_clock_period_and_flag() {
        let mono = ClockDeadline::Monotonic(Instant::from_nanos(5));
        let once = Schedule::of(mono, 0, false);
        assert_eq!(
            (once, once.clock(), once.period_ns(), once.deferred()),
            (Schedule::HARD_ONESHOT, None, 0, false)
        );
        let every = Schedule::of(mono, 1_000, true);
        assert_eq!((every.period_ns(), every.deferred(), every.clock()), (1_000, true, None));
        assert_eq!(Schedule::new(u64::MAX, false).period_ns(), (1 << 62) - 1, "a huge period saturates");
        assert_eq!(Schedule::new(u64::MAX, false).clock(), None, "and is no clock");
        let wall = ClockDeadline::Realtime(WallTime::from_nanos(1_936_778_400_123_456_789));
        let boot = ClockDeadline::Boottime(BootInstant::from_nanos(42));
        for at in [wall, boot] {
            let s = Schedule::of(at, 7, true);
            assert_eq!(s.clock(), Some(at));
            assert_eq!((s.period_ns(), s.deferred()), (0, false), "a timer on a clock runs once, hard");
        }
        let far = ClockDeadline::Realtime(WallTime::from_nanos(u64::MAX));
        let held = ClockDeadline::Realtime(WallTime::from_nanos((1 << 62) - 1));
        assert_eq!(Schedule::of(far, 0, false).clock(), Some(held));
        assert_eq!(core::mem::size_of::<Payload>(), 40, "the payload's size is on the timer path");
    }
}
