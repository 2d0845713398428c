//! The handshake of a timer armed on another CPU: the caller posts the arm to the timer's CPU
//! and waits for its id; if it gives up waiting, the arm must not go on to run a timer nobody
//! can cancel. [`RemoteArm`] is where the two meet, one atomic state that exactly one side
//! settles:
//!
//! ```text
//!            owner: deliver(id)
//!   Waiting ----------------------> Armed(id)       the caller gets the id (now or on giving up)
//!      |
//!      |     caller: abandon()
//!      +--------------------------> Abandoned       the owner does not arm it, or, if it armed
//!                                                   it meanwhile, cancels it at once
//! ```
//!
//! So a caller that gave up either learns the id after all (the arm landed as it gave up) or
//! can promise that the timer never runs: the abandon overtakes the arm, whichever reaches the
//! state first. The owner runs on the timer's CPU, so a timer it armed and then cancels at
//! once cannot have run in between if it arms with interrupts off (as a function-call
//! interrupt does).

use crate::hrtimer::TimerId;
use crate::sync::{AtomicU8, AtomicU32, AtomicU64, Ordering};

const WAITING: u8 = 0;
const ARMED: u8 = 1;
const ABANDONED: u8 = 2;

/// One arm posted to another CPU, shared (e.g. in an `Arc`) by the caller and the timer's CPU.
///
/// ```
/// use kernel_time::hrtimer::TimerQueue;
/// use kernel_time::remote::RemoteArm;
///
/// // The owner's side, on the timer's CPU.
/// fn arm_for(ticket: &RemoteArm, queue: &mut TimerQueue<&'static str>) {
///     if !ticket.wanted() {
///         return; // the caller gave up: not armed
///     }
///     let id = queue.arm(100, "posted");
///     if !ticket.deliver(id) {
///         queue.cancel(id).unwrap(); // the caller gave up meanwhile: never runs
///     }
/// }
///
/// let mut cpu1 = TimerQueue::new(1);
/// // The caller waited in vain and gave up before the arm landed: it is never armed.
/// let late = RemoteArm::new();
/// assert_eq!(late.abandon(), None);
/// arm_for(&late, &mut cpu1);
/// assert!(cpu1.is_empty());
/// // The arm landed first: the caller has its id, even if it gives up just after.
/// let landed = RemoteArm::new();
/// arm_for(&landed, &mut cpu1);
/// let id = landed.armed().expect("delivered");
/// assert_eq!(landed.abandon(), Some(id));
/// assert_eq!(cpu1.deadline(id), Some(100));
/// ```
#[derive(Debug, Default)]
pub struct RemoteArm {
    state: AtomicU8,
    /// The id's CPU, and its slot and generation: written by the owner before it settles the
    /// state as armed (release), read only after seeing it so (acquire). No lock: the owner
    /// runs in interrupt context.
    cpu: AtomicU32,
    slot_generation: AtomicU64,
}

impl RemoteArm {
    /// A posted arm, waiting for its CPU.
    #[cfg(not(loom))]
    pub const fn new() -> RemoteArm {
        RemoteArm {
            state: AtomicU8::new(WAITING),
            cpu: AtomicU32::new(0),
            slot_generation: AtomicU64::new(0),
        }
    }

    /// A posted arm, waiting for its CPU (loom's atomics have no `const` constructor).
    #[cfg(loom)]
    pub fn new() -> RemoteArm {
        RemoteArm {
            state: AtomicU8::new(WAITING),
            cpu: AtomicU32::new(0),
            slot_generation: AtomicU64::new(0),
        }
    }

    /// On the timer's CPU, before arming: whether the caller still waits for it (false: it
    /// gave up, do not arm).
    pub fn wanted(&self) -> bool {
        self.state.load(Ordering::Acquire) == WAITING
    }

    /// On the timer's CPU, after arming it as `id`: true if the caller gets the id; false if
    /// the caller gave up meanwhile, and was told the timer never runs: cancel it at once.
    pub fn deliver(&self, id: TimerId) -> bool {
        let (cpu, slot, generation) = id.parts();
        self.cpu.store(cpu, Ordering::Relaxed);
        self.slot_generation.store(u64::from(slot) << 32 | u64::from(generation), Ordering::Relaxed);
        self.state.compare_exchange(WAITING, ARMED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// The id, once the timer's CPU delivered it.
    pub fn armed(&self) -> Option<TimerId> {
        (self.state.load(Ordering::Acquire) == ARMED).then(|| self.delivered_id())
    }

    /// The id the owner stored; only after the state was seen armed (acquire).
    fn delivered_id(&self) -> TimerId {
        let slot_generation = self.slot_generation.load(Ordering::Relaxed);
        TimerId::from_parts(
            self.cpu.load(Ordering::Relaxed),
            (slot_generation >> 32) as u32,
            slot_generation as u32,
        )
    }

    /// The caller gives up waiting. `None`: abandoned, the timer never runs (it is not armed,
    /// or cancelled at once by its CPU). `Some(id)`: the arm landed first, the timer is armed
    /// under `id` and the caller owns it after all.
    pub fn abandon(&self) -> Option<TimerId> {
        match self.state.compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => None,
            Err(ARMED) => Some(self.delivered_id()),
            Err(_) => None,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::hrtimer::{Cancel, TimerQueue};
    use crate::testing::XorShift;
    use alloc::sync::Arc;
    use std::sync::Mutex as StdMutex;

    /// The owner's side, as a kernel runs it on the timer's CPU.
    fn arm_for(ticket: &RemoteArm, queue: &mut TimerQueue<u32>, deadline_ns: u64) {
        if !ticket.wanted() {
            return;
        }
        let id = queue.arm(deadline_ns, 7);
        if !ticket.deliver(id) {
            assert_eq!(queue.cancel(id), Ok(Cancel::Cancelled(7)), "cancelled before it could run");
        }
    }

    #[test]
    fn an_arm_that_lands_first_is_delivered_and_kept() {
        let mut queue = TimerQueue::new(1);
        let ticket = RemoteArm::new();
        arm_for(&ticket, &mut queue, 50);
        let id = ticket.armed().expect("delivered");
        assert_eq!(id.cpu(), 1);
        assert!(!ticket.wanted(), "settled");
        assert_eq!(ticket.abandon(), Some(id), "giving up after it landed still yields the id");
        assert_eq!(queue.deadline(id), Some(50));
    }

    #[test]
    fn an_abandon_that_overtakes_its_arm_stops_it() {
        let mut queue = TimerQueue::new(1);
        let ticket = RemoteArm::new();
        assert_eq!(ticket.abandon(), None);
        assert_eq!(ticket.abandon(), None, "abandoned stays abandoned");
        arm_for(&ticket, &mut queue, 50);
        assert!(queue.is_empty(), "an abandoned arm is not armed");
        assert_eq!(ticket.armed(), None);
    }

    #[test]
    fn an_abandon_between_the_check_and_the_delivery_cancels_at_once() {
        let mut queue = TimerQueue::new(1);
        let ticket = RemoteArm::new();
        assert!(ticket.wanted());
        let id = queue.arm(50, 7);
        assert_eq!(ticket.abandon(), None, "the caller gave up before the delivery");
        assert!(!ticket.deliver(id), "the owner learns it must cancel");
        assert_eq!(queue.cancel(id), Ok(Cancel::Cancelled(7)));
        assert!(queue.pop_expired(u64::MAX).is_none(), "the abandoned timer never runs");
        assert_eq!(ticket.armed(), None);
    }

    /// The owner and the caller on two threads, the caller giving up after a random spin: in
    /// every run, either the caller holds the id of a pending timer, or no timer is pending.
    #[test]
    fn random_schedules_of_owner_and_caller_leave_no_orphan_and_lose_no_id() {
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let (mut delivered, mut abandoned) = (0, 0);
        for _ in 0..2_000 {
            let ticket = Arc::new(RemoteArm::new());
            let queue = Arc::new(StdMutex::new(TimerQueue::new(1)));
            let (owner_spin, caller_spin) = (rng.below(200), rng.below(200));
            let owner = {
                let (ticket, queue) = (ticket.clone(), queue.clone());
                std::thread::spawn(move || {
                    for _ in 0..owner_spin {
                        core::hint::spin_loop();
                    }
                    arm_for(&ticket, &mut queue.lock().unwrap(), 50);
                })
            };
            for _ in 0..caller_spin {
                core::hint::spin_loop();
            }
            let kept = ticket.abandon();
            owner.join().unwrap();
            let mut queue = queue.lock().unwrap();
            match kept {
                Some(id) => {
                    assert_eq!(queue.deadline(id), Some(50), "the caller's id names a pending timer");
                    assert_eq!(queue.len(), 1);
                    delivered += 1;
                }
                None => {
                    assert!(queue.pop_expired(u64::MAX).is_none(), "an abandoned arm left a timer");
                    abandoned += 1;
                }
            }
        }
        assert!(
            delivered > 0 && abandoned > 0,
            "both orders seen: {delivered} delivered, {abandoned} abandoned"
        );
    }
}
