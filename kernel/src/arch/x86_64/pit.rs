//! The 8254 programmable interval timer, used only as a reference clock for calibrating the TSC
//! at boot (channel 2, whose output the CPU can read through port 0x61).

use x86_64::instructions::port::Port;

/// Input clock of the 8254 in Hz (the PC's 14.31818 MHz crystal divided by 12).
pub const PIT_HZ: u64 = 1_193_182;

const CHANNEL2_DATA: u16 = 0x42;
const MODE_COMMAND: u16 = 0x43;
/// NMI status and control: bit 0 gates channel 2, bit 1 enables the speaker, bit 5 reads OUT2.
const PORT_B: u16 = 0x61;
/// Channel 2, low then high byte, mode 0 (interrupt on terminal count), binary.
const CH2_LOHI_MODE0: u8 = 0b1011_0000;
const PORT_B_GATE2: u8 = 1 << 0;
const PORT_B_SPEAKER: u8 = 1 << 1;
const PORT_B_OUT2: u8 = 1 << 5;

/// Starts channel 2 counting down `ticks` (at most 0xffff) from now; [`channel2_expired`] turns
/// true when it reaches zero.
pub fn start_channel2(ticks: u16) {
    let mut port_b = Port::<u8>::new(PORT_B);
    let mut command = Port::<u8>::new(MODE_COMMAND);
    let mut data = Port::<u8>::new(CHANNEL2_DATA);
    // SAFETY: ports 0x42, 0x43 and 0x61 are the 8254's channel 2 and the system control port on
    // every PC-compatible machine; channel 2 drives only the speaker, which stays disabled.
    unsafe {
        let b = port_b.read();
        port_b.write((b & !PORT_B_SPEAKER) | PORT_B_GATE2);
        command.write(CH2_LOHI_MODE0);
        data.write(ticks as u8);
        data.write((ticks >> 8) as u8);
    }
}

pub fn channel2_expired() -> bool {
    let mut port_b = Port::<u8>::new(PORT_B);
    // SAFETY: reading the system control port has no side effect.
    unsafe { port_b.read() & PORT_B_OUT2 != 0 }
}
