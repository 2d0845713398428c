//! I/O APICs (82093AA datasheet): the chips mapped and accessed (volatile), GSI lookup, ISA
//! overrides, masking, and a record of which GSIs are taken. The register indices and the
//! typed redirection entry are the crate `ioapic-regs` (`kernel/ioapic/`). (A line is sent to
//! another CPU by routing it again: `route` rewrites the whole entry, as
//! `HpetChannel::route_to` does.)

use super::destination::{self, Unreachable};
use super::{acpi, mmio};
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;
use ioapic_regs::registers::{self, IOAPICID, IOAPICVER, IOREGSEL, IOWIN, Id, Version, WINDOW_SIZE};
use spin::Mutex;
use volatile::VolatilePtr;

/// The redirection entry's types, from `ioapic-regs` (`kernel/ioapic/`).
pub use ioapic_regs::{DeliveryMode, Polarity, RedirectionEntry, Trigger};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoApicError {
    /// No IOAPIC serves this GSI.
    GsiOutOfRange(u32),
    GsiInUse {
        gsi: u32,
        owner: &'static str,
    },
    NotClaimed(u32),
    Mapping(mmio::MmioError),
    /// The entry names a CPU the platform's destination format cannot reach.
    Unreachable(Unreachable),
    /// The MADT's GSI base plus the chip's pins passes the last GSI (a malformed MADT).
    GsiRangeOverflow {
        gsi_base: u32,
        pins: u32,
    },
}

impl fmt::Display for IoApicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IoApicError::GsiOutOfRange(g) => write!(f, "GSI {g} is served by no IOAPIC"),
            IoApicError::GsiInUse { gsi, owner } => {
                write!(f, "GSI {gsi} is already used by {owner}")
            }
            IoApicError::NotClaimed(g) => write!(f, "GSI {g} was not claimed"),
            IoApicError::Mapping(e) => write!(f, "cannot map the IOAPIC: {e}"),
            IoApicError::Unreachable(u) => write!(f, "cannot route there: {u}"),
            IoApicError::GsiRangeOverflow { gsi_base, pins } => {
                write!(f, "its GSI base {gsi_base} plus {pins} pins passes GSI {} (malformed MADT)", u32::MAX)
            }
        }
    }
}

/// The last GSI of a chip with `pins` pins from `gsi_base`, or why there is none (no pins, or
/// the range passes `u32::MAX`): a malformed MADT is rejected, never an overflow.
pub fn last_gsi(gsi_base: u32, pins: u32) -> Result<u32, IoApicError> {
    pins.checked_sub(1)
        .and_then(|n| gsi_base.checked_add(n))
        .ok_or(IoApicError::GsiRangeOverflow { gsi_base, pins })
}

/// One IOAPIC chip.
pub struct IoApic {
    pub id: u8,
    pub phys: u64,
    pub gsi_base: u32,
    pub pins: u32,
    pub version: u8,
    regs: VolatilePtr<'static, [u32; 8]>,
}

/// The volatile window covers the chip's register window as `ioapic-regs` lays it out.
const _: () = assert!(core::mem::size_of::<[u32; 8]>() == WINDOW_SIZE);

// SAFETY: the register window is device memory mapped for the kernel's lifetime; every
// select-then-access pair runs under the `IOAPICS` lock.
unsafe impl Send for IoApic {}

impl IoApic {
    /// The last GSI this chip serves (`add` checked that it exists).
    pub fn last_gsi(&self) -> u32 {
        self.gsi_base + (self.pins - 1)
    }

    /// Whether `gsi` is one of this chip's (no overflow for any `gsi_base`).
    pub fn serves(&self, gsi: u32) -> bool {
        gsi >= self.gsi_base && gsi - self.gsi_base < self.pins
    }

    fn read(&mut self, reg: u32) -> u32 {
        self.regs.map_index(IOREGSEL / 4).write(reg);
        self.regs.map_index(IOWIN / 4).read()
    }
    fn write(&mut self, reg: u32, value: u32) {
        self.regs.map_index(IOREGSEL / 4).write(reg);
        self.regs.map_index(IOWIN / 4).write(value);
    }
    fn entry(&mut self, pin: u32) -> RedirectionEntry {
        let pin = pin_index(pin);
        let low = self.read(registers::redirection_low(pin));
        let high = self.read(registers::redirection_high(pin));
        RedirectionEntry::decode(u64::from(high) << 32 | u64::from(low))
    }
    fn set_entry(&mut self, pin: u32, e: RedirectionEntry) {
        // Masked first so the line never fires half-programmed, then high, then low.
        for (reg, value) in registers::redirection_writes(pin_index(pin), e) {
            self.write(reg, value);
        }
    }
}

/// A pin below the chip's count as the register index wants it (the version register's 8-bit
/// field bounds `pins` to 256).
fn pin_index(pin: u32) -> u8 {
    u8::try_from(pin).expect("an IOAPIC has at most 256 pins")
}

/// The volatile crate's stable API has no array indexing; this is the one place we need it.
trait MapIndex {
    fn map_index(self, i: usize) -> VolatilePtr<'static, u32>;
}
impl MapIndex for VolatilePtr<'static, [u32; 8]> {
    fn map_index(self, i: usize) -> VolatilePtr<'static, u32> {
        assert!(i < 8);
        // SAFETY: i < 8 keeps the element inside the 32-byte window this pointer covers.
        unsafe { self.map(|p| p.cast::<u32>().add(i)) }
    }
}

/// All IOAPICs plus the GSI ownership record.
pub struct IoApics {
    chips: Vec<IoApic>,
    owners: Vec<(u32, &'static str)>,
}

pub static IOAPICS: Mutex<IoApics> = Mutex::new(IoApics { chips: Vec::new(), owners: Vec::new() });

/// First GSI that no ISA device can own (GSIs 0-15 are the ISA IRQs' by default).
pub const FIRST_NON_ISA_GSI: u32 = 16;

impl IoApics {
    /// Maps and adds the IOAPIC `id` at `phys` serving GSIs from `gsi_base`; masks all its pins.
    /// A chip whose GSI range would pass `u32::MAX` is masked and left out.
    pub fn add(&mut self, id: u8, phys: u64, gsi_base: u32) -> Result<&IoApic, IoApicError> {
        let region = mmio::map(phys, WINDOW_SIZE as u64).map_err(IoApicError::Mapping)?;
        let ptr = NonNull::new(region.virt.as_mut_ptr::<[u32; 8]>()).expect("MMIO window is not null");
        // SAFETY: `region` maps the IOAPIC's 32-byte register window uncached for good.
        let regs = unsafe { VolatilePtr::new(ptr) };
        let mut chip = IoApic { id, phys, gsi_base, pins: 0, version: 0, regs };
        let ver = Version(chip.read(IOAPICVER));
        chip.version = ver.version();
        chip.pins = ver.pins();
        let hw_id = Id(chip.read(IOAPICID)).id();
        if id & 0xf != hw_id {
            log::warn!("IOAPIC {id}: the chip says its id is {hw_id}; using the MADT's");
        }
        for pin in 0..chip.pins {
            chip.set_entry(pin, RedirectionEntry::masked());
        }
        last_gsi(gsi_base, chip.pins)?;
        self.chips.push(chip);
        Ok(self.chips.last().expect("just pushed"))
    }

    pub fn chips(&self) -> &[IoApic] {
        &self.chips
    }

    /// (chip index, pin) of `gsi`.
    pub fn lookup(&self, gsi: u32) -> Result<(usize, u32), IoApicError> {
        self.chips
            .iter()
            .position(|c| c.serves(gsi))
            .map(|i| (i, gsi - self.chips[i].gsi_base))
            .ok_or(IoApicError::GsiOutOfRange(gsi))
    }

    pub fn owner(&self, gsi: u32) -> Option<&'static str> {
        self.owners.iter().find(|(g, _)| *g == gsi).map(|(_, o)| *o)
    }

    /// Records `gsi` as used by `owner`.
    pub fn claim(&mut self, gsi: u32, owner: &'static str) -> Result<(), IoApicError> {
        self.lookup(gsi)?;
        if let Some(existing) = self.owner(gsi) {
            return Err(IoApicError::GsiInUse { gsi, owner: existing });
        }
        self.owners.push((gsi, owner));
        Ok(())
    }

    /// Masks and releases `gsi`.
    pub fn release(&mut self, gsi: u32) -> Result<(), IoApicError> {
        let i = self.owners.iter().position(|(g, _)| *g == gsi).ok_or(IoApicError::NotClaimed(gsi))?;
        self.owners.swap_remove(i);
        self.mask(gsi, true)
    }

    /// The lowest free GSI allowed by `capability` (bit n = GSI n), preferring GSIs >= 16 that no
    /// ISA device can own; `isa_owned` lists GSIs an ISA IRQ maps to (after overrides).
    pub fn find_free(&self, capability: u32, isa_owned: &[u32]) -> Option<u32> {
        choose_free_gsi(capability, |g| self.lookup(g).is_ok() && self.owner(g).is_none(), isa_owned)
    }

    pub fn entry(&mut self, gsi: u32) -> Result<RedirectionEntry, IoApicError> {
        let (chip, pin) = self.lookup(gsi)?;
        Ok(self.chips[chip].entry(pin))
    }

    /// Programs `gsi`'s redirection entry; the GSI must be claimed first, and the entry's
    /// destination within what the platform's format names.
    pub fn route(&mut self, gsi: u32, entry: RedirectionEntry) -> Result<(), IoApicError> {
        if self.owner(gsi).is_none() {
            return Err(IoApicError::NotClaimed(gsi));
        }
        destination::format().ioapic_bits(entry.destination).map_err(IoApicError::Unreachable)?;
        let (chip, pin) = self.lookup(gsi)?;
        self.chips[chip].set_entry(pin, entry);
        Ok(())
    }

    /// Moves a claimed `gsi`'s interrupt to `apic_id`, its entry otherwise as it is: one write
    /// of the entry's high half, the destination (a single 32-bit write, so the line never
    /// fires half-moved and needs no masking; an interrupt already sent lands where it was
    /// aimed).
    pub fn set_destination(&mut self, gsi: u32, apic_id: u32) -> Result<(), IoApicError> {
        if self.owner(gsi).is_none() {
            return Err(IoApicError::NotClaimed(gsi));
        }
        let bits = destination::format().ioapic_bits(apic_id).map_err(IoApicError::Unreachable)?;
        let (chip, pin) = self.lookup(gsi)?;
        self.chips[chip].write(registers::redirection_high(pin_index(pin)), (bits >> 32) as u32);
        Ok(())
    }

    /// Every pin's redirection entry, chip by chip (what a power loss, ACPI S3, takes).
    pub fn save(&mut self) -> Vec<Vec<RedirectionEntry>> {
        self.chips.iter_mut().map(|c| (0..c.pins).map(|pin| c.entry(pin)).collect()).collect()
    }

    /// Writes back what [`save`](Self::save) returned (each entry masked first, as always).
    pub fn restore(&mut self, saved: &[Vec<RedirectionEntry>]) {
        for (chip, entries) in self.chips.iter_mut().zip(saved) {
            for (pin, &e) in entries.iter().enumerate() {
                chip.set_entry(pin as u32, e);
            }
        }
    }

    pub fn mask(&mut self, gsi: u32, masked: bool) -> Result<(), IoApicError> {
        let (chip, pin) = self.lookup(gsi)?;
        let e = self.chips[chip].entry(pin);
        self.chips[chip].set_entry(pin, RedirectionEntry { masked, ..e });
        Ok(())
    }
}

/// Where an ISA IRQ arrives at the IOAPICs: its GSI and the line's polarity and trigger mode,
/// after the MADT's interrupt source overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsaRoute {
    pub irq: u8,
    pub gsi: u32,
    pub polarity: Polarity,
    pub trigger: Trigger,
}

/// ISA IRQs 0-15.
pub const ISA_IRQS: u8 = 16;

impl IsaRoute {
    /// ISA IRQ `irq`'s route: its override (bus 0, source `irq`) if the MADT has one, else the
    /// ISA default, identity GSI, edge-triggered, active high. An override's "conforms to the
    /// bus" polarity or trigger is the ISA bus's: active high, edge (ACPI 6.5 table 5.50).
    pub fn for_irq(irq: u8, overrides: &[acpi::InterruptOverride]) -> IsaRoute {
        match overrides.iter().find(|o| o.bus == 0 && o.source_irq == irq) {
            Some(o) => IsaRoute {
                irq,
                gsi: o.gsi,
                polarity: isa_polarity(o.polarity),
                trigger: isa_trigger(o.trigger),
            },
            None => {
                IsaRoute { irq, gsi: u32::from(irq), polarity: Polarity::ActiveHigh, trigger: Trigger::Edge }
            }
        }
    }

    /// The routes of ISA IRQs 0-15, by IRQ.
    pub fn all(overrides: &[acpi::InterruptOverride]) -> Vec<IsaRoute> {
        (0..ISA_IRQS).map(|irq| IsaRoute::for_irq(irq, overrides)).collect()
    }

    /// A fixed, physical-destination, unmasked entry delivering this line as `vector` to the
    /// CPU with APIC id `destination`, with the line's polarity and trigger mode.
    pub fn entry(self, vector: u8, destination: u32) -> RedirectionEntry {
        RedirectionEntry {
            vector,
            delivery: DeliveryMode::Fixed,
            logical: false,
            polarity: self.polarity,
            trigger: self.trigger,
            masked: false,
            destination,
        }
    }
}

/// An ISA line's polarity from an override's MPS INTI flags (bus-conforming = active high).
pub fn isa_polarity(p: acpi::Polarity) -> Polarity {
    match p {
        acpi::Polarity::ActiveLow => Polarity::ActiveLow,
        acpi::Polarity::ActiveHigh | acpi::Polarity::ConformsToBus => Polarity::ActiveHigh,
    }
}

/// An ISA line's trigger mode from an override's MPS INTI flags (bus-conforming = edge).
pub fn isa_trigger(t: acpi::TriggerMode) -> Trigger {
    match t {
        acpi::TriggerMode::Level => Trigger::Level,
        acpi::TriggerMode::Edge | acpi::TriggerMode::ConformsToBus => Trigger::Edge,
    }
}

/// Pure choice of a GSI: first a free one >= 16 not owned by ISA, then a free ISA-range one
/// not owned by an ISA device, then nothing (an ISA-owned GSI is never handed out here).
pub fn choose_free_gsi(capability: u32, is_free: impl Fn(u32) -> bool, isa_owned: &[u32]) -> Option<u32> {
    let allowed = |g: u32| capability & (1 << g) != 0 && is_free(g) && !isa_owned.contains(&g);
    (FIRST_NON_ISA_GSI..32).find(|&g| allowed(g)).or_else(|| (0..FIRST_NON_ISA_GSI).find(|&g| allowed(g)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_gsi_prefers_non_isa_lines() {
        let q35_cap = 0x00ff_0104; // GSI 2, 8, 16-23
        assert_eq!(choose_free_gsi(q35_cap, |_| true, &[0, 1, 2, 8]), Some(16));
        assert_eq!(choose_free_gsi(q35_cap, |g| g != 16 && g != 17, &[]), Some(18));
    }

    #[test]
    fn isa_owned_lines_are_never_chosen() {
        // -machine pc: only GSI 2, which the PIT owns through the IRQ0 -> GSI 2 override.
        assert_eq!(choose_free_gsi(0x4, |_| true, &[2, 8]), None);
        // A free ISA-range line nobody owns is the last resort.
        assert_eq!(choose_free_gsi(0x0000_0104, |_| true, &[2]), Some(8));
    }

    fn q35_overrides() -> Vec<acpi::InterruptOverride> {
        // QEMU q35: IRQ0 -> GSI 2 (flags 0: bus-conforming); IRQ 5, 9, 10, 11 level, active high.
        let madt = acpi::build::madt(
            0xfee0_0000,
            1,
            &[
                acpi::build::io_apic(0, 0xfec0_0000, 0),
                acpi::build::interrupt_override(0, 2, 0x0000),
                acpi::build::interrupt_override(9, 9, 0x000d),
                acpi::build::interrupt_override(11, 11, 0x000f),
            ],
        );
        acpi::parse_madt(&madt).unwrap().overrides
    }

    #[test]
    fn isa_irq_without_override_is_identity_edge_active_high() {
        let r = IsaRoute::for_irq(4, &q35_overrides());
        assert_eq!(r, IsaRoute { irq: 4, gsi: 4, polarity: Polarity::ActiveHigh, trigger: Trigger::Edge });
        assert_eq!(IsaRoute::for_irq(8, &[]).gsi, 8);
    }

    #[test]
    fn isa_override_gives_its_gsi_polarity_and_trigger() {
        let o = q35_overrides();
        let timer = IsaRoute::for_irq(0, &o);
        assert_eq!((timer.gsi, timer.polarity, timer.trigger), (2, Polarity::ActiveHigh, Trigger::Edge));
        let sci = IsaRoute::for_irq(9, &o);
        assert_eq!((sci.gsi, sci.polarity, sci.trigger), (9, Polarity::ActiveHigh, Trigger::Level));
        let low = IsaRoute::for_irq(11, &o);
        assert_eq!((low.polarity, low.trigger), (Polarity::ActiveLow, Trigger::Level));
        let all = IsaRoute::all(&o);
        assert_eq!(all.len(), 16);
        assert!(all.iter().enumerate().all(|(i, r)| usize::from(r.irq) == i));
        assert_eq!(all[0].gsi, 2);
    }

    #[test]
    fn override_of_another_bus_is_ignored() {
        let mut o = q35_overrides();
        o.iter_mut().for_each(|x| x.bus = 1);
        assert_eq!(IsaRoute::for_irq(0, &o).gsi, 0);
    }

    #[test]
    fn isa_route_entry_carries_the_line_properties() {
        let sci = IsaRoute::for_irq(9, &q35_overrides());
        let e = sci.entry(0x41, 2);
        assert_eq!((e.vector, e.destination, e.masked), (0x41, 2, false));
        assert_eq!(e.trigger, Trigger::Level);
        assert_eq!(e.encode() & (1 << 15), 1 << 15, "level trigger bit");
    }

    #[test]
    fn gsi_range_past_u32_max_is_rejected() {
        assert_eq!(last_gsi(0, 24), Ok(23));
        assert_eq!(last_gsi(u32::MAX - 23, 24), Ok(u32::MAX));
        assert_eq!(
            last_gsi(u32::MAX - 10, 24),
            Err(IoApicError::GsiRangeOverflow { gsi_base: u32::MAX - 10, pins: 24 })
        );
        assert!(last_gsi(5, 0).is_err());
    }

    #[test]
    fn all_taken_gives_none() {
        assert_eq!(choose_free_gsi(0x00ff_0000, |_| false, &[]), None);
    }
}
