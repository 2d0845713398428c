//! The timer API for the rest of the kernel: arm a callback at a time of the clocksource on
//! this CPU or another, cancel it from any CPU, periodic timers on a fixed grid, a [`Timer`]
//! handle that cancels on drop, and `sleep_ns`.
//!
//! Callbacks run in interrupt context (interrupts disabled) on the CPU the timer was armed
//! on, never before their deadline. Arming and cancelling on the calling CPU touch only its
//! own tick and allocate nothing for a plain function callback; a timer on another CPU is
//! queued to its owner by a function-call IPI.

use super::cpu::{this_cpu_tick, with_tick};
use super::registry;
use crate::arch::x86_64::clocksource::now_ns;
use crate::arch::x86_64::smp::{self, percpu};
use alloc::boxed::Box;
use alloc::sync::Arc;
use core::sync::atomic::Ordering;
use core::time::Duration;
use kernel_time::hrtimer::{Cancel, TimerId, WrongCpu};
use kernel_time::instant::Instant;
use kernel_time::remote::RemoteArm;
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
}

impl Payload {
    /// A periodic timer's next deadline on its grid (`kernel_time::hrtimer::forward`).
    pub(super) fn next_deadline(&self, deadline_ns: u64, now_ns: u64) -> Option<u64> {
        (self.period_ns != 0).then(|| kernel_time::hrtimer::forward(deadline_ns, self.period_ns, now_ns))
    }
}

/// What a cancel found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It was pending and never runs now.
    Pending,
    /// Its callback is running at this moment (a cancel from its own callback): it is not
    /// re-armed, and the running callback finishes.
    Running,
    /// It already ran (one-shot), was cancelled, or never existed.
    Inactive,
    /// No answer in time: asked from another CPU with interrupts disabled (where waiting could
    /// deadlock), or the timer's CPU did not take the cancel within 1 s. The cancel is queued
    /// to the timer's CPU and takes effect when it lands; until then the timer may still run
    /// (once, if it falls due first).
    Queued,
}

impl<T> From<Cancel<T>> for Cancelled {
    fn from(c: Cancel<T>) -> Cancelled {
        match c {
            Cancel::Cancelled(_) => Cancelled::Pending,
            Cancel::Running => Cancelled::Running,
            Cancel::Inactive => Cancelled::Inactive,
        }
    }
}

fn this_cpu() -> usize {
    percpu::this_cpu().index
}

/// Arms `payload` at `deadline_ns` on the calling CPU.
fn arm_here(deadline_ns: u64, payload: Payload) -> Result<TimerId, ArmError> {
    let cpu = this_cpu();
    let Some(mut tick) = this_cpu_tick() else { return Err(ArmError::NoTickDevice(cpu)) };
    let bc = registry::broadcast(&tick);
    let result = tick.arm(deadline_ns, payload, now_ns(), bc);
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

/// Arms a timer on the calling CPU at `deadline_ns` of the clocksource.
pub fn arm_at(deadline_ns: u64, f: TimerFn, data: u64) -> Result<TimerId, ArmError> {
    arm_here(deadline_ns, Payload { callback: Callback::Fn(f), data, period_ns: 0 })
}

/// Arms a timer on the calling CPU `delay_ns` from now.
pub fn arm_after(delay_ns: u64, f: TimerFn, data: u64) -> Result<TimerId, ArmError> {
    arm_at(now_ns().saturating_add(delay_ns), f, data)
}

/// Cancels a timer of the calling CPU: `Ok(true)` if it was pending (it never runs now). An id
/// of another CPU is refused and touches nothing (cancel it on its CPU, or through its
/// [`Timer`], which cancels from anywhere).
pub fn cancel(id: TimerId) -> Result<bool, WrongCpu> {
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
        Some(found) => found.map(Cancelled::from),
        None => Ok(Cancelled::Inactive),
    }
}

/// Cancels a timer on its own CPU (where a [`Timer`]'s cancel runs).
fn cancel_on_its_cpu(id: TimerId) -> Cancelled {
    cancel_here(id).expect("a timer is cancelled on the CPU its id names")
}

/// Arms `payload` on CPU `cpu`: here directly, elsewhere by a call on that CPU, waiting for
/// its timer id (so interrupts must be enabled). A call that times out is abandoned: when it
/// lands, its CPU does not arm it (or cancels it at once), so `Timeout` means it never runs;
/// an arm that landed as the wait ended is kept and its id returned.
fn arm_on_cpu(cpu: usize, deadline_ns: u64, payload: Payload) -> Result<TimerId, ArmError> {
    if cpu == this_cpu() {
        return arm_here(deadline_ns, payload);
    }
    let ticket = Arc::new(RemoteArm::new());
    let owner = ticket.clone();
    match smp::call_on(cpu, move || arm_for(&owner, deadline_ns, payload)) {
        Ok(result) => result,
        Err(smp::CallError::Timeout { cpu }) => ticket.abandon().ok_or(ArmError::Timeout { cpu }),
        Err(e) => Err(e.into()),
    }
}

/// On the timer's CPU (in its function-call interrupt): arms a posted timer unless its caller
/// gave up waiting, and cancels it at once if the caller gave up while it was being armed.
fn arm_for(ticket: &RemoteArm, deadline_ns: u64, payload: Payload) -> Result<TimerId, ArmError> {
    if !ticket.wanted() {
        // Nobody reads this answer: the caller was told the timer never runs.
        return Err(ArmError::Timeout { cpu: this_cpu() });
    }
    let id = arm_here(deadline_ns, payload)?;
    if !ticket.deliver(id) {
        // Interrupts have been off since the arm: it cannot have run. Its payload is dropped
        // here, outside the tick guard.
        let payload = with_tick(|t| t.cancel(id).ok().and_then(Cancel::cancelled)).flatten();
        debug_assert!(payload.is_some(), "an abandoned arm is still pending on its CPU");
        drop(payload);
    }
    Ok(id)
}

/// What a call that did not reach its CPU means for a timer armed there: each its own answer.
impl From<smp::CallError> for ArmError {
    fn from(e: smp::CallError) -> ArmError {
        match e {
            smp::CallError::NoSuchCpu(cpu) => ArmError::CpuNotOnline(cpu),
            smp::CallError::Timeout { cpu } => ArmError::Timeout { cpu },
            smp::CallError::InterruptsDisabled => ArmError::InterruptsDisabled,
        }
    }
}

/// Arms a timer on CPU `cpu` from any CPU, without waiting: usable in interrupt context (a
/// callback), where waiting for another CPU could deadlock. Its owner arms it when the
/// function-call IPI arrives; it cannot be cancelled (no id comes back).
pub fn post_on(cpu: usize, deadline_ns: u64, f: TimerFn, data: u64) -> Result<(), ArmError> {
    let payload = Payload { callback: Callback::Fn(f), data, period_ns: 0 };
    smp::post(cpu, move || {
        if let Err(e) = arm_here(deadline_ns, payload) {
            log::warn!("a timer posted to CPU {cpu} could not be armed: {e}");
        }
    })
    .map_err(ArmError::from)
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
        Timer::arm(cpu, deadline.as_nanos(), 0, Callback::Closure(Box::new(callback)))
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
        Timer::arm(cpu, first.as_nanos(), period_ns, Callback::Closure(Box::new(callback)))
    }

    /// A timer running a plain function (no allocation on this CPU).
    pub fn with_fn(cpu: usize, deadline: Instant, f: TimerFn, data: u64) -> Result<Timer, ArmError> {
        let payload = Payload { callback: Callback::Fn(f), data, period_ns: 0 };
        Ok(Timer { id: arm_on_cpu(cpu, deadline.as_nanos(), payload)?, cancel_on_drop: true })
    }

    fn arm(cpu: usize, deadline_ns: u64, period_ns: u64, callback: Callback) -> Result<Timer, ArmError> {
        let payload = Payload { callback, data: 0, period_ns };
        Ok(Timer { id: arm_on_cpu(cpu, deadline_ns, payload)?, cancel_on_drop: true })
    }

    pub fn cpu(&self) -> usize {
        self.id.cpu()
    }
    pub fn id(&self) -> TimerId {
        self.id
    }

    /// Cancels it, from any CPU (another CPU's timer by a call on that CPU, which runs between
    /// its callbacks, so it never races one). From another CPU with interrupts disabled, or
    /// when that CPU does not answer within 1 s, the answer is [`Cancelled::Queued`]: the
    /// cancel still lands there, later.
    pub fn cancel(&self) -> Cancelled {
        let (cpu, id) = (self.id.cpu(), self.id);
        if cpu == this_cpu() {
            return cancel_on_its_cpu(id);
        }
        match smp::call_on(cpu, move || cancel_on_its_cpu(id)) {
            Ok(c) => c,
            Err(smp::CallError::InterruptsDisabled) => {
                let _ = smp::post(cpu, move || {
                    cancel_on_its_cpu(id);
                });
                Cancelled::Queued
            }
            // The call stays queued on the timer's CPU: the cancel lands when it runs.
            Err(smp::CallError::Timeout { .. }) => Cancelled::Queued,
            // A Timer's CPU was online when it was armed, and CPUs do not go offline.
            Err(smp::CallError::NoSuchCpu(_)) => Cancelled::Inactive,
        }
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
    percpu::this_cpu().time.sleep_wakeups.fetch_add(1, Ordering::Release);
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
    let wakeups = &percpu::this_cpu().time.sleep_wakeups;
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
        crate::arch::x86_64::idle::wait();
    }
}
