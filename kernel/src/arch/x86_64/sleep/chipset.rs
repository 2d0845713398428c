//! The chipset's decode of the ACPI power-management I/O block (PM1 registers, PM timer), which
//! the reset on wake from S3 turns off and SeaBIOS's resume path does not turn on again: its
//! PCI configuration registers, read before the sleep and written back after it, through PCI
//! configuration mechanism #1 (ports 0xcf8/0xcfc). Known functions only: QEMU q35's ICH9 LPC
//! bridge (00:1f.0, PMBASE at 0x40, ACPI_CNTL at 0x44) and `pc`'s PIIX4 power management
//! function (00:01.3, PMBA at 0x40, PMREGMISC at 0x80).

use x86_64::instructions::port::Port;

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

/// A function whose registers hold the PM I/O decode: its address, vendor:device id, and the
/// configuration dwords to restore, in order (the base before the enable).
struct PmFunction {
    device: u8,
    function: u8,
    id: u32,
    registers: [u8; 2],
}

/// ICH9 LPC (8086:2918): PMBASE, ACPI_CNTL (ACPI_EN, bit 7). PIIX4 PM (8086:7113): PMBA,
/// PMREGMISC (PMIOSE, bit 0).
const KNOWN: [PmFunction; 2] = [
    PmFunction { device: 0x1f, function: 0, id: 0x2918_8086, registers: [0x40, 0x44] },
    PmFunction { device: 0x01, function: 3, id: 0x7113_8086, registers: [0x40, 0x80] },
];

fn read(device: u8, function: u8, offset: u8) -> u32 {
    let address = 1 << 31 | u32::from(device) << 11 | u32::from(function) << 8 | u32::from(offset & 0xfc);
    // SAFETY: PCI configuration mechanism #1 (every PC chipset QEMU models): the address write
    // selects a dword of bus 0's configuration space, the data read returns it (all ones for an
    // absent function); interrupts are off in the callers, so nothing else uses the pair.
    unsafe {
        Port::<u32>::new(CONFIG_ADDRESS).write(address);
        Port::<u32>::new(CONFIG_DATA).read()
    }
}

fn write(device: u8, function: u8, offset: u8, value: u32) {
    let address = 1 << 31 | u32::from(device) << 11 | u32::from(function) << 8 | u32::from(offset & 0xfc);
    // SAFETY: as in `read`; the value written is the one the firmware set at boot, read by
    // `save` from the same register.
    unsafe {
        Port::<u32>::new(CONFIG_ADDRESS).write(address);
        Port::<u32>::new(CONFIG_DATA).write(value);
    }
}

/// The saved registers of the function found (none on another chipset).
#[derive(Debug, Clone, Copy)]
pub struct Saved {
    found: Option<(usize, [u32; 2])>,
}

/// Reads the PM decode registers of the first known function present.
pub fn save() -> Saved {
    let found = KNOWN
        .iter()
        .enumerate()
        .find(|(_, f)| read(f.device, f.function, 0) == f.id)
        .map(|(i, f)| (i, f.registers.map(|r| read(f.device, f.function, r))));
    Saved { found }
}

/// Writes them back (after the wake), base before enable.
pub fn restore(saved: &Saved) {
    if let Some((i, values)) = saved.found {
        let f = &KNOWN[i];
        for (r, v) in f.registers.into_iter().zip(values) {
            write(f.device, f.function, r, v);
        }
    }
}

/// The function found, for the log.
pub fn describe(saved: &Saved) -> &'static str {
    match saved.found.map(|(i, _)| i) {
        Some(0) => "ICH9 LPC 00:1f.0 (PMBASE, ACPI_CNTL)",
        Some(_) => "PIIX4 PM 00:01.3 (PMBA, PMREGMISC)",
        None => "none known: PM I/O decode not restored",
    }
}
