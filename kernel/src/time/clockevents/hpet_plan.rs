//! Which way each HPET comparator's interrupt goes and what it serves: its delivery (FSB,
//! a free IOAPIC pin, the legacy route) and its role (a CPU's own device, the global one, none),
//! decided from capabilities and the CPUs alone, so that the rules are host-tested. The
//! bring-up (`hpet_bringup`) carries the plan out; the device itself is `hpet`.
//!
//! Delivery, best first (FreeBSD's order): an FSB message (MSI, edge, no IOAPIC pin, any CPU);
//! a free IOAPIC pin from the comparator's route capability that no ISA device owns
//! (level-triggered, the status bit cleared by writing 1); legacy replacement (comparator 0 ->
//! IRQ0, 1 -> IRQ8, edge) when comparator 0 has neither, as on `-machine pc`.

use super::hpet::GLOBAL_RATING;
use crate::arch::x86_64::ioapic::{DeliveryMode, IsaRoute, Polarity, RedirectionEntry, Trigger};
use crate::cmdline::ClockeventsChoice;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// How a comparator's interrupt reaches a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// FSB message to the LAPIC (MSI).
    Fsb,
    /// An IOAPIC pin from the route capability.
    Ioapic { gsi: u32 },
    /// Legacy replacement: comparator 0 on IRQ0, 1 on IRQ8, reaching the IOAPIC as `route`
    /// says (its GSI, polarity and trigger after the MADT's interrupt source override).
    Legacy { route: IsaRoute },
    /// Legacy replacement on a CPU without a local APIC: IRQ0 (comparator 0) or IRQ8
    /// (comparator 1) through the 8259s, edge-triggered, to the one CPU.
    Pic { irq: u8 },
}

impl Delivery {
    pub fn kind(self) -> &'static str {
        match self {
            Delivery::Fsb => "fsb",
            Delivery::Ioapic { .. } => "ioapic",
            Delivery::Legacy { .. } => "legacy",
            Delivery::Pic { .. } => "legacy_8259",
        }
    }
    pub fn gsi(self) -> Option<u32> {
        match self {
            Delivery::Fsb | Delivery::Pic { .. } => None,
            Delivery::Ioapic { gsi } => Some(gsi),
            Delivery::Legacy { route } => Some(route.gsi),
        }
    }

    /// Level-triggered: the comparator holds its line until its status bit is cleared, and an
    /// interrupt without the bit is not ours. A free IOAPIC pin is driven level, active low
    /// (a PCI-style line, as Linux's `/dev/hpet` and FreeBSD do); the legacy route is the ISA
    /// line its override describes (edge unless the firmware says level).
    pub fn level(self) -> bool {
        match self {
            Delivery::Fsb | Delivery::Pic { .. } => false,
            Delivery::Ioapic { .. } => true,
            Delivery::Legacy { route } => route.trigger == Trigger::Level,
        }
    }

    /// The IOAPIC redirection entry delivering this comparator's interrupt as `vector` to the
    /// APIC id `destination` (`None` for FSB, which needs no pin).
    pub fn ioapic_entry(self, vector: u8, destination: u32) -> Option<RedirectionEntry> {
        let (polarity, trigger) = match self {
            Delivery::Fsb | Delivery::Pic { .. } => return None,
            Delivery::Ioapic { .. } => (Polarity::ActiveLow, Trigger::Level),
            Delivery::Legacy { route } => (route.polarity, route.trigger),
        };
        Some(RedirectionEntry {
            vector,
            delivery: DeliveryMode::Fixed,
            logical: false,
            polarity,
            trigger,
            masked: false,
            destination,
        })
    }
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Delivery::Fsb => write!(f, "FSB message"),
            Delivery::Ioapic { gsi } => write!(f, "IOAPIC GSI {gsi}, level, active low"),
            Delivery::Legacy { route } => write!(
                f,
                "legacy replacement route, IRQ{} -> GSI {}, {}, {}",
                route.irq,
                route.gsi,
                if route.trigger == Trigger::Level { "level" } else { "edge" },
                if route.polarity == Polarity::ActiveLow { "active low" } else { "active high" }
            ),
            Delivery::Pic { irq } => write!(f, "legacy replacement route, IRQ{irq} through the 8259, edge"),
        }
    }
}

/// What the planning needs to know of a comparator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComparatorCaps {
    pub index: usize,
    pub route_cap: u32,
    pub fsb: bool,
}

/// Each comparator's delivery on a CPU without a local APIC, where only the 8259s reach it:
/// the legacy replacement route (comparator 0 on IRQ0, 1 on IRQ8) if the block has it, else
/// none; the other comparators have no route.
pub fn pic_deliveries(comparators: usize, legacy_capable: bool) -> Vec<Option<Delivery>> {
    (0..comparators)
        .map(|i| match i {
            0 if legacy_capable => Some(Delivery::Pic { irq: 0 }),
            1 if legacy_capable => Some(Delivery::Pic { irq: 8 }),
            _ => None,
        })
        .collect()
}

/// Chooses each comparator's delivery. `free_gsi(route_cap)` claims and returns a free
/// non-ISA IOAPIC pin allowed by the capability; `legacy_routes` are how IRQ0 and IRQ8 arrive
/// (after overrides), `None` when the block is not legacy-capable. Comparators 0 and 1 go
/// legacy together when comparator 0 has no other way, since the legacy bit reroutes both.
pub fn choose_deliveries(
    caps: &[ComparatorCaps],
    legacy_routes: Option<(IsaRoute, IsaRoute)>,
    mut free_gsi: impl FnMut(u32) -> Option<u32>,
) -> Vec<Option<Delivery>> {
    let mut own_route = |c: &ComparatorCaps| {
        if c.fsb { Some(Delivery::Fsb) } else { free_gsi(c.route_cap).map(|gsi| Delivery::Ioapic { gsi }) }
    };
    let mut deliveries: Vec<Option<Delivery>> = Vec::new();
    let mut rest = caps;
    if let Some(first) = caps.first() {
        match (own_route(first), legacy_routes) {
            (None, Some((irq0, irq8))) => {
                deliveries.push(Some(Delivery::Legacy { route: irq0 }));
                if caps.len() > 1 {
                    deliveries.push(Some(Delivery::Legacy { route: irq8 }));
                }
                rest = &caps[deliveries.len()..];
            }
            (d, _) => {
                deliveries.push(d);
                rest = &caps[1..];
            }
        }
    }
    deliveries.extend(rest.iter().map(own_route));
    deliveries
}

/// What a comparator is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The per-CPU device of this CPU.
    PerCpu(usize),
    /// The global device, interrupting this CPU (which wakes the others by IPI).
    Global(usize),
    Unused,
}

/// The arrangement of comparators over CPUs and the rule that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// One role per entry of `usable`, in order.
    pub roles: Vec<Role>,
    pub rule: String,
}

/// Decides which usable comparators serve which CPU. `usable` are comparator indices that
/// have a delivery and have not failed; `reachable[c]` says whether an IOAPIC entry or an MSI
/// can name online CPU `c` (see `destination.rs`). Per-CPU comparators go to reachable CPUs
/// in order; a CPU that cannot be reached gets none, and `auto` then keeps a global device as
/// broadcast for it. The global device interrupts the first reachable CPU without a per-CPU
/// comparator (served without an IPI), else the first reachable CPU.
pub fn plan(usable: &[usize], reachable: &[bool], choice: ClockeventsChoice) -> Plan {
    let n = usable.len();
    let cpus = reachable.len();
    let targets: Vec<usize> = (0..cpus).filter(|&c| reachable[c]).collect();
    let unreachable: Vec<usize> = (0..cpus).filter(|&c| !reachable[c]).collect();
    // Per-CPU comparators for the first `count` reachable CPUs, then (maybe) a global one.
    let arrange = |count: usize, global: bool| -> Vec<Role> {
        let count = count.min(targets.len()).min(n);
        let global_target = targets.get(count).or(targets.first()).copied();
        (0..n)
            .map(|i| match (i < count, global && i == count, global_target) {
                (true, _, _) => Role::PerCpu(targets[i]),
                (false, true, Some(t)) => Role::Global(t),
                _ => Role::Unused,
            })
            .collect()
    };
    let unreachable_note = if unreachable.is_empty() {
        String::new()
    } else {
        let mut set = kernel_time::clockevents::CpuSet::EMPTY;
        unreachable.iter().for_each(|&c| set.insert(c));
        format!("; CPUs {set} cannot be named by an IOAPIC entry or MSI: no per-CPU comparator")
    };
    let (roles, rule): (Vec<Role>, String) = match choice {
        ClockeventsChoice::Lapic => {
            (alloc::vec![Role::Unused; n], "clockevents=lapic: no HPET event device".into())
        }
        _ if n == 0 => (Vec::new(), "no usable comparator: LAPIC timer only".into()),
        _ if targets.is_empty() => (
            alloc::vec![Role::Unused; n],
            "no CPU can be named by an IOAPIC entry or MSI: LAPIC timer only".into(),
        ),
        ClockeventsChoice::Global => (
            arrange(0, true),
            format!("clockevents=global: one global HPET device, every CPU by broadcast{unreachable_note}"),
        ),
        ClockeventsChoice::Broadcast => (
            arrange(0, true),
            format!(
                "clockevents=broadcast: every CPU on its LAPIC timer, one global HPET device standing by as broadcast{unreachable_note}"
            ),
        ),
        ClockeventsChoice::PerCpu => {
            let count = targets.len().min(n);
            (
                arrange(count, false),
                format!(
                    "clockevents=percpu: per-CPU comparators for {count} of {cpus} CPUs, no global device{unreachable_note}"
                ),
            )
        }
        ClockeventsChoice::Auto if n >= cpus && unreachable.is_empty() => {
            (arrange(cpus, false), format!("per-CPU: {n} usable comparators >= {cpus} CPUs"))
        }
        ClockeventsChoice::Auto => {
            let count = (n - 1).min(targets.len());
            let why = if unreachable.is_empty() {
                format!("{n} usable comparators < {cpus} CPUs")
            } else {
                format!("{n} usable comparators, {} of {cpus} CPUs reachable", targets.len())
            };
            let rule = format!(
                "partial: {why}: {count} per-CPU, one global device (rating {GLOBAL_RATING}) as broadcast for the rest{unreachable_note}"
            );
            (arrange(count, true), rule)
        }
    };
    Plan { roles, rule }
}

/// Decides a later HPET block's comparators (after the first block's [`plan`]): per-CPU, in
/// order, for the reachable CPUs that the blocks before it left without a per-CPU comparator
/// (`served[c]`), and nothing else: the global device, if any, is the first block's, and a
/// comparator with no CPU left is unused. Each comparator is then programmed against its own
/// block's counter; the CPUs it serves keep the first block's broadcast for deep idle.
pub fn plan_later_block(usable: &[usize], reachable: &[bool], served: &[bool]) -> Plan {
    let left: Vec<usize> =
        (0..reachable.len()).filter(|&c| reachable[c] && !served.get(c).copied().unwrap_or(false)).collect();
    let roles: Vec<Role> =
        (0..usable.len()).map(|i| left.get(i).map_or(Role::Unused, |&c| Role::PerCpu(c))).collect();
    let given = usable.len().min(left.len());
    let rule = if left.is_empty() {
        "every reachable CPU has a per-CPU comparator already: its comparators unused".into()
    } else {
        format!(
            "per-CPU for {given} of the {} CPUs left without a comparator ({} usable comparators)",
            left.len(),
            usable.len()
        )
    };
    Plan { roles, rule }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_block_serves_the_cpus_the_first_left_over_and_nothing_else() {
        // 4 CPUs, the first block per-CPU on 0 and 1 (and global for 2 and 3): block #1's
        // three comparators go to CPUs 2 and 3, the third stays unused, none global.
        let p = plan_later_block(&[0, 1, 2], &[true; 4], &[true, true, false, false]);
        assert_eq!(p.roles, [Role::PerCpu(2), Role::PerCpu(3), Role::Unused]);
        assert_eq!(p.rule, "per-CPU for 2 of the 2 CPUs left without a comparator (3 usable comparators)");
        // Fewer comparators than CPUs left: the first ones get them.
        let p = plan_later_block(&[1], &[true; 4], &[true, false, false, false]);
        assert_eq!(p.roles, [Role::PerCpu(1)]);
        // A CPU no interrupt message can name gets none.
        let p = plan_later_block(&[0, 1], &[true, true, false, true], &[true, false, false, false]);
        assert_eq!(p.roles, [Role::PerCpu(1), Role::PerCpu(3)]);
    }

    #[test]
    fn a_later_block_beside_a_block_serving_every_cpu_stands_by() {
        let p = plan_later_block(&[0, 1, 2], &[true, true], &[true, true]);
        assert_eq!(p.roles, [Role::Unused; 3]);
        assert!(p.rule.starts_with("every reachable CPU has a per-CPU comparator already"));
    }

    const Q35_CAP: u32 = 0x00ff_0104;

    fn caps(n: usize, route_cap: u32, fsb: bool) -> Vec<ComparatorCaps> {
        (0..n).map(|index| ComparatorCaps { index, route_cap, fsb }).collect()
    }

    /// Hands out GSIs 16.. from the capability, as the IOAPIC driver does on q35.
    fn q35_pins() -> impl FnMut(u32) -> Option<u32> {
        let mut taken = 0u32;
        move |cap| {
            let g = (16..24).find(|&g| cap & (1 << g) != 0 && taken & (1 << g) == 0)?;
            taken |= 1 << g;
            Some(g)
        }
    }

    #[test]
    fn q35_comparators_get_distinct_ioapic_pins() {
        let d = choose_deliveries(&caps(3, Q35_CAP, false), Some(isa_routes(&[])), q35_pins());
        assert_eq!(
            d,
            [
                Some(Delivery::Ioapic { gsi: 16 }),
                Some(Delivery::Ioapic { gsi: 17 }),
                Some(Delivery::Ioapic { gsi: 18 })
            ]
        );
    }

    #[test]
    fn fsb_is_preferred_when_offered() {
        let d = choose_deliveries(&caps(2, Q35_CAP, true), Some(isa_routes(&[])), q35_pins());
        assert_eq!(d, [Some(Delivery::Fsb), Some(Delivery::Fsb)]);
    }

    /// How IRQ0 and IRQ8 arrive, after `overrides` (ISA IRQ, GSI, MPS INTI flags).
    fn isa_routes(overrides: &[(u8, u32, u16)]) -> (IsaRoute, IsaRoute) {
        use crate::arch::x86_64::acpi;
        let entries: Vec<Vec<u8>> = core::iter::once(acpi::build::io_apic(0, 0xfec0_0000, 0))
            .chain(
                overrides.iter().map(|&(irq, gsi, flags)| acpi::build::interrupt_override(irq, gsi, flags)),
            )
            .collect();
        let madt = acpi::build::madt(0xfee0_0000, 1, &entries);
        let o = acpi::parse_madt(&madt).unwrap().overrides;
        (IsaRoute::for_irq(0, &o), IsaRoute::for_irq(8, &o))
    }

    #[test]
    fn without_a_local_apic_only_the_legacy_route_through_the_8259_is_left() {
        assert_eq!(
            pic_deliveries(3, true),
            [Some(Delivery::Pic { irq: 0 }), Some(Delivery::Pic { irq: 8 }), None]
        );
        assert_eq!(pic_deliveries(3, false), [None, None, None]);
        let d = Delivery::Pic { irq: 0 };
        assert_eq!((d.gsi(), d.level(), d.ioapic_entry(0x20, 0)), (None, false, None));
    }

    #[test]
    fn pc_machine_falls_back_to_legacy_for_comparators_0_and_1() {
        // -machine pc: GSI 2 only, owned by the PIT: no pin is free. IRQ0 -> GSI 2 by override.
        let routes = isa_routes(&[(0, 2, 0)]);
        let d = choose_deliveries(&caps(3, 0x4, false), Some(routes), |_| None);
        assert_eq!(
            d,
            [Some(Delivery::Legacy { route: routes.0 }), Some(Delivery::Legacy { route: routes.1 }), None]
        );
        assert_eq!((d[0].unwrap().gsi(), d[1].unwrap().gsi()), (Some(2), Some(8)));
    }

    #[test]
    fn legacy_route_takes_polarity_and_trigger_from_the_override() {
        // Bus-conforming IRQ0 (QEMU's): the ISA line, edge, active high.
        let (irq0, _) = isa_routes(&[(0, 2, 0)]);
        let e = Delivery::Legacy { route: irq0 }.ioapic_entry(0x31, 1).unwrap();
        assert_eq!(
            (e.polarity, e.trigger, e.vector, e.destination),
            (Polarity::ActiveHigh, Trigger::Edge, 0x31, 1)
        );
        assert!(!Delivery::Legacy { route: irq0 }.level());
        // A firmware that declares IRQ0 level, active low (flags 0b1111): the entry says so, and
        // the comparator is then driven level (its status bit checked and cleared).
        let (irq0, _) = isa_routes(&[(0, 2, 0x000f)]);
        let d = Delivery::Legacy { route: irq0 };
        let e = d.ioapic_entry(0x31, 1).unwrap();
        assert_eq!((e.polarity, e.trigger), (Polarity::ActiveLow, Trigger::Level));
        assert_eq!(e.encode() & (1 << 13 | 1 << 15), 1 << 13 | 1 << 15, "polarity and trigger bits");
        assert!(d.level());
        // An IOAPIC pin of the route capability: level, active low; FSB needs no entry.
        let e = Delivery::Ioapic { gsi: 16 }.ioapic_entry(0x32, 3).unwrap();
        assert_eq!((e.polarity, e.trigger, e.destination), (Polarity::ActiveLow, Trigger::Level, 3));
        assert_eq!(Delivery::Fsb.ioapic_entry(0x33, 0), None);
    }

    #[test]
    fn no_route_and_no_legacy_leaves_comparators_unusable() {
        let d = choose_deliveries(&caps(2, 0x4, false), None, |_| None);
        assert_eq!(d, [None, None]);
    }

    #[test]
    fn many_comparators_run_out_of_pins() {
        let d = choose_deliveries(&caps(10, Q35_CAP, false), Some(isa_routes(&[])), q35_pins());
        assert_eq!(d.iter().filter(|d| d.is_some()).count(), 8, "GSIs 16-23: eight pins");
        assert_eq!(d[9], None);
    }

    fn all(n: usize) -> Vec<bool> {
        alloc::vec![true; n]
    }

    #[test]
    fn enough_comparators_give_every_cpu_its_own() {
        let p = plan(&[0, 1, 2], &all(2), ClockeventsChoice::Auto);
        assert_eq!(p.roles, [Role::PerCpu(0), Role::PerCpu(1), Role::Unused]);
        assert_eq!(p.rule, "per-CPU: 3 usable comparators >= 2 CPUs");
    }

    #[test]
    fn too_few_comparators_give_partial_per_cpu_plus_a_global_device() {
        let p = plan(&[0, 1, 2], &all(4), ClockeventsChoice::Auto);
        assert_eq!(p.roles, [Role::PerCpu(0), Role::PerCpu(1), Role::Global(2)]);
        assert!(p.rule.starts_with("partial: 3 usable comparators < 4 CPUs"));
        assert_eq!(plan(&[5], &all(2), ClockeventsChoice::Auto).roles, [Role::Global(0)]);
    }

    #[test]
    fn forced_choices_are_obeyed() {
        assert_eq!(
            plan(&[0, 1, 2], &all(2), ClockeventsChoice::Global).roles,
            [Role::Global(0), Role::Unused, Role::Unused]
        );
        assert_eq!(
            plan(&[0, 1], &all(4), ClockeventsChoice::PerCpu).roles,
            [Role::PerCpu(0), Role::PerCpu(1)]
        );
        assert_eq!(plan(&[0, 1], &all(1), ClockeventsChoice::Lapic).roles, [Role::Unused, Role::Unused]);
        assert_eq!(
            plan(&[0, 1, 2], &all(4), ClockeventsChoice::Broadcast).roles,
            [Role::Global(0), Role::Unused, Role::Unused]
        );
        assert!(plan(&[], &all(4), ClockeventsChoice::Auto).roles.is_empty());
    }

    #[test]
    fn unreachable_cpus_get_no_per_cpu_comparator_and_a_broadcast_device_stands_by() {
        // CPUs 1 and 3 have APIC ids no IOAPIC entry or MSI can name.
        let reachable = [true, false, true, false];
        let p = plan(&[0, 1, 2, 3, 4], &reachable, ClockeventsChoice::Auto);
        assert_eq!(p.roles, [Role::PerCpu(0), Role::PerCpu(2), Role::Global(0), Role::Unused, Role::Unused]);
        assert!(p.rule.contains("2 of 4 CPUs reachable"), "{}", p.rule);
        assert!(
            p.rule.ends_with("CPUs 1, 3 cannot be named by an IOAPIC entry or MSI: no per-CPU comparator")
        );
        // percpu: only the reachable ones, no global device.
        let p = plan(&[0, 1, 2, 3], &reachable, ClockeventsChoice::PerCpu);
        assert_eq!(p.roles, [Role::PerCpu(0), Role::PerCpu(2), Role::Unused, Role::Unused]);
        // The global device interrupts a reachable CPU.
        let p = plan(&[7], &[false, true], ClockeventsChoice::Global);
        assert_eq!(p.roles, [Role::Global(1)]);
        // Nobody reachable: no HPET device at all.
        let p = plan(&[0, 1], &[false, false], ClockeventsChoice::Auto);
        assert_eq!(p.roles, [Role::Unused, Role::Unused]);
        assert_eq!(p.rule, "no CPU can be named by an IOAPIC entry or MSI: LAPIC timer only");
    }

    #[test]
    fn the_global_device_interrupts_the_first_cpu_without_its_own() {
        assert_eq!(plan(&[0, 1, 2], &all(8), ClockeventsChoice::Auto).roles[2], Role::Global(2));
        // Every CPU has its own (a broadcast standing by for unreachable ones only).
        let p = plan(&[0, 1, 2], &[true, true, false], ClockeventsChoice::Auto);
        assert_eq!(p.roles, [Role::PerCpu(0), Role::PerCpu(1), Role::Global(0)]);
    }
}
