//! The CPU's side of ACPI S3: what the boot CPU's reset loses and the kernel code needs back
//! (control registers, EFER, PAT, XCR0, the stack and callee-saved registers), saved before the
//! sleep and restored by the waking vector's long-mode entry.
//!
//! `s3_suspend(ctx, enter, arg)` pushes the callee-saved registers, stores the stack pointer in
//! `ctx` and calls `enter(arg)`, which writes SLP_EN: if the machine sleeps, `enter` never
//! returns; if it does (the machine did not sleep), `s3_suspend` returns its result (0). On
//! wake the firmware runs the waking vector (the AP start-up code: real mode -> long mode on
//! the kernel's page tables, a stack of its own), which calls [`wake_entry`]; that restores
//! the registers below and jumps to `s3_wake_return(ctx)`, which takes the saved stack back and
//! returns 1 from `s3_suspend`, as if `enter` had returned 1. To Rust, `s3_suspend` is one call
//! that returns once.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::registers::model_specific::Msr;

global_asm!(
    r#"
    .text
    .global s3_suspend
s3_suspend:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, (%rdi)
    mov %rdx, %rdi
    sub $8, %rsp
    call *%rsi
    add $8, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

    .global s3_wake_return
s3_wake_return:
    mov (%rdi), %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    mov $1, %eax
    ret
"#,
    options(att_syntax)
);

// SAFETY: both are defined by the `global_asm!` above with the C calling convention:
// `s3_suspend` returns once (with `enter`'s result, or 1 through `s3_wake_return`), keeping the
// callee-saved registers; `s3_wake_return` needs a context `s3_suspend` filled and whose stack
// frame is still live.
unsafe extern "C" {
    fn s3_suspend(ctx: *mut u64, enter: extern "C" fn(u64) -> u64, arg: u64) -> u64;
    fn s3_wake_return(ctx: *const u64) -> !;
}

const IA32_EFER: u32 = 0xc000_0080;
const IA32_PAT: u32 = 0x277;
/// CR4.OSXSAVE: XCR0 is in use.
const CR4_OSXSAVE: u64 = 1 << 18;

/// The saved state; `rsp` first (the assembly's `(%rdi)`).
#[repr(C)]
pub struct Context {
    rsp: AtomicU64,
    cr0: AtomicU64,
    cr3: AtomicU64,
    cr4: AtomicU64,
    efer: AtomicU64,
    pat: AtomicU64,
    xcr0: AtomicU64,
}

/// The one context (one S3 at a time, on the boot CPU, interrupts off).
pub static CONTEXT: Context = Context {
    rsp: AtomicU64::new(0),
    cr0: AtomicU64::new(0),
    cr3: AtomicU64::new(0),
    cr4: AtomicU64::new(0),
    efer: AtomicU64::new(0),
    pat: AtomicU64::new(0),
    xcr0: AtomicU64::new(0),
};

/// What `save_and_sleep` returns when the machine slept and woke (else `enter`'s own result,
/// never this value).
pub const WOKE: u64 = 1;

/// Saves the control registers and MSRs, then runs `enter(arg)` through `s3_suspend`: [`WOKE`]
/// if the machine slept and woke (the registers are back), else what `enter` returned.
///
/// # Safety
/// Interrupts off, on the boot CPU, with the waking vector set to the code that calls
/// [`wake_entry`] with `&CONTEXT`; `enter` must either put the machine to sleep or return a
/// value other than [`WOKE`].
pub unsafe fn save_and_sleep(enter: extern "C" fn(u64) -> u64, arg: u64) -> u64 {
    use x86_64::registers::control::{Cr0, Cr3, Cr4};
    let c = &CONTEXT;
    c.cr0.store(Cr0::read_raw(), Ordering::Relaxed);
    let (frame, flags) = Cr3::read_raw();
    c.cr3.store(frame.start_address().as_u64() | u64::from(flags), Ordering::Relaxed);
    let cr4 = Cr4::read_raw();
    c.cr4.store(cr4, Ordering::Relaxed);
    // SAFETY: EFER and PAT exist on every x86_64 CPU; reading them has no side effect.
    unsafe {
        c.efer.store(Msr::new(IA32_EFER).read(), Ordering::Relaxed);
        c.pat.store(Msr::new(IA32_PAT).read(), Ordering::Relaxed);
    }
    if cr4 & CR4_OSXSAVE != 0 {
        c.xcr0.store(x86_64::registers::xcontrol::XCr0::read_raw(), Ordering::Relaxed);
    }
    // SAFETY: the caller's conditions; `CONTEXT.rsp` is the first field of a `repr(C)` static,
    // written by the assembly only through this pointer.
    unsafe { s3_suspend(c.rsp.as_ptr(), enter, arg) }
}

/// The waking vector's long-mode entry (the AP start-up code calls it on the wake stack, with
/// `ctx` = `&CONTEXT`): the saved registers back, then into `s3_wake_return`. It touches no
/// per-CPU state and logs nothing: GS is not set up yet.
pub extern "C" fn wake_entry(ctx: u64) -> ! {
    use x86_64::registers::control::{Cr0, Cr3, Cr4};
    use x86_64::structures::paging::PhysFrame;
    // SAFETY: the start-up code passes the address of `CONTEXT` (set by `S3::enter`).
    let c: &Context = unsafe { &*(ctx as *const Context) };
    let cr3 = c.cr3.load(Ordering::Relaxed);
    // SAFETY: the values are what this CPU ran the kernel with before the sleep (saved by
    // `save_and_sleep`), so the kernel's code and page tables stay valid under them: PAT
    // (caching types), EFER (LME stays set, long mode is active), CR4, XCR0 when CR4.OSXSAVE,
    // CR0 (PG and PE stay set), CR3 (the same page tables the start-up code loaded, with the
    // saved flags).
    unsafe {
        Msr::new(IA32_PAT).write(c.pat.load(Ordering::Relaxed));
        Msr::new(IA32_EFER).write(c.efer.load(Ordering::Relaxed));
        let cr4 = c.cr4.load(Ordering::Relaxed);
        Cr4::write_raw(cr4);
        if cr4 & CR4_OSXSAVE != 0 {
            x86_64::registers::xcontrol::XCr0::write_raw(c.xcr0.load(Ordering::Relaxed));
        }
        Cr0::write_raw(c.cr0.load(Ordering::Relaxed));
        Cr3::write_raw(
            PhysFrame::containing_address(x86_64::PhysAddr::new(cr3 & !0xfff)),
            (cr3 & 0xfff) as u16,
        );
        s3_wake_return(c.rsp.as_ptr())
    }
}
