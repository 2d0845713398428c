//! The two legacy 8259A interrupt controllers: remapped off the exception vectors and masked.
//! Interrupts go through the IOAPIC; a masked 8259 can still raise its spurious IRQ 7 or 15,
//! which then arrives on vector `PIC_VECTOR_BASE + 7` / `+ 15` and is counted as spurious.

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

/// Remaps both controllers to `PIC_VECTOR_BASE` and masks every line.
pub fn remap_and_mask() {
    let mut mc = Port::<u8>::new(MASTER_COMMAND);
    let mut md = Port::<u8>::new(MASTER_DATA);
    let mut sc = Port::<u8>::new(SLAVE_COMMAND);
    let mut sd = Port::<u8>::new(SLAVE_DATA);
    // SAFETY: ports 0x20/0x21/0xa0/0xa1 are the 8259As on every PC-compatible machine; the
    // sequence is the datasheet's initialisation, and masking all lines leaves no interrupt
    // source behind.
    unsafe {
        mc.write(ICW1_INIT_ICW4);
        sc.write(ICW1_INIT_ICW4);
        md.write(PIC_VECTOR_BASE);
        sd.write(PIC_VECTOR_BASE + 8);
        md.write(ICW3_MASTER_SLAVE_ON_IRQ2);
        sd.write(ICW3_SLAVE_ID);
        md.write(ICW4_8086);
        sd.write(ICW4_8086);
        md.write(0xff);
        sd.write(0xff);
    }
    log::info!(
        "8259 PICs remapped to vectors {:#x}..{:#x} and masked",
        PIC_VECTOR_BASE,
        PIC_VECTOR_BASE + 16
    );
}
