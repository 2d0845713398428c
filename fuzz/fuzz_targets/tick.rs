//! Fuzzes the time layer as the kernel drives it: the shared `Registry` (selection), one
//! `CpuTick` per CPU (its service, local device and timer queue, touched only by that CPU) and
//! the shared `Broadcast`, driven by an arbitrary sequence of operations (register a device,
//! bring a CPU online, arm one-shot or periodic timers on this CPU or another, cancel them from
//! this CPU, another or a callback, let time pass and deliver the device interrupts and the
//! inter-processor messages that fall due, hold messages back, a spurious or misrouted
//! interrupt, a comparator that starts passing, a measurement that programs a device behind
//! the layer's back, a CPU going into deep idle, a suspend of timekeeping, take a device out,
//! a refinement of per-CPU devices' frequency applied by each device's CPU), on simulated devices and a simulated clock, as the host simulator `kernel/time/src/tick/sim.rs` does.
//!
//! The harness runs the crate's own glue, as the kernel does: the expiry loop
//! (`tick::expiry`), the registry decisions' delivery (`tick::deliver`), and the broadcast's
//! interrupt, wake-ups, deep idle enter/exit and suspend/resume (`tick::glue`, through
//! `FuzzCpu`'s `Platform`); it plays only the platform (what the kernel's
//! `time/clockevents/{cpu,registry,timer}.rs` provide): a
//! registry decision's broadcast change is applied at once by the deciding CPU; each CPU's
//! assignment is a message to that CPU, as are wake-up IPIs. Messages reach each CPU when
//! delivered (a `DeliverIpis` step, or before time moves on, unless an `Advance` holds them
//! back): one sender's in the order sent, different senders' in the order the input picks (a
//! late assignment is stale: `CpuTick::apply` drops it); device failures are reported by the CPU that met them, taken out and their changes
//! applied. A CPU in deep idle (its deadline handed to the broadcast) is woken by whatever
//! interrupt reaches it and leaves deep idle before the interrupt's handler runs (Linux's
//! order) or after it, as its `DeepIdle` step chose; one that runs code of an operation leaves
//! it first. A suspend parks every CPU with its tick suspended, then the broadcast,
//! lets time pass with every device shut down, and resumes them. The simulation says which
//! CPU it runs code on: a per-CPU device driven from another CPU, or any device driven by the
//! registry, fails the run.
//!
//! Timers are armed as the kernel's `Timer` arms them: posted from any CPU (that one included)
//! through the timer CPU's `remote::Handles`, the arm a `TimeMessage` in that CPU's
//! `Inbox<TimeMessage>` (the crate's, FIFO), drained there by the crate's `glue::drain` at
//! once when the CPU posted to itself, else in the handler of the wake-up IPI the post sends
//! (before the wake-up's expiry, as the kernel's `wake_interrupt`); the crate's expiry checks
//! each handle's state before its callback. Delay and reordering as the kernel can see them:
//! the IPI held back while time passes (the owner busy), or lost (the messages wait for a
//! later drain: another post's IPI, a broadcast wake-up, the end of the run), a cancel from
//! any CPU that overtakes its arm still in the inbox, a cancel message lost (as when the inbox
//! is full: the owner finds the timer cancelled at its deadline), different senders' posts and
//! cancels interleaved as the input orders them, and drains while the CPU is still in deep
//! idle (left after the handler). Timers can also be armed directly in their CPU's queue by
//! that CPU (the crate's local path; another CPU's cancel of such an id is refused).
//!
//! A refinement is the kernel's LAPIC timer one (`lapic_refine.rs`): a message to the CPU of
//! each per-CPU device refined, which calls `CpuTick::set_device_frequency` there. It sets the
//! layer's belief to the device's real rate (a calibration error corrected) or to within 1 %
//! of it either way; the simulated counter keeps its real rate, so under a belief too high
//! events come late and under one too low early (the layer must run nothing early and arm
//! again).
//!
//! A simulated device is a counter at its own frequency (`floor(now * hz / 1e9)`) with a
//! comparator: programmed `delta` ticks ahead it interrupts at the first nanosecond the counter
//! reaches it, which may be up to a tick before `now + delta / hz` (the counter's phase is
//! unknown), as on real hardware. It can be made to report a passed comparator for short deltas.
//! A misrouted interrupt is the comparator's own, raised on another CPU when it matches.
//!
//! Checked after every step:
//! - a cancel through a handle, from any CPU, answers at once what the harness's record says:
//!   pending (its arm still in the inbox, or queued) and it never runs; running, only from
//!   its own callback on its CPU; inactive, it ran or was cancelled before; another CPU's
//!   table refuses the handle. A post is refused exactly when its CPU's table (`HANDLES`) or
//!   inbox (`INBOX`) is full, and keeps nothing; each drain arms exactly the posted timers not
//!   cancelled meanwhile and reclaims exactly the cancelled ones not reclaimed yet (dropping
//!   their payloads then), and each table's slots in use are exactly the posted timers whose
//!   payloads the layer still holds;
//! - a timer is handed out only at or after its deadline, on the CPU that armed it, at most once
//!   (a periodic one at most once per point of its grid, `first + k * period`, each the first
//!   point after its previous run), and never after a cancel took effect; a pending timer can be
//!   cancelled, a running one (from its own callback) reports so and is not re-armed;
//! - the driver is programmed only in one-shot mode and within the device's min/max delta, a
//!   per-CPU device only from its own CPU, and no device by the registry;
//! - the registry's decision follows the selection rule (each online CPU: its best-rated
//!   usable local device, else the broadcast device: the best-rated usable device that is
//!   neither per-CPU nor stops in deep idle); the broadcast installed is the one decided; a
//!   CPU with no assignment in flight carries out its decision; the devices in use (a CPU's
//!   local device, the broadcast) are in a running state (shut down for a CPU in deep idle),
//!   the others detached and unarmed; a stopped one-shot device unarmed;
//! - deep idle is entered only when the CPU's device stops there, refused exactly when no
//!   working broadcast device can take the deadline or the tick is hardware periodic, and a
//!   CPU is handed over exactly while it sleeps;
//! - a CPU's queue holds exactly its pending timers; a served CPU with pending timers (any
//!   served CPU, with a periodic tick) has its device, or (on broadcast or in deep idle) the
//!   broadcast device with its deadline, armed, or an assignment or wake-up in flight: no
//!   event is lost in between;
//! - lateness: on a CPU with nothing in flight whose device works, a timer runs (and a pending
//!   one is overdue) no later than `P + min delta + conversion error + 3 ticks` after the latest
//!   of its deadline, its arming, its CPU's last change of device (deep idle and a resume
//!   included) and its device's last programming (`P` the tick period; the conversion error is
//!   what `NsToTicks` documents for deltas up to `MAX_PROGRAMMED_DELTA_NS`); where the layer
//!   believes a device faster than it is (now, or when it last wrote its comparator), that
//!   bound and the delta last programmed (at most the device's maximum) stretch by
//!   `believed / real` rate;
//! - after a frequency change, the device's comparator, if armed, was written at the new
//!   factor (no event waits on the old one);
//!
//! and at the end, once everything is delivered and time has run on: every periodic timer of a
//! served CPU kept running (none overdue), and after a periodic tick, a grown minimum delta and
//! a max-delta hop more, every one-shot timer that was neither cancelled nor left on a CPU that
//! no device serves has fired, and every posted timer cancelled after it was queued (its cancel
//! message lost) gave its slot back at its deadline; once the rest is cancelled, every payload
//! is dropped and every slot free, but those of such timers whose deadline is far off or whose
//! CPU no device serves.
#![no_main]

use kernel_time::broadcast::Broadcast;
use kernel_time::clockevents::{
    ClockEventDevice, CpuSet, DeviceSpec, DriverState, EventDriver, EventPassed, Features,
    MAX_PROGRAMMED_DELTA_NS, State,
};
use kernel_time::hrtimer::{Cancel, Expired, TimerId, forward};
use kernel_time::inbox::{Inbox, TimeMessage};
use kernel_time::remote::{Cancelled, Drained, Handles};
use kernel_time::tick::deliver::{self, DeliveryContext};
use kernel_time::tick::expiry::{Expiry, ExpiryContext, Hang};
use kernel_time::tick::glue::{self, Platform};
use kernel_time::tick::{
    ArmError, Assignment, Changes, CpuTick, DeepIdleRefused, DeviceFailure, DeviceId, Handover, Refused,
    Registry, Service, TickMode,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use spin::Mutex;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

const NS_PER_S: u128 = 1_000_000_000;
const CPUS: usize = 4;
const MAX_DEVICES: usize = 10;
/// Timers one input may create (callbacks arm more).
const MAX_TIMERS: usize = 400;
/// Device events one input may cause before the run counts as an interrupt storm (besides
/// the max-delta hops and one per timer run).
const MAX_EVENTS: u64 = 200_000;
/// Deadlines are armed at most this far ahead (2^27 ns, 134 ms), except "far" ones.
const MAX_DELAY_NS: u64 = 1 << 27;
/// The shortest period of a periodic timer: 1 ms keeps a run's timer callbacks countable.
const MIN_PERIOD_NS: u64 = 1_000_000;
/// "Running on no CPU": the registry deciding, which must drive no device.
const NO_CPU: usize = usize::MAX;
/// Each CPU's table of handles and its inbox of `TimeMessage`s (the kernel's per-CPU ones,
/// small: a full table and a full inbox are answers the harness checks too).
const HANDLES: usize = 6;
const INBOX: usize = 4;

/// The simulated clock, shared with the drivers (which the layer holds as `&'static`).
static NOW: AtomicU64 = AtomicU64::new(0);
/// The timers whose payloads were dropped since the harness last looked (a payload is
/// dropped exactly once: when its timer is done, refused, or its slot reclaimed).
static DROPPED: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// The CPU the simulation is running code on.
static RUNNING_ON: AtomicUsize = AtomicUsize::new(NO_CPU);
/// A measurement programs a device itself (in one-shot or stopped mode, 1 ms ahead, whatever
/// its minimum): the layer's programming rules do not apply to it.
static MEASURING: AtomicBool = AtomicBool::new(false);

fn now() -> u64 {
    NOW.load(Ordering::Relaxed)
}

fn run_on(cpu: usize) {
    RUNNING_ON.store(cpu, Ordering::Relaxed);
}

/// A simulated clock event device.
struct SimDriver {
    inner: Mutex<SimState>,
}

#[derive(Default)]
struct SimState {
    /// The counter's real rate: what the hardware does, whatever the layer believes.
    hz: u64,
    /// The rate the layer's conversion assumes (the spec's, then each refinement's), and the
    /// one it assumed when it last wrote the comparator: the harness keeps these in step with
    /// the layer, to bound how late a wrong belief makes an event.
    belief_hz: u64,
    programmed_belief_hz: u64,
    min_ticks: u64,
    max_ticks: u64,
    /// The CPU a per-CPU device belongs to: driven from there only.
    owner: Option<usize>,
    /// Deltas below this many ticks report a passed comparator (and leave nothing armed).
    passes_below_ticks: u64,
    state: Option<DriverState>,
    /// Counter value the comparator waits for.
    target: Option<u64>,
    period_ticks: Option<u64>,
    /// When the comparator was last written (an event programmed, periodic mode entered).
    programmed_at: u64,
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
    fn check_cpu(&self) {
        let here = RUNNING_ON.load(Ordering::Relaxed);
        assert_ne!(here, NO_CPU, "a device driven by the registry, outside any CPU");
        if let Some(owner) = self.owner {
            assert_eq!(here, owner, "per-CPU device of CPU {owner} driven from CPU {here}");
        }
    }
}

impl EventDriver for SimDriver {
    fn switch_state(&self, state: DriverState) {
        let mut s = self.inner.lock();
        s.check_cpu();
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
                s.programmed_at = now();
                s.programmed_belief_hz = s.belief_hz;
            }
            _ => {
                s.target = None;
                s.period_ticks = None;
            }
        }
    }
    fn set_next_event(&self, delta_ticks: u64) -> Result<(), EventPassed> {
        let mut s = self.inner.lock();
        s.check_cpu();
        if !MEASURING.load(Ordering::Relaxed) {
            assert_eq!(s.state, Some(DriverState::Oneshot), "programmed outside one-shot mode");
            assert!(
                (s.min_ticks..=s.max_ticks).contains(&delta_ticks),
                "delta of {delta_ticks} ticks outside {}..={}",
                s.min_ticks,
                s.max_ticks
            );
        }
        if delta_ticks < s.passes_below_ticks {
            s.target = None; // the comparator was written behind the counter: no interrupt
            return Err(EventPassed);
        }
        s.target = Some(s.counter(now()).saturating_add(delta_ticks));
        s.programmed_at = now();
        s.programmed_belief_hz = s.belief_hz;
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

/// What a timer's callback does, on its `at_run % 4 + 1`th run.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Callback {
    at_run: u8,
    act: Act,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Act {
    /// Cancels its own timer (running: a periodic one is not re-armed).
    CancelSelf,
    /// Cancels timer `which & 0x7fff`: through its handle from here (its cancel message
    /// lost if `which & 0x8000`), else directly if it is on this CPU (refused if not).
    Cancel { which: u16 },
    /// Arms a timer on CPU `cpu % 4`: directly if that is this one and `cpu & 4` (during the
    /// expiry), else posted through that CPU's handles (its wake-up IPI lost if `cpu & 8`).
    Arm { cpu: u8, delay_ns: u32, period_ns: Option<u32> },
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
        /// Which CPU of the set takes the interrupt of a device that is not per-CPU (and runs
        /// the registration).
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
        /// Posted through `cpu`'s handles from CPU `from % 4` (that one, or any other), its
        /// wake-up IPI lost if `from & 4` (the messages wait for a later drain); `None`: armed
        /// directly on `cpu`, by `cpu` itself.
        from: Option<u8>,
        /// Periodic: every `1 ms + period_ns % 134 ms`.
        period_ns: Option<u32>,
        callback: Option<Callback>,
    },
    Cancel {
        which: u16,
        /// Asked from CPU `from % 4` (`None`: the timer's own): through the timer's handle from
        /// anywhere, its cancel message lost if `from & 4` (the owner then finds it cancelled
        /// at its deadline) and its wake-up IPI if `from & 8`; a timer armed directly only from
        /// its own CPU (another's cancel is refused, and touches nothing).
        from: Option<u8>,
    },
    /// Time passes; the device interrupts that fall due are delivered, and the messages in
    /// flight before each (unless held: then they stay in flight meanwhile).
    Advance {
        ns: u32,
        hold_ipis: bool,
    },
    /// Deliver the messages and wake-ups in flight to one CPU (or all), now. `cpu / 4`
    /// above 0 delivers one thing only: the wake-up if `wake_first`, else the `cpu / 4 - 1`th
    /// (cyclically) of the messages that may arrive next (each sender's oldest): messages of
    /// different senders overtake each other, held back as long as the input likes.
    DeliverIpis {
        cpu: Option<u8>,
        wake_first: bool,
    },
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
    /// The kernel's programming-cost measurement on a CPU: its device (local or broadcast)
    /// programmed 1 ms ahead behind the layer's back, then resynchronised.
    Measure {
        cpu: u8,
    },
    /// A CPU (`cpu % 4`) goes into deep idle (its device, if it stops there, handed over to
    /// the broadcast) until an interrupt reaches it; it leaves deep idle before that
    /// interrupt's handler runs if `cpu & 4` (Linux's order), else after it.
    DeepIdle {
        cpu: u8,
    },
    /// Timekeeping suspended for `ns % 134 ms` (every device shut down), then resumed.
    Suspend {
        ns: u32,
    },
    /// A refinement of per-CPU devices' frequency, as the kernel's LAPIC timer refinement: one
    /// (`device`, among the per-CPU ones) or all of them, each set by a message to its CPU.
    /// The layer's belief becomes the device's real rate (`error_ppm: None`, a calibration
    /// error corrected), or wrong by `error_ppm % 10001` ppm (within 1 %, either way); the
    /// counter keeps its real rate, so a belief too high makes events late, too low early.
    Refine {
        device: Option<u8>,
        error_ppm: Option<i16>,
    },
}

const FREQUENCIES: [u64; 8] =
    [32_768, 1_000_000, 3_579_545, 14_318_180, 19_200_000, 100_000_000, 1_000_000_000, 2_999_999_999];
const MAX_DELTAS: [u64; 7] = [0, 0xffff, 0x7fff_ffff, 0xffff_ffff, 1 << 40, u64::MAX >> 1, u64::MAX];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Posted through its CPU's handles: its arm waits in its CPU's inbox.
    InFlight,
    /// Its CPU had no device: never armed.
    NotArmed,
    Pending,
    /// Its callback is running.
    Running,
    /// A one-shot timer that ran.
    Done,
    Cancelled,
}

struct Timer {
    cpu: usize,
    /// Its queue's id, if armed directly.
    id: Option<TimerId>,
    /// Its handle, if posted through its CPU's handles.
    handle: Option<TimerId>,
    /// A posted timer whose arm its CPU drained while it was not cancelled: it sits in the
    /// queue until it runs, its cancel message is drained, or it is found cancelled there.
    queued: bool,
    /// Its payload exists (from the arm until the layer drops it).
    alive: bool,
    phase: Phase,
    /// The deadline it waits for (a periodic timer: the current point of its grid).
    deadline: u64,
    /// 0: one-shot.
    period: u64,
    /// When its CPU queued it for `deadline`.
    armed_at: u64,
    runs: u32,
    /// Cancelled from its own callback.
    cancelled_running: bool,
    callback: Option<Callback>,
}

/// What the queued timers carry, as the kernel's payload does: who it is, its period, and
/// its handle if it was posted through one. Its drop is recorded (`DROPPED`).
#[derive(Debug)]
struct Payload {
    n: usize,
    period: u64,
    handle: Option<TimerId>,
}

impl Drop for Payload {
    fn drop(&mut self) {
        DROPPED.lock().push(self.n);
    }
}

/// A message the harness put in a CPU's `Inbox<TimeMessage>` (its record of what the inbox
/// holds, in order: the inbox is FIFO).
#[derive(Debug, Clone, Copy)]
enum Posted {
    Arm(usize),
    Cancel(usize),
}

/// Each CPU's handles and inbox: any CPU posts and cancels through them; the crate's
/// `glue::drain` and expiry (as the owner) read them through `FuzzCpu`.
struct Remote {
    handles: Vec<Handles<Payload>>,
    inboxes: Vec<Inbox<TimeMessage>>,
}

/// How a timer is armed: directly in its CPU's queue by that CPU, or posted through its CPU's
/// handles from any CPU (the kernel's `Timer`), its wake-up IPI lost or not.
#[derive(Debug, Clone, Copy)]
enum Via {
    Direct,
    Posted { lose_wake: bool },
}

/// A message in flight: when it was sent, by which CPU, and what it asks.
struct Sent {
    at: u64,
    from: usize,
    msg: Msg,
}

/// A message to a CPU (the kernel's function-call IPI, or its inbox): one sender's messages
/// to a CPU arrive in the order sent; different senders' in any order (`DeliverIpis` picks).
enum Msg {
    Assign(Assignment),
    /// The device's conversion at this frequency (the kernel's `lapic_refine::apply_here`).
    Frequency {
        device: usize,
        hz: u64,
    },
}

struct Sim {
    registry: Registry,
    bc: Mutex<Broadcast>,
    /// Each CPU's tick, from when it comes online.
    cpus: Vec<Option<CpuTick<Payload>>>,
    mode: TickMode,
    /// Per device: the CPU its interrupt reaches.
    irq_cpu: Vec<usize>,
    timers: Vec<Timer>,
    /// Per CPU: the messages in flight to it, with when they were sent and by which CPU.
    inbox: Vec<VecDeque<Sent>>,
    /// Each CPU's handles and `TimeMessage` inbox, and what the harness knows the inbox holds.
    remote: Arc<Remote>,
    posted: Vec<VecDeque<Posted>>,
    /// Per CPU: a wake-up IPI in flight since then (several coalesce).
    wake: [Option<u64>; CPUS],
    /// Per CPU: asleep in deep idle, its deadline handed to the broadcast.
    asleep: [bool; CPUS],
    /// Per CPU asleep: whether it leaves deep idle before the handler of the interrupt that
    /// woke it runs (Linux's order), or after (chosen by its `DeepIdle` step).
    exit_first: [bool; CPUS],
    /// Per CPU: when its device last changed (an assignment carried out, a new broadcast
    /// device for a CPU on broadcast) or a message held back reached it.
    disturbed_at: [u64; CPUS],
    events: u64,
    runs: u64,
    /// Simulated time the run started at, and the shortest maximum delta of any device: a
    /// device that cannot be programmed further ahead than that must interrupt at least that
    /// often while it waits for a later deadline or tick, which is no storm.
    start_ns: u64,
    shortest_hop_ns: u64,
}

/// How late a device may deliver an event it was programmed for, beyond its deadline or the
/// programming: the minimum delta (a deadline already past or too close, an event a tick early
/// and programmed again), the conversion's documented error for the longest delta programmed
/// (`ns >> shift` ticks: exact below 2^32 ns at shift 32, else within the
/// `MAX_PROGRAMMED_DELTA_NS / 2^63` relative error its shift is chosen for, doubled here), and
/// the counter's unknown phase and rounding (a tick each, one spare), in ns as the layer
/// counts them; a tick is of the slowest of `tick_hz` (the real rate, the layer's beliefs).
fn slack(dev: &ClockEventDevice, tick_hz: u64) -> u64 {
    let hz = u128::from(tick_hz.max(1));
    let tick = u64::try_from(NS_PER_S.div_ceil(hz)).unwrap_or(u64::MAX);
    let longest = dev.max_delta_ns.min(MAX_PROGRAMMED_DELTA_NS);
    let relative = u64::try_from((u128::from(longest) * u128::from(MAX_PROGRAMMED_DELTA_NS)) >> 62).unwrap();
    let coarse = (longest >> 32).saturating_mul(tick);
    dev.min_delta_ns()
        .saturating_add(relative.max(coarse))
        .saturating_add(tick.saturating_mul(3))
        .saturating_add(2)
}

/// CPU `here` of the harness carrying out the registry's decisions by the crate's `deliver`.
struct FuzzDelivery<'a> {
    sim: &'a mut Sim,
    here: usize,
}

impl DeliveryContext for FuzzDelivery<'_> {
    fn now_ns(&self) -> u64 {
        now()
    }
    fn with_broadcast<R>(&mut self, f: impl FnOnce(&mut Broadcast) -> R) -> R {
        run_on(self.here);
        let r = f(&mut self.sim.bc.lock());
        // A new broadcast device (or none) disturbs every CPU it serves.
        for c in 0..CPUS {
            if self.sim.cpus[c].as_ref().is_some_and(|t| matches!(t.service(), Service::Broadcast(_))) {
                self.sim.disturbed_at[c] = now();
            }
        }
        r
    }
    fn wake(&mut self, cpu: usize) {
        self.sim.send_wake(cpu);
    }
    fn assign(&mut self, a: Assignment) -> Option<DeviceFailure> {
        self.sim.send(a.cpu, self.here, Msg::Assign(a));
        None
    }
    fn take_out(&mut self, device: DeviceId, reason: &str) -> Changes {
        let changes = self.sim.decide(|r| r.take_out(device, reason));
        run_on(self.here);
        changes
    }
}

/// CPU `cpu` of the harness as the crate's expiry loop (the kernel's own) sees it: its tick
/// behind a `RefCell` (re-entering it under the guard panics, as the kernel's guard does), the
/// simulated clock, and a timer's run with every check of the oracle.
struct FuzzCpu<'a> {
    sim: RefCell<&'a mut Sim>,
    cpu: usize,
    remote: &'a Remote,
}

impl ExpiryContext for FuzzCpu<'_> {
    type Payload = Payload;
    fn with_tick<R>(&self, f: impl FnOnce(&mut CpuTick<Payload>, &Mutex<Broadcast>) -> R) -> Option<R> {
        let mut sim = self.sim.try_borrow_mut().expect("a CPU's tick re-entered while its guard is held");
        run_on(self.cpu);
        let sim = &mut **sim;
        let tick = sim.cpus[self.cpu].as_mut()?;
        Some(f(tick, &sim.bc))
    }
    fn now_ns(&self) -> u64 {
        now()
    }
    fn run(&self, timer: Expired<Payload>, now_ns: u64) -> Option<(u64, Payload)> {
        self.sim.borrow_mut().run_timer(self.cpu, timer, now_ns)
    }
    fn handle_of(&self, payload: &Payload) -> Option<TimerId> {
        payload.handle
    }
    fn handles(&self) -> Option<&Handles<Payload>> {
        Some(&self.remote.handles[self.cpu])
    }
}

/// The same CPU as the crate's glue sees it: the broadcast, wake-up IPIs (messages to their
/// CPU), and a failed device taken out by the registry at once, its changes applied.
impl Platform for FuzzCpu<'_> {
    fn cpu(&self) -> usize {
        self.cpu
    }
    fn inbox(&self) -> Option<&Inbox<TimeMessage>> {
        Some(&self.remote.inboxes[self.cpu])
    }
    fn with_broadcast<R>(&self, f: impl FnOnce(&mut Broadcast) -> R) -> R {
        run_on(self.cpu);
        let sim = self.sim.borrow();
        f(&mut sim.bc.lock())
    }
    fn is_broadcast_device(&self, device: DeviceId) -> bool {
        self.sim.borrow().bc.lock().device() == Some(device)
    }
    fn send_wakeup(&self, cpu: usize) {
        self.sim.borrow_mut().send_wake(cpu);
    }
    fn wake_owner_of(&self, device: DeviceId) {
        let mut sim = self.sim.borrow_mut();
        if let Some(owner) = sim.registry.owner_of(device) {
            sim.send_wake(owner);
        }
    }
    fn take_out(&self, failure: DeviceFailure) {
        let mut sim = self.sim.borrow_mut();
        let changes = sim.decide(|r| r.take_out(failure.device, &format!("{}", failure.error)));
        sim.apply(changes, self.cpu);
    }
    fn hang(&self, e: &Expiry, _hang: Hang) {
        panic!("CPU {}: an expiry could not catch up ({e:?})", self.cpu);
    }
}

impl Sim {
    fn drivers(&self) -> impl Iterator<Item = (usize, &'static SimDriver)> + '_ {
        (0..self.irq_cpu.len()).map(|i| (i, driver(i)))
    }

    fn tick(&mut self, cpu: usize) -> &mut CpuTick<Payload> {
        self.cpus[cpu].as_mut().expect("an online CPU has its tick")
    }

    fn assignment_in_flight(&self, cpu: usize) -> bool {
        self.inbox[cpu].iter().any(|s| matches!(s.msg, Msg::Assign(_)))
    }

    fn all_delivered(&self) -> bool {
        self.inbox.iter().all(|q| q.is_empty()) && self.wake.iter().all(|w| w.is_none())
    }

    /// The registry decides, on no CPU: it must program nothing.
    fn decide<R>(&mut self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let here = RUNNING_ON.swap(NO_CPU, Ordering::Relaxed);
        let r = f(&mut self.registry);
        run_on(here);
        r
    }

    /// Carries out a decision by the crate's `deliver` (the kernel's own), on CPU `here`: the
    /// broadcast change at once (a broadcast device that fails meanwhile is taken out and the
    /// selection runs again), each assignment as a message to its CPU.
    fn apply(&mut self, changes: Changes, here: usize) {
        deliver::deliver(&mut FuzzDelivery { sim: self, here }, changes);
    }

    /// After code ran on CPU `here`: a device that gave up programming (its local device, or
    /// the broadcast device it handed a deadline to) is reported, taken out, and the changes
    /// applied.
    fn settle(&mut self, here: usize) {
        loop {
            let mut failed = Vec::new();
            if let Some(f) = self.cpus[here].as_mut().and_then(|t| t.take_failure()) {
                failed.push((f.device, format!("{}", f.error)));
            }
            if let Some((d, e)) = self.bc.lock().take_failure() {
                failed.push((d, format!("{e}")));
            }
            if failed.is_empty() {
                return;
            }
            for (d, why) in failed {
                let changes = self.decide(|r| r.take_out(d, &why));
                self.apply(changes, here);
            }
        }
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
        let mut set = CpuSet::from_bits(u64::from(cpus) & ((1 << CPUS) - 1));
        if set.is_empty() {
            set = CpuSet::single(usize::from(cpus) % CPUS);
        }
        if per_cpu {
            set = CpuSet::single(set.first_cpu().expect("not empty"));
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
            belief_hz: hz,
            programmed_belief_hz: hz,
            owner: per_cpu.then_some(irq_cpu),
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
        self.awake(irq_cpu);
        let (id, changes) = self.decide(|r| r.register(spec, driver(i)));
        assert_eq!(id, DeviceId(i));
        // The layer's maximum, not the hardware's: it may program less far ahead.
        self.shortest_hop_ns = self.shortest_hop_ns.min(self.registry.device(id).max_delta_ns.max(1));
        self.apply(changes, irq_cpu);
    }

    fn cpu_online(&mut self, cpu: usize) {
        self.awake(cpu);
        run_on(cpu);
        if self.cpus[cpu].is_none() {
            let mut tick = CpuTick::new(cpu, self.mode, now(), 8);
            tick.reserve_for_handles(HANDLES);
            self.cpus[cpu] = Some(tick);
        }
        let changes = self.decide(|r| r.cpu_online(cpu));
        self.apply(changes, cpu);
    }

    /// A new timer on `cpu`, asked from CPU `from`: armed there directly (`from` is `cpu`), or
    /// posted through `cpu`'s handles.
    fn new_timer(
        &mut self,
        cpu: usize,
        from: usize,
        deadline: u64,
        period: u64,
        callback: Option<Callback>,
        via: Via,
    ) {
        if self.timers.len() >= MAX_TIMERS {
            return;
        }
        let n = self.timers.len();
        self.timers.push(Timer {
            cpu,
            id: None,
            handle: None,
            queued: false,
            alive: false,
            phase: Phase::NotArmed,
            deadline,
            period,
            armed_at: now(),
            runs: 0,
            cancelled_running: false,
            callback,
        });
        match via {
            Via::Direct => {
                assert_eq!(from, cpu, "a timer is armed directly only by its own CPU");
                self.arm_here(n);
            }
            Via::Posted { lose_wake } => self.post(n, from, lose_wake),
        }
    }

    /// Posts timer `n` through its CPU's handles from CPU `from` (any, that one included), as
    /// the kernel's `Timer` does: the handle at once, the arm a message in that CPU's inbox,
    /// drained now if `from` is that CPU, else when the wake-up IPI arrives; or, if
    /// `lose_wake`, whenever a later drain there picks it up. Refusals checked against the
    /// harness's record: a full table exactly when every handle is in use, a full inbox
    /// exactly when it holds `INBOX` messages; either keeps no slot.
    fn post(&mut self, n: usize, from: usize, lose_wake: bool) {
        let cpu = self.timers[n].cpu;
        if self.cpus[cpu].is_none() {
            return; // the kernel's `CpuNotOnline`: never armed
        }
        let remote = self.remote.clone();
        let (in_use, in_inbox) = (remote.handles[cpu].in_use(), self.posted[cpu].len());
        let (deadline, period) = (self.timers[n].deadline, self.timers[n].period);
        self.timers[n].alive = true;
        run_on(from);
        let posted = remote.handles[cpu].post(&remote.inboxes[cpu], deadline, |h| Payload {
            n,
            period,
            handle: Some(h),
        });
        match posted {
            Ok(id) => {
                assert!(
                    in_use < HANDLES && in_inbox < INBOX,
                    "posted with {in_use} handles in use, {in_inbox} in the inbox"
                );
                assert_eq!(id.cpu(), cpu, "a handle names its CPU");
                assert!(Handles::<Payload>::is_handle(id), "a handle that is none");
                assert!(
                    self.timers.iter().all(|t| t.handle != Some(id) || !t.alive),
                    "handle {id:?} of a live timer given out again"
                );
                let t = &mut self.timers[n];
                (t.handle, t.phase, t.armed_at) = (Some(id), Phase::InFlight, now());
                self.posted[cpu].push_back(Posted::Arm(n));
                self.deliver_posted(cpu, from, lose_wake);
            }
            Err(refused) => {
                assert_eq!(refused.payload.n, n, "another timer's payload handed back");
                match refused.error {
                    ArmError::HandlesFull { cpu: c, capacity } => {
                        assert_eq!(
                            (c, capacity, in_use),
                            (cpu, HANDLES, HANDLES),
                            "table full with {in_use} in use"
                        )
                    }
                    ArmError::InboxFull { cpu: c } => {
                        assert_eq!((c, in_inbox), (cpu, INBOX), "inbox full with {in_inbox} messages in it");
                        assert!(in_use < HANDLES, "a full table answered inbox full");
                    }
                    e => panic!("a post to CPU {cpu} refused: {e}"),
                }
                drop(refused);
                assert_eq!(remote.handles[cpu].in_use(), in_use, "a refused post kept its slot");
                self.collect_drops();
            }
        }
    }

    /// After a message to `cpu`'s inbox from CPU `from`: `cpu` drains it now if it sent it
    /// (the kernel's `drain_inbox`), else it is woken by an IPI; unless that IPI is lost (or
    /// the drain put off: the CPU busy), and a later drain picks the message up.
    fn deliver_posted(&mut self, cpu: usize, from: usize, lose_wake: bool) {
        if lose_wake {
            return;
        }
        if from == cpu {
            self.drain(cpu);
        } else {
            self.send_wake(cpu);
        }
    }

    /// CPU `cpu` drains its inbox by the crate's `glue::drain`, as the kernel's wake-up IPI
    /// does (a device failure it meets taken out through `Platform::take_out`; no `settle`),
    /// checked against the harness's record of what the inbox holds, in order: each arm of a
    /// timer not cancelled meanwhile is queued; each cancelled timer's slot is reclaimed by
    /// whichever of its arm and its cancel message comes first (unless its CPU found it
    /// cancelled at its deadline already), its payload dropped then and there; nothing else.
    fn drain(&mut self, cpu: usize) {
        if self.cpus[cpu].is_none() {
            return;
        }
        self.collect_drops();
        let mut expected = Drained::default();
        let mut reclaimed = Vec::new();
        let posted: Vec<Posted> = self.posted[cpu].drain(..).collect();
        for p in posted {
            let (Posted::Arm(n) | Posted::Cancel(n)) = p;
            let t = &mut self.timers[n];
            match (p, t.phase) {
                (Posted::Arm(_), Phase::InFlight) => {
                    (t.phase, t.queued, t.armed_at) = (Phase::Pending, true, now());
                    expected.armed += 1;
                }
                (_, Phase::Cancelled) if t.alive && !reclaimed.contains(&n) => {
                    expected.reclaimed += 1;
                    reclaimed.push(n);
                }
                _ => {}
            }
        }
        let drained = self.on_cpu(cpu, |cx| glue::drain(cx));
        let mut drained = drained.expect("no drain inside a drain here");
        // A device that gave up on an arm's deadline was taken out by the glue's drain
        // (`Platform::take_out`), as on the kernel.
        drained.failure = None;
        assert_eq!(drained, expected, "CPU {cpu}'s drain");
        let mut dropped = self.collect_drops();
        dropped.sort_unstable();
        reclaimed.sort_unstable();
        assert_eq!(dropped, reclaimed, "CPU {cpu}'s drain dropped these payloads, not those reclaimed");
    }

    /// The timers whose payloads the layer dropped since the last look (each at most once).
    fn collect_drops(&mut self) -> Vec<usize> {
        let dropped: Vec<usize> = DROPPED.lock().drain(..).collect();
        for &n in &dropped {
            assert!(self.timers[n].alive, "timer {n}'s payload dropped twice, or never made");
            self.timers[n].alive = false;
        }
        dropped
    }

    /// How many timers `cpu`'s queue holds: its pending ones, and posted ones cancelled after
    /// they were queued whose slots are not reclaimed yet (at their deadline, or by their
    /// cancel message).
    fn queued(&self, cpu: usize) -> usize {
        self.timers
            .iter()
            .filter(|t| t.cpu == cpu)
            .filter(|t| t.phase == Phase::Pending || (t.phase == Phase::Cancelled && t.queued && t.alive))
            .count()
    }

    /// Arms timer `n` on its own CPU (perhaps from a callback there, during an expiry).
    fn arm_here(&mut self, n: usize) {
        let cpu = self.timers[n].cpu;
        run_on(cpu);
        let (deadline, period) = (self.timers[n].deadline, self.timers[n].period);
        let Some(tick) = self.cpus[cpu].as_mut() else {
            self.timers[n].phase = Phase::NotArmed; // the kernel's `NoTickDevice`
            return;
        };
        let service = tick.service();
        self.timers[n].alive = true;
        match tick.arm(deadline, Payload { n, period, handle: None }, now(), &self.bc) {
            Ok(id) => {
                let t = &mut self.timers[n];
                (t.id, t.phase, t.armed_at) = (Some(id), Phase::Pending, now());
            }
            Err(Refused { error: ArmError::QueueFull { .. }, .. }) => {
                // Armed from a callback with the queue full: refused, not grown (the
                // interrupt path allocates nothing).
                self.timers[n].phase = Phase::NotArmed;
            }
            Err(e) => {
                assert_eq!(
                    service,
                    Service::None,
                    "arming failed on CPU {cpu}, served by {service:?}: {e:?}"
                );
                self.timers[n].phase = Phase::NotArmed;
            }
        }
        self.settle(cpu);
    }

    fn arm(&mut self, op: &Op) {
        let &Op::Arm { cpu, delay_ns, past, far, from, period_ns, callback } = op else { unreachable!() };
        let cpu = usize::from(cpu) % CPUS;
        let deadline = if far {
            u64::MAX - 1 - u64::from(delay_ns)
        } else if past {
            now().saturating_sub(u64::from(delay_ns % 1_000_000))
        } else {
            now() + u64::from(delay_ns) % MAX_DELAY_NS
        };
        let period = period_ns.map_or(0, |p| MIN_PERIOD_NS + u64::from(p) % MAX_DELAY_NS);
        let via = from.map_or(Via::Direct, |f| Via::Posted { lose_wake: f & 4 != 0 });
        let from = from.map_or(cpu, |f| usize::from(f) % CPUS);
        self.awake(from);
        self.new_timer(cpu, from, deadline, period, callback, via);
    }

    /// Cancels timer `n` on its own CPU (perhaps from a callback there).
    fn cancel_here(&mut self, n: usize) {
        let Some(id) = self.timers[n].id else { return }; // never armed: nothing to cancel
        let cpu = self.timers[n].cpu;
        run_on(cpu);
        let got = self.tick(cpu).cancel(id).expect("a timer is cancelled on its own CPU");
        let t = &mut self.timers[n];
        match got {
            Cancel::Cancelled(p) => {
                assert_eq!((p.n, p.period), (n, t.period), "cancel handed out another timer's payload");
                assert_eq!(t.phase, Phase::Pending, "timer {n} cancelled while {:?}", t.phase);
                t.phase = Phase::Cancelled;
            }
            Cancel::Running => {
                assert_eq!(t.phase, Phase::Running, "timer {n} reported running while {:?}", t.phase);
                t.cancelled_running = true;
            }
            Cancel::Inactive => assert!(
                matches!(t.phase, Phase::Done | Phase::Cancelled),
                "timer {n} could not be cancelled while {:?}",
                t.phase
            ),
        }
    }

    /// Cancels timer `n`, asked from CPU `from`: through its handle from anywhere; armed
    /// directly, on its own CPU; from another, refused (its id names its CPU) and nothing
    /// touched.
    fn cancel_from(&mut self, n: usize, from: usize, lose_message: bool, lose_wake: bool) {
        let cpu = self.timers[n].cpu;
        if self.timers[n].handle.is_some() {
            self.cancel_handle(n, from, lose_message, lose_wake);
        } else if from == cpu {
            self.cancel_here(n);
        } else if let Some(id) = self.timers[n].id {
            run_on(from);
            assert!(self.remote.handles[cpu].cancel(id).is_err(), "CPU {cpu}'s queue id taken for a handle");
            if let Some(tick) = self.cpus[from].as_mut() {
                assert!(tick.cancel(id).is_err(), "CPU {cpu}'s id cancelled on CPU {from}");
            }
        }
    }

    /// Cancels posted timer `n` through its handle from CPU `from` (any): the answer comes at
    /// once and is checked against the harness's record: pending (its arm still in the inbox,
    /// or queued) means it never runs; running, that its callback runs on its CPU now;
    /// inactive, that it ran or was cancelled before. A pending one's cancel message goes to
    /// its CPU (unless `lose_message`: then its CPU finds it cancelled at its deadline), which
    /// is woken (unless `lose_wake`). Another CPU's table refuses the handle.
    fn cancel_handle(&mut self, n: usize, from: usize, lose_message: bool, lose_wake: bool) {
        let Some(id) = self.timers[n].handle else { return };
        let cpu = self.timers[n].cpu;
        run_on(from);
        let remote = self.remote.clone();
        let other = (cpu + 1) % CPUS;
        assert!(
            remote.handles[other].cancel(id).is_err(),
            "CPU {cpu}'s handle cancelled in CPU {other}'s table"
        );
        let answer = remote.handles[cpu].cancel(id).expect("a handle of its CPU");
        let t = &mut self.timers[n];
        match answer {
            Cancelled::Pending => {
                assert!(
                    matches!(t.phase, Phase::InFlight | Phase::Pending),
                    "timer {n} answered pending while {:?}",
                    t.phase
                );
                t.phase = Phase::Cancelled;
                if !lose_message {
                    match remote.inboxes[cpu].try_send(Handles::<Payload>::cancel_message(id)) {
                        Ok(()) => {
                            self.posted[cpu].push_back(Posted::Cancel(n));
                            self.deliver_posted(cpu, from, lose_wake);
                        }
                        Err(_) => assert_eq!(
                            self.posted[cpu].len(),
                            INBOX,
                            "a cancel refused by an inbox with room"
                        ),
                    }
                }
            }
            Cancelled::Running => {
                assert_eq!(t.phase, Phase::Running, "timer {n} answered running while {:?}", t.phase);
                // Here only its own callback runs while it does.
                assert_eq!(from, cpu, "timer {n} of CPU {cpu} answered running to CPU {from}");
                t.cancelled_running = true;
            }
            Cancelled::Inactive => assert!(
                matches!(t.phase, Phase::Done | Phase::Cancelled),
                "timer {n} answered inactive while {:?}",
                t.phase
            ),
        }
    }

    /// `from` sends `msg` to `cpu`.
    fn send(&mut self, cpu: usize, from: usize, msg: Msg) {
        self.inbox[cpu].push_back(Sent { at: now(), from, msg });
    }

    /// Delivers what is in flight to `cpu`: its messages in the order sent, and its wake-up.
    fn deliver_to(&mut self, cpu: usize, wake_first: bool) {
        let interrupted = !self.inbox[cpu].is_empty() || self.wake[cpu].is_some();
        if interrupted {
            self.woken(cpu);
        }
        if wake_first {
            self.deliver_wake(cpu);
        }
        while let Some(sent) = self.inbox[cpu].pop_front() {
            self.handle(cpu, sent);
        }
        if !wake_first {
            self.deliver_wake(cpu);
        }
        if interrupted {
            self.idle_exit(cpu);
        }
    }

    /// Delivers one thing in flight to `cpu`: its wake-up (`wake_first`, or nothing else is in
    /// flight), else the `pick`th of the messages it may take next: each sender's oldest, so
    /// one sender's messages keep their order and different senders' are reordered at will.
    fn deliver_one(&mut self, cpu: usize, pick: usize, wake_first: bool) {
        if self.inbox[cpu].is_empty() && self.wake[cpu].is_none() {
            return;
        }
        self.woken(cpu);
        if wake_first || self.inbox[cpu].is_empty() {
            self.deliver_wake(cpu);
        } else {
            let mut heads: Vec<usize> = Vec::new();
            for (i, sent) in self.inbox[cpu].iter().enumerate() {
                if heads.iter().all(|&h| self.inbox[cpu][h].from != sent.from) {
                    heads.push(i);
                }
            }
            let sent = self.inbox[cpu].remove(heads[pick % heads.len()]).expect("a message in flight");
            self.handle(cpu, sent);
        }
        self.idle_exit(cpu);
    }

    /// A message carried out on `cpu`.
    fn handle(&mut self, cpu: usize, sent: Sent) {
        match sent.msg {
            Msg::Assign(a) => {
                run_on(cpu);
                let before = self.tick(cpu).service();
                let bc = &self.bc;
                let tick = self.cpus[cpu].as_mut().expect("assignments go to online CPUs");
                // Numbered: one overtaken by a later decision's (another sender's) is stale.
                tick.apply(a, now(), bc);
                if sent.at < now() || tick.service() != before {
                    self.disturbed_at[cpu] = now();
                }
                self.settle(cpu);
            }
            Msg::Frequency { device, hz } => self.set_frequency_here(cpu, device, hz),
        }
    }

    /// An interrupt reaches `cpu`: asleep in deep idle and leaving it before the handler runs
    /// (Linux's order), it takes its deadline back from the broadcast now; otherwise after the
    /// handler ([`Self::idle_exit`]).
    fn woken(&mut self, cpu: usize) {
        if self.asleep[cpu] && self.exit_first[cpu] {
            self.idle_exit(cpu);
        }
    }

    /// After an interrupt on `cpu` (or before it runs an operation's code): it leaves deep
    /// idle, taking its deadline back from the broadcast, as the idle loop does.
    fn idle_exit(&mut self, cpu: usize) {
        if !std::mem::take(&mut self.asleep[cpu]) {
            return;
        }
        assert!(self.cpus[cpu].is_some(), "an online CPU sleeps");
        self.on_cpu(cpu, |cx| glue::idle_exit(cx));
        self.disturbed_at[cpu] = now();
        self.settle(cpu);
    }

    /// CPU `cpu` runs an operation's code: it is awake.
    fn awake(&mut self, cpu: usize) {
        self.idle_exit(cpu);
    }

    /// The idle loop on `cpu` goes into deep idle; `exit_first`: the interrupt that wakes it
    /// finds it leaving deep idle before its handler runs.
    fn deep_idle(&mut self, cpu: usize, exit_first: bool) {
        if self.cpus[cpu].is_none() || self.asleep[cpu] {
            return;
        }
        self.exit_first[cpu] = exit_first;
        run_on(cpu);
        let (usable, broadcast) = {
            let b = self.bc.lock();
            (b.is_usable(), b.device())
        };
        let tick = self.cpus[cpu].as_ref().expect("online");
        let stops = tick.device_stops_in_idle();
        let periodic = tick.local_device().is_some_and(|d| d.state() == State::Periodic);
        let result = self.on_cpu(cpu, |cx| glue::idle_enter(cx));
        let tick = self.cpus[cpu].as_ref().expect("online");
        match result {
            Ok(Handover::NotNeeded) => {
                assert!(!stops, "CPU {cpu}: its device stops in deep idle, not handed over")
            }
            Ok(Handover::EventDue) => {
                // Its next event is due: it stays awake for its local device's interrupt.
                assert!(stops && !periodic, "CPU {cpu} kept a deadline it could hand over");
                assert!(!tick.is_handed_over());
            }
            Ok(Handover::HandedOver) => {
                assert!(stops && !periodic && usable, "CPU {cpu} handed over needlessly or to nothing");
                assert!(tick.is_handed_over());
                self.asleep[cpu] = true;
                self.disturbed_at[cpu] = now();
            }
            Ok(Handover::ServesBroadcast) => {
                // It carries the broadcast's timer (bc_hrtimer): awake, its device running.
                let serves = self.bc.lock().needs_cpu(cpu);
                assert!(stops && !periodic && serves, "CPU {cpu} claims to serve a broadcast it does not");
                assert!(!tick.is_handed_over());
                self.disturbed_at[cpu] = now();
            }
            Err(DeepIdleRefused::PeriodicTick) => {
                assert!(stops && periodic, "CPU {cpu} refused a periodic tick")
            }
            Err(DeepIdleRefused::NoBroadcast) => {
                // Refused up front, or the broadcast device gave up on the deadline (then the
                // CPU took it back, and the glue had the device taken out).
                let gave_up = broadcast.is_some_and(|b| self.registry.device(b).is_failed());
                assert!(
                    stops && !periodic && (!usable || gave_up),
                    "CPU {cpu} refused with a working broadcast"
                );
                assert!(!tick.is_handed_over());
                self.disturbed_at[cpu] = now();
            }
        }
        self.settle(cpu);
    }

    /// Suspends timekeeping for `ns` and resumes it, as the kernel's `suspend_for` on CPU 0:
    /// what is in flight arrives first, every CPU parks with its tick suspended (a CPU in deep
    /// idle is woken by the park call and leaves it after), the broadcast is suspended; time
    /// passes; the broadcast, then each CPU resumes.
    fn suspend(&mut self, ns: u64) {
        self.awake(0);
        self.deliver_all(false);
        for cpu in 0..CPUS {
            if self.cpus[cpu].is_some() {
                let pending = self.on_cpu(cpu, |cx| glue::suspend(cx));
                self.collect_drops();
                assert_eq!(pending, self.queued(cpu), "CPU {cpu}: suspended with another count of timers");
            }
        }
        self.on_cpu(0, |cx| glue::suspend_broadcast(cx));
        for (i, d) in self.drivers() {
            assert_eq!(d.inner.lock().target, None, "dev{i} armed while timekeeping is suspended");
        }
        NOW.store(now() + ns, Ordering::Relaxed);
        let at = now();
        self.on_cpu(0, |cx| glue::resume_broadcast(cx, at));
        self.settle(0);
        for cpu in 0..CPUS {
            if self.cpus[cpu].is_some() {
                self.on_cpu(cpu, |cx| glue::resume(cx, at));
                self.disturbed_at[cpu] = now();
                self.settle(cpu);
            }
        }
        for cpu in 0..CPUS {
            self.idle_exit(cpu);
        }
    }

    /// A refinement of per-CPU devices' frequency, sent (as the kernel's CPU 0 does) to each
    /// device's CPU: `device` (an index among the per-CPU devices) or all of them.
    fn refine(&mut self, device: Option<u8>, error_ppm: Option<i16>) {
        let per_cpu: Vec<(usize, usize)> =
            self.drivers().filter_map(|(i, d)| d.inner.lock().owner.map(|cpu| (i, cpu))).collect();
        if per_cpu.is_empty() {
            return;
        }
        let chosen = match device {
            Some(d) => vec![per_cpu[usize::from(d) % per_cpu.len()]],
            None => per_cpu,
        };
        let ppm = error_ppm.map_or(0, |e| i128::from(e % 10_001));
        for (i, cpu) in chosen {
            // A CPU that is not online takes no calls (the kernel logs that it keeps its value).
            if self.cpus[cpu].is_none() {
                continue;
            }
            let real = i128::from(driver(i).inner.lock().hz);
            let hz = u64::try_from(real + real * ppm / 1_000_000).expect("within 1 % of a real rate");
            self.send(cpu, 0, Msg::Frequency { device: i, hz });
        }
    }

    /// On `cpu`, the owner of per-CPU device `device`: its conversion at `hz` from now on, and
    /// what it is programmed for programmed again (`set_device_frequency`).
    fn set_frequency_here(&mut self, cpu: usize, device: usize, hz: u64) {
        run_on(cpu);
        let dev = self.registry.device(DeviceId(device)).clone();
        // The belief the layer programs with from here on (kept if it refuses the frequency).
        let before = std::mem::replace(&mut driver(device).inner.lock().belief_hz, hz);
        let bc = &self.bc;
        let tick = self.cpus[cpu].as_mut().expect("messages go to online CPUs");
        match tick.set_device_frequency(&dev, hz, now(), bc) {
            Ok(old) => assert_eq!(old.frequency_hz, before, "{dev:?}: replaced another conversion"),
            Err(_) => driver(device).inner.lock().belief_hz = before,
        }
        let s = driver(device).inner.lock();
        assert_eq!(dev.frequency_hz(), s.belief_hz, "{dev:?}: conversion");
        // No event waits on the old factor: whatever is armed was written at the new one (a
        // failed device, left alone until its CPU's new assignment arrives, excepted).
        assert!(
            s.target.is_none() || s.programmed_belief_hz == s.belief_hz || dev.is_failed(),
            "{dev:?} still armed at {} Hz after the change to {} Hz",
            s.programmed_belief_hz,
            s.belief_hz
        );
        drop(s);
        self.settle(cpu);
    }

    /// The wake-up IPI on `cpu`, as the kernel's `wake_interrupt`: its inbox drained, then
    /// the expiry a wake-up starts.
    fn deliver_wake(&mut self, cpu: usize) {
        if let Some(sent) = self.wake[cpu].take() {
            if sent < now() {
                self.disturbed_at[cpu] = now();
            }
            self.drain(cpu);
            self.wakeup(cpu);
        }
    }

    /// Everything in flight arrives, and every inbox is drained: a message whose wake-up IPI
    /// was lost is picked up by a later one (another post's, say).
    fn deliver_everything(&mut self) {
        loop {
            self.deliver_all(false);
            let stranded: Vec<usize> = (0..CPUS).filter(|&c| !self.posted[c].is_empty()).collect();
            if stranded.is_empty() {
                return;
            }
            for cpu in stranded {
                self.send_wake(cpu);
            }
        }
    }

    fn deliver_all(&mut self, wake_first: bool) {
        while !self.all_delivered() {
            for cpu in 0..CPUS {
                self.deliver_to(cpu, wake_first);
            }
        }
    }

    fn send_wake(&mut self, cpu: usize) {
        self.wake[cpu].get_or_insert(now());
    }

    /// The broadcast wake-up (or one for a misrouted event of the CPU's device) on `cpu`.
    fn wakeup(&mut self, cpu: usize) {
        let now = now();
        self.on_cpu(cpu, |cx| glue::wakeup(cx, now));
        self.settle(cpu);
    }

    /// Runs `f` (the crate's glue or expiry loop, the kernel's own) as CPU `cpu`; what it
    /// leaves to the platform (a device that failed taken out, wake-ups sent) is done through
    /// [`FuzzCpu`]'s `Platform`.
    fn on_cpu<R>(&mut self, cpu: usize, f: impl FnOnce(&FuzzCpu) -> R) -> R {
        run_on(cpu);
        let remote = self.remote.clone();
        f(&FuzzCpu { sim: RefCell::new(self), cpu, remote: &remote })
    }

    /// The latest a timer on `cpu` queued for `deadline` at `armed_at` may run, if its CPU has
    /// nothing in flight and a device that works.
    fn latest_run(&self, cpu: usize, deadline: u64, armed_at: u64) -> Option<u64> {
        if self.assignment_in_flight(cpu) || self.wake[cpu].is_some() {
            return None;
        }
        let tick = self.cpus[cpu].as_ref()?;
        let device = match tick.service() {
            Service::None => return None,
            Service::Local(_) | Service::Broadcast(_) if tick.is_handed_over() => self.bc.lock().device()?,
            Service::Local(d) => d,
            Service::Broadcast(_) => self.bc.lock().device()?,
        };
        let dev = self.registry.device(device);
        if dev.is_failed() {
            return None;
        }
        let (programmed_at, real_hz, believed_hz, slowest_hz) = {
            let s = driver(device.0).inner.lock();
            let spec_hz = dev.spec.frequency_hz;
            let believed = s.belief_hz.max(s.programmed_belief_hz).max(spec_hz);
            let slowest = s.hz.min(s.belief_hz).min(s.programmed_belief_hz).min(spec_hz);
            (s.programmed_at, s.hz, believed, slowest)
        };
        let base = deadline.max(armed_at).max(self.disturbed_at[cpu]).max(programmed_at);
        let late = self.mode.period_ns().saturating_add(slack(dev, slowest_hz));
        // A belief of a faster device than it is (of the one in use now, or of the one the
        // comparator was written with) stretches every delta by `believed / real`: the tick and
        // slack after the base, and the delta programmed at `programmed_at` (at most the
        // device's maximum; a longer wait is a hop that programs it again).
        let stretch = |ns: u64| {
            let ns = (u128::from(ns) * u128::from(believed_hz)).div_ceil(u128::from(real_hz.max(1)));
            u64::try_from(ns).unwrap_or(u64::MAX)
        };
        let near = base.saturating_add(stretch(late));
        let programmed_for = (base - programmed_at).min(dev.max_delta_ns);
        let far = programmed_at.saturating_add(stretch(programmed_for.saturating_add(late)));
        Some(near.max(far))
    }

    /// A due timer popped on `cpu` by the expiry loop: every check of the oracle, its callback,
    /// and its next deadline if periodic (what the kernel's payload returns).
    fn run_timer(&mut self, cpu: usize, e: Expired<Payload>, _pass_now: u64) -> Option<(u64, Payload)> {
        let now = now();
        let n = e.payload.n;
        let latest = self.latest_run(cpu, self.timers[n].deadline, self.timers[n].armed_at);
        let t = &mut self.timers[n];
        assert_eq!(t.cpu, cpu, "timer {n} armed on CPU {} ran on CPU {cpu}", t.cpu);
        assert_eq!(t.phase, Phase::Pending, "timer {n} ran while {:?} (twice, or after a cancel)", t.phase);
        match t.handle {
            Some(handle) => assert_eq!(
                (e.payload.handle, e.deadline_ns),
                (Some(handle), t.deadline),
                "posted timer {n} handed out wrongly"
            ),
            None => {
                assert_eq!((Some(e.id), e.deadline_ns), (t.id, t.deadline), "timer {n} handed out wrongly")
            }
        }
        assert_eq!(e.payload.period, t.period, "timer {n} handed out with another period");
        assert!(now >= t.deadline, "timer {n} ran early: {now} < {}", t.deadline);
        if let Some(latest) = latest {
            assert!(
                now <= latest,
                "timer {n} on CPU {cpu} ran late: at {now}, deadline {}, bound {latest} ({} ns late)",
                t.deadline,
                now - t.deadline
            );
        }
        t.phase = Phase::Running;
        t.runs += 1;
        self.runs += 1;
        if let Some(cb) = t.callback
            && t.runs == u32::from(cb.at_run % 4) + 1
        {
            self.callback(cpu, n, cb.act);
        }
        run_on(cpu);
        // What the layer must do with it when the loop completes it: re-arm a periodic timer
        // at its next grid point unless its callback cancelled it. A wrong re-arm shows later
        // (a run while `Done` or `Cancelled`, or a timer that never fires again).
        let t = &mut self.timers[n];
        let (period, cancelled) = (t.period, t.cancelled_running);
        let next = forward(e.deadline_ns, period.max(1), now);
        t.phase = match (period > 0 && !cancelled, cancelled) {
            (true, _) => Phase::Pending,
            (false, true) => Phase::Cancelled,
            (false, false) => Phase::Done,
        };
        if period > 0 && !cancelled {
            (t.deadline, t.armed_at) = (next, now);
        }
        (period > 0).then_some((next, e.payload))
    }

    /// Timer `n`'s callback on `cpu`.
    fn callback(&mut self, cpu: usize, n: usize, act: Act) {
        match act {
            Act::CancelSelf => self.cancel_from(n, cpu, false, false),
            Act::Cancel { which } => {
                let which_n = usize::from(which & 0x7fff) % self.timers.len();
                self.cancel_from(which_n, cpu, which & 0x8000 != 0, false)
            }
            Act::Arm { cpu: target_bits, delay_ns, period_ns } => {
                let target = usize::from(target_bits) % CPUS;
                let via = if target == cpu && target_bits & 4 != 0 {
                    Via::Direct
                } else {
                    Via::Posted { lose_wake: target_bits & 8 != 0 }
                };
                let deadline = now() + u64::from(delay_ns) % MAX_DELAY_NS;
                let period = period_ns.map_or(0, |p| MIN_PERIOD_NS + u64::from(p) % MAX_DELAY_NS);
                self.new_timer(target, cpu, deadline, period, None, via);
            }
        }
    }

    /// Device `dev` interrupts CPU `here` now, as the kernel's `device_interrupt` handles it.
    fn device_event(&mut self, dev: usize, here: usize) {
        self.events += 1;
        let hops = (now() - self.start_ns) / self.shortest_hop_ns.max(1) * (MAX_DEVICES as u64 + 1);
        assert!(
            self.events <= MAX_EVENTS + hops + self.runs,
            "interrupt storm: {} device events, {} timer runs",
            self.events,
            self.runs
        );
        self.woken(here);
        run_on(here);
        // By the crate's glue, as the kernel's handler (`here` may not be online).
        let event = self.on_cpu(here, |cx| glue::device_interrupt(cx, DeviceId(dev)));
        self.settle(here);
        if let glue::DeviceEvent::Broadcast(due) = event {
            for cpu in due.iter() {
                assert!(self.cpus[cpu].is_some(), "the broadcast woke CPU {cpu}, which is not online");
            }
        }
        self.idle_exit(here);
    }

    /// The next device interrupt at or before `until`.
    fn next_event(&self, until: u64) -> Option<(u64, usize)> {
        self.drivers()
            .filter_map(|(i, d)| d.inner.lock().fires_at().map(|t| (t, i)))
            .filter(|&(t, _)| t <= until)
            .min()
    }

    fn run_until(&mut self, until: u64, hold_ipis: bool) {
        loop {
            if !hold_ipis {
                self.deliver_all(false);
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

    /// The kernel's programming-cost measurement on `cpu`.
    fn measure(&mut self, cpu: usize) {
        self.awake(cpu);
        let Some(tick) = self.cpus[cpu].as_ref() else { return };
        let service = tick.service();
        let (Service::Local(d) | Service::Broadcast(d)) = service else { return };
        let dev = self.registry.device(d).clone();
        if !matches!(dev.state(), State::Oneshot | State::OneshotStopped) {
            return;
        }
        run_on(cpu);
        let ticks = dev.conversion().ticks(1_000_000);
        MEASURING.store(true, Ordering::Relaxed);
        for _ in 0..3 {
            let _ = dev.driver().set_next_event(ticks);
        }
        MEASURING.store(false, Ordering::Relaxed);
        if matches!(service, Service::Broadcast(_)) {
            self.bc.lock().resync(now());
        }
        let bc = &self.bc;
        self.cpus[cpu].as_mut().expect("online").resync(now(), bc);
        self.settle(cpu);
    }

    fn is_local_to(&self, d: DeviceId, cpu: usize) -> bool {
        let dev = self.registry.device(d);
        !dev.is_failed() && dev.is_per_cpu() && dev.spec.cpus.only() == Some(cpu)
    }

    fn check_invariants(&mut self) {
        self.collect_drops();
        let online = self.registry.online();
        for (cpu, tick) in self.cpus.iter().enumerate() {
            assert_eq!(online.contains(cpu), tick.is_some(), "CPU {cpu}: online, or has a tick");
        }
        let devices: Vec<_> = self.registry.devices().collect();
        // The registry's decision against the selection rule, computed independently.
        let best_local = |cpu: usize| {
            devices.iter().filter(|(d, _)| self.is_local_to(*d, cpu)).map(|(_, dev)| dev.spec.rating).max()
        };
        let mut locals = Vec::new();
        for cpu in online.iter() {
            match self.registry.service(cpu) {
                Service::Local(d) => {
                    assert!(self.is_local_to(d, cpu), "CPU {cpu} served by {d:?}, not a usable local device");
                    assert_eq!(
                        Some(self.registry.device(d).spec.rating),
                        best_local(cpu),
                        "CPU {cpu}: not the best local"
                    );
                    locals.push(d);
                }
                Service::Broadcast(b) => {
                    assert_eq!(best_local(cpu), None, "CPU {cpu} on broadcast despite a local device");
                    assert_eq!(
                        self.registry.broadcast_device(),
                        Some(b),
                        "CPU {cpu} served by a stale broadcast"
                    );
                }
                Service::None => {
                    assert_eq!(best_local(cpu), None, "CPU {cpu} unserved despite a local device");
                    assert_eq!(
                        self.registry.broadcast_device(),
                        None,
                        "CPU {cpu} unserved despite a broadcast device"
                    );
                }
            }
        }
        let eligible = |d: DeviceId| {
            let dev = self.registry.device(d);
            !dev.is_failed()
                && !dev.spec.features.intersects(Features::PER_CPU | Features::STOPS_IN_DEEP_IDLE)
                && !locals.contains(&d)
        };
        let best_broadcast =
            devices.iter().filter(|(d, _)| eligible(*d)).map(|(_, dev)| dev.spec.rating).max();
        match self.registry.broadcast_device() {
            Some(b) => {
                assert!(eligible(b), "broadcast device {b:?} is not eligible");
                assert_eq!(
                    Some(self.registry.device(b).spec.rating),
                    best_broadcast,
                    "not the best broadcast device"
                );
            }
            None => assert_eq!(best_broadcast, None, "an eligible broadcast device is left unused"),
        }
        let bc = self.bc.lock();
        assert_eq!(
            bc.device(),
            self.registry.broadcast_device(),
            "the broadcast installed is not the one decided"
        );

        // What the CPUs carried out.
        let mut in_use = vec![false; devices.len()];
        let mut asleep_with = vec![false; devices.len()];
        if let Some(b) = bc.device() {
            in_use[b.0] = true;
        }
        for cpu in online.iter() {
            let tick = self.cpus[cpu].as_ref().expect("online");
            assert_eq!(tick.is_handed_over(), self.asleep[cpu], "CPU {cpu}: handed over, or asleep");
            let in_flight = self.assignment_in_flight(cpu);
            if !in_flight {
                assert_eq!(
                    tick.service(),
                    self.registry.service(cpu),
                    "CPU {cpu} did not carry out its service"
                );
            }
            match tick.service() {
                Service::Local(d) => {
                    let local = tick.local_device().expect("a CPU served locally has its device");
                    assert!(
                        Arc::ptr_eq(local, self.registry.device(d)),
                        "CPU {cpu}: local device is not {d:?}"
                    );
                    assert!(!local.is_failed() || in_flight, "CPU {cpu} left on failed {d:?}");
                    in_use[d.0] = true;
                    asleep_with[d.0] = self.asleep[cpu];
                }
                Service::Broadcast(_) | Service::None => {
                    assert!(tick.local_device().is_none(), "CPU {cpu} keeps a local device")
                }
            }
        }
        for cpu in bc.waiting().iter() {
            let on_broadcast = self.cpus[cpu]
                .as_ref()
                .is_some_and(|t| matches!(t.service(), Service::Broadcast(_)) || t.is_handed_over());
            assert!(on_broadcast, "CPU {cpu} waits on the broadcast but is neither served by it nor asleep");
        }
        for (d, dev) in &devices {
            let state = dev.state();
            if asleep_with[d.0] {
                assert_eq!(state, State::Shutdown, "{d:?} of a CPU in deep idle is {state}");
                assert_eq!(driver(d.0).inner.lock().target, None, "{d:?} of a CPU in deep idle still armed");
            } else if in_use[d.0] {
                assert!(
                    matches!(state, State::Oneshot | State::OneshotStopped | State::Periodic),
                    "{d:?} in use but {state}"
                );
            } else {
                assert_eq!(state, State::Detached, "{d:?} unused but {state} (failed: {})", dev.is_failed());
                assert_eq!(driver(d.0).inner.lock().target, None, "unused {d:?} still armed");
            }
            if state == State::OneshotStopped {
                assert_eq!(driver(d.0).inner.lock().target, None, "{d:?} stopped but armed");
            }
            if state == State::Periodic {
                assert!(
                    matches!(self.mode, TickMode::Periodic { .. })
                        && dev.spec.features.contains(Features::PERIODIC)
                        && bc.device() != Some(*d),
                    "{d:?} periodic"
                );
            }
        }
        drop(bc);

        // Each queue holds its CPU's pending timers; no event is lost: a served CPU with
        // pending timers (or a periodic tick) has an interrupt coming, or something in flight.
        let armed = |d: DeviceId| driver(d.0).inner.lock().target.is_some();
        for cpu in online.iter() {
            let tick = self.cpus[cpu].as_ref().expect("online");
            let pending = self.timers.iter().filter(|t| t.cpu == cpu && t.phase == Phase::Pending).count();
            assert_eq!(
                tick.pending(),
                self.queued(cpu),
                "CPU {cpu}: its queue does not hold its pending timers"
            );
            let needs_event = pending > 0 || matches!(self.mode, TickMode::Periodic { .. });
            if !needs_event || self.assignment_in_flight(cpu) || self.wake[cpu].is_some() {
                continue;
            }
            match tick.service() {
                Service::Local(d) if !tick.is_handed_over() => {
                    assert!(
                        armed(d),
                        "CPU {cpu} needs an event but {d:?} is not armed and nothing is in flight"
                    )
                }
                // On broadcast, or asleep in deep idle with its deadline handed over.
                Service::Local(_) | Service::Broadcast(_) => {
                    let bc = self.bc.lock();
                    assert!(bc.waiting().contains(cpu), "CPU {cpu} needs an event but left the broadcast");
                    let device = bc.device().expect("decided and carried out");
                    assert!(armed(device), "CPU {cpu} needs an event but broadcast {device:?} is not armed");
                }
                Service::None => {}
            }
        }
        // Each table's slots in use: its posted timers whose payloads the layer still holds
        // (in the inbox's slot, queued, or cancelled and not reclaimed yet).
        for cpu in 0..CPUS {
            let holding =
                self.timers.iter().filter(|t| t.cpu == cpu && t.handle.is_some() && t.alive).count();
            assert_eq!(self.remote.handles[cpu].in_use(), holding, "CPU {cpu}: handles in use");
        }
        // Lateness: nothing overdue on a CPU whose device works.
        for (n, t) in self.timers.iter().enumerate().filter(|(_, t)| t.phase == Phase::Pending) {
            if let Some(latest) = self.latest_run(t.cpu, t.deadline, t.armed_at) {
                assert!(
                    now() <= latest,
                    "timer {n} on CPU {} overdue: deadline {}, armed at {}, now {}, bound {latest}",
                    t.cpu,
                    t.deadline,
                    t.armed_at,
                    now()
                );
            }
        }
    }

    fn served(&self, cpu: usize) -> bool {
        self.cpus[cpu].as_ref().is_some_and(|t| t.service() != Service::None)
    }
}

fn run(input: Input) {
    let mode = match input.periodic_hz {
        Some(hz) => TickMode::Periodic { hz: 1 + u32::from(hz) % 1000 },
        None => TickMode::Oneshot,
    };
    NOW.store(1_000_000 + u64::from(input.start_ns), Ordering::Relaxed);
    run_on(NO_CPU);
    MEASURING.store(false, Ordering::Relaxed);
    DROPPED.lock().clear();
    let mut sim = Sim {
        registry: Registry::new(),
        bc: Mutex::new(Broadcast::new()),
        cpus: (0..CPUS).map(|_| None).collect(),
        mode,
        irq_cpu: Vec::new(),
        timers: Vec::new(),
        inbox: (0..CPUS).map(|_| VecDeque::new()).collect(),
        remote: Arc::new(Remote {
            handles: (0..CPUS).map(|cpu| Handles::new(cpu, HANDLES)).collect(),
            inboxes: (0..CPUS).map(|_| Inbox::new(INBOX)).collect(),
        }),
        posted: (0..CPUS).map(|_| VecDeque::new()).collect(),
        wake: [None; CPUS],
        asleep: [false; CPUS],
        exit_first: [false; CPUS],
        disturbed_at: [0; CPUS],
        events: 0,
        runs: 0,
        start_ns: now(),
        shortest_hop_ns: u64::MAX,
    };
    for op in input.ops.iter().take(200) {
        match *op {
            Op::Register { .. } => sim.register(op),
            Op::CpuOnline { cpu } => sim.cpu_online(usize::from(cpu) % CPUS),
            Op::Arm { .. } => sim.arm(op),
            Op::Cancel { which, from } if !sim.timers.is_empty() => {
                let n = usize::from(which) % sim.timers.len();
                let cpu = sim.timers[n].cpu;
                let (lose_message, lose_wake) = from.map_or((false, false), |f| (f & 4 != 0, f & 8 != 0));
                let from = from.map_or(cpu, |f| usize::from(f) % CPUS);
                sim.awake(from);
                sim.cancel_from(n, from, lose_message, lose_wake);
            }
            Op::Advance { ns, hold_ipis } => sim.run_until(now() + u64::from(ns) % MAX_DELAY_NS, hold_ipis),
            Op::DeliverIpis { cpu: None, wake_first } => sim.deliver_all(wake_first),
            Op::DeliverIpis { cpu: Some(cpu), wake_first } => match usize::from(cpu) / CPUS {
                0 => sim.deliver_to(usize::from(cpu) % CPUS, wake_first),
                pick => sim.deliver_one(usize::from(cpu) % CPUS, pick - 1, wake_first),
            },
            Op::Spurious { device, misrouted_to } if !sim.irq_cpu.is_empty() => {
                let dev = usize::from(device) % sim.irq_cpu.len();
                match misrouted_to.map(|c| usize::from(c) % CPUS) {
                    // A misrouted interrupt is the device's real one, delivered to the wrong
                    // CPU: hardware raises it only once the counter reaches the comparator, so
                    // `run_until` delivers it there (and consumes the comparator) at that time,
                    // not now (every comparator already reached was delivered by the last
                    // `run_until`). CPUs never go offline: that CPU will still be online.
                    Some(cpu) if sim.cpus[cpu].is_some() && cpu != sim.irq_cpu[dev] => {
                        driver(dev).inner.lock().next_interrupt_misrouted_to = Some(cpu);
                    }
                    // Spurious: the comparator stays armed.
                    _ => sim.device_event(dev, sim.irq_cpu[dev]),
                }
            }
            Op::TakeOut { device } if !sim.irq_cpu.is_empty() => {
                let dev = usize::from(device) % sim.irq_cpu.len();
                sim.awake(sim.irq_cpu[dev]);
                let changes = sim.decide(|r| r.take_out(DeviceId(dev), "fuzz"));
                sim.apply(changes, sim.irq_cpu[dev]);
            }
            Op::Flaky { device, passes_below_ticks } if !sim.irq_cpu.is_empty() => {
                driver(usize::from(device) % sim.irq_cpu.len()).inner.lock().passes_below_ticks =
                    u64::from(passes_below_ticks);
            }
            Op::Measure { cpu } => sim.measure(usize::from(cpu) % CPUS),
            Op::DeepIdle { cpu } => sim.deep_idle(usize::from(cpu) % CPUS, cpu & 4 != 0),
            Op::Suspend { ns } => sim.suspend(u64::from(ns) % MAX_DELAY_NS),
            Op::Refine { device, error_ppm } => sim.refine(device, error_ppm),
            _ => {}
        }
        sim.check_invariants();
    }

    // Everything in flight arrives (every inbox drained); time runs on past every periodic
    // timer's next period (and a tick and a grown minimum delta more): none may be overdue, so
    // each kept running. Then they are cancelled, on their CPUs, as dropping their handles does.
    sim.deliver_everything();
    let longest_period = sim.timers.iter().filter(|t| t.phase == Phase::Pending).map(|t| t.period).max();
    let period = mode.period_ns();
    sim.run_until(now() + period + longest_period.unwrap_or(0) + 30_000_000, false);
    sim.deliver_everything();
    sim.check_invariants();
    for n in 0..sim.timers.len() {
        let t = &sim.timers[n];
        if t.period > 0 && t.phase == Phase::Pending {
            if t.deadline < u64::MAX / 2 && sim.served(t.cpu) {
                let latest =
                    sim.latest_run(t.cpu, t.deadline, t.armed_at).expect("served, nothing in flight");
                assert!(now() <= latest, "periodic timer {n} stopped at {}", t.deadline);
            }
            let cpu = t.cpu;
            sim.awake(cpu);
            sim.cancel_from(n, cpu, false, false);
            assert_eq!(sim.timers[n].phase, Phase::Cancelled);
        }
    }
    sim.check_invariants();

    // Let time run past every deadline (a periodic tick, a grown minimum delta and a
    // max-delta hop later): every one-shot timer still pending on a served CPU must have fired
    // (and a periodic one armed meanwhile by a callback, at least once).
    let last = sim.timers.iter().map(|t| t.deadline).filter(|&d| d < u64::MAX / 2).max().unwrap_or(0);
    sim.run_until(last.max(now()) + period + 2_000_000_000, false);
    sim.deliver_everything();
    sim.check_invariants();
    for (n, t) in sim.timers.iter().enumerate() {
        let unfired = t.period == 0 || t.runs == 0;
        if t.phase == Phase::Pending && unfired && t.deadline < u64::MAX / 2 && sim.served(t.cpu) {
            panic!("timer {n} (CPU {}, deadline {}) never fired; now {}", t.cpu, t.deadline, now());
        }
        // A posted timer cancelled after it was queued, whose cancel message was lost, gives
        // its slot back at its deadline: it has, unless that is far off or its CPU unserved.
        if t.handle.is_some() && t.alive && t.phase == Phase::Cancelled {
            assert!(
                t.deadline >= u64::MAX / 2 || !sim.served(t.cpu),
                "posted timer {n} (CPU {}, deadline {}) cancelled, its slot never reclaimed; now {}",
                t.cpu,
                t.deadline,
                now()
            );
        }
    }

    // The rest is cancelled, on its CPU or (a posted one) from the next: every payload is
    // dropped, every slot but those of the cancelled far or unserved ones above comes back.
    for n in 0..sim.timers.len() {
        if matches!(sim.timers[n].phase, Phase::Pending | Phase::InFlight) {
            let cpu = sim.timers[n].cpu;
            let from = if sim.timers[n].handle.is_some() { (cpu + 1) % CPUS } else { cpu };
            sim.awake(from);
            sim.cancel_from(n, from, false, false);
            assert_eq!(sim.timers[n].phase, Phase::Cancelled, "timer {n} could not be cancelled");
        }
    }
    sim.deliver_everything();
    sim.check_invariants();
    for (n, t) in sim.timers.iter().enumerate() {
        let found_later = t.phase == Phase::Cancelled && t.queued;
        assert!(!t.alive || found_later, "timer {n} ({:?}): its payload never dropped", t.phase);
    }
    for cpu in 0..CPUS {
        if let Some(tick) = &sim.cpus[cpu] {
            assert_eq!(tick.pending(), sim.queued(cpu), "CPU {cpu}: timers left queued");
        }
    }
}

fuzz_target!(|input: Input| run(input));
