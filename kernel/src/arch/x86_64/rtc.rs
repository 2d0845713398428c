//! The CMOS real-time clock (MC146818 and its descendants in every PC chipset): reads the date
//! and time safely, writes them, and sets the alarm (which can wake the machine from S3 when
//! RTC_EN is set in PM1_EN).
//!
//! Reading: the RTC updates its registers once a second, and for up to 2 ms around that update
//! they may be inconsistent. Status register A's UIP bit is set 244 us before an update starts;
//! so a read waits for UIP to clear, reads every register, and repeats until two reads agree
//! (as Linux's `mc146818_get_time` and FreeBSD's `atrtc_gettime`). The registers are decoded
//! (BCD or binary, 12- or 24-hour, the century) by `kernel_time::calendar`, which checks every
//! field. The index port 0x70 also holds the NMI mask in bit 7: written here with bit 7 clear,
//! as the kernel never masks NMIs there.

use kernel_time::calendar::{DateTime, RtcError, RtcRaw};
use spin::Mutex;
use x86_64::instructions::interrupts::without_interrupts;
use x86_64::instructions::port::Port;

const INDEX: u16 = 0x70;
const DATA: u16 = 0x71;

/// Time registers.
const SECONDS: u8 = 0x00;
const SECONDS_ALARM: u8 = 0x01;
const MINUTES: u8 = 0x02;
const MINUTES_ALARM: u8 = 0x03;
const HOURS: u8 = 0x04;
const HOURS_ALARM: u8 = 0x05;
const DAY_OF_MONTH: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
/// Status registers.
const STATUS_A: u8 = 0x0a;
const STATUS_B: u8 = 0x0b;
const STATUS_C: u8 = 0x0c;
const STATUS_D: u8 = 0x0d;

/// Status A: update in progress.
const A_UIP: u8 = 1 << 7;
/// Status B: updates halted while the time is written.
const B_SET: u8 = 1 << 7;
/// Status B: the alarm interrupt enabled.
const B_AIE: u8 = 1 << 5;
/// Status D: valid RAM and time (the battery held).
const D_VRT: u8 = 1 << 7;
/// An alarm register holding this ("don't care") matches every value.
pub const ALARM_ANY: u8 = 0xc0;

/// Bounds the wait for UIP to clear: an update takes under 2 ms; a port read takes at least
/// about 1 us on real hardware and in QEMU, so this is over 10 ms there.
const UIP_POLLS: u32 = 10_000;
/// Reads until two agree, at most.
const READ_ATTEMPTS: u32 = 5;

/// The CMOS index and data ports: one register access at a time, interrupts off around it (an
/// interrupt between the index and the data write would leave another index selected).
static CMOS: Mutex<()> = Mutex::new(());

/// What the FADT says of the RTC: the CMOS RAM indices of the century, the day-of-month alarm
/// and the month alarm (each `None` when it names none or a byte that is not CMOS RAM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RtcLayout {
    /// The century register (FADT CENTURY).
    pub century: Option<u8>,
    /// The day-of-month alarm register (FADT DAY_ALRM).
    pub day_alarm: Option<u8>,
    /// The month alarm register (FADT MON_ALRM).
    pub month_alarm: Option<u8>,
}

/// Why the RTC could not be read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcProblem {
    /// Status D's VRT bit is clear: the RTC lost power, its time is meaningless.
    InvalidTime,
    /// UIP never cleared (or stayed set every time it was looked at).
    UpdateNeverEnds,
    /// Two reads in a row never agreed.
    Unstable,
    /// The registers do not make a date.
    Garbage(RtcError),
    /// A date outside 1970..=9999 cannot be written.
    Unwritable(RtcError),
}

impl core::fmt::Display for RtcProblem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RtcProblem::InvalidTime => write!(f, "the RTC lost power (status D's VRT bit is clear)"),
            RtcProblem::UpdateNeverEnds => write!(f, "the RTC's update-in-progress bit never cleared"),
            RtcProblem::Unstable => write!(f, "{READ_ATTEMPTS} reads of the RTC in a row never agreed"),
            RtcProblem::Garbage(e) => write!(f, "{e}"),
            RtcProblem::Unwritable(e) => write!(f, "cannot write that date to the RTC: {e}"),
        }
    }
}

/// Reads CMOS register `index` (the caller holds [`CMOS`] with interrupts off).
fn read_register(index: u8) -> u8 {
    let mut i = Port::<u8>::new(INDEX);
    let mut d = Port::<u8>::new(DATA);
    // SAFETY: ports 0x70/0x71 are the CMOS index and data ports on every PC-compatible machine;
    // selecting a register and reading it has no effect but on status C (cleared by its read,
    // which only the alarm code here does). Bit 7 (the NMI mask) stays clear.
    unsafe {
        i.write(index & 0x7f);
        d.read()
    }
}

/// Writes CMOS register `index` (the caller holds [`CMOS`] with interrupts off).
fn write_register(index: u8, value: u8) {
    let mut i = Port::<u8>::new(INDEX);
    let mut d = Port::<u8>::new(DATA);
    // SAFETY: as in `read_register`; only the RTC's time, alarm and status B registers are
    // written, by the functions of this file.
    unsafe {
        i.write(index & 0x7f);
        d.write(value);
    }
}

/// Runs `f` with the CMOS ports to itself.
fn with_cmos<R>(f: impl FnOnce() -> R) -> R {
    without_interrupts(|| {
        let _g = CMOS.lock();
        f()
    })
}

/// One read of every time register, once UIP is clear.
fn read_once(layout: &RtcLayout) -> Result<RtcRaw, RtcProblem> {
    with_cmos(|| {
        let mut polls = 0;
        while read_register(STATUS_A) & A_UIP != 0 {
            polls += 1;
            if polls >= UIP_POLLS {
                return Err(RtcProblem::UpdateNeverEnds);
            }
            core::hint::spin_loop();
        }
        Ok(RtcRaw {
            second: read_register(SECONDS),
            minute: read_register(MINUTES),
            hour: read_register(HOURS),
            day: read_register(DAY_OF_MONTH),
            month: read_register(MONTH),
            year: read_register(YEAR),
            century: layout.century.map(read_register),
            status_b: read_register(STATUS_B),
        })
    })
}

/// The RTC's registers, read until two reads agree.
pub fn read_raw(layout: &RtcLayout) -> Result<RtcRaw, RtcProblem> {
    if with_cmos(|| read_register(STATUS_D)) & D_VRT == 0 {
        return Err(RtcProblem::InvalidTime);
    }
    let mut last = read_once(layout)?;
    for _ in 0..READ_ATTEMPTS {
        let now = read_once(layout)?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Err(RtcProblem::Unstable)
}

/// The date and time the RTC holds.
pub fn read(layout: &RtcLayout) -> Result<DateTime, RtcProblem> {
    read_raw(layout)?.decode().map_err(RtcProblem::Garbage)
}

/// Sets the RTC to `dt`, in the data mode and hour format it is in: updates halted (status B's
/// SET) while the registers are written.
pub fn write(layout: &RtcLayout, dt: &DateTime) -> Result<(), RtcProblem> {
    dt.validate().map_err(RtcProblem::Unwritable)?;
    with_cmos(|| {
        let b = read_register(STATUS_B);
        let raw = RtcRaw::encode(dt, b);
        write_register(STATUS_B, b | B_SET);
        write_register(SECONDS, raw.second);
        write_register(MINUTES, raw.minute);
        write_register(HOURS, raw.hour);
        write_register(DAY_OF_MONTH, raw.day);
        write_register(MONTH, raw.month);
        write_register(YEAR, raw.year);
        if let (Some(index), Some(c)) = (layout.century, raw.century) {
            write_register(index, c);
        }
        write_register(STATUS_B, b & !B_SET);
    });
    Ok(())
}

/// Sets the alarm for `at` (its day of month too where the FADT names the day alarm register;
/// else it matches every day, so it must be less than a day away) and enables its interrupt
/// flag (AIE), which PM1's RTC_STS follows for a wake from S3. Any alarm flag already raised
/// is cleared first (reading status C).
pub fn set_alarm(layout: &RtcLayout, at: &DateTime) -> Result<(), RtcProblem> {
    at.validate().map_err(RtcProblem::Unwritable)?;
    with_cmos(|| {
        let b = read_register(STATUS_B);
        let raw = RtcRaw::encode(at, b);
        write_register(STATUS_B, b & !B_AIE);
        write_register(SECONDS_ALARM, raw.second);
        write_register(MINUTES_ALARM, raw.minute);
        write_register(HOURS_ALARM, raw.hour);
        if let Some(index) = layout.day_alarm {
            write_register(index, raw.day);
        }
        if let Some(index) = layout.month_alarm {
            write_register(index, raw.month);
        }
        let _ = read_register(STATUS_C);
        write_register(STATUS_B, b | B_AIE);
    });
    Ok(())
}

/// Status C: the alarm matched (set whether or not its interrupt is enabled).
const C_AF: u8 = 1 << 5;

/// Whether the alarm matched since the flags were last read (reading clears them, so the
/// answer is given once).
pub fn alarm_fired() -> bool {
    with_cmos(|| read_register(STATUS_C)) & C_AF != 0
}

/// Disables the alarm and clears its flag.
pub fn clear_alarm() {
    with_cmos(|| {
        let b = read_register(STATUS_B);
        write_register(STATUS_B, b & !B_AIE);
        let _ = read_register(STATUS_C);
    });
}
