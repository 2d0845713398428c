//! Host tests of the tick layer: N per-CPU ticks, the registry and the broadcast, driven as the
//! kernel drives them, on simulated 100 MHz devices and a simulated clock. The simulator runs
//! one CPU at a time and says which: a per-CPU device programmed from another CPU fails the
//! test (as the kernel's LAPIC driver refuses it).

use super::*;
use crate::broadcast::Broadcast;
use crate::clockevents::{CpuSet, DeviceSpec, DriverState, EventDriver, EventPassed, Features, State};
use crate::clocks::{BootInstant, ClockDeadline, Offsets, WallTime};
use crate::hrtimer::{Cancel, Expired, TimerId};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use expiry::{Expiry, ExpiryContext, Hang, Outcome};
use glue::Platform;
use spin::Mutex;

/// The simulated machine's clock and the CPU the simulator is running code on.
struct World {
    clock: Mutex<u64>,
    running_on: Mutex<usize>,
    /// The timekeeper's offsets (REALTIME and BOOTTIME from the clock, which is MONOTONIC).
    offsets: Mutex<Offsets>,
}

/// A 100 MHz device on the simulated clock: remembers the absolute time it would fire at.
struct SimDriver {
    world: &'static World,
    /// The CPU whose local device it is (programmable only from there).
    owner: Option<usize>,
    fires_at: Mutex<Option<u64>>,
    period_ns: Mutex<Option<u64>>,
    /// Deltas below this many ticks report a passed comparator.
    passes_below_ticks: Mutex<u64>,
    /// The CPU a DYNIRQ device was last aimed at (`None`: never moved; see `Sim::irq_cpu`).
    target: Mutex<Option<usize>>,
    /// An HPET block's comparator: programmed against that block's own main counter (its own
    /// rate and offset); `None`: a device counting 100 MHz ticks from the clock itself.
    block: Option<SimBlock>,
}

/// An HPET block's main counter on the simulated clock: `offset + ns * hz / 10^9` ticks.
#[derive(Debug, Clone, Copy)]
struct SimBlock {
    hz: u64,
    offset: u64,
}

impl SimBlock {
    /// The counter at `ns`.
    fn counter(self, ns: u64) -> u64 {
        self.offset + (u128::from(ns) * u128::from(self.hz) / 1_000_000_000) as u64
    }
    /// When the counter reaches `value` (the first ns at which it reads `value` or more).
    fn reaches(self, value: u64) -> u64 {
        (u128::from(value - self.offset) * 1_000_000_000).div_ceil(u128::from(self.hz)) as u64
    }
    /// When a 32-bit comparator written `delta` ticks past the counter at `now` matches: the
    /// counter's low 32 bits equal to the value written (as the kernel's comparators run).
    fn fires(self, now: u64, delta: u64) -> u64 {
        let counter = self.counter(now);
        let written = (counter as u32).wrapping_add(delta as u32);
        let ahead = u64::from(written.wrapping_sub(counter as u32));
        self.reaches(counter + ahead)
    }
}

impl SimDriver {
    fn check_cpu(&self) {
        if let Some(owner) = self.owner {
            let here = *self.world.running_on.lock();
            assert_eq!(here, owner, "per-CPU device of CPU {owner} driven from CPU {here}");
        }
    }
}

impl EventDriver for SimDriver {
    fn switch_state(&self, state: DriverState) {
        self.check_cpu();
        let now = *self.world.clock.lock();
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
        self.check_cpu();
        if delta_ticks < *self.passes_below_ticks.lock() {
            return Err(EventPassed);
        }
        let now = *self.world.clock.lock();
        *self.fires_at.lock() = Some(match self.block {
            Some(b) => b.fires(now, delta_ticks),
            None => now + delta_ticks * 10,
        });
        Ok(())
    }
    fn retarget(&self, cpu: usize) -> bool {
        *self.target.lock() = Some(cpu);
        true
    }
}

/// Payload of a simulated timer: its own number.
type Tick = CpuTick<u32>;

/// A message to a CPU, delivered later (as the kernel's function-call IPI).
enum Message {
    Arm {
        deadline: u64,
        n: u32,
    },
    Cancel {
        id: TimerId,
        n: u32,
    },
    /// A wake-up IPI.
    Wake,
}

/// What a simulated timer's callback does besides recording when it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Nothing else.
    Plain,
    /// Re-arms itself at a deadline already passed, this many more times.
    RearmInPast(u32),
    /// Takes this long (the simulated clock moves on while it runs).
    Takes(u64),
    /// Arms this many timers on its CPU, 1 ms on (numbered from 1 000 000 up, not tracked).
    Arms(u32),
}

/// A simulated timer: the CPU it was armed on, its deadline and period (0: one-shot), when it
/// ran, and what its callback does.
struct SimTimer {
    cpu: usize,
    deadline: u64,
    period: u64,
    fired: Vec<u64>,
    behaviour: Behaviour,
    /// Armed on REALTIME or BOOTTIME: its deadline there (`deadline` is where it was queued).
    clock: Option<ClockDeadline>,
    /// Its callback runs deferred: after the interrupt that popped it (the simulator runs the
    /// CPU's deferred run on the way out of each interrupt).
    deferred: bool,
}

/// The simulator's side of one CPU's expiry: the crate's expiry loop runs on it as on the
/// kernel's, with the guard a `RefCell` borrow (re-entering the tick under it panics, as the
/// kernel's does).
struct SimCpu<'a> {
    cpu: usize,
    world: &'static World,
    tick: RefCell<&'a mut Tick>,
    bc: &'a Mutex<Broadcast>,
    timers: RefCell<&'a mut BTreeMap<u32, SimTimer>>,
    armed_by_callbacks: &'a core::cell::Cell<u32>,
    refused_in_callbacks: &'a RefCell<Vec<ArmError>>,
    registry: &'a Registry,
    /// Messages it sends (wake-up IPIs), delivered by the simulator.
    inbox: RefCell<&'a mut VecDeque<(usize, Message)>>,
    /// Devices it reports as failed, taken out by the simulator when it returns.
    failures: RefCell<Vec<DeviceFailure>>,
    hangs: RefCell<&'a mut Vec<(usize, Hang)>>,
    /// CPUs whose deferred run was asked for (`Platform::deferred_waiting`).
    deferred_raised: RefCell<&'a mut CpuSet>,
}

impl Platform for SimCpu<'_> {
    fn cpu(&self) -> usize {
        self.cpu
    }
    fn with_broadcast<R>(&self, f: impl FnOnce(&mut Broadcast) -> R) -> R {
        *self.world.running_on.lock() = self.cpu;
        f(&mut self.bc.lock())
    }
    fn is_broadcast_device(&self, device: DeviceId) -> bool {
        self.bc.lock().device() == Some(device)
    }
    fn send_wakeup(&self, cpu: usize) {
        self.inbox.borrow_mut().push_back((cpu, Message::Wake));
    }
    fn wake_owner_of(&self, device: DeviceId) {
        if let Some(owner) = self.registry.owner_of(device) {
            self.send_wakeup(owner);
        }
    }
    fn take_out(&self, failure: DeviceFailure) {
        self.failures.borrow_mut().push(failure);
    }
    fn hang(&self, _expiry: &Expiry, hang: Hang) {
        self.hangs.borrow_mut().push((self.cpu, hang));
    }
    fn deferred_waiting(&self) {
        self.deferred_raised.borrow_mut().insert(self.cpu);
    }
}

impl ExpiryContext for SimCpu<'_> {
    type Payload = u32;
    fn with_tick<R>(&self, f: impl FnOnce(&mut Tick, &Mutex<Broadcast>) -> R) -> Option<R> {
        *self.world.running_on.lock() = self.cpu;
        let mut tick = self.tick.try_borrow_mut().expect("a CPU's tick re-entered while its guard is held");
        Some(f(&mut tick, self.bc))
    }
    fn now_ns(&self) -> u64 {
        *self.world.clock.lock()
    }
    fn clock_deadline(&self, n: &u32) -> Option<ClockDeadline> {
        self.timers.borrow().get(n).and_then(|t| t.clock)
    }
    fn offsets(&self) -> Offsets {
        *self.world.offsets.lock()
    }
    fn is_deferred(&self, payload: &u32) -> bool {
        self.timers.borrow().get(payload).is_some_and(|t| t.deferred)
    }
    fn run(&self, e: Expired<u32>, now_ns: u64) -> Option<(u64, u32)> {
        let now = self.now_ns();
        let mut timers = self.timers.borrow_mut();
        let timer = timers.get_mut(&e.payload).expect("known timer");
        assert_eq!(
            timer.cpu, self.cpu,
            "timer {} ran on CPU {}, armed on CPU {}",
            e.payload, self.cpu, timer.cpu
        );
        timer.fired.push(now);
        match timer.behaviour {
            Behaviour::Plain => {}
            Behaviour::RearmInPast(0) => timer.behaviour = Behaviour::Plain,
            Behaviour::RearmInPast(n) => {
                timer.behaviour = Behaviour::RearmInPast(n - 1);
                return Some((e.deadline_ns.saturating_sub(1), e.payload));
            }
            Behaviour::Takes(ns) => *self.world.clock.lock() = now + ns,
            Behaviour::Arms(count) => {
                let mut tick = self.tick.borrow_mut();
                for k in 0..count {
                    match tick.arm(now + 1_000_000, 1_000_000 + k, now, self.bc) {
                        Ok(_) => self.armed_by_callbacks.set(self.armed_by_callbacks.get() + 1),
                        Err(r) => self.refused_in_callbacks.borrow_mut().push(r.error),
                    }
                }
            }
        }
        (timer.period > 0).then(|| (crate::hrtimer::forward(e.deadline_ns, timer.period, now_ns), e.payload))
    }
}

impl deliver::DeliveryContext for Sim {
    fn now_ns(&self) -> u64 {
        self.now()
    }
    fn with_broadcast<R>(&mut self, f: impl FnOnce(&mut Broadcast) -> R) -> R {
        f(&mut self.bc.lock())
    }
    fn wake(&mut self, cpu: usize) {
        self.inbox.push_back((cpu, Message::Wake));
    }
    fn assign(&mut self, a: Assignment) -> Option<DeviceFailure> {
        self.on(a.cpu, |t, now, bc| {
            t.apply(a, now, bc);
            t.take_failure()
        })
    }
    fn take_out(&mut self, device: DeviceId, reason: &str) -> Changes {
        self.registry.take_out(device, reason)
    }
}

struct Sim {
    world: &'static World,
    registry: Registry,
    bc: Mutex<Broadcast>,
    cpus: Vec<Tick>,
    drivers: Vec<&'static SimDriver>,
    /// Which CPU each device's interrupt reaches.
    irq_cpu: Vec<usize>,
    /// Timer number -> the timer.
    timers: BTreeMap<u32, SimTimer>,
    /// Expiries that could not catch up: the CPU and the hang.
    hangs: Vec<(usize, Hang)>,
    /// The most callbacks one expiry ran.
    most_callbacks: u32,
    /// Untracked timers armed by callbacks, and the arms refused there.
    armed_by_callbacks: core::cell::Cell<u32>,
    refused_in_callbacks: RefCell<Vec<ArmError>>,
    ids: BTreeMap<u32, TimerId>,
    cancelled: Vec<u32>,
    inbox: VecDeque<(usize, Message)>,
    next_timer: u32,
    /// CPUs whose idle loop sleeps deeply: after every interrupt they go back to deep idle.
    deep_sleepers: CpuSet,
    /// CPUs whose deferred run is due (on the way out of their interrupt), and whether the
    /// simulator holds those runs back (a test's window with timers waiting in the list).
    deferred_raised: CpuSet,
    hold_deferred: bool,
    /// Deferred callbacks run.
    deferred_ran: u32,
}

const LAPIC: u32 = 100;
const PERCPU_HPET: u32 = 110;
const GLOBAL_HPET: u32 = 90;

impl Sim {
    fn new(mode: TickMode, cpus: usize) -> Sim {
        let world: &'static World = Box::leak(Box::new(World {
            clock: Mutex::new(1_000_000),
            running_on: Mutex::new(0),
            offsets: Mutex::new(Offsets::default()),
        }));
        let mut s = Sim {
            world,
            registry: Registry::new(),
            bc: Mutex::new(Broadcast::new()),
            cpus: (0..cpus).map(|c| CpuTick::new(c, mode, 1_000_000, 16)).collect(),
            drivers: vec![],
            irq_cpu: vec![],
            timers: BTreeMap::new(),
            hangs: vec![],
            most_callbacks: 0,
            armed_by_callbacks: core::cell::Cell::new(0),
            refused_in_callbacks: RefCell::new(vec![]),
            ids: BTreeMap::new(),
            cancelled: vec![],
            inbox: VecDeque::new(),
            next_timer: 0,
            deep_sleepers: CpuSet::EMPTY,
            deferred_raised: CpuSet::EMPTY,
            hold_deferred: false,
            deferred_ran: 0,
        };
        for c in 0..cpus {
            let changes = s.registry.cpu_online(c);
            s.apply(changes);
        }
        s
    }
    fn now(&self) -> u64 {
        *self.world.clock.lock()
    }
    fn set_now(&self, t: u64) {
        *self.world.clock.lock() = t;
    }
    /// Runs `f` on `cpu`'s tick, as that CPU.
    fn on<R>(&mut self, cpu: usize, f: impl FnOnce(&mut Tick, u64, &Mutex<Broadcast>) -> R) -> R {
        *self.world.running_on.lock() = cpu;
        let now = self.now();
        f(&mut self.cpus[cpu], now, &self.bc)
    }
    /// Carries out a registry decision by the crate's `deliver`, as the kernel does: the
    /// broadcast first, then each CPU on itself (at once: the simulator delivers in order);
    /// devices that fail meanwhile are taken out and the selection runs again.
    fn apply(&mut self, changes: Changes) {
        deliver::deliver(self, changes);
        let changes = self.take_failures();
        if !changes.is_empty() {
            self.apply(changes);
        }
    }
    fn take_failures(&mut self) -> Changes {
        let mut changes = Changes::default();
        let mut failed = Vec::new();
        if let Some((d, e)) = self.bc.lock().take_failure() {
            failed.push((d, e));
        }
        for t in &mut self.cpus {
            if let Some(f) = t.take_failure() {
                failed.push((f.device, f.error));
            }
        }
        for (d, e) in failed {
            let more = self.registry.take_out(d, &alloc::format!("{e}"));
            changes.broadcast = more.broadcast.or(changes.broadcast);
            changes.assignments.extend(more.assignments);
        }
        changes
    }
    fn add_spec(&mut self, spec: DeviceSpec, irq_cpu: usize, passes_below_ticks: u64) -> DeviceId {
        let owner = spec.features.contains(Features::PER_CPU).then(|| spec.cpus.only()).flatten();
        let driver = self.driver(owner, passes_below_ticks);
        self.drivers.push(driver);
        self.irq_cpu.push(irq_cpu);
        let (id, changes) = self.registry.register(spec, driver);
        self.apply(changes);
        id
    }
    /// A simulated driver on this world's clock, local to `owner` if it is a per-CPU device.
    fn driver(&self, owner: Option<usize>, passes_below_ticks: u64) -> &'static SimDriver {
        let driver = SimDriver {
            passes_below_ticks: Mutex::new(passes_below_ticks),
            ..Self::plain_driver(self.world, owner)
        };
        Box::leak(Box::new(driver))
    }
    /// Comparator `name` of HPET block `block`, per-CPU for `cpu` (one-shot, 32-bit, the
    /// kernel's HPET deltas), its frequency its own block's.
    fn block_comparator(&mut self, name: &str, block: SimBlock, cpu: usize) -> DeviceId {
        let spec = DeviceSpec {
            name: name.into(),
            features: Features::ONESHOT | Features::PER_CPU,
            rating: PERCPU_HPET,
            cpus: CpuSet::single(cpu),
            frequency_hz: block.hz,
            min_delta_ticks: 192,
            max_delta_ticks: 0x7fff_ffff,
        };
        let driver: &'static SimDriver = Box::leak(Box::new(SimDriver {
            block: Some(block),
            ..Self::plain_driver(self.world, Some(cpu))
        }));
        self.drivers.push(driver);
        self.irq_cpu.push(cpu);
        let (id, changes) = self.registry.register(spec, driver);
        self.apply(changes);
        id
    }
    fn plain_driver(world: &'static World, owner: Option<usize>) -> SimDriver {
        SimDriver {
            world,
            owner,
            fires_at: Mutex::new(None),
            period_ns: Mutex::new(None),
            passes_below_ticks: Mutex::new(0),
            target: Mutex::new(None),
            block: None,
        }
    }
    fn add(&mut self, name: &str, rating: u32, cpus: CpuSet, features: Features, irq_cpu: usize) -> DeviceId {
        let spec = DeviceSpec {
            name: name.into(),
            features: features | Features::ONESHOT,
            rating,
            cpus,
            frequency_hz: 100_000_000,
            min_delta_ticks: 100,
            max_delta_ticks: 1 << 31,
        };
        self.add_spec(spec, irq_cpu, 0)
    }
    fn per_cpu(&mut self, name: &str, rating: u32, cpu: usize) -> DeviceId {
        self.add(name, rating, CpuSet::single(cpu), Features::PER_CPU | Features::PERIODIC, cpu)
    }
    fn take_out(&mut self, d: DeviceId, why: &str) {
        let changes = self.registry.take_out(d, why);
        self.apply(changes);
    }
    fn arm_periodic(&mut self, cpu: usize, deadline: u64, period: u64) -> (u32, TimerId) {
        let n = self.next_timer;
        self.next_timer += 1;
        let id = self.on(cpu, |t, now, bc| t.arm(deadline, n, now, bc)).expect("armed");
        self.timers.insert(
            n,
            SimTimer {
                cpu,
                deadline,
                period,
                fired: vec![],
                behaviour: Behaviour::Plain,
                clock: None,
                deferred: false,
            },
        );
        self.ids.insert(n, id);
        let changes = self.take_failures();
        self.apply(changes);
        (n, id)
    }
    /// Arms a timer on `cpu` at `at` on its clock, placed with the CPU's offsets under its
    /// guard as the kernel does.
    fn arm_on_clock(&mut self, cpu: usize, at: ClockDeadline) -> u32 {
        let n = self.next_timer;
        self.next_timer += 1;
        let (id, deadline) = self.on(cpu, |t, now, bc| {
            let deadline = at.monotonic(&t.offsets()).as_nanos();
            (t.arm(deadline, n, now, bc).expect("armed"), deadline)
        });
        let timer = SimTimer {
            cpu,
            deadline,
            period: 0,
            fired: vec![],
            behaviour: Behaviour::Plain,
            clock: Some(at),
            deferred: false,
        };
        self.timers.insert(n, timer);
        self.ids.insert(n, id);
        n
    }
    /// The timekeeper's offsets change (a step of REALTIME, time suspended); no CPU is told.
    fn set_offsets(&mut self, o: Offsets) {
        *self.world.offsets.lock() = o;
    }
    /// `cpu` is told the offsets changed; how many of its timers moved.
    fn clock_was_set(&mut self, cpu: usize) -> usize {
        self.as_cpu(cpu, |cx| glue::clock_was_set(cx))
    }
    fn arm(&mut self, cpu: usize, deadline: u64) -> (u32, TimerId) {
        self.arm_periodic(cpu, deadline, 0)
    }
    /// Arms a deferred timer (see [`SimTimer::deferred`]; the expiry reads the flag when it
    /// pops the timer).
    fn arm_deferred(&mut self, cpu: usize, deadline: u64, period: u64) -> (u32, TimerId) {
        let (n, id) = self.arm_periodic(cpu, deadline, period);
        self.timers.get_mut(&n).expect("just armed").deferred = true;
        (n, id)
    }
    /// Arms a one-shot timer that may run in `[deadline, deadline + slack]`.
    fn arm_range(&mut self, cpu: usize, deadline: u64, slack: u64) -> u32 {
        let n = self.next_timer;
        self.next_timer += 1;
        let id = self.on(cpu, |t, now, bc| t.arm_range(deadline, slack, n, now, bc)).expect("armed");
        self.timers.insert(
            n,
            SimTimer {
                cpu,
                deadline,
                period: 0,
                fired: vec![],
                behaviour: Behaviour::Plain,
                clock: None,
                deferred: false,
            },
        );
        self.ids.insert(n, id);
        let changes = self.take_failures();
        self.apply(changes);
        n
    }
    /// Gives timer `n`'s callback a behaviour.
    fn behave(&mut self, n: u32, behaviour: Behaviour) {
        self.timers.get_mut(&n).expect("known timer").behaviour = behaviour;
    }
    /// Arms a timer on `target` from another CPU: queued to its owner.
    fn arm_remote(&mut self, target: usize, deadline: u64) -> u32 {
        let n = self.next_timer;
        self.next_timer += 1;
        self.timers.insert(
            n,
            SimTimer {
                cpu: target,
                deadline,
                period: 0,
                fired: vec![],
                behaviour: Behaviour::Plain,
                clock: None,
                deferred: false,
            },
        );
        self.inbox.push_back((target, Message::Arm { deadline, n }));
        n
    }
    fn cancel(&mut self, cpu: usize, id: TimerId) -> Cancel<u32> {
        self.on(cpu, |t, _, _| t.cancel(id)).expect("a timer is cancelled on its own CPU")
    }
    /// Delivers the queued messages, each on its CPU.
    fn deliver(&mut self) {
        while let Some((cpu, m)) = self.inbox.pop_front() {
            match m {
                Message::Arm { deadline, n } => {
                    let id = self.on(cpu, |t, now, bc| t.arm(deadline, n, now, bc)).expect("armed");
                    self.ids.insert(n, id);
                }
                Message::Cancel { id, n } => {
                    if self.cancel(cpu, id).cancelled().is_some() {
                        self.cancelled.push(n);
                    }
                }
                Message::Wake => self.wakeup(cpu),
            }
        }
        let changes = self.take_failures();
        self.apply(changes);
    }
    /// Runs `f` (the crate's glue: an interrupt, a wake-up, deep idle, suspend) as `cpu`, then
    /// carries out what it left: a device it reported failed is taken out (and none it did not
    /// report may be left failed behind it).
    fn as_cpu<R>(&mut self, cpu: usize, f: impl FnOnce(&SimCpu) -> R) -> R {
        let cx = SimCpu {
            cpu,
            world: self.world,
            tick: RefCell::new(&mut self.cpus[cpu]),
            bc: &self.bc,
            timers: RefCell::new(&mut self.timers),
            armed_by_callbacks: &self.armed_by_callbacks,
            refused_in_callbacks: &self.refused_in_callbacks,
            registry: &self.registry,
            inbox: RefCell::new(&mut self.inbox),
            failures: RefCell::new(Vec::new()),
            hangs: RefCell::new(&mut self.hangs),
            deferred_raised: RefCell::new(&mut self.deferred_raised),
        };
        let r = f(&cx);
        let failures = cx.failures.into_inner();
        // The glue reports every device that gave up: none is left behind for a sweep to find.
        let left = (self.cpus[cpu].take_failure(), self.bc.lock().take_failure());
        assert_eq!(left, (None, None), "CPU {cpu}: a failure the glue did not report");
        for f in failures {
            let changes = self.registry.take_out(f.device, &alloc::format!("{}", f.error));
            self.apply(changes);
        }
        r
    }
    /// Records what an expiry came to.
    fn record(&mut self, outcome: Outcome) -> Outcome {
        if let Outcome::Expired(e) = outcome {
            self.most_callbacks = self.most_callbacks.max(e.callbacks);
        }
        outcome
    }
    /// `cpu` is woken (a broadcast wake-up, or its owner's misrouted event).
    fn wakeup(&mut self, cpu: usize) {
        let now = self.now();
        let outcome = self.as_cpu(cpu, |cx| glue::wakeup(cx, now));
        self.record(outcome);
        self.interrupt_exit(cpu);
        self.idle(cpu);
    }
    /// `cpu` leaves its interrupt (after its EOI, in a kernel): its deferred run, if one was
    /// asked for, again while it leaves timers waiting (at most 10 runs, as the kernel's
    /// deferred work's passes; the rest waits for its next interrupt).
    fn interrupt_exit(&mut self, cpu: usize) {
        for _ in 0..10 {
            if self.hold_deferred || !self.deferred_raised.contains(cpu) {
                return;
            }
            self.deferred_raised.remove(cpu);
            let run = self.as_cpu(cpu, |cx| glue::run_deferred(cx));
            self.deferred_ran += run.callbacks;
        }
    }
    /// `cpu` returns from an interrupt to its idle loop: a deep sleeper wakes (leaves the
    /// broadcast) and goes back to deep idle (hands over again).
    fn idle(&mut self, cpu: usize) {
        if self.deep_sleepers.contains(cpu) {
            self.as_cpu(cpu, |cx| {
                glue::idle_exit(cx);
                let _ = glue::idle_enter(cx);
            });
        }
    }
    /// `cpu`'s idle loop sleeps deeply from now on.
    fn sleep_deeply(&mut self, cpu: usize) -> Result<Handover, DeepIdleRefused> {
        self.deep_sleepers.insert(cpu);
        self.as_cpu(cpu, |cx| glue::idle_enter(cx))
    }
    /// Device `dev` interrupts `cpu` now, by the crate's glue. The wake-up IPIs it sends (the
    /// broadcast's to the CPUs due, a misrouted event's to the device's owner) are delivered at
    /// once; other messages in flight stay where they are.
    fn device_event(&mut self, dev: DeviceId, cpu: usize) {
        let sent = self.inbox.len();
        let event = self.as_cpu(cpu, |cx| glue::device_interrupt(cx, dev));
        if let glue::DeviceEvent::Local(outcome) = event {
            self.record(outcome);
        }
        self.interrupt_exit(cpu);
        if event != glue::DeviceEvent::Local(Outcome::NotOurs) {
            self.idle(cpu);
        }
        let woken: Vec<(usize, Message)> = self.inbox.drain(sent..).collect();
        for (c, m) in woken {
            let expected = match event {
                glue::DeviceEvent::Broadcast(due) => due.contains(c) && c != cpu,
                // The broadcast's timer carried on this CPU fell due: its event woke them.
                glue::DeviceEvent::Local(Outcome::Expired(e)) if e.broadcast_due => c != cpu,
                glue::DeviceEvent::Local(_) => self.registry.owner_of(dev) == Some(c),
            };
            assert!(matches!(m, Message::Wake) && expected, "CPU {c} sent a wake-up it should not get");
            self.wakeup(c);
        }
    }
    /// `cpu` goes offline and hands its timers to `to`: the registry first (no assignment for
    /// it after), then its tick on it, then `to` adopts them (the simulator's bookkeeping
    /// follows each timer to its new CPU and id). Returns the devices released and the ids.
    fn offline(&mut self, cpu: usize, to: usize) -> (Vec<DeviceId>, Moved) {
        self.deep_sleepers.remove(cpu);
        let (changes, released) = self.registry.cpu_offline(cpu);
        self.apply(changes);
        let timers = self.as_cpu(cpu, |cx| glue::go_offline(cx));
        let moved = match self.as_cpu(to, |cx| glue::adopt(cx, timers)) {
            Ok(moved) => moved,
            Err(r) => panic!("CPU {to} refused CPU {cpu}'s timers: {}", r.error),
        };
        for &(old, new) in &moved {
            let n = *self.ids.iter().find(|&(_, &id)| id == old).expect("a tracked timer").0;
            self.ids.insert(n, new);
            self.timers.get_mut(&n).expect("known timer").cpu = to;
        }
        (released, moved)
    }
    /// Suspends every CPU's tick, then the broadcast; the timers pending.
    fn suspend(&mut self) -> usize {
        let pending = (0..self.cpus.len()).map(|c| self.as_cpu(c, |cx| glue::suspend(cx))).sum();
        self.as_cpu(0, |cx| glue::suspend_broadcast(cx));
        pending
    }
    /// Resumes the broadcast, then every CPU's tick.
    fn resume(&mut self) {
        let now = self.now();
        self.as_cpu(0, |cx| glue::resume_broadcast(cx, now));
        for c in 0..self.cpus.len() {
            self.as_cpu(c, |cx| glue::resume(cx, now));
        }
    }
    /// Advances to the next device interrupt and delivers it; false when none is armed.
    fn step(&mut self) -> bool {
        let next =
            self.drivers.iter().enumerate().filter_map(|(i, d)| d.fires_at.lock().map(|t| (t, i))).min();
        let Some((at, dev)) = next else { return false };
        self.set_now(at.max(self.now()));
        let d = self.drivers[dev];
        let period = *d.period_ns.lock();
        *d.fires_at.lock() = period.map(|p| at + p);
        let cpu = d.target.lock().unwrap_or(self.irq_cpu[dev]);
        self.device_event(DeviceId(dev), cpu);
        true
    }
    fn run_until(&mut self, t: u64) {
        while self.drivers.iter().any(|d| d.fires_at.lock().is_some_and(|at| at <= t)) {
            self.step();
        }
        self.set_now(t.max(self.now()));
    }
    fn fired(&self, n: u32) -> &[u64] {
        &self.timers[&n].fired
    }
    fn assert_all_fired_once_never_early(&self) {
        for (n, SimTimer { deadline, period, fired, .. }) in &self.timers {
            if self.cancelled.contains(n) || *period > 0 {
                continue;
            }
            assert_eq!(fired.len(), 1, "timer {n} (deadline {deadline}) fired {} times", fired.len());
            assert!(fired[0] >= *deadline, "timer {n} fired early: {} < {deadline}", fired[0]);
        }
    }
    fn device(&self, d: DeviceId) -> &crate::clockevents::ClockEventDevice {
        self.registry.device(d)
    }
}

#[test]
fn each_cpu_gets_its_best_local_device() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    let l0 = s.per_cpu("lapic0", LAPIC, 0);
    let l1 = s.per_cpu("lapic1", LAPIC, 1);
    let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
    assert_eq!(s.registry.service(0), Service::Local(h0));
    assert_eq!(s.cpus[0].service(), Service::Local(h0), "carried out by CPU 0");
    assert_eq!(s.cpus[1].service(), Service::Local(l1));
    assert_eq!(s.device(l0).state(), State::Detached, "the replaced LAPIC timer is released");
}

#[test]
fn local_device_beats_a_better_rated_global_one() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    let l0 = s.per_cpu("lapic0", LAPIC, 0);
    let g = s.add("hpet", 200, CpuSet::first(2), Features::empty(), 0);
    assert_eq!(s.cpus[0].service(), Service::Local(l0));
    assert_eq!(s.cpus[1].service(), Service::Broadcast(g), "CPU 1 has no local device");
    assert_eq!(s.bc.lock().device(), Some(g));
}

#[test]
fn cpu_without_local_device_is_served_by_broadcast() {
    let mut s = Sim::new(TickMode::Oneshot, 3);
    s.per_cpu("hpet0", PERCPU_HPET, 0);
    s.per_cpu("hpet1", PERCPU_HPET, 1);
    let g = s.add("hpet2", GLOBAL_HPET, CpuSet::first(3), Features::empty(), 0);
    assert_eq!(s.cpus[2].service(), Service::Broadcast(g));
    let now = s.now();
    s.arm(2, now + 500_000);
    s.arm(2, now + 100_000);
    s.arm(0, now + 200_000);
    s.run_until(now + 1_000_000);
    s.assert_all_fired_once_never_early();
    assert_eq!(s.cpus[2].events(), 2);
    assert_eq!(s.bc.lock().stats(), (2, 2), "two broadcast events on CPU 0, each waking CPU 2 by IPI");
}

#[test]
fn timers_with_slack_share_interrupts_on_a_local_device_and_through_broadcast() {
    // CPU 0 on its own device, CPU 2 on the broadcast: 20 timers each, 10 us apart, 1 ms of
    // slack. The expiry loop programs each for the first end of a range and runs every begun
    // range there: one interrupt (or wake-up) per CPU, each timer in its range.
    let mut s = Sim::new(TickMode::Oneshot, 3);
    s.per_cpu("hpet0", PERCPU_HPET, 0);
    s.per_cpu("hpet1", PERCPU_HPET, 1);
    s.add("hpet2", GLOBAL_HPET, CpuSet::first(3), Features::empty(), 0);
    let now = s.now();
    let mut ranged = Vec::new();
    for k in 0..20u64 {
        for cpu in [0, 2] {
            ranged.push(s.arm_range(cpu, now + 100_000 + k * 10_000, 1_000_000));
        }
    }
    s.run_until(now + 5_000_000);
    s.assert_all_fired_once_never_early();
    for n in ranged {
        let t = &s.timers[&n];
        // The device fires at the first end of a range, rounded up to its 10 ns ticks.
        assert!(t.fired[0] <= t.deadline + 1_000_000 + 10, "timer {n} ran past its range");
    }
    assert_eq!((s.cpus[0].events(), s.cpus[2].events()), (1, 1), "one interrupt for each CPU's 20");
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
    assert!(s.cpus.iter().all(|t| t.events() == 5));
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

/// The own-CPU rule: registering CPU 1's device while CPU 0 runs the registry changes CPU 1's
/// device only when CPU 1 applies its assignment (the simulator's drivers fail the test if a
/// per-CPU device is touched from another CPU).
#[test]
fn a_change_of_device_is_carried_out_on_its_own_cpu() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    s.per_cpu("lapic1", LAPIC, 1);
    *s.world.running_on.lock() = 0;
    let spec = DeviceSpec {
        name: "hpet1".into(),
        features: Features::ONESHOT | Features::PER_CPU,
        rating: PERCPU_HPET,
        cpus: CpuSet::single(1),
        frequency_hz: 100_000_000,
        min_delta_ticks: 100,
        max_delta_ticks: 1 << 31,
    };
    let driver = s.driver(Some(1), 0);
    let (h1, changes) = s.registry.register(spec, driver);
    assert_eq!(s.cpus[1].service(), Service::Local(DeviceId(0)), "nothing changed on CPU 1 yet");
    assert_eq!(changes.assignments.len(), 1);
    assert_eq!(changes.assignments[0].cpu, 1);
    s.drivers.push(driver);
    s.irq_cpu.push(1);
    s.apply(changes);
    assert_eq!(s.cpus[1].service(), Service::Local(h1));
}

#[test]
#[should_panic(expected = "driven from CPU 0")]
fn programming_a_per_cpu_device_from_another_cpu_is_caught() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    s.per_cpu("lapic1", LAPIC, 1);
    let dev = s.cpus[1].local_device().cloned().expect("CPU 1 has its LAPIC timer");
    *s.world.running_on.lock() = 0;
    let _ = dev.program(5_000_000, s.now());
}

#[test]
fn failed_device_falls_back_with_its_pending_event() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    let l0 = s.per_cpu("lapic0", LAPIC, 0);
    let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
    let g = s.add("hpet-global", GLOBAL_HPET, CpuSet::first(2), Features::empty(), 0);
    let now = s.now();
    s.arm(0, now + 300_000);
    s.take_out(h0, "self-test failed");
    assert_eq!(s.cpus[0].service(), Service::Local(l0));
    assert_eq!(s.cpus[1].service(), Service::Broadcast(g));
    s.run_until(now + 1_000_000);
    s.assert_all_fired_once_never_early();
}

#[test]
fn device_that_keeps_passing_its_comparator_is_taken_out_and_replaced() {
    let mut s = Sim::new(TickMode::Oneshot, 1);
    let l0 = s.per_cpu("lapic0", LAPIC, 0);
    let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
    *s.drivers[h0.0].passes_below_ticks.lock() = u64::MAX;
    let now = s.now();
    s.arm(0, now + 50_000);
    assert!(s.device(h0).is_failed());
    assert_eq!(s.cpus[0].service(), Service::Local(l0));
    s.run_until(now + 1_000_000);
    s.assert_all_fired_once_never_early();
}

/// Found by the `tick` fuzz target (in the single-lock layer): a broadcast device that fails
/// while it is being installed must not leave CPUs on it.
#[test]
fn broadcast_device_failing_when_installed_does_not_strand_its_cpus() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    let a = s.add("a", 90, CpuSet::first(2), Features::empty(), 0);
    let now = s.now();
    s.arm(0, now + 1_000_000);
    s.arm(1, now + 1_000_000);
    let spec = DeviceSpec {
        name: "b".into(),
        features: Features::ONESHOT,
        rating: 95,
        cpus: CpuSet::first(2),
        frequency_hz: 100_000_000,
        min_delta_ticks: 100,
        max_delta_ticks: 1 << 31,
    };
    let b = s.add_spec(spec, 0, u64::MAX);
    assert!(s.device(b).is_failed());
    assert_eq!(s.bc.lock().device(), Some(a));
    assert_eq!((s.cpus[0].service(), s.cpus[1].service()), (Service::Broadcast(a), Service::Broadcast(a)));
    s.run_until(now + 2_000_000);
    s.assert_all_fired_once_never_early();
}

#[test]
fn unusable_devices_are_refused_at_registration() {
    let mut s = Sim::new(TickMode::Oneshot, 1);
    let base = crate::clockevents::fake::spec("x", 200, CpuSet::single(0), Features::PER_CPU);
    for bad in [
        DeviceSpec { frequency_hz: 0, ..base.clone() },
        DeviceSpec { max_delta_ticks: 1, min_delta_ticks: 1, ..base.clone() },
        DeviceSpec { min_delta_ticks: 2_000_000, ..base.clone() },
        DeviceSpec { features: Features::PER_CPU, ..base.clone() },
    ] {
        let (d, changes) = s.registry.register(bad, crate::clockevents::fake::FakeDriver::leak());
        assert!(changes.is_empty() && s.device(d).is_failed());
    }
    assert_eq!(s.cpus[0].service(), Service::None, "no refused device serves a CPU");
    assert_eq!(s.registry.taken_out().len(), 4);
}

#[test]
fn resync_of_a_stopped_broadcast_device_keeps_it_usable() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    let g = s.add("global", GLOBAL_HPET, CpuSet::first(2), Features::empty(), 0);
    let now = s.now();
    assert_eq!(s.device(g).state(), State::OneshotStopped);
    s.bc.lock().resync(now);
    s.on(1, |t, now, bc| t.resync(now, bc));
    s.arm(1, now + 100_000);
    s.run_until(now + 1_000_000);
    s.assert_all_fired_once_never_early();
}

/// A measurement programs a stopped device behind the layer's back (the kernel's programming
/// cost, 1 ms ahead); resynchronised with nothing pending, it is stopped again, not left to
/// interrupt for nothing (found by the `tick` fuzz target).
#[test]
fn resync_with_nothing_pending_stops_what_a_measurement_programmed() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
    let g = s.add("global", GLOBAL_HPET, CpuSet::first(2), Features::empty(), 0);
    assert_eq!(s.cpus[1].service(), Service::Broadcast(g));
    for d in [h0, g] {
        assert_eq!(s.device(d).state(), State::OneshotStopped);
        s.on(0, |_, _, _| ()); // the measurement runs on CPU 0
        s.device(d).driver().set_next_event(100_000).unwrap();
        assert!(s.drivers[d.0].fires_at.lock().is_some());
    }
    s.on(0, |t, now, bc| t.resync(now, bc));
    assert_eq!(*s.drivers[h0.0].fires_at.lock(), None, "CPU 0's device left armed");
    let now = s.now();
    s.bc.lock().resync(now);
    assert_eq!(*s.drivers[g.0].fires_at.lock(), None, "the broadcast device left armed");
    s.run_until(now + 10_000_000);
    assert_eq!(s.cpus[0].events() + s.cpus[1].events(), 0, "no interrupt for nothing");
}

#[test]
fn taken_out_devices_are_recorded_with_their_reason() {
    let mut s = Sim::new(TickMode::Oneshot, 1);
    let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
    s.take_out(h0, "storm");
    s.take_out(h0, "storm again");
    assert_eq!(s.registry.taken_out(), [("hpet0".into(), "storm".into())]);
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
    s.set_now(now + 99_000);
    s.device_event(h0, 0);
    assert!(s.fired(0).is_empty());
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
    assert_eq!(s.cancel(0, id), Cancel::Cancelled(0));
    s.run_until(now + 1_000_000);
    assert_eq!(s.device(h0).state(), State::OneshotStopped);
    assert!(s.fired(0).is_empty(), "the cancelled timer never ran");
    assert_eq!(s.fired(1).len(), 1);
    assert_eq!(s.cpus[0].events(), 2, "the cancelled deadline still interrupts once");
}

/// One CPU on hpet0 with one timer 10 us ahead, its interrupt come: the device event taken and
/// the timer popped, its callback about to run. Returns the simulator, hpet0, the time the
/// timer was armed at, and the popped timer.
fn first_callback_on_hpet0() -> (Sim, DeviceId, u64, Expired<u32>) {
    let mut s = Sim::new(TickMode::Oneshot, 1);
    let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
    let now = s.now();
    s.arm(0, now + 10_000);
    s.set_now(now + 10_000);
    assert!(s.on(0, |t, now, _| t.device_event(h0, now)));
    let e = s.on(0, |t, now, _| t.pop_expired(now)).expect("due");
    (s, h0, now, e)
}

/// A device event is counted before the first pass's callbacks run (they read the count as
/// "the interrupt that ran me"), though the rest of the expiry's start waits for the end of
/// that pass; a wake-up's is counted at once too, and a start never counts twice.
#[test]
fn an_interrupt_is_counted_before_its_first_callback_and_once() {
    let (mut s, _, _, e) = first_callback_on_hpet0();
    assert_eq!(s.cpus[0].events(), 1, "counted before the callback runs");
    assert_eq!(s.on(0, |t, _, _| t.complete(e.id, None)), Ok(false));
    s.on(0, |t, now, bc| t.end_pass(now, bc));
    assert_eq!(s.cpus[0].events(), 1, "settling the start does not count it again");
    assert!(s.on(0, |t, now, _| t.wakeup(now)));
    assert_eq!(s.cpus[0].events(), 2);
    s.on(0, |t, now, bc| t.end_expiry(now, bc));
    assert_eq!(s.cpus[0].events(), 2);
}

/// Callbacks that arm timers do not reprogram the device one by one: it is programmed once,
/// after the expiry, for the earliest deadline.
#[test]
fn device_is_programmed_once_per_interrupt_after_the_callbacks() {
    let (mut s, h0, now, e) = first_callback_on_hpet0();
    let before = s.device(h0).programmed();
    for k in 1..=5u64 {
        s.on(0, |t, now, bc| t.arm(now + 50_000 - k * 1_000, 99, now, bc)).unwrap();
    }
    assert_eq!(s.on(0, |t, _, _| t.complete(e.id, None)), Ok(false));
    assert_eq!(s.device(h0).programmed(), before, "nothing programmed during the callbacks");
    s.on(0, |t, now, bc| t.end_expiry(now, bc));
    assert_eq!(s.device(h0).programmed(), before + 1);
    assert_eq!(*s.drivers[h0.0].fires_at.lock(), Some(now + 10_000 + 45_000));
}

/// A LAPIC-like device on CPU 0 whose registered frequency is `hz` (the simulated hardware
/// runs at 100 MHz): a boot calibration that far off.
/// A callback that keeps re-arming its timer in the past cannot keep its CPU in the interrupt:
/// each pass pops at most what was pending when it began, a few passes later the expiry is a
/// hang and the CPU leaves it; the CPU's other timers and the other CPUs' still fire once,
/// never early.
#[test]
fn a_callback_rearming_itself_in_the_past_cannot_livelock_its_cpu() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    s.per_cpu("hpet0", PERCPU_HPET, 0);
    s.per_cpu("hpet1", PERCPU_HPET, 1);
    let now = s.now();
    let (rogue, _) = s.arm(0, now + 10_000);
    s.behave(rogue, Behaviour::RearmInPast(1_000));
    let (later_here, _) = s.arm(0, now + 50_000);
    let (there, _) = s.arm(1, now + 20_000);
    s.run_until(now + 1_000_000_000);
    assert_eq!(s.fired(rogue).len(), 1_001, "the rogue ran every time it asked, in bounded interrupts");
    let bound = expiry::MAX_PASSES * 2;
    assert!(s.most_callbacks <= bound, "one interrupt ran {} callbacks (bound {bound})", s.most_callbacks);
    assert!(!s.hangs.is_empty() && s.hangs.iter().all(|&(cpu, _)| cpu == 0), "hangs: {:?}", s.hangs);
    for n in [later_here, there] {
        let fired = s.fired(n);
        assert_eq!(fired.len(), 1, "timer {n} fired {} times", fired.len());
        assert!(fired[0] >= s.timers[&n].deadline, "timer {n} fired early");
    }
    assert_eq!(s.fired(there), [now + 20_000], "CPU 1's timer is not held back by CPU 0's hang");
}

/// A callback that runs for 50 ms every millisecond leaves its CPU's expiry behind: after
/// the retries the CPU holds its next event back by the interrupt's duration (at most 100 ms)
/// and leaves the interrupt; nothing is lost or early.
#[test]
fn a_slow_periodic_callback_is_a_hang_that_delays_but_loses_nothing() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    s.per_cpu("hpet0", PERCPU_HPET, 0);
    s.per_cpu("hpet1", PERCPU_HPET, 1);
    let now = s.now();
    let (slow, id) = s.arm_periodic(0, now + 1_000_000, 1_000_000);
    s.behave(slow, Behaviour::Takes(50_000_000));
    let mut plain = vec![];
    for k in 1..=20u64 {
        plain.push(s.arm(0, now + k * 7_000_000).0);
        plain.push(s.arm(1, now + k * 5_000_000).0);
    }
    s.run_until(now + 2_000_000_000);
    assert_eq!(s.cancel(0, id), Cancel::Cancelled(slow));
    let (cpu, hang) = *s.hangs.first().expect("the expiry could not catch up");
    assert_eq!(cpu, 0);
    assert!(hang.took_ns >= 150_000_000, "{hang:?}");
    for &(_, h) in &s.hangs {
        assert!(h.held_until_ns > 0 && h.took_ns > 0);
    }
    for n in plain {
        let fired = s.fired(n);
        assert_eq!(fired.len(), 1, "timer {n} fired {} times", fired.len());
        assert!(fired[0] >= s.timers[&n].deadline, "timer {n} fired early");
    }
}

/// Timers armed from a callback (the timer interrupt path) never make the queue allocate: past
/// its capacity they are refused with `QueueFull`; outside an expiry the queue grows.
#[test]
fn a_full_queue_refuses_arms_from_callbacks_and_grows_outside_them() {
    let mut s = Sim::new(TickMode::Oneshot, 1);
    s.per_cpu("hpet0", PERCPU_HPET, 0);
    let capacity = s.cpus[0].capacity();
    let now = s.now();
    let (n, _) = s.arm(0, now + 10_000);
    s.behave(n, Behaviour::Arms(capacity as u32 + 5));
    s.run_until(now + 20_000);
    assert_eq!(s.cpus[0].capacity(), capacity, "nothing allocated in the expiry");
    // One slot was the running callback's own.
    assert_eq!(s.armed_by_callbacks.get() as usize, capacity - 1);
    let refused = s.refused_in_callbacks.borrow().clone();
    assert_eq!(refused.len(), 6);
    assert!(refused.iter().all(|e| *e == ArmError::QueueFull { cpu: 0, capacity }), "{refused:?}");
    // Outside an expiry, arming grows the queue (the callback's own slot is free again).
    s.arm(0, now + 50_000);
    s.arm(0, now + 50_000);
    assert!(s.cpus[0].capacity() > capacity);
}

/// Two HPET blocks serve three CPUs: block #0's comparator at 100 MHz CPU 0, block #1's at
/// 14.31818 MHz (a classic chipset's) CPUs 1 and 2, their counters at unrelated offsets (block
/// #1's 256 ticks before its 32-bit wrap). Each comparator is programmed in its own block's ticks
/// against its own counter: every timer fires once, on its CPU, never early, late by no more
/// than its block's minimum delta and two of its ticks, one interrupt per deadline (none
/// early: each block's conversion is its own).
#[test]
fn two_hpet_blocks_serve_cpus_each_on_its_own_counter() {
    const BLOCK0: SimBlock = SimBlock { hz: 100_000_000, offset: 0x1234_5678_9abc };
    const BLOCK1: SimBlock = SimBlock { hz: 14_318_180, offset: 0xffff_ff00 };
    let mut s = Sim::new(TickMode::Oneshot, 3);
    for c in 0..3 {
        s.per_cpu(&alloc::format!("lapic{c}"), LAPIC, c);
    }
    let h0 = s.block_comparator("hpet0", BLOCK0, 0);
    let h10 = s.block_comparator("hpet1.0", BLOCK1, 1);
    let h11 = s.block_comparator("hpet1.1", BLOCK1, 2);
    for (cpu, d) in [(0, h0), (1, h10), (2, h11)] {
        assert_eq!(s.cpus[cpu].service(), Service::Local(d), "CPU {cpu} takes up its block's comparator");
    }
    let start = s.now();
    // The same deadlines on every CPU, and some of each CPU's own, from 20 us (beyond block
    // #1's minimum delta, 192 ticks = 13.4 us) to 40 ms out: block #1's first comparator value
    // is written past the wrap of its counter's low 32 bits, 17.9 us away.
    let mut deadlines: Vec<(usize, u64)> = Vec::new();
    for k in 0..20u64 {
        let at = start + 20_000 + k * k * 97_003;
        deadlines.extend((0..3).map(|cpu| (cpu, at)));
        deadlines.push((k as usize % 3, at + 1_234 * (k + 1)));
    }
    for &(cpu, at) in &deadlines {
        s.arm(cpu, at);
    }
    s.run_until(start + 50_000_000);
    s.assert_all_fired_once_never_early();
    for (n, t) in &s.timers {
        let block = if t.cpu == 0 { BLOCK0 } else { BLOCK1 };
        let tick_ns = 1_000_000_000u64.div_ceil(block.hz);
        // A deadline closer to the one before than the minimum delta waits for it.
        let bound = (192 + 2) * tick_ns;
        let late = t.fired[0] - t.deadline;
        assert!(
            late <= bound,
            "timer {n} on CPU {} late by {late} ns > {bound} ns (its block's minimum delta + 2 ticks)",
            t.cpu
        );
    }
    for (cpu, tick) in s.cpus.iter().enumerate() {
        let distinct = deadlines
            .iter()
            .filter(|&&(c, _)| c == cpu)
            .map(|&(_, at)| at)
            .collect::<alloc::collections::BTreeSet<_>>();
        assert_eq!(tick.events(), distinct.len() as u64, "CPU {cpu}: one interrupt per deadline, none early");
    }
}

fn misjudged_lapic(s: &mut Sim, hz: u64) -> DeviceId {
    let spec = DeviceSpec {
        name: "lapic0".into(),
        features: Features::ONESHOT | Features::PERIODIC | Features::PER_CPU,
        rating: LAPIC,
        cpus: CpuSet::single(0),
        frequency_hz: hz,
        min_delta_ticks: 100,
        max_delta_ticks: 1 << 31,
    };
    s.add_spec(spec, 0, 0)
}

/// Never early with a factor that is too low: the event comes 1 % early, the tick runs
/// nothing before its deadline and programs the rest (twice: the rest is 1 % short too).
#[test]
fn an_event_early_by_the_conversion_runs_nothing_early_and_is_programmed_again() {
    let mut s = Sim::new(TickMode::Oneshot, 1);
    let d = misjudged_lapic(&mut s, 99_000_000);
    let now = s.now();
    s.arm(0, now + 1_000_000);
    assert_eq!(*s.drivers[d.0].fires_at.lock(), Some(now + 990_000), "1 % early by the factor");
    s.run_until(now + 2_000_000);
    s.assert_all_fired_once_never_early();
    assert_eq!(s.fired(0), [now + 1_000_910], "the last try at the minimum delta, late by under it");
    assert_eq!(s.cpus[0].events(), 3, "two early interrupts ran nothing");
}

/// A refined frequency applies to the event already pending: it is programmed again at the
/// new factor and fires at its deadline, once.
#[test]
fn a_refined_frequency_reprograms_the_pending_event_at_the_new_factor() {
    let mut s = Sim::new(TickMode::Oneshot, 1);
    let d = misjudged_lapic(&mut s, 99_000_000);
    let now = s.now();
    s.arm(0, now + 1_000_000);
    let device = s.registry.device(d).clone();
    let old = s.on(0, |t, now, bc| t.set_device_frequency(&device, 100_000_000, now, bc)).unwrap();
    assert_eq!(old.frequency_hz, 99_000_000);
    assert_eq!(device.frequency_hz(), 100_000_000);
    assert_eq!(*s.drivers[d.0].fires_at.lock(), Some(now + 1_000_000), "programmed again");
    s.run_until(now + 2_000_000);
    s.assert_all_fired_once_never_early();
    assert_eq!(s.fired(0), [now + 1_000_000]);
    assert_eq!(s.cpus[0].events(), 1);
}

/// From a callback (the kernel delivers a refinement as one), the pending deadline is
/// programmed once, when the expiry ends; a device the CPU does not use only changes factor.
#[test]
fn a_refined_frequency_waits_for_the_expiry_and_spares_a_device_not_in_use() {
    let mut s = Sim::new(TickMode::Oneshot, 1);
    let d = misjudged_lapic(&mut s, 100_000_000);
    let now = s.now();
    s.arm(0, now + 10_000);
    s.arm(0, now + 500_000);
    s.set_now(now + 10_000);
    assert!(s.on(0, |t, now, _| t.device_event(d, now)));
    let device = s.registry.device(d).clone();
    let programmed = device.programmed();
    s.on(0, |t, now, bc| t.set_device_frequency(&device, 50_000_000, now, bc)).unwrap();
    assert_eq!(device.programmed(), programmed, "nothing programmed inside the expiry");
    // The expiry's end, as the expiry loop ends it.
    s.on(0, |t, now, bc| {
        let e = t.pop_expired(now).expect("due");
        assert_eq!(t.complete(e.id, None), Ok(false));
        assert!(t.pop_expired(now).is_none());
        t.end_expiry(now, bc);
    });
    assert_eq!(device.programmed(), programmed + 1);
    // 490 us at 50 MHz is 24 500 ticks, which the 100 MHz hardware counts in 245 us.
    assert_eq!(*s.drivers[d.0].fires_at.lock(), Some(now + 10_000 + 245_000));
    let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
    assert_eq!(s.cpus[0].service(), Service::Local(h0));
    s.on(0, |t, now, bc| t.set_device_frequency(&device, 100_000_000, now, bc)).unwrap();
    assert_eq!(device.state(), State::Detached);
    assert_eq!(*s.drivers[d.0].fires_at.lock(), None, "a released device is not started");
    assert_eq!(device.conversion().frequency_hz, 100_000_000);
}

/// A periodic device restarts its period at the new factor.
#[test]
fn a_refined_frequency_restarts_a_periodic_device_at_the_new_period() {
    let mut s = Sim::new(TickMode::Periodic { hz: 1000 }, 1);
    let d = misjudged_lapic(&mut s, 99_000_000);
    assert_eq!(*s.drivers[d.0].period_ns.lock(), Some(990_000));
    let device = s.registry.device(d).clone();
    s.on(0, |t, now, bc| t.set_device_frequency(&device, 100_000_000, now, bc)).unwrap();
    assert_eq!(*s.drivers[d.0].period_ns.lock(), Some(1_000_000));
}

#[test]
fn periodic_tick_uses_hardware_periodic_mode_and_expires_timers_at_ticks() {
    let mut s = Sim::new(TickMode::Periodic { hz: 1000 }, 1);
    let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
    assert_eq!(s.device(h0).state(), State::Periodic);
    let now = s.now();
    s.arm(0, now + 2_500_000);
    s.run_until(now + 10_000_000);
    assert_eq!(s.fired(0), [now + 3_000_000], "expires at the first tick after its deadline");
    assert_eq!(s.cpus[0].ticks(), 10);
    assert_eq!(s.cpus[0].mode_name(), "periodic");
}

#[test]
fn periodic_tick_is_emulated_when_the_period_exceeds_the_maximum_delta() {
    let mut s = Sim::new(TickMode::Periodic { hz: 100 }, 1);
    let spec = DeviceSpec {
        max_delta_ticks: 500_000, // 5 ms: shorter than the 10 ms tick
        ..crate::clockevents::fake::spec(
            "short",
            LAPIC,
            CpuSet::single(0),
            Features::PER_CPU | Features::PERIODIC,
        )
    };
    let d = s.add_spec(spec, 0, 0);
    assert_eq!(s.device(d).state(), State::Oneshot, "not periodic at a clamped period");
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
    assert_eq!(s.cpus[0].mode_name(), "periodic-emulated");
    assert_eq!((s.cpus[0].ticks(), s.cpus[1].ticks()), (5, 5), "both CPUs tick, CPU 1 through broadcast");
}

#[test]
fn pending_event_of_a_replaced_local_device_is_stale_not_misrouted() {
    let mut s = Sim::new(TickMode::Oneshot, 1);
    let lapic = s.per_cpu("lapic0", LAPIC, 0);
    s.per_cpu("hpet0", PERCPU_HPET, 0);
    let now = s.now();
    s.arm(0, now + 10_000);
    assert!(!s.on(0, |t, now, _| t.device_event(lapic, now)), "the old device runs nothing");
    assert_eq!((s.cpus[0].stale(), s.cpus[0].misrouted()), (1, 0));
    s.run_until(now + 20_000);
    s.assert_all_fired_once_never_early();
}

#[test]
fn event_on_a_cpu_the_device_does_not_serve_is_misrouted() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
    s.per_cpu("hpet1", PERCPU_HPET, 1);
    let now = s.now();
    s.arm(0, now);
    s.set_now(now + 5_000);
    assert!(!s.on(1, |t, now, _| t.device_event(h0, now)), "CPU 1 must not run CPU 0's timers");
    assert_eq!((s.cpus[1].misrouted(), s.cpus[1].stale()), (1, 0));
    assert_eq!(s.registry.owner_of(h0), Some(0), "the owner is woken to look at its queue");
    s.wakeup(0);
    s.assert_all_fired_once_never_early();
}

#[test]
fn a_misrouted_event_through_the_glue_wakes_the_owner_which_runs_its_timer() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
    s.per_cpu("hpet1", PERCPU_HPET, 1);
    let now = s.now();
    s.arm(0, now);
    s.set_now(now + 5_000);
    // CPU 0's device's event on CPU 1, by `glue::device_interrupt`: nothing else runs CPU 0
    // here (no run_until, no wakeup by hand), so its timer runs only if the glue woke it.
    s.device_event(h0, 1);
    assert_eq!(s.cpus[1].misrouted(), 1);
    assert_eq!(s.cpus[0].events(), 1, "the owner, woken by the glue, ran its expiry");
    s.assert_all_fired_once_never_early();
}

#[test]
fn no_device_means_arming_fails_loudly() {
    let mut s = Sim::new(TickMode::Oneshot, 1);
    assert_eq!(
        s.on(0, |t, now, bc| t.arm(5, 7, now, bc)),
        Err(Refused { error: ArmError::NoTickDevice(0), payload: 7 }),
        "refused, its payload handed back"
    );
}

#[test]
fn timers_armed_from_another_cpu_run_on_their_own() {
    let mut s = Sim::new(TickMode::Oneshot, 3);
    s.per_cpu("lapic0", LAPIC, 0);
    s.per_cpu("hpet1", PERCPU_HPET, 1);
    s.add("global", GLOBAL_HPET, CpuSet::first(3), Features::empty(), 0);
    let now = s.now();
    let on1 = s.arm_remote(1, now + 30_000);
    let on2 = s.arm_remote(2, now + 20_000);
    s.deliver();
    s.run_until(now + 1_000_000);
    s.assert_all_fired_once_never_early();
    assert_eq!((s.fired(on1).len(), s.fired(on2).len()), (1, 1));
}

#[test]
fn a_timer_cancelled_from_another_cpu_never_runs() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    s.per_cpu("lapic0", LAPIC, 0);
    s.per_cpu("lapic1", LAPIC, 1);
    let now = s.now();
    let (n, id) = s.arm(1, now + 40_000);
    s.inbox.push_back((1, Message::Cancel { id, n }));
    s.deliver();
    s.run_until(now + 1_000_000);
    assert_eq!(s.cancelled, [n]);
    assert!(s.fired(n).is_empty());
}

#[test]
fn periodic_timer_stays_on_its_deadline_grid_without_drift() {
    let mut s = Sim::new(TickMode::Oneshot, 1);
    let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
    // A device that is sometimes late: every deadline it is programmed for lands 3 us late.
    *s.drivers[h0.0].passes_below_ticks.lock() = 0;
    let start = s.now() + 10_000;
    let (n, id) = s.arm_periodic(0, start, 100_000);
    s.run_until(start + 1_000 * 100_000 + 50_000);
    let fired = s.fired(n).to_vec();
    assert_eq!(fired.len(), 1001, "once per period over 1 000 periods");
    for (k, at) in fired.iter().enumerate() {
        assert!(*at >= start + k as u64 * 100_000, "period {k} early");
        assert!(*at < start + k as u64 * 100_000 + 10_000, "period {k} drifted: {at}");
    }
    assert_eq!(s.cancel(0, id), Cancel::Cancelled(n));
}

#[test]
fn random_timers_on_mixed_devices_fire_once_never_early_on_their_cpu() {
    for (mode, seed) in [(TickMode::Oneshot, 7), (TickMode::Periodic { hz: 250 }, 11)] {
        let mut s = Sim::new(mode, 4);
        s.per_cpu("hpet0", PERCPU_HPET, 0);
        s.per_cpu("lapic1", LAPIC, 1);
        s.add("global", GLOBAL_HPET, CpuSet::first(4), Features::empty(), 0);
        let mut rng = crate::testing::XorShift(seed);
        let mut live: Vec<(usize, u32, TimerId)> = Vec::new();
        for _ in 0..3_000 {
            let cpu = (rng.next() % 4) as usize;
            match rng.next() % 12 {
                0..=5 => {
                    let now = s.now();
                    let deadline = now + rng.next() % 30_000_000;
                    let (n, id) = s.arm(cpu, deadline);
                    live.push((cpu, n, id));
                }
                6 => {
                    let now = s.now();
                    s.arm_remote(cpu, now + rng.next() % 30_000_000);
                }
                7 if !live.is_empty() => {
                    let (cpu, n, id) = live.swap_remove((rng.next() % live.len() as u64) as usize);
                    if s.cancel(cpu, id).cancelled().is_some() {
                        s.cancelled.push(n);
                    }
                }
                8 if !live.is_empty() => {
                    let (cpu, n, id) = live.swap_remove((rng.next() % live.len() as u64) as usize);
                    s.inbox.push_back((cpu, Message::Cancel { id, n }));
                }
                _ => {
                    s.deliver();
                    let now = s.now();
                    s.run_until(now + rng.next() % 300_000);
                }
            }
        }
        s.deliver();
        let now = s.now();
        s.run_until(now + 100_000_000);
        for n in &s.cancelled {
            assert!(s.fired(*n).is_empty(), "cancelled timer {n} ran");
        }
        s.assert_all_fired_once_never_early();
        assert!(
            s.timers.len() > 1000 && s.cancelled.len() > 50,
            "{} timers, {} cancelled",
            s.timers.len(),
            s.cancelled.len()
        );
    }
}

/// A LAPIC-like per-CPU device that stops in deep idle.
fn stopping_local(s: &mut Sim, cpu: usize) -> DeviceId {
    let name = alloc::format!("lapic{cpu}");
    s.add(&name, LAPIC, CpuSet::single(cpu), Features::PER_CPU | Features::STOPS_IN_DEEP_IDLE, cpu)
}

/// The broadcast served by one CPU's own timer (`bc_hrtimer`): a pseudo device with no
/// hardware behind it (its simulated driver never fires: its slot keeps the device ids in line).
fn hrtimer_broadcast(s: &mut Sim, cpus: usize) -> DeviceId {
    let placeholder = s.driver(None, 0);
    s.drivers.push(placeholder);
    s.irq_cpu.push(0);
    let spec = crate::clockevents::hrtimer_broadcast_spec(CpuSet::first(cpus));
    let (id, changes) = s.registry.register(spec, &crate::clockevents::HrtimerBroadcast);
    s.apply(changes);
    id
}

/// Steps the machine until `end`, checking after every interrupt what serving the broadcast
/// by one CPU's timer promises: the CPU serving it while it waits for a deadline is not in deep
/// idle and its own device is armed no later than the broadcast's timer (nothing can be lost),
/// and every CPU in deep idle with a deadline is waiting on the broadcast. Returns the CPUs that served.
fn run_checking_the_server(s: &mut Sim, end: u64) -> CpuSet {
    let mut servers = CpuSet::EMPTY;
    loop {
        for (cpu, t) in s.cpus.iter().enumerate() {
            let (needs, waiting, timer) = {
                let b = s.bc.lock();
                (b.needs_cpu(cpu), b.waiting(), b.timer_on(cpu))
            };
            if t.is_handed_over() && t.next_event_ns() != u64::MAX {
                assert!(waiting.contains(cpu), "CPU {cpu} sleeps deeply with a deadline the broadcast lacks");
            }
            if needs {
                servers.insert(cpu);
                assert!(!t.is_handed_over(), "CPU {cpu} serves the broadcast from deep idle");
                assert_eq!(t.broadcast_timer_ns(), timer, "CPU {cpu}'s tick carries the broadcast's timer");
                let local = s.registry.service(cpu);
                let Service::Local(l) = local else { panic!("CPU {cpu} serves with no device: {local:?}") };
                let fires = s.drivers[l.0].fires_at.lock().expect("the server's device is armed");
                assert!(fires <= timer, "CPU {cpu}'s device fires at {fires}, after the broadcast's {timer}");
            }
        }
        let next = s.drivers.iter().filter_map(|d| *d.fires_at.lock()).min();
        if next.is_none_or(|t| t > end) || !s.step() {
            break;
        }
    }
    s.set_now(end.max(s.now()));
    servers
}

/// `hpet=off pit=off idle=deep lapic_stops_in_idle`: no hardware broadcast device, so the
/// broadcast is one CPU's timer. The CPUs sleep deeply, one stays awake to serve (the one whose
/// handed-over deadline was earliest when it went to sleep, as Linux's `bc_set_next` takes the
/// timer to the CPU programming it), the service moves as earlier deadlines come, and every
/// timer runs once, never early, on its own CPU (the simulator's callback checks the CPU).
#[test]
fn one_cpus_timer_serves_the_broadcast_and_the_others_sleep_deeply() {
    let mut s = Sim::new(TickMode::Oneshot, 4);
    for c in 0..4 {
        stopping_local(&mut s, c);
    }
    let h = hrtimer_broadcast(&mut s, 4);
    assert_eq!(s.bc.lock().device(), Some(h), "the only broadcast device");
    assert!(s.bc.lock().is_hrtimer());
    let now = s.now();
    for cpu in 0..4 {
        for k in 1..=5u64 {
            s.arm(cpu, now + k * 37_000 + (3 - cpu as u64) * 11_000);
        }
    }
    // CPU 0 (first deadline 70 us) sleeps first: it programs the timer and serves.
    assert_eq!(s.sleep_deeply(0), Ok(Handover::ServesBroadcast));
    assert!(s.bc.lock().waiting().is_empty(), "the server took its deadline back");
    // CPU 1 (59 us): earlier than what the timer waits for: it takes it over, and serves.
    assert_eq!(s.sleep_deeply(1), Ok(Handover::ServesBroadcast));
    assert_eq!(s.bc.lock().server(), (Some(1), 1), "moved from CPU 0 to CPU 1");
    assert_eq!(s.sleep_deeply(2), Ok(Handover::ServesBroadcast), "48 us: CPU 2's now");
    assert_eq!(s.sleep_deeply(3), Ok(Handover::ServesBroadcast), "37 us: CPU 3's now");
    // CPUs 0 to 2 sleep deeply at their next idle entry: CPU 3 serves them.
    for cpu in 0..3 {
        s.idle(cpu);
        assert!(s.cpus[cpu].is_handed_over(), "CPU {cpu} sleeps deeply");
    }
    let mut servers = run_checking_the_server(&mut s, now + 100_000);
    assert_eq!(s.bc.lock().server().0, Some(3), "CPU 3 serves: no earlier deadline came");
    // A timer posted to CPU 1 asleep, due before anything the broadcast waits for: CPU 1 is
    // woken, hands that deadline over, takes the timer over and stays awake to serve.
    s.arm_remote(1, s.now() + 3_000);
    s.inbox.push_back((1, Message::Wake));
    s.deliver();
    assert_eq!(s.bc.lock().server().0, Some(1), "CPU 1's earlier deadline took the timer over");
    assert!(!s.cpus[1].is_handed_over(), "and CPU 1 is awake");
    servers.insert_all(run_checking_the_server(&mut s, now + 1_000_000));
    s.assert_all_fired_once_never_early();
    assert!(s.bc.lock().waiting().is_empty(), "nothing left waiting");
    let (server, moves) = s.bc.lock().server();
    assert!(server.is_some() && moves >= 4, "served by {server:?}, moved {moves} times");
    assert!(servers.contains(1) && servers.contains(3), "CPUs 3 then 1 served the sleepers: {servers}");
    let deep: u64 = s.cpus.iter().map(|t| t.handovers()).sum();
    assert!(deep >= 10, "the CPUs not serving slept deeply: {deep} handovers");
    let (events, _) = s.bc.lock().stats();
    assert!(events >= 5, "the broadcast's events ran on the serving CPU: {events}");
}

/// A CPU that took the broadcast's timer over and then stays busy (never idles again) serves
/// on: each broadcast event it runs in its own interrupt programs the timer again on its own
/// tick, so the sleepers are woken at each of their deadlines.
#[test]
fn a_busy_cpu_serves_the_broadcast_from_its_own_interrupts() {
    let mut s = Sim::new(TickMode::Oneshot, 3);
    for c in 0..3 {
        stopping_local(&mut s, c);
    }
    hrtimer_broadcast(&mut s, 3);
    let now = s.now();
    s.arm(0, now + 10_000);
    for k in 1..=4u64 {
        s.arm(1, now + k * 50_000);
        s.arm(2, now + k * 50_000 + 20_000);
    }
    assert_eq!(s.sleep_deeply(0), Ok(Handover::ServesBroadcast));
    s.deep_sleepers.remove(0); // busy from now on: no idle entry after its interrupts
    for cpu in 1..3 {
        assert_eq!(s.sleep_deeply(cpu), Ok(Handover::HandedOver));
    }
    let servers = run_checking_the_server(&mut s, now + 1_000_000);
    s.assert_all_fired_once_never_early();
    assert_eq!(servers, CpuSet::single(0), "CPU 0 served throughout");
    // One per sleeper's deadline, and the first: the timer waited for CPU 0's own deadline,
    // handed over as it took the timer (Linux's order), with nobody due then.
    assert_eq!(s.bc.lock().stats(), (9, 8), "each sleeper's deadline, woken by IPI from CPU 0");
}

/// The CPU serving the broadcast goes offline: the sleepers are woken, the first to hand its
/// deadline over again serves, nothing is lost.
#[test]
fn the_broadcast_moves_on_when_its_serving_cpu_goes_offline() {
    let mut s = Sim::new(TickMode::Oneshot, 3);
    for c in 0..3 {
        stopping_local(&mut s, c);
    }
    hrtimer_broadcast(&mut s, 3);
    let now = s.now();
    s.arm(0, now + 50_000);
    s.arm(1, now + 300_000);
    s.arm(2, now + 400_000);
    for cpu in 0..3 {
        let _ = s.sleep_deeply(cpu);
    }
    assert_eq!(s.bc.lock().server().0, Some(0), "CPU 0's deadline was the earliest");
    for cpu in 1..3 {
        s.idle(cpu);
        assert!(s.cpus[cpu].is_handed_over(), "CPU {cpu} sleeps deeply");
    }
    s.run_until(now + 60_000);
    assert_eq!(s.bc.lock().server().0, Some(0), "still serving after its own timer ran");
    s.offline(0, 1);
    s.deliver();
    let server = s.bc.lock().server().0;
    assert!(matches!(server, Some(1 | 2)), "a CPU still online serves: {server:?}");
    run_checking_the_server(&mut s, now + 1_000_000);
    s.assert_all_fired_once_never_early();
}

#[test]
fn deep_sleepers_hand_over_and_are_woken_exactly_when_due() {
    let mut s = Sim::new(TickMode::Oneshot, 4);
    let locals: Vec<DeviceId> = (0..4).map(|c| stopping_local(&mut s, c)).collect();
    let g = s.add("global", GLOBAL_HPET, CpuSet::first(4), Features::empty(), 0);
    assert_eq!(s.bc.lock().device(), Some(g));
    let now = s.now();
    for cpu in 0..4 {
        for k in 1..=5u64 {
            s.arm(cpu, now + k * 37_000 + cpu as u64 * 11_000);
        }
    }
    for (cpu, &l) in locals.iter().enumerate() {
        assert_eq!(s.sleep_deeply(cpu), Ok(Handover::HandedOver));
        assert_eq!(*s.drivers[l.0].fires_at.lock(), None, "CPU {cpu}'s device is stopped in deep idle");
    }
    assert_eq!(s.bc.lock().waiting(), CpuSet::first(4));
    s.run_until(now + 1_000_000);
    s.assert_all_fired_once_never_early();
    let (events, ipis) = s.bc.lock().stats();
    assert_eq!(events, 20, "one broadcast interrupt per deadline");
    for (cpu, t) in s.cpus.iter().enumerate() {
        assert_eq!(t.events(), 5, "CPU {cpu} was woken once per timer");
        // Every wake-up ends a sleep; CPU 0 also wakes for each broadcast interrupt it takes.
        let sleeps = if cpu == 0 { 1 + events } else { 1 + 5 };
        assert_eq!(t.handovers(), sleeps, "CPU {cpu}: one handover per deep sleep");
    }
    assert_eq!(ipis, 15, "every due CPU but the one taking the interrupt is woken by IPI");
}

/// The workload of [`deep_sleepers_hand_over_and_are_woken_exactly_when_due`] on a broadcast
/// device that can move (DYNIRQ): aimed each time at the CPU due next, it wakes that CPU
/// itself, so no wake-up IPI is needed (deadlines never coincide here); each timer still runs
/// once, never early, on its own CPU (the simulator's callback checks the CPU).
#[test]
fn a_dynirq_broadcast_follows_the_earliest_sleeper_and_needs_no_ipi() {
    let mut s = Sim::new(TickMode::Oneshot, 4);
    for c in 0..4 {
        stopping_local(&mut s, c);
    }
    let g = s.add("global", GLOBAL_HPET, CpuSet::first(4), Features::DYNIRQ, 0);
    let now = s.now();
    for cpu in 0..4 {
        for k in 1..=5u64 {
            s.arm(cpu, now + k * 37_000 + cpu as u64 * 11_000);
        }
    }
    for cpu in 0..4 {
        assert_eq!(s.sleep_deeply(cpu), Ok(Handover::HandedOver));
    }
    assert_eq!(*s.drivers[g.0].target.lock(), Some(0), "CPU 0's 48 us is the first deadline");
    s.run_until(now + 1_000_000);
    s.assert_all_fired_once_never_early();
    let (events, ipis) = s.bc.lock().stats();
    assert_eq!(events, 20, "one broadcast interrupt per deadline");
    assert_eq!(ipis, 0, "each interrupt landed on the CPU due (15 IPIs with a fixed target)");
    let (_, moves) = s.bc.lock().target();
    assert!(moves >= 4, "moved from CPU to CPU: {moves} moves");
    for (cpu, t) in s.cpus.iter().enumerate() {
        assert_eq!(t.events(), 5, "CPU {cpu} was woken once per timer");
    }
}

/// An interrupt of a moving broadcast device that lands on the CPU it was aimed at before
/// (on its way during the move) is served there as any broadcast interrupt: the CPUs due are
/// woken by IPI, nothing counts as misrouted.
#[test]
fn a_broadcast_interrupt_landing_on_the_previous_target_wakes_the_cpu_due() {
    let mut s = Sim::new(TickMode::Oneshot, 3);
    for c in 0..3 {
        stopping_local(&mut s, c);
    }
    let g = s.add("global", GLOBAL_HPET, CpuSet::first(3), Features::DYNIRQ, 0);
    let now = s.now();
    let (late, _) = s.arm(1, now + 200_000);
    let (early, _) = s.arm(2, now + 100_000);
    for cpu in 0..3 {
        let _ = s.sleep_deeply(cpu);
    }
    assert_eq!(*s.drivers[g.0].target.lock(), Some(2));
    // Due on CPU 2, but the interrupt reaches CPU 1, aimed at before CPU 2 slept.
    s.set_now(now + 100_000);
    *s.drivers[g.0].fires_at.lock() = None;
    s.device_event(g, 1);
    assert_eq!(s.fired(early), [now + 100_000], "CPU 2 woken by IPI ran its timer");
    assert_eq!(s.bc.lock().stats(), (1, 1), "one IPI, to CPU 2");
    assert!(s.cpus.iter().all(|t| t.misrouted() == 0 && t.stale() == 0), "expected, not misrouted");
    assert_eq!(*s.drivers[g.0].target.lock(), Some(1), "aimed at CPU 1, due next");
    s.run_until(now + 1_000_000);
    assert_eq!(s.fired(late).len(), 1);
    s.assert_all_fired_once_never_early();
}

#[test]
fn a_sleeper_woken_early_takes_its_deadline_back() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    let l1 = stopping_local(&mut s, 1);
    s.add("global", GLOBAL_HPET, CpuSet::first(2), Features::empty(), 0);
    let now = s.now();
    s.arm(1, now + 100_000);
    assert_eq!(s.on(1, |t, now, bc| t.broadcast_enter(now, bc)), Ok(Handover::HandedOver));
    assert_eq!(s.bc.lock().deadline(1), now + 100_000);
    s.set_now(now + 30_000);
    // Another interrupt ends the sleep early.
    s.on(1, |t, now, bc| t.broadcast_exit(now, bc));
    assert_eq!(s.bc.lock().deadline(1), u64::MAX, "left the broadcast");
    assert_eq!(*s.drivers[l1.0].fires_at.lock(), Some(now + 100_000), "its own device is armed again");
    s.run_until(now + 1_000_000);
    s.assert_all_fired_once_never_early();
    assert_eq!(s.bc.lock().stats().1, 0, "the broadcast never woke it");
    assert_eq!(s.cpus[1].events(), 1, "its own device did");
}

/// A sleeper woken for its deadline leaves deep idle before its interrupt handler runs (Linux's
/// order): going back to deep idle then must not hand the passed deadline to the broadcast
/// again (which would wake it at once, over and over: the livelock an adopting kernel hit);
/// it stays awake for its local device's interrupt, and the timer fires once.
#[test]
fn a_sleeper_leaving_idle_before_its_handler_does_not_hand_a_passed_deadline_back() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    let l1 = stopping_local(&mut s, 1);
    s.add("global", GLOBAL_HPET, CpuSet::first(2), Features::empty(), 0);
    let now = s.now();
    let (n, _) = s.arm(1, now + 100_000);
    assert_eq!(s.on(1, |t, now, bc| t.broadcast_enter(now, bc)), Ok(Handover::HandedOver));
    s.set_now(now + 100_000);
    // Woken (the broadcast's IPI is on its way), it leaves deep idle first ...
    s.on(1, |t, now, bc| t.broadcast_exit(now, bc));
    // ... and its idle loop asks for deep idle again before the handler has run.
    for _ in 0..3 {
        assert_eq!(s.on(1, |t, now, bc| t.broadcast_enter(now, bc)), Ok(Handover::EventDue));
        assert_eq!(s.bc.lock().deadline(1), u64::MAX, "the passed deadline stays with CPU 1");
    }
    assert!(s.drivers[l1.0].fires_at.lock().is_some(), "its local device is armed for the due timer");
    s.run_until(now + 1_000_000);
    assert_eq!(s.fired(n).len(), 1);
    s.assert_all_fired_once_never_early();
}

#[test]
fn sleepers_are_woken_when_the_broadcast_device_fails() {
    let mut s = Sim::new(TickMode::Oneshot, 3);
    for c in 0..3 {
        stopping_local(&mut s, c);
    }
    let g = s.add("global", GLOBAL_HPET, CpuSet::first(3), Features::empty(), 0);
    let now = s.now();
    for cpu in 0..3 {
        s.arm(cpu, now + 200_000 + cpu as u64);
        assert_eq!(s.sleep_deeply(cpu), Ok(Handover::HandedOver));
    }
    // The global device stops taking deadlines: the next programming fails and takes it out.
    *s.drivers[g.0].passes_below_ticks.lock() = u64::MAX;
    s.arm(0, now + 50_000);
    assert!(s.device(g).is_failed());
    assert_eq!(s.bc.lock().device(), None);
    s.deliver(); // the wake-ups of every sleeper
    for cpu in 0..3 {
        assert!(!s.cpus[cpu].is_handed_over(), "CPU {cpu} still asleep on a dead broadcast");
        assert_eq!(
            s.on(cpu, |t, now, bc| t.broadcast_enter(now, bc)),
            Err(DeepIdleRefused::NoBroadcast),
            "CPU {cpu} may not sleep deeply any more"
        );
    }
    s.deep_sleepers = CpuSet::EMPTY;
    s.run_until(now + 1_000_000);
    s.assert_all_fired_once_never_early();
}

#[test]
fn no_broadcast_device_means_no_deep_idle() {
    let mut s = Sim::new(TickMode::Oneshot, 1);
    let l0 = stopping_local(&mut s, 0);
    let now = s.now();
    s.arm(0, now + 10_000);
    assert_eq!(s.on(0, |t, now, bc| t.broadcast_enter(now, bc)), Err(DeepIdleRefused::NoBroadcast));
    assert_eq!(*s.drivers[l0.0].fires_at.lock(), Some(now + 10_000), "the device keeps its event");
    s.run_until(now + 100_000);
    s.assert_all_fired_once_never_early();
}

#[test]
fn a_device_that_keeps_running_needs_no_handover() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    s.per_cpu("hpet0", PERCPU_HPET, 0);
    s.add("global", GLOBAL_HPET, CpuSet::first(2), Features::empty(), 0);
    assert_eq!(s.sleep_deeply(0), Ok(Handover::NotNeeded));
    let now = s.now();
    s.arm(0, now + 10_000);
    s.run_until(now + 100_000);
    s.assert_all_fired_once_never_early();
    assert_eq!((s.cpus[0].handovers(), s.bc.lock().stats().0), (0, 0));
}

#[test]
fn suspended_timekeeping_resumes_with_every_pending_timer() {
    let mut s = Sim::new(TickMode::Oneshot, 3);
    let h0 = s.per_cpu("hpet0", PERCPU_HPET, 0);
    let l1 = stopping_local(&mut s, 1);
    let g = s.add("global", GLOBAL_HPET, CpuSet::first(3), Features::empty(), 0);
    let now = s.now();
    s.arm(0, now + 100_000);
    s.arm(1, now + 200_000);
    s.arm(2, now + 300_000);
    s.arm(2, now + 5_000_000);
    assert_eq!(s.sleep_deeply(1), Ok(Handover::HandedOver));
    // Suspend: every device shut down, the timers stay queued.
    let pending = s.suspend();
    assert_eq!(pending, 4);
    for d in [h0, l1, g] {
        assert_eq!(*s.drivers[d.0].fires_at.lock(), None, "{d:?} runs while suspended");
    }
    // 1 ms later (the first three deadlines passed meanwhile), resume.
    s.set_now(now + 1_000_000);
    s.resume();
    s.run_until(now + 10_000_000);
    s.assert_all_fired_once_never_early();
    for n in 0..3 {
        assert!(s.fired(n)[0] >= now + 1_000_000, "timer {n} fired while suspended");
    }
}

/// Found by the `tick` fuzz target's author: a CPU may carry out its own newest assignment at
/// once while older ones still wait in its mailbox; those must not undo it.
#[test]
fn a_stale_assignment_arriving_late_is_ignored() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    let (l1, old) = {
        let spec = crate::clockevents::fake::spec("lapic1", LAPIC, CpuSet::single(1), Features::PER_CPU);
        let driver = s.driver(Some(1), 0);
        s.drivers.push(driver);
        s.irq_cpu.push(1);
        s.registry.register(spec, driver)
    };
    let h1 = s.per_cpu("hpet1", PERCPU_HPET, 1);
    assert_eq!(s.cpus[1].service(), Service::Local(h1));
    // The first decision (CPU 1 on its LAPIC timer) arrives only now.
    for a in old.assignments {
        assert!(!s.on(1, |t, now, bc| t.apply(a, now, bc)), "a stale assignment was applied");
    }
    assert_eq!(s.cpus[1].service(), Service::Local(h1));
    assert_eq!(s.device(l1).state(), State::Detached);
}

/// A broadcast device that gives up on a deadline a CPU hands it is reported by that CPU.
#[test]
fn a_broadcast_device_giving_up_on_a_cpus_deadline_is_reported() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    s.per_cpu("lapic0", LAPIC, 0);
    let g = s.add("global", GLOBAL_HPET, CpuSet::first(2), Features::empty(), 0);
    *s.drivers[g.0].passes_below_ticks.lock() = u64::MAX;
    let now = s.now();
    let _ = s.on(1, |t, now, bc| t.arm(now + 10_000, 0, now, bc));
    let failure = s.on(1, |t, _, _| t.take_failure()).expect("CPU 1 reports the broadcast's failure");
    assert_eq!(failure.device, g);
    let _ = now;
}

/// A CPU going offline hands every pending timer (one-shot and periodic, on a local device and
/// on the broadcast) to another CPU: each keeps its deadline (a periodic one its grid), runs
/// once there and never early, under a new id the returned map gives; its devices are
/// released and it takes no more timers.
#[test]
fn a_cpu_going_offline_hands_its_timers_to_another_each_run_once_never_early() {
    let mut s = Sim::new(TickMode::Oneshot, 3);
    s.per_cpu("lapic0", LAPIC, 0);
    let l1 = s.per_cpu("lapic1", LAPIC, 1);
    s.add("global", GLOBAL_HPET, CpuSet::first(3), Features::empty(), 0);
    assert!(matches!(s.cpus[2].service(), Service::Broadcast(_)));
    let now = s.now();
    let early = s.arm(1, now + 30_000).0;
    let later: Vec<(u32, TimerId)> =
        [70_000, 250_000, 250_000, 900_000].iter().map(|&d| s.arm(1, now + d)).collect();
    let (periodic, _) = s.arm_periodic(1, now + 50_000, 100_000);
    let (on2, _) = s.arm(2, now + 400_000);
    s.arm(0, now + 300_000);
    s.run_until(now + 120_000);
    assert_eq!((s.fired(early).len(), s.fired(periodic).len(), s.fired(later[0].0).len()), (1, 1, 1));
    assert_eq!(s.bc.lock().deadline(2), now + 400_000);

    let (released, moved) = s.offline(1, 0);
    assert_eq!(released, vec![l1], "CPU 1's own device is released");
    assert_eq!(moved.len(), 4, "the pending timers: three one-shots and the periodic one");
    assert_eq!(s.registry.owner_of(l1), None);
    assert!(!s.registry.online().contains(1));
    assert_eq!(s.device(l1).state(), State::Detached);
    assert_eq!(*s.drivers[l1.0].fires_at.lock(), None, "the released device is unarmed");
    for &(was, new) in &moved {
        assert_eq!((was.cpu(), new.cpu()), (1, 0), "ids follow their timers from CPU 1 to CPU 0");
        assert_eq!(
            s.on(0, |t, _, _| t.cancel(was)).err().map(|e| e.id_cpu),
            Some(1),
            "the old id is refused"
        );
    }
    // The new id reaches its timer: one of the two at 250 us is cancelled by it.
    let (n, was) = later[2];
    let new = moved.iter().find(|&&(w, _)| w == was).expect("moved").1;
    assert!(s.cancel(0, new).cancelled() == Some(n));
    s.cancelled.push(n);
    assert_eq!(
        s.on(1, |t, now, bc| t.arm(now + 1_000, 99, now, bc)).err().map(|r| r.error),
        Some(ArmError::CpuNotOnline(1))
    );
    // CPU 2, on the broadcast, goes too: it leaves the broadcast's set.
    let (released, moved) = s.offline(2, 0);
    assert!(released.is_empty() && moved.len() == 1);
    assert_eq!(s.bc.lock().deadline(2), u64::MAX);
    s.run_until(now + 1_000_000);
    s.assert_all_fired_once_never_early();
    assert_eq!(s.fired(on2), &[now + 400_000][..]);
    // The periodic timer kept its grid: 50 us + k * 100 us.
    let runs = s.fired(periodic);
    assert_eq!(runs.len(), 10);
    for (k, &at) in runs.iter().enumerate() {
        assert_eq!(at, now + 50_000 + k as u64 * 100_000, "run {k} off its grid");
    }
}

/// A CPU that cannot take the timers (nothing serves it) hands them back whole.
#[test]
fn timers_a_cpu_cannot_adopt_are_handed_back_whole() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    s.per_cpu("lapic1", LAPIC, 1);
    let now = s.now();
    s.arm(1, now + 10_000);
    s.arm(1, now + 20_000);
    let timers = s.on(1, |t, _, bc| t.go_offline(bc));
    let refused = s.on(0, |t, now, bc| t.adopt(timers, now, bc)).expect_err("CPU 0 has no device");
    assert_eq!(refused.error, ArmError::NoTickDevice(0));
    let deadlines: Vec<u64> = refused.payload.iter().map(|m| m.deadline_ns).collect();
    assert_eq!(deadlines, vec![now + 10_000, now + 20_000], "in deadline order, none lost");
}

/// Entering deep idle, the broadcast device gives up on the deadline handed to it, and the
/// CPU's own device, taking the deadline back, gives up too: both are taken out at once and
/// the CPU moves to the next broadcast device with its timer. (The kernel's copy of this glue
/// reported only the broadcast device: the CPU stayed on its failed local device, its timer
/// lost until some other interrupt came.)
#[test]
fn both_devices_giving_up_at_deep_idle_entry_are_taken_out_and_the_timer_still_fires() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    let l1 = stopping_local(&mut s, 1);
    let g = s.add("global", GLOBAL_HPET, CpuSet::first(2), Features::empty(), 0);
    let g2 = s.add("global2", GLOBAL_HPET - 10, CpuSet::first(2), Features::empty(), 0);
    let now = s.now();
    let (n, _) = s.arm(1, now + 100_000);
    *s.drivers[l1.0].passes_below_ticks.lock() = u64::MAX;
    *s.drivers[g.0].passes_below_ticks.lock() = u64::MAX;
    assert_eq!(s.sleep_deeply(1), Err(DeepIdleRefused::NoBroadcast));
    let taken: Vec<&str> = s.registry.taken_out().iter().map(|(name, _)| name.as_str()).collect();
    assert!(taken.contains(&"global") && taken.contains(&"lapic1"), "taken out: {taken:?}");
    assert_eq!(s.cpus[1].service(), Service::Broadcast(g2));
    assert_eq!(s.bc.lock().deadline(1), now + 100_000, "the deadline went to the next broadcast device");
    s.deep_sleepers = CpuSet::EMPTY;
    s.run_until(now + 1_000_000);
    assert_eq!(s.fired(n).len(), 1);
    s.assert_all_fired_once_never_early();
}

/// Random one-shot and periodic timers on four CPUs (per-CPU devices, a deep sleeper, one on
/// the broadcast) while two CPUs go offline in turn, each handing its timers to a random CPU
/// still online: every one-shot timer runs once, never early, on the CPU holding it then (the
/// simulator checks it in the callback); every periodic one stays on its grid, no point
/// skipped or run twice.
#[test]
fn random_timers_survive_cpus_going_offline() {
    for seed in [3, 5, 9] {
        let mut s = Sim::new(TickMode::Oneshot, 4);
        s.per_cpu("hpet0", PERCPU_HPET, 0);
        stopping_local(&mut s, 1);
        s.per_cpu("lapic2", LAPIC, 2);
        s.add("global", GLOBAL_HPET, CpuSet::first(4), Features::empty(), 0);
        assert_eq!(s.sleep_deeply(1), Ok(Handover::HandedOver));
        let mut rng = crate::testing::XorShift(seed);
        let mut online: Vec<usize> = vec![0, 1, 2, 3];
        let mut live: Vec<u32> = Vec::new();
        let mut periodic: Vec<u32> = Vec::new();
        for step in 0..3_000 {
            if step == 1_000 || step == 2_000 {
                let gone = if step == 1_000 { 2 } else { 1 };
                online.retain(|&c| c != gone);
                let to = online[(rng.next() % online.len() as u64) as usize];
                s.deliver();
                let pending = s.cpus[gone].pending();
                let (_, moved) = s.offline(gone, to);
                assert_eq!(moved.len(), pending, "every pending timer of CPU {gone} moved");
                assert!(moved.iter().all(|&(old, new)| old.cpu() == gone && new.cpu() == to));
            }
            let cpu = online[(rng.next() % online.len() as u64) as usize];
            let now = s.now();
            match rng.next() % 12 {
                0..=4 => live.push(s.arm(cpu, now + rng.next() % 20_000_000).0),
                5 if periodic.len() < 40 => {
                    let period = 100_000 + rng.next() % 2_000_000;
                    periodic.push(s.arm_periodic(cpu, now + rng.next() % 1_000_000, period).0);
                }
                6 => {
                    s.arm_remote(cpu, now + rng.next() % 20_000_000);
                }
                7 if !live.is_empty() => {
                    let n = live.swap_remove((rng.next() % live.len() as u64) as usize);
                    let (cpu, id) = (s.timers[&n].cpu, s.ids[&n]);
                    if s.cancel(cpu, id).cancelled().is_some() {
                        s.cancelled.push(n);
                    }
                }
                _ => {
                    s.deliver();
                    s.run_until(now + rng.next() % 300_000);
                }
            }
        }
        s.deliver();
        let end = s.now() + 50_000_000;
        s.run_until(end);
        for n in &s.cancelled {
            assert!(s.fired(*n).is_empty(), "cancelled timer {n} ran");
        }
        s.assert_all_fired_once_never_early();
        for &n in &periodic {
            let SimTimer { deadline: first, period, ref fired, .. } = s.timers[&n];
            let points: Vec<u64> = fired
                .iter()
                .map(|&at| {
                    assert!(at >= first, "periodic timer {n} ran early");
                    let k = (at - first) / period;
                    assert!(at - (first + k * period) < 2_000, "periodic timer {n} off its grid at {at}");
                    k
                })
                .collect();
            let expected: Vec<u64> = (0..points.len() as u64).collect();
            assert_eq!(points, expected, "periodic timer {n}: a point skipped or run twice");
            assert!((end - first) / period <= points.len() as u64, "periodic timer {n} stopped");
        }
        let counts = (s.timers.len(), s.cancelled.len(), periodic.len());
        assert!(
            counts.0 > 1_000 && counts.1 > 20 && counts.2 == 40,
            "timers, cancelled, periodic: {counts:?}"
        );
    }
}

/// Timers on REALTIME and BOOTTIME across steps of REALTIME and time suspended: a CPU told
/// (`clock_was_set`) queues them again where the new offsets place them (a step forwards past a
/// deadline: due at once; a step back: later); a CPU not told yet runs nothing early either (the
/// expiry asks each such timer whether its own clock has reached it); each runs once, and
/// MONOTONIC timers stay where they were.
#[test]
fn timers_on_realtime_and_boottime_follow_steps_never_early_on_their_clock() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    s.per_cpu("lapic0", LAPIC, 0);
    s.per_cpu("lapic1", LAPIC, 1);
    let wall0 = 1_936_778_400_000_000_000i64;
    s.set_offsets(Offsets { realtime_ns: wall0, suspended_ns: 0 });
    for c in 0..2 {
        s.clock_was_set(c);
    }
    let now = s.now();
    let wall = |mono: u64| WallTime::from_nanos((wall0 + mono as i64) as u64);
    // On each CPU: a REALTIME timer 1 ms and 10 ms ahead, a BOOTTIME one 2 ms ahead, a
    // MONOTONIC one 3 ms ahead.
    let mut real_soon = vec![];
    let mut real_late = vec![];
    let mut boot = vec![];
    let mut mono = vec![];
    for c in 0..2 {
        real_soon.push(s.arm_on_clock(c, ClockDeadline::Realtime(wall(now + 1_000_000))));
        real_late.push(s.arm_on_clock(c, ClockDeadline::Realtime(wall(now + 10_000_000))));
        boot.push(s.arm_on_clock(c, ClockDeadline::Boottime(BootInstant::from_nanos(now + 2_000_000))));
        mono.push(s.arm(c, now + 3_000_000).0);
    }
    // REALTIME steps back 5 ms; CPU 0 is told, CPU 1 not (yet).
    let back = Offsets { realtime_ns: wall0 - 5_000_000, suspended_ns: 0 };
    s.set_offsets(back);
    assert_eq!(s.clock_was_set(0), 2, "CPU 0's two REALTIME timers move");
    s.run_until(now + 4_000_000);
    for c in 0..2 {
        assert!(s.fired(real_soon[c]).is_empty(), "CPU {c}: a REALTIME timer ran early after a step back");
        assert_eq!(s.fired(boot[c]), &[now + 2_000_000][..], "BOOTTIME does not step");
        assert_eq!(s.fired(mono[c]), &[now + 3_000_000][..], "MONOTONIC does not step");
    }
    // CPU 1 is told now: its timer, queued again by its expiry, stays where the check put it.
    assert_eq!(
        s.clock_was_set(1),
        1,
        "only CPU 1's later timer moves: its expiry queued the early one again"
    );
    s.run_until(now + 6_000_000);
    for (c, &n) in real_soon.iter().enumerate() {
        assert_eq!(s.fired(n), &[now + 6_000_000][..], "CPU {c}: 1 ms + the 5 ms step");
    }
    // REALTIME steps forwards 20 ms past the later timers' deadlines; both CPUs are told: due now.
    let at = s.now();
    s.set_offsets(Offsets { realtime_ns: wall0 + 15_000_000, suspended_ns: 0 });
    for c in 0..2 {
        assert_eq!(s.clock_was_set(c), 1);
    }
    s.run_until(at + 100_000);
    for (c, &n) in real_late.iter().enumerate() {
        let f = s.fired(n);
        // Its old place was 9 ms ahead: now is the device's minimum delta from `at`.
        assert!(
            f.len() == 1 && f[0] < at + 100_000,
            "CPU {c}: stepped past its deadline, it ran at {f:?}, not now ({at})"
        );
    }
    // Time suspended moves BOOTTIME (and REALTIME): a BOOTTIME timer 10 ms ahead falls due at
    // once on a CPU told about 20 ms suspended; one armed 50 ms ahead comes 20 ms sooner.
    let at = s.now();
    let offs = Offsets { realtime_ns: wall0 + 15_000_000, suspended_ns: 0 };
    let near = s.arm_on_clock(0, ClockDeadline::Boottime(BootInstant::from_nanos(at + 10_000_000)));
    let far = s.arm_on_clock(1, ClockDeadline::Boottime(BootInstant::from_nanos(at + 50_000_000)));
    s.set_offsets(Offsets { realtime_ns: offs.realtime_ns + 20_000_000, suspended_ns: 20_000_000 });
    assert_eq!((s.clock_was_set(0), s.clock_was_set(1)), (1, 1));
    s.run_until(at + 40_000_000);
    assert!(s.fired(near).len() == 1 && s.fired(near)[0] < at + 100_000, "due at once: {:?}", s.fired(near));
    assert_eq!(s.fired(far), &[at + 30_000_000][..]);
    for (n, t) in &s.timers {
        assert_eq!(t.fired.len(), 1, "timer {n} ran {} times", t.fired.len());
    }
}

#[test]
fn deferred_timers_run_on_their_cpu_after_the_hard_callbacks_of_their_interrupt_once_never_early() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    s.per_cpu("lapic0", LAPIC, 0);
    s.per_cpu("lapic1", LAPIC, 1);
    let t0 = s.now();
    let (soft1, _) = s.arm_deferred(1, t0 + 3_000_000, 0);
    let (periodic, periodic_id) = s.arm_deferred(1, t0 + 1_000_000, 1_000_000);
    s.run_until(t0 + 9_500_000);
    assert_eq!(s.fired(soft1), [t0 + 3_000_000]);
    let grid: Vec<u64> = (1..=9).map(|k| t0 + k * 1_000_000).collect();
    assert_eq!(s.fired(periodic), grid, "on its grid, once per period");
    assert!(matches!(s.cancel(1, periodic_id), Cancel::Cancelled(_)), "pending again after its run");
    s.timers.remove(&periodic);
    // Armed first, same deadline as the hard one: popped first, run after it all the same.
    let (soft, _) = s.arm_deferred(0, t0 + 10_000_000, 0);
    let (hard, _) = s.arm(0, t0 + 10_000_000);
    s.behave(hard, Behaviour::Takes(1_000_000));
    s.run_until(t0 + 20_000_000);
    assert_eq!(s.fired(hard), [t0 + 10_000_000]);
    assert_eq!(
        s.fired(soft),
        [t0 + 11_000_000],
        "after the hard callback of its interrupt (which took 1 ms)"
    );
    assert_eq!(s.deferred_ran, 11);
    assert!(s.cpus.iter().all(|t| t.deferred_waiting() == 0));
    s.assert_all_fired_once_never_early();
}

#[test]
fn a_cpu_going_offline_hands_its_waiting_deferred_timers_over_and_each_runs_once_there() {
    let mut s = Sim::new(TickMode::Oneshot, 2);
    s.per_cpu("lapic0", LAPIC, 0);
    s.per_cpu("lapic1", LAPIC, 1);
    let t0 = s.now();
    let (soft, _) = s.arm_deferred(1, t0 + 1_000_000, 0);
    let (later, _) = s.arm(1, t0 + 9_000_000);
    // CPU 1's interrupt pops it; it goes offline before its deferred run.
    s.hold_deferred = true;
    s.run_until(t0 + 1_000_000);
    assert_eq!(s.cpus[1].deferred_waiting(), 1);
    assert!(s.fired(soft).is_empty());
    s.hold_deferred = false;
    s.deferred_raised = CpuSet::EMPTY;
    s.offline(1, 0);
    assert_eq!(s.cpus[1].deferred_waiting(), 0);
    s.run_until(t0 + 10_000_000);
    assert_eq!(s.fired(soft).len(), 1, "run once, on CPU 0 (the simulator checks the CPU)");
    assert_eq!(s.fired(later), [t0 + 9_000_000]);
    assert_eq!(s.deferred_ran, 1);
    s.assert_all_fired_once_never_early();
}
