//! HPET comparators as clock event devices (the 2007 "HPET as per CPU eventsource" patch,
//! grown up): the driver that programs a comparator for the time layer, its interrupt (and
//! storm detection) and its self-test. The registers are the driver's (`arch::x86_64::hpet`);
//! which way each comparator's interrupt goes and whom it serves is `hpet_plan`'s; the
//! bring-up that carries the plan out is `hpet_bringup`'s.

use super::hpet_plan::Delivery;
use crate::arch::x86_64::destination::{self, Unreachable};
use crate::arch::x86_64::hpet::{ComparatorConfig, Hpet};
use crate::arch::x86_64::ioapic::{IOAPICS, IsaRoute};
use crate::arch::x86_64::path_trace::{self, Stage};
use crate::arch::x86_64::smp::{
    self,
    percpu::{self, PerCpuCounter},
};
use crate::arch::x86_64::{deferred, interrupts, pic, tsc};
use crate::time::clocksource::{hpet_counter_at, now_ns};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use kernel_time::clockevents::{DriverState, EventDriver, EventPassed};
use kernel_time::clocksource::MultShift;
use kernel_time::tick::DeviceId;

/// Ratings of the 2007 patch: a per-CPU comparator beats the LAPIC timer (100); the global
/// device is 20 lower, so a CPU with a working LAPIC timer keeps it.
pub const PER_CPU_RATING: u32 = 110;
pub const GLOBAL_RATING: u32 = PER_CPU_RATING - 20;
/// Linux's HPET_MIN_CYCLES: a comparator written fewer ticks than this ahead of the counter
/// read back afterwards may already have been passed.
const MIN_MARGIN_TICKS: u32 = 128;
/// Linux's HPET_MIN_PROG_DELTA (1.5 x the margin): the smallest delta programmed.
pub const MIN_DELTA_TICKS: u64 = 192;
/// Deltas stay below 2^31 ticks so that signed 32-bit differences order times across the
/// counter's wrap (the comparators run in 32-bit mode).
pub const MAX_DELTA_TICKS: u64 = 0x7fff_ffff;
/// The self-test fires this many events and wants an interrupt for each (the patch's "expect
/// 5"; Linux's timer_irq_works). More interrupts than events on the target CPU are no failure:
/// a comparator written again after a "passed" answer can fire for both writes.
pub const SELFTEST_IRQS: u64 = 5;
/// Each self-test event's interrupt is awaited this many ns of HPET time after it was due
/// before the target CPU is asked whether it is running at all. Generous: a working
/// comparator's interrupt takes microseconds, but a host that deschedules the target vCPU (two
/// cores, several guests) has delayed one past 100 ms; only a failing comparator pays the wait.
pub const SELFTEST_WAIT_NS: u64 = 1_000_000_000;
/// A target CPU that does not answer a call within its 1 s (its vCPU descheduled: the host,
/// not the comparator, is slow) earns another [`SELFTEST_WAIT_NS`], up to this many in all;
/// only a target that answers while the interrupt stays missing fails the comparator.
const SELFTEST_MAX_WAITS: u32 = 10;
/// Calls answered by the target before a missing interrupt counts as lost: the call's vector
/// outranks the comparator's, so an interrupt pending behind the first call is taken before
/// the second can be answered.
const SELFTEST_PINGS: u32 = 2;
/// Delay of each self-test event.
const SELFTEST_DELTA_TICKS: u64 = 10_000;

/// How many ticks of a `frequency_hz` counter the self-test waits for each event. The
/// frequency comes from firmware (10^15 / the period in fs): computed in 128 bits and
/// saturated, since 10^9 ns x a counter above 18.4 GHz overflows a u64.
fn selftest_wait_ticks(frequency_hz: u64) -> u64 {
    let ticks = u128::from(SELFTEST_WAIT_NS) * u128::from(frequency_hz) / 1_000_000_000;
    u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(SELFTEST_DELTA_TICKS)
}

/// A reference is trusted for this long after the counter read it came from: the TSC and the
/// HPET are calibrated against each other to a few hundred ppm at worst (TCG), so 100 us of
/// TSC time drifts by well under [`ESTIMATE_BIAS_TICKS`].
const ESTIMATE_FRESH_NS: u64 = 100_000;
/// Added to an estimated counter so that estimation error makes an event late, never early.
const ESTIMATE_BIAS_TICKS: u32 = 16;

/// The main counter derived from the TSC instead of read (issue 6: an MMIO read is a VM exit
/// under virtualisation): the last counter read and the TSC when it was taken, carried forward
/// by the calibrated ratio. Programming then costs one write and one verifying read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterReference {
    pub counter: u32,
    pub tsc: u64,
}

impl CounterReference {
    /// The counter at `tsc_now` (rounded towards late by [`ESTIMATE_BIAS_TICKS`]), or `None`
    /// when the reference is older than `fresh_cycles` or from the future (another CPU's TSC).
    pub fn estimate(self, tsc_now: u64, tsc_to_ticks: MultShift, fresh_cycles: u64) -> Option<u32> {
        let elapsed = tsc_now.checked_sub(self.tsc)?;
        if elapsed > fresh_cycles {
            return None;
        }
        let ticks = tsc_to_ticks.apply(elapsed) as u32;
        Some(self.counter.wrapping_add(ticks).wrapping_add(ESTIMATE_BIAS_TICKS))
    }
}

/// `hpet_counter=read`: always read the counter before writing the comparator.
static READ_COUNTER: AtomicBool = AtomicBool::new(false);

/// Chooses how comparators are programmed (see [`CounterReference`]).
pub fn set_read_counter(read: bool) {
    READ_COUNTER.store(read, Ordering::Relaxed);
}

/// What a comparator's interrupt self-test saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SelftestOutcome {
    /// The CPU its interrupt was routed to.
    pub target: usize,
    /// Events that were answered by an interrupt (of [`SELFTEST_IRQS`]).
    pub events: u64,
    /// Interrupts that arrived (at least one per answered event; more are no failure).
    pub irqs: u64,
    /// (CPU, interrupts that landed there), by CPU, non-zero only.
    pub by_cpu: Vec<(usize, u64)>,
    /// From the first event's programming to the last arrival (or to giving up), in ns of
    /// the clocksource.
    pub ns: u64,
}

impl SelftestOutcome {
    /// Every event was answered, and every interrupt landed on the CPU it was routed to
    /// (however many there were, and however late).
    pub fn passed(&self) -> bool {
        self.events == SELFTEST_IRQS && self.elsewhere() == 0
    }

    /// Interrupts that landed on a CPU other than the target.
    pub fn elsewhere(&self) -> u64 {
        self.by_cpu.iter().filter(|&&(cpu, _)| cpu != self.target).map(|&(_, n)| n).sum()
    }
}

impl fmt::Display for SelftestOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {SELFTEST_IRQS} events answered by {} interrupts", self.events, self.irqs)?;
        if self.irqs > 0 {
            let landed: Vec<String> = self.by_cpu.iter().map(|(c, n)| format!("{n} on CPU {c}")).collect();
            write!(f, " ({})", landed.join(", "))?;
        }
        write!(f, " in {} us", self.ns / 1000)
    }
}

/// One comparator driven as a clock event device.
pub struct HpetChannel {
    hpet: &'static Hpet,
    pub index: usize,
    pub delivery: Delivery,
    /// `delivery.level()`, decided once: the interrupt tests this field, not the enum.
    level: bool,
    pub vector: u8,
    /// The configuration written on every state change (route, trigger, FSB, 32-bit mode),
    /// kept here so that programming never reads the register back.
    base_config: ComparatorConfig,
    /// Its events taken in service, counted on the CPU each landed on (only that CPU writes
    /// its count).
    pub irqs_by_cpu: PerCpuCounter,
    /// The self-test's count, where each landed, and when the last one did (clocksource ns).
    selftest_irqs: AtomicU64,
    selftest_by_cpu: PerCpuCounter,
    selftest_last_ns: AtomicU64,
    /// Interrupts on its vector that were not its events: a level line without its status bit
    /// (also counted per CPU as not ours), or an event while it served nobody (also counted
    /// per CPU as spurious).
    pub spurious: AtomicU64,
    /// Not-ours interrupts against its own events: a storm (see [`StormMeter`]).
    storm: StormMeter,
    /// The line was masked because of a storm.
    pub storm_masked: AtomicBool,
    /// The storm's comparator was taken out (by the deferred work of the CPU that masked it).
    storm_taken_out: AtomicBool,
    /// While set, interrupts only count (the self-test); else they go to the time layer.
    in_selftest: AtomicBool,
    /// The time layer's device index + 1 (0: not registered).
    device: AtomicUsize,
    /// The last counter read and its TSC (0: none yet); programming is serialised by the tick
    /// layer's lock, so the pair is always written and read together.
    reference_counter: AtomicU64,
    reference_tsc: AtomicU64,
    /// TSC cycles -> HPET ticks, and how long a reference stays fresh in TSC cycles.
    tsc_to_ticks: MultShift,
    fresh_cycles: u64,
    /// The APIC id its interrupt goes to, for routing it again after a resume.
    target_apic: core::sync::atomic::AtomicU32,
    /// The CPUs its interrupt was moved to as the broadcast device follows its sleepers (one
    /// bit per CPU index; see [`EventDriver::retarget`]): an event may land on any of them.
    moved_to: [AtomicU64; 4],
}

/// Every channel set up, for suspend and resume.
static CHANNELS: spin::Mutex<Vec<&'static HpetChannel>> = spin::Mutex::new(Vec::new());

impl fmt::Debug for HpetChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HpetChannel")
            .field("index", &self.index)
            .field("delivery", &self.delivery)
            .field("vector", &self.vector)
            .finish_non_exhaustive()
    }
}

/// Channels by vector, for the interrupt handler.
/// Set once per vector (a channel keeps its vector), so the interrupt path reads it without a
/// lock.
static BY_VECTOR: [spin::Once<&'static HpetChannel>; 256] = [const { spin::Once::new() }; 256];

impl HpetChannel {
    /// Sets comparator `index` up for `delivery`: a vector, 32-bit one-shot mode with its
    /// interrupt disabled, FSB or its IOAPIC pin (the legacy route switched on); no CPU gets it
    /// until [`route_to`](Self::route_to).
    pub fn new(
        hpet: &'static Hpet,
        index: usize,
        delivery: Delivery,
    ) -> Result<&'static HpetChannel, interrupts::RegisterError> {
        let vector = match delivery {
            // The 8259's vector for the line, fixed by its remapping.
            Delivery::Pic { irq } => {
                interrupts::register(pic::vector(irq), channel_interrupt)?;
                pic::vector(irq)
            }
            _ => interrupts::allocate(channel_interrupt)?,
        };
        let caps = hpet.comparator_config(index);
        let read_only = ComparatorConfig::PERIODIC_CAPABLE
            | ComparatorConfig::SIZE_64_CAPABLE
            | ComparatorConfig::FSB_CAPABLE;
        let mut config = (caps & read_only) | ComparatorConfig::MODE_32BIT;
        config = ComparatorConfig::from_bits_retain(config.bits() | (caps.bits() & 0xffff_ffff_0000_0000));
        match delivery {
            Delivery::Fsb => config |= ComparatorConfig::FSB_ENABLE,
            Delivery::Ioapic { gsi } => config = config.with_route(gsi as u8),
            Delivery::Legacy { .. } | Delivery::Pic { .. } => {}
        }
        if delivery.level() {
            config |= ComparatorConfig::LEVEL_TRIGGERED;
        }
        let channel: &'static HpetChannel = alloc::boxed::Box::leak(alloc::boxed::Box::new(HpetChannel {
            hpet,
            index,
            delivery,
            level: delivery.level(),
            vector,
            base_config: config,
            irqs_by_cpu: PerCpuCounter::new(),
            selftest_irqs: AtomicU64::new(0),
            selftest_by_cpu: PerCpuCounter::new(),
            selftest_last_ns: AtomicU64::new(0),
            spurious: AtomicU64::new(0),
            storm: StormMeter::new(),
            storm_masked: AtomicBool::new(false),
            storm_taken_out: AtomicBool::new(false),
            in_selftest: AtomicBool::new(false),
            device: AtomicUsize::new(0),
            reference_counter: AtomicU64::new(0),
            reference_tsc: AtomicU64::new(0),
            tsc_to_ticks: MultShift::ns_per_tick(hpet.frequency_hz(), tsc::frequency_hz().max(1)),
            fresh_cycles: (u128::from(tsc::frequency_hz()) * u128::from(ESTIMATE_FRESH_NS) / 1_000_000_000)
                as u64,
            target_apic: core::sync::atomic::AtomicU32::new(0),
            moved_to: [const { AtomicU64::new(0) }; 4],
        }));
        x86_64::instructions::interrupts::without_interrupts(|| CHANNELS.lock().push(channel));
        BY_VECTOR[usize::from(vector)].call_once(|| channel);
        hpet.set_comparator_config(index, config);
        if let Delivery::Legacy { .. } | Delivery::Pic { .. } = delivery {
            hpet.set_legacy_route(true);
        }
        Ok(channel)
    }

    /// Sends the interrupt to the CPU with APIC id `apic` (and unmasks an IOAPIC pin), in the
    /// destination format of the platform; a CPU it cannot name is refused (the plan gives such
    /// CPUs no comparator) and the route left as it was.
    pub fn route_to(&self, apic: u32) -> Result<(), Unreachable> {
        let format = destination::format();
        match self.delivery {
            Delivery::Fsb => {
                let (address, data) = format.msi_message(apic, self.vector)?;
                self.hpet.set_fsb_route(self.index, address, data);
            }
            // The one CPU (no local APIC): the 8259 line opened.
            Delivery::Pic { irq } => pic::unmask(irq),
            Delivery::Ioapic { .. } | Delivery::Legacy { .. } => {
                format.ioapic_bits(apic)?;
                let gsi = self.delivery.gsi().expect("a pin");
                let entry = self.delivery.ioapic_entry(self.vector, apic).expect("a pin");
                if let Err(e) = IOAPICS.lock().route(gsi, entry) {
                    log::warn!("HPET comparator {}: cannot route GSI {gsi}: {e}", self.index);
                }
            }
        }
        self.target_apic.store(apic, Ordering::Relaxed);
        Ok(())
    }

    /// Suspend: the route is lost as it would be without power (IOAPIC pin masked, FSB message
    /// cleared); the comparator itself is saved and cleared with the block (`Hpet::suspend`).
    pub fn suspend(&self) {
        match self.delivery {
            Delivery::Fsb => self.hpet.set_fsb_route(self.index, 0, 0),
            Delivery::Pic { .. } => {}
            Delivery::Ioapic { gsi } | Delivery::Legacy { route: IsaRoute { gsi, .. } } => {
                let _ = IOAPICS.lock().mask(gsi, true);
            }
        }
    }

    /// Resume: the route rewritten (IOAPIC redirection entry or FSB message), and the counter
    /// reference forgotten (the counter stood still while the TSC ran on).
    pub fn resume(&self) {
        self.reference_tsc.store(0, Ordering::Relaxed);
        // It was routed there before the suspend: reachable.
        let _ = self.route_to(self.target_apic.load(Ordering::Relaxed));
    }

    /// Leaves the IOAPIC pin masked (fault injection: the self-test must catch it).
    pub fn mask_line(&self) {
        if let Some(gsi) = self.delivery.gsi() {
            let _ = IOAPICS.lock().mask(gsi, true);
        }
    }

    /// Whether its route can be moved while it serves ([`EventDriver::retarget`]): an FSB
    /// message or an IOAPIC pin, not the 8259's line.
    pub fn can_move(&self) -> bool {
        !matches!(self.delivery, Delivery::Pic { .. })
    }

    /// Whether its interrupt was ever moved to CPU `cpu` by [`EventDriver::retarget`] (its
    /// events may then land there).
    pub fn was_moved_to(&self, cpu: usize) -> bool {
        self.moved_to.get(cpu / 64).is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (cpu % 64)) != 0)
    }

    /// The APIC id its interrupt goes to.
    pub fn target_apic(&self) -> u32 {
        self.target_apic.load(Ordering::Relaxed)
    }

    /// Its time-layer device, once registered.
    pub fn device(&self) -> Option<DeviceId> {
        self.device.load(Ordering::Acquire).checked_sub(1).map(DeviceId)
    }

    /// Links the channel to its time-layer device; its interrupts go there from now on.
    pub fn attach(&self, device: DeviceId) {
        self.device.store(device.0 + 1, Ordering::Release);
    }

    /// Fires [`SELFTEST_IRQS`] one-shot events, one after the other, waiting for an interrupt
    /// after each (see [`SELFTEST_WAIT_NS`], [`SELFTEST_MAX_WAITS`]), and records what arrived,
    /// on which CPU, and how long the whole test took. It passes when every event was answered
    /// and every interrupt landed on `target`, the CPU the comparator is routed to.
    ///
    /// Late is not lost: the wait is judged on HPET time, and when it runs out the target CPU
    /// is called; one that does not answer (descheduled by a busy host) earns another wait,
    /// and only one that answers [`SELFTEST_PINGS`] calls with the interrupt still missing
    /// fails the comparator.
    pub fn selftest(&self, target: usize) -> SelftestOutcome {
        self.selftest_by_cpu.clear();
        self.selftest_irqs.store(0, Ordering::Relaxed);
        self.in_selftest.store(true, Ordering::Release);
        self.switch_state(DriverState::Oneshot);
        let wait_ticks = selftest_wait_ticks(self.hpet.frequency_hz());
        let started = now_ns();
        let mut events = 0;
        for _ in 0..SELFTEST_IRQS {
            let before = self.selftest_irqs.load(Ordering::Acquire);
            // A comparator passed while written (a vCPU descheduled in between) would fire only
            // after a counter wrap: write it again, further ahead, rather than fail a good one.
            let mut delta = SELFTEST_DELTA_TICKS;
            while self.set_next_event(delta).is_err() && delta < MAX_DELTA_TICKS / 2 {
                delta *= 2;
            }
            let arrived = || self.selftest_irqs.load(Ordering::Acquire) > before;
            if !self.await_interrupt(target, wait_ticks, arrived) {
                break;
            }
            events += 1;
        }
        self.switch_state(DriverState::Shutdown);
        self.in_selftest.store(false, Ordering::Release);
        let irqs = self.selftest_irqs.load(Ordering::Acquire);
        let last = self.selftest_last_ns.load(Ordering::Relaxed);
        SelftestOutcome {
            target,
            events,
            irqs,
            by_cpu: self.selftest_by_cpu.nonzero().collect(),
            ns: if irqs > 0 { last.saturating_sub(started) } else { now_ns().saturating_sub(started) },
        }
    }

    /// Waits until `arrived`: up to `wait_ticks` of HPET time, then (see
    /// [`selftest`](Self::selftest)) as long as the target CPU gives no proof that it runs.
    fn await_interrupt(&self, target: usize, wait_ticks: u64, arrived: impl Fn() -> bool) -> bool {
        for _ in 0..SELFTEST_MAX_WAITS {
            let start = self.hpet.counter();
            while !arrived() {
                if self.hpet.counter().wrapping_sub(start) > wait_ticks {
                    break;
                }
                core::hint::spin_loop();
            }
            if arrived() {
                return true;
            }
            let on_this_cpu = percpu::this_cpu().index == target;
            let mut answered = 0;
            while answered < SELFTEST_PINGS && !arrived() {
                // On the target itself, this loop ran with interrupts enabled: that is the
                // proof. Elsewhere, a call the target runs in its interrupt.
                match if on_this_cpu { Ok(()) } else { smp::call_on(target, || ()) } {
                    Ok(()) => answered += 1,
                    Err(smp::CallError::Timeout { .. }) => break,
                    // No call possible (interrupts off here): HPET time alone judges.
                    Err(_) => answered = SELFTEST_PINGS,
                }
            }
            if arrived() {
                return true;
            }
            if answered == SELFTEST_PINGS {
                return false;
            }
        }
        false
    }

    /// Its time-layer device id, for the trace (`usize::MAX` before it is registered).
    fn trace_id(&self) -> usize {
        self.device.load(Ordering::Relaxed).wrapping_sub(1)
    }

    fn write_config(&self, extra: ComparatorConfig) {
        self.hpet.set_comparator_config(self.index, self.base_config | extra);
    }
}

impl EventDriver for HpetChannel {
    fn switch_state(&self, state: DriverState) {
        match state {
            DriverState::Shutdown | DriverState::OneshotStopped => {
                self.write_config(ComparatorConfig::empty())
            }
            DriverState::Oneshot => self.write_config(ComparatorConfig::INTERRUPT_ENABLE),
            DriverState::Periodic { period_ticks } => {
                // Spec 2.3.9.2.2 and the pitfalls: with VALUE_SET the first write sets the
                // comparator, the second the period (some chipsets need both).
                let period = period_ticks.clamp(MIN_DELTA_TICKS, MAX_DELTA_TICKS);
                self.write_config(
                    ComparatorConfig::INTERRUPT_ENABLE
                        | ComparatorConfig::PERIODIC
                        | ComparatorConfig::VALUE_SET,
                );
                let now = self.hpet.counter() as u32;
                self.hpet.set_comparator(self.index, u64::from(now.wrapping_add(period as u32)));
                self.hpet.set_comparator(self.index, period);
            }
        }
    }

    /// Comparator write and counter read back, the counter before the write derived from the
    /// TSC while the last read is fresh (two accesses; else Linux's three: read, write, read
    /// back). If fewer than [`MIN_MARGIN_TICKS`] remain after the write, the comparator may
    /// have been passed and would only fire after a wrap, so the layer is told to retry; if
    /// the estimate put the event later than asked by more than its bias, it is written again
    /// from the counter just read.
    fn set_next_event(&self, delta_ticks: u64) -> Result<(), EventPassed> {
        crate::arch::x86_64::trace::program(delta_ticks, || (self.trace_id(), self.hpet.frequency_hz()));
        let delta = delta_ticks.clamp(MIN_DELTA_TICKS, MAX_DELTA_TICKS) as u32;
        let reference = CounterReference {
            counter: self.reference_counter.load(Ordering::Relaxed) as u32,
            tsc: self.reference_tsc.load(Ordering::Relaxed),
        };
        let estimated = (reference.tsc != 0 && !READ_COUNTER.load(Ordering::Relaxed))
            .then(|| reference.estimate(tsc::read(), self.tsc_to_ticks, self.fresh_cycles))
            .flatten();
        let mut target = estimated.unwrap_or_else(|| self.hpet.counter() as u32).wrapping_add(delta);
        self.hpet.set_comparator(self.index, u64::from(target));
        // The TSC is taken before the read: the counter value is then at least the counter at
        // that TSC, so estimates from the pair err late, by the read's own latency.
        let tsc_before_read = tsc::read();
        let mut after = self.hpet.counter() as u32;
        self.reference_counter.store(u64::from(after), Ordering::Relaxed);
        self.reference_tsc.store(tsc_before_read, Ordering::Relaxed);
        let late_by = target.wrapping_sub(after).wrapping_sub(delta) as i32;
        if estimated.is_some() && late_by > 2 * ESTIMATE_BIAS_TICKS as i32 {
            target = after.wrapping_add(delta);
            self.hpet.set_comparator(self.index, u64::from(target));
            after = self.hpet.counter() as u32;
        }
        let left = target.wrapping_sub(after) as i32;
        if left < MIN_MARGIN_TICKS as i32 { Err(EventPassed) } else { Ok(()) }
    }

    /// While the clock runs on this comparator's own block's counter, the comparator is set to
    /// the counter reading at which the clock reads `at_ns` (two accesses: the write and the
    /// read back), so the event fires at its time instead of late by the path from the layer's
    /// clock read to a counter read here (about 160 instructions in the dev profile); else
    /// (another block's comparator, another clock) as [`set_next_event`], from the delta in
    /// its own block's ticks and its own counter.
    fn set_next_event_at(&self, at_ns: u64, _now_ns: u64, delta_ticks: u64) -> Result<(), EventPassed> {
        let Some(target) = hpet_counter_at(self.hpet, at_ns) else { return self.set_next_event(delta_ticks) };
        let target = target as u32;
        self.hpet.set_comparator(self.index, u64::from(target));
        let tsc_before_read = tsc::read();
        let after = self.hpet.counter() as u32;
        self.reference_counter.store(u64::from(after), Ordering::Relaxed);
        self.reference_tsc.store(tsc_before_read, Ordering::Relaxed);
        // Passed while written (or a deadline the layer's clamp put within reach): retried
        // at the minimum delta by the layer, as for set_next_event.
        let left = target.wrapping_sub(after) as i32;
        if left < MIN_MARGIN_TICKS as i32 { Err(EventPassed) } else { Ok(()) }
    }

    /// The broadcast device follows its earliest sleeper (called under the broadcast lock,
    /// only when that CPU changes): see [`try_move_to`](HpetChannel::try_move_to).
    fn retarget(&self, cpu: usize) -> bool {
        let Some(apic) = percpu::cpu(cpu).map(|c| c.apic_id) else { return false };
        self.try_move_to(cpu, apic).is_ok()
    }
}

/// Why [`HpetChannel::try_move_to`] left the interrupt where it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveRefused {
    /// The IOAPIC's lock is held elsewhere: try again (never waited for).
    IoapicBusy,
    /// The destination format cannot name the CPU.
    Unreachable(Unreachable),
    /// The IOAPIC refused the write.
    Ioapic(crate::arch::x86_64::ioapic::IoApicError),
    /// The 8259's line goes to the one CPU there is.
    PicLine,
}

impl fmt::Display for MoveRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoveRefused::IoapicBusy => f.write_str("the IOAPIC is busy"),
            MoveRefused::Unreachable(u) => write!(f, "{u}"),
            MoveRefused::Ioapic(e) => write!(f, "{e}"),
            MoveRefused::PicLine => f.write_str("the 8259's line cannot move"),
        }
    }
}

impl HpetChannel {
    /// Aims the interrupt of a channel that serves at CPU `cpu` (APIC id `apic`), for a
    /// caller holding the broadcast lock (the layer's retarget; a CPU going offline moving
    /// the broadcast interrupt off itself). FSB: the comparator's own message rewritten (one
    /// 64-bit write). IOAPIC: the pin's destination, one write through the chip's
    /// select/window pair, which needs the `IOAPICS` lock; it is only tried, never waited for
    /// (bring-up and suspend take it with interrupts on, and a CPU holding it could be the one
    /// this broadcast interrupt must reach, or be interrupted by it): when busy, the route
    /// stays ([`MoveRefused::IoapicBusy`]) and the caller tries again later.
    pub fn try_move_to(&self, cpu: usize, apic: u32) -> Result<(), MoveRefused> {
        match self.delivery {
            Delivery::Fsb => {
                let (address, data) =
                    destination::format().msi_message(apic, self.vector).map_err(MoveRefused::Unreachable)?;
                self.hpet.set_fsb_route(self.index, address, data);
            }
            Delivery::Ioapic { gsi } | Delivery::Legacy { route: IsaRoute { gsi, .. } } => {
                // A CPU the format cannot name is refused before the lock is tried.
                destination::format().ioapic_bits(apic).map_err(MoveRefused::Unreachable)?;
                let Some(mut io) = IOAPICS.try_lock() else { return Err(MoveRefused::IoapicBusy) };
                io.set_destination(gsi, apic).map_err(MoveRefused::Ioapic)?;
            }
            Delivery::Pic { .. } => return Err(MoveRefused::PicLine),
        }
        self.target_apic.store(apic, Ordering::Relaxed);
        if let Some(w) = self.moved_to.get(cpu / 64)
            && w.load(Ordering::Relaxed) & (1 << (cpu % 64)) == 0
        {
            w.fetch_or(1 << (cpu % 64), Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Every channel set up so far.
pub fn channels() -> Vec<&'static HpetChannel> {
    x86_64::instructions::interrupts::without_interrupts(|| CHANNELS.lock().clone())
}

/// The interrupt of any HPET channel: counted where it lands (per CPU, a counter only that
/// CPU writes), then handed to the self-test or the time layer.
fn channel_interrupt(irq: interrupts::Irq) {
    let vector = irq.vector;
    let Some(&ch) = BY_VECTOR[usize::from(vector)].get() else {
        interrupts::spurious(format_args!("HPET vector {vector:#04x} without a comparator"));
        return;
    };
    if ch.level {
        // Level-triggered: ours only if our status bit is set; writing 1 releases the line.
        if ch.hpet.interrupt_status() & (1 << ch.index) == 0 {
            ch.spurious.fetch_add(1, Ordering::Relaxed);
            interrupts::not_ours(format_args!(
                "HPET comparator {}'s line (GSI {}) without its status bit",
                ch.index,
                ch.delivery.gsi().unwrap_or(0)
            ));
            if ch.storm.stray() {
                ch.stop_storm();
            }
            return;
        }
        ch.hpet.clear_interrupt(ch.index);
        ch.storm.event();
    }
    path_trace::stamp(Stage::Acked);
    if ch.in_selftest.load(Ordering::Acquire) {
        // Where and when first: the waiting CPU reads them once it sees the count.
        ch.selftest_by_cpu.bump_on(percpu::this_cpu().index);
        ch.selftest_last_ns.store(now_ns(), Ordering::Relaxed);
        ch.selftest_irqs.fetch_add(1, Ordering::Release);
        return;
    }
    match ch.device.load(Ordering::Acquire) {
        0 => {
            ch.spurious.fetch_add(1, Ordering::Relaxed);
            interrupts::spurious(format_args!("HPET comparator {} serves nobody", ch.index));
        }
        d => {
            let Some(cpu) = irq.cpu else {
                return interrupts::spurious(format_args!(
                    "HPET comparator {} before per-CPU state",
                    ch.index
                ));
            };
            super::cpu::device_interrupt(DeviceId(d - 1), cpu);
            // Counted after the expiry: a statistic, nothing the callbacks wait for.
            ch.irqs_by_cpu.bump_on(cpu.index);
        }
    }
}

/// A storm is this many interrupts on a comparator's level-triggered line without its status
/// bit, in a run that its own events did not break up (see [`StormMeter`]).
pub const STORM_THRESHOLD: u64 = 1_000;
/// A run of strays is broken up (not a storm) once the comparator's own events reach one per
/// this many strays.
pub const STORM_STRAYS_PER_EVENT: u64 = 4;

/// Storm detection by what the line does, counted in interrupts, never in time: on a
/// level-triggered line the handler clears the comparator's status bit, which releases the
/// line, so an interrupt with the bit clear is a stray, something else holding the line. A
/// held line interrupts again as soon as each stray is ended, the CPU doing nothing else, so
/// strays pile up against the comparator's own events, which come only as timers fall due:
/// about 100 strays per event on QEMU 10 (TCG), 35 over a whole run with the CPU slowed 64x
/// under `-icount shift=6` (30 000 against 853 when nothing stopped it), and none at all in
/// the 1 000-stray run that now stops it there. A healthy line has none, or a few beside its
/// events (a shared or glitching line). So a run
/// of strays opens with the first; each of the comparator's own events counts against it,
/// and the run is over (forgotten) once the events reach one per [`STORM_STRAYS_PER_EVENT`]
/// strays; a run that reaches [`STORM_THRESHOLD`] strays is a storm. Neither the host's speed
/// nor the emulated interrupt rate decides it: a window of time (the old rule, 1 000 strays in
/// 10 ms) missed a storm on a loaded host (1 069 in 11.5 ms) and every storm under icount
/// shift=6. Only the CPU the line is routed to writes the counts.
#[derive(Debug, Default)]
pub struct StormMeter {
    /// Strays in the current run (0: no run open).
    strays: AtomicU64,
    /// The comparator's own events since the run opened.
    events: AtomicU64,
}

impl StormMeter {
    pub const fn new() -> StormMeter {
        StormMeter { strays: AtomicU64::new(0), events: AtomicU64::new(0) }
    }

    /// Counts a stray; true when the run it extends is a storm.
    pub fn stray(&self) -> bool {
        let strays = self.strays.load(Ordering::Relaxed) + 1;
        self.strays.store(strays, Ordering::Relaxed);
        strays >= STORM_THRESHOLD
    }

    /// Counts one of the comparator's own events: with enough of them the run is over. On
    /// the interrupt path: one load when no run is open.
    #[inline]
    pub fn event(&self) {
        let strays = self.strays.load(Ordering::Relaxed);
        if strays == 0 {
            return;
        }
        let events = self.events.load(Ordering::Relaxed) + 1;
        if events.saturating_mul(STORM_STRAYS_PER_EVENT) >= strays {
            self.strays.store(0, Ordering::Relaxed);
            self.events.store(0, Ordering::Relaxed);
        } else {
            self.events.store(events, Ordering::Relaxed);
        }
    }

    /// (strays, own events) of the current run.
    pub fn run(&self) -> (u64, u64) {
        (self.strays.load(Ordering::Relaxed), self.events.load(Ordering::Relaxed))
    }
}

impl HpetChannel {
    /// Masks the line of a storm; the comparator is taken out of service by this CPU's deferred
    /// work, at the interrupt's exit ([`take_out_stormed`]). Runs in the storm's interrupt: the
    /// IOAPIC lock is only tried (the interrupted code may hold it); a busy lock leaves the
    /// work to the storm's next interrupt.
    fn stop_storm(&self) {
        let Some(gsi) = self.delivery.gsi() else { return };
        if self.storm_masked.load(Ordering::Relaxed) {
            return;
        }
        let Some(mut io) = IOAPICS.try_lock() else { return };
        let masked = io.mask(gsi, true).is_ok();
        drop(io);
        if !masked || self.storm_masked.swap(true, Ordering::Release) {
            return;
        }
        deferred::raise(percpu::this_cpu().index, deferred::Kind::TakeOutFailedDevices);
    }

    /// Takes the comparator out of service once its stormed line is masked (once).
    fn take_out_storm(&self) {
        if !self.storm_masked.load(Ordering::Acquire) || self.storm_taken_out.swap(true, Ordering::Relaxed) {
            return;
        }
        let gsi = self.delivery.gsi().unwrap_or(0);
        let (strays, events) = self.storm.run();
        let reason = format!(
            "interrupt storm on GSI {gsi} ({strays} interrupts without HPET comparator {}'s status bit against {events} of its events): line masked, comparator taken out",
            self.index
        );
        match self.device.load(Ordering::Acquire) {
            0 => super::runtime_fallback(reason),
            d => super::registry::take_out(DeviceId(d - 1), &reason),
        }
    }
}

/// Every comparator whose line a storm masked is taken out of service (deferred work of the
/// CPU that masked it, outside the interrupt).
pub(super) fn take_out_stormed() {
    for ch in channels() {
        ch.take_out_storm();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_estimate_follows_the_tsc_and_leans_late() {
        let tsc_to_ticks = MultShift::ns_per_tick(100_000_000, 2_500_000_000); // 100 MHz HPET, 2.5 GHz TSC
        let r = CounterReference { counter: 1_000, tsc: 10_000 };
        assert_eq!(r.estimate(10_000, tsc_to_ticks, 250_000), Some(1_000 + ESTIMATE_BIAS_TICKS));
        // 25 000 cycles = 10 us = 1000 ticks (the ratio rounds down by under a tick, which the
        // bias more than covers).
        let ahead = |r: CounterReference, tsc| {
            r.estimate(tsc, tsc_to_ticks, 250_000).map(|c| c.wrapping_sub(r.counter))
        };
        assert!(
            (999 + ESTIMATE_BIAS_TICKS..=1_000 + ESTIMATE_BIAS_TICKS).contains(&ahead(r, 35_000).unwrap())
        );
        let near_wrap = CounterReference { counter: u32::MAX - 10, tsc: 0 };
        let estimate = near_wrap.estimate(25_000, tsc_to_ticks, 250_000).unwrap();
        assert!(estimate < 1_100, "carried across the 32-bit wrap: {estimate}");
        assert!(
            (999 + ESTIMATE_BIAS_TICKS..=1_000 + ESTIMATE_BIAS_TICKS)
                .contains(&ahead(near_wrap, 25_000).unwrap())
        );
    }

    #[test]
    fn stale_or_future_references_are_not_trusted() {
        let tsc_to_ticks = MultShift::ns_per_tick(100_000_000, 2_500_000_000);
        let r = CounterReference { counter: 1_000, tsc: 10_000 };
        assert_eq!(r.estimate(260_001, tsc_to_ticks, 250_000), None, "older than fresh");
        assert_eq!(r.estimate(9_999, tsc_to_ticks, 250_000), None, "a TSC behind the reference");
    }

    #[test]
    fn selftest_wait_of_a_fast_counter_does_not_overflow() {
        // 100 MHz (q35): 1 s of ticks plus the event's delay.
        assert_eq!(selftest_wait_ticks(100_000_000), 100_000_000 + SELFTEST_DELTA_TICKS);
        // A period of 50 000 fs (20 GHz, legal: the specification bounds it only above):
        // 10^9 ns x 2 x 10^10 Hz overflowed a u64.
        let hz = hpet_regs::Capabilities(50_000 << 32).frequency_hz();
        assert_eq!(selftest_wait_ticks(hz), 20_000_000_000 + SELFTEST_DELTA_TICKS);
        // The fastest period believed (100 fs, 10 THz), and beyond, saturate rather than wrap.
        let hz = hpet_regs::Capabilities(u64::from(hpet_regs::MIN_PERIOD_FS) << 32).frequency_hz();
        assert_eq!(selftest_wait_ticks(hz), 10_000_000_000_000 + SELFTEST_DELTA_TICKS);
        assert_eq!(selftest_wait_ticks(u64::MAX), u64::MAX);
    }

    #[test]
    fn selftest_passes_only_with_every_event_answered_on_its_target() {
        let on = |by_cpu: Vec<(usize, u64)>| {
            let irqs: u64 = by_cpu.iter().map(|&(_, n)| n).sum();
            SelftestOutcome { target: 1, events: irqs.min(SELFTEST_IRQS), irqs, by_cpu, ns: 1_000 }
        };
        assert!(on(vec![(1, 5)]).passed());
        assert!(!on(vec![(1, 4)]).passed(), "one missing");
        let misrouted = on(vec![(0, 2), (1, 3)]);
        assert!(!misrouted.passed(), "all arrived, but two on CPU 0");
        assert_eq!(misrouted.elsewhere(), 2);
        assert_eq!(
            misrouted.to_string(),
            "5 of 5 events answered by 5 interrupts (2 on CPU 0, 3 on CPU 1) in 1 us"
        );
        assert_eq!(on(vec![]).to_string(), "0 of 5 events answered by 0 interrupts in 1 us");
    }

    #[test]
    fn extra_interrupts_on_the_target_are_no_failure_but_one_elsewhere_is() {
        // A loaded host: "10 of 5 interrupts" took healthy comparators out.
        let healthy = SelftestOutcome { target: 1, events: 5, irqs: 10, by_cpu: vec![(1, 10)], ns: 1_000 };
        assert!(healthy.passed(), "{healthy}");
        let stray = SelftestOutcome { target: 1, events: 5, irqs: 11, by_cpu: vec![(0, 1), (1, 10)], ns: 1 };
        assert!(!stray.passed(), "one interrupt on CPU 0");
        let short = SelftestOutcome { target: 1, events: 4, irqs: 10, by_cpu: vec![(1, 10)], ns: 1 };
        assert!(!short.passed(), "an event never answered, whatever the count");
    }

    /// Feeds `pattern` (true: a stray, false: an own event) `times` times; returns after how
    /// many strays a storm was called, if it was.
    fn storm_after(pattern: &[bool], times: usize) -> Option<u64> {
        let meter = StormMeter::new();
        let mut strays = 0;
        for &stray in pattern.iter().cycle().take(pattern.len() * times) {
            if stray {
                strays += 1;
                if meter.stray() {
                    return Some(strays);
                }
            } else {
                meter.event();
            }
        }
        None
    }

    fn strays_then_event(strays: usize) -> Vec<bool> {
        let mut p = vec![true; strays];
        p.push(false);
        p
    }

    #[test]
    fn a_held_line_is_a_storm_whatever_its_rate() {
        // No time in the rule: a held line between the comparator's own events, ~100 strays
        // per event at full speed, ~10 with the CPU slowed (icount shift=6), is caught.
        assert_eq!(storm_after(&[true], 2_000), Some(STORM_THRESHOLD));
        assert_eq!(storm_after(&strays_then_event(100), 100), Some(STORM_THRESHOLD));
        assert_eq!(storm_after(&strays_then_event(10), 1_000), Some(STORM_THRESHOLD));
        assert!(storm_after(&strays_then_event(STORM_STRAYS_PER_EVENT as usize + 1), 10_000).is_some());
    }

    #[test]
    fn strays_among_enough_own_events_are_no_storm() {
        // A healthy line: a stray now and then, or a few beside every event, forever.
        assert_eq!(storm_after(&strays_then_event(1), 100_000), None);
        assert_eq!(storm_after(&strays_then_event(STORM_STRAYS_PER_EVENT as usize), 100_000), None);
        let mut sparse = vec![false; 50];
        sparse.push(true);
        assert_eq!(storm_after(&sparse, 100_000), None);
        // A burst short of the threshold, then events: forgotten, the next burst starts anew.
        let mut bursts = vec![true; STORM_THRESHOLD as usize - 1];
        bursts.extend([false; STORM_THRESHOLD as usize]);
        assert_eq!(storm_after(&bursts, 10), None);
    }
}
