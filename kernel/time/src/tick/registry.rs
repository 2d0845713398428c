//! The device registry: every registered clock event device and the selection that decides
//! which device serves each online CPU and which is the broadcast device. Shared by all CPUs
//! behind one lock, but only on slow paths (registration, a CPU coming online, a device taken
//! out); it programs no device: its decisions go out as [`Changes`] for the broadcast and each
//! CPU to carry out.

use super::{DeviceId, Service};
use crate::clockevents::{ClockEventDevice, CpuSet, DeviceSpec, EventDriver, Features};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// A CPU's new service, to be carried out by that CPU ([`super::CpuTick::assign`]).
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The CPU that is to carry it out.
    pub cpu: usize,
    /// Decisions for one CPU are numbered from 1: a CPU that receives them out of order
    /// applies only the newest ([`super::CpuTick::apply`]).
    pub sequence: u64,
    /// What serves the CPU from now on.
    pub service: Service,
    /// The local device, for [`Service::Local`].
    pub local: Option<Arc<ClockEventDevice>>,
}

/// What a registry operation decided. Apply the broadcast change first (a CPU moving to
/// broadcast hands its deadline to the new device), then each assignment on its CPU.
#[derive(Debug, Default)]
pub struct Changes {
    /// The broadcast device changed: install this one (`None`: there is none any more).
    pub broadcast: Option<Option<(DeviceId, Arc<ClockEventDevice>)>>,
    /// The CPUs' new services, in decision order.
    pub assignments: Vec<Assignment>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.broadcast.is_none() && self.assignments.is_empty()
    }
}

/// Every device and the selection's current decisions.
#[derive(Default)]
pub struct Registry {
    devices: Vec<Arc<ClockEventDevice>>,
    /// The registry has already moved every CPU off this device (taken out, refused).
    retired: Vec<bool>,
    online: CpuSet,
    /// The service last decided for each CPU (indexed by CPU; `None` beyond), and how many
    /// assignments each CPU was given.
    services: Vec<Service>,
    assignments: Vec<u64>,
    broadcast: Option<DeviceId>,
    /// Every device taken out of service or refused, with why, for the report.
    taken_out: Vec<(String, String)>,
}

impl Registry {
    /// No device, no CPU online.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// The device registered as `id` (an id it did not hand out panics).
    pub fn device(&self, id: DeviceId) -> &Arc<ClockEventDevice> {
        &self.devices[id.0]
    }

    /// Every registered device with its id, in registration order.
    pub fn devices(&self) -> impl Iterator<Item = (DeviceId, &Arc<ClockEventDevice>)> {
        self.devices.iter().enumerate().map(|(i, d)| (DeviceId(i), d))
    }

    /// The index the next registered device will get (so a driver can route its interrupts to
    /// the device before its CPU may program it).
    pub fn next_device_id(&self) -> DeviceId {
        DeviceId(self.devices.len())
    }

    /// The broadcast device decided, if any.
    pub fn broadcast_device(&self) -> Option<DeviceId> {
        self.broadcast
    }

    /// The CPUs brought online.
    pub fn online(&self) -> CpuSet {
        self.online
    }

    /// The service decided for `cpu` (carried out once its CPU applied the assignment).
    pub fn service(&self, cpu: usize) -> Service {
        self.services.get(cpu).copied().unwrap_or(Service::None)
    }

    /// The CPU whose local device `id` is, if any.
    pub fn owner_of(&self, id: DeviceId) -> Option<usize> {
        self.online.iter().find(|&c| self.service(c) == Service::Local(id))
    }

    /// The devices taken out of service or refused so far: (name, why).
    pub fn taken_out(&self) -> &[(String, String)] {
        &self.taken_out
    }

    /// Adds a device (detached until the selection uses it) and runs the selection.
    pub fn register(&mut self, spec: DeviceSpec, driver: &'static dyn EventDriver) -> (DeviceId, Changes) {
        let id = DeviceId(self.devices.len());
        let device = ClockEventDevice::new(spec, driver);
        log::info!(
            "registered {} (rating {}, {} Hz, CPUs {}, delta {}..{} ns, {:?})",
            device.spec.name,
            device.spec.rating,
            device.spec.frequency_hz,
            device.spec.cpus,
            device.min_delta_ns(),
            device.max_delta_ns,
            device.spec.features
        );
        let refused = device.refused;
        if let Some(problem) = refused {
            log::warn!("{} refused: {problem}", device.spec.name);
            self.taken_out.push((device.spec.name.clone(), alloc::format!("refused: {problem}")));
        }
        self.devices.push(Arc::new(device));
        self.retired.push(refused.is_some());
        (id, self.reselect())
    }

    /// Brings `cpu` into the tick layer (its [`super::CpuTick`] exists) and gives it a device.
    pub fn cpu_online(&mut self, cpu: usize) -> Changes {
        assert!(cpu < crate::clockevents::MAX_CPUS, "CPU {cpu} beyond the CPUs a CpuSet holds");
        self.online.insert(cpu);
        if self.services.len() <= cpu {
            self.services.resize(cpu + 1, Service::None);
            self.assignments.resize(cpu + 1, 0);
        }
        self.reselect()
    }

    /// Takes `cpu` out of the selection as it goes offline (before its tick's
    /// [`go_offline`](super::CpuTick::go_offline), so no assignment for it is decided after):
    /// it gets no more assignments, and owns nothing. Its local devices are released: retired
    /// from the selection (not failed) and returned, so that a platform that can aim one at
    /// another CPU (an HPET comparator re-routed) registers it again with that CPU's set, and
    /// one that cannot (a LAPIC timer) registers its own again when the CPU comes back. No
    /// other CPU's service changes (a CPU's local devices serve only it, and the broadcast
    /// device is never local); the changes are returned all the same, to be delivered.
    pub fn cpu_offline(&mut self, cpu: usize) -> (Changes, Vec<DeviceId>) {
        self.online.remove(cpu);
        if let Some(s) = self.services.get_mut(cpu) {
            *s = Service::None;
        }
        let released: Vec<DeviceId> = self
            .devices()
            .filter(|&(id, d)| !self.retired[id.0] && d.is_per_cpu() && d.spec.cpus.only() == Some(cpu))
            .map(|(id, _)| id)
            .collect();
        for &id in &released {
            self.retired[id.0] = true;
            log::info!("{} released: CPU {cpu} went offline", self.devices[id.0].spec.name);
        }
        (self.reselect(), released)
    }

    /// Takes a device out of service for good (failed self-test, gave up programming, an
    /// interrupt storm) and moves the CPUs it served to the next best device; each of them
    /// hands its pending deadline over when it applies its assignment.
    pub fn take_out(&mut self, id: DeviceId, reason: &str) -> Changes {
        if self.retired[id.0] {
            return Changes::default();
        }
        let d = &self.devices[id.0];
        log::warn!("{} taken out of service: {reason}", d.spec.name);
        d.mark_failed();
        self.retired[id.0] = true;
        self.taken_out.push((d.spec.name.clone(), reason.into()));
        self.reselect()
    }

    fn usable(&self, id: DeviceId) -> bool {
        !self.retired[id.0] && !self.devices[id.0].is_failed()
    }

    fn best_local(&self, cpu: usize) -> Option<DeviceId> {
        self.devices()
            .filter(|&(id, d)| self.usable(id) && d.is_per_cpu() && d.spec.cpus.only() == Some(cpu))
            .max_by_key(|&(id, d)| (d.spec.rating, core::cmp::Reverse(id)))
            .map(|(id, _)| id)
    }

    fn best_broadcast(&self) -> Option<DeviceId> {
        self.devices()
            .filter(|&(id, d)| {
                self.usable(id)
                    && !d.spec.features.intersects(Features::PER_CPU | Features::STOPS_IN_DEEP_IDLE)
            })
            .max_by_key(|&(id, d)| (d.spec.rating, core::cmp::Reverse(id)))
            .map(|(id, _)| id)
    }

    /// Recomputes every online CPU's service and the broadcast device; returns what changed.
    fn reselect(&mut self) -> Changes {
        let mut changes = Changes::default();
        let broadcast = self.best_broadcast();
        if broadcast != self.broadcast {
            self.broadcast = broadcast;
            changes.broadcast = Some(broadcast.map(|b| (b, self.devices[b.0].clone())));
            if let Some(b) = broadcast {
                log::info!("{} is the broadcast device", self.devices[b.0].spec.name);
            }
        }
        for cpu in self.online.iter() {
            let wanted = match (self.best_local(cpu), broadcast) {
                (Some(d), _) => Service::Local(d),
                // One CPU's timer wakes sleepers whose own device stops in deep idle, but
                // serves no CPU that has no device at all (nothing would carry it there).
                (None, Some(b)) if self.devices[b.0].spec.features.contains(Features::HRTIMER) => {
                    Service::None
                }
                (None, Some(b)) => Service::Broadcast(b),
                (None, None) => Service::None,
            };
            if wanted == self.services[cpu] {
                continue;
            }
            self.services[cpu] = wanted;
            self.log_service(cpu);
            let local = match wanted {
                Service::Local(d) => Some(self.devices[d.0].clone()),
                Service::Broadcast(_) | Service::None => None,
            };
            self.assignments[cpu] += 1;
            changes.assignments.push(Assignment {
                cpu,
                sequence: self.assignments[cpu],
                service: wanted,
                local,
            });
        }
        changes
    }

    fn log_service(&self, cpu: usize) {
        match self.service(cpu) {
            Service::Local(d) => {
                let dev = &self.devices[d.0];
                log::info!(
                    "CPU {cpu} tick device {} (rating {}, local to it)",
                    dev.spec.name,
                    dev.spec.rating
                );
            }
            Service::Broadcast(b) => log::info!(
                "CPU {cpu} has no usable local device; served by broadcast from {}",
                self.devices[b.0].spec.name
            ),
            Service::None => log::warn!("CPU {cpu} has no clock event device at all"),
        }
    }
}
