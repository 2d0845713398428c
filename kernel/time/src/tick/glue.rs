//! One CPU's glue around the expiry loop, written once for every platform (the kernel, the host
//! simulator, the fuzz target): a device's interrupt (the broadcast device's, this CPU's own, or
//! another CPU's misrouted), the broadcast device's interrupt (which CPUs are due, each
//! woken by IPI, this one directly), a wake-up, what an expiry leaves behind (a device that gave
//! up programming goes to the registry), deep idle's handover to the broadcast and back, and the
//! suspend and resume of a CPU's tick and of the broadcast, and a CPU going offline (its
//! devices released, its timers handed to another CPU).
//!
//! The platform provides what only it can ([`Platform`], on top of [`ExpiryContext`]): this
//! CPU's number, the broadcast state under its lock and its device's id, the wake-up IPI (to a
//! CPU, or to a device's owner), and a device's take-out
//! by the registry (whose decisions [`deliver`](super::deliver) carries out). Every function
//! here runs on the CPU `p` stands for, with no guard of its tick held by the caller.

use super::expiry::{self, Expiry, ExpiryContext, Hang, Outcome};
use super::{
    ArmError, Assignment, DeepIdleRefused, DeviceFailure, DeviceId, Handover, Migrating, Moved, Refused,
};
use crate::broadcast::Broadcast;
use crate::clockevents::CpuSet;
use crate::inbox::{Inbox, TimeMessage};
use crate::remote::{self, Drained};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

/// What the glue needs from the platform besides the expiry's needs, on one CPU.
pub trait Platform: ExpiryContext {
    /// The CPU this is.
    fn cpu(&self) -> usize;
    /// Runs `f` on the broadcast state (in a kernel: under its lock, with interrupts off: the
    /// broadcast's interrupt takes it too).
    fn with_broadcast<R>(&self, f: impl FnOnce(&mut Broadcast) -> R) -> R;
    /// Whether `device` is the broadcast device now (read on every device interrupt: a kernel
    /// keeps its id in an atomic).
    fn is_broadcast_device(&self, device: DeviceId) -> bool;
    /// Sends CPU `cpu` the wake-up IPI; its handler calls [`wakeup`] there.
    fn send_wakeup(&self, cpu: usize);
    /// `device`'s event reached this CPU, which it does not serve: its owner (the registry's
    /// `owner_of`), if any, is sent the wake-up IPI, to look at its queue and program its
    /// device again from its own CPU.
    fn wake_owner_of(&self, device: DeviceId);
    /// A device gave up programming: the registry takes it out and its decision is carried
    /// out (the kernel: `Registry::take_out`, then [`deliver`](super::deliver::deliver)).
    /// Called with no tick guard held; a platform may also queue it to be done later.
    fn take_out(&self, failure: DeviceFailure);
    /// An expiry on this CPU could not catch up (logged by a kernel; no-op by default).
    fn hang(&self, expiry: &Expiry, hang: Hang) {
        let _ = (expiry, hang);
    }
    /// This CPU's inbox, which other CPUs post timers, cancels and assignments to ([`drain`];
    /// none by default: a platform whose CPUs never message each other).
    fn inbox(&self) -> Option<&Inbox<TimeMessage>> {
        None
    }
    /// Where the registry leaves this CPU's newest assignment ([`AssignmentSlot`]; none by
    /// default).
    fn assignment_slot(&self) -> Option<&AssignmentSlot> {
        None
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
/// through its [`Handles`](crate::remote::Handles) armed, cancelled ones reclaimed:
/// [`remote::drain`]), then the registry's newest assignment for it carried out. Called from
/// inside a drain (a payload's drop arming a timer here), it sends this CPU the wake-up IPI,
/// which lands after the drain in progress, so nothing is stranded. Returns what the drain did
/// (none: nested, or no inbox).
pub fn drain<P: Platform>(p: &P) -> Option<Drained> {
    let drained = match p.inbox() {
        Some(inbox) => {
            let drained = remote::drain(p, inbox, |m| {
                debug_assert!(
                    matches!(m, TimeMessage::Wake | TimeMessage::Assignment { .. }),
                    "no other message is sent to a CPU's time core: {m:?}"
                );
            });
            if drained.is_none() {
                p.send_wakeup(p.cpu());
            }
            drained
        }
        None => None,
    };
    if let Some(a) = p.assignment_slot().and_then(AssignmentSlot::take) {
        let now = p.now_ns();
        let failure = p.with_tick(|t, bc| {
            t.apply(a, now, bc);
            t.take_failure()
        });
        report(p, failure.flatten());
    }
    drained
}

/// What an expiry left to the platform: a hang reported, a device that gave up programming
/// taken out. Called after every expiry ([`wakeup`] does it itself).
#[inline]
pub fn expiry_done<P: Platform>(p: &P, e: Expiry) {
    if let Some(hang) = e.hang {
        p.hang(&e, hang);
    }
    if let Some(failure) = e.failure {
        p.take_out(failure);
    }
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

/// Device `device` interrupted this CPU, whose clock read `now_ns` (called by the device's
/// interrupt handler): the broadcast device's event ([`broadcast_event`]), or this CPU's
/// expiry ([`expiry::device_interrupt`], then [`expiry_done`]); the event of a device this CPU
/// does not serve wakes the device's owner.
#[inline]
pub fn device_interrupt<P: Platform>(p: &P, device: DeviceId, now_ns: u64) -> DeviceEvent {
    if p.is_broadcast_device(device) {
        return DeviceEvent::Broadcast(broadcast_event(p, now_ns));
    }
    let outcome = expiry::device_interrupt(p, device, now_ns);
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
    let (due, failure) = p.with_broadcast(|b| (b.event(now_ns, here), b.take_failure()));
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

/// Takes out a device that gave up programming on this CPU meanwhile.
#[inline]
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
/// devices released, its pending timers returned for another CPU to [`adopt`]
/// ([`CpuTick::go_offline`](super::CpuTick::go_offline)). None for a CPU with no tick.
pub fn go_offline<P: Platform>(p: &P) -> Vec<Migrating<P::Payload>> {
    p.with_tick(|t, bc| t.go_offline(bc)).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tick::Service;

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
}
