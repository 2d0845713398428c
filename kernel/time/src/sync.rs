//! The atomics of the lock-free rooms ([`crate::inbox`], [`crate::remote`]): core's, or
//! loom's under `--cfg loom`, so that loom's model tests (`scripts/loom`) explore every
//! interleaving and every weak-memory outcome those rooms allow.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
