//! One CPU's glue around the expiry loop, written once for every platform (the kernel, the host
//! simulator, the fuzz target): a device's interrupt (the broadcast device's, this CPU's own, or
//! another CPU's misrouted), the broadcast device's interrupt (which CPUs are due, each
//! woken by IPI, this one directly), a wake-up, what an expiry leaves behind (a device that gave
//! up programming goes to the registry), deep idle's handover to the broadcast and back, and the
//! suspend and resume of a CPU's tick and of the broadcast, a CPU going offline (its
//! devices released, its timers handed to another CPU), and the registry's decisions carried
//! out by a CPU ([`deliver`], [`take_out`]).
//!
//! The platform provides what only it can ([`Platform`], on top of [`ExpiryContext`]): this
//! CPU's number, the broadcast state under its lock and its device's id, the wake-up IPI (to a
//! CPU, or to a device's owner), and a device's take-out
//! by the registry (whose decisions [`deliver`](super::deliver) carries out). Every function
//! here runs on the CPU `p` stands for, with no guard of its tick held by the caller.

use super::deliver::DeliveryContext;
use super::expiry::{self, DeferredRun, Expiry, ExpiryContext, Hang, Outcome};
use super::{
    ArmError, Assignment, Changes, DeepIdleRefused, DeviceFailure, DeviceId, Handover, Migrating, Moved,
    Refused, Registry,
};
use crate::broadcast::Broadcast;
use crate::clockevents::{CpuSet, DeviceSpec, EventDriver};
use crate::hrtimer::{TimerId, WrongCpu};
use crate::inbox::{Inbox, TimeMessage};
use crate::remote::{self, Cancelled, Drained, Handles};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

/// What the glue needs from the platform besides the expiry's needs, on one CPU.
pub trait Platform: ExpiryContext + Sized {
    /// The CPU this is.
    fn cpu(&self) -> usize;
    /// Runs `f` on the broadcast state (in a kernel: under its lock, with interrupts off: the
    /// broadcast's interrupt takes it too).
    fn with_broadcast<R>(&self, f: impl FnOnce(&mut Broadcast) -> R) -> R;
    /// Whether `device` is the broadcast device now (read on every device interrupt). By
    /// default the broadcast state says, under its lock; a kernel keeps the id in an atomic,
    /// set in [`broadcast_device_changing`](Self::broadcast_device_changing).
    fn is_broadcast_device(&self, device: DeviceId) -> bool {
        self.with_broadcast(|b| b.device() == Some(device))
    }
    /// The broadcast device is about to change to `device` (`None`: none), as [`deliver`]
    /// carries a registry decision out (no-op by default).
    fn broadcast_device_changing(&self, device: Option<DeviceId>) {
        let _ = device;
    }
    /// Sends CPU `cpu` the wake-up IPI; its handler calls [`wakeup`] there.
    fn send_wakeup(&self, cpu: usize);
    /// `device`'s event reached this CPU, which it does not serve: its owner (the registry's
    /// `owner_of`), if any, is sent the wake-up IPI, to look at its queue and program its
    /// device again from its own CPU. By default the [`registry`](Self::registry) says who.
    fn wake_owner_of(&self, device: DeviceId) {
        if let Some(owner) = self.registry().and_then(|r| r.lock().owner_of(device)) {
            self.send_wakeup(owner);
        }
    }
    /// A device gave up programming: the registry takes it out and its decision is carried
    /// out (`Registry::take_out`, then [`deliver::deliver`](super::deliver::deliver); with the
    /// registry at hand, [`take_out`] does both). By default the [`registry`](Self::registry)
    /// does it at once; a kernel may queue it to be done outside the interrupt.
    /// Called with no tick guard held.
    fn take_out(&self, failure: DeviceFailure) {
        match self.registry() {
            Some(registry) => take_out(self, &mut registry.lock(), failure),
            None => {
                log::error!("{:?} gave up, and no registry takes it out: {}", failure.device, failure.error)
            }
        }
    }
    /// The registry, for the defaults of [`wake_owner_of`](Self::wake_owner_of) and
    /// [`take_out`](Self::take_out) (none by default). Its lock is then taken on those paths
    /// (a misrouted event, a failed device), never on an arm, cancel or expiry.
    fn registry(&self) -> Option<&spin::Mutex<Registry>> {
        None
    }
    /// An expiry on this CPU handed timers to its deferred list: the platform has this CPU
    /// call [`run_deferred`] soon, outside the interrupt and after it (a kernel: at the exit
    /// of its outermost interrupt, with interrupts enabled). No-op by default: the platform
    /// then calls [`run_deferred`] when it likes. Called from interrupt context, on this CPU.
    fn deferred_waiting(&self) {}
    /// An expiry on this CPU could not catch up (logged by a kernel; no-op by default).
    fn hang(&self, expiry: &Expiry, hang: Hang) {
        let _ = (expiry, hang);
    }
    /// This CPU's inbox, which other CPUs post timers, cancels and assignments to ([`drain`]);
    /// by default its [`mailbox`](Self::mailbox)'s (none: a platform whose CPUs never message
    /// each other).
    fn inbox(&self) -> Option<&Inbox<TimeMessage>> {
        self.mailbox(self.cpu()).map(|m| &m.inbox)
    }
    /// Where the registry leaves this CPU's newest assignment ([`AssignmentSlot`]); by default
    /// its [`mailbox`](Self::mailbox)'s.
    fn assignment_slot(&self) -> Option<&AssignmentSlot> {
        self.mailbox(self.cpu()).map(|m| &m.slot)
    }
    /// CPU `cpu`'s [`Mailbox`] (any CPU's, this one's too): where [`deliver`] leaves the
    /// registry's decisions for another CPU (none by default: such an assignment is lost, and
    /// logged), and this CPU's inbox and slot by default.
    fn mailbox(&self, cpu: usize) -> Option<&Mailbox<Self::Payload>> {
        let _ = cpu;
        None
    }
}

/// What other CPUs reach one CPU's time core through, allocated once: its timer
/// [`Handles`] (any CPU arms and cancels through them), its [`Inbox`] (the arms, cancels and
/// notes it drains) and its [`AssignmentSlot`].
#[derive(Debug)]
pub struct Mailbox<P> {
    /// The CPU's timer handles (also what its [`ExpiryContext::handles`] gives).
    pub handles: Handles<P>,
    /// The CPU's inbox.
    pub inbox: Inbox<TimeMessage>,
    /// The registry's newest assignment for the CPU.
    pub slot: AssignmentSlot,
}

impl<P> Mailbox<P> {
    /// CPU `cpu`'s mailbox: `capacity` handles and as many inbox messages. Its tick keeps room
    /// for the handles ([`CpuTick::reserve_for_handles`](super::CpuTick::reserve_for_handles)).
    pub fn new(cpu: usize, capacity: usize) -> Mailbox<P> {
        Mailbox {
            handles: Handles::new(cpu, capacity),
            inbox: Inbox::new(capacity),
            slot: AssignmentSlot::new(),
        }
    }

    /// Arms a timer on this mailbox's CPU from any CPU ([`Handles::post`]); the caller then
    /// sends that CPU the wake-up IPI.
    pub fn post(&self, deadline_ns: u64, make: impl FnOnce(TimerId) -> P) -> Result<TimerId, Refused<P>> {
        self.handles.post(&self.inbox, deadline_ns, make)
    }

    /// As [`post`](Self::post), with slack ([`Handles::post_range`]).
    pub fn post_range(
        &self,
        deadline_ns: u64,
        slack_ns: u64,
        make: impl FnOnce(TimerId) -> P,
    ) -> Result<TimerId, Refused<P>> {
        self.handles.post_range(&self.inbox, deadline_ns, slack_ns, make)
    }

    /// Cancels handle `id`'s timer from any CPU, at once ([`Handles::cancel`]). A pending one's
    /// slot is also noted in the inbox, for the owner to reclaim at its next drain rather than
    /// at its deadline (a full inbox refuses the note: nothing is lost, the slot waits).
    pub fn cancel(&self, id: TimerId) -> Result<Cancelled, WrongCpu> {
        let answer = self.handles.cancel(id)?;
        if answer == Cancelled::Pending {
            let _ = self.inbox.try_send(Handles::<P>::cancel_message(id));
        }
        Ok(answer)
    }
}

/// Where the registry's newest decision for one CPU waits for that CPU: a newer one replaces
/// an older (each says all of the CPU's service, and [`CpuTick::apply`](super::CpuTick::apply)
/// ignores a stale one anyway), and a flag says one waits, so that an inbox too full for the
/// [`TimeMessage::Assignment`] note loses nothing. The lock is taken by the CPU carrying out a
/// registry decision and by the owner's [`drain`], each briefly; never on the arm, cancel or
/// expiry path.
#[derive(Debug, Default)]
pub struct AssignmentSlot {
    newest: spin::Mutex<Option<Assignment>>,
    waiting: AtomicBool,
}

impl AssignmentSlot {
    /// An empty slot.
    pub const fn new() -> AssignmentSlot {
        AssignmentSlot { newest: spin::Mutex::new(None), waiting: AtomicBool::new(false) }
    }

    /// From the CPU carrying out a registry decision (interrupts off in a kernel): leaves `a`
    /// for its CPU and notes it in that CPU's `inbox`. The caller then sends it the wake-up IPI.
    pub fn post(&self, a: Assignment, inbox: &Inbox<TimeMessage>) {
        let sequence = a.sequence;
        *self.newest.lock() = Some(a);
        self.waiting.store(true, Ordering::Release);
        // A full inbox loses only the note: the flag is the record.
        let _ = inbox.try_send(TimeMessage::Assignment { sequence });
    }

    /// The owner takes the newest assignment, if one waits.
    pub fn take(&self) -> Option<Assignment> {
        if !self.waiting.swap(false, Ordering::Acquire) {
            return None;
        }
        self.newest.lock().take()
    }
}

/// The wake-up IPI's first half, on the CPU it woke: its inbox drained (timers posted to it
/// through its [`Handles`] armed, cancelled ones reclaimed:
/// [`remote::drain`]), then the registry's newest assignment for it carried out. Called from
/// inside a drain (a payload's drop arming a timer here), it sends this CPU the wake-up IPI,
/// which lands after the drain in progress, so nothing is stranded. A device that gave up
/// programming on a posted timer's deadline is taken out ([`Platform::take_out`]). Returns
/// what the drain did (none: nested, or no inbox).
pub fn drain<P: Platform>(p: &P) -> Option<Drained> {
    let drained = match p.inbox() {
        Some(inbox) => {
            let drained = remote::drain(p, inbox, |m| {
                debug_assert!(
                    matches!(m, TimeMessage::Wake | TimeMessage::Assignment { .. }),
                    "no other message is sent to a CPU's time core: {m:?}"
                );
            });
            match drained {
                // A device that gave up on a posted timer's deadline: nothing else reports it
                // (a drain on the posting CPU has no expiry after it).
                Some(d) => report(p, d.failure),
                None => p.send_wakeup(p.cpu()),
            }
            drained
        }
        None => None,
    };
    if let Some(a) = p.assignment_slot().and_then(AssignmentSlot::take) {
        report(p, apply(p, a));
    }
    drained
}

/// Carries assignment `a` out on this CPU, its own; returns a device that gave up meanwhile.
/// A CPU left without a device of its own no longer carries the broadcast's timer: the CPUs
/// waiting on it are woken ([`Broadcast::drop_server`]).
fn apply<P: Platform>(p: &P, a: Assignment) -> Option<DeviceFailure> {
    let now = p.now_ns();
    let local = matches!(a.service, super::Service::Local(_));
    let failure = p
        .with_tick(|t, bc| {
            t.apply(a, now, bc);
            t.take_failure()
        })
        .flatten();
    if !local {
        let orphans = p.with_broadcast(|b| b.drop_server(p.cpu()));
        for cpu in orphans.iter() {
            p.send_wakeup(cpu);
        }
    }
    failure
}

/// Carries the registry's decision `changes` out on this CPU, with `registry` held
/// ([`deliver::deliver`](super::deliver::deliver) on top of [`Platform`]): the broadcast change
/// under its lock, this CPU's assignment at once, another CPU's left in its
/// [`AssignmentSlot`] ([`Platform::mailbox`]) and that CPU woken to carry it out in its
/// [`drain`]; a device that gives up meanwhile is taken out of `registry` and that decision
/// carried out in turn. Call it with this CPU's interrupts off in a kernel (the broadcast's
/// lock is taken), and keep `registry` held, so that each CPU's assignments are posted in the
/// order they were decided.
pub fn deliver<P: Platform>(p: &P, registry: &mut Registry, changes: Changes) {
    super::deliver::deliver(&mut OnPlatform { p, registry }, changes);
}

/// Device `failure.device` gave up programming: `registry` takes it out and its decision is
/// carried out on this CPU ([`deliver`]). What [`Platform::take_out`] does with the registry at
/// hand.
pub fn take_out<P: Platform>(p: &P, registry: &mut Registry, failure: DeviceFailure) {
    let changes = registry.take_out(failure.device, &alloc::format!("{}", failure.error));
    deliver(p, registry, changes);
}

/// Registers a device from this CPU (`registry` held) and carries the decision out
/// ([`deliver`]); its id.
pub fn register<P: Platform>(
    p: &P,
    registry: &mut Registry,
    spec: DeviceSpec,
    driver: &'static dyn EventDriver,
) -> DeviceId {
    let (id, changes) = registry.register(spec, driver);
    deliver(p, registry, changes);
    id
}

/// Brings this CPU online in `registry` (its tick exists) and carries the decision out
/// ([`deliver`]): it gets its device.
pub fn cpu_online<P: Platform>(p: &P, registry: &mut Registry) {
    let changes = registry.cpu_online(p.cpu());
    deliver(p, registry, changes);
}

/// The registry's decisions carried out by the CPU `p` stands for ([`deliver`]).
struct OnPlatform<'a, P> {
    p: &'a P,
    registry: &'a mut Registry,
}

impl<P: Platform> DeliveryContext for OnPlatform<'_, P> {
    fn now_ns(&self) -> u64 {
        self.p.now_ns()
    }
    fn broadcast_device_changing(&mut self, device: Option<DeviceId>) {
        self.p.broadcast_device_changing(device);
    }
    fn with_broadcast<R>(&mut self, f: impl FnOnce(&mut Broadcast) -> R) -> R {
        self.p.with_broadcast(f)
    }
    fn wake(&mut self, cpu: usize) {
        self.p.send_wakeup(cpu);
    }
    fn assign(&mut self, a: Assignment) -> Option<DeviceFailure> {
        let cpu = a.cpu;
        if cpu == self.p.cpu() {
            return apply(self.p, a);
        }
        match self.p.mailbox(cpu) {
            Some(m) => {
                m.slot.post(a, &m.inbox);
                self.p.send_wakeup(cpu);
            }
            None => log::error!("CPU {cpu} has no assignment slot: its tick assignment is lost"),
        }
        None
    }
    fn take_out(&mut self, device: DeviceId, reason: &str) -> Changes {
        self.registry.take_out(device, reason)
    }
}

/// What an expiry left to the platform: a hang reported, a device that gave up programming
/// taken out. Called after every expiry ([`wakeup`] does it itself).
#[inline]
pub fn expiry_done<P: Platform>(p: &P, e: Expiry) {
    if e.broadcast_due {
        broadcast_event(p, p.now_ns());
    }
    if e.deferred != 0 {
        p.deferred_waiting();
    }
    if let Some(hang) = e.hang {
        p.hang(&e, hang);
    }
    if let Some(failure) = e.failure {
        p.take_out(failure);
    }
}

/// This CPU's deferred run ([`expiry::run_deferred`]: the timers waiting in its deferred list
/// run, outside any interrupt handler); a device that gave up when a periodic timer was
/// re-armed is taken out, and timers still waiting are announced again
/// ([`Platform::deferred_waiting`]).
pub fn run_deferred<P: Platform>(p: &P) -> DeferredRun {
    let run = expiry::run_deferred(p);
    report(p, run.failure);
    if run.left {
        p.deferred_waiting();
    }
    run
}

/// What a device interrupt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The broadcast device's: these CPUs were due (this one woken directly, the others by
    /// IPI).
    Broadcast(CpuSet),
    /// A device local to a CPU: what the expiry came to on this CPU (`NotOurs`: its owner was
    /// woken).
    Local(Outcome),
}

/// Device `device` interrupted this CPU (called by the device's interrupt handler): the
/// broadcast device's event ([`broadcast_event`], at a clock read taken first), or this CPU's
/// expiry ([`expiry::device_interrupt`], which reads the clock under the tick's guard, then
/// [`expiry_done`]); the event of a device this CPU does not serve wakes the device's owner.
#[inline]
pub fn device_interrupt<P: Platform>(p: &P, device: DeviceId) -> DeviceEvent {
    if p.is_broadcast_device(device) {
        let now_ns = p.now_ns();
        p.trace(expiry::ExpiryPoint::ClockRead);
        return DeviceEvent::Broadcast(broadcast_event(p, now_ns));
    }
    let outcome = expiry::device_interrupt(p, device);
    match outcome {
        Outcome::Expired(e) => expiry_done(p, e),
        Outcome::NotOurs => p.wake_owner_of(device),
        Outcome::Idle => {}
    }
    DeviceEvent::Local(outcome)
}

/// This CPU was woken (the broadcast's IPI, or for a misrouted event of its own device) at
/// `now_ns`: runs the expiry, then [`expiry_done`].
#[inline]
pub fn wakeup<P: Platform>(p: &P, now_ns: u64) -> Outcome {
    let outcome = expiry::wakeup(p, now_ns);
    if let Outcome::Expired(e) = outcome {
        expiry_done(p, e);
    }
    outcome
}

/// The broadcast device interrupted this CPU at `now_ns`: every CPU whose deadline passed is
/// woken, this one directly ([`wakeup`]), the others by IPI; the device is programmed for the
/// earliest deadline left, and if it gave up on that, it is taken out first (the registry's
/// decision then moves its sleepers on before they are woken). Returns the CPUs woken.
pub fn broadcast_event<P: Platform>(p: &P, now_ns: u64) -> CpuSet {
    let here = p.cpu();
    let (due, failure, hrtimer) =
        p.with_broadcast(|b| (b.event(now_ns, here), b.take_failure(), b.is_hrtimer()));
    if hrtimer {
        // One CPU's timer, programmed again from here: this CPU's tick carries it now.
        sync_broadcast_timer(p);
    }
    report(p, failure.map(|(device, error)| DeviceFailure { device, error }));
    for cpu in due.iter() {
        if cpu == here {
            wakeup(p, now_ns);
        } else {
            p.send_wakeup(cpu);
        }
    }
    due
}

/// This CPU's tick takes up what the broadcast says of its timer here
/// ([`CpuTick::sync_broadcast_timer`](super::CpuTick::sync_broadcast_timer)); a device that
/// gives up meanwhile is taken out.
fn sync_broadcast_timer<P: Platform>(p: &P) {
    let now = p.now_ns();
    let failure = p
        .with_tick(|t, bc| {
            t.sync_broadcast_timer(now, bc);
            t.take_failure()
        })
        .flatten();
    report(p, failure);
}

/// The clocks' offsets changed (REALTIME stepped, time suspended added; Linux's
/// `clock_was_set`, on each CPU): this CPU's timers on REALTIME and BOOTTIME are queued again
/// where the fresh offsets ([`ExpiryContext::offsets`]) place them, and its device programmed
/// for the earliest; a device that gives up meanwhile is taken out. Run it on every CPU after
/// the change (a CPU not told yet runs nothing early: a timer due on MONOTONIC is asked
/// again whether its clock has reached it). Returns how many timers moved.
pub fn clock_was_set<P: Platform>(p: &P) -> usize {
    let offsets = p.offsets();
    let now = p.now_ns();
    let done = p.with_tick(|t, bc| {
        let moved = t.clock_was_set(offsets, now, bc, |payload| p.clock_deadline(payload));
        (moved, t.take_failure())
    });
    let Some((moved, failure)) = done else { return 0 };
    report(p, failure);
    moved
}

fn report<P: Platform>(p: &P, failure: Option<DeviceFailure>) {
    if let Some(f) = failure {
        p.take_out(f);
    }
}

/// Takes the broadcast device out if it gave up programming (on a deadline handed to it
/// directly, not through a CPU's tick, which reports its own).
fn report_broadcast<P: Platform>(p: &P) {
    if let Some((device, error)) = p.with_broadcast(|b| b.take_failure()) {
        p.take_out(DeviceFailure { device, error });
    }
}

/// Before deep idle (interrupts off): a CPU whose tick device stops there stops it and hands
/// its next deadline to the broadcast ([`CpuTick::broadcast_enter`](super::CpuTick::broadcast_enter));
/// a deadline already due is kept ([`Handover::EventDue`]); refused when no broadcast device can
/// take it. A CPU with no tick needs nothing.
pub fn idle_enter<P: Platform>(p: &P) -> Result<Handover, DeepIdleRefused> {
    let now = p.now_ns();
    let (result, failure) = p
        .with_tick(|t, bc| (t.broadcast_enter(now, bc), t.take_failure()))
        .unwrap_or((Ok(Handover::NotNeeded), None));
    report(p, failure);
    report_broadcast(p);
    result
}

/// After deep idle, woken for whatever reason, before or after its interrupt handler ran:
/// the CPU takes its deadline back from the broadcast
/// ([`CpuTick::broadcast_exit`](super::CpuTick::broadcast_exit)).
pub fn idle_exit<P: Platform>(p: &P) {
    let now = p.now_ns();
    let failure = p
        .with_tick(|t, bc| {
            t.broadcast_exit(now, bc);
            t.take_failure()
        })
        .flatten();
    report(p, failure);
}

/// One idle period of this CPU around the platform's `sleep` (which returns at its next
/// interrupt): [`idle_enter`], and if the deadline was handed to the broadcast, `sleep(true)`
/// (deep: the local device stopped, the broadcast's IPI wakes it) then [`idle_exit`]; otherwise
/// `sleep(false)` (shallow: its tick device runs; a deadline already due has its interrupt
/// pending, deep idle refused or not needed). Returns what [`idle_enter`] answered.
/// A CPU that serves the broadcast's timer ([`Handover::ServesBroadcast`]) sleeps shallow.
pub fn idle<P: Platform>(p: &P, sleep: impl FnOnce(bool)) -> Result<Handover, DeepIdleRefused> {
    let entered = idle_enter(p);
    if entered == Ok(Handover::HandedOver) {
        sleep(true);
        idle_exit(p);
    } else {
        sleep(false);
    }
    entered
}

/// Suspends this CPU's tick: its local device shut down, its timers kept. Returns how many
/// are pending (0 for a CPU with no tick).
pub fn suspend<P: Platform>(p: &P) -> usize {
    p.with_tick(|t, _| t.suspend()).unwrap_or(0)
}

/// Resumes this CPU's tick at `now_ns`: its device back in its mode and programmed for the
/// next deadline (those passed meanwhile fire at once); a device that gives up is taken out.
pub fn resume<P: Platform>(p: &P, now_ns: u64) {
    let failure = p
        .with_tick(|t, bc| {
            t.resume(now_ns, bc);
            t.take_failure()
        })
        .flatten();
    report(p, failure);
}

/// Suspends the broadcast (once, on one CPU, after every CPU's tick): its device shut down, the
/// deadlines handed over kept.
pub fn suspend_broadcast<P: Platform>(p: &P) {
    p.with_broadcast(|b| b.suspend());
}

/// Resumes the broadcast at `now_ns` (before the CPUs' ticks): its device programmed for the
/// earliest deadline kept; a device that gives up is taken out.
pub fn resume_broadcast<P: Platform>(p: &P, now_ns: u64) {
    let failure = p.with_broadcast(|b| {
        b.resume(now_ns);
        b.take_failure()
    });
    report(p, failure.map(|(device, error)| DeviceFailure { device, error }));
}

/// This CPU goes offline (after `Registry::cpu_offline` for it, outside any expiry): its
/// handles closed to new posts and its inbox drained one last time, an assignment still
/// waiting in its slot dropped (the registry decides nothing for it any more), its devices
/// released, its pending timers returned for another CPU to [`adopt`], those armed through
/// handles marked as moved in their handles' table ([`remote::leave`], then
/// [`CpuTick::go_offline`](super::CpuTick::go_offline)). None for a CPU with no tick.
/// If it served the broadcast's timer, the CPUs waiting on it are woken (the first to hand
/// its deadline over again takes the timer over: [`Broadcast::cpu_gone`]).
pub fn go_offline<P: Platform>(p: &P) -> Vec<Migrating<P::Payload>> {
    let timers = remote::leave(p, p.inbox(), |_| {});
    if let Some(slot) = p.assignment_slot() {
        let _ = slot.take();
    }
    let orphans = p.with_broadcast(|b| b.cpu_gone(p.cpu()));
    for cpu in orphans.iter() {
        p.send_wakeup(cpu);
    }
    timers
}

/// Takes the timers of a CPU gone offline onto this CPU's queue, each at its own deadline;
/// returns each old id with its new one ([`CpuTick::adopt`](super::CpuTick::adopt)), or the
/// timers handed back when this CPU cannot take them (it has no tick: `CpuNotOnline`). A
/// device that gives up on the new earliest deadline is taken out (the timers stay queued and
/// go with this CPU to its next device).
pub fn adopt<P: Platform>(
    p: &P,
    timers: Vec<Migrating<P::Payload>>,
) -> Result<Moved, Refused<Vec<Migrating<P::Payload>>>> {
    let now = p.now_ns();
    let mut timers = Some(timers);
    let adopted = p.with_tick(|t, bc| {
        let r = t.adopt(timers.take().expect("taken once"), now, bc);
        (r, t.take_failure())
    });
    let Some((result, failure)) = adopted else {
        let payload = timers.take().expect("not taken without a tick");
        return Err(Refused { error: ArmError::CpuNotOnline(p.cpu()), payload });
    };
    report(p, failure);
    result
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::tick::{CpuTick, Service, TickMode};

    fn assignment(sequence: u64) -> Assignment {
        Assignment { cpu: 1, sequence, service: Service::None, local: None }
    }

    #[test]
    fn the_newest_assignment_waits_and_is_taken_once() {
        let slot = AssignmentSlot::new();
        let inbox = Inbox::new(4);
        assert!(slot.take().is_none(), "nothing waits at first");
        slot.post(assignment(1), &inbox);
        slot.post(assignment(2), &inbox);
        assert_eq!(slot.take().map(|a| a.sequence), Some(2), "the newer replaced the older");
        assert!(slot.take().is_none(), "taken once");
    }

    #[test]
    fn an_assignment_is_not_lost_when_its_note_does_not_fit_in_the_inbox() {
        let slot = AssignmentSlot::new();
        let inbox = Inbox::new(2);
        inbox.try_send(TimeMessage::Wake).unwrap();
        inbox.try_send(TimeMessage::Wake).unwrap();
        slot.post(assignment(3), &inbox);
        assert_eq!(inbox.refused(), 1, "the note was refused");
        assert_eq!(slot.take().map(|a| a.sequence), Some(3), "the flag still says it waits");
    }

    /// CPU `cpu` of a two-CPU machine, as the glue sees it: its tick, the shared broadcast, the
    /// other CPU's inbox and slot, and the wake-ups it sent.
    struct TestCpu<'a> {
        cpu: usize,
        tick: core::cell::RefCell<CpuTick<u32>>,
        bc: &'a spin::Mutex<Broadcast>,
        peer: &'a Mailbox<u32>,
        woken: core::cell::RefCell<Vec<usize>>,
        now: u64,
        /// Each clock read, and whether the tick's guard was held at it.
        reads: core::cell::RefCell<Vec<bool>>,
        /// Each callback: its payload, the clock read it was given, the reads taken before it.
        ran: core::cell::RefCell<Vec<(u32, u64, usize)>>,
    }

    impl ExpiryContext for TestCpu<'_> {
        type Payload = u32;
        fn with_tick<R>(&self, f: impl FnOnce(&mut CpuTick<u32>, &spin::Mutex<Broadcast>) -> R) -> Option<R> {
            Some(f(&mut self.tick.borrow_mut(), self.bc))
        }
        fn now_ns(&self) -> u64 {
            self.reads.borrow_mut().push(self.tick.try_borrow_mut().is_err());
            self.now
        }
        fn run(&self, timer: crate::hrtimer::Expired<u32>, now_ns: u64) -> Option<(u64, u32)> {
            self.ran.borrow_mut().push((timer.payload, now_ns, self.reads.borrow().len()));
            None
        }
    }

    impl Platform for TestCpu<'_> {
        fn cpu(&self) -> usize {
            self.cpu
        }
        fn with_broadcast<R>(&self, f: impl FnOnce(&mut Broadcast) -> R) -> R {
            f(&mut self.bc.lock())
        }
        fn send_wakeup(&self, cpu: usize) {
            self.woken.borrow_mut().push(cpu);
        }
        fn wake_owner_of(&self, _: DeviceId) {}
        fn take_out(&self, failure: DeviceFailure) {
            panic!("no device fails here: {failure:?}");
        }
        fn mailbox(&self, cpu: usize) -> Option<&Mailbox<u32>> {
            (cpu != self.cpu).then_some(self.peer)
        }
    }

    /// CPU 0 of two, both online, with a global device (the broadcast) and CPU 0's own
    /// device that stops in deep idle, registered on CPU 0; CPU 1's inbox and slot.
    fn machine<'a>(
        bc: &'a spin::Mutex<Broadcast>,
        peer: &'a Mailbox<u32>,
        registry: &mut Registry,
        with_broadcast: bool,
    ) -> (TestCpu<'a>, Option<DeviceId>, DeviceId) {
        use crate::clockevents::Features;
        use crate::clockevents::fake::{FakeDriver, spec};
        let now = 1_000_000;
        let tick = core::cell::RefCell::new(CpuTick::new(0, TickMode::Oneshot, now, 8));
        let p = TestCpu {
            cpu: 0,
            tick,
            bc,
            peer,
            woken: Default::default(),
            now,
            reads: Default::default(),
            ran: Default::default(),
        };
        cpu_online(&p, registry);
        let cpu1 = registry.cpu_online(1); // CPU 1's own doing: nothing serves it yet
        assert!(cpu1.is_empty());
        let global = with_broadcast.then(|| {
            register(
                &p,
                registry,
                spec("global", 50, CpuSet::first(2), Features::empty()),
                FakeDriver::leak(),
            )
        });
        let features = Features::PER_CPU | Features::STOPS_IN_DEEP_IDLE;
        let local =
            register(&p, registry, spec("local0", 100, CpuSet::single(0), features), FakeDriver::leak());
        (p, global, local)
    }

    /// The interrupt's clock read: one, taken under the tick's guard once the event is known
    /// to be this CPU's, before the first callback, which is given that reading; an event of a
    /// device that does not serve this CPU reads no clock.
    #[test]
    fn a_device_interrupt_reads_the_clock_once_under_the_guard_before_its_first_callback() {
        let (bc, peer, mut registry) =
            (spin::Mutex::new(Broadcast::new()), Mailbox::new(1, 4), Registry::new());
        let (p, _, local) = machine(&bc, &peer, &mut registry, false);
        p.tick.borrow_mut().arm(p.now, 7, p.now, &bc).unwrap();
        p.reads.borrow_mut().clear();
        let stranger = DeviceId(local.0 + 100);
        assert_eq!(device_interrupt(&p, stranger), DeviceEvent::Local(Outcome::NotOurs));
        assert!(p.reads.borrow().is_empty(), "an event that is not this CPU's reads no clock");
        assert!(p.ran.borrow().is_empty());
        let event = device_interrupt(&p, local);
        assert!(matches!(event, DeviceEvent::Local(Outcome::Expired(e)) if e.callbacks == 1), "{event:?}");
        assert_eq!(p.ran.borrow().as_slice(), &[(7, p.now, 1)], "one read before the callback, its reading");
        assert!(p.reads.borrow()[0], "that read was taken under the guard");
    }

    #[test]
    fn deliver_carries_out_this_cpus_assignment_and_leaves_anothers_in_its_slot() {
        let (bc, peer, mut registry) =
            (spin::Mutex::new(Broadcast::new()), Mailbox::new(1, 4), Registry::new());
        let (p, global, local) = machine(&bc, &peer, &mut registry, true);
        let global = global.unwrap();
        assert_eq!(p.tick.borrow().service(), Service::Local(local), "CPU 0's own assignment, carried out");
        assert_eq!(bc.lock().device(), Some(global), "the broadcast change, installed");
        assert!(
            p.is_broadcast_device(global) && !p.is_broadcast_device(local),
            "the default asks the broadcast"
        );
        let a = peer.slot.take().expect("CPU 1's assignment waits in its slot");
        assert_eq!((a.cpu, a.service), (1, Service::Broadcast(global)));
        assert_eq!(*p.woken.borrow(), [1], "CPU 1 woken to carry it out");
        let mut rx = peer.inbox.receiver().unwrap();
        assert!(matches!(rx.recv(), Some(TimeMessage::Assignment { .. })), "and told in its inbox");
    }

    #[test]
    fn take_out_moves_this_cpu_to_the_broadcast_with_its_deadline() {
        let (bc, peer, mut registry) =
            (spin::Mutex::new(Broadcast::new()), Mailbox::new(1, 4), Registry::new());
        let (p, global, local) = machine(&bc, &peer, &mut registry, true);
        p.tick.borrow_mut().arm(p.now + 5_000, 7, p.now, &bc).unwrap();
        let error = crate::clockevents::ProgramError::GaveUp { min_delta_ns: 10_000_000 };
        take_out(&p, &mut registry, DeviceFailure { device: local, error });
        assert_eq!(p.tick.borrow().service(), Service::Broadcast(global.unwrap()));
        assert_eq!(registry.taken_out().len(), 1, "the registry took it out");
        assert_eq!(bc.lock().deadline(0), p.now + 5_000, "its deadline went with it");
    }

    #[test]
    fn idle_sleeps_deeply_only_with_the_deadline_handed_over_and_takes_it_back() {
        let (bc, peer, mut registry) =
            (spin::Mutex::new(Broadcast::new()), Mailbox::new(1, 4), Registry::new());
        let (p, _, _) = machine(&bc, &peer, &mut registry, true);
        p.tick.borrow_mut().arm(p.now + 5_000, 7, p.now, &bc).unwrap();
        let mut slept = Vec::new();
        assert_eq!(
            idle(&p, |deep| slept.push((deep, p.tick.borrow().is_handed_over()))),
            Ok(Handover::HandedOver)
        );
        assert_eq!(slept, [(true, true)], "deep, with the deadline at the broadcast");
        assert!(!p.tick.borrow().is_handed_over(), "taken back after the sleep");
        // A deadline already due: no handover, a shallow sleep (its interrupt is pending).
        p.tick.borrow_mut().arm(p.now - 1, 8, p.now, &bc).unwrap();
        let mut slept = Vec::new();
        assert_eq!(idle(&p, |deep| slept.push(deep)), Ok(Handover::EventDue));
        assert_eq!(slept, [false]);
    }

    #[test]
    fn idle_sleeps_shallowly_when_no_broadcast_can_take_the_deadline() {
        let (bc, peer, mut registry) =
            (spin::Mutex::new(Broadcast::new()), Mailbox::new(1, 4), Registry::new());
        let (p, _, _) = machine(&bc, &peer, &mut registry, false);
        p.tick.borrow_mut().arm(p.now + 5_000, 7, p.now, &bc).unwrap();
        let mut slept = Vec::new();
        assert_eq!(idle(&p, |deep| slept.push(deep)), Err(DeepIdleRefused::NoBroadcast));
        assert_eq!(slept, [false]);
    }

    #[test]
    fn a_mailbox_cancel_answers_at_once_and_notes_a_pending_slot_for_its_owner() {
        let mailbox = Mailbox::<u32>::new(1, 4);
        let id = mailbox.post(5_000, |_| 7).unwrap();
        assert_eq!(id.cpu(), 1, "the handle names its CPU");
        assert_eq!(mailbox.cancel(id), Ok(Cancelled::Pending));
        assert_eq!(mailbox.cancel(id), Ok(Cancelled::Inactive), "cancelled once");
        let mut rx = mailbox.inbox.receiver().unwrap();
        assert!(matches!(rx.recv(), Some(TimeMessage::Arm { .. })));
        assert!(matches!(rx.recv(), Some(TimeMessage::Cancel { id: c }) if c == id), "the reclaim note");
        assert!(rx.recv().is_none(), "one note, for the one pending cancel");
        let other = Mailbox::<u32>::new(0, 4).post(5_000, |_| 8).unwrap();
        assert!(mailbox.cancel(other).is_err(), "another CPU's handle is refused");
    }

    /// CPU 0 alone, whose platform names its registry and its mailbox and nothing else of
    /// them: the defaults take a failed device out and wake a misrouted event's owner through
    /// the registry, and reach the inbox, slot and handles through the mailbox.
    struct RegistryCpu<'a> {
        tick: core::cell::RefCell<CpuTick<u32>>,
        bc: &'a spin::Mutex<Broadcast>,
        registry: &'a spin::Mutex<Registry>,
        own: Mailbox<u32>,
        woken: core::cell::RefCell<Vec<usize>>,
    }

    impl ExpiryContext for RegistryCpu<'_> {
        type Payload = u32;
        fn with_tick<R>(&self, f: impl FnOnce(&mut CpuTick<u32>, &spin::Mutex<Broadcast>) -> R) -> Option<R> {
            Some(f(&mut self.tick.borrow_mut(), self.bc))
        }
        fn now_ns(&self) -> u64 {
            1_000_000
        }
        fn run(&self, _: crate::hrtimer::Expired<u32>, _: u64) -> Option<(u64, u32)> {
            None
        }
        fn handle_of(&self, _: &u32) -> Option<TimerId> {
            None // the test's posted timers never reach their deadline
        }
        fn handles(&self) -> Option<&Handles<u32>> {
            Some(&self.own.handles)
        }
    }

    impl Platform for RegistryCpu<'_> {
        fn cpu(&self) -> usize {
            0
        }
        fn with_broadcast<R>(&self, f: impl FnOnce(&mut Broadcast) -> R) -> R {
            f(&mut self.bc.lock())
        }
        fn send_wakeup(&self, cpu: usize) {
            self.woken.borrow_mut().push(cpu);
        }
        fn registry(&self) -> Option<&spin::Mutex<Registry>> {
            Some(self.registry)
        }
        fn mailbox(&self, cpu: usize) -> Option<&Mailbox<u32>> {
            (cpu == 0).then_some(&self.own)
        }
    }

    /// CPU 0 online with a global device (the broadcast) and its own device, registered.
    fn registry_cpu<'a>(
        bc: &'a spin::Mutex<Broadcast>,
        registry: &'a spin::Mutex<Registry>,
        local_driver: &'static crate::clockevents::fake::FakeDriver,
    ) -> (RegistryCpu<'a>, DeviceId, DeviceId) {
        use crate::clockevents::Features;
        use crate::clockevents::fake::{FakeDriver, spec};
        let mut tick = CpuTick::new(0, TickMode::Oneshot, 1_000_000, 8);
        tick.reserve_for_handles(4);
        let tick = core::cell::RefCell::new(tick);
        let p = RegistryCpu { tick, bc, registry, own: Mailbox::new(0, 4), woken: Default::default() };
        cpu_online(&p, &mut registry.lock());
        let global_spec = spec("global", 50, CpuSet::first(1), Features::empty());
        let global = register(&p, &mut registry.lock(), global_spec, FakeDriver::leak());
        let features = Features::PER_CPU | Features::STOPS_IN_DEEP_IDLE;
        let local_spec = spec("local0", 100, CpuSet::single(0), features);
        let local = register(&p, &mut registry.lock(), local_spec, local_driver);
        assert_eq!(p.tick.borrow().service(), Service::Local(local));
        (p, global, local)
    }

    #[test]
    fn with_its_registry_named_the_defaults_take_out_and_wake_the_owner() {
        let (bc, registry) = (spin::Mutex::new(Broadcast::new()), spin::Mutex::new(Registry::new()));
        let (p, global, local) = registry_cpu(&bc, &registry, crate::clockevents::fake::FakeDriver::leak());
        p.wake_owner_of(local);
        assert_eq!(*p.woken.borrow(), [0], "the registry named the owner");
        let error = crate::clockevents::ProgramError::GaveUp { min_delta_ns: 10_000_000 };
        p.take_out(DeviceFailure { device: local, error });
        assert_eq!(registry.lock().taken_out().len(), 1, "taken out through the registry");
        assert_eq!(p.tick.borrow().service(), Service::Broadcast(global), "and the decision carried out");
    }

    #[test]
    fn drain_takes_out_a_device_that_gives_up_on_a_posted_timers_deadline() {
        let (bc, registry) = (spin::Mutex::new(Broadcast::new()), spin::Mutex::new(Registry::new()));
        let driver = crate::clockevents::fake::FakeDriver::leak();
        let (p, global, _) = registry_cpu(&bc, &registry, driver);
        *driver.passes_below_ticks.lock() = u64::MAX; // from now on every deadline is passed
        p.own.post(p.now_ns() + 5_000, |_| 7).unwrap();
        let drained = drain(&p).expect("not nested");
        assert_eq!(drained.armed, 1, "the posted timer is queued");
        assert!(drained.failure.is_some(), "its device gave up on its deadline");
        assert_eq!(registry.lock().taken_out().len(), 1, "and drain took it out");
        assert_eq!(p.tick.borrow().service(), Service::Broadcast(global), "CPU 0 moved on");
        assert_eq!(bc.lock().deadline(0), p.now_ns() + 5_000, "with the posted timer's deadline");
    }

    #[test]
    fn a_posted_timer_keeps_its_slack_and_so_does_a_migrating_one() {
        let (bc, registry) = (spin::Mutex::new(Broadcast::new()), spin::Mutex::new(Registry::new()));
        let (p, global, _) = registry_cpu(&bc, &registry, crate::clockevents::fake::FakeDriver::leak());
        let now = p.now_ns();
        p.own.post_range(now + 5_000, 20_000, |_| 7).unwrap();
        // Over 32 bits of slack: narrowed to u32::MAX, never widened.
        p.own.post_range(now + 6_000, u64::MAX, |_| 8).unwrap();
        assert_eq!(drain(&p).expect("not nested").armed, 2);
        assert_eq!(p.tick.borrow().next_event_ns(), now + 25_000, "programmed for the end of its range");
        let migrating = p.tick.borrow_mut().go_offline(&bc);
        let ranges: Vec<_> = migrating.iter().map(|m| (m.deadline_ns, m.latest_ns, m.payload)).collect();
        assert_eq!(
            ranges,
            [(now + 5_000, now + 25_000, 7), (now + 6_000, now + 6_000 + u64::from(u32::MAX), 8)]
        );
        let mut other = CpuTick::new(1, TickMode::Oneshot, now, 8);
        other.assign(Service::Broadcast(global), None, now, &bc);
        other.adopt(migrating, now, &bc).unwrap();
        assert_eq!(other.next_event_ns(), now + 25_000, "the adopted timer kept its range");
        assert!(other.wakeup(now + 4_999) && other.pop_expired(now + 4_999).is_none(), "and its deadline");
        let e = other.pop_expired(now + 6_000).expect("both ranges have begun");
        assert_eq!((e.deadline_ns, other.latest(e.id)), (now + 5_000, Some(now + 25_000)));
    }
}
