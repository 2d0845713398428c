//! The shared side of clock events: the device registry and the broadcast, each behind its own
//! lock, and the delivery of the registry's decisions. The registry's lock is taken only on
//! slow paths (registration, a CPU coming online, a device taken out), never in a timer
//! interrupt (a misrouted event finds its device's owner in a lock-free table); the broadcast's
//! only by CPUs the broadcast serves and by the CPU taking its interrupt.
//!
//! Lock order: registry, then broadcast or a CPU's assignment slot. A CPU's assignment is
//! carried out by that CPU: left in its slot (the newest replacing an older) and noted in its
//! inbox while the registry's lock is held, then the wake-up IPI.

use super::cpu;
use crate::arch::x86_64::lapic as apic;
use crate::arch::x86_64::smp::percpu;
use crate::time::clocksource::now_ns;
use core::sync::atomic::{AtomicUsize, Ordering};
use kernel_time::broadcast::Broadcast;
use kernel_time::clockevents::{DeviceSpec, EventDriver};
use kernel_time::tick::deliver::DeliveryContext;
use kernel_time::tick::{Assignment, Changes, DeviceFailure, DeviceId, Registry};
use spin::Mutex;
use x86_64::instructions::interrupts::without_interrupts;

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
static BROADCAST: Mutex<Broadcast> = Mutex::new(Broadcast::new());
/// The broadcast device's id (`usize::MAX`: none), read by every device interrupt.
static BROADCAST_DEVICE: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Each device's owner (the CPU it serves as a local device; `usize::MAX`: none), for the
/// devices numbered below [`OWNED_DEVICES`], and each CPU's local device: kept by the delivery
/// of the registry's decisions (registry held), read lock-free by a misrouted event's handler.
const OWNED_DEVICES: usize = 1024;
static OWNER: [AtomicUsize; OWNED_DEVICES] = [const { AtomicUsize::new(usize::MAX) }; OWNED_DEVICES];
static LOCAL_OF: [AtomicUsize; percpu::MAX_CPUS] = [const { AtomicUsize::new(usize::MAX) }; percpu::MAX_CPUS];

/// Records `a`'s local device as owned by its CPU (and the CPU's former one as no longer).
fn record_owner(a: &Assignment) {
    let Some(local_of) = LOCAL_OF.get(a.cpu) else { return };
    let former = local_of.load(Ordering::Relaxed);
    if let Some(owner) = OWNER.get(former)
        && owner.load(Ordering::Relaxed) == a.cpu
    {
        owner.store(usize::MAX, Ordering::Release);
    }
    let now = match a.service {
        kernel_time::tick::Service::Local(id) => id.0,
        _ => usize::MAX,
    };
    local_of.store(now, Ordering::Relaxed);
    if let Some(owner) = OWNER.get(now) {
        owner.store(a.cpu, Ordering::Release);
    }
}

/// Vector of the broadcast wake-up IPI (a system vector, above the allocatable range).
pub const WAKE_VECTOR: u8 = 0xf1;

/// The broadcast state, for the CPU holding its tick's guard (which proves interrupts are off:
/// the broadcast's interrupt takes this lock too, so holding it with interrupts on could
/// deadlock against that interrupt on the same CPU).
pub(super) fn broadcast(_proof: &cpu::TickGuard) -> &'static Mutex<Broadcast> {
    &BROADCAST
}

/// [`broadcast`] for code holding a CPU's tick's lock itself (`cpu::ThisCpu`'s expiry, which
/// skips the guard's wrapper on the interrupt path): interrupts are off as well.
#[inline]
pub(super) fn broadcast_under(_proof: &cpu::TickLock<'_>) -> &'static Mutex<Broadcast> {
    &BROADCAST
}

/// Runs `f` on the broadcast state with interrupts off (see [`broadcast`]).
pub(super) fn with_broadcast<R>(f: impl FnOnce(&mut Broadcast) -> R) -> R {
    without_interrupts(|| f(&mut BROADCAST.lock()))
}

pub(super) fn is_broadcast_device(device: DeviceId) -> bool {
    BROADCAST_DEVICE.load(Ordering::Relaxed) == device.0
}

pub(super) fn init() {
    without_interrupts(|| *REGISTRY.lock() = Some(Registry::new()));
}

/// Runs `f` on the registry (interrupts off).
pub fn with_registry<R>(f: impl FnOnce(&mut Registry) -> R) -> Option<R> {
    without_interrupts(|| REGISTRY.lock().as_mut().map(f))
}

/// Takes the broadcast device out if it gave up programming (a CPU's deadline handed to it).
pub(super) fn report_broadcast_failure() {
    let failure = with_broadcast(|b| b.take_failure());
    if let Some((d, e)) = failure {
        take_out(d, &alloc::format!("{e}"));
    }
}

pub(super) fn send_wakeup(cpu: usize) {
    crate::arch::x86_64::trace::wakeup_ipi(cpu);
    if let Some(c) = percpu::cpu(cpu) {
        apic::send_ipi(c.apic_id, WAKE_VECTOR);
    }
}

/// A device's event reached a CPU it does not serve: its owner lost that event, so it is
/// woken to look at its queue and program its device again from its own CPU (FreeBSD re-arms
/// a per-CPU timer that fired on the wrong CPU).
pub(super) fn wake_owner_of(device: DeviceId) {
    let owner = match OWNER.get(device.0) {
        // Lock-free: no lock another CPU holds on this interrupt path.
        Some(owner) => Some(owner.load(Ordering::Acquire)).filter(|&c| c != usize::MAX),
        // A device numbered past the table (many re-registrations): the registry's answer.
        None => with_registry(|r| r.owner_of(device)).flatten(),
    };
    if let Some(owner) = owner {
        send_wakeup(owner);
    }
}

/// Registers a device whose interrupts reach the time layer through `attach(its id)`;
/// `attach` runs first, because the device's CPU may program it as soon as it is assigned.
pub fn register(
    spec: DeviceSpec,
    driver: &'static dyn EventDriver,
    attach: impl FnOnce(DeviceId),
) -> Option<DeviceId> {
    without_interrupts(|| {
        let mut guard = REGISTRY.lock();
        let registry = guard.as_mut()?;
        attach(registry.next_device_id());
        let (id, changes) = registry.register(spec, driver);
        deliver(registry, changes);
        Some(id)
    })
}

/// Brings the calling CPU into the registry's selection (its tick exists).
pub(super) fn cpu_online(cpu: usize) {
    without_interrupts(|| {
        if let Some(registry) = REGISTRY.lock().as_mut() {
            let changes = registry.cpu_online(cpu);
            deliver(registry, changes);
        }
    });
}

/// Takes the calling CPU out of the registry's selection as it goes offline
/// (`Registry::cpu_offline`) and delivers what that changed; returns the devices it released
/// (its per-CPU devices, retired: a comparator may be registered again for another CPU), with
/// their specs. Nobody owns them any more (a late event of theirs wakes nobody).
pub(super) fn cpu_offline(cpu: usize) -> alloc::vec::Vec<(DeviceId, DeviceSpec)> {
    without_interrupts(|| {
        let mut guard = REGISTRY.lock();
        let Some(registry) = guard.as_mut() else { return alloc::vec::Vec::new() };
        let (changes, released) = registry.cpu_offline(cpu);
        for id in &released {
            if let Some(owner) = OWNER.get(id.0) {
                owner.store(usize::MAX, Ordering::Release);
            }
        }
        if let Some(local_of) = LOCAL_OF.get(cpu) {
            local_of.store(usize::MAX, Ordering::Relaxed);
        }
        let specs = released.iter().map(|&id| (id, registry.device(id).spec.clone())).collect();
        deliver(registry, changes);
        specs
    })
}

/// Takes a device out of service for good; the CPUs it served move to the next best device
/// with their pending events.
pub fn take_out(device: DeviceId, reason: &str) {
    crate::arch::x86_64::trace::take_out(device.0);
    super::failures::count_take_out();
    without_interrupts(|| {
        if let Some(registry) = REGISTRY.lock().as_mut() {
            let changes = registry.take_out(device, reason);
            deliver(registry, changes);
        }
    });
}

/// This CPU carrying out the registry's decisions (the crate's `deliver`), with the registry
/// held: the broadcast under its lock, this CPU's assignment at once, another CPU's left in its
/// per-CPU slot (the latest replacing an older one) and its inbox told.
struct Delivery<'a> {
    registry: &'a mut Registry,
    here: usize,
}

impl DeliveryContext for Delivery<'_> {
    fn now_ns(&self) -> u64 {
        now_ns()
    }
    fn broadcast_device_changing(&mut self, device: Option<DeviceId>) {
        BROADCAST_DEVICE.store(device.map_or(usize::MAX, |id| id.0), Ordering::Relaxed);
        crate::arch::x86_64::trace::broadcast_device(device.map(|id| id.0));
    }
    fn with_broadcast<R>(&mut self, f: impl FnOnce(&mut Broadcast) -> R) -> R {
        with_broadcast(f)
    }
    fn wake(&mut self, cpu: usize) {
        send_wakeup(cpu);
    }
    fn assign(&mut self, a: Assignment) -> Option<DeviceFailure> {
        record_owner(&a);
        crate::arch::x86_64::trace::tick_device(a.cpu, || match a.service {
            kernel_time::tick::Service::Local(d) => (Some(d.0), None),
            kernel_time::tick::Service::Broadcast(b) => (None, Some(b.0)),
            kernel_time::tick::Service::None => (None, None),
        });
        if a.cpu == self.here {
            return apply(a);
        }
        let target = a.cpu;
        if !cpu::send_assignment(a) {
            log::error!("CPU {target} is gone: its tick assignment is lost");
        }
        None
    }
    fn take_out(&mut self, device: DeviceId, reason: &str) -> Changes {
        self.registry.take_out(device, reason)
    }
}

/// Carries a decision out on this CPU (the registry held).
fn deliver(registry: &mut Registry, changes: Changes) {
    kernel_time::tick::deliver::deliver(&mut Delivery { registry, here: percpu::this_cpu().index }, changes);
}

/// Applies an assignment on the calling CPU (its own); returns a device that failed meanwhile.
pub(super) fn apply(a: Assignment) -> Option<DeviceFailure> {
    let (cpu, local) = (a.cpu, matches!(a.service, kernel_time::tick::Service::Local(_)));
    let failure = cpu::with_tick_and_broadcast(|t, bc| {
        t.apply(a, now_ns(), bc);
        t.take_failure()
    })
    .flatten();
    if !local {
        // Without a device of its own it cannot carry the broadcast's timer (bc_hrtimer): the
        // CPUs waiting on it are woken, and the first to hand over again takes it over.
        for waiting in with_broadcast(|b| b.drop_server(cpu)).iter() {
            send_wakeup(waiting);
        }
    }
    failure
}
