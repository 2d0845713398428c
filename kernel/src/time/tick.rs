//! The tick layer: which clock event device keeps time for each CPU, each CPU's timer queue,
//! and the glue between them (Linux's `tick-common.c`, `tick-broadcast.c` and `hrtimer.c`,
//! reduced to what this kernel needs).
//!
//! Selection (Linux's `tick_check_preferred`): a CPU's tick device is the best-rated usable
//! device local to it (a per-CPU device whose CPU set is that CPU alone); a local device beats
//! a non-local one whatever their ratings. A CPU without a local device is served by the
//! broadcast device: the best-rated usable device that is neither per-CPU nor stops in deep
//! C-states. A better device registered later replaces the current one and inherits its
//! pending event.
//!
//! Everything here is plain data driven by the caller, who says which CPU it runs on and what
//! time it is; the kernel keeps one [`TickSystem`] behind an interrupt-safe lock, the host
//! tests drive one with fake devices and a fake clock. Device programming must happen on the
//! CPU that owns a local device (a LAPIC timer is only reachable from its CPU), so a CPU only
//! arms and cancels its own timers.

use super::broadcast::BroadcastSet;
use super::clockevents::{ClockEventDevice, CpuSet, DeviceSpec, EventDriver, Features, State};
use super::hrtimer::{Expired, TimerId, TimerQueue};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Index of a registered device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeviceId(pub usize);

/// How the tick runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickMode {
    /// A tick every `1 / hz` s; timers expire at the first tick at or after their deadline
    /// (hardware periodic mode where the device has it, re-armed one-shot otherwise).
    Periodic { hz: u32 },
    /// Tickless: the device is programmed for the earliest timer only, and stopped when none
    /// is pending.
    Oneshot,
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
    Local(DeviceId),
    Broadcast(DeviceId),
}

/// Why a timer could not be armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArmError {
    CpuNotOnline(usize),
    /// No device can interrupt this CPU.
    NoTickDevice(usize),
}

impl fmt::Display for ArmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArmError::CpuNotOnline(c) => write!(f, "CPU {c} is not online in the tick layer"),
            ArmError::NoTickDevice(c) => write!(f, "no clock event device serves CPU {c}"),
        }
    }
}

/// One CPU's timekeeping.
struct CpuTick<T> {
    service: Service,
    queue: TimerQueue<T>,
    /// The deadline this CPU has asked its device (or the broadcast) for; `u64::MAX`: none.
    next_event_ns: u64,
    /// Periodic mode: time of the next tick.
    next_tick_ns: u64,
    ticks: u64,
    /// Device interrupts and broadcast wake-ups handled on this CPU.
    events: u64,
}

/// What a device interrupt left for the caller to do, outside the lock.
#[derive(Debug)]
pub struct Fired<T> {
    /// This CPU's timers whose deadline has passed, in deadline order: run their callbacks.
    pub expired: Vec<Expired<T>>,
    /// Other CPUs whose deadline has passed: send each a wake-up IPI, on which it calls
    /// [`TickSystem::wakeup`].
    pub wake: CpuSet,
}

impl<T> Default for Fired<T> {
    fn default() -> Self {
        Fired { expired: Vec::new(), wake: CpuSet::EMPTY }
    }
}

/// A line of the report about one CPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickDeviceInfo {
    pub cpu: usize,
    /// Name of the device that interrupts this CPU (the broadcast device's when served by it).
    pub device: Option<String>,
    pub mode: String,
    pub events: u64,
    pub ticks: u64,
    pub via_broadcast: bool,
}

/// Every device, every CPU's tick and timer queue.
pub struct TickSystem<T> {
    devices: Vec<ClockEventDevice>,
    cpus: Vec<Option<CpuTick<T>>>,
    broadcast: Option<DeviceId>,
    mode: TickMode,
    /// Events a device raised on a CPU it does not serve (misrouted or stale).
    pub misrouted: u64,
    /// A device failed while being programmed: the selection must run again once the
    /// operation in progress is done (never inside it, whose plan would go stale).
    reselect_pending: bool,
    /// Every device taken out of service or refused, with why, for the report.
    taken_out: Vec<(String, String)>,
}

impl<T> TickSystem<T> {
    pub fn new(mode: TickMode) -> TickSystem<T> {
        if let TickMode::Periodic { hz } = mode {
            assert!(hz > 0, "a periodic tick needs a frequency");
        }
        TickSystem {
            devices: Vec::new(),
            cpus: Vec::new(),
            broadcast: None,
            mode,
            misrouted: 0,
            reselect_pending: false,
            taken_out: Vec::new(),
        }
    }

    pub fn mode(&self) -> TickMode {
        self.mode
    }

    fn period_ns(&self) -> u64 {
        match self.mode {
            TickMode::Periodic { hz } => super::clocksource::NS_PER_S / u64::from(hz),
            TickMode::Oneshot => 0,
        }
    }

    pub fn device(&self, id: DeviceId) -> &ClockEventDevice {
        &self.devices[id.0]
    }

    pub fn devices(&self) -> impl Iterator<Item = (DeviceId, &ClockEventDevice)> {
        self.devices.iter().enumerate().map(|(i, d)| (DeviceId(i), d))
    }

    pub fn broadcast_device(&self) -> Option<DeviceId> {
        self.broadcast
    }

    pub fn service(&self, cpu: usize) -> Service {
        self.cpus.get(cpu).and_then(|c| c.as_ref()).map_or(Service::None, |c| c.service)
    }

    fn online(&self) -> impl Iterator<Item = usize> + '_ {
        self.cpus.iter().enumerate().filter(|(_, c)| c.is_some()).map(|(i, _)| i)
    }

    fn cpu(&mut self, cpu: usize) -> &mut CpuTick<T> {
        self.cpus[cpu].as_mut().expect("CPU is online in the tick layer")
    }

    /// Adds a device (detached until the selection uses it) and re-runs the selection.
    pub fn register(&mut self, spec: DeviceSpec, driver: &'static dyn EventDriver, now_ns: u64) -> DeviceId {
        let id = DeviceId(self.devices.len());
        let device = ClockEventDevice::new(spec, driver);
        log::info!(
            "registered {} (rating {}, {} Hz, CPUs {:#x}, delta {}..{} ns, {:?})",
            device.spec.name,
            device.spec.rating,
            device.spec.frequency_hz,
            device.spec.cpus.0,
            device.min_delta_ns,
            device.max_delta_ns,
            device.spec.features
        );
        if let Some(problem) = device.refused {
            log::warn!("{} refused: {problem}", device.spec.name);
            self.taken_out.push((device.spec.name.clone(), alloc::format!("refused: {problem}")));
        }
        self.devices.push(device);
        self.reselect_pending = true;
        self.settle(now_ns);
        id
    }

    /// Brings `cpu` into the tick layer and gives it a device.
    pub fn cpu_online(&mut self, cpu: usize, now_ns: u64) {
        if self.cpus.len() <= cpu {
            self.cpus.resize_with(cpu + 1, || None);
        }
        if self.cpus[cpu].is_none() {
            self.cpus[cpu] = Some(CpuTick {
                service: Service::None,
                queue: TimerQueue::new(),
                next_event_ns: u64::MAX,
                next_tick_ns: now_ns.saturating_add(self.period_ns()),
                ticks: 0,
                events: 0,
            });
        }
        self.reselect_pending = true;
        self.settle(now_ns);
    }

    /// Takes a device out of service for good (failed self-test, gave up programming) and
    /// moves the CPUs it served to the next best device, with their pending events.
    pub fn take_out(&mut self, id: DeviceId, reason: &str, now_ns: u64) {
        if self.devices[id.0].failed {
            return;
        }
        self.mark_failed(id, reason.into());
        self.settle(now_ns);
    }

    /// Marks a device failed for good and records why; `settle` then moves its CPUs on.
    fn mark_failed(&mut self, id: DeviceId, reason: String) {
        let d = &mut self.devices[id.0];
        log::warn!("{} taken out of service: {reason}", d.spec.name);
        d.failed = true;
        self.taken_out.push((d.spec.name.clone(), reason));
        self.reselect_pending = true;
    }

    /// The devices taken out of service or refused so far: (name, why).
    pub fn taken_out(&self) -> &[(String, String)] {
        &self.taken_out
    }

    /// Runs the selection until no device fails while it programs them (each failure takes a
    /// device out for good, so this ends).
    fn settle(&mut self, now_ns: u64) {
        while self.reselect_pending {
            self.reselect_pending = false;
            self.reselect(now_ns);
        }
    }

    fn best_local(&self, cpu: usize) -> Option<DeviceId> {
        self.devices()
            .filter(|(_, d)| {
                !d.failed && d.spec.features.contains(Features::PER_CPU) && d.spec.cpus.only() == Some(cpu)
            })
            .max_by_key(|&(id, d)| (d.spec.rating, core::cmp::Reverse(id)))
            .map(|(id, _)| id)
    }

    fn best_broadcast(&self, locals: &[Option<DeviceId>]) -> Option<DeviceId> {
        self.devices()
            .filter(|(id, d)| {
                !d.failed
                    && !d.spec.features.intersects(Features::PER_CPU | Features::STOPS_IN_DEEP_IDLE)
                    && !locals.contains(&Some(*id))
            })
            .max_by_key(|&(id, d)| (d.spec.rating, core::cmp::Reverse(id)))
            .map(|(id, _)| id)
    }

    /// Recomputes every CPU's service and the broadcast device; devices that change hands are
    /// shut down and attached anew, and each CPU's pending deadline is programmed again on its
    /// new device, so no event is lost by a replacement.
    fn reselect(&mut self, now_ns: u64) {
        let online: Vec<usize> = self.online().collect();
        let locals: Vec<Option<DeviceId>> = online.iter().map(|&cpu| self.best_local(cpu)).collect();
        let broadcast = self.best_broadcast(&locals);
        let wanted: Vec<Service> = locals
            .iter()
            .map(|&local| match (local, broadcast) {
                (Some(d), _) => Service::Local(d),
                (None, Some(b)) => Service::Broadcast(b),
                (None, None) => Service::None,
            })
            .collect();
        let changed: Vec<(usize, Service)> = online
            .iter()
            .zip(&wanted)
            .filter(|&(&cpu, &w)| self.service(cpu) != w)
            .map(|(&cpu, &w)| (cpu, w))
            .collect();
        if self.broadcast == broadcast && changed.is_empty() {
            return;
        }
        // Release what is no longer used (old local devices, a replaced broadcast device)
        // before attaching anything: a released device may be the one attached next.
        for &(cpu, _) in &changed {
            if let Service::Local(old) = self.service(cpu) {
                self.detach(old);
            }
        }
        if self.broadcast != broadcast {
            if let Some(old) = self.broadcast {
                self.detach(old);
            }
            if let Some(new) = broadcast {
                self.attach(new, State::Oneshot);
                log::info!("{} is the broadcast device", self.devices[new.0].spec.name);
            }
            self.broadcast = broadcast;
        }
        for (cpu, service) in changed {
            self.cpu(cpu).service = service;
            self.log_service(cpu);
            if let Service::Local(d) = service {
                let state = if self.wants_hardware_periodic(d) { State::Periodic } else { State::Oneshot };
                self.attach(d, state);
            }
            // Hand the pending deadline to the new device.
            self.cpu(cpu).next_event_ns = u64::MAX;
            self.reprogram(cpu, now_ns);
        }
        if let Some(b) = self.broadcast {
            self.reprogram_broadcast(b, now_ns);
        }
    }

    fn log_service(&self, cpu: usize) {
        match self.service(cpu) {
            Service::Local(d) => {
                let dev = &self.devices[d.0];
                log::info!(
                    "CPU {cpu} tick device {} (rating {}, local to it), {}",
                    dev.spec.name,
                    dev.spec.rating,
                    self.mode
                );
            }
            Service::Broadcast(b) => log::info!(
                "CPU {cpu} has no usable local device; served by broadcast from {}, {}",
                self.devices[b.0].spec.name,
                self.mode
            ),
            Service::None => log::warn!("CPU {cpu} has no clock event device at all"),
        }
    }

    /// Hardware periodic mode needs the feature and a period the device can be programmed
    /// for; otherwise the tick is emulated one-shot (a clamped period would tick at the wrong
    /// rate).
    fn wants_hardware_periodic(&self, id: DeviceId) -> bool {
        let d = &self.devices[id.0];
        matches!(self.mode, TickMode::Periodic { .. })
            && d.spec.features.contains(Features::PERIODIC)
            && (d.min_delta_ns..=d.max_delta_ns).contains(&self.period_ns())
    }

    fn attach(&mut self, id: DeviceId, state: State) {
        let period = self.period_ns();
        let d = &mut self.devices[id.0];
        if d.state() == State::Detached {
            d.switch_state(State::Shutdown, 0).expect("detached -> shutdown is legal");
        }
        d.switch_state(state, period).expect("a shut-down device enters periodic or oneshot");
    }

    fn detach(&mut self, id: DeviceId) {
        let d = &mut self.devices[id.0];
        if d.state() != State::Detached {
            d.switch_state(State::Shutdown, 0).expect("any state shuts down");
            d.switch_state(State::Detached, 0).expect("shutdown -> detached is legal");
        }
    }

    /// The deadline `cpu` needs next: its earliest timer (tickless) or its next tick.
    fn needed(&self, cpu: usize) -> u64 {
        let c = self.cpus[cpu].as_ref().expect("online");
        match self.mode {
            TickMode::Oneshot => c.queue.earliest().unwrap_or(u64::MAX),
            TickMode::Periodic { .. } => c.next_tick_ns,
        }
    }

    /// Makes `cpu`'s device (or the broadcast device) interrupt at the deadline it needs.
    fn reprogram(&mut self, cpu: usize, now_ns: u64) {
        let needed = self.needed(cpu);
        // Nothing new to ask for; "nothing" is asked again so that a device whose event was
        // consumed is stopped.
        if self.cpu(cpu).next_event_ns == needed && needed != u64::MAX {
            return;
        }
        let service = self.cpu(cpu).service;
        match service {
            Service::None => {}
            Service::Local(d) if self.devices[d.0].state() == State::Periodic => {}
            Service::Local(d) => {
                self.cpu(cpu).next_event_ns = needed;
                self.program_device(d, needed, now_ns);
            }
            Service::Broadcast(b) => {
                self.cpu(cpu).next_event_ns = needed;
                if needed < self.devices[b.0].next_event_ns {
                    self.program_device(b, needed, now_ns);
                }
            }
        }
    }

    /// Programs device `d` for `deadline` (`u64::MAX`: stop it); a device that cannot be
    /// programmed is marked failed, and `settle` moves its CPUs on.
    fn program_device(&mut self, d: DeviceId, deadline: u64, now_ns: u64) {
        let dev = &mut self.devices[d.0];
        if deadline == u64::MAX {
            if dev.state() == State::Oneshot {
                dev.switch_state(State::OneshotStopped, 0).expect("oneshot -> stopped is legal");
            }
            dev.next_event_ns = u64::MAX;
            return;
        }
        if let Err(e) = dev.program(deadline, now_ns) {
            let reason = alloc::format!("{e}");
            self.mark_failed(d, reason);
        }
    }

    fn reprogram_broadcast(&mut self, b: DeviceId, now_ns: u64) {
        let set = self.broadcast_set();
        let cpus = &self.cpus;
        let earliest = set.earliest(|c| cpus[c].as_ref().map_or(u64::MAX, |t| t.next_event_ns));
        self.program_device(b, earliest, now_ns);
    }

    fn broadcast_set(&self) -> BroadcastSet {
        let mut cpus = CpuSet::EMPTY;
        for (i, c) in self.cpus.iter().enumerate() {
            if matches!(c, Some(CpuTick { service: Service::Broadcast(_), .. })) {
                cpus.insert(i);
            }
        }
        BroadcastSet { cpus }
    }

    /// Arms a timer on `cpu` (the calling CPU) at `deadline_ns`.
    pub fn arm(
        &mut self,
        cpu: usize,
        deadline_ns: u64,
        payload: T,
        now_ns: u64,
    ) -> Result<TimerId, ArmError> {
        let Some(Some(c)) = self.cpus.get_mut(cpu) else { return Err(ArmError::CpuNotOnline(cpu)) };
        if c.service == Service::None {
            return Err(ArmError::NoTickDevice(cpu));
        }
        let id = c.queue.arm(deadline_ns, payload);
        if deadline_ns < c.next_event_ns {
            self.reprogram(cpu, now_ns);
            self.settle(now_ns);
        }
        Ok(id)
    }

    /// Cancels a timer of `cpu`; its payload if it had not run yet. The device keeps its
    /// programmed time: an interrupt with nothing due just programs the next deadline.
    pub fn cancel(&mut self, cpu: usize, id: TimerId) -> Option<T> {
        self.cpus.get_mut(cpu)?.as_mut()?.queue.cancel(id)
    }

    /// Device `id` interrupted `cpu` (the calling CPU) at `now_ns`.
    pub fn device_event(&mut self, id: DeviceId, cpu: usize, now_ns: u64) -> Fired<T> {
        let fired = self.handle_device_event(id, cpu, now_ns);
        self.settle(now_ns);
        fired
    }

    fn handle_device_event(&mut self, id: DeviceId, cpu: usize, now_ns: u64) -> Fired<T> {
        if self.devices[id.0].state() == State::Oneshot {
            self.devices[id.0].next_event_ns = u64::MAX;
        }
        if Some(id) == self.broadcast {
            return self.broadcast_event(id, cpu, now_ns);
        }
        if self.service(cpu) != Service::Local(id) {
            // Misrouted: the CPU the device serves lost this programming, so it is woken to
            // look at its queue and program its device again from its own CPU (FreeBSD re-arms
            // a per-CPU timer that fired on the wrong CPU).
            self.misrouted += 1;
            let owner = self.online().find(|&c| self.service(c) == Service::Local(id));
            let mut fired = Fired::default();
            if let Some(owner) = owner {
                self.cpu(owner).next_event_ns = u64::MAX;
                fired.wake.insert(owner);
            }
            return fired;
        }
        self.cpu(cpu).next_event_ns = u64::MAX;
        Fired { expired: self.expire(cpu, now_ns), wake: CpuSet::EMPTY }
    }

    fn broadcast_event(&mut self, b: DeviceId, cpu: usize, now_ns: u64) -> Fired<T> {
        let cpus = &self.cpus;
        let mut due =
            self.broadcast_set().due(now_ns, |c| cpus[c].as_ref().map_or(u64::MAX, |t| t.next_event_ns));
        for c in due.iter() {
            // Each woken CPU asks again once it has run its timers.
            self.cpu(c).next_event_ns = u64::MAX;
        }
        let mut fired = Fired::default();
        if due.contains(cpu) {
            due.remove(cpu);
            fired.expired = self.expire(cpu, now_ns);
        }
        fired.wake = due;
        self.reprogram_broadcast(b, now_ns);
        fired
    }

    /// `cpu` was woken by a wake-up IPI (from the broadcast device, or for a misrouted event of
    /// its own device): runs its expired timers and programs its next deadline again.
    pub fn wakeup(&mut self, cpu: usize, now_ns: u64) -> Vec<Expired<T>> {
        if self.service(cpu) == Service::None {
            return Vec::new();
        }
        self.cpu(cpu).next_event_ns = u64::MAX;
        let expired = self.expire(cpu, now_ns);
        self.settle(now_ns);
        expired
    }

    /// Forgets what `cpu`'s device was programmed for and programs it again from the queue
    /// (after something programmed the hardware behind the layer's back, e.g. a measurement).
    pub fn resync(&mut self, cpu: usize, now_ns: u64) {
        let device = match self.service(cpu) {
            Service::Local(d) | Service::Broadcast(d) => d,
            Service::None => return,
        };
        // Nothing is known to be programmed any more.
        self.devices[device.0].next_event_ns = u64::MAX;
        self.cpu(cpu).next_event_ns = u64::MAX;
        self.reprogram(cpu, now_ns);
        if Some(device) == self.broadcast {
            self.reprogram_broadcast(device, now_ns);
        }
        self.settle(now_ns);
    }

    /// The index the next registered device will get (so a driver can route its interrupts to
    /// the device before registration may program it).
    pub fn next_device_id(&self) -> DeviceId {
        DeviceId(self.devices.len())
    }

    fn expire(&mut self, cpu: usize, now_ns: u64) -> Vec<Expired<T>> {
        let period = self.period_ns();
        let c = self.cpu(cpu);
        c.events += 1;
        if period > 0 && now_ns >= c.next_tick_ns {
            let missed = (now_ns - c.next_tick_ns) / period;
            c.ticks += missed + 1;
            c.next_tick_ns += (missed + 1) * period;
        }
        let mut expired = Vec::new();
        while let Some(e) = c.queue.pop_expired(now_ns) {
            expired.push(e);
        }
        self.reprogram(cpu, now_ns);
        expired
    }

    /// One entry per online CPU, for the report and the log.
    pub fn tick_devices(&self) -> Vec<TickDeviceInfo> {
        self.online()
            .map(|cpu| {
                let c = self.cpus[cpu].as_ref().expect("online");
                let (device, via_broadcast) = match c.service {
                    Service::None => (None, false),
                    Service::Local(d) => (Some(d), false),
                    Service::Broadcast(b) => (Some(b), true),
                };
                let mode = match (self.mode, device) {
                    (TickMode::Periodic { .. }, Some(d)) if self.devices[d.0].state() == State::Periodic => {
                        "periodic"
                    }
                    (TickMode::Periodic { .. }, _) => "periodic-emulated",
                    (TickMode::Oneshot, _) => "oneshot",
                };
                TickDeviceInfo {
                    cpu,
                    device: device.map(|d| self.devices[d.0].spec.name.clone()),
                    mode: mode.into(),
                    events: c.events,
                    ticks: c.ticks,
                    via_broadcast,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::clockevents::{DriverState, EventPassed};
    use alloc::boxed::Box;
    use alloc::collections::BTreeMap;
    use alloc::vec;
    use spin::Mutex;

    /// A 100 MHz device on a simulated clock: remembers the absolute time it would fire at.
    struct SimDriver {
        clock: &'static Mutex<u64>,
        fires_at: Mutex<Option<u64>>,
        period_ns: Mutex<Option<u64>>,
        /// Deltas below this many ticks report a passed comparator.
        passes_below_ticks: Mutex<u64>,
        last_state: Mutex<Option<DriverState>>,
    }

    impl EventDriver for SimDriver {
        fn switch_state(&self, state: DriverState) {
            *self.last_state.lock() = Some(state);
            let now = *self.clock.lock();
            match state {
                DriverState::Periodic { period_ticks } => {
                    *self.period_ns.lock() = Some(period_ticks * 10);
                    *self.fires_at.lock() = Some(now + period_ticks * 10);
                }
                _ => {
                    *self.period_ns.lock() = None;
                    *self.fires_at.lock() = None;
                }
            }
        }
        fn set_next_event(&self, delta_ticks: u64) -> Result<(), EventPassed> {
            if delta_ticks < *self.passes_below_ticks.lock() {
                return Err(EventPassed);
            }
            *self.fires_at.lock() = Some(*self.clock.lock() + delta_ticks * 10);
            Ok(())
        }
    }

    /// Payload of a simulated timer: its own number.
    type Sys = TickSystem<u32>;

    struct Sim {
        sys: Sys,
        clock: &'static Mutex<u64>,
        drivers: Vec<&'static SimDriver>,
        /// Which CPU each device's interrupt reaches.
        irq_cpu: Vec<usize>,
        /// Timer number -> (cpu, deadline, fired at).
        timers: BTreeMap<u32, (usize, u64, Vec<u64>)>,
        fired_on: BTreeMap<u32, usize>,
        next_timer: u32,
    }

    impl Sim {
        fn new(mode: TickMode, cpus: usize) -> Sim {
            let clock: &'static Mutex<u64> = Box::leak(Box::new(Mutex::new(1_000_000)));
            let mut sys = Sys::new(mode);
            for c in 0..cpus {
                sys.cpu_online(c, 1_000_000);
            }
            Sim {
                sys,
                clock,
                drivers: vec![],
                irq_cpu: vec![],
                timers: BTreeMap::new(),
                fired_on: BTreeMap::new(),
                next_timer: 0,
            }
        }
        fn now(&self) -> u64 {
            *self.clock.lock()
        }
        fn add(
            &mut self,
            name: &str,
            rating: u32,
            cpus: CpuSet,
            features: Features,
            irq_cpu: usize,
        ) -> DeviceId {
            let driver: &'static SimDriver = Box::leak(Box::new(SimDriver {
                clock: self.clock,
                fires_at: Mutex::new(None),
                period_ns: Mutex::new(None),
                passes_below_ticks: Mutex::new(0),
                last_state: Mutex::new(None),
            }));
            self.drivers.push(driver);
            self.irq_cpu.push(irq_cpu);
            let spec = DeviceSpec {
                name: name.into(),
                features: features | Features::ONESHOT,
                rating,
                cpus,
                frequency_hz: 100_000_000,
                min_delta_ticks: 100,
                max_delta_ticks: 1 << 31,
            };
            let now = self.now();
            self.sys.register(spec, driver, now)
        }
        fn per_cpu(&mut self, name: &str, rating: u32, cpu: usize) -> DeviceId {
            self.add(name, rating, CpuSet::single(cpu), Features::PER_CPU | Features::PERIODIC, cpu)
        }
        fn arm(&mut self, cpu: usize, deadline: u64) -> (u32, TimerId) {
            let n = self.next_timer;
            self.next_timer += 1;
            let now = self.now();
            let id = self.sys.arm(cpu, deadline, n, now).expect("armed");
            self.timers.insert(n, (cpu, deadline, vec![]));
            (n, id)
        }
        fn run_expired(&mut self, cpu: usize, expired: Vec<Expired<u32>>) {
            let now = self.now();
            for e in expired {
                let t = self.timers.get_mut(&e.payload).expect("known timer");
                assert_eq!(t.0, cpu, "timer {} ran on CPU {cpu}, armed on CPU {}", e.payload, t.0);
                t.2.push(now);
                self.fired_on.insert(e.payload, cpu);
            }
        }
        /// Advances to the next device interrupt and delivers it (with its IPIs); false when
        /// no device is armed.
        fn step(&mut self) -> bool {
            let next =
                self.drivers.iter().enumerate().filter_map(|(i, d)| d.fires_at.lock().map(|t| (t, i))).min();
            let Some((at, dev)) = next else { return false };
            *self.clock.lock() = at.max(self.now());
            let d = self.drivers[dev];
            let period = *d.period_ns.lock();
            *d.fires_at.lock() = period.map(|p| at + p);
            let cpu = self.irq_cpu[dev];
            let now = self.now();
            let fired = self.sys.device_event(DeviceId(dev), cpu, now);
            self.run_expired(cpu, fired.expired);
            for woken in fired.wake.iter() {
                let expired = self.sys.wakeup(woken, now);
                self.run_expired(woken, expired);
            }
            true
        }
        fn run_until(&mut self, t: u64) {
            while self.drivers.iter().any(|d| d.fires_at.lock().is_some_and(|at| at <= t)) {
                self.step();
            }
            *self.clock.lock() = t.max(self.now());
        }
        fn assert_all_fired_once_never_early(&self) {
            for (n, (_, deadline, fired)) in &self.timers {
                assert_eq!(fired.len(), 1, "timer {n} (deadline {deadline}) fired {} times", fired.len());
                assert!(fired[0] >= *deadline, "timer {n} fired early: {} < {deadline}", fired[0]);
            }
        }
    }

    const LAPIC: u32 = 100;
    const PERCPU_HPET: u32 = 110;
    const GLOBAL_HPET: u32 = 90;

    #[test]
    fn each_cpu_gets_its_best_local_device() {
        let mut s = Sim::new(TickMode::Oneshot, 2);
        let l0 = s.per_cpu("lapic0", LAPIC, 0);
        s.per_cpu("lapic1", LAPIC, 1);
        let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
        assert_eq!(s.sys.service(0), Service::Local(h0));
        assert_eq!(s.sys.service(1), Service::Local(DeviceId(1)));
        assert_eq!(s.sys.device(l0).state(), State::Detached, "the replaced LAPIC timer is released");
    }

    #[test]
    fn local_device_beats_a_better_rated_global_one() {
        let mut s = Sim::new(TickMode::Oneshot, 2);
        let l0 = s.per_cpu("lapic0", LAPIC, 0);
        let g = s.add("hpet", 200, CpuSet::first(2), Features::empty(), 0);
        assert_eq!(s.sys.service(0), Service::Local(l0));
        assert_eq!(s.sys.service(1), Service::Broadcast(g), "CPU 1 has no local device");
        assert_eq!(s.sys.broadcast_device(), Some(g));
    }

    #[test]
    fn cpu_without_local_device_is_served_by_broadcast() {
        let mut s = Sim::new(TickMode::Oneshot, 3);
        s.per_cpu("hpet0", PERCPU_HPET, 0);
        s.per_cpu("hpet1", PERCPU_HPET, 1);
        let g = s.add("hpet2", GLOBAL_HPET, CpuSet::first(3), Features::empty(), 0);
        assert_eq!(s.sys.service(2), Service::Broadcast(g));
        let now = s.now();
        s.arm(2, now + 500_000);
        s.arm(2, now + 100_000);
        s.arm(0, now + 200_000);
        s.run_until(now + 1_000_000);
        s.assert_all_fired_once_never_early();
        assert_eq!(s.fired_on.values().filter(|&&c| c == 2).count(), 2, "CPU 2's timers ran on CPU 2");
        let info = s.sys.tick_devices();
        assert!(info[2].via_broadcast && info[2].events == 2);
        assert_eq!(info[2].device.as_deref(), Some("hpet2"));
    }

    #[test]
    fn broadcast_serves_the_cpu_taking_its_interrupt_too() {
        let mut s = Sim::new(TickMode::Oneshot, 2);
        s.add("hpet", GLOBAL_HPET, CpuSet::first(2), Features::empty(), 0);
        let now = s.now();
        for i in 0..10 {
            s.arm(i % 2, now + 10_000 * (i as u64 + 1));
        }
        s.run_until(now + 1_000_000);
        s.assert_all_fired_once_never_early();
        assert!(s.sys.tick_devices().iter().all(|t| t.via_broadcast && t.events == 5));
    }

    #[test]
    fn better_device_replaces_current_without_losing_pending_event() {
        let mut s = Sim::new(TickMode::Oneshot, 1);
        let l0 = s.per_cpu("lapic0", LAPIC, 0);
        let now = s.now();
        s.arm(0, now + 1_000_000);
        assert!(s.drivers[l0.0].fires_at.lock().is_some());
        let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
        assert_eq!(s.drivers[l0.0].fires_at.lock().as_ref(), None, "the old device is shut down");
        assert_eq!(*s.drivers[h0.0].fires_at.lock(), Some(now + 1_000_000), "the new one inherits the event");
        s.run_until(now + 2_000_000);
        s.assert_all_fired_once_never_early();
    }

    #[test]
    fn failed_device_falls_back_with_its_pending_event() {
        let mut s = Sim::new(TickMode::Oneshot, 2);
        s.per_cpu("lapic0", LAPIC, 0);
        let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
        let g = s.add("hpet-global", GLOBAL_HPET, CpuSet::first(2), Features::empty(), 0);
        let now = s.now();
        s.arm(0, now + 300_000);
        s.sys.take_out(h0, "self-test failed", now);
        assert_eq!(s.sys.service(0), Service::Local(DeviceId(0)));
        assert_eq!(s.sys.service(1), Service::Broadcast(g));
        s.run_until(now + 1_000_000);
        s.assert_all_fired_once_never_early();
    }

    #[test]
    fn device_that_keeps_passing_its_comparator_is_taken_out_and_replaced() {
        let mut s = Sim::new(TickMode::Oneshot, 1);
        s.per_cpu("lapic0", LAPIC, 0);
        let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
        *s.drivers[h0.0].passes_below_ticks.lock() = u64::MAX;
        let now = s.now();
        s.arm(0, now + 50_000);
        assert!(s.sys.device(h0).failed);
        assert_eq!(s.sys.service(0), Service::Local(DeviceId(0)));
        s.run_until(now + 1_000_000);
        s.assert_all_fired_once_never_early();
    }

    /// Found by the `tick` fuzz target: a device that fails while the selection programs it
    /// must not leave CPUs on it (the selection runs again once it is done, not inside).
    #[test]
    fn device_failing_during_selection_does_not_strand_its_cpus() {
        let mut s = Sim::new(TickMode::Oneshot, 2);
        let a = s.add("a", 90, CpuSet::first(2), Features::empty(), 0);
        let now = s.now();
        s.arm(0, now + 1_000_000);
        s.arm(1, now + 1_000_000);
        let b = s.drivers.len();
        // The next device passes every comparator it is given.
        let driver: &'static SimDriver = Box::leak(Box::new(SimDriver {
            clock: s.clock,
            fires_at: Mutex::new(None),
            period_ns: Mutex::new(None),
            passes_below_ticks: Mutex::new(u64::MAX),
            last_state: Mutex::new(None),
        }));
        s.drivers.push(driver);
        s.irq_cpu.push(0);
        let spec = DeviceSpec {
            name: "b".into(),
            features: Features::ONESHOT,
            rating: 95,
            cpus: CpuSet::first(2),
            frequency_hz: 100_000_000,
            min_delta_ticks: 100,
            max_delta_ticks: 1 << 31,
        };
        let b = {
            assert_eq!(s.sys.register(spec, driver, now), DeviceId(b));
            DeviceId(b)
        };
        assert!(s.sys.device(b).failed);
        assert_eq!(s.sys.broadcast_device(), Some(a));
        assert_eq!((s.sys.service(0), s.sys.service(1)), (Service::Broadcast(a), Service::Broadcast(a)));
        s.run_until(now + 2_000_000);
        s.assert_all_fired_once_never_early();
    }

    #[test]
    fn unusable_devices_are_refused_at_registration() {
        let mut s = Sim::new(TickMode::Oneshot, 1);
        let base = crate::time::clockevents::fake::spec("x", 200, CpuSet::single(0), Features::PER_CPU);
        for bad in [
            DeviceSpec { frequency_hz: 0, ..base.clone() },
            DeviceSpec { max_delta_ticks: 1, min_delta_ticks: 1, ..base.clone() },
            DeviceSpec { min_delta_ticks: 2_000_000, ..base.clone() },
            DeviceSpec { features: Features::PER_CPU, ..base.clone() },
        ] {
            let d = s.sys.register(bad, crate::time::clockevents::fake::FakeDriver::leak(), s.now());
            assert!(s.sys.device(d).failed);
        }
        assert_eq!(s.sys.service(0), Service::None, "no refused device serves a CPU");
    }

    /// A measurement that programs the broadcast device behind the layer's back must not leave
    /// it believing the device is armed for an earlier time than it is.
    #[test]
    fn resync_of_a_stopped_broadcast_device_keeps_it_usable() {
        let mut s = Sim::new(TickMode::Oneshot, 2);
        let g = s.add("global", GLOBAL_HPET, CpuSet::first(2), Features::empty(), 0);
        let now = s.now();
        assert_eq!(s.sys.device(g).state(), State::OneshotStopped);
        s.sys.resync(1, now);
        s.arm(1, now + 100_000);
        s.run_until(now + 1_000_000);
        s.assert_all_fired_once_never_early();
    }

    #[test]
    fn taken_out_devices_are_recorded_with_their_reason() {
        let mut s = Sim::new(TickMode::Oneshot, 1);
        let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
        s.sys.take_out(h0, "storm", s.now());
        assert_eq!(s.sys.taken_out(), [("hpet0".to_string(), "storm".to_string())]);
    }

    #[test]
    fn past_deadline_fires_at_the_minimum_delta_never_lost() {
        let mut s = Sim::new(TickMode::Oneshot, 1);
        let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
        let now = s.now();
        s.arm(0, now - 500);
        assert_eq!(*s.drivers[h0.0].fires_at.lock(), Some(now + 1_000), "min delta: 100 ticks = 1 us");
        s.run_until(now + 10_000);
        s.assert_all_fired_once_never_early();
    }

    #[test]
    fn early_interrupt_pops_nothing_and_reprograms() {
        let mut s = Sim::new(TickMode::Oneshot, 1);
        let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
        let now = s.now();
        s.arm(0, now + 100_000);
        *s.clock.lock() = now + 99_000;
        let fired = s.sys.device_event(h0, 0, now + 99_000);
        assert!(fired.expired.is_empty());
        assert_eq!(*s.drivers[h0.0].fires_at.lock(), Some(now + 100_000), "armed again for the deadline");
        s.run_until(now + 200_000);
        s.assert_all_fired_once_never_early();
    }

    #[test]
    fn tickless_device_stops_when_its_queue_empties() {
        let mut s = Sim::new(TickMode::Oneshot, 1);
        let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
        let now = s.now();
        let (_, id) = s.arm(0, now + 50_000);
        s.arm(0, now + 100_000);
        assert_eq!(s.sys.cancel(0, id), Some(0));
        s.run_until(now + 1_000_000);
        assert_eq!(s.sys.device(h0).state(), State::OneshotStopped);
        assert_eq!(s.timers[&0].2.len(), 0, "the cancelled timer never ran");
        assert_eq!(s.timers[&1].2.len(), 1);
        assert_eq!(s.sys.tick_devices()[0].events, 2, "the cancelled deadline still interrupts once");
    }

    #[test]
    fn periodic_tick_uses_hardware_periodic_mode_and_expires_timers_at_ticks() {
        let mut s = Sim::new(TickMode::Periodic { hz: 1000 }, 1);
        let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
        assert_eq!(s.sys.device(h0).state(), State::Periodic);
        let now = s.now();
        s.arm(0, now + 2_500_000);
        s.run_until(now + 10_000_000);
        let fired = s.timers[&0].2[0];
        assert_eq!(fired, now + 3_000_000, "expires at the first tick after its deadline");
        assert_eq!(s.sys.tick_devices()[0].ticks, 10);
        assert_eq!(s.sys.tick_devices()[0].mode, "periodic");
    }

    #[test]
    fn periodic_tick_is_emulated_when_the_period_exceeds_the_maximum_delta() {
        let mut s = Sim::new(TickMode::Periodic { hz: 100 }, 1);
        let spec = DeviceSpec {
            max_delta_ticks: 500_000, // 5 ms: shorter than the 10 ms tick
            ..crate::time::clockevents::fake::spec(
                "short",
                LAPIC,
                CpuSet::single(0),
                Features::PER_CPU | Features::PERIODIC,
            )
        };
        let driver = crate::time::clockevents::fake::FakeDriver::leak();
        let d = s.sys.register(spec, driver, s.now());
        assert_eq!(s.sys.device(d).state(), State::Oneshot, "not periodic at a clamped period");
    }

    #[test]
    fn periodic_tick_is_emulated_on_a_oneshot_only_device() {
        let mut s = Sim::new(TickMode::Periodic { hz: 1000 }, 2);
        s.add("oneshot0", LAPIC, CpuSet::single(0), Features::PER_CPU, 0);
        s.add("global", GLOBAL_HPET, CpuSet::first(2), Features::empty(), 0);
        let now = s.now();
        s.arm(1, now + 1_500_000);
        s.run_until(now + 5_000_000);
        s.assert_all_fired_once_never_early();
        let info = s.sys.tick_devices();
        assert_eq!(info[0].mode, "periodic-emulated");
        assert_eq!((info[0].ticks, info[1].ticks), (5, 5), "both CPUs tick, CPU 1 through broadcast");
    }

    #[test]
    fn event_on_a_cpu_the_device_does_not_serve_is_misrouted() {
        let mut s = Sim::new(TickMode::Oneshot, 2);
        let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
        s.per_cpu("hpet1", PERCPU_HPET, 1);
        let now = s.now();
        s.arm(0, now);
        let fired = s.sys.device_event(h0, 1, now + 5_000);
        assert!(fired.expired.is_empty(), "CPU 1 must not run CPU 0's timers");
        assert_eq!(s.sys.misrouted, 1);
        assert_eq!(fired.wake, CpuSet::single(0), "the owner is woken to look at its queue");
        *s.clock.lock() = now + 5_000;
        let expired = s.sys.wakeup(0, now + 5_000);
        s.run_expired(0, expired);
        s.assert_all_fired_once_never_early();
    }

    #[test]
    fn no_device_means_arming_fails_loudly() {
        let mut s = Sim::new(TickMode::Oneshot, 1);
        assert_eq!(s.sys.arm(0, 5, 0, 0), Err(ArmError::NoTickDevice(0)));
        assert_eq!(s.sys.arm(3, 5, 0, 0), Err(ArmError::CpuNotOnline(3)));
    }

    #[test]
    fn random_timers_on_mixed_devices_fire_once_never_early_on_their_cpu() {
        for (mode, seed) in [(TickMode::Oneshot, 7), (TickMode::Periodic { hz: 250 }, 11)] {
            let mut s = Sim::new(mode, 4);
            s.per_cpu("hpet0", PERCPU_HPET, 0);
            s.per_cpu("lapic1", LAPIC, 1);
            s.add("global", GLOBAL_HPET, CpuSet::first(4), Features::empty(), 0);
            let mut rng = crate::time::testing::XorShift(seed);
            let mut cancelled = Vec::new();
            let mut live: Vec<(usize, u32, TimerId)> = Vec::new();
            for _ in 0..3_000 {
                let cpu = (rng.next() % 4) as usize;
                match rng.next() % 10 {
                    0..=5 => {
                        let now = s.now();
                        let deadline = now + rng.next() % 30_000_000;
                        let (n, id) = s.arm(cpu, deadline);
                        live.push((cpu, n, id));
                    }
                    6 if !live.is_empty() => {
                        let (cpu, n, id) = live.swap_remove((rng.next() % live.len() as u64) as usize);
                        if s.sys.cancel(cpu, id).is_some() {
                            cancelled.push(n);
                        }
                    }
                    _ => {
                        let now = s.now();
                        s.run_until(now + rng.next() % 300_000);
                    }
                }
            }
            let now = s.now();
            s.run_until(now + 100_000_000);
            for n in &cancelled {
                assert!(s.timers.remove(n).unwrap().2.is_empty(), "cancelled timer {n} ran");
            }
            s.assert_all_fired_once_never_early();
            assert!(
                s.timers.len() > 1000 && cancelled.len() > 50,
                "{} timers, {} cancelled",
                s.timers.len(),
                cancelled.len()
            );
        }
    }
}
