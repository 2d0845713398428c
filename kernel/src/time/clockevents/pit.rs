//! The 8254 PIT's channel 0 as a clock event device of last resort (Linux's `i8253`
//! clockevent): one-shot and periodic at 1.193182 MHz, its 16-bit counter as the delta range,
//! rated below every other device, global (not per-CPU) and running in deep idle, so that the
//! registry takes it as the broadcast device when no global HPET comparator exists, and so as
//! the device of every CPU nothing else serves. Its IRQ0 reaches one CPU (the boot CPU)
//! through the IOAPIC, on the GSI the MADT's interrupt source override gives IRQ0, or through
//! the 8259: on a CPU without a local APIC (the one CPU then), or, where no IOAPIC serves
//! IRQ0's GSI (a MADT without an IOAPIC), through the boot CPU's LINT0 as ExtINT
//! (virtual-wire mode, as Linux without an IOAPIC).
//!
//! Registered only when IRQ0 is free: the HPET's legacy replacement route takes it over (and
//! disconnects the PIT), and `pit=off` leaves it out. One line in the log says which.

use crate::arch::x86_64::ioapic::{IOAPICS, Polarity, Trigger};
use crate::arch::x86_64::path_trace::{self, Stage};
use crate::arch::x86_64::platform::Platform;
use crate::arch::x86_64::smp::percpu;
use crate::arch::x86_64::{interrupts, lapic, pic, pit};
use crate::cmdline::KernelOptions;
use crate::time::clocksource::count_down;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use kernel_time::clockevents::{CpuSet, DeviceSpec, DriverState, EventDriver, EventPassed, Features};
use kernel_time::tick::DeviceId;

/// Below the global HPET device (90) and the LAPIC timer (100): the PIT serves only where
/// nothing else can, as the device of last resort (Linux's `i8253`).
pub const RATING: u32 = 10;

/// Channel 0 of the one 8254.
pub struct PitTimer {
    /// Its time-layer device id + 1 (0: not attached).
    device: AtomicUsize,
    /// Shut down (or stopped): an event that still arrives is dropped, not handed to the layer.
    shut_down: AtomicBool,
    /// Events dropped while shut down (QEMU's PIT may finish an event a bare control word
    /// interrupted), and events handed to the layer.
    dropped: AtomicU64,
    events: AtomicU64,
}

static PIT: PitTimer = PitTimer {
    device: AtomicUsize::new(0),
    shut_down: AtomicBool::new(true),
    dropped: AtomicU64::new(0),
    events: AtomicU64::new(0),
};

impl PitTimer {
    fn attach(&self, device: DeviceId) {
        self.device.store(device.0 + 1, Ordering::Release);
    }

    /// Its time-layer device id, for the trace (`usize::MAX` before it is attached).
    fn trace_id(&self) -> usize {
        self.device.load(Ordering::Relaxed).wrapping_sub(1)
    }
}

impl EventDriver for PitTimer {
    fn switch_state(&self, state: DriverState) {
        match state {
            DriverState::Shutdown | DriverState::OneshotStopped => {
                self.shut_down.store(true, Ordering::Release);
                pit::channel0_stop();
            }
            DriverState::Oneshot => self.shut_down.store(false, Ordering::Release),
            DriverState::Periodic { period_ticks } => {
                self.shut_down.store(false, Ordering::Release);
                pit::channel0_periodic(period_ticks);
            }
        }
    }

    /// A count-down cannot be passed while written: it starts from the value written.
    fn set_next_event(&self, delta_ticks: u64) -> Result<(), EventPassed> {
        crate::arch::x86_64::trace::program(delta_ticks, || (self.trace_id(), pit::PIT_HZ));
        self.shut_down.store(false, Ordering::Release);
        pit::channel0_oneshot(delta_ticks);
        Ok(())
    }

    /// Counts what is left of the layer's delta at a fresh read of the clock's counter just
    /// before the write (as the LAPIC timer: `clocksource::count_down`).
    fn set_next_event_at(&self, at_ns: u64, now_ns: u64, delta_ticks: u64) -> Result<(), EventPassed> {
        self.shut_down.store(false, Ordering::Release);
        let left = count_down(at_ns, now_ns, delta_ticks, pit::channel0_oneshot);
        crate::arch::x86_64::trace::program(left, || (self.trace_id(), pit::PIT_HZ));
        Ok(())
    }
}

/// How IRQ0 reaches a CPU through the 8259.
#[derive(Debug, Clone, Copy)]
enum Wire {
    /// No local APIC: the 8259's INTR is the CPU's own.
    NoLapic,
    /// No IOAPIC serves IRQ0's GSI: the 8259's INTR through the calling CPU's LINT0 (ExtINT).
    VirtualWire { gsi: u32 },
}

/// IRQ0 through the 8259 (its vector fixed by the remapping), to the only CPU (no local APIC)
/// or to the calling (boot) CPU by its LINT0 in virtual-wire mode.
fn register_on_8259(wire: Wire) -> Result<alloc::string::String, Skipped> {
    let vector = pic::vector(pit::IRQ);
    interrupts::register(vector, pit_interrupt).map_err(|e| match e {
        // The HPET's legacy route through the 8259 took IRQ0 (and disconnected the PIT).
        interrupts::RegisterError::InUse(_) => Skipped::IrqTaken { gsi: None, owner: "HPET legacy route" },
        e => Skipped::Failed(alloc::format!("IRQ0's 8259 vector {vector:#04x}: {e}")),
    })?;
    pit::channel0_stop();
    let how = match wire {
        Wire::NoLapic => alloc::string::String::from("no local APIC"),
        Wire::VirtualWire { gsi } => {
            // Before the line opens: the 8259's interrupts ended at the 8259 only, LINT0 open.
            pic::through_lint0();
            lapic::lint0_extint();
            alloc::format!("no IOAPIC serves GSI {gsi}: virtual-wire mode, LINT0 as ExtINT")
        }
    };
    let spec = spec();
    if super::registry::register(spec, &PIT, |id| PIT.attach(id)).is_none() {
        return Err(Skipped::Failed("no registry".into()));
    }
    pic::unmask(pit::IRQ);
    Ok(alloc::format!(
        "PIT channel 0: IRQ0 through the 8259 ({how}) -> CPU {} vector {vector:#04x}, rating {RATING}, {}..{} ticks at {} Hz: registered as the device of last resort",
        percpu::this_cpu().index,
        pit::MIN_COUNT,
        pit::MAX_COUNT,
        pit::PIT_HZ
    ))
}

fn spec() -> DeviceSpec {
    DeviceSpec {
        name: "pit".into(),
        features: Features::ONESHOT | Features::PERIODIC,
        rating: RATING,
        cpus: CpuSet::first(percpu::all().count()),
        frequency_hz: pit::PIT_HZ,
        min_delta_ticks: u64::from(pit::MIN_COUNT),
        max_delta_ticks: u64::from(pit::MAX_COUNT),
    }
}

/// IRQ0 from channel 0, on the CPU its route names.
fn pit_interrupt(irq: interrupts::Irq) {
    path_trace::stamp(Stage::Acked);
    if PIT.shut_down.load(Ordering::Acquire) {
        PIT.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    match PIT.device.load(Ordering::Acquire) {
        0 => interrupts::spurious(format_args!("PIT IRQ0 with no PIT device")),
        d => {
            PIT.events.fetch_add(1, Ordering::Relaxed);
            match irq.cpu {
                Some(cpu) => super::cpu::device_interrupt(DeviceId(d - 1), cpu),
                None => interrupts::spurious(format_args!("PIT IRQ0 before per-CPU state")),
            }
        }
    }
}

/// Events handed to the time layer, and events dropped while shut down.
pub fn counts() -> (u64, u64) {
    (PIT.events.load(Ordering::Relaxed), PIT.dropped.load(Ordering::Relaxed))
}

/// Why the PIT is not registered.
#[derive(Debug)]
enum Skipped {
    Off,
    /// IRQ0 is taken (at the IOAPIC's GSI, or at the 8259: `None`).
    IrqTaken {
        gsi: Option<u32>,
        owner: &'static str,
    },
    NoIoapic {
        gsi: u32,
    },
    Failed(alloc::string::String),
}

impl core::fmt::Display for Skipped {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Skipped::Off => f.write_str("pit=off"),
            Skipped::IrqTaken { gsi: Some(gsi), owner } => {
                write!(f, "IRQ0 (GSI {gsi}) is taken by the {owner}")
            }
            Skipped::IrqTaken { gsi: None, owner } => write!(f, "IRQ0 (8259) is taken by the {owner}"),
            Skipped::NoIoapic { gsi } => write!(f, "no IOAPIC serves IRQ0's GSI {gsi}"),
            Skipped::Failed(why) => f.write_str(why),
        }
    }
}

/// Registers channel 0 as the device of last resort if IRQ0 is free, routed to the calling
/// (boot) CPU; logs one line either way. A PIT that cannot be set up where it should is a
/// fallback; one left out by choice or because IRQ0 is taken is not.
pub fn register(platform: &mut Platform, options: &KernelOptions) {
    match try_register(platform, options) {
        Ok(line) => log::info!("{line}"),
        Err(e @ Skipped::Failed(_)) => platform.fall_back(alloc::format!("PIT not registered: {e}")),
        Err(e) => log::info!("PIT not registered: {e}"),
    }
}

fn try_register(platform: &Platform, options: &KernelOptions) -> Result<alloc::string::String, Skipped> {
    if !options.pit {
        return Err(Skipped::Off);
    }
    if platform.lapic.is_none() {
        return register_on_8259(Wire::NoLapic);
    }
    let route = platform
        .firmware
        .isa_routes
        .get(usize::from(pit::IRQ))
        .copied()
        .ok_or(Skipped::NoIoapic { gsi: 0 })?;
    let gsi = route.gsi;
    {
        let io = IOAPICS.lock();
        if io.lookup(gsi).is_err() {
            drop(io);
            return register_on_8259(Wire::VirtualWire { gsi });
        }
        if let Some(owner) = io.owner(gsi) {
            return Err(Skipped::IrqTaken { gsi: Some(gsi), owner });
        }
    }
    let vector = interrupts::allocate(pit_interrupt)
        .map_err(|e| Skipped::Failed(alloc::format!("no vector ({e})")))?;
    // Quiet before its line opens: the firmware leaves channel 0 running (18.2 Hz on a PC BIOS).
    pit::channel0_stop();
    let cpu = percpu::this_cpu();
    {
        let mut io = IOAPICS.lock();
        io.claim(gsi, "PIT").map_err(|e| Skipped::Failed(alloc::format!("{e}")))?;
        if let Err(e) = io.route(gsi, route.entry(vector, cpu.apic_id)) {
            let _ = io.release(gsi);
            return Err(Skipped::Failed(alloc::format!("cannot route GSI {gsi}: {e}")));
        }
    }
    if super::registry::register(spec(), &PIT, |id| PIT.attach(id)).is_none() {
        let _ = IOAPICS.lock().release(gsi);
        return Err(Skipped::Failed("no registry".into()));
    }
    Ok(alloc::format!(
        "PIT channel 0: IRQ0 -> GSI {gsi} ({}, {}) -> CPU {} vector {vector:#04x}, rating {RATING}, {}..{} ticks at {} Hz: registered as the device of last resort",
        if route.trigger == Trigger::Level { "level" } else { "edge" },
        if route.polarity == Polarity::ActiveLow { "active low" } else { "active high" },
        cpu.index,
        pit::MIN_COUNT,
        pit::MAX_COUNT,
        pit::PIT_HZ
    ))
}
