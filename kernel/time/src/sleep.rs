//! An async sleep: [`Sleep`], a `core::future::Future` that completes at or after its deadline,
//! on any `no_std` executor. Its first poll arms a timer through the platform's
//! [`SleepTimers`]; the timer's expiry ([`Wake::fire`], from the timer's callback, which the
//! time layer runs outside the tick guard) wakes the last waker it was polled with. Dropped
//! before it completes, it cancels its timer.
//!
//! It may be polled on one CPU and then on another: the timer stays where it was armed, and
//! its expiry wakes whatever waker the last poll left, from that CPU. A poll that finds the
//! deadline passed completes whether or not the timer has fired yet (never early: the
//! deadline is checked on the clock, not on the timer). So a wake may be spurious, as any
//! future's may: a poll that finds the deadline passed completes while its timer may still
//! fire (and wake) before the sleep's drop cancels it.
//!
//! ```
//! use core::future::Future;
//! use core::pin::pin;
//! use core::sync::atomic::{AtomicU64, Ordering};
//! use core::task::{Context, Poll, Waker};
//! use kernel_time::instant::Instant;
//! use kernel_time::sleep::{Sleep, SleepTimers, Wake};
//! use std::sync::{Arc, Mutex};
//!
//! /// A platform whose timers fire when the test moves its clock.
//! #[derive(Default)]
//! struct Fake { now: AtomicU64, armed: Mutex<Vec<(u64, Arc<Wake>)>> }
//! impl SleepTimers for Fake {
//!     type Handle = usize;
//!     type Error = ();
//!     fn now(&self) -> Instant { Instant::from_nanos(self.now.load(Ordering::Relaxed)) }
//!     fn arm(&self, deadline: Instant, wake: Arc<Wake>) -> Result<usize, ()> {
//!         let mut armed = self.armed.lock().unwrap();
//!         armed.push((deadline.as_nanos(), wake));
//!         Ok(armed.len() - 1)
//!     }
//!     fn cancel(&self, _: usize) {}
//! }
//! impl Fake {
//!     fn advance_to(&self, ns: u64) {
//!         self.now.store(ns, Ordering::Relaxed);
//!         for (at, wake) in self.armed.lock().unwrap().iter() {
//!             if *at <= ns { wake.fire() }
//!         }
//!     }
//! }
//!
//! let timers = Fake::default();
//! let mut sleep = pin!(Sleep::until(&timers, Instant::from_nanos(1_000)));
//! let mut cx = Context::from_waker(Waker::noop());
//! assert_eq!(sleep.as_mut().poll(&mut cx), Poll::Pending, "armed, not due");
//! timers.advance_to(999);
//! assert_eq!(sleep.as_mut().poll(&mut cx), Poll::Pending, "never early");
//! timers.advance_to(1_000);
//! assert_eq!(sleep.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
//! ```

use crate::instant::Instant;
use alloc::sync::Arc;
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::{Context, Poll, Waker};

/// What a platform gives [`Sleep`]: its clock, and one-shot timers that call [`Wake::fire`].
pub trait SleepTimers {
    /// Names an armed timer, for its cancel.
    type Handle;
    /// Why a timer could not be armed (handed back by the sleep's poll).
    type Error;
    /// The clock deadlines are on.
    fn now(&self) -> Instant;
    /// Arms a one-shot timer for `deadline` whose expiry calls `wake.fire()` (on whatever CPU
    /// it runs), on the calling CPU.
    fn arm(&self, deadline: Instant, wake: Arc<Wake>) -> Result<Self::Handle, Self::Error>;
    /// Cancels it (it may have fired already: nothing then).
    fn cancel(&self, handle: Self::Handle);
}

/// The link between a sleep's timer and its task: whether the timer fired, and the waker the
/// last poll left.
#[derive(Debug, Default)]
pub struct Wake {
    fired: AtomicBool,
    waker: spin::Mutex<Option<Waker>>,
}

impl Wake {
    /// The timer fired: records it and wakes the last poll's waker (outside the lock).
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        let waker = self.waker.lock().take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the timer fired.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Leaves `waker` for the timer to wake (replacing an older one unless it would wake the
    /// same task).
    fn register(&self, waker: &Waker) {
        let mut slot = self.waker.lock();
        match &*slot {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }
}

/// A sleep until a deadline: a future that completes with `Ok(())` at or after it, or with the
/// platform's error if its timer could not be armed.
pub struct Sleep<'t, T: SleepTimers> {
    timers: &'t T,
    deadline: Instant,
    /// Its timer, once armed, and the link its expiry fires.
    armed: Option<(T::Handle, Arc<Wake>)>,
    done: bool,
}

impl<'t, T: SleepTimers> Sleep<'t, T> {
    /// Sleeps until `deadline` on `timers`' clock (nothing is armed before the first poll).
    pub fn until(timers: &'t T, deadline: Instant) -> Sleep<'t, T> {
        Sleep { timers, deadline, armed: None, done: false }
    }

    /// Sleeps for `span` from now.
    pub fn for_duration(timers: &'t T, span: core::time::Duration) -> Sleep<'t, T> {
        let deadline = timers.now().checked_add(span).unwrap_or(Instant::NEVER);
        Sleep::until(timers, deadline)
    }

    /// Its deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl<T: SleepTimers> Unpin for Sleep<'_, T> {}

impl<T: SleepTimers> Future for Sleep<'_, T> {
    type Output = Result<(), T::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.done || this.timers.now() >= this.deadline {
            this.done = true;
            return Poll::Ready(Ok(()));
        }
        match &this.armed {
            Some((_, wake)) => wake.register(cx.waker()),
            None => {
                let wake = Arc::new(Wake::default());
                wake.register(cx.waker());
                match this.timers.arm(this.deadline, wake.clone()) {
                    Ok(handle) => this.armed = Some((handle, wake)),
                    Err(e) => {
                        this.done = true;
                        return Poll::Ready(Err(e));
                    }
                }
            }
        }
        // Fired between the clock read and the waker's registration: its wake may have found
        // no waker (or the old one): look at the clock again rather than wait for nothing.
        if this.timers.now() >= this.deadline {
            this.done = true;
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }
}

impl<T: SleepTimers> Drop for Sleep<'_, T> {
    fn drop(&mut self) {
        if let Some((handle, wake)) = self.armed.take()
            && !wake.fired()
        {
            self.timers.cancel(handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::task::Wake as TaskWake;
    use alloc::vec::Vec;
    use core::sync::atomic::AtomicU64;

    #[derive(Default)]
    struct Fake {
        now: AtomicU64,
        armed: spin::Mutex<Vec<(u64, Arc<Wake>, bool)>>,
        refuse: AtomicBool,
    }

    impl SleepTimers for Fake {
        type Handle = usize;
        type Error = &'static str;
        fn now(&self) -> Instant {
            Instant::from_nanos(self.now.load(Ordering::Relaxed))
        }
        fn arm(&self, deadline: Instant, wake: Arc<Wake>) -> Result<usize, &'static str> {
            if self.refuse.load(Ordering::Relaxed) {
                return Err("no room");
            }
            let mut a = self.armed.lock();
            a.push((deadline.as_nanos(), wake, false));
            Ok(a.len() - 1)
        }
        fn cancel(&self, handle: usize) {
            self.armed.lock()[handle].2 = true;
        }
    }

    impl Fake {
        /// Moves the clock and fires every timer due (not cancelled), once.
        fn advance_to(&self, ns: u64) {
            self.now.store(ns, Ordering::Relaxed);
            for (at, wake, cancelled) in self.armed.lock().iter_mut() {
                if *at <= ns && !*cancelled && !wake.fired() {
                    wake.fire();
                }
            }
        }
    }

    /// A waker counting its wakes.
    #[derive(Default)]
    struct Counter(AtomicU64);
    impl TaskWake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn it_arms_once_wakes_the_last_waker_and_is_never_early() {
        let timers = Fake::default();
        let mut sleep = Sleep::until(&timers, Instant::from_nanos(500));
        let (first, second) = (Arc::new(Counter::default()), Arc::new(Counter::default()));
        let w1 = Waker::from(first.clone());
        let mut cx = Context::from_waker(&w1);
        assert_eq!(Pin::new(&mut sleep).poll(&mut cx), Poll::Pending);
        // Polled again elsewhere (another CPU's executor): its waker replaces the first.
        let w2 = Waker::from(second.clone());
        let mut cx2 = Context::from_waker(&w2);
        assert_eq!(Pin::new(&mut sleep).poll(&mut cx2), Poll::Pending);
        assert_eq!(timers.armed.lock().len(), 1, "one timer for the two polls");
        timers.advance_to(499);
        assert_eq!(Pin::new(&mut sleep).poll(&mut cx2), Poll::Pending, "not before its deadline");
        timers.advance_to(500);
        assert_eq!((first.0.load(Ordering::Relaxed), second.0.load(Ordering::Relaxed)), (0, 1));
        assert_eq!(Pin::new(&mut sleep).poll(&mut cx2), Poll::Ready(Ok(())));
        drop(sleep);
        assert!(!timers.armed.lock()[0].2, "a fired timer is not cancelled");
    }

    #[test]
    fn dropped_before_its_deadline_it_cancels_its_timer() {
        let timers = Fake::default();
        let mut sleep = Sleep::until(&timers, Instant::from_nanos(500));
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(Pin::new(&mut sleep).poll(&mut cx), Poll::Pending);
        drop(sleep);
        assert!(timers.armed.lock()[0].2, "cancelled on drop");
        let never = Sleep::until(&timers, Instant::from_nanos(900));
        drop(never);
        assert_eq!(timers.armed.lock().len(), 1, "never polled, never armed");
    }

    #[test]
    fn a_passed_deadline_completes_at_once_and_a_refused_arm_is_an_error() {
        let timers = Fake::default();
        timers.now.store(1_000, Ordering::Relaxed);
        let mut cx = Context::from_waker(Waker::noop());
        let mut past = Sleep::until(&timers, Instant::from_nanos(1_000));
        assert_eq!(Pin::new(&mut past).poll(&mut cx), Poll::Ready(Ok(())));
        assert!(timers.armed.lock().is_empty(), "nothing armed for a deadline already passed");
        timers.refuse.store(true, Ordering::Relaxed);
        let mut refused = Sleep::for_duration(&timers, core::time::Duration::from_micros(1));
        assert_eq!(Pin::new(&mut refused).poll(&mut cx), Poll::Ready(Err("no room")));
    }
}
