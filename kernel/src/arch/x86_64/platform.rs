//! Platform bring-up on the boot CPU: firmware tables, 8259s off, LAPIC, IOAPICs, HPET,
//! calibration. Each step that fails logs one line with its reason and records a fallback; none
//! stops the boot.

use super::calibrate::{self, Calibration};
use super::hpet::{ComparatorConfig, Hpet};
use super::ioapic::{IOAPICS, IsaRoute};
use super::pm_timer::PmTimer;
use super::{acpi, deferred, destination, lapic, memory, pic, smp, tsc};
use crate::timer_report::{
    ComparatorReport, CpuReport, DestinationsReport, HpetBlockReport, HpetReport, IoApicReport, LapicReport,
    MemoryReport, SCHEMA_VERSION, TimerReport, Verdict,
};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

/// What the platform bring-up needs from the firmware's tables.
#[derive(Debug)]
pub struct FirmwareInfo {
    /// Physical address of the HPET block of the first valid HPET table (the IOAPICs are
    /// checked against it).
    pub hpet_base: Option<u64>,
    /// Every HPET table (one block each), in the firmware's order, or why it is unsound.
    pub hpet_tables: Vec<Result<acpi::HpetTable, acpi::AcpiProblem>>,
    pub cpus_enabled: u32,
    /// (id, physical address, first GSI) of every IOAPIC.
    pub ioapics: Vec<(u8, u64, u32)>,
    /// GSIs that ISA IRQs 0-15 reach after the interrupt source overrides.
    pub isa_gsis: Vec<u32>,
    /// Routes (GSI, polarity, trigger) of ISA IRQs 0-15 after the interrupt source overrides.
    pub isa_routes: Vec<IsaRoute>,
    /// APIC ids of the processors the MADT enables.
    pub apic_ids: Vec<u32>,
    /// The ACPI PM timer from the FADT.
    pub pm_timer: Option<acpi::PmTimerInfo>,
    /// The FADT's CMOS RTC fields (none without a usable FADT).
    pub rtc: Option<acpi::FadtRtc>,
    /// The FADT's PM1a control block and FACS (what S3 needs), or why there are none.
    pub sleep: Result<acpi::FadtSleep, acpi::AcpiProblem>,
    /// S3's SLP_TYP values from the DSDT, or why there are none.
    pub s3: Result<acpi::sleep_type::SleepType, acpi::sleep_type::SleepTypeProblem>,
    /// The MADT's interrupt source overrides (checked against the IOAPICs once they are up).
    pub overrides: Vec<acpi::InterruptOverride>,
}

impl Default for FirmwareInfo {
    fn default() -> Self {
        FirmwareInfo {
            hpet_base: None,
            hpet_tables: Vec::new(),
            cpus_enabled: 0,
            ioapics: Vec::new(),
            isa_gsis: Vec::new(),
            isa_routes: Vec::new(),
            apic_ids: Vec::new(),
            pm_timer: None,
            rtc: None,
            sleep: Err(acpi::AcpiProblem::TableNotFound("FADT")),
            s3: Err(acpi::sleep_type::SleepTypeProblem::Dsdt(acpi::AcpiProblem::TableNotFound("FADT"))),
            overrides: Vec::new(),
        }
    }
}

impl FirmwareInfo {
    /// Reads the ACPI tables; a missing HPET table is a configuration (no HPET), any other
    /// problem is a fallback with its reason.
    fn read(rsdp: Option<u64>, faults: acpi::TableFaults, fallbacks: &mut Vec<String>) -> FirmwareInfo {
        let tables = acpi::read_platform_tables(rsdp, faults);
        let mut info = FirmwareInfo::default();
        let mut fall_back = |reason: String| {
            log::warn!("fallback: {reason}");
            fallbacks.push(reason);
        };
        match tables.madt {
            Ok(madt) => {
                madt.log();
                if let Some(e) = madt.malformed {
                    fall_back(format!("{e}: the MADT's entries before it are used, the rest ignored"));
                }
                for why in &madt.ignored {
                    fall_back(format!("MADT: {why}"));
                }
                info.overrides = madt.overrides.clone();
                info.cpus_enabled = madt.enabled_processors().count() as u32;
                info.apic_ids = madt.enabled_processors().map(|p| p.apic_id).collect();
                info.ioapics = madt.ioapics.iter().map(|io| (io.id, io.address, io.gsi_base)).collect();
                info.isa_gsis = (0..16).map(|irq| madt.isa_irq_to_gsi(irq).0).collect();
                info.isa_routes = IsaRoute::all(&madt.overrides);
            }
            Err(e) => {
                fall_back(format!("MADT unusable ({e}): only the boot CPU runs, no IOAPIC routing"));
                // Without overrides, assume the ISA identity mapping so no ISA line is handed out.
                info.isa_gsis = (0..16).collect();
                info.isa_routes = IsaRoute::all(&[]);
            }
        }
        // Each table is judged, and logged, with its block's probe (`probe_hpet_blocks`).
        if tables.hpets.is_empty() {
            log::info!("no HPET table: this machine has no HPET");
        }
        info.hpet_base = tables.hpets.iter().find_map(|t| t.as_ref().ok()).map(|t| t.base);
        info.hpet_tables = tables.hpets;
        info.rtc = tables.rtc.ok();
        match tables.sleep {
            Ok(s) => {
                let or_none = |a: Option<u64>| a.map_or_else(|| "none".into(), |a| format!("{a:#x}"));
                log::info!(
                    "FADT: PM1a_EVT at {:#x}, PM1b_EVT {}, PM1_EVT_LEN {}, PM1a_CNT at {:#x}, PM1b_CNT {}, FACS at {:#x}, DSDT at {:#x}",
                    s.pm1a_evt,
                    or_none(s.pm1b_evt),
                    s.pm1_evt_len,
                    s.pm1a_cnt,
                    or_none(s.pm1b_cnt),
                    s.facs,
                    s.dsdt
                );
            }
            Err(e @ acpi::AcpiProblem::TableNotFound(_)) => log::info!("no sleep states: {e}"),
            Err(e) => fall_back(format!("{e}: no sleep states (S3) on this machine")),
        }
        info.sleep = tables.sleep;
        match tables.s3 {
            Ok(t) => log::info!("DSDT: \\_S3_ gives SLP_TYPa {}, SLP_TYPb {}: S3 offered", t.a, t.b),
            Err(e) => log::info!("no S3: {e}"),
        }
        info.s3 = tables.s3;
        match tables.pm_timer {
            Ok(pm) => {
                log::info!("FADT: ACPI PM timer at I/O port {:#x}, {}-bit", pm.port, pm.bits);
                info.pm_timer = Some(pm);
            }
            Err(e @ (acpi::AcpiProblem::TableNotFound(_) | acpi::AcpiProblem::NoPmTimer)) => {
                log::info!("no ACPI PM timer: {e}")
            }
            Err(e) => fall_back(format!("ACPI PM timer not used: {e}")),
        }
        info
    }
}

/// What the bring-up found and decided.
pub struct Platform {
    pub firmware: FirmwareInfo,
    /// The first HPET block accepted: the one whose counter is a clocksource.
    pub hpet: Option<&'static Hpet>,
    /// Every other HPET block accepted (block number, block): their comparators serve CPUs
    /// against their own main counters.
    pub more_hpets: Vec<(u8, &'static Hpet)>,
    /// Every HPET table and what became of it, for the report.
    pub hpet_blocks: Vec<HpetBlockReport>,
    pub lapic: Option<lapic::Mode>,
    pub calibration: Option<Calibration>,
    /// One sentence per fallback taken.
    pub fallbacks: Vec<String>,
    /// Heap and frames taken per application processor brought online (0 before or without).
    pub memory_per_ap: u64,
}

impl Platform {
    /// Records and logs a fallback (one line, where the decision is taken).
    pub fn fall_back(&mut self, reason: String) {
        log::warn!("fallback: {reason}");
        self.fallbacks.push(reason);
    }
}

/// Why the MADT's IOAPIC at `phys` serving from `gsi_base` cannot be used without touching it:
/// address 0, a window over the HPET's block or the local APIC's page (what would be written
/// there as redirection entries would land in those devices' registers), or a first GSI that
/// an IOAPIC already taken serves (two chips claiming one GSI: the first keeps it).
fn ioapic_conflict(phys: u64, gsi_base: u32, hpet_base: Option<u64>) -> Option<String> {
    const IOAPIC_WINDOW: u64 = 0x20;
    let overlaps = |base: u64, len: u64| phys < base + len && base < phys + IOAPIC_WINDOW;
    if phys == 0 {
        return Some("the MADT gives it address 0".into());
    }
    if let Some(h) = hpet_base.filter(|&h| overlaps(h, 0x400)) {
        return Some(format!("its registers would overlap the HPET block at {h:#x}"));
    }
    // The local APIC's architectural base (IA32_APIC_BASE's reset value).
    const LAPIC_BASE: u64 = 0xfee0_0000;
    if overlaps(LAPIC_BASE, 0x1000) {
        return Some(format!("its registers would overlap the local APIC at {LAPIC_BASE:#x}"));
    }
    let owner = IOAPICS.lock().chips().iter().find(|c| c.serves(gsi_base)).map(|c| c.id);
    owner.map(|other| format!("its first GSI {gsi_base} is served by IOAPIC {other} already"))
}

/// Interrupt source overrides that send an ISA IRQ to a GSI no IOAPIC serves are ignored (the
/// IRQ keeps its identity GSI), each with its reason, and the ISA routes recomputed.
fn check_overrides(p: &mut Platform) {
    let overrides = core::mem::take(&mut p.firmware.overrides);
    let (kept, unserved): (Vec<_>, Vec<_>) =
        overrides.into_iter().partition(|o| IOAPICS.lock().lookup(o.gsi).is_ok());
    for o in &unserved {
        p.fall_back(format!(
            "MADT: the override of ISA IRQ {} to GSI {} is ignored: no IOAPIC serves GSI {}",
            o.source_irq, o.gsi, o.gsi
        ));
    }
    if !unserved.is_empty() {
        p.firmware.isa_routes = IsaRoute::all(&kept);
        p.firmware.isa_gsis = p.firmware.isa_routes.iter().map(|r| r.gsi).collect();
    }
    p.firmware.overrides = kept;
}

/// Brings up the platform from what the ACPI tables at `rsdp` say (possibly nothing).
/// `hpet_counter_stopped`: fault injection, the HPET's counter is left halted at its probe.
/// A free-running counter the bring-up found, handed to whoever keeps time as soon as it is
/// probed (the `counters` argument of [`init_bsp`]: the clocksource's registration), so that
/// the calibration after it already runs on the best clock.
pub enum Counter {
    /// The HPET's main counter.
    Hpet(&'static Hpet),
    /// The ACPI PM timer.
    PmTimer(PmTimer),
}

/// Takes a [`Counter`] into use; an error says why it is not used.
pub type CounterSink = fn(Counter) -> Result<(), String>;

pub fn init_bsp(
    rsdp: Option<u64>,
    faults: acpi::TableFaults,
    hpet_counter_stopped: bool,
    lapic_silent: bool,
    counters: CounterSink,
) -> Platform {
    let mut fallbacks = Vec::new();
    let firmware = FirmwareInfo::read(rsdp, faults, &mut fallbacks);
    pic::remap_and_mask();
    let lapic = match lapic::init_bsp(lapic_silent) {
        Ok(mode) => Some(mode),
        Err(e) => {
            let reason = format!(
                "LAPIC unusable ({e}): one CPU, device interrupts through the 8259s, no local timer, no IPIs"
            );
            log::warn!("fallback: {reason}");
            fallbacks.push(reason);
            // With its APIC absent or disabled, the CPU takes the 8259's INTR directly.
            pic::deliver_interrupts();
            None
        }
    };
    // The boot CPU's per-CPU state exists with or without a LAPIC (`this_cpu` must work).
    smp::init_bsp();
    deferred::init_bsp();
    let mut p = Platform {
        firmware,
        hpet: None,
        more_hpets: Vec::new(),
        hpet_blocks: Vec::new(),
        lapic,
        calibration: None,
        fallbacks,
        memory_per_ap: 0,
    };
    if let Some(early) = tsc::early_fallback() {
        p.fall_back(early.to_string());
    }

    for (id, phys, gsi_base) in p.firmware.ioapics.clone() {
        if let Some(why) = ioapic_conflict(phys, gsi_base, p.firmware.hpet_base) {
            p.fall_back(format!("IOAPIC {id} at {phys:#x} skipped: {why}"));
            continue;
        }
        let added =
            IOAPICS.lock().add(id, phys, gsi_base).map(|chip| (chip.version, chip.pins, chip.last_gsi()));
        match added {
            Ok((version, pins, last)) => log::info!(
                "IOAPIC {id} at {phys:#x}: version {version:#x}, {pins} pins, GSIs {gsi_base}-{last}, all masked"
            ),
            Err(e) => p.fall_back(format!("IOAPIC {id} at {phys:#x} skipped: {e}")),
        }
    }
    if IOAPICS.lock().chips().is_empty() {
        p.fall_back("no usable IOAPIC: device interrupts cannot be routed through one; timers use the LAPIC (and the 8259's IRQ0, the PIT, in virtual-wire mode)".to_string());
    } else {
        check_overrides(&mut p);
    }

    probe_hpet_blocks(&mut p, hpet_counter_stopped, counters);
    let pm_timer = p.firmware.pm_timer.and_then(|info| {
        let probed = PmTimer::probe(info).map_err(|e| e.to_string());
        match probed.and_then(|pm| counters(Counter::PmTimer(pm)).map(|()| pm)) {
            Ok(pm) => Some(pm),
            Err(e) => {
                p.fall_back(format!("ACPI PM timer at I/O port {:#x} not used: {e}", info.port));
                None
            }
        }
    });

    // Without a LAPIC, the TSC alone (its early PIT estimate is too rough to judge timers by).
    match calibrate::calibrate(p.hpet, pm_timer.as_ref(), lapic.is_some()) {
        Some(c) => {
            if let Some(e) = c.hpet_failure {
                p.fall_back(format!("HPET calibration failed ({e}): calibrated against the {}", c.reference));
            }
            tsc::set_frequency(c.tsc_hz, c.tsc_spread_ppm);
            if lapic.is_some() {
                log::info!(
                    "calibrated against the {}: LAPIC timer {} Hz (bus / {}), spread {} ppm; TSC {} Hz, spread {} ppm",
                    c.reference,
                    c.lapic_timer_hz,
                    lapic::TIMER_DIVISOR,
                    c.lapic_spread_ppm,
                    c.tsc_hz,
                    c.tsc_spread_ppm
                );
                p.calibration = Some(c);
            } else {
                log::info!(
                    "calibrated against the {}: TSC {} Hz, spread {} ppm (no LAPIC timer)",
                    c.reference,
                    c.tsc_hz,
                    c.tsc_spread_ppm
                );
            }
        }
        None => {
            p.fall_back("no reference clock ran (HPET, ACPI PM timer, PIT): LAPIC timer uncalibrated".into())
        }
    }
    x86_64::instructions::interrupts::enable();
    p
}

/// Judges every HPET table (`acpi::hpet_blocks`) and probes each block that passes, one log
/// line per table. The first block accepted is the platform's HPET (its counter offered as a
/// clock, `hpet_counter_stopped` applied to it); later ones serve CPUs with their comparators
/// only. A rejection is a fallback only when no block is left: beside a working block, a
/// table the firmware got wrong is logged and reported, and costs nothing.
fn probe_hpet_blocks(p: &mut Platform, hpet_counter_stopped: bool, counters: CounterSink) {
    let tables = core::mem::take(&mut p.firmware.hpet_tables);
    let decisions = acpi::hpet_blocks::judge(&tables, |t, first| {
        Hpet::probe(t.base, first && hpet_counter_stopped).map(|h| &*Box::leak(Box::new(h)))
    });
    p.firmware.hpet_tables = tables;
    let first = decisions.iter().find_map(|d| d.outcome.as_ref().ok().map(|h| (d.parsed, *h)));
    for d in &decisions {
        p.hpet_blocks.push(HpetBlockReport {
            number: d.parsed.map(|t| t.hpet_number),
            address: d.parsed.map(|t| t.base),
            accepted: d.accepted(),
            reason: d.outcome.as_ref().err().map(|e| e.to_string()),
        });
        let line = d.describe();
        match (&d.outcome, first) {
            (Ok(h), _) => {
                let role = if p.hpet.is_none() { "its counter a clock" } else { "comparators only" };
                log::info!("{line}: accepted ({role})");
                h.log_summary();
                match (p.hpet, d.parsed) {
                    (None, _) => p.hpet = Some(h),
                    (Some(_), Some(t)) => p.more_hpets.push((t.hpet_number, h)),
                    (Some(_), None) => unreachable!("an accepted table parsed"),
                }
            }
            (Err(e), None) => p.fall_back(format!("{line}: rejected: {e}; no HPET")),
            (Err(e), Some((t, h))) => log::warn!(
                "{line}: rejected: {e}; block #{} at {:#x} serves",
                t.map_or(0, |t| t.hpet_number),
                h.phys()
            ),
        }
    }
    if let Some(h) = p.hpet
        && let Err(e) = counters(Counter::Hpet(h))
    {
        p.fall_back(format!("HPET main counter not used as a clock: {e}"));
    }
}

/// Heap added per application processor before it starts: its tick (a queue for 1024
/// timers), its IST stack, its per-CPU area and the workload's share, with room to spare.
const HEAP_PER_AP: u64 = 256 * 1024;

impl Platform {
    /// Starts every processor the MADT enables, other than the boot CPU. Returns one sentence
    /// per CPU left out (not yet logged): the caller records each with [`Platform::fall_back`].
    pub fn start_application_processors(&mut self) -> Vec<String> {
        let bsp = smp::percpu::this_cpu().apic_id;
        let aps: Vec<u32> = self.firmware.apic_ids.iter().copied().filter(|&id| id != bsp).collect();
        if self.lapic.is_none() {
            return aps
                .iter()
                .map(|id| format!("CPU with APIC id {id} left out: no usable LAPIC to start it"))
                .collect();
        }
        // Each CPU's state comes from the heap (its tick's timer queue, its IST stack, its
        // per-CPU area): grow the heap for them first, so that many CPUs do not eat the boot heap.
        if let Err(short) = memory::extend_heap(HEAP_PER_AP * aps.len() as u64) {
            log::warn!("the heap grew {short} bytes short of what {} more CPUs need", aps.len());
        }
        let taken = || memory::heap_used() + memory::frames_allocated();
        let before = taken();
        let results = smp::start_aps(&aps);
        let started = results.iter().filter(|(_, r)| r.is_ok()).count() as u64;
        if let Some(per_ap) = taken().saturating_sub(before).checked_div(started) {
            self.memory_per_ap = per_ap;
            log::info!("{per_ap} bytes of heap and frames per application processor");
        }
        let left_out = results
            .into_iter()
            .filter_map(|(id, r)| r.err().map(|e| format!("CPU with APIC id {id} left out: {e}")))
            .collect();
        log::info!(
            "{} of {} enabled CPUs online",
            smp::percpu::all().count(),
            self.firmware.cpus_enabled.max(1)
        );
        left_out
    }

    /// The platform part of the TIMER-REPORT.
    pub fn report(&self) -> TimerReport {
        let hpet = self.hpet.map(|h| {
            let caps = h.capabilities();
            HpetReport {
                base: h.phys(),
                period_fs: caps.period_fs(),
                counter_bits: if caps.counter_64bit() { 64 } else { 32 },
                legacy_capable: caps.legacy_route_capable(),
                vendor: caps.vendor_id(),
                comparators: (0..h.comparators())
                    .map(|n| {
                        let c = h.comparator_config(n);
                        ComparatorReport {
                            index: n as u32,
                            route_cap: c.route_capability(),
                            periodic: c.contains(ComparatorConfig::PERIODIC_CAPABLE),
                            bits64: c.contains(ComparatorConfig::SIZE_64_CAPABLE),
                            fsb: c.contains(ComparatorConfig::FSB_CAPABLE),
                            ..ComparatorReport::default()
                        }
                    })
                    .collect(),
            }
        });
        let ioapics = IOAPICS
            .lock()
            .chips()
            .iter()
            .map(|c| IoApicReport { id: c.id, address: c.phys, gsi_base: c.gsi_base, pins: c.pins })
            .collect();
        let features = lapic::features();
        let lapic = self.lapic.map(|mode| LapicReport {
            mode: mode.to_string(),
            timer_hz: self.calibration.map_or(0, |c| c.lapic_timer_hz),
            calibrated_against: self.calibration.map_or("none".to_string(), |c| c.reference.to_string()),
            tsc_deadline: features.tsc_deadline,
            arat: features.arat,
            ..LapicReport::default()
        });
        TimerReport {
            schema: SCHEMA_VERSION,
            cpus_enabled: self.firmware.cpus_enabled,
            cpus_online: smp::percpu::all().count() as u32,
            cpus: smp::percpu::all()
                .map(|c| CpuReport {
                    index: c.index as u32,
                    apic_id: c.apic_id,
                    online_us: c.online_ns.load(Ordering::Relaxed) / 1000,
                    interrupts: (0..256)
                        .filter_map(|v| {
                            let n = c.interrupts[v].load(Ordering::Relaxed);
                            (n > 0).then(|| (format!("{v:#04x}"), n))
                        })
                        .collect(),
                    // Filled in by the clockevents part, which knows how each CPU idled.
                    idle: Default::default(),
                    spurious: c.spurious.load(Ordering::Relaxed),
                    not_ours: c.not_ours.load(Ordering::Relaxed),
                    deferred_runs: c.deferred.runs.load(Ordering::Relaxed),
                    interrupt_allocations: c.irq_heap_allocs.load(Ordering::Relaxed),
                    interrupt_frees: c.irq_heap_frees.load(Ordering::Relaxed),
                    // Filled in by the clockevents (it lives in each CPU's tick).
                    misrouted: 0,
                    stale: 0,
                    deferred_timers: Default::default(),
                })
                .collect(),
            hpet,
            hpet_blocks: self.hpet_blocks.clone(),
            ioapics,
            lapic,
            destinations: {
                let format = destination::format();
                DestinationsReport {
                    format: format.name().to_string(),
                    max_apic_id: format.max_apic_id(),
                    unreachable_cpus: smp::percpu::all()
                        .filter(|c| !format.reaches(c.apic_id))
                        .map(|c| c.index as u32)
                        .collect(),
                }
            },
            memory: MemoryReport {
                heap_size: memory::heap_size(),
                heap_used: memory::heap_used(),
                per_cpu_bytes: self.memory_per_ap,
            },
            tsc_hz: tsc::frequency_hz(),
            fallbacks: self.fallbacks.clone(),
            verdict: if self.fallbacks.is_empty() { Verdict::Ok } else { Verdict::Degraded },
            ..TimerReport::default()
        }
    }
}
