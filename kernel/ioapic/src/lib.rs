//! The x86 I/O APIC's registers without the hardware access (Intel 82093AA datasheet): the
//! register indices behind its select/window pair, the typed 64-bit redirection entry, the
//! version and id registers, and how an entry, or an MSI message, names its destination CPU.
//!
//! A driver maps the chip's 32-byte window, writes a register index ([`registers`]) to
//! IOREGSEL and reads or writes the 32-bit register through IOWIN with volatile accesses; the
//! types here say what those 32-bit values mean. Nothing in this crate touches memory, so every
//! encoding is tested on the host.
//!
//! # Example: an entry for a PCI-style line, programmed in the safe order
//!
//! ```
//! use ioapic_regs::destination::DestinationFormat;
//! use ioapic_regs::registers::{self, Version};
//! use ioapic_regs::{DeliveryMode, Polarity, RedirectionEntry, Trigger};
//!
//! // What IOAPICVER read: version 0x20, 24 pins (the last redirection entry is 23).
//! let version = Version(0x0017_0020);
//! assert_eq!((version.version(), version.pins()), (0x20, 24));
//!
//! // Vector 0x41, level-triggered, active low, to the CPU with APIC id 3.
//! let entry = RedirectionEntry {
//!     vector: 0x41,
//!     delivery: DeliveryMode::Fixed,
//!     logical: false,
//!     polarity: Polarity::ActiveLow,
//!     trigger: Trigger::Level,
//!     masked: false,
//!     destination: 3,
//! };
//! // Without the extended destination id, only APIC ids 0..=254 can be named.
//! assert!(DestinationFormat::Physical8.ioapic_bits(entry.destination).is_ok());
//! assert_eq!(entry.encode(), 0x0300_0000_0000_a041);
//! assert_eq!(RedirectionEntry::decode(entry.encode()), entry);
//!
//! // Pin 17's entry: masked low half first, then the high half, then the real low half.
//! let writes = registers::redirection_writes(17, entry);
//! assert_eq!(writes, [(0x32, 0x0001_a041), (0x33, 0x0300_0000), (0x32, 0x0000_a041)]);
//! ```
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod destination;
mod entry;
pub mod registers;

pub use entry::{DeliveryMode, Polarity, RedirectionEntry, Trigger};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
