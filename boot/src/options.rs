//! The options shared by `scripts/run` and by every test variant, and their parser.

use crate::hpet_table::{HpetTable, SecondHpetTable};
use std::fmt;
use std::time::Duration;

/// How the firmware starts the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS and the bootloader's BIOS stages: the faster boot, so the default.
    Bios,
    /// OVMF and the bootloader's UEFI application.
    Uefi,
}

/// QEMU's accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: the default, because `/dev/kvm` on our machines is itself emulated.
    Tcg,
    /// Hardware virtualisation, for hosts that really have it.
    Kvm,
}

/// Whether the guest CPU offers x2APIC (the kernel takes it when offered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum X2Apic {
    /// What the CPU model offers on this QEMU (TCG `max`: x2APIC from QEMU 10), except under
    /// `-icount` on a QEMU that offers it, which aborts there in x2APIC mode: xAPIC then.
    Auto,
    /// Offered: needs a QEMU whose TCG has it (10 or later) or KVM.
    On,
    /// Not offered (`-x2apic`): xAPIC mode.
    Off,
}

/// What a test variant expects of the kernel: the verdict of its TIMER-REPORT line, and the exit
/// status that goes with it, or a crash before any report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Exit with success, verdict `ok`: the default.
    Ok,
    /// Exit with success, verdict `degraded` (a fallback was taken).
    Degraded,
    /// Exit with failure, verdict `failed`.
    Failed,
    /// Exit with failure before any report (a panic, a fatal exception): the variant declares
    /// that its kernel does not report, and a TIMER-REPORT line fails it.
    Crash,
    /// The machine went to sleep (ACPI S3) and never woke within `--wake-within` (the runner
    /// watches it over QMP, ends it and says so); no report.
    NoWake,
}

impl Expect {
    /// The TIMER-REPORT verdict this expects, `None` for a crash (no report).
    pub fn verdict(self) -> Option<&'static str> {
        match self {
            Expect::Ok => Some("ok"),
            Expect::Degraded => Some("degraded"),
            Expect::Failed => Some("failed"),
            Expect::Crash | Expect::NoWake => None,
        }
    }
}

/// Everything that decides one QEMU boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOptions {
    pub smp: u32,
    pub memory_mib: u32,
    pub firmware: Firmware,
    pub accel: Accel,
    pub x2apic: X2Apic,
    pub timeout: Duration,
    pub cmdline: String,
    pub gdb: bool,
    /// A malformed HPET table to inject (`--hpet-table`): the machine becomes q35 without
    /// QEMU's HPET, and QEMU gets the table with `-acpitable`.
    pub hpet_table: Option<HpetTable>,
    /// A second HPET table beside QEMU's own (`--second-hpet-table`), added with `-acpitable`.
    pub second_hpet_table: Option<SecondHpetTable>,
    /// Kernel options that inject faults into the MADT and FADT (`--madt-table`,
    /// `--fadt-table`), added to the kernel's command line.
    pub table_faults: Vec<String>,
    /// Passed to QEMU verbatim, after our own arguments.
    pub qemu_args: Vec<String>,
    pub expect: Expect,
    /// Text that must appear in the serial log for a test variant to pass.
    pub expect_log: Vec<String>,
    /// Checks on the TIMER-REPORT line (`POINTER=VALUE`, `POINTER#=LENGTH`, `POINTER>=N`,
    /// `POINTER<=N`), see report.rs.
    pub expect_report: Vec<String>,
    /// The test variant being booted (set by the test runner, not an option): handed to the
    /// kernel as the fw_cfg file `opt/timerkernel/variant`.
    pub variant: Option<String>,
    /// `--trace FILE`: the per-CPU trace timeline written to FILE (a runner built with the
    /// feature `trace`, which `scripts/run --trace` adds).
    pub trace: Option<std::path::PathBuf>,
    /// `--s3` / `--no-s3`: QEMU's S3 enabled (`-global ICH9-LPC.disable_s3=0` on q35,
    /// `PIIX4_PM.disable_s3=0` on pc) or disabled (`=1`); `Auto` enables it when the kernel
    /// options ask for an S3 test (`s3_test=`), else leaves it as QEMU has it.
    pub s3: S3,
    /// `--wake-within SECONDS`: with S3 enabled, how long the machine may stay suspended (QEMU's
    /// state over QMP) before the runner ends it: "suspended, no wake-up within N s".
    pub wake_within: Duration,
}

/// Whether QEMU's S3 is enabled (see [`RunOptions::s3`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3 {
    Auto,
    On,
    Off,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            smp: 1,
            memory_mib: 256,
            firmware: Firmware::Bios,
            accel: Accel::Tcg,
            x2apic: X2Apic::Auto,
            timeout: Duration::from_secs(120),
            cmdline: String::new(),
            gdb: false,
            hpet_table: None,
            second_hpet_table: None,
            table_faults: Vec::new(),
            qemu_args: Vec::new(),
            expect: Expect::Ok,
            expect_log: Vec::new(),
            expect_report: Vec::new(),
            variant: None,
            trace: None,
            s3: S3::Auto,
            wake_within: Duration::from_secs(70),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum OptionError {
    MissingValue(String),
    BadValue { option: String, value: String, why: &'static str },
    Unknown(String),
    UnclosedQuote(String),
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionError::MissingValue(o) => write!(f, "option {o} needs a value"),
            OptionError::BadValue { option, value, why } => {
                write!(f, "option {option}: '{value}' is not valid ({why})")
            }
            OptionError::Unknown(o) => write!(f, "unknown option '{o}' (see scripts/run --help)"),
            OptionError::UnclosedQuote(s) => write!(f, "unclosed quote in: {s}"),
        }
    }
}

pub const HELP: &str = "\
Options (scripts/run, and each variant of a QEMU test):
  --smp N              number of CPUs (default 1)
  --memory MIB         guest memory in MiB (default 256)
  --bios | --uefi      firmware (default --bios: SeaBIOS boots in about a third of OVMF's time)
  --accel tcg|kvm      accelerator (default tcg; /dev/kvm on these machines is itself emulated).
                       CPU model: -cpu max under TCG, -cpu host,-arch-capabilities under KVM
                       (software KVMs refuse the IA32_ARCH_CAPABILITIES MSR)
  --x2apic auto|on|off   offer x2APIC to the guest or not (default auto: what the CPU model
                       offers: x2APIC under TCG from QEMU 10, xAPIC under -icount there, which
                       aborts in x2APIC mode); on needs QEMU >= 10 or KVM (a test variant that
                       asks for it on an older QEMU is reported ignored)
  --timeout SECONDS    kill QEMU and fail after this long (default 120)
  --cmdline \"...\"      kernel options, handed over through fw_cfg (see docs/options.md)
  --trace FILE         write the run's per-CPU trace timeline to FILE (Chrome / Perfetto
                       trace-event JSON: open it in ui.perfetto.dev): timer arms, device
                       programming, interrupts, callbacks, wake-up IPIs, idle, device changes.
                       scripts/run builds the kernel with its trace points for it (cargo
                       feature trace); the TRACE lines stay out of the echoed log
  --s3 | --no-s3       enable QEMU's ACPI S3 (-global ICH9-LPC.disable_s3=0 on q35,
                       PIIX4_PM.disable_s3=0 on pc), or disable it (=1) (default: enabled
                       when the kernel options hold s3_test=, else as QEMU has it)
  --wake-within SECONDS   with S3 enabled, the runner watches QEMU's state over QMP and ends a
                       machine suspended longer than this: \"suspended, no wake-up within N s\",
                       exit status 5 (default 70: s3_test= sleeps at most 60 s)
  --gdb                QEMU waits for a debugger on tcp::1234 before the first instruction
  --hpet-table FAULT[@ADDR]   fault injection: boot -machine q35,hpet=off (no HPET device, no
                       HPET table of QEMU's) with a malformed HPET table of ours (-acpitable),
                       written next to the disk image. FAULT: base-zero; base-in-ram (0x100000);
                       base-unbacked (0xbff00000, PCIe config space of the absent bus 255: reads
                       all ones); period-zero (0xfec00000, the IOAPIC: period field reads 0);
                       period-too-long (0xfeb85400, the e1000e's RAH0: period 2147505716 fs);
                       truncated (44 bytes, checksum correct). @ADDR names another base.
                       (bad-checksum cannot be injected: QEMU recomputes table checksums.)
  --second-hpet-table KIND[@ADDR]   a second HPET table beside QEMU's own (-acpitable; QEMU
                       keeps its HPET), which the kernel must reject while block 0 serves.
                       KIND: same-block (block #0 again, at 0xfed01000); overlap (block #1 at
                       0xfed00000, over QEMU's); nothing (block #1 at 0xbff00000: reads all ones)
  --madt-table FAULT   fault injection: the kernel replaces QEMU's MADT by a copy with FAULT
                       (kernel option madt_fault=FAULT: QEMU always supplies its own MADT).
                       FAULT: ioapic-at-zero, ioapic-over-hpet, gsi-overlap,
                       override-unknown-gsi, duplicate-processor, x2apic-id-invalid,
                       truncated, no-ioapic
  --fadt-table FAULT   the same for the FADT (fadt_fault=FAULT). FAULT: pm-timer-port-zero,
                       pm-timer-width-wrong, pm1a-cnt-zero, firmware-ctrl-zero,
                       century-out-of-range, truncated
  --expect ok|degraded|failed|crash|no-wake   (tests) the verdict the kernel's TIMER-REPORT must give
                       (default ok; the exit status must match it: success for ok and degraded,
                       failure for failed), or crash: it exits with failure and no report (a
                       panic, a fatal exception), or no-wake: it sleeps (S3) and never wakes
                       within --wake-within
  --expect-log TEXT    (tests) TEXT must appear in the serial log; repeatable
  --expect-report CHECK   (tests) a check on the TIMER-REPORT line: /json/pointer=VALUE,
                       /json/pointer#=LENGTH, /json/pointer>=N or /json/pointer<=N; repeatable
  -- ARGS...           everything after -- goes to QEMU verbatim (e.g. -- -global hpet.timers=8)
";

fn value<'a>(option: &str, it: &mut impl Iterator<Item = &'a String>) -> Result<&'a String, OptionError> {
    it.next().ok_or_else(|| OptionError::MissingValue(option.to_string()))
}

fn number(option: &str, value: &str, min: u64, max: u64) -> Result<u64, OptionError> {
    let bad = |why| OptionError::BadValue { option: option.into(), value: value.into(), why };
    let n: u64 = value.parse().map_err(|_| bad("not a whole number"))?;
    if n < min || n > max {
        return Err(bad("out of range"));
    }
    Ok(n)
}

impl RunOptions {
    /// Parses `args` on top of `self` (so a test variant can start from the defaults, and the
    /// command line can override nothing it did not name).
    /// The kernel options handed over: `--cmdline`'s, then the fault injections that are
    /// kernel options (`--madt-table`, `--fadt-table`).
    pub fn kernel_cmdline(&self) -> String {
        let mut line = self.cmdline.clone();
        for f in &self.table_faults {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(f);
        }
        line
    }

    /// Whether QEMU gets S3 enabled (`Some(true)`: `--s3`, or `s3_test=` among the kernel
    /// options), disabled (`Some(false)`: `--no-s3`), or left as QEMU has it (`None`).
    pub fn s3_enabled(&self) -> Option<bool> {
        match self.s3 {
            S3::On => Some(true),
            S3::Off => Some(false),
            S3::Auto => {
                self.kernel_cmdline().split_whitespace().any(|w| w.starts_with("s3_test=")).then_some(true)
            }
        }
    }

    pub fn parse(mut self, args: &[String]) -> Result<Self, OptionError> {
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--smp" => self.smp = number(arg, value(arg, &mut it)?, 1, 255)? as u32,
                "--memory" => self.memory_mib = number(arg, value(arg, &mut it)?, 64, 65536)? as u32,
                "--bios" => self.firmware = Firmware::Bios,
                "--uefi" => self.firmware = Firmware::Uefi,
                "--accel" => {
                    let v = value(arg, &mut it)?;
                    self.accel = match v.as_str() {
                        "tcg" => Accel::Tcg,
                        "kvm" => Accel::Kvm,
                        _ => {
                            return Err(OptionError::BadValue {
                                option: arg.clone(),
                                value: v.clone(),
                                why: "tcg or kvm",
                            });
                        }
                    }
                }
                "--x2apic" => {
                    let v = value(arg, &mut it)?;
                    self.x2apic = match v.as_str() {
                        "auto" => X2Apic::Auto,
                        "on" => X2Apic::On,
                        "off" => X2Apic::Off,
                        _ => {
                            return Err(OptionError::BadValue {
                                option: arg.clone(),
                                value: v.clone(),
                                why: "auto, on or off",
                            });
                        }
                    }
                }
                "--timeout" => {
                    self.timeout = Duration::from_secs(number(arg, value(arg, &mut it)?, 1, 86_400)?)
                }
                "--cmdline" => self.cmdline = value(arg, &mut it)?.clone(),
                "--gdb" => self.gdb = true,
                "--s3" => self.s3 = S3::On,
                "--wake-within" => {
                    self.wake_within = Duration::from_secs(number(arg, value(arg, &mut it)?, 1, 3_600)?)
                }
                "--no-s3" => self.s3 = S3::Off,
                "--trace" => self.trace = Some(value(arg, &mut it)?.into()),
                "--hpet-table" => {
                    let v = value(arg, &mut it)?;
                    let table = HpetTable::parse(v).map_err(|why| OptionError::BadValue {
                        option: arg.clone(),
                        value: v.clone(),
                        why,
                    })?;
                    self.hpet_table = Some(table);
                }
                "--second-hpet-table" => {
                    let v = value(arg, &mut it)?;
                    let table = SecondHpetTable::parse(v).map_err(|why| OptionError::BadValue {
                        option: arg.clone(),
                        value: v.clone(),
                        why,
                    })?;
                    self.second_hpet_table = Some(table);
                }
                "--madt-table" | "--fadt-table" => {
                    use kernel::arch::x86_64::acpi::faults::{FadtFault, MadtFault};
                    let v = value(arg, &mut it)?;
                    let (known, option) = if arg == "--madt-table" {
                        (MadtFault::from_name(v).is_some(), "madt_fault")
                    } else {
                        (FadtFault::from_name(v).is_some(), "fadt_fault")
                    };
                    if !known {
                        let why = "not a fault the kernel can inject (see --help)";
                        return Err(OptionError::BadValue { option: arg.clone(), value: v.clone(), why });
                    }
                    self.table_faults.push(format!("{option}={v}"));
                }
                "--expect" => {
                    let v = value(arg, &mut it)?;
                    self.expect = match v.as_str() {
                        "ok" => Expect::Ok,
                        "degraded" => Expect::Degraded,
                        "failed" => Expect::Failed,
                        "crash" => Expect::Crash,
                        "no-wake" => Expect::NoWake,
                        _ => {
                            return Err(OptionError::BadValue {
                                option: arg.clone(),
                                value: v.clone(),
                                why: "ok, degraded, failed, crash or no-wake",
                            });
                        }
                    }
                }
                "--expect-log" => self.expect_log.push(value(arg, &mut it)?.clone()),
                "--expect-report" => self.expect_report.push(value(arg, &mut it)?.clone()),
                "--" => {
                    self.qemu_args.extend(it.by_ref().cloned());
                }
                other => return Err(OptionError::Unknown(other.to_string())),
            }
        }
        Ok(self)
    }
}

/// Splits a line into words as a shell would for the simple cases we need: blanks separate words,
/// single or double quotes group them (no escapes, no expansion).
pub fn split_words(line: &str) -> Result<Vec<String>, OptionError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(OptionError::UnclosedQuote(line.to_string()));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<RunOptions, OptionError> {
        RunOptions::default().parse(&split_words(line).unwrap())
    }

    #[test]
    fn table_faults_become_kernel_options_and_unknown_ones_are_refused() {
        let o = parse("--cmdline duration_ms=100 --madt-table no-ioapic --fadt-table pm1a-cnt-zero").unwrap();
        assert_eq!(o.kernel_cmdline(), "duration_ms=100 madt_fault=no-ioapic fadt_fault=pm1a-cnt-zero");
        assert_eq!(parse("--madt-table truncated").unwrap().kernel_cmdline(), "madt_fault=truncated");
        assert!(matches!(parse("--madt-table pm1a-cnt-zero"), Err(OptionError::BadValue { .. })));
        assert!(matches!(parse("--fadt-table bogus"), Err(OptionError::BadValue { .. })));
    }

    #[test]
    fn defaults_are_one_cpu_bios_tcg() {
        let o = parse("").unwrap();
        assert_eq!((o.smp, o.firmware, o.accel, o.expect), (1, Firmware::Bios, Accel::Tcg, Expect::Ok));
    }

    #[test]
    fn quoted_cmdline_stays_one_word() {
        let o = parse("--smp 4 --uefi --cmdline \"loglevel=debug hz=250\" --expect-log 'a b'").unwrap();
        assert_eq!(o.smp, 4);
        assert_eq!(o.firmware, Firmware::Uefi);
        assert_eq!(o.cmdline, "loglevel=debug hz=250");
        assert_eq!(o.expect_log, vec!["a b".to_string()]);
    }

    #[test]
    fn everything_after_double_dash_goes_to_qemu_verbatim() {
        let o = parse("--smp 2 -- -global hpet.timers=8 --smp 9").unwrap();
        assert_eq!(o.smp, 2);
        assert_eq!(o.qemu_args, vec!["-global", "hpet.timers=8", "--smp", "9"]);
    }

    #[test]
    fn bad_values_are_errors_not_defaults() {
        assert!(matches!(parse("--smp 0"), Err(OptionError::BadValue { .. })));
        assert!(matches!(parse("--smp x"), Err(OptionError::BadValue { .. })));
        assert!(matches!(parse("--accel hax"), Err(OptionError::BadValue { .. })));
        assert_eq!(parse("--timeout"), Err(OptionError::MissingValue("--timeout".into())));
        assert_eq!(parse("--smpp 2"), Err(OptionError::Unknown("--smpp".into())));
    }

    #[test]
    fn expect_names_a_verdict_or_a_crash() {
        assert_eq!(parse("--expect degraded").unwrap().expect, Expect::Degraded);
        assert_eq!(parse("--expect failed").unwrap().expect.verdict(), Some("failed"));
        assert_eq!(parse("--expect crash").unwrap().expect.verdict(), None);
        assert!(matches!(parse("--expect success"), Err(OptionError::BadValue { .. })));
    }

    #[test]
    fn x2apic_is_auto_on_or_off() {
        assert_eq!(parse("").unwrap().x2apic, X2Apic::Auto);
        assert_eq!(parse("--x2apic on").unwrap().x2apic, X2Apic::On);
        assert_eq!(parse("--x2apic off").unwrap().x2apic, X2Apic::Off);
        assert!(matches!(parse("--x2apic yes"), Err(OptionError::BadValue { .. })));
    }

    #[test]
    fn unclosed_quote_is_reported() {
        assert!(matches!(split_words("--cmdline \"a b"), Err(OptionError::UnclosedQuote(_))));
    }

    #[test]
    fn hpet_table_names_a_fault_and_optionally_its_base() {
        use crate::hpet_table::HpetFault;
        assert_eq!(parse("").unwrap().hpet_table, None);
        let t = parse("--hpet-table period-zero").unwrap().hpet_table.unwrap();
        assert_eq!((t.fault, t.base), (HpetFault::PeriodZero, 0xfec0_0000));
        let t = parse("--hpet-table base-in-ram@0x1000000").unwrap().hpet_table.unwrap();
        assert_eq!((t.fault, t.base), (HpetFault::BaseInRam, 0x100_0000));
        assert!(matches!(parse("--hpet-table bogus"), Err(OptionError::BadValue { .. })));
        assert!(matches!(parse("--hpet-table bad-checksum"), Err(OptionError::BadValue { .. })));
        assert_eq!(parse("--hpet-table"), Err(OptionError::MissingValue("--hpet-table".into())));
    }

    #[test]
    fn trace_names_a_file() {
        assert_eq!(parse("").unwrap().trace, None);
        assert_eq!(parse("--trace t.json").unwrap().trace, Some("t.json".into()));
        assert_eq!(parse("--trace"), Err(OptionError::MissingValue("--trace".into())));
    }

    #[test]
    fn later_options_override_earlier_ones() {
        let base = parse("--smp 4 --timeout 30").unwrap();
        let o = base.parse(&split_words("--smp 2").unwrap()).unwrap();
        assert_eq!((o.smp, o.timeout), (2, Duration::from_secs(30)));
    }
}
