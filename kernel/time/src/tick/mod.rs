//! The tick layer: which clock event device keeps time for each CPU, and each CPU's timer
//! queue (Linux's `tick-common.c`, `tick-broadcast.c` and `hrtimer.c`, reduced to what this
//! kernel needs), in three pieces with three owners:
//!
//! - [`Registry`] (shared, slow paths only): every registered device and the selection. It
//!   decides each CPU's service and the broadcast device, and hands the decisions out as
//!   [`Assignment`]s; it programs nothing.
//! - [`CpuTick`] (one per CPU, touched only by that CPU): its service, its local device, its
//!   timer queue and next event. Arming, cancelling and a local device's interrupt touch
//!   nothing else, so no CPU's timers wait on another's.
//! - [`Broadcast`](super::broadcast::Broadcast) (shared, behind its own lock): the broadcast
//!   device and the deadlines of the CPUs it serves; only those CPUs touch it.
//!
//! A change of a CPU's device decided by the registry is carried out by that CPU, when it
//! applies its assignment ([`CpuTick::assign`]): a local device (a LAPIC timer) is only ever
//! programmed from its own CPU.
//!
//! Selection (Linux's `tick_check_preferred`): a CPU's tick device is the best-rated usable
//! device local to it (a per-CPU device whose CPU set is that CPU alone); a local device beats
//! a non-local one whatever their ratings. A CPU without a local device is served by the
//! broadcast device: the best-rated usable device that is neither per-CPU nor stops in deep
//! C-states (the lowest-rated of them, `bc_hrtimer`, one CPU's own timer, serves only CPUs that
//! have a device of their own, which stops in deep idle). A better device registered later
//! replaces the current one, and the CPU hands its pending deadline to the new one.
//!
//! Everything here is plain data driven by the caller, who says which CPU it runs on and what
//! time it is; the kernel keeps each piece where its owner reaches it, the host tests drive
//! them with fake devices and a fake clock (`sim.rs`).

mod cpu;
pub mod deliver;
pub mod expiry;
pub mod glue;
mod registry;
#[cfg(test)]
mod sim;

pub use super::clockevents::DeviceId;
pub use cpu::{CpuTick, DeepIdleRefused, DeviceFailure, Handover, Migrating, Moved, Refused};
pub use registry::{Assignment, Changes, Registry};

use core::fmt;

/// How the tick runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickMode {
    /// A tick every `1 / hz` s; timers expire at the first tick at or after their deadline
    /// (hardware periodic mode where the device has it, re-armed one-shot otherwise).
    Periodic {
        /// Ticks a second (the period is rounded down to whole ns).
        hz: u32,
    },
    /// Tickless: the device is programmed for the earliest timer only, and stopped when none
    /// is pending.
    Oneshot,
}

impl TickMode {
    /// The tick period in ns (0 when tickless).
    #[inline]
    pub fn period_ns(self) -> u64 {
        match self {
            TickMode::Periodic { hz } => super::clocksource::NS_PER_S / u64::from(hz.max(1)),
            TickMode::Oneshot => 0,
        }
    }
}

impl fmt::Display for TickMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TickMode::Periodic { hz } => write!(f, "periodic at {hz} Hz"),
            TickMode::Oneshot => write!(f, "oneshot (tickless)"),
        }
    }
}

/// What serves a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Nothing: the CPU cannot be woken by a timer.
    None,
    /// Its own per-CPU device.
    Local(DeviceId),
    /// The broadcast device, which wakes it when its deadline is due.
    Broadcast(DeviceId),
}

/// Why a timer could not be armed. Each says what happened: a CPU that is not there, one whose
/// inbox or handles are full and one that cannot be woken are different answers.
///
/// [`NoTickDevice`](Self::NoTickDevice) comes from [`CpuTick::arm`]; the others from the
/// owner's timer API around it (arming on another CPU, periodic timers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArmError {
    /// The CPU is not online in the tick layer (no such CPU, or not started).
    CpuNotOnline(usize),
    /// No device can interrupt this CPU.
    NoTickDevice(usize),
    /// A periodic timer with a period of zero.
    ZeroPeriod,
    /// Every handle of the timer's CPU is in use ([`crate::remote::Handles`]): nothing armed.
    HandlesFull {
        /// The CPU.
        cpu: usize,
        /// Its handles.
        capacity: usize,
    },
    /// The timer's CPU's inbox is full (it has not drained its messages): nothing armed.
    InboxFull {
        /// The CPU.
        cpu: usize,
    },
    /// Armed during its CPU's expiry (from a timer callback: the timer interrupt path, which
    /// never allocates) with the CPU's queue full. Outside an expiry the queue grows instead.
    QueueFull {
        /// The CPU whose queue is full.
        cpu: usize,
        /// The timers it holds.
        capacity: usize,
    },
}

impl fmt::Display for ArmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArmError::CpuNotOnline(c) => write!(f, "CPU {c} is not online in the tick layer"),
            ArmError::NoTickDevice(c) => write!(f, "no clock event device serves CPU {c}"),
            ArmError::ZeroPeriod => write!(f, "a periodic timer needs a period above zero"),
            ArmError::HandlesFull { cpu, capacity } => {
                write!(f, "all {capacity} timer handles of CPU {cpu} are in use")
            }
            ArmError::InboxFull { cpu } => write!(f, "CPU {cpu}'s inbox is full"),
            ArmError::QueueFull { cpu, capacity } => write!(
                f,
                "CPU {cpu}'s timer queue is full ({capacity} timers) and does not grow in its timer interrupt"
            ),
        }
    }
}

impl core::error::Error for ArmError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clockevents::{EventPassed, FrequencyError, IllegalTransition, ProgramError, State};
    use crate::clocksource::RegisterError;
    use crate::hrtimer::WrongCpu;
    use alloc::string::ToString;
    use core::error::Error;

    #[test]
    fn a_full_inbox_is_not_a_cpu_that_is_not_online() {
        let full = ArmError::InboxFull { cpu: 1 }.to_string();
        let offline = ArmError::CpuNotOnline(1).to_string();
        assert_ne!(full, offline);
        assert!(full.contains("CPU 1") && full.contains("full"), "{full}");
        assert!(offline.contains("not online"), "{offline}");
    }

    #[test]
    fn the_public_errors_are_errors() {
        let errors: [&dyn Error; 9] = [
            &ArmError::HandlesFull { cpu: 1, capacity: 256 },
            &DeepIdleRefused::NoBroadcast,
            &ProgramError::GaveUp { min_delta_ns: 5_000 },
            &FrequencyError::Zero,
            &IllegalTransition { from: State::Detached, to: State::Oneshot },
            &RegisterError::Full,
            &WrongCpu { id_cpu: 0, queue_cpu: 1 },
            &EventPassed,
            &DeviceFailure { device: DeviceId(3), error: ProgramError::GaveUp { min_delta_ns: 5_000 } },
        ];
        for e in errors {
            assert!(!e.to_string().is_empty());
        }
        let failure =
            DeviceFailure { device: DeviceId(3), error: ProgramError::GaveUp { min_delta_ns: 5_000 } };
        let source = failure.source().expect("a device failure says why");
        assert_eq!(source.to_string(), failure.error.to_string());
        assert!(failure.to_string().contains("device 3"), "{failure}");
    }
}
