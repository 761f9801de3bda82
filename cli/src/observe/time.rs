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
//! The calendar is jiff's (UTC and fixed offsets only, so no time-zone
//! database is needed).

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

/// `YYYY-MM-DD[(T|t| )HH[:MM[:SS[.frac]]]][Z|z|±HH:MM|±HHMM]`, read by
/// jiff: an instant when it has an offset, else a civil time in UTC.
fn parse_absolute(s: &str) -> Option<Timestamp> {
    // Only the forms above: no bracketed time zone annotations, no weeks.
    if !s.starts_with(|c: char| c.is_ascii_digit()) || s.contains('[') || s.len() < 10 || s.as_bytes()[4] != b'-' {
        return None;
    }
    // As Go reads them: offsets up to ±23:59, and fractions past the
    // nanosecond cut rather than refused.
    if let Some(pos) = s.rfind(['+', '-']).filter(|p| *p > 10) {
        let hours: u32 = s.get(pos + 1..pos + 3)?.parse().ok()?;
        if hours > 23 {
            return None;
        }
    }
    let s = cut_fraction(s);
    let instant = match s.parse::<jiff::Timestamp>() {
        Ok(t) => t,
        Err(_) => s.parse::<jiff::civil::DateTime>().ok()?.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp(),
    };
    Some(Timestamp { seconds: instant.as_second(), nanos: instant.subsec_nanosecond() })
}

/// `s` with a fraction of a second cut to nine digits.
fn cut_fraction(s: &str) -> std::borrow::Cow<'_, str> {
    let Some(dot) = s.get(11..).and_then(|t| t.find(['.', ','])).map(|i| i + 11) else { return s.into() };
    let digits = s[dot + 1..].bytes().take_while(u8::is_ascii_digit).count();
    if digits <= 9 {
        return s.into();
    }
    format!("{}{}", &s[..dot + 10], &s[dot + 1 + digits..]).into()
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
    let Ok(instant) = jiff::Timestamp::new(ts.seconds, ts.nanos) else { return "N/A".to_owned() };
    let dt = jiff::tz::Offset::UTC.to_datetime(instant);
    let (y, mo, d) = (dt.year(), i64::from(dt.month()), dt.day());
    let (h, mi, s) = (dt.hour(), dt.minute(), dt.second());
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
