//! The local APIC (Intel SDM vol. 3A ch. 11): xAPIC through MMIO or x2APIC through MSRs,
//! end-of-interrupt, the spurious and error vectors, IPIs, and the timer in one-shot, periodic
//! and TSC-deadline modes.

use super::{interrupts, mmio};
use core::arch::x86_64::__cpuid;
use core::fmt;
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use x86_64::registers::model_specific::Msr;

/// IA32_APIC_BASE: bit 8 BSP, bit 10 x2APIC enable (EXTD), bit 11 global enable, 12+ base.
const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_BSP: u64 = 1 << 8;
const APIC_BASE_EXTD: u64 = 1 << 10;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const IA32_TSC_DEADLINE: u32 = 0x6e0;
/// x2APIC register n (xAPIC offset) is MSR 0x800 + offset / 16 (SDM 11.12.1.2).
const X2APIC_MSR_BASE: u32 = 0x800;

/// xAPIC register offsets (SDM table 11-1).
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
enum Reg {
    Id = 0x020,
    Version = 0x030,
    TaskPriority = 0x080,
    Eoi = 0x0b0,
    SpuriousVector = 0x0f0,
    ErrorStatus = 0x280,
    IcrLow = 0x300,
    IcrHigh = 0x310,
    LvtTimer = 0x320,
    LvtLint0 = 0x350,
    LvtLint1 = 0x360,
    LvtError = 0x370,
    TimerInitialCount = 0x380,
    TimerCurrentCount = 0x390,
    TimerDivide = 0x3e0,
}

/// SVR bit 8: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_PERIODIC: u32 = 0b01 << 17;
const LVT_TIMER_TSC_DEADLINE: u32 = 0b10 << 17;
/// Divide configuration 0b0011: divide by 16 (Linux's APIC_DIVISOR): 32-bit counts then last
/// tens of seconds at GHz bus clocks.
const TIMER_DIVIDE_BY_16: u32 = 0b0011;
pub const TIMER_DIVISOR: u64 = 16;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_ALL_EXCLUDING_SELF: u32 = 0b11 << 18;
const ICR_STARTUP: u32 = 0b110 << 8;

/// The fixed system vectors at the top of the table.
pub const SPURIOUS_VECTOR: u8 = 0xff;
pub const ERROR_VECTOR: u8 = 0xfe;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    XApic,
    X2Apic,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::XApic => "xapic",
            Mode::X2Apic => "x2apic",
        })
    }
}

/// What CPUID says about the APIC and its timer.
#[derive(Debug, Clone, Copy)]
pub struct Features {
    pub x2apic: bool,
    pub tsc_deadline: bool,
    /// Always Running APIC Timer: the timer keeps counting in deep C-states.
    pub arat: bool,
}

pub fn features() -> Features {
    let leaf1 = __cpuid(1);
    let arat = __cpuid(0).eax >= 6 && __cpuid(6).eax & (1 << 2) != 0;
    Features { x2apic: leaf1.ecx & (1 << 21) != 0, tsc_deadline: leaf1.ecx & (1 << 24) != 0, arat }
}

/// 0 = not set up, else Mode as 1 (xAPIC) or 2 (x2APIC); one mode for all CPUs.
static MODE: AtomicU8 = AtomicU8::new(0);
/// Virtual address of the xAPIC register page (the same for every CPU).
static XAPIC_BASE: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);

pub fn mode() -> Option<Mode> {
    match MODE.load(Ordering::Relaxed) {
        1 => Some(Mode::XApic),
        2 => Some(Mode::X2Apic),
        _ => None,
    }
}

fn read(reg: Reg) -> u32 {
    match mode() {
        Some(Mode::X2Apic) => {
            // SAFETY: x2APIC mode is enabled on this CPU, so MSR 0x800 + offset/16 is its register.
            unsafe { Msr::new(X2APIC_MSR_BASE + reg as u32 / 16).read() as u32 }
        }
        _ => {
            let base = XAPIC_BASE.load(Ordering::Relaxed);
            assert!(base != 0, "LAPIC register access before lapic::init");
            // SAFETY: `base` maps the xAPIC page uncached (init), and `reg` is an aligned
            // 32-bit register inside it.
            unsafe { core::ptr::read_volatile((base + reg as u64) as *const u32) }
        }
    }
}

fn write(reg: Reg, value: u32) {
    match mode() {
        Some(Mode::X2Apic) => {
            // SAFETY: as in `read`; writing LAPIC registers affects only this CPU's APIC.
            unsafe { Msr::new(X2APIC_MSR_BASE + reg as u32 / 16).write(u64::from(value)) }
        }
        _ => {
            let base = XAPIC_BASE.load(Ordering::Relaxed);
            assert!(base != 0, "LAPIC register access before lapic::init");
            // SAFETY: as in `read`.
            unsafe { core::ptr::write_volatile((base + reg as u64) as *mut u32, value) }
        }
    }
}

/// This CPU's APIC id.
pub fn id() -> u32 {
    match mode() {
        Some(Mode::X2Apic) => read(Reg::Id),
        _ => read(Reg::Id) >> 24,
    }
}

pub fn eoi() {
    write(Reg::Eoi, 0);
}

pub fn error_count() -> u64 {
    ERRORS.load(Ordering::Relaxed)
}

fn error_interrupt(_vector: u8) {
    // Writing ESR latches the errors since the last write (SDM 11.5.3).
    write(Reg::ErrorStatus, 0);
    let esr = read(Reg::ErrorStatus);
    let n = ERRORS.fetch_add(1, Ordering::Relaxed) + 1;
    if n <= 10 {
        log::warn!("LAPIC error interrupt on APIC {}: ESR {esr:#x}", id());
    }
}

fn spurious_interrupt(_vector: u8) {
    // The APIC's spurious vector needs no EOI; `interrupts::dispatch` still sends one, which the
    // APIC ignores when no interrupt is in service.
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LapicError {
    Mapping(mmio::MmioError),
}

impl fmt::Display for LapicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LapicError::Mapping(e) => write!(f, "cannot map the xAPIC registers: {e}"),
        }
    }
}

/// Enables the boot CPU's LAPIC: x2APIC when CPUID offers it, else xAPIC at the base the MSR
/// reports; spurious and error vectors installed, LINT0/LINT1 and the timer masked.
pub fn init_bsp() -> Result<Mode, LapicError> {
    let f = features();
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU.
    let base_msr = unsafe { Msr::new(IA32_APIC_BASE).read() };
    let mode = if f.x2apic {
        // SAFETY: CPUID reports x2APIC; setting EN then EXTD is the documented enabling order
        // (SDM 11.12.1), and nothing else uses the APIC yet.
        unsafe { Msr::new(IA32_APIC_BASE).write(base_msr | APIC_BASE_ENABLE | APIC_BASE_EXTD) };
        MODE.store(2, Ordering::Relaxed);
        Mode::X2Apic
    } else {
        let phys = base_msr & 0x000f_ffff_ffff_f000;
        let region = mmio::map(phys, 0x1000).map_err(LapicError::Mapping)?;
        XAPIC_BASE.store(region.virt.as_u64(), Ordering::Relaxed);
        // SAFETY: as above; only the global enable bit changes.
        unsafe { Msr::new(IA32_APIC_BASE).write(base_msr | APIC_BASE_ENABLE) };
        MODE.store(1, Ordering::Relaxed);
        Mode::XApic
    };
    let _ = interrupts::register(SPURIOUS_VECTOR, spurious_interrupt);
    let _ = interrupts::register(ERROR_VECTOR, error_interrupt);
    init_this_cpu();
    interrupts::set_end_of_interrupt(eoi);
    log::info!(
        "{mode} mode, APIC id {}, version {:#x}, {}; timer: TSC-deadline {}, always running (ARAT) {}",
        id(),
        read(Reg::Version) & 0xff,
        if base_msr & APIC_BASE_BSP != 0 { "boot CPU" } else { "application CPU" },
        if f.tsc_deadline { "yes" } else { "no" },
        if f.arat { "yes" } else { "no" }
    );
    Ok(mode)
}

/// The per-CPU part of enabling, shared with application processors.
pub fn init_this_cpu() {
    write(Reg::TaskPriority, 0);
    write(Reg::LvtLint0, LVT_MASKED);
    write(Reg::LvtLint1, LVT_MASKED);
    write(Reg::LvtTimer, LVT_MASKED);
    write(Reg::LvtError, u32::from(ERROR_VECTOR));
    write(Reg::ErrorStatus, 0);
    write(Reg::ErrorStatus, 0);
    write(Reg::TimerDivide, TIMER_DIVIDE_BY_16);
    write(Reg::SpuriousVector, SVR_ENABLE | u32::from(SPURIOUS_VECTOR));
}

fn send_icr(destination: u32, low: u32) {
    match mode() {
        Some(Mode::X2Apic) => {
            // SAFETY: x2APIC mode: the ICR is the single 64-bit MSR 0x830 (SDM 11.12.9).
            unsafe { Msr::new(X2APIC_MSR_BASE + 0x30).write(u64::from(destination) << 32 | u64::from(low)) }
        }
        _ => {
            write(Reg::IcrHigh, destination << 24);
            write(Reg::IcrLow, low);
            while read(Reg::IcrLow) & ICR_DELIVERY_PENDING != 0 {
                core::hint::spin_loop();
            }
        }
    }
}

/// A fixed interrupt on `vector` to the CPU with APIC id `destination`.
pub fn send_ipi(destination: u32, vector: u8) {
    send_icr(destination, u32::from(vector));
}

/// The MSI message (address, data) that delivers `vector` to the CPU with APIC id `destination`:
/// fixed delivery, edge, physical destination (SDM 11.11.1-2). HPET FSB routes use this format.
pub fn msi_message(destination: u32, vector: u8) -> (u32, u32) {
    (0xfee0_0000 | (destination & 0xff) << 12, u32::from(vector))
}

/// A fixed interrupt on `vector` to every CPU but the caller (ICR destination shorthand 0b11).
pub fn send_ipi_all_others(vector: u8) {
    send_icr(0, ICR_ALL_EXCLUDING_SELF | u32::from(vector));
}

/// INIT (assert) to `destination`: the start of the INIT-SIPI-SIPI sequence.
pub fn send_init(destination: u32) {
    send_icr(destination, ICR_INIT | ICR_LEVEL_ASSERT);
}

/// STARTUP to `destination`: it starts in real mode at `page_number * 4096`.
pub fn send_startup(destination: u32, page_number: u8) {
    send_icr(destination, ICR_STARTUP | ICR_LEVEL_ASSERT | u32::from(page_number));
}

/// Starts the timer counting down `count` (bus clocks / 16) once, then interrupting on `vector`;
/// `masked` counts without interrupting (calibration).
pub fn timer_oneshot(count: u32, vector: u8, masked: bool) {
    write(Reg::LvtTimer, u32::from(vector) | if masked { LVT_MASKED } else { 0 });
    write(Reg::TimerInitialCount, count);
}

pub fn timer_periodic(count: u32, vector: u8) {
    write(Reg::LvtTimer, u32::from(vector) | LVT_TIMER_PERIODIC);
    write(Reg::TimerInitialCount, count);
}

/// TSC-deadline mode: interrupts on `vector` when the TSC reaches `deadline` (0 disarms).
pub fn timer_tsc_deadline(deadline: u64, vector: u8) {
    write(Reg::LvtTimer, u32::from(vector) | LVT_TIMER_TSC_DEADLINE);
    // SAFETY: callers use this mode only when CPUID reports TSC-deadline support.
    unsafe { Msr::new(IA32_TSC_DEADLINE).write(deadline) };
}

pub fn timer_stop() {
    write(Reg::LvtTimer, LVT_MASKED);
    write(Reg::TimerInitialCount, 0);
}

pub fn timer_current_count() -> u32 {
    read(Reg::TimerCurrentCount)
}
