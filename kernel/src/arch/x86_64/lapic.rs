//! The local APIC (Intel SDM vol. 3A ch. 11): xAPIC through MMIO or x2APIC through MSRs,
//! end-of-interrupt, the spurious and error vectors, IPIs, and the timer in one-shot, periodic
//! and TSC-deadline modes.

use super::{interrupts, mmio, pic};
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

/// x2APIC register `reg` is MSR 0x800 + offset / 16 (SDM 11.12.1.2, table 11-6).
const fn x2apic_msr(reg: Reg) -> u32 {
    X2APIC_MSR_BASE + reg as u32 / 16
}

/// SVR bit 8: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
/// LVT delivery mode ExtINT, bits 10:8 = 0b111 (SDM 11.5.1, figure 11-8): the interrupt's
/// vector comes from the 8259 (an INTA cycle), and no EOI is sent to the LAPIC for it.
const LVT_DELIVERY_EXTINT: u32 = 0b111 << 8;
/// LVT timer mode, bits 18:17 (SDM 11.5.1, figure 11-8).
const LVT_TIMER_MODE_SHIFT: u32 = 17;

/// The LVT timer's modes (SDM 11.5.1, figure 11-8: bits 18:17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerMode {
    OneShot = 0b00,
    Periodic = 0b01,
    TscDeadline = 0b10,
}

/// The LVT timer register value: `vector`, `mode`, masked or not.
pub const fn lvt_timer(vector: u8, mode: TimerMode, masked: bool) -> u32 {
    vector as u32 | (mode as u32) << LVT_TIMER_MODE_SHIFT | if masked { LVT_MASKED } else { 0 }
}
/// Divide configuration 0b0011: divide by 16 (Linux's APIC_DIVISOR): 32-bit counts then last
/// tens of seconds at GHz bus clocks.
const TIMER_DIVIDE_BY_16: u32 = 0b0011;
pub const TIMER_DIVISOR: u64 = 16;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_ALL_EXCLUDING_SELF: u32 = 0b11 << 18;
const ICR_STARTUP: u32 = 0b110 << 8;

/// ICR low word of a fixed interrupt on `vector` to the destination field's CPU (SDM 11.6.1).
pub const fn icr_fixed(vector: u8) -> u32 {
    vector as u32
}

/// ICR low word of a fixed interrupt on `vector` to all CPUs but the sender (shorthand 0b11).
pub const fn icr_fixed_all_but_self(vector: u8) -> u32 {
    ICR_ALL_EXCLUDING_SELF | vector as u32
}

/// ICR low word of INIT, level assert (the start of INIT-SIPI-SIPI, MP spec B.4).
pub const fn icr_init() -> u32 {
    ICR_INIT | ICR_LEVEL_ASSERT
}

/// ICR low word of STARTUP: the target starts in real mode at `page_number * 4096`.
pub const fn icr_startup(page_number: u8) -> u32 {
    ICR_STARTUP | ICR_LEVEL_ASSERT | page_number as u32
}

/// The x2APIC ICR, one 64-bit MSR: destination in bits 63:32 (SDM 11.12.9).
pub const fn x2apic_icr(destination: u32, low: u32) -> u64 {
    (destination as u64) << 32 | low as u64
}

/// The xAPIC ICR high word: an 8-bit physical destination in bits 31:24 (SDM 11.6.1).
pub const fn xapic_icr_high(destination: u32) -> u32 {
    destination << 24
}

/// The APIC id from the ID register: bits 31:24 in xAPIC mode, all 32 bits in x2APIC mode.
pub const fn id_from_register(mode: Mode, raw: u32) -> u32 {
    match mode {
        Mode::X2Apic => raw,
        Mode::XApic => raw >> 24,
    }
}

/// The IA32_APIC_BASE values to write, in order, to bring an APIC whose MSR reads `current`
/// into `mode`: the global enable first (disabled -> xAPIC), then EXTD (xAPIC -> x2APIC), never
/// EXTD without EN (an invalid transition, SDM 11.12.5). `None`: nothing to write.
pub const fn apic_base_writes(current: u64, mode: Mode) -> [Option<u64>; 2] {
    let xapic = current | APIC_BASE_ENABLE;
    let enable = if current & APIC_BASE_ENABLE == 0 { Some(xapic) } else { None };
    let extend = match mode {
        Mode::X2Apic if current & APIC_BASE_EXTD == 0 => Some(xapic | APIC_BASE_EXTD),
        _ => None,
    };
    [enable, extend]
}

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

/// CPUID.01h:EDX bit 9: the CPU has an on-chip APIC (SDM vol. 2A, table 3-11).
const CPUID_1_EDX_APIC: u32 = 1 << 9;

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

/// LAPIC register accesses (MMIO or MSR): each is a VM exit under virtualisation; the
/// benchmark counts them per programmed event.
static REGISTER_ACCESSES: AtomicU64 = AtomicU64::new(0);

pub fn register_accesses() -> u64 {
    REGISTER_ACCESSES.load(Ordering::Relaxed)
}

fn read(reg: Reg) -> u32 {
    REGISTER_ACCESSES.fetch_add(1, Ordering::Relaxed);
    match mode() {
        Some(Mode::X2Apic) => {
            // SAFETY: x2APIC mode is enabled on this CPU, so MSR 0x800 + offset/16 is its register.
            unsafe { Msr::new(x2apic_msr(reg)).read() as u32 }
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
    REGISTER_ACCESSES.fetch_add(1, Ordering::Relaxed);
    match mode() {
        Some(Mode::X2Apic) => {
            // SAFETY: as in `read`; writing LAPIC registers affects only this CPU's APIC.
            unsafe { Msr::new(x2apic_msr(reg)).write(u64::from(value)) }
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
    id_from_register(mode().unwrap_or(Mode::XApic), read(Reg::Id))
}

/// This CPU's APIC id as CPUID reports it, readable without an enabled APIC: leaf 0xB's x2APIC
/// id when the CPU has that leaf, else leaf 1's 8-bit initial APIC id.
pub fn initial_id() -> u32 {
    if __cpuid(0).eax >= 0xb && __cpuid(0xb).ebx & 0xffff != 0 {
        __cpuid(0xb).edx
    } else {
        __cpuid(1).ebx >> 24
    }
}

pub fn eoi() {
    write(Reg::Eoi, 0);
}

/// Ends interrupt `vector`: one the 8259 delivered through LINT0 as ExtINT (virtual-wire mode,
/// [`lint0_extint`]) at the 8259 only (SDM 11.8.5: no EOI to the LAPIC for ExtINT), any
/// other at the LAPIC.
fn end_of_interrupt(vector: u8) {
    if pic::delivers_through_lint0(vector) {
        pic::end_of_interrupt(vector);
    } else {
        eoi();
    }
}

/// The LVT LINT0 value of virtual-wire mode: ExtINT, unmasked, edge (Linux's
/// `setup_local_APIC` on the boot CPU when there is no IOAPIC).
pub const fn lvt_lint0_extint() -> u32 {
    LVT_DELIVERY_EXTINT
}

/// Virtual-wire mode on this CPU (Linux does it on the boot CPU without an IOAPIC): its LINT0
/// takes the 8259's INTR as ExtINT, so the 8259's unmasked lines reach this CPU with the
/// vectors the 8259 was programmed for. The other CPUs keep LINT0 masked.
pub fn lint0_extint() {
    write(Reg::LvtLint0, lvt_lint0_extint());
}

pub fn error_count() -> u64 {
    ERRORS.load(Ordering::Relaxed)
}

fn error_interrupt(_: interrupts::Irq) {
    // Writing ESR latches the errors since the last write (SDM 11.5.3).
    write(Reg::ErrorStatus, 0);
    let esr = read(Reg::ErrorStatus);
    let n = ERRORS.fetch_add(1, Ordering::Relaxed) + 1;
    if n <= 10 {
        log::warn!("LAPIC error interrupt on APIC {}: ESR {esr:#x}", id());
    }
}

fn spurious_interrupt(_: interrupts::Irq) {
    // The APIC's spurious vector needs no EOI; `interrupts::dispatch` still sends one, which the
    // APIC ignores when no interrupt is in service.
    interrupts::spurious(format_args!(
        "the LAPIC's spurious vector (an interrupt withdrawn before delivery)"
    ));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LapicError {
    /// CPUID.01h:EDX bit 9 (APIC) is clear: the CPU has no local APIC (`-cpu qemu64,-apic`).
    Absent,
    Mapping(mmio::MmioError),
    /// CPUID says there is one, but its version register reads what no local APIC holds (all
    /// ones or zeros, a version outside 0x10..=0x1f, fewer than four LVT entries): nothing
    /// answers at its registers. It is disabled again (IA32_APIC_BASE.EN clear), so that the
    /// CPU takes the 8259's INTR directly.
    Silent {
        version: u32,
    },
}

impl fmt::Display for LapicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LapicError::Absent => {
                f.write_str("CPUID.01h:EDX.APIC (bit 9) is clear: this CPU has no local APIC")
            }
            LapicError::Mapping(e) => write!(f, "cannot map the xAPIC registers: {e}"),
            LapicError::Silent { version } => write!(
                f,
                "the local APIC does not answer: its version register reads {version:#010x}, which no local APIC holds"
            ),
        }
    }
}

/// Whether a version register reading comes from a local APIC (Intel SDM vol. 3A, 11.4.8
/// "Local APIC Version Register": version 0x1X for an integrated APIC, bits 16-23 the number
/// of LVT entries minus one, at least four entries on any x86_64 processor).
pub fn version_answers(version: u32) -> bool {
    let max_lvt = (version >> 16) & 0xff;
    (0x10..=0x1f).contains(&(version & 0xff)) && max_lvt >= 3 && version != u32::MAX
}

/// Enables the boot CPU's LAPIC: x2APIC when CPUID offers it, else xAPIC at the base the MSR
/// reports; spurious and error vectors installed, LINT0/LINT1 and the timer masked. A LAPIC
/// whose version register does not answer (or `pretend_silent`, fault injection) is disabled
/// again and refused.
pub fn init_bsp(pretend_silent: bool) -> Result<Mode, LapicError> {
    if __cpuid(1).edx & CPUID_1_EDX_APIC == 0 {
        return Err(LapicError::Absent);
    }
    let f = features();
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU.
    let base_msr = unsafe { Msr::new(IA32_APIC_BASE).read() };
    let mode = if f.x2apic { Mode::X2Apic } else { Mode::XApic };
    if mode == Mode::XApic {
        let phys = base_msr & 0x000f_ffff_ffff_f000;
        let region = mmio::map(phys, 0x1000).map_err(LapicError::Mapping)?;
        XAPIC_BASE.store(region.virt.as_u64(), Ordering::Relaxed);
    }
    // SAFETY: CPUID reports x2APIC when `mode` is x2APIC; nothing else uses the APIC yet.
    unsafe { enable_this_cpu(base_msr, mode) };
    MODE.store(if mode == Mode::X2Apic { 2 } else { 1 }, Ordering::Relaxed);
    let version = if pretend_silent { u32::MAX } else { read(Reg::Version) };
    if !version_answers(version) {
        MODE.store(0, Ordering::Relaxed);
        // SAFETY: clearing EN (and EXTD) disables the APIC, a valid transition from either
        // mode; nothing on this CPU uses it (its LVTs were never written).
        unsafe { Msr::new(IA32_APIC_BASE).write(base_msr & !(APIC_BASE_ENABLE | APIC_BASE_EXTD)) };
        return Err(LapicError::Silent { version });
    }
    let _ = interrupts::register(SPURIOUS_VECTOR, spurious_interrupt);
    let _ = interrupts::register(ERROR_VECTOR, error_interrupt);
    init_this_cpu();
    interrupts::set_end_of_interrupt(end_of_interrupt);
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

/// Writes IA32_APIC_BASE (read as `current`) to enable this CPU's APIC in `mode`, EN before EXTD.
///
/// # Safety
/// `mode` must be supported (CPUID.1:ECX.x2APIC for x2APIC), and no code on this CPU may be
/// using the APIC in another mode meanwhile.
unsafe fn enable_this_cpu(current: u64, mode: Mode) {
    for value in apic_base_writes(current, mode).into_iter().flatten() {
        // SAFETY: the caller guarantees the mode is supported; `apic_base_writes` gives only
        // the valid transitions disabled -> xAPIC -> x2APIC and keeps the base address.
        unsafe { Msr::new(IA32_APIC_BASE).write(value) };
    }
}

/// Enables an application processor's APIC in the mode the boot CPU chose (an AP starts with
/// its APIC in xAPIC mode or disabled, whatever the BSP did), then sets it up as `init_bsp` did.
/// Panics if the boot CPU's APIC was never enabled (APs are only started through it).
pub fn init_ap() {
    let mode = mode().expect("an AP starts only after the boot CPU enabled its APIC");
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU.
    let current = unsafe { Msr::new(IA32_APIC_BASE).read() };
    // SAFETY: the boot CPU chose `mode` from CPUID, which is the same on every CPU of the
    // machine; this AP has not touched its APIC yet (it runs `ap_entry`, interrupts off).
    unsafe { enable_this_cpu(current, mode) };
    init_this_cpu();
}

/// After a power loss (ACPI S3) on the boot CPU: its APIC enabled again in the mode chosen at
/// boot (a reset leaves it in xAPIC mode) and set up as `init_bsp` did.
pub fn resume_this_cpu() {
    let Some(mode) = mode() else { return };
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU.
    let current = unsafe { Msr::new(IA32_APIC_BASE).read() };
    // SAFETY: `mode` was chosen from CPUID at boot; interrupts are off and nothing on this CPU
    // uses the APIC while it is set up again.
    unsafe { enable_this_cpu(current, mode) };
    init_this_cpu();
}

/// The per-CPU part of enabling, shared with application processors (through `init_ap`).
pub fn init_this_cpu() {
    write(Reg::TaskPriority, 0);
    write(Reg::LvtLint0, LVT_MASKED);
    write(Reg::LvtLint1, LVT_MASKED);
    write(Reg::LvtTimer, lvt_timer(0, TimerMode::OneShot, true));
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
            unsafe { Msr::new(x2apic_msr(Reg::IcrLow)).write(x2apic_icr(destination, low)) }
        }
        // Two register writes: an interrupt handler sending its own IPI between them would
        // change the destination of ours, so no interrupt may come in between (as in Linux).
        _ => x86_64::instructions::interrupts::without_interrupts(|| {
            write(Reg::IcrHigh, xapic_icr_high(destination));
            write(Reg::IcrLow, low);
            while read(Reg::IcrLow) & ICR_DELIVERY_PENDING != 0 {
                core::hint::spin_loop();
            }
        }),
    }
}

/// A fixed interrupt on `vector` to the CPU with APIC id `destination`.
pub fn send_ipi(destination: u32, vector: u8) {
    send_icr(destination, icr_fixed(vector));
}

/// A fixed interrupt on `vector` to every CPU but the caller (ICR destination shorthand 0b11).
pub fn send_ipi_all_others(vector: u8) {
    send_icr(0, icr_fixed_all_but_self(vector));
}

/// INIT (assert) to `destination`: the start of the INIT-SIPI-SIPI sequence.
pub fn send_init(destination: u32) {
    send_icr(destination, icr_init());
}

/// STARTUP to `destination`: it starts in real mode at `page_number * 4096`.
pub fn send_startup(destination: u32, page_number: u8) {
    send_icr(destination, icr_startup(page_number));
}

/// Starts the timer counting down `count` (bus clocks / 16) once, then interrupting on `vector`;
/// `masked` counts without interrupting (calibration).
pub fn timer_oneshot(count: u32, vector: u8, masked: bool) {
    write(Reg::LvtTimer, lvt_timer(vector, TimerMode::OneShot, masked));
    write(Reg::TimerInitialCount, count);
}

/// One-shot mode on `vector`, unmasked, without starting a count: [`timer_count`] starts it
/// (a count already running keeps running). For a driver that reads the clock between the
/// two, so that only the count's write follows the read.
pub fn timer_oneshot_mode(vector: u8) {
    write(Reg::LvtTimer, lvt_timer(vector, TimerMode::OneShot, false));
}

/// Starts a count of `count` in the mode [`timer_oneshot_mode`] set.
pub fn timer_count(count: u32) {
    write(Reg::TimerInitialCount, count);
}

pub fn timer_periodic(count: u32, vector: u8) {
    write(Reg::LvtTimer, lvt_timer(vector, TimerMode::Periodic, false));
    write(Reg::TimerInitialCount, count);
}

/// TSC-deadline mode: interrupts on `vector` when the TSC reaches `deadline` (0 disarms).
pub fn timer_tsc_deadline(deadline: u64, vector: u8) {
    write(Reg::LvtTimer, lvt_timer(vector, TimerMode::TscDeadline, false));
    // SAFETY: callers use this mode only when CPUID reports TSC-deadline support.
    unsafe { Msr::new(IA32_TSC_DEADLINE).write(deadline) };
}

pub fn timer_stop() {
    write(Reg::LvtTimer, lvt_timer(0, TimerMode::OneShot, true));
    write(Reg::TimerInitialCount, 0);
}

pub fn timer_current_count() -> u32 {
    read(Reg::TimerCurrentCount)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint0_in_virtual_wire_mode_is_unmasked_extint() {
        assert_eq!(lvt_lint0_extint(), 0x0000_0700, "delivery mode 0b111, unmasked, edge, vector 0");
        assert_eq!(lvt_lint0_extint() & LVT_MASKED, 0);
    }

    #[test]
    fn lvt_timer_mode_bits_follow_the_sdm() {
        assert_eq!(lvt_timer(0x40, TimerMode::OneShot, false), 0x0000_0040);
        assert_eq!(lvt_timer(0x40, TimerMode::Periodic, false), 0x0002_0040);
        assert_eq!(lvt_timer(0x40, TimerMode::TscDeadline, false), 0x0004_0040);
        assert_eq!(lvt_timer(0, TimerMode::OneShot, true), 1 << 16);
        assert_eq!(lvt_timer(0xef, TimerMode::Periodic, true), 0x0003_00ef);
    }

    #[test]
    fn icr_encodes_init_startup_and_shorthands() {
        // INIT: delivery mode 101, level assert (bit 14).
        assert_eq!(icr_init(), 0x0000_4500);
        // STARTUP: delivery mode 110, level assert, vector = the start-up page number.
        assert_eq!(icr_startup(0x08), 0x0000_4608);
        assert_eq!(icr_startup(0x9f), 0x0000_469f);
        // Fixed delivery to the destination field, and to all but self (bits 19:18 = 11).
        assert_eq!(icr_fixed(0xf0), 0x0000_00f0);
        assert_eq!(icr_fixed_all_but_self(0xf0), 0x000c_00f0);
    }

    #[test]
    fn icr_destination_is_placed_per_mode() {
        assert_eq!(xapic_icr_high(3), 0x0300_0000);
        assert_eq!(x2apic_icr(0x1_0003, icr_init()), 0x0001_0003_0000_4500);
    }

    #[test]
    fn x2apic_msr_is_0x800_plus_offset_over_16() {
        assert_eq!(x2apic_msr(Reg::Id), 0x802);
        assert_eq!(x2apic_msr(Reg::Eoi), 0x80b);
        assert_eq!(x2apic_msr(Reg::SpuriousVector), 0x80f);
        assert_eq!(x2apic_msr(Reg::IcrLow), 0x830);
        assert_eq!(x2apic_msr(Reg::LvtTimer), 0x832);
        assert_eq!(x2apic_msr(Reg::TimerInitialCount), 0x838);
        assert_eq!(x2apic_msr(Reg::TimerCurrentCount), 0x839);
        assert_eq!(x2apic_msr(Reg::TimerDivide), 0x83e);
    }

    #[test]
    fn apic_id_is_read_from_the_mode_s_field() {
        assert_eq!(id_from_register(Mode::XApic, 0x0300_0000), 3);
        assert_eq!(id_from_register(Mode::X2Apic, 0x103), 0x103);
    }

    #[test]
    fn a_version_register_no_local_apic_holds_is_silence() {
        // QEMU's xAPIC and x2APIC (version 0x14, 6 LVT entries), an old P6-era APIC (0x10, 4).
        assert!(version_answers(0x0005_0014));
        assert!(version_answers(0x0003_0010));
        // Nothing at the registers (all ones or zeros), a discrete 82489DX (0x0X), too few LVTs.
        assert!(!version_answers(u32::MAX));
        assert!(!version_answers(0));
        assert!(!version_answers(0x0005_0003));
        assert!(!version_answers(0x0002_0014));
    }

    #[test]
    fn enabling_sets_en_before_extd_and_keeps_the_base() {
        let reset = 0xfee0_0000 | APIC_BASE_ENABLE;
        let disabled = 0xfee0_0000;
        let x2 = reset | APIC_BASE_EXTD;
        assert_eq!(apic_base_writes(reset, Mode::XApic), [None, None]);
        assert_eq!(apic_base_writes(disabled, Mode::XApic), [Some(reset), None]);
        assert_eq!(apic_base_writes(reset, Mode::X2Apic), [None, Some(x2)]);
        assert_eq!(apic_base_writes(disabled, Mode::X2Apic), [Some(reset), Some(x2)]);
        assert_eq!(apic_base_writes(x2, Mode::X2Apic), [None, None]);
        // The BSP flag (read-only) and the base address are carried through.
        let bsp = reset | APIC_BASE_BSP;
        assert_eq!(apic_base_writes(bsp, Mode::X2Apic), [None, Some(bsp | APIC_BASE_EXTD)]);
    }
}
