//! Per-CPU state, reached through the GS base: `IA32_GS_BASE` holds the address of the CPU's
//! `PerCpu`, whose first field points to itself, so `mov reg, gs:[0]` yields it.
//!
//! The kernel has no scheduler and never migrates code between CPUs, so a `&'static PerCpu`
//! obtained on a CPU stays that CPU's for as long as the code holding it runs there: interrupt
//! handlers run on the CPU they interrupt and return to it.

use super::super::deferred::CpuDeferred;
use super::super::gdt::CpuTables;
use super::super::path_trace::PathStamps;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use x86_64::VirtAddr;
use x86_64::registers::model_specific::GsBase;

/// Most CPUs the kernel supports: as many as the time layer tracks (255 is the most an x2APIC
/// machine has without interrupt remapping; QEMU tests go up to 64).
pub const MAX_CPUS: usize = kernel_time::clockevents::MAX_CPUS;

/// Work posted to a CPU (see `smp::post` and `smp::call_on`): run once, on that CPU, in its
/// function-call interrupt.
pub type Call = Box<dyn FnOnce() + Send>;

#[repr(C)]
pub struct PerCpu {
    /// Must stay first: `this_cpu` reads it at `gs:[0]`.
    self_ptr: *const PerCpu,
    /// Dense index, 0 = boot CPU, in the order CPUs came online.
    pub index: usize,
    pub apic_id: u32,
    /// This CPU's GDT and TSS (loaded by the CPU itself; the TSS holds its IST stacks): the
    /// same ones each time it comes online (`CpuTables::renew` marks its TSS available again).
    tables: &'static CpuTables,
    /// Online: listed by [`cpu`] and [`all`]. Cleared by the CPU itself as it goes offline
    /// ([`set_offline`]), set again by [`publish`] when it is back.
    online: AtomicBool,
    /// Asked to park: its idle loop stops it (`smp::park_requested`), and it says so in
    /// `parked`.
    pub park: AtomicBool,
    pub parked: AtomicBool,
    /// Interrupts taken on this CPU, per vector.
    pub interrupts: [AtomicU64; 256],
    /// Interrupts nothing claimed on this CPU (a vector without a handler, the LAPIC's
    /// spurious vector, a device interrupt with nobody to serve): only this CPU writes it.
    pub spurious: AtomicU64,
    /// Level-triggered device interrupts whose status bit was clear (another device's, or a
    /// storm): only this CPU writes it.
    pub not_ours: AtomicU64,
    /// Set by the CPU as it arrives off the start-up code (before its own start-up path), so
    /// that the boot CPU never sends INIT again to a CPU on its way online.
    pub arrived: AtomicBool,
    /// Nanoseconds from the BSP's start signal to this CPU reporting online (0 for the BSP).
    pub online_ns: AtomicU64,
    /// Nanoseconds from its arrival off the start-up code to reporting online, the last time
    /// it came online: its own start-up path (0 for the BSP).
    pub startup_ns: AtomicU64,
    /// Interrupt handlers running on this CPU (nested ones counted): only this CPU writes it.
    pub irq_depth: AtomicU32,
    /// Heap allocations and frees made on this CPU inside an interrupt handler (each takes
    /// the heap's lock, which every CPU takes): only this CPU writes them.
    pub irq_heap_allocs: AtomicU64,
    pub irq_heap_frees: AtomicU64,
    /// Running a function call posted by another CPU (`smp::post`, `call_on`), which may
    /// allocate: not counted in `irq_heap_*` (it is not the timer path).
    pub in_call: AtomicBool,
    /// Work raised on this CPU to run outside the hard interrupt (`deferred`).
    pub deferred: CpuDeferred,
    /// Calls posted to this CPU, run in order by its function-call interrupt. The lock is
    /// held only to push or pop one entry (never while a call runs).
    pub(super) mailbox: spin::Mutex<VecDeque<Call>>,
    /// Stamps along the timer interrupt path, for the benchmark.
    pub path: PathStamps,
}

impl PerCpu {
    /// Its descriptor tables.
    pub fn tables(&self) -> &'static CpuTables {
        self.tables
    }

    /// Whether it is online.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    /// Whether an interrupt handler is running on this CPU (call it on this CPU).
    #[inline]
    pub fn in_interrupt(&self) -> bool {
        self.irq_depth.load(Ordering::Relaxed) > 0
    }
}

// SAFETY: `self_ptr` is only ever read, and points to the 'static value itself; `tables` is
// a shared reference to tables written again only while their CPU is parked (`renew`);
// everything else is atomic or behind a lock.
unsafe impl Sync for PerCpu {}
// SAFETY: as above.
unsafe impl Send for PerCpu {}

static CPUS: [AtomicPtr<PerCpu>; MAX_CPUS] = [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];

/// Creates CPU `index`'s state around its descriptor `tables` (leaked: CPUs never go away);
/// `publish` makes it visible.
pub fn create(index: usize, apic_id: u32, tables: &'static CpuTables) -> &'static PerCpu {
    assert!(index < MAX_CPUS, "CPU index {index} beyond MAX_CPUS");
    let cpu = Box::leak(Box::new(PerCpu {
        self_ptr: core::ptr::null(),
        index,
        apic_id,
        tables,
        online: AtomicBool::new(false),
        park: AtomicBool::new(false),
        parked: AtomicBool::new(false),
        interrupts: [const { AtomicU64::new(0) }; 256],
        spurious: AtomicU64::new(0),
        not_ours: AtomicU64::new(0),
        arrived: AtomicBool::new(false),
        online_ns: AtomicU64::new(0),
        startup_ns: AtomicU64::new(0),
        irq_depth: AtomicU32::new(0),
        irq_heap_allocs: AtomicU64::new(0),
        irq_heap_frees: AtomicU64::new(0),
        in_call: AtomicBool::new(false),
        deferred: CpuDeferred::new(),
        mailbox: spin::Mutex::new(VecDeque::new()),
        path: PathStamps::new(),
    }));
    let self_ptr: *const PerCpu = cpu;
    cpu.self_ptr = self_ptr;
    cpu
}

/// Adds `cpu` to the table of online CPUs (again, when it comes back online).
pub fn publish(cpu: &'static PerCpu) {
    CPUS[cpu.index].store(cpu as *const PerCpu as *mut PerCpu, Ordering::Release);
    cpu.online.store(true, Ordering::Release);
}

/// Takes `cpu` out of the online CPUs (it is going offline): [`cpu`] and [`all`] skip it
/// from now on; [`any`] still finds it, to bring it back.
pub fn set_offline(cpu: &PerCpu) {
    cpu.online.store(false, Ordering::Release);
}

/// Makes `cpu` the calling CPU's per-CPU state.
pub fn install(cpu: &'static PerCpu) {
    GsBase::write(VirtAddr::from_ptr(cpu as *const PerCpu));
}

/// The calling CPU's state. Panics if `install` has not run on this CPU.
pub fn this_cpu() -> &'static PerCpu {
    let base = gs_base();
    assert!(base != 0, "per-CPU state used before percpu::install on this CPU");
    let ptr: *const PerCpu;
    // SAFETY: GS base points to a live PerCpu (checked non-zero above; only `install` writes
    // it), whose first field is its own address.
    unsafe { core::arch::asm!("mov {}, gs:[0]", out(reg) ptr, options(nostack, readonly, preserves_flags)) };
    // SAFETY: PerCpu values are leaked, so the reference is valid for 'static.
    unsafe { &*ptr }
}

/// Whether the calling CPU has its per-CPU state yet (early boot and fault paths).
pub fn ready() -> bool {
    gs_base() != 0
}

/// The GS base as the MSR holds it: `GsBase::read` would check it is canonical (a `VirtAddr`),
/// which only `install` writes it as, and every timer interrupt asks for it (5 instructions).
#[inline]
fn gs_base() -> u64 {
    // SAFETY: IA32_GS_BASE exists on every x86_64 CPU; reading it has no side effects.
    unsafe { x86_64::registers::model_specific::Msr::new(IA32_GS_BASE).read() }
}

/// The GS base's MSR number.
const IA32_GS_BASE: u32 = 0xC000_0101;

/// The calling CPU's state, `None` before `install` ran on this CPU: [`ready`] and
/// [`this_cpu`] in one read of the GS base (an MSR read, a VM exit under virtualisation).
#[inline]
pub fn try_this_cpu() -> Option<&'static PerCpu> {
    if gs_base() == 0 {
        return None;
    }
    let ptr: *const PerCpu;
    // SAFETY: GS base points to a live PerCpu (checked non-zero above; only `install` writes
    // it), whose first field is its own address.
    unsafe { core::arch::asm!("mov {}, gs:[0]", out(reg) ptr, options(nostack, readonly, preserves_flags)) };
    // SAFETY: PerCpu values are leaked, so the reference is valid for 'static.
    Some(unsafe { &*ptr })
}

/// CPU `index`, if it exists and is online.
pub fn cpu(index: usize) -> Option<&'static PerCpu> {
    any(index).filter(|c| c.is_online())
}

/// CPU `index`, if it was ever published, online or not (to bring it back online).
pub fn any(index: usize) -> Option<&'static PerCpu> {
    let p = CPUS.get(index)?.load(Ordering::Acquire);
    // SAFETY: non-null entries point to leaked PerCpu values published by `create`.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// Every CPU online now, by index (a CPU gone offline is skipped).
pub fn all() -> impl Iterator<Item = &'static PerCpu> {
    (0..created()).filter_map(cpu)
}

/// Every CPU ever published, online or not, by index (counters that outlive a CPU's
/// offline period).
pub fn every() -> impl Iterator<Item = &'static PerCpu> {
    (0..MAX_CPUS).map_while(any)
}

/// How many CPUs were published (the next CPU's index).
pub fn created() -> usize {
    (0..MAX_CPUS).take_while(|&i| any(i).is_some()).count()
}

/// Adds one to a counter that only the calling CPU writes: a load and a store, no locked
/// read-modify-write (others may read it at any time and see either value).
pub fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// One counter per CPU, each written only by its own CPU ([`bump`]) and read by anyone: what a
/// device's interrupt path counts where it lands without sharing a written cache line between
/// CPUs. Aligned to a cache line so that it shares none with the fields around it.
#[repr(align(64))]
pub struct PerCpuCounter([AtomicU64; MAX_CPUS]);

impl Default for PerCpuCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl PerCpuCounter {
    pub const fn new() -> PerCpuCounter {
        PerCpuCounter([const { AtomicU64::new(0) }; MAX_CPUS])
    }

    /// Counts one on CPU `cpu`, which must be the calling CPU.
    pub fn bump_on(&self, cpu: usize) {
        if let Some(c) = self.0.get(cpu) {
            bump(c);
        }
    }

    pub fn get(&self, cpu: usize) -> u64 {
        self.0.get(cpu).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// (CPU, count) for every CPU whose count is not zero, by CPU.
    pub fn nonzero(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.0.iter().enumerate().map(|(i, c)| (i, c.load(Ordering::Relaxed))).filter(|&(_, n)| n > 0)
    }

    /// Sets every CPU's count to 0 (while nothing counts: e.g. before a self-test).
    pub fn clear(&self) {
        for c in &self.0 {
            c.store(0, Ordering::Relaxed);
        }
    }
}
