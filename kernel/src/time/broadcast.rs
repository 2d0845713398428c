//! Broadcast: one device, not local to any CPU, that keeps time for the CPUs that have no local
//! tick device. Each such CPU hands over its next deadline; the device is programmed for the
//! earliest of them, and when it fires, the CPU that takes its interrupt runs its own expired
//! timers and wakes every other CPU whose deadline has passed with an IPI (Linux's
//! `tick-broadcast.c` one-shot mode).

use super::clockevents::CpuSet;

/// Which CPUs a broadcast device serves and what each of them waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BroadcastSet {
    pub cpus: CpuSet,
}

impl BroadcastSet {
    /// The CPUs whose deadline (`next_event(cpu)`) has been reached at `now_ns`.
    pub fn due(self, now_ns: u64, next_event: impl Fn(usize) -> u64) -> CpuSet {
        let mut due = CpuSet::EMPTY;
        for cpu in self.cpus.iter().filter(|&c| next_event(c) <= now_ns) {
            due.insert(cpu);
        }
        due
    }

    /// The earliest deadline among the served CPUs (`u64::MAX` when none waits).
    pub fn earliest(self, next_event: impl Fn(usize) -> u64) -> u64 {
        self.cpus.iter().map(next_event).min().unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cpus_whose_deadline_passed_are_due() {
        let set = BroadcastSet { cpus: CpuSet(0b1011) };
        let next = |c: usize| [100, 300, 50, 200][c];
        assert_eq!(set.due(150, next), CpuSet(0b0001), "CPU 2 is not served; CPU 1 and 3 are not due");
        assert_eq!(set.due(300, next), CpuSet(0b1011));
        assert_eq!(set.earliest(next), 100);
    }

    #[test]
    fn nobody_waiting_means_no_deadline() {
        let set = BroadcastSet { cpus: CpuSet(0b11) };
        assert_eq!(set.earliest(|_| u64::MAX), u64::MAX);
        assert_eq!(set.due(u64::MAX - 1, |_| u64::MAX), CpuSet::EMPTY);
        assert_eq!(BroadcastSet { cpus: CpuSet::EMPTY }.earliest(|_| 5), u64::MAX);
    }
}
