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

use super::cpu::{this_cpu_tick, this_cpu_time, time_of, with_tick};
use super::registry;
use crate::arch::x86_64::smp::percpu;
use crate::time::clocksource::now_ns;
use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
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
    /// The clocksource as the interrupt read it (once, on entry).
    pub now_ns: u64,
    pub data: u64,
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
    /// 0: one-shot; else re-armed every `period_ns` from its deadline.
    period_ns: u64,
    /// The handle it was armed through (a [`Timer`]), if any, packed without its CPU
    /// (`Handles::pack`): the payload stays small on the timer path.
    pub(super) handle: Option<core::num::NonZeroU64>,
}

impl Payload {
    /// A periodic timer's next deadline on its grid (`kernel_time::hrtimer::forward`).
    pub(super) fn next_deadline(&self, deadline_ns: u64, now_ns: u64) -> Option<u64> {
        (self.period_ns != 0).then(|| kernel_time::hrtimer::forward(deadline_ns, self.period_ns, now_ns))
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
/// default).
fn arm_here(deadline_ns: u64, slack_ns: Option<u64>, payload: Payload) -> Result<TimerId, ArmError> {
    let cpu = this_cpu();
    let slack_ns = slack_ns.unwrap_or_else(default_slack_ns);
    let Some(mut tick) = this_cpu_tick() else { return Err(ArmError::NoTickDevice(cpu)) };
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
    arm_here(deadline_ns, None, Payload { callback: Callback::Fn(f), data, period_ns: 0, handle: None })
}

/// Arms a timer on the calling CPU that runs anywhere in `[deadline_ns, deadline_ns +
/// slack_ns]` of the clocksource (plus the path's latency), never before `deadline_ns`; the
/// CPU's default slack does not apply (0 here means exact).
pub fn arm_at_range(deadline_ns: u64, slack_ns: u64, f: TimerFn, data: u64) -> Result<TimerId, ArmError> {
    let payload = Payload { callback: Callback::Fn(f), data, period_ns: 0, handle: None };
    arm_here(deadline_ns, Some(slack_ns), payload)
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
    (deadline_ns, slack_ns): (u64, Option<u64>),
    callback: Callback,
    data: u64,
    period_ns: u64,
) -> Result<TimerId, ArmError> {
    let target = percpu::cpu(cpu).ok_or(ArmError::CpuNotOnline(cpu))?;
    crate::arch::x86_64::trace::arm(deadline_ns, Some(cpu));
    let slack_ns = slack_ns.unwrap_or_else(|| default_slack_of(target.index));
    let (Some(handles), Some(inbox)) = (time_of(target).handles.get(), time_of(target).inbox.get()) else {
        return Err(ArmError::CpuNotOnline(cpu));
    };
    let posted = x86_64::instructions::interrupts::without_interrupts(|| {
        handles.post_range(inbox, deadline_ns, slack_ns, |handle| Payload {
            callback,
            data,
            period_ns,
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
    let Some(target) = percpu::cpu(id.cpu()) else { return Cancelled::Inactive };
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
    post(cpu, (deadline_ns, None), Callback::Fn(f), data, 0).map(drop)
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
        Timer::arm(cpu, (deadline.as_nanos(), None), 0, Callback::Closure(Box::new(callback)))
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
        Timer::arm(cpu, (deadline.as_nanos(), Some(slack_ns)), 0, Callback::Closure(Box::new(callback)))
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
        let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
        if period_ns == 0 {
            return Err(ArmError::ZeroPeriod);
        }
        Timer::arm(cpu, (first.as_nanos(), None), period_ns, Callback::Closure(Box::new(callback)))
    }

    /// A timer running a plain function (no allocation).
    pub fn with_fn(cpu: usize, deadline: Instant, f: TimerFn, data: u64) -> Result<Timer, ArmError> {
        Ok(Timer {
            id: post(cpu, (deadline.as_nanos(), None), Callback::Fn(f), data, 0)?,
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
        let id = post(cpu, (deadline.as_nanos(), Some(slack_ns)), Callback::Fn(f), data, 0)?;
        Ok(Timer { id, cancel_on_drop: true })
    }

    fn arm(
        cpu: usize,
        range: (u64, Option<u64>),
        period_ns: u64,
        callback: Callback,
    ) -> Result<Timer, ArmError> {
        Ok(Timer { id: post(cpu, range, callback, 0, period_ns)?, cancel_on_drop: true })
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
