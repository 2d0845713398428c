//! Fuzzes the validation that turns raw ACPI table bytes into the kernel's structs
//! (`kernel::arch::x86_64::acpi::{parse_hpet, parse_madt, parse_fadt_pm_timer, parse_fadt_rtc}`): firmware
//! tables are untrusted input.
//!
//! The first input byte says how to doctor the rest so the fuzzer gets past the header checks:
//! bit 0 picks the signature written by bit 1 ("HPET" or "APIC"; "FACP" if bit 4 is set too),
//! bit 2 makes the header's length the input's, bit 3 fixes the checksum. Checked on every input: no panic, an accepted
//! table satisfies what the kernel then relies on, and bytes past the table's declared length
//! never change the verdict.
#![no_main]

use kernel::arch::x86_64::acpi::{self, AcpiProblem, HPET_BLOCK_ALIGN, SDT_HEADER_LEN, build};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else { return };
    let mut bytes = rest.to_vec();
    if bytes.len() >= SDT_HEADER_LEN {
        if flags & 2 != 0 {
            let signature = match (flags & 0x10 != 0, flags & 1 != 0) {
                (true, _) => b"FACP",
                (false, true) => b"HPET",
                (false, false) => b"APIC",
            };
            bytes[..4].copy_from_slice(signature);
        }
        if flags & 4 != 0 {
            let len = bytes.len() as u32;
            bytes[4..8].copy_from_slice(&len.to_le_bytes());
        }
        if flags & 8 != 0 {
            build::fix_checksum(&mut bytes);
        }
    }
    check(&bytes);
});

fn check(bytes: &[u8]) {
    let hpet = acpi::parse_hpet(bytes);
    let madt = acpi::parse_madt(bytes);
    let pm_timer = acpi::parse_fadt_pm_timer(bytes);
    let rtc = acpi::parse_fadt_rtc(bytes);
    if let Ok(r) = &rtc {
        let l = r.layout;
        for index in [l.century, l.day_alarm, l.month_alarm].into_iter().flatten() {
            assert!((0x0e..=0x7f).contains(&index), "accepted RTC register {index:#x} is not CMOS RAM");
        }
        acpi::validate_table(bytes, "FACP", acpi::FADT_MIN_LEN).expect("accepted, so valid");
    }
    if let Ok(pm) = &pm_timer {
        assert!(pm.port != 0 && (pm.bits == 24 || pm.bits == 32), "accepted PM timer {pm:?}");
        acpi::validate_table(bytes, "FACP", acpi::FADT_MIN_LEN).expect("accepted, so valid");
    }
    if let Err(e) = &hpet {
        let _ = format!("{e}");
    }
    if let Err(e) = &madt {
        let _ = format!("{e}");
    }
    if let Ok(t) = &hpet {
        let table = acpi::validate_table(bytes, "HPET", acpi::HPET_TABLE_LEN).expect("accepted, so valid");
        assert!(table.len() >= acpi::HPET_TABLE_LEN);
        assert!(t.base != 0 && t.base % HPET_BLOCK_ALIGN == 0, "accepted HPET base {:#x}", t.base);
        assert!((1..=32).contains(&t.comparators), "{} comparators", t.comparators);
    }
    if let Ok(m) = &madt {
        let table = acpi::validate_table(bytes, "APIC", acpi::MADT_FIXED_LEN).expect("accepted, so valid");
        let entries = m.processors.len() + m.ioapics.len() + m.overrides.len() + m.nmis.len();
        assert!(
            entries <= (table.len() - acpi::MADT_FIXED_LEN) / 2,
            "{entries} entries in {} bytes",
            table.len()
        );
        let _ = m.isa_irq_to_gsi(0);
        let _ = m.enabled_processors().count();
    }
    // The parsers read the table's declared length and nothing beyond it.
    if bytes.len() >= SDT_HEADER_LEN {
        let declared = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        if (SDT_HEADER_LEN..bytes.len()).contains(&declared) {
            let table = &bytes[..declared];
            assert_eq!(acpi::parse_hpet(table), hpet, "HPET verdict depends on bytes past the table");
            assert_eq!(acpi::parse_madt(table), madt, "MADT verdict depends on bytes past the table");
            assert_eq!(acpi::parse_fadt_pm_timer(table), pm_timer, "FADT verdict depends on bytes past the table");
            assert_eq!(acpi::parse_fadt_rtc(table), rtc, "FADT RTC verdict depends on bytes past the table");
        }
    }
    // A rejected table says why in terms of its own fields.
    if let Err(AcpiProblem::Truncated { length, needed, .. }) = hpet {
        assert!(length < needed);
    }
}
