//! The main run's machine-readable summary: one line `TIMER-REPORT {json}` at the end of the
//! serial log. The schema is documented in docs/log-and-report.md ("The TIMER-REPORT line") and versioned
//! by `schema`; a field is only ever added in a new version, never renamed.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use serde::Serialize;

/// Version of the schema below. 1: platform part (CPUs, HPET, IOAPICs, LAPIC, TSC, fallbacks);
/// 2: clockevents (comparator roles, tick devices, broadcast, the main run's event latency,
/// lost and early events); 3: idle and suspend (each CPU's `idle`, `broadcast_stats`,
/// `suspend`); 4: clocksources (every source, the switches, the TSC's checks); 5: where
/// interrupts landed (each CPU's `misrouted`, `stale`, `spurious`, `not_ours`; each comparator's
/// `irqs_by_cpu`, `spurious` and `selftest`; `destinations`, `bringup_us`,
/// `memory`); 6: the LAPIC timer's refinement; 7: the workload's own oracles: `fired_twice`
/// (a timer that fired again, counted apart from `lost_events`), `early_independent` (early
/// on a counter that is not the clocksource's), `wrong_cpu` (by the hardware's APIC id); 8:
/// deferred work (each CPU's `deferred_runs`, `housekeeping`, `take_outs`); 9: each CPU's
/// `interrupt_allocations` and `interrupt_frees`; 10: `handler_to_callback_ns` (the time
/// layer's own part of each event's path), `workload_cpus` and `clocks` (the RTC and the
/// wall clock); 11: `hotplug` (each CPU offline/online cycle), `clock_step`, the clocks'
/// `clock_was_set` and `timers_requeued`, `suspend.asleep_ns`, each CPU's `deferred_timers`
/// (deferred timer callbacks run, the most waiting at once), `timer_slack_ns` (each CPU's
/// default timer slack); 12: `hpet_blocks` (every HPET table: its block, accepted or why not),
/// each `hotplug` record's `offline_ns`, `online_ns` and `startup_ns` (how long going offline,
/// coming back, and the CPU's own start-up path took), `cpus[].idle.serving` (bc_hrtimer),
/// `suspend.kind` (`simulated`, or `s3`: a real ACPI S3).
pub const SCHEMA_VERSION: u32 = 12;
/// The line's prefix; a single space separates it from the JSON object.
pub const PREFIX: &str = "TIMER-REPORT";

/// The clocks when the report was made (schema 10).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ClocksReport {
    /// What the CMOS RTC holds now, ISO 8601 (`Z` when it holds UTC); null if unreadable.
    pub rtc: Option<alloc::string::String>,
    /// `utc` or `local` (`rtc=`).
    pub rtc_holds: &'static str,
    /// REALTIME: ns since 1970-01-01T00:00:00, set from the RTC at boot.
    pub realtime_ns: u64,
    /// BOOTTIME: MONOTONIC plus time spent suspended (`suspend_test=`'s halts).
    pub boottime_ns: u64,
    /// MONOTONIC: ns since the clocksource started, time suspended not counted.
    pub monotonic_ns: u64,
    /// Times the offsets of REALTIME or BOOTTIME changed (steps of REALTIME, the one from the
    /// RTC at boot included; resumes), and the timers on those clocks every CPU placed again
    /// then (schema 11).
    pub clock_was_set: u64,
    pub timers_requeued: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TimerReport {
    pub schema: u32,
    /// Processors the MADT lists as enabled (0 when the MADT is missing or rejected).
    pub cpus_enabled: u32,
    /// Processors running kernel code (the boot CPU plus every AP that came online).
    pub cpus_online: u32,
    pub cpus: Vec<CpuReport>,
    /// `null` when the firmware has no HPET table or the HPET was rejected (see `fallbacks`).
    pub hpet: Option<HpetReport>,
    /// Every HPET table, in the firmware's order (schema 12): the block it names, and whether
    /// it is used or why not. `hpet` is the first accepted one.
    pub hpet_blocks: Vec<HpetBlockReport>,
    pub ioapics: Vec<IoApicReport>,
    pub lapic: Option<LapicReport>,
    pub tsc_hz: u64,
    /// Name of the clocksource behind the kernel's timestamps.
    pub clocksource: String,
    /// Every registered clocksource.
    pub clocksources: Vec<ClocksourceReport>,
    /// Every change of the current clocksource after the first, in order.
    pub clocksource_switches: Vec<SwitchReport>,
    /// What the TSC checks found.
    pub tsc: TscReport,
    /// The clocksources' housekeeping on CPU 0 (schema 8).
    pub housekeeping: HousekeepingReport,
    /// Clock event devices taken out of service (schema 8).
    pub take_outs: TakeOutsReport,
    /// The rule that arranged the HPET comparators (e.g. "per-CPU: 3 usable comparators >= 2 CPUs").
    pub clockevents_rule: String,
    /// `oneshot` (tickless) or `periodic`.
    pub tick_mode: String,
    /// Each CPU's default timer slack in ns (`timer_slack_ns=`; schema 11): how long after its
    /// deadline a timer armed without a slack of its own may run.
    pub timer_slack_ns: u64,
    /// One per online CPU: what interrupts it for its timers.
    pub tick_devices: Vec<TickDeviceReport>,
    /// Name of the broadcast device (`null` when there is none).
    pub broadcast: Option<String>,
    /// The broadcast device's interrupts and wake-ups (schema 3).
    pub broadcast_stats: BroadcastReport,
    /// The suspend test, if it ran (schema 3).
    pub suspend: Option<SuspendReport>,
    /// The clock step test, if it ran (schema 11).
    pub clock_step: Option<ClockStepReport>,
    /// Each CPU taken offline and brought back (`hotplug_test=`), in order; empty when none
    /// was (schema 11).
    pub hotplug: Vec<HotplugRecord>,
    /// How interrupt messages name CPUs, and the CPUs they cannot name (schema 4).
    pub destinations: DestinationsReport,
    /// Clocksource time at which every CPU had its tick device, self-tests included (schema 4).
    pub bringup_us: u64,
    /// The kernel heap, and what bringing one more CPU online costs (schema 4).
    pub memory: MemoryReport,
    /// Lateness of the main run's one-shot timers (callback start minus deadline).
    pub latency_ns: LatencyReport,
    /// The same events' deadline -> interrupt handler entry (schema 3): the way in, before the
    /// time layer runs.
    pub handler_latency_ns: LatencyReport,
    /// The same events' handler -> callback (schema 10): each callback's lateness minus its
    /// handler's, the time layer's own part.
    pub handler_to_callback_ns: LatencyReport,
    /// The CPUs the main run's workload ran on (schema 10): every online CPU unless
    /// `workload_cpus=` says fewer.
    pub workload_cpus: usize,
    /// The clocks at the report (schema 10).
    pub clocks: ClocksReport,
    /// Timers the main run armed; of those, never fired and fired before their deadline.
    pub events_armed: u64,
    pub lost_events: u64,
    /// Firings of a timer that had fired already (schema 7): a double fire, counted apart from
    /// `lost_events` so that one cannot hide the other.
    pub fired_twice: u64,
    pub early_events: u64,
    /// Fired before their deadline as a counter that is not the clocksource's measures it
    /// (schema 7).
    pub early_independent: u64,
    /// Callbacks that ran where the LAPIC's own APIC id is not that of the CPU the timer was
    /// armed on (schema 7).
    pub wrong_cpu: u64,
    /// One sentence per fallback taken, saying what failed and what is used instead.
    pub fallbacks: Vec<String>,
    /// `ok`, `degraded` (a fallback was taken, the kernel works) or `failed`.
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ClocksourceReport {
    pub name: String,
    pub rating: u32,
    /// Current frequency (refined, for the TSC, once measured over a long window).
    pub hz: u64,
    /// False once found unstable (the reason is in `fallbacks` or `clocksource_switches`).
    pub stable: bool,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TscReport {
    /// CPUID 0x80000007 EDX bit 8: constant rate in every P-, C- and T-state.
    pub invariant: bool,
    /// Largest backward step measured between two CPUs' TSCs as the APs came online.
    pub warp_ns: u64,
    /// The frequency measured over a long window after boot (`null` until measured).
    pub refined_hz: Option<u64>,
    /// How far the boot calibration was from the refined frequency, in ppm (`null` until
    /// refined), and the same in parts per billion.
    pub calibration_ppm: Option<i64>,
    pub calibration_ppb: Option<i64>,
    /// Watchdog comparisons in which the TSC agreed with the reference.
    pub watchdog_checks: u64,
    /// The largest disagreement among them, TSC minus reference, in ns over one 0.5 s interval.
    pub watchdog_max_deviation_ns: i64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SwitchReport {
    pub from: String,
    pub to: String,
    pub reason: String,
    /// Clocksource time at which `to` took over.
    pub at_ns: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TickDeviceReport {
    pub cpu: u32,
    /// The device that interrupts this CPU: its own, or the broadcast device.
    pub device: Option<String>,
    /// `oneshot`, `periodic` or `periodic-emulated` (re-armed one-shot).
    pub mode: String,
    /// Device interrupts and broadcast wake-ups handled on this CPU.
    pub events: u64,
    pub via_broadcast: bool,
}

/// Percentiles of a set of samples, in ns.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct LatencyReport {
    pub samples: u64,
    pub min: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// The nearest-rank percentile `per_mille` / 10 of `sorted` (ascending, not empty).
pub fn nearest_rank(sorted: &[u64], per_mille: usize) -> u64 {
    let n = sorted.len();
    sorted[(n * per_mille).div_ceil(1000).clamp(1, n) - 1]
}

impl LatencyReport {
    /// Nearest-rank percentiles of `samples` (sorted in place); all 0 when empty.
    pub fn from_samples(samples: &mut [u64]) -> LatencyReport {
        samples.sort_unstable();
        let n = samples.len();
        if n == 0 {
            return LatencyReport::default();
        }
        let rank = |per_mille| nearest_rank(samples, per_mille);
        LatencyReport {
            samples: n as u64,
            min: samples[0],
            p50: rank(500),
            p99: rank(990),
            max: samples[n - 1],
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CpuReport {
    pub index: u32,
    pub apic_id: u32,
    /// Microseconds from the boot CPU's INIT to this CPU reporting online (0 for the boot CPU).
    pub online_us: u64,
    /// Interrupts taken on this CPU, by vector (hexadecimal key, e.g. "0x30"); only non-zero.
    pub interrupts: BTreeMap<String, u64>,
    /// How this CPU idled (schema 3).
    pub idle: IdleReport,
    /// Clock event device interrupts that reached this CPU for a device that does not serve it
    /// and never did (a wrong destination).
    pub misrouted: u64,
    /// Interrupts of a device this CPU used before its current one, arrived after the change.
    pub stale: u64,
    /// Interrupts nothing claimed on this CPU (a vector without a handler, the LAPIC's
    /// spurious vector, a device interrupt with nobody to serve).
    pub spurious: u64,
    /// Level-triggered interrupts on this CPU whose device's status bit was clear.
    pub not_ours: u64,
    /// Passes of this CPU's deferred work that found work to run (schema 8).
    pub deferred_runs: u64,
    /// Heap allocations (and reallocations) and frees made inside an interrupt handler on
    /// this CPU, each under the heap's lock that every CPU takes (schema 9).
    pub interrupt_allocations: u64,
    pub interrupt_frees: u64,
    /// Its deferred timers (schema 11).
    pub deferred_timers: DeferredTimersReport,
}

/// One CPU's deferred timers: callbacks run outside the hard interrupt (schema 11).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DeferredTimersReport {
    /// Deferred callbacks run on this CPU.
    pub callbacks: u64,
    /// The most deferred timers that waited at once for this CPU's deferred run (popped by
    /// its timer interrupt, not yet run), as of its last deferred run.
    pub max_waiting: u64,
}

/// Clock event devices taken out of service, at bring-up or at run time (schema 8).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TakeOutsReport {
    pub count: u64,
    /// Those taken out inside a hard interrupt (a failure found there is taken out by its CPU's
    /// deferred work, at the interrupt's exit: 0).
    pub in_hard_irq: u64,
}

/// The clocksources' housekeeping (schema 8).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct HousekeepingReport {
    /// Times it ran.
    pub runs: u64,
    /// Times it ran inside a hard interrupt or with interrupts disabled (it runs as CPU 0's
    /// deferred work, outside the timer interrupt that raises it: 0).
    pub in_hard_irq: u64,
}

/// One CPU's idle figures.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct IdleReport {
    /// The state it idles in: `poll`, `halt` or `deep` (`halt` where deep idle was refused).
    pub state: String,
    /// Times it went idle, and how many of those were deep.
    pub entries: u64,
    pub deep_entries: u64,
    /// Deadlines it handed to the broadcast device before a deep sleep.
    pub handovers: u64,
    /// Time spent entering and leaving deep idle (the handover and its undoing included), ns.
    pub transition_ns: u64,
    /// Idle entries where deep idle was asked for but it halted because it carried the
    /// broadcast's timer for the other CPUs (bc_hrtimer).
    pub serving: u64,
}

/// What the broadcast device did (schema 3).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct BroadcastReport {
    /// Its interrupts, and the wake-up IPIs they sent to other CPUs.
    pub events: u64,
    pub wakeups_sent: u64,
}

/// How IOAPIC entries and MSIs name their destination CPU (schema 4).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DestinationsReport {
    /// `8-bit` (APIC ids up to 254) or `15-bit (extended destination id)` (up to 0x7ffe).
    pub format: String,
    pub max_apic_id: u32,
    /// Online CPUs (indices) no IOAPIC entry or MSI can name: they get no per-CPU HPET
    /// comparator and are served by their LAPIC timer or by broadcast.
    pub unreachable_cpus: Vec<u32>,
}

/// Memory figures (schema 4).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MemoryReport {
    pub heap_size: u64,
    /// Heap in use when the report was made.
    pub heap_used: u64,
    /// Heap and page frames (stacks, page tables) taken per application processor brought
    /// online, averaged over them (0 with one CPU).
    pub per_cpu_bytes: u64,
}

/// `clock_step_test=`'s figures (schema 11): REALTIME stepped by `step_ns` with `armed`
/// timers on REALTIME pending on every CPU; of those, how many ran, ran twice, ran before
/// REALTIME read their deadline (judged on MONOTONIC), ran on another CPU than their own, and
/// ran before the MONOTONIC instant they had been placed at before the step (a step forwards
/// past them: queued again, not left at their old place).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ClockStepReport {
    pub step_ns: i64,
    pub armed: u64,
    pub fired: u64,
    pub fired_twice: u64,
    pub early: u64,
    pub wrong_cpu: u64,
    pub pulled_in: u64,
}

/// One CPU taken offline and brought back (schema 11).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct HotplugRecord {
    pub cpu: usize,
    /// Clocksource time when it began its offline path, and when it was back online with its
    /// tick device (`null`: still offline).
    pub offline_at_ns: u64,
    pub online_at_ns: Option<u64>,
    /// Its pending timers handed to another CPU, and that CPU.
    pub timers_migrated: u64,
    pub timers_to_cpu: usize,
    /// The per-CPU comparator it released (`null`: it had none), and the CPU that took it
    /// (`null`: none, every other CPU had one).
    pub comparator_released: Option<String>,
    pub comparator_to_cpu: Option<usize>,
    /// Clocksource time from the offline request to the CPU parked with its timers handed
    /// over; from the online request (INIT, held 10 ms by the MP specification) to the CPU
    /// back with its tick device (`null`: still offline); and the CPU's own start-up path
    /// that time, from its arrival off the start-up code to reporting online (its TSC check,
    /// its tick, its LAPIC timer; schema 12).
    pub offline_ns: u64,
    pub online_ns: Option<u64>,
    pub startup_ns: Option<u64>,
}

/// The suspend test's figures (schema 3).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SuspendReport {
    /// Simulated (`suspend_test=`: timekeeping suspended, the machine halted in place) or a
    /// real ACPI S3 (`s3_test=`: the machine slept, its counters reset) (schema 12).
    pub kind: SuspendKind,
    /// Suspends done, the time timekeeping spent suspended, the timers pending at suspend that
    /// fired after the resume.
    pub count: u64,
    pub suspended_ns: u64,
    pub timers_resumed: u64,
    /// Of `suspended_ns`, the time the machine was halted (schema 11): what MONOTONIC did not
    /// count and BOOTTIME and REALTIME did.
    pub asleep_ns: u64,
    /// The last real S3's cost (issue 19's figure): MONOTONIC from the request (`s3_test=`'s
    /// sleep begun, the APs still online) to the first timer that ran after the wake (a probe
    /// pending through the sleep, due at once): the sleep itself not counted. None for a
    /// simulated suspend, or before that timer ran.
    pub request_to_first_timer_ns: Option<u64>,
}

/// Which suspend the report's `suspend` describes (the last one's).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SuspendKind {
    #[default]
    Simulated,
    S3,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct HpetReport {
    /// Physical address of the register block.
    pub base: u64,
    pub period_fs: u32,
    pub counter_bits: u32,
    pub legacy_capable: bool,
    pub vendor: u16,
    pub comparators: Vec<ComparatorReport>,
}

/// One HPET table and its block (schema 12).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct HpetBlockReport {
    /// The table's block number (`null` when the table did not parse).
    pub number: Option<u8>,
    /// The block's physical address (`null` when the table did not parse).
    pub address: Option<u64>,
    /// Probed and in use.
    pub accepted: bool,
    /// Why not (`null` when accepted).
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ComparatorReport {
    pub index: u32,
    /// Tn_INT_ROUTE_CAP: bit n set = GSI n reachable.
    pub route_cap: u32,
    pub periodic: bool,
    pub bits64: bool,
    /// FSB (MSI) delivery capable.
    pub fsb: bool,
    /// How its interrupt is delivered: `ioapic`, `fsb`, `legacy` or `none`.
    pub delivery: String,
    /// The IOAPIC input it drives (`null` for FSB or none).
    pub gsi: Option<u32>,
    /// The CPU its interrupt goes to (`null` when unused).
    pub cpu: Option<u32>,
    /// `percpu`, `global`, `unused` or `failed`.
    pub role: String,
    /// Interrupts its self-test saw (at least 5 to pass: one per event, extras allowed).
    pub selftest_irqs: u64,
    /// Its events taken in service, by the CPU each landed on (decimal key, e.g. "1"); only
    /// non-zero. A per-CPU comparator's land on its `cpu` only.
    pub irqs_by_cpu: BTreeMap<String, u64>,
    /// Interrupts on its vector that were not its events (a level line without its status
    /// bit, an event while it served nobody).
    pub spurious: u64,
    /// Its last interrupt self-test; `null` when it was not tested (unused, no route).
    pub selftest: Option<SelftestReport>,
}

/// What a comparator's interrupt self-test saw.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SelftestReport {
    /// The CPU its interrupt was routed to.
    pub cpu: u32,
    /// Interrupts that arrived, by the CPU each landed on (decimal key); non-zero only.
    pub irqs_by_cpu: BTreeMap<String, u64>,
    /// From programming the first event to the last arrival (or to giving up), in us.
    pub us: u64,
    /// Every event was answered by an interrupt, and every interrupt landed on `cpu`.
    pub passed: bool,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct IoApicReport {
    pub id: u8,
    pub address: u64,
    pub gsi_base: u32,
    pub pins: u32,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LapicReport {
    /// `xapic` or `x2apic`.
    pub mode: String,
    /// Ticks per second of the LAPIC timer (bus clock / 16); 0 when not calibrated.
    pub timer_hz: u64,
    /// `hpet`, `pit` or `none`.
    pub calibrated_against: String,
    pub tsc_deadline: bool,
    pub arat: bool,
    /// The frequency the LAPIC timer devices were registered at (the count-down's `timer_hz`,
    /// or the TSC's in TSC-deadline mode; 0 when not used) (schema 6).
    pub calibrated_hz: u64,
    /// The frequency after the latest refinement, `null` until the first (schema 6).
    pub refined_hz: Option<u64>,
    /// How it was refined: `lapic` (a LAPIC timer measured directly), `tsc` (carried over from
    /// the TSC's refinement); `null` until then (schema 6).
    pub refined_by: Option<String>,
    /// How far `calibrated_hz` was from `refined_hz`, in ppm and ppb (schema 6).
    pub calibration_ppm: Option<i64>,
    pub calibration_ppb: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    #[default]
    Ok,
    Degraded,
    Failed,
}

impl TimerReport {
    /// One sentence per per-CPU comparator whose events landed on a CPU other than its own
    /// (a wrong IOAPIC or FSB destination: the layer rescued them by wake-up IPI, but the
    /// device is not what it claims to be). A comparator that a CPU going offline handed to
    /// another ([`HotplugRecord`]) owned each of them in turn.
    pub fn percpu_interrupts_elsewhere(&self) -> Vec<String> {
        let Some(hpet) = &self.hpet else { return Vec::new() };
        hpet.comparators
            .iter()
            .filter(|c| c.role == "percpu")
            .filter_map(|c| {
                let own = c.cpu.map(|cpu| alloc::format!("{cpu}"));
                let name = alloc::format!("hpet{}", c.index);
                let owners: Vec<String> = self
                    .hotplug
                    .iter()
                    .filter(|r| r.comparator_released.as_deref() == Some(name.as_str()))
                    .flat_map(|r| core::iter::once(r.cpu).chain(r.comparator_to_cpu))
                    .map(|cpu| alloc::format!("{cpu}"))
                    .collect();
                let elsewhere: Vec<String> = c
                    .irqs_by_cpu
                    .iter()
                    .filter(|(cpu, _)| Some(*cpu) != own.as_ref() && !owners.contains(cpu))
                    .map(|(cpu, n)| alloc::format!("{n} on CPU {cpu}"))
                    .collect();
                (!elsewhere.is_empty()).then(|| {
                    alloc::format!(
                        "per-CPU HPET comparator {} for CPU {}: interrupts landed elsewhere ({})",
                        c.index,
                        own.as_deref().unwrap_or("?"),
                        elsewhere.join(", ")
                    )
                })
            })
            .collect()
    }

    /// The whole line, prefix included, without a newline.
    pub fn to_line(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_else(|e| alloc::format!("{{\"error\":\"{e}\"}}"));
        alloc::format!("{PREFIX} {json}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn sample() -> TimerReport {
        TimerReport {
            schema: SCHEMA_VERSION,
            cpus_enabled: 2,
            cpus_online: 1,
            cpus: vec![CpuReport {
                index: 0,
                apic_id: 0,
                online_us: 0,
                interrupts: BTreeMap::from([("0x30".to_string(), 5)]),
                idle: IdleReport::default(),
                ..CpuReport::default()
            }],
            hpet: Some(HpetReport {
                base: 0xfed0_0000,
                period_fs: 10_000_000,
                counter_bits: 64,
                legacy_capable: true,
                vendor: 0x8086,
                comparators: vec![ComparatorReport {
                    index: 0,
                    route_cap: 0x00ff_0104,
                    periodic: true,
                    bits64: true,
                    fsb: false,
                    delivery: "ioapic".to_string(),
                    gsi: Some(16),
                    cpu: Some(0),
                    role: "percpu".to_string(),
                    selftest_irqs: 5,
                    irqs_by_cpu: BTreeMap::from([("0".to_string(), 7)]),
                    spurious: 0,
                    selftest: Some(SelftestReport {
                        cpu: 0,
                        irqs_by_cpu: BTreeMap::from([("0".to_string(), 5)]),
                        us: 120,
                        passed: true,
                    }),
                }],
            }),
            ioapics: vec![IoApicReport { id: 0, address: 0xfec0_0000, gsi_base: 0, pins: 24 }],
            lapic: Some(LapicReport {
                mode: "x2apic".to_string(),
                timer_hz: 62_500_000,
                calibrated_against: "hpet".to_string(),
                tsc_deadline: false,
                arat: true,
                calibrated_hz: 62_500_000,
                refined_hz: None,
                refined_by: None,
                calibration_ppm: None,
                calibration_ppb: None,
            }),
            tsc_hz: 2_600_000_000,
            clocksource: "tsc".to_string(),
            fallbacks: vec![],
            verdict: Verdict::Ok,
            ..TimerReport::default()
        }
    }

    #[test]
    fn line_is_prefix_space_and_one_json_object() {
        let line = sample().to_line();
        assert!(
            line.starts_with("TIMER-REPORT {\"schema\":12,\"cpus_enabled\":2,\"cpus_online\":1,\"cpus\":[{\"index\":0,\"apic_id\":0,\"online_us\":0,\"interrupts\":{\"0x30\":5},\"idle\":{\"state\":\"\",\"entries\":0,\"deep_entries\":0,\"handovers\":0,\"transition_ns\":0,\"serving\":0},\"misrouted\":0,\"stale\":0,\"spurious\":0,\"not_ours\":0,\"deferred_runs\":0,\"interrupt_allocations\":0,\"interrupt_frees\":0,\"deferred_timers\":{\"callbacks\":0,\"max_waiting\":0}}],\"hpet\":{\"base\":4275044352,")
        );
        assert!(!line.contains('\n'));
        assert!(line.ends_with("\"verdict\":\"ok\"}"));
    }

    #[test]
    fn the_default_timer_slack_follows_the_tick_mode() {
        let r = TimerReport { tick_mode: "oneshot".into(), timer_slack_ns: 50_000, ..TimerReport::default() };
        assert!(r.to_line().contains("\"tick_mode\":\"oneshot\",\"timer_slack_ns\":50000,"));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples: Vec<u64> = (1..=200).rev().collect();
        let l = LatencyReport::from_samples(&mut samples);
        assert_eq!(l, LatencyReport { samples: 200, min: 1, p50: 100, p99: 198, max: 200 });
        assert_eq!(
            LatencyReport::from_samples(&mut [7]),
            LatencyReport { samples: 1, min: 7, p50: 7, p99: 7, max: 7 }
        );
        assert_eq!(LatencyReport::from_samples(&mut []), LatencyReport::default());
    }

    #[test]
    fn clockevents_fields_serialise_with_nulls() {
        let r = TimerReport {
            tick_devices: vec![TickDeviceReport {
                cpu: 1,
                device: Some("hpet2".to_string()),
                mode: "oneshot".to_string(),
                events: 9,
                via_broadcast: true,
            }],
            ..sample()
        };
        let line = r.to_line();
        assert!(line.contains("\"tick_devices\":[{\"cpu\":1,\"device\":\"hpet2\",\"mode\":\"oneshot\",\"events\":9,\"via_broadcast\":true}]"));
        assert!(line.contains("\"broadcast\":null"));
        assert!(
            line.contains("\"role\":\"percpu\",\"selftest_irqs\":5,\"irqs_by_cpu\":{\"0\":7},\"spurious\":0")
        );
    }

    #[test]
    fn per_cpu_comparator_interrupts_on_another_cpu_are_found() {
        let mut r = sample();
        assert!(r.percpu_interrupts_elsewhere().is_empty(), "comparator 0's land on CPU 0 only");
        let c = &mut r.hpet.as_mut().unwrap().comparators[0];
        c.irqs_by_cpu.insert("1".to_string(), 3);
        assert_eq!(
            r.percpu_interrupts_elsewhere(),
            vec!["per-CPU HPET comparator 0 for CPU 0: interrupts landed elsewhere (3 on CPU 1)".to_string()]
        );
        // Handed to CPU 1 when CPU 0... went offline: CPU 1's interrupts are its own.
        r.hotplug.push(HotplugRecord {
            cpu: 0,
            comparator_released: Some("hpet0".to_string()),
            comparator_to_cpu: Some(1),
            ..HotplugRecord::default()
        });
        assert!(r.percpu_interrupts_elsewhere().is_empty(), "CPU 1 owned it after the hotplug");
        r.hotplug.clear();
        // A global comparator may be taken anywhere.
        r.hpet.as_mut().unwrap().comparators[0].role = "global".to_string();
        assert!(r.percpu_interrupts_elsewhere().is_empty());
    }

    #[test]
    fn lapic_refinement_is_null_until_measured() {
        let line = sample().to_line();
        assert!(line.contains("\"arat\":true,\"calibrated_hz\":62500000,\"refined_hz\":null,\"refined_by\":null,\"calibration_ppm\":null,\"calibration_ppb\":null}"), "{line}");
    }

    #[test]
    fn absent_hpet_is_null_not_missing() {
        let r = TimerReport { hpet: None, verdict: Verdict::Degraded, ..sample() };
        let line = r.to_line();
        assert!(line.contains("\"hpet\":null"));
        assert!(line.contains("\"verdict\":\"degraded\""));
    }
}
