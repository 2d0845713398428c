// Fixture for `scripts/check-unsafe --self-test`: a bare `unsafe` block the check must reject.
// Lines marked BAD are the offences the check must report, and no others.

pub fn read(p: *const u32) -> u32 {
    unsafe { p.read_volatile() } // BAD
}
