//! High-resolution timers: a per-CPU queue of "wake me at" deadlines in monotonic nanoseconds.
//!
//! The queue knows only two things: what time it is now (the caller says so) and when each armed
//! timer wants to run. It owns no hardware. Whoever owns the queue programs the clock event
//! device for [`TimerQueue::earliest`] after every change, and when the device fires, drains
//! [`TimerQueue::pop_expired`] with the current clocksource time. Keeping the alarm out of here
//! is what lets the ordering rules below be tested on the host with a fake clock.
//!
//! Ordering rules the rest of the kernel relies on:
//! - timers run in deadline order, and equal deadlines run in the order they were armed;
//! - no timer is ever handed out before its deadline (an interrupt that comes early pops nothing);
//! - a cancelled timer is never handed out, and an expired one is handed out exactly once.
//!
//! Timers are kept in two ordered maps: one sorted by `(deadline, id)` so the earliest is the
//! first entry, and one from id to deadline so cancel and rearm find their entry without a scan.
//! Every operation is O(log n).

use alloc::collections::BTreeMap;

/// Identifies an armed timer; never reused within one queue.
///
/// Ids grow with every arm, so among timers with equal deadlines the smaller id was armed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerId(pub u64);

/// A timer taken out of the queue because its deadline has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired<T> {
    /// The id [`TimerQueue::arm`] returned for it; no longer pending.
    pub id: TimerId,
    /// The deadline it was armed for (at or before the `now_ns` it was popped at).
    pub deadline_ns: u64,
    /// What the owner stored with it, typically a callback and its data.
    pub payload: T,
}

/// Pending timers of one CPU, ordered by deadline; `T` is what each timer carries.
#[derive(Debug)]
pub struct TimerQueue<T> {
    /// The pending timers in firing order: by deadline, then by arming order (the id).
    by_deadline: BTreeMap<(u64, TimerId), T>,
    /// Deadline of each pending timer, so a timer can be found in `by_deadline` from its id alone.
    deadline_of: BTreeMap<TimerId, u64>,
    /// The id the next armed timer gets. A u64 counting one per arm does not wrap in practice.
    next_id: u64,
}

impl<T> TimerQueue<T> {
    /// An empty queue. `const` so a per-CPU queue can be a `static`.
    pub const fn new() -> Self {
        TimerQueue { by_deadline: BTreeMap::new(), deadline_of: BTreeMap::new(), next_id: 0 }
    }

    /// Arms a timer at absolute monotonic `deadline_ns`. O(log n).
    ///
    /// Timers with equal deadlines fire in arming order. A deadline already in the past is
    /// allowed: the timer pops at the next [`pop_expired`](Self::pop_expired).
    pub fn arm(&mut self, deadline_ns: u64, payload: T) -> TimerId {
        let id = TimerId(self.next_id);
        self.next_id += 1;
        self.by_deadline.insert((deadline_ns, id), payload);
        self.deadline_of.insert(id, deadline_ns);
        id
    }

    /// Arms a timer `delay_ns` after `now_ns`. A sum past `u64::MAX` saturates to it, which is
    /// "never" in practice rather than a wrap into the past that would fire at once.
    pub fn arm_after(&mut self, now_ns: u64, delay_ns: u64, payload: T) -> TimerId {
        self.arm(now_ns.saturating_add(delay_ns), payload)
    }

    /// Cancels a timer; returns its payload if it was still pending, `None` if it already
    /// fired or was cancelled (so a racing cancel and expiry hand the payload out only once).
    /// O(log n).
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let deadline_ns = self.deadline_of.remove(&id)?;
        let payload = self.by_deadline.remove(&(deadline_ns, id));
        debug_assert!(payload.is_some(), "the two maps of a timer queue disagree about {id:?}");
        payload
    }

    /// Moves a pending timer to `deadline_ns`, keeping its id and payload; `false` if it is not
    /// pending. Among equal deadlines it keeps the place of its original arming. O(log n).
    pub fn rearm(&mut self, id: TimerId, deadline_ns: u64) -> bool {
        let Some(old_deadline_ns) = self.deadline_of.get_mut(&id) else {
            return false;
        };
        let Some(payload) = self.by_deadline.remove(&(*old_deadline_ns, id)) else {
            debug_assert!(false, "the two maps of a timer queue disagree about {id:?}");
            return false;
        };
        *old_deadline_ns = deadline_ns;
        self.by_deadline.insert((deadline_ns, id), payload);
        true
    }

    /// Deadline of a pending timer, `None` if it fired or was cancelled.
    pub fn deadline(&self, id: TimerId) -> Option<u64> {
        self.deadline_of.get(&id).copied()
    }

    /// Deadline of the earliest pending timer: what the event device must be programmed for.
    /// `None` means no alarm is needed.
    pub fn earliest(&self) -> Option<u64> {
        self.by_deadline.first_key_value().map(|(&(deadline_ns, _), _)| deadline_ns)
    }

    /// Removes and returns the earliest timer if its deadline is at or before `now_ns`.
    ///
    /// Never returns a timer whose deadline is still in the future, so an early or spurious
    /// interrupt fires nothing. Call it in a loop until `None` to run everything that is due.
    pub fn pop_expired(&mut self, now_ns: u64) -> Option<Expired<T>> {
        let entry = self.by_deadline.first_entry()?;
        let (deadline_ns, id) = *entry.key();
        if deadline_ns > now_ns {
            return None;
        }
        let payload = entry.remove();
        self.deadline_of.remove(&id);
        Some(Expired { id, deadline_ns, payload })
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.by_deadline.len()
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.by_deadline.is_empty()
    }
}

impl<T> Default for TimerQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeSet;
    use alloc::vec::Vec;

    /// Pops everything due at `now_ns`, as the interrupt handler would, returning the payloads.
    fn drain<T>(queue: &mut TimerQueue<T>, now_ns: u64) -> Vec<T> {
        let mut fired = Vec::new();
        while let Some(expired) = queue.pop_expired(now_ns) {
            assert!(expired.deadline_ns <= now_ns, "popped a timer before its deadline");
            fired.push(expired.payload);
        }
        fired
    }

    #[test]
    fn new_queue_is_empty() {
        static QUEUE: TimerQueue<u32> = TimerQueue::new();
        assert!(QUEUE.is_empty());
        assert_eq!(QUEUE.len(), 0);
        assert_eq!(QUEUE.earliest(), None);
        let mut queue = TimerQueue::<u32>::default();
        assert_eq!(queue.pop_expired(u64::MAX).map(|e| e.payload), None);
    }

    #[test]
    fn timers_pop_in_deadline_order() {
        let mut queue = TimerQueue::new();
        for deadline in [50, 10, 40, 20, 30] {
            queue.arm(deadline, deadline);
        }
        assert_eq!(drain(&mut queue, 100), [10, 20, 30, 40, 50]);
        assert!(queue.is_empty());
    }

    #[test]
    fn equal_deadlines_fire_in_arming_order() {
        let mut queue = TimerQueue::new();
        queue.arm(7, 'a');
        queue.arm(3, 'x');
        queue.arm(7, 'b');
        queue.arm(7, 'c');
        assert_eq!(drain(&mut queue, 7), ['x', 'a', 'b', 'c']);
    }

    #[test]
    fn nothing_pops_before_its_deadline() {
        let mut queue = TimerQueue::new();
        let id = queue.arm(1_000, ());
        assert!(queue.pop_expired(0).is_none());
        assert!(queue.pop_expired(999).is_none());
        assert_eq!(queue.len(), 1);
        let expired = queue.pop_expired(1_000).expect("due exactly at its deadline");
        assert_eq!((expired.id, expired.deadline_ns), (id, 1_000));
        assert!(queue.pop_expired(u64::MAX).is_none());
    }

    #[test]
    fn deadline_in_the_past_pops_at_once() {
        let mut queue = TimerQueue::new();
        queue.arm(5, "late");
        assert_eq!(drain(&mut queue, 500), ["late"]);
    }

    #[test]
    fn cancelled_timer_never_pops() {
        let mut queue = TimerQueue::new();
        queue.arm(10, 1);
        let cancelled = queue.arm(20, 2);
        queue.arm(30, 3);
        assert_eq!(queue.cancel(cancelled), Some(2));
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.deadline(cancelled), None);
        assert_eq!(queue.cancel(cancelled), None, "a second cancel finds nothing");
        assert_eq!(drain(&mut queue, u64::MAX), [1, 3]);
    }

    #[test]
    fn cancel_after_fire_returns_none() {
        let mut queue = TimerQueue::new();
        let id = queue.arm(10, "once");
        assert_eq!(drain(&mut queue, 10), ["once"]);
        assert_eq!(queue.cancel(id), None);
        assert!(!queue.rearm(id, 20), "a fired timer cannot be rearmed");
        assert!(queue.is_empty());
    }

    #[test]
    fn rearm_moves_the_deadline_and_keeps_the_id() {
        let mut queue = TimerQueue::new();
        let moved = queue.arm(10, "moved");
        queue.arm(20, "stays");
        assert!(queue.rearm(moved, 30));
        assert_eq!(queue.deadline(moved), Some(30));
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.earliest(), Some(20));
        assert!(queue.pop_expired(10).is_none(), "the old deadline no longer fires");
        assert_eq!(queue.pop_expired(20).map(|e| e.payload), Some("stays"));
        let expired = queue.pop_expired(30).expect("due at the new deadline");
        assert_eq!((expired.id, expired.deadline_ns, expired.payload), (moved, 30, "moved"));
    }

    #[test]
    fn ids_are_never_reused() {
        let mut queue = TimerQueue::new();
        let first = queue.arm(1, ());
        queue.cancel(first);
        let second = queue.arm(1, ());
        drain(&mut queue, 1);
        let third = queue.arm(1, ());
        assert!(first != second && second != third && first != third);
    }

    #[test]
    fn earliest_follows_arm_and_cancel() {
        let mut queue = TimerQueue::new();
        let late = queue.arm(300, ());
        assert_eq!(queue.earliest(), Some(300));
        let early = queue.arm(100, ());
        assert_eq!(queue.earliest(), Some(100));
        queue.arm(200, ());
        assert_eq!(queue.earliest(), Some(100));
        queue.cancel(early);
        assert_eq!(queue.earliest(), Some(200));
        queue.rearm(late, 50);
        assert_eq!(queue.earliest(), Some(50));
        drain(&mut queue, 250);
        assert_eq!(queue.earliest(), None);
    }

    #[test]
    fn arm_after_saturates() {
        let mut queue = TimerQueue::new();
        let soon = queue.arm_after(1_000, 500, ());
        assert_eq!(queue.deadline(soon), Some(1_500));
        let never = queue.arm_after(u64::MAX - 10, 100, ());
        assert_eq!(queue.deadline(never), Some(u64::MAX));
        assert!(queue.pop_expired(u64::MAX - 1).is_some_and(|e| e.id == soon));
        assert!(queue.pop_expired(u64::MAX - 1).is_none(), "a saturated timer did not wrap into the past");
    }

    use crate::time::testing::XorShift;

    /// The obviously correct queue: an unsorted list searched for its minimum `(deadline, id)`.
    #[derive(Default)]
    struct Model {
        pending: Vec<(u64, TimerId, u64)>,
    }

    impl Model {
        fn earliest_entry(&self) -> Option<usize> {
            (0..self.pending.len()).min_by_key(|&i| (self.pending[i].0, self.pending[i].1))
        }

        fn earliest(&self) -> Option<u64> {
            self.earliest_entry().map(|i| self.pending[i].0)
        }

        fn position(&self, id: TimerId) -> Option<usize> {
            self.pending.iter().position(|&(_, pending_id, _)| pending_id == id)
        }
    }

    /// An id to cancel or rearm: half the time a pending one (most issued ids have long fired, so
    /// picking only among those would rarely hit a live timer), else any ever issued, and now and
    /// then one never issued.
    fn pick_id(rng: &mut XorShift, issued: &[TimerId], model: &Model) -> TimerId {
        if issued.is_empty() || rng.below(20) == 0 {
            TimerId(u64::MAX - rng.below(5))
        } else if !model.pending.is_empty() && rng.below(2) == 0 {
            model.pending[rng.below(model.pending.len() as u64) as usize].1
        } else {
            issued[rng.below(issued.len() as u64) as usize]
        }
    }

    #[test]
    fn random_operations_agree_with_a_reference_model() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut queue = TimerQueue::new();
        let mut model = Model::default();
        let mut now_ns: u64 = 0;
        let mut issued: Vec<TimerId> = Vec::new();
        let mut cancelled = BTreeSet::new();
        let mut fired = BTreeSet::new();
        let mut next_payload: u64 = 0;
        let (mut arms, mut cancels_of_pending, mut rearms_of_pending, mut pops) = (0, 0, 0, 0);

        for step in 0..20_000 {
            match rng.below(10) {
                // Arm, mostly in the near future, sometimes in the past or at "now".
                0..=2 => {
                    let deadline_ns = match rng.below(4) {
                        0 => now_ns.saturating_sub(rng.below(100)),
                        1 => now_ns,
                        _ => now_ns + rng.below(2_000),
                    };
                    let payload = next_payload;
                    next_payload += 1;
                    let id = queue.arm(deadline_ns, payload);
                    assert!(!issued.contains(&id), "step {step}: id {id:?} reused");
                    issued.push(id);
                    model.pending.push((deadline_ns, id, payload));
                    arms += 1;
                }
                // Arm relative to now, occasionally with a delay that must saturate.
                3 => {
                    let delay_ns =
                        if rng.below(20) == 0 { u64::MAX - rng.below(10) } else { rng.below(2_000) };
                    let payload = next_payload;
                    next_payload += 1;
                    let id = queue.arm_after(now_ns, delay_ns, payload);
                    issued.push(id);
                    model.pending.push((now_ns.saturating_add(delay_ns), id, payload));
                }
                // Cancel a pending or stale id, or one never issued.
                4 | 5 => {
                    let id = pick_id(&mut rng, &issued, &model);
                    let expected = model.position(id).map(|i| model.pending.remove(i).2);
                    assert_eq!(queue.cancel(id), expected, "step {step}: cancel {id:?}");
                    if expected.is_some() {
                        cancelled.insert(id);
                        cancels_of_pending += 1;
                    }
                }
                // Rearm a pending or stale id, possibly into the past.
                6 => {
                    let id = pick_id(&mut rng, &issued, &model);
                    let deadline_ns = now_ns.saturating_sub(50) + rng.below(2_000);
                    let position = model.position(id);
                    if let Some(i) = position {
                        model.pending[i].0 = deadline_ns;
                        rearms_of_pending += 1;
                    }
                    assert_eq!(queue.rearm(id, deadline_ns), position.is_some(), "step {step}: rearm {id:?}");
                }
                // Advance the fake clock and run everything that is due, as the interrupt would.
                _ => {
                    now_ns += rng.below(300);
                    while let Some(expired) = queue.pop_expired(now_ns) {
                        let i = model.earliest_entry().expect("queue popped a timer the model lacks");
                        let (deadline_ns, id, payload) = model.pending.remove(i);
                        assert_eq!(
                            (expired.deadline_ns, expired.id, expired.payload),
                            (deadline_ns, id, payload),
                            "step {step}: popped the wrong timer"
                        );
                        assert!(expired.deadline_ns <= now_ns, "step {step}: {id:?} popped early");
                        assert!(fired.insert(id), "step {step}: {id:?} popped twice");
                        assert!(!cancelled.contains(&id), "step {step}: cancelled {id:?} popped");
                        pops += 1;
                    }
                    assert!(
                        model.earliest().is_none_or(|deadline_ns| deadline_ns > now_ns),
                        "step {step}: a due timer was left in the queue"
                    );
                }
            }

            assert_eq!(queue.len(), model.pending.len(), "step {step}: len");
            assert_eq!(queue.is_empty(), model.pending.is_empty(), "step {step}: is_empty");
            assert_eq!(queue.earliest(), model.earliest(), "step {step}: earliest");
            if let Some(&id) = issued.get(rng.below(issued.len() as u64 + 1) as usize) {
                let expected = model.position(id).map(|i| model.pending[i].0);
                assert_eq!(queue.deadline(id), expected, "step {step}: deadline of {id:?}");
            }
        }

        // The run must have exercised each path, or agreement proves little.
        assert!(arms > 1_000 && cancels_of_pending > 500 && rearms_of_pending > 500 && pops > 1_000);
    }
}
