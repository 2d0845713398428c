//! The async sleep on this kernel's timers: `kernel_time::sleep::Sleep` over [`KernelTimers`],
//! whose timer is a closure [`Timer`] on the CPU that first polls it. Usable from any
//! executor: the timer's callback wakes the task's waker from the timer's CPU.

use super::clockevents::{Timer, now};
use crate::arch::x86_64::smp::percpu;
use alloc::sync::Arc;
use core::time::Duration;
use kernel_time::instant::Instant;
use kernel_time::sleep::{Sleep, SleepTimers, Wake};
use kernel_time::tick::ArmError;

/// This kernel's timers as a sleep sees them.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelTimers;

impl SleepTimers for KernelTimers {
    type Handle = Timer;
    type Error = ArmError;
    fn now(&self) -> Instant {
        now()
    }
    fn arm(&self, deadline: Instant, wake: Arc<Wake>) -> Result<Timer, ArmError> {
        Timer::at(percpu::this_cpu().index, deadline, move |_| wake.fire())
    }
    fn cancel(&self, handle: Timer) {
        let _ = handle.cancel();
    }
}

static TIMERS: KernelTimers = KernelTimers;

/// A future that completes at or after `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep<'static, KernelTimers> {
    Sleep::until(&TIMERS, deadline)
}

/// A future that completes at least `span` from now.
pub fn sleep_for(span: Duration) -> Sleep<'static, KernelTimers> {
    Sleep::for_duration(&TIMERS, span)
}
