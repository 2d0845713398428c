//! CPU hotplug of the timer subsystem (`hotplug_test=CPU[:MS]`, issue 19): a CPU other than
//! the boot CPU taken offline and brought back.
//!
//! Offline ([`offline`], from any other CPU): the CPU runs its own offline path in a call, with
//! interrupts off: the registry takes it out of its selection and releases its per-CPU devices
//! (`Registry::cpu_offline`); its tick goes offline (`glue::go_offline`: handles closed, inbox
//! drained one last time, devices detached, pending timers out); a released HPET comparator
//! is routed to a CPU that had no per-CPU comparator (one served by broadcast first, else one
//! on its LAPIC timer) and registered again for it, so the registry makes it that CPU's tick
//! device and the CPU applies the assignment itself; a comparator whose interrupt was aimed at
//! this CPU (the global broadcast device's) is aimed at the adopting CPU, under the broadcast
//! lock, the layer told where it points now; the timers go to the
//! adopting CPU, which takes them in its own call (`glue::adopt`: each at its deadline, a
//! periodic one on its grid); the CPU is marked offline in `percpu` (every "for each CPU"
//! skips it) and parks (`cli; hlt`, LAPIC timer stopped) until INIT.
//!
//! Online ([`online`]): INIT / STARTUP as at boot (`smp::restart`), and the AP's start-up
//! hooks run again: its TSC sync check, a fresh tick (its handles open again), the registry's
//! selection (its own LAPIC timer, registered again, the current refinement applied).

use super::cpu;
use super::{hpet, registry};
use crate::arch::x86_64::smp::{self, percpu};
use crate::time::clocksource::now_ns;
use crate::timer_report::HotplugRecord;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use kernel_time::clockevents::{CpuSet, DeviceSpec};
use kernel_time::tick::Service;
use spin::Mutex;
use x86_64::instructions::interrupts::without_interrupts;

/// How long the CPU going offline, or coming back, gets (bounded by the clocksource; a CPU
/// that does not answer is an error, never a hang).
const LIMIT_NS: u64 = 2_000_000_000;

/// For each APIC id of a CPU gone offline, the APIC id of the CPU that adopted its timers
/// plus one (0: none), read lock-free by an "on its CPU" check in a callback.
static ADOPTER_APIC: [core::sync::atomic::AtomicU32; 256] =
    [const { core::sync::atomic::AtomicU32::new(0) }; 256];

/// The APIC id of the CPU that adopted the timers of the CPU whose APIC id is `apic` when it
/// went offline (the last time), if it ever did: where a timer armed there may run now.
pub fn adopter_apic_of(apic: u32) -> Option<u32> {
    let v = ADOPTER_APIC.get(apic as usize)?.load(core::sync::atomic::Ordering::Acquire);
    v.checked_sub(1)
}

/// Every offline/online cycle so far, for the report.
static RECORDS: Mutex<Vec<HotplugRecord>> = Mutex::new(Vec::new());

/// The hotplug cycles so far (empty: none).
pub fn report() -> Vec<HotplugRecord> {
    without_interrupts(|| RECORDS.lock().clone())
}

/// Why a CPU cannot be taken offline or brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HotplugError {
    /// CPU 0, the boot CPU, stays online (it runs the main run and the housekeeping).
    BootCpu,
    /// No such CPU online (to take offline) or offline (to bring back).
    NotOnline(usize),
    NotOffline(usize),
    /// It is the only CPU besides the boot CPU... or the last one: nobody would take its timers.
    NoOtherCpu(usize),
    /// The CPU did not run its offline path, or did not come back, within the limit.
    NoAnswer(String),
}

impl core::fmt::Display for HotplugError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HotplugError::BootCpu => write!(f, "CPU 0 is the boot CPU and stays online"),
            HotplugError::NotOnline(c) => write!(f, "CPU {c} is not online"),
            HotplugError::NotOffline(c) => write!(f, "CPU {c} is not offline"),
            HotplugError::NoOtherCpu(c) => write!(f, "no other online CPU can take CPU {c}'s timers"),
            HotplugError::NoAnswer(why) => f.write_str(why),
        }
    }
}

/// What the CPU going offline did, told back to the CPU that asked.
#[derive(Debug, Clone, Default)]
struct Outcome {
    at_ns: u64,
    timers: usize,
    adopter: usize,
    comparator: Option<String>,
    comparator_to: Option<usize>,
}

/// Takes CPU `cpu` offline (called on another CPU, interrupts enabled); returns its record's
/// index in [`report`].
pub fn offline(cpu: usize) -> Result<usize, HotplugError> {
    if cpu == 0 {
        return Err(HotplugError::BootCpu);
    }
    if percpu::cpu(cpu).is_none() {
        return Err(HotplugError::NotOnline(cpu));
    }
    if !percpu::all().any(|c| c.index != cpu) {
        return Err(HotplugError::NoOtherCpu(cpu));
    }
    log::info!("hotplug: taking CPU {cpu} offline");
    let asked_at = now_ns();
    let answer: Arc<Mutex<Option<Outcome>>> = Arc::new(Mutex::new(None));
    let slot = answer.clone();
    smp::post(cpu, move || {
        let outcome = go_offline_here();
        *slot.lock() = Some(outcome);
    })
    .map_err(|e| HotplugError::NoAnswer(format!("CPU {cpu}: {e}")))?;
    if !smp::park(cpu, LIMIT_NS) {
        return Err(HotplugError::NoAnswer(format!("CPU {cpu} did not park within 2 s")));
    }
    let offline_ns = now_ns().saturating_sub(asked_at);
    let o =
        answer.lock().take().ok_or_else(|| HotplugError::NoAnswer(format!("CPU {cpu} parked unanswered")))?;
    log::info!(
        "hotplug: CPU {cpu} offline and parked: {} timer(s) to CPU {}, comparator {} -> {}",
        o.timers,
        o.adopter,
        o.comparator.as_deref().unwrap_or("none"),
        o.comparator_to.map_or("none".into(), |c| format!("CPU {c}"))
    );
    Ok(without_interrupts(|| {
        let mut records = RECORDS.lock();
        records.push(HotplugRecord {
            cpu,
            offline_at_ns: o.at_ns,
            online_at_ns: None,
            timers_migrated: o.timers as u64,
            timers_to_cpu: o.adopter,
            comparator_released: o.comparator,
            comparator_to_cpu: o.comparator_to,
            offline_ns,
            online_ns: None,
            startup_ns: None,
        });
        records.len() - 1
    }))
}

/// Brings CPU `cpu` (taken offline by [`offline`]) online again (called on another CPU).
pub fn online(cpu: usize) -> Result<(), HotplugError> {
    if cpu == 0 {
        return Err(HotplugError::BootCpu);
    }
    match percpu::any(cpu) {
        Some(c) if !c.is_online() && c.parked.load(core::sync::atomic::Ordering::Acquire) => {}
        _ => return Err(HotplugError::NotOffline(cpu)),
    }
    log::info!("hotplug: bringing CPU {cpu} online again (INIT-SIPI)");
    let asked_at = now_ns();
    smp::restart(cpu).map_err(|e| HotplugError::NoAnswer(format!("CPU {cpu}: {e}")))?;
    // Behind its start-up in its queue of calls: its tick device taken up.
    if let Err(e) = smp::call_on(cpu, || ()) {
        return Err(HotplugError::NoAnswer(format!("CPU {cpu} did not answer after its start-up: {e}")));
    }
    give_spare_comparator(cpu);
    let at = now_ns();
    let startup_ns = percpu::any(cpu).map(|c| c.startup_ns.load(core::sync::atomic::Ordering::Relaxed));
    without_interrupts(|| {
        if let Some(r) = RECORDS.lock().iter_mut().rev().find(|r| r.cpu == cpu && r.online_at_ns.is_none()) {
            r.online_at_ns = Some(at);
            r.online_ns = Some(at.saturating_sub(asked_at));
            r.startup_ns = startup_ns;
        }
    });
    Ok(())
}

/// Per-CPU comparators released by CPUs gone offline that no other CPU took (each CPU online
/// had one of its own), with their specs: unused, until a CPU without one comes online.
static SPARE: Mutex<Vec<(&'static hpet::HpetChannel, DeviceSpec)>> = Mutex::new(Vec::new());

/// CPU `cpu`, back online, takes a spare comparator if it has none of its own, as at boot a
/// per-CPU comparator outranks its LAPIC timer: routed to it and registered for it, the
/// registry makes it its tick device.
fn give_spare_comparator(cpu: usize) {
    let has_one = registry::with_registry(|r| match r.service(cpu) {
        Service::Local(d) => r.device(d).spec.rating >= hpet::PER_CPU_RATING,
        _ => false,
    })
    .unwrap_or(true);
    if has_one {
        return;
    }
    let Some((channel, mut spec)) = without_interrupts(|| SPARE.lock().pop()) else { return };
    let apic = percpu::cpu(cpu).map(|c| c.apic_id).unwrap_or_default();
    if let Err(e) = channel.route_to(apic) {
        log::warn!("hotplug: {} cannot reach CPU {cpu} ({e}): left unused", spec.name);
        without_interrupts(|| SPARE.lock().push((channel, spec)));
        return;
    }
    spec.cpus = CpuSet::single(cpu);
    let name = spec.name.clone();
    if registry::register(spec, channel, |id| channel.attach(id)).is_some() {
        log::info!("hotplug: {name} -> CPU {cpu} (back online without a comparator; {name} was spare)");
    }
}

/// The CPU that takes an offline CPU's comparator: a CPU (other than `leaving`) served by
/// broadcast first, then one whose local device rates below a per-CPU comparator (its LAPIC
/// timer); lowest index first. None: every other CPU has its own comparator.
fn comparator_taker(leaving: usize) -> Option<usize> {
    registry::with_registry(|r| {
        let rank = |c: usize| match r.service(c) {
            Service::Broadcast(_) | Service::None => Some(0),
            Service::Local(d) if r.device(d).spec.rating < hpet::PER_CPU_RATING => Some(1),
            Service::Local(_) => None,
        };
        percpu::all()
            .map(|c| c.index)
            .filter(|&c| c != leaving)
            .filter_map(|c| rank(c).map(|k| (k, c)))
            .min()
            .map(|(_, c)| c)
    })
    .flatten()
}

/// Aims every serving comparator whose interrupt points at `me` (going offline) at `to`, under
/// the broadcast lock: the layer moves the broadcast interrupt (DYNIRQ) only under that lock,
/// so none of its moves falls between this check and this write, and it is told where the
/// interrupt points now (`Broadcast::moved_to`), its next move judged against the hardware.
/// The IOAPIC's lock is only tried under the broadcast lock (see `HpetChannel::try_move_to`):
/// when busy, the broadcast lock is let go and the move tried again, within [`LIMIT_NS`].
fn move_interrupts_off(me: &percpu::PerCpu, to: &percpu::PerCpu, channels: &[&'static hpet::HpetChannel]) {
    let give_up_at = now_ns() + LIMIT_NS;
    let mut outcomes: Vec<(usize, Result<(), hpet::MoveRefused>)> = Vec::new();
    loop {
        outcomes.clear();
        registry::with_broadcast(|b| {
            for ch in channels.iter().filter(|ch| ch.device().is_some() && ch.target_apic() == me.apic_id) {
                let moved = ch.try_move_to(to.index, to.apic_id);
                if moved.is_ok() && b.device().is_some() && b.device() == ch.device() {
                    b.moved_to(to.index);
                }
                outcomes.push((ch.index, moved));
            }
        });
        let busy = outcomes.iter().any(|(_, r)| *r == Err(hpet::MoveRefused::IoapicBusy));
        if !busy || now_ns() > give_up_at {
            break;
        }
        core::hint::spin_loop();
    }
    for (index, r) in &outcomes {
        match r {
            Ok(()) => log::info!("hotplug: HPET comparator {index} interrupt moved to CPU {}", to.index),
            Err(e) => log::warn!("hotplug: HPET comparator {index} stays aimed at CPU {}: {e}", me.index),
        }
    }
}

/// The offline path, on the CPU going offline, in its function call (interrupts off).
fn go_offline_here() -> Outcome {
    let me = percpu::this_cpu();
    let at_ns = now_ns();
    let released = registry::cpu_offline(me.index);
    let timers = cpu::go_offline();
    let mut outcome = Outcome { at_ns, timers: timers.len(), ..Outcome::default() };
    // Its per-CPU comparator to a CPU that had none, routed there and registered for it.
    let channels = hpet::channels();
    for (id, spec) in &released {
        let Some(channel) = channels.iter().find(|ch| ch.device() == Some(*id)) else { continue };
        outcome.comparator = Some(spec.name.clone());
        let Some(to) = comparator_taker(me.index) else {
            log::info!(
                "hotplug: {} released, no CPU without a comparator to take it: kept for the next CPU to come online",
                spec.name
            );
            without_interrupts(|| SPARE.lock().push((*channel, spec.clone())));
            continue;
        };
        let apic = percpu::cpu(to).map(|c| c.apic_id).unwrap_or_default();
        if let Err(e) = channel.route_to(apic) {
            log::warn!("hotplug: {} cannot reach CPU {to} ({e}): left unused", spec.name);
            continue;
        }
        let mut spec = spec.clone();
        spec.cpus = CpuSet::single(to);
        let name = spec.name.clone();
        if registry::register(spec, *channel, |id| channel.attach(id)).is_some() {
            log::info!("hotplug: {name} -> CPU {to} (CPU {} went offline; it had no comparator)", me.index);
            outcome.comparator_to = Some(to);
        }
    }
    // The adopter: the comparator's new CPU, else the lowest other online CPU.
    let adopter = outcome
        .comparator_to
        .or_else(|| percpu::all().map(|c| c.index).find(|&c| c != me.index))
        .unwrap_or(0);
    outcome.adopter = adopter;
    // Interrupts still aimed here (the global broadcast device's) go to the adopter.
    if let Some(to) = percpu::cpu(adopter) {
        move_interrupts_off(me, to, &channels);
    }
    if let (Some(to), Some(slot)) = (percpu::cpu(adopter), ADOPTER_APIC.get(me.apic_id as usize)) {
        slot.store(to.apic_id + 1, core::sync::atomic::Ordering::Release);
    }
    if !timers.is_empty() {
        let n = timers.len();
        let from = me.index;
        let posted = smp::post(adopter, move || match cpu::adopt(timers) {
            Ok(moved) => log::info!(
                "hotplug: CPU {} adopted {} timer(s) of CPU {from}",
                percpu::this_cpu().index,
                moved.len()
            ),
            Err(refused) => log::error!(
                "hotplug: CPU {} refused CPU {from}'s {} timer(s): {}",
                percpu::this_cpu().index,
                refused.payload.len(),
                refused.error
            ),
        });
        if let Err(e) = posted {
            log::error!("hotplug: {n} timer(s) of CPU {from} could not be handed to CPU {adopter}: {e}");
        }
    }
    percpu::set_offline(me);
    outcome
}
