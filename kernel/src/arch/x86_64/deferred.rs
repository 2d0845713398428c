//! Deferred work, Linux's softirq reduced to its idea: a fixed set of kinds of work that a hard
//! interrupt (or another CPU) raises on a CPU, and that CPU runs soon after with interrupts
//! enabled, outside the hard interrupt: at the exit of its outermost interrupt (after the EOI,
//! as Linux's `irq_exit` runs `do_softirq`), and in its idle loop before it halts.
//!
//! Each CPU has a word of pending kinds (a bit each) in its `PerCpu`. [`raise`] sets a bit
//! from any CPU and any context, with no lock and no allocation; when nothing else would run
//! the work soon (the CPU is another one, or this one outside interrupt context) it also sends
//! the CPU the deferred-work IPI ([`VECTOR`]), whose handler does nothing: that interrupt's
//! exit runs the work. One run at a time per CPU (a per-CPU flag): interrupts taken during a
//! run nest on its stack, once each, and leave what they raise to that run, which takes the
//! word again until it is empty (at most [`MAX_PASSES`] times; what is left is run after the
//! next interrupt, which a self-IPI makes soon, as Linux hands the rest to `ksoftirqd`).
//!
//! The `sti; hlt` window of the idle loop: the pending word is checked with interrupts off
//! and the CPU halts with `sti; hlt` (no interrupt in between); a raise from another CPU after
//! the check comes with the IPI, which ends the halt, and this CPU's own handlers cannot run
//! between the check and the halt (a raise from them runs at their exit).
//!
//! What a kind does is registered by the module that owns the work ([`register`]), so that
//! this plumbing imports nothing above it.

use super::smp::percpu::{self, PerCpu};
use super::{interrupts, lapic};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use spin::Once;

/// Vector of the deferred-work IPI (a system vector, above the allocatable range).
pub const VECTOR: u8 = 0xf2;

/// Passes a run makes over the pending word before it leaves the rest to the next interrupt
/// (Linux's `MAX_SOFTIRQ_RESTART` is 10 too): work that keeps raising itself cannot hold the
/// interrupted code off for ever.
pub const MAX_PASSES: u32 = 10;

/// The kinds of deferred work, run in this order within a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Clock event devices found failing in interrupt context on this CPU are taken out of
    /// service and the CPUs they served reassigned.
    TakeOutFailedDevices = 0,
    /// This CPU's LAPIC timer device takes the LAPIC timer's refined frequency.
    ApplyLapicRefinement = 1,
    /// The clocksources' housekeeping (CPU 0): narrow counters rebased, the TSC's checks, the
    /// refinements.
    Housekeeping = 2,
    /// Timer callbacks that asked to run outside the hard interrupt (deferred timers, Linux's
    /// soft hrtimers): the timer interrupt popped them and left them in this CPU's list.
    Timers = 3,
}

/// How many kinds there are.
pub const KINDS: usize = 4;

impl Kind {
    /// Every kind, in run order.
    pub const ALL: [Kind; KINDS] =
        [Kind::TakeOutFailedDevices, Kind::ApplyLapicRefinement, Kind::Housekeeping, Kind::Timers];

    /// Its bit in the pending word.
    pub const fn bit(self) -> u32 {
        1 << self as u8
    }
}

/// A CPU's pending kinds: one bit each, set by anyone, taken as a whole by the CPU itself.
#[derive(Debug, Default)]
pub struct Pending(AtomicU32);

impl Pending {
    pub const fn new() -> Pending {
        Pending(AtomicU32::new(0))
    }

    /// Sets `kind`'s bit; whether it was clear (a set bit has been raised already and not yet
    /// taken: its run is on its way).
    pub fn raise(&self, kind: Kind) -> bool {
        self.0.fetch_or(kind.bit(), Ordering::AcqRel) & kind.bit() == 0
    }

    /// Takes every pending kind (the word is empty afterwards).
    pub fn take(&self) -> u32 {
        self.0.swap(0, Ordering::AcqRel)
    }

    pub fn any(&self) -> bool {
        self.0.load(Ordering::Acquire) != 0
    }
}

/// The kinds whose bits are set in `bits`, in run order.
pub fn kinds(bits: u32) -> impl Iterator<Item = Kind> {
    Kind::ALL.into_iter().filter(move |k| bits & k.bit() != 0)
}

/// A CPU's deferred work, in its `PerCpu`.
#[derive(Debug, Default)]
pub struct CpuDeferred {
    pub pending: Pending,
    /// A run is in progress on this CPU (only this CPU writes it, with interrupts off).
    running: AtomicBool,
    /// Passes that found work (only this CPU writes it).
    pub runs: AtomicU64,
}

impl CpuDeferred {
    pub const fn new() -> CpuDeferred {
        CpuDeferred { pending: Pending::new(), running: AtomicBool::new(false), runs: AtomicU64::new(0) }
    }

    /// Whether this CPU is running its deferred work (call it on this CPU).
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }
}

/// What each kind does, registered once by its owner.
static WORK: [Once<fn()>; KINDS] = [const { Once::new() }; KINDS];

/// Registers what `kind` does (the first registration stays).
pub fn register(kind: Kind, work: fn()) {
    WORK[kind as usize].call_once(|| work);
}

/// Registers the deferred-work IPI's vector (its handler does nothing: the interrupt's exit
/// runs the work). On the boot CPU, once its per-CPU state exists.
pub fn init_bsp() {
    if let Err(e) = interrupts::register(VECTOR, |_| {}) {
        log::error!(
            "deferred work: no IPI vector ({e}): work raised on another CPU waits for its next interrupt"
        );
    }
}

/// Raises `kind` on CPU `cpu`, from any CPU and any context (no lock, no allocation): it runs
/// there soon, outside the hard interrupt, with interrupts enabled. On this CPU in interrupt
/// context (or in its deferred run) it runs at the interrupt's exit (or in that run); anywhere
/// else the CPU is sent the deferred-work IPI. A CPU that is not online is ignored.
pub fn raise(cpu: usize, kind: Kind) {
    let Some(target) = percpu::cpu(cpu) else { return };
    if !target.deferred.pending.raise(kind) {
        return;
    }
    let here = percpu::ready().then(percpu::this_cpu);
    let runs_soon =
        here.is_some_and(|h| core::ptr::eq(h, target) && (h.in_interrupt() || h.deferred.running()));
    if !runs_soon && lapic::mode().is_some() {
        lapic::send_ipi(target.apic_id, VECTOR);
    }
}

/// Runs this CPU's pending work unless a run is already in progress here: called with
/// interrupts disabled and outside any interrupt handler (the outermost interrupt's exit, the
/// idle loop); enables them while the work runs and returns with them disabled. Returns
/// whether it ran anything.
pub fn run_pending(cpu: &PerCpu) -> bool {
    let d = &cpu.deferred;
    if !d.pending.any() || d.running() {
        return false;
    }
    d.running.store(true, Ordering::Relaxed);
    for _ in 0..MAX_PASSES {
        let bits = d.pending.take();
        if bits == 0 {
            break;
        }
        percpu::bump(&d.runs);
        x86_64::instructions::interrupts::enable();
        for kind in kinds(bits) {
            if let Some(work) = WORK[kind as usize].get() {
                work();
            }
        }
        x86_64::instructions::interrupts::disable();
    }
    d.running.store(false, Ordering::Relaxed);
    if d.pending.any() && lapic::mode().is_some() {
        // Left for the next interrupt: make it come soon.
        lapic::send_ipi(cpu.apic_id, VECTOR);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raise_is_new_until_the_word_is_taken() {
        let p = Pending::new();
        assert!(!p.any());
        assert!(p.raise(Kind::Housekeeping));
        assert!(!p.raise(Kind::Housekeeping), "raised twice before a run: its run is on its way");
        assert!(p.raise(Kind::TakeOutFailedDevices));
        assert!(p.any());
        assert_eq!(p.take(), Kind::Housekeeping.bit() | Kind::TakeOutFailedDevices.bit());
        assert!(!p.any());
        assert_eq!(p.take(), 0);
        assert!(p.raise(Kind::Housekeeping), "taken: a new raise needs a new run");
    }

    #[test]
    fn kinds_come_out_in_run_order_each_once() {
        let all = Kind::ALL.iter().fold(0, |b, k| b | k.bit());
        assert_eq!(kinds(all).collect::<alloc::vec::Vec<_>>(), Kind::ALL.to_vec());
        assert_eq!(kinds(Kind::Housekeeping.bit()).collect::<alloc::vec::Vec<_>>(), [Kind::Housekeeping]);
        assert_eq!(kinds(0).count(), 0);
        // Bits of no kind are ignored.
        assert_eq!(kinds(1 << 31).count(), 0);
    }

    #[test]
    fn every_kind_has_its_own_bit() {
        let bits: alloc::vec::Vec<u32> = Kind::ALL.iter().map(|k| k.bit()).collect();
        for (i, a) in bits.iter().enumerate() {
            assert_eq!(a.count_ones(), 1);
            assert!(bits[i + 1..].iter().all(|b| a & b == 0));
        }
        assert!(Kind::ALL.iter().all(|&k| (k as usize) < KINDS));
    }
}
