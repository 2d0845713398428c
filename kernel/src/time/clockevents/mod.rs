//! Clock events on this machine: HPET comparators, LAPIC timers and the PIT registered with the time
//! layer, each CPU's tick in its per-CPU area, the interrupt paths that feed it, and the timer
//! API the rest of the kernel uses.
//!
//! Rooms: `cpu` (a CPU's tick behind its guard, the interrupt and expiry paths), `registry`
//! (the shared registry and broadcast, and how decisions reach each CPU), `timer` (the API),
//! `lapic`, `hpet` and `pit` (the clock event devices over the drivers of `arch::x86_64`),
//! `hpet_plan` (each comparator's delivery and role, decided), `hpet_bringup` (the plan
//! carried out: routing, self-tests, re-planning, registration), `report` (what the report and
//! the benchmark read).
//!
//! Bring-up by hooks: [`init_on_bsp`] (before the APs start: registry, the boot CPU's tick
//! and LAPIC timer), [`init_on_ap`] (on each AP's own start-up path: its tick and LAPIC timer),
//! then [`init_hpet`] once every CPU is online (the comparator plan depends on how many are;
//! the PIT follows the HPET, whose legacy route may take its IRQ0).

mod cpu;
mod failures;
pub mod hotplug;
pub mod hpet;
mod hpet_bringup;
pub mod hpet_plan;
pub mod lapic;
pub mod lapic_refine;
pub mod pit;
mod registry;
mod report;
pub mod s3;
pub mod suspend;
mod timer;

pub use cpu::{
    CpuTime, TickGuard, deep_idle_enter, deep_idle_exit, this_cpu_tick, this_cpu_time, time_of, with_tick,
    with_tick_and_broadcast,
};
pub use failures::{report as device_failed, take_outs};
pub use registry::{WAKE_VECTOR, take_out, with_registry};
pub use report::{
    ProgrammingCost, TickDeviceInfo, broadcast_counts, broadcast_device, broadcast_server, device_names,
    fill_report, measure_programming, min_delta_ns, tick_devices,
};
pub use timer::{
    Callback, Cancelled, Timer, TimerEvent, TimerFn, arm_after, arm_at, arm_at_range, arm_deferred_at,
    arm_on_clock, cancel, default_slack_ns, now, post_on, reserve, set_default_slack_ns, sleep_ns,
    sleep_until,
};

use crate::arch::x86_64::interrupts;
use crate::arch::x86_64::platform::Platform;
use crate::arch::x86_64::smp::{self, percpu};
use crate::cmdline::{ClockeventsChoice, KernelOptions};
use crate::time::clocksource::now_ns;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use hpet_plan::Delivery;
use kernel_time::tick::TickMode;
use lapic::LapicTimerConfig;
use spin::{Mutex, Once};
use x86_64::instructions::interrupts::without_interrupts;

/// What one HPET comparator ended up doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComparatorRole {
    PerCpu,
    Global,
    Unused,
    Failed,
}

impl fmt::Display for ComparatorRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ComparatorRole::PerCpu => "percpu",
            ComparatorRole::Global => "global",
            ComparatorRole::Unused => "unused",
            ComparatorRole::Failed => "failed",
        })
    }
}

/// What became of one HPET comparator.
#[derive(Debug, Clone)]
pub struct ComparatorOutcome {
    pub index: usize,
    pub delivery: Option<Delivery>,
    pub role: ComparatorRole,
    pub cpu: Option<usize>,
    /// Its last interrupt self-test (`None`: not tested).
    pub selftest: Option<hpet::SelftestOutcome>,
    /// Its driver, once it had one (what its interrupts counted).
    pub channel: Option<&'static hpet::HpetChannel>,
}

/// What the clockevents bring-up decided.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    pub rule: String,
    pub comparators: Vec<ComparatorOutcome>,
}

/// How every CPU ticks and what its LAPIC timer is, decided on the boot CPU before the APs
/// start (they read it on their start-up path).
struct BringUp {
    mode: TickMode,
    /// Each CPU's default timer slack when it comes online (`timer_slack_ns=`).
    slack_ns: u64,
    /// `None`: LAPIC timers are left out (noapictimer, clockevents=global, uncalibrated).
    lapic: Option<LapicTimerConfig>,
}

static BRING_UP: Once<BringUp> = Once::new();

/// Clockevents on the boot CPU, before the APs start: the registry, the wake-up vector, the
/// tick mode, the LAPIC timer configuration, and the boot CPU's own tick and LAPIC timer.
pub fn init_on_bsp(platform: &mut Platform, options: &KernelOptions) {
    let mode = if options.periodic_tick { TickMode::Periodic { hz: options.hz } } else { TickMode::Oneshot };
    registry::init();
    failures::init();
    cpu::init_deferred_timers();
    if let Err(e) = interrupts::register(WAKE_VECTOR, cpu::wake_interrupt) {
        platform.fall_back(format!("broadcast wake-up vector unavailable ({e}): broadcast cannot wake CPUs"));
    }
    log::info!("tick {mode}, clockevents={}", options.clockevents);
    if options.timer_slack_ns == 0 {
        log::info!(
            "timer slack: 0 ns by default on every CPU (exact deadlines; timer_slack_ns=N to let timers share interrupts)"
        );
    } else {
        log::info!(
            "timer slack: {} ns by default on every CPU (timer_slack_ns=): a timer armed without its own may run up to that after its deadline, never before",
            options.timer_slack_ns
        );
    }
    let lapic = lapic_timer_config(platform, options);
    BRING_UP.call_once(|| BringUp { mode, slack_ns: options.timer_slack_ns, lapic });
    init_this_cpu();
}

/// Clockevents on an AP, on its own start-up path: its tick and its LAPIC timer.
pub fn init_on_ap() {
    if BRING_UP.get().is_some() {
        init_this_cpu();
    }
}

fn init_this_cpu() {
    let bring_up = BRING_UP.get().expect("init_on_bsp ran");
    cpu::create_tick(bring_up.mode);
    set_default_slack_ns(bring_up.slack_ns);
    registry::cpu_online(percpu::this_cpu().index);
    if let Some(config) = bring_up.lapic {
        match lapic::register_this_cpu(config) {
            Some(device) => lapic_refine::device_registered(device),
            None => {
                record_fallback(format!("LAPIC timer of CPU {} not registered", percpu::this_cpu().index))
            }
        }
    }
}

fn lapic_timer_config(platform: &mut Platform, options: &KernelOptions) -> Option<LapicTimerConfig> {
    // No LAPIC, no LAPIC timer (nothing to say: the platform's fallback said it).
    platform.lapic?;
    if options.no_apic_timer {
        log::info!("noapictimer: LAPIC timers left out");
        return None;
    }
    if options.clockevents == ClockeventsChoice::Global && platform.hpet.is_some() {
        log::info!("clockevents=global: LAPIC timers left out so that the global device serves every CPU");
        return None;
    }
    let Some(calibration) = platform.calibration else {
        if platform.lapic.is_some() {
            platform.fall_back("LAPIC timer uncalibrated: not used as a clock event device".into());
        }
        return None;
    };
    let vector = match lapic::allocate_vector() {
        Ok(v) => v,
        Err(e) => {
            platform.fall_back(format!("no vector for the LAPIC timer ({e}): not used"));
            return None;
        }
    };
    let features = crate::arch::x86_64::lapic::features();
    if features.tsc_deadline {
        log::info!("LAPIC timers in TSC-deadline mode ({} Hz)", crate::arch::x86_64::tsc::frequency_hz());
    }
    if options.lapic_stops_in_idle && features.arat {
        log::info!("lapic_stops_in_idle: LAPIC timers stop in deep idle although the CPU has ARAT");
    }
    let config = LapicTimerConfig {
        vector,
        timer_hz: calibration.lapic_timer_hz,
        tsc_hz: crate::arch::x86_64::tsc::frequency_hz(),
        tsc_deadline: features.tsc_deadline,
        arat: features.arat && !options.lapic_stops_in_idle,
    };
    lapic_refine::registered(&config);
    Some(config)
}

/// The HPET comparators, once every CPU is online; then every CPU has carried out its
/// assignments (a call to each, behind them in its queue) and the outcome is logged.
pub fn init_hpet(platform: &mut Platform, options: &KernelOptions) -> Setup {
    let setup = match platform.hpet {
        Some(h) => hpet_bringup::init_hpet(h, hpet_bringup::Block::First, platform, options),
        None => Setup { rule: "no HPET: LAPIC timer only".into(), comparators: Vec::new() },
    };
    log::info!("{}", setup.rule);
    // Every later block: its comparators per-CPU for the CPUs still without one.
    let mut served: Vec<bool> = alloc::vec![false; percpu::all().count()];
    let mark = |served: &mut Vec<bool>, s: &Setup| {
        for o in s.comparators.iter().filter(|o| o.role == ComparatorRole::PerCpu) {
            if let Some(slot) = o.cpu.and_then(|c| served.get_mut(c)) {
                *slot = true;
            }
        }
    };
    mark(&mut served, &setup);
    for (number, h) in platform.more_hpets.clone() {
        let block = hpet_bringup::Block::More { number, served: served.clone() };
        let more = hpet_bringup::init_hpet(h, block, platform, options);
        log::info!("{}", more.rule);
        mark(&mut served, &more);
    }
    // After the HPET, whose legacy route may have taken IRQ0.
    pit::register(platform, options);
    register_hrtimer_broadcast();
    for cpu in percpu::all() {
        if let Err(e) = smp::call_on(cpu.index, || ()) {
            platform.fall_back(format!("CPU {} did not take up its tick device: {e}", cpu.index));
        }
    }
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

/// Where neither an HPET comparator nor the PIT can serve as broadcast device, one CPU's own
/// timer does (Linux's `bc_hrtimer`, `tick-broadcast-hrtimer.c`): a pseudo device of rating 0
/// whose programming arms the broadcast's timer on the calling CPU's tick, which then stays out
/// of deep idle and wakes the others by IPI (`kernel_time::broadcast`). One line either way.
fn register_hrtimer_broadcast() {
    use kernel_time::clockevents::{CpuSet, HrtimerBroadcast, hrtimer_broadcast_spec};
    if let Some(b) = broadcast_device() {
        log::info!("bc_hrtimer not registered: {b} is the broadcast device");
        return;
    }
    if crate::arch::x86_64::lapic::mode().is_none() {
        log::info!("bc_hrtimer not registered: no local APIC, so no IPI could wake another CPU");
        return;
    }
    let mut cpus = CpuSet::EMPTY;
    for c in percpu::all() {
        cpus.insert(c.index);
    }
    if cpus.len() < 2 {
        log::info!("bc_hrtimer not registered: one CPU online, nobody to serve");
        return;
    }
    if registry::register(hrtimer_broadcast_spec(cpus), &HrtimerBroadcast, |_| ()).is_some() {
        log::info!(
            "no hardware broadcast device: bc_hrtimer registered (rating 0): a CPU that stays out of deep idle serves the others' deadlines with its own tick device and wakes them by IPI"
        );
    }
}

/// Fallbacks taken outside the bring-up's reach (on an AP, in interrupt context), for the
/// report.
static FALLBACKS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records a fallback taken outside the bring-up (on an AP, in the idle loop, in interrupt
/// context) for the report, and logs it.
pub fn record_fallback(reason: String) {
    log::warn!("fallback: {reason}");
    without_interrupts(|| FALLBACKS.lock().push(reason));
}

/// A fallback taken at run time (in interrupt context), for the report.
pub(super) fn runtime_fallback(reason: String) {
    record_fallback(reason);
}

/// Every fallback recorded outside the bring-up's reach so far.
pub(super) fn recorded_fallbacks() -> Vec<String> {
    without_interrupts(|| FALLBACKS.lock().clone())
}

/// Times the clocks' offsets changed (REALTIME stepped, a resume), and the timers on REALTIME
/// and BOOTTIME that every CPU placed again then.
static CLOCK_WAS_SET: AtomicU64 = AtomicU64::new(0);
static REQUEUED: AtomicU64 = AtomicU64::new(0);

/// The clocks' offsets changed (REALTIME stepped, time asleep added; Linux's `clock_was_set`):
/// every online CPU places its timers on REALTIME and BOOTTIME again where the new offsets put
/// them, this one now, the others by a call IPI, without waiting (a CPU not told yet runs
/// nothing early: its expiry asks each such timer whether its own clock has reached it).
pub fn clock_was_set() {
    CLOCK_WAS_SET.fetch_add(1, Ordering::Relaxed);
    if !percpu::ready() {
        return;
    }
    let here = percpu::this_cpu().index;
    for other in percpu::all().map(|c| c.index).filter(|&c| c != here) {
        let told = smp::post(other, || {
            REQUEUED.fetch_add(cpu::clock_was_set_here() as u64, Ordering::Relaxed);
        });
        if let Err(e) = told {
            log::warn!(
                "clock was set: CPU {other} not told ({e}); its timers on REALTIME wait for their old place"
            );
        }
    }
    REQUEUED.fetch_add(cpu::clock_was_set_here() as u64, Ordering::Relaxed);
}

/// How many times the clocks' offsets changed, and the timers placed again then (so far).
pub fn clock_changes() -> (u64, u64) {
    (CLOCK_WAS_SET.load(Ordering::Relaxed), REQUEUED.load(Ordering::Relaxed))
}

/// Clocksource time when every CPU had its tick device (the self-tests included).
static BRINGUP_NS: AtomicU64 = AtomicU64::new(0);

pub fn bringup_ns() -> u64 {
    BRINGUP_NS.load(Ordering::Relaxed)
}
