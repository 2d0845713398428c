//! The High Precision Event Timer (IA-PC HPET Specification 1.0a): register block, checks before
//! use, the main counter (the `hpet` clocksource reads it), comparator programming, stop/reset/re-enable.
//!
//! The driver describes and drives the hardware; which comparator serves which CPU, and how its
//! interrupt is delivered, is decided by the clockevents layer and the routing code.

use super::{mmio, tsc};
use bitflags::bitflags;
use core::fmt;
use core::mem::{offset_of, size_of};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use volatile::access::ReadOnly;
use volatile::{VolatileFieldAccess, VolatilePtr};

/// General registers, spec section 2.3.1 table 2 (offsets 0x000..0x100).
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

const _: () = {
    assert!(offset_of!(GeneralRegisters, configuration) == 0x010);
    assert!(offset_of!(GeneralRegisters, interrupt_status) == 0x020);
    assert!(offset_of!(GeneralRegisters, main_counter) == 0x0f0);
    assert!(size_of::<GeneralRegisters>() == COMPARATORS_OFFSET);
    assert!(offset_of!(ComparatorRegisters, comparator) == 0x08);
    assert!(offset_of!(ComparatorRegisters, fsb_route) == 0x10);
    assert!(size_of::<ComparatorRegisters>() == COMPARATOR_STRIDE);
};

const COMPARATORS_OFFSET: usize = 0x100;
const COMPARATOR_STRIDE: usize = 0x20;
/// NUM_TIM_CAP is 5 bits: at most 32 comparators per block.
pub const MAX_COMPARATORS: usize = 32;
/// The whole register space of a 32-comparator block, rounded to a page.
const REGISTER_SPACE: u64 = 0x1000;
/// Spec 2.3.9.2.1: COUNTER_CLK_PERIOD must be non-zero and at most 0x05F5E100 fs (100 ns).
pub const MAX_PERIOD_FS: u32 = 100_000_000;

/// General Capabilities and ID register (spec 2.3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities(pub u64);

impl Capabilities {
    pub fn revision(self) -> u8 {
        self.0 as u8
    }
    /// NUM_TIM_CAP holds the index of the last comparator.
    pub fn comparators(self) -> usize {
        ((self.0 >> 8) & 0x1f) as usize + 1
    }
    pub fn counter_64bit(self) -> bool {
        self.0 & (1 << 13) != 0
    }
    pub fn legacy_route_capable(self) -> bool {
        self.0 & (1 << 15) != 0
    }
    pub fn vendor_id(self) -> u16 {
        (self.0 >> 16) as u16
    }
    pub fn period_fs(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

bitflags! {
    /// General Configuration register (spec 2.3.5).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct GeneralConfig: u64 {
        /// ENABLE_CNF: the main counter runs and comparators may interrupt.
        const ENABLE = 1 << 0;
        /// LEG_RT_CNF: comparator 0 drives IRQ0 / IOAPIC pin 2, comparator 1 IRQ8 / pin 8.
        const LEGACY_ROUTE = 1 << 1;
        const _ = !0;
    }
}

bitflags! {
    /// Timer N Configuration and Capability register (spec 2.3.8), flag bits. The route
    /// (bits 13:9) and route capability (bits 63:32) fields are read with methods.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ComparatorConfig: u64 {
        /// Tn_INT_TYPE_CNF: level-triggered (status bit holds the line until cleared).
        const LEVEL_TRIGGERED = 1 << 1;
        /// Tn_INT_ENB_CNF
        const INTERRUPT_ENABLE = 1 << 2;
        /// Tn_TYPE_CNF: periodic mode.
        const PERIODIC = 1 << 3;
        /// Tn_PER_INT_CAP (read-only)
        const PERIODIC_CAPABLE = 1 << 4;
        /// Tn_SIZE_CAP (read-only): a 64-bit comparator.
        const SIZE_64_CAPABLE = 1 << 5;
        /// Tn_VAL_SET_CNF: the next comparator write sets the periodic accumulator.
        const VALUE_SET = 1 << 6;
        /// Tn_32MODE_CNF: force a 64-bit comparator to 32 bits.
        const MODE_32BIT = 1 << 8;
        /// Tn_FSB_EN_CNF: deliver by FSB message (MSI) instead of an IOAPIC pin.
        const FSB_ENABLE = 1 << 14;
        /// Tn_FSB_INT_DEL_CAP (read-only)
        const FSB_CAPABLE = 1 << 15;
        const _ = !0;
    }
}

const ROUTE_SHIFT: u32 = 9;
const ROUTE_MASK: u64 = 0x1f << ROUTE_SHIFT;

impl ComparatorConfig {
    /// Tn_INT_ROUTE_CNF: the IOAPIC input this comparator drives.
    pub fn route(self) -> u8 {
        ((self.bits() & ROUTE_MASK) >> ROUTE_SHIFT) as u8
    }
    pub fn with_route(self, gsi: u8) -> ComparatorConfig {
        ComparatorConfig::from_bits_retain(
            (self.bits() & !ROUTE_MASK) | (u64::from(gsi & 0x1f) << ROUTE_SHIFT),
        )
    }
    /// Tn_INT_ROUTE_CAP: bit N set = IOAPIC input N allowed.
    pub fn route_capability(self) -> u32 {
        (self.bits() >> 32) as u32
    }
}

/// Why the HPET cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpetError {
    Mapping(mmio::MmioError),
    /// Every bit reads 1: nothing decodes the address (no device there).
    ReadsAllOnes,
    PeriodZero,
    PeriodTooLong {
        period_fs: u32,
    },
    /// The main counter did not advance across a TSC-timed wait.
    CounterNotCounting {
        value: u64,
        waited_us: u64,
    },
}

impl fmt::Display for HpetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HpetError::Mapping(e) => write!(f, "cannot map its registers: {e}"),
            HpetError::ReadsAllOnes => {
                write!(f, "its capabilities read all ones (no device decodes the address)")
            }
            HpetError::PeriodZero => write!(f, "its counter period is 0 fs"),
            HpetError::PeriodTooLong { period_fs } => {
                write!(
                    f,
                    "its counter period {period_fs} fs exceeds the specification's {MAX_PERIOD_FS} fs (100 ns)"
                )
            }
            HpetError::CounterNotCounting { value, waited_us } => {
                write!(f, "its main counter stayed at {value:#x} for {waited_us} us: it does not count")
            }
        }
    }
}

/// The checks of spec 2.3.4 on a capabilities value; pure, for host tests.
pub fn check_capabilities(caps: Capabilities) -> Result<(), HpetError> {
    if caps.0 == u64::MAX {
        return Err(HpetError::ReadsAllOnes);
    }
    match caps.period_fs() {
        0 => Err(HpetError::PeriodZero),
        p if p > MAX_PERIOD_FS => Err(HpetError::PeriodTooLong { period_fs: p }),
        _ => Ok(()),
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
        let region = mmio::map(phys, REGISTER_SPACE).map_err(HpetError::Mapping)?;
        let base =
            NonNull::new(region.virt.as_mut_ptr::<GeneralRegisters>()).expect("MMIO window is not null");
        // SAFETY: `region` maps REGISTER_SPACE bytes of device memory uncached, for the life of
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
        let wait_cycles = tsc::frequency_hz() / 1_000_000 * WAIT_US;
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
        1_000_000_000_000_000 / u64::from(self.caps.period_fs())
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
        // REGISTER_SPACE mapped by `probe`.
        unsafe {
            let p = base.add(COMPARATORS_OFFSET + n * COMPARATOR_STRIDE) as *mut ComparatorRegisters;
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

    /// Writes the general configuration; the clocksource is told before the main counter
    /// stops and after it starts (it keeps time on the TSC meanwhile, if the HPET is it).
    fn set_config(&self, config: GeneralConfig) {
        let running =
            GeneralConfig::from_bits_retain(self.regs.configuration().read()).contains(GeneralConfig::ENABLE);
        let enable = config.contains(GeneralConfig::ENABLE);
        if running && !enable {
            super::clocksource::hpet_stopping(self);
        }
        self.counted();
        self.regs.configuration().write(config.bits());
        if !running && enable {
            super::clocksource::hpet_started(self);
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
        self.comparator_regs(n).fsb_route().write((u64::from(address) << 32) | u64::from(data));
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

/// Formats a route capability mask as a GSI list, `2, 8, 16-23`.
pub struct GsiList(pub u32);

impl fmt::Display for GsiList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return write!(f, "none");
        }
        let mut first = true;
        let mut n = 0;
        while n < 32 {
            if self.0 & (1 << n) == 0 {
                n += 1;
                continue;
            }
            let start = n;
            while n + 1 < 32 && self.0 & (1 << (n + 1)) != 0 {
                n += 1;
            }
            if !first {
                write!(f, ", ")?;
            }
            first = false;
            if start == n {
                write!(f, "{start}")?
            } else {
                write!(f, "{start}-{n}")?
            }
            n += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    /// q35's HPET as QEMU 7.2 reports it: vendor 0x8086, 3 comparators, 64-bit, legacy capable.
    const Q35_CAPS: u64 = (10_000_000 << 32) | (0x8086 << 16) | (1 << 15) | (1 << 13) | (2 << 8) | 1;

    #[test]
    fn q35_capabilities_decode() {
        let c = Capabilities(Q35_CAPS);
        assert_eq!(c.revision(), 1);
        assert_eq!(c.comparators(), 3);
        assert!(c.counter_64bit() && c.legacy_route_capable());
        assert_eq!(c.vendor_id(), 0x8086);
        assert_eq!(c.period_fs(), 10_000_000);
        assert_eq!(check_capabilities(c), Ok(()));
    }

    #[test]
    fn period_zero_or_above_100ns_is_rejected() {
        let with_period = |p: u64| Capabilities((Q35_CAPS & 0xffff_ffff) | (p << 32));
        assert_eq!(check_capabilities(with_period(0)), Err(HpetError::PeriodZero));
        assert_eq!(check_capabilities(with_period(100_000_000)), Ok(()));
        assert_eq!(
            check_capabilities(with_period(100_000_001)),
            Err(HpetError::PeriodTooLong { period_fs: 100_000_001 })
        );
        assert_eq!(check_capabilities(Capabilities(u64::MAX)), Err(HpetError::ReadsAllOnes));
    }

    #[test]
    fn comparator_route_fields_round_trip() {
        let c = ComparatorConfig::from_bits_retain(0x00ff_0104_0000_8030);
        assert_eq!(c.route_capability(), 0x00ff_0104);
        assert!(c.contains(ComparatorConfig::FSB_CAPABLE | ComparatorConfig::PERIODIC_CAPABLE));
        let routed = c.with_route(17) | ComparatorConfig::LEVEL_TRIGGERED;
        assert_eq!(routed.route(), 17);
        assert_eq!(routed.route_capability(), 0x00ff_0104, "setting the route keeps the capability");
        assert_eq!(routed.with_route(2).route(), 2);
    }

    #[test]
    fn route_capability_prints_as_gsi_ranges() {
        assert_eq!(GsiList(0x00ff_0104).to_string(), "2, 8, 16-23");
        assert_eq!(GsiList(0x4).to_string(), "2");
        assert_eq!(GsiList(0).to_string(), "none");
        assert_eq!(GsiList(0x8000_0001).to_string(), "0, 31");
    }
}
