//! Times and durations for `sightline observe`: parsing `--since`/`--until`,
//! `--timeout`-style durations, and printing flow timestamps.
//!
//! Accepted `--since`/`--until` forms (the same set as `hubble observe`, plus
//! a space or `t` separator):
//!
//! | form | example | meaning |
//! |---|---|---|
//! | duration (Go syntax) | `3s`, `5m`, `1h`, `2h30m`, `1.5h`, `250ms` | that long before now |
//! | RFC 3339 | `2024-11-26T10:39:56Z`, `2024-11-26T10:39:56.395+01:00` | that instant |
//! | date and time without offset | `2024-11-26T10:39:56`, `2024-11-26 10:39` | that time in **UTC** |
//! | date and hour with offset | `2024-11-26T10Z`, `2024-11-26T10+01:00` | that hour |
//! | date | `2024-11-26` | midnight UTC |
//!
//! Forms without an offset are UTC, as Go's `time.Parse` (and so `hubble`)
//! reads them; the compact, dict and table printers also print UTC.
//!
//! Everything here is plain arithmetic on Unix seconds (proleptic Gregorian
//! calendar), so no time-zone database is needed.

use std::time::{SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;

/// Why a `--since`/`--until` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is neither a duration (3s, 5m, 2h30m) nor a time (2024-11-26T10:39:56Z, 2024-11-26T10:39:56 in UTC, 2024-11-26)")]
pub struct TimeError {
    input: String,
}

pub use sightline_flow::duration::parse as parse_duration;

/// Parses a `--since`/`--until` value against `now` (see the module docs).
pub fn parse_time(input: &str, now: SystemTime) -> Result<Timestamp, TimeError> {
    let err = || TimeError { input: input.to_owned() };
    let s = input.trim();
    if let Some(d) = parse_duration(s) {
        let t = now.checked_sub(d).filter(|t| *t >= UNIX_EPOCH).ok_or_else(err)?;
        return Ok(system_time_to_timestamp(t));
    }
    parse_absolute(s).ok_or_else(err)
}

/// Converts a `SystemTime` (clamped to the epoch) into a protobuf timestamp.
pub fn system_time_to_timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() as i32 }
}

/// `YYYY-MM-DD[(T|t| )HH[:MM[:SS[.frac]]]][Z|z|±HH:MM|±HHMM]`.
fn parse_absolute(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    let mut p = Cursor { b, i: 0 };
    let year = p.digits(4)?;
    p.expect(b'-')?;
    let month = p.digits(2)?;
    p.expect(b'-')?;
    let day = p.digits(2)?;
    let (mut hour, mut minute, mut second, mut nanos) = (0, 0, 0, 0u32);
    if p.i < b.len() && matches!(b[p.i], b'T' | b't' | b' ') {
        p.i += 1;
        hour = p.digits(2)?;
        if p.peek() == Some(b':') {
            p.i += 1;
            minute = p.digits(2)?;
            if p.peek() == Some(b':') {
                p.i += 1;
                second = p.digits(2)?;
                if p.peek() == Some(b'.') || p.peek() == Some(b',') {
                    p.i += 1;
                    let start = p.i;
                    while p.peek().is_some_and(|c| c.is_ascii_digit()) {
                        p.i += 1;
                    }
                    let frac = &s[start..p.i];
                    if frac.is_empty() {
                        return None;
                    }
                    let mut n: u32 = 0;
                    for (k, c) in frac.bytes().enumerate() {
                        if k < 9 {
                            n = n * 10 + u32::from(c - b'0');
                        }
                    }
                    for _ in frac.len()..9 {
                        n *= 10;
                    }
                    nanos = n;
                }
            }
        }
    }
    let mut offset_secs: i64 = 0;
    match p.peek() {
        None => {}
        Some(b'Z' | b'z') => p.i += 1,
        Some(sign @ (b'+' | b'-')) => {
            p.i += 1;
            let oh = p.digits(2)?;
            if p.peek() == Some(b':') {
                p.i += 1;
            }
            let om = p.digits(2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            offset_secs = oh * 3600 + om * 60;
            if sign == b'-' {
                offset_secs = -offset_secs;
            }
        }
        Some(_) => return None,
    }
    if p.i != b.len() {
        return None;
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    // A leap second (:60) is accepted as the last second of the minute, as
    // RFC 3339 allows; Unix time has no room for it.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let second = second.min(59);
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(Timestamp { seconds, nanos: nanos as i32 })
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn expect(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }
    fn digits(&mut self, n: usize) -> Option<i64> {
        let s = self.b.get(self.i..self.i + n)?;
        if !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.i += n;
        Some(s.iter().fold(0i64, |acc, &c| acc * 10 + i64::from(c - b'0')))
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01: (year, month 1–12, day 1–31).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// How timestamps are printed by the compact, dict and table printers
/// (`--time-format`; the names are hubble's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TimeFormat {
    /// `Nov 26 10:39:56.395` (UTC).
    #[default]
    #[value(name = "StampMilli", alias = "stampmilli")]
    StampMilli,
    /// `2024-11-26T10:39:56Z`.
    #[value(name = "RFC3339", alias = "rfc3339")]
    Rfc3339,
    /// `2024-11-26T10:39:56.395Z` (trailing zeros trimmed).
    #[value(name = "RFC3339Milli", alias = "rfc3339milli")]
    Rfc3339Milli,
    /// `2024-11-26T10:39:56.395123Z` (trailing zeros trimmed).
    #[value(name = "RFC3339Micro", alias = "rfc3339micro")]
    Rfc3339Micro,
    /// `2024-11-26T10:39:56.395123456Z` (trailing zeros trimmed).
    #[value(name = "RFC3339Nano", alias = "rfc3339nano")]
    Rfc3339Nano,
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// Formats a flow timestamp; `N/A` when it is missing or out of range, as
/// hubble prints it.
pub fn format_timestamp(ts: Option<&Timestamp>, format: TimeFormat) -> String {
    let Some(ts) = ts else { return "N/A".to_owned() };
    // protobuf's valid range: 0001-01-01 to 9999-12-31, nanos 0..1e9.
    if !(-62_135_596_800..=253_402_300_799).contains(&ts.seconds) || !(0..1_000_000_000).contains(&ts.nanos) {
        return "N/A".to_owned();
    }
    let days = ts.seconds.div_euclid(86_400);
    let secs = ts.seconds.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let nanos = ts.nanos as u32;
    let frac = |digits: usize| -> String {
        let full = format!("{nanos:09}");
        let cut = full[..digits].trim_end_matches('0');
        if cut.is_empty() { String::new() } else { format!(".{cut}") }
    };
    match format {
        TimeFormat::StampMilli => {
            let month = MONTHS[(mo - 1) as usize];
            format!("{month} {d:>2} {h:02}:{mi:02}:{s:02}.{:03}", nanos / 1_000_000)
        }
        TimeFormat::Rfc3339 => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
        TimeFormat::Rfc3339Milli => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}Z", frac(3)),
        TimeFormat::Rfc3339Micro => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}Z", frac(6)),
        TimeFormat::Rfc3339Nano => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}Z", frac(9)),
    }
}

/// Formats a duration the way Go prints a `time.Duration` rounded to the
/// second: `1h2m3s`, `2m5s`, `45s`, `0s`.
pub fn format_duration_secs(total: u64) -> String {
    let (h, m, s) = (total / 3600, total % 3600 / 60, total % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Compares two timestamps.
pub fn timestamp_cmp(a: &Timestamp, b: &Timestamp) -> std::cmp::Ordering {
    (a.seconds, a.nanos).cmp(&(b.seconds, b.nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn ts(seconds: i64, nanos: i32) -> Timestamp {
        Timestamp { seconds, nanos }
    }


    #[test]
    fn relative_times_count_back_from_now() {
        let now = at(1_700_000_000);
        assert_eq!(parse_time("3s", now), Ok(ts(1_699_999_997, 0)));
        assert_eq!(parse_time("2h30m", now), Ok(ts(1_700_000_000 - 9000, 0)));
        assert_eq!(parse_time("1.5s", now), Ok(ts(1_699_999_998, 500_000_000)));
        // Before the epoch: refused rather than clamped.
        assert!(parse_time("100000000h", now).is_err());
    }

    #[test]
    fn rfc3339_and_friends() {
        let now = at(0);
        // 2024-11-26T10:39:56Z
        let base = 1_732_617_596;
        assert_eq!(parse_time("2024-11-26T10:39:56Z", now), Ok(ts(base, 0)));
        assert_eq!(parse_time("2024-11-26t10:39:56z", now), Ok(ts(base, 0)));
        assert_eq!(parse_time("2024-11-26T10:39:56.395Z", now), Ok(ts(base, 395_000_000)));
        assert_eq!(parse_time("2024-11-26T10:39:56.123456789123Z", now), Ok(ts(base, 123_456_789)));
        assert_eq!(parse_time("2024-11-26T11:39:56+01:00", now), Ok(ts(base, 0)));
        assert_eq!(parse_time("2024-11-26T05:09:56-05:30", now), Ok(ts(base, 0)));
        assert_eq!(parse_time("2024-11-26T11:39:56+0100", now), Ok(ts(base, 0)));
        // Without an offset: UTC.
        assert_eq!(parse_time("2024-11-26T10:39:56", now), Ok(ts(base, 0)));
        assert_eq!(parse_time("2024-11-26 10:39:56", now), Ok(ts(base, 0)));
        assert_eq!(parse_time("2024-11-26T10:39", now), Ok(ts(base - 56, 0)));
        assert_eq!(parse_time("2024-11-26T10:39Z", now), Ok(ts(base - 56, 0)));
        assert_eq!(parse_time("2024-11-26T10Z", now), Ok(ts(base - 39 * 60 - 56, 0)));
        assert_eq!(parse_time("2024-11-26", now), Ok(ts(base - 10 * 3600 - 39 * 60 - 56, 0)));
        assert_eq!(parse_time("1970-01-01T00:00:00Z", now), Ok(ts(0, 0)));
        assert_eq!(parse_time("2000-02-29", now), Ok(ts(951_782_400, 0)));
        assert_eq!(parse_time("1969-12-31T23:59:59Z", now), Ok(ts(-1, 0)));
    }

    #[test]
    fn bad_times_are_refused_with_the_input_in_the_message() {
        let now = at(1_700_000_000);
        for bad in [
            "yesterday",
            "2024-13-01",
            "2024-02-30",
            "2023-02-29",
            "2024-11-26T24:00:00Z",
            "2024-11-26T10:60:00Z",
            "2024-11-26T10:39:56+25:00",
            "2024-11-26T10:39:56.Z",
            "2024-11-26T10:39:56Zjunk",
            "24-11-26",
            "",
        ] {
            let err = parse_time(bad, now).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn civil_round_trip() {
        for days in [-800_000, -1, 0, 1, 365, 10_957, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn timestamp_formats() {
        let t = ts(1_732_617_596, 395_123_000);
        assert_eq!(format_timestamp(Some(&t), TimeFormat::StampMilli), "Nov 26 10:39:56.395");
        assert_eq!(format_timestamp(Some(&t), TimeFormat::Rfc3339), "2024-11-26T10:39:56Z");
        assert_eq!(format_timestamp(Some(&t), TimeFormat::Rfc3339Milli), "2024-11-26T10:39:56.395Z");
        assert_eq!(format_timestamp(Some(&t), TimeFormat::Rfc3339Micro), "2024-11-26T10:39:56.395123Z");
        assert_eq!(format_timestamp(Some(&t), TimeFormat::Rfc3339Nano), "2024-11-26T10:39:56.395123Z");
        // StampMilli pads the day with a space, like Go's `_2`.
        let early = ts(1_730_889_596, 5_000_000); // 2024-11-06T10:39:56.005Z
        assert_eq!(format_timestamp(Some(&early), TimeFormat::StampMilli), "Nov  6 10:39:56.005");
        assert_eq!(format_timestamp(Some(&ts(0, 0)), TimeFormat::Rfc3339Milli), "1970-01-01T00:00:00Z");
        assert_eq!(format_timestamp(None, TimeFormat::StampMilli), "N/A");
        assert_eq!(format_timestamp(Some(&ts(0, -1)), TimeFormat::StampMilli), "N/A");
        assert_eq!(format_timestamp(Some(&ts(i64::MAX, 0)), TimeFormat::Rfc3339), "N/A");
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(format_duration_secs(0), "0s");
        assert_eq!(format_duration_secs(45), "45s");
        assert_eq!(format_duration_secs(125), "2m5s");
        assert_eq!(format_duration_secs(3723), "1h2m3s");
        assert_eq!(format_duration_secs(3600), "1h0m0s");
    }
}
