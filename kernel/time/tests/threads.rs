//! A host machine whose CPUs are real threads (`shuttle`'s, under randomised schedules): each
//! owns its `CpuTick` behind its own guard, all share one broadcast state and one simulated
//! clock, and each runs the crate's own core, the expiry loop (`tick::expiry`), deep idle
//! (`broadcast_enter`/`broadcast_exit`, leaving it in both orders relative to the wake-up
//! handler) and the broadcast event, as the kernel's `clockevents/cpu.rs` does. CPUs arm
//! timers at random deadlines (some already passed), cancel some, arm from callbacks, send each
//! other wake-ups and arm requests through the crate's `Inbox`, and sleep.
//!
//! The oracle is the test's own record, not the crate's: every arm and its deadline, every
//! cancel's answer, and every callback with the thread (the CPU) it ran on and the clock then.
//! Every timer armed and not cancelled fires exactly as often as it asked (once, or once more
//! per re-arm), never before its deadline, on the CPU it was armed on; one cancelled while
//! pending never fires after the cancel; and every CPU drains its timers within a bounded
//! number of steps (no livelock, no lost wake-up).
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
//! inbox's atomics are the crate's plain ones too, so a send or a receive is one step here:
//! the inbox's own interleavings are its loom models' work (`models.rs`).

#![cfg(not(any(loom, miri)))]

use kernel_time::broadcast::Broadcast;
use kernel_time::clockevents::{CpuSet, DeviceSpec, DriverState, EventDriver, EventPassed, Features};
use kernel_time::hrtimer::{Cancel, Expired, TimerId};
use kernel_time::inbox::{Inbox, Receiver};
use kernel_time::tick::deliver::{self, DeliveryContext};
use kernel_time::tick::expiry::{self, ExpiryContext, Outcome};
use kernel_time::tick::{
    Assignment, Changes, CpuTick, DeviceFailure, DeviceId, Handover, Registry, TickMode,
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

/// Inbox messages between CPUs, two words each. The owner's [`Cpu::handle_messages`] turns
/// each into local work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    /// Run the expiry (as the broadcast's wake-up).
    Wake,
    /// Arm timer `n` at `deadline` on the receiving CPU.
    Arm { n: u64, deadline: u64 },
}

impl Message {
    const WAKE: u64 = 0;
    const ARM: u64 = 1;
    fn encode(self) -> [u64; 2] {
        match self {
            Message::Wake => [Self::WAKE << 56, 0],
            Message::Arm { n, deadline } => [(Self::ARM << 56) | n, deadline],
        }
    }
    fn decode(words: [u64; 2]) -> Message {
        match words[0] >> 56 {
            Self::WAKE => Message::Wake,
            Self::ARM => Message::Arm { n: words[0] & ((1 << 56) - 1), deadline: words[1] },
            kind => panic!("unknown message kind {kind}"),
        }
    }
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
    tick: Guard<CpuTick<u64>>,
    /// The broadcast's wake-up IPI (the kernel's `WAKE_VECTOR`).
    wake_ipi: AtomicBool,
    /// The inbox's IPI: messages are waiting.
    message_ipi: AtomicBool,
    inbox: Inbox<[u64; 2]>,
    /// Its local device, if it has one.
    local: Option<(DeviceId, &'static Driver)>,
    /// Its timers pending (as it last counted them) plus the messages sent to it and not yet
    /// handled, in one atomic: a sender adds its message before sending it, the owner counts
    /// what a message armed before it takes the message off, so no reader sees zero while
    /// work is left. Once every CPU's workload is over nothing is sent any more, so a CPU at
    /// zero stays there: the run ends when all are.
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
}

/// The setup's side of the registry's decisions: each assignment carried out as its CPU.
struct Setup<'a> {
    clock: &'static AtomicU64,
    registry: &'a mut Registry,
    bc: &'a spin::Mutex<Broadcast>,
    ticks: &'a mut [CpuTick<u64>],
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
    let mut ticks: Vec<CpuTick<u64>> =
        (0..cpus).map(|c| CpuTick::new(c, mode, clock.load(Ordering::Relaxed), 64)).collect();
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
        .map(|(tick, local)| CpuState {
            tick: Guard::new(tick),
            wake_ipi: AtomicBool::new(false),
            message_ipi: AtomicBool::new(false),
            inbox: Inbox::new(8),
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
    /// Timer number -> (deadline, payload) for each timer armed on this CPU.
    armed: BTreeMap<u64, (u64, u64)>,
    /// (timer number, answer, seq) of each cancel on this CPU.
    cancels: Vec<(u64, Answer, u64)>,
    /// (timer number, CPU it ran on, clock then, seq).
    fires: Vec<(u64, usize, u64, u64)>,
    /// Timer number -> the clock at its first run.
    first_run: BTreeMap<u64, u64>,
    seq: u64,
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
}

impl Record {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
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
    type Payload = u64;
    fn with_tick<R>(&self, f: impl FnOnce(&mut CpuTick<u64>, &spin::Mutex<Broadcast>) -> R) -> Option<R> {
        let mut tick = self.me().tick.try_lock().expect("a CPU's tick re-entered while its guard is held");
        Some(f(&mut tick, &self.m.bc))
    }
    fn now_ns(&self) -> u64 {
        // The CPU's own code takes time: every read may find the clock moved on.
        let step = if thread_rng().gen_ratio(1, 4) { thread_rng().gen_range(0..200) } else { 0 };
        self.m.clock.fetch_add(step, Ordering::Relaxed) + step
    }
    fn run(&self, timer: Expired<u64>, _now_ns: u64) -> Option<(u64, u64)> {
        let at = self.m.clock.load(Ordering::Relaxed);
        let first_run = {
            let mut r = self.record.borrow_mut();
            let seq = r.next_seq();
            r.fires.push((number(timer.payload), self.index, at, seq));
            r.ops += 1;
            *r.first_run.entry(number(timer.payload)).or_insert(at)
        };
        let callbacks = self.callbacks.get() + 1;
        self.callbacks.set(callbacks);
        assert!(
            callbacks <= CALLBACKS_PER_INTERRUPT,
            "CPU {}: {callbacks} callbacks in one interrupt (timer {:#x} at {at}): a livelock",
            self.index,
            number(timer.payload)
        );
        if rearms_until(timer.payload) {
            return (at < first_run + UNTIL_NS).then(|| (timer.deadline_ns.saturating_sub(1), timer.payload));
        }
        let mut rng = thread_rng();
        if cancels_itself(timer.payload) {
            let answer = self.with_tick(|t, _| t.cancel(timer.id)).expect("a tick");
            assert_eq!(answer, Ok(Cancel::Running), "a callback cancelling its own timer finds it running");
        }
        if rng.gen_ratio(1, 8) {
            // A slow callback.
            self.m.clock.fetch_add(rng.gen_range(0..20_000), Ordering::Relaxed);
        }
        if rng.gen_ratio(1, 8) {
            // A callback arms another timer on its CPU (queued; the expiry programs it).
            self.arm(self.random_deadline());
        }
        let left = rearms(timer.payload);
        (left > 0 && !cancels_itself(timer.payload)).then(|| {
            // Re-armed already in the past: must not keep the expiry going.
            (timer.deadline_ns.saturating_sub(1), timer.payload - (1 << 40))
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
            let armed = t.arm(deadline, p, now, bc);
            assert_eq!(t.take_failure(), None, "no device fails here");
            armed
        });
        self.record.borrow_mut().ops += 1;
        match armed.expect("a tick") {
            Ok(id) => {
                assert_eq!(id.cpu(), self.index, "an id names its CPU");
                self.record.borrow_mut().armed.insert(number(p), (deadline, p));
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
        let mut r = self.record.borrow_mut();
        let seq = r.next_seq();
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

    /// Sends `message` to `cpu`'s inbox and raises its IPI; false if the inbox was full.
    fn send(&self, cpu: usize, message: Message) -> bool {
        let target = &self.m.cpus[cpu];
        self.record.borrow_mut().ops += 1;
        target.outstanding.fetch_add(1, Ordering::AcqRel);
        if target.inbox.try_send(message.encode()).is_err() {
            target.outstanding.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        target.message_ipi.store(true, Ordering::Release);
        true
    }

    /// The message IPI: drains this CPU's inbox, turning each message into local work. The one
    /// place a CPU handles what other CPUs ask of it.
    fn handle_messages(&self, rx: &mut Receiver<'_, [u64; 2]>) {
        let mut messages = Vec::new();
        rx.drain(|words| messages.push(Message::decode(words)));
        for message in messages {
            self.record.borrow_mut().ops += 1;
            match message {
                Message::Wake => self.wakeup(),
                Message::Arm { n, deadline } => self.arm_payload(n, deadline),
            }
            self.publish_pending();
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
    fn handle_interrupts(&self, rx: &mut Receiver<'_, [u64; 2]>) {
        let me = self.me();
        let now = self.now();
        if let Some((id, driver)) = me.local
            && driver.take_due(now)
        {
            self.callbacks.set(0);
            self.expired(expiry::device_interrupt(self, id, now));
        }
        if self.index == self.m.broadcast_irq_cpu && self.m.broadcast_device.1.take_due(now) {
            self.broadcast_interrupt(now);
        }
        if me.wake_ipi.swap(false, Ordering::AcqRel) {
            self.wakeup();
        }
        if me.message_ipi.swap(false, Ordering::AcqRel) {
            self.handle_messages(rx);
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
    fn idle(&self, rx: &mut Receiver<'_, [u64; 2]>, deep: bool) {
        if !deep {
            self.sleep(true);
            self.handle_interrupts(rx);
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
                    self.handle_interrupts(rx);
                } else {
                    self.record.borrow_mut().handlers_first += 1;
                    self.handle_interrupts(rx);
                    exit();
                }
            }
            // Its event is due: the local device is armed for it, no sleep.
            Ok(Handover::EventDue) => self.handle_interrupts(rx),
            // The device keeps running in deep idle (no local device): a plain sleep.
            Ok(Handover::NotNeeded) => {
                self.sleep(true);
                self.handle_interrupts(rx);
            }
            Err(refused) => panic!("deep idle refused on CPU {}: {refused}", self.index),
        }
    }

    fn all_done(&self) -> bool {
        self.m.working.load(Ordering::Acquire) == 0
            && self.m.cpus.iter().all(|c| c.outstanding.load(Ordering::Acquire) == 0)
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
        let mut rx = m.cpus[self.index].inbox.receiver().expect("the owner's receiver");
        let cpus = m.cpus.len();
        let mut rng = thread_rng();
        for _ in 0..STEPS {
            self.handle_interrupts(&mut rx);
            match rng.gen_range(0..100) {
                0..30 => self.arm(self.random_deadline()),
                30..42 => self.cancel_one(),
                42..44 => self.cancel_foreign(),
                44..54 => {
                    let to = (self.index + rng.gen_range(1..cpus)) % cpus;
                    let p = self.new_payload();
                    // Not sent (inbox full): it was never armed, and the record knows only
                    // what its target arms.
                    let _ = self.send(to, Message::Arm { n: p, deadline: self.random_deadline() });
                }
                54..58 => {
                    let to = (self.index + rng.gen_range(1..cpus)) % cpus;
                    let _ = self.send(to, Message::Wake);
                }
                58..78 => self.idle(&mut rx, false),
                _ => self.idle(&mut rx, true),
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
            self.handle_interrupts(&mut rx);
            self.publish_pending();
            if self.all_done() {
                break;
            }
            if self.published.get() > 0 {
                turns += 1;
            }
            if turns >= DRAIN_LIMIT {
                let pending: Vec<_> = m.cpus.iter().map(|c| c.outstanding.load(Ordering::Relaxed)).collect();
                panic!(
                    "CPU {}: timers still pending after {DRAIN_LIMIT} turns of idle (clock {}), timers \
                     and messages outstanding per CPU {pending:?}: a lost wake-up or a livelock",
                    self.index,
                    self.now()
                );
            }
            self.idle(&mut rx, drain_deep);
        }
        let mut record = self.record.into_inner();
        record.drain_turns = turns;
        record
    }
}

/// Checks the records of all CPUs against each other (see the module's documentation).
fn check(records: &[Record]) -> u64 {
    let mut fires: BTreeMap<u64, Vec<(usize, u64, u64)>> = BTreeMap::new();
    for r in records {
        for &(n, cpu, at, seq) in &r.fires {
            fires.entry(n).or_default().push((cpu, at, seq));
        }
    }
    let mut armed_anywhere = BTreeMap::new();
    for (cpu, r) in records.iter().enumerate() {
        for (&n, &(deadline, p)) in &r.armed {
            assert!(armed_anywhere.insert(n, cpu).is_none(), "timer {n:#x} armed twice");
            let runs = fires.get(&n).map(Vec::as_slice).unwrap_or(&[]);
            for &(ran_on, at, _) in runs {
                assert_eq!(ran_on, cpu, "timer {n:#x} armed on CPU {cpu} ran on CPU {ran_on}");
                assert!(at >= deadline, "timer {n:#x} ran at {at}, before its deadline {deadline}");
            }
            let cancelled = r.cancels.iter().find(|c| c.0 == n && c.1 == Answer::Cancelled);
            if rearms_until(p) {
                // Ran until the clock was UNTIL_NS past its first run, unless cancelled first.
                let (first, last) = (runs.first().map(|r| r.1), runs.last().map(|r| r.1));
                let done = first.zip(last).is_some_and(|(first, last)| last >= first + UNTIL_NS);
                assert!(
                    done || cancelled.is_some(),
                    "timer {n:#x} (deadline {deadline}) stopped re-arming early: ran {first:?} to {last:?}"
                );
                if let Some(&(_, _, cancel_seq)) = cancelled {
                    assert!(runs.iter().all(|r| r.2 < cancel_seq), "timer {n:#x} ran after it was cancelled");
                }
                continue;
            }
            let expected = if cancels_itself(p) { 1 } else { 1 + rearms(p) as usize };
            match cancelled {
                None => assert_eq!(
                    runs.len(),
                    expected,
                    "timer {n:#x} (deadline {deadline}, on CPU {cpu}) ran {} times, not {expected}",
                    runs.len()
                ),
                Some(&(_, _, cancel_seq)) => {
                    assert!(
                        runs.iter().all(|&(_, _, seq)| seq < cancel_seq),
                        "timer {n:#x} ran after it was cancelled"
                    );
                    assert!(runs.len() < expected, "timer {n:#x} cancelled as pending after its last run");
                }
            }
            for &(m, answer, seq) in r.cancels.iter().filter(|c| c.0 == n) {
                if answer == Answer::Inactive {
                    let before = runs.iter().filter(|r| r.2 < seq).count();
                    let was_cancelled =
                        r.cancels.iter().any(|c| c.0 == m && c.1 == Answer::Cancelled && c.2 < seq);
                    assert!(
                        before == expected || was_cancelled,
                        "timer {n:#x} answered inactive to a cancel after {before} of its {expected} runs"
                    );
                }
            }
        }
    }
    for n in fires.keys() {
        assert!(armed_anywhere.contains_key(n), "timer {n:#x} ran but was never armed");
    }
    records.iter().map(|r| r.ops).sum()
}

/// One schedule: a machine of three CPUs (two with a local device that stops in deep idle, one
/// served by the broadcast device alone), each CPU a thread.
fn one_run(totals: &std::sync::Mutex<[u64; 6]>) {
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
    let ops = check(&records);
    let mut t = totals.lock().unwrap();
    t[0] += 1;
    t[1] += ops;
    t[2] += records.iter().map(|r| r.handovers).sum::<u64>();
    t[3] += records.iter().map(|r| r.exits_first).sum::<u64>();
    t[4] += records.iter().map(|r| r.handlers_first).sum::<u64>();
    t[5] = t[5].max(records.iter().map(|r| r.drain_turns as u64).max().unwrap_or(0));
}

/// Runs `iterations` schedules of [`one_run`] under `scheduler`; prints the figures.
fn run_schedules(scheduler: impl shuttle::scheduler::Scheduler + 'static, iterations: usize, name: &str) {
    let totals: &'static std::sync::Mutex<[u64; 6]> = Box::leak(Box::new(std::sync::Mutex::new([0; 6])));
    let mut config = shuttle::Config::new();
    config.stack_size = 1 << 20;
    config.max_steps = shuttle::MaxSteps::FailAfter(10_000_000);
    shuttle::Runner::new(scheduler, config).run(move || one_run(totals));
    let [runs, ops, handovers, exits_first, handlers_first, drain_turns] = *totals.lock().unwrap();
    println!(
        "{name}: {runs} schedules, {ops} operations on the core, {handovers} deep-idle handovers \
         ({exits_first} left before the handler, {handlers_first} after), at most {drain_turns} \
         idle turns to drain (limit {DRAIN_LIMIT})"
    );
    assert_eq!(runs, iterations as u64);
    assert!(exits_first > 0 && handlers_first > 0, "both idle-exit orders ran");
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
