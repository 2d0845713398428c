//! Wall-clock dates without the hardware: the civil (proleptic Gregorian, UTC) date and time a
//! CMOS real-time clock holds, its register encodings (BCD or binary, 12- or 24-hour, as its
//! status register B says), the century it does not hold, and the conversion to and from
//! seconds since the Unix epoch (1970-01-01T00:00:00Z) that a kernel's REALTIME clock counts.
//!
//! The driver reads the registers (waiting out an update, reading twice until two reads agree)
//! and hands them here as [`RtcRaw`]; [`RtcRaw::decode`] checks every field and says what is
//! wrong rather than guessing. The century: the register the FADT names, if any, else the
//! window Linux's `mc146818_get_time` uses: two-digit years 70-99 are 1970-1999, 00-69 are
//! 2000-2069.

use core::fmt;

/// A civil date and time, UTC (or local time, when the RTC holds that), to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DateTime {
    /// The full year, 1970..=9999.
    pub year: u16,
    /// 1..=12.
    pub month: u8,
    /// 1..=31 (as the month allows).
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
    /// 0..=59.
    pub minute: u8,
    /// 0..=59 (a leap second's 60 is refused: the RTC never shows it).
    pub second: u8,
}

/// Status register B's data-mode bit: binary values (else BCD).
pub const STATUS_B_BINARY: u8 = 1 << 2;
/// Status register B's hour-format bit: 24-hour (else 12-hour, bit 7 of the hour = PM).
pub const STATUS_B_24H: u8 = 1 << 1;
/// In 12-hour mode, the hour register's PM flag.
const HOUR_PM: u8 = 0x80;

/// The time registers as read from the RTC, undecoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RtcRaw {
    /// Register 0x00.
    pub second: u8,
    /// Register 0x02.
    pub minute: u8,
    /// Register 0x04 (in 12-hour mode bit 7 is PM).
    pub hour: u8,
    /// Register 0x07, the day of the month.
    pub day: u8,
    /// Register 0x08.
    pub month: u8,
    /// Register 0x09, the year in its century.
    pub year: u8,
    /// The century register's value, if the FADT names one.
    pub century: Option<u8>,
    /// Status register B (its data mode and hour format).
    pub status_b: u8,
}

/// Why RTC registers do not make a date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcError {
    /// A BCD register holds a nibble over 9.
    NotBcd {
        /// The register's field.
        field: &'static str,
        /// What it held.
        value: u8,
    },
    /// A field is outside its range once decoded.
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Its decoded value.
        value: u16,
    },
}

impl fmt::Display for RtcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RtcError::NotBcd { field, value } => {
                write!(f, "the RTC's {field} register {value:#04x} is not BCD")
            }
            RtcError::OutOfRange { field, value } => write!(f, "the RTC's {field} is {value}, out of range"),
        }
    }
}

impl core::error::Error for RtcError {}

/// `v` from BCD (or as it is, in binary mode).
fn from_register(v: u8, binary: bool, field: &'static str) -> Result<u8, RtcError> {
    if binary {
        return Ok(v);
    }
    if v >> 4 > 9 || v & 0xf > 9 {
        return Err(RtcError::NotBcd { field, value: v });
    }
    Ok((v >> 4) * 10 + (v & 0xf))
}

/// `v` (0..=99) to BCD (or as it is, in binary mode).
fn to_register(v: u8, binary: bool) -> u8 {
    if binary { v } else { ((v / 10) << 4) | (v % 10) }
}

fn check(field: &'static str, value: u16, range: core::ops::RangeInclusive<u16>) -> Result<(), RtcError> {
    if range.contains(&value) { Ok(()) } else { Err(RtcError::OutOfRange { field, value }) }
}

impl RtcRaw {
    /// The date and time these registers say; every field checked.
    pub fn decode(&self) -> Result<DateTime, RtcError> {
        let binary = self.status_b & STATUS_B_BINARY != 0;
        let second = from_register(self.second, binary, "seconds")?;
        let minute = from_register(self.minute, binary, "minutes")?;
        let hour = if self.status_b & STATUS_B_24H != 0 {
            from_register(self.hour, binary, "hours")?
        } else {
            // 12-hour: 12 AM is 0, 12 PM is 12.
            let h = from_register(self.hour & !HOUR_PM, binary, "hours")?;
            check("hour (12-hour mode)", h.into(), 1..=12)?;
            h % 12 + if self.hour & HOUR_PM != 0 { 12 } else { 0 }
        };
        let day = from_register(self.day, binary, "day of month")?;
        let month = from_register(self.month, binary, "month")?;
        let yy = from_register(self.year, binary, "year")?;
        check("year (two digits)", yy.into(), 0..=99)?;
        let year = match self.century {
            Some(c) => {
                let c = from_register(c, binary, "century")?;
                check("century", c.into(), 19..=99)?;
                u16::from(c) * 100 + u16::from(yy)
            }
            None if yy >= 70 => 1900 + u16::from(yy),
            None => 2000 + u16::from(yy),
        };
        let dt = DateTime { year, month, day, hour, minute, second };
        dt.validate()?;
        Ok(dt)
    }

    /// The registers that hold `dt` in the data mode and hour format `status_b` says (the
    /// century register's value too, for a machine that has one).
    pub fn encode(dt: &DateTime, status_b: u8) -> RtcRaw {
        let binary = status_b & STATUS_B_BINARY != 0;
        let hour = if status_b & STATUS_B_24H != 0 {
            to_register(dt.hour, binary)
        } else {
            let h12 = if dt.hour % 12 == 0 { 12 } else { dt.hour % 12 };
            to_register(h12, binary) | if dt.hour >= 12 { HOUR_PM } else { 0 }
        };
        RtcRaw {
            second: to_register(dt.second, binary),
            minute: to_register(dt.minute, binary),
            hour,
            day: to_register(dt.day, binary),
            month: to_register(dt.month, binary),
            year: to_register((dt.year % 100) as u8, binary),
            century: Some(to_register((dt.year / 100) as u8, binary)),
            status_b,
        }
    }
}

/// Days from 1970-01-01 to `year`-`month`-`day` (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date `days` after 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Whether `year` is a leap year.
pub fn is_leap(year: u16) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

/// The days in `month` of `year`.
pub fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The largest Unix time a [`DateTime`] holds: 9999-12-31T23:59:59Z.
pub const MAX_UNIX_SECONDS: u64 = 253_402_300_799;

impl DateTime {
    /// Checks every field's range (the day against its month and year).
    pub fn validate(&self) -> Result<(), RtcError> {
        check("year", self.year, 1970..=9999)?;
        check("month", self.month.into(), 1..=12)?;
        check("day of month", self.day.into(), 1..=u16::from(days_in_month(self.year, self.month)))?;
        check("hour", self.hour.into(), 0..=23)?;
        check("minute", self.minute.into(), 0..=59)?;
        check("second", self.second.into(), 0..=59)
    }

    /// Seconds since 1970-01-01T00:00:00Z (a valid date: see [`validate`](Self::validate)).
    pub fn to_unix_seconds(&self) -> u64 {
        let days = days_from_civil(self.year.into(), self.month, self.day);
        let secs = u64::from(self.hour) * 3600 + u64::from(self.minute) * 60 + u64::from(self.second);
        days.max(0) as u64 * 86_400 + secs
    }

    /// The date `seconds` after the epoch; `None` past 9999-12-31T23:59:59Z.
    pub fn from_unix_seconds(seconds: u64) -> Option<DateTime> {
        if seconds > MAX_UNIX_SECONDS {
            return None;
        }
        let (days, rem) = ((seconds / 86_400) as i64, seconds % 86_400);
        let (year, month, day) = civil_from_days(days);
        Some(DateTime {
            year: year as u16,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        })
    }
}

/// ISO 8601, `YYYY-MM-DDTHH:MM:SS` (the caller adds `Z` for UTC).
impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BCD_24H: u8 = STATUS_B_24H;
    const BINARY_24H: u8 = STATUS_B_24H | STATUS_B_BINARY;

    fn dt(year: u16, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> DateTime {
        DateTime { year, month, day, hour, minute, second }
    }

    #[test]
    fn known_dates_match_their_unix_times() {
        // Oracles: `date -u -d ... +%s` on the host, written down.
        assert_eq!(dt(1970, 1, 1, 0, 0, 0).to_unix_seconds(), 0);
        assert_eq!(dt(2000, 2, 29, 12, 0, 0).to_unix_seconds(), 951_825_600);
        assert_eq!(dt(2031, 5, 17, 10, 0, 0).to_unix_seconds(), 1_936_778_400);
        assert_eq!(dt(2038, 1, 19, 3, 14, 8).to_unix_seconds(), 2_147_483_648);
        assert_eq!(dt(2100, 3, 1, 0, 0, 0).to_unix_seconds(), 4_107_542_400);
        assert_eq!(dt(9999, 12, 31, 23, 59, 59).to_unix_seconds(), MAX_UNIX_SECONDS);
    }

    #[test]
    fn unix_seconds_round_trip_over_leap_days_and_centuries() {
        // About 100,000 dates; Miri, which interprets each one, checks every 50th of them (the
        // whole walk took it over four minutes, a quarter of its run).
        let stride = (86_399 * 37 + 17) * if cfg!(miri) { 50 } else { 1 };
        let mut s = 0u64;
        while s < MAX_UNIX_SECONDS {
            let d = DateTime::from_unix_seconds(s).unwrap();
            assert_eq!(d.validate(), Ok(()), "{s}: {d}");
            assert_eq!(d.to_unix_seconds(), s, "{d}");
            s += stride; // a stride that visits every hour, day and month over the range
        }
        assert_eq!(DateTime::from_unix_seconds(MAX_UNIX_SECONDS + 1), None);
    }

    #[test]
    fn bcd_24_hour_registers_decode_with_the_century_register() {
        let raw = RtcRaw {
            second: 0x59,
            minute: 0x07,
            hour: 0x23,
            day: 0x17,
            month: 0x05,
            year: 0x31,
            century: Some(0x20),
            status_b: BCD_24H,
        };
        assert_eq!(raw.decode(), Ok(dt(2031, 5, 17, 23, 7, 59)));
    }

    #[test]
    fn without_a_century_register_two_digit_years_fall_in_1970_2069() {
        let mut raw = RtcRaw::encode(&dt(2069, 1, 1, 0, 0, 0), BCD_24H);
        raw.century = None;
        assert_eq!(raw.decode().map(|d| d.year), Ok(2069));
        let mut raw = RtcRaw::encode(&dt(1970, 1, 1, 0, 0, 0), BCD_24H);
        raw.century = None;
        assert_eq!(raw.decode().map(|d| d.year), Ok(1970));
    }

    #[test]
    fn twelve_hour_mode_maps_midnight_and_noon() {
        let h =
            |hour: u8, b: u8| RtcRaw { hour, day: 1, month: 1, status_b: b, ..Default::default() }.decode();
        assert_eq!(h(0x12, 0).map(|d| d.hour), Ok(0), "12 AM is midnight");
        assert_eq!(h(0x80 | 0x12, 0).map(|d| d.hour), Ok(12), "12 PM is noon");
        assert_eq!(h(0x80 | 0x11, 0).map(|d| d.hour), Ok(23));
        assert_eq!(h(0x80 | 11, STATUS_B_BINARY).map(|d| d.hour), Ok(23), "binary 12-hour");
        assert!(h(0x00, 0).is_err(), "there is no hour 0 in 12-hour mode");
    }

    #[test]
    fn every_mode_round_trips_through_the_registers() {
        for status_b in [0, BCD_24H, STATUS_B_BINARY, BINARY_24H] {
            for hour in 0..24 {
                let d = dt(2026, 12, 6, hour, 45, 30);
                assert_eq!(RtcRaw::encode(&d, status_b).decode(), Ok(d), "mode {status_b:#x} hour {hour}");
            }
        }
    }

    #[test]
    fn garbage_is_refused_with_what_is_wrong() {
        let good = RtcRaw::encode(&dt(2026, 2, 28, 1, 2, 3), BCD_24H);
        let bad = |f: fn(&mut RtcRaw)| {
            let mut r = good;
            f(&mut r);
            r.decode()
        };
        assert_eq!(bad(|r| r.second = 0x5a), Err(RtcError::NotBcd { field: "seconds", value: 0x5a }));
        assert_eq!(bad(|r| r.month = 0x13), Err(RtcError::OutOfRange { field: "month", value: 13 }));
        assert_eq!(bad(|r| r.day = 0x29), Err(RtcError::OutOfRange { field: "day of month", value: 29 }));
        assert_eq!(bad(|r| r.hour = 0x24), Err(RtcError::OutOfRange { field: "hour", value: 24 }));
        assert_eq!(bad(|r| r.century = Some(0x05)), Err(RtcError::OutOfRange { field: "century", value: 5 }));
        assert_eq!(bad(|r| r.year = 0xff), Err(RtcError::NotBcd { field: "year", value: 0xff }));
    }

    #[test]
    fn iso_8601() {
        assert_eq!(alloc::format!("{}Z", dt(2031, 5, 17, 10, 0, 0)), "2031-05-17T10:00:00Z");
    }
}
