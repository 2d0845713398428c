//! The High Precision Event Timer (IA-PC HPET Specification 1.0a): the block mapped and accessed
//! (volatile), the checks before use, the main counter (the `hpet` clocksource reads it),
//! comparator programming, stop/reset/re-enable. The register layout, the registers' bits and
//! the capability checks are the crate `hpet-regs` (`kernel/hpet/`); this is their MMIO half.
//!
//! The driver describes and drives the hardware; which comparator serves which CPU, and how its
//! interrupt is delivered, is decided by the clockevents layer and the routing code.

use super::{mmio, tsc};
use core::fmt;
use core::mem::{offset_of, size_of};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use hpet_regs::{CapabilityError, GsiList, check_capabilities, layout};
use volatile::access::ReadOnly;
use volatile::{VolatileFieldAccess, VolatilePtr};

/// The main counter stops or runs again (a suspend, a test writing it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterChange {
    /// About to stop: told before the write.
    Stopping,
    /// Runs again (from whatever value it was given): told after the write.
    Started,
}

static COUNTER_LISTENER: spin::Once<fn(&Hpet, CounterChange)> = spin::Once::new();

/// Hands the HPET the function it tells its main counter's stops and starts to (the
/// clocksource's, which keeps time on the TSC meanwhile). The first call wins.
pub fn set_counter_listener(listener: fn(&Hpet, CounterChange)) {
    COUNTER_LISTENER.call_once(|| listener);
}

fn tell(hpet: &Hpet, change: CounterChange) {
    if let Some(listener) = COUNTER_LISTENER.get() {
        listener(hpet, change);
    }
}

/// The register types the driver's methods take and return.
pub use hpet_regs::{Capabilities, ComparatorConfig, GeneralConfig};

/// General registers, spec section 2.3.1 table 2 (offsets 0x000..0x100), as volatile fields.
#[repr(C)]
#[derive(VolatileFieldAccess)]
pub struct GeneralRegisters {
    #[access(ReadOnly)]
    capabilities: u64, // 0x000 General Capabilities and ID
    _reserved_008: u64,
    configuration: u64, // 0x010 General Configuration
    _reserved_018: u64,
    interrupt_status: u64, // 0x020 General Interrupt Status (write 1 to clear)
    _reserved_028: [u64; 25],
    main_counter: u64, // 0x0f0 Main Counter Value
    _reserved_0f8: u64,
}

/// One comparator's registers, at 0x100 + 0x20 * N (spec table 2).
#[repr(C)]
#[derive(VolatileFieldAccess)]
pub struct ComparatorRegisters {
    config: u64,     // Tn_CONF_CAP: configuration and capabilities
    comparator: u64, // Tn_COMPARATOR_VAL
    fsb_route: u64,  // Tn_FSB_INT_ROUTE: [31:0] message data, [63:32] message address
    _reserved: u64,
}

/// The volatile structs lie where `hpet-regs`'s layout says: a slip fails to build.
const _: () = {
    assert!(offset_of!(GeneralRegisters, capabilities) == layout::GENERAL_CAPABILITIES_ID);
    assert!(offset_of!(GeneralRegisters, configuration) == layout::GENERAL_CONFIGURATION);
    assert!(offset_of!(GeneralRegisters, interrupt_status) == layout::GENERAL_INTERRUPT_STATUS);
    assert!(offset_of!(GeneralRegisters, main_counter) == layout::MAIN_COUNTER_VALUE);
    assert!(size_of::<GeneralRegisters>() == layout::COMPARATORS_OFFSET);
    assert!(offset_of!(ComparatorRegisters, config) == layout::TIMER_CONFIG_CAPABILITY);
    assert!(offset_of!(ComparatorRegisters, comparator) == layout::TIMER_COMPARATOR_VALUE);
    assert!(offset_of!(ComparatorRegisters, fsb_route) == layout::TIMER_FSB_INTERRUPT_ROUTE);
    assert!(size_of::<ComparatorRegisters>() == layout::COMPARATOR_STRIDE);
};

/// Why the HPET cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpetError {
    Mapping(mmio::MmioError),
    /// The capabilities register fails the specification's checks.
    Capabilities(CapabilityError),
    /// The main counter did not advance across a TSC-timed wait.
    CounterNotCounting {
        value: u64,
        waited_us: u64,
    },
}

impl From<CapabilityError> for HpetError {
    fn from(e: CapabilityError) -> HpetError {
        HpetError::Capabilities(e)
    }
}

impl fmt::Display for HpetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HpetError::Mapping(e) => write!(f, "cannot map its registers: {e}"),
            HpetError::Capabilities(e) => write!(f, "{e}"),
            HpetError::CounterNotCounting { value, waited_us } => {
                write!(f, "its main counter stayed at {value:#x} for {waited_us} us: it does not count")
            }
        }
    }
}

/// What the firmware left configured, saved at probe time and cleared (pitfalls: boot-time
/// ENABLE/LEGACY/LEVEL/FSB bits must not leak into our configuration).
#[derive(Debug, Clone, Copy)]
pub struct BootState {
    pub config: GeneralConfig,
    pub comparators_enabled: u32,
}

/// What `suspend` saved.
#[derive(Debug, Clone)]
pub struct SavedState {
    pub config: GeneralConfig,
    pub comparators: alloc::vec::Vec<(ComparatorConfig, u64)>,
}

/// A probed, checked, running HPET.
pub struct Hpet {
    phys: u64,
    regs: VolatilePtr<'static, GeneralRegisters>,
    caps: Capabilities,
    boot_state: BootState,
    /// Register accesses made through this driver: each is a VM exit under virtualisation.
    mmio_accesses: AtomicU64,
}

// SAFETY: the registers are device memory, reachable from every CPU; the driver's methods are
// single register accesses whose combination the callers serialise (comparators are owned by
// one clock event device each, the general registers are written only at bring-up).
unsafe impl Sync for Hpet {}
// SAFETY: as above; the mapping is global, not tied to a CPU.
unsafe impl Send for Hpet {}

impl Hpet {
    /// Maps the block at `phys`, checks it, saves and clears the firmware's configuration,
    /// restarts the counter from 0 and verifies that it counts. With `counter_stopped` (fault
    /// injection, `hpet_counter_stopped`) the counter is left halted, as a counter that does not
    /// count would be, so that the check must reject it.
    pub fn probe(phys: u64, counter_stopped: bool) -> Result<Hpet, HpetError> {
        let region = mmio::map(phys, layout::REGISTER_SPACE as u64).map_err(HpetError::Mapping)?;
        let base =
            NonNull::new(region.virt.as_mut_ptr::<GeneralRegisters>()).expect("MMIO window is not null");
        // SAFETY: `region` maps layout::REGISTER_SPACE bytes of device memory uncached, for the life of
        // the kernel, and GeneralRegisters covers its first 0x100 bytes.
        let regs = unsafe { VolatilePtr::new(base) };
        let mut hpet = Hpet {
            phys,
            regs,
            caps: Capabilities(0),
            boot_state: BootState { config: GeneralConfig::empty(), comparators_enabled: 0 },
            mmio_accesses: AtomicU64::new(0),
        };
        hpet.caps = Capabilities(hpet.regs.capabilities().read());
        check_capabilities(hpet.caps)?;

        let config = GeneralConfig::from_bits_retain(hpet.regs.configuration().read());
        let mut enabled = 0;
        for n in 0..hpet.caps.comparators() {
            let c = hpet.comparator_config(n);
            if c.contains(ComparatorConfig::INTERRUPT_ENABLE) {
                enabled |= 1 << n;
            }
            let cleared = c
                - ComparatorConfig::INTERRUPT_ENABLE
                - ComparatorConfig::LEVEL_TRIGGERED
                - ComparatorConfig::FSB_ENABLE
                - ComparatorConfig::PERIODIC;
            hpet.set_comparator_config(n, cleared);
        }
        hpet.boot_state = BootState { config, comparators_enabled: enabled };
        hpet.stop();
        hpet.reset_counter();
        hpet.regs.interrupt_status().write(u64::MAX);
        if counter_stopped {
            log::warn!("hpet_counter_stopped: the HPET's main counter is left halted");
        } else {
            hpet.start();
        }
        hpet.check_counting()?;
        Ok(hpet)
    }

    /// Reads the counter across a 100 us wait timed by the TSC (bounded: no HPET-timed wait
    /// can be trusted yet). Spec-conformant counters run at >= 10 MHz: >= 1000 ticks expected,
    /// any advance is accepted, none is a dead counter (pitfalls: Baytrail, AMD SB700).
    fn check_counting(&self) -> Result<(), HpetError> {
        const WAIT_US: u64 = 100;
        let before = self.counter();
        let start = tsc::read();
        let wait_cycles = (tsc::frequency_hz() / 1_000_000).saturating_mul(WAIT_US);
        while tsc::read() - start < wait_cycles {
            core::hint::spin_loop();
        }
        if self.counter() == before {
            self.stop();
            return Err(HpetError::CounterNotCounting { value: before, waited_us: WAIT_US });
        }
        Ok(())
    }

    pub fn phys(&self) -> u64 {
        self.phys
    }
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }
    pub fn boot_state(&self) -> BootState {
        self.boot_state
    }
    pub fn period_fs(&self) -> u32 {
        self.caps.period_fs()
    }
    pub fn frequency_hz(&self) -> u64 {
        self.caps.frequency_hz()
    }
    pub fn comparators(&self) -> usize {
        self.caps.comparators()
    }
    pub fn mmio_accesses(&self) -> u64 {
        self.mmio_accesses.load(Ordering::Relaxed)
    }
    fn counted(&self) {
        self.mmio_accesses.fetch_add(1, Ordering::Relaxed);
    }

    fn comparator_regs(&self, n: usize) -> VolatilePtr<'static, ComparatorRegisters> {
        assert!(n < self.caps.comparators(), "HPET comparator {n} does not exist");
        let base = self.regs.as_raw_ptr().as_ptr() as *mut u8;
        // SAFETY: comparator n < NUM_TIM_CAP + 1 <= 32 lies at 0x100 + 0x20 n, inside the
        // layout::REGISTER_SPACE mapped by `probe`.
        unsafe {
            let p = base.add(layout::comparator_offset(n)) as *mut ComparatorRegisters;
            VolatilePtr::new(NonNull::new_unchecked(p))
        }
    }

    /// The main counter (the upper half reads 0 on a 32-bit counter).
    pub fn counter(&self) -> u64 {
        self.counted();
        self.regs.main_counter().read()
    }

    /// Where the main counter register is mapped, for the clocksource's read (not counted in
    /// [`Hpet::mmio_accesses`]: a shared count would be a contended write on every clock read,
    /// and those figures are the clock event devices' programming cost, not the clock's).
    pub fn main_counter_ptr(&self) -> *const u64 {
        self.regs.main_counter().as_raw_ptr().as_ptr()
    }

    pub fn config(&self) -> GeneralConfig {
        self.counted();
        GeneralConfig::from_bits_retain(self.regs.configuration().read())
    }

    /// Writes the general configuration; the counter's listener ([`set_counter_listener`]: the
    /// clocksource) is told before the main counter stops and after it starts (it keeps time on
    /// the TSC meanwhile, if the HPET is it).
    fn set_config(&self, config: GeneralConfig) {
        let running =
            GeneralConfig::from_bits_retain(self.regs.configuration().read()).contains(GeneralConfig::ENABLE);
        let enable = config.contains(GeneralConfig::ENABLE);
        if running && !enable {
            tell(self, CounterChange::Stopping);
        }
        self.counted();
        self.regs.configuration().write(config.bits());
        if !running && enable {
            tell(self, CounterChange::Started);
        }
    }

    /// Stops the main counter (comparators stop matching).
    pub fn stop(&self) {
        self.set_config(self.config() - GeneralConfig::ENABLE);
    }

    /// Starts the main counter.
    pub fn start(&self) {
        self.set_config(self.config() | GeneralConfig::ENABLE);
    }

    /// Sets the stopped counter to 0 (spec 2.3.7: write only while halted).
    pub fn reset_counter(&self) {
        self.set_counter(0);
    }

    /// Sets the stopped counter to `value` (spec 2.3.7: write only while halted); tests use it
    /// to bring a wrap close.
    pub fn set_counter(&self, value: u64) {
        debug_assert!(!self.config().contains(GeneralConfig::ENABLE));
        self.counted();
        self.regs.main_counter().write(value);
    }

    /// Stops the block and saves what resuming needs (the seed's suspend path): the general
    /// configuration and every comparator's configuration and value.
    pub fn suspend(&self) -> SavedState {
        let config = self.config();
        self.stop();
        let comparators =
            (0..self.comparators()).map(|n| (self.comparator_config(n), self.comparator(n))).collect();
        SavedState { config, comparators }
    }

    /// Restores a suspended block: comparators first (their interrupts must not fire on stale
    /// values), then the general configuration, which restarts the counter if it ran before.
    pub fn resume(&self, saved: &SavedState) {
        for (n, &(config, value)) in saved.comparators.iter().enumerate() {
            self.set_comparator_config(n, config | ComparatorConfig::VALUE_SET);
            self.set_comparator(n, value);
        }
        self.set_config(saved.config);
    }

    pub fn set_legacy_route(&self, on: bool) {
        let c = self.config();
        self.set_config(if on { c | GeneralConfig::LEGACY_ROUTE } else { c - GeneralConfig::LEGACY_ROUTE });
    }

    /// Interrupt status bits (level-triggered comparators only).
    pub fn interrupt_status(&self) -> u32 {
        self.counted();
        self.regs.interrupt_status().read() as u32
    }

    /// Clears comparator `n`'s status bit, releasing its level-triggered line.
    pub fn clear_interrupt(&self, n: usize) {
        self.counted();
        self.regs.interrupt_status().write(1 << n);
    }

    pub fn comparator_config(&self, n: usize) -> ComparatorConfig {
        self.counted();
        ComparatorConfig::from_bits_retain(self.comparator_regs(n).config().read())
    }

    pub fn set_comparator_config(&self, n: usize, config: ComparatorConfig) {
        self.counted();
        self.comparator_regs(n).config().write(config.bits());
    }

    pub fn set_comparator(&self, n: usize, value: u64) {
        self.counted();
        self.comparator_regs(n).comparator().write(value);
    }

    pub fn comparator(&self, n: usize) -> u64 {
        self.counted();
        self.comparator_regs(n).comparator().read()
    }

    /// Sets the FSB (MSI) message comparator `n` sends: `address` and `data` as for MSI.
    pub fn set_fsb_route(&self, n: usize, address: u32, data: u32) {
        self.counted();
        self.comparator_regs(n).fsb_route().write(hpet_regs::fsb_route(address, data));
    }

    /// One readable log line per fact: the block, then each comparator.
    pub fn log_summary(&self) {
        let caps = self.caps;
        log::info!(
            "HPET at {:#x}: rev {}, vendor {:#06x}, {} comparators, {}-bit counter, period {} fs ({} Hz), legacy route {}",
            self.phys,
            caps.revision(),
            caps.vendor_id(),
            caps.comparators(),
            if caps.counter_64bit() { 64 } else { 32 },
            caps.period_fs(),
            self.frequency_hz(),
            if caps.legacy_route_capable() { "capable" } else { "not capable" }
        );
        let boot = self.boot_state;
        if boot.config.intersects(GeneralConfig::ENABLE | GeneralConfig::LEGACY_ROUTE)
            || boot.comparators_enabled != 0
        {
            log::info!(
                "HPET: firmware left it configured {:?}, comparator interrupts {:#x}; cleared",
                boot.config,
                boot.comparators_enabled
            );
        }
        for n in 0..caps.comparators() {
            let c = self.comparator_config(n);
            log::info!(
                "HPET comparator {n}: {}-bit, periodic {}, FSB {}, route capability {:#010x} (GSIs {})",
                if c.contains(ComparatorConfig::SIZE_64_CAPABLE) { 64 } else { 32 },
                if c.contains(ComparatorConfig::PERIODIC_CAPABLE) { "yes" } else { "no" },
                if c.contains(ComparatorConfig::FSB_CAPABLE) { "yes" } else { "no" },
                c.route_capability(),
                GsiList(c.route_capability())
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    /// The fault tests match the log's rejection line: wrapping the crate's error keeps its words.
    #[test]
    fn capability_errors_read_as_the_crate_words_them() {
        let e = HpetError::from(CapabilityError::PeriodTooLong { period_fs: 100_000_001 });
        assert_eq!(e, HpetError::Capabilities(CapabilityError::PeriodTooLong { period_fs: 100_000_001 }));
        assert_eq!(e.to_string(), CapabilityError::PeriodTooLong { period_fs: 100_000_001 }.to_string());
    }
}
