// Fixture for `scripts/check-unsafe --self-test`: what passes and what must be reported.
// Lines marked BAD are the offences the check must report, and no others.

pub fn documented(p: *const u32) -> u32 {
    // SAFETY: the caller hands a valid pointer.
    unsafe { p.read_volatile() }
}

pub fn multi_line_statement(p: *const u32) -> u32 {
    // SAFETY: the comment is above the statement the block belongs to.
    let value =
        unsafe { p.read_volatile() };
    value
}

pub fn one_comment_covers_one_block(p: *mut u32) {
    // SAFETY: covers the first block only.
    unsafe { p.write_volatile(1) };
    unsafe { p.write_volatile(2) }; // BAD
}

pub fn blank_line_breaks_the_link(p: *mut u32) {
    // SAFETY: too far away.

    unsafe { p.write_volatile(1) }; // BAD
}

pub fn previous_statement_ends_the_search(p: *mut u32) {
    // SAFETY: belongs to the statement below, not to the block after it.
    let q = p;
    unsafe { q.write_volatile(1) }; // BAD
}

pub fn comment_and_strings_do_not_count(p: *mut u32) {
    let _s = "unsafe { // SAFETY: in a string }";
    // This comment mentions unsafe { but says nothing about why.
    unsafe { p.write_volatile(1) }; // BAD
}

pub fn trailing_comment_counts(p: *mut u32) {
    unsafe { p.write_volatile(1) }; // SAFETY: the caller hands a valid pointer.
}

pub fn closure(p: *mut u32) {
    let f = || unsafe { p.write_volatile(1) }; // BAD
    f();
}

pub struct Device(*mut u32);

// SAFETY: the register is reachable from every CPU.
unsafe impl Send for Device {}
unsafe impl Sync for Device {} // BAD

unsafe extern "C" { // BAD
    static SYMBOL: u8;
}

/// Writes the register.
///
/// # Safety
/// `p` must be valid for writes.
#[inline]
pub unsafe fn documented_fn(p: *mut u32) {
    // SAFETY: the caller's contract.
    unsafe { p.write_volatile(1) }
}

/// Writes the register, but says nothing of its contract.
pub unsafe fn undocumented_fn(p: *mut u32) { // BAD
    // SAFETY: the caller's contract.
    unsafe { p.write_volatile(1) }
}

pub unsafe trait Marker {} // BAD

pub struct Alloc;

// SAFETY: forwards to the system allocator.
unsafe impl core::alloc::GlobalAlloc for Alloc {
    // A trait impl's method: the trait documents its contract.
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: core::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) } // BAD
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn exported() {}
