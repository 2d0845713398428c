//! The CPU's waiting instructions, for the idle loop above (`time::idle`): `sti; hlt`, and
//! `monitor; sti; mwait` with the deepest C-state hint CPUID offers. Policy (which to use, the
//! devices that stop and the broadcast handover) is the idle loop's, not this driver's.

/// CPUID.01H:ECX.MONITOR[bit 3] (SDM vol. 2, CPUID).
const CPUID_MONITOR: u32 = 1 << 3;

/// CPUID.01H:ECX[bit 31]: running under a hypervisor, whose vendor leaf 0x40000000 names it.
const CPUID_HYPERVISOR: u32 = 1 << 31;

/// Whether this is QEMU's TCG, whose MWAIT does not wait on a machine with more than one CPU
/// (it returns at once, so an idle loop on it spins).
fn under_tcg() -> bool {
    if core::arch::x86_64::__cpuid(1).ecx & CPUID_HYPERVISOR == 0 {
        return false;
    }
    let v = core::arch::x86_64::__cpuid(0x4000_0000);
    let mut vendor = [0u8; 12];
    vendor[0..4].copy_from_slice(&v.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&v.ecx.to_le_bytes());
    vendor[8..12].copy_from_slice(&v.edx.to_le_bytes());
    &vendor == b"TCGTCGTCGTCG"
}

/// The deepest C-state's MWAIT hint: from CPUID leaf 5's sub-state counts (EDX, 4 bits per
/// C-state from C0), the deepest state n >= 1 with a sub-state gives hint (n - 1) << 4; C1 (0)
/// when leaf 5 says nothing. `None` without MONITOR/MWAIT, or where MWAIT does not wait.
pub fn deepest_mwait_hint() -> Option<u32> {
    let leaf1 = core::arch::x86_64::__cpuid(1);
    if leaf1.ecx & CPUID_MONITOR == 0 {
        return None;
    }
    if under_tcg() {
        log::info!(
            "idle: QEMU TCG offers MONITOR/MWAIT, but its MWAIT does not wait with several CPUs: hlt instead"
        );
        return None;
    }
    if core::arch::x86_64::__cpuid(0).eax < 5 {
        return Some(0);
    }
    let substates = core::arch::x86_64::__cpuid(5).edx;
    let deepest = (1..8).rev().find(|&n| (substates >> (4 * n)) & 0xf != 0).unwrap_or(1);
    Some(((deepest - 1) as u32) << 4)
}

/// `monitor` on `address`, then `sti; mwait` with `hint`: like `sti; hlt`, the interrupt
/// shadow of `sti` keeps interrupts off until `mwait` waits, so one that is already pending
/// ends the wait instead of being taken before it.
pub fn mwait(hint: u32, address: u64) {
    // SAFETY: MONITOR/MWAIT are offered (CPUID checked in `deepest_mwait_hint`); MONITOR only
    // arms address monitoring of a valid kernel address (a per-CPU counter) and MWAIT waits
    // with interrupts enabled as a break event, so it returns at the next interrupt. Neither
    // touches memory or the stack.
    unsafe {
        core::arch::asm!("monitor", in("rax") address, in("ecx") 0u32, in("edx") 0u32, options(nostack, preserves_flags));
        core::arch::asm!("sti", "mwait", in("eax") hint, in("ecx") 0u32, options(nostack));
    }
}
