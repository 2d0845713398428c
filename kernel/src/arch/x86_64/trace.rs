//! The per-CPU trace timeline (`trace` kernel option, `scripts/run --trace FILE`): events of
//! the timer path recorded in per-CPU rings and printed at exit as `TRACE` lines, which the
//! runner turns into a Chrome / Perfetto trace-event file.
//!
//! Compiled out unless the cargo feature `trace` is on: every trace point below is then an
//! empty `#[inline(always)]` function (arguments that cost anything are closures it never
//! calls), so the builds the benchmark's figures come from have no trace instruction at all.
//! With the feature, nothing is recorded unless the kernel option `trace` was given ([`init`]).
//!
//! A leaf module: it imports no time code (`crate::time`), so the drivers, the interrupt entry
//! and the time glue can all call it. Each CPU writes only its own ring (allocated at [`init`],
//! relaxed atomics, interrupts off for the few instructions of a record: no lock, no
//! `unsafe`); a full ring overwrites its oldest events and counts them. Timestamps are raw TSC
//! reads (one instruction); [`drain`] prints two (TSC, clock ns) pairs, taken at [`init`] and at
//! the drain, that map them onto the system clock.

/// What happened (the `kind` field of a `TRACE` line); `small` and `arg` say the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A timer armed: `arg` its deadline (clock ns), `small` the CPU it was posted to, or
    /// [`NONE`] when armed on the calling CPU.
    Arm = 1,
    /// A clock event device programmed: `small` its device id, `arg` the delta in ns.
    Program = 2,
    /// Interrupt entry and exit (a slice): `small` the vector.
    IrqEnter = 3,
    IrqExit = 4,
    /// A timer callback (a slice): `arg` its deadline (clock ns).
    CallbackBegin = 5,
    CallbackEnd = 6,
    /// The wake-up IPI sent: `small` the CPU it goes to.
    WakeIpi = 7,
    /// The idle loop's wait (a slice).
    IdleBegin = 8,
    IdleEnd = 9,
    /// Deep idle: the local device handed over to the broadcast (a slice within idle).
    DeepIdleBegin = 10,
    DeepIdleEnd = 11,
    /// The registry gave CPU `small` a tick device: `arg` its local device's id, or
    /// `BROADCAST_FLAG | id` for the broadcast, or [`NONE`] for no device.
    TickDevice = 12,
    /// A device taken out of service: `small` its id.
    TakeOut = 13,
    /// The broadcast device changed: `small` its id, or [`NONE`] for none.
    BroadcastDevice = 14,
}

/// "No CPU" / "no device" in `small` and `arg`.
pub const NONE: u64 = (1 << 56) - 1;
/// Marks a [`Kind::TickDevice`]'s `arg` as the broadcast device.
pub const BROADCAST_FLAG: u64 = 1 << 48;

/// At most this many events per CPU.
pub const MAX_EVENTS_PER_CPU: usize = 16 * 1024;
/// The rings' total size is bounded by this (bytes): with many CPUs each ring is smaller.
pub const RING_BUDGET_BYTES: usize = 4 * 1024 * 1024;
/// Bytes per recorded event (three `u64`s).
pub const EVENT_BYTES: usize = 24;

/// Events per CPU for `cpus` CPUs: [`MAX_EVENTS_PER_CPU`], or less, a power of two, so that all
/// rings fit in [`RING_BUDGET_BYTES`] (at least 256).
pub fn events_per_cpu(cpus: usize) -> usize {
    let fit = RING_BUDGET_BYTES / EVENT_BYTES / cpus.max(1);
    let pow2 = if fit == 0 { 1 } else { 1 << (usize::BITS - 1 - fit.leading_zeros()) };
    pow2.clamp(256, MAX_EVENTS_PER_CPU)
}

#[cfg(feature = "trace")]
mod imp {
    use super::{Kind, NONE};
    use crate::arch::x86_64::smp::percpu;
    use crate::arch::x86_64::{clock, serial, tsc};
    use alloc::boxed::Box;
    use alloc::vec::Vec;
    use core::sync::atomic::{
        AtomicBool, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
    };

    /// One recorded event: TSC, `kind | small << 8`, `arg`.
    struct Slot([AtomicU64; 3]);

    /// One CPU's ring: written only by its CPU, with interrupts off.
    struct Ring {
        /// Events recorded so far (the next one goes to `head % len`).
        head: AtomicU64,
        slots: Box<[Slot]>,
    }

    static ENABLED: AtomicBool = AtomicBool::new(false);
    static RINGS: spin::Once<Box<[Ring]>> = spin::Once::new();
    /// The (TSC, clock ns) pair taken when recording started, and the cost measured then.
    static START: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
    static NS_PER_EVENT: AtomicU64 = AtomicU64::new(0);

    /// Recordings timed at [`init`] for the cost per event.
    const COST_RUNS: u64 = 10_000;

    pub fn init(cpus: usize, requested: bool) {
        if !requested {
            return;
        }
        let per_cpu = super::events_per_cpu(cpus);
        let rings = (0..cpus)
            .map(|_| Ring {
                head: AtomicU64::new(0),
                slots: (0..per_cpu).map(|_| Slot([const { AtomicU64::new(0) }; 3])).collect(),
            })
            .collect();
        RINGS.call_once(|| rings);
        ENABLED.store(true, Relaxed);
        // The cost of one event, measured on this CPU's ring, which then starts empty.
        let t0 = clock::now_ns();
        for i in 0..COST_RUNS {
            record(Kind::Arm, NONE, i);
        }
        let ns = (clock::now_ns() - t0) / COST_RUNS;
        NS_PER_EVENT.store(ns, Relaxed);
        // The start pair first: every event kept is stamped after it.
        START[0].store(tsc::read(), Relaxed);
        START[1].store(clock::now_ns(), Relaxed);
        if let Some(ring) = RINGS.get().and_then(|r| r.get(percpu::this_cpu().index)) {
            ring.head.store(0, Relaxed);
        }
        log::info!(
            "trace: recording, {per_cpu} events per CPU for {cpus} CPUs ({} KiB each); {ns} ns per event",
            per_cpu * super::EVENT_BYTES / 1024
        );
    }

    #[inline(always)]
    pub fn enabled() -> bool {
        ENABLED.load(Relaxed)
    }

    #[inline]
    pub fn record(kind: Kind, small: u64, arg: u64) {
        // Recording starts after the boot CPU has its per-CPU state, and an AP installs its
        // own before anything else: no `percpu::ready` check is needed.
        if !ENABLED.load(Relaxed) {
            return;
        }
        let Some(ring) = RINGS.get().and_then(|r| r.get(percpu::this_cpu().index)) else { return };
        // Interrupts off: an interrupt's own events cannot land between this one's slot and
        // timestamp, so a ring's order is its CPU's time order.
        x86_64::instructions::interrupts::without_interrupts(|| {
            let head = ring.head.load(Relaxed);
            let slot = &ring.slots[head as usize & ring.slots.len().wrapping_sub(1)];
            slot.0[0].store(tsc::read(), Relaxed);
            slot.0[1].store(kind as u64 | small << 8, Relaxed);
            slot.0[2].store(arg, Relaxed);
            // Release: a reader that sees the new head sees the slot (a plain store on x86).
            ring.head.store(head.wrapping_add(1), Release);
        });
    }

    pub fn drain(devices: &[(usize, alloc::string::String)]) {
        if !ENABLED.swap(false, Relaxed) {
            return;
        }
        let Some(rings) = RINGS.get() else { return };
        // Another CPU may be inside a record that began before the stop (and a vCPU can be held
        // there for milliseconds): it writes the slot at its head, which is past the events
        // read below, or, once its ring has wrapped, the oldest one, which is not read.
        let (end_tsc, end_ns) = (tsc::read(), clock::now_ns());
        let recorded: Vec<u64> = rings.iter().map(|r| r.head.load(Acquire)).collect();
        let kept = |r: &Ring, n: u64| if n < r.slots.len() as u64 { n } else { r.slots.len() as u64 - 1 };
        let overwritten: Vec<u64> = rings.iter().zip(&recorded).map(|(r, &n)| n - kept(r, n)).collect();
        let mut names = alloc::string::String::new();
        for (i, (id, name)) in devices.iter().enumerate() {
            let comma = if i == 0 { "" } else { "," };
            names.push_str(&alloc::format!("{comma}\"{id}\":\"{name}\""));
        }
        serial::print(format_args!(
            "TRACE-BEGIN {{\"version\":1,\"cpus\":{},\"events_per_cpu\":{},\"tsc_hz\":{},\
             \"start\":[{},{}],\"end\":[{end_tsc},{end_ns}],\"ns_per_event\":{},\
             \"recorded\":{recorded:?},\"overwritten\":{overwritten:?},\"devices\":{{{names}}}}}\n",
            rings.len(),
            rings.first().map_or(0, |r| r.slots.len()),
            tsc::frequency_hz(),
            START[0].load(Relaxed),
            START[1].load(Relaxed),
            NS_PER_EVENT.load(Relaxed),
        ));
        let mut lines = 0u64;
        for (cpu, (ring, &n)) in rings.iter().zip(&recorded).enumerate() {
            let len = ring.slots.len() as u64;
            for i in n - kept(ring, n)..n {
                let s = &ring.slots[(i % len) as usize].0;
                let word = s[1].load(Relaxed);
                serial::print(format_args!(
                    "TRACE {cpu:x} {:x} {:x} {:x} {:x}\n",
                    word & 0xff,
                    s[0].load(Relaxed),
                    word >> 8,
                    s[2].load(Relaxed)
                ));
                lines += 1;
            }
        }
        serial::print(format_args!("TRACE-END {lines}\n"));
    }
}

#[cfg(not(feature = "trace"))]
mod imp {
    use super::Kind;
    use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

    /// The `trace` option was given to a kernel built without the feature.
    static REQUESTED: AtomicBool = AtomicBool::new(false);

    pub fn init(_cpus: usize, requested: bool) {
        if requested {
            REQUESTED.store(true, Relaxed);
            log::warn!("trace: this kernel was built without the cargo feature trace: nothing is recorded");
        }
    }

    #[inline(always)]
    pub fn record(_kind: Kind, _small: u64, _arg: u64) {}

    pub fn drain(_devices: &[(usize, alloc::string::String)]) {
        if REQUESTED.load(Relaxed) {
            crate::arch::x86_64::serial::print(format_args!(
                "TRACE-UNAVAILABLE built without the cargo feature trace\n"
            ));
        }
    }
}

/// Allocates the rings for `cpus` CPUs and starts recording, if `requested` (the `trace` kernel
/// option); measures and logs the cost of one event. Call once, on the boot CPU, after the heap.
pub fn init(cpus: usize, requested: bool) {
    imp::init(cpus, requested);
}

/// Stops recording and prints every CPU's events, oldest first: a `TRACE-BEGIN {json}` header,
/// one `TRACE cpu kind tsc small arg` line per event (hex), `TRACE-END lines`. `devices` names
/// the device ids the events carry. Nothing when not recording.
pub fn drain(devices: &[(usize, alloc::string::String)]) {
    imp::drain(devices);
}

/// A timer armed for `deadline_ns`, on CPU `to` when posted to one (else on this CPU).
#[inline(always)]
pub fn arm(deadline_ns: u64, to: Option<usize>) {
    #[cfg(feature = "trace")]
    imp::record(Kind::Arm, to.map_or(NONE, |c| c as u64), deadline_ns);
    #[cfg(not(feature = "trace"))]
    let _ = (deadline_ns, to);
}

/// A device programmed `delta_ticks` ahead: `device` gives its device id and frequency (called
/// only when recording); the delta is recorded in ns.
#[inline(always)]
pub fn program(delta_ticks: u64, device: impl FnOnce() -> (usize, u64)) {
    #[cfg(feature = "trace")]
    {
        if imp::enabled() {
            let (id, hz) = device();
            let ns = (u128::from(delta_ticks) * 1_000_000_000 / u128::from(hz.max(1))) as u64;
            imp::record(Kind::Program, id as u64, ns);
        }
    }
    #[cfg(not(feature = "trace"))]
    let _ = (delta_ticks, device);
}

/// Interrupt entry on `vector`.
#[inline(always)]
pub fn irq_enter(vector: u8) {
    imp::record(Kind::IrqEnter, u64::from(vector), 0);
}

/// Interrupt exit on `vector` (after its end of interrupt).
#[inline(always)]
pub fn irq_exit(vector: u8) {
    imp::record(Kind::IrqExit, u64::from(vector), 0);
}

/// The wake-up IPI sent to CPU `to`.
#[inline(always)]
pub fn wakeup_ipi(to: usize) {
    imp::record(Kind::WakeIpi, to as u64, 0);
}

/// The registry gave CPU `cpu` its tick device: `service` gives its local device, else the
/// broadcast device, else neither.
#[inline(always)]
pub fn tick_device(cpu: usize, service: impl FnOnce() -> (Option<usize>, Option<usize>)) {
    #[cfg(feature = "trace")]
    {
        let arg = match service() {
            (Some(d), _) => d as u64,
            (None, Some(b)) => BROADCAST_FLAG | b as u64,
            (None, None) => NONE,
        };
        imp::record(Kind::TickDevice, cpu as u64, arg);
    }
    #[cfg(not(feature = "trace"))]
    let _ = (cpu, service);
}

/// Device `device` taken out of service.
#[inline(always)]
pub fn take_out(device: usize) {
    imp::record(Kind::TakeOut, device as u64, 0);
}

/// The broadcast device is now `device` (or none).
#[inline(always)]
pub fn broadcast_device(device: Option<usize>) {
    imp::record(Kind::BroadcastDevice, device.map_or(NONE, |d| d as u64), 0);
}

/// A slice (callback, idle, deep idle) that ends when dropped.
#[must_use = "the slice ends when this is dropped"]
pub struct Slice {
    #[cfg(feature = "trace")]
    end: Kind,
}

impl Drop for Slice {
    #[inline(always)]
    fn drop(&mut self) {
        #[cfg(feature = "trace")]
        imp::record(self.end, 0, 0);
    }
}

/// A timer callback for `deadline_ns`, until the guard is dropped.
#[inline(always)]
pub fn callback(deadline_ns: u64) -> Slice {
    imp::record(Kind::CallbackBegin, 0, deadline_ns);
    Slice {
        #[cfg(feature = "trace")]
        end: Kind::CallbackEnd,
    }
}

/// The idle loop's wait (`deep`: deep idle, within it), until the guard is dropped.
#[inline(always)]
pub fn idle(deep: bool) -> Slice {
    let (begin, _end) =
        if deep { (Kind::DeepIdleBegin, Kind::DeepIdleEnd) } else { (Kind::IdleBegin, Kind::IdleEnd) };
    imp::record(begin, 0, 0);
    Slice {
        #[cfg(feature = "trace")]
        end: _end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_shrink_with_many_cpus_to_fit_the_budget() {
        assert_eq!(events_per_cpu(1), MAX_EVENTS_PER_CPU);
        assert_eq!(events_per_cpu(8), MAX_EVENTS_PER_CPU);
        assert_eq!(events_per_cpu(16), 8 * 1024);
        assert_eq!(events_per_cpu(64), 2 * 1024);
        assert_eq!(events_per_cpu(255), 512);
        for cpus in 1..=255 {
            let n = events_per_cpu(cpus);
            assert!(n.is_power_of_two() && n * EVENT_BYTES * cpus <= RING_BUDGET_BYTES, "{cpus} CPUs: {n}");
        }
    }
}
