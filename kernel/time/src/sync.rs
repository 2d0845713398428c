//! The atomics of the lock-free rooms ([`crate::inbox`], [`crate::remote`]): core's, or
//! loom's under `--cfg loom`, so that loom's model tests (`scripts/loom`) explore every
//! interleaving and every weak-memory outcome those rooms allow.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// One turn of a wait for another thread: a spin-loop hint, or under loom a yield (so that the
/// model lets the awaited thread run).
#[inline]
pub(crate) fn spin_wait() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

/// A value handed from one thread to another behind a lock that the hand-over protocol
/// around it keeps uncontended ([`crate::remote`]'s payload slots): spin's lock, or loom's
/// under `--cfg loom` so the models see it.
pub(crate) struct PayloadCell<T> {
    #[cfg(not(loom))]
    value: spin::Mutex<Option<T>>,
    #[cfg(loom)]
    value: loom::sync::Mutex<Option<T>>,
}

impl<T> PayloadCell<T> {
    /// An empty cell.
    pub(crate) fn new() -> PayloadCell<T> {
        PayloadCell {
            #[cfg(not(loom))]
            value: spin::Mutex::new(None),
            #[cfg(loom)]
            value: loom::sync::Mutex::new(None),
        }
    }

    /// Stores `value` (replacing nothing: the protocol stores into an empty cell).
    pub(crate) fn put(&self, value: T) {
        *self.lock() = Some(value);
    }

    /// Takes the value out, if any.
    pub(crate) fn take(&self) -> Option<T> {
        self.lock().take()
    }

    #[cfg(not(loom))]
    fn lock(&self) -> spin::MutexGuard<'_, Option<T>> {
        self.value.lock()
    }

    #[cfg(loom)]
    fn lock(&self) -> loom::sync::MutexGuard<'_, Option<T>> {
        self.value.lock().unwrap()
    }
}
