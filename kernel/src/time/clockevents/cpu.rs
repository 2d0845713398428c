//! Each CPU's own timekeeping: its [`CpuTick`] in its per-CPU area, reached only through
//! [`TickGuard`] (interrupts off for the guard's lifetime, so nothing on this CPU can interleave
//! and no other CPU ever takes it) or, on the expiry's path, [`ThisCpu`]'s `with_tick` (the
//! same lock held the same way, without the guard's wrapper), and the interrupt paths that feed it: a device interrupt,
//! the broadcast wake-up IPI, deep idle's handover and suspend/resume, each the crate's expiry
//! loop or glue run on this CPU ([`ThisCpu`], the kernel's `Platform`).

use super::registry;
use super::timer::{Payload, TimerEvent};
use crate::arch::x86_64::deferred;
use crate::arch::x86_64::path_trace::{self, Stage};
use crate::arch::x86_64::smp::percpu;
use crate::time::clocksource::now_ns;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use kernel_time::broadcast::Broadcast;
use kernel_time::clocks::{ClockDeadline, Offsets};
use kernel_time::hrtimer::{Expired, TimerId};
use kernel_time::inbox::{Inbox, TimeMessage};
use kernel_time::remote::Handles;
use kernel_time::tick::expiry::{Expiry, ExpiryContext, ExpiryPoint, Hang};
use kernel_time::tick::glue::{self, AssignmentSlot, Platform};
use kernel_time::tick::{Assignment, CpuTick, DeviceId};
use spin::{Mutex, MutexGuard};

/// Timers each CPU has room for before arming allocates (the slab then doubles).
const TIMERS_PER_CPU: usize = 1024;

/// [`super::Timer`]s each CPU holds at once (its handles), and the messages its inbox holds.
/// Past either, an arm is refused (`ArmError::HandlesFull`, `ArmError::InboxFull`).
pub const HANDLES_PER_CPU: usize = 256;
const INBOX_PER_CPU: usize = 256;

/// A CPU's timekeeping state, in the time room's own per-CPU storage ([`time_of`]): the
/// drivers' `PerCpu` does not know it.
pub struct CpuTime {
    /// Taken only by its own CPU, with interrupts off ([`TickGuard`], `ThisCpu::with_tick`):
    /// never contended.
    tick: Mutex<Option<CpuTick<Payload>>>,
    /// Timers armed here through handles, by any CPU (lock-free; made with the tick).
    pub handles: spin::Once<Handles<Payload>>,
    /// What other CPUs ask of this one (lock-free; made with the tick).
    pub inbox: spin::Once<Inbox<TimeMessage>>,
    /// The registry's newest assignment for this CPU, waiting for it.
    assignment: AssignmentSlot,
    /// Completed `sleep_ns` wake-ups.
    pub sleep_wakeups: AtomicU64,
    /// The time-layer id of this CPU's LAPIC timer plus one (0: none, so that the array is
    /// all zeros and lives in `.bss`), for its vector.
    pub lapic_device: AtomicUsize,
    /// Times this CPU went idle, how many of those were deep, the TSC cycles its deep sleeps
    /// spent entering and leaving (the handover included), and whether deep idle was refused
    /// (it then halts).
    pub idle_entries: AtomicU64,
    pub deep_entries: AtomicU64,
    pub idle_overhead_cycles: AtomicU64,
    /// Idle entries it halted in because it carried the broadcast's timer (bc_hrtimer).
    pub serving_entries: AtomicU64,
    pub deep_idle_refused: AtomicBool,
    /// Deferred timer callbacks run on this CPU, and the most deferred timers that waited at
    /// once (as of the last deferred run); only this CPU writes them.
    pub deferred_callbacks: AtomicU64,
    pub deferred_max_waiting: AtomicU64,
}

/// Each CPU's [`CpuTime`], by its dense index (`PerCpu::index`, below `MAX_CPUS`). A power of
/// two long, so that the index is masked instead of bounds-checked on the interrupt path.
static CPU_TIME: [CpuTime; CPU_TIME_SLOTS] = [const { CpuTime::new() }; CPU_TIME_SLOTS];
const CPU_TIME_SLOTS: usize = percpu::MAX_CPUS.next_power_of_two();

/// CPU `cpu`'s timekeeping state.
#[inline]
pub fn time_of(cpu: &percpu::PerCpu) -> &'static CpuTime {
    time_at(cpu.index)
}

/// The timekeeping state of the CPU whose index is `index`.
#[inline]
fn time_at(index: usize) -> &'static CpuTime {
    // `percpu::create` refuses an index at or past MAX_CPUS: the mask changes nothing.
    &CPU_TIME[index & (CPU_TIME_SLOTS - 1)]
}

/// The calling CPU's timekeeping state.
#[inline]
pub fn this_cpu_time() -> &'static CpuTime {
    time_of(percpu::this_cpu())
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
            handles: spin::Once::new(),
            inbox: spin::Once::new(),
            assignment: AssignmentSlot::new(),
            sleep_wakeups: AtomicU64::new(0),
            lapic_device: AtomicUsize::new(0),
            idle_entries: AtomicU64::new(0),
            deep_entries: AtomicU64::new(0),
            serving_entries: AtomicU64::new(0),
            idle_overhead_cycles: AtomicU64::new(0),
            deep_idle_refused: AtomicBool::new(false),
            deferred_callbacks: AtomicU64::new(0),
            deferred_max_waiting: AtomicU64::new(0),
        }
    }
}

/// A CPU's tick's own lock, held (interrupts off): what [`ThisCpu`]'s expiry holds instead of
/// a [`TickGuard`], and as good a proof for [`registry::broadcast_under`].
pub(super) type TickLock<'a> = MutexGuard<'a, Option<CpuTick<Payload>>>;

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
    tick_guard(this_cpu_time())
}

/// The tick of `time`, which must be the calling CPU's ([`this_cpu_tick`], or a [`ThisCpu`]
/// made on this CPU for the interrupt it handles).
#[inline]
fn tick_guard(time: &'static CpuTime) -> Option<TickGuard> {
    tick_guard_in::<false>(time)
}

/// [`tick_guard`], `IN_IRQ`: called from a device interrupt's handler, where interrupts are
/// off already (an interrupt gate; `interrupts::dispatch` never enables them), so the guard
/// skips reading the flags and never enables them on drop. It still disables them (one `cli`,
/// idempotent): a callback that enabled them wrongly gets them off again under the guard.
#[inline]
fn tick_guard_in<const IN_IRQ: bool>(time: &'static CpuTime) -> Option<TickGuard> {
    use x86_64::instructions::interrupts;
    let interrupts_were_enabled = !IN_IRQ && interrupts::are_enabled();
    interrupts::disable();
    let guard = time.tick.try_lock();
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

/// Runs `f` on the calling CPU's tick and the broadcast state (which the tick's guard lets it
/// lock: interrupts are off); `None` before it has a tick.
#[inline]
pub fn with_tick_and_broadcast<R>(
    f: impl FnOnce(&mut CpuTick<Payload>, &Mutex<Broadcast>) -> R,
) -> Option<R> {
    let mut tick = this_cpu_tick()?;
    let bc = registry::broadcast(&tick);
    Some(f(&mut tick, bc))
}

/// Gives the calling CPU its tick (not yet served by any device).
pub(super) fn create_tick(mode: kernel_time::tick::TickMode) {
    let cpu = percpu::this_cpu();
    // Back online after going offline: its table (closed then) takes posts again.
    time_of(cpu).handles.call_once(|| Handles::new(cpu.index, HANDLES_PER_CPU)).reopen();
    time_of(cpu).inbox.call_once(|| Inbox::new(INBOX_PER_CPU));
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut tick = CpuTick::new(cpu.index, mode, now_ns(), TIMERS_PER_CPU);
        tick.reserve_for_handles(HANDLES_PER_CPU);
        *time_of(cpu).tick.lock() = Some(tick);
        // The clocks' offsets as they are now (REALTIME was set from the RTC before the APs
        // came online): read once the tick is in place, so that a step after this read
        // reaches it by `clockevents::clock_was_set`, as every other CPU's.
        glue::clock_was_set(&this_cpu());
    });
}

/// Reports a local device that gave up programming to the registry, which takes it out and
/// reassigns this CPU (and any other it served): from interrupt context in this CPU's deferred
/// work, at the interrupt's exit (`failures`). Called with the guard released.
pub(super) fn report_failure(failure: Option<kernel_time::tick::DeviceFailure>) {
    if let Some(f) = failure {
        super::failures::report(f);
    }
}

/// This CPU as the crate's expiry loop sees it: its tick behind [`TickGuard`], the
/// clocksource, and how a [`Payload`] runs. `IN_IRQ`: made by a device interrupt's handler,
/// interrupts off already (its guards skip reading the flags: [`tick_guard_in`]).
struct ThisCpu<const IN_IRQ: bool = false> {
    index: usize,
    /// This CPU's timekeeping state, looked up once per interrupt.
    time: &'static CpuTime,
}

impl<const IN_IRQ: bool> ExpiryContext for ThisCpu<IN_IRQ> {
    type Payload = Payload;

    /// [`tick_guard_in`] without the guard's value: the lock held for `f` only, the tick's
    /// presence checked once (the guard's `Deref` checks it again on every use).
    #[inline]
    fn with_tick<R>(&self, f: impl FnOnce(&mut CpuTick<Payload>, &Mutex<Broadcast>) -> R) -> Option<R> {
        use x86_64::instructions::interrupts;
        let interrupts_were_enabled = !IN_IRQ && interrupts::are_enabled();
        interrupts::disable();
        let r = {
            let mut guard =
                self.time.tick.try_lock().expect("a CPU's tick re-entered while its guard is held");
            let bc = registry::broadcast_under(&guard);
            // A `match`, not `as_mut().map`: the tick's presence tested once, no
            // `Option<&mut _>` built between (the dev build keeps both).
            #[allow(clippy::manual_map)]
            match &mut *guard {
                Some(t) => Some(f(t, bc)),
                None => None,
            }
        };
        // The tick released before interrupts can come back.
        if interrupts_were_enabled {
            interrupts::enable();
        }
        r
    }

    /// In line: the expiry reads the clock under the guard, right before its first pop.
    #[inline(always)]
    fn now_ns(&self) -> u64 {
        now_ns()
    }

    #[inline]
    fn run(&self, timer: Expired<Payload>, now_ns: u64) -> Option<(u64, Payload)> {
        let mut payload = timer.payload;
        let event = TimerEvent {
            cpu: self.index,
            id: match payload.handle {
                None => timer.id,
                Some(h) => Handles::<Payload>::unpack(h),
            },
            deadline_ns: timer.deadline_ns,
            now_ns,
            data: payload.data,
            // A device interrupt's expiry runs only hard timers (the deferred ones wait for the
            // deferred run, a `ThisCpu<false>`): known without reading the payload.
            deferred: !IN_IRQ && payload.schedule.deferred(),
        };
        payload.callback.run(&event);
        // A one-shot payload is dropped here, outside the guard.
        payload.next_deadline(timer.deadline_ns, now_ns).map(|at| (at, payload))
    }

    #[inline(always)]
    fn clock_deadline(&self, payload: &Payload) -> Option<ClockDeadline> {
        payload.schedule.clock()
    }

    #[inline]
    fn offsets(&self) -> Offsets {
        crate::time::clocksource::offsets()
    }

    #[inline(always)]
    fn is_plain(&self, payload: &Payload) -> bool {
        payload.schedule.plain()
    }

    #[inline(always)]
    fn is_deferred(&self, payload: &Payload) -> bool {
        payload.schedule.deferred()
    }

    #[inline(always)]
    fn has_handle(&self, payload: &Payload) -> bool {
        payload.handle.is_some()
    }

    #[inline]
    fn handle_of(&self, payload: &Payload) -> Option<TimerId> {
        payload.handle.map(Handles::<Payload>::unpack)
    }

    #[inline]
    fn handles(&self) -> Option<&Handles<Payload>> {
        self.time.handles.get()
    }

    /// A timer adopted from a CPU gone offline keeps its handle in that CPU's table.
    #[inline]
    fn handles_of(&self, cpu: usize) -> Option<&Handles<Payload>> {
        time_at(cpu).handles.get()
    }

    #[inline]
    fn trace(&self, point: ExpiryPoint) {
        path_trace::stamp(match point {
            ExpiryPoint::ClockRead => Stage::ClockRead,
            ExpiryPoint::Popped => Stage::Popped,
            ExpiryPoint::CallbacksDone => Stage::CallbacksDone,
            ExpiryPoint::Reprogrammed => Stage::Reprogrammed,
        });
    }
}

/// This CPU as the crate's glue sees it: its number, the broadcast under its lock and its
/// device's id, the wake-up IPI, and the registry's take-out of a device that gave up.
impl<const IN_IRQ: bool> Platform for ThisCpu<IN_IRQ> {
    #[inline]
    fn cpu(&self) -> usize {
        self.index
    }

    fn with_broadcast<R>(&self, f: impl FnOnce(&mut Broadcast) -> R) -> R {
        registry::with_broadcast(f)
    }

    #[inline]
    fn is_broadcast_device(&self, device: DeviceId) -> bool {
        registry::is_broadcast_device(device)
    }

    fn send_wakeup(&self, cpu: usize) {
        registry::send_wakeup(cpu);
    }

    fn wake_owner_of(&self, device: DeviceId) {
        registry::wake_owner_of(device);
    }

    fn take_out(&self, failure: kernel_time::tick::DeviceFailure) {
        report_failure(Some(failure));
    }

    #[inline]
    fn inbox(&self) -> Option<&Inbox<TimeMessage>> {
        self.time.inbox.get()
    }

    #[inline]
    fn assignment_slot(&self) -> Option<&AssignmentSlot> {
        Some(&self.time.assignment)
    }

    fn deferred_waiting(&self) {
        // On this CPU in interrupt context (or in its deferred run): a bit set, the run comes
        // at the outermost interrupt's exit, after the EOI.
        deferred::raise(self.index, deferred::Kind::Timers);
    }

    fn hang(&self, e: &Expiry, hang: Hang) {
        // Logged the first time and at every power of two, as a storm of lines would only
        // make the hang worse; the report has the count.
        let (hangs, _) = with_tick(|t| t.hangs()).unwrap_or_default();
        if hangs.is_power_of_two() {
            log::warn!(
                "CPU {}: timer interrupt took {} ns and could not catch up ({} passes, {} callbacks); \
                 next event held back to {} ns ({hangs} such interrupts so far)",
                self.index,
                hang.took_ns,
                e.passes,
                e.callbacks,
                hang.held_until_ns
            );
        }
    }
}

/// Registers the deferred timers' run as deferred work (on the boot CPU, before any timer).
pub(super) fn init_deferred_timers() {
    deferred::register(deferred::Kind::Timers, run_deferred_timers);
}

/// This CPU's deferred timers (deferred work, `Kind::Timers`: outside any interrupt handler,
/// interrupts enabled, one run at a time on this CPU): their callbacks, in the order their
/// interrupts popped them, at most those waiting when the run began (the rest raise the kind
/// again: the next pass of the deferred work, or the next interrupt's exit).
fn run_deferred_timers() {
    use core::sync::atomic::Ordering::Relaxed;
    let cpu = this_cpu();
    let run = glue::run_deferred(&cpu);
    let time = cpu.time;
    // Only this CPU's deferred run writes them (one at a time): a load and a store suffice.
    let ran = &time.deferred_callbacks;
    ran.store(ran.load(Relaxed) + u64::from(run.callbacks), Relaxed);
    if let Some(max) = with_tick(|t| t.max_deferred_waiting() as u64) {
        time.deferred_max_waiting.store(max, Relaxed);
    }
}

/// Drains the calling CPU's inbox with interrupts off, then carries out the registry's newest
/// assignment for it (`kernel_time::tick::glue::drain`).
pub(super) fn drain_inbox() {
    x86_64::instructions::interrupts::without_interrupts(|| glue::drain(&this_cpu()));
}

/// Leaves the registry's assignment for CPU `a.cpu` (another one) in its slot, noted in its
/// inbox, and wakes it to carry it out. Called with interrupts off.
pub(super) fn send_assignment(a: Assignment) -> bool {
    let Some(target) = percpu::cpu(a.cpu) else { return false };
    let Some(inbox) = time_of(target).inbox.get() else { return false };
    time_of(target).assignment.post(a, inbox);
    registry::send_wakeup(target.index);
    true
}

/// The calling CPU as the crate's expiry loop and glue see it.
#[inline]
fn this_cpu() -> ThisCpu {
    let index = percpu::this_cpu().index;
    ThisCpu { index, time: time_at(index) }
}

/// A clock event device interrupted this CPU, `cpu` (called by the device drivers' handlers,
/// which looked it up already). The clock is read by the expiry, under the tick's guard, right
/// before its first pop: the CPU's state is looked up and the guard taken before it.
#[inline]
pub(super) fn device_interrupt(device: DeviceId, cpu: &'static percpu::PerCpu) {
    glue::device_interrupt(&ThisCpu::<true> { index: cpu.index, time: time_of(cpu) }, device);
}

/// The wake-up IPI: another CPU posted to this one's inbox, the broadcast woke it, or a
/// misrouted event of its device.
pub(super) fn wake_interrupt(_: crate::arch::x86_64::interrupts::Irq) {
    path_trace::stamp(Stage::Acked);
    drain_inbox();
    let now = now_ns();
    path_trace::stamp(Stage::ClockRead);
    glue::wakeup(&this_cpu(), now);
}

/// Before deep idle (interrupts off): a CPU whose tick device stops there stops it and hands
/// its next deadline to the broadcast; refused when no broadcast device can take it.
pub fn deep_idle_enter() -> Result<kernel_time::tick::Handover, kernel_time::tick::DeepIdleRefused> {
    glue::idle_enter(&this_cpu())
}

/// After deep idle (interrupts off): the CPU takes its deadline back from the broadcast.
pub fn deep_idle_exit() {
    glue::idle_exit(&this_cpu());
}

/// The clocks' offsets changed: the calling CPU's timers on REALTIME and BOOTTIME are placed
/// again (`kernel_time::tick::glue::clock_was_set`); how many moved.
pub(super) fn clock_was_set_here() -> usize {
    x86_64::instructions::interrupts::without_interrupts(|| glue::clock_was_set(&this_cpu()))
}

/// The calling CPU goes offline (interrupts off, after the registry took it out): its handles
/// closed, its inbox drained, its devices detached; its pending timers, for another CPU to
/// [`adopt`] (`glue::go_offline`).
pub(super) fn go_offline() -> alloc::vec::Vec<kernel_time::tick::Migrating<Payload>> {
    glue::go_offline(&this_cpu())
}

/// The calling CPU takes the timers of a CPU gone offline, each at its own deadline
/// (`glue::adopt`).
pub(super) fn adopt(
    timers: alloc::vec::Vec<kernel_time::tick::Migrating<Payload>>,
) -> Result<
    kernel_time::tick::Moved,
    kernel_time::tick::Refused<alloc::vec::Vec<kernel_time::tick::Migrating<Payload>>>,
> {
    x86_64::instructions::interrupts::without_interrupts(|| glue::adopt(&this_cpu(), timers))
}

/// Suspends the calling CPU's tick (local device shut down, timers kept); how many are pending.
pub(super) fn suspend_tick() -> usize {
    glue::suspend(&this_cpu())
}

/// Resumes the calling CPU's tick at `now`: its device programmed for the next deadline.
pub(super) fn resume_tick(now: u64) {
    glue::resume(&this_cpu(), now);
}

/// Suspends the broadcast (after every CPU's tick).
pub(super) fn suspend_broadcast() {
    glue::suspend_broadcast(&this_cpu());
}

/// Resumes the broadcast at `now` (before the CPUs' ticks).
pub(super) fn resume_broadcast(now: u64) {
    glue::resume_broadcast(&this_cpu(), now);
}
