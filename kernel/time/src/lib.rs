//! A kernel's time layer without the hardware: clock event devices and the choice among them,
//! each CPU's tick and timer queue, the broadcast device for CPUs whose timer stops in deep
//! idle, and the clocksource arithmetic behind a monotonic nanosecond clock. Modelled on
//! Linux's `kernel/time/` (`clockevents.c`, `tick-*.c`, `hrtimer.c`, `clocksource.c`,
//! `timekeeping.c`), reduced to what one x86_64 kernel needs and kept free of `unsafe`.
//!
//! The layer never touches hardware and never reads a clock: every call that needs the time
//! takes `now_ns` from the caller, and devices and counters reach it through two traits,
//! [`clockevents::EventDriver`] (program a comparator, switch a mode) and
//! [`clocksource::ReadCounter`] (read a counter). So every rule below is tested on the host
//! with fake devices and a fake clock.
//!
//! # What it decides, what it guarantees
//!
//! - [`tick::Registry`] chooses, for each CPU, the best-rated usable device local to it, else
//!   the broadcast device (the best-rated usable device that is neither per-CPU nor stops in
//!   deep idle); a better device registered later, or a device taken out, moves CPUs on, and
//!   each CPU hands its pending deadline to its new device.
//! - [`tick::CpuTick`] is one CPU's tick: its device, its [`hrtimer::TimerQueue`], its next
//!   event. It is touched only by its own CPU.
//! - Never early: a timer is handed out only at or after its deadline; ns -> ticks rounds up;
//!   a comparator the counter passed while it was written is retried, never trusted.
//! - Never lost: a CPU with pending timers has its device or the broadcast armed; a deadline
//!   already past is programmed at the device's minimum delta.
//! - Ordering: timers run in deadline order, equal deadlines in the order they were armed; a
//!   timer is handed out once (a periodic one once per period), never after its cancel.
//! - Own CPU: a [`hrtimer::TimerId`] names its CPU, and another CPU's queue refuses it. Any
//!   CPU arms a timer on any CPU through that CPU's [`remote::Handles`] and gets its handle at
//!   once; a cancel from anywhere answers at once, truthfully (it will not run, it is running
//!   now, it already ran), even when it overtakes its own arm.
//! - Cross-CPU messages: each CPU's [`inbox::Inbox`] is bounded and lock-free, with a defined
//!   answer when full ([`inbox::Full`] hands the message back); a message arrives once, whole,
//!   in its sender's order.
//!
//! # Example: a device, a CPU, two timers on a fake clock
//!
//! ```
//! use core::sync::atomic::{AtomicU64, Ordering};
//! use kernel_time::broadcast::Broadcast;
//! use kernel_time::clockevents::{CpuSet, DeviceSpec, DriverState, EventDriver, EventPassed, Features};
//! use kernel_time::tick::{CpuTick, Registry, Service, TickMode};
//! use spin::Mutex;
//!
//! /// A 1 MHz per-CPU comparator that remembers the last delta it was programmed for.
//! struct FakeComparator {
//!     delta_ticks: AtomicU64,
//! }
//!
//! impl EventDriver for FakeComparator {
//!     fn switch_state(&self, _state: DriverState) {}
//!     fn set_next_event(&self, delta_ticks: u64) -> Result<(), EventPassed> {
//!         self.delta_ticks.store(delta_ticks, Ordering::Relaxed);
//!         Ok(())
//!     }
//! }
//!
//! static COMPARATOR: FakeComparator = FakeComparator { delta_ticks: AtomicU64::new(0) };
//!
//! // Register the device: the registry decides who uses it.
//! let mut registry = Registry::new();
//! let spec = DeviceSpec {
//!     name: "fake0".into(),
//!     features: Features::ONESHOT | Features::PER_CPU,
//!     rating: 100,
//!     cpus: CpuSet::single(0),
//!     frequency_hz: 1_000_000,
//!     min_delta_ticks: 2,
//!     max_delta_ticks: 0xffff_ffff,
//! };
//! let (device, changes) = registry.register(spec, &COMPARATOR);
//! assert!(changes.is_empty()); // no CPU online yet
//!
//! // CPU 0 comes online; it carries out the registry's decision itself.
//! let broadcast = Mutex::new(Broadcast::new());
//! let mut now = 0; // the fake clock, in ns
//! let mut cpu0: CpuTick<&str> = CpuTick::new(0, TickMode::Oneshot, now, 16);
//! let changes = registry.cpu_online(0);
//! assert!(changes.broadcast.is_none());
//! for assignment in changes.assignments {
//!     cpu0.apply(assignment, now, &broadcast);
//! }
//! assert_eq!(cpu0.service(), Service::Local(device));
//!
//! // Arm two timers: the device is programmed for the earlier one, 3 us = 3 ticks away.
//! cpu0.arm(7_000, "second", now, &broadcast).unwrap();
//! cpu0.arm(3_000, "first", now, &broadcast).unwrap();
//! assert_eq!(COMPARATOR.delta_ticks.load(Ordering::Relaxed), 3);
//!
//! // The device interrupts at 3 us: the expiry by hand, step by step (`tick::expiry` runs this
//! // loop for a kernel, bounded, with the callbacks outside its guard).
//! now = 3_000;
//! assert!(cpu0.device_event(device, now));
//! let mut ran = Vec::new();
//! while let Some(timer) = cpu0.pop_expired(now) {
//!     assert!(timer.deadline_ns <= now); // never early
//!     ran.push(timer.payload); // a kernel calls the timer's callback here
//!     assert_eq!(cpu0.complete(timer.id, None), Ok(false));
//! }
//! cpu0.end_expiry(now, &broadcast);
//! assert_eq!(ran, ["first"]);
//! // The next deadline is programmed once, at the end of the expiry: 4 us on.
//! assert_eq!(COMPARATOR.delta_ticks.load(Ordering::Relaxed), 4);
//! assert_eq!(cpu0.pending(), 1);
//! ```
//!
//! # Features and dependencies
//!
//! `no_std` with `alloc` (the registry's device list, the queues' slabs); the crate's own unit
//! tests link `std`. Locks are `spin` mutexes, logs go to the `log` facade (one line per
//! decision: a device registered, refused, chosen, taken out).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

pub mod broadcast;
pub mod calendar;
pub mod clockevents;
pub mod clocks;
pub mod clocksource;
pub mod hrtimer;
pub mod inbox;
pub mod instant;
#[cfg(all(test, loom))]
mod models;
#[cfg(test)]
mod proptests;
pub mod remote;
pub mod sleep;
mod sync;
#[cfg(test)]
mod testing;
pub mod tick;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
