//! QEMU's `isa-debug-exit` device: the kernel's verdict becomes QEMU's exit status.

use x86_64::instructions::port::Port;

/// I/O port of `-device isa-debug-exit,iobase=0xf4,iosize=0x04` (set by the runner).
const ISA_DEBUG_EXIT_PORT: u16 = 0xf4;

/// The value written to the port; QEMU exits with `(value << 1) | 1`, so 33 and 35. Keep in step
/// with `boot/src/qemu.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    Success = 0x10,
    Failure = 0x11,
}

/// Leaves QEMU with `code`; without the exit device (real hardware) the CPU halts for good.
pub fn exit_qemu(code: ExitCode) -> ! {
    let mut port = Port::<u32>::new(ISA_DEBUG_EXIT_PORT);
    // SAFETY: port 0xf4 is QEMU's debug-exit device, or unused on a machine without it; a
    // write has no effect on memory.
    unsafe { port.write(code as u32) };
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
