//! Which interrupt destination format this machine uses: the 8-bit physical APIC id, or the
//! extended 15-bit id when the hypervisor offers it (KVM's `KVM_FEATURE_MSI_EXT_DEST_ID`, found
//! in its CPUID leaves). How each format encodes an id in an IOAPIC entry or an MSI message,
//! and which ids it cannot name, is `ioapic-regs`'s `destination` module (`kernel/ioapic/`).
//! A CPU the format cannot reach gets no per-CPU device that interrupts it this way: it is
//! served by its LAPIC timer or by broadcast (an IPI).

use core::arch::x86_64::__cpuid;
use core::sync::atomic::{AtomicU8, Ordering};

pub use ioapic_regs::destination::{DestinationFormat, Unreachable};

/// KVM's paravirtual CPUID leaves: the signature at 0x4000_0000, features at 0x4000_0001.
const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// `KVM_FEATURE_MSI_EXT_DEST_ID` (Linux `arch/x86/include/uapi/asm/kvm_para.h`).
const KVM_FEATURE_MSI_EXT_DEST_ID: u32 = 1 << 15;

/// 0: not decided; 1: Physical8; 2: Extended15.
static FORMAT: AtomicU8 = AtomicU8::new(0);

/// The format this machine's messages use: extended when the hypervisor offers it, else 8-bit.
/// Decided once (on the boot CPU, from CPUID) and the same for every CPU.
pub fn format() -> DestinationFormat {
    match FORMAT.load(Ordering::Relaxed) {
        1 => DestinationFormat::Physical8,
        2 => DestinationFormat::Extended15,
        _ => {
            let f = detect();
            FORMAT.store(if f == DestinationFormat::Extended15 { 2 } else { 1 }, Ordering::Relaxed);
            f
        }
    }
}

fn detect() -> DestinationFormat {
    // The hypervisor bit (CPUID.1:ECX[31]) says whether the 0x4000_0000 leaves mean anything.
    if __cpuid(1).ecx & (1 << 31) == 0 {
        return DestinationFormat::Physical8;
    }
    let sig = __cpuid(KVM_CPUID_SIGNATURE);
    let kvm = [sig.ebx, sig.ecx, sig.edx].iter().flat_map(|r| r.to_le_bytes()).eq(*b"KVMKVMKVM\0\0\0");
    if kvm
        && sig.eax >= KVM_CPUID_FEATURES
        && __cpuid(KVM_CPUID_FEATURES).eax & KVM_FEATURE_MSI_EXT_DEST_ID != 0
    {
        DestinationFormat::Extended15
    } else {
        DestinationFormat::Physical8
    }
}
