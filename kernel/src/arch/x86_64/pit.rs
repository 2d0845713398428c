//! The 8254 programmable interval timer: channel 2 as a reference clock for calibrating the TSC
//! at boot (its output read through port 0x61), and channel 0 as a clock event device of last
//! resort (Linux's `i8253` clockevent): a 16-bit count-down at 1.193182 MHz, one-shot (mode 0,
//! interrupt on terminal count) or periodic (mode 2, rate generator), raising ISA IRQ0.
//!
//! The control word is typed ([`Command`]), as the datasheet's table lays it out; the driver
//! decides nothing (whether and where the PIT serves is the time glue's business).

use x86_64::instructions::port::Port;

/// Input clock of the 8254 in Hz (the PC's 14.31818 MHz crystal divided by 12).
pub const PIT_HZ: u64 = 1_193_182;

/// The ISA IRQ channel 0's output raises.
pub const IRQ: u8 = 0;

const CHANNEL0_DATA: u16 = 0x40;
const CHANNEL2_DATA: u16 = 0x42;
const MODE_COMMAND: u16 = 0x43;
/// NMI status and control: bit 0 gates channel 2, bit 1 enables the speaker, bit 5 reads OUT2.
const PORT_B: u16 = 0x61;
const PORT_B_GATE2: u8 = 1 << 0;
const PORT_B_SPEAKER: u8 = 1 << 1;
const PORT_B_OUT2: u8 = 1 << 5;

/// A counter of the 8254 (control word bits 7-6, "SC").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Counter 0: its output is ISA IRQ0.
    Zero = 0,
    /// Counter 2: gated by port 0x61 bit 0, its output read at port 0x61 bit 5 (the speaker's).
    Two = 2,
}

/// How the count is written (control word bits 5-4, "RW"): only the 16-bit form is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Least significant byte first, then the most significant byte.
    LowThenHigh = 0b11,
}

/// Counting mode (control word bits 3-1, "M").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Mode 0, interrupt on terminal count: OUT goes low when the control word is written,
    /// counting starts when the count is, and OUT rises once at zero (a one-shot; the counter
    /// waits for a count after a bare control word).
    InterruptOnTerminalCount = 0,
    /// Mode 2, rate generator: OUT drops for one input clock every `count` clocks (periodic;
    /// a count of 1 is illegal).
    RateGenerator = 2,
}

/// An 8254 control word (Intel 8254 datasheet, "Control Word Format"), binary counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    pub channel: Channel,
    pub access: Access,
    pub mode: Mode,
}

impl Command {
    /// The byte written to port 0x43 (bit 0 = 0: binary, not BCD).
    pub const fn bits(self) -> u8 {
        ((self.channel as u8) << 6) | ((self.access as u8) << 4) | ((self.mode as u8) << 1)
    }
}

/// The smallest count the driver writes: Linux's `i8253` min_delta (0xF), well clear of mode
/// 2's illegal count of 1.
pub const MIN_COUNT: u16 = 0xf;
/// The largest count: the whole 16-bit counter (65 535 clocks, 54.9 ms; 0 would mean 65 536).
pub const MAX_COUNT: u16 = 0xffff;

fn write_command(command: Command) {
    let mut port = Port::<u8>::new(MODE_COMMAND);
    // SAFETY: port 0x43 is the 8254's control word register on every PC-compatible machine;
    // the commands written program channel 0 or 2 only, which nothing else in the kernel uses
    // at the same time (channel 2 at boot, channel 0 by its one clock event device).
    unsafe { port.write(command.bits()) }
}

fn write_count(data_port: u16, count: u16) {
    let mut data = Port::<u8>::new(data_port);
    // SAFETY: ports 0x40 and 0x42 are the 8254's channel 0 and 2 data ports; after a
    // low-then-high control word the count is written as two bytes.
    unsafe {
        data.write(count as u8);
        data.write((count >> 8) as u8);
    }
}

/// Starts channel 2 counting down `ticks` (at most 0xffff) from now; [`channel2_expired`] turns
/// true when it reaches zero.
pub fn start_channel2(ticks: u16) {
    let mut port_b = Port::<u8>::new(PORT_B);
    // SAFETY: port 0x61 is the system control port on every PC-compatible machine; channel 2
    // drives only the speaker, which stays disabled.
    unsafe {
        let b = port_b.read();
        port_b.write((b & !PORT_B_SPEAKER) | PORT_B_GATE2);
    }
    write_command(Command {
        channel: Channel::Two,
        access: Access::LowThenHigh,
        mode: Mode::InterruptOnTerminalCount,
    });
    write_count(CHANNEL2_DATA, ticks);
}

pub fn channel2_expired() -> bool {
    let mut port_b = Port::<u8>::new(PORT_B);
    // SAFETY: reading the system control port has no side effect.
    unsafe { port_b.read() & PORT_B_OUT2 != 0 }
}

/// Channel 0 one-shot: IRQ0 rises once, `count` input clocks from now (clamped to
/// [`MIN_COUNT`]..=[`MAX_COUNT`]).
pub fn channel0_oneshot(count: u64) {
    write_command(Command {
        channel: Channel::Zero,
        access: Access::LowThenHigh,
        mode: Mode::InterruptOnTerminalCount,
    });
    write_count(CHANNEL0_DATA, clamp(count));
}

/// Channel 0 periodic: IRQ0 every `count` input clocks (clamped as for the one-shot).
pub fn channel0_periodic(count: u64) {
    write_command(Command { channel: Channel::Zero, access: Access::LowThenHigh, mode: Mode::RateGenerator });
    write_count(CHANNEL0_DATA, clamp(count));
}

/// Channel 0 stopped: a mode 0 control word without a count, after which the counter waits
/// for a count (and OUT stays low). An event already under way in an emulator may still raise
/// IRQ0 once: the caller drops events while it is shut down.
pub fn channel0_stop() {
    write_command(Command {
        channel: Channel::Zero,
        access: Access::LowThenHigh,
        mode: Mode::InterruptOnTerminalCount,
    });
}

fn clamp(count: u64) -> u16 {
    count.clamp(u64::from(MIN_COUNT), u64::from(MAX_COUNT)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_words_match_the_datasheet_table() {
        let two_mode0 = Command {
            channel: Channel::Two,
            access: Access::LowThenHigh,
            mode: Mode::InterruptOnTerminalCount,
        };
        assert_eq!(two_mode0.bits(), 0b1011_0000, "the calibration's word, as before");
        let zero_mode0 = Command { channel: Channel::Zero, ..two_mode0 };
        assert_eq!(zero_mode0.bits(), 0x30, "Linux's pit_shutdown / pit_set_oneshot");
        let zero_mode2 = Command { mode: Mode::RateGenerator, ..zero_mode0 };
        assert_eq!(zero_mode2.bits(), 0x34, "Linux's pit_set_periodic");
    }

    #[test]
    fn counts_stay_within_the_16_bit_counter() {
        assert_eq!(clamp(0), MIN_COUNT);
        assert_eq!(clamp(1), MIN_COUNT);
        assert_eq!(clamp(1000), 1000);
        assert_eq!(clamp(1 << 20), MAX_COUNT);
    }
}
