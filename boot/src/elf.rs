//! Just enough ELF64 reading to find a named section: test kernels describe the QEMU boots they
//! need in a `.kernel_test` section (see `tests/src/lib.rs`).

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// The bytes of section `name` of a little-endian ELF64 image, or `None` when the image is not
/// such an ELF, is malformed, or has no section of that name.
pub fn section<'a>(image: &'a [u8], name: &str) -> Option<&'a [u8]> {
    // ELF header: magic, class 2 (64-bit), data 1 (little-endian).
    if image.get(0..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = usize::try_from(u64_at(image, 0x28)?).ok()?;
    let shentsize = usize::from(u16_at(image, 0x3a)?);
    let shnum = usize::from(u16_at(image, 0x3c)?);
    let shstrndx = usize::from(u16_at(image, 0x3e)?);
    if shentsize < 0x40 {
        return None;
    }
    let header = |i: usize| -> Option<(u32, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name_off = u32_at(image, h)?;
        let off = usize::try_from(u64_at(image, h + 0x18)?).ok()?;
        let size = usize::try_from(u64_at(image, h + 0x20)?).ok()?;
        Some((name_off, off, size))
    };
    let (_, strtab_off, strtab_size) = header(shstrndx)?;
    let strtab = image.get(strtab_off..strtab_off.checked_add(strtab_size)?)?;
    for i in 0..shnum {
        let (name_off, off, size) = header(i)?;
        let rest = strtab.get(name_off as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        if &rest[..end] == name.as_bytes() {
            return image.get(off..off.checked_add(size)?);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with a null section, a string table and one data section.
    fn tiny_elf(section_name: &str, data: &[u8]) -> Vec<u8> {
        let mut strtab = vec![0u8];
        let shstrtab_name = strtab.len();
        strtab.extend_from_slice(b".shstrtab\0");
        let data_name = strtab.len();
        strtab.extend_from_slice(section_name.as_bytes());
        strtab.push(0);

        let mut img = vec![0u8; 0x40];
        img[0..6].copy_from_slice(b"\x7fELF\x02\x01");
        let strtab_off = img.len();
        img.extend_from_slice(&strtab);
        let data_off = img.len();
        img.extend_from_slice(data);
        let shoff = img.len();
        let mut sh = |name: usize, off: usize, size: usize| {
            let mut h = [0u8; 0x40];
            h[0..4].copy_from_slice(&(name as u32).to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            img.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(shstrtab_name, strtab_off, strtab.len());
        sh(data_name, data_off, data.len());
        img[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        img[0x3a..0x3c].copy_from_slice(&0x40u16.to_le_bytes());
        img[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        img[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        img
    }

    #[test]
    fn finds_named_section() {
        let img = tiny_elf(".kernel_test", b"bios: --smp 2\n");
        assert_eq!(section(&img, ".kernel_test"), Some(&b"bios: --smp 2\n"[..]));
        assert_eq!(section(&img, ".other"), None);
    }

    #[test]
    fn truncated_or_foreign_images_give_none() {
        let img = tiny_elf(".kernel_test", b"x");
        for cut in [0, 5, 0x30, img.len() - 0x1c] {
            assert_eq!(section(&img[..cut], ".kernel_test"), None, "cut at {cut}");
        }
        assert_eq!(section(b"MZ not an elf at all, padding padding padding padding", ".kernel_test"), None);
    }
}
