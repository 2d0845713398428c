//! The High Precision Event Timer's registers without the hardware access (IA-PC HPET
//! Specification 1.0a): where each register sits in the block, what its bits mean, and the
//! checks a driver makes on the capabilities register before it trusts the block.
//!
//! A driver maps the block, reads and writes its 64-bit registers with volatile accesses at the
//! offsets of [`layout`], and goes through the types here to read or build their values. Nothing
//! in this crate touches memory, so every decoding and every check is tested on the host.
//!
//! # Example: decoding a capabilities register
//!
//! ```
//! use hpet_regs::{Capabilities, CapabilityError, check_capabilities};
//!
//! // QEMU's q35 HPET: 10 ns period, vendor 0x8086, legacy capable, 64-bit, 3 comparators, rev 1.
//! let caps = Capabilities(0x0098_9680_8086_a201);
//! assert_eq!(caps.period_fs(), 10_000_000);
//! assert_eq!(caps.frequency_hz(), 100_000_000);
//! assert_eq!(caps.comparators(), 3);
//! assert!(caps.counter_64bit() && caps.legacy_route_capable());
//! assert_eq!(check_capabilities(caps), Ok(()));
//!
//! // Nothing decodes the address: every bit reads 1.
//! let absent = Capabilities(u64::MAX);
//! assert_eq!(check_capabilities(absent), Err(CapabilityError::ReadsAllOnes));
//! assert_eq!(
//!     check_capabilities(absent).unwrap_err().to_string(),
//!     "its capabilities read all ones (no device decodes the address)"
//! );
//! ```
//!
//! # Example: building a comparator's configuration
//!
//! ```
//! use hpet_regs::{ComparatorConfig, GsiList, layout};
//!
//! // What a comparator's Tn_CONF_CAP reads: FSB and periodic capable, 64-bit, routable to
//! // IOAPIC inputs 2, 8 and 16-23.
//! let read = ComparatorConfig::from_bits_retain(0x00ff_0104_0000_8030);
//! assert!(read.contains(ComparatorConfig::PERIODIC_CAPABLE | ComparatorConfig::FSB_CAPABLE));
//! assert_eq!(GsiList(read.route_capability()).to_string(), "2, 8, 16-23");
//! assert!(read.allows_route(17) && !read.allows_route(3));
//!
//! // One-shot, level-triggered on IOAPIC input 17, 32-bit mode.
//! let config = read.with_route(17)
//!     | ComparatorConfig::LEVEL_TRIGGERED
//!     | ComparatorConfig::INTERRUPT_ENABLE
//!     | ComparatorConfig::MODE_32BIT;
//! assert_eq!(config.route(), 17);
//! assert_eq!(config.bits() & 0xffff, 0xa336); // the capability bits 0x8030 read back as they are
//!
//! // It is written at comparator 2's configuration register.
//! assert_eq!(layout::comparator_offset(2) + layout::TIMER_CONFIG_CAPABILITY, 0x140);
//! ```
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod check;
mod gsi_list;
pub mod layout;
mod registers;

pub use check::{CapabilityError, MAX_PERIOD_FS, MIN_PERIOD_FS, check_capabilities};
pub use gsi_list::GsiList;
pub use layout::MAX_COMPARATORS;
pub use registers::{Capabilities, ComparatorConfig, GeneralConfig, fsb_route};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
