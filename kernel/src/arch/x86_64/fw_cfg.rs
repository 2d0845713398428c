//! QEMU's firmware configuration device (I/O ports 0x510/0x511): where the runner puts the
//! kernel command line, as the file `opt/timerkernel/cmdline`, and for a QEMU test kernel the
//! name of the variant being booted, as `opt/timerkernel/variant`.

use alloc::string::String;
use x86_64::instructions::port::Port;

const FW_CFG_PORT_SELECTOR: u16 = 0x510;
const FW_CFG_PORT_DATA: u16 = 0x511;
/// Item 0 reads "QEMU" when the device exists (QEMU docs/specs/fw_cfg.rst).
const FW_CFG_SIGNATURE: u16 = 0x0000;
/// The file directory: a big-endian count, then 64-byte entries.
const FW_CFG_FILE_DIR: u16 = 0x0019;
/// Longest file name, NUL included.
const FW_CFG_MAX_FILE_PATH: usize = 56;
/// The name the runner (`boot/src/qemu.rs`) gives the command line.
pub const CMDLINE_FILE: &str = "opt/timerkernel/cmdline";
/// The name the runner gives the test variant being booted.
pub const VARIANT_FILE: &str = "opt/timerkernel/variant";
/// Longest command line (or variant name) the kernel accepts.
const CMDLINE_MAX: u32 = 4096;

fn select(item: u16) {
    let mut port = Port::<u16>::new(FW_CFG_PORT_SELECTOR);
    // SAFETY: 0x510 is fw_cfg's selector on QEMU's PC machines; writing it only chooses which
    // item the data port reads. Elsewhere nothing decodes the port.
    unsafe { port.write(item) };
}

fn read_bytes(buf: &mut [u8]) {
    let mut port = Port::<u8>::new(FW_CFG_PORT_DATA);
    for b in buf {
        // SAFETY: 0x511 is fw_cfg's data port; reading advances within the selected item only.
        *b = unsafe { port.read() };
    }
}

fn present() -> bool {
    select(FW_CFG_SIGNATURE);
    let mut sig = [0u8; 4];
    read_bytes(&mut sig);
    &sig == b"QEMU"
}

/// (selector, size) of the fw_cfg file `name`.
fn find(name: &str) -> Option<(u16, u32)> {
    if !present() {
        return None;
    }
    select(FW_CFG_FILE_DIR);
    let mut count = [0u8; 4];
    read_bytes(&mut count);
    for _ in 0..u32::from_be_bytes(count) {
        let mut entry = [0u8; 8 + FW_CFG_MAX_FILE_PATH];
        read_bytes(&mut entry);
        let size = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
        let selector = u16::from_be_bytes([entry[4], entry[5]]);
        let raw_name = &entry[8..];
        let len = raw_name.iter().position(|&b| b == 0).unwrap_or(raw_name.len());
        if &raw_name[..len] == name.as_bytes() {
            return Some((selector, size));
        }
    }
    None
}

/// The kernel command line, or `None` when there is no fw_cfg device or no such file. A line
/// that is too long or not UTF-8 is logged and ignored.
pub fn kernel_cmdline() -> Option<String> {
    read_text(CMDLINE_FILE)
}

/// The QEMU test variant being booted (set by the runner for test kernels only).
pub fn test_variant() -> Option<String> {
    read_text(VARIANT_FILE)
}

/// The fw_cfg file `name` as trimmed text; `None` when absent, too long or not UTF-8 (the last
/// two logged).
fn read_text(name: &str) -> Option<String> {
    let (selector, size) = find(name)?;
    if size > CMDLINE_MAX {
        log::warn!("fw_cfg {name}: {size} bytes, more than {CMDLINE_MAX}; ignored");
        return None;
    }
    select(selector);
    let mut bytes = alloc::vec![0; size as usize];
    read_bytes(&mut bytes);
    match String::from_utf8(bytes) {
        Ok(s) => Some(String::from(s.trim())),
        Err(_) => {
            log::warn!("fw_cfg {name}: not UTF-8; ignored");
            None
        }
    }
}
