//! Clock event devices found failing in interrupt context, held on the CPU that found them until
//! its deferred work ([`deferred::Kind::TakeOutFailedDevices`]) takes them out of service: the
//! take-out takes the registry's lock and carries out the reassignments (this CPU's at once,
//! others' posted to them), which is no work for a hard interrupt.
//!
//! Nothing storms meanwhile: a local device that gave up programming is marked failed and never
//! programmed again, a broadcast device likewise, and a stormed HPET line is masked in the
//! interrupt that found the storm. The take-out runs at that interrupt's exit (or in the
//! deferred run the interrupt interrupted). A failure found outside interrupt context is taken
//! out at once, as before.

use super::registry;
use crate::arch::x86_64::deferred::{self, Kind};
use crate::arch::x86_64::smp::percpu::{self, MAX_CPUS};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use kernel_time::clockevents::{ProgramError, State};
use kernel_time::tick::{DeviceFailure, DeviceId};
use x86_64::instructions::interrupts::without_interrupts;

/// Failures one CPU holds before its deferred work runs: distinct devices that failed on it
/// within one interrupt (its local device, the broadcast device, a few more in an arrangement
/// change). Past them the take-out runs at once, in the interrupt (counted).
pub const SLOTS: usize = 8;

/// One held failure: the device's id + 1 (0: free) and how it failed, encoded.
struct Slot {
    device: AtomicUsize,
    error: AtomicU64,
}

/// A CPU's held failures. Written and taken only by that CPU, with interrupts off, so the
/// atomics only make the slots shareable; no lock, no allocation.
pub struct FailureSlots {
    slots: [Slot; SLOTS],
}

impl Default for FailureSlots {
    fn default() -> Self {
        Self::new()
    }
}

impl FailureSlots {
    pub const fn new() -> FailureSlots {
        FailureSlots {
            slots: [const { Slot { device: AtomicUsize::new(0), error: AtomicU64::new(0) } }; SLOTS],
        }
    }

    /// Holds `f` until [`take`](Self::take); a device already held is held once (its first
    /// failure). `false` when every slot is taken.
    pub fn hold(&self, f: DeviceFailure) -> bool {
        let id = f.device.0.wrapping_add(1);
        if self.slots.iter().any(|s| s.device.load(Ordering::Relaxed) == id) {
            return true;
        }
        let Some(free) = self.slots.iter().find(|s| s.device.load(Ordering::Relaxed) == 0) else {
            return false;
        };
        free.error.store(encode(f.error), Ordering::Relaxed);
        free.device.store(id, Ordering::Release);
        true
    }

    /// Takes one held failure.
    pub fn take(&self) -> Option<DeviceFailure> {
        self.slots.iter().find_map(|s| {
            let id = s.device.swap(0, Ordering::Acquire);
            (id != 0).then(|| DeviceFailure {
                device: DeviceId(id - 1),
                error: decode(s.error.load(Ordering::Relaxed)),
            })
        })
    }
}

const TAG_SHIFT: u32 = 56;
const PAYLOAD: u64 = (1 << TAG_SHIFT) - 1;
const TAG_NOT_ONESHOT: u64 = 1;
const TAG_GAVE_UP: u64 = 2;

/// How a device failed, in one word: a tag in the top byte, its figure below (a minimum delta
/// saturated at 2^56 - 1 ns, 833 days).
fn encode(e: ProgramError) -> u64 {
    match e {
        ProgramError::NotOneshot(state) => TAG_NOT_ONESHOT << TAG_SHIFT | u64::from(state as u8),
        ProgramError::GaveUp { min_delta_ns } => TAG_GAVE_UP << TAG_SHIFT | min_delta_ns.min(PAYLOAD),
    }
}

fn decode(word: u64) -> ProgramError {
    let payload = word & PAYLOAD;
    match word >> TAG_SHIFT {
        TAG_NOT_ONESHOT => ProgramError::NotOneshot(match payload {
            0 => State::Detached,
            1 => State::Shutdown,
            2 => State::Periodic,
            3 => State::Oneshot,
            _ => State::OneshotStopped,
        }),
        _ => ProgramError::GaveUp { min_delta_ns: payload },
    }
}

/// Devices taken out of service at run time, and those taken out inside a hard interrupt
/// (none should be, past the slots), for the report.
static TAKE_OUTS: AtomicU64 = AtomicU64::new(0);
static TAKE_OUTS_IN_HARD_IRQ: AtomicU64 = AtomicU64::new(0);

/// A device is being taken out (`registry::take_out`): counted, and where.
pub(super) fn count_take_out() {
    TAKE_OUTS.fetch_add(1, Ordering::Relaxed);
    if percpu::ready() && percpu::this_cpu().in_interrupt() {
        TAKE_OUTS_IN_HARD_IRQ.fetch_add(1, Ordering::Relaxed);
    }
}

/// Devices taken out of service so far: (all, those taken out inside a hard interrupt).
pub fn take_outs() -> (u64, u64) {
    (TAKE_OUTS.load(Ordering::Relaxed), TAKE_OUTS_IN_HARD_IRQ.load(Ordering::Relaxed))
}

/// Each CPU's held failures, by CPU index.
static HELD: [FailureSlots; MAX_CPUS] = [const { FailureSlots::new() }; MAX_CPUS];
/// Failures taken out in the interrupt that found them, every slot being taken.
static OVERFLOWED: AtomicU64 = AtomicU64::new(0);

/// Registers the take-out as deferred work (on the boot CPU, before any device can fail).
pub(super) fn init() {
    deferred::register(Kind::TakeOutFailedDevices, take_out_held);
}

/// A device failed on this CPU (found by the time layer, or by a driver or a test injecting
/// the fault): in interrupt context it is held and the take-out raised on this CPU (it runs at
/// the interrupt's exit); elsewhere it is taken out at once.
pub fn report(f: DeviceFailure) {
    let cpu = percpu::this_cpu();
    if !cpu.in_interrupt() {
        return take_out(f);
    }
    if without_interrupts(|| HELD[cpu.index].hold(f)) {
        deferred::raise(cpu.index, Kind::TakeOutFailedDevices);
    } else {
        OVERFLOWED.fetch_add(1, Ordering::Relaxed);
        take_out(f);
    }
}

fn take_out(f: DeviceFailure) {
    registry::take_out(f.device, &alloc::format!("{}", f.error));
}

/// This CPU's deferred work: every failure it holds is taken out, then every stormed HPET line's
/// comparator.
fn take_out_held() {
    let held = &HELD[percpu::this_cpu().index];
    while let Some(f) = without_interrupts(|| held.take()) {
        take_out(f);
    }
    super::hpet::take_out_stormed();
    let overflowed = OVERFLOWED.swap(0, Ordering::Relaxed);
    if overflowed > 0 {
        log::warn!(
            "clockevents: {overflowed} device failures were taken out in interrupt context (more than {SLOTS} held on a CPU)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(device: usize, error: ProgramError) -> DeviceFailure {
        DeviceFailure { device: DeviceId(device), error }
    }

    #[test]
    fn held_failures_come_back_as_they_were() {
        let slots = FailureSlots::new();
        let a = failure(0, ProgramError::GaveUp { min_delta_ns: 10_485_760 });
        let b = failure(7, ProgramError::NotOneshot(State::Periodic));
        let c = failure(300, ProgramError::NotOneshot(State::OneshotStopped));
        assert!(slots.hold(a) && slots.hold(b) && slots.hold(c));
        let mut back = [slots.take(), slots.take(), slots.take()];
        back.sort_by_key(|f| f.map(|f| f.device.0));
        assert_eq!(back, [Some(a), Some(b), Some(c)]);
        assert_eq!(slots.take(), None);
    }

    #[test]
    fn every_error_survives_its_encoding() {
        let states =
            [State::Detached, State::Shutdown, State::Periodic, State::Oneshot, State::OneshotStopped];
        for s in states {
            assert_eq!(decode(encode(ProgramError::NotOneshot(s))), ProgramError::NotOneshot(s));
        }
        for ns in [0, 1, 10_000_000, PAYLOAD] {
            let e = ProgramError::GaveUp { min_delta_ns: ns };
            assert_eq!(decode(encode(e)), e);
        }
        assert_eq!(
            decode(encode(ProgramError::GaveUp { min_delta_ns: u64::MAX })),
            ProgramError::GaveUp { min_delta_ns: PAYLOAD },
            "saturated, not wrapped"
        );
    }

    #[test]
    fn a_device_is_held_once_and_a_full_cpu_says_so() {
        let slots = FailureSlots::new();
        let first = failure(3, ProgramError::GaveUp { min_delta_ns: 1 });
        assert!(slots.hold(first));
        assert!(slots.hold(failure(3, ProgramError::GaveUp { min_delta_ns: 2 })), "already held");
        for d in 10..10 + SLOTS - 1 {
            assert!(slots.hold(failure(d, ProgramError::GaveUp { min_delta_ns: 1 })));
        }
        assert!(!slots.hold(failure(99, ProgramError::GaveUp { min_delta_ns: 1 })), "every slot taken");
        let mut n = 0;
        while let Some(f) = slots.take() {
            if f.device.0 == 3 {
                assert_eq!(f, first, "the first failure of a device is the one kept");
            }
            n += 1;
        }
        assert_eq!(n, SLOTS);
        assert!(slots.hold(failure(99, ProgramError::GaveUp { min_delta_ns: 1 })), "free again");
    }
}
