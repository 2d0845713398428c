//! ACPI S3 (suspend to RAM), the hardware's side: the PM1 event and control registers, the
//! FACS waking vector, and the sleep itself (cache flush, SLP_TYP | SLP_EN) with the boot CPU's
//! registers saved and restored around it (`wake.rs`). What the devices lose (LAPIC, IOAPIC,
//! 8259, HPET) and timekeeping are the caller's, above the drivers; this room only sleeps and
//! comes back with the CPU running the kernel again.

mod chipset;
mod wake;

use super::acpi::sleep_type::SleepType;
use super::acpi::{FadtSleep, sleep_type::SleepTypeProblem};
use super::smp::{self, percpu};
use super::{clock, interrupts, memory};
use core::fmt;
use x86_64::instructions::port::Port;

/// PM1_STS bits (ACPI 6.5 table 4.13): write 1 to clear.
const WAK_STS: u16 = 1 << 15;
const RTC_STS: u16 = 1 << 10;
/// PM1_EN (table 4.14): the RTC alarm wakes the machine.
const RTC_EN: u16 = 1 << 10;
/// PM1_CNT (table 4.15): SLP_TYP (bits 10-12) and SLP_EN.
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0b111 << SLP_TYP_SHIFT;
const SLP_EN: u16 = 1 << 13;
/// FACS (table 5.14): signature, length, Firmware_Waking_Vector (32-bit, real mode:
/// CS = vector >> 4, IP = vector & 0xf), X_Firmware_Waking_Vector (64-bit; 0: the 32-bit one
/// is used).
const FACS_LENGTH: usize = 4;
const FACS_WAKING_VECTOR: usize = 12;
const FACS_X_WAKING_VECTOR: usize = 24;
const FACS_MIN_LEN: u32 = 64;
/// How long the machine gets to go to sleep after SLP_EN before it counts as not sleeping
/// (by the system clock, which runs until it does).
const SLEEP_LIMIT_NS: u64 = 2_000_000_000;
/// The waking vector's stack.
const WAKE_STACK_SIZE: usize = 16 * 1024;

/// Why S3 cannot be entered, or was not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepError {
    /// The FADT's PM1 blocks or FACS are missing or malformed.
    Fadt(super::acpi::AcpiProblem),
    /// The DSDT offers no S3 (`\_S3_` absent or unusable).
    NoS3(SleepTypeProblem),
    /// A PM1 block is not in the 16-bit I/O space.
    PortOutOfRange(u64),
    /// The FACS is not where the FADT says (signature or length wrong).
    Facs { address: u64 },
    /// No page below 1 MiB for the waking vector, or it could not be prepared.
    WakeCode(smp::StartError),
    /// SLP_EN was written and the machine did not sleep within the limit.
    DidNotSleep { waited_ms: u64 },
    /// The wake-up event (the RTC alarm) came before SLP_EN was written: sleeping then would
    /// never wake (a chipset drops a wake event while the machine runs), so it did not sleep.
    WakePassed,
}

impl fmt::Display for SleepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SleepError::Fadt(e) => write!(f, "{e}"),
            SleepError::NoS3(e) => write!(f, "{e}"),
            SleepError::PortOutOfRange(a) => write!(f, "a PM1 block at {a:#x} is not an I/O port"),
            SleepError::Facs { address } => write!(f, "no FACS at {address:#x} (signature or length wrong)"),
            SleepError::WakeCode(e) => write!(f, "no waking vector: {e}"),
            SleepError::DidNotSleep { waited_ms } => {
                write!(f, "SLP_TYP|SLP_EN written, the machine still ran {waited_ms} ms later: S3 not done")
            }
            SleepError::WakePassed => {
                write!(f, "the wake-up event came before the machine slept: S3 not entered")
            }
        }
    }
}

/// The machine's S3: its PM1 ports, SLP_TYP values and FACS.
#[derive(Debug, Clone, Copy)]
pub struct S3 {
    pm1a_sts: u16,
    pm1b_sts: Option<u16>,
    pm1a_en: u16,
    pm1b_en: Option<u16>,
    pm1a_cnt: u16,
    pm1b_cnt: Option<u16>,
    sleep_type: SleepType,
    facs: u64,
}

fn io_port(address: u64) -> Result<u16, SleepError> {
    u16::try_from(address).map_err(|_| SleepError::PortOutOfRange(address))
}

impl S3 {
    /// What the firmware said, checked: the FADT's blocks and the DSDT's `\_S3_`.
    pub fn new(
        fadt: Result<FadtSleep, super::acpi::AcpiProblem>,
        s3: Result<SleepType, SleepTypeProblem>,
    ) -> Result<S3, SleepError> {
        let fadt = fadt.map_err(SleepError::Fadt)?;
        let sleep_type = s3.map_err(SleepError::NoS3)?;
        let half = u64::from(fadt.pm1_evt_len / 2);
        let opt = |a: Option<u64>, plus: u64| a.map(|a| io_port(a + plus)).transpose();
        let s = S3 {
            pm1a_sts: io_port(fadt.pm1a_evt)?,
            pm1b_sts: opt(fadt.pm1b_evt, 0)?,
            pm1a_en: io_port(fadt.pm1a_evt + half)?,
            pm1b_en: opt(fadt.pm1b_evt, half)?,
            pm1a_cnt: io_port(fadt.pm1a_cnt)?,
            pm1b_cnt: opt(fadt.pm1b_cnt, 0)?,
            sleep_type,
            facs: fadt.facs,
        };
        let facs = s.facs_bytes();
        if &facs[..4] != b"FACS"
            || u32::from_le_bytes(facs[FACS_LENGTH..FACS_LENGTH + 4].try_into().unwrap()) < FACS_MIN_LEN
        {
            return Err(SleepError::Facs { address: s.facs });
        }
        Ok(s)
    }

    /// The FACS's first `FACS_MIN_LEN` bytes, through the physical-memory map.
    fn facs_bytes(&self) -> &'static [u8] {
        // SAFETY: all physical memory is mapped at the physical-memory offset for the kernel's
        // lifetime; the FADT names the FACS there (firmware-reserved memory, 64 bytes at least).
        unsafe {
            core::slice::from_raw_parts(memory::phys_to_virt(self.facs).as_ptr(), FACS_MIN_LEN as usize)
        }
    }

    /// Writes the waking vector (the 32-bit one; the 64-bit one zeroed so that it is the one
    /// used).
    fn set_waking_vector(&self, vector: u32) {
        let base: *mut u8 = memory::phys_to_virt(self.facs).as_mut_ptr();
        // SAFETY: the FACS was checked in `new` (signature, length >= 64); both fields lie inside
        // it, and OSPM owns them (the firmware only reads them on wake).
        unsafe {
            core::ptr::write_volatile(base.add(FACS_WAKING_VECTOR).cast::<u32>(), vector);
            core::ptr::write_unaligned(base.add(FACS_X_WAKING_VECTOR).cast::<u64>(), 0);
        }
    }

    /// The SLP_TYP values, for the log.
    pub fn sleep_type(&self) -> SleepType {
        self.sleep_type
    }

    /// Status bits cleared (write 1) in PM1a and PM1b.
    fn clear_status(&self, bits: u16) {
        for port in [Some(self.pm1a_sts), self.pm1b_sts].into_iter().flatten() {
            // SAFETY: PM1x_STS (from the FADT): writing 1 clears those status bits only.
            unsafe { Port::<u16>::new(port).write(bits) };
        }
    }

    /// The RTC alarm as a wake source on (PM1_EN.RTC_EN) or off.
    fn rtc_wake(&self, on: bool) {
        for port in [Some(self.pm1a_en), self.pm1b_en].into_iter().flatten() {
            let mut p = Port::<u16>::new(port);
            // SAFETY: PM1x_EN (from the FADT): RTC_EN only enables the RTC alarm's wake event
            // (and its SCI, which the kernel leaves unrouted).
            unsafe {
                let v = p.read();
                p.write(if on { v | RTC_EN } else { v & !RTC_EN });
            }
        }
    }

    /// The chipset function whose PM I/O decode a wake restores, for the log.
    pub fn chipset(&self) -> &'static str {
        chipset::describe(&chipset::save())
    }

    /// Readies the waking vector (the AP start-up code, installed below 1 MiB if it is not yet,
    /// with a stack of its own, the same for every sleep) and writes it into the FACS; before
    /// [`enter`](Self::enter),
    /// with no AP starting meanwhile.
    pub fn prepare_wake(&self) -> Result<(), SleepError> {
        let stack_top = wake_stack_top();
        READIED_STACK.store(stack_top, core::sync::atomic::Ordering::Relaxed);
        let vector = smp::wake_code(wake::wake_entry, &raw const wake::CONTEXT as u64, stack_top)
            .map_err(SleepError::WakeCode)?;
        self.set_waking_vector(vector as u32);
        Ok(())
    }

    /// Enters S3 on the boot CPU, with interrupts off, every other CPU offline, the waking
    /// vector ready ([`prepare_wake`](Self::prepare_wake)) and the devices' state saved by the
    /// caller: WAK_STS and RTC_STS cleared, RTC_EN set (the caller has programmed the RTC
    /// alarm), caches written back, SLP_TYP written, then `wake_passed` asked, and SLP_EN
    /// written only if it says the wake-up event has not come yet (QEMU, like a chipset whose
    /// wake status is not latched, drops an alarm that matches while the machine runs: a vCPU
    /// stalled past the alarm before SLP_EN would sleep for ever). Returns once the machine
    /// woke and the CPU runs the kernel again (its GDT, TSS, IDT and GS base restored, the
    /// chipset's PM I/O decode back, the status bits cleared, RTC_EN off), or an error if it
    /// did not sleep ([`SleepError::WakePassed`]: the caller may set its alarm again and retry).
    /// Logs nothing and reads no clock before the sleep but for the bound on not sleeping.
    pub fn enter(&self, wake_passed: fn() -> bool) -> Result<(), SleepError> {
        assert!(!x86_64::instructions::interrupts::are_enabled(), "S3 is entered with interrupts off");
        let cpu = percpu::this_cpu();
        let chipset = chipset::save();
        self.clear_status(WAK_STS | RTC_STS);
        self.rtc_wake(true);
        let going = Going { s3: self, wake_passed };
        // SAFETY: interrupts are off (asserted), on the boot CPU (the caller's), the waking
        // vector is the start-up code that calls `wake_entry(&CONTEXT)`; `sleep_now` sleeps or
        // returns `NOT_SLEPT` or `WAKE_PASSED`.
        let result = unsafe { wake::save_and_sleep(sleep_now, &raw const going as u64) };
        let woke = result == wake::WOKE;
        if woke {
            // The PM I/O block decoded again first: PM1 and the PM timer are there.
            chipset::restore(&chipset);
            // The boot CPU's descriptor tables again, in place (its TSS is marked busy in
            // them), its IDT and its per-CPU state.
            let tables = cpu.tables();
            // SAFETY: the boot CPU runs on the start-up code's GDT since the wake and loads
            // these only below; every other CPU is offline (the APs went offline before S3).
            unsafe { tables.renew() };
            tables.load();
            interrupts::load_idt();
            percpu::install(cpu);
        }
        self.rtc_wake(false);
        self.clear_status(WAK_STS | RTC_STS);
        match result {
            wake::WOKE => Ok(()),
            WAKE_PASSED => Err(SleepError::WakePassed),
            _ => Err(SleepError::DidNotSleep { waited_ms: SLEEP_LIMIT_NS / 1_000_000 }),
        }
    }
}

/// The waking vector's stack, allocated at the first sleep and the same for every sleep after
/// (the boot CPU leaves it before the sleep's caller returns): its top.
static WAKE_STACK: spin::Once<u64> = spin::Once::new();

/// The stack top the waking vector was last readied with (0: never), for the tests.
static READIED_STACK: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The stack top the last [`S3::prepare_wake`] gave the waking vector (0: none yet).
pub fn readied_wake_stack() -> u64 {
    READIED_STACK.load(core::sync::atomic::Ordering::Relaxed)
}

/// The top of the waking vector's stack (allocated on the first call, the same ever after).
fn wake_stack_top() -> u64 {
    *WAKE_STACK.call_once(|| {
        let stack = alloc::boxed::Box::leak(alloc::vec![0u8; WAKE_STACK_SIZE].into_boxed_slice());
        (stack.as_ptr_range().end as u64) & !0xf
    })
}

/// What `sleep_now` gets: the S3 and the caller's check of its wake-up event.
struct Going<'a> {
    s3: &'a S3,
    wake_passed: fn() -> bool,
}

/// `sleep_now`'s results when the machine did not sleep (a wake returns `wake::WOKE`).
const NOT_SLEPT: u64 = 0;
const WAKE_PASSED: u64 = 2;

/// Writes SLP_TYP, then (unless the wake-up event already came: `WAKE_PASSED`) SLP_TYP |
/// SLP_EN, to PM1a_CNT and PM1b_CNT (`arg` is a `Going`), and waits for the machine to sleep;
/// returns `NOT_SLEPT` if it still runs after `SLEEP_LIMIT_NS`.
extern "C" fn sleep_now(arg: u64) -> u64 {
    // SAFETY: `enter` passes the address of its `Going`, alive across this call.
    let going: &Going = unsafe { &*(arg as *const Going) };
    let s3 = going.s3;
    // SAFETY: write back and invalidate the caches before the power goes (ACPI 6.5 section
    // 16.1.6: OSPM flushes them before S3); no memory is lost by it.
    unsafe { core::arch::asm!("wbinvd", options(nostack, preserves_flags)) };
    let blocks = [(Some(s3.pm1a_cnt), s3.sleep_type.a), (s3.pm1b_cnt, s3.sleep_type.b)];
    for (port, typ) in blocks.iter().filter_map(|&(p, t)| p.map(|p| (p, t))) {
        let mut p = Port::<u16>::new(port);
        // SAFETY: PM1x_CNT (from the FADT): the sleep type from the DSDT's `\_S3_`, then
        // SLP_EN, the ACPI sequence to enter S3; the other bits (SCI_EN) kept.
        unsafe {
            let v = (p.read() & !(SLP_TYP_MASK | SLP_EN)) | (u16::from(typ) << SLP_TYP_SHIFT);
            p.write(v);
        }
    }
    // The last moment to find the wake-up event already come (after everything else: the
    // window left is the SLP_EN write itself).
    if (going.wake_passed)() {
        return WAKE_PASSED;
    }
    for (port, typ) in blocks.iter().filter_map(|&(p, t)| p.map(|p| (p, t))) {
        let mut p = Port::<u16>::new(port);
        // SAFETY: as above.
        unsafe {
            let v = (p.read() & !(SLP_TYP_MASK | SLP_EN)) | (u16::from(typ) << SLP_TYP_SHIFT);
            p.write(v | SLP_EN);
        }
    }
    let start = clock::now_ns();
    while clock::now_ns().saturating_sub(start) < SLEEP_LIMIT_NS {
        core::hint::spin_loop();
    }
    NOT_SLEPT
}
