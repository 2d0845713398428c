//! What the report, the log and the benchmark read of clock events: each CPU's tick device
//! (asked of that CPU), the broadcast device, the devices' figures, and the cost of
//! programming one event.

use super::cpu::{time_of, with_tick, with_tick_and_broadcast};
use super::registry::{self, with_registry};
use super::{ComparatorRole, Setup};
use crate::arch::x86_64::smp::{self, percpu};
use crate::time::clocksource::now_ns;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use kernel_time::clockevents::State;
use kernel_time::tick::Service;

/// One CPU's tick, for the report and the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickDeviceInfo {
    pub cpu: usize,
    /// Name of the device that interrupts this CPU (the broadcast device's when served by it).
    pub device: Option<String>,
    pub mode: String,
    pub events: u64,
    pub ticks: u64,
    pub via_broadcast: bool,
    /// Its local device stops in deep idle (a deep sleep hands its deadline to the broadcast).
    pub stops_in_idle: bool,
    /// Deadlines it handed to the broadcast before deep idle.
    pub handovers: u64,
    /// Device events that reached this CPU for a device that does not serve it and never did.
    pub misrouted: u64,
    /// Events of a device this CPU used before its current one, arrived after the change.
    pub stale: u64,
}

/// The calling CPU's tick.
fn this_cpu_info() -> Option<TickDeviceInfo> {
    let (cpu, service, mode, events, ticks, stops_in_idle, handovers, (misrouted, stale)) = with_tick(|t| {
        (
            t.cpu(),
            t.service(),
            t.mode_name(),
            t.events(),
            t.ticks(),
            t.device_stops_in_idle(),
            t.handovers(),
            (t.misrouted(), t.stale()),
        )
    })?;
    let (device, via_broadcast) = match service {
        Service::None => (None, false),
        Service::Local(d) => (Some(d), false),
        Service::Broadcast(b) => (Some(b), true),
    };
    let device = device.and_then(|d| with_registry(|r| r.device(d).spec.name.clone()));
    Some(TickDeviceInfo {
        cpu,
        device,
        mode: mode.into(),
        events,
        ticks,
        via_broadcast,
        stops_in_idle,
        handovers,
        misrouted,
        stale,
    })
}

/// Every online CPU's tick, each read on its own CPU (needs interrupts enabled).
pub fn tick_devices() -> Vec<TickDeviceInfo> {
    percpu::all().filter_map(|c| smp::call_on(c.index, this_cpu_info).ok().flatten()).collect()
}

/// Every registered device's id and name (the trace's header names the ids its events carry).
pub fn device_names() -> Vec<(usize, String)> {
    with_registry(|r| r.devices().map(|(id, d)| (id.0, d.spec.name.clone())).collect()).unwrap_or_default()
}

/// Name of the broadcast device, if any.
pub fn broadcast_device() -> Option<String> {
    with_registry(|r| r.broadcast_device().map(|b| r.device(b).spec.name.clone())).flatten()
}

/// With the broadcast served by one CPU's timer (bc_hrtimer): the CPU serving it now, and how
/// many times the service moved from one CPU to another.
pub fn broadcast_server() -> (Option<usize>, u64) {
    registry::with_broadcast(|b| b.server())
}

/// The broadcast device's interrupts and the wake-up IPIs they sent, and how many times its
/// interrupt was moved to follow its sleepers (`Features::DYNIRQ`).
pub fn broadcast_counts() -> (u64, u64, u64) {
    registry::with_broadcast(|b| {
        let (events, wakeups) = b.stats();
        (events, wakeups, b.target().1)
    })
}

/// The current minimum delta of the device named `name` (grown if the counter kept passing
/// its comparators).
pub fn min_delta_ns(name: &str) -> Option<u64> {
    with_registry(|r| r.devices().find(|(_, d)| d.spec.name == name).map(|(_, d)| d.min_delta_ns())).flatten()
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
/// then programs the CPU's real next event again. `None` without a one-shot device.
pub fn measure_programming(
    samples: usize,
    hpet: Option<&crate::arch::x86_64::hpet::Hpet>,
) -> Option<ProgrammingCost> {
    use crate::arch::x86_64::{lapic as apic, tsc};
    let accesses = || hpet.map_or(0, |h| h.mmio_accesses()) + apic::register_accesses();
    let service = with_tick(|t| t.service())?;
    let device = match service {
        Service::Local(d) | Service::Broadcast(d) => with_registry(|r| r.device(d).clone())?,
        Service::None => return None,
    };
    // One-shot programming only: a comparator in periodic mode would take the value as its
    // period.
    if !matches!(device.state(), State::Oneshot | State::OneshotStopped) {
        return None;
    }
    let (driver, ticks) = (device.driver(), device.conversion().ticks(1_000_000));
    let mut cycles: Vec<u64> = Vec::with_capacity(samples);
    let before = accesses();
    x86_64::instructions::interrupts::without_interrupts(|| {
        for _ in 0..samples {
            let start = tsc::read();
            let _ = driver.set_next_event(ticks);
            cycles.push(tsc::read() - start);
        }
        let register_accesses = (accesses() - before) / samples.max(1) as u64;
        let now = now_ns();
        if matches!(service, Service::Broadcast(_)) {
            registry::with_broadcast(|b| b.resync(now));
        }
        let failure = with_tick_and_broadcast(|t, bc| {
            t.resync(now, bc);
            t.take_failure()
        })
        .flatten();
        super::cpu::report_failure(failure);
        registry::report_broadcast_failure();
        cycles.sort_unstable();
        Some(ProgrammingCost { cycles: cycles.get(samples / 2).copied().unwrap_or(0), register_accesses })
    })
}

/// Adds the clockevents part to the report: each comparator's delivery and role, each CPU's
/// tick device, the broadcast device. A CPU without any device fails the verdict.
pub fn fill_report(report: &mut crate::timer_report::TimerReport, setup: &Setup) {
    use crate::timer_report::{TickDeviceReport, Verdict};
    let taken_out: Vec<(String, String)> = with_registry(|r| r.taken_out().to_vec()).unwrap_or_default();
    if let (Some(l), Some((calibrated, refined, how))) =
        (report.lapic.as_mut(), super::lapic_refine::figures())
    {
        use kernel_time::clocksource::refine;
        l.calibrated_hz = calibrated;
        l.refined_hz = refined;
        l.refined_by = how.map(Into::into);
        l.calibration_ppm = refined.map(|r| refine::ppm(calibrated, r));
        l.calibration_ppb = refined.map(|r| refine::ppb(calibrated, r));
    }
    if let Some(h) = report.hpet.as_mut() {
        for (c, o) in h.comparators.iter_mut().zip(&setup.comparators) {
            c.delivery = o.delivery.map_or("none", |d| d.kind()).into();
            c.gsi = o.delivery.and_then(|d| d.gsi());
            c.cpu = o.cpu.map(|c| c as u32);
            // A comparator taken out at run time (a storm, programming given up) failed too.
            let failed_later = taken_out.iter().any(|(name, _)| *name == alloc::format!("hpet{}", o.index));
            c.role = alloc::string::ToString::to_string(&if failed_later {
                ComparatorRole::Failed
            } else {
                o.role
            });
            c.selftest_irqs = o.selftest.as_ref().map_or(0, |t| t.irqs);
            c.selftest = o.selftest.as_ref().map(|t| crate::timer_report::SelftestReport {
                cpu: t.target as u32,
                irqs_by_cpu: t.by_cpu.iter().map(|(cpu, n)| (alloc::format!("{cpu}"), *n)).collect(),
                us: t.ns / 1000,
                passed: t.passed(),
            });
            if let Some(ch) = o.channel {
                c.irqs_by_cpu =
                    ch.irqs_by_cpu.nonzero().map(|(cpu, n)| (alloc::format!("{cpu}"), n)).collect();
                c.spurious = ch.spurious.load(core::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    report.clockevents_rule = setup.rule.clone();
    let (count, in_hard_irq) = super::failures::take_outs();
    report.take_outs = crate::timer_report::TakeOutsReport { count, in_hard_irq };
    report.bringup_us = super::bringup_ns() / 1000;
    report.tick_mode = match super::BRING_UP.get().map(|b| b.mode) {
        Some(kernel_time::tick::TickMode::Periodic { .. }) => "periodic",
        Some(kernel_time::tick::TickMode::Oneshot) => "oneshot",
        None => "none",
    }
    .into();
    report.timer_slack_ns = super::BRING_UP.get().map_or(0, |b| b.slack_ns);
    let ticks = tick_devices();
    for t in &ticks {
        if let Some(c) = report.cpus.iter_mut().find(|c| c.index as usize == t.cpu) {
            c.misrouted = t.misrouted;
            c.stale = t.stale;
        }
    }
    report.tick_devices = ticks
        .iter()
        .map(|t| TickDeviceReport {
            cpu: t.cpu as u32,
            device: t.device.clone(),
            mode: t.mode.clone(),
            events: t.events,
            via_broadcast: t.via_broadcast,
        })
        .collect();
    report.broadcast = broadcast_device();
    let (events, wakeups_sent) = registry::with_broadcast(|b| b.stats());
    report.broadcast_stats = crate::timer_report::BroadcastReport { events, wakeups_sent };
    report.suspend = super::suspend::report();
    report.hotplug = super::hotplug::report();
    // A comparator a CPU going offline handed over serves its new CPU now.
    if let Some(h) = report.hpet.as_mut() {
        for r in &report.hotplug {
            if let (Some(name), Some(to)) = (&r.comparator_released, r.comparator_to_cpu)
                && let Some(c) = h.comparators.iter_mut().find(|c| alloc::format!("hpet{}", c.index) == *name)
            {
                c.cpu = Some(to as u32);
            }
        }
    }
    for c in report.cpus.iter_mut() {
        let index = c.index as usize;
        let handovers = ticks.iter().find(|t| t.cpu == index).map_or(0, |t| t.handovers);
        let Some(cpu) = percpu::cpu(index) else { continue };
        c.idle = crate::timer_report::IdleReport {
            state: crate::time::idle::state_of(index).to_string(),
            entries: time_of(cpu).idle_entries.load(core::sync::atomic::Ordering::Relaxed),
            deep_entries: time_of(cpu).deep_entries.load(core::sync::atomic::Ordering::Relaxed),
            handovers,
            transition_ns: crate::arch::x86_64::path_trace::cycles_to_ns(
                time_of(cpu).idle_overhead_cycles.load(core::sync::atomic::Ordering::Relaxed),
            ),
            serving: time_of(cpu).serving_entries.load(core::sync::atomic::Ordering::Relaxed),
        };
        c.deferred_timers = crate::timer_report::DeferredTimersReport {
            callbacks: time_of(cpu).deferred_callbacks.load(core::sync::atomic::Ordering::Relaxed),
            max_waiting: time_of(cpu).deferred_max_waiting.load(core::sync::atomic::Ordering::Relaxed),
        };
    }
    let mut runtime = super::recorded_fallbacks();
    runtime.extend(taken_out.iter().map(|(name, why)| alloc::format!("{name} taken out of service: {why}")));
    if !runtime.is_empty() && report.verdict == Verdict::Ok {
        report.verdict = Verdict::Degraded;
    }
    report.fallbacks.extend(runtime);
    if report.tick_devices.iter().any(|t| t.device.is_none()) {
        report.verdict = Verdict::Failed;
    }
    for elsewhere in report.percpu_interrupts_elsewhere() {
        log::error!("{elsewhere}");
        report.verdict = Verdict::Failed;
    }
}
