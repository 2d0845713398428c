//! The idle loop: how a CPU with nothing to do waits for its next interrupt (`idle=`).
//!
//! `poll` spins with `pause`; `halt` is `sti; hlt` (C1); `deep` enters the deepest state the CPU
//! offers: `sti; mwait` with the deepest C-state hint of CPUID leaf 5 where CPUID offers
//! MONITOR/MWAIT, else `sti; hlt` (the instructions are the driver `arch::x86_64::idle`). In deep idle the devices that stop there (a LAPIC timer
//! without ARAT, or any with `lapic_stops_in_idle`) are stopped first, as the hardware would,
//! after their CPU handed its next deadline to the broadcast device; a CPU that cannot hand
//! over (no broadcast device) halts instead, says so once, and records a fallback; one that
//! carries the broadcast's timer for the others (bc_hrtimer) halts too, counted.

use super::clockevents::{self, time_of};
use crate::arch::x86_64::idle::{deepest_mwait_hint, mwait};
use crate::arch::x86_64::smp::percpu;
use crate::arch::x86_64::{deferred, tsc};
use crate::cmdline::IdleChoice;
use core::sync::atomic::Ordering;
use kernel_time::tick::Handover;
use spin::Once;
use x86_64::instructions::interrupts;

/// How this machine's CPUs idle, decided once on the boot CPU.
#[derive(Debug, Clone, Copy)]
struct IdleConfig {
    choice: IdleChoice,
    /// The MWAIT hint (EAX) of the deepest C-state, when MONITOR/MWAIT is offered.
    mwait_hint: Option<u32>,
}

static CONFIG: Once<IdleConfig> = Once::new();

/// Decides how CPUs idle (on the boot CPU, before the APs start) and logs it.
pub fn init(choice: IdleChoice) {
    let mwait_hint = if choice == IdleChoice::Deep { deepest_mwait_hint() } else { None };
    match (choice, mwait_hint) {
        (IdleChoice::Deep, Some(hint)) => {
            log::info!(
                "idle=deep: MWAIT with hint {hint:#x} (C{}), devices that stop there stop",
                (hint >> 4) + 1
            )
        }
        (IdleChoice::Deep, None) => {
            log::info!("idle=deep: no MONITOR/MWAIT, hlt as the deep state; devices that stop there stop")
        }
        (choice, _) => log::info!("idle={choice}"),
    }
    CONFIG.call_once(|| IdleConfig { choice, mwait_hint });
}

/// The state CPU `cpu` idles in: `halt` where deep idle was asked for but refused (it never
/// slept deeply).
pub fn state_of(cpu: usize) -> IdleChoice {
    let choice = CONFIG.get().map_or(IdleChoice::Halt, |c| c.choice);
    let never_deep = percpu::cpu(cpu).is_some_and(|c| {
        time_of(c).deep_idle_refused.load(Ordering::Relaxed)
            && time_of(c).deep_entries.load(Ordering::Relaxed) == 0
    });
    if choice == IdleChoice::Deep && never_deep { IdleChoice::Halt } else { choice }
}

/// Waits for an interrupt. Called with interrupts disabled, once the caller has found nothing
/// to do; returns with interrupts enabled, after an interrupt (or at once, for `poll`, or
/// after running this CPU's pending deferred work).
pub fn wait() {
    let cpu = percpu::this_cpu();
    // Work raised for later (`deferred`) runs before the CPU waits: checked with interrupts
    // off, so a raise after the check comes with an IPI that ends the wait below. When some
    // ran, the caller looks at its condition again before waiting.
    if deferred::run_pending(cpu) {
        interrupts::enable();
        return;
    }
    // What this CPU's handlers logged is printed here, outside interrupt context.
    crate::logger::drain(cpu.index);
    let time = time_of(cpu);
    time.idle_entries.store(time.idle_entries.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    let config = CONFIG.get().copied().unwrap_or(IdleConfig { choice: IdleChoice::Halt, mwait_hint: None });
    let _trace = (config.choice != IdleChoice::Poll).then(|| crate::arch::x86_64::trace::idle(false));
    match config.choice {
        IdleChoice::Poll => {
            interrupts::enable();
            core::hint::spin_loop();
        }
        IdleChoice::Halt => interrupts::enable_and_hlt(),
        // Until every CPU has its tick device, a CPU may not have its broadcast yet: halt.
        IdleChoice::Deep if clockevents::bringup_ns() == 0 => interrupts::enable_and_hlt(),
        IdleChoice::Deep => {
            let start = tsc::read();
            let handover = clockevents::deep_idle_enter();
            if matches!(handover, Ok(Handover::EventDue | Handover::ServesBroadcast)) {
                // Its next event is due: take that interrupt awake. Or it carries the
                // broadcast's timer (bc_hrtimer) for the others: its tick device must run.
                if handover == Ok(Handover::ServesBroadcast) {
                    time.serving_entries
                        .store(time.serving_entries.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                }
                interrupts::enable_and_hlt();
                return;
            }
            if let Err(why) = handover {
                // Asked again at every idle entry (a broadcast device may come), said once.
                if !time.deep_idle_refused.swap(true, Ordering::Relaxed) {
                    clockevents::record_fallback(alloc::format!(
                        "CPU {}: deep idle refused ({why}): it halts instead",
                        cpu.index
                    ));
                }
                interrupts::enable_and_hlt();
                return;
            }
            time.deep_entries.store(time.deep_entries.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            let _deep = crate::arch::x86_64::trace::idle(true);
            let entered = tsc::read();
            match config.mwait_hint {
                Some(hint) => mwait(hint, &time.sleep_wakeups as *const _ as u64),
                None => interrupts::enable_and_hlt(),
            }
            let woke = tsc::read();
            interrupts::disable();
            clockevents::deep_idle_exit();
            interrupts::enable();
            let overhead = (entered - start) + (tsc::read() - woke);
            time.idle_overhead_cycles
                .store(time.idle_overhead_cycles.load(Ordering::Relaxed) + overhead, Ordering::Relaxed);
        }
    }
}
