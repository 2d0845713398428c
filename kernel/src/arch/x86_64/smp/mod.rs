//! Application processors: start-up by INIT / STARTUP / STARTUP, their per-CPU state, and
//! inter-processor interrupts (a fixed vector to one CPU or all others, and a function call
//! that runs on a chosen CPU and returns its result).

pub mod percpu;
mod trampoline;

use super::clock::now_ns;
use super::{gdt, interrupts, lapic, memory};
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use percpu::PerCpu;
use spin::Once;
use trampoline::Trampoline;
use x86_64::VirtAddr;
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::{Page, PageTableFlags, Size4KiB};

/// Vector of the function-call IPI (system vectors sit above the allocatable range).
pub const CALL_VECTOR: u8 = 0xf0;
/// Each AP's kernel stack; a guard page below it stays unmapped.
const AP_STACK_SIZE: u64 = 64 * 1024;
/// Distance between two APs' stacks in the stack window.
const AP_STACK_STRIDE: u64 = 1 << 20;
/// INIT must be held 10 ms before the first STARTUP (Intel MP spec B.4).
const INIT_DELAY_NS: u64 = 10_000_000;
/// A second STARTUP follows if the AP is not online 200 us after the first (MP spec B.4).
const STARTUP_RETRY_NS: u64 = 200_000;
/// After the second STARTUP, how long to wait for the AP before giving up on it: 10 s, as
/// Linux's `do_boot_cpu` (under emulation a vCPU thread may start late: the first AP of 255
/// TCG vCPUs on two host cores took over 2 s).
const ONLINE_TIMEOUT_NS: u64 = 10_000_000_000;
/// INIT-SIPI-SIPI rounds within that limit, each waiting this long for the CPU to arrive off
/// its start-up code (it takes about 60 ms to come online under TCG): a CPU that missed a
/// round (an AP still in the firmware's own start-up after an S3 wake, under QEMU with a busy
/// host) gets another.
const START_ROUNDS: u32 = 3;
const ROUND_NS: u64 = 2_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    NoLowPage,
    TrampolineMapping,
    StackMapping,
    /// The kernel's page-table root lies above 4 GiB, out of reach of the trampoline's 32-bit
    /// load of CR3.
    PageTableAbove4GiB {
        cr3: u64,
    },
    /// The AP did not report online within the timeout.
    NoAnswer {
        waited_ms: u64,
    },
    TooManyCpus,
    /// A restart of a CPU that is online, the boot CPU, or one never started.
    NotParked,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::NoLowPage => write!(f, "no free page below 1 MiB for the start-up code"),
            StartError::TrampolineMapping => write!(f, "cannot identity-map the start-up page"),
            StartError::StackMapping => write!(f, "cannot map its stack"),
            StartError::PageTableAbove4GiB { cr3 } => {
                write!(
                    f,
                    "the kernel's page-table root {cr3:#x} lies above 4 GiB, out of the start-up code's reach"
                )
            }
            StartError::NoAnswer { waited_ms } => write!(f, "did not come online within {waited_ms} ms"),
            StartError::TooManyCpus => write!(f, "more CPUs than the kernel supports ({})", percpu::MAX_CPUS),
            StartError::NotParked => write!(f, "not a parked application processor"),
        }
    }
}

impl core::error::Error for StartError {}

/// Sets up the boot CPU's per-CPU state (index 0, with the tables `gdt::init_bsp` loaded) and the
/// function-call vector. Works without a usable LAPIC too (the APIC id then comes from CPUID), so
/// that `percpu::this_cpu` always works on the boot CPU.
pub fn init_bsp() {
    let apic_id = if lapic::mode().is_some() { lapic::id() } else { lapic::initial_id() };
    let bsp = percpu::create(0, apic_id, gdt::bsp_tables());
    percpu::install(bsp);
    percpu::publish(bsp);
    interrupts::register(CALL_VECTOR, call_interrupt).expect("the call vector is reserved for SMP");
    log::info!("CPU 0 online: APIC id {apic_id} (boot CPU)");
}

/// What the kernel above the drivers runs on a CPU's start-up path, handed over once before
/// the APs start ([`set_hooks`]): `smp` starts CPUs and does not know what runs on them
/// (Asterinas' `init_on_ap`).
#[derive(Clone, Copy)]
pub struct ApHooks {
    /// Run by the boot CPU again and again while it waits for an AP to come online (the TSC
    /// synchronisation check's boot side).
    pub while_waiting: fn(),
    /// Run by each AP (its dense index) on its own start-up path, with its per-CPU state,
    /// GDT, IDT and LAPIC set up, before it reports online (its TSC check, its timekeeping).
    pub on_ap: fn(usize),
    /// The AP's idle loop body, called with interrupts disabled, forever.
    pub idle: fn(),
}

/// Without hooks an AP only comes online and halts.
const NO_HOOKS: ApHooks =
    ApHooks { while_waiting: || {}, on_ap: |_| {}, idle: x86_64::instructions::interrupts::enable_and_hlt };

static HOOKS: Once<ApHooks> = Once::new();

/// Hands `smp` what each AP runs on its way online (before [`start_aps`]; the first call wins).
pub fn set_hooks(hooks: ApHooks) {
    HOOKS.call_once(|| hooks);
}

fn hooks() -> &'static ApHooks {
    HOOKS.get().unwrap_or(&NO_HOOKS)
}

/// Time of the current AP's start signal, for its `online_ns`.
static START_SIGNAL_NS: AtomicU64 = AtomicU64::new(0);

/// Starts every CPU in `apic_ids` (the MADT's enabled processors other than the boot CPU), one
/// at a time, and logs each that comes online. Returns, per APIC id, the CPU's index or why it
/// did not start; a CPU left out is not logged here: the caller records it as a fallback.
pub fn start_aps(apic_ids: &[u32]) -> Vec<(u32, Result<usize, StartError>)> {
    let mut results = Vec::new();
    if apic_ids.is_empty() {
        return results;
    }
    let trampoline = match install_trampoline() {
        Ok(t) => t,
        Err(e) => return apic_ids.iter().map(|&id| (id, Err(e))).collect(),
    };
    TRAMPOLINE_PHYS.store(trampoline.phys(), Ordering::Relaxed);
    let cr3 = Cr3::read().0.start_address().as_u64();
    // Stack slots are not reused: a CPU that failed to start may still own its stack.
    let mut slot = percpu::created();
    for &apic_id in apic_ids {
        let index = percpu::created();
        slot += 1;
        let result = if index >= percpu::MAX_CPUS {
            Err(StartError::TooManyCpus)
        } else {
            start_one(&trampoline, cr3, index, slot, apic_id)
        };
        if let Ok(i) = result {
            let cpu = percpu::cpu(i).expect("published on success");
            log::info!(
                "CPU {i} online: APIC id {apic_id}, {} us after its INIT",
                cpu.online_ns.load(Ordering::Relaxed) / 1000
            );
        }
        results.push((apic_id, result));
    }
    results
}

fn install_trampoline() -> Result<Trampoline, StartError> {
    let t = install_trampoline_at(memory::low_free_page().ok_or(StartError::NoLowPage)?)?;
    log::info!("AP start-up code at {:#x} (STARTUP vector {:#04x})", t.phys(), t.startup_page());
    Ok(t)
}

fn install_trampoline_at(phys: u64) -> Result<Trampoline, StartError> {
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(phys));
    memory::map_range(
        page,
        1,
        Some(x86_64::PhysAddr::new(phys)),
        PageTableFlags::PRESENT | PageTableFlags::WRITABLE,
    )
    .map_err(|_| StartError::TrampolineMapping)?;
    // SAFETY: `low_free_page` reserved this usable page below 1 MiB for us alone; it is mapped
    // writable through the physical-memory map and was just identity-mapped executable.
    Ok(unsafe { Trampoline::install(phys, memory::phys_to_virt(phys).as_mut_ptr()) })
}

fn map_stack(index: usize) -> Result<u64, StartError> {
    let base = memory::AP_STACK_WINDOW_START + index as u64 * AP_STACK_STRIDE;
    // The first page of the slot is the guard page: never mapped.
    let first = Page::<Size4KiB>::containing_address(VirtAddr::new(base + 4096));
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
    memory::map_range(first, AP_STACK_SIZE / 4096, None, flags).map_err(|_| StartError::StackMapping)?;
    Ok(base + 4096 + AP_STACK_SIZE)
}

fn start_one(
    trampoline: &Trampoline,
    cr3: u64,
    index: usize,
    stack_slot: usize,
    apic_id: u32,
) -> Result<usize, StartError> {
    let cpu = percpu::create(index, apic_id, gdt::CpuTables::for_ap());
    let stack_top = map_stack(stack_slot)?;
    STACK_TOPS[index].store(stack_top, Ordering::Relaxed);
    signal(trampoline, cr3, cpu, stack_top)?;
    percpu::publish(cpu);
    Ok(index)
}

/// Sends `cpu` INIT / STARTUP / STARTUP into the trampoline with its stack at `stack_top`
/// and waits until it reports online (serving the boot side of its start-up meanwhile).
fn signal(trampoline: &Trampoline, cr3: u64, cpu: &'static PerCpu, stack_top: u64) -> Result<(), StartError> {
    let apic_id = cpu.apic_id;
    trampoline.prepare(cr3, stack_top, ap_entry, cpu as *const PerCpu as u64)?;
    let start = now_ns();
    START_SIGNAL_NS.store(start, Ordering::Relaxed);
    let online = || cpu.online_ns.load(Ordering::Acquire) != 0;
    let wait_until = |deadline: u64| {
        while now_ns() < deadline && !online() {
            // The AP may need us on its way online (its TSC checked against ours).
            (hooks().while_waiting)();
            core::hint::spin_loop();
        }
    };
    cpu.arrived.store(false, Ordering::Relaxed);
    let deadline = start + ONLINE_TIMEOUT_NS;
    for round in 0..START_ROUNDS {
        if round > 0 {
            log::warn!(
                "CPU {} (APIC id {apic_id}) did not arrive off its start-up code {} ms after INIT-SIPI-SIPI: sending it again",
                cpu.index,
                (now_ns() - start) / 1_000_000
            );
        }
        lapic::send_init(apic_id);
        wait_until(now_ns() + INIT_DELAY_NS);
        lapic::send_startup(apic_id, trampoline.startup_page());
        wait_until(now_ns() + STARTUP_RETRY_NS);
        if !online() {
            lapic::send_startup(apic_id, trampoline.startup_page());
            wait_until((now_ns() + ROUND_NS).min(deadline));
        }
        // Arrived (on its way online) or out of time: no INIT again, wait for it to the end.
        if online() || cpu.arrived.load(Ordering::Acquire) || now_ns() >= deadline {
            break;
        }
    }
    wait_until(deadline);
    if !online() {
        // Park it: a late arrival must not run on parameters meant for the next CPU.
        lapic::send_init(apic_id);
        return Err(StartError::NoAnswer { waited_ms: (now_ns() - start) / 1_000_000 });
    }
    Ok(())
}

/// The start-up page's physical address (0: none installed), kept for a restart.
static TRAMPOLINE_PHYS: AtomicU64 = AtomicU64::new(0);
/// Each AP's stack top, kept for a restart (the stack is reused: a parked CPU owns nothing on it).
static STACK_TOPS: [AtomicU64; percpu::MAX_CPUS] = [const { AtomicU64::new(0) }; percpu::MAX_CPUS];

/// Asks AP `index` to park: its idle loop stops it for good (`cli; hlt`) once its current
/// interrupt is over; true once it says it parked (bounded by `limit_ns` of the clock).
pub fn park(index: usize, limit_ns: u64) -> bool {
    let Some(cpu) = percpu::any(index) else { return false };
    cpu.park.store(true, Ordering::Release);
    lapic::send_ipi(cpu.apic_id, CALL_VECTOR);
    let start = now_ns();
    while !cpu.parked.load(Ordering::Acquire) {
        if now_ns() - start > limit_ns {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// Brings parked AP `index` online again as at boot (INIT / STARTUP / STARTUP into the same
/// start-up code, its stack, per-CPU area and descriptor tables reused: its TSS, which it
/// marked busy, marked available again), running the start-up hooks again (its TSC check, its tick); published online
/// when it reports online.
pub fn restart(index: usize) -> Result<(), StartError> {
    let cpu = percpu::any(index)
        .filter(|c| index != 0 && !c.is_online() && c.parked.load(Ordering::Acquire))
        .ok_or(StartError::NotParked)?;
    let phys = TRAMPOLINE_PHYS.load(Ordering::Relaxed);
    if phys == 0 {
        return Err(StartError::NoLowPage);
    }
    // SAFETY: the page was reserved for the start-up code at boot (`install_trampoline`),
    // stays identity-mapped, and no other CPU runs it now (APs start one at a time and the
    // others are past it).
    let trampoline = unsafe { Trampoline::install(phys, memory::phys_to_virt(phys).as_mut_ptr()) };
    // SAFETY: the CPU is parked (interrupts off, halted) and is started again only below.
    unsafe { cpu.tables().renew() };
    cpu.online_ns.store(0, Ordering::Release);
    cpu.irq_depth.store(0, Ordering::Relaxed);
    cpu.in_call.store(false, Ordering::Relaxed);
    cpu.park.store(false, Ordering::Relaxed);
    cpu.parked.store(false, Ordering::Relaxed);
    let cr3 = Cr3::read().0.start_address().as_u64();
    signal(&trampoline, cr3, cpu, STACK_TOPS[index].load(Ordering::Relaxed))?;
    percpu::publish(cpu);
    log::info!(
        "CPU {index} online again: APIC id {}, {} us after its INIT",
        cpu.apic_id,
        cpu.online_ns.load(Ordering::Relaxed) / 1000
    );
    Ok(())
}

/// Readies the start-up code as the ACPI waking vector: the boot CPU, reset by a wake from S3,
/// runs it in real mode from its page (the firmware jumps to CS = page << 8, IP = 0) into long
/// mode with the kernel's page tables, and calls `entry(arg)` on `stack_top`. Returns the page's
/// physical address (the vector). The page is a copy of the APs' code on a page of its own
/// (the APs' page, written for each AP started, is not the one the firmware jumps to: after a
/// wake under QEMU an AP started from the page the boot CPU had just woken through went astray
/// in real mode or reset the machine, now and then).
pub fn wake_code(entry: extern "C" fn(u64) -> !, arg: u64, stack_top: u64) -> Result<u64, StartError> {
    static WAKE_PAGE: AtomicU64 = AtomicU64::new(0);
    let trampoline = match WAKE_PAGE.load(Ordering::Relaxed) {
        0 => {
            let t = install_trampoline_at(memory::second_low_free_page().ok_or(StartError::NoLowPage)?)?;
            WAKE_PAGE.store(t.phys(), Ordering::Relaxed);
            log::info!("s3: waking vector's start-up code at {:#x}", t.phys());
            t
        }
        // SAFETY: the page was reserved for the waking vector's code (`second_low_free_page`),
        // stays identity-mapped, and nothing runs it while the machine is awake.
        phys => unsafe { Trampoline::install(phys, memory::phys_to_virt(phys).as_mut_ptr()) },
    };
    let cr3 = Cr3::read().0.start_address().as_u64();
    trampoline.prepare(cr3, stack_top, entry, arg)?;
    Ok(trampoline.phys())
}

/// Where an AP arrives from the trampoline, on its own stack, with its `PerCpu`.
extern "C" fn ap_entry(cpu: u64) -> ! {
    // SAFETY: the boot CPU passed the address of this AP's leaked PerCpu.
    let cpu: &'static PerCpu = unsafe { &*(cpu as *const PerCpu) };
    cpu.arrived.store(true, Ordering::Release);
    let arrived = now_ns();
    percpu::install(cpu);
    cpu.tables().load();
    interrupts::load_idt();
    // Enables this CPU's APIC in the boot CPU's mode (x2APIC needs EXTD set on every CPU).
    lapic::init_ap();
    // What the kernel runs on each CPU's own start-up path (its TSC check, then its own tick
    // and LAPIC timer: the boot CPU cannot reach its LAPIC).
    (hooks().on_ap)(cpu.index);
    let now = now_ns();
    cpu.startup_ns.store(now.saturating_sub(arrived), Ordering::Relaxed);
    let online = now.saturating_sub(START_SIGNAL_NS.load(Ordering::Relaxed)).max(1);
    cpu.online_ns.store(online, Ordering::Release);
    // Its idle loop: everything it does from now on comes by interrupt, until it is parked.
    loop {
        x86_64::instructions::interrupts::disable();
        if cpu.park.load(Ordering::Acquire) {
            park_here(cpu);
        }
        (hooks().idle)();
    }
}

/// Parks the calling AP for good: interrupts off, its LAPIC timer stopped, `hlt` forever
/// (only INIT, from `restart`, brings it back).
fn park_here(cpu: &PerCpu) -> ! {
    x86_64::instructions::interrupts::disable();
    lapic::timer_stop();
    cpu.parked.store(true, Ordering::Release);
    loop {
        x86_64::instructions::hlt();
    }
}

/// Logs interrupt counts per vector and CPU, as Linux's /proc/interrupts shows them: one line
/// per vector that any CPU took, one column per CPU.
pub fn log_interrupt_table() {
    use alloc::string::String;
    use core::fmt::Write;
    let cpus: Vec<&PerCpu> = percpu::every().collect();
    let mut header = String::from("vector");
    for c in &cpus {
        let _ = write!(header, " {:>8}", alloc::format!("CPU{}", c.index));
    }
    log::info!("interrupts: {header}");
    for v in 0..256 {
        let counts: Vec<u64> = cpus.iter().map(|c| c.interrupts[v].load(Ordering::Relaxed)).collect();
        if counts.iter().all(|&n| n == 0) {
            continue;
        }
        let mut line = alloc::format!("{v:#6x}");
        for n in counts {
            let _ = write!(line, " {n:>8}");
        }
        log::info!("interrupts: {line}");
    }
}

/// Why a call on another CPU did not return its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// No CPU of that index is online.
    NoSuchCpu(usize),
    /// The CPU did not run the call within the wait (1 s): it is still queued there and runs
    /// when the CPU takes its calls again.
    Timeout { cpu: usize },
    /// A synchronous call to another CPU with interrupts disabled could deadlock (two CPUs
    /// waiting for each other), as Linux forbids it.
    InterruptsDisabled,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::NoSuchCpu(c) => write!(f, "CPU {c} is not online"),
            CallError::Timeout { cpu } => write!(f, "CPU {cpu} did not run the call within 1 s"),
            CallError::InterruptsDisabled => write!(f, "a call to another CPU needs interrupts enabled"),
        }
    }
}

impl core::error::Error for CallError {}

/// Queues `f` to run on CPU `index` in its function-call interrupt, after every call posted
/// to it before, and returns at once. Usable from any context (interrupt handlers included).
pub fn post(index: usize, f: impl FnOnce() + Send + 'static) -> Result<(), CallError> {
    let target = percpu::cpu(index).ok_or(CallError::NoSuchCpu(index))?;
    x86_64::instructions::interrupts::without_interrupts(|| {
        target.mailbox.lock().push_back(alloc::boxed::Box::new(f));
        lapic::send_ipi(target.apic_id, CALL_VECTOR);
    });
    Ok(())
}

/// Runs `f` on CPU `index` and returns its result; on the calling CPU it runs directly. Waits
/// up to 1 s (the call may still run later: it owns everything it touches). Needs interrupts
/// enabled when the target is another CPU.
pub fn call_on<R: Send + 'static>(
    index: usize,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, CallError> {
    percpu::cpu(index).ok_or(CallError::NoSuchCpu(index))?;
    if percpu::ready() && percpu::this_cpu().index == index {
        return Ok(x86_64::instructions::interrupts::without_interrupts(f));
    }
    if !x86_64::instructions::interrupts::are_enabled() {
        return Err(CallError::InterruptsDisabled);
    }
    let result: alloc::sync::Arc<spin::Mutex<Option<R>>> = alloc::sync::Arc::new(spin::Mutex::new(None));
    let slot = result.clone();
    post(index, move || *slot.lock() = Some(f()))?;
    let start = now_ns();
    loop {
        if let Some(r) = result.lock().take() {
            return Ok(r);
        }
        if now_ns() - start > 1_000_000_000 {
            return Err(CallError::Timeout { cpu: index });
        }
        core::hint::spin_loop();
    }
}

/// Runs every call posted to this CPU, in order (new ones posted meanwhile too).
fn call_interrupt(_: interrupts::Irq) {
    let cpu = percpu::this_cpu();
    loop {
        let Some(call) = cpu.mailbox.lock().pop_front() else { return };
        cpu.in_call.store(true, Ordering::Relaxed);
        call();
        cpu.in_call.store(false, Ordering::Relaxed);
    }
}
