//! The real-mode start-up code of application processors.
//!
//! A STARTUP IPI starts an AP in real mode at `page * 4096` with CS = page << 8, IP = 0. The
//! code below is copied to such a page below 1 MiB (identity-mapped, so that it keeps running
//! when paging comes on) and takes the architectural path (SDM 10.8.5): real mode -> 32-bit
//! protected mode (code and data segments based at the page, so the code's own offsets stay
//! valid) -> PAE, the kernel's CR3, EFER.LME|NXE, CR0.PG -> a far jump into its 64-bit code
//! segment. There it loads the stack, argument and entry point the boot CPU wrote into its
//! parameter block and calls the entry point, never to return.
//!
//! Everything is addressed relative to the start of the code (segments based at the page, then
//! RIP-relative in long mode); the absolute addresses (GDT base, the 32-bit segments' base, the
//! far-jump target into long mode) are patched in by `install`, the parameters by `prepare`.

use super::StartError;
use core::arch::global_asm;

global_asm!(
    r#"
    .section .rodata.ap_trampoline, "a"
    .global ap_trampoline_start
    .global ap_trampoline_end
    .global ap_tramp_gdt
    .global ap_tramp_gdt_base
    .global ap_tramp_gdt_code32
    .global ap_tramp_gdt_data32
    .global ap_tramp_far_target
    .global ap_tramp_long_mode
    .global ap_tramp_cr3
    .global ap_tramp_stack
    .global ap_tramp_entry
    .global ap_tramp_arg
    .code16
ap_trampoline_start:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (ap_tramp_gdt_ptr - ap_trampoline_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x18, $(ap_tramp_protected_mode - ap_trampoline_start)

    .code32
ap_tramp_protected_mode:
    mov $0x20, %ax
    mov %ax, %ds
    mov %cr4, %eax
    or $(1 << 5), %eax
    mov %eax, %cr4
    mov (ap_tramp_cr3 - ap_trampoline_start), %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx
    rdmsr
    or $((1 << 8) | (1 << 11)), %eax
    wrmsr
    mov %cr0, %eax
    or $0x80010000, %eax
    mov %eax, %cr0
    ljmpl *(ap_tramp_far_target - ap_trampoline_start)

    .code64
ap_tramp_long_mode:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %ax, %ax
    mov %ax, %fs
    mov %ax, %gs
    mov ap_tramp_stack(%rip), %rsp
    mov ap_tramp_arg(%rip), %rdi
    mov ap_tramp_entry(%rip), %rax
    call *%rax
2:
    cli
    hlt
    jmp 2b

    .balign 8
ap_tramp_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
ap_tramp_gdt_code32:
    .quad 0x00409a000000ffff
ap_tramp_gdt_data32:
    .quad 0x004092000000ffff
ap_tramp_gdt_ptr:
    .word 39
ap_tramp_gdt_base:
    .long 0
ap_tramp_far_target:
    .long 0
    .word 0x08
    .balign 8
ap_tramp_cr3:
    .quad 0
ap_tramp_stack:
    .quad 0
ap_tramp_entry:
    .quad 0
ap_tramp_arg:
    .quad 0
ap_trampoline_end:
    .code64
    .text
"#,
    options(att_syntax)
);

// SAFETY: each symbol is a label the `global_asm!` above defines in `.rodata.ap_trampoline`,
// which is never written; they are declared as `u8` only so that `&raw const` yields their
// addresses, and no Rust code reads them except as the bytes between the start and end labels.
unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_tramp_gdt: u8;
    static ap_tramp_gdt_base: u8;
    static ap_tramp_gdt_code32: u8;
    static ap_tramp_gdt_data32: u8;
    static ap_tramp_far_target: u8;
    static ap_tramp_long_mode: u8;
    static ap_tramp_cr3: u8;
    static ap_tramp_stack: u8;
    static ap_tramp_entry: u8;
    static ap_tramp_arg: u8;
}

/// Offset of a trampoline symbol from its start.
fn offset(symbol: *const u8) -> usize {
    symbol as usize - (&raw const ap_trampoline_start) as usize
}

/// The trampoline code's bytes as linked into the kernel.
fn image() -> &'static [u8] {
    let start = &raw const ap_trampoline_start;
    let end = &raw const ap_trampoline_end;
    // SAFETY: both symbols delimit the assembled trampoline in .rodata, start before end.
    unsafe { core::slice::from_raw_parts(start, end as usize - start as usize) }
}

/// The trampoline installed at a low physical page.
pub struct Trampoline {
    /// Physical (= identity-mapped virtual) address of the page.
    phys: u64,
    /// Where the kernel reaches the page (its physical-memory mapping).
    window: *mut u8,
}

impl Trampoline {
    /// Copies the code to the page at `phys` (< 1 MiB, page-aligned, identity-mapped and
    /// reachable at `window`) and patches its absolute addresses.
    ///
    /// # Safety
    /// The page must be free RAM reserved for this purpose, mapped writable at `window`, and
    /// identity-mapped executable in the page tables whose root is in CR3.
    pub unsafe fn install(phys: u64, window: *mut u8) -> Trampoline {
        let code = image();
        assert!(phys < 0x10_0000 && phys % 4096 == 0 && code.len() <= 4096);
        // SAFETY: the caller guarantees `window` maps a whole free page.
        unsafe { core::ptr::copy_nonoverlapping(code.as_ptr(), window, code.len()) };
        let t = Trampoline { phys, window };
        let gdt = phys as usize + offset(&raw const ap_tramp_gdt);
        let long_mode = phys as usize + offset(&raw const ap_tramp_long_mode);
        t.write_u32(offset(&raw const ap_tramp_gdt_base), gdt as u32);
        t.write_u32(offset(&raw const ap_tramp_far_target), long_mode as u32);
        for descriptor in [offset(&raw const ap_tramp_gdt_code32), offset(&raw const ap_tramp_gdt_data32)] {
            t.set_descriptor_base(descriptor, phys as u32);
        }
        t
    }

    /// The STARTUP IPI's vector: the page number.
    /// The page's physical address.
    pub fn phys(&self) -> u64 {
        self.phys
    }

    pub fn startup_page(&self) -> u8 {
        (self.phys >> 12) as u8
    }

    fn write_u32(&self, at: usize, value: u32) {
        // SAFETY: `at` is an offset inside the copied image (from `offset`), within the page.
        unsafe { core::ptr::write_unaligned(self.window.add(at) as *mut u32, value) }
    }

    /// Writes `base` into the segment descriptor at `at` (bytes 2-4 and 7).
    fn set_descriptor_base(&self, at: usize, base: u32) {
        let b = base.to_le_bytes();
        for (i, byte) in [(2, b[0]), (3, b[1]), (4, b[2]), (7, b[3])] {
            // SAFETY: `at` is a descriptor inside the copied image; i < 8 stays inside it.
            unsafe { self.window.add(at + i).write_volatile(byte) };
        }
    }

    fn write_u64(&self, at: usize, value: u64) {
        // SAFETY: as in `write_u32`.
        unsafe { core::ptr::write_volatile(self.window.add(at) as *mut u64, value) }
    }

    /// Sets what the next AP to start will use; `entry` is called with `arg` on `stack_top`.
    /// Fails if `cr3` lies above 4 GiB: the code loads it in 32-bit protected mode.
    pub fn prepare(
        &self,
        cr3: u64,
        stack_top: u64,
        entry: extern "C" fn(u64) -> !,
        arg: u64,
    ) -> Result<(), StartError> {
        check_cr3(cr3)?;
        self.write_u64(offset(&raw const ap_tramp_cr3), cr3);
        self.write_u64(offset(&raw const ap_tramp_stack), stack_top);
        self.write_u64(offset(&raw const ap_tramp_entry), entry as usize as u64);
        self.write_u64(offset(&raw const ap_tramp_arg), arg);
        Ok(())
    }
}

/// The trampoline loads CR3 with a 32-bit move before long mode: the root must lie below 4 GiB.
pub fn check_cr3(cr3: u64) -> Result<(), StartError> {
    if cr3 < 1 << 32 { Ok(()) } else { Err(StartError::PageTableAbove4GiB { cr3 }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_table_root_above_4gib_leaves_the_cpu_out() {
        assert_eq!(check_cr3(0xffff_f000), Ok(()));
        assert_eq!(check_cr3(1 << 32), Err(StartError::PageTableAbove4GiB { cr3: 1 << 32 }));
    }
}
