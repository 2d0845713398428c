//! The two legacy 8259A interrupt controllers: remapped off the exception vectors and masked.
//! With a local APIC, interrupts go through the IOAPIC and the 8259s stay masked (a masked
//! 8259 can still raise its spurious IRQ 7 or 15, which then arrives on vector
//! `PIC_VECTOR_BASE + 7` / `+ 15` and is counted as spurious). Without one
//! ([`deliver_interrupts`]), the 8259s deliver: a line is unmasked for its user, each interrupt
//! is ended at the 8259 (the slave's and then the master's for IRQ 8-15), and IRQ 7 and 15 are
//! told apart from the 8259's own spurious interrupts by the in-service register. With a local
//! APIC but no IOAPIC for a line, the 8259s deliver through the boot CPU's LINT0 as ExtINT
//! (virtual-wire mode, [`through_lint0`]): the same, with the LAPIC taking no EOI for them.

use super::interrupts;
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;
use x86_64::instructions::port::Port;

/// Vectors 0x20..0x30: the device vector allocator starts above them.
pub const PIC_VECTOR_BASE: u8 = 0x20;

const MASTER_COMMAND: u16 = 0x20;
const MASTER_DATA: u16 = 0x21;
const SLAVE_COMMAND: u16 = 0xa0;
const SLAVE_DATA: u16 = 0xa1;
/// ICW1: initialisation, ICW4 follows (8259A datasheet).
const ICW1_INIT_ICW4: u8 = 0x11;
/// ICW3 (master): the slave sits on IRQ 2; (slave): its cascade identity is 2.
const ICW3_MASTER_SLAVE_ON_IRQ2: u8 = 1 << 2;
const ICW3_SLAVE_ID: u8 = 2;
/// ICW4: 8086 mode.
const ICW4_8086: u8 = 0x01;
/// OCW2: non-specific end of interrupt.
const OCW2_EOI: u8 = 0x20;
/// OCW3: the next read of the command port returns the in-service register.
const OCW3_READ_ISR: u8 = 0x0b;
/// The master's input the slave is cascaded on.
const CASCADE_IRQ: u8 = 2;
/// The edge/level control registers (ELCR) of the master and the slave (PIIX/ICH): bit n set =
/// IRQ n level-triggered (PCI's shared lines); IRQ 0, 1, 2, 8 and 13 are always edge.
const ELCR_MASTER: u16 = 0x4d0;
const ELCR_SLAVE: u16 = 0x4d1;
/// The lowest-priority input of each 8259, where it reports a spurious interrupt.
const SPURIOUS_IRQS: [u8; 2] = [7, 15];

/// The interrupt mask of both controllers (bit n = IRQ n masked), as last written.
static MASK: Mutex<u16> = Mutex::new(0xffff);

/// The 8259s deliver through a LAPIC's LINT0 (virtual-wire mode, [`through_lint0`]).
static VIRTUAL_WIRE: AtomicBool = AtomicBool::new(false);

fn port(p: u16) -> Port<u8> {
    Port::new(p)
}

/// Remaps both controllers to `PIC_VECTOR_BASE` and masks every line.
pub fn remap_and_mask() {
    initialise(0xffff);
    log::info!(
        "8259 PICs remapped to vectors {:#x}..{:#x} and masked",
        PIC_VECTOR_BASE,
        PIC_VECTOR_BASE + 16
    );
}

/// The vector ISA IRQ `irq` (0..16) arrives on through the 8259s.
pub const fn vector(irq: u8) -> u8 {
    PIC_VECTOR_BASE + irq
}

/// Makes the 8259s the interrupt controller (no local APIC): every interrupt is ended at the
/// 8259, and IRQ 7 and 15 are checked for the 8259's spurious interrupts. Lines stay masked
/// until [`unmask`]ed.
pub fn deliver_interrupts() {
    interrupts::set_end_of_interrupt(eoi);
    for irq in SPURIOUS_IRQS {
        if let Err(e) = interrupts::register(vector(irq), lowest_priority_interrupt) {
            log::warn!("8259: IRQ {irq}'s vector {:#04x}: {e}", vector(irq));
        }
    }
    log::info!(
        "8259 PICs deliver device interrupts (no local APIC): vectors {:#x}..{:#x}, EOI at the 8259, spurious IRQ 7 and 15 recognised, level-triggered (ELCR): {}",
        PIC_VECTOR_BASE,
        PIC_VECTOR_BASE + 16,
        LevelLines(level_triggered())
    );
}

/// Virtual-wire mode (a local APIC, no IOAPIC for the lines used here): the 8259s' INTR reaches
/// the calling CPU through its LINT0 as ExtINT (the caller sets LINT0: `lapic::lint0_extint`),
/// each interrupt on their vectors is ended at the 8259 and not at the LAPIC
/// ([`delivers_through_lint0`]), and IRQ 7 and 15 are checked for the 8259's spurious
/// interrupts. Lines stay masked until [`unmask`]ed. Logged once.
pub fn through_lint0() {
    if VIRTUAL_WIRE.swap(true, Ordering::AcqRel) {
        return;
    }
    for irq in SPURIOUS_IRQS {
        if let Err(e) = interrupts::register(vector(irq), lowest_priority_interrupt) {
            log::warn!("8259: IRQ {irq}'s vector {:#04x}: {e}", vector(irq));
        }
    }
    log::info!(
        "8259 PICs deliver through LINT0 of CPU {} (virtual-wire mode, ExtINT): vectors {:#x}..{:#x}, EOI at the 8259 only, spurious IRQ 7 and 15 recognised, level-triggered (ELCR): {}",
        super::smp::percpu::this_cpu().index,
        PIC_VECTOR_BASE,
        PIC_VECTOR_BASE + 16,
        LevelLines(level_triggered())
    );
}

/// Whether `vector` is one the 8259s deliver through LINT0 (virtual-wire mode on): it is ended
/// at the 8259 ([`end_of_interrupt`]), not at the LAPIC.
#[inline]
pub fn delivers_through_lint0(vector: u8) -> bool {
    vector.wrapping_sub(PIC_VECTOR_BASE) < 16 && VIRTUAL_WIRE.load(Ordering::Relaxed)
}

/// Ends interrupt `vector` at the 8259s (see [`eoi`]).
pub fn end_of_interrupt(vector: u8) {
    eoi(vector);
}

/// The lines the ELCR marks level-triggered (bit n = IRQ n).
pub fn level_triggered() -> u16 {
    let (mut master, mut slave) = (port(ELCR_MASTER), port(ELCR_SLAVE));
    // SAFETY: reading the ELCR (ports 0x4d0/0x4d1 on PIIX/ICH chipsets, QEMU's pc and q35)
    // has no side effect; where it is absent the bus reads all ones, which `LevelLines` shows.
    unsafe { u16::from(master.read()) | (u16::from(slave.read()) << 8) }
}

/// An ELCR value as the IRQ list it marks level-triggered.
struct LevelLines(u16);

impl core::fmt::Display for LevelLines {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut any = false;
        for irq in (0..16).filter(|i| self.0 & (1 << i) != 0) {
            write!(f, "{}IRQ {irq}", if any { ", " } else { "" })?;
            any = true;
        }
        if !any {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// Unmasks ISA IRQ `irq` (and the cascade for the slave's lines).
pub fn unmask(irq: u8) {
    let mut mask = MASK.lock();
    *mask &= !(1 << irq);
    if irq >= 8 {
        *mask &= !(1 << CASCADE_IRQ);
    }
    let (mut md, mut sd) = (port(MASTER_DATA), port(SLAVE_DATA));
    // SAFETY: writing the 8259s' interrupt mask registers (OCW1) only opens or closes lines.
    unsafe {
        md.write(*mask as u8);
        sd.write((*mask >> 8) as u8);
    }
}

/// What a power loss (ACPI S3) takes from the 8259s and [`resume`] puts back: the ELCR (the
/// masks are the driver's own record, `MASK`).
#[derive(Debug, Clone, Copy)]
pub struct Saved {
    elcr: u16,
}

/// Saves what [`resume`] needs.
pub fn save() -> Saved {
    Saved { elcr: level_triggered() }
}

/// After a power loss: both controllers initialised again at the kernel's vectors, the masks as
/// last written and the ELCR as saved.
pub fn resume(saved: &Saved) {
    initialise(*MASK.lock());
    let (mut elcr_master, mut elcr_slave) = (port(ELCR_MASTER), port(ELCR_SLAVE));
    // SAFETY: the ELCR (PIIX/ICH ports 0x4d0/0x4d1) written back with what it held before the
    // power loss.
    unsafe {
        elcr_master.write(saved.elcr as u8);
        elcr_slave.write((saved.elcr >> 8) as u8);
    }
}

/// The datasheet's initialisation of both controllers at `PIC_VECTOR_BASE`, cascaded on IRQ 2,
/// 8086 mode, then `mask` (bit n = IRQ n masked) written to their mask registers.
fn initialise(mask: u16) {
    let (mut mc, mut md, mut sc, mut sd) =
        (port(MASTER_COMMAND), port(MASTER_DATA), port(SLAVE_COMMAND), port(SLAVE_DATA));
    // SAFETY: ports 0x20/0x21/0xa0/0xa1 are the 8259As on every PC-compatible machine; the
    // sequence is the datasheet's initialisation, and the mask is one the driver chose (all
    // lines masked at boot, its own record after a power loss).
    unsafe {
        mc.write(ICW1_INIT_ICW4);
        sc.write(ICW1_INIT_ICW4);
        md.write(PIC_VECTOR_BASE);
        sd.write(PIC_VECTOR_BASE + 8);
        md.write(ICW3_MASTER_SLAVE_ON_IRQ2);
        sd.write(ICW3_SLAVE_ID);
        md.write(ICW4_8086);
        sd.write(ICW4_8086);
        md.write(mask as u8);
        sd.write((mask >> 8) as u8);
    }
}

/// Whether IRQ `irq` is in service (its bit in the in-service register of its 8259).
fn in_service(irq: u8) -> bool {
    let command = if irq < 8 { MASTER_COMMAND } else { SLAVE_COMMAND };
    let mut p = port(command);
    // SAFETY: OCW3 selects the in-service register for the next read of the same port; reading
    // it changes nothing.
    unsafe {
        p.write(OCW3_READ_ISR);
        p.read() & (1 << (irq % 8)) != 0
    }
}

/// Which 8259s an interrupt on `irq` is ended at, (slave, master): the slave (IRQ 8-15) and
/// then the master; nothing for the master's spurious IRQ 7 (`in_service` false: nothing to
/// end), only the master for the slave's spurious IRQ 15 (the master saw the cascade line).
fn eoi_targets(irq: u8, in_service: bool) -> (bool, bool) {
    let spurious = SPURIOUS_IRQS.contains(&irq) && !in_service;
    match (irq >= 8, spurious) {
        (false, true) => (false, false),
        (true, true) => (false, true),
        (slave, false) => (slave, true),
    }
}

/// Ends interrupt `vector` at the 8259s ([`eoi_targets`]); nothing for a vector they do not
/// deliver.
fn eoi(vector: u8) {
    let Some(irq) = vector.checked_sub(PIC_VECTOR_BASE).filter(|&i| i < 16) else { return };
    let in_service = !SPURIOUS_IRQS.contains(&irq) || in_service(irq);
    let (slave, master) = eoi_targets(irq, in_service);
    // SAFETY: OCW2 non-specific EOI ends the highest-priority interrupt in service at that
    // 8259, which is the one being handled (interrupts are handled one at a time here).
    unsafe {
        if slave {
            port(SLAVE_COMMAND).write(OCW2_EOI);
        }
        if master {
            port(MASTER_COMMAND).write(OCW2_EOI);
        }
    }
}

/// IRQ 7 or 15: the 8259's spurious interrupt (its bit not in service), or a real interrupt
/// on a line nobody here uses; counted as spurious either way, with which it was.
fn lowest_priority_interrupt(i: interrupts::Irq) {
    let irq = i.vector - PIC_VECTOR_BASE;
    if in_service(irq) {
        interrupts::spurious(format_args!("8259 IRQ {irq} with no handler"));
    } else {
        interrupts::spurious(format_args!("the 8259's spurious IRQ {irq} (not in service)"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spurious_irq7_is_not_ended_and_spurious_irq15_only_at_the_master() {
        assert_eq!(eoi_targets(7, false), (false, false));
        assert_eq!(eoi_targets(15, false), (false, true));
    }

    #[test]
    fn real_interrupts_are_ended_at_their_8259_and_the_master() {
        assert_eq!(eoi_targets(0, true), (false, true));
        assert_eq!(eoi_targets(7, true), (false, true));
        assert_eq!(eoi_targets(8, true), (true, true));
        assert_eq!(eoi_targets(15, true), (true, true));
    }

    #[test]
    fn level_lines_are_listed_by_irq() {
        assert_eq!(alloc::format!("{}", LevelLines(0)), "none");
        assert_eq!(alloc::format!("{}", LevelLines(0x0e20)), "IRQ 5, IRQ 9, IRQ 10, IRQ 11");
    }

    #[test]
    fn vectors_follow_the_remapping() {
        assert_eq!(vector(0), 0x20);
        assert_eq!(vector(15), 0x2f);
    }
}
