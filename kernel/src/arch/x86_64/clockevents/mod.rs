//! Clock events on this machine: the HPET comparators and LAPIC timers registered with the
//! time layer's [`TickSystem`], the interrupt paths that feed it, and the timer API the rest
//! of the kernel uses (`arm_at`, `arm_after`, `cancel`, `sleep_ns`).
//!
//! The tick system lives behind one lock taken with interrupts disabled; device interrupts and
//! broadcast wake-up IPIs take it briefly, then run the expired timers' callbacks outside it
//! (a callback may arm the next timer). A CPU arms and cancels only its own timers.

pub mod hpet;
pub mod lapic;

use super::platform::Platform;
use super::smp::{self, percpu};
use super::{interrupts, lapic as apic};
use crate::cmdline::{ClockeventsChoice, KernelOptions};
use crate::time::clockevents::{CpuSet, DeviceSpec, Features, State};
use crate::time::clocksource::now_ns;
use crate::time::hrtimer::{Expired, TimerId};
use crate::time::tick::{ArmError, DeviceId, TickMode, TickSystem};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use hpet::{Delivery, HpetChannel, Role};
use spin::Mutex;
use x86_64::instructions::interrupts::without_interrupts;

/// What a timer callback learns.
#[derive(Debug, Clone, Copy)]
pub struct TimerEvent {
    pub cpu: usize,
    pub id: TimerId,
    pub deadline_ns: u64,
    /// The clocksource when the callback started.
    pub now_ns: u64,
    pub data: u64,
}

/// A timer callback; it runs in interrupt context on the CPU that armed it.
pub type TimerFn = fn(&TimerEvent);
type Payload = (TimerFn, u64);

static TICK: Mutex<Option<TickSystem<Payload>>> = Mutex::new(None);

/// Vector of the broadcast wake-up IPI (a system vector, above the allocatable range).
pub const WAKE_VECTOR: u8 = 0xf1;

fn with_tick<R>(f: impl FnOnce(&mut TickSystem<Payload>) -> R) -> Option<R> {
    without_interrupts(|| TICK.lock().as_mut().map(f))
}

fn this_cpu() -> usize {
    percpu::this_cpu().index
}

/// Arms a timer on the calling CPU at `deadline_ns` of the clocksource.
pub fn arm_at(deadline_ns: u64, f: TimerFn, data: u64) -> Result<TimerId, ArmError> {
    let cpu = this_cpu();
    with_tick(|t| t.arm(cpu, deadline_ns, (f, data), now_ns())).unwrap_or(Err(ArmError::NoTickDevice(cpu)))
}

/// Arms a timer on the calling CPU `delay_ns` from now.
pub fn arm_after(delay_ns: u64, f: TimerFn, data: u64) -> Result<TimerId, ArmError> {
    arm_at(now_ns().saturating_add(delay_ns), f, data)
}

/// Cancels a timer of the calling CPU; true if it had not run.
pub fn cancel(id: TimerId) -> bool {
    let cpu = this_cpu();
    with_tick(|t| t.cancel(cpu, id).is_some()).unwrap_or(false)
}

static SLEEP_WAKEUPS: [AtomicU64; percpu::MAX_CPUS] = [const { AtomicU64::new(0) }; percpu::MAX_CPUS];

fn sleep_done(e: &TimerEvent) {
    SLEEP_WAKEUPS[e.cpu].fetch_add(1, Ordering::Release);
}

/// Halts the calling CPU for at least `ns` (interrupts must be enabled).
pub fn sleep_ns(ns: u64) -> Result<(), ArmError> {
    use x86_64::instructions::interrupts;
    let cpu = this_cpu();
    let before = SLEEP_WAKEUPS[cpu].load(Ordering::Acquire);
    arm_after(ns, sleep_done, 0)?;
    loop {
        // Check with interrupts off, then `sti; hlt`, which takes no interrupt between the two
        // instructions: a wake-up that lands after the check still ends the halt. (Checking
        // with interrupts on loses a wake-up that lands between the check and the `hlt`.)
        interrupts::disable();
        if SLEEP_WAKEUPS[cpu].load(Ordering::Acquire) != before {
            interrupts::enable();
            return Ok(());
        }
        interrupts::enable_and_hlt();
    }
}

/// Fallbacks taken after bring-up (in interrupt context), for the report.
static RUNTIME_FALLBACKS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn runtime_fallback(reason: String) {
    log::warn!("fallback: {reason}");
    without_interrupts(|| RUNTIME_FALLBACKS.lock().push(reason));
}

/// Takes a device out of service at run time (its CPUs move to the next best device with
/// their pending events); the tick layer records why, for the report.
fn take_out(device: usize, reason: String) {
    let now = now_ns();
    with_tick(|t| t.take_out(DeviceId(device), &reason, now));
}

fn run_expired(cpu: usize, expired: Vec<Expired<Payload>>) {
    for e in expired {
        let (f, data) = e.payload;
        f(&TimerEvent { cpu, id: e.id, deadline_ns: e.deadline_ns, now_ns: now_ns(), data });
    }
}

/// A clock event device interrupted this CPU (called by the device drivers' handlers).
/// When each CPU last entered a clock event interrupt (device or wake-up), for the benchmark's
/// deadline -> handler lateness.
static INTERRUPT_ENTRY_NS: [AtomicU64; percpu::MAX_CPUS] = [const { AtomicU64::new(0) }; percpu::MAX_CPUS];

/// The clocksource time at which `cpu` last entered a clock event interrupt.
pub fn last_interrupt_entry_ns(cpu: usize) -> u64 {
    INTERRUPT_ENTRY_NS[cpu].load(Ordering::Relaxed)
}

pub(super) fn device_interrupt(device: usize) {
    let cpu = this_cpu();
    let now = now_ns();
    INTERRUPT_ENTRY_NS[cpu].store(now, Ordering::Relaxed);
    let Some(fired) = with_tick(|t| t.device_event(DeviceId(device), cpu, now)) else { return };
    for other in fired.wake.iter() {
        if let Some(c) = percpu::cpu(other) {
            apic::send_ipi(c.apic_id, WAKE_VECTOR);
        }
    }
    run_expired(cpu, fired.expired);
}

fn wake_interrupt(_vector: u8) {
    let cpu = this_cpu();
    let now = now_ns();
    INTERRUPT_ENTRY_NS[cpu].store(now, Ordering::Relaxed);
    if let Some(expired) = with_tick(|t| t.wakeup(cpu, now)) {
        run_expired(cpu, expired);
    }
}

/// What became of one HPET comparator.
#[derive(Debug, Clone)]
pub struct ComparatorOutcome {
    pub index: usize,
    pub delivery: Option<Delivery>,
    /// `percpu`, `global`, `unused` or `failed`.
    pub role: &'static str,
    pub cpu: Option<usize>,
    pub selftest_irqs: u64,
}

/// What the clockevents bring-up decided.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    pub rule: String,
    pub comparators: Vec<ComparatorOutcome>,
}

/// Builds the tick system: HPET comparators (delivery, plan, self-test, registration), then
/// every CPU's LAPIC timer. Fallbacks go to `platform`.
pub fn init(platform: &mut Platform, options: &KernelOptions) -> Setup {
    let mode = if options.periodic_tick { TickMode::Periodic { hz: options.hz } } else { TickMode::Oneshot };
    let mut system = TickSystem::new(mode);
    let now = now_ns();
    for cpu in percpu::all() {
        system.cpu_online(cpu.index, now);
    }
    *TICK.lock() = Some(system);
    if let Err(e) = interrupts::register(WAKE_VECTOR, wake_interrupt) {
        platform.fall_back(format!("broadcast wake-up vector unavailable ({e}): broadcast cannot wake CPUs"));
    }
    log::info!("tick {mode}, clockevents={}", options.clockevents);

    let setup = match platform.hpet {
        Some(h) => init_hpet(h, platform, options),
        None => Setup { rule: "no HPET: LAPIC timer only".into(), comparators: Vec::new() },
    };
    log::info!("{}", setup.rule);
    init_lapic_timers(platform, options);

    for t in tick_devices() {
        match (&t.device, t.via_broadcast) {
            (Some(d), false) => log::info!("CPU {} -> {d} (local, {})", t.cpu, t.mode),
            (Some(d), true) => log::info!("CPU {} -> broadcast from {d} ({})", t.cpu, t.mode),
            (None, _) => {
                platform.fall_back(format!("CPU {} has no clock event device: its timers cannot fire", t.cpu))
            }
        }
    }
    if let Some(b) = broadcast_device() {
        log::info!("broadcast device {b}");
    }
    BRINGUP_NS.store(now_ns(), Ordering::Relaxed);
    setup
}

fn init_hpet(h: &'static super::hpet::Hpet, platform: &mut Platform, options: &KernelOptions) -> Setup {
    hpet::set_read_counter(options.hpet_counter_read);
    use super::hpet::ComparatorConfig;
    use super::ioapic::IOAPICS;
    let caps: Vec<hpet::ComparatorCaps> = (0..h.comparators())
        .map(|index| {
            let c = h.comparator_config(index);
            hpet::ComparatorCaps {
                index,
                route_cap: c.route_capability(),
                fsb: c.contains(ComparatorConfig::FSB_CAPABLE),
            }
        })
        .collect();
    let mut outcomes: Vec<ComparatorOutcome> = caps
        .iter()
        .map(|c| ComparatorOutcome {
            index: c.index,
            delivery: None,
            role: "unused",
            cpu: None,
            selftest_irqs: 0,
        })
        .collect();
    if options.clockevents == ClockeventsChoice::Lapic {
        return Setup { rule: hpet::plan(&[], 0, ClockeventsChoice::Lapic).rule, comparators: outcomes };
    }

    let isa = platform.firmware.isa_gsis.clone();
    let legacy_gsis = h.capabilities().legacy_route_capable().then(|| (isa[0], isa[8]));
    let deliveries = hpet::choose_deliveries(&caps, legacy_gsis, |cap| {
        let mut io = IOAPICS.lock();
        let gsi = io.find_free(cap, &isa)?;
        io.claim(gsi, "HPET comparator").ok()?;
        Some(gsi)
    });
    for (o, d) in outcomes.iter_mut().zip(&deliveries) {
        o.delivery = *d;
        match d {
            Some(Delivery::Legacy { gsi }) => {
                // IRQ0 and IRQ8 belong to the PIT and the RTC; legacy mode takes them over.
                if let Err(e) = IOAPICS.lock().claim(*gsi, "HPET legacy route") {
                    log::warn!("HPET comparator {}: {e}", o.index);
                }
                log::info!("HPET comparator {}: {d}", o.index, d = Delivery::Legacy { gsi: *gsi });
            }
            Some(d) => log::info!("HPET comparator {}: {d}", o.index),
            None => log::info!("HPET comparator {}: no usable route (no FSB, no free IOAPIC pin)", o.index),
        }
    }

    let cpus: Vec<&percpu::PerCpu> = percpu::all().collect();
    let mut channels: Vec<Option<&'static HpetChannel>> = alloc::vec![None; caps.len()];
    let mut failed: Vec<usize> = Vec::new();
    // Plan, self-test what the plan uses on its target CPU, and plan again without the
    // comparators that failed until a plan stands (per-CPU -> global -> LAPIC only).
    let (usable, plan) = loop {
        let usable: Vec<usize> =
            (0..caps.len()).filter(|&i| deliveries[i].is_some() && !failed.contains(&i)).collect();
        let plan = hpet::plan(&usable, cpus.len(), options.clockevents);
        let mut new_failure = false;
        for (&index, &role) in usable.iter().zip(&plan.roles) {
            let target = match role {
                Role::Unused => continue,
                Role::PerCpu(c) => c,
                Role::Global => global_target(&plan.roles),
            };
            let apic_id = cpus[target].apic_id;
            let channel = match channels[index] {
                Some(ch) => {
                    ch.route_to(apic_id);
                    ch
                }
                None => match HpetChannel::new(h, index, deliveries[index].expect("usable"), apic_id) {
                    Ok(ch) => {
                        if options.hpet_irq_masked == Some(index as u32) {
                            log::warn!(
                                "HPET comparator {index}: interrupt line left masked (hpet_irq_masked)"
                            );
                            ch.mask_line();
                        }
                        channels[index] = Some(ch);
                        ch
                    }
                    Err(e) => {
                        platform.fall_back(format!("HPET comparator {index} unusable: {e}"));
                        failed.push(index);
                        new_failure = true;
                        continue;
                    }
                },
            };
            match channel.selftest() {
                Ok(n) => {
                    log::info!("HPET comparator {index}: self-test on CPU {target}: {n} interrupts, passed");
                    outcomes[index].selftest_irqs = n;
                }
                Err(n) => {
                    outcomes[index].selftest_irqs = n;
                    platform.fall_back(format!(
                        "HPET comparator {index} failed its interrupt self-test on CPU {target} ({n} of {} interrupts within {} ms of HPET time each): taken out",
                        hpet::SELFTEST_IRQS,
                        hpet::SELFTEST_WAIT_NS / 1_000_000
                    ));
                    failed.push(index);
                    new_failure = true;
                }
            }
        }
        if !new_failure {
            break (usable, plan);
        }
    };

    let online = CpuSet::first(cpus.len());
    for (&index, &role) in usable.iter().zip(&plan.roles) {
        let Some(channel) = channels[index] else { continue };
        let periodic = h.comparator_config(index).contains(super::hpet::ComparatorConfig::PERIODIC_CAPABLE);
        let mut features = Features::ONESHOT;
        if periodic {
            features |= Features::PERIODIC;
        }
        let (name, rating, served) = match role {
            Role::Unused => continue,
            Role::PerCpu(c) => {
                features |= Features::PER_CPU;
                outcomes[index].role = "percpu";
                outcomes[index].cpu = Some(c);
                (format!("hpet{index}"), hpet::PER_CPU_RATING, CpuSet::single(c))
            }
            Role::Global => {
                outcomes[index].role = "global";
                outcomes[index].cpu = Some(global_target(&plan.roles));
                (format!("hpet{index}"), hpet::GLOBAL_RATING, online)
            }
        };
        let spec = DeviceSpec {
            name,
            features,
            rating,
            cpus: served,
            frequency_hz: h.frequency_hz(),
            min_delta_ticks: hpet::MIN_DELTA_TICKS,
            max_delta_ticks: hpet::MAX_DELTA_TICKS,
        };
        let target = outcomes[index].cpu.expect("set above");
        // Registered on the CPU it serves (the selection may program it at once).
        if let Err(e) = register_on(target, spec, channel) {
            platform.fall_back(format!("HPET comparator {index} not registered on CPU {target}: {e}"));
            outcomes[index].role = "failed";
            outcomes[index].cpu = None;
        }
    }
    for &index in &failed {
        outcomes[index].role = "failed";
    }
    if let Some(victim) = options.hpet_storm {
        inject_storm(h, &outcomes, victim as usize);
    }
    // Pins of comparators that serve nobody go back to the pool (masked).
    for o in outcomes.iter().filter(|o| matches!(o.role, "unused" | "failed")) {
        if let Some(Delivery::Ioapic { gsi }) = o.delivery
            && let Err(e) = IOAPICS.lock().release(gsi)
        {
            log::warn!("HPET comparator {}: {e}", o.index);
        }
    }
    Setup { rule: plan.rule, comparators: outcomes }
}

/// Fault injection (`hpet_storm=N`): an unused comparator is routed onto comparator N's
/// level-triggered pin and fires once, never cleared, so the line stays asserted while N's
/// status bit is clear: a storm N's handler must detect and stop.
fn inject_storm(h: &super::hpet::Hpet, outcomes: &[ComparatorOutcome], victim: usize) {
    use super::hpet::ComparatorConfig;
    let Some(Some(Delivery::Ioapic { gsi })) = outcomes.get(victim).map(|o| o.delivery) else {
        log::warn!("hpet_storm={victim}: comparator {victim} has no IOAPIC line; nothing injected");
        return;
    };
    let Some(culprit) = outcomes
        .iter()
        .find(|o| o.role == "unused" && h.comparator_config(o.index).route_capability() & (1 << gsi) != 0)
    else {
        log::warn!("hpet_storm={victim}: no unused comparator can reach GSI {gsi}; nothing injected");
        return;
    };
    let config = (h.comparator_config(culprit.index)
        & (ComparatorConfig::PERIODIC_CAPABLE
            | ComparatorConfig::SIZE_64_CAPABLE
            | ComparatorConfig::FSB_CAPABLE))
        .with_route(gsi as u8)
        | ComparatorConfig::LEVEL_TRIGGERED
        | ComparatorConfig::INTERRUPT_ENABLE
        | ComparatorConfig::MODE_32BIT;
    h.set_comparator_config(culprit.index, config);
    h.set_comparator(culprit.index, u64::from((h.counter() as u32).wrapping_add(100_000)));
    log::warn!(
        "hpet_storm={victim}: comparator {} raises GSI {gsi} (comparator {victim}'s line) in 1 ms and is never cleared",
        culprit.index
    );
}

/// The CPU the global device interrupts: the first one without a per-CPU comparator (it is
/// then served without an IPI), else CPU 0.
fn global_target(roles: &[Role]) -> usize {
    let per_cpu = roles.iter().filter(|r| matches!(r, Role::PerCpu(_))).count();
    if per_cpu < percpu::all().count() { per_cpu } else { 0 }
}

/// Registers a device whose interrupts reach the time layer through `attach(device index)`;
/// `attach` runs first, under the lock, because the selection may program the device at once.
fn register_attached(
    spec: DeviceSpec,
    driver: &'static dyn crate::time::clockevents::EventDriver,
    attach: impl FnOnce(usize),
) -> Option<DeviceId> {
    with_tick(|t| {
        attach(t.next_device_id().0);
        t.register(spec, driver, now_ns())
    })
}

/// What `register_on` hands to the target CPU (one registration at a time).
static PENDING_REGISTRATION: Mutex<Option<(DeviceSpec, &'static HpetChannel)>> = Mutex::new(None);

fn register_here(_: u64) -> u64 {
    let Some((spec, channel)) = PENDING_REGISTRATION.lock().take() else { return u64::MAX };
    register_attached(spec, channel, |id| channel.attach(id)).map_or(u64::MAX, |id| id.0 as u64)
}

/// Registers an HPET channel on CPU `cpu`, where the selection's programming of it must run.
fn register_on(
    cpu: usize,
    spec: DeviceSpec,
    channel: &'static HpetChannel,
) -> Result<DeviceId, smp::CallError> {
    *PENDING_REGISTRATION.lock() = Some((spec, channel));
    smp::call_on(cpu, register_here, 0).map(|id| DeviceId(id as usize))
}

static LAPIC_VECTOR: AtomicU64 = AtomicU64::new(0);
static LAPIC_HZ: AtomicU64 = AtomicU64::new(0);
static LAPIC_ARAT: AtomicU64 = AtomicU64::new(0);
static LAPIC_TSC_DEADLINE: AtomicU64 = AtomicU64::new(0);

fn register_lapic_here(_: u64) -> u64 {
    let (timer, spec) = lapic::LapicTimer::for_this_cpu(
        LAPIC_VECTOR.load(Ordering::Relaxed) as u8,
        LAPIC_HZ.load(Ordering::Relaxed),
        super::tsc::frequency_hz(),
        LAPIC_TSC_DEADLINE.load(Ordering::Relaxed) != 0,
        LAPIC_ARAT.load(Ordering::Relaxed) != 0,
    );
    register_attached(spec, timer, |id| timer.attach(id)).map_or(u64::MAX, |id| id.0 as u64)
}

fn init_lapic_timers(platform: &mut Platform, options: &KernelOptions) {
    if options.no_apic_timer {
        log::info!("noapictimer: LAPIC timers left out");
        return;
    }
    if options.clockevents == ClockeventsChoice::Global && platform.hpet.is_some() {
        log::info!("clockevents=global: LAPIC timers left out so that the global device serves every CPU");
        return;
    }
    let Some(calibration) = platform.calibration else {
        if platform.lapic.is_some() {
            platform.fall_back("LAPIC timer uncalibrated: not used as a clock event device".into());
        }
        return;
    };
    let vector = match lapic::allocate_vector() {
        Ok(v) => v,
        Err(e) => {
            platform.fall_back(format!("no vector for the LAPIC timer ({e}): not used"));
            return;
        }
    };
    LAPIC_VECTOR.store(u64::from(vector), Ordering::Relaxed);
    LAPIC_HZ.store(calibration.lapic_timer_hz, Ordering::Relaxed);
    let features = apic::features();
    LAPIC_ARAT.store(u64::from(features.arat), Ordering::Relaxed);
    LAPIC_TSC_DEADLINE.store(u64::from(features.tsc_deadline), Ordering::Relaxed);
    if features.tsc_deadline {
        log::info!("LAPIC timers in TSC-deadline mode ({} Hz)", super::tsc::frequency_hz());
    }
    for cpu in percpu::all() {
        if let Err(e) = smp::call_on(cpu.index, register_lapic_here, 0) {
            platform.fall_back(format!("LAPIC timer of CPU {} not registered: {e}", cpu.index));
        }
    }
}

/// Clocksource time when every CPU had its tick device (the self-tests included).
static BRINGUP_NS: AtomicU64 = AtomicU64::new(0);

pub fn bringup_ns() -> u64 {
    BRINGUP_NS.load(Ordering::Relaxed)
}

/// What programming one event costs on the device serving the calling CPU.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProgrammingCost {
    /// Median TSC cycles of one `set_next_event`.
    pub cycles: u64,
    /// Register accesses (HPET MMIO, LAPIC MMIO or MSR) per event.
    pub register_accesses: u64,
}

/// Programs the device serving the calling CPU `samples` times (1 ms ahead) and measures it;
/// then programs the CPU's real next event again. `None` without a device.
pub fn measure_programming(samples: usize, hpet: Option<&super::hpet::Hpet>) -> Option<ProgrammingCost> {
    let cpu = this_cpu();
    let accesses = || hpet.map_or(0, |h| h.mmio_accesses()) + apic::register_accesses();
    with_tick(|t| {
        let device = match t.service(cpu) {
            crate::time::tick::Service::Local(d) | crate::time::tick::Service::Broadcast(d) => d,
            crate::time::tick::Service::None => return None,
        };
        // One-shot programming only: a comparator in periodic mode would take the value as its
        // period.
        if !matches!(t.device(device).state(), State::Oneshot | State::OneshotStopped) {
            return None;
        }
        let (driver, ticks) = (t.device(device).driver(), t.device(device).conversion().ticks(1_000_000));
        let mut cycles: Vec<u64> = Vec::with_capacity(samples);
        let before = accesses();
        for _ in 0..samples {
            let start = super::tsc::read();
            let _ = driver.set_next_event(ticks);
            cycles.push(super::tsc::read() - start);
        }
        let register_accesses = (accesses() - before) / samples.max(1) as u64;
        t.resync(cpu, now_ns());
        cycles.sort_unstable();
        Some(ProgrammingCost { cycles: cycles.get(samples / 2).copied().unwrap_or(0), register_accesses })
    })
    .flatten()
}

/// Per-CPU tick devices, for the log and the report.
pub fn tick_devices() -> Vec<crate::time::tick::TickDeviceInfo> {
    with_tick(|t| t.tick_devices()).unwrap_or_default()
}

/// Name of the broadcast device, if any.
pub fn broadcast_device() -> Option<String> {
    with_tick(|t| t.broadcast_device().map(|b| t.device(b).spec.name.clone())).flatten()
}

/// The current minimum delta of the device named `name` (grown if the counter kept passing
/// its comparators).
pub fn min_delta_ns(name: &str) -> Option<u64> {
    with_tick(|t| t.devices().find(|(_, d)| d.spec.name == name).map(|(_, d)| d.min_delta_ns)).flatten()
}

/// Adds the clockevents part to the report: each comparator's delivery and role, each CPU's
/// tick device, the broadcast device. A CPU without any device fails the verdict.
pub fn fill_report(report: &mut crate::time::report::TimerReport, setup: &Setup) {
    use crate::time::report::{TickDeviceReport, Verdict};
    let taken_out: Vec<(String, String)> = with_tick(|t| t.taken_out().to_vec()).unwrap_or_default();
    if let Some(h) = report.hpet.as_mut() {
        for (c, o) in h.comparators.iter_mut().zip(&setup.comparators) {
            c.delivery = o.delivery.map_or("none", |d| d.kind()).into();
            c.gsi = o.delivery.and_then(|d| d.gsi());
            c.cpu = o.cpu.map(|c| c as u32);
            // A comparator taken out at run time (a storm, programming given up) failed too.
            let failed_later = taken_out.iter().any(|(name, _)| *name == alloc::format!("hpet{}", o.index));
            c.role = if failed_later { "failed".into() } else { o.role.into() };
            c.selftest_irqs = o.selftest_irqs;
        }
    }
    report.clockevents_rule = setup.rule.clone();
    report.tick_mode = with_tick(|t| match t.mode() {
        TickMode::Periodic { .. } => "periodic",
        TickMode::Oneshot => "oneshot",
    })
    .unwrap_or("none")
    .into();
    report.tick_devices = tick_devices()
        .into_iter()
        .map(|t| TickDeviceReport {
            cpu: t.cpu as u32,
            device: t.device,
            mode: t.mode,
            events: t.events,
            via_broadcast: t.via_broadcast,
        })
        .collect();
    report.broadcast = broadcast_device();
    let mut runtime = without_interrupts(|| RUNTIME_FALLBACKS.lock().clone());
    runtime.extend(taken_out.iter().map(|(name, why)| alloc::format!("{name} taken out of service: {why}")));
    if !runtime.is_empty() && report.verdict == Verdict::Ok {
        report.verdict = Verdict::Degraded;
    }
    report.fallbacks.extend(runtime);
    if report.tick_devices.iter().any(|t| t.device.is_none()) {
        report.verdict = Verdict::Failed;
    }
}
