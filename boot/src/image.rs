//! Kernel ELF -> bootable disk image, with the `bootloader` crate's builders.

use crate::options::Firmware;
use bootloader::{BiosBoot, BootConfig, UefiBoot};
use std::path::{Path, PathBuf};

/// Builds (or reuses, when it is newer than the ELF) the disk image for `kernel`.
pub fn disk_image(kernel: &Path, firmware: Firmware) -> Result<PathBuf, String> {
    let suffix = match firmware {
        Firmware::Bios => "bios.img",
        Firmware::Uefi => "uefi.img",
    };
    let image = kernel.with_extension(suffix);
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let kernel_time =
        modified(kernel).ok_or_else(|| format!("cannot read kernel ELF {}", kernel.display()))?;
    if modified(&image).is_some_and(|t| t >= kernel_time) {
        return Ok(image);
    }
    // The bootloader's own serial lines would interleave with the kernel's log; the kernel
    // prints what it found itself.
    let mut config = BootConfig::default();
    config.serial_logging = false;
    config.frame_buffer_logging = false;
    let built = match firmware {
        Firmware::Bios => BiosBoot::new(kernel).set_boot_config(&config).create_disk_image(&image),
        Firmware::Uefi => UefiBoot::new(kernel).set_boot_config(&config).create_disk_image(&image),
    };
    built.map_err(|e| format!("building the {suffix} for {}: {e:#}", kernel.display()))?;
    Ok(image)
}
