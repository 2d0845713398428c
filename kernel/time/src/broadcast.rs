//! Broadcast: one device, not local to any CPU, that keeps time for the CPUs that have no
//! local tick device (Linux's `tick-broadcast.c`, one-shot mode). Each such CPU hands over its
//! next deadline; the device is programmed for the earliest of them, and when it fires, every
//! CPU whose deadline has passed is woken (by an IPI, or directly if it took the interrupt)
//! and leaves the set until it hands over its next deadline. A device whose interrupt can move
//! ([`Features::DYNIRQ`](super::clockevents::Features::DYNIRQ)) is aimed at the CPU whose
//! deadline is next whenever that CPU changes (Linux's `tick_broadcast_set_affinity`), so the
//! CPU due first wakes without an IPI.
//!
//! Where no hardware can serve (no HPET, no PIT), the broadcast device is one CPU's own timer
//! ([`Features::HRTIMER`], Linux's `tick-broadcast-hrtimer.c`): programming it arms that timer
//! on the CPU that programs it, which becomes the broadcast's *server*. The rules are Linux's
//! (`bc_set_next`, `broadcast_needs_cpu`): every CPU that programs the device takes the timer
//! over (a CPU handing over a deadline earlier than the one waited for, the server in the
//! broadcast's own event); the server does not sleep deeply while the device waits for
//! something ([`needs_cpu`](Broadcast::needs_cpu)), so a CPU that took the timer over as it
//! went to sleep takes its own deadline back and idles shallow instead. The server's tick
//! programs its own device for the timer ([`timer_on`](Broadcast::timer_on)) and runs the
//! broadcast's event when it falls due.
//!
//! This state is shared between CPUs and lives behind its own lock; only CPUs served by the
//! broadcast (and the CPU taking its interrupt) touch it on their hot path.

use super::clockevents::{ClockEventDevice, CpuSet, DeviceId, Features, ProgramError, State};
use alloc::sync::Arc;

/// Most CPUs a broadcast set holds: one bit each in a [`CpuSet`].
pub use super::clockevents::MAX_CPUS;

/// The broadcast device (if any) and the CPUs waiting on it with their deadlines.
pub struct Broadcast {
    device: Option<(DeviceId, Arc<ClockEventDevice>)>,
    /// Each waiting CPU's deadline; meaningful only for CPUs in `waiting`.
    deadlines: [u64; MAX_CPUS],
    waiting: CpuSet,
    /// Broadcast interrupts handled, and wake-up IPIs they called for (due CPUs other than
    /// the one that took the interrupt).
    events: u64,
    wakeups_sent: u64,
    /// The device gave up programming: the registry must take it out.
    failure: Option<(DeviceId, ProgramError)>,
    /// Timekeeping suspended: the device stays shut down until `resume`.
    suspended: bool,
    /// The CPU the device's interrupt was last aimed at by [`Broadcast`] (`None`: not yet, or
    /// it cannot move), and how many times it was moved.
    target: Option<usize>,
    retargets: u64,
    /// With a [`Features::HRTIMER`] device: the CPU whose tick carries its timer (the last to
    /// program it; `None`: none yet), and how many times that changed.
    server: Option<usize>,
    server_moves: u64,
}

impl Default for Broadcast {
    fn default() -> Self {
        Self::new()
    }
}

impl Broadcast {
    /// No device and no waiting CPU; `const` so that it can sit in a `static` behind a lock.
    pub const fn new() -> Broadcast {
        Broadcast {
            device: None,
            deadlines: [u64::MAX; MAX_CPUS],
            waiting: CpuSet::EMPTY,
            events: 0,
            wakeups_sent: 0,
            failure: None,
            suspended: false,
            target: None,
            retargets: 0,
            server: None,
            server_moves: 0,
        }
    }

    /// The device serving the broadcast, if any.
    pub fn device(&self) -> Option<DeviceId> {
        self.device.as_ref().map(|(id, _)| *id)
    }

    /// Whether a working device serves the broadcast (a CPU may hand its deadline over).
    pub fn is_usable(&self) -> bool {
        self.device.as_ref().is_some_and(|(_, d)| !d.is_failed())
    }

    /// The CPUs that have handed over a deadline.
    pub fn waiting(&self) -> CpuSet {
        self.waiting
    }

    /// The deadline `cpu` handed over (`u64::MAX`: none).
    pub fn deadline(&self, cpu: usize) -> u64 {
        if self.waiting.contains(cpu) { self.deadlines[cpu] } else { u64::MAX }
    }

    /// Broadcast interrupts handled so far, and the wake-up IPIs they called for.
    pub fn stats(&self) -> (u64, u64) {
        (self.events, self.wakeups_sent)
    }

    /// The CPU the device's interrupt was last moved to (`None`: never moved, where the
    /// driver routed it), and how many times it was moved.
    pub fn target(&self) -> (Option<usize>, u64) {
        (self.target, self.retargets)
    }

    /// Whether the device is one CPU's own timer ([`Features::HRTIMER`]).
    pub fn is_hrtimer(&self) -> bool {
        self.device.as_ref().is_some_and(|(_, d)| d.spec.features.contains(Features::HRTIMER))
    }

    /// With a [`Features::HRTIMER`] device: the CPU serving it (the last that programmed it),
    /// and how many times the service moved from one CPU to another.
    pub fn server(&self) -> (Option<usize>, u64) {
        (self.server, self.server_moves)
    }

    /// Whether `cpu` must stay out of deep idle because it carries the broadcast's timer and
    /// the timer waits for something (Linux's `broadcast_needs_cpu`).
    pub fn needs_cpu(&self, cpu: usize) -> bool {
        self.timer_on(cpu) != u64::MAX
    }

    /// When the broadcast's timer on `cpu`'s tick falls due (`u64::MAX`: it carries none): the
    /// device's programmed event, if `cpu` serves a [`Features::HRTIMER`] device.
    pub fn timer_on(&self, cpu: usize) -> u64 {
        match &self.device {
            Some((_, d))
                if self.server == Some(cpu)
                    && !self.suspended
                    && d.spec.features.contains(Features::HRTIMER) =>
            {
                d.next_event_ns()
            }
            _ => u64::MAX,
        }
    }

    /// `cpu` goes offline: it leaves the set and stops serving ([`drop_server`](Self::drop_server)).
    pub fn cpu_gone(&mut self, cpu: usize) -> CpuSet {
        self.leave(cpu);
        self.drop_server(cpu)
    }

    /// `cpu` can no longer carry the broadcast's timer (gone offline, or its own device taken
    /// away): if it served, nobody does now: returns the waiting CPUs, each to be woken (each
    /// takes its deadline back, and the first to hand it over again takes the timer over).
    pub fn drop_server(&mut self, cpu: usize) -> CpuSet {
        if self.server != Some(cpu) {
            return CpuSet::EMPTY;
        }
        self.server = None;
        self.waiting
    }

    /// The platform aimed the device's interrupt at `cpu` itself (a CPU going offline moved it
    /// off itself), holding this state's lock as the layer's own moves do, so that no move of
    /// the layer falls between its check and its write: the layer's belief follows the
    /// hardware, and its next move is judged against where the interrupt really points (a
    /// belief left on the old CPU would skip the move back to it when it is due first).
    pub fn moved_to(&mut self, cpu: usize) {
        if self.device.is_some() {
            self.target = Some(cpu);
        }
    }

    /// Replaces the broadcast device (`None`: there is none any more). The old one is released;
    /// the new one is attached and programmed for the earliest waiting deadline, so no
    /// handed-over deadline is lost by the change. With no device left, returns the waiting
    /// CPUs: each must be woken now (a CPU asleep in deep idle takes its own device back; one
    /// served by broadcast runs what is due), since nothing else will wake them. So too for a
    /// new [`Features::HRTIMER`] device: no CPU serves it until one programs it (the first
    /// woken that hands its deadline over again).
    pub fn set_device(&mut self, device: Option<(DeviceId, Arc<ClockEventDevice>)>, now_ns: u64) -> CpuSet {
        if let Some((_, old)) = self.device.take() {
            old.detach();
        }
        if let Some((_, new)) = &device {
            new.attach(State::Oneshot, 0);
        }
        self.device = device;
        self.target = None;
        self.server = None;
        self.reprogram(now_ns);
        if self.device.is_none() || self.is_hrtimer() { self.waiting } else { CpuSet::EMPTY }
    }

    /// `cpu` waits for `deadline_ns` (`u64::MAX`: for nothing, it leaves the set). The device
    /// is programmed again only when the deadline is earlier than what it waits for (or, one
    /// CPU's timer, when no CPU serves it yet); called on `cpu`, which then serves a
    /// [`Features::HRTIMER`] device if it programmed it.
    pub fn set_deadline(&mut self, cpu: usize, deadline_ns: u64, now_ns: u64) {
        if deadline_ns == u64::MAX {
            self.leave(cpu);
            return;
        }
        self.waiting.insert(cpu);
        self.deadlines[cpu] = deadline_ns;
        if let Some((_, d)) = &self.device
            && (deadline_ns < d.next_event_ns() || (self.server.is_none() && self.is_hrtimer()))
        {
            self.program(deadline_ns, now_ns, cpu, Some(cpu));
        }
    }

    /// `cpu` no longer waits. The device keeps its programming: an interrupt with nobody due
    /// just programs the next deadline.
    pub fn leave(&mut self, cpu: usize) {
        self.waiting.remove(cpu);
    }

    /// The broadcast device interrupted CPU `here` at `now_ns`: returns the CPUs whose deadline
    /// has passed (they leave the set: each hands over its next deadline after running its
    /// timers; all but `here` need a wake-up IPI) and programs the device for the earliest
    /// deadline left (from `here`, which then serves a [`Features::HRTIMER`] device).
    pub fn event(&mut self, now_ns: u64, here: usize) -> CpuSet {
        self.events += 1;
        if let Some((_, d)) = &self.device
            && d.state() == State::Oneshot
        {
            d.forget_event();
        }
        let mut due = CpuSet::EMPTY;
        for cpu in self.waiting.iter() {
            if self.deadlines[cpu] <= now_ns {
                due.insert(cpu);
            }
        }
        self.waiting.remove_all(due);
        self.wakeups_sent += due.len() as u64 - u64::from(due.contains(here));
        self.reprogram_on(now_ns, Some(here));
        due
    }

    /// Suspends the broadcast: its device is shut down, the handed-over deadlines are kept.
    pub fn suspend(&mut self) {
        self.suspended = true;
        if let Some((_, d)) = &self.device {
            d.switch_state(State::Shutdown, 0).expect("any state shuts down");
        }
    }

    /// Resumes it: the device comes back in one-shot mode, programmed for the earliest
    /// deadline kept.
    pub fn resume(&mut self, now_ns: u64) {
        if !self.suspended {
            return;
        }
        self.suspended = false;
        if let Some((_, d)) = &self.device {
            d.attach(State::Oneshot, 0);
        }
        self.reprogram(now_ns);
    }

    /// Forgets what the device was programmed for and programs it again (after something
    /// programmed it behind the layer's back).
    pub fn resync(&mut self, now_ns: u64) {
        if let Some((_, d)) = &self.device {
            d.resync();
        }
        self.reprogram(now_ns);
    }

    /// The device gave up programming since the last call: the registry must take it out.
    pub fn take_failure(&mut self) -> Option<(DeviceId, ProgramError)> {
        self.failure.take()
    }

    /// The earliest deadline waited for and its CPU (the lowest-numbered on a tie).
    fn earliest(&self) -> Option<(u64, usize)> {
        self.waiting.iter().map(|c| (self.deadlines[c], c)).min()
    }

    fn reprogram(&mut self, now_ns: u64) {
        self.reprogram_on(now_ns, None);
    }

    /// Programs the device for the earliest deadline, from CPU `here` if known (it then serves
    /// a [`Features::HRTIMER`] device; unknown: the server stays).
    fn reprogram_on(&mut self, now_ns: u64, here: Option<usize>) {
        if self.suspended {
            return;
        }
        match (&self.device, self.earliest()) {
            (Some((_, d)), None) => d.stop(),
            (Some(_), Some((deadline, cpu))) => self.program(deadline, now_ns, cpu, here),
            (None, _) => {}
        }
    }

    /// Programs the device for `deadline_ns`, `cpu`'s, and aims it at `cpu` first if it is
    /// aimed elsewhere and can move (so the event lands where it is due); one CPU's timer is
    /// taken over by `here`, the CPU programming it, if known.
    fn program(&mut self, deadline_ns: u64, now_ns: u64, cpu: usize, here: Option<usize>) {
        let Some((id, d)) = &self.device else { return };
        if d.is_failed() || self.suspended {
            return;
        }
        if self.target != Some(cpu) && d.retarget(cpu) {
            self.target = Some(cpu);
            self.retargets += 1;
        }
        if let Err(e) = d.program(deadline_ns, now_ns) {
            d.mark_failed();
            self.failure = Some((*id, e));
            return;
        }
        if let Some(here) = here
            && d.spec.features.contains(Features::HRTIMER)
            && self.server != Some(here)
        {
            if self.server.is_some() {
                self.server_moves += 1;
            }
            self.server = Some(here);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clockevents::fake::{FakeDriver, spec};
    use crate::clockevents::{DeviceSpec, Features};
    use alloc::vec::Vec;

    fn global(driver: &'static FakeDriver) -> (DeviceId, Arc<ClockEventDevice>) {
        let spec: DeviceSpec = spec("global", 90, CpuSet::first(4), Features::empty());
        (DeviceId(7), Arc::new(ClockEventDevice::new(spec, driver)))
    }

    #[test]
    fn device_waits_for_the_earliest_sleeper_and_wakes_exactly_the_due_ones() {
        let driver = FakeDriver::leak();
        let mut b = Broadcast::new();
        b.set_device(Some(global(driver)), 0);
        b.set_deadline(1, 300_000, 0);
        b.set_deadline(2, 100_000, 0);
        b.set_deadline(3, 200_000, 0);
        assert_eq!(driver.last_next(), Some(10_000), "100 us at 100 MHz: the earliest");
        let due = b.event(250_000, 2);
        assert_eq!(due, CpuSet::from_bits(0b1100), "CPUs 2 and 3 are due, 1 is not");
        assert_eq!(b.waiting(), CpuSet::single(1));
        assert_eq!(driver.last_next(), Some(5_000), "re-armed for CPU 1's deadline");
        assert_eq!(b.stats(), (1, 1), "CPU 2 took the interrupt: one IPI, to CPU 3");
    }

    /// A broadcast on a DYNIRQ device of four CPUs, and its fake driver.
    fn dynirq_broadcast() -> (&'static FakeDriver, Broadcast) {
        let driver = FakeDriver::leak();
        let spec = spec("global", 90, CpuSet::first(4), Features::DYNIRQ);
        let mut b = Broadcast::new();
        b.set_device(Some((DeviceId(7), Arc::new(ClockEventDevice::new(spec, driver)))), 0);
        (driver, b)
    }

    /// The moves the driver was asked for, in order.
    fn retargets(driver: &FakeDriver) -> Vec<crate::clockevents::fake::Call> {
        use crate::clockevents::fake::Call;
        driver.calls().into_iter().filter(|c| matches!(c, Call::Retarget(_))).collect()
    }

    /// With DYNIRQ the device is moved to the CPU due first, before it is programmed, and only
    /// when that CPU changes; without it, never.
    #[test]
    fn a_dynirq_device_follows_the_earliest_sleeper_and_moves_only_when_it_changes() {
        use crate::clockevents::fake::Call;
        let (driver, mut b) = dynirq_broadcast();
        let moves = || retargets(driver);
        b.set_deadline(1, 300_000, 0);
        assert_eq!(driver.calls().last(), Some(&Call::Next(30_000)));
        assert_eq!(moves(), [Call::Retarget(1)], "aimed at the only sleeper");
        b.set_deadline(2, 100_000, 0);
        assert_eq!(moves(), [Call::Retarget(1), Call::Retarget(2)], "CPU 2 is due first now");
        let calls = driver.calls();
        assert_eq!(
            calls[calls.len() - 2..],
            [Call::Retarget(2), Call::Next(10_000)],
            "moved, then programmed"
        );
        b.set_deadline(3, 200_000, 0);
        assert_eq!(moves().len(), 2, "a later deadline moves nothing");
        assert_eq!(b.event(100_000, 2), CpuSet::single(2));
        assert_eq!(b.stats(), (1, 0), "CPU 2 took its own event: no IPI");
        assert_eq!(moves().last(), Some(&Call::Retarget(3)), "then aimed at CPU 3, due next");
        b.set_deadline(2, 250_000, 100_000);
        assert_eq!(b.event(200_000, 3), CpuSet::single(3));
        assert_eq!(moves().last(), Some(&Call::Retarget(2)));
        assert_eq!(b.target(), (Some(2), 4));

        let fixed = FakeDriver::leak();
        let mut b = Broadcast::new();
        b.set_device(Some(global(fixed)), 0);
        b.set_deadline(1, 300_000, 0);
        b.set_deadline(2, 100_000, 0);
        assert!(!fixed.calls().iter().any(|c| matches!(c, Call::Retarget(_))), "no DYNIRQ: never moved");
        assert_eq!(b.target(), (None, 0));
    }

    /// One CPU's timer (bc_hrtimer) is served by the CPU that programmed it last, as Linux's
    /// `bc_set_next`: the first to hand a deadline over, then one handing over an earlier
    /// deadline, or the CPU running its event; a later deadline moves nothing. The server
    /// needs to stay awake only while the timer waits for something.
    #[test]
    fn one_cpus_timer_is_served_by_the_cpu_that_programmed_it_last() {
        let spec = crate::clockevents::hrtimer_broadcast_spec(CpuSet::first(4));
        let device = Arc::new(ClockEventDevice::new(spec, &crate::clockevents::HrtimerBroadcast));
        let mut b = Broadcast::new();
        assert_eq!(b.set_device(Some((DeviceId(3), device)), 0), CpuSet::EMPTY, "nobody waits yet");
        assert!(b.is_hrtimer());
        assert_eq!(b.server(), (None, 0));
        b.set_deadline(1, 300_000, 0);
        assert_eq!(b.server(), (Some(1), 0), "the first to hand over serves");
        assert!(b.needs_cpu(1) && !b.needs_cpu(2));
        assert_eq!(b.timer_on(1), 300_000);
        b.set_deadline(2, 400_000, 0);
        assert_eq!(b.server().0, Some(1), "a later deadline moves nothing");
        b.set_deadline(3, 100_000, 0);
        assert_eq!(b.server(), (Some(3), 1), "an earlier one takes the timer over");
        assert_eq!((b.timer_on(3), b.timer_on(1)), (100_000, u64::MAX));
        b.leave(3);
        assert_eq!(b.event(100_000, 0), CpuSet::EMPTY, "nobody due at CPU 3's old deadline");
        assert_eq!(b.server(), (Some(0), 2), "the CPU running the event programmed it again");
        assert_eq!(b.timer_on(0), 300_000, "for CPU 1's deadline");
        assert_eq!(b.event(300_000, 0), CpuSet::single(1));
        assert_eq!(b.event(400_000, 0), CpuSet::single(2));
        assert!(!b.needs_cpu(0), "nothing waited for: the server may sleep deeply");
        b.set_deadline(1, 500_000, 400_000);
        assert_eq!(b.server().0, Some(1));
        assert_eq!(b.cpu_gone(2), CpuSet::EMPTY, "a CPU not serving goes without a word");
        b.set_deadline(2, 600_000, 400_000);
        assert_eq!(b.cpu_gone(1), CpuSet::single(2), "the server gone: its sleepers are woken");
        assert_eq!(b.server().0, None);
        b.set_deadline(2, 600_000, 450_000);
        assert_eq!(b.server().0, Some(2), "the first to hand over again serves");
    }

    /// A CPU going offline moves the interrupt aimed at it to another CPU behind the layer's
    /// own moves: told so, the layer moves it back when that CPU is due first again (a belief
    /// left on the old CPU skipped the move, the hardware staying aimed elsewhere).
    #[test]
    fn an_interrupt_the_platform_moved_is_moved_back_when_its_old_cpu_is_due_first() {
        use crate::clockevents::fake::Call;
        let (driver, mut b) = dynirq_broadcast();
        let moves = || retargets(driver);
        b.set_deadline(2, 100_000, 0);
        assert_eq!(moves(), [Call::Retarget(2)]);
        // CPU 2 goes offline: it leaves, and the platform aims the interrupt at CPU 0.
        b.leave(2);
        b.moved_to(0);
        let believed = b.target();
        // Back online, CPU 2 is due first again: the interrupt must come back to it.
        b.set_deadline(2, 50_000, 10_000);
        assert_eq!(moves(), [Call::Retarget(2), Call::Retarget(2)], "moved back to CPU 2, due first");
        assert_eq!(believed, (Some(0), 1), "the layer believed the hardware");
        assert_eq!(b.target(), (Some(2), 2));
        // Without a device there is nothing to believe.
        let mut none = Broadcast::new();
        none.moved_to(1);
        assert_eq!(none.target(), (None, 0));
    }

    #[test]
    fn a_later_deadline_does_not_reprogram_and_leaving_keeps_the_device_armed() {
        let driver = FakeDriver::leak();
        let mut b = Broadcast::new();
        b.set_device(Some(global(driver)), 0);
        b.set_deadline(0, 50_000, 0);
        let calls = driver.calls().len();
        b.set_deadline(1, 80_000, 0);
        assert_eq!(driver.calls().len(), calls, "a later deadline needs no programming");
        b.leave(0);
        assert_eq!(b.event(50_000, 0), CpuSet::EMPTY, "nobody due: CPU 0 left");
        assert_eq!(driver.last_next(), Some(3_000), "programmed for CPU 1 from the interrupt");
    }

    #[test]
    fn deadlines_survive_a_change_of_device() {
        let (old, new) = (FakeDriver::leak(), FakeDriver::leak());
        let mut b = Broadcast::new();
        b.set_device(Some(global(old)), 0);
        b.set_deadline(2, 40_000, 0);
        assert_eq!(b.set_device(None, 10_000), CpuSet::single(2), "the sleeper must be woken");
        assert_eq!(b.deadline(2), 40_000, "kept while no device serves");
        b.set_device(Some(global(new)), 20_000);
        assert_eq!(new.last_next(), Some(2_000), "the new device is armed for the kept deadline");
    }

    #[test]
    fn a_device_that_gives_up_is_reported_once() {
        let driver = FakeDriver::leak();
        *driver.passes_below_ticks.lock() = u64::MAX;
        let mut b = Broadcast::new();
        b.set_device(Some(global(driver)), 0);
        b.set_deadline(0, 10_000, 0);
        assert!(matches!(b.take_failure(), Some((DeviceId(7), ProgramError::GaveUp { .. }))));
        assert_eq!(b.take_failure(), None);
        assert_eq!(b.deadline(0), 10_000, "the deadline waits for the next device");
    }
}
