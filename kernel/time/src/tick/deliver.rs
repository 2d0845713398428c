//! Carrying out the registry's decisions ([`Changes`]), written once for every platform: the
//! broadcast change first (a new broadcast device takes the sleepers' deadlines; no broadcast
//! device any more wakes them), then each CPU's [`Assignment`], carried out by that CPU
//! itself (a CPU's tick and a device local to it are only ever touched on that CPU). A device
//! that gives up programming meanwhile (the new broadcast device on the sleepers' deadlines,
//! or this CPU's new local device on its pending event) is taken out, and the selection's
//! answer to that is carried out in turn, until nothing is left.
//!
//! The platform says how to reach the broadcast state and the registry, how to wake a CPU, and
//! how an assignment reaches its CPU ([`DeliveryContext`]); assignments to other CPUs must
//! arrive in the order they were decided (they are numbered, so a late one is ignored).

use super::{Assignment, Changes, DeviceFailure, DeviceId};
use crate::broadcast::Broadcast;
use crate::clockevents::ClockEventDevice;
use alloc::format;
use alloc::sync::Arc;

/// What carrying out a decision needs from the platform, on the CPU doing it.
pub trait DeliveryContext {
    /// The clocksource now, in ns.
    fn now_ns(&self) -> u64;
    /// The broadcast device is about to change to `device` (`None`: none), before the broadcast
    /// state learns it (a platform that finds the broadcast device's interrupts by id updates
    /// its record here).
    fn broadcast_device_changing(&mut self, device: Option<DeviceId>) {
        let _ = device;
    }
    /// Runs `f` on the broadcast state (in a kernel: under its lock, interrupts off).
    fn with_broadcast<R>(&mut self, f: impl FnOnce(&mut Broadcast) -> R) -> R;
    /// Wakes `cpu` (its broadcast device went away while it slept on it).
    fn wake(&mut self, cpu: usize);
    /// Hands `a` to its CPU: carried out at once if that is this CPU (returning a device that
    /// gave up meanwhile, from `CpuTick::take_failure`), else sent to it after every assignment
    /// sent before (`None`).
    fn assign(&mut self, a: Assignment) -> Option<DeviceFailure>;
    /// Takes `device` out of the registry for `reason`; the registry's answer.
    fn take_out(&mut self, device: DeviceId, reason: &str) -> Changes;
}

/// Carries `changes` out (see the module's documentation).
pub fn deliver<P: DeliveryContext>(p: &mut P, mut changes: Changes) {
    loop {
        if let Some(device) = changes.broadcast.take() {
            let changed = broadcast_change(p, device);
            if let Some(failure) = changed {
                more(p, &mut changes, failure);
                continue;
            }
        }
        for a in core::mem::take(&mut changes.assignments) {
            if let Some(failure) = p.assign(a) {
                more(p, &mut changes, failure);
            }
        }
        if changes.is_empty() {
            return;
        }
    }
}

/// Installs the new broadcast device (or none), waking whoever slept on the old one if none
/// is left; the new device if it gave up on the sleepers' deadlines.
fn broadcast_change<P: DeliveryContext>(
    p: &mut P,
    device: Option<(DeviceId, Arc<ClockEventDevice>)>,
) -> Option<DeviceFailure> {
    p.broadcast_device_changing(device.as_ref().map(|(id, _)| *id));
    let now = p.now_ns();
    let (wake, failure) = p.with_broadcast(|b| (b.set_device(device, now), b.take_failure()));
    for cpu in wake.iter() {
        p.wake(cpu);
    }
    failure.map(|(device, error)| DeviceFailure { device, error })
}

/// A device failed while a decision was carried out: taken out, and the registry's answer
/// joins what is left to do (its broadcast change replaces any not yet made).
fn more<P: DeliveryContext>(p: &mut P, changes: &mut Changes, failure: DeviceFailure) {
    let next = p.take_out(failure.device, &format!("{}", failure.error));
    changes.broadcast = next.broadcast.or(changes.broadcast.take());
    changes.assignments.extend(next.assignments);
}
