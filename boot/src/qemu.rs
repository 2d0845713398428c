//! Builds the QEMU command line for a set of options, runs it under a timeout and classifies how
//! it ended.

use crate::hpet_table::{HpetTable, SecondHpetTable};
use crate::options::{Accel, Firmware, RunOptions, X2Apic};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The kernel writes these to the `isa-debug-exit` port (0xf4); QEMU then exits with
/// `(value << 1) | 1`. Keep in step with `kernel/src/arch/x86_64/qemu.rs`.
pub const EXIT_SUCCESS_STATUS: i32 = (0x10 << 1) | 1;
pub const EXIT_FAILURE_STATUS: i32 = (0x11 << 1) | 1;

/// The QEMU binary: `$QEMU` when set (a QEMU outside `PATH`), else `qemu-system-x86_64`.
pub fn binary() -> String {
    std::env::var("QEMU").ok().filter(|q| !q.is_empty()).unwrap_or_else(|| "qemu-system-x86_64".into())
}

/// A QEMU's version, as `--version` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
}

impl QemuVersion {
    /// From `QEMU emulator version 10.0.2 (Debian ...)`.
    pub fn parse(text: &str) -> Option<QemuVersion> {
        let rest = &text[text.find("version ")? + "version ".len()..];
        let mut parts = rest.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty());
        Some(QemuVersion { major: parts.next()?.parse().ok()?, minor: parts.next()?.parse().ok()? })
    }

    /// Its TCG offers x2APIC to `-cpu max` (measured: Debian's 7.2 does not, 10.0 from
    /// bookworm-backports does).
    pub fn tcg_x2apic(self) -> bool {
        self.major >= 10
    }
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The version of [`binary`], asked once per run.
pub fn version() -> Result<QemuVersion, String> {
    static VERSION: std::sync::OnceLock<Result<QemuVersion, String>> = std::sync::OnceLock::new();
    VERSION
        .get_or_init(|| {
            let q = binary();
            let out = Command::new(&q).arg("--version").output().map_err(|e| {
                format!("cannot start {q} ({e}): run `apt-get install -y qemu-system-x86 ovmf`, or set QEMU")
            })?;
            let text = String::from_utf8_lossy(&out.stdout);
            QemuVersion::parse(&text).ok_or_else(|| format!("{q} --version printed no version: {text}"))
        })
        .clone()
}

/// Why a configuration cannot run on this QEMU (a test variant asking for it is ignored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported(pub String);

/// The `-cpu` model for `opts` on QEMU `version`: `max` under TCG (with `-x2apic` where x2APIC
/// must not be offered), `host,-arch-capabilities` under KVM (`host` alone aborts on software
/// KVMs, which refuse the IA32_ARCH_CAPABILITIES MSR QEMU sets for it). Under `-icount`, a QEMU
/// whose TCG offers x2APIC aborts as soon as the guest reads the APIC timer by MSR ("Bad
/// icount read"): `auto` turns x2APIC off there, and `on` is refused.
pub fn cpu_model(opts: &RunOptions, version: QemuVersion) -> Result<String, Unsupported> {
    let icount = opts.qemu_args.iter().any(|a| a == "-icount");
    let base = match opts.accel {
        Accel::Tcg => "max",
        Accel::Kvm => "host,-arch-capabilities",
    };
    let x2apic = match (opts.x2apic, opts.accel) {
        (X2Apic::Off, _) => false,
        (X2Apic::Auto, Accel::Tcg) => !(icount && version.tcg_x2apic()),
        (X2Apic::Auto, Accel::Kvm) => true,
        (X2Apic::On, Accel::Kvm) => true,
        (X2Apic::On, Accel::Tcg) if !version.tcg_x2apic() => {
            return Err(Unsupported(format!(
                "x2APIC under TCG needs QEMU 10 or later (this is {version}; Debian's bookworm-backports has it)"
            )));
        }
        (X2Apic::On, Accel::Tcg) if icount => {
            return Err(Unsupported(format!(
                "QEMU {version} aborts under -icount in x2APIC mode (Bad icount read)"
            )));
        }
        (X2Apic::On, Accel::Tcg) => true,
    };
    Ok(if x2apic { base.to_string() } else { format!("{base},-x2apic") })
}

/// Whether KVM can be used at all: `/dev/kvm` opens for reading and writing.
pub fn kvm_available() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| format!("KVM is not usable here (/dev/kvm: {e}): use --accel tcg (the default)"))
}

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
    /// The machine stayed suspended (ACPI S3, QEMU's state over QMP) for this long and was
    /// ended: no wake-up came.
    SuspendedNoWake(Duration),
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
            Outcome::SuspendedNoWake(t) => {
                format!("suspended, no wake-up within {} s: QEMU ended", t.as_secs())
            }
        }
    }

    /// A hint for a boot under KVM that gave no verdict in time.
    pub fn kvm_hint(&self, accel: Accel) -> Option<&'static str> {
        match (self, accel) {
            (Outcome::Timeout(_), Accel::Kvm) => Some(
                "under KVM no verdict came in time: this host's KVM may itself be emulated (slower than TCG): use --accel tcg (the default) or a longer --timeout",
            ),
            _ => None,
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
    write_table(image, &table.file_stem(), &table.bytes(), "HPET table")
}

/// Writes the second HPET table `--second-hpet-table` asked for next to `image`, as
/// [`write_hpet_table`] does, and returns its path.
pub fn write_second_hpet_table(table: &SecondHpetTable, image: &Path) -> Result<PathBuf, String> {
    write_table(image, &table.file_stem(), &table.bytes(), "second HPET table")
}

/// Writes `bytes` to `<image stem>.<stem>.dat` through a file of this boot's own, renamed.
fn write_table(image: &Path, stem: &str, bytes: &[u8], what: &str) -> Result<PathBuf, String> {
    let path = image.with_extension(format!("{stem}.dat"));
    let partial = path.with_extension(format!("dat.{}", boot_id()));
    std::fs::write(&partial, bytes)
        .and_then(|()| std::fs::rename(&partial, &path))
        .map_err(|e| format!("writing the {what} {}: {e}", path.display()))?;
    Ok(path)
}

/// A name part no other boot of this machine uses at the same time: the process id and a count
/// of this process's boots (the test runner boots several variants of one image at once).
fn boot_id() -> String {
    static BOOTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = BOOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}.{n}", std::process::id())
}

/// The QEMU arguments for booting `image` with `opts`. `cmdline_file` holds the kernel options,
/// `hpet_table_file` the table `--hpet-table` asked for (see [`write_hpet_table`]),
/// `second_hpet_file` the one `--second-hpet-table` adds beside QEMU's.
pub fn arguments(
    opts: &RunOptions,
    version: QemuVersion,
    image: &Path,
    cmdline_file: &Path,
    hpet_table_file: Option<&Path>,
    second_hpet_file: Option<&Path>,
) -> Result<Vec<String>, String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    // A `-machine` among the verbatim arguments replaces ours rather than merging with it. With
    // an injected HPET table ours has no HPET: QEMU then adds neither the device nor its table.
    if !opts.qemu_args.iter().any(|x| x == "-machine" || x == "-M") {
        push(&["-machine", if hpet_table_file.is_some() { "q35,hpet=off" } else { "q35,hpet=on" }]);
    }
    let cpu = cpu_model(opts, version).map_err(|Unsupported(why)| why)?;
    match opts.accel {
        Accel::Tcg => push(&["-accel", "tcg", "-cpu", &cpu]),
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", &cpu]),
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
    for table in hpet_table_file.into_iter().chain(second_hpet_file) {
        push(&["-acpitable", &format!("file={}", table.display())]);
    }
    if opts.firmware == Firmware::Uefi {
        push(&["-bios", ovmf()?]);
    }
    if let Some(on) = opts.s3_enabled() {
        // The ACPI device of the machine: PIIX4's on `pc`, ICH9's LPC bridge on q35.
        let pc = opts.qemu_args.windows(2).any(|w| {
            (w[0] == "-machine" || w[0] == "-M")
                && (w[1] == "pc" || w[1].starts_with("pc,") || w[1].starts_with("pc-i440fx"))
        });
        let device = if pc { "PIIX4_PM" } else { "ICH9-LPC" };
        push(&["-global", &format!("{device}.disable_s3={}", if on { 0 } else { 1 })]);
        // No SMM with S3 (merged into the machine's options; the kernel uses none): SeaBIOS's
        // resume calls through SMM, and under a busy host it could hang there before the
        // waking vector ran, the boot CPU halted after its SMI and an AP spinning on the
        // firmware's SMP lock (2 of 6 runs of `s3::smp2` beside a fuzzer; the runner's state
        // at the timeout showed where). Without SMM it takes another way.
        let smm_given = opts.qemu_args.iter().any(|x| x.contains("smm="));
        if on && !smm_given {
            push(&["-machine", "smm=off"]);
        }
    }
    if opts.gdb {
        push(&["-s", "-S"]);
    }
    // Under icount the RTC follows guest time (else it runs on the host's, and a second of the
    // RTC's passes in a fraction of the guest's nanoseconds, or many), unless the caller says.
    let given = |x: &str| opts.qemu_args.iter().any(|a| a == x);
    if given("-icount") && !given("-rtc") {
        push(&["-rtc", "clock=vm"]);
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
    let cmdline_file = image.with_extension(format!("cmdline.{}", boot_id()));
    for f in &opts.table_faults {
        eprintln!(
            "runner: fault injection handed to the kernel as {f} (QEMU's own table cannot be replaced)"
        );
    }
    std::fs::write(&cmdline_file, opts.kernel_cmdline().as_bytes())
        .map_err(|e| format!("writing {}: {e}", cmdline_file.display()))?;
    let hpet_table_file = opts.hpet_table.map(|t| write_hpet_table(&t, image)).transpose()?;
    if opts.accel == Accel::Kvm {
        kvm_available()?;
    }
    let second_hpet_file = opts.second_hpet_table.map(|t| write_second_hpet_table(&t, image)).transpose()?;
    let mut args = arguments(
        opts,
        version()?,
        image,
        &cmdline_file,
        hpet_table_file.as_deref(),
        second_hpet_file.as_deref(),
    )?;
    // QMP on every boot (a socket path short enough for sun_path): with S3, QEMU's run state is
    // watched (a wake-up that never comes); on any boot, a timeout says where the CPUs were.
    let qmp_path = std::env::temp_dir().join(format!("timerkernel-qmp-{}.sock", boot_id()));
    let watch_suspend = opts.s3_enabled() == Some(true);
    let _ = std::fs::remove_file(&qmp_path);
    args.extend(["-qmp".to_string(), format!("unix:{},server=on,wait=off", qmp_path.display())]);
    let mut watch = SuspendWatch::new(&qmp_path, opts.wake_within);
    let start = Instant::now();
    let mut child = Command::new(binary())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("cannot start {} ({e}): run `apt-get install -y qemu-system-x86 ovmf`", binary())
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

    // At a timeout, where the machine was (over QMP): said after the serial log.
    let mut state_at_timeout = None;
    let outcome = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Outcome::from_status(status),
            Ok(None) if start.elapsed() >= opts.timeout && !opts.gdb => {
                state_at_timeout = watch.describe();
                let _ = child.kill();
                let _ = child.wait();
                break Outcome::Timeout(opts.timeout);
            }
            Ok(None) if watch_suspend && watch.no_wake() => {
                let _ = child.kill();
                let _ = child.wait();
                break Outcome::SuspendedNoWake(opts.wake_within);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Outcome::QemuError(format!("waiting for QEMU: {e}")),
        }
    };
    let _ = reader.join();
    let stderr_text = errors.join().unwrap_or_default();
    let _ = std::fs::remove_file(&cmdline_file);
    let _ = std::fs::remove_file(&qmp_path);
    let outcome = match outcome {
        // Said in one line: QEMU's own lines are echoed above.
        Outcome::QemuError(e) if opts.accel == Accel::Kvm => {
            let first =
                stderr_text.lines().find(|l| l.contains("error") || l.contains("rror:")).unwrap_or(&e);
            Outcome::QemuError(format!(
                "KVM cannot run this kernel here ({}): use --accel tcg (the default)",
                first.trim()
            ))
        }
        Outcome::QemuError(e) if !stderr_text.trim().is_empty() => {
            Outcome::QemuError(format!("{e}: {}", stderr_text.trim()))
        }
        o => o,
    };
    if !stderr_text.trim().is_empty() {
        let _ = writeln!(std::io::stderr(), "qemu: {}", stderr_text.trim());
    }
    let mut log = std::mem::take(&mut *log.lock().unwrap());
    if let Some(state) = state_at_timeout {
        let line = format!("runner: at the timeout QEMU was {state}");
        let _ = writeln!(std::io::stderr(), "{line}");
        log.push_str(&line);
        log.push('\n');
    }
    Ok(Boot { outcome, log, elapsed: start.elapsed() })
}

/// Watches QEMU's run state over QMP (`query-status`, every 200 ms): how long the machine has
/// been `suspended` without a break.
struct SuspendWatch {
    path: PathBuf,
    limit: Duration,
    conn: Option<(BufReader<std::os::unix::net::UnixStream>, std::os::unix::net::UnixStream)>,
    last_poll: Option<Instant>,
    suspended_since: Option<Instant>,
}

impl SuspendWatch {
    fn new(path: &Path, limit: Duration) -> SuspendWatch {
        SuspendWatch { path: path.to_path_buf(), limit, conn: None, last_poll: None, suspended_since: None }
    }

    /// True once the machine has been suspended for longer than the limit.
    fn no_wake(&mut self) -> bool {
        if self.last_poll.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
            return false;
        }
        self.last_poll = Some(Instant::now());
        match self.status() {
            Some(s) if s == "suspended" => {
                let since = *self.suspended_since.get_or_insert_with(Instant::now);
                since.elapsed() >= self.limit
            }
            Some(_) => {
                self.suspended_since = None;
                false
            }
            None => false,
        }
    }

    /// QEMU's run state and each CPU's instruction pointer and mode (QMP's `query-status` and
    /// the monitor's `info registers -a`), for a boot that gave no verdict in time; None while
    /// QMP does not answer.
    fn describe(&mut self) -> Option<String> {
        let status = self.status()?;
        let (reader, writer) = self.conn.as_mut()?;
        let request =
            br#"{"execute":"human-monitor-command","arguments":{"command-line":"info registers -a"}}"#;
        let registers = writer
            .write_all(request)
            .and_then(|()| writer.write_all(b"\n"))
            .ok()
            .and_then(|()| qmp_return(reader))
            .and_then(|r| r.as_str().map(str::to_string))
            .unwrap_or_default();
        Some(format!("{status}; {}", cpu_positions(&registers)))
    }

    /// QEMU's run state (`running`, `suspended`, ...), or None while QMP does not answer.
    fn status(&mut self) -> Option<String> {
        if self.conn.is_none() {
            let stream = std::os::unix::net::UnixStream::connect(&self.path).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            let mut reader = BufReader::new(stream.try_clone().ok()?);
            let mut greeting = String::new();
            reader.read_line(&mut greeting).ok()?;
            let mut writer = stream;
            writer.write_all(b"{\"execute\":\"qmp_capabilities\"}\n").ok()?;
            qmp_return(&mut reader)?;
            self.conn = Some((reader, writer));
        }
        let (reader, writer) = self.conn.as_mut()?;
        let answer = writer
            .write_all(b"{\"execute\":\"query-status\"}\n")
            .ok()
            .and_then(|()| qmp_return(reader))
            .and_then(|r| r.get("status").and_then(|s| s.as_str()).map(str::to_string));
        if answer.is_none() {
            self.conn = None;
        }
        answer
    }
}

/// Each CPU's instruction pointer (`RIP`, or `EIP` outside 64-bit mode), `HLT` state and `CS`
/// from the monitor's `info registers -a` (its lines `CPU#n`, `RIP=... RFL=... [...] CPL=n
/// II=n A20=n SMM=n HLT=n`, `CS =...`), one `CPU n: RIP=... HLT=n CS=...` per CPU.
fn cpu_positions(registers: &str) -> String {
    let mut cpus = Vec::new();
    for line in registers.lines() {
        let line = line.trim();
        if let Some(n) = line.strip_prefix("CPU#") {
            cpus.push(format!("CPU {}:", n.trim()));
        } else if let (Some(cpu), Some((name, ip))) = (
            cpus.last_mut(),
            line.strip_prefix("RIP=")
                .map(|ip| ("RIP", ip))
                .or_else(|| line.strip_prefix("EIP=").map(|ip| ("EIP", ip))),
        ) {
            // EIP: not in 64-bit mode (the firmware's code, or the start-up code on its way).
            let ip = ip.split_whitespace().next().unwrap_or("?");
            let hlt = line.split_whitespace().find_map(|w| w.strip_prefix("HLT=")).unwrap_or("?");
            cpu.push_str(&format!(" {name}={ip} HLT={hlt}"));
        } else if let (Some(cpu), Some(cs)) = (cpus.last_mut(), line.strip_prefix("CS =")) {
            cpu.push_str(&format!(" CS={}", cs.split_whitespace().next().unwrap_or("?")));
        }
    }
    if cpus.is_empty() { "no registers from the monitor".into() } else { cpus.join("; ") }
}

/// Reads QMP lines until a command's answer (events in between skipped); its `return` value.
fn qmp_return(reader: &mut impl BufRead) -> Option<serde_json::Value> {
    for _ in 0..64 {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        if let Some(r) = v.get("return") {
            return Some(r.clone());
        }
        if v.get("error").is_some() {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::split_words;

    const QEMU_7_2: QemuVersion = QemuVersion { major: 7, minor: 2 };
    const QEMU_10_0: QemuVersion = QemuVersion { major: 10, minor: 0 };

    fn opts(line: &str) -> RunOptions {
        RunOptions::default().parse(&split_words(line).unwrap()).unwrap()
    }

    fn args_for(line: &str) -> Vec<String> {
        let o = opts(line);
        let table = o.hpet_table.map(|t| PathBuf::from(format!("k.{}.dat", t.file_stem())));
        let second = o.second_hpet_table.map(|t| PathBuf::from(format!("k.{}.dat", t.file_stem())));
        arguments(
            &o,
            QEMU_7_2,
            Path::new("k.img"),
            Path::new("k.cmdline"),
            table.as_deref(),
            second.as_deref(),
        )
        .unwrap()
    }

    #[test]
    fn version_is_read_from_qemu_s_banner() {
        let v = QemuVersion::parse("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n");
        assert_eq!(v, Some(QEMU_10_0));
        assert_eq!(
            QemuVersion::parse("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"),
            Some(QEMU_7_2)
        );
        assert_eq!(QemuVersion::parse("no banner"), None);
        assert!(QEMU_10_0.tcg_x2apic() && !QEMU_7_2.tcg_x2apic());
    }

    #[test]
    fn cpu_model_follows_the_accelerator_x2apic_and_icount() {
        let model = |line: &str, v| cpu_model(&opts(line), v);
        assert_eq!(model("", QEMU_7_2), Ok("max".into()));
        assert_eq!(model("", QEMU_10_0), Ok("max".into()), "QEMU 10 offers x2APIC with max");
        assert_eq!(model("--x2apic off", QEMU_10_0), Ok("max,-x2apic".into()));
        assert_eq!(model("--x2apic on", QEMU_10_0), Ok("max".into()));
        assert!(
            model("--x2apic on", QEMU_7_2).unwrap_err().0.contains("needs QEMU 10 or later (this is 7.2")
        );
        // icount: QEMU 10 aborts in x2APIC mode, so auto keeps the guest on xAPIC there.
        assert_eq!(model("-- -icount shift=0,sleep=off", QEMU_10_0), Ok("max,-x2apic".into()));
        assert_eq!(model("-- -icount shift=0,sleep=off", QEMU_7_2), Ok("max".into()));
        assert!(
            model("--x2apic on -- -icount shift=0", QEMU_10_0).unwrap_err().0.contains("Bad icount read")
        );
        // KVM: the host's CPU without the MSR software KVMs refuse.
        assert_eq!(model("--accel kvm", QEMU_7_2), Ok("host,-arch-capabilities".into()));
        assert_eq!(model("--accel kvm --x2apic off", QEMU_7_2), Ok("host,-arch-capabilities,-x2apic".into()));
        assert_eq!(model("--accel kvm --x2apic on", QEMU_7_2), Ok("host,-arch-capabilities".into()));
        let a = args_for("--accel kvm");
        assert!(has_pair(&a, "-accel", "kvm") && has_pair(&a, "-cpu", "host,-arch-capabilities"));
    }

    #[test]
    fn a_timeouts_cpu_positions_come_from_the_monitors_registers() {
        let registers = "CPU#0\r\nRAX=0000000000000000 RBX=0000000000000001\r\n\
            RIP=ffff80000004d2f1 RFL=00000046 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0\r\n\
            ES =0000 0000000000000000 ffffffff 00c00000\r\nCS =0008 0000000000000000 ffffffff 00a09b00 DPL=0 CS64 [-RA]\r\n\
            CPU#1\r\nRIP=000000000000fff0 RFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=1\r\n\
            CS =f000 00000000ffff0000 0000ffff 00009b00\r\n\
            CPU#2\r\nEAX=00000000 EBX=00000000\r\nEIP=000f1e2b EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\r\n\
            CS =0008 00000000 ffffffff 00cf9b00 DPL=0 CS32 [-R-]\r\n";
        assert_eq!(
            cpu_positions(registers),
            "CPU 0: RIP=ffff80000004d2f1 HLT=0 CS=0008; CPU 1: RIP=000000000000fff0 HLT=1 CS=f000; \
             CPU 2: EIP=000f1e2b HLT=0 CS=0008"
        );
        assert_eq!(cpu_positions(""), "no registers from the monitor");
    }

    #[test]
    fn a_kvm_timeout_says_how_to_use_tcg() {
        let t = Outcome::Timeout(Duration::from_secs(120));
        assert!(t.kvm_hint(Accel::Kvm).unwrap().contains("use --accel tcg"));
        assert_eq!(t.kvm_hint(Accel::Tcg), None);
        assert_eq!(Outcome::KernelSuccess.kvm_hint(Accel::Kvm), None);
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
    fn s3_is_enabled_for_an_s3_test_on_the_machine_s_acpi_device() {
        assert!(!args_for("").iter().any(|x| x.contains("disable_s3")));
        assert!(has_pair(&args_for("--cmdline s3_test=2"), "-global", "ICH9-LPC.disable_s3=0"));
        assert!(has_pair(&args_for("--s3"), "-global", "ICH9-LPC.disable_s3=0"));
        assert!(has_pair(&args_for("--s3"), "-machine", "smm=off"), "no SMM with S3");
        assert!(!has_pair(&args_for("--no-s3"), "-machine", "smm=off"));
        assert!(!has_pair(&args_for("--s3 -- -machine q35,smm=on"), "-machine", "smm=off"), "the user's own");
        assert!(has_pair(&args_for("--s3 -- -machine pc,hpet=on"), "-global", "PIIX4_PM.disable_s3=0"));
        assert!(has_pair(&args_for("--no-s3 --cmdline s3_test=2"), "-global", "ICH9-LPC.disable_s3=1"));
    }

    #[test]
    fn a_qmp_answer_is_found_among_events() {
        let text =
            "{\"event\": \"SUSPEND\"}\n{\"return\": {\"status\": \"suspended\", \"running\": false}}\n";
        let r = qmp_return(&mut BufReader::new(text.as_bytes())).expect("an answer");
        assert_eq!(r["status"], "suspended");
        assert!(qmp_return(&mut BufReader::new(&b"{\"error\": {}}\n"[..])).is_none());
        assert!(qmp_return(&mut BufReader::new(&b""[..])).is_none());
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
    fn second_hpet_table_goes_beside_qemus_own() {
        let a = args_for("--second-hpet-table overlap");
        assert!(has_pair(&a, "-machine", "q35,hpet=on"), "QEMU keeps its HPET and its table");
        assert!(has_pair(&a, "-acpitable", "file=k.hpet2-overlap-0xfed00000.dat"));
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
        let args =
            |o: &RunOptions| arguments(o, QEMU_7_2, Path::new("k.img"), Path::new("c"), None, None).unwrap();
        assert!(!args(&o).iter().any(|a| a.contains("variant")));
        o.variant = Some("smp4_partial".into());
        let a = args(&o);
        assert!(has_pair(&a, "-fw_cfg", "name=opt/timerkernel/variant,string=smp4_partial"));
    }

    #[test]
    fn under_icount_the_rtc_follows_guest_time_unless_the_caller_says() {
        let a = args_for("-- -icount shift=0,sleep=off");
        assert!(has_pair(&a, "-rtc", "clock=vm"));
        let a = args_for("-- -icount shift=0,sleep=off -rtc base=2031-05-17T10:00:00,clock=vm");
        assert_eq!(a.iter().filter(|x| *x == "-rtc").count(), 1, "the caller's -rtc alone");
        assert!(!args_for("--smp 2").iter().any(|x| x == "-rtc"), "TCG: the host's clock, QEMU's default");
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
