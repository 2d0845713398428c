//! One CPU's timekeeping: its service (local device or broadcast), its local device, its timer
//! queue, the deadline it asked for, and its counters. Only its own CPU touches it (the kernel
//! keeps it in the CPU's per-CPU area behind an interrupts-off guard), so arming, cancelling
//! and a local device's interrupt take no lock another CPU can hold; a CPU served by broadcast
//! also takes the broadcast's lock to hand over its deadline.
//!
//! An interrupt runs in three steps so that callbacks run outside the owner's guard (a
//! callback may arm or cancel timers): [`CpuTick::device_event`] or [`CpuTick::wakeup`] starts
//! an expiry; [`CpuTick::pop_expired`] hands out the due timers one at a time, each ended by
//! [`CpuTick::complete`] after its callback; [`CpuTick::end_expiry`] programs the device once,
//! and only if the next deadline changed. Timers armed by the callbacks in between are queued
//! without programming anything.

use super::{ArmError, DeviceId, Service, TickMode};
use crate::broadcast::Broadcast;
use crate::clockevents::{ClockEventDevice, Features, FrequencyError, NsToTicks, ProgramError, State};
use crate::clocks::{ClockDeadline, Offsets};
use crate::hrtimer::{Cancel, Expired, TimerId, TimerQueue, WrongCpu};
use alloc::sync::Arc;
use spin::Mutex;

/// A local device gave up programming: the registry must take it out (and reassign the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceFailure {
    /// The device that failed.
    pub device: DeviceId,
    /// How it failed.
    pub error: ProgramError,
}

/// An arm refused, with its payload handed back: the caller drops it outside the CPU's guard
/// (dropping a payload may run code that touches this CPU's timers).
#[derive(Debug, PartialEq, Eq)]
pub struct Refused<T> {
    /// Why.
    pub error: ArmError,
    /// What the timer would have carried.
    pub payload: T,
}

/// A pending timer of a CPU going offline, on its way to another CPU
/// ([`CpuTick::go_offline`], then [`CpuTick::adopt`] there).
#[derive(Debug, PartialEq, Eq)]
pub struct Migrating<T> {
    /// Its id on the CPU it leaves (refused by every other CPU's queue).
    pub id: TimerId,
    /// Its deadline, which it keeps (a periodic payload carries its period, so it keeps its
    /// grid too).
    pub deadline_ns: u64,
    /// The end of its range (its deadline plus its slack), which it keeps too.
    pub latest_ns: u64,
    /// What it carries.
    pub payload: T,
}

/// Each timer [`CpuTick::adopt`] took: its old id, then its new one.
pub type Moved = alloc::vec::Vec<(TimerId, TimerId)>;

/// The last few local devices a CPU used before its current one, whose interrupts still
/// pending at the change are stale, not misrouted. A fixed ring, so a reassignment (carried out
/// in the wake-up IPI) allocates nothing; an event of a device older than these is counted
/// misrouted (its owner, if any, is woken: harmless).
#[derive(Debug, Clone, Copy)]
struct FormerLocals {
    ids: [Option<DeviceId>; FormerLocals::KEPT],
    next: usize,
}

impl FormerLocals {
    const KEPT: usize = 4;

    const fn new() -> FormerLocals {
        FormerLocals { ids: [None; FormerLocals::KEPT], next: 0 }
    }

    fn remember(&mut self, id: DeviceId) {
        if !self.contains(id) {
            self.ids[self.next] = Some(id);
            self.next = (self.next + 1) % FormerLocals::KEPT;
        }
    }

    #[inline]
    fn contains(&self, id: DeviceId) -> bool {
        self.ids.contains(&Some(id))
    }
}

/// One CPU's tick.
pub struct CpuTick<T> {
    cpu: usize,
    mode: TickMode,
    /// `mode`'s period in ns (0: tickless), worked out once: every pass asks for it, and the
    /// periodic mode's is a division.
    period_ns: u64,
    service: Service,
    local: Option<Arc<ClockEventDevice>>,
    queue: TimerQueue<T>,
    /// The deadline this CPU has asked its device (or the broadcast) for; `u64::MAX`: none.
    next_event_ns: u64,
    /// Periodic mode: time of the next tick.
    next_tick_ns: u64,
    ticks: u64,
    /// Device interrupts and broadcast wake-ups handled on this CPU.
    events: u64,
    /// Events of a device that does not serve this CPU.
    misrouted: u64,
    /// Events of a device that served this CPU before its current one (a pending interrupt
    /// of the old device that arrived after the change), and those devices.
    stale: u64,
    former_locals: FormerLocals,
    /// Between `device_event`/`wakeup` and `end_expiry`: arms only queue.
    expiring: bool,
    /// A device event's expiry has begun at this clock read and the rest of its start (what
    /// nothing before the end of its first pass reads) is still to do: `end_pass` does it
    /// ([`settle_start`](Self::settle_start)); `None` once done.
    unsettled_ns: Option<u64>,
    /// Timers the current expiry pass may still pop: as many as were pending when the pass
    /// began, so a callback re-arming a timer in the past cannot keep one pass going.
    pass_budget: usize,
    /// After a hang (an expiry that could not catch up): no event before this time, so the
    /// CPU leaves its interrupt (Linux's `hang_detected`); 0: none.
    hold_until_ns: u64,
    /// Expiries that could not catch up, and the longest such interrupt in ns.
    hangs: u64,
    max_hang_ns: u64,
    failure: Option<DeviceFailure>,
    /// In deep idle with its local device stopped: the broadcast holds this CPU's deadline.
    handed_over: bool,
    /// The broadcast's timer carried on this CPU's tick, when it serves a broadcast device
    /// that is one CPU's timer ([`crate::broadcast`]): when it falls due (`u64::MAX`: none),
    /// and whether an expiry found it due (the broadcast's event is then run:
    /// [`take_broadcast_due`](Self::take_broadcast_due)).
    broadcast_timer_ns: u64,
    broadcast_due: bool,
    /// Timekeeping suspended: the local device is shut down until `resume`.
    suspended: bool,
    /// Deadlines handed to the broadcast before deep idle.
    handovers: u64,
    /// The sequence number of the last assignment applied (older ones arriving late are
    /// stale).
    last_assignment: u64,
    /// Room the queue keeps for timers posted through this CPU's handles
    /// ([`reserve_for_handles`](Self::reserve_for_handles)).
    handle_reserve: usize,
    /// Gone offline ([`CpuTick::go_offline`]): serves nothing, takes no timer, ignores
    /// assignments still in flight.
    offline: bool,
    /// The clocks' offsets this CPU's queue places REALTIME and BOOTTIME deadlines with, as
    /// of its last [`clock_was_set`](Self::clock_was_set).
    offsets: Offsets,
}

/// What [`CpuTick::broadcast_enter`] did before deep idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// The CPU's tick device keeps running in deep idle (or nothing serves it): nothing to do.
    NotNeeded,
    /// The local device is stopped and the broadcast holds the CPU's next deadline.
    HandedOver,
    /// Nothing handed over: this CPU carries the broadcast's timer, which waits for another
    /// CPU's deadline (Linux's `broadcast_needs_cpu`), so its tick device keeps running and it
    /// idles shallow; another CPU takes the timer over when it hands over an earlier deadline.
    ServesBroadcast,
    /// Nothing handed over: the CPU's next event is already due (it woke for it and leaves
    /// deep idle before its interrupt handler runs, Linux's order), so it must not sleep deeply
    /// but take the interrupt its local device is armed for. Handing a passed deadline to the
    /// broadcast would make the broadcast wake the CPU at once, and the CPU hand it back, over
    /// and over (Linux's `tick_broadcast_force_mask` guards the same).
    EventDue,
}

/// Why a CPU must not sleep deeply (it would lose its wake-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeepIdleRefused {
    /// Its tick device stops in deep idle and no working broadcast device can take over.
    NoBroadcast,
    /// Its device ticks in hardware periodic mode, which a handover would break.
    PeriodicTick,
}

impl core::fmt::Display for DeepIdleRefused {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            DeepIdleRefused::NoBroadcast => {
                "its tick device stops in deep idle and no broadcast device can take its deadline over"
            }
            DeepIdleRefused::PeriodicTick => "its tick device runs in hardware periodic mode",
        })
    }
}

impl core::error::Error for DeepIdleRefused {}

impl core::fmt::Display for DeviceFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "clock event device {} failed: {}", self.device.0, self.error)
    }
}

impl core::error::Error for DeviceFailure {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl<T> CpuTick<T> {
    /// CPU `cpu`'s tick, not served by anything until its first assignment; room for
    /// `capacity` timers before arming allocates.
    pub fn new(cpu: usize, mode: TickMode, now_ns: u64, capacity: usize) -> CpuTick<T> {
        CpuTick {
            cpu,
            mode,
            period_ns: mode.period_ns(),
            service: Service::None,
            local: None,
            queue: TimerQueue::with_capacity(cpu, capacity),
            next_event_ns: u64::MAX,
            next_tick_ns: now_ns.saturating_add(mode.period_ns()),
            ticks: 0,
            events: 0,
            misrouted: 0,
            stale: 0,
            former_locals: FormerLocals::new(),
            expiring: false,
            unsettled_ns: None,
            pass_budget: 0,
            hold_until_ns: 0,
            hangs: 0,
            max_hang_ns: 0,
            failure: None,
            handed_over: false,
            broadcast_timer_ns: u64::MAX,
            broadcast_due: false,
            suspended: false,
            handovers: 0,
            last_assignment: 0,
            handle_reserve: 0,
            offline: false,
            offsets: Offsets { realtime_ns: 0, suspended_ns: 0 },
        }
    }

    /// The CPU this tick belongs to.
    pub fn cpu(&self) -> usize {
        self.cpu
    }
    /// What serves this CPU now.
    pub fn service(&self) -> Service {
        self.service
    }
    /// The device local to this CPU, while it has one.
    pub fn local_device(&self) -> Option<&Arc<ClockEventDevice>> {
        self.local.as_ref()
    }
    /// The deadline this CPU asked its device or the broadcast for (`u64::MAX`: none).
    pub fn next_event_ns(&self) -> u64 {
        self.next_event_ns
    }
    /// Device interrupts and wake-ups that started an expiry on this CPU.
    pub fn events(&self) -> u64 {
        self.events
    }
    /// Periodic ticks passed (0 when tickless).
    pub fn ticks(&self) -> u64 {
        self.ticks
    }
    /// Events of a device that does not serve this CPU and never did (a wrong destination).
    pub fn misrouted(&self) -> u64 {
        self.misrouted
    }
    /// Events of a device this CPU used before its current one, arrived after the change.
    pub fn stale(&self) -> u64 {
        self.stale
    }
    /// Deadlines handed to the broadcast before deep idle so far.
    pub fn handovers(&self) -> u64 {
        self.handovers
    }
    /// In deep idle with the broadcast holding this CPU's deadline.
    pub fn is_handed_over(&self) -> bool {
        self.handed_over
    }
    /// Expiries that could not catch up with their due timers (see [`super::expiry`]), and the
    /// longest of those interrupts in ns.
    pub fn hangs(&self) -> (u64, u64) {
        (self.hangs, self.max_hang_ns)
    }

    /// Suspends this CPU's timekeeping (the seed's `timer_suspend`): its local device is shut
    /// down, its timers stay queued. Returns how many are pending.
    pub fn suspend(&mut self) -> usize {
        self.suspended = true;
        if let Some(d) = &self.local
            && !self.handed_over
        {
            d.switch_state(State::Shutdown, 0).expect("any state shuts down");
        }
        self.next_event_ns = u64::MAX;
        self.queue.len()
    }

    /// Resumes this CPU's timekeeping (`timer_resume`): the local device is brought up again in
    /// its mode and programmed for the next deadline; timers whose deadline passed meanwhile
    /// fire at once, late by at most the time suspended.
    pub fn resume(&mut self, now_ns: u64, bc: &Mutex<Broadcast>) {
        if !self.suspended {
            return;
        }
        self.suspended = false;
        if let Some(d) = self.local.clone()
            && !self.handed_over
        {
            let state = if self.wants_hardware_periodic(&d) { State::Periodic } else { State::Oneshot };
            d.attach(state, self.mode.period_ns());
        }
        let period = self.mode.period_ns();
        if period > 0 && now_ns >= self.next_tick_ns {
            // The ticks missed while suspended are not made up: the next is a period from now.
            self.next_tick_ns = now_ns + period;
        }
        self.next_event_ns = u64::MAX;
        self.reprogram(now_ns, bc);
    }

    /// Whether this CPU's tick device stops in deep idle (a deep sleep then needs a handover).
    pub fn device_stops_in_idle(&self) -> bool {
        matches!(self.service, Service::Local(_))
            && self.local.as_ref().is_some_and(|d| d.spec.features.contains(Features::STOPS_IN_DEEP_IDLE))
    }

    /// Before deep idle (Linux's `tick_broadcast_enter`): a CPU whose local device stops there
    /// stops it, as the hardware will, and hands its next deadline to the broadcast. Refused
    /// (the CPU must not sleep deeply) when no working broadcast device can take it.
    pub fn broadcast_enter(
        &mut self,
        now_ns: u64,
        bc: &Mutex<Broadcast>,
    ) -> Result<Handover, DeepIdleRefused> {
        if !self.device_stops_in_idle() {
            return Ok(Handover::NotNeeded);
        }
        let Some(d) = self.local.clone() else { return Ok(Handover::NotNeeded) };
        if d.state() == State::Periodic {
            return Err(DeepIdleRefused::PeriodicTick);
        }
        // The broadcast's timer as it is now (one this CPU no longer serves is dropped).
        if self.sync_broadcast_timer(now_ns, bc) {
            return Ok(Handover::ServesBroadcast);
        }
        if self.needed() <= now_ns {
            // Its local device is armed for it (a passed deadline at the minimum delta).
            self.reprogram(now_ns, bc);
            return Ok(Handover::EventDue);
        }
        let mut b = bc.lock();
        if !b.is_usable() {
            return Err(DeepIdleRefused::NoBroadcast);
        }
        d.switch_state(State::Shutdown, 0).expect("a one-shot device shuts down");
        self.handed_over = true;
        self.next_event_ns = self.needed();
        b.set_deadline(self.cpu, self.next_event_ns, now_ns);
        if !b.is_usable() {
            // The broadcast device gave up on this deadline: stay awake on the local device.
            drop(b);
            self.broadcast_exit(now_ns, bc);
            return Err(DeepIdleRefused::NoBroadcast);
        }
        if b.needs_cpu(self.cpu) {
            // Its deadline moved the broadcast's timer here (one CPU's timer, and this deadline
            // the earliest): it serves, so it takes its deadline back and stays awake.
            drop(b);
            self.broadcast_exit(now_ns, bc);
            return Ok(Handover::ServesBroadcast);
        }
        self.handovers += 1;
        Ok(Handover::HandedOver)
    }

    /// Takes up what the broadcast says of its timer on this CPU ([`Broadcast::timer_on`]):
    /// armed on this CPU's device with its own deadlines when this CPU serves the broadcast,
    /// dropped when it does not (any more). Call it on this CPU after anything it did may have
    /// programmed a broadcast device that is one CPU's timer (the broadcast's event, a device
    /// change). Returns whether this CPU serves the broadcast now (it must not sleep deeply).
    pub fn sync_broadcast_timer(&mut self, now_ns: u64, bc: &Mutex<Broadcast>) -> bool {
        let at = bc.lock().timer_on(self.cpu);
        if at != self.broadcast_timer_ns {
            self.broadcast_timer_ns = at;
            self.reprogram(now_ns, bc);
        }
        at != u64::MAX
    }

    /// Whether the broadcast's timer on this CPU fell due in the last expiry (taken once): the
    /// caller runs the broadcast's event ([`super::glue::broadcast_event`]).
    #[inline]
    pub fn take_broadcast_due(&mut self) -> bool {
        core::mem::take(&mut self.broadcast_due)
    }

    /// When the broadcast's timer on this CPU falls due (`u64::MAX`: it carries none).
    pub fn broadcast_timer_ns(&self) -> u64 {
        self.broadcast_timer_ns
    }

    /// After deep idle, woken for whatever reason (Linux's `tick_broadcast_exit`): leaves the
    /// broadcast and programs the local device again for the deadline, if it is still ahead
    /// (a passed one fires at the minimum delta; the broadcast's wake-up may also be on its
    /// way, and finds nothing more to do).
    pub fn broadcast_exit(&mut self, now_ns: u64, bc: &Mutex<Broadcast>) {
        if !self.handed_over {
            return;
        }
        self.handed_over = false;
        {
            let mut b = bc.lock();
            b.leave(self.cpu);
            // It may have taken the broadcast's timer over meanwhile (a deadline handed over
            // by its interrupt handler); its own device carries it from now on.
            self.broadcast_timer_ns = b.timer_on(self.cpu);
        }
        if let Some(d) = &self.local {
            d.attach(State::Oneshot, 0);
        }
        self.next_event_ns = u64::MAX;
        self.reprogram(now_ns, bc);
    }
    /// Pending timers.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }
    /// Makes room for `additional` more timers, so that arming them does not allocate.
    pub fn reserve(&mut self, additional: usize) {
        self.queue.reserve(additional);
    }
    /// Keeps room in the queue for `handles` timers posted from other CPUs
    /// ([`crate::remote::Handles`] of that capacity), allocating it now: a timer armed here
    /// directly never takes that room (outside an expiry the queue grows first; in one the arm
    /// is refused, [`ArmError::QueueFull`]), so a posted timer always fits without allocating
    /// ([`arm_reserved`](Self::arm_reserved)).
    pub fn reserve_for_handles(&mut self, handles: usize) {
        self.handle_reserve = handles;
        self.queue.reserve(handles + 1);
    }
    /// Timers the queue holds before arming allocates (outside an expiry it then grows).
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }
    /// How many more timers can be armed without allocating.
    pub fn spare_capacity(&self) -> usize {
        self.queue.spare_capacity()
    }

    /// How this CPU ticks: `oneshot`, `periodic` (hardware) or `periodic-emulated`.
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            TickMode::Oneshot => "oneshot",
            TickMode::Periodic { .. }
                if self.local.as_ref().is_some_and(|d| d.state() == State::Periodic) =>
            {
                "periodic"
            }
            TickMode::Periodic { .. } => "periodic-emulated",
        }
    }

    /// Carries out a numbered decision of the registry ([`super::Assignment`]); one older than
    /// the last applied (delivered out of order) is stale and ignored. True if applied.
    pub fn apply(&mut self, a: super::Assignment, now_ns: u64, bc: &Mutex<Broadcast>) -> bool {
        debug_assert_eq!(a.cpu, self.cpu, "an assignment is carried out on its own CPU");
        if a.sequence <= self.last_assignment || self.offline {
            return false;
        }
        self.last_assignment = a.sequence;
        self.assign(a.service, a.local, now_ns, bc);
        true
    }

    /// Carries out the registry's decision for this CPU: releases the old local device (or
    /// leaves the broadcast), takes up the new one and hands it the pending deadline.
    pub fn assign(
        &mut self,
        service: Service,
        local: Option<Arc<ClockEventDevice>>,
        now_ns: u64,
        bc: &Mutex<Broadcast>,
    ) {
        if service == self.service {
            return;
        }
        if self.handed_over {
            // Reassigned in deep idle: the handover ends with the old device.
            self.handed_over = false;
            bc.lock().leave(self.cpu);
        }
        let was_broadcast = matches!(self.service, Service::Broadcast(_));
        if let Service::Local(old) = self.service {
            self.former_locals.remember(old);
        }
        self.service = service;
        if was_broadcast && matches!(service, Service::Broadcast(_)) {
            // Another broadcast device: the broadcast kept this CPU's deadline.
            return;
        }
        if let Some(old) = self.local.take() {
            old.detach();
        }
        if was_broadcast {
            bc.lock().leave(self.cpu);
        }
        if let Some(new) = &local {
            let state = if self.wants_hardware_periodic(new) { State::Periodic } else { State::Oneshot };
            new.attach(state, self.mode.period_ns());
        }
        self.local = local;
        self.next_event_ns = u64::MAX;
        self.reprogram(now_ns, bc);
    }

    /// Hardware periodic mode needs the feature and a period the device can be programmed
    /// for; otherwise the tick is emulated one-shot (a clamped period would tick at the wrong
    /// rate).
    fn wants_hardware_periodic(&self, d: &ClockEventDevice) -> bool {
        matches!(self.mode, TickMode::Periodic { .. })
            && d.spec.features.contains(Features::PERIODIC)
            && (d.min_delta_ns()..=d.max_delta_ns).contains(&self.mode.period_ns())
    }

    /// Arms a timer at `deadline_ns` on this CPU, without slack.
    #[inline]
    pub fn arm(
        &mut self,
        deadline_ns: u64,
        payload: T,
        now_ns: u64,
        bc: &Mutex<Broadcast>,
    ) -> Result<TimerId, Refused<T>> {
        self.arm_range(deadline_ns, 0, payload, now_ns, bc)
    }

    /// Arms a timer on this CPU that may run anywhere in `[deadline_ns, deadline_ns +
    /// slack_ns]` ([`TimerQueue::arm_range`]): the device is programmed for the earliest end
    /// of a range, and there every timer whose range has begun runs.
    pub fn arm_range(
        &mut self,
        deadline_ns: u64,
        slack_ns: u64,
        payload: T,
        now_ns: u64,
        bc: &Mutex<Broadcast>,
    ) -> Result<TimerId, Refused<T>> {
        if self.offline {
            return Err(Refused { error: ArmError::CpuNotOnline(self.cpu), payload });
        }
        if self.service == Service::None {
            return Err(Refused { error: ArmError::NoTickDevice(self.cpu), payload });
        }
        if self.queue.spare_capacity() <= self.handle_reserve {
            if self.expiring {
                let error = ArmError::QueueFull { cpu: self.cpu, capacity: self.queue.capacity() };
                return Err(Refused { error, payload });
            }
            // Doubling, so that arming stays amortised O(1).
            self.queue.reserve(self.queue.capacity().max(self.handle_reserve + 1));
        }
        Ok(self.arm_reserved(deadline_ns, slack_ns, payload, now_ns, bc))
    }

    /// Arms a timer posted through this CPU's handles ([`crate::remote::drain`]): it takes
    /// the room kept for them, so it does not allocate; and it is queued even while no device
    /// serves this CPU (the sender was told it is armed: it waits for a device).
    /// With `slack_ns`, as [`arm_range`](Self::arm_range).
    #[inline]
    pub fn arm_reserved(
        &mut self,
        deadline_ns: u64,
        slack_ns: u64,
        payload: T,
        now_ns: u64,
        bc: &Mutex<Broadcast>,
    ) -> TimerId {
        let id = self.queue.arm_range(deadline_ns, slack_ns, payload);
        if deadline_ns.saturating_add(slack_ns) < self.next_event_ns && self.service != Service::None {
            self.reprogram(now_ns, bc);
        }
        id
    }

    /// The offsets this CPU's queue places deadlines of REALTIME and BOOTTIME with
    /// ([`ClockDeadline::monotonic`]): arm such a timer at the place they give, under the
    /// guard, so that a [`clock_was_set`](Self::clock_was_set) cannot fall between the two.
    #[inline]
    pub fn offsets(&self) -> Offsets {
        self.offsets
    }

    /// The clocks' offsets changed (REALTIME stepped, time suspended added: Linux's
    /// `clock_was_set`): every pending timer on another clock than MONOTONIC (`clock_of` says
    /// which, and its deadline there) is queued again where `offsets` place it, and the device
    /// is programmed for the new earliest. A timer stepped into the past falls due now; one
    /// stepped back waits. Returns how many moved.
    pub fn clock_was_set(
        &mut self,
        offsets: Offsets,
        now_ns: u64,
        bc: &Mutex<Broadcast>,
        mut clock_of: impl FnMut(&T) -> Option<ClockDeadline>,
    ) -> usize {
        self.offsets = offsets;
        let moved = self.queue.retime(|p| clock_of(p).map(|at| at.monotonic(&offsets).as_nanos()));
        if moved > 0 {
            self.reprogram(now_ns, bc);
        }
        moved
    }

    /// The end of a pending or running timer's range ([`TimerQueue::latest`]).
    pub fn latest(&self, id: TimerId) -> Option<u64> {
        self.queue.latest(id)
    }

    /// Cancels a timer of this CPU. The device keeps its programmed time: an interrupt with
    /// nothing due just programs the next deadline. Another CPU's id is refused.
    pub fn cancel(&mut self, id: TimerId) -> Result<Cancel<T>, WrongCpu> {
        self.queue.cancel(id)
    }

    /// Device `id` interrupted this CPU at `now_ns`. True when it is this CPU's local device:
    /// an expiry has started (pop the due timers, then [`end_expiry`](Self::end_expiry)).
    /// False for a device that does not serve this CPU: stale (one it used before, whose
    /// interrupt was pending when it changed device) or misrouted (any other): the caller wakes
    /// the device's owner, which programs it again from its own CPU.
    ///
    /// The crate's expiry does the same in two steps, reading the clock between them
    /// ([`expiry::device_interrupt`](super::expiry::device_interrupt)).
    #[inline]
    pub fn device_event(&mut self, id: DeviceId, now_ns: u64) -> bool {
        let ours = self.claim_device_event(id);
        if ours {
            self.device_event_at(now_ns);
        }
        ours
    }

    /// [`device_event`](Self::device_event) before its clock read: true when device `id` is
    /// this CPU's local device and an expiry has started; the caller then reads the clock and
    /// must give the reading to [`device_event_at`](Self::device_event_at) before it pops (the
    /// rest of the start waits on it: without it the device would not be programmed again).
    /// Crate-private for that: only the expiry calls the pair.
    #[inline]
    pub(crate) fn claim_device_event(&mut self, id: DeviceId) -> bool {
        // A pattern, not `!=` on the enum: the derived comparison is a call's worth of
        // instructions in the dev build, on every interrupt.
        if !matches!(self.service, Service::Local(local) if local.0 == id.0) {
            if self.former_locals.contains(id) {
                self.stale += 1;
            } else {
                self.misrouted += 1;
            }
            return false;
        }
        // Only what the first pop needs before the first callback: the pass's budget, and
        // arms that only queue. The rest of the start waits for the end of the first pass
        // ([`settle_start`](Self::settle_start)): nothing reads it before then (a callback's
        // arm asks to reprogram, which waits for the expiry's end), and it is not on the
        // path from the interrupt to the first callback.
        // Counted now: a callback reads the count as "the interrupt that ran me".
        self.events = self.events.wrapping_add(1);
        self.expiring = true;
        self.pass_budget = self.queue.len();
        true
    }

    /// The clock read of the expiry [`claim_device_event`](Self::claim_device_event) started,
    /// taken after it: the first pass pops what is due at `now_ns`.
    #[inline]
    pub(crate) fn device_event_at(&mut self, now_ns: u64) {
        self.unsettled_ns = Some(now_ns);
    }

    /// The rest of a device event's start, before anything reads it (see
    /// [`device_event`](Self::device_event)): the device forgets the event it delivered, the
    /// next event and a hang's hold are cleared, the broadcast's timer and the periodic tick
    /// checked against the start's clock read.
    #[inline]
    fn settle_start(&mut self) {
        if let Some(now_ns) = self.unsettled_ns.take() {
            if let Some(d) = &self.local
                && d.state() == State::Oneshot
            {
                d.forget_event();
            }
            let budget = self.pass_budget;
            self.start_uncounted(now_ns);
            // The first pass's budget was set at the start and counts down since.
            self.pass_budget = budget;
        }
    }

    /// This CPU was woken (by the broadcast, or for a misrouted event of its own device):
    /// starts an expiry, as [`device_event`](Self::device_event) does. False when nothing
    /// serves the CPU.
    pub fn wakeup(&mut self, now_ns: u64) -> bool {
        if self.service == Service::None {
            return false;
        }
        self.begin_expiry(now_ns);
        true
    }

    #[inline]
    fn begin_expiry(&mut self, now_ns: u64) {
        // A count that cannot reach 2^64: the wrapping add is the dev build's overflow check saved
        // on every interrupt.
        self.events = self.events.wrapping_add(1);
        // A device event's start not settled (its expiry never reached its end: no platform
        // does that) is replaced by this one.
        self.unsettled_ns = None;
        self.start_uncounted(now_ns);
    }

    /// An expiry's start but its count: no next event, arms that only queue, no hold, the
    /// first pass begun at `now_ns`.
    #[inline]
    fn start_uncounted(&mut self, now_ns: u64) {
        self.next_event_ns = u64::MAX;
        self.expiring = true;
        self.hold_until_ns = 0;
        self.next_pass(now_ns);
    }

    /// Starts a pass of the expiry at `now_ns`: it may pop as many timers as are pending now,
    /// and the periodic tick catches up with `now_ns`.
    #[inline]
    pub fn next_pass(&mut self, now_ns: u64) {
        if self.broadcast_timer_ns <= now_ns {
            // The broadcast's timer: its event runs after this expiry.
            self.broadcast_timer_ns = u64::MAX;
            self.broadcast_due = true;
        }
        self.pass_budget = self.queue.len();
        let period = self.period_ns;
        if period > 0 && now_ns >= self.next_tick_ns {
            let missed = (now_ns - self.next_tick_ns) / period;
            self.ticks += missed + 1;
            self.next_tick_ns += (missed + 1) * period;
        }
    }

    /// The next timer due at `now_ns` ([`TimerQueue::pop_expired`]: in the order of the ends
    /// of their ranges, while the head's deadline has come), within this pass's budget; it is
    /// running until [`complete`](Self::complete).
    #[inline(always)]
    pub fn pop_expired(&mut self, now_ns: u64) -> Option<Expired<T>> {
        // The queue counts the budget down itself: one test and one decrement.
        self.queue.pop_expired_or_defer(now_ns, &mut self.pass_budget, |_| false)
    }

    /// Ends a pass of the expiry at `now_ns`: if what this CPU needs next (its earliest timer,
    /// or its next tick) is still ahead, the expiry ends and the device (or the broadcast) is
    /// programmed for it, as [`end_expiry`](Self::end_expiry) does; if it is already due (the
    /// expiry has not caught up), nothing is programmed and false says so: run another pass,
    /// or [`hold_until`](Self::hold_until) and end the expiry.
    #[inline]
    pub fn end_pass(&mut self, now_ns: u64, bc: &Mutex<Broadcast>) -> bool {
        self.settle_start();
        let needed = self.needed();
        if needed <= now_ns {
            return false;
        }
        self.expiring = false;
        if !self.suspended {
            self.program_for(needed, now_ns, bc);
        }
        true
    }

    /// An expiry that could not catch up (Linux's hang detection): nothing is programmed
    /// before `until_ns`, so the CPU leaves its interrupt; the due timers run then, late.
    /// `took_ns` is how long the interrupt ran.
    pub fn hold_until(&mut self, until_ns: u64, took_ns: u64) {
        self.hold_until_ns = until_ns;
        self.hangs += 1;
        self.max_hang_ns = self.max_hang_ns.max(took_ns);
    }

    /// Ends a popped timer's callback; `again` re-arms it under the same id (a periodic timer)
    /// unless it was cancelled meanwhile. Returns whether it is pending again, or the payload
    /// of a refused re-arm, for the caller to drop outside the guard.
    #[inline]
    pub fn complete(&mut self, id: TimerId, again: Option<(u64, T)>) -> Result<bool, T> {
        self.queue.complete(id, again)
    }

    /// Hands a timer just popped by this expiry ([`pop_expired`](Self::pop_expired)) to this
    /// CPU's deferred list instead of running its callback here: it waits, in the order popped,
    /// for [`take_deferred`](Self::take_deferred) (the deferred run, outside the interrupt).
    /// Never allocates, never full (see [`TimerQueue::defer`](crate::hrtimer::TimerQueue::defer));
    /// a timer cancelled since its pop is refused, its payload handed back.
    #[inline]
    pub fn defer(&mut self, expired: Expired<T>) -> Result<(), T> {
        self.queue.defer(expired)
    }

    /// [`pop_expired`](Self::pop_expired), handing each due timer whose payload `defer` picks
    /// to the deferred list on the way (as [`defer`](Self::defer) does), counted
    /// ([`take_deferred_popped`](Self::take_deferred_popped)) and in this pass's budget, one
    /// call of `defer` per timer. (The expiry pops with [`pop_expired`](Self::pop_expired),
    /// telling a plain timer apart in one test, and defers on a cold path.)
    #[inline(always)]
    pub fn pop_expired_or_defer(&mut self, now_ns: u64, defer: impl Fn(&T) -> bool) -> Option<Expired<T>> {
        self.queue.pop_expired_or_defer(now_ns, &mut self.pass_budget, defer)
    }

    /// How many timers [`pop_expired_or_defer`](Self::pop_expired_or_defer) deferred since the
    /// last call.
    #[inline]
    pub fn take_deferred_popped(&mut self) -> u32 {
        self.queue.take_deferred_popped()
    }

    /// The first timer waiting in the deferred list, running from now until
    /// [`complete_deferred`](Self::complete_deferred); `None` when none waits.
    #[inline]
    pub fn take_deferred(&mut self) -> Option<Expired<T>> {
        self.queue.take_deferred()
    }

    /// Timers waiting in the deferred list.
    #[inline]
    pub fn deferred_waiting(&self) -> usize {
        self.queue.deferred_len()
    }

    /// The most timers that waited in the deferred list at once, since this tick was made.
    pub fn max_deferred_waiting(&self) -> usize {
        self.queue.deferred_max()
    }

    /// Ends a deferred timer's run (outside any expiry): [`complete`](Self::complete), and
    /// when it is pending again (a periodic timer), the device is programmed for it if it is
    /// now the earliest (no expiry will do it: the interrupt that popped it ended long ago).
    pub fn complete_deferred(
        &mut self,
        id: TimerId,
        again: Option<(u64, T)>,
        now_ns: u64,
        bc: &Mutex<Broadcast>,
    ) -> Result<bool, T> {
        let rearmed = self.queue.complete(id, again)?;
        if rearmed {
            self.reprogram(now_ns, bc);
        }
        Ok(rearmed)
    }

    /// Ends the expiry: programs the device (or hands the broadcast) the next deadline, only
    /// if it changed.
    pub fn end_expiry(&mut self, now_ns: u64, bc: &Mutex<Broadcast>) {
        self.settle_start();
        self.expiring = false;
        self.reprogram(now_ns, bc);
    }

    /// Forgets what this CPU's device was programmed for and programs it again from the queue
    /// (after something programmed the hardware behind the layer's back, e.g. a measurement).
    pub fn resync(&mut self, now_ns: u64, bc: &Mutex<Broadcast>) {
        if let Some(d) = &self.local {
            d.resync();
        }
        self.next_event_ns = u64::MAX;
        self.reprogram(now_ns, bc);
    }

    /// A better measurement of `device`'s frequency (this CPU's own device, in use or not:
    /// only its CPU programs it). Every later programming converts at `hz`; if it is this
    /// CPU's tick device now, what it is programmed for is programmed again at the new factor
    /// (a periodic device restarts its period), as Linux's `clockevents_update_freq` does, so
    /// that no event waits on the old factor. Within an expiry the programming waits for its
    /// end, as always. An event already converted too short fires early: the tick runs nothing
    /// before its deadline and programs the device again. Returns the conversion replaced.
    pub fn set_device_frequency(
        &mut self,
        device: &ClockEventDevice,
        hz: u64,
        now_ns: u64,
        bc: &Mutex<Broadcast>,
    ) -> Result<NsToTicks, FrequencyError> {
        let old = device.set_frequency(hz)?;
        let in_use = self.local.as_ref().is_some_and(|d| core::ptr::eq(&**d, device));
        if in_use && !self.handed_over && !self.suspended {
            match device.state() {
                State::Periodic => device
                    .switch_state(State::Periodic, self.mode.period_ns())
                    .expect("periodic -> periodic is legal"),
                State::Oneshot => self.resync(now_ns, bc),
                _ => {}
            }
        }
        Ok(old)
    }

    /// The local device gave up programming since the last call: the registry must take it
    /// out, and this CPU then applies its new assignment.
    pub fn take_failure(&mut self) -> Option<DeviceFailure> {
        self.failure.take()
    }

    /// This CPU goes offline (called on it, outside an expiry, after the registry took it out
    /// of its selection with [`Registry::cpu_offline`](super::Registry::cpu_offline), so no
    /// new assignment comes): it leaves the broadcast, releases its local device (detached,
    /// unarmed: free for the registry to hand out again), serves nothing from now on, refuses
    /// arms ([`ArmError::CpuNotOnline`]) and ignores assignments still in flight. Returns its
    /// pending timers in the order they would have run (end of range, then arming order), for
    /// another CPU to [`adopt`](Self::adopt), the timers waiting in the deferred list first
    /// (due already: they run, deferred, on the CPU that adopts them); a timer popped but not
    /// completed (only possible when called from a callback, which it must not be) is not
    /// among them.
    pub fn go_offline(&mut self, bc: &Mutex<Broadcast>) -> alloc::vec::Vec<Migrating<T>> {
        debug_assert!(!self.expiring, "a CPU goes offline outside its expiry");
        self.offline = true;
        if self.handed_over || matches!(self.service, Service::Broadcast(_)) {
            bc.lock().leave(self.cpu);
        }
        self.handed_over = false;
        self.broadcast_timer_ns = u64::MAX;
        if let Service::Local(old) = self.service {
            self.former_locals.remember(old);
        }
        if let Some(old) = self.local.take() {
            old.detach();
        }
        self.service = Service::None;
        self.next_event_ns = u64::MAX;
        let mut timers = alloc::vec::Vec::with_capacity(self.queue.deferred_len() + self.queue.len());
        while let Some(e) = self.queue.take_deferred() {
            let latest_ns = self.queue.latest(e.id).unwrap_or(e.deadline_ns);
            let _ = self.queue.complete(e.id, None);
            timers.push(Migrating { id: e.id, deadline_ns: e.deadline_ns, latest_ns, payload: e.payload });
        }
        while let Some(e) = self.queue.pop_expired(u64::MAX) {
            let latest_ns = self.queue.latest(e.id).unwrap_or(e.deadline_ns);
            let _ = self.queue.complete(e.id, None);
            timers.push(Migrating { id: e.id, deadline_ns: e.deadline_ns, latest_ns, payload: e.payload });
        }
        timers
    }

    /// Takes the pending timers of a CPU gone offline ([`go_offline`](Self::go_offline)) onto
    /// this CPU's queue (called on this CPU), each at its own deadline and in its order, and
    /// programs the device once for the earliest. The timers get new ids: returns each old id
    /// with its new one, in the order given, so that whoever holds a handle can follow it.
    /// Refused whole, with the timers handed back, when nothing serves this CPU (or it is
    /// offline itself), or in an expiry (a callback: the interrupt path) when the queue has no
    /// room for them all; outside an expiry the queue grows.
    pub fn adopt(
        &mut self,
        timers: alloc::vec::Vec<Migrating<T>>,
        now_ns: u64,
        bc: &Mutex<Broadcast>,
    ) -> Result<Moved, Refused<alloc::vec::Vec<Migrating<T>>>> {
        let error = if self.offline {
            Some(ArmError::CpuNotOnline(self.cpu))
        } else if self.service == Service::None {
            Some(ArmError::NoTickDevice(self.cpu))
        } else if self.expiring && self.queue.spare_capacity() < timers.len() {
            Some(ArmError::QueueFull { cpu: self.cpu, capacity: self.queue.capacity() })
        } else {
            None
        };
        if let Some(error) = error {
            return Err(Refused { error, payload: timers });
        }
        self.queue.reserve(timers.len());
        let ids = timers
            .into_iter()
            .map(|m| (m.id, self.queue.arm_range(m.deadline_ns, m.latest_ns - m.deadline_ns, m.payload)))
            .collect();
        self.reprogram(now_ns, bc);
        Ok(ids)
    }

    /// Whether this CPU went offline ([`go_offline`](Self::go_offline)).
    pub fn is_offline(&self) -> bool {
        self.offline
    }

    /// Gives the broadcast this CPU's deadline; a broadcast device that gives up on it is this
    /// CPU's to report (through [`take_failure`](Self::take_failure)), as its own device's is.
    fn hand_to_broadcast(&mut self, deadline_ns: u64, now_ns: u64, bc: &Mutex<Broadcast>) {
        let mut b = bc.lock();
        b.set_deadline(self.cpu, deadline_ns, now_ns);
        if let Some((device, error)) = b.take_failure() {
            self.failure = Some(DeviceFailure { device, error });
        }
    }

    /// The deadline this CPU needs next: its earliest timer's latest allowed time (tickless) or
    /// its next tick.
    #[inline]
    fn needed(&self) -> u64 {
        let needed = match self.mode {
            TickMode::Oneshot => self.queue.earliest().unwrap_or(u64::MAX),
            TickMode::Periodic { .. } => self.next_tick_ns,
        };
        needed.min(self.broadcast_timer_ns).max(self.hold_until_ns)
    }

    /// Makes this CPU's device (or the broadcast) interrupt at the deadline it needs.
    fn reprogram(&mut self, now_ns: u64, bc: &Mutex<Broadcast>) {
        if self.expiring || self.suspended {
            return;
        }
        self.program_for(self.needed(), now_ns, bc);
    }

    /// Makes this CPU's device (or the broadcast) interrupt at `needed` (what [`Self::needed`]
    /// says), if that changed.
    #[inline]
    fn program_for(&mut self, needed: u64, now_ns: u64, bc: &Mutex<Broadcast>) {
        if needed == self.next_event_ns && needed != u64::MAX {
            return;
        }
        if self.handed_over {
            // Asleep deeply with the local device stopped: the broadcast keeps the deadline.
            self.next_event_ns = needed;
            self.hand_to_broadcast(needed, now_ns, bc);
            return;
        }
        match self.service {
            Service::None => {}
            Service::Local(id) => {
                let Some(d) = &self.local else { return };
                if d.state() == State::Periodic || d.is_failed() {
                    return;
                }
                self.next_event_ns = needed;
                if needed == u64::MAX {
                    d.stop();
                } else if let Err(error) = d.program(needed, now_ns) {
                    d.mark_failed();
                    self.next_event_ns = u64::MAX;
                    self.failure = Some(DeviceFailure { device: id, error });
                }
            }
            Service::Broadcast(_) => {
                self.next_event_ns = needed;
                self.hand_to_broadcast(needed, now_ns, bc);
            }
        }
    }
}
