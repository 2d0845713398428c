//! Loom models of the lock-free rooms (`scripts/loom`: built with `--cfg loom`, so
//! [`crate::sync`] hands out loom's atomics): every interleaving of the threads, and every value
//! the memory model lets each relaxed or acquire load see, up to loom's bounds. Each model is
//! a few sends or one handshake, small enough to explore completely.

use crate::hrtimer::TimerId;
use crate::inbox::{Full, Inbox};
use crate::remote::RemoteArm;
use loom::sync::Arc;
use loom::thread;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `model` under loom, exploring every execution, or those with at most `preemptions`
/// preemptions if given (`LOOM_MAX_PREEMPTIONS` overrides it), and prints how many
/// executions it explored (`scripts/loom --nocapture` shows them).
fn explore(name: &str, preemptions: Option<usize>, model: impl Fn() + Sync + Send + 'static) {
    let executions = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = executions.clone();
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = preemptions;
    }
    let bound = builder.preemption_bound;
    builder.check(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        model();
    });
    let executions = executions.load(Ordering::Relaxed);
    match bound {
        Some(bound) => std::println!("loom: {name}: {executions} executions (at most {bound} preemptions)"),
        None => std::println!("loom: {name}: {executions} executions (all)"),
    }
}

/// A two-word message: sender and number, and a check word that a torn message fails.
fn message(sender: u64, n: u64) -> [u64; 2] {
    [sender << 32 | n, !(sender << 32 | n)]
}

/// The sender and number of a received message, after checking it is whole.
fn open([word, check]: [u64; 2]) -> (u64, u64) {
    assert_eq!(check, !word, "torn message");
    (word >> 32, word & 0xffff_ffff)
}

/// Two senders, `counts[s]` messages from sender `s`, and the receiver, all at once: every
/// message is received exactly once, each sender's in order, none torn.
fn two_senders_and_the_receiver(counts: [u64; 2]) {
    let inbox = Arc::new(Inbox::new(4));
    let senders: Vec<_> = (0..2)
        .map(|sender| {
            let inbox = inbox.clone();
            thread::spawn(move || {
                for n in 0..counts[sender as usize] {
                    inbox.try_send(message(sender, n)).expect("never full: at most 4 messages, 4 slots");
                }
            })
        })
        .collect();
    let mut receiver = inbox.receiver().unwrap();
    let mut next = [0; 2];
    while next != counts {
        match receiver.recv() {
            Some(m) => {
                let (sender, n) = open(m);
                assert_eq!(n, next[sender as usize], "sender {sender}: out of order or twice");
                next[sender as usize] += 1;
            }
            None => thread::yield_now(),
        }
    }
    for sender in senders {
        sender.join().unwrap();
    }
    assert_eq!(receiver.recv(), None, "nothing more than was sent");
}

/// One message from each sender: every execution.
#[test]
fn inbox_two_senders_and_the_receiver_all_executions() {
    explore("inbox_two_senders_and_the_receiver_all_executions", None, || {
        two_senders_and_the_receiver([1, 1])
    });
}

/// Two messages from each sender, with at most 3 preemptions (unbounded, this one takes many
/// minutes).
#[test]
fn inbox_two_senders_and_the_receiver_bounded() {
    explore("inbox_two_senders_and_the_receiver_bounded", Some(3), || two_senders_and_the_receiver([2, 2]));
}

/// One sender, three messages through two slots while the receiver takes them: the ring
/// wraps; a refused send hands its message back, is counted, and the retry delivers it in
/// order.
#[test]
fn inbox_full_refuses_and_the_ring_wraps() {
    explore("inbox_full_refuses_and_the_ring_wraps", None, || {
        let inbox = Arc::new(Inbox::new(2));
        let sender = {
            let inbox = inbox.clone();
            thread::spawn(move || {
                let mut refusals = 0;
                for n in 0..3 {
                    while let Err(Full(back)) = inbox.try_send(message(0, n)) {
                        assert_eq!(back, message(0, n), "the refused message comes back whole");
                        refusals += 1;
                        thread::yield_now();
                    }
                }
                refusals
            })
        };
        let mut receiver = inbox.receiver().unwrap();
        let mut next = 0;
        while next < 3 {
            match receiver.recv() {
                Some(m) => {
                    assert_eq!(open(m), (0, next));
                    next += 1;
                }
                None => thread::yield_now(),
            }
        }
        let refusals = sender.join().unwrap();
        assert_eq!(inbox.refused(), refusals);
        assert_eq!(receiver.recv(), None);
    });
}

/// Two senders race for the last free slot (one slot of two holds a message): exactly one
/// wins, the other's message comes back, and the receiver gets the old message and the
/// winner's.
#[test]
fn inbox_two_senders_race_for_the_last_slot() {
    explore("inbox_two_senders_race_for_the_last_slot", None, || {
        let inbox = Arc::new(Inbox::new(2));
        inbox.try_send(message(9, 0)).unwrap();
        let senders: Vec<_> = (0..2)
            .map(|sender| {
                let inbox = inbox.clone();
                thread::spawn(move || match inbox.try_send(message(sender, 0)) {
                    Ok(()) => Some(sender),
                    Err(Full(back)) => {
                        assert_eq!(back, message(sender, 0));
                        None
                    }
                })
            })
            .collect();
        let winners: Vec<u64> = senders.into_iter().filter_map(|s| s.join().unwrap()).collect();
        assert_eq!(winners.len(), 1, "exactly one sender gets the last slot");
        assert_eq!(inbox.refused(), 1);
        let mut receiver = inbox.receiver().unwrap();
        assert_eq!(receiver.recv().map(open), Some((9, 0)));
        assert_eq!(receiver.recv().map(open), Some((winners[0], 0)));
        assert_eq!(receiver.recv(), None);
    });
}

/// What the owner did with a posted arm.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Owner {
    /// Saw it abandoned before arming: not armed.
    NotArmed,
    /// Armed it and delivered the id.
    Delivered,
    /// Armed it, then learned it was abandoned: cancelled at once.
    Cancelled,
}

/// The owner arms and delivers while the caller looks once and gives up: in every
/// interleaving exactly one of {the caller holds the id, the owner saw it abandoned}, and the
/// id the caller holds is the one delivered, whole.
#[test]
fn remote_arm_deliver_against_abandon() {
    explore("remote_arm_deliver_against_abandon", None, || {
        let ticket = Arc::new(RemoteArm::new());
        let id = TimerId::from_parts(1, 0xdead, 0xbeef);
        let owner = {
            let ticket = ticket.clone();
            thread::spawn(move || {
                if !ticket.wanted() {
                    Owner::NotArmed
                } else if ticket.deliver(id) {
                    Owner::Delivered
                } else {
                    Owner::Cancelled
                }
            })
        };
        let seen = ticket.armed();
        let kept = ticket.abandon();
        let owner = owner.join().unwrap();
        if let Some(seen) = seen {
            assert_eq!(seen, id, "a torn id");
            assert_eq!(kept, Some(seen), "an id seen is kept");
        }
        match (kept, owner) {
            (Some(kept), Owner::Delivered) => assert_eq!(kept, id, "a torn id"),
            (None, Owner::NotArmed | Owner::Cancelled) => {}
            (kept, owner) => panic!("caller kept {kept:?} but the owner {owner:?}: orphan or lost id"),
        }
    });
}
