//! The hardware-independent time layer. No `unsafe`, no hardware: devices reach it through the
//! traits defined here, and every piece runs as a host unit test with fake devices.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod broadcast;
pub mod clockevents;
pub mod clocksource;
pub mod hrtimer;
pub mod instant;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod testing;
pub mod tick;
