use super::build::{self, HpetTableSpec};
use super::*;

#[test]
fn q35_hpet_table_parses() {
    let t = parse_hpet(&HpetTableSpec::default().bytes()).unwrap();
    assert_eq!(t.base, 0xfed0_0000);
    assert_eq!(t.comparators, 3);
    assert_eq!(t.pci_vendor_id, 0x8086);
    assert!(t.counter_64bit && t.legacy_route_capable);
    assert_eq!((t.hardware_revision, t.hpet_number, t.minimum_tick), (1, 0, 0x80));
}

#[test]
fn hpet_bad_checksum_is_rejected() {
    let mut b = HpetTableSpec::default().bytes();
    b[9] = b[9].wrapping_add(1);
    assert!(matches!(parse_hpet(&b), Err(AcpiProblem::BadChecksum { table: "HPET", .. })));
}

#[test]
fn hpet_base_in_io_space_is_rejected() {
    let b = HpetTableSpec { address_space: 1, ..Default::default() }.bytes();
    assert_eq!(parse_hpet(&b), Err(AcpiProblem::HpetBaseNotMemory { space_id: 1 }));
}

#[test]
fn hpet_base_zero_or_misaligned_is_rejected() {
    assert_eq!(
        parse_hpet(&HpetTableSpec { base: 0, ..Default::default() }.bytes()),
        Err(AcpiProblem::HpetBaseZero)
    );
    let b = HpetTableSpec { base: 0xfed0_0100, ..Default::default() }.bytes();
    assert_eq!(parse_hpet(&b), Err(AcpiProblem::HpetBaseMisaligned { base: 0xfed0_0100 }));
}

#[test]
fn truncated_hpet_table_is_rejected() {
    let full = HpetTableSpec::default().bytes();
    // The header claims fewer bytes than the table needs.
    let mut short = full[..50].to_vec();
    short[4..8].copy_from_slice(&50u32.to_le_bytes());
    build::fix_checksum(&mut short);
    assert!(matches!(parse_hpet(&short), Err(AcpiProblem::Truncated { length: 50, .. })));
    // The header claims more bytes than there are.
    assert!(matches!(parse_hpet(&full[..40]), Err(AcpiProblem::Truncated { .. })));
    assert!(matches!(parse_hpet(&full[..10]), Err(AcpiProblem::Truncated { .. })));
}

#[test]
fn wrong_signature_is_rejected() {
    let b = build::madt(0xfee0_0000, 0, &[]);
    assert_eq!(parse_hpet(&b), Err(AcpiProblem::WrongSignature { expected: "HPET" }));
}

#[test]
fn q35_madt_parses_processors_ioapic_overrides_and_nmi() {
    let m = parse_madt(&build::q35_madt(4)).unwrap();
    assert_eq!(m.local_apic_address, 0xfee0_0000);
    assert!(m.pcat_compat);
    assert_eq!(m.enabled_processors().count(), 4);
    assert_eq!(m.processors[3].apic_id, 3);
    assert_eq!(m.ioapics, [IoApicEntry { id: 0, address: 0xfec0_0000, gsi_base: 0 }]);
    assert_eq!(m.isa_irq_to_gsi(0), (2, Polarity::ActiveHigh, TriggerMode::Edge));
    assert_eq!(m.isa_irq_to_gsi(9), (9, Polarity::ActiveHigh, TriggerMode::Level));
    assert_eq!(m.isa_irq_to_gsi(4), (4, Polarity::ActiveHigh, TriggerMode::Edge));
    assert_eq!(
        m.nmis,
        [LapicNmi {
            processor_uid: None,
            lint: 1,
            polarity: Polarity::ConformsToBus,
            trigger: TriggerMode::ConformsToBus
        }]
    );
}

#[test]
fn x2apic_and_disabled_processors_are_reported() {
    let entries = [build::local_apic(0, 0, 1), build::local_apic(1, 1, 0b10), build::local_x2apic(300, 1, 7)];
    let m = parse_madt(&build::madt(0xfee0_0000, 0, &entries)).unwrap();
    assert_eq!(m.processors.len(), 3);
    assert!(!m.processors[1].enabled && m.processors[1].online_capable);
    assert_eq!(
        m.processors[2],
        Processor { uid: 7, apic_id: 300, enabled: true, online_capable: false, x2apic: true }
    );
    assert_eq!(m.enabled_processors().count(), 2);
}

#[test]
fn madt_entry_running_past_the_table_ends_the_parse_keeping_what_came_before() {
    let mut entry = build::io_apic(0, 0xfec0_0000, 0);
    entry[1] = 40; // claims 40 bytes, 12 exist
    let b = build::madt(0xfee0_0000, 0, &[build::local_apic(0, 0, 1), entry]);
    let m = parse_madt(&b).unwrap();
    assert_eq!(m.malformed, Some(AcpiProblem::MadtEntry { offset: 52, kind: 1, length: 40 }));
    assert_eq!((m.processors.len(), m.ioapics.len()), (1, 0), "the entry before it kept, none after");
}

#[test]
fn madt_zero_length_entry_is_rejected_not_looped_on() {
    let b = build::madt(0xfee0_0000, 0, &[alloc::vec![0, 0, 0, 0]]);
    assert!(matches!(parse_madt(&b).unwrap().malformed, Some(AcpiProblem::MadtEntry { length: 0, .. })));
}

#[test]
fn madt_entry_shorter_than_its_type_is_rejected() {
    let b = build::madt(0xfee0_0000, 0, &[alloc::vec![1, 4, 0, 0]]);
    let m = parse_madt(&b).unwrap();
    assert!(matches!(m.malformed, Some(AcpiProblem::MadtEntry { kind: 1, length: 4, .. })));
    assert!(m.ioapics.is_empty());
}

/// Each MADT fault the runner can inject, applied to QEMU's q35 MADT, parses to what the
/// bring-up then rejects or repairs: the parser itself drops a duplicate processor and an
/// invalid x2APIC id and keeps the entries before a truncation; the IOAPIC and override faults
/// reach the bring-up's checks (`platform::ioapic_conflict`, `check_overrides`) as described.
#[test]
fn every_injected_madt_fault_parses_to_what_the_bring_up_handles() {
    use super::faults::MadtFault;
    let q35 = build::q35_madt(2);
    let base = parse_madt(&q35).unwrap();
    assert_eq!((base.processors.len(), base.ioapics.len(), base.malformed), (2, 1, None));
    for (name, fault) in MadtFault::ALL {
        let m = parse_madt(&fault.apply(&q35)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(MadtFault::from_name(name), Some(fault));
        let (cpus, ioapics) = (m.enabled_processors().count(), m.ioapics.len());
        match fault {
            MadtFault::IoapicAtZero => assert_eq!(m.ioapics[0].address, 0, "{name}"),
            MadtFault::IoapicOverHpet => assert_eq!(m.ioapics[0].address, 0xfed0_0000, "{name}"),
            MadtFault::GsiOverlap => {
                assert_eq!(ioapics, 2, "{name}");
                assert_eq!(m.ioapics[0].gsi_base, m.ioapics[1].gsi_base, "{name}");
            }
            MadtFault::OverrideUnknownGsi => {
                assert!(m.overrides.iter().any(|o| o.source_irq == 3 && o.gsi == 200), "{name}")
            }
            MadtFault::DuplicateProcessor => {
                assert_eq!(cpus, 2, "{name}: the copy is left out");
                assert!(m.ignored[0].contains("listed twice"), "{name}: {:?}", m.ignored);
            }
            MadtFault::X2apicIdInvalid => {
                assert_eq!(cpus, 2, "{name}: the invalid id is left out");
                assert!(m.ignored[0].contains("0xffffffff"), "{name}: {:?}", m.ignored);
            }
            MadtFault::Truncated => {
                assert!(matches!(m.malformed, Some(AcpiProblem::MadtEntry { .. })), "{name}");
                assert_eq!((cpus, ioapics), (2, 1), "{name}: only the last entry is lost");
                assert!(m.nmis.is_empty(), "{name}");
            }
            MadtFault::NoIoapic => assert_eq!((cpus, ioapics), (2, 0), "{name}"),
        }
    }
}

/// Each FADT fault the runner can inject, applied to a q35-like FADT: the parser that reads the
/// field says what is wrong, the others are unaffected.
#[test]
fn every_injected_fadt_fault_is_reported_by_the_parser_of_its_field() {
    use super::faults::FadtFault;
    let fadt = build::FadtSpec::default().bytes();
    assert!(parse_fadt_pm_timer(&fadt).is_ok() && parse_fadt_sleep(&fadt).is_ok());
    assert_eq!(parse_fadt_rtc(&fadt).unwrap().layout.century, Some(0x32));
    for (name, fault) in FadtFault::ALL {
        let t = fault.apply(&fadt);
        assert_eq!(FadtFault::from_name(name), Some(fault));
        let (pm, sleep, rtc) = (parse_fadt_pm_timer(&t), parse_fadt_sleep(&t), parse_fadt_rtc(&t));
        match fault {
            FadtFault::PmTimerPortZero => assert_eq!(pm, Err(AcpiProblem::NoPmTimer), "{name}"),
            FadtFault::PmTimerWidthWrong => {
                assert_eq!(pm, Err(AcpiProblem::PmTimerLength { length: 3 }), "{name}")
            }
            FadtFault::Pm1aCntZero => assert_eq!(sleep, Err(AcpiProblem::NoPm1aControl), "{name}"),
            FadtFault::FirmwareCtrlZero => assert_eq!(sleep, Err(AcpiProblem::NoFacs), "{name}"),
            FadtFault::CenturyOutOfRange => {
                let r = rtc.unwrap();
                assert_eq!((r.layout.century, r.ignored[0]), (None, Some(("CENTURY", 0x90))), "{name}");
            }
            FadtFault::Truncated => {
                assert!(matches!(pm, Err(AcpiProblem::Truncated { .. })), "{name}");
                assert!(matches!(sleep, Err(AcpiProblem::Truncated { .. })) && rtc.is_err(), "{name}");
            }
        }
        let untouched = !matches!(
            fault,
            FadtFault::Truncated | FadtFault::PmTimerPortZero | FadtFault::PmTimerWidthWrong
        );
        assert!(!untouched || pm.is_ok(), "{name}: the PM timer is not this fault's field");
    }
}

/// xorshift64*: deterministic pseudo-random bytes for the corruption sweep.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[test]
fn no_truncation_or_corruption_panics() {
    let tables = [HpetTableSpec::default().bytes(), build::q35_madt(8)];
    for t in &tables {
        for cut in 0..=t.len() {
            let _ = parse_hpet(&t[..cut]);
            let _ = parse_madt(&t[..cut]);
        }
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..20_000 {
        let mut t = tables[round % 2].clone();
        for _ in 0..(next(&mut state) % 4 + 1) {
            let i = (next(&mut state) as usize) % t.len();
            t[i] = next(&mut state) as u8;
        }
        if next(&mut state) % 2 == 0 {
            build::fix_checksum(&mut t); // reach the parsers past the checksum too
        }
        let _ = parse_hpet(&t);
        let _ = parse_madt(&t);
    }
}

mod fadt {
    use super::super::build::FadtSpec;
    use super::super::*;

    #[test]
    fn q35s_pm_timer_is_a_24_bit_io_port() {
        assert_eq!(
            parse_fadt_pm_timer(&FadtSpec::default().bytes()),
            Ok(PmTimerInfo { port: 0x608, bits: 24 })
        );
    }

    #[test]
    fn a_revision_1_fadt_has_only_the_32_bit_block() {
        let spec = FadtSpec { revision: 1, pm_tmr_blk: 0xb008, ..FadtSpec::default() };
        assert_eq!(parse_fadt_pm_timer(&spec.bytes()), Ok(PmTimerInfo { port: 0xb008, bits: 24 }));
    }

    #[test]
    fn tmr_val_ext_makes_it_32_bits_and_the_extended_block_wins() {
        let spec =
            FadtSpec { flags: 1 << 8, pm_tmr_blk: 0x1008, x_pm_tmr_blk: (1, 0x608), ..FadtSpec::default() };
        assert_eq!(parse_fadt_pm_timer(&spec.bytes()), Ok(PmTimerInfo { port: 0x608, bits: 32 }));
    }

    #[test]
    fn no_timer_memory_space_or_a_wide_port_are_refused() {
        let spec = FadtSpec { pm_tmr_len: 0, ..FadtSpec::default() };
        assert_eq!(parse_fadt_pm_timer(&spec.bytes()), Err(AcpiProblem::NoPmTimer));
        let spec = FadtSpec { pm_tmr_blk: 0, x_pm_tmr_blk: (1, 0), ..FadtSpec::default() };
        assert_eq!(parse_fadt_pm_timer(&spec.bytes()), Err(AcpiProblem::NoPmTimer));
        let spec = FadtSpec { x_pm_tmr_blk: (0, 0xfed0_0000), ..FadtSpec::default() };
        assert_eq!(parse_fadt_pm_timer(&spec.bytes()), Err(AcpiProblem::PmTimerNotIo { space_id: 0 }));
        let spec = FadtSpec { x_pm_tmr_blk: (1, 0x1_0000), ..FadtSpec::default() };
        assert_eq!(parse_fadt_pm_timer(&spec.bytes()), Err(AcpiProblem::PmTimerAddress));
        let spec = FadtSpec { x_pm_tmr_blk: (0x0b, 0x608), ..FadtSpec::default() };
        assert_eq!(parse_fadt_pm_timer(&spec.bytes()), Err(AcpiProblem::PmTimerAddress), "reserved space id");
    }

    #[test]
    fn q35s_rtc_has_its_century_in_cmos_byte_0x32_and_no_date_alarms() {
        let rtc = parse_fadt_rtc(&FadtSpec::default().bytes()).unwrap();
        let layout =
            crate::arch::x86_64::rtc::RtcLayout { century: Some(0x32), day_alarm: None, month_alarm: None };
        assert_eq!(rtc, FadtRtc { layout, not_present: false, ignored: [None; 3] });
    }

    #[test]
    fn rtc_registers_outside_cmos_ram_are_ignored_and_named_and_an_absent_rtc_is_said() {
        let spec = FadtSpec { rtc: [0x0d, 0x7f, 0x80], boot_arch: 1 << 5, ..FadtSpec::default() };
        let rtc = parse_fadt_rtc(&spec.bytes()).unwrap();
        assert_eq!(
            (rtc.layout.century, rtc.layout.day_alarm, rtc.layout.month_alarm),
            (None, None, Some(0x7f))
        );
        assert_eq!(rtc.ignored, [Some(("CENTURY", 0x80)), Some(("DAY_ALRM", 0x0d)), None]);
        assert!(rtc.not_present);
        let mut t = FadtSpec::default().bytes();
        t[100] ^= 1;
        assert!(
            matches!(parse_fadt_rtc(&t), Err(AcpiProblem::BadChecksum { .. })),
            "validated as the PM timer's"
        );
    }

    #[test]
    fn a_short_or_corrupt_fadt_is_refused_before_the_crate_reads_it() {
        let mut t = FadtSpec::default().bytes();
        t.truncate(150);
        t[4..8].copy_from_slice(&150u32.to_le_bytes());
        build::fix_checksum(&mut t);
        assert_eq!(
            parse_fadt_pm_timer(&t),
            Err(AcpiProblem::Truncated { table: "FACP", length: 150, needed: FADT_X_PM_TMR_END })
        );
        let mut t = FadtSpec::default().bytes();
        t[100] ^= 1;
        assert!(matches!(parse_fadt_pm_timer(&t), Err(AcpiProblem::BadChecksum { .. })));
        assert_eq!(
            parse_fadt_pm_timer(&t[..100]),
            Err(AcpiProblem::Truncated { table: "FACP", length: 100, needed: 220 })
        );
    }
}
