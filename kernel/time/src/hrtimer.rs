//! High-resolution timers: a per-CPU queue of "wake me at" deadlines in monotonic nanoseconds.
//!
//! The queue knows only two things: what time it is now (the caller says so) and when each armed
//! timer wants to run. It owns no hardware. Whoever owns the queue programs the clock event
//! device for [`TimerQueue::earliest`] after every change, and when the device fires, drains
//! [`TimerQueue::pop_expired`] with the current clocksource time. Keeping the alarm out of here
//! is what lets the ordering rules below be tested on the host with a fake clock.
//!
//! A timer may carry *slack* ([`TimerQueue::arm_range`]): it may run anywhere in `[deadline,
//! deadline + slack]` (the end saturating at `u64::MAX`), so that timers whose ranges overlap
//! share one interrupt (Linux's `hrtimer_set_expires_range`). The queue is ordered by each
//! timer's *latest* allowed time (`deadline + slack`); [`TimerQueue::earliest`] is the first of
//! those, what the device is programmed for; and [`TimerQueue::pop_expired`] hands out the
//! timer at the head while its *deadline* has come, stopping at the first whose deadline has
//! not (Linux's `__hrtimer_run_queues` against `_softexpires`), without a scan of the queue.
//! A timer armed with [`TimerQueue::arm`] has slack 0: its deadline is its latest time, and
//! everything below reads as it did before slack existed.
//!
//! Ordering rules the rest of the kernel relies on:
//! - timers run in the order of their latest allowed time, and equal ones run in the order they
//!   were armed (with slack 0 everywhere: deadline order);
//! - no timer is ever handed out before its deadline (an interrupt that comes early pops nothing);
//! - after the pops at `now`, no timer whose latest allowed time is at or before `now` is left
//!   pending: a device programmed for [`TimerQueue::earliest`] that fires at or after it runs
//!   each timer in its range, late only by the path's own latency;
//! - a cancelled timer is never handed out, and an expired one is handed out exactly once (a
//!   periodic one once per period, re-armed by [`TimerQueue::complete`] with its slack).
//!
//! Storage is a slab of slots (reused through a free list) and a binary min-heap of slot
//! numbers ordered by `(latest, arming sequence)`; each slot knows its place in the heap, so
//! cancel and rearm find their entry without a search. Arm, cancel, rearm and pop are
//! O(log n) and allocate nothing while the slab has a free slot: the slab grows by doubling
//! when full (amortised, and never on the pop path), and [`TimerQueue::with_capacity`]
//! pre-sizes it.
//!
//! Popping the earliest timer is O(1): its heap entry is left in place as a hole at the root,
//! and the heap is repaired (the last entry moved into the hole and sifted down) by the next
//! operation that touches the heap, the popped timer's [`TimerQueue::complete`] at the
//! latest, which puts a periodic timer re-armed there straight into the hole. So the work
//! between an interrupt and the first callback is the pop alone; the repair runs after it.
//! While a hole is open, the earliest pending timer is the earlier of the root's two children.
//!
//! A popped timer stays *running* (its slot reserved) until the owner calls
//! [`TimerQueue::complete`] after its callback, so a cancel during the callback can say so
//! ([`Cancel::Running`]) and a periodic timer is re-armed under the same id.
//!
//! A popped timer may instead be *deferred* ([`TimerQueue::defer`]): its payload goes back into
//! its slot, which joins the queue's deferred list (first in, first out: the order they were
//! popped in, so deadline order), until its CPU's deferred run takes it
//! ([`TimerQueue::take_deferred`]), which makes it running as a pop does. The list is threaded
//! through the slots (each waiting timer keeps the slot it had), so it needs no storage of its
//! own, never allocates and is never full. A cancel while it waits hands its payload back
//! ([`Cancel::Cancelled`]: it was never run and never runs now), as for a pending timer.
//!
//! Each queue belongs to one CPU and its ids name that CPU: an id given to another CPU's queue
//! is refused ([`WrongCpu`]), never taken for the timer that happens to sit in the same slot
//! there.

use alloc::vec::Vec;
use core::fmt;

/// Identifies an armed timer: the CPU whose queue holds it, its slot and the slot's
/// generation, so an id whose timer has gone (fired, cancelled) never reaches a later timer in
/// the same slot, and an id of one CPU never reaches a timer of another. A generation is a
/// u32 bumped on every reuse of its slot: an id could only be confused with a new timer after
/// 2^32 reuses of one slot while the old id is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerId {
    cpu: u32,
    slot: u32,
    generation: u32,
}

impl TimerId {
    /// The CPU whose queue holds (or held) this timer: where it runs and where it is cancelled.
    #[inline]
    pub fn cpu(self) -> usize {
        self.cpu as usize
    }

    /// Its CPU, slot and generation, to be carried through atomics.
    pub(crate) fn parts(self) -> (u32, u32, u32) {
        (self.cpu, self.slot, self.generation)
    }

    /// The id [`parts`](Self::parts) took apart.
    pub(crate) fn from_parts(cpu: u32, slot: u32, generation: u32) -> TimerId {
        TimerId { cpu, slot, generation }
    }
}

/// A timer id given to the queue of another CPU than the one that issued it: nothing was
/// touched there (the id's timer, if any, is on `id_cpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrongCpu {
    /// The CPU the id belongs to.
    pub id_cpu: usize,
    /// The CPU of the queue it was given to.
    pub queue_cpu: usize,
}

impl fmt::Display for WrongCpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a timer of CPU {} was given to CPU {}'s queue", self.id_cpu, self.queue_cpu)
    }
}

impl core::error::Error for WrongCpu {}

/// A timer taken out of the queue because its deadline has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired<T> {
    /// The id [`TimerQueue::arm`] returned for it; running until [`TimerQueue::complete`].
    pub id: TimerId,
    /// The deadline it was armed for (at or before the `now_ns` it was popped at): its
    /// lateness is measured from here. (The end of its range, while it runs:
    /// [`TimerQueue::latest`]; kept out of here, so a pop copies no more than it did before
    /// slack.)
    pub deadline_ns: u64,
    /// What the owner stored with it, typically a callback and its data.
    pub payload: T,
}

/// What a cancel found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel<T> {
    /// It was pending and never runs now; here is its payload.
    Cancelled(T),
    /// Its callback is running (popped, not yet completed): it will not be re-armed, but the
    /// callback in progress is not stopped.
    Running,
    /// Nothing to cancel: it already ran, was cancelled, or never existed.
    Inactive,
}

impl<T> Cancel<T> {
    /// The payload of a timer that was pending.
    pub fn cancelled(self) -> Option<T> {
        match self {
            Cancel::Cancelled(payload) => Some(payload),
            Cancel::Running | Cancel::Inactive => None,
        }
    }
}

#[derive(Debug)]
enum SlotState<T> {
    /// On the free list; `next` is the next free slot (`u32::MAX`: none).
    Free { next: u32 },
    /// In the heap at `heap_index`; or, with `heap_index` [`DEFERRED`], popped and waiting in
    /// the deferred list for its CPU's deferred run (its neighbours there in the slot's
    /// `sequence`, [`Slot::links`], which only a timer in the heap needs). One variant for
    /// both, so that the state's shape (and every match and drop of it on the timer path) is
    /// what it was before deferred timers.
    Pending { heap_index: u32, payload: T },
    /// Popped, its callback running; `cancelled` stops a periodic re-arm.
    Running { cancelled: bool },
}

/// The `heap_index` of a pending slot that waits in the deferred list, not in the heap (the
/// heap holds fewer than 2^32 - 1 entries).
const DEFERRED: u32 = u32::MAX;

#[derive(Debug)]
struct Slot<T> {
    /// Never run before this.
    deadline_ns: u64,
    /// Run by this (plus the path's latency): `deadline_ns` + slack, saturating; the heap's key.
    latest_ns: u64,
    /// Arming order, for equal latest times, while pending; while deferred, its neighbours in
    /// the deferred list ([`Slot::links`]).
    sequence: u64,
    generation: u32,
    state: SlotState<T>,
}

const NO_SLOT: u32 = u32::MAX;

impl<T> Slot<T> {
    /// Whether it is pending in the heap (not free, running or deferred).
    fn is_in_heap(&self) -> bool {
        matches!(self.state, SlotState::Pending { heap_index, .. } if heap_index != DEFERRED)
    }

    /// A deferred slot's previous and next slot in the deferred list (`NO_SLOT` at the ends),
    /// kept in `sequence`.
    fn links(&self) -> (u32, u32) {
        ((self.sequence >> 32) as u32, self.sequence as u32)
    }

    fn set_links(&mut self, prev: u32, next: u32) {
        self.sequence = u64::from(prev) << 32 | u64::from(next);
    }
}

/// Pending timers of one CPU, ordered by latest allowed time (the deadline, for a timer
/// without slack); `T` is what each timer carries.
///
/// ```
/// use kernel_time::hrtimer::{Cancel, TimerQueue, WrongCpu};
///
/// let mut queue = TimerQueue::with_capacity(0, 8);
/// let late = queue.arm(300, "late");
/// let b = queue.arm(100, "b");
/// queue.arm(100, "c");
/// assert_eq!(queue.earliest(), Some(100));
/// assert_eq!(queue.cancel(late), Ok(Cancel::Cancelled("late")));
/// // An id names its CPU: another CPU's queue refuses it, whatever it holds in that slot.
/// let mut other = TimerQueue::with_capacity(1, 8);
/// other.arm(300, "other's");
/// assert_eq!(other.cancel(b), Err(WrongCpu { id_cpu: 0, queue_cpu: 1 }));
///
/// // Never early: at 99 ns nothing is due.
/// assert!(queue.pop_expired(99).is_none());
/// // Equal deadlines run in the order they were armed.
/// let first = queue.pop_expired(150).unwrap();
/// assert_eq!((first.id, first.payload), (b, "b"));
/// // Running until completed: a cancel from its callback says so.
/// assert_eq!(queue.cancel(b), Ok(Cancel::Running));
/// queue.complete(first.id, None);
/// // A periodic timer: completed with its next deadline, on its grid.
/// let second = queue.pop_expired(150).unwrap();
/// assert_eq!(second.payload, "c");
/// assert_eq!(queue.complete(second.id, Some((second.deadline_ns + 1_000, "c"))), Ok(true));
/// assert_eq!(queue.earliest(), Some(1_100));
/// // A stale id never reaches a reused slot.
/// assert_eq!(queue.cancel(late), Ok(Cancel::Inactive));
///
/// // Slack: each may run in [deadline, deadline + slack]. The device is programmed for the
/// // earliest end of a range; there, every timer whose range has begun runs in one pass.
/// let mut queue = TimerQueue::new(0);
/// queue.arm_range(100, 1_000, "a"); // [100, 1_100]
/// queue.arm_range(300, 500, "b"); // [300, 800]
/// queue.arm_range(900, 1_000, "c"); // [900, 1_900]: not begun at 800
/// assert_eq!(queue.earliest(), Some(800));
/// assert!(queue.pop_expired(250).is_none(), "the head (b) has not begun: nothing runs");
/// let b = queue.pop_expired(800).unwrap();
/// assert_eq!((b.payload, b.deadline_ns, queue.latest(b.id)), ("b", 300, Some(800)));
/// assert_eq!(queue.pop_expired(800).map(|e| e.payload), Some("a"));
/// assert!(queue.pop_expired(800).is_none(), "never early: c's deadline is 900");
/// assert_eq!(queue.earliest(), Some(1_900));
/// ```
#[derive(Debug)]
pub struct TimerQueue<T> {
    /// The CPU this queue belongs to, named by every id it issues.
    cpu: u32,
    slots: Vec<Slot<T>>,
    /// Slot numbers of the pending timers, a binary min-heap by `(latest, sequence)`; with
    /// `hole`, its root is the slot of the timer just popped (running, not pending), and the
    /// pending timers are the rest, two heaps under the root.
    heap: Vec<u32>,
    /// The root of `heap` was popped and not yet repaired ([`Self::settle`]).
    hole: bool,
    free: u32,
    /// Slots on the free list.
    free_count: usize,
    /// The sequence number the next armed timer gets (one per arm: does not wrap in practice).
    next_sequence: u64,
    /// The deferred list: its first and last slot (`NO_SLOT` when empty) and its length.
    deferred_head: u32,
    deferred_tail: u32,
    deferred_len: usize,
    /// The most timers the deferred list held at once.
    deferred_max: usize,
    /// Timers [`pop_expired_or_defer`](Self::pop_expired_or_defer) deferred since
    /// [`take_deferred_popped`](Self::take_deferred_popped).
    deferred_popped: u32,
}

impl<T> TimerQueue<T> {
    /// CPU `cpu`'s empty queue. `const` so a per-CPU queue can be a `static`.
    ///
    /// # Panics
    /// If `cpu` does not fit in 32 bits.
    pub const fn new(cpu: usize) -> Self {
        assert!(cpu <= u32::MAX as usize, "CPU numbers fit in 32 bits");
        TimerQueue {
            cpu: cpu as u32,
            slots: Vec::new(),
            heap: Vec::new(),
            hole: false,
            free: NO_SLOT,
            free_count: 0,
            next_sequence: 0,
            deferred_head: NO_SLOT,
            deferred_tail: NO_SLOT,
            deferred_len: 0,
            deferred_max: 0,
            deferred_popped: 0,
        }
    }

    /// CPU `cpu`'s empty queue with room for `capacity` timers before it allocates again.
    pub fn with_capacity(cpu: usize, capacity: usize) -> Self {
        let mut queue = TimerQueue::new(cpu);
        queue.reserve(capacity);
        queue
    }

    /// The CPU this queue belongs to.
    pub fn cpu(&self) -> usize {
        self.cpu as usize
    }

    /// This queue's id for slot `slot`.
    fn id(&self, slot: u32, generation: u32) -> TimerId {
        TimerId { cpu: self.cpu, slot, generation }
    }

    /// Makes room for `additional` more timers than are armed now, so that arming them does
    /// not allocate (e.g. before interrupt-context code arms timers).
    pub fn reserve(&mut self, additional: usize) {
        let wanted = self.len() + self.deferred_len + additional;
        self.heap.reserve(wanted.saturating_sub(self.heap.len()));
        while self.slots.len() < wanted {
            self.push_free_slot();
        }
    }

    /// Whether the next arm allocates (no free slot left); O(1).
    pub fn is_full(&self) -> bool {
        self.free == NO_SLOT
    }

    /// Timers it holds (pending and running) before an arm allocates.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Free slots left before an arm allocates; O(1).
    #[inline]
    pub fn spare_capacity(&self) -> usize {
        self.free_count
    }

    fn push_free_slot(&mut self) {
        let index = u32::try_from(self.slots.len()).expect("fewer than 2^32 timers per queue");
        assert!(index != NO_SLOT, "fewer than 2^32 - 1 timers per queue");
        self.slots.push(Slot {
            deadline_ns: 0,
            latest_ns: 0,
            sequence: 0,
            generation: 0,
            state: SlotState::Free { next: self.free },
        });
        self.free = index;
        self.free_count += 1;
    }

    fn take_free_slot(&mut self) -> u32 {
        if self.free == NO_SLOT {
            // Double the slab (at least 16 slots): amortised O(1) per arm.
            let grow = self.slots.len().max(16);
            self.slots.reserve(grow);
            self.heap.reserve(grow);
            for _ in 0..grow {
                self.push_free_slot();
            }
        }
        let index = self.free;
        let SlotState::Free { next } = self.slots[index as usize].state else {
            unreachable!("the free list holds only free slots")
        };
        self.free = next;
        self.free_count -= 1;
        index
    }

    fn release_slot(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.state = SlotState::Free { next: self.free };
        self.free = index;
        self.free_count += 1;
    }

    /// The slot an id of this queue names, while the id is current; never a slot for another
    /// CPU's id.
    fn slot_of(&self, id: TimerId) -> Option<&Slot<T>> {
        if id.cpu != self.cpu {
            return None;
        }
        self.slots.get(id.slot as usize).filter(|s| s.generation == id.generation)
    }

    /// Arms a timer at absolute monotonic `deadline_ns`, without slack. O(log n).
    ///
    /// Timers with equal deadlines fire in arming order. A deadline already in the past is
    /// allowed: the timer pops at the next [`pop_expired`](Self::pop_expired).
    #[inline]
    pub fn arm(&mut self, deadline_ns: u64, payload: T) -> TimerId {
        self.arm_range(deadline_ns, 0, payload)
    }

    /// Arms a timer that may run anywhere in `[deadline_ns, deadline_ns + slack_ns]` (the end
    /// saturating at `u64::MAX`): never before `deadline_ns`, and popped by the first
    /// [`pop_expired`](Self::pop_expired) at or after the end of its range. It is ordered by
    /// that end, so [`earliest`](Self::earliest) may be later than its deadline. O(log n).
    pub fn arm_range(&mut self, deadline_ns: u64, slack_ns: u64, payload: T) -> TimerId {
        self.settle();
        let index = self.take_free_slot();
        let heap_index = self.heap.len() as u32;
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let slot = &mut self.slots[index as usize];
        slot.deadline_ns = deadline_ns;
        slot.latest_ns = deadline_ns.saturating_add(slack_ns);
        slot.sequence = sequence;
        slot.state = SlotState::Pending { heap_index, payload };
        let generation = slot.generation;
        let id = self.id(index, generation);
        self.heap.push(index);
        self.sift_up(heap_index as usize);
        id
    }

    /// Arms a timer `delay_ns` after `now_ns`. A sum past `u64::MAX` saturates to it, which is
    /// "never" in practice rather than a wrap into the past that would fire at once.
    pub fn arm_after(&mut self, now_ns: u64, delay_ns: u64, payload: T) -> TimerId {
        self.arm(now_ns.saturating_add(delay_ns), payload)
    }

    /// Cancels a timer. A pending one hands back its payload; a running one (popped, its
    /// callback not yet completed) is marked so it is not re-armed; anything else is inactive,
    /// so a racing cancel and expiry hand the payload out only once. O(log n).
    ///
    /// An id issued by another CPU's queue is refused and touches nothing here.
    pub fn cancel(&mut self, id: TimerId) -> Result<Cancel<T>, WrongCpu> {
        if id.cpu != self.cpu {
            return Err(WrongCpu { id_cpu: id.cpu(), queue_cpu: self.cpu() });
        }
        let Some(slot) = self.slot_of(id) else { return Ok(Cancel::Inactive) };
        Ok(match slot.state {
            SlotState::Free { .. } => Cancel::Inactive,
            SlotState::Running { .. } => {
                self.slots[id.slot as usize].state = SlotState::Running { cancelled: true };
                Cancel::Running
            }
            SlotState::Pending { heap_index: DEFERRED, .. } => self.cancel_deferred(id.slot),
            SlotState::Pending { .. } => {
                self.settle();
                let SlotState::Pending { heap_index, .. } = self.slots[id.slot as usize].state else {
                    unreachable!("checked pending above; settling moves no slot out of the heap")
                };
                self.remove_from_heap(heap_index as usize);
                let state = core::mem::replace(
                    &mut self.slots[id.slot as usize].state,
                    SlotState::Running { cancelled: true },
                );
                self.release_slot(id.slot);
                match state {
                    SlotState::Pending { payload, .. } => Cancel::Cancelled(payload),
                    _ => unreachable!("checked pending above"),
                }
            }
        })
    }

    /// Moves a pending timer to `deadline_ns`, keeping its id, payload and slack; `false` if it
    /// is not pending here (another CPU's id never is). Among equal latest times it keeps the
    /// place of its original arming. O(log n).
    pub fn rearm(&mut self, id: TimerId, deadline_ns: u64) -> bool {
        self.settle();
        let Some(slot) = self.slot_of(id) else { return false };
        let SlotState::Pending { heap_index, .. } = slot.state else { return false };
        if heap_index == DEFERRED {
            return false;
        }
        let old = slot.latest_ns;
        let latest_ns = deadline_ns.saturating_add(slot.latest_ns - slot.deadline_ns);
        let slot = &mut self.slots[id.slot as usize];
        slot.deadline_ns = deadline_ns;
        slot.latest_ns = latest_ns;
        if latest_ns < old {
            self.sift_up(heap_index as usize);
        } else {
            self.sift_down(heap_index as usize);
        }
        true
    }

    /// Ends a popped timer's run: with `again` (a new deadline and its payload) and no cancel
    /// during the callback it is pending again under the same id, with the slack it had, ordered
    /// as newly armed; otherwise its slot is freed. Returns whether it is pending again, or, when a re-arm was
    /// asked for and refused (cancelled during the callback, or an id not running), its payload
    /// handed back: the caller drops it where dropping is safe (outside any lock, since
    /// dropping a payload may run arbitrary code, such as cancelling another timer).
    pub fn complete(&mut self, id: TimerId, again: Option<(u64, T)>) -> Result<bool, T> {
        let Some(slot) = self.slot_of(id) else {
            self.settle();
            return again.map_or(Ok(false), |(_, p)| Err(p));
        };
        let SlotState::Running { cancelled } = slot.state else {
            self.settle();
            return again.map_or(Ok(false), |(_, p)| Err(p));
        };
        match again {
            Some((deadline_ns, payload)) if !cancelled => {
                let sequence = self.next_sequence;
                self.next_sequence += 1;
                let slot = &mut self.slots[id.slot as usize];
                slot.latest_ns = deadline_ns.saturating_add(slot.latest_ns - slot.deadline_ns);
                slot.deadline_ns = deadline_ns;
                slot.sequence = sequence;
                if self.hole {
                    // Into the hole the pop left (whichever timer left it: the heap under the
                    // root is whole), then down to its place.
                    slot.state = SlotState::Pending { heap_index: 0, payload };
                    self.hole = false;
                    self.heap[0] = id.slot;
                    self.sift_down(0);
                } else {
                    let heap_index = self.heap.len() as u32;
                    slot.state = SlotState::Pending { heap_index, payload };
                    self.heap.push(id.slot);
                    self.sift_up(heap_index as usize);
                }
                Ok(true)
            }
            again => {
                self.settle();
                self.release_slot(id.slot);
                again.map_or(Ok(false), |(_, p)| Err(p))
            }
        }
    }

    /// Deadline of a pending timer, `None` if it is not pending.
    pub fn deadline(&self, id: TimerId) -> Option<u64> {
        self.slot_of(id).filter(|s| s.is_in_heap()).map(|s| s.deadline_ns)
    }

    /// The end of a timer's range (its deadline plus its slack, saturating), while it is
    /// pending or running (popped, not yet completed: the range it was popped with); `None`
    /// otherwise.
    pub fn latest(&self, id: TimerId) -> Option<u64> {
        self.slot_of(id).filter(|s| !matches!(s.state, SlotState::Free { .. })).map(|s| s.latest_ns)
    }

    /// Whether the timer is popped and its callback not yet completed.
    pub fn is_running(&self, id: TimerId) -> bool {
        self.slot_of(id).is_some_and(|s| matches!(s.state, SlotState::Running { .. }))
    }

    /// The earliest *latest allowed time* among the pending timers (their deadline when none
    /// has slack): what the event device must be programmed for. `None` means no alarm is
    /// needed.
    #[inline]
    pub fn earliest(&self) -> Option<u64> {
        if !self.hole {
            return self.heap.first().map(|&i| self.slots[i as usize].latest_ns);
        }
        // The earlier of the root's children: each heads one of the heaps under the hole.
        let child = |i: usize| self.heap.get(i).map(|&s| &self.slots[s as usize]);
        match (child(1), child(2)) {
            (Some(l), Some(r)) => Some(l.latest_ns.min(r.latest_ns)),
            (l, r) => l.or(r).map(|s| s.latest_ns),
        }
    }

    /// Removes and returns the timer at the head of the queue (the earliest latest allowed
    /// time) if its deadline is at or before `now_ns`; it is running until
    /// [`complete`](Self::complete) is called for it.
    ///
    /// Never returns a timer whose deadline is still in the future, so an early or spurious
    /// interrupt fires nothing. Call it in a loop until `None` to run everything that is due:
    /// that runs every timer whose range has ended by `now_ns`, and with them those after them
    /// in the queue whose ranges have begun, up to the first whose deadline has not come (a
    /// timer further on whose range has begun waits for a later pass, at most until its
    /// range ends).
    #[inline]
    pub fn pop_expired(&mut self, now_ns: u64) -> Option<Expired<T>> {
        let mut no_limit = usize::MAX;
        self.pop_expired_or_defer(now_ns, &mut no_limit, |_| false)
    }

    /// Moves pending timers: `new_deadline` gives a timer its new deadline (`None`: it stays
    /// where it is), and the queue is put in order again, O(n). Each keeps its id, its slack
    /// and its place among equal latest times (arming order). Returns how many moved. For timers whose
    /// deadline is on another clock than the queue's, when that clock's offset changes
    /// (`CpuTick::clock_was_set`); a running timer is not pending and does not move.
    pub fn retime(&mut self, mut new_deadline: impl FnMut(&T) -> Option<u64>) -> usize {
        self.settle();
        let mut moved = 0;
        for &index in &self.heap {
            let slot = &mut self.slots[index as usize];
            let SlotState::Pending { payload, .. } = &slot.state else {
                unreachable!("the heap holds only pending slots")
            };
            if let Some(deadline_ns) = new_deadline(payload)
                && deadline_ns != slot.deadline_ns
            {
                // It keeps its slack.
                slot.latest_ns = deadline_ns.saturating_add(slot.latest_ns - slot.deadline_ns);
                slot.deadline_ns = deadline_ns;
                moved += 1;
            }
        }
        if moved > 0 {
            for i in (0..self.heap.len() / 2).rev() {
                self.sift_down(i);
            }
            for i in 0..self.heap.len() {
                self.place(i);
            }
        }
        moved
    }

    /// Hands a timer just popped ([`pop_expired`](Self::pop_expired), not completed) to the
    /// deferred list, at its end: it waits there, keeping its id and its slot, until
    /// [`take_deferred`](Self::take_deferred) hands it out (running then, as a pop makes it).
    /// A cancel meanwhile hands its payload back ([`Cancel::Cancelled`]); it is no longer
    /// counted by [`len`](Self::len). O(1), never allocates (the list lives in the slots).
    ///
    /// A timer that is not running here, or whose cancel came since its pop, is refused: its
    /// payload comes back for the caller to drop (and it must still be completed).
    pub fn defer(&mut self, expired: Expired<T>) -> Result<(), T> {
        let ok = self
            .slot_of(expired.id)
            .is_some_and(|s| matches!(s.state, SlotState::Running { cancelled: false }));
        if !ok {
            return Err(expired.payload);
        }
        self.slots[expired.id.slot as usize].state =
            SlotState::Pending { heap_index: DEFERRED, payload: expired.payload };
        self.link_deferred(expired.id.slot);
        Ok(())
    }

    /// [`pop_expired`](Self::pop_expired) that hands each due timer whose payload `defer`
    /// picks straight to the deferred list (as [`defer`](Self::defer) would), counting it
    /// ([`take_deferred_popped`](Self::take_deferred_popped)), and looks at the next; returns
    /// the first due timer it does not pick. At most `budget` timers are taken, each counted
    /// off it. A timer not picked costs the call of `defer` on its payload.
    #[inline(always)]
    pub fn pop_expired_or_defer(
        &mut self,
        now_ns: u64,
        budget: &mut usize,
        defer: impl Fn(&T) -> bool,
    ) -> Option<Expired<T>> {
        loop {
            if *budget == 0 {
                return None;
            }
            self.settle();
            let &index = self.heap.first()?;
            let slot = &mut self.slots[index as usize];
            if slot.deadline_ns > now_ns {
                return None;
            }
            *budget -= 1;
            let SlotState::Pending { payload, .. } =
                core::mem::replace(&mut slot.state, SlotState::Running { cancelled: false })
            else {
                unreachable!("the heap holds only pending slots")
            };
            // Read while the slot is at hand (no second look-up after `defer`).
            let (deadline_ns, generation) = (slot.deadline_ns, slot.generation);
            // Its entry stays at the root as a hole, repaired by the next heap operation.
            self.hole = true;
            if defer(&payload) {
                self.defer_popped(index, payload);
                continue;
            }
            let id = TimerId { cpu: self.cpu, slot: index, generation };
            return Some(Expired { id, deadline_ns, payload });
        }
    }

    /// Slot `index`, just popped (running), goes to the end of the deferred list with its
    /// payload.
    #[cold]
    #[inline(never)]
    fn defer_popped(&mut self, index: u32, payload: T) {
        self.slots[index as usize].state = SlotState::Pending { heap_index: DEFERRED, payload };
        self.link_deferred(index);
        self.deferred_popped += 1;
    }

    /// Links deferred slot `index` at the end of the list.
    fn link_deferred(&mut self, index: u32) {
        self.slots[index as usize].set_links(self.deferred_tail, NO_SLOT);
        match self.deferred_tail {
            NO_SLOT => self.deferred_head = index,
            tail => self.set_deferred_next(tail, index),
        }
        self.deferred_tail = index;
        self.deferred_len += 1;
        self.deferred_max = self.deferred_max.max(self.deferred_len);
    }

    /// Takes the first timer of the deferred list (the one deferred first), running until
    /// [`complete`](Self::complete) as a popped timer is; `None` when none waits. O(1).
    pub fn take_deferred(&mut self) -> Option<Expired<T>> {
        let index = self.deferred_head;
        if index == NO_SLOT {
            return None;
        }
        self.unlink_deferred(index);
        let slot = &mut self.slots[index as usize];
        let SlotState::Pending { payload, .. } =
            core::mem::replace(&mut slot.state, SlotState::Running { cancelled: false })
        else {
            unreachable!("the deferred list holds only deferred slots")
        };
        let id = TimerId { cpu: self.cpu, slot: index, generation: slot.generation };
        Some(Expired { id, deadline_ns: slot.deadline_ns, payload })
    }

    /// A cancel of deferred slot `index`: out of the list, its slot freed, its payload back.
    #[cold]
    #[inline(never)]
    fn cancel_deferred(&mut self, index: u32) -> Cancel<T> {
        self.unlink_deferred(index);
        let state =
            core::mem::replace(&mut self.slots[index as usize].state, SlotState::Running { cancelled: true });
        self.release_slot(index);
        match state {
            SlotState::Pending { payload, .. } => Cancel::Cancelled(payload),
            _ => unreachable!("only a deferred slot is cancelled here"),
        }
    }

    /// Timers waiting in the deferred list.
    #[inline]
    pub fn deferred_len(&self) -> usize {
        self.deferred_len
    }

    /// How many timers [`pop_expired_or_defer`](Self::pop_expired_or_defer) deferred since the
    /// last call (the count starts again at 0).
    #[inline]
    pub fn take_deferred_popped(&mut self) -> u32 {
        core::mem::take(&mut self.deferred_popped)
    }

    /// The most timers that waited in the deferred list at once.
    pub fn deferred_max(&self) -> usize {
        self.deferred_max
    }

    /// Whether the timer waits in the deferred list.
    pub fn is_deferred(&self, id: TimerId) -> bool {
        self.slot_of(id).is_some_and(|s| matches!(s.state, SlotState::Pending { heap_index: DEFERRED, .. }))
    }

    fn set_deferred_next(&mut self, index: u32, to: u32) {
        let slot = &mut self.slots[index as usize];
        let (prev, _) = slot.links();
        slot.set_links(prev, to);
    }

    fn set_deferred_prev(&mut self, index: u32, to: u32) {
        let slot = &mut self.slots[index as usize];
        let (_, next) = slot.links();
        slot.set_links(to, next);
    }

    /// Takes deferred slot `index` out of the list (its state is left to the caller).
    fn unlink_deferred(&mut self, index: u32) {
        debug_assert!(matches!(
            self.slots[index as usize].state,
            SlotState::Pending { heap_index: DEFERRED, .. }
        ));
        let (prev, next) = self.slots[index as usize].links();
        match prev {
            NO_SLOT => self.deferred_head = next,
            _ => self.set_deferred_next(prev, next),
        }
        match next {
            NO_SLOT => self.deferred_tail = prev,
            _ => self.set_deferred_prev(next, prev),
        }
        self.deferred_len -= 1;
    }

    /// Number of pending timers.
    #[inline]
    pub fn len(&self) -> usize {
        // A hole is an entry of the heap (its root): never more holes than entries.
        self.heap.len().wrapping_sub(usize::from(self.hole))
    }

    /// Whether no timer is pending.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Repairs the hole a pop left at the root, if any: the last entry moves into it and sifts
    /// down (Linux's dequeue, done after the callback instead of before it).
    #[inline]
    fn settle(&mut self) {
        if self.hole {
            self.hole = false;
            self.remove_from_heap(0);
        }
    }

    fn key(&self, heap_index: usize) -> (u64, u64) {
        let s = &self.slots[self.heap[heap_index] as usize];
        (s.latest_ns, s.sequence)
    }

    fn place(&mut self, heap_index: usize) {
        let slot = self.heap[heap_index] as usize;
        if let SlotState::Pending { heap_index: at, .. } = &mut self.slots[slot].state {
            *at = heap_index as u32;
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.key(parent) <= self.key(i) {
                break;
            }
            self.heap.swap(parent, i);
            self.place(i);
            i = parent;
        }
        self.place(i);
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let (left, right) = (2 * i + 1, 2 * i + 2);
            let mut smallest = i;
            if left < n && self.key(left) < self.key(smallest) {
                smallest = left;
            }
            if right < n && self.key(right) < self.key(smallest) {
                smallest = right;
            }
            if smallest == i {
                break;
            }
            self.heap.swap(smallest, i);
            self.place(i);
            i = smallest;
        }
        self.place(i);
    }

    /// Takes the entry at `heap_index` out of the heap (its slot is left to the caller).
    fn remove_from_heap(&mut self, heap_index: usize) {
        let last = self.heap.len() - 1;
        self.heap.swap(heap_index, last);
        self.heap.pop();
        if heap_index < last {
            self.place(heap_index);
            // The moved entry may belong above or below its new place.
            if heap_index > 0 && self.key(heap_index) < self.key((heap_index - 1) / 2) {
                self.sift_up(heap_index);
            } else {
                self.sift_down(heap_index);
            }
        }
    }
}

/// A periodic timer's next deadline on its grid (`deadline_ns + k * period_ns`): one period
/// after `deadline_ns`, or, if periods were missed, the first grid point after `now_ns`, so a
/// late timer catches up in one run instead of firing once per missed period (Linux's
/// `hrtimer_forward`). Saturates at `u64::MAX`; a period of 0 is taken as 1 ns.
///
/// ```
/// use kernel_time::hrtimer::forward;
/// assert_eq!(forward(1_000, 100, 1_050), 1_100);
/// assert_eq!(forward(1_000, 100, 1_250), 1_300); // two periods missed: not made up
/// ```
pub fn forward(deadline_ns: u64, period_ns: u64, now_ns: u64) -> u64 {
    let period_ns = period_ns.max(1);
    let next = deadline_ns.saturating_add(period_ns);
    if next > now_ns {
        return next;
    }
    let missed = (now_ns - deadline_ns) / period_ns;
    deadline_ns.saturating_add((missed + 1).saturating_mul(period_ns))
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
            assert!(
                matches!(queue.complete(expired.id, None), Ok(false)),
                "a one-shot timer is not pending again"
            );
            fired.push(expired.payload);
        }
        fired
    }

    #[test]
    fn new_queue_is_empty() {
        static QUEUE: TimerQueue<u32> = TimerQueue::new(0);
        assert!(QUEUE.is_empty());
        assert_eq!(QUEUE.len(), 0);
        assert_eq!(QUEUE.earliest(), None);
        let mut queue = TimerQueue::<u32>::new(3);
        assert_eq!(queue.cpu(), 3);
        assert_eq!(queue.pop_expired(u64::MAX).map(|e| e.payload), None);
    }

    #[test]
    fn timers_pop_in_deadline_order() {
        let mut queue = TimerQueue::new(0);
        for deadline in [50, 10, 40, 20, 30] {
            queue.arm(deadline, deadline);
        }
        assert_eq!(drain(&mut queue, 100), [10, 20, 30, 40, 50]);
        assert!(queue.is_empty());
    }

    #[test]
    fn equal_deadlines_fire_in_arming_order() {
        let mut queue = TimerQueue::new(0);
        queue.arm(7, 'a');
        queue.arm(3, 'x');
        queue.arm(7, 'b');
        queue.arm(7, 'c');
        assert_eq!(drain(&mut queue, 7), ['x', 'a', 'b', 'c']);
    }

    #[test]
    fn nothing_pops_before_its_deadline() {
        let mut queue = TimerQueue::new(0);
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
        let mut queue = TimerQueue::new(0);
        queue.arm(5, "late");
        assert_eq!(drain(&mut queue, 500), ["late"]);
    }

    #[test]
    fn cancelled_timer_never_pops() {
        let mut queue = TimerQueue::new(0);
        queue.arm(10, 1);
        let cancelled = queue.arm(20, 2);
        queue.arm(30, 3);
        assert_eq!(queue.cancel(cancelled), Ok(Cancel::Cancelled(2)));
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.deadline(cancelled), None);
        assert_eq!(queue.cancel(cancelled), Ok(Cancel::Inactive), "a second cancel finds nothing");
        assert_eq!(drain(&mut queue, u64::MAX), [1, 3]);
    }

    #[test]
    fn cancel_after_fire_returns_none() {
        let mut queue = TimerQueue::new(0);
        let id = queue.arm(10, "once");
        assert_eq!(drain(&mut queue, 10), ["once"]);
        assert_eq!(queue.cancel(id), Ok(Cancel::Inactive));
        assert!(!queue.rearm(id, 20), "a fired timer cannot be rearmed");
        assert!(queue.is_empty());
    }

    #[test]
    fn rearm_moves_the_deadline_and_keeps_the_id() {
        let mut queue = TimerQueue::new(0);
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
        let mut queue = TimerQueue::new(0);
        let first = queue.arm(1, ());
        queue.cancel(first).unwrap();
        let second = queue.arm(1, ());
        drain(&mut queue, 1);
        let third = queue.arm(1, ());
        assert!(first != second && second != third && first != third);
    }

    #[test]
    fn a_popped_timers_hole_changes_nothing_seen_from_outside() {
        // While the pop's hole is open (the callback running), the queue answers as if the
        // timer had left the heap at once: length, earliest, cancels and arms of others, and
        // the popped timer's own re-arm into the hole.
        let mut queue = TimerQueue::new(0);
        for deadline in [10, 30, 20, 50, 40] {
            queue.arm(deadline, deadline);
        }
        let first = queue.pop_expired(10).unwrap();
        assert_eq!((queue.len(), queue.earliest()), (4, Some(20)));
        let twenty = queue.pop_expired(25).unwrap();
        assert_eq!(twenty.payload, 20);
        assert_eq!((queue.len(), queue.earliest()), (3, Some(30)));
        assert!(matches!(queue.complete(first.id, Some((35, 10))), Ok(true)));
        assert_eq!((queue.len(), queue.earliest()), (4, Some(30)));
        let thirty = queue.pop_expired(30).unwrap();
        let early = queue.arm(5, 5);
        assert_eq!(queue.earliest(), Some(5));
        assert_eq!(queue.cancel(early), Ok(Cancel::Cancelled(5)));
        assert_eq!(queue.cancel(thirty.id), Ok(Cancel::Running));
        assert_eq!(queue.complete(thirty.id, Some((60, 30))), Err(30));
        assert!(matches!(queue.complete(twenty.id, None), Ok(false)));
        assert_eq!(drain(&mut queue, u64::MAX), [10, 40, 50]);
        assert_eq!((queue.len(), queue.earliest()), (0, None));
    }

    #[test]
    fn earliest_follows_arm_and_cancel() {
        let mut queue = TimerQueue::new(0);
        let late = queue.arm(300, ());
        assert_eq!(queue.earliest(), Some(300));
        let early = queue.arm(100, ());
        assert_eq!(queue.earliest(), Some(100));
        queue.arm(200, ());
        assert_eq!(queue.earliest(), Some(100));
        queue.cancel(early).unwrap();
        assert_eq!(queue.earliest(), Some(200));
        queue.rearm(late, 50);
        assert_eq!(queue.earliest(), Some(50));
        drain(&mut queue, 250);
        assert_eq!(queue.earliest(), None);
    }

    #[test]
    fn arm_after_saturates() {
        let mut queue = TimerQueue::new(0);
        let soon = queue.arm_after(1_000, 500, ());
        assert_eq!(queue.deadline(soon), Some(1_500));
        let never = queue.arm_after(u64::MAX - 10, 100, ());
        assert_eq!(queue.deadline(never), Some(u64::MAX));
        assert!(queue.pop_expired(u64::MAX - 1).is_some_and(|e| e.id == soon));
        assert!(queue.pop_expired(u64::MAX - 1).is_none(), "a saturated timer did not wrap into the past");
    }

    #[test]
    fn periodic_timer_is_rearmed_under_its_id_from_its_deadline() {
        let mut queue = TimerQueue::new(0);
        let id = queue.arm(100, "tick");
        queue.arm(150, "other");
        let e = queue.pop_expired(120).expect("due");
        assert!(queue.is_running(id));
        assert_eq!(queue.complete(e.id, Some((e.deadline_ns + 100, e.payload))), Ok(true));
        assert_eq!(queue.deadline(id), Some(200), "next period from the deadline, not from now");
        assert_eq!(drain(&mut queue, 199), ["other"]);
        assert_eq!(queue.pop_expired(200).map(|e| e.id), Some(id));
    }

    #[test]
    fn cancelling_a_running_timer_says_so_and_stops_its_rearm() {
        let mut queue = TimerQueue::new(0);
        let id = queue.arm(10, 1);
        let e = queue.pop_expired(10).expect("due");
        assert_eq!(queue.cancel(id), Ok(Cancel::Running));
        assert_eq!(
            queue.complete(e.id, Some((20, e.payload))),
            Err(1),
            "a cancelled periodic timer stays cancelled, its payload handed back"
        );
        assert_eq!(queue.cancel(id), Ok(Cancel::Inactive));
        assert!(queue.is_empty());
    }

    #[test]
    fn a_stale_id_never_reaches_the_timer_that_reuses_its_slot() {
        let mut queue = TimerQueue::new(0);
        let old = queue.arm(10, "old");
        assert_eq!(queue.cancel(old), Ok(Cancel::Cancelled("old")));
        let new = queue.arm(20, "new");
        assert_ne!(old, new);
        assert_eq!(queue.cancel(old), Ok(Cancel::Inactive));
        assert!(!queue.rearm(old, 5));
        assert_eq!(queue.deadline(new), Some(20));
    }

    #[test]
    fn an_id_of_another_cpu_is_refused_and_never_cancels_that_cpus_timer() {
        // Two fresh queues hand out the same slot and generation first: only the CPU tells the
        // ids apart.
        let mut cpu0 = TimerQueue::new(0);
        let mut cpu1 = TimerQueue::new(1);
        let id0 = cpu0.arm(100, "cpu 0's");
        let id1 = cpu1.arm(200, "cpu 1's");
        assert_eq!((id0.cpu(), id1.cpu()), (0, 1));
        assert_ne!(id0, id1);
        assert_eq!(cpu1.cancel(id0), Err(WrongCpu { id_cpu: 0, queue_cpu: 1 }));
        assert!(!cpu1.rearm(id0, 5), "another CPU's id moves nothing");
        assert_eq!(cpu1.deadline(id0), None);
        assert_eq!(cpu1.deadline(id1), Some(200), "CPU 1's timer is untouched");
        let expired = cpu1.pop_expired(200).expect("CPU 1's timer still fires");
        assert_eq!((expired.id, expired.payload), (id1, "cpu 1's"));
        assert_eq!(cpu1.cancel(id0), Err(WrongCpu { id_cpu: 0, queue_cpu: 1 }), "not even while running");
        assert_eq!(cpu1.complete(id0, None), Ok(false), "another CPU's id completes nothing");
        assert!(cpu1.is_running(id1));
        assert_eq!(cpu0.cancel(id0), Ok(Cancel::Cancelled("cpu 0's")));
    }

    #[test]
    fn reserved_capacity_is_used_before_growing() {
        let mut queue = TimerQueue::with_capacity(0, 100);
        assert_eq!(queue.spare_capacity(), 100);
        let slots = queue.slots.capacity();
        for i in 0..100 {
            queue.arm(i, ());
        }
        assert_eq!(queue.spare_capacity(), 0);
        assert_eq!(queue.slots.capacity(), slots, "no allocation within the reserve");
    }

    use crate::testing::XorShift;

    /// The obviously correct queue: an unsorted list searched for its minimum `(deadline,
    /// payload)`; payloads are numbered in arming order.
    #[derive(Default)]
    struct Model {
        pending: Vec<(u64, TimerId, u64)>,
    }

    impl Model {
        fn earliest_entry(&self) -> Option<usize> {
            (0..self.pending.len()).min_by_key(|&i| (self.pending[i].0, self.pending[i].2))
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
            TimerId { cpu: 0, slot: u32::MAX - 1 - rng.below(5) as u32, generation: 0 }
        } else if !model.pending.is_empty() && rng.below(2) == 0 {
            model.pending[rng.below(model.pending.len() as u64) as usize].1
        } else {
            issued[rng.below(issued.len() as u64) as usize]
        }
    }

    #[test]
    fn random_operations_agree_with_a_reference_model() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut queue = TimerQueue::new(0);
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
                    assert_eq!(
                        queue.cancel(id).expect("an id of this queue").cancelled(),
                        expected,
                        "step {step}: cancel {id:?}"
                    );
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
                        assert_eq!(queue.complete(expired.id, None), Ok(false));
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

    /// Pops everything due at `now_ns` and defers it, as a hard expiry does for deferred timers.
    fn defer_due<T: core::fmt::Debug>(queue: &mut TimerQueue<T>, now_ns: u64) -> usize {
        let mut n = 0;
        while let Some(expired) = queue.pop_expired(now_ns) {
            queue.defer(expired).expect("just popped");
            n += 1;
        }
        n
    }

    #[test]
    fn a_deferred_timer_waits_in_pop_order_and_runs_once_when_taken() {
        let mut queue = TimerQueue::with_capacity(0, 8);
        let c = queue.arm(30, "c");
        let a = queue.arm(10, "a");
        let b = queue.arm(20, "b");
        let later = queue.arm(100, "later");
        assert_eq!(defer_due(&mut queue, 9), 0, "never early: nothing due, nothing deferred");
        assert_eq!(defer_due(&mut queue, 50), 3);
        assert_eq!(queue.deferred_len(), 3);
        assert_eq!(queue.len(), 1, "waiting timers are not pending");
        assert_eq!(queue.earliest(), Some(100), "nor do they ask for the device");
        assert!(queue.is_deferred(a) && queue.is_deferred(b) && queue.is_deferred(c));
        for (id, payload, deadline) in [(a, "a", 10), (b, "b", 20), (c, "c", 30)] {
            let e = queue.take_deferred().expect("waiting");
            assert_eq!((e.id, e.payload, e.deadline_ns), (id, payload, deadline), "deadline order");
            assert!(queue.is_running(id) && !queue.is_deferred(id));
            assert_eq!(queue.cancel(id), Ok(Cancel::Running), "taken: its callback runs");
            assert_eq!(queue.complete(id, None), Ok(false));
            assert_eq!(queue.cancel(id), Ok(Cancel::Inactive), "ran once");
        }
        assert!(queue.take_deferred().is_none());
        assert_eq!(queue.deferred_len(), 0);
        assert_eq!(queue.deadline(later), Some(100));
    }

    #[test]
    fn a_cancel_while_deferred_hands_the_payload_back_and_it_is_never_taken() {
        // First, middle and last of the list, each unlinked on its own.
        for victim in 0..3 {
            let mut queue = TimerQueue::with_capacity(0, 8);
            let ids: Vec<TimerId> = (0..3).map(|i| queue.arm(10 + i, i)).collect();
            defer_due(&mut queue, 100);
            assert_eq!(queue.cancel(ids[victim as usize]), Ok(Cancel::Cancelled(victim)), "it never ran");
            assert_eq!(queue.cancel(ids[victim as usize]), Ok(Cancel::Inactive), "cancelled once");
            assert_eq!(queue.deferred_len(), 2);
            let mut taken = Vec::new();
            while let Some(e) = queue.take_deferred() {
                assert_eq!(queue.complete(e.id, None), Ok(false));
                taken.push(e.payload);
            }
            let expected: Vec<u64> = (0..3).filter(|&i| i != victim).collect();
            assert_eq!(taken, expected, "the others in order, the cancelled one never");
            // The list is whole again: a new deferral lands alone.
            let id = queue.arm(5, 9);
            defer_due(&mut queue, 100);
            assert_eq!(queue.take_deferred().map(|e| e.id), Some(id));
            assert!(queue.take_deferred().is_none());
        }
    }

    #[test]
    fn a_periodic_deferred_timer_is_rearmed_on_its_grid_once_after_its_run_unless_cancelled() {
        let mut queue = TimerQueue::with_capacity(0, 8);
        let id = queue.arm(1_000, "tick");
        defer_due(&mut queue, 1_050);
        // The deferred run comes late (2 periods missed): re-armed on the grid, after now.
        let e = queue.take_deferred().unwrap();
        assert_eq!(queue.complete(e.id, Some((forward(e.deadline_ns, 100, 1_250), e.payload))), Ok(true));
        assert_eq!(queue.deadline(id), Some(1_300), "same id, next grid point");
        assert!(queue.take_deferred().is_none(), "re-armed once, pending, not waiting");
        defer_due(&mut queue, 1_300);
        let e = queue.take_deferred().unwrap();
        assert_eq!(queue.cancel(id), Ok(Cancel::Running), "a cancel during its run");
        assert_eq!(queue.complete(e.id, Some((1_400, e.payload))), Err("tick"), "no re-arm");
        assert!(queue.is_empty() && queue.deferred_len() == 0);
    }

    #[test]
    fn the_deferred_list_is_never_full_and_allocates_nothing() {
        let mut queue = TimerQueue::with_capacity(0, 1_000);
        let capacity = queue.capacity();
        for i in 0..1_000u64 {
            queue.arm(i, i);
        }
        assert_eq!(defer_due(&mut queue, u64::MAX), 1_000);
        assert_eq!(queue.capacity(), capacity, "each waits in the slot it had");
        queue.reserve(1);
        assert!(queue.spare_capacity() >= 1, "reserve counts the waiting timers as taken");
        let mut n = 0;
        while let Some(e) = queue.take_deferred() {
            assert_eq!(e.payload, n, "in order, none lost");
            queue.complete(e.id, None).unwrap();
            n += 1;
        }
        assert_eq!(n, 1_000);
    }

    #[test]
    fn a_timer_cancelled_between_pop_and_defer_is_refused() {
        let mut queue = TimerQueue::with_capacity(0, 4);
        let id = queue.arm(10, 1u32);
        let e = queue.pop_expired(10).unwrap();
        assert_eq!(queue.cancel(id), Ok(Cancel::Running));
        assert_eq!(queue.defer(e), Err(1), "its payload back, nothing waits");
        assert_eq!(queue.deferred_len(), 0);
        assert_eq!(queue.complete(id, None), Ok(false));
    }

    #[test]
    fn pop_or_defer_defers_the_picked_and_pops_the_rest_in_order_within_its_budget() {
        let mut queue = TimerQueue::with_capacity(0, 8);
        for (deadline, payload) in [(10, 1u32), (20, 2), (30, 3), (40, 4), (100, 5)] {
            queue.arm(deadline, payload);
        }
        let odd = |p: &u32| p % 2 == 1;
        let mut budget = usize::MAX;
        let e = queue.pop_expired_or_defer(50, &mut budget, odd).unwrap();
        assert_eq!((e.payload, queue.take_deferred_popped()), (2, 1), "1 deferred on the way to 2");
        queue.complete(e.id, None).unwrap();
        let mut small = 2;
        let e = queue.pop_expired_or_defer(50, &mut small, odd).unwrap();
        assert_eq!(
            (e.payload, queue.take_deferred_popped(), small),
            (4, 1, 0),
            "3 deferred, 4 popped: no budget left"
        );
        queue.complete(e.id, None).unwrap();
        assert!(queue.pop_expired_or_defer(1_000, &mut small, odd).is_none(), "no budget left");
        assert!(queue.pop_expired_or_defer(50, &mut budget, odd).is_none(), "never early: 100");
        assert_eq!(queue.take_deferred_popped(), 0);
        let taken: Vec<u32> = core::iter::from_fn(|| {
            let e = queue.take_deferred()?;
            queue.complete(e.id, None).unwrap();
            Some(e.payload)
        })
        .collect();
        assert_eq!(taken, [1, 3]);
        assert_eq!(queue.deferred_max(), 2);
        assert_eq!(queue.earliest(), Some(100));
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn a_deferred_slot_is_no_larger_than_a_pending_one() {
        // A payload laid out as the kernel's (40 bytes, a niche in its callback).
        enum Callback {
            _Fn(fn(&u64)),
            _Closure(alloc::boxed::Box<dyn FnMut(&u64) + Send>),
        }
        struct Payload {
            _callback: Callback,
            _data: u64,
            _schedule: u64,
            _handle: Option<core::num::NonZeroU64>,
        }
        // As before deferred timers: the deferred list's links live in the slot's sequence.
        assert_eq!(core::mem::size_of::<SlotState<Payload>>(), 48);
        assert_eq!(core::mem::size_of::<Slot<Payload>>(), 80);
    }

    /// The slack rule from a list kept sorted by `(latest, arming order)`: the device is
    /// programmed for the first entry's latest time, and an interrupt at `now` takes entries
    /// from the front while the front's deadline is at or before `now`. Entries are
    /// `(latest, order, deadline, id, period)`.
    #[derive(Default)]
    struct RangeModel {
        sorted: Vec<(u64, u64, u64, TimerId, u64)>,
        order: u64,
    }

    impl RangeModel {
        fn insert(&mut self, deadline_ns: u64, latest_ns: u64, id: TimerId, period_ns: u64) {
            let entry = (latest_ns, self.order, deadline_ns, id, period_ns);
            self.order += 1;
            let at = self.sorted.partition_point(|e| (e.0, e.1) < (entry.0, entry.1));
            self.sorted.insert(at, entry);
        }

        fn remove(&mut self, id: TimerId) -> Option<(u64, u64, u64, TimerId, u64)> {
            let at = self.sorted.iter().position(|e| e.3 == id)?;
            Some(self.sorted.remove(at))
        }

        fn earliest(&self) -> Option<u64> {
            self.sorted.first().map(|e| e.0)
        }
    }

    /// Pops everything due at `now_ns` from both, checking each pop against the model (same
    /// timer, never early, its range intact), completing periodic timers with their next
    /// deadline on their grid (their slack kept); returns how many were popped.
    fn interrupt_both(
        queue: &mut TimerQueue<u64>,
        model: &mut RangeModel,
        now_ns: u64,
        step: usize,
    ) -> usize {
        let mut popped = 0;
        while let Some(e) = queue.pop_expired(now_ns) {
            let front = model.sorted.first().copied().expect("the queue popped a timer the model lacks");
            assert!(
                front.2 <= now_ns,
                "step {step}: popped {:?} although the model's front is not due",
                e.id
            );
            model.sorted.remove(0);
            let (latest_ns, _, deadline_ns, id, period_ns) = front;
            assert_eq!(
                (e.id, e.deadline_ns, queue.latest(e.id)),
                (id, deadline_ns, Some(latest_ns)),
                "step {step}: wrong timer"
            );
            assert!(e.deadline_ns <= now_ns, "step {step}: {id:?} popped before its deadline");
            if period_ns > 0 {
                let next = e.deadline_ns + period_ns;
                assert_eq!(queue.complete(e.id, Some((next, e.payload))), Ok(true));
                model.insert(next, next.saturating_add(latest_ns - deadline_ns), id, period_ns);
                assert_eq!(
                    queue.latest(id),
                    Some(next.saturating_add(latest_ns - deadline_ns)),
                    "slack kept"
                );
            } else {
                assert_eq!(queue.complete(e.id, None), Ok(false));
            }
            popped += 1;
        }
        assert!(
            model.sorted.first().is_none_or(|front| front.2 > now_ns),
            "step {step}: the model's front is due at {now_ns} but the queue stopped"
        );
        popped
    }

    #[test]
    fn random_slack_follows_the_latest_time_order_of_a_sorted_model() {
        let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
        let mut queue = TimerQueue::new(0);
        let mut model = RangeModel::default();
        let mut now_ns: u64 = 1_000_000;
        let mut issued: Vec<TimerId> = Vec::new();
        let (mut device_interrupts, mut popped_total, mut shared, mut early_interrupts) = (0, 0, 0, 0);

        for step in 0..10_000 {
            match rng.below(12) {
                // Arm with slack: none, small, large, or one whose end saturates.
                0..=3 => {
                    let deadline_ns = now_ns.saturating_sub(rng.below(50)) + rng.below(20_000);
                    let slack_ns = match rng.below(8) {
                        0 | 1 => 0,
                        2 => u64::MAX - rng.below(3),
                        3 => rng.below(100),
                        _ => rng.below(30_000),
                    };
                    let period_ns = if rng.below(6) == 0 { 2_000 + rng.below(10_000) } else { 0 };
                    let id = queue.arm_range(deadline_ns, slack_ns, period_ns);
                    issued.push(id);
                    model.insert(deadline_ns, deadline_ns.saturating_add(slack_ns), id, period_ns);
                }
                // Cancel any id ever issued.
                4 => {
                    if let Some(&id) = issued.get(rng.below(issued.len() as u64 + 1) as usize) {
                        let expected = model.remove(id).map(|e| e.4);
                        assert_eq!(queue.cancel(id).unwrap().cancelled(), expected, "step {step}: cancel");
                    }
                }
                // Rearm keeps the slack.
                5 => {
                    if let Some(&id) = issued.get(rng.below(issued.len() as u64 + 1) as usize) {
                        let deadline_ns = now_ns + rng.below(20_000);
                        let found = model.remove(id);
                        if let Some((latest, order, deadline, _, period)) = found {
                            // A rearm keeps its place among equal ends: its arming order.
                            let entry = (
                                deadline_ns.saturating_add(latest - deadline),
                                order,
                                deadline_ns,
                                id,
                                period,
                            );
                            let at = model.sorted.partition_point(|e| (e.0, e.1) < (entry.0, entry.1));
                            model.sorted.insert(at, entry);
                        }
                        assert_eq!(queue.rearm(id, deadline_ns), found.is_some(), "step {step}: rearm");
                    }
                }
                // An interrupt at some time before the programmed one (early or spurious):
                // nothing before its deadline.
                6 => {
                    now_ns += rng.below(2_000);
                    early_interrupts += 1;
                    popped_total += interrupt_both(&mut queue, &mut model, now_ns, step);
                }
                // The device programmed for `earliest()` fires, on time or late.
                _ => {
                    let Some(programmed) = queue.earliest() else { continue };
                    now_ns = now_ns.max(programmed) + rng.below(3) * rng.below(5_000);
                    device_interrupts += 1;
                    let popped = interrupt_both(&mut queue, &mut model, now_ns, step);
                    assert!(popped >= 1, "step {step}: the device fired for nothing");
                    shared += usize::from(popped > 1);
                    popped_total += popped;
                    // Never later than its range: nothing whose range ended by now is left.
                    assert!(
                        model.sorted.iter().all(|e| e.0 > now_ns),
                        "step {step}: a timer whose range ended at or before {now_ns} is still pending"
                    );
                    assert!(queue.earliest().is_none_or(|latest| latest > now_ns), "step {step}");
                }
            }
            assert_eq!(queue.earliest(), model.earliest(), "step {step}: earliest");
            assert_eq!(queue.len(), model.sorted.len(), "step {step}: len");
            if let Some(&id) = issued.get(rng.below(issued.len() as u64 + 1) as usize) {
                let found = model.sorted.iter().find(|e| e.3 == id);
                assert_eq!(queue.deadline(id), found.map(|e| e.2), "step {step}: deadline");
                assert_eq!(queue.latest(id), found.map(|e| e.0), "step {step}: latest");
            }
        }
        assert!(device_interrupts > 1_500 && early_interrupts > 500 && popped_total > 3_000);
        assert!(shared > 300, "ranges overlapped often enough to share interrupts ({shared})");
    }

    /// Runs `queue` as a device programmed for its `earliest()` would, firing exactly then,
    /// until it is empty: returns how many interrupts it took and the largest lateness seen
    /// past a timer's deadline (checked within its range).
    fn run_as_a_device(queue: &mut TimerQueue<u64>) -> (usize, u64) {
        let (mut interrupts, mut worst) = (0, 0);
        while let Some(at) = queue.earliest() {
            interrupts += 1;
            while let Some(e) = queue.pop_expired(at) {
                let latest = queue.latest(e.id).expect("running");
                assert!(e.deadline_ns <= at && at <= latest, "ran outside [deadline, deadline + slack]");
                worst = worst.max(at - e.deadline_ns);
                queue.complete(e.id, None).unwrap();
            }
        }
        (interrupts, worst)
    }

    #[test]
    fn slack_lets_many_timers_share_one_interrupt() {
        // 64 timers 3.125 us apart (200 us in all): without slack, one interrupt each; with
        // 1 ms each, all ranges overlap at the first end of range, and one interrupt runs all.
        let mut exact = TimerQueue::new(0);
        let mut ranged = TimerQueue::new(0);
        for k in 0..64u64 {
            exact.arm(10_000 + k * 3_125, k);
            ranged.arm_range(10_000 + k * 3_125, 1_000_000, k);
        }
        assert_eq!(run_as_a_device(&mut exact), (64, 0));
        let (interrupts, worst) = run_as_a_device(&mut ranged);
        assert_eq!(interrupts, 1, "one interrupt at the first end of range runs every begun range");
        assert_eq!(worst, 1_000_000, "the first timer ran at the end of its range, not after");

        // 50 us of slack: the 200 us spread needs about 200 / 50 interrupts, not 64.
        let mut some = TimerQueue::new(0);
        for k in 0..64u64 {
            some.arm_range(10_000 + k * 3_125, 50_000, k);
        }
        let (interrupts, worst) = run_as_a_device(&mut some);
        assert!((4..=5).contains(&interrupts), "{interrupts} interrupts for 64 timers with 50 us of slack");
        assert!(worst <= 50_000);
    }

    #[test]
    fn a_head_whose_range_has_not_begun_stops_the_pass_and_runs_by_its_end() {
        // Never early, even for the head: a later timer whose range has begun waits for it.
        let mut queue = TimerQueue::new(0);
        let head = queue.arm_range(500, 100, "head"); // [500, 600]
        queue.arm_range(100, 10_000, "behind"); // [100, 10_100]
        assert_eq!(queue.earliest(), Some(600));
        assert!(queue.pop_expired(499).is_none(), "behind's range has begun, but the head's has not");
        let e = queue.pop_expired(600).unwrap();
        assert_eq!((e.id, e.payload), (head, "head"));
        assert_eq!(queue.pop_expired(600).map(|e| e.payload), Some("behind"), "its range has begun");
    }

    #[test]
    fn slack_zero_behaves_as_before_and_a_saturated_end_never_wraps() {
        let mut queue = TimerQueue::new(0);
        let a = queue.arm_range(100, 0, 'a');
        assert_eq!((queue.deadline(a), queue.latest(a)), (Some(100), Some(100)));
        let never = queue.arm_range(u64::MAX - 5, 100, 'n');
        assert_eq!(queue.latest(never), Some(u64::MAX));
        let forever = queue.arm_range(200, u64::MAX, 'f');
        assert_eq!(queue.latest(forever), Some(u64::MAX));
        assert_eq!(queue.earliest(), Some(100));
        assert_eq!(drain(&mut queue, 250), ['a']);
        // Its end is u64::MAX, behind `never` in arming order: the head (`never`) is not due.
        assert!(queue.pop_expired(u64::MAX - 6).is_none());
        assert_eq!(drain(&mut queue, u64::MAX), ['n', 'f']);
    }
}
