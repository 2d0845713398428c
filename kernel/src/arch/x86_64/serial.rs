//! COM1, the kernel's console.

use core::fmt::{self, Write};
use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550Tty};

/// I/O base of COM1.
const COM1: u16 = 0x3f8;

static COM1_PORT: Mutex<Option<Uart16550Tty<PioBackend>>> = Mutex::new(None);

/// Programs COM1 (8-N-1, FIFO on). A UART that fails its loopback self-test leaves the console
/// silent rather than stopping the boot.
pub fn init() {
    // SAFETY: 0x3f8..0x400 is COM1 on every PC-compatible machine, and this is the only code that
    // programs it; the port is used behind `COM1_PORT` from here on.
    let uart = unsafe { Uart16550Tty::new_port(COM1, Config::default()) };
    *COM1_PORT.lock() = uart.ok();
}

/// Writes to the console with interrupts off, so an interrupt handler that logs cannot spin on a
/// lock held by the code it interrupted.
pub fn print(args: fmt::Arguments) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(uart) = COM1_PORT.lock().as_mut() {
            let _ = uart.write_fmt(args);
        }
    });
}

/// For the panic and fatal-exception paths: the lock may be held by the code that failed, so wait
/// only briefly for it and then write regardless.
pub fn emergency_print(args: fmt::Arguments) {
    for _ in 0..1_000_000 {
        if let Some(mut guard) = COM1_PORT.try_lock() {
            if let Some(uart) = guard.as_mut() {
                let _ = uart.write_fmt(args);
            }
            return;
        }
        core::hint::spin_loop();
    }
    // SAFETY: the holder is this CPU's interrupted code or a CPU that stopped making progress;
    // nothing runs after the caller but the exit, so the interleaving can only garble text.
    unsafe { COM1_PORT.force_unlock() };
    if let Some(uart) = COM1_PORT.lock().as_mut() {
        let _ = uart.write_fmt(args);
    }
}
