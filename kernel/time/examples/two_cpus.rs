//! Two CPUs as threads, on the crate's own glue: per-CPU comparators that stop in deep idle, a
//! global comparator the registry makes the broadcast device, timers armed on another CPU while
//! it sleeps deeply, a cancel, a periodic timer, and CPU 0's comparator failing halfway.
//!
//! `cargo run -p kernel-time --example two_cpus`: prints what happens, line by line (the
//! crate's own decisions come through the `log` facade), checks its own record and exits
//! non-zero if a timer ran early, twice, on the wrong CPU, or after its cancel.
//!
//! Platform code, between the `platform` markers (the comparators' driver, each CPU's state,
//! the two trait impls, the bring-up and the CPU loop that takes its interrupts): 96 lines,
//! counted without blank lines, comments and print-only lines (`say!`, `print_interrupt`,
//! `print_sleep`):
//! `awk '/^\/\/ ---- platform: begin/{on=1}/^\/\/ ---- platform: end/{on=0}on' two_cpus.rs |
//! grep -v '^\s*$' | grep -v '^\s*//' | grep -v '^\s*say!\|print_interrupt\|print_sleep' | wc -l`.
//! The crate gives the rest: the glue (`glue::register`, `cpu_online`, `drain`, `wakeup`,
//! `device_interrupt`, `idle`), each CPU's `Mailbox` (handles, inbox, assignment slot), and the
//! registry's take-out and misrouted-event wake-up once `Platform::registry` names it. Before
//! that, the simulated machine (47 lines the same way): what real hardware does (a counter,
//! comparators, the IPI, `hlt`); it never calls the crate. The demo's timers, the printing and
//! the check follow the platform.
//!
//! The clock is real time (`std::time::Instant`): the CPUs are threads that really sleep
//! (`thread::park_timeout`) until their comparator's time or an IPI, so no scheduler has to
//! move a simulated clock, and the lateness printed is what the host's scheduler gave.
//! Nothing checked depends on it: the check asks "not early, once, on its CPU", never "how late".

use kernel_time::broadcast::Broadcast;
use kernel_time::clockevents::{
    CpuSet, DeviceId, DeviceSpec, DriverState, EventDriver, EventPassed, Features,
};
use kernel_time::hrtimer::{Expired, TimerId};
use kernel_time::remote::{Cancelled, Handles};
use kernel_time::tick::expiry::ExpiryContext;
use kernel_time::tick::glue::{self, Mailbox, Platform};
use kernel_time::tick::{CpuTick, Registry, TickMode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Barrier, LazyLock, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// Prints a line with the example's clock and the thread (the CPU) it comes from.
macro_rules! say {
    ($($arg:tt)*) => { print_line(format_args!($($arg)*)) };
}

// ---- the simulated machine: begin ----
// What a real machine's hardware does: a counter, comparators that raise an interrupt on a
// CPU, an IPI, and `hlt`, which sleeps until an interrupt. Nothing here calls the crate.

/// The counter, at 1 GHz (a tick is a ns).
fn now() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed().as_nanos() as u64
}

/// A comparator: the time it fires at (`u64::MAX`: not armed), the CPU its interrupt
/// reaches, whether it is that CPU's own (stopped in deep idle).
struct Comparator {
    irq_cpu: usize,
    local: bool,
    fires_at: AtomicU64,
    /// Set by the demo: from then on every write "finds the counter already past".
    refuses: AtomicBool,
}

impl Comparator {
    /// Its register written: fires at `at` (`u64::MAX`: stopped); false if the write found
    /// the counter already past (then it does not fire).
    fn write(&self, at: u64) -> bool {
        if self.refuses.load(Relaxed) && at != u64::MAX {
            return false;
        }
        self.fires_at.store(at, Relaxed);
        WIRES[self.irq_cpu].thread.get().map(Thread::unpark); // may be asleep with an older time
        true
    }
}

const fn comparator(irq_cpu: usize, local: bool) -> Comparator {
    Comparator { irq_cpu, local, fires_at: AtomicU64::new(u64::MAX), refuses: AtomicBool::new(false) }
}

/// `DeviceId(i)` is `COMPARATORS[i]` (registered in this order): hpet (its interrupt reaches
/// CPU 0), lapic0, lapic1.
static COMPARATORS: [Comparator; 3] = [comparator(0, false), comparator(0, true), comparator(1, true)];

/// A CPU's wires: its pending IPI, and the thread that is the CPU.
struct Wires {
    ipi: AtomicBool,
    thread: OnceLock<Thread>,
}

static WIRES: [Wires; 2] = [const { Wires { ipi: AtomicBool::new(false), thread: OnceLock::new() } }; 2];

/// Raises the IPI on `cpu`.
fn ipi(cpu: usize) {
    WIRES[cpu].ipi.store(true, Release);
    WIRES[cpu].thread.get().map(Thread::unpark);
}

/// The first comparator aimed at CPU `c` that has fired by `now`, its interrupt taken.
fn fired(c: usize, now: u64) -> Option<DeviceId> {
    let take = |d: &Comparator| d.fires_at.try_update(Relaxed, Relaxed, |at| (at <= now).then_some(u64::MAX));
    COMPARATORS.iter().position(|d| d.irq_cpu == c && take(d).is_ok()).map(DeviceId)
}

/// `hlt` on CPU `c`: until an IPI or the time of a comparator aimed at it (in deep idle its
/// own has stopped: only the others count).
fn hlt(c: usize, deep: bool) {
    print_sleep(c, deep, true);
    loop {
        let aimed = COMPARATORS.iter().filter(|d| d.irq_cpu == c && !(deep && d.local));
        let (at, now) = (aimed.map(|d| d.fires_at.load(Relaxed)).min().unwrap_or(u64::MAX), now());
        if WIRES[c].ipi.load(Acquire) || at <= now {
            break;
        }
        thread::park_timeout(Duration::from_nanos(at - now));
    }
    print_sleep(c, deep, false);
}

// ---- the simulated machine: end ----

// ---- platform: begin ----

/// The comparators' driver, as the crate programs them.
impl EventDriver for Comparator {
    fn switch_state(&self, _: DriverState) {
        self.write(u64::MAX);
    }
    fn set_next_event(&self, delta_ticks: u64) -> Result<(), EventPassed> {
        self.write(now() + delta_ticks).then_some(()).ok_or(EventPassed)
    }
}

/// One CPU's time state: its tick (taken by its own thread only: the guard's scope is
/// "interrupts off") and the mailbox other CPUs post to.
struct CpuState {
    tick: spin::Mutex<CpuTick<Timer>>,
    mailbox: Mailbox<Timer>,
}

static REGISTRY: LazyLock<spin::Mutex<Registry>> = LazyLock::new(Default::default);
static BROADCAST: spin::Mutex<Broadcast> = spin::Mutex::new(Broadcast::new());
static CPUS: LazyLock<[CpuState; 2]> = LazyLock::new(|| {
    [0, 1].map(|c| {
        let mut tick = CpuTick::new(c, TickMode::Oneshot, now(), 16);
        tick.reserve_for_handles(8);
        CpuState { tick: spin::Mutex::new(tick), mailbox: Mailbox::new(c, 8) }
    })
});

/// A CPU, as the crate's expiry loop and glue see it.
struct Cpu(usize);

impl ExpiryContext for Cpu {
    type Payload = Timer;
    fn with_tick<R>(&self, f: impl FnOnce(&mut CpuTick<Timer>, &spin::Mutex<Broadcast>) -> R) -> Option<R> {
        Some(f(&mut CPUS[self.0].tick.try_lock().expect("only its own CPU, never nested"), &BROADCAST))
    }
    fn now_ns(&self) -> u64 {
        now()
    }
    fn run(&self, timer: Expired<Timer>, _now_ns: u64) -> Option<(u64, Timer)> {
        run_timer(timer) // the demo's callbacks, below
    }
    fn handle_of(&self, timer: &Timer) -> Option<TimerId> {
        timer.handle
    }
    fn handles(&self) -> Option<&Handles<Timer>> {
        Some(&CPUS[self.0].mailbox.handles)
    }
}

impl Platform for Cpu {
    fn cpu(&self) -> usize {
        self.0
    }
    fn with_broadcast<R>(&self, f: impl FnOnce(&mut Broadcast) -> R) -> R {
        f(&mut BROADCAST.lock())
    }
    fn send_wakeup(&self, cpu: usize) {
        ipi(cpu);
    }
    fn registry(&self) -> Option<&spin::Mutex<Registry>> {
        Some(&REGISTRY)
    }
    fn mailbox(&self, cpu: usize) -> Option<&Mailbox<Timer>> {
        Some(&CPUS[cpu].mailbox)
    }
}

/// CPU 0 registers the comparators, once both CPUs are online: 1 GHz, deltas from 1 us to 4 s.
fn register_devices(cpu: &Cpu) {
    let local = Features::ONESHOT | Features::PER_CPU | Features::STOPS_IN_DEEP_IDLE;
    let (all, one, global) = (CpuSet::first(2), CpuSet::single, Features::ONESHOT);
    let specs = [("hpet", all, global, 50), ("lapic0", one(0), local, 100), ("lapic1", one(1), local, 100)];
    for ((name, cpus, features, rating), driver) in specs.into_iter().zip(&COMPARATORS) {
        let (name, frequency_hz, min_delta_ticks, max_delta_ticks) =
            (name.into(), 1_000_000_000, 1_000, 1 << 32);
        let spec =
            DeviceSpec { name, features, rating, cpus, frequency_hz, min_delta_ticks, max_delta_ticks };
        glue::register(cpu, &mut REGISTRY.lock(), spec, driver);
    }
}

static ONLINE: Barrier = Barrier::new(2);

/// CPU `c`'s life: online; then IPIs, device interrupts and idle (CPU 0 shallow, CPU 1 deep)
/// until the demo is over and its queue is empty.
fn cpu_main(c: usize) {
    let cpu = Cpu(c);
    WIRES[c].thread.set(thread::current()).unwrap();
    glue::cpu_online(&cpu, &mut REGISTRY.lock());
    ONLINE.wait();
    if c == 0 {
        register_devices(&cpu);
        demo_start(&cpu);
    }
    loop {
        if WIRES[c].ipi.swap(false, AcqRel) {
            print_drained(glue::drain(&cpu));
            glue::wakeup(&cpu, now());
        }
        while let Some(device) = fired(c, now()) {
            print_interrupt(&cpu, device);
            glue::device_interrupt(&cpu, device);
        }
        if DONE.load(Acquire) && cpu.with_tick(|t, _| t.pending()) == Some(0) {
            break;
        }
        match c {
            0 => hlt(c, false),
            _ => drop(glue::idle(&cpu, |deep| hlt(c, deep))),
        }
    }
}

// ---- platform: end ----

/// Set by the demo's last timer: each CPU leaves once its queue is empty.
static DONE: AtomicBool = AtomicBool::new(false);

fn main() {
    log::set_logger(&LOG).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    let cpus: Vec<_> = (0..2)
        .map(|c| thread::Builder::new().name(format!("cpu{c}")).spawn(move || cpu_main(c)).unwrap())
        .collect();
    for cpu in cpus {
        cpu.join().expect("a CPU panicked");
    }
    std::process::exit(if check() { 0 } else { 1 });
}

// ---- the demo's timers ----

/// What a demo timer's callback does besides being recorded.
#[derive(Clone, Copy, PartialEq)]
enum Action {
    Nothing,
    /// Posts the CPU 1 timers to CPU 1 (asleep in deep idle), through its handles and inbox.
    PostToCpu1,
    /// Cancels CPU 1's timer "two" from CPU 0.
    CancelTwo,
    /// lapic0 refuses every deadline from now on.
    BreakLapic0,
    /// The demo is over.
    End,
}

/// A demo timer: its name, its CPU, its first deadline and period (ms; 0: one-shot), how many
/// times it runs, and its action.
struct Plan {
    name: &'static str,
    cpu: usize,
    at_ms: u64,
    period_ms: u64,
    runs: u32,
    action: Action,
}

const fn plan(name: &'static str, cpu: usize, at_ms: u64, period_ms: u64, runs: u32, action: Action) -> Plan {
    Plan { name, cpu, at_ms, period_ms, runs, action }
}

static PLANS: [Plan; 9] = [
    plan("tick", 0, 60, 60, 8, Action::Nothing),
    plan("post", 0, 100, 0, 1, Action::PostToCpu1),
    plan("cancel", 0, 150, 0, 1, Action::CancelTwo),
    plan("break", 0, 270, 0, 1, Action::BreakLapic0),
    plan("after", 0, 350, 0, 1, Action::Nothing),
    plan("end", 0, 600, 0, 1, Action::End),
    plan("one", 1, 200, 0, 1, Action::Nothing),
    plan("two", 1, 450, 0, 1, Action::Nothing),
    plan("three", 1, 420, 0, 1, Action::Nothing),
];

/// A timer's payload: its plan, its run, and its handle if it was posted from another CPU.
struct Timer {
    plan: &'static Plan,
    run: u32,
    handle: Option<TimerId>,
}

fn deadline(plan: &Plan, run: u32) -> u64 {
    (plan.at_ms + u64::from(run) * plan.period_ms) * 1_000_000
}

/// Each callback's run: (timer, the thread it ran on, a fresh clock read).
static RECORD: Mutex<Vec<(&'static str, String, u64)>> = Mutex::new(Vec::new());
/// CPU 1's "two": its handle, then the cancel's answer.
static TWO: Mutex<Option<TimerId>> = Mutex::new(None);
static TWO_CANCEL: Mutex<Option<Cancelled>> = Mutex::new(None);

/// CPU 0 arms its own timers once it is online.
fn demo_start(cpu: &Cpu) {
    if cpu.0 != 0 {
        return;
    }
    for plan in PLANS.iter().filter(|p| p.cpu == 0) {
        let timer = Timer { plan, run: 0, handle: None };
        let now = now();
        let failure = cpu.with_tick(|t, bc| {
            t.arm(deadline(plan, 0), timer, now, bc).map_err(|r| r.error).expect("armed");
            t.take_failure()
        });
        failure.flatten().into_iter().for_each(|f| cpu.take_out(f));
        let every = if plan.period_ms > 0 {
            format!(", every {} ms, {} runs", plan.period_ms, plan.runs)
        } else {
            String::new()
        };
        say!("armed {:6} at {:>4} ms{every}", plan.name, plan.at_ms);
    }
}

/// A timer's callback: recorded, printed, its action done; a periodic one goes on.
fn run_timer(mut timer: Expired<Timer>) -> Option<(u64, Timer)> {
    let at = now(); // read here: the crate never saw this read
    let plan = timer.payload.plan;
    let on = thread::current().name().unwrap_or("?").to_string();
    let late_us = (at as i64 - deadline(plan, timer.payload.run) as i64) / 1_000;
    say!(
        "timer {:6} (deadline {:>4} ms) ran, {late_us} us late",
        plan.name,
        deadline(plan, timer.payload.run) / 1_000_000
    );
    RECORD.lock().unwrap().push((plan.name, on, at));
    match plan.action {
        Action::Nothing => {}
        Action::PostToCpu1 => {
            for plan in PLANS.iter().filter(|p| p.cpu == 1) {
                let handle = CPUS[1]
                    .mailbox
                    .post(deadline(plan, 0), |h| Timer { plan, run: 0, handle: Some(h) })
                    .map_err(|r| r.error)
                    .expect("room in CPU 1's handles and inbox");
                say!(
                    "  posted {:6} at {:>4} ms to CPU 1 (its handle names CPU {})",
                    plan.name,
                    plan.at_ms,
                    handle.cpu()
                );
                if plan.name == "two" {
                    *TWO.lock().unwrap() = Some(handle);
                }
            }
            say!("  IPI to CPU 1");
            ipi(1);
        }
        Action::CancelTwo => {
            let id = TWO.lock().unwrap().expect("posted");
            let answer = CPUS[1].mailbox.cancel(id).expect("CPU 1's handle");
            say!("  cancelled \"two\" on CPU 1: {answer:?}");
            *TWO_CANCEL.lock().unwrap() = Some(answer);
            if answer == Cancelled::Pending {
                // Not needed for correctness (CPU 1 would find it cancelled at its deadline):
                // CPU 1 reclaims its slot now, from the note the cancel left in its inbox.
                ipi(1);
            }
        }
        Action::BreakLapic0 => {
            COMPARATORS[1].refuses.store(true, Relaxed);
            say!("  lapic0 refuses every deadline from now on");
        }
        Action::End => {
            DONE.store(true, Release);
            ipi(1);
        }
    }
    timer.payload.run += 1;
    (timer.payload.run < plan.runs).then(|| (deadline(plan, timer.payload.run), timer.payload))
}

// ---- the check ----

/// Every timer ran as often as planned (the cancelled one never), never before its deadline,
/// on its CPU.
fn check() -> bool {
    let record = RECORD.lock().unwrap();
    let mut ok = true;
    for plan in &PLANS {
        let runs: Vec<_> = record.iter().filter(|r| r.0 == plan.name).collect();
        let cancel = (plan.name == "two").then(|| TWO_CANCEL.lock().unwrap().expect("cancelled"));
        // A cancel answers truthfully: pending -> never runs; otherwise it had run (a host so
        // slow that the cancel came after its deadline).
        let expected = if cancel == Some(Cancelled::Pending) { 0 } else { plan.runs as usize };
        if runs.len() != expected {
            say!("FAIL: {} ran {} times, not {expected}", plan.name, runs.len());
            ok = false;
        }
        for (run, (_, on, at)) in runs.iter().enumerate() {
            let deadline = deadline(plan, run as u32);
            if *on != format!("cpu{}", plan.cpu) || *at < deadline {
                say!(
                    "FAIL: {} run {run} on {on} at {at} ns: armed on cpu{} for {deadline} ns",
                    plan.name,
                    plan.cpu
                );
                ok = false;
            }
        }
    }
    say!(
        "check: {} ({} callbacks)",
        if ok { "every timer ran as planned, never early, on its CPU" } else { "FAILED" },
        record.len()
    );
    ok
}

// ---- printing ----

fn print_line(args: std::fmt::Arguments) {
    let t = now() as f64 / 1e6;
    println!("{t:8.3} ms  {:4}  {args}", thread::current().name().unwrap_or("?"));
}

/// What a wake-up IPI's drain did, if anything.
fn print_drained(drained: Option<kernel_time::remote::Drained>) {
    if let Some(d) = drained.filter(|d| d.armed + d.reclaimed > 0) {
        say!("IPI: inbox drained: {} posted timers armed, {} cancelled ones reclaimed", d.armed, d.reclaimed);
    }
}

/// A CPU going to sleep (`going`) or woken.
fn print_sleep(c: usize, deep: bool, going: bool) {
    match (deep, going) {
        (true, true) => say!("deep idle: lapic{c} stopped, its next deadline is the broadcast's"),
        (true, false) => say!("woken from deep idle"),
        _ => {}
    }
}

/// The broadcast device's interrupt, as it comes (a local one shows in its timers' lines).
fn print_interrupt(cpu: &Cpu, device: DeviceId) {
    if cpu.is_broadcast_device(device) {
        say!("interrupt from hpet, the broadcast device");
    }
}

/// The crate's own log lines (its decisions), printed as ours.
struct Log;
static LOG: Log = Log;
/// Lines "increased its minimum delta" in a row, and the last.
static GROWN: Mutex<(u32, String)> = Mutex::new((0, String::new()));

impl log::Log for Log {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        // The crate logs each growth of a device's minimum delta (19 before lapic0 is given
        // up): the first is printed, then the last with the count.
        let line = record.args().to_string();
        let mut grown = GROWN.lock().unwrap();
        if line.contains("increased its minimum delta") {
            grown.0 += 1;
            if grown.0 > 1 {
                grown.1 = line;
                return;
            }
        } else if grown.0 > 1 {
            say!("[kernel-time] {} (the last of {} such lines)", grown.1, grown.0);
            *grown = (0, String::new());
        }
        say!("[kernel-time] {line}");
    }
    fn flush(&self) {}
}
