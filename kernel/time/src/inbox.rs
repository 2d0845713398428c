//! Each CPU's inbox of cross-CPU messages: bounded, lock-free, many senders (any CPU, any
//! context, interrupts included), one receiver (the CPU that owns it). Slots are preallocated
//! when the inbox is made and nothing allocates afterwards; a message is a few `u64` words
//! kept in atomics (the crate has no `unsafe`, so no `UnsafeCell`), so it is small `Copy` data:
//! a payload that cannot be encoded (a boxed closure) lives in a slot of a table the sender and
//! the owner share, and the message carries that slot's index.
//!
//! The ring is Dmitry Vyukov's bounded queue reduced to one consumer: every slot has a
//! sequence number that says whose turn it is.
//!
//! ```text
//!   slot i's sequence   meaning                                   who moves it on
//!   p                   free for the send at position p           the sender claiming p
//!   p + 1               holds the message of position p           the receiver, to p + capacity
//! ```
//!
//! A sender claims position `p` (compare-and-swap on the tail) only when slot `p % capacity`
//! reads `p` (acquire: the receiver is done with its previous message), writes its words, then
//! publishes them with the sequence `p + 1` (release). The receiver reads slot `head` only when
//! it reads `head + 1` (acquire), and hands it back with `head + capacity` (release) after
//! reading the words. So the words of one message are all written by one send and read by one
//! receive, never mixed with another's (never torn), each message is received once, and
//! messages leave in the order their positions were claimed: one sender's messages in the order
//! it sent them (per-sender FIFO; senders on different CPUs race for positions).
//!
//! **Full.** [`Inbox::try_send`] never blocks and never spins unboundedly: it answers
//! [`Full`], handing the message back, when the slot of the next position still holds an
//! unreceived message, or when `capacity` attempts to claim a position were each overtaken by
//! another sender's claim (the inbox turned over a whole ring meanwhile: as busy as full). The
//! sender decides: retry later (e.g. from its next tick), or report an error. Each refusal is
//! counted ([`Inbox::refused`]).
//!
//! **Wake-up.** A send claimed but not yet published holds the receiver up at its position:
//! [`Receiver::recv`] answers `None` there even if later messages are ready. Nothing is
//! stranded as long as every sender wakes the owner (an IPI) after its send succeeded: the
//! late sender's wake-up comes after its message, and the owner then drains all of them.
//! Senders should send with interrupts off, so that the window stays a few instructions long.

use crate::hrtimer::TimerId;
use crate::sync::{AtomicBool, AtomicU64, Ordering};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;

/// The most `u64` words one message may take.
pub const MAX_WORDS: usize = 3;

/// The smallest capacity: with one slot, "free for the next lap" and "holds a message" would
/// be the same sequence number.
pub const MIN_CAPACITY: usize = 2;

/// The largest capacity [`Inbox::new`] allocates (`2^20` slots).
pub const MAX_CAPACITY: usize = 1 << 20;

/// A message an [`Inbox`] carries: small `Copy` data, encoded as `WORDS` `u64` words.
///
/// `decode` is called only with the words `encode` returned for one message (the inbox never
/// tears or invents one); the words past `WORDS` are zero.
///
/// ```
/// use kernel_time::inbox::{Inbox, Message, MAX_WORDS};
///
/// /// A wake-up with the sender's CPU.
/// #[derive(Debug, Clone, Copy, PartialEq)]
/// struct Kick { from_cpu: u32 }
///
/// impl Message for Kick {
///     const WORDS: usize = 1;
///     fn encode(&self) -> [u64; MAX_WORDS] {
///         [u64::from(self.from_cpu), 0, 0]
///     }
///     fn decode(words: [u64; MAX_WORDS]) -> Kick {
///         Kick { from_cpu: words[0] as u32 }
///     }
/// }
///
/// let inbox = Inbox::new(8);
/// inbox.try_send(Kick { from_cpu: 1 }).unwrap();
/// let mut receiver = inbox.receiver().expect("the owner's, taken once");
/// assert_eq!(receiver.recv(), Some(Kick { from_cpu: 1 }));
/// assert_eq!(receiver.recv(), None);
/// ```
pub trait Message: Copy {
    /// How many words a message takes in its slot, 1 to [`MAX_WORDS`] (checked when an inbox
    /// is made, at compile time).
    const WORDS: usize;

    /// The message as words; only the first `WORDS` are kept.
    fn encode(&self) -> [u64; MAX_WORDS];

    /// The message `encode` made these words of.
    fn decode(words: [u64; MAX_WORDS]) -> Self;
}

/// A plain word (a test's counter, an index into a table of one's own).
impl Message for u64 {
    const WORDS: usize = 1;
    fn encode(&self) -> [u64; MAX_WORDS] {
        [*self, 0, 0]
    }
    fn decode(words: [u64; MAX_WORDS]) -> u64 {
        words[0]
    }
}

/// Two words.
impl Message for [u64; 2] {
    const WORDS: usize = 2;
    fn encode(&self) -> [u64; MAX_WORDS] {
        [self[0], self[1], 0]
    }
    fn decode(words: [u64; MAX_WORDS]) -> [u64; 2] {
        [words[0], words[1]]
    }
}

/// Three words.
impl Message for [u64; 3] {
    const WORDS: usize = 3;
    fn encode(&self) -> [u64; MAX_WORDS] {
        *self
    }
    fn decode(words: [u64; MAX_WORDS]) -> [u64; 3] {
        words
    }
}

/// What one CPU asks of another's time core. Payloads that are not plain data (a timer's
/// callback) wait in a slot of a table the sender and the owner share
/// ([`crate::remote::Handles`]); the message carries the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeMessage {
    /// Arm the timer at `deadline_ns` (with `slack_ns`) whose payload waits in slot `slot`
    /// (generation `generation`) of the owner's [`crate::remote::Handles`].
    Arm {
        /// The payload's slot.
        slot: u32,
        /// The slot's generation when the arm was posted.
        generation: u32,
        /// The deadline, in ns on the clocksource's timeline.
        deadline_ns: u64,
        /// The slack: it may run until `deadline_ns + slack_ns` (32 bits, up to 4.29 s).
        slack_ns: u32,
    },
    /// Cancel the owner's timer `id` (an id of another CPU is refused there, `WrongCpu`).
    Cancel {
        /// The timer.
        id: TimerId,
    },
    /// Look at the queue and the next event again (e.g. woken by the broadcast device).
    Wake,
    /// Carry out the registry's assignment numbered `sequence`, waiting in the owner's slot.
    Assignment {
        /// The assignment's number ([`crate::tick::Assignment::sequence`]).
        sequence: u64,
    },
    /// Run the function waiting in table slot `slot`.
    Call {
        /// The function's slot.
        slot: u32,
    },
}

// Word 0: the kind in its low byte, a 32-bit field (slot, CPU) in its high half. Word 1: a
// 64-bit field (deadline, sequence, slot and generation). Word 2 (an arm's): its generation
// in the low half, its slack in the high half. Kind 0 is no message.
const ARM: u64 = 1;
const CANCEL: u64 = 2;
const WAKE: u64 = 3;
const ASSIGNMENT: u64 = 4;
const CALL: u64 = 5;

impl Message for TimeMessage {
    const WORDS: usize = 3;

    fn encode(&self) -> [u64; MAX_WORDS] {
        let (kind, high, second) = match *self {
            TimeMessage::Arm { slot, generation, deadline_ns, slack_ns } => {
                return [
                    u64::from(slot) << 32 | ARM,
                    deadline_ns,
                    u64::from(slack_ns) << 32 | u64::from(generation),
                ];
            }
            TimeMessage::Cancel { id } => {
                let (cpu, slot, generation) = id.parts();
                (CANCEL, cpu, u64::from(slot) << 32 | u64::from(generation))
            }
            TimeMessage::Wake => (WAKE, 0, 0),
            TimeMessage::Assignment { sequence } => (ASSIGNMENT, 0, sequence),
            TimeMessage::Call { slot } => (CALL, slot, 0),
        };
        [u64::from(high) << 32 | kind, second, 0]
    }

    fn decode(words: [u64; MAX_WORDS]) -> TimeMessage {
        let [first, second, third] = words;
        let high = (first >> 32) as u32;
        match first & 0xff {
            ARM => TimeMessage::Arm {
                slot: high,
                generation: third as u32,
                deadline_ns: second,
                slack_ns: (third >> 32) as u32,
            },
            CANCEL => {
                TimeMessage::Cancel { id: TimerId::from_parts(high, (second >> 32) as u32, second as u32) }
            }
            WAKE => TimeMessage::Wake,
            ASSIGNMENT => TimeMessage::Assignment { sequence: second },
            CALL => TimeMessage::Call { slot: high },
            kind => {
                unreachable!("inbox: kind {kind} is no TimeMessage's (decode got words encode did not make)")
            }
        }
    }
}

/// A refused send: the inbox was full (or turned over a whole ring while this send tried to
/// claim a slot). The message comes back; nothing was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full<M>(pub M);

impl<M> Full<M> {
    /// The message that was not sent.
    pub fn into_inner(self) -> M {
        self.0
    }
}

impl<M> fmt::Display for Full<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("inbox full: message refused")
    }
}

impl<M: fmt::Debug> core::error::Error for Full<M> {}

/// A cache line of its own for the senders' shared position, away from the receiver's.
#[repr(align(64))]
struct CacheLine<T>(T);

/// One CPU's inbox: any CPU sends ([`try_send`](Self::try_send)), the owner receives through
/// its [`Receiver`] (one at a time, [`receiver`](Self::receiver)).
pub struct Inbox<M: Message> {
    /// The next position a sender claims.
    tail: CacheLine<AtomicU64>,
    /// The next position to receive, kept here while no [`Receiver`] is out.
    head: AtomicU64,
    receiver_out: AtomicBool,
    refused: AtomicU64,
    mask: u64,
    /// Per slot: whose turn it is (see the module's table).
    sequences: Box<[AtomicU64]>,
    /// `M::WORDS` words per slot.
    words: Box<[AtomicU64]>,
    message: PhantomData<fn(M) -> M>,
}

impl<M: Message> Inbox<M> {
    /// An empty inbox of `capacity` slots, allocated now; nothing allocates afterwards.
    /// `capacity` must be a power of two from [`MIN_CAPACITY`] to [`MAX_CAPACITY`]; another is
    /// replaced by the next power of two within those bounds, with one warning line.
    pub fn new(capacity: usize) -> Inbox<M> {
        const {
            assert!(M::WORDS >= 1 && M::WORDS <= MAX_WORDS, "Message::WORDS must be 1 to MAX_WORDS");
        }
        let slots = capacity.clamp(MIN_CAPACITY, MAX_CAPACITY).next_power_of_two();
        if slots != capacity {
            log::warn!(
                "inbox: capacity {capacity} is not a power of two from {MIN_CAPACITY} to {MAX_CAPACITY}; using {slots}"
            );
        }
        Inbox {
            tail: CacheLine(AtomicU64::new(0)),
            head: AtomicU64::new(0),
            receiver_out: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            mask: slots as u64 - 1,
            sequences: (0..slots as u64).map(AtomicU64::new).collect::<Vec<_>>().into_boxed_slice(),
            words: (0..slots * M::WORDS).map(|_| AtomicU64::new(0)).collect::<Vec<_>>().into_boxed_slice(),
            message: PhantomData,
        }
    }

    /// How many messages it holds at most.
    pub fn capacity(&self) -> usize {
        self.sequences.len()
    }

    /// How many sends it refused ([`Full`]) so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Sends `message` to the owner, from any CPU and any context: never blocks, never
    /// allocates, tries at most `capacity` times to claim a slot. `Err(Full(message))`: not
    /// sent (full, see the module's notes), the message is handed back. After `Ok`, wake the
    /// owner (an IPI): the message is visible to its next [`Receiver::recv`].
    pub fn try_send(&self, message: M) -> Result<(), Full<M>> {
        let mut position = self.tail.0.load(Ordering::Relaxed);
        for _ in 0..self.capacity() {
            let slot = (position & self.mask) as usize;
            let sequence = self.sequences[slot].load(Ordering::Acquire);
            match sequence.wrapping_sub(position) as i64 {
                0 => match self.tail.0.compare_exchange(
                    position,
                    position.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        let words = message.encode();
                        let base = slot * M::WORDS;
                        for (cell, word) in self.words[base..base + M::WORDS].iter().zip(words) {
                            cell.store(word, Ordering::Relaxed);
                        }
                        self.sequences[slot].store(position.wrapping_add(1), Ordering::Release);
                        return Ok(());
                    }
                    // Another sender claimed it first: try the position after its.
                    Err(now) => position = now,
                },
                // The slot still holds the message of a lap ago: full.
                lag if lag < 0 => break,
                // Another sender claimed this position since the tail was read.
                _ => position = self.tail.0.load(Ordering::Relaxed),
            }
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(Full(message))
    }

    /// The owner's receiving end, if no other is out: `None` while one is. Keep it where only
    /// the owner reaches it (its per-CPU data); dropping it gives it back, with its position.
    pub fn receiver(&self) -> Option<Receiver<'_, M>> {
        self.receiver_out.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).ok()?;
        Some(Receiver { inbox: self, head: self.head.load(Ordering::Relaxed) })
    }
}

impl<M: Message> fmt::Debug for Inbox<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("capacity", &self.capacity())
            .field("refused", &self.refused())
            .finish_non_exhaustive()
    }
}

/// The receiving end of an [`Inbox`]: one at a time ([`Inbox::receiver`]), and `recv` takes
/// it by `&mut`, so there is one consumer by construction.
pub struct Receiver<'a, M: Message> {
    inbox: &'a Inbox<M>,
    /// The next position to receive.
    head: u64,
}

impl<M: Message> Receiver<'_, M> {
    /// The oldest message, or `None` if the next one is not there (yet: a send claimed but not
    /// yet published answers `None` too, and its sender's wake-up follows).
    pub fn recv(&mut self) -> Option<M> {
        let inbox = self.inbox;
        let slot = (self.head & inbox.mask) as usize;
        if inbox.sequences[slot].load(Ordering::Acquire) != self.head.wrapping_add(1) {
            return None;
        }
        let mut words = [0; MAX_WORDS];
        let base = slot * M::WORDS;
        for (word, cell) in words.iter_mut().zip(&inbox.words[base..base + M::WORDS]) {
            *word = cell.load(Ordering::Relaxed);
        }
        // Hand the slot to the sender of the next lap, after the words were read.
        inbox.sequences[slot].store(self.head.wrapping_add(inbox.mask + 1), Ordering::Release);
        self.head = self.head.wrapping_add(1);
        Some(M::decode(words))
    }

    /// Receives up to `capacity` messages, handing each to `handle`; returns how many. Bounded,
    /// so senders that keep sending cannot keep an interrupt handler in here.
    pub fn drain(&mut self, mut handle: impl FnMut(M)) -> usize {
        let mut received = 0;
        while received < self.inbox.capacity() {
            let Some(message) = self.recv() else { break };
            handle(message);
            received += 1;
        }
        received
    }

    /// The inbox it receives from.
    pub fn inbox(&self) -> &Inbox<M> {
        self.inbox
    }
}

impl<M: Message> Drop for Receiver<'_, M> {
    fn drop(&mut self) {
        self.inbox.head.store(self.head, Ordering::Relaxed);
        self.inbox.receiver_out.store(false, Ordering::Release);
    }
}

impl<M: Message> fmt::Debug for Receiver<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver").field("inbox", self.inbox).field("head", &self.head).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use alloc::sync::Arc;
    use proptest::prelude::*;

    #[test]
    fn messages_come_out_in_order_across_many_laps_of_the_ring() {
        let inbox = Inbox::new(4);
        let mut receiver = inbox.receiver().unwrap();
        let mut next = 0u64;
        for round in 0..10u64 {
            for i in 0..3 {
                inbox.try_send(round * 3 + i).unwrap();
            }
            for _ in 0..3 {
                assert_eq!(receiver.recv(), Some(next));
                next += 1;
            }
            assert_eq!(receiver.recv(), None, "empty after each round");
        }
        assert_eq!(inbox.refused(), 0);
    }

    #[test]
    fn a_full_inbox_refuses_hands_the_message_back_and_counts() {
        let inbox = Inbox::new(4);
        for i in 0..4u64 {
            inbox.try_send([i, !i]).unwrap();
        }
        assert_eq!(inbox.try_send([9, 9]), Err(Full([9, 9])));
        assert_eq!(inbox.try_send([8, 8]).map_err(Full::into_inner), Err([8, 8]));
        assert_eq!(inbox.refused(), 2);
        let mut receiver = inbox.receiver().unwrap();
        assert_eq!(receiver.recv(), Some([0, !0]));
        inbox.try_send([4, !4]).expect("a slot was freed");
        let mut got = Vec::new();
        assert_eq!(receiver.drain(|m| got.push(m[0])), 4);
        assert_eq!(got, [1, 2, 3, 4], "the refused messages were never sent");
        assert_eq!(inbox.refused(), 2);
    }

    #[test]
    fn drain_takes_at_most_a_ring() {
        let inbox = Inbox::new(2);
        let mut receiver = inbox.receiver().unwrap();
        inbox.try_send(1u64).unwrap();
        inbox.try_send(2u64).unwrap();
        let mut seen = Vec::new();
        // The handler sends again each time: the drain stops after one ring.
        let received = receiver.drain(|m| {
            seen.push(m);
            inbox.try_send(m + 10).unwrap();
        });
        assert_eq!(received, 2);
        assert_eq!(seen, [1, 2]);
        assert_eq!(receiver.recv(), Some(11));
    }

    #[test]
    fn one_receiver_at_a_time_and_it_keeps_its_place() {
        let inbox = Inbox::new(8);
        for i in 0..3u64 {
            inbox.try_send(i).unwrap();
        }
        let mut first = inbox.receiver().expect("free");
        assert!(inbox.receiver().is_none(), "a second receiver while one is out");
        assert_eq!(first.recv(), Some(0));
        drop(first);
        let mut second = inbox.receiver().expect("given back");
        assert_eq!(second.recv(), Some(1), "received messages are not received again");
        assert_eq!(second.inbox().capacity(), 8);
    }

    #[test]
    fn a_capacity_that_is_no_power_of_two_is_rounded_up() {
        assert_eq!(Inbox::<u64>::new(0).capacity(), MIN_CAPACITY);
        assert_eq!(Inbox::<u64>::new(1).capacity(), MIN_CAPACITY);
        assert_eq!(Inbox::<u64>::new(5).capacity(), 8);
        assert_eq!(Inbox::<u64>::new(64).capacity(), 64);
        // Capacity 2 still tells "full" from "free": the smallest ring works.
        let inbox = Inbox::new(2);
        inbox.try_send(1u64).unwrap();
        inbox.try_send(2u64).unwrap();
        assert_eq!(inbox.try_send(3u64), Err(Full(3)));
    }

    #[test]
    #[cfg_attr(miri, ignore = "allocates 2^20 slots: minutes under Miri")]
    fn a_capacity_past_the_maximum_is_clamped() {
        assert_eq!(Inbox::<u64>::new(usize::MAX).capacity(), MAX_CAPACITY);
    }

    #[test]
    fn every_time_message_comes_out_as_it_went_in() {
        let inbox = Inbox::new(8);
        let messages = [
            TimeMessage::Arm {
                slot: u32::MAX,
                generation: u32::MAX,
                deadline_ns: u64::MAX,
                slack_ns: u32::MAX,
            },
            TimeMessage::Arm { slot: 0, generation: 1, deadline_ns: 2, slack_ns: 0 },
            TimeMessage::Cancel { id: TimerId::from_parts(3, u32::MAX, 7) },
            TimeMessage::Wake,
            TimeMessage::Assignment { sequence: 1 << 63 },
            TimeMessage::Call { slot: 0 },
        ];
        for m in messages {
            inbox.try_send(m).unwrap();
        }
        let mut receiver = inbox.receiver().unwrap();
        for m in messages {
            assert_eq!(receiver.recv(), Some(m));
        }
    }

    fn time_message() -> impl Strategy<Value = TimeMessage> {
        prop_oneof![
            (any::<u32>(), any::<u64>(), any::<u32>()).prop_map(|(slot, deadline_ns, slack_ns)| {
                TimeMessage::Arm { slot, generation: slot.rotate_left(7), deadline_ns, slack_ns }
            }),
            (any::<u32>(), any::<u32>(), any::<u32>())
                .prop_map(|(c, s, g)| TimeMessage::Cancel { id: TimerId::from_parts(c, s, g) }),
            Just(TimeMessage::Wake),
            any::<u64>().prop_map(|sequence| TimeMessage::Assignment { sequence }),
            any::<u32>().prop_map(|slot| TimeMessage::Call { slot }),
        ]
    }

    proptest! {
        /// Any message decodes to itself, and only its first `WORDS` words carry it.
        #[test]
        fn random_time_messages_round_trip(m in time_message()) {
            let words = m.encode();
            prop_assert!(words[TimeMessage::WORDS..].iter().all(|&w| w == 0));
            prop_assert_eq!(TimeMessage::decode(words), m);
        }
    }

    /// Four senders on real threads, each sending numbered three-word messages (sender,
    /// number, checksum) into a small inbox, retrying when refused; the receiver on this
    /// thread. Every message arrives once, each sender's in order, none torn.
    #[test]
    fn stress_many_senders_lose_nothing_and_keep_each_senders_order() {
        const SENDERS: u64 = 4;
        let per_sender: u64 = if cfg!(debug_assertions) { 250_000 } else { 1_000_000 };
        let inbox = Arc::new(Inbox::<[u64; 3]>::new(64));
        let senders: Vec<_> = (0..SENDERS)
            .map(|sender| {
                let inbox = inbox.clone();
                std::thread::spawn(move || {
                    for n in 0..per_sender {
                        let mut message = [sender, n, checksum(sender, n)];
                        while let Err(Full(back)) = inbox.try_send(message) {
                            message = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut receiver = inbox.receiver().unwrap();
        let mut next = [0u64; SENDERS as usize];
        let mut received = 0;
        while received < SENDERS * per_sender {
            let Some([sender, n, sum]) = receiver.recv() else {
                std::thread::yield_now();
                continue;
            };
            assert_eq!(sum, checksum(sender, n), "torn message {sender}/{n}");
            assert_eq!(n, next[sender as usize], "sender {sender}: lost, duplicated or reordered");
            next[sender as usize] += 1;
            received += 1;
        }
        for sender in senders {
            sender.join().unwrap();
        }
        assert_eq!(receiver.recv(), None, "nothing more than was sent");
        std::println!("stress: {received} messages, {} refusals (full)", inbox.refused());
    }

    fn checksum(sender: u64, n: u64) -> u64 {
        (sender << 48 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}
