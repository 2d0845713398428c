//! Fuzzes the time layer: a `kernel::time::tick::TickSystem` driven by an arbitrary sequence of
//! operations (register a device, bring a CPU online, arm, cancel, let time pass and deliver the
//! device interrupts and wake-up IPIs that fall due, a spurious or misrouted interrupt, a
//! comparator that starts passing, take a device out),
//! on simulated devices and a simulated clock, as the host tests in `time/tick.rs` do.
//!
//! A simulated device is a counter at its own frequency (`floor(now * hz / 1e9)`) with a
//! comparator: programmed `delta` ticks ahead it interrupts at the first nanosecond the counter
//! reaches it, which may be up to a tick before `now + delta / hz` (the counter's phase is
//! unknown), as on real hardware. It can be made to report a passed comparator for short deltas.
//!
//! Checked after every step:
//! - a timer is handed out only at or after its deadline, on the CPU that armed it, at most once,
//!   and never after it was cancelled; a pending timer can be cancelled;
//! - the driver is programmed only in one-shot mode and within the device's min/max delta;
//! - every online CPU is served as the selection rule says (its best-rated usable local device,
//!   else the broadcast device: the best-rated usable device that is neither per-CPU nor stops
//!   in deep idle nor anyone's local device), devices in use are in a running state, the others
//!   detached, failed ones never in use;
//! - a served CPU with pending timers has its device (or the broadcast device, or an IPI in
//!   flight) armed: no event is lost in between;
//!
//! and at the end, after time has run far enough past the last deadline, every timer that was
//! neither cancelled nor left on a CPU that no device serves has fired.
#![no_main]

use kernel::time::clockevents::{CpuSet, DeviceSpec, DriverState, EventDriver, EventPassed, Features, State};
use kernel::time::hrtimer::{Expired, TimerId};
use kernel::time::tick::{DeviceId, Service, TickMode, TickSystem};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use spin::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

const NS_PER_S: u128 = 1_000_000_000;
const CPUS: usize = 4;
const MAX_DEVICES: usize = 10;
/// Device events one input may cause before the run counts as an interrupt storm.
const MAX_EVENTS: u64 = 200_000;
/// Deadlines are armed at most this far ahead (2^27 ns, 134 ms), except "far" ones.
const MAX_DELAY_NS: u64 = 1 << 27;

/// The simulated clock, shared with the drivers (which the layer holds as `&'static`).
static NOW: AtomicU64 = AtomicU64::new(0);

fn now() -> u64 {
    NOW.load(Ordering::Relaxed)
}

/// A simulated clock event device.
struct SimDriver {
    inner: Mutex<SimState>,
}

#[derive(Default)]
struct SimState {
    hz: u64,
    min_ticks: u64,
    max_ticks: u64,
    /// Deltas below this many ticks report a passed comparator (and leave nothing armed).
    passes_below_ticks: u64,
    state: Option<DriverState>,
    /// Counter value the comparator waits for.
    target: Option<u64>,
    period_ticks: Option<u64>,
    /// The CPU that the comparator's next interrupt reaches instead of the one it is routed
    /// to (a misrouted `Spurious` step): it arrives there when the comparator matches.
    next_interrupt_misrouted_to: Option<usize>,
}

impl SimState {
    fn counter(&self, ns: u64) -> u64 {
        (u128::from(ns) * u128::from(self.hz) / NS_PER_S) as u64
    }
    /// The comparator fired: a periodic one moves on by its period, a one-shot one disarms.
    fn consume(&mut self) {
        self.target = match (self.target, self.period_ticks) {
            (Some(t), Some(p)) => Some(t.saturating_add(p)),
            _ => None,
        };
    }
    /// The first nanosecond at which the counter reaches the comparator.
    fn fires_at(&self) -> Option<u64> {
        self.target.map(|t| {
            u64::try_from((u128::from(t) * NS_PER_S).div_ceil(u128::from(self.hz))).unwrap_or(u64::MAX)
        })
    }
}

impl EventDriver for SimDriver {
    fn switch_state(&self, state: DriverState) {
        let mut s = self.inner.lock();
        s.state = Some(state);
        match state {
            DriverState::Periodic { period_ticks } => {
                assert!(
                    (s.min_ticks..=s.max_ticks).contains(&period_ticks),
                    "period of {period_ticks} ticks outside {}..={}",
                    s.min_ticks,
                    s.max_ticks
                );
                s.target = Some(s.counter(now()).saturating_add(period_ticks));
                s.period_ticks = Some(period_ticks);
            }
            _ => {
                s.target = None;
                s.period_ticks = None;
            }
        }
    }
    fn set_next_event(&self, delta_ticks: u64) -> Result<(), EventPassed> {
        let mut s = self.inner.lock();
        assert_eq!(s.state, Some(DriverState::Oneshot), "programmed outside one-shot mode");
        assert!(
            (s.min_ticks..=s.max_ticks).contains(&delta_ticks),
            "delta of {delta_ticks} ticks outside {}..={}",
            s.min_ticks,
            s.max_ticks
        );
        if delta_ticks < s.passes_below_ticks {
            s.target = None; // the comparator was written behind the counter: no interrupt
            return Err(EventPassed);
        }
        s.target = Some(s.counter(now()).saturating_add(delta_ticks));
        Ok(())
    }
}

/// Drivers live for the whole fuzzing process and are reset for each input, so the layer's
/// `&'static` references stay reachable (no leak per input).
static POOL: Mutex<Vec<&'static SimDriver>> = Mutex::new(Vec::new());

fn driver(i: usize) -> &'static SimDriver {
    let mut pool = POOL.lock();
    while pool.len() <= i {
        pool.push(Box::leak(Box::new(SimDriver { inner: Mutex::new(SimState::default()) })));
    }
    pool[i]
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// `None`: tickless; else a periodic tick at 1 + hz % 1000 Hz.
    periodic_hz: Option<u16>,
    start_ns: u32,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Register {
        rating: u8,
        /// CPU set over the 4 CPUs; a per-CPU device takes only the lowest CPU of it.
        cpus: u8,
        per_cpu: bool,
        periodic: bool,
        stops_in_deep_idle: bool,
        /// Which CPU of the set takes the interrupt of a device that is not per-CPU.
        irq_cpu: u8,
        frequency: u8,
        frequency_raw: u64,
        min_delta: u16,
        max_delta: u8,
        passes_below_ticks: u8,
    },
    CpuOnline {
        cpu: u8,
    },
    Arm {
        cpu: u8,
        delay_ns: u32,
        /// Past: the deadline is `delay_ns % 1 ms` before now; far: near `u64::MAX`.
        past: bool,
        far: bool,
    },
    Cancel {
        which: u16,
    },
    Advance {
        ns: u32,
    },
    /// Deliver the broadcast IPIs in flight now (otherwise they arrive before the next device
    /// interrupt).
    DeliverIpis,
    /// An interrupt from a device now, whether or not it is due (spurious or early), on the
    /// CPU its interrupt is routed to; or, misrouted to another online CPU, the device's next
    /// real interrupt, which reaches that CPU when the comparator matches (not now).
    Spurious {
        device: u8,
        misrouted_to: Option<u8>,
    },
    TakeOut {
        device: u8,
    },
    /// Make a device report passed comparators for short deltas from now on.
    Flaky {
        device: u8,
        passes_below_ticks: u8,
    },
}

const FREQUENCIES: [u64; 8] =
    [32_768, 1_000_000, 3_579_545, 14_318_180, 19_200_000, 100_000_000, 1_000_000_000, 2_999_999_999];
const MAX_DELTAS: [u64; 7] = [0, 0xffff, 0x7fff_ffff, 0xffff_ffff, 1 << 40, u64::MAX >> 1, u64::MAX];

struct Timer {
    cpu: usize,
    id: TimerId,
    deadline: u64,
    fired: bool,
    cancelled: bool,
}

struct Sim {
    sys: TickSystem<usize>,
    mode: TickMode,
    online: [bool; CPUS],
    /// Per device: the CPU its interrupt reaches.
    irq_cpu: Vec<usize>,
    timers: Vec<Timer>,
    /// Broadcast wake-up IPIs sent and not yet delivered.
    ipis: CpuSet,
    events: u64,
    /// Simulated time the run started at, and the shortest maximum delta of any device: a
    /// device that cannot be programmed further ahead than that must interrupt at least that
    /// often while it waits for a later deadline or tick, which is no storm.
    start_ns: u64,
    shortest_hop_ns: u64,
}

impl Sim {
    fn drivers(&self) -> impl Iterator<Item = (usize, &'static SimDriver)> + '_ {
        (0..self.irq_cpu.len()).map(|i| (i, driver(i)))
    }

    fn register(&mut self, op: &Op) {
        let &Op::Register {
            rating,
            cpus,
            per_cpu,
            periodic,
            stops_in_deep_idle,
            irq_cpu,
            frequency,
            frequency_raw,
            min_delta,
            max_delta,
            passes_below_ticks,
        } = op
        else {
            unreachable!()
        };
        if self.irq_cpu.len() >= MAX_DEVICES {
            return;
        }
        let mut set = CpuSet(u64::from(cpus) & ((1 << CPUS) - 1));
        if set.is_empty() {
            set = CpuSet::single(usize::from(cpus) % CPUS);
        }
        if per_cpu {
            set = CpuSet::single(set.0.trailing_zeros() as usize);
        }
        let members: Vec<usize> = set.iter().collect();
        let irq_cpu = members[usize::from(irq_cpu) % members.len()];
        let hz = match FREQUENCIES.get(usize::from(frequency) % (FREQUENCIES.len() + 1)) {
            Some(&hz) => hz,
            None => 32_768 + frequency_raw % 10_000_000_000,
        };
        // A minimum delta of at most 10 ms, as hardware has (grown further only by the layer).
        let min_ticks = 1 + u64::from(min_delta) % (hz / 100 + 1);
        let max_ticks = MAX_DELTAS[usize::from(max_delta) % MAX_DELTAS.len()].max(min_ticks);
        let mut features = Features::ONESHOT;
        features.set(Features::PER_CPU, per_cpu);
        features.set(Features::PERIODIC, periodic);
        features.set(Features::STOPS_IN_DEEP_IDLE, stops_in_deep_idle);
        let i = self.irq_cpu.len();
        *driver(i).inner.lock() = SimState {
            hz,
            min_ticks,
            max_ticks,
            passes_below_ticks: u64::from(passes_below_ticks) * u64::from(passes_below_ticks > 200),
            ..SimState::default()
        };
        self.irq_cpu.push(irq_cpu);
        let spec = DeviceSpec {
            name: format!("dev{i}"),
            features,
            rating: u32::from(rating),
            cpus: set,
            frequency_hz: hz,
            min_delta_ticks: min_ticks,
            max_delta_ticks: max_ticks,
        };
        let id = self.sys.register(spec, driver(i), now());
        assert_eq!(id, DeviceId(i));
        // The layer's maximum, not the hardware's: it may program less far ahead.
        self.shortest_hop_ns = self.shortest_hop_ns.min(self.sys.device(id).max_delta_ns.max(1));
    }

    fn arm(&mut self, cpu: usize, delay_ns: u32, past: bool, far: bool) {
        let deadline = if far {
            u64::MAX - 1 - u64::from(delay_ns)
        } else if past {
            now().saturating_sub(u64::from(delay_ns % 1_000_000))
        } else {
            now() + u64::from(delay_ns) % MAX_DELAY_NS
        };
        let n = self.timers.len();
        match self.sys.arm(cpu, deadline, n, now()) {
            Ok(id) => self.timers.push(Timer { cpu, id, deadline, fired: false, cancelled: false }),
            Err(_) => assert!(
                !self.online[cpu] || self.sys.service(cpu) == Service::None,
                "arming failed on served CPU {cpu}"
            ),
        }
    }

    fn cancel(&mut self, which: u16) {
        if self.timers.is_empty() {
            return;
        }
        let n = usize::from(which) % self.timers.len();
        let t = &mut self.timers[n];
        match self.sys.cancel(t.cpu, t.id) {
            Some(payload) => {
                assert_eq!(payload, n, "cancel handed out another timer's payload");
                assert!(!t.fired && !t.cancelled, "timer {n} cancelled after it fired or was cancelled");
                t.cancelled = true;
            }
            None => assert!(t.fired || t.cancelled, "pending timer {n} could not be cancelled"),
        }
    }

    fn run_expired(&mut self, cpu: usize, expired: Vec<Expired<usize>>) {
        let now = now();
        for e in expired {
            let t = &mut self.timers[e.payload];
            assert_eq!(t.cpu, cpu, "timer {} armed on CPU {} ran on CPU {cpu}", e.payload, t.cpu);
            assert_eq!((e.id, e.deadline_ns), (t.id, t.deadline), "timer {} handed out wrongly", e.payload);
            assert!(now >= t.deadline, "timer {} ran early: {now} < {}", e.payload, t.deadline);
            assert!(!t.cancelled, "cancelled timer {} ran", e.payload);
            assert!(!t.fired, "timer {} ran twice", e.payload);
            t.fired = true;
        }
    }

    fn deliver_ipis(&mut self) {
        let ipis = core::mem::replace(&mut self.ipis, CpuSet::EMPTY);
        for cpu in ipis.iter() {
            let expired = self.sys.wakeup(cpu, now());
            self.run_expired(cpu, expired);
        }
    }

    fn device_event(&mut self, dev: usize, cpu: usize) {
        self.events += 1;
        let hops = (now() - self.start_ns) / self.shortest_hop_ns.max(1) * (MAX_DEVICES as u64 + 1);
        assert!(self.events <= MAX_EVENTS + hops, "interrupt storm: {} device events", self.events);
        let fired = self.sys.device_event(DeviceId(dev), cpu, now());
        self.run_expired(cpu, fired.expired);
        // Wake-up IPIs (broadcast, or to the owner of a misrouted event's device) arrive later;
        // one still in flight covers a second.
        self.ipis.0 |= fired.wake.0;
    }

    /// The next device interrupt at or before `until`.
    fn next_event(&self, until: u64) -> Option<(u64, usize)> {
        self.drivers()
            .filter_map(|(i, d)| d.inner.lock().fires_at().map(|t| (t, i)))
            .filter(|&(t, _)| t <= until)
            .min()
    }

    fn run_until(&mut self, until: u64) {
        loop {
            if !self.ipis.is_empty() {
                self.deliver_ipis();
            }
            let Some((at, dev)) = self.next_event(until) else { break };
            NOW.store(at.max(now()), Ordering::Relaxed);
            let misrouted_to = {
                let mut sim_device = driver(dev).inner.lock();
                sim_device.consume();
                sim_device.next_interrupt_misrouted_to.take()
            };
            self.device_event(dev, misrouted_to.unwrap_or(self.irq_cpu[dev]));
        }
        NOW.store(until.max(now()), Ordering::Relaxed);
    }

    fn is_local_to(&self, d: DeviceId, cpu: usize) -> bool {
        let dev = self.sys.device(d);
        !dev.failed && dev.spec.features.contains(Features::PER_CPU) && dev.spec.cpus.only() == Some(cpu)
    }

    fn check_invariants(&self) {
        let devices: Vec<_> = self.sys.devices().collect();
        // The selection rule, computed independently.
        let best_local = |cpu: usize| {
            devices.iter().filter(|(d, _)| self.is_local_to(*d, cpu)).map(|(_, dev)| dev.spec.rating).max()
        };
        let mut in_use = vec![false; devices.len()];
        let mut locals = Vec::new();
        for cpu in (0..CPUS).filter(|&c| self.online[c]) {
            match self.sys.service(cpu) {
                Service::Local(d) => {
                    assert!(self.is_local_to(d, cpu), "CPU {cpu} served by {d:?}, not a usable local device");
                    assert_eq!(
                        Some(self.sys.device(d).spec.rating),
                        best_local(cpu),
                        "CPU {cpu}: not the best local"
                    );
                    in_use[d.0] = true;
                    locals.push(d);
                }
                Service::Broadcast(b) => {
                    assert_eq!(best_local(cpu), None, "CPU {cpu} on broadcast despite a local device");
                    assert_eq!(self.sys.broadcast_device(), Some(b), "CPU {cpu} served by a stale broadcast");
                }
                Service::None => {
                    assert_eq!(best_local(cpu), None, "CPU {cpu} unserved despite a local device");
                    assert_eq!(
                        self.sys.broadcast_device(),
                        None,
                        "CPU {cpu} unserved despite a broadcast device"
                    );
                }
            }
        }
        let eligible = |d: DeviceId| {
            let dev = self.sys.device(d);
            !dev.failed
                && !dev.spec.features.intersects(Features::PER_CPU | Features::STOPS_IN_DEEP_IDLE)
                && !locals.contains(&d)
        };
        let best_broadcast =
            devices.iter().filter(|(d, _)| eligible(*d)).map(|(_, dev)| dev.spec.rating).max();
        match self.sys.broadcast_device() {
            Some(b) => {
                assert!(eligible(b), "broadcast device {b:?} is not eligible");
                assert_eq!(
                    Some(self.sys.device(b).spec.rating),
                    best_broadcast,
                    "not the best broadcast device"
                );
                in_use[b.0] = true;
            }
            None => assert_eq!(best_broadcast, None, "an eligible broadcast device is left unused"),
        }
        for (d, dev) in &devices {
            let state = dev.state();
            if in_use[d.0] {
                assert!(
                    matches!(state, State::Oneshot | State::OneshotStopped | State::Periodic),
                    "{d:?} in use but {state}"
                );
            } else {
                assert_eq!(state, State::Detached, "{d:?} unused but {state} (failed: {})", dev.failed);
                assert_eq!(driver(d.0).inner.lock().target, None, "unused {d:?} still armed");
            }
            if state == State::Periodic {
                assert!(
                    matches!(self.mode, TickMode::Periodic { .. })
                        && dev.spec.features.contains(Features::PERIODIC)
                );
            }
        }
        // No event lost: a served CPU with pending timers has an interrupt coming.
        let pending = |c: usize| self.timers.iter().any(|t| t.cpu == c && !t.fired && !t.cancelled);
        for cpu in (0..CPUS).filter(|&c| self.online[c] && pending(c)) {
            let armed = |d: DeviceId| driver(d.0).inner.lock().target.is_some();
            match self.sys.service(cpu) {
                Service::Local(d) => assert!(
                    armed(d) || self.ipis.contains(cpu),
                    "CPU {cpu} has timers but {d:?} is not armed and no IPI is in flight"
                ),
                Service::Broadcast(b) => assert!(
                    armed(b) || self.ipis.contains(cpu),
                    "CPU {cpu} has timers but broadcast {b:?} is not armed and no IPI is in flight"
                ),
                Service::None => {}
            }
        }
    }
}

fn run(input: Input) {
    let mode = match input.periodic_hz {
        Some(hz) => TickMode::Periodic { hz: 1 + u32::from(hz) % 1000 },
        None => TickMode::Oneshot,
    };
    NOW.store(1_000_000 + u64::from(input.start_ns), Ordering::Relaxed);
    let mut sim = Sim {
        sys: TickSystem::new(mode),
        mode,
        online: [false; CPUS],
        irq_cpu: Vec::new(),
        timers: Vec::new(),
        ipis: CpuSet::EMPTY,
        events: 0,
        start_ns: now(),
        shortest_hop_ns: u64::MAX,
    };
    for op in input.ops.iter().take(200) {
        match *op {
            Op::Register { .. } => sim.register(op),
            Op::CpuOnline { cpu } => {
                let cpu = usize::from(cpu) % CPUS;
                sim.sys.cpu_online(cpu, now());
                sim.online[cpu] = true;
            }
            Op::Arm { cpu, delay_ns, past, far } => sim.arm(usize::from(cpu) % CPUS, delay_ns, past, far),
            Op::Cancel { which } => sim.cancel(which),
            Op::Advance { ns } => sim.run_until(now() + u64::from(ns) % MAX_DELAY_NS),
            Op::DeliverIpis => sim.deliver_ipis(),
            Op::Spurious { device, misrouted_to } if !sim.irq_cpu.is_empty() => {
                let dev = usize::from(device) % sim.irq_cpu.len();
                match misrouted_to.map(|c| usize::from(c) % CPUS) {
                    // A misrouted interrupt is the device's real one, delivered to the wrong
                    // CPU: hardware raises it only once the counter reaches the comparator, so
                    // `run_until` delivers it there (and consumes the comparator) at that time,
                    // not now (every comparator already reached was delivered by the last
                    // `run_until`). CPUs never go offline: that CPU will still be online.
                    Some(cpu) if sim.online[cpu] && cpu != sim.irq_cpu[dev] => {
                        driver(dev).inner.lock().next_interrupt_misrouted_to = Some(cpu);
                    }
                    // Spurious: the comparator stays armed.
                    _ => sim.device_event(dev, sim.irq_cpu[dev]),
                }
            }
            Op::TakeOut { device } if !sim.irq_cpu.is_empty() => {
                sim.sys.take_out(DeviceId(usize::from(device) % sim.irq_cpu.len()), "fuzz", now());
            }
            Op::Flaky { device, passes_below_ticks } if !sim.irq_cpu.is_empty() => {
                driver(usize::from(device) % sim.irq_cpu.len()).inner.lock().passes_below_ticks =
                    u64::from(passes_below_ticks);
            }
            _ => {}
        }
        sim.check_invariants();
    }
    // Let time run past every deadline (a periodic tick, a grown minimum delta and a
    // max-delta hop later): every timer still pending on a served CPU must have fired.
    let last = sim.timers.iter().map(|t| t.deadline).filter(|&d| d < u64::MAX / 2).max().unwrap_or(0);
    let period = match mode {
        TickMode::Periodic { hz } => 1_000_000_000 / u64::from(hz),
        TickMode::Oneshot => 0,
    };
    sim.run_until(last.max(now()) + period + 2_000_000_000);
    sim.check_invariants();
    for (n, t) in sim.timers.iter().enumerate() {
        if !t.fired && !t.cancelled && t.deadline < u64::MAX / 2 && sim.sys.service(t.cpu) != Service::None {
            panic!("timer {n} (CPU {}, deadline {}) never fired; now {}", t.cpu, t.deadline, now());
        }
    }
}

fuzz_target!(|input: Input| run(input));
