//! Loom models of the lock-free rooms (`scripts/loom`: built with `--cfg loom`, so
//! [`crate::sync`] hands out loom's atomics): every interleaving of the threads, and every value
//! the memory model lets each relaxed or acquire load see, up to loom's bounds. Each model is
//! a few sends or one handshake, small enough to explore completely.

use crate::hrtimer::TimerId;
use crate::inbox::{Full, Inbox};
use crate::remote::harness::{Owner, Pay};
use crate::remote::{Cancelled, Handles};
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

/// A timer posted to CPU 1 through its handles, then, at once, the owner draining its inbox
/// and running its expiry past the deadline while another CPU cancels it: in every
/// interleaving the cancel's answer is the truth (pending: it never ran; running or inactive:
/// it ran once) and after one more turn of the owner nothing is left in use.
#[test]
fn handle_cancel_against_drain_and_expiry() {
    explore("handle_cancel_against_drain_and_expiry", Some(3), || {
        let cpu1 = Owner::new(2, 4);
        let id = cpu1.post(100, 7, 0).ok().expect("posted");
        let canceller = {
            let cpu1 = cpu1.clone();
            thread::spawn(move || {
                let answer = cpu1.handles.cancel(id).unwrap();
                if answer == Cancelled::Pending {
                    let _ = cpu1.inbox.try_send(Handles::<Pay>::cancel_message(id));
                }
                answer
            })
        };
        cpu1.turn(200);
        let answer = canceller.join().unwrap();
        cpu1.turn(300);
        let runs = cpu1.tags_ran().len();
        match answer {
            Cancelled::Pending => assert_eq!(runs, 0, "ran after a cancel answered pending"),
            Cancelled::Running | Cancelled::Inactive => assert_eq!(runs, 1, "answered {answer:?}"),
        }
        assert_eq!(
            cpu1.handles.in_use(),
            0,
            "a slot left in use: answer {answer:?}, runs {:?}, {:?}, pending {}",
            cpu1.ran.lock().unwrap(),
            cpu1.handles.states(),
            cpu1.tick.lock().pending()
        );
        assert_eq!(cpu1.tick.lock().pending(), 0, "a timer left queued");
    });
}

/// Two CPUs post to CPU 1 while it drains: each gets its handle, each timer runs once, and the
/// slots' payloads never mix.
#[test]
fn two_posts_against_the_drain() {
    explore("two_posts_against_the_drain", Some(3), || {
        let cpu1 = Owner::new(2, 4);
        let posters: Vec<_> = (0..2u64)
            .map(|tag| {
                let cpu1 = cpu1.clone();
                thread::spawn(move || cpu1.post(100, tag, 0).ok().expect("room for both"))
            })
            .collect();
        cpu1.turn(50);
        let ids: Vec<TimerId> = posters.into_iter().map(|p| p.join().unwrap()).collect();
        assert_ne!(ids[0], ids[1]);
        cpu1.turn(200);
        let mut ran = cpu1.tags_ran();
        ran.sort_unstable();
        assert_eq!(ran, [0, 1], "each once");
        assert_eq!(cpu1.handles.in_use(), 0);
    });
}

/// A post racing with its CPU going offline ([`crate::remote::leave`]: the table closed, the
/// last drain): either the post is refused (`CpuNotOnline`) and nothing left, or it was
/// accepted and its timer is among those that left; never an arm stranded in the inbox.
#[test]
fn a_post_against_its_cpu_going_offline() {
    explore("a_post_against_its_cpu_going_offline", Some(3), || {
        let cpu1 = Owner::new(2, 4);
        let poster = {
            let cpu1 = cpu1.clone();
            thread::spawn(move || cpu1.post(100, 7, 0).map_err(|r| r.error))
        };
        let left = crate::remote::leave(&*cpu1, Some(&cpu1.inbox), |m| panic!("no other message: {m:?}"));
        let posted = poster.join().unwrap();
        match posted {
            Ok(_) => assert_eq!(left.len(), 1, "an accepted post did not leave with its CPU"),
            Err(e) => {
                assert_eq!(e, crate::tick::ArmError::CpuNotOnline(1));
                assert!(left.is_empty());
            }
        }
        assert!(cpu1.inbox.receiver().unwrap().recv().is_none(), "an arm stranded in the inbox");
    });
}
