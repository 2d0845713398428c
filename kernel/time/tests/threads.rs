//! A host machine whose CPUs are real threads (`shuttle`'s, under randomised schedules): each
//! owns its `CpuTick` behind its own guard, all share one broadcast state and one simulated
//! clock, and each runs the crate's own core, the expiry loop (`tick::expiry`), deep idle
//! (`broadcast_enter`/`broadcast_exit`, leaving it in both orders relative to the wake-up
//! handler) and the broadcast event, as the kernel's `clockevents/cpu.rs` does. CPUs arm
//! timers at random deadlines (some already passed) on themselves, cancel some, arm from
//! callbacks, send each other wake-ups, and sleep; and, as the kernel's `Timer` does, post
//! timers on any CPU (themselves included, callbacks too) through that CPU's
//! `remote::Handles` and `Inbox<TimeMessage>` and cancel them through their handles from any
//! CPU, with the cancel message now and then lost (as when the inbox is full). Each CPU's
//! message IPI runs the crate's `remote::drain` (`Cpu::handle_messages`), at once on a CPU
//! that posted to itself.
//!
//! The oracle is the test's own record, not the crate's: every arm and post with its CPU and
//! deadline, every cancel's answer, and every callback with the thread (the CPU) it ran on,
//! the clock then, and the places of its start and end in the order of all CPUs' events.
//! Every timer armed and not cancelled fires exactly as often as it asked (once, or once more
//! per re-arm), never before its deadline, on the CPU it was armed on; a cancel answered
//! pending means no run of it starts afterwards; running, that a run of it had started and
//! not ended at that moment, and none starts afterwards; inactive, that every run of it had
//! ended (or an earlier cancel stopped it); every CPU drains its timers within a bounded
//! number of steps (no livelock, no lost wake-up), and at the end every handle is free again.
//!
//! `THREADS_ITERATIONS` sets the number of random schedules (default [`DEFAULT_ITERATIONS`];
//! a tenth as many PCT schedules follow); `THREADS_SEED` replays a failure (with
//! `THREADS_ITERATIONS=1`: shuttle prints the failing seed). Diagnostics added to replay one
//! must not touch shuttle's atomics or locks: each such access is a scheduling point and
//! changes the schedule.
//!
//! What shuttle schedules: a thread can be preempted at each shuttle operation (the tick's
//! guard, the IPI flags, a yield in every idle loop), so CPUs interleave between the core's
//! calls. The broadcast lock is the crate's `spin::Mutex` and the clock and devices are plain
//! atomics: no preemption falls inside them (a spinning waiter could never yield to the
//! holder), as none falls inside an interrupts-off section on one CPU of the kernel. The
//! inbox's and the handles' atomics are the crate's plain ones too, so a send, a receive, a
//! post or a cancel is one step here: their own interleavings are the loom models' work
//! (`models.rs`). A callback yields now and then, so a cancel from another CPU can find it
//! running.

#![cfg(not(any(loom, miri)))]

use kernel_time::broadcast::Broadcast;
use kernel_time::clockevents::{CpuSet, DeviceSpec, DriverState, EventDriver, EventPassed, Features};
use kernel_time::hrtimer::{Cancel, Expired, TimerId};
use kernel_time::inbox::{Inbox, TimeMessage};
use kernel_time::remote::{self, Cancelled, Handles};
use kernel_time::tick::deliver::{self, DeliveryContext};
use kernel_time::tick::expiry::{self, ExpiryContext, Outcome};
use kernel_time::tick::{
    ArmError, Assignment, Changes, CpuTick, DeviceFailure, DeviceId, Handover, Registry, TickMode,
};
use shuttle::rand::{Rng, thread_rng};
use shuttle::sync::atomic::{AtomicBool, AtomicUsize};
use shuttle::sync::{Arc, Mutex as Guard};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Schedules `scripts/test` runs (see the README's Tests section for what they cost).
const DEFAULT_ITERATIONS: usize = 3_000;
/// Workload steps per CPU per schedule (arm, cancel, send, sleep...).
const STEPS: usize = 120;
/// Loop turns a CPU may take with timers of its own pending, after the workload, before it
/// is judged to have lost a wake-up (or livelocked): far more than the latest deadline needs
/// (the clock moves about 1 us a turn; PCT schedules, which starve a CPU for long stretches,
/// took up to about 750).
const DRAIN_LIMIT: usize = 3_000;
/// Turns a sleeping CPU waits without a wake-up before it is judged lost.
const SLEEP_LIMIT: usize = 50_000;
/// Timers are armed up to this far ahead, and up to a fifth of it in the past.
const HORIZON_NS: u64 = 100_000;
/// The device ticks at 100 MHz, and honour deltas from 1 us.
const NS_PER_TICK: u64 = 10;
const MIN_DELTA_TICKS: u64 = 100;

shuttle::thread_local! {
    /// The CPU the current thread is (the setup runs as each CPU in turn).
    static THIS_CPU: Cell<usize> = Cell::new(usize::MAX);
}

/// A simulated 100 MHz device on the shared clock: the absolute time it fires at.
struct Driver {
    clock: &'static AtomicU64,
    /// The CPU whose local device it is: programmable only from there.
    owner: Option<usize>,
    fires_at: AtomicU64,
}

impl Driver {
    fn leak(clock: &'static AtomicU64, owner: Option<usize>) -> &'static Driver {
        Box::leak(Box::new(Driver { clock, owner, fires_at: AtomicU64::new(u64::MAX) }))
    }
    fn check_cpu(&self) {
        if let Some(owner) = self.owner {
            let here = THIS_CPU.with(Cell::get);
            assert_eq!(here, owner, "CPU {owner}'s local device programmed from CPU {here}");
        }
    }
    /// Takes the interrupt if the device has fired by `now`.
    fn take_due(&self, now: u64) -> bool {
        let at = self.fires_at.load(Ordering::Relaxed);
        at <= now
            && self.fires_at.compare_exchange(at, u64::MAX, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
    fn due(&self, now: u64) -> bool {
        self.fires_at.load(Ordering::Relaxed) <= now
    }
}

impl EventDriver for Driver {
    fn switch_state(&self, state: DriverState) {
        self.check_cpu();
        assert!(!matches!(state, DriverState::Periodic { .. }), "no device here is periodic");
        self.fires_at.store(u64::MAX, Ordering::Relaxed);
    }
    fn set_next_event(&self, delta_ticks: u64) -> Result<(), EventPassed> {
        self.check_cpu();
        // Counted from the clock as it is now (which may be later than the `now` the layer
        // converted from: the hardware counts from the write).
        let at = self.clock.load(Ordering::Relaxed) + delta_ticks * NS_PER_TICK;
        self.fires_at.store(at, Ordering::Relaxed);
        Ok(())
    }
}

/// Handles per CPU: posted timers (armed, running, or cancelled and not reclaimed yet) a CPU
/// holds at once; a post past them is refused (`ArmError::HandlesFull`).
const HANDLES: usize = 8;
/// Handles kept for cancels from any CPU: the latest posted (an older one's timer has mostly
/// run, and its cancel could only answer inactive).
const RECENT_HANDLES: usize = 24;

/// What a timer carries: its bits (below) and its handle, if it was posted through one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pay {
    bits: u64,
    handle: Option<TimerId>,
}

/// A timer's payload: its number (bits 0..32: a sequence, 32..40: the CPU that numbered it),
/// how many times its callback re-arms it in the past (40..48), whether its callback cancels
/// itself (bit 48), and whether it re-arms itself in the past until the clock is
/// [`UNTIL_NS`] past its first run (bit 49).
fn payload(origin: usize, seq: u64, rearms: u64, cancels_itself: bool, until: bool) -> u64 {
    seq | (origin as u64) << 32 | rearms << 40 | u64::from(cancels_itself) << 48 | u64::from(until) << 49
}
fn number(p: u64) -> u64 {
    p & ((1 << 40) - 1)
}
fn rearms(p: u64) -> u64 {
    (p >> 40) & 0xff
}
fn cancels_itself(p: u64) -> bool {
    p >> 48 & 1 == 1
}
fn rearms_until(p: u64) -> bool {
    p >> 49 & 1 == 1
}

/// A timer of the kind [`rearms_until`] keeps re-arming itself in the past until the clock is
/// this far past its first run: its callback never moves the clock, so only an expiry that ends
/// its passes (and reads the clock again, or holds its CPU's next event back) lets it stop.
const UNTIL_NS: u64 = 5_000;

/// The most callbacks one interrupt may run before the test calls it a livelock: far more than
/// a CPU ever holds (its queue has room for 64), times the expiry's passes.
const CALLBACKS_PER_INTERRUPT: u32 = 1_000;

/// One CPU's state that others may reach: its tick (only it takes the guard), its IPI flags
/// and its inbox.
struct CpuState {
    tick: Guard<CpuTick<Pay>>,
    /// The broadcast's wake-up IPI (the kernel's `WAKE_VECTOR`).
    wake_ipi: AtomicBool,
    /// The inbox's IPI: messages are waiting.
    message_ipi: AtomicBool,
    /// Wake-ups, posted arms and cancels from any CPU (`remote::drain` empties it).
    inbox: Inbox<TimeMessage>,
    /// Its posted timers: any CPU arms and cancels here, without its guard.
    handles: Handles<Pay>,
    /// Its local device, if it has one.
    local: Option<(DeviceId, &'static Driver)>,
    /// Its timers pending (as it last counted them) plus the wake-ups sent to it and not yet
    /// handled, in one atomic: a sender adds its wake-up before sending it, the owner counts
    /// what the wake-up's expiry armed before it takes the wake-up off. A posted timer is
    /// counted by its handle (in use from the post until its slot is free again), and by
    /// `outstanding` from the drain that queued it (counted before the drain returns) until
    /// the count after it ran: no reader sees zero while work is left. Once every CPU's
    /// workload is over nothing is sent any more, so a CPU at zero stays there: the run ends
    /// when all are.
    outstanding: AtomicUsize,
}

/// The machine: the clock, the broadcast, the CPUs.
struct Machine {
    clock: &'static AtomicU64,
    bc: spin::Mutex<Broadcast>,
    broadcast_device: (DeviceId, &'static Driver),
    /// The CPU the broadcast device interrupts (the kernel aims it at CPU 0).
    broadcast_irq_cpu: usize,
    cpus: Vec<CpuState>,
    /// CPUs still in their workload (they may still send messages).
    working: AtomicUsize,
    /// Timer ids each CPU published, for other CPUs' wrong-CPU cancels.
    foreign_ids: Guard<Vec<TimerId>>,
    /// Handles of posted timers (with their numbers), for cancels from any CPU.
    handles: Guard<Vec<(TimerId, u64)>>,
    /// The order of the records' events across CPUs: a plain atomic, no scheduling point, so
    /// a number taken right after a step of the core (a cancel, a callback's start or end)
    /// orders it among every other CPU's.
    seq: AtomicU64,
}

/// The setup's side of the registry's decisions: each assignment carried out as its CPU.
struct Setup<'a> {
    clock: &'static AtomicU64,
    registry: &'a mut Registry,
    bc: &'a spin::Mutex<Broadcast>,
    ticks: &'a mut [CpuTick<Pay>],
}

impl DeliveryContext for Setup<'_> {
    fn now_ns(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }
    fn with_broadcast<R>(&mut self, f: impl FnOnce(&mut Broadcast) -> R) -> R {
        f(&mut self.bc.lock())
    }
    fn wake(&mut self, cpu: usize) {
        panic!("nothing sleeps during the setup (CPU {cpu} woken)");
    }
    fn assign(&mut self, a: Assignment) -> Option<DeviceFailure> {
        THIS_CPU.with(|c| c.set(a.cpu));
        let now = self.now_ns();
        let tick = &mut self.ticks[a.cpu];
        tick.apply(a, now, self.bc);
        tick.take_failure()
    }
    fn take_out(&mut self, device: DeviceId, reason: &str) -> Changes {
        self.registry.take_out(device, reason)
    }
}

/// Builds the machine: `cpus` CPUs, each but the last with a local device that stops in deep
/// idle, and a global device the registry makes the broadcast device, aimed at CPU 0.
fn machine(cpus: usize, mode: TickMode) -> Arc<Machine> {
    let clock: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(1_000_000)));
    let spec = |name: String, rating, cpus, features| DeviceSpec {
        name,
        features: features | Features::ONESHOT,
        rating,
        cpus,
        frequency_hz: 1_000_000_000 / NS_PER_TICK,
        min_delta_ticks: MIN_DELTA_TICKS,
        max_delta_ticks: 1 << 31,
    };
    let mut registry = Registry::new();
    let bc = spin::Mutex::new(Broadcast::new());
    let mut ticks: Vec<CpuTick<Pay>> = (0..cpus)
        .map(|c| {
            let mut tick = CpuTick::new(c, mode, clock.load(Ordering::Relaxed), 64);
            tick.reserve_for_handles(HANDLES);
            tick
        })
        .collect();
    let mut setup = Setup { clock, registry: &mut registry, bc: &bc, ticks: &mut ticks };
    let mut locals = vec![None; cpus];
    for c in 0..cpus {
        let changes = setup.registry.cpu_online(c);
        deliver::deliver(&mut setup, changes);
    }
    let global = Driver::leak(clock, None);
    let (global_id, changes) =
        setup.registry.register(spec("hpet".into(), 90, CpuSet::first(cpus), Features::empty()), global);
    deliver::deliver(&mut setup, changes);
    for (c, local) in locals.iter_mut().enumerate().take(cpus - 1) {
        let driver = Driver::leak(clock, Some(c));
        let features = Features::PER_CPU | Features::STOPS_IN_DEEP_IDLE;
        let (id, changes) =
            setup.registry.register(spec(format!("lapic{c}"), 100, CpuSet::single(c), features), driver);
        deliver::deliver(&mut setup, changes);
        *local = Some((id, driver));
    }
    assert_eq!(bc.lock().device(), Some(global_id), "the global device is the broadcast device");
    let cpus = ticks
        .into_iter()
        .zip(locals)
        .enumerate()
        .map(|(c, (tick, local))| CpuState {
            tick: Guard::new(tick),
            wake_ipi: AtomicBool::new(false),
            message_ipi: AtomicBool::new(false),
            inbox: Inbox::new(8),
            handles: Handles::new(c, HANDLES),
            local,
            outstanding: AtomicUsize::new(0),
        })
        .collect::<Vec<_>>();
    Arc::new(Machine {
        clock,
        bc,
        broadcast_device: (global_id, global),
        broadcast_irq_cpu: 0,
        working: AtomicUsize::new(cpus.len()),
        cpus,
        foreign_ids: Guard::new(Vec::new()),
        handles: Guard::new(Vec::new()),
        seq: AtomicU64::new(0),
    })
}

/// What a cancel answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Cancelled,
    Running,
    Inactive,
}

/// One CPU's record, kept by the test (the oracle's input): `seq` orders its events.
#[derive(Default)]
struct Record {
    /// Timer number -> (its CPU, deadline, payload) for each timer this CPU armed (on itself)
    /// or posted (on any CPU).
    armed: BTreeMap<u64, (usize, u64, u64)>,
    /// (timer number, answer, seq) of each cancel this CPU made.
    cancels: Vec<(u64, Answer, u64)>,
    /// (timer number, CPU it ran on, clock then, seq at the callback's start, at its end).
    fires: Vec<(u64, usize, u64, u64, u64)>,
    /// Timer number -> the clock at its first run.
    first_run: BTreeMap<u64, u64>,
    /// Operations on the core (arms, cancels, callbacks, interrupts, idle entries and exits,
    /// messages), for the figure.
    ops: u64,
    /// Deep idle entries that handed the deadline over, and wake-ups of each order.
    handovers: u64,
    exits_first: u64,
    handlers_first: u64,
    /// Idle turns it took, with timers of its own pending, after its workload until every
    /// CPU's timers had fired.
    drain_turns: usize,
    /// Posts through handles (refused ones apart), and the answers its cancels through handles
    /// got: pending, running (its callback on another CPU at that moment), inactive.
    posts: u64,
    posts_refused: u64,
    handle_answers: [u64; 3],
}

/// One CPU, as its own thread sees it: the crate's expiry loop runs on it.
struct Cpu {
    index: usize,
    m: Arc<Machine>,
    record: RefCell<Record>,
    next_seq: Cell<u64>,
    /// Its own timers' ids with their numbers, for its cancels.
    ids: RefCell<Vec<(TimerId, u64)>>,
    /// Callbacks run by the interrupt in progress.
    callbacks: Cell<u32>,
    /// Its pending timers as last counted into its `outstanding`.
    published: Cell<usize>,
}

impl ExpiryContext for Cpu {
    type Payload = Pay;
    fn with_tick<R>(&self, f: impl FnOnce(&mut CpuTick<Pay>, &spin::Mutex<Broadcast>) -> R) -> Option<R> {
        let mut tick = self.me().tick.try_lock().expect("a CPU's tick re-entered while its guard is held");
        Some(f(&mut tick, &self.m.bc))
    }
    fn now_ns(&self) -> u64 {
        // The CPU's own code takes time: every read may find the clock moved on.
        let step = if thread_rng().gen_ratio(1, 4) { thread_rng().gen_range(0..200) } else { 0 };
        self.m.clock.fetch_add(step, Ordering::Relaxed) + step
    }
    /// A callback: recorded with the order of its start and its end among every CPU's events.
    fn run(&self, timer: Expired<Pay>, _now_ns: u64) -> Option<(u64, Pay)> {
        let at = self.m.clock.load(Ordering::Relaxed);
        let start = self.stamp();
        let n = number(timer.payload.bits);
        let again = self.callback(timer, at);
        let end = self.stamp();
        let mut r = self.record.borrow_mut();
        r.fires.push((n, self.index, at, start, end));
        r.ops += 1;
        again
    }
    fn handle_of(&self, payload: &Pay) -> Option<TimerId> {
        payload.handle
    }
    fn handles(&self) -> Option<&Handles<Pay>> {
        Some(&self.me().handles)
    }
}

impl Cpu {
    /// The next number in the order of all CPUs' events.
    fn stamp(&self) -> u64 {
        self.m.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Timer `timer`'s callback, which began at `at`.
    fn callback(&self, timer: Expired<Pay>, at: u64) -> Option<(u64, Pay)> {
        let p = timer.payload.bits;
        let first_run = *self.record.borrow_mut().first_run.entry(number(p)).or_insert(at);
        let callbacks = self.callbacks.get() + 1;
        self.callbacks.set(callbacks);
        assert!(
            callbacks <= CALLBACKS_PER_INTERRUPT,
            "CPU {}: {callbacks} callbacks in one interrupt (timer {:#x} at {at}): a livelock",
            self.index,
            number(p)
        );
        if rearms_until(p) {
            return (at < first_run + UNTIL_NS).then(|| (timer.deadline_ns.saturating_sub(1), timer.payload));
        }
        let mut rng = thread_rng();
        if cancels_itself(p) {
            match timer.payload.handle {
                Some(handle) => assert_eq!(
                    self.me().handles.cancel(handle),
                    Ok(Cancelled::Running),
                    "a callback cancelling its own posted timer finds it running"
                ),
                None => assert_eq!(
                    self.with_tick(|t, _| t.cancel(timer.id)).expect("a tick"),
                    Ok(Cancel::Running),
                    "a callback cancelling its own timer finds it running"
                ),
            }
            // Recorded as any other cancel: a later one (from anywhere) finds it inactive.
            let seq = self.stamp();
            self.record.borrow_mut().cancels.push((number(p), Answer::Running, seq));
        }
        if rng.gen_ratio(1, 8) {
            // A slow callback.
            self.m.clock.fetch_add(rng.gen_range(0..20_000), Ordering::Relaxed);
        }
        if rng.gen_ratio(1, 4) {
            // The other CPUs run meanwhile (a cancel may find it running).
            shuttle::thread::yield_now();
        }
        if rng.gen_ratio(1, 8) {
            // A callback arms another timer on its CPU (queued; the expiry programs it).
            self.arm(self.random_deadline());
        }
        if rng.gen_ratio(1, 8) {
            // Or posts one on any CPU, from interrupt context.
            let to = rng.gen_range(0..self.m.cpus.len());
            self.post(to, self.random_deadline(), true);
        }
        let left = rearms(p);
        (left > 0 && !cancels_itself(p)).then(|| {
            // Re-armed already in the past: must not keep the expiry going.
            let next = Pay { bits: p - (1 << 40), ..timer.payload };
            (timer.deadline_ns.saturating_sub(1), next)
        })
    }
}

impl Cpu {
    fn me(&self) -> &CpuState {
        &self.m.cpus[self.index]
    }
    fn now(&self) -> u64 {
        self.m.clock.load(Ordering::Relaxed)
    }
    fn random_deadline(&self) -> u64 {
        let now = self.now();
        now + thread_rng().gen_range(0..HORIZON_NS) - HORIZON_NS / 5
    }
    fn new_payload(&self) -> u64 {
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        let mut rng = thread_rng();
        let rearms = if rng.gen_ratio(1, 10) { rng.gen_range(1..4) } else { 0 };
        payload(self.index, seq, rearms, rng.gen_ratio(1, 20), rng.gen_ratio(1, 30))
    }

    /// Arms a timer on this CPU, recorded.
    fn arm(&self, deadline: u64) {
        self.arm_payload(self.new_payload(), deadline);
    }
    fn arm_payload(&self, p: u64, deadline: u64) {
        let now = self.now();
        let armed = self.with_tick(|t, bc| {
            let armed = t.arm(deadline, Pay { bits: p, handle: None }, now, bc);
            assert_eq!(t.take_failure(), None, "no device fails here");
            armed
        });
        self.record.borrow_mut().ops += 1;
        match armed.expect("a tick") {
            Ok(id) => {
                assert_eq!(id.cpu(), self.index, "an id names its CPU");
                self.record.borrow_mut().armed.insert(number(p), (self.index, deadline, p));
                self.ids.borrow_mut().push((id, number(p)));
                if thread_rng().gen_ratio(1, 8) {
                    self.m.foreign_ids.lock().unwrap().push(id);
                }
            }
            // Armed from a callback with the queue full: refused, never runs.
            Err(refused) => assert!(
                matches!(refused.error, kernel_time::tick::ArmError::QueueFull { .. }),
                "{}",
                refused.error
            ),
        }
    }

    /// Cancels one of this CPU's timers, recording the answer.
    fn cancel_one(&self) {
        let pick = {
            let ids = self.ids.borrow();
            if ids.is_empty() {
                return;
            }
            ids[thread_rng().gen_range(0..ids.len())]
        };
        let (id, n) = pick;
        let answer = self.with_tick(|t, _| t.cancel(id)).expect("a tick").expect("its own CPU's id");
        let answer = match answer {
            Cancel::Cancelled(_) => Answer::Cancelled,
            Cancel::Running => Answer::Running,
            Cancel::Inactive => Answer::Inactive,
        };
        assert_ne!(answer, Answer::Running, "nothing runs on this CPU outside its expiry");
        let seq = self.stamp();
        let mut r = self.record.borrow_mut();
        r.cancels.push((n, answer, seq));
        r.ops += 1;
    }

    /// Cancels another CPU's id on this CPU: refused, and nothing of this CPU's is touched.
    fn cancel_foreign(&self) {
        let id = {
            let ids = self.m.foreign_ids.lock().unwrap();
            ids.iter().copied().find(|id| id.cpu() != self.index)
        };
        if let Some(id) = id {
            let answer = self.with_tick(|t, _| t.cancel(id)).expect("a tick");
            assert!(answer.is_err(), "CPU {}'s id cancelled on CPU {}", id.cpu(), self.index);
            self.record.borrow_mut().ops += 1;
        }
    }

    /// Sends a wake-up to `cpu`'s inbox and raises its IPI; false if the inbox was full.
    fn send_wake(&self, cpu: usize) -> bool {
        let target = &self.m.cpus[cpu];
        self.record.borrow_mut().ops += 1;
        target.outstanding.fetch_add(1, Ordering::AcqRel);
        if target.inbox.try_send(TimeMessage::Wake).is_err() {
            target.outstanding.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        target.message_ipi.store(true, Ordering::Release);
        true
    }

    /// Posts a timer on CPU `to` (any, this one included) through its handles, as the
    /// kernel's `Timer`: the handle at once, recorded as armed; `to` drains its inbox now if
    /// it is this CPU, else when its IPI lands. `in_callback`: from a timer's callback. A
    /// refusal (no handle free, the inbox full) arms nothing.
    fn post(&self, to: usize, deadline: u64, in_callback: bool) {
        let bits = self.new_payload();
        let target = &self.m.cpus[to];
        self.record.borrow_mut().ops += 1;
        match target.handles.post(&target.inbox, deadline, |handle| Pay { bits, handle: Some(handle) }) {
            Ok(id) => {
                assert_eq!(id.cpu(), to, "a handle names its CPU");
                let mut r = self.record.borrow_mut();
                r.armed.insert(number(bits), (to, deadline, bits));
                r.posts += 1;
                drop(r);
                if thread_rng().gen_ratio(1, 2) {
                    let mut handles = self.m.handles.lock().unwrap();
                    if handles.len() == RECENT_HANDLES {
                        handles.remove(0);
                    }
                    handles.push((id, number(bits)));
                }
                self.deliver(to, in_callback);
            }
            Err(refused) => {
                assert!(
                    matches!(refused.error, ArmError::HandlesFull { .. } | ArmError::InboxFull { .. }),
                    "{}",
                    refused.error
                );
                self.record.borrow_mut().posts_refused += 1;
            }
        }
    }

    /// Has `cpu` drain its inbox: now if it is this CPU, else by its IPI.
    fn deliver(&self, cpu: usize, in_callback: bool) {
        if cpu == self.index {
            self.handle_messages(in_callback);
        } else {
            self.m.cpus[cpu].message_ipi.store(true, Ordering::Release);
        }
    }

    /// Cancels a posted timer (of any CPU) through its handle, from this CPU: the answer at
    /// once, recorded with its place in the order of every CPU's events; a pending one's
    /// cancel message goes to its CPU (now and then it is lost, as when that inbox is full:
    /// its CPU finds it cancelled at its deadline). Another CPU's table refuses the handle.
    fn cancel_handle(&self) {
        let pick = {
            let handles = self.m.handles.lock().unwrap();
            if handles.is_empty() {
                return;
            }
            handles[thread_rng().gen_range(0..handles.len())]
        };
        let (id, n) = pick;
        let cpus = self.m.cpus.len();
        let owner = &self.m.cpus[id.cpu()];
        let other = &self.m.cpus[(id.cpu() + 1) % cpus].handles;
        assert!(other.cancel(id).is_err(), "CPU {}'s handle cancelled in another CPU's table", id.cpu());
        let answer = owner.handles.cancel(id).expect("a handle of its CPU");
        let seq = self.stamp();
        let recorded = match answer {
            Cancelled::Pending => Answer::Cancelled,
            Cancelled::Running => Answer::Running,
            Cancelled::Inactive => Answer::Inactive,
        };
        {
            let mut r = self.record.borrow_mut();
            r.cancels.push((n, recorded, seq));
            r.ops += 1;
            r.handle_answers[recorded as usize] += 1;
        }
        if answer == Cancelled::Pending
            && thread_rng().gen_ratio(7, 8)
            && owner.inbox.try_send(Handles::<Pay>::cancel_message(id)).is_ok()
        {
            self.deliver(id.cpu(), false);
        }
    }

    /// The message IPI: drains this CPU's inbox by the crate's `remote::drain` (posted timers
    /// armed, cancelled ones reclaimed), then runs the expiry of each wake-up. The one place a
    /// CPU handles what other CPUs ask of it. In a callback (a post to itself) the wake-ups'
    /// expiry is left to its wake-up IPI.
    fn handle_messages(&self, in_callback: bool) {
        let mut wakes = 0;
        let drained = remote::drain(self, &self.me().inbox, |message| {
            assert_eq!(message, TimeMessage::Wake, "only wake-ups besides arms and cancels");
            wakes += 1;
        })
        .expect("no drain runs inside another here");
        assert_eq!(drained.failure, None, "no device fails here");
        self.record.borrow_mut().ops += u64::from(drained.armed + drained.reclaimed + drained.other);
        if !in_callback {
            // The timers it queued are counted before their handles can be freed.
            self.publish_pending();
        }
        for _ in 0..wakes {
            if in_callback {
                self.me().wake_ipi.store(true, Ordering::Release);
            } else {
                self.wakeup();
                self.publish_pending();
            }
            self.me().outstanding.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Runs the expiry a wake-up starts (the broadcast's IPI, a wake message).
    fn wakeup(&self) {
        self.callbacks.set(0);
        let now = self.now_ns();
        self.expired(expiry::wakeup(self, now));
    }

    fn expired(&self, outcome: Outcome) {
        self.record.borrow_mut().ops += 1;
        if let Outcome::Expired(e) = outcome {
            assert_eq!(e.failure, None, "no device fails here");
        }
        assert_ne!(outcome, Outcome::NotOurs, "every device interrupts its own CPU");
    }

    /// The broadcast device fired on this CPU (the kernel's `broadcast_interrupt`): every
    /// CPU whose deadline passed is woken, this one directly, the others by IPI.
    fn broadcast_interrupt(&self, now: u64) {
        let (due, failure) = {
            let mut b = self.m.bc.lock();
            (b.event(now, self.index), b.take_failure())
        };
        assert_eq!(failure, None, "the broadcast device never fails here");
        self.record.borrow_mut().ops += 1;
        for cpu in due.iter() {
            if cpu == self.index {
                self.wakeup();
            } else {
                self.m.cpus[cpu].wake_ipi.store(true, Ordering::Release);
            }
        }
    }

    /// Whether an interrupt is pending for this CPU (its local device, if `local_runs`; the
    /// broadcast device if it is its target; an IPI).
    fn interrupt_pending(&self, local_runs: bool) -> bool {
        let now = self.now();
        let me = self.me();
        (local_runs && me.local.is_some_and(|(_, d)| d.due(now)))
            || (self.index == self.m.broadcast_irq_cpu && self.m.broadcast_device.1.due(now))
            || me.wake_ipi.load(Ordering::Acquire)
            || me.message_ipi.load(Ordering::Acquire)
    }

    /// Interrupts enabled for a moment: every pending interrupt runs its handler.
    fn handle_interrupts(&self) {
        let me = self.me();
        let now = self.now();
        if let Some((id, driver)) = me.local
            && driver.take_due(now)
        {
            self.callbacks.set(0);
            self.expired(expiry::device_interrupt(self, id));
        }
        if self.index == self.m.broadcast_irq_cpu && self.m.broadcast_device.1.take_due(now) {
            self.broadcast_interrupt(now);
        }
        if me.wake_ipi.swap(false, Ordering::AcqRel) {
            self.wakeup();
        }
        if me.message_ipi.swap(false, Ordering::AcqRel) {
            self.handle_messages(false);
        }
    }

    /// Time passes until an interrupt is pending (or, now and then, a wake-up for no timer's
    /// reason; or the run is over). `local_runs`: the local device can still interrupt.
    fn sleep(&self, local_runs: bool) {
        let mut rng = thread_rng();
        for _ in 0..SLEEP_LIMIT {
            if self.interrupt_pending(local_runs) || rng.gen_ratio(1, 64) || self.all_done() {
                return;
            }
            self.m.clock.fetch_add(rng.gen_range(0..3_000), Ordering::Relaxed);
            shuttle::thread::yield_now();
        }
        panic!("CPU {} slept {SLEEP_LIMIT} turns without a wake-up (clock {})", self.index, self.now());
    }

    /// Idle: deep (the local device stops; the broadcast holds the deadline) or shallow.
    fn idle(&self, deep: bool) {
        if !deep {
            self.sleep(true);
            self.handle_interrupts();
            return;
        }
        let now = self.now_ns();
        let entered = self.with_tick(|t, bc| t.broadcast_enter(now, bc)).expect("a tick");
        assert_eq!(self.m.bc.lock().take_failure(), None, "the broadcast device never fails here");
        self.record.borrow_mut().ops += 1;
        match entered {
            Ok(Handover::HandedOver) => {
                self.record.borrow_mut().handovers += 1;
                self.sleep(false);
                // Woken: leave the broadcast before the handler runs (Linux's order) or after.
                let exit = || {
                    let now = self.now_ns();
                    let failure = self.with_tick(|t, bc| {
                        t.broadcast_exit(now, bc);
                        t.take_failure()
                    });
                    assert_eq!(failure, Some(None), "no device fails here");
                    self.record.borrow_mut().ops += 1;
                };
                if thread_rng().gen_bool(0.5) {
                    self.record.borrow_mut().exits_first += 1;
                    exit();
                    self.handle_interrupts();
                } else {
                    self.record.borrow_mut().handlers_first += 1;
                    self.handle_interrupts();
                    exit();
                }
            }
            // Its event is due: the local device is armed for it, no sleep.
            Ok(Handover::EventDue) => self.handle_interrupts(),
            // The device keeps running in deep idle (no local device), or this CPU serves the
            // broadcast's timer (never here: the broadcast is a hardware device): a plain sleep.
            Ok(Handover::NotNeeded | Handover::ServesBroadcast) => {
                self.sleep(true);
                self.handle_interrupts();
            }
            Err(refused) => panic!("deep idle refused on CPU {}: {refused}", self.index),
        }
    }

    fn all_done(&self) -> bool {
        self.m.working.load(Ordering::Acquire) == 0
            && self
                .m
                .cpus
                .iter()
                .all(|c| c.outstanding.load(Ordering::Acquire) == 0 && c.handles.in_use() == 0)
    }

    /// Counts this CPU's pending timers into its `outstanding`.
    fn publish_pending(&self) {
        let pending = self.with_tick(|t, _| t.pending()).expect("a tick");
        let published = self.published.replace(pending);
        if pending > published {
            self.me().outstanding.fetch_add(pending - published, Ordering::AcqRel);
        } else if pending < published {
            self.me().outstanding.fetch_sub(published - pending, Ordering::AcqRel);
        }
    }

    /// The CPU's life: the workload, then idle until every CPU's timers have fired.
    fn main(self) -> Record {
        THIS_CPU.with(|c| c.set(self.index));
        let m = self.m.clone();
        let cpus = m.cpus.len();
        let mut rng = thread_rng();
        for _ in 0..STEPS {
            self.handle_interrupts();
            match rng.gen_range(0..100) {
                0..22 => self.arm(self.random_deadline()),
                22..30 => self.cancel_one(),
                30..32 => self.cancel_foreign(),
                32..46 => {
                    // Mostly on another CPU; on this one, the kernel's own path as well.
                    let to = if rng.gen_ratio(1, 4) {
                        self.index
                    } else {
                        (self.index + rng.gen_range(1..cpus)) % cpus
                    };
                    self.post(to, self.random_deadline(), false);
                }
                46..55 => self.cancel_handle(),
                55..58 => {
                    let to = (self.index + rng.gen_range(1..cpus)) % cpus;
                    let _ = self.send_wake(to);
                }
                58..78 => self.idle(false),
                _ => self.idle(true),
            }
        }
        self.publish_pending();
        m.working.fetch_sub(1, Ordering::AcqRel);
        // An idle governor's choice for the rest of the run: a CPU that sleeps only shallowly
        // from now on needs its local device programmed, one that sleeps only deeply needs the
        // broadcast to hold its deadline.
        let drain_deep = rng.gen_bool(0.5);
        let mut turns = 0;
        loop {
            self.handle_interrupts();
            self.publish_pending();
            if self.all_done() {
                break;
            }
            if self.published.get() > 0 || self.me().handles.in_use() > 0 {
                turns += 1;
            }
            if turns >= DRAIN_LIMIT {
                let pending: Vec<_> = m.cpus.iter().map(|c| c.outstanding.load(Ordering::Relaxed)).collect();
                let handles: Vec<_> = m.cpus.iter().map(|c| c.handles.in_use()).collect();
                panic!(
                    "CPU {}: timers still pending after {DRAIN_LIMIT} turns of idle (clock {}), timers \
                     and messages outstanding per CPU {pending:?}, handles in use {handles:?}: a lost \
                     wake-up, a livelock or a slot never given back",
                    self.index,
                    self.now()
                );
            }
            self.idle(drain_deep);
        }
        let mut record = self.record.into_inner();
        record.drain_turns = turns;
        record
    }
}

/// Checks the records of all CPUs against each other (see the module's documentation).
fn check(records: &[Record]) -> u64 {
    // Per timer: its runs (CPU, clock, start, end) and the cancels of it from any CPU (answer,
    // seq), each in the order of the CPUs' events.
    let mut fires: BTreeMap<u64, Vec<(usize, u64, u64, u64)>> = BTreeMap::new();
    let mut cancels: BTreeMap<u64, Vec<(Answer, u64)>> = BTreeMap::new();
    let mut armed = BTreeMap::new();
    for r in records {
        for &(n, cpu, at, start, end) in &r.fires {
            fires.entry(n).or_default().push((cpu, at, start, end));
        }
        for &(n, answer, seq) in &r.cancels {
            cancels.entry(n).or_default().push((answer, seq));
        }
        for (&n, &timer) in &r.armed {
            assert!(armed.insert(n, timer).is_none(), "timer {n:#x} armed twice");
        }
    }
    fires.values_mut().for_each(|runs| runs.sort_by_key(|r| r.2));
    cancels.values_mut().for_each(|c| c.sort_by_key(|c| c.1));
    for (&n, &(cpu, deadline, p)) in &armed {
        let runs = fires.get(&n).map(Vec::as_slice).unwrap_or(&[]);
        for &(ran_on, at, _, _) in runs {
            assert_eq!(ran_on, cpu, "timer {n:#x} armed on CPU {cpu} ran on CPU {ran_on}");
            assert!(at >= deadline, "timer {n:#x} ran at {at}, before its deadline {deadline}");
        }
        let cs = cancels.get(&n).map(Vec::as_slice).unwrap_or(&[]);
        // The first cancel that stopped it: pending (it never runs again), or running (its
        // callback was running on its CPU at that moment, and it is not re-armed).
        let stop = cs.iter().copied().find(|c| c.0 != Answer::Inactive);
        if let Some((answer, seq)) = stop {
            assert!(runs.iter().all(|r| r.2 < seq), "timer {n:#x} ran after a cancel answered {answer:?}");
            if answer == Answer::Running {
                assert!(
                    runs.iter().any(|r| r.2 < seq && seq < r.3),
                    "timer {n:#x} answered running when no callback of it was running"
                );
            }
        }
        for &(answer, seq) in cs {
            let stopped_before = stop.is_some_and(|s| s.1 < seq);
            if stopped_before {
                assert_eq!(answer, Answer::Inactive, "timer {n:#x} cancelled twice");
            } else if answer == Answer::Inactive {
                // Ran to its end before: none in progress, none to come.
                assert!(
                    runs.iter().all(|r| r.3 < seq),
                    "timer {n:#x} answered inactive while it ran or before it ran: runs {runs:?}, cancels {cs:?}, \
                     payload {p:#x}"
                );
            }
        }
        if rearms_until(p) {
            // Ran until the clock was UNTIL_NS past its first run, unless cancelled first.
            let (first, last) = (runs.first().map(|r| r.1), runs.last().map(|r| r.1));
            let done = first.zip(last).is_some_and(|(first, last)| last >= first + UNTIL_NS);
            assert!(
                done || stop.is_some(),
                "timer {n:#x} (deadline {deadline}) stopped re-arming early: ran {first:?} to {last:?}"
            );
            continue;
        }
        let expected = if cancels_itself(p) { 1 } else { 1 + rearms(p) as usize };
        match stop {
            None => assert_eq!(
                runs.len(),
                expected,
                "timer {n:#x} (deadline {deadline}, on CPU {cpu}) ran {} times, not {expected}",
                runs.len()
            ),
            Some((Answer::Running, _)) => assert!(runs.len() <= expected, "timer {n:#x} ran too often"),
            Some(_) => assert!(runs.len() < expected, "timer {n:#x} cancelled as pending after its last run"),
        }
    }
    for n in fires.keys() {
        assert!(armed.contains_key(n), "timer {n:#x} ran but was never armed");
    }
    records.iter().map(|r| r.ops).sum()
}

/// One schedule: a machine of three CPUs (two with a local device that stops in deep idle, one
/// served by the broadcast device alone), each CPU a thread.
fn one_run(totals: &std::sync::Mutex<[u64; 11]>) {
    let mode =
        if thread_rng().gen_ratio(1, 4) { TickMode::Periodic { hz: 50_000 } } else { TickMode::Oneshot };
    let m = machine(3, mode);
    let threads: Vec<_> = (0..m.cpus.len())
        .map(|index| {
            let cpu = Cpu {
                index,
                m: m.clone(),
                record: RefCell::new(Record::default()),
                next_seq: Cell::new(0),
                ids: RefCell::new(Vec::new()),
                callbacks: Cell::new(0),
                published: Cell::new(0),
            };
            shuttle::thread::spawn(move || cpu.main())
        })
        .collect();
    let records: Vec<Record> = threads.into_iter().map(|t| t.join().expect("a CPU panicked")).collect();
    for (cpu, state) in m.cpus.iter().enumerate() {
        assert_eq!(state.handles.in_use(), 0, "CPU {cpu}: handles not given back");
        assert_eq!(state.tick.lock().unwrap().pending(), 0, "CPU {cpu}: timers left queued");
    }
    let ops = check(&records);
    let mut t = totals.lock().unwrap();
    t[0] += 1;
    t[1] += ops;
    t[2] += records.iter().map(|r| r.handovers).sum::<u64>();
    t[3] += records.iter().map(|r| r.exits_first).sum::<u64>();
    t[4] += records.iter().map(|r| r.handlers_first).sum::<u64>();
    t[5] = t[5].max(records.iter().map(|r| r.drain_turns as u64).max().unwrap_or(0));
    t[6] += records.iter().map(|r| r.posts).sum::<u64>();
    t[7] += records.iter().map(|r| r.posts_refused).sum::<u64>();
    for (i, answers) in t[8..].iter_mut().enumerate() {
        *answers += records.iter().map(|r| r.handle_answers[i]).sum::<u64>();
    }
}

/// Runs `iterations` schedules of [`one_run`] under `scheduler`; prints the figures.
fn run_schedules(scheduler: impl shuttle::scheduler::Scheduler + 'static, iterations: usize, name: &str) {
    let totals: &'static std::sync::Mutex<[u64; 11]> = Box::leak(Box::new(std::sync::Mutex::new([0; 11])));
    let mut config = shuttle::Config::new();
    config.stack_size = 1 << 20;
    config.max_steps = shuttle::MaxSteps::FailAfter(10_000_000);
    shuttle::Runner::new(scheduler, config).run(move || one_run(totals));
    let [
        runs,
        ops,
        handovers,
        exits_first,
        handlers_first,
        drain_turns,
        posts,
        refused,
        pending,
        running,
        inactive,
    ] = *totals.lock().unwrap();
    println!(
        "{name}: {runs} schedules, {ops} operations on the core, {handovers} deep-idle handovers \
         ({exits_first} left before the handler, {handlers_first} after), at most {drain_turns} \
         idle turns to drain (limit {DRAIN_LIMIT}); {posts} posts through handles ({refused} \
         refused), their cancels answered {pending} pending, {running} running, {inactive} inactive"
    );
    assert_eq!(runs, iterations as u64);
    assert!(exits_first > 0 && handlers_first > 0, "both idle-exit orders ran");
    if iterations >= 100 {
        assert!(posts > 0 && pending > 0 && inactive > 0, "posts and their cancels ran");
    }
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Random schedules, then PCT schedules (priorities that change at a few random points: a CPU
/// runs long stretches alone, as one whose neighbours are stalled), a tenth as many. One test,
/// run one after the other: shuttle's panic hook is the process's.
#[test]
fn cpus_as_threads_fire_every_timer_once_never_early_on_its_cpu() {
    let iterations = env("THREADS_ITERATIONS").map_or(DEFAULT_ITERATIONS, |n| n as usize);
    let seed = env("THREADS_SEED");
    let random = match seed {
        Some(seed) => shuttle::scheduler::RandomScheduler::new_from_seed(seed, iterations),
        None => shuttle::scheduler::RandomScheduler::new(iterations),
    };
    run_schedules(random, iterations, "random");
    let pct = match seed {
        Some(seed) => shuttle::scheduler::PctScheduler::new_from_seed(seed, 3, iterations / 10),
        None => shuttle::scheduler::PctScheduler::new(3, iterations / 10),
    };
    run_schedules(pct, iterations / 10, "PCT");
}
