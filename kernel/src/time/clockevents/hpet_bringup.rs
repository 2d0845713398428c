//! HPET comparators brought up as clock event devices: each comparator's delivery (FSB, a
//! free IOAPIC pin, the legacy route), the plan (per-CPU, partial + global, forced), the
//! interrupt self-test on each target CPU with re-planning around failures, registration, and
//! the `hpet_storm=` fault injection.

use super::hpet::{self, HpetChannel};
use super::hpet_plan::{self, ComparatorCaps, Delivery, Role};
use super::registry;
use super::{ComparatorOutcome, ComparatorRole, Setup};
use crate::arch::x86_64::destination;
use crate::arch::x86_64::hpet::{ComparatorConfig, Hpet};
use crate::arch::x86_64::ioapic::IOAPICS;
use crate::arch::x86_64::platform::Platform;
use crate::arch::x86_64::smp::percpu;
use crate::cmdline::{ClockeventsChoice, KernelOptions};
use alloc::format;
use alloc::vec::Vec;
use kernel_time::clockevents::{CpuSet, DeviceSpec, Features};

/// Which HPET block is brought up: the first (its counter a clock; the plan of today, the
/// legacy route, the fault injections), or a later one, whose comparators go per-CPU to the
/// CPUs the blocks before it left without one (`served[c]`: CPU c has a per-CPU comparator),
/// programmed against its own main counter, with no legacy route and no global device.
pub(super) enum Block {
    First,
    More { number: u8, served: Vec<bool> },
}

impl Block {
    /// How its comparators are named in the log.
    fn label(&self) -> alloc::string::String {
        match self {
            Block::First => "HPET comparator".into(),
            Block::More { number, .. } => format!("HPET block #{number} comparator"),
        }
    }

    /// Its comparator `index`'s device name: `hpet2` for the first block, `hpet1.2` for block
    /// #1's.
    fn device_name(&self, index: usize) -> alloc::string::String {
        match self {
            Block::First => format!("hpet{index}"),
            Block::More { number, .. } => format!("hpet{number}.{index}"),
        }
    }

    fn first(&self) -> bool {
        matches!(self, Block::First)
    }
}

pub(super) fn init_hpet(
    h: &'static Hpet,
    block: Block,
    platform: &mut Platform,
    options: &KernelOptions,
) -> Setup {
    let label = block.label();
    hpet::set_read_counter(options.hpet_counter_read);
    let caps: Vec<ComparatorCaps> = (0..h.comparators())
        .map(|index| {
            let c = h.comparator_config(index);
            ComparatorCaps {
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
            role: ComparatorRole::Unused,
            cpu: None,
            selftest: None,
            channel: None,
        })
        .collect();
    if options.clockevents == ClockeventsChoice::Lapic {
        return Setup {
            rule: hpet_plan::plan(&[], &[], ClockeventsChoice::Lapic).rule,
            comparators: outcomes,
        };
    }
    // A later block adds per-CPU comparators only: not where the option asks for one global
    // device, nor without a LAPIC (one CPU, the 8259, the first block's legacy route).
    if let Block::More { number, served } = &block {
        let why = match options.clockevents {
            ClockeventsChoice::Global | ClockeventsChoice::Broadcast => {
                Some("the global device is the first block's")
            }
            _ if platform.lapic.is_none() => Some("no local APIC"),
            _ if served.iter().all(|&s| s) => Some("every CPU has a per-CPU comparator already"),
            _ => None,
        };
        if let Some(why) = why {
            return Setup {
                rule: format!("HPET block #{number}: comparators unused ({why})"),
                comparators: outcomes,
            };
        }
    }

    let isa = platform.firmware.isa_gsis.clone();
    let routes = &platform.firmware.isa_routes;
    let capable = h.capabilities().legacy_route_capable();
    let deliveries = if platform.lapic.is_none() {
        // No IOAPIC route or FSB message reaches a CPU without a local APIC: the 8259 only.
        hpet_plan::pic_deliveries(caps.len(), capable)
    } else {
        // The legacy route reaches the CPUs through the IOAPIC pins of IRQ0 and IRQ8: none
        // without an IOAPIC serving them (a MADT with no IOAPIC, or one rejected).
        let served = |gsi: u32| IOAPICS.lock().lookup(gsi).is_ok();
        let legacy_routes = (block.first() && capable && served(routes[0].gsi) && served(routes[8].gsi))
            .then(|| (routes[0], routes[8]));
        hpet_plan::choose_deliveries(&caps, legacy_routes, |cap| {
            let mut io = IOAPICS.lock();
            let gsi = io.find_free(cap, &isa)?;
            io.claim(gsi, "HPET comparator").ok()?;
            Some(gsi)
        })
    };
    for (o, d) in outcomes.iter_mut().zip(&deliveries) {
        o.delivery = *d;
        match d {
            Some(legacy @ Delivery::Legacy { route }) => {
                // IRQ0 and IRQ8 belong to the PIT and the RTC; legacy mode takes them over.
                if let Err(e) = IOAPICS.lock().claim(route.gsi, "HPET legacy route") {
                    log::warn!("{label} {}: {e}", o.index);
                }
                log::info!("{label} {}: {legacy}", o.index);
            }
            Some(d) => log::info!("{label} {}: {d}", o.index),
            None if platform.lapic.is_none() => log::info!(
                "{label} {}: no usable route (no local APIC: only the legacy route through the 8259)",
                o.index
            ),
            None => log::info!("{label} {}: no usable route (no FSB, no free IOAPIC pin)", o.index),
        }
    }

    let cpus: Vec<&percpu::PerCpu> = percpu::all().collect();
    let format = destination::format();
    let reachable: Vec<bool> = cpus.iter().map(|c| format.reaches(c.apic_id)).collect();
    for c in cpus.iter().filter(|c| !format.reaches(c.apic_id)) {
        log::warn!(
            "CPU {} (APIC id {}): no IOAPIC entry or MSI can name it ({} destinations): no per-CPU HPET comparator, served by its LAPIC timer or by broadcast",
            c.index,
            c.apic_id,
            format
        );
    }
    let mut channels: Vec<Option<&'static HpetChannel>> = alloc::vec![None; caps.len()];
    let mut failed: Vec<usize> = Vec::new();
    // Plan, self-test what the plan uses on its target CPU, and plan again without the
    // comparators that failed until a plan stands (per-CPU -> global -> LAPIC only).
    let (usable, plan) = loop {
        let usable: Vec<usize> =
            (0..caps.len()).filter(|&i| deliveries[i].is_some() && !failed.contains(&i)).collect();
        let plan = match &block {
            Block::First => hpet_plan::plan(&usable, &reachable, options.clockevents),
            Block::More { served, .. } => hpet_plan::plan_later_block(&usable, &reachable, served),
        };
        let mut new_failure = false;
        for (&index, &role) in usable.iter().zip(&plan.roles) {
            let target = match role {
                Role::Unused => continue,
                Role::PerCpu(c) => c,
                Role::Global(c) => c,
            };
            let apic_id = cpus[target].apic_id;
            let (channel, new) = match channels[index] {
                Some(ch) => (ch, false),
                None => match HpetChannel::new(h, index, deliveries[index].expect("usable")) {
                    Ok(ch) => {
                        channels[index] = Some(ch);
                        (ch, true)
                    }
                    Err(e) => {
                        platform.fall_back(format!("{label} {index} unusable: {e}"));
                        failed.push(index);
                        new_failure = true;
                        continue;
                    }
                },
            };
            if let Err(e) = channel.route_to(apic_id) {
                // The plan gives unreachable CPUs nothing: a bug if it ever shows.
                platform.fall_back(format!("{label} {index} cannot reach CPU {target}: {e}"));
                failed.push(index);
                new_failure = true;
                continue;
            }
            if new && block.first() && index < 32 && options.hpet_irq_masked & (1 << index) != 0 {
                log::warn!("{label} {index}: interrupt line left masked (hpet_irq_masked)");
                channel.mask_line();
            }
            let outcome = channel.selftest(target);
            if outcome.passed() {
                log::info!("{label} {index}: self-test on CPU {target}: {outcome}, passed");
            } else {
                let why = if outcome.events < hpet::SELFTEST_IRQS {
                    format!(
                        "an event unanswered {} ms of HPET time after it was due, though CPU {target} was running",
                        hpet::SELFTEST_WAIT_NS / 1_000_000
                    )
                } else {
                    format!("{} landed on another CPU", outcome.elsewhere())
                };
                platform.fall_back(format!(
                    "{label} {index} failed its interrupt self-test on CPU {target} ({outcome}; {why}): taken out"
                ));
                failed.push(index);
                new_failure = true;
            }
            outcomes[index].selftest = Some(outcome);
        }
        if !new_failure {
            break (usable, plan);
        }
    };

    let online = CpuSet::first(cpus.len());
    for (&index, &role) in usable.iter().zip(&plan.roles) {
        let Some(channel) = channels[index] else { continue };
        let periodic = h.comparator_config(index).contains(ComparatorConfig::PERIODIC_CAPABLE);
        let mut features = Features::ONESHOT;
        if periodic {
            features |= Features::PERIODIC;
        }
        let (name, rating, served) = match role {
            Role::Unused => continue,
            Role::PerCpu(c) => {
                features |= Features::PER_CPU;
                outcomes[index].role = ComparatorRole::PerCpu;
                outcomes[index].cpu = Some(c);
                (block.device_name(index), hpet::PER_CPU_RATING, CpuSet::single(c))
            }
            Role::Global(c) => {
                // An injected misroute must stay where it was put; the 8259's line cannot move.
                if options.broadcast_follows
                    && channel.can_move()
                    && !(block.first() && options.hpet_misroute == Some(index as u32))
                {
                    features |= Features::DYNIRQ;
                    log::info!(
                        "{label} {index}: global, its interrupt ({}) follows the CPU due first",
                        channel.delivery
                    );
                } else {
                    let why = if !options.broadcast_follows {
                        "broadcast_follows=off"
                    } else if !channel.can_move() {
                        "the 8259's line cannot move"
                    } else {
                        "hpet_misroute"
                    };
                    log::info!("{label} {index}: global, its interrupt stays on CPU {c} ({why})");
                }
                outcomes[index].role = ComparatorRole::Global;
                outcomes[index].cpu = Some(c);
                (block.device_name(index), hpet::GLOBAL_RATING, online)
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
        if block.first() && options.hpet_misroute == Some(index as u32) {
            inject_misroute(channel, &cpus, outcomes[index].cpu.expect("set above"));
        }
        // The CPU it serves takes it up itself, when its assignment arrives.
        if registry::register(spec, channel, |id| channel.attach(id)).is_none() {
            platform.fall_back(format!("{label} {index} not registered: no registry"));
            outcomes[index].role = ComparatorRole::Failed;
            outcomes[index].cpu = None;
        }
    }
    for &index in &failed {
        outcomes[index].role = ComparatorRole::Failed;
    }
    for (o, ch) in outcomes.iter_mut().zip(&channels) {
        o.channel = *ch;
    }
    if let Some(victim) = options.hpet_storm.filter(|_| block.first()) {
        inject_storm(h, &outcomes, victim as usize);
    }

    release_idle_legacy_route(h, &outcomes);
    // Pins of comparators that serve nobody go back to the pool (masked).
    for o in outcomes.iter().filter(|o| matches!(o.role, ComparatorRole::Unused | ComparatorRole::Failed)) {
        if let Some(Delivery::Ioapic { gsi }) = o.delivery
            && let Err(e) = IOAPICS.lock().release(gsi)
        {
            log::warn!("{label} {}: {e}", o.index);
        }
    }
    let rule = match &block {
        Block::First => plan.rule,
        Block::More { number, .. } => format!("HPET block #{number}: {}", plan.rule),
    };
    Setup { rule, comparators: outcomes }
}

/// The legacy route when no comparator serves through it any more (those on it failed their
/// self-test or are unused): switched off and IRQ0 and IRQ8 given back (masked), so the PIT
/// can take IRQ0 (the legacy bit disconnects the PIT, and its claim kept IRQ0 from it). While
/// one still serves through it, IRQ0 stays with the route, whatever comparator 0 did.
fn release_idle_legacy_route(h: &Hpet, outcomes: &[ComparatorOutcome]) {
    let legacy: Vec<(&ComparatorOutcome, u32)> = outcomes
        .iter()
        .filter_map(|o| match o.delivery {
            Some(Delivery::Legacy { route }) => Some((o, route.gsi)),
            _ => None,
        })
        .collect();
    let serving = |o: &ComparatorOutcome| matches!(o.role, ComparatorRole::PerCpu | ComparatorRole::Global);
    let failed: Vec<usize> =
        legacy.iter().filter(|(o, _)| o.role == ComparatorRole::Failed).map(|(o, _)| o.index).collect();
    if legacy.is_empty() || failed.is_empty() {
        return;
    }
    if let Some((o, _)) = legacy.iter().find(|(o, _)| serving(o)) {
        log::info!(
            "HPET legacy route kept: comparator {} serves through it, so IRQ0 stays with it (comparators {failed:?} failed)",
            o.index
        );
        return;
    }
    h.set_legacy_route(false);
    let mut io = IOAPICS.lock();
    for (_, gsi) in &legacy {
        if let Err(e) = io.release(*gsi) {
            log::warn!("HPET legacy route: GSI {gsi}: {e}");
        }
    }
    drop(io);
    log::info!(
        "HPET legacy route off: no comparator serves through it (comparators {failed:?} failed): IRQ0 and IRQ8 given back, for the PIT and the RTC"
    );
}

/// Fault injection (`hpet_storm=N`): an unused comparator is routed onto comparator N's
/// level-triggered pin and fires once, never cleared, so the line stays asserted while N's
/// status bit is clear: a storm N's handler must detect and stop.
fn inject_storm(h: &Hpet, outcomes: &[ComparatorOutcome], victim: usize) {
    let Some(Some(Delivery::Ioapic { gsi })) = outcomes.get(victim).map(|o| o.delivery) else {
        log::warn!("hpet_storm={victim}: comparator {victim} has no IOAPIC line; nothing injected");
        return;
    };
    let Some(culprit) = outcomes.iter().find(|o| {
        o.role == ComparatorRole::Unused && h.comparator_config(o.index).route_capability() & (1 << gsi) != 0
    }) else {
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

/// Fault injection (`hpet_misroute=N`): comparator N, about to serve CPU `cpu`, has its
/// interrupt sent to the next CPU instead: a wrong IOAPIC destination or FSB address.
fn inject_misroute(channel: &HpetChannel, cpus: &[&percpu::PerCpu], cpu: usize) {
    let wrong = (cpu + 1) % cpus.len();
    if wrong == cpu {
        log::warn!("hpet_misroute={}: a single CPU cannot be missed; nothing injected", channel.index);
        return;
    }
    log::warn!(
        "hpet_misroute={0}: comparator {0} serves CPU {cpu} but its interrupt now goes to CPU {wrong}",
        channel.index
    );
    if let Err(e) = channel.route_to(cpus[wrong].apic_id) {
        log::warn!("hpet_misroute={}: {e}; nothing injected", channel.index);
    }
}
