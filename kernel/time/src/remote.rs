//! Timers any CPU can arm on any CPU and cancel from anywhere, without waiting and without a
//! lock the owner's timer path takes: each CPU's table of [`Handles`].
//!
//! A timer armed through a handle lives in a slot of its CPU's table. The slot's state word
//! (its generation and its state) is the one place where the arm, the cancel and the owner's
//! expiry meet; whoever moves it first wins, and everyone else reads the outcome:
//!
//! ```text
//!   Free(g) --sender claims--> Claimed(g) --payload stored, published--> Pending(g)
//!   Pending(g)  --owner's expiry begins the callback--> Running(g)
//!   Running(g)  --periodic, re-armed--> Pending(g)     one-shot, done --> Free(g + 1)
//!   Pending(g)  --cancel (any CPU)--> Cancelled(g)     --owner reclaims--> Free(g + 1)
//!   Running(g)  --cancel (any CPU)--> RunningCancelled(g) --callback returns--> Free(g + 1)
//! ```
//!
//! - **An arm returns at once.** The sender claims a free slot, stores the payload, publishes
//!   the slot as pending and sends [`TimeMessage::Arm`] to the owner's inbox; the handle (a
//!   [`TimerId`] naming the CPU, the slot and its generation) is the caller's before the owner
//!   has seen anything. The owner arms it in its queue when it drains its inbox.
//! - **A cancel answers at once and tells the truth.** Pending -> cancelled: it never runs
//!   (the owner's expiry checks the word before each callback, so a cancel that overtakes its
//!   own arm in the inbox, or lands after the owner armed it, both stop it). Running: the
//!   callback in progress finishes and a periodic timer is not re-armed. Anything else (a
//!   later generation, free, cancelled already): it already ran or was cancelled. The cancel
//!   also sends [`TimeMessage::Cancel`] so the owner takes the timer out of its queue early; if
//!   the owner's inbox is full, the owner finds it cancelled at its deadline instead.
//! - **Bounded, with a defined answer when full.** A table has a fixed number of slots,
//!   allocated when it is made; no slot free answers [`ArmError::HandlesFull`], an inbox that
//!   refuses the message [`ArmError::InboxFull`]: the payload comes back and nothing was armed.
//! - A slot's generation is 32 bits, bumped each time the slot is freed: a handle kept across
//!   2^32 reuses of one slot could be taken for a later timer.
//!
//! The payload waits in the slot between the sender and the owner behind a lock of its own
//! (the crate has no `unsafe`); the state word hands it over, so that lock is never contended:
//! the sender holds it only while the slot is claimed (nobody else knows the slot), the owner
//! only after the state says the sender is done.

use crate::hrtimer::TimerId;
use crate::inbox::{Inbox, TimeMessage};
use crate::sync::{AtomicU32, AtomicU64, Ordering, PayloadCell};
use crate::tick::expiry::ExpiryContext;
use crate::tick::{ArmError, CpuTick, Refused};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::num::NonZeroU64;

/// The bit of a [`TimerId`]'s slot that says it is a handle's slot (in its CPU's [`Handles`]),
/// not a slot of its CPU's queue.
const HANDLE_BIT: u32 = 1 << 31;

/// The largest table [`Handles::new`] makes.
pub const MAX_HANDLES: usize = 1 << 16;

const FREE: u64 = 0;
const CLAIMED: u64 = 1;
const PENDING: u64 = 2;
const RUNNING: u64 = 3;
const CANCELLED: u64 = 4;
const RUNNING_CANCELLED: u64 = 5;

/// A state word: the slot's generation above, its state in the low byte.
#[inline]
fn word(generation: u32, state: u64) -> u64 {
    u64::from(generation) << 8 | state
}

/// The generation of a state word.
#[inline]
fn generation_of(w: u64) -> u32 {
    (w >> 8) as u32
}

/// What a cancel through a handle found. It never waits for the timer's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It was pending and never runs now (wherever its arm was: still in its CPU's inbox, or
    /// in its queue).
    Pending,
    /// Its callback is running at this moment on its CPU: that run finishes, and a periodic
    /// timer is not re-armed.
    Running,
    /// It already ran (one-shot), was cancelled before, or never existed.
    Inactive,
}

/// One slot: its state word, the owner's queue id for it once armed there (owner only), the
/// payload between the sender and the owner.
struct Slot<P> {
    state: AtomicU64,
    /// The queue id's slot and generation, or `NOT_QUEUED`. Written and read by the owner only.
    queued: AtomicU64,
    payload: PayloadCell<P>,
}

const NOT_QUEUED: u64 = u64::MAX;
/// A slot's `queued` word once its timer left with its CPU going offline ([`leave`]): it is
/// in another CPU's queue now, which alone frees the slot (at its deadline, or when its
/// callback is done), so a late cancel note reaching this CPU reclaims nothing.
const MIGRATED: u64 = u64::MAX - 1;

/// Bits of a packed handle's slot word that carry its CPU ([`Handles::pack`]): above the
/// slot index (below [`MAX_HANDLES`]) and below [`HANDLE_BIT`].
const PACKED_CPU_SHIFT: u32 = 16;
const PACKED_CPU_MASK: u32 = 0x7fff;

/// One CPU's table of handle slots: any CPU arms into it ([`post`](Self::post)) and cancels
/// through it ([`cancel`](Self::cancel)); its owner drains its inbox ([`drain`]) and its expiry
/// checks each handle's timer before running it.
pub struct Handles<P> {
    cpu: u32,
    /// Where the next claim starts looking (spreads senders over the table).
    next: AtomicU32,
    slots: Box<[Slot<P>]>,
    /// [`GATE_CLOSED`] once its CPU went offline ([`close`](Self::close): every post is
    /// refused), and below it the senders in the middle of a post, which a close waits for,
    /// so that no arm reaches the inbox after the CPU's last drain. One word, moved by
    /// read-modify-writes only: their single order decides, for each post, whether it came
    /// before the close (waited for) or after (refused).
    gate: AtomicU32,
}

/// The bit of [`Handles`]' gate that says its table is closed.
const GATE_CLOSED: u32 = 1 << 31;

impl<P> fmt::Debug for Handles<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handles").field("cpu", &self.cpu).field("capacity", &self.slots.len()).finish()
    }
}

impl<P> Handles<P> {
    /// CPU `cpu`'s table with `capacity` slots (1 to [`MAX_HANDLES`]), allocated now; nothing
    /// allocates afterwards.
    pub fn new(cpu: usize, capacity: usize) -> Handles<P> {
        let capacity = capacity.clamp(1, MAX_HANDLES);
        Handles {
            cpu: cpu as u32,
            next: AtomicU32::new(0),
            slots: (0..capacity)
                .map(|_| Slot {
                    state: AtomicU64::new(word(0, FREE)),
                    queued: AtomicU64::new(NOT_QUEUED),
                    payload: PayloadCell::new(),
                })
                .collect::<Vec<_>>()
                .into_boxed_slice(),
            gate: AtomicU32::new(0),
        }
    }

    /// Its CPU is going offline: from now on every [`post`](Self::post) is refused
    /// ([`ArmError::CpuNotOnline`]); returns once every post already past that check has
    /// sent its arm, so the CPU's next drain of its inbox is its last. Cancels still work.
    pub fn close(&self) {
        self.gate.fetch_or(GATE_CLOSED, Ordering::AcqRel);
        // Acquire: each sender's message, sent before it left the gate, is visible after.
        while self.gate.load(Ordering::Acquire) & !GATE_CLOSED != 0 {
            crate::sync::spin_wait();
        }
    }

    /// Its CPU is online again: posts are taken.
    pub fn reopen(&self) {
        self.gate.fetch_and(!GATE_CLOSED, Ordering::AcqRel);
    }

    /// Whether it is [`close`](Self::close)d.
    pub fn is_closed(&self) -> bool {
        self.gate.load(Ordering::Acquire) & GATE_CLOSED != 0
    }

    /// The CPU whose timers these are.
    pub fn cpu(&self) -> usize {
        self.cpu as usize
    }

    /// How many handles it holds at most.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Handle `id` in one word, its CPU included (a smaller payload is copied faster on the
    /// timer path): a timer that moved to another CPU ([`leave`]) still names the table its
    /// handle lives in. [`unpack`](Self::unpack) takes it apart.
    #[inline]
    pub fn pack(id: TimerId) -> NonZeroU64 {
        let (cpu, slot, generation) = id.parts();
        debug_assert!(cpu <= PACKED_CPU_MASK && slot & !HANDLE_BIT < 1 << PACKED_CPU_SHIFT);
        let slot = slot | HANDLE_BIT | (cpu & PACKED_CPU_MASK) << PACKED_CPU_SHIFT;
        // A handle's slot has HANDLE_BIT set: never zero.
        NonZeroU64::new(u64::from(slot) << 32 | u64::from(generation)).unwrap_or(NonZeroU64::MIN)
    }

    /// The handle [`pack`](Self::pack) made `packed` of.
    #[inline]
    pub fn unpack(packed: NonZeroU64) -> TimerId {
        let packed = packed.get();
        let word = (packed >> 32) as u32;
        let cpu = word >> PACKED_CPU_SHIFT & PACKED_CPU_MASK;
        let slot = word & !(PACKED_CPU_MASK << PACKED_CPU_SHIFT);
        TimerId::from_parts(cpu, slot, packed as u32)
    }

    /// Whether `id` is a handle (of any CPU), not a queue's own id.
    pub fn is_handle(id: TimerId) -> bool {
        id.parts().1 & HANDLE_BIT != 0
    }

    /// The slot of one of this table's handles.
    fn slot_of(&self, id: TimerId) -> Option<(&Slot<P>, u32)> {
        let (cpu, slot, generation) = id.parts();
        if cpu != self.cpu || slot & HANDLE_BIT == 0 {
            return None;
        }
        self.slots.get((slot & !HANDLE_BIT) as usize).map(|s| (s, generation))
    }

    /// Arms a timer on this table's CPU at `deadline_ns`, from any CPU and any context:
    /// claims a slot, stores the payload `make` builds for the handle, and sends the arm to the
    /// owner's `inbox`. The caller then wakes the owner (an IPI) unless it is the owner.
    /// Refused with the payload back: no slot free ([`ArmError::HandlesFull`]), the inbox
    /// full ([`ArmError::InboxFull`]) or the CPU offline ([`ArmError::CpuNotOnline`]: the table
    /// is [`close`](Self::close)d).
    #[inline]
    pub fn post(
        &self,
        inbox: &Inbox<TimeMessage>,
        deadline_ns: u64,
        make: impl FnOnce(TimerId) -> P,
    ) -> Result<TimerId, Refused<P>> {
        self.post_range(inbox, deadline_ns, 0, make)
    }

    /// As [`post`](Self::post), for a timer that may run anywhere in `[deadline_ns,
    /// deadline_ns + slack_ns]` ([`CpuTick::arm_range`]). The message carries the slack in 32
    /// bits: a slack above `u32::MAX` ns (4.29 s) is narrowed to it, which only narrows the
    /// range (never early, never later than asked).
    pub fn post_range(
        &self,
        inbox: &Inbox<TimeMessage>,
        deadline_ns: u64,
        slack_ns: u64,
        make: impl FnOnce(TimerId) -> P,
    ) -> Result<TimerId, Refused<P>> {
        // Entering the gate and reading whether it is closed in one step (see `gate`).
        let posted = if self.gate.fetch_add(1, Ordering::AcqRel) & GATE_CLOSED != 0 {
            let id = TimerId::from_parts(self.cpu, HANDLE_BIT, 0);
            Err(Refused { error: ArmError::CpuNotOnline(self.cpu()), payload: make(id) })
        } else {
            self.post_open(inbox, deadline_ns, slack_ns, make)
        };
        // Release: the message sent is visible to a close that sees this sender gone.
        self.gate.fetch_sub(1, Ordering::AcqRel);
        posted
    }

    fn post_open(
        &self,
        inbox: &Inbox<TimeMessage>,
        deadline_ns: u64,
        slack_ns: u64,
        make: impl FnOnce(TimerId) -> P,
    ) -> Result<TimerId, Refused<P>> {
        let slack_ns = u32::try_from(slack_ns).unwrap_or(u32::MAX);
        let (index, generation) = match self.claim() {
            Some(claimed) => claimed,
            None => {
                let error = ArmError::HandlesFull { cpu: self.cpu(), capacity: self.capacity() };
                let id = TimerId::from_parts(self.cpu, HANDLE_BIT, 0);
                return Err(Refused { error, payload: make(id) });
            }
        };
        let id = TimerId::from_parts(self.cpu, index as u32 | HANDLE_BIT, generation);
        let slot = &self.slots[index];
        slot.payload.put(make(id));
        // Published before the message, so the owner that receives it sees the payload.
        slot.state.store(word(generation, PENDING), Ordering::Release);
        let message = TimeMessage::Arm { slot: index as u32, generation, deadline_ns, slack_ns };
        if inbox.try_send(message).is_err() {
            // Nobody has the handle yet and the owner never heard of the slot: take it back.
            let payload = slot.payload.take().expect("stored above");
            slot.state.store(word(generation, FREE), Ordering::Release);
            return Err(Refused { error: ArmError::InboxFull { cpu: self.cpu() }, payload });
        }
        Ok(id)
    }

    /// A free slot, claimed: its index and generation.
    fn claim(&self) -> Option<(usize, u32)> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        for i in 0..n {
            let index = (start + i) % n;
            let state = &self.slots[index].state;
            let w = state.load(Ordering::Relaxed);
            if w & 0xff != FREE {
                continue;
            }
            let generation = generation_of(w);
            // Acquire: the owner's last use of the slot (taking the payload) is done.
            if state
                .compare_exchange(w, word(generation, CLAIMED), Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Some((index, generation));
            }
        }
        None
    }

    /// Cancels handle `id`'s timer from any CPU, at once (see [`Cancelled`]). On
    /// [`Cancelled::Pending`] the caller sends [`TimeMessage::Cancel`] to the owner so it
    /// reclaims the slot early ([`cancel_message`](Self::cancel_message)); without it the owner
    /// reclaims it at the timer's deadline. A handle of another CPU or no handle at all is
    /// refused.
    pub fn cancel(&self, id: TimerId) -> Result<Cancelled, crate::hrtimer::WrongCpu> {
        let Some((slot, generation)) = self.slot_of(id) else {
            return Err(crate::hrtimer::WrongCpu { id_cpu: id.cpu(), queue_cpu: self.cpu() });
        };
        let mut w = slot.state.load(Ordering::Acquire);
        loop {
            if generation_of(w) != generation {
                return Ok(Cancelled::Inactive);
            }
            let (to, answer) = match w & 0xff {
                PENDING => (CANCELLED, Cancelled::Pending),
                RUNNING => (RUNNING_CANCELLED, Cancelled::Running),
                _ => return Ok(Cancelled::Inactive),
            };
            match slot.state.compare_exchange(w, word(generation, to), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(answer),
                Err(now) => w = now,
            }
        }
    }

    /// Handle `id`'s timer left this table's CPU for another CPU's queue ([`leave`]): only
    /// that CPU's expiry frees its slot from now on (a cancel note reaching this CPU, which
    /// no longer has it queued, reclaims nothing).
    pub fn migrated(&self, id: TimerId) {
        if let Some((slot, generation)) = self.slot_of(id)
            && generation_of(slot.state.load(Ordering::Acquire)) == generation
        {
            slot.queued.store(MIGRATED, Ordering::Relaxed);
        }
    }

    /// The message that has the owner reclaim a cancelled handle's slot early.
    pub fn cancel_message(id: TimerId) -> TimeMessage {
        TimeMessage::Cancel { id }
    }

    /// The owner, before running handle `id`'s callback: true if it runs (pending -> running);
    /// false if it was cancelled, and the slot is free again (the caller drops the payload).
    #[inline]
    pub fn begin_run(&self, id: TimerId) -> bool {
        let Some((slot, generation)) = self.slot_of(id) else { return true };
        match slot.state.compare_exchange(
            word(generation, PENDING),
            word(generation, RUNNING),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(_) => {
                self.free(slot, generation);
                false
            }
        }
    }

    /// The owner, after handle `id`'s callback: true if a periodic timer (`again`) is re-armed
    /// (running -> pending); false if it is done (one-shot, or cancelled while it ran), and the
    /// slot is free again.
    #[inline]
    pub fn end_run(&self, id: TimerId, again: bool) -> bool {
        let Some((slot, generation)) = self.slot_of(id) else { return again };
        if again
            && slot
                .state
                .compare_exchange(
                    word(generation, RUNNING),
                    word(generation, PENDING),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            return true;
        }
        self.free(slot, generation);
        false
    }

    /// The owner frees a slot it is done with: the next generation, free for a claim.
    fn free(&self, slot: &Slot<P>, generation: u32) {
        slot.queued.store(NOT_QUEUED, Ordering::Relaxed);
        // A swap, not a store: the same in the memory model, as a cancel racing with it reads
        // the latest value either way; loom (0.7) lets a plain store slip between the read
        // and the write of a concurrent compare-and-swap (tokio-rs/loom#254), which would
        // show the models a history the hardware cannot make.
        slot.state.swap(word(generation.wrapping_add(1), FREE), Ordering::AcqRel);
    }

    /// Each slot's state word (tests).
    #[cfg(test)]
    #[allow(dead_code)]
    pub(crate) fn states(&self) -> Vec<(u64, u64)> {
        self.slots
            .iter()
            .map(|s| (s.state.load(Ordering::Relaxed), s.queued.load(Ordering::Relaxed)))
            .collect()
    }

    /// How many slots are not free (pending, running, or waiting for the owner to reclaim).
    pub fn in_use(&self) -> usize {
        self.slots.iter().filter(|s| s.state.load(Ordering::Relaxed) & 0xff != FREE).count()
    }
}

/// What the owner's [`drain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drained {
    /// Posted timers armed in the queue.
    pub armed: u32,
    /// Posted timers found cancelled (before or after they were armed) and reclaimed.
    pub reclaimed: u32,
    /// Other messages, handed to the platform.
    pub other: u32,
    /// A device that gave up programming while a posted timer was armed (its CPU's local
    /// device, or the broadcast it handed the deadline to): the caller takes it out, as after
    /// any other arm ([`CpuTick::take_failure`]); nothing else on this CPU may report it.
    pub failure: Option<crate::tick::DeviceFailure>,
}

/// What one message came to under the owner's guard.
enum Received<P> {
    Armed,
    Reclaimed(Option<P>),
    Nothing,
}

impl<P> Handles<P> {
    /// The owner, under its guard: arms posted timer `index` (generation `generation`) unless
    /// it was cancelled meanwhile, then its payload comes back to be dropped outside the guard.
    fn arm_posted<C: ExpiryContext<Payload = P>>(
        &self,
        cx: &C,
        t: &mut CpuTick<P>,
        index: u32,
        generation: u32,
        (deadline_ns, slack_ns): (u64, u64),
        bc: &spin::Mutex<crate::broadcast::Broadcast>,
    ) -> Received<P> {
        let Some(slot) = self.slots.get(index as usize) else { return Received::Nothing };
        let w = slot.state.load(Ordering::Acquire);
        if generation_of(w) != generation || slot.queued.load(Ordering::Relaxed) != NOT_QUEUED {
            // Reclaimed already (its cancel overtook it), or armed already.
            return Received::Nothing;
        }
        match w & 0xff {
            PENDING => {
                let Some(payload) = slot.payload.take() else { return Received::Nothing };
                // A cancel from now on is caught by the expiry's check, and its message
                // takes the timer out of the queue.
                // A deadline on REALTIME or BOOTTIME is placed with this CPU's offsets, under
                // its guard (`CpuTick::offsets`), not the sender's.
                let deadline_ns = cx
                    .clock_deadline(&payload)
                    .map_or(deadline_ns, |at| at.monotonic(&t.offsets()).as_nanos());
                let id = t.arm_reserved(deadline_ns, slack_ns, payload, cx.now_ns(), bc);
                let (_, queue_slot, queue_generation) = id.parts();
                slot.queued
                    .store(u64::from(queue_slot) << 32 | u64::from(queue_generation), Ordering::Relaxed);
                Received::Armed
            }
            CANCELLED => {
                let payload = slot.payload.take();
                self.free(slot, generation);
                Received::Reclaimed(payload)
            }
            _ => Received::Nothing,
        }
    }

    /// The owner, under its guard: a cancelled handle's timer leaves the queue (or, if its arm
    /// has not been received yet, the slot) and the slot is freed; its payload comes back.
    fn reclaim(&self, t: &mut CpuTick<P>, id: TimerId) -> Received<P> {
        let Some((slot, generation)) = self.slot_of(id) else { return Received::Nothing };
        let w = slot.state.load(Ordering::Acquire);
        if w != word(generation, CANCELLED) {
            // Not cancelled (a stale message), or reclaimed already (at its deadline).
            return Received::Nothing;
        }
        let queued = slot.queued.load(Ordering::Relaxed);
        if queued == MIGRATED {
            // Its timer is another CPU's now, whose expiry frees the slot at its deadline.
            return Received::Nothing;
        }
        let payload = if queued == NOT_QUEUED {
            // The cancel overtook its arm: the payload is still in the slot.
            slot.payload.take()
        } else {
            let queue_id = TimerId::from_parts(self.cpu, (queued >> 32) as u32, queued as u32);
            t.cancel(queue_id).ok().and_then(crate::hrtimer::Cancel::cancelled)
        };
        self.free(slot, generation);
        Received::Reclaimed(payload)
    }
}

/// The owner drains its inbox `inbox` (on its CPU, with the expiry's context `cx`): a posted
/// arm is armed in its queue unless it was cancelled meanwhile (a device that gives up on its
/// deadline comes back in [`Drained::failure`], for the caller to take out); a cancel takes its
/// timer out of the queue and frees its slot; every other message goes to `other`. One message per
/// guard, payloads dropped outside it (a payload's drop may arm or cancel timers). At most the
/// inbox's capacity of messages, so senders that keep sending cannot keep the owner here.
/// `None`: a drain is already in progress on this CPU (this call comes from inside it: a
/// payload's drop, or an interrupt), which may have passed the newest message already: the
/// caller wakes this CPU again (an IPI to itself) so that no message is stranded.
///
/// A posted arm does not grow the queue: each CPU's queue keeps room for its table's handles
/// ([`CpuTick::reserve_for_handles`]). Nor does it need a device: on a CPU not served yet it
/// waits in the queue for one.
pub fn drain<C: ExpiryContext>(
    cx: &C,
    inbox: &Inbox<TimeMessage>,
    mut other: impl FnMut(TimeMessage),
) -> Option<Drained> {
    let mut drained = Drained::default();
    let Some(handles) = cx.handles() else { return Some(drained) };
    let mut receiver = inbox.receiver()?;
    for _ in 0..inbox.capacity() {
        let Some(message) = receiver.recv() else { break };
        let received = match message {
            TimeMessage::Arm { slot, generation, deadline_ns, slack_ns } => cx.with_tick(|t, bc| {
                let range = (deadline_ns, u64::from(slack_ns));
                let received = handles.arm_posted(cx, t, slot, generation, range, bc);
                drained.failure = drained.failure.or(t.take_failure());
                received
            }),
            TimeMessage::Cancel { id } => cx.with_tick(|t, _| handles.reclaim(t, id)),
            message => {
                drained.other += 1;
                other(message);
                continue;
            }
        };
        match received {
            Some(Received::Armed) => drained.armed += 1,
            Some(Received::Reclaimed(payload)) => {
                drained.reclaimed += 1;
                // Dropped here, outside the guard.
                drop(payload);
            }
            Some(Received::Nothing) | None => {}
        }
    }
    Some(drained)
}

/// This CPU goes offline (on it, outside any expiry, after the registry took it out of its
/// selection): its table of handles is [`close`](Handles::close)d (every post from now on is
/// refused with [`ArmError::CpuNotOnline`]), its inbox drained one last time (timers posted
/// before the close are armed and leave with the rest; other messages go to `other`), then its
/// tick goes offline ([`CpuTick::go_offline`]) and its pending timers come back, for another
/// CPU to adopt; each one armed through a handle is marked [`migrated`](Handles::migrated) in
/// its handle's table, so that the handle still cancels it on its new CPU (whose expiry asks
/// that table, [`ExpiryContext::handles_of`]) and no late cancel note frees its slot here.
pub fn leave<C: ExpiryContext>(
    cx: &C,
    inbox: Option<&Inbox<TimeMessage>>,
    other: impl FnMut(TimeMessage),
) -> Vec<crate::tick::Migrating<C::Payload>> {
    if let Some(handles) = cx.handles() {
        handles.close();
    }
    if let Some(inbox) = inbox {
        // Not nested: a CPU goes offline from its own call, outside any drain.
        let _ = drain(cx, inbox, other);
    }
    let timers = cx.with_tick(|t, bc| t.go_offline(bc)).unwrap_or_default();
    for m in &timers {
        if let Some(handle) = cx.handle_of(&m.payload)
            && let Some(table) = cx.handles_of(handle.cpu())
        {
            table.migrated(handle);
        }
    }
    timers
}

/// A CPU that owns a table of handles, for the host tests and the loom models.
#[cfg(test)]
pub(crate) mod harness {
    use super::*;
    use crate::broadcast::Broadcast;
    use crate::clockevents::fake::{FakeDriver, spec};
    use crate::clockevents::{ClockEventDevice, CpuSet, Features};
    use crate::hrtimer::Expired;
    use crate::tick::expiry;
    use crate::tick::{DeviceId, Service, TickMode};
    use alloc::sync::Arc;
    use std::sync::Mutex as StdMutex;

    /// A tag with this bit asks for its callback to run deferred
    /// ([`ExpiryContext::is_deferred`]).
    pub(crate) const DEFERRED: u64 = 1 << 63;

    /// A test timer: its tag (what the oracle records), its period, its handle.
    pub(crate) struct Pay {
        pub(crate) tag: u64,
        pub(crate) period_ns: u64,
        pub(crate) handle: Option<TimerId>,
    }

    /// CPU 1 as the owner sees it: its tick behind a lock only its thread takes, a clock the
    /// test moves, its handles and inbox, and the oracle's record of every callback.
    pub(crate) struct Owner {
        pub(crate) tick: spin::Mutex<CpuTick<Pay>>,
        pub(crate) bc: spin::Mutex<Broadcast>,
        pub(crate) clock: AtomicU64,
        pub(crate) handles: Handles<Pay>,
        pub(crate) inbox: Inbox<TimeMessage>,
        /// (tag, deadline, clock at the callback).
        pub(crate) ran: StdMutex<Vec<(u64, u64, u64)>>,
        /// What a callback does besides being recorded (a cancel of its own handle).
        pub(crate) during_run: StdMutex<Option<TimerId>>,
        pub(crate) cancels_during_run: StdMutex<Vec<Result<Cancelled, crate::hrtimer::WrongCpu>>>,
        /// An interrupt taken during the next deferred callback: the wake-up's expiry at this
        /// clock, run from inside the callback (set back to `None` when taken).
        pub(crate) interrupt_during_deferred: StdMutex<Option<u64>>,
        /// Tags of the callbacks running now (a deferred one stays while a nested expiry
        /// runs), and for each callback run the tags that were running when it began.
        pub(crate) running: StdMutex<Vec<u64>>,
        pub(crate) ran_during: StdMutex<Vec<(u64, Vec<u64>)>>,
        /// Its local device's driver (to make it refuse deadlines).
        pub(crate) driver: &'static FakeDriver,
        /// The CPU whose timers it adopted, whose handles table its expiry asks for them.
        pub(crate) peer: std::sync::OnceLock<Arc<Owner>>,
    }

    impl Owner {
        pub(crate) fn new(handles: usize, inbox: usize) -> Arc<Owner> {
            Owner::on(1, handles, inbox)
        }

        /// CPU `cpu`, with its own local device.
        pub(crate) fn on(cpu: usize, handles: usize, inbox: usize) -> Arc<Owner> {
            let driver = FakeDriver::leak();
            let device = Arc::new(ClockEventDevice::new(
                spec("local", 100, CpuSet::single(cpu), Features::PER_CPU),
                driver,
            ));
            let bc = spin::Mutex::new(Broadcast::new());
            let mut tick = CpuTick::new(cpu, TickMode::Oneshot, 0, 4);
            tick.reserve_for_handles(handles);
            tick.assign(Service::Local(DeviceId(cpu)), Some(device), 0, &bc);
            Arc::new(Owner {
                peer: std::sync::OnceLock::new(),
                tick: spin::Mutex::new(tick),
                bc,
                clock: AtomicU64::new(0),
                handles: Handles::new(cpu, handles),
                inbox: Inbox::new(inbox),
                ran: StdMutex::new(Vec::new()),
                during_run: StdMutex::new(None),
                cancels_during_run: StdMutex::new(Vec::new()),
                interrupt_during_deferred: StdMutex::new(None),
                running: StdMutex::new(Vec::new()),
                ran_during: StdMutex::new(Vec::new()),
                driver,
            })
        }

        /// Back online at `now` after [`leave`]: a fresh tick on a fresh local device, its
        /// handles open again (as a kernel brings a CPU back).
        pub(crate) fn back_online(&self, now: u64) {
            let cpu = self.handles.cpu();
            let spec = spec("local", 100, CpuSet::single(cpu), Features::PER_CPU);
            let device = Arc::new(ClockEventDevice::new(spec, self.driver));
            let mut tick = CpuTick::new(cpu, TickMode::Oneshot, now, 4);
            tick.reserve_for_handles(self.handles.capacity());
            tick.assign(Service::Local(DeviceId(cpu)), Some(device), now, &self.bc);
            *self.tick.lock() = tick;
            self.handles.reopen();
        }

        pub(crate) fn post(
            &self,
            deadline_ns: u64,
            tag: u64,
            period_ns: u64,
        ) -> Result<TimerId, Refused<Pay>> {
            self.handles.post(&self.inbox, deadline_ns, |handle| Pay { tag, period_ns, handle: Some(handle) })
        }

        /// The owner's turn at `now`: drain the inbox, then the expiry a wake-up starts.
        pub(crate) fn turn(&self, now: u64) -> Drained {
            self.clock.store(now, Ordering::Relaxed);
            let drained =
                drain(self, &self.inbox, |m| panic!("no other messages here: {m:?}")).expect("not nested");
            let _ = expiry::wakeup(self, now);
            drained
        }

        pub(crate) fn tags_ran(&self) -> Vec<u64> {
            self.ran.lock().unwrap().iter().map(|r| r.0).collect()
        }
    }

    impl ExpiryContext for Owner {
        type Payload = Pay;
        fn with_tick<R>(&self, f: impl FnOnce(&mut CpuTick<Pay>, &spin::Mutex<Broadcast>) -> R) -> Option<R> {
            let mut tick = self.tick.try_lock().expect("only the owner takes its tick, never nested");
            Some(f(&mut tick, &self.bc))
        }
        fn now_ns(&self) -> u64 {
            self.clock.load(Ordering::Relaxed)
        }
        fn run(&self, timer: Expired<Pay>, now_ns: u64) -> Option<(u64, Pay)> {
            let tag = timer.payload.tag;
            self.ran.lock().unwrap().push((tag, timer.deadline_ns, now_ns));
            let running_before = self.running.lock().unwrap().clone();
            self.ran_during.lock().unwrap().push((tag, running_before));
            self.running.lock().unwrap().push(tag);
            if let Some(id) = self.during_run.lock().unwrap().take() {
                self.cancels_during_run.lock().unwrap().push(self.handles.cancel(id));
            }
            if tag & DEFERRED != 0 {
                let nested = self.interrupt_during_deferred.lock().unwrap().take();
                if let Some(at) = nested {
                    // An interrupt in the middle of the deferred callback (interrupts enabled).
                    self.clock.store(at, Ordering::Relaxed);
                    let _ = expiry::wakeup(self, at);
                }
            }
            self.running.lock().unwrap().retain(|&t| t != tag);
            let period = timer.payload.period_ns;
            (period != 0).then(|| (crate::hrtimer::forward(timer.deadline_ns, period, now_ns), timer.payload))
        }
        fn handle_of(&self, payload: &Pay) -> Option<TimerId> {
            payload.handle
        }
        fn handles(&self) -> Option<&Handles<Pay>> {
            Some(&self.handles)
        }
        fn handles_of(&self, cpu: usize) -> Option<&Handles<Pay>> {
            if cpu == self.handles.cpu() {
                return Some(&self.handles);
            }
            self.peer.get().filter(|p| p.handles.cpu() == cpu).map(|p| &p.handles)
        }
        fn is_deferred(&self, payload: &Pay) -> bool {
            payload.tag & DEFERRED != 0
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::harness::{Owner, Pay};
    use super::*;
    use crate::testing::XorShift;
    use alloc::sync::Arc;
    use std::vec;

    #[test]
    fn a_posted_timer_has_its_handle_at_once_and_runs_once_on_its_cpu_never_early() {
        let cpu1 = Owner::new(8, 8);
        let id = cpu1.post(1_000, 7, 0).ok().expect("posted");
        assert_eq!(id.cpu(), 1);
        assert!(Handles::<Pay>::is_handle(id));
        assert_eq!(cpu1.turn(500), Drained { armed: 1, ..Drained::default() });
        assert!(cpu1.tags_ran().is_empty(), "not before its deadline");
        cpu1.turn(1_000);
        cpu1.turn(5_000);
        assert_eq!(cpu1.tags_ran(), vec![7], "once");
        assert_eq!(cpu1.handles.cancel(id), Ok(Cancelled::Inactive), "it already ran");
        assert_eq!(cpu1.handles.in_use(), 0, "its slot is free again");
    }

    #[test]
    fn a_cancel_that_overtakes_its_arm_stops_it() {
        let cpu1 = Owner::new(8, 8);
        let id = cpu1.post(1_000, 7, 0).ok().unwrap();
        assert_eq!(cpu1.handles.cancel(id), Ok(Cancelled::Pending));
        cpu1.inbox.try_send(Handles::<Pay>::cancel_message(id)).unwrap();
        assert_eq!(cpu1.turn(2_000), Drained { reclaimed: 1, ..Drained::default() });
        assert!(cpu1.tags_ran().is_empty());
        assert_eq!(cpu1.tick.lock().pending(), 0, "never queued");
        assert_eq!(cpu1.handles.cancel(id), Ok(Cancelled::Inactive), "cancelled once");
        assert_eq!(cpu1.handles.in_use(), 0);
    }

    #[test]
    fn a_cancel_message_that_comes_before_its_arm_message_reclaims_it_and_the_arm_is_ignored() {
        // Delivered out of order (a platform whose messages can be reordered).
        let cpu1 = Owner::new(8, 8);
        let id = cpu1.post(1_000, 7, 0).ok().unwrap();
        let arm = cpu1.inbox.receiver().unwrap().recv().expect("the arm");
        assert_eq!(cpu1.handles.cancel(id), Ok(Cancelled::Pending));
        cpu1.inbox.try_send(Handles::<Pay>::cancel_message(id)).unwrap();
        cpu1.inbox.try_send(arm).unwrap();
        assert_eq!(cpu1.turn(2_000), Drained { reclaimed: 1, ..Drained::default() });
        assert!(cpu1.tags_ran().is_empty());
        assert_eq!(cpu1.tick.lock().pending(), 0, "the late arm armed nothing");
    }

    #[test]
    fn a_cancel_after_the_arm_landed_stops_it_even_if_its_message_is_lost() {
        let cpu1 = Owner::new(8, 8);
        let id = cpu1.post(1_000, 7, 0).ok().unwrap();
        cpu1.turn(10);
        assert_eq!(cpu1.tick.lock().pending(), 1);
        assert_eq!(cpu1.handles.cancel(id), Ok(Cancelled::Pending));
        // No cancel message (the owner's inbox was full): found cancelled at the deadline.
        cpu1.turn(2_000);
        assert!(cpu1.tags_ran().is_empty(), "a timer answered cancelled never runs");
        assert_eq!(cpu1.handles.in_use(), 0, "reclaimed at its deadline");
        assert_eq!(cpu1.tick.lock().pending(), 0);
    }

    #[test]
    fn a_cancel_while_it_runs_answers_running_and_a_periodic_timer_is_not_rearmed() {
        let cpu1 = Owner::new(8, 8);
        let id = cpu1.post(1_000, 7, 1_000).ok().unwrap();
        cpu1.turn(1_000);
        cpu1.turn(2_000);
        assert_eq!(cpu1.tags_ran(), vec![7, 7], "periodic");
        *cpu1.during_run.lock().unwrap() = Some(id);
        cpu1.turn(3_000);
        assert_eq!(*cpu1.cancels_during_run.lock().unwrap(), vec![Ok(Cancelled::Running)]);
        cpu1.turn(10_000);
        assert_eq!(cpu1.tags_ran(), vec![7, 7, 7], "not re-armed after the cancel");
        assert_eq!(cpu1.handles.in_use(), 0);
        assert_eq!(cpu1.tick.lock().pending(), 0);
    }

    #[test]
    fn an_old_handle_never_reaches_a_later_timer_in_its_slot() {
        let cpu1 = Owner::new(1, 8);
        let old = cpu1.post(100, 1, 0).ok().unwrap();
        cpu1.turn(200);
        let new = cpu1.post(1_000, 2, 0).ok().unwrap();
        assert_eq!(old.parts().1, new.parts().1, "the same slot");
        assert_eq!(cpu1.handles.cancel(old), Ok(Cancelled::Inactive));
        cpu1.turn(300);
        cpu1.turn(1_000);
        assert_eq!(cpu1.tags_ran(), vec![1, 2], "the new timer was not cancelled by the old handle");
    }

    #[test]
    fn full_tables_and_inboxes_refuse_with_the_payload_back_and_arm_nothing() {
        let cpu1 = Owner::new(2, 2);
        cpu1.post(100, 1, 0).ok().unwrap();
        cpu1.post(100, 2, 0).ok().unwrap();
        let refused = cpu1.post(100, 3, 0).expect_err("no handle left");
        assert_eq!(refused.error, ArmError::HandlesFull { cpu: 1, capacity: 2 });
        assert_eq!(refused.payload.tag, 3);
        cpu1.turn(200);
        assert_eq!(cpu1.tags_ran(), vec![1, 2]);
        // A table with room, an inbox without.
        let cpu1 = Owner::new(8, 2);
        cpu1.post(100, 1, 0).ok().unwrap();
        cpu1.post(100, 2, 0).ok().unwrap();
        let refused = cpu1.post(100, 3, 0).expect_err("the inbox is full");
        assert_eq!(refused.error, ArmError::InboxFull { cpu: 1 });
        assert_eq!(cpu1.handles.in_use(), 2, "the refused arm's slot is free");
        cpu1.turn(200);
        assert_eq!(cpu1.tags_ran(), vec![1, 2]);
    }

    /// A device that gives up on a posted timer's deadline when the drain arms it is handed
    /// back by the drain (`Drained::failure`), for the platform to take out: a CPU that posted
    /// to itself drains at once and runs no expiry after, so nothing else would report it, and
    /// its timers would wait on a failed device with nothing armed.
    #[test]
    fn a_device_failure_met_arming_a_posted_timer_comes_back_from_the_drain() {
        let cpu1 = Owner::new(8, 8);
        *cpu1.driver.passes_below_ticks.lock() = u64::MAX;
        cpu1.post(1_000, 7, 0).ok().expect("posted");
        let drained = drain(&*cpu1, &cpu1.inbox, |m| panic!("{m:?}")).expect("not nested");
        assert_eq!(drained.armed, 1);
        assert_eq!(cpu1.tick.lock().take_failure(), None, "the failure left in the tick, unreported");
        assert_eq!(drained.failure.map(|f| f.device), Some(crate::tick::DeviceId(1)));
    }

    #[test]
    fn a_packed_handle_unpacks_to_itself_on_its_cpu() {
        let cpu1 = Owner::new(8, 8);
        let id = cpu1.post(100, 1, 0).ok().unwrap();
        assert_eq!(Handles::<Pay>::unpack(Handles::<Pay>::pack(id)), id);
        let far = TimerId::from_parts(255, HANDLE_BIT | (MAX_HANDLES as u32 - 1), u32::MAX);
        assert_eq!(Handles::<Pay>::unpack(Handles::<Pay>::pack(far)), far, "its CPU travels with it");
    }

    /// CPU 1 goes offline ([`leave`]) and CPU 2 adopts its timers: `cpu2` knows CPU 1's
    /// handles. Returns the handles armed on CPU 1 before: a one-shot (tag 1, at 1 000), a
    /// periodic (tag 2, at 1 000 every 500), a one-shot (tag 3, at 3 000), and one posted but
    /// still in CPU 1's inbox when it left (tag 4, at 2 000).
    fn offline_with_timers() -> (Arc<Owner>, Arc<Owner>, [TimerId; 4]) {
        let cpu1 = Owner::new(8, 8);
        let cpu2 = Owner::on(2, 8, 8);
        cpu2.peer.set(cpu1.clone()).ok().unwrap();
        let a = cpu1.post(1_000, 1, 0).ok().unwrap();
        let b = cpu1.post(1_000, 2, 500).ok().unwrap();
        let c = cpu1.post(3_000, 3, 0).ok().unwrap();
        cpu1.turn(10);
        let d = cpu1.post(2_000, 4, 0).ok().unwrap();
        let timers = leave(&*cpu1, Some(&cpu1.inbox), |m| panic!("no other message: {m:?}"));
        assert_eq!(timers.len(), 4, "the one still in its inbox left too");
        let refused = cpu1.post(1_500, 5, 0).expect_err("CPU 1 is offline");
        assert_eq!(refused.error, ArmError::CpuNotOnline(1));
        let moved = cpu2.tick.lock().adopt(timers, 10, &cpu2.bc).ok().expect("adopted");
        assert_eq!(moved.len(), 4);
        (cpu1, cpu2, [a, b, c, d])
    }

    #[test]
    fn timers_of_a_cpu_gone_offline_run_once_on_their_new_cpu_never_early_and_keep_their_grid() {
        let (cpu1, cpu2, [a, _, c, _]) = offline_with_timers();
        assert_eq!(cpu1.handles.cancel(c), Ok(Cancelled::Pending), "its handle still cancels it");
        for now in [999, 1_000, 1_700, 2_000, 2_600, 3_000, 3_100] {
            cpu2.turn(now);
        }
        let ran = cpu2.ran.lock().unwrap().clone();
        assert!(cpu1.tags_ran().is_empty(), "nothing ran on the CPU gone offline");
        assert!(ran.iter().all(|&(_, deadline, now)| now >= deadline), "never early: {ran:?}");
        let count = |tag| ran.iter().filter(|r| r.0 == tag).count();
        assert_eq!((count(1), count(3), count(4)), (1, 0, 1), "once each, the cancelled one never: {ran:?}");
        let grid: Vec<u64> = ran.iter().filter(|r| r.0 == 2).map(|r| r.1).collect();
        assert_eq!(grid, vec![1_000, 1_500, 2_000, 2_500, 3_000], "the periodic one on its grid");
        assert_eq!(cpu1.handles.cancel(a), Ok(Cancelled::Inactive), "the one-shot already ran");
        assert_eq!(cpu1.handles.in_use(), 1, "the periodic one's slot, the others freed on CPU 2");
    }

    #[test]
    fn a_migrated_periodic_timer_cancelled_through_its_handle_stops_and_frees_its_slot() {
        let (cpu1, cpu2, [_, b, _, _]) = offline_with_timers();
        cpu2.turn(1_000);
        assert_eq!(cpu1.handles.cancel(b), Ok(Cancelled::Pending));
        cpu2.turn(1_500);
        cpu2.turn(2_000);
        let periodic = cpu2.tags_ran().iter().filter(|&&t| t == 2).count();
        assert_eq!(periodic, 1, "not re-armed after the cancel");
    }

    #[test]
    fn a_late_cancel_note_on_the_cpu_gone_offline_frees_no_slot_its_timer_still_uses() {
        // The cancel note of a migrated timer lands in CPU 1's inbox, drained when CPU 1 is
        // back: the slot stays with the timer on CPU 2, so a later post on CPU 1 cannot be
        // given that slot and then lose its timer when CPU 2 frees it at the deadline.
        let (cpu1, cpu2, [_, _, c, _]) = offline_with_timers();
        assert_eq!(cpu1.handles.cancel(c), Ok(Cancelled::Pending));
        cpu1.inbox.try_send(Handles::<Pay>::cancel_message(c)).unwrap();
        cpu1.back_online(20);
        assert_eq!(cpu1.turn(20).reclaimed, 0, "nothing to reclaim on CPU 1");
        // Every slot CPU 1 has free (4 of 8: the migrated timers keep theirs).
        let later: Vec<TimerId> = (0..8).filter_map(|n| cpu1.post(4_000, 10 + n, 0).ok()).collect();
        assert_eq!(later.len(), 4, "the migrated timers' slots stay theirs");
        cpu1.turn(30);
        cpu2.turn(3_500);
        cpu1.turn(4_000);
        assert_eq!(cpu1.tags_ran().len(), later.len(), "every later timer ran: {:?}", cpu1.tags_ran());
    }

    #[test]
    fn another_cpus_handle_or_a_queue_id_is_refused() {
        let cpu1 = Owner::new(8, 8);
        let cpu2 = Handles::<Pay>::new(2, 8);
        let theirs =
            cpu2.post(&Inbox::new(4), 100, |h| Pay { tag: 0, period_ns: 0, handle: Some(h) }).ok().unwrap();
        assert_eq!(cpu1.handles.cancel(theirs), Err(crate::hrtimer::WrongCpu { id_cpu: 2, queue_cpu: 1 }));
        let queue_id = TimerId::from_parts(1, 0, 0);
        assert!(cpu1.handles.cancel(queue_id).is_err(), "a queue's id is no handle");
    }

    /// The owner on its thread (draining, expiring on a clock it moves), two senders arming
    /// timers on it and cancelling some at random moments: every timer whose cancel did not
    /// answer `Pending` runs exactly once, never early; none that did runs; nothing is left.
    #[test]
    fn random_senders_and_the_owner_on_threads_lose_nothing_and_run_nothing_cancelled() {
        for seed in 1..=20u64 {
            let cpu1 = Owner::new(64, 64);
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let owner = {
                let (cpu1, stop) = (cpu1.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut now = 0;
                    while !stop.load(Ordering::Acquire) {
                        now += 37;
                        cpu1.turn(now);
                    }
                    now
                })
            };
            let senders: Vec<_> = (0..2u64)
                .map(|s| {
                    let cpu1 = cpu1.clone();
                    std::thread::spawn(move || {
                        let mut rng = XorShift(seed * 7919 + s);
                        let mut outcomes = Vec::new();
                        let mut live: Vec<(u64, TimerId)> = Vec::new();
                        for n in 0..400u64 {
                            let tag = s << 32 | n;
                            let now = cpu1.clock.load(Ordering::Relaxed);
                            match cpu1.post(now + rng.below(3_000), tag, 0) {
                                Ok(id) => live.push((tag, id)),
                                Err(r) => outcomes.push((r.payload.tag, None)),
                            }
                            if rng.below(3) == 0 && !live.is_empty() {
                                let (tag, id) = live.swap_remove(rng.below(live.len() as u64) as usize);
                                let answer = cpu1.handles.cancel(id).unwrap();
                                if answer == Cancelled::Pending {
                                    let _ = cpu1.inbox.try_send(Handles::<Pay>::cancel_message(id));
                                }
                                outcomes.push((tag, Some(answer)));
                            }
                            for _ in 0..rng.below(50) {
                                core::hint::spin_loop();
                            }
                        }
                        outcomes.extend(live.into_iter().map(|(tag, _)| (tag, Some(Cancelled::Inactive))));
                        outcomes
                    })
                })
                .collect();
            let outcomes: Vec<(u64, Option<Cancelled>)> =
                senders.into_iter().flat_map(|s| s.join().unwrap()).collect();
            stop.store(true, Ordering::Release);
            let now = owner.join().unwrap();
            cpu1.turn(now + 10_000);
            cpu1.turn(now + 20_000);
            let ran = cpu1.ran.lock().unwrap();
            for &(tag, deadline, at) in ran.iter() {
                assert!(
                    at >= deadline,
                    "seed {seed}: timer {tag:#x} ran at {at}, before its deadline {deadline}"
                );
            }
            for (tag, outcome) in outcomes {
                let runs = ran.iter().filter(|r| r.0 == tag).count();
                match outcome {
                    None => assert_eq!(runs, 0, "seed {seed}: a refused arm ran"),
                    Some(Cancelled::Pending) => {
                        assert_eq!(runs, 0, "seed {seed}: {tag:#x} ran after its cancel")
                    }
                    // Running, or never cancelled / cancelled after it ran.
                    Some(_) => assert_eq!(runs, 1, "seed {seed}: timer {tag:#x} ran {runs} times"),
                }
            }
            assert_eq!(cpu1.handles.in_use(), 0, "seed {seed}: slots left in use");
            assert_eq!(cpu1.tick.lock().pending(), 0, "seed {seed}: timers left queued");
        }
    }
}
