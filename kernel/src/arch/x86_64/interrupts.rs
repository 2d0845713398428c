//! The interrupt descriptor table: exception handlers that report and stop, and one entry per
//! device vector (32..=255) that dispatches to the handler a driver registered.
//!
//! A device vector nobody registered is counted as spurious on the CPU that took it and logged
//! (rate-limited), never fatal; drivers report their own unclaimed interrupts the same way
//! ([`spurious`], [`not_ours`]). Exceptions other than breakpoint and NMI are fatal: they print vector, error code,
//! the interrupted RIP/RSP, CR2 and the top of the faulting stack, then exit with failure.

use super::path_trace::{self, Stage};
use super::smp::percpu;
use super::{deferred, gdt, memory, qemu, serial};
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use seq_macro::seq;
use spin::{Mutex, Once};
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

/// First vector free for devices (0..32 are the CPU's exceptions).
pub const FIRST_DEVICE_VECTOR: u8 = 32;

/// A device interrupt handler; it gets its vector and CPU ([`Irq`]). It runs with interrupts
/// disabled; it may allocate (the heap disables interrupts while it holds its lock,
/// `memory.rs`) but must not take a lock that the code it interrupted may hold with interrupts
/// enabled.
pub type Handler = fn(Irq);

/// What a device interrupt's handler is told: its vector, and the CPU it runs on as the
/// dispatch found it (`None` before this CPU has its per-CPU state), so that a handler need not
/// look its CPU up again (a read of the GS base MSR, and its checks, on every interrupt).
#[derive(Clone, Copy)]
pub struct Irq {
    pub vector: u8,
    pub cpu: Option<&'static percpu::PerCpu>,
}

/// Each vector's handler, set once (a vector is never handed back), so that the interrupt path
/// reads it without a lock.
static HANDLERS: [Once<Handler>; 256] = [const { Once::new() }; 256];
/// Serialises the claiming of vectors (never taken on the interrupt path).
static CLAIM: Mutex<()> = Mutex::new(());
/// Signals end of interrupt (of the vector it is given) to the interrupt controller; installed
/// by the LAPIC driver, or by the 8259's when there is no local APIC.
static END_OF_INTERRUPT: Once<fn(u8)> = Once::new();
/// Interrupts that arrived before any CPU had per-CPU state (counted per CPU after that).
static EARLY_COUNTS: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];
/// Spurious interrupts before any CPU had per-CPU state (counted per CPU after that).
static EARLY_SPURIOUS: AtomicU64 = AtomicU64::new(0);

static IDT: spin::Once<InterruptDescriptorTable> = spin::Once::new();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    ExceptionVector(u8),
    InUse(u8),
    Exhausted,
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterError::ExceptionVector(v) => write!(f, "vector {v} is a CPU exception"),
            RegisterError::InUse(v) => write!(f, "vector {v} already has a handler"),
            RegisterError::Exhausted => write!(f, "no free device vector left"),
        }
    }
}

/// Installs `handler` for device vector `vector`.
pub fn register(vector: u8, handler: Handler) -> Result<(), RegisterError> {
    if vector < FIRST_DEVICE_VECTOR {
        return Err(RegisterError::ExceptionVector(vector));
    }
    x86_64::instructions::interrupts::without_interrupts(|| {
        let _claim = CLAIM.lock();
        let slot = &HANDLERS[usize::from(vector)];
        if slot.is_completed() {
            return Err(RegisterError::InUse(vector));
        }
        slot.call_once(|| handler);
        Ok(())
    })
}

/// Device vectors that `allocate` hands out: above the 8259s' remapped range (0x20..0x30),
/// below the system vectors (LAPIC spurious 0xff, error 0xfe, IPIs from 0xf0).
pub const ALLOCATABLE_VECTORS: core::ops::RangeInclusive<u8> = 0x30..=0xef;

/// Takes the lowest free device vector for `handler`.
pub fn allocate(handler: Handler) -> Result<u8, RegisterError> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let _claim = CLAIM.lock();
        let vector = ALLOCATABLE_VECTORS
            .clone()
            .find(|&v| !HANDLERS[usize::from(v)].is_completed())
            .ok_or(RegisterError::Exhausted)?;
        HANDLERS[usize::from(vector)].call_once(|| handler);
        Ok(vector)
    })
}

pub fn set_end_of_interrupt(eoi: fn(u8)) {
    END_OF_INTERRUPT.call_once(|| eoi);
}

/// How many interrupts arrived on `vector` (handled or not), on every CPU.
pub fn count(vector: u8) -> u64 {
    let v = usize::from(vector);
    EARLY_COUNTS[v].load(Ordering::Relaxed)
        + percpu::every().map(|c| c.interrupts[v].load(Ordering::Relaxed)).sum::<u64>()
}

/// How many interrupts nothing claimed, on every CPU (see [`spurious`]).
pub fn spurious_count() -> u64 {
    EARLY_SPURIOUS.load(Ordering::Relaxed)
        + percpu::every().map(|c| c.spurious.load(Ordering::Relaxed)).sum::<u64>()
}

/// Whether the `n`th event of a kind on one CPU is logged: the first ten, then every
/// thousandth, so that a storm cannot drown the log.
pub fn worth_logging(n: u64) -> bool {
    n <= 10 || n % 1000 == 0
}

/// An interrupt nothing claimed arrived on this CPU (`what` says which): counted on this CPU
/// (a counter only it writes) and logged, rate-limited.
pub fn spurious(what: fmt::Arguments) {
    if !percpu::ready() {
        let n = EARLY_SPURIOUS.fetch_add(1, Ordering::Relaxed) + 1;
        if worth_logging(n) {
            log::warn!("spurious interrupt: {what} ({n} before per-CPU state)");
        }
        return;
    }
    let cpu = percpu::this_cpu();
    percpu::bump(&cpu.spurious);
    let n = cpu.spurious.load(Ordering::Relaxed);
    if worth_logging(n) {
        log::warn!("spurious interrupt on CPU {}: {what} ({n} on this CPU so far)", cpu.index);
    }
}

/// A level-triggered interrupt whose device's status bit was clear arrived on this CPU (`what`
/// says which line): counted on this CPU and logged, rate-limited.
pub fn not_ours(what: fmt::Arguments) {
    if !percpu::ready() {
        return spurious(what);
    }
    let cpu = percpu::this_cpu();
    percpu::bump(&cpu.not_ours);
    let n = cpu.not_ours.load(Ordering::Relaxed);
    if worth_logging(n) {
        log::warn!("interrupt not ours on CPU {}: {what} ({n} on this CPU so far)", cpu.index);
    }
}

/// Every device vector's way in: counted on the CPU that took it (a counter only that CPU
/// writes), its handler called, the interrupt ended. No lock, nothing shared written. At the
/// outermost interrupt's exit, the CPU's deferred work runs (`deferred`), outside the handler.
fn dispatch(vector: u8) {
    path_trace::stamp(Stage::Entry);
    super::trace::irq_enter(vector);
    let v = usize::from(vector);
    let cpu = percpu::try_this_cpu();
    if let Some(cpu) = cpu {
        let count = &cpu.interrupts[v];
        count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        // Only this CPU writes its depth, with interrupts off: a load and a store suffice.
        cpu.irq_depth.store(cpu.irq_depth.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    } else {
        EARLY_COUNTS[v].fetch_add(1, Ordering::Relaxed);
    }
    match HANDLERS[v].get() {
        Some(h) => h(Irq { vector, cpu }),
        None => spurious(format_args!("vector {vector:#04x} has no handler")),
    }
    if let Some(cpu) = cpu {
        cpu.irq_depth.store(cpu.irq_depth.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
    }
    if let Some(eoi) = END_OF_INTERRUPT.get() {
        eoi(vector);
    }
    path_trace::stamp(Stage::Eoi);
    super::trace::irq_exit(vector);
    // The outermost interrupt's exit: work raised for later runs now, with interrupts enabled
    // (one run at a time on this CPU; an interrupt taken during a run leaves its work to it).
    if let Some(cpu) = cpu
        && cpu.irq_depth.load(Ordering::Relaxed) == 0
    {
        deferred::run_pending(cpu);
    }
}

seq!(V in 32..=255 {
    extern "x86-interrupt" fn device_vector_~V(_frame: InterruptStackFrame) {
        dispatch(V);
    }
});

fn fatal(
    name: &str,
    vector: u8,
    error: Option<u64>,
    detail: Option<&dyn fmt::Debug>,
    frame: &InterruptStackFrame,
) -> ! {
    match error {
        Some(e) => {
            serial::emergency_print(format_args!("\nEXCEPTION: {name} (vector {vector}) error code {e:#x}\n"))
        }
        None => serial::emergency_print(format_args!("\nEXCEPTION: {name} (vector {vector})\n")),
    }
    if let Some(d) = detail {
        serial::emergency_print(format_args!("  {d:?}\n"));
    }
    let cr2 = Cr2::read_raw();
    serial::emergency_print(format_args!(
        "  rip={:#x} cs={:#x} rflags={:#x} rsp={:#x} ss={:#x} cr2={cr2:#x}\n",
        frame.instruction_pointer.as_u64(),
        frame.code_segment.0,
        frame.cpu_flags.bits(),
        frame.stack_pointer.as_u64(),
        frame.stack_segment.0,
    ));
    let rsp = frame.stack_pointer.as_u64();
    serial::emergency_print(format_args!("  stack at rsp:"));
    for i in 0..8u64 {
        let addr = rsp.wrapping_add(i * 8);
        match memory::read_u64_if_mapped(addr) {
            Some(v) => serial::emergency_print(format_args!(" {v:#018x}")),
            None => {
                serial::emergency_print(format_args!(" <{addr:#x} not mapped>"));
                break;
            }
        }
    }
    serial::emergency_print(format_args!("\n"));
    qemu::exit_qemu(qemu::ExitCode::Failure)
}

macro_rules! fatal_handler {
    ($fn_name:ident, $name:literal, $vector:literal) => {
        extern "x86-interrupt" fn $fn_name(frame: InterruptStackFrame) {
            fatal($name, $vector, None, None, &frame)
        }
    };
    ($fn_name:ident, $name:literal, $vector:literal, error) => {
        extern "x86-interrupt" fn $fn_name(frame: InterruptStackFrame, error: u64) {
            fatal($name, $vector, Some(error), None, &frame)
        }
    };
}

fatal_handler!(divide_error, "divide error", 0);
fatal_handler!(debug, "debug", 1);
fatal_handler!(overflow, "overflow", 4);
fatal_handler!(bound_range, "bound range exceeded", 5);
fatal_handler!(invalid_opcode, "invalid opcode", 6);
fatal_handler!(device_not_available, "device not available", 7);
fatal_handler!(invalid_tss, "invalid TSS", 10, error);
fatal_handler!(segment_not_present, "segment not present", 11, error);
fatal_handler!(stack_segment, "stack-segment fault", 12, error);
fatal_handler!(general_protection, "general protection fault", 13, error);
fatal_handler!(x87_floating_point, "x87 floating-point exception", 16);
fatal_handler!(alignment_check, "alignment check", 17, error);
fatal_handler!(simd_floating_point, "SIMD floating-point exception", 19);
fatal_handler!(virtualization, "virtualization exception", 20);
fatal_handler!(control_protection, "control protection exception", 21, error);

extern "x86-interrupt" fn page_fault(frame: InterruptStackFrame, error: PageFaultErrorCode) {
    fatal("page fault", 14, Some(error.bits()), Some(&error), &frame)
}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, error: u64) -> ! {
    fatal("double fault", 8, Some(error), None, &frame)
}

extern "x86-interrupt" fn machine_check(frame: InterruptStackFrame) -> ! {
    fatal("machine check", 18, None, None, &frame)
}

static NMI_COUNT: AtomicU64 = AtomicU64::new(0);

extern "x86-interrupt" fn nmi(_frame: InterruptStackFrame) {
    NMI_COUNT.fetch_add(1, Ordering::Relaxed);
}

extern "x86-interrupt" fn breakpoint(frame: InterruptStackFrame) {
    log::warn!("breakpoint at {:#x}", frame.instruction_pointer.as_u64());
}

fn build_idt() -> InterruptDescriptorTable {
    let mut idt = InterruptDescriptorTable::new();
    idt.divide_error.set_handler_fn(divide_error);
    idt.debug.set_handler_fn(debug);
    idt.non_maskable_interrupt.set_handler_fn(nmi);
    idt.breakpoint.set_handler_fn(breakpoint);
    idt.overflow.set_handler_fn(overflow);
    idt.bound_range_exceeded.set_handler_fn(bound_range);
    idt.invalid_opcode.set_handler_fn(invalid_opcode);
    idt.device_not_available.set_handler_fn(device_not_available);
    // SAFETY: IST slot DOUBLE_FAULT_IST_INDEX holds a valid, otherwise unused stack in every
    // CPU's TSS (gdt.rs), so a double fault never runs on the stack that overflowed.
    unsafe {
        idt.double_fault.set_handler_fn(double_fault).set_stack_index(gdt::DOUBLE_FAULT_IST_INDEX);
    }
    idt.invalid_tss.set_handler_fn(invalid_tss);
    idt.segment_not_present.set_handler_fn(segment_not_present);
    idt.stack_segment_fault.set_handler_fn(stack_segment);
    idt.general_protection_fault.set_handler_fn(general_protection);
    idt.page_fault.set_handler_fn(page_fault);
    idt.x87_floating_point.set_handler_fn(x87_floating_point);
    idt.alignment_check.set_handler_fn(alignment_check);
    idt.machine_check.set_handler_fn(machine_check);
    idt.simd_floating_point.set_handler_fn(simd_floating_point);
    idt.virtualization.set_handler_fn(virtualization);
    idt.cp_protection_exception.set_handler_fn(control_protection);
    seq!(V in 32..=255 {
        idt[V].set_handler_fn(device_vector_~V);
    });
    idt
}

/// Loads the shared IDT on the calling CPU (built on first use).
pub fn init_bsp() {
    load_idt();
}

/// Loads the shared IDT (application processors call this on arrival).
pub fn load_idt() {
    IDT.call_once(build_idt).load();
}
