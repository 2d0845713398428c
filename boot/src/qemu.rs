//! Builds the QEMU command line for a set of options, runs it under a timeout and classifies how
//! it ended.

use crate::hpet_table::HpetTable;
use crate::options::{Accel, Firmware, RunOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The kernel writes these to the `isa-debug-exit` port (0xf4); QEMU then exits with
/// `(value << 1) | 1`. Keep in step with `kernel/src/arch/x86_64/qemu.rs`.
pub const EXIT_SUCCESS_STATUS: i32 = (0x10 << 1) | 1;
pub const EXIT_FAILURE_STATUS: i32 = (0x11 << 1) | 1;

/// Where the firmware for `--uefi` is looked up (Debian's `ovmf` package).
pub const OVMF_PATHS: &[&str] = &["/usr/share/ovmf/OVMF.fd", "/usr/share/OVMF/OVMF.fd"];

/// How a boot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The kernel reported success through `isa-debug-exit`.
    KernelSuccess,
    /// The kernel reported failure (test failure, panic, fatal exception).
    KernelFailure,
    /// QEMU ended without a verdict from the kernel: with `-no-reboot` that is a reset, most
    /// often a triple fault.
    NoVerdict,
    /// QEMU itself failed (bad arguments, missing firmware, killed by a signal).
    QemuError(String),
    /// The deadline passed and QEMU was killed.
    Timeout(Duration),
}

impl Outcome {
    pub fn from_status(status: ExitStatus) -> Outcome {
        match status.code() {
            Some(EXIT_SUCCESS_STATUS) => Outcome::KernelSuccess,
            Some(EXIT_FAILURE_STATUS) => Outcome::KernelFailure,
            Some(0) => Outcome::NoVerdict,
            Some(code) => Outcome::QemuError(format!("QEMU exited with status {code}")),
            None => Outcome::QemuError(format!("QEMU was ended by a signal ({status})")),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Outcome::KernelSuccess => "kernel reported success".into(),
            Outcome::KernelFailure => "kernel reported failure".into(),
            Outcome::NoVerdict => {
                "QEMU stopped without a verdict from the kernel (reset or triple fault; -no-reboot)".into()
            }
            Outcome::QemuError(e) => e.clone(),
            Outcome::Timeout(t) => {
                format!("timeout: no verdict within {} s, QEMU killed", t.as_secs())
            }
        }
    }

    /// As [`Outcome::describe`], and for a kernel failure also what the serial log shows as its
    /// cause (see [`failure_cause`]).
    pub fn describe_with_log(&self, log: &str) -> String {
        match self {
            Outcome::KernelFailure => format!("{}: {}", self.describe(), failure_cause(log)),
            _ => self.describe(),
        }
    }
}

/// Longest excerpt of a log line quoted in a failure's description.
const CAUSE_EXCERPT_CHARS: usize = 200;

/// What a failing kernel's serial log shows as the cause: its first `KERNEL PANIC` line, else
/// its first `EXCEPTION:` line, else a TIMER-REPORT whose verdict is `failed`.
pub fn failure_cause(log: &str) -> String {
    let excerpt = |marker: &str| {
        log.lines().find_map(|l| l.find(marker).map(|i| l[i..].trim_end().chars().take(CAUSE_EXCERPT_CHARS)))
    };
    if let Some(panic) = excerpt("KERNEL PANIC") {
        return format!("the log shows a panic ({})", panic.collect::<String>());
    }
    if let Some(exception) = excerpt("EXCEPTION:") {
        return format!("the log shows a fatal exception ({})", exception.collect::<String>());
    }
    match crate::report::find(log).ok().and_then(|r| r.get("verdict").cloned()) {
        Some(v) if v == "failed" => "the TIMER-REPORT verdict is failed".into(),
        _ => "the log shows no KERNEL PANIC, no EXCEPTION and no failed verdict".into(),
    }
}

fn ovmf() -> Result<&'static str, String> {
    OVMF_PATHS.iter().copied().find(|p| Path::new(p).exists()).ok_or_else(|| {
        format!("no OVMF firmware at {}: run `apt-get install -y ovmf`", OVMF_PATHS.join(" or "))
    })
}

/// Writes `table` next to `image` (replacing an earlier copy atomically: concurrent runs write
/// the same bytes) and returns its path.
pub fn write_hpet_table(table: &HpetTable, image: &Path) -> Result<PathBuf, String> {
    let path = image.with_extension(format!("{}.dat", table.file_stem()));
    let partial = path.with_extension(format!("dat.{}", std::process::id()));
    std::fs::write(&partial, table.bytes())
        .and_then(|()| std::fs::rename(&partial, &path))
        .map_err(|e| format!("writing the HPET table {}: {e}", path.display()))?;
    Ok(path)
}

/// The QEMU arguments for booting `image` with `opts`. `cmdline_file` holds the kernel options,
/// `hpet_table_file` the table `--hpet-table` asked for (see [`write_hpet_table`]).
pub fn arguments(
    opts: &RunOptions,
    image: &Path,
    cmdline_file: &Path,
    hpet_table_file: Option<&Path>,
) -> Result<Vec<String>, String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    // A `-machine` among the verbatim arguments replaces ours rather than merging with it. With
    // an injected HPET table ours has no HPET: QEMU then adds neither the device nor its table.
    if !opts.qemu_args.iter().any(|x| x == "-machine" || x == "-M") {
        push(&["-machine", if hpet_table_file.is_some() { "q35,hpet=off" } else { "q35,hpet=on" }]);
    }
    match opts.accel {
        Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
    }
    let smp = opts.smp.to_string();
    let mem = format!("{}M", opts.memory_mib);
    push(&["-smp", &smp, "-m", &mem]);
    push(&["-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot"]);
    push(&["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    let drive = format!("format=raw,snapshot=on,file={}", image.display());
    push(&["-drive", &drive]);
    let fw_cfg = format!("name=opt/timerkernel/cmdline,file={}", cmdline_file.display());
    push(&["-fw_cfg", &fw_cfg]);
    if let Some(name) = &opts.variant {
        // fw_cfg takes a file or a string; a variant name has no comma (it is `[a-z0-9_]+`).
        push(&["-fw_cfg", &format!("name=opt/timerkernel/variant,string={name}")]);
    }
    if let Some(table) = hpet_table_file {
        push(&["-acpitable", &format!("file={}", table.display())]);
    }
    if opts.firmware == Firmware::Uefi {
        push(&["-bios", ovmf()?]);
    }
    if opts.gdb {
        push(&["-s", "-S"]);
    }
    a.extend(opts.qemu_args.iter().cloned());
    Ok(a)
}

/// The result of one boot: how it ended, the serial log, and how long it took.
pub struct Boot {
    pub outcome: Outcome,
    pub log: String,
    pub elapsed: Duration,
}

/// Boots `image`; every serial line is passed to `echo` as it arrives.
pub fn boot(opts: &RunOptions, image: &Path, echo: impl Fn(&str) + Send + 'static) -> Result<Boot, String> {
    let cmdline_file = image.with_extension(format!("cmdline.{}", std::process::id()));
    std::fs::write(&cmdline_file, opts.cmdline.as_bytes())
        .map_err(|e| format!("writing {}: {e}", cmdline_file.display()))?;
    let hpet_table_file = opts.hpet_table.map(|t| write_hpet_table(&t, image)).transpose()?;
    let args = arguments(opts, image, &cmdline_file, hpet_table_file.as_deref())?;
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("cannot start qemu-system-x86_64 ({e}): run `apt-get install -y qemu-system-x86 ovmf`")
        })?;

    let log = Arc::new(Mutex::new(String::new()));
    let reader = {
        let log = Arc::clone(&log);
        let stdout = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout);
            let mut raw = Vec::new();
            while lines.read_until(b'\n', &mut raw).map(|n| n > 0).unwrap_or(false) {
                let line = String::from_utf8_lossy(&raw);
                let line = line.trim_end_matches(['\n', '\r']);
                echo(line);
                let mut l = log.lock().unwrap();
                l.push_str(line);
                l.push('\n');
                raw.clear();
            }
        })
    };
    let stderr = child.stderr.take().expect("stderr is piped");
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });

    let outcome = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Outcome::from_status(status),
            Ok(None) if start.elapsed() >= opts.timeout && !opts.gdb => {
                let _ = child.kill();
                let _ = child.wait();
                break Outcome::Timeout(opts.timeout);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Outcome::QemuError(format!("waiting for QEMU: {e}")),
        }
    };
    let _ = reader.join();
    let stderr_text = errors.join().unwrap_or_default();
    let _ = std::fs::remove_file(&cmdline_file);
    let outcome = match outcome {
        Outcome::QemuError(e) if !stderr_text.trim().is_empty() => {
            Outcome::QemuError(format!("{e}: {}", stderr_text.trim()))
        }
        o => o,
    };
    if !stderr_text.trim().is_empty() {
        let _ = writeln!(std::io::stderr(), "qemu: {}", stderr_text.trim());
    }
    let log = std::mem::take(&mut *log.lock().unwrap());
    Ok(Boot { outcome, log, elapsed: start.elapsed() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::split_words;

    fn args_for(line: &str) -> Vec<String> {
        let o = RunOptions::default().parse(&split_words(line).unwrap()).unwrap();
        let table = o.hpet_table.map(|t| PathBuf::from(format!("k.{}.dat", t.file_stem())));
        arguments(&o, Path::new("k.img"), Path::new("k.cmdline"), table.as_deref()).unwrap()
    }

    fn has_pair(a: &[String], x: &str, y: &str) -> bool {
        a.windows(2).any(|w| w[0] == x && w[1] == y)
    }

    #[test]
    fn default_machine_is_q35_with_hpet_and_exit_device() {
        let a = args_for("");
        assert!(has_pair(&a, "-machine", "q35,hpet=on"));
        assert!(has_pair(&a, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"));
        assert!(has_pair(&a, "-accel", "tcg"));
        assert!(a.contains(&"-no-reboot".to_string()));
        assert!(has_pair(&a, "-fw_cfg", "name=opt/timerkernel/cmdline,file=k.cmdline"));
    }

    #[test]
    fn verbatim_machine_replaces_the_default_one() {
        let a = args_for("-- -machine pc,hpet=on");
        assert_eq!(a.iter().filter(|x| *x == "-machine").count(), 1);
        assert!(has_pair(&a, "-machine", "pc,hpet=on"));
    }

    #[test]
    fn hpet_table_boots_q35_without_hpet_and_adds_the_table() {
        let a = args_for("--hpet-table truncated");
        assert!(has_pair(&a, "-machine", "q35,hpet=off"));
        assert!(!a.contains(&"q35,hpet=on".to_string()));
        assert!(has_pair(&a, "-acpitable", "file=k.hpet-truncated.dat"));
        // A verbatim -machine still replaces ours; the table is still added.
        let a = args_for("--hpet-table base-zero -- -machine pc,hpet=off");
        assert_eq!(a.iter().filter(|x| *x == "-machine").count(), 1);
        assert!(has_pair(&a, "-machine", "pc,hpet=off"));
        assert!(has_pair(&a, "-acpitable", "file=k.hpet-base-zero.dat"));
    }

    #[test]
    fn hpet_table_is_written_next_to_the_image() {
        let dir = std::env::temp_dir().join(format!("boot-hpet-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let table = HpetTable::parse("period-zero").unwrap();
        let path = write_hpet_table(&table, &dir.join("k.bios.img")).unwrap();
        assert_eq!(path, dir.join("k.bios.hpet-period-zero.dat"));
        assert_eq!(std::fs::read(&path).unwrap(), table.bytes());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no partial file is left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_variant_name_reaches_the_kernel_by_fw_cfg() {
        let mut o = RunOptions::default();
        assert!(
            !arguments(&o, Path::new("k.img"), Path::new("c"), None)
                .unwrap()
                .iter()
                .any(|a| a.contains("variant"))
        );
        o.variant = Some("smp4_partial".into());
        let a = arguments(&o, Path::new("k.img"), Path::new("c"), None).unwrap();
        assert!(has_pair(&a, "-fw_cfg", "name=opt/timerkernel/variant,string=smp4_partial"));
    }

    #[test]
    fn smp_and_gdb_reach_qemu() {
        let a = args_for("--smp 8 --gdb");
        assert!(has_pair(&a, "-smp", "8"));
        assert!(a.contains(&"-S".to_string()));
    }

    #[test]
    fn exit_statuses_map_to_outcomes() {
        use std::os::unix::process::ExitStatusExt;
        let st = |code: i32| ExitStatus::from_raw(code << 8);
        assert_eq!(Outcome::from_status(st(33)), Outcome::KernelSuccess);
        assert_eq!(Outcome::from_status(st(35)), Outcome::KernelFailure);
        assert_eq!(Outcome::from_status(st(0)), Outcome::NoVerdict);
        assert!(matches!(Outcome::from_status(st(1)), Outcome::QemuError(_)));
        assert!(matches!(Outcome::from_status(ExitStatus::from_raw(9)), Outcome::QemuError(_)));
    }

    #[test]
    fn kernel_failure_names_panic_exception_or_failed_verdict() {
        let panic = "[0.1] INFO main: x\nKERNEL PANIC: panicked at a.rs:1:2: boom\nEXCEPTION: later\n";
        let d = Outcome::KernelFailure.describe_with_log(panic);
        assert!(d.starts_with("kernel reported failure: "), "{d}");
        assert!(d.contains("panic (KERNEL PANIC: panicked at a.rs:1:2: boom)"), "{d}");

        let fault = "x\nEXCEPTION: Page Fault (vector 14) error code 0x2\nrip 0x1\n";
        let d = Outcome::KernelFailure.describe_with_log(fault);
        assert!(d.contains("fatal exception (EXCEPTION: Page Fault (vector 14) error code 0x2)"), "{d}");

        let failed = "TIMER-REPORT {\"verdict\":\"failed\"}\n";
        assert!(Outcome::KernelFailure.describe_with_log(failed).contains("verdict is failed"));
        let silent = "TIMER-REPORT {\"verdict\":\"ok\"}\n";
        assert!(Outcome::KernelFailure.describe_with_log(silent).contains("no KERNEL PANIC"));
    }

    #[test]
    fn other_outcomes_ignore_the_log() {
        let log = "KERNEL PANIC: panicked at a.rs:1:2: boom\n";
        assert_eq!(Outcome::KernelSuccess.describe_with_log(log), Outcome::KernelSuccess.describe());
        assert_eq!(Outcome::NoVerdict.describe_with_log(log), Outcome::NoVerdict.describe());
    }
}
