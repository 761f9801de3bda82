//! Durations as Go (and so Hubble's and Kubernetes' tools) spell them:
//! `500ms`, `30s`, `5m`, `2h30m`, `1.5h`, `10us`, `7ns`, and a bare `0`.
//!
//! One grammar for every duration Sightline reads (command-line flags,
//! configuration files): parsed with checked arithmetic, so that no input,
//! however long, panics or wraps.

use std::time::Duration;

/// Parses a Go-style duration: one or more `<number><unit>` parts, units
/// `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`; the number may have a fraction.
/// A bare `0` is zero. Signs are refused (a negative `--since` makes no sense).
pub fn parse(input: &str) -> Option<Duration> {
    let s = input.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total: u128 = 0; // nanoseconds
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        if frac_part.contains('.') {
            return None;
        }
        let int: u128 = if int_part.is_empty() { 0 } else { int_part.parse().ok()? };
        let mut part = int.checked_mul(unit_ns)?;
        // Fraction: exact to the nanosecond (digits past the 9th are dropped).
        let mut scale = unit_ns;
        for d in frac_part.chars() {
            let d = u128::from(d.to_digit(10)?);
            scale /= 10;
            part = part.checked_add(d * scale)?;
        }
        total = total.checked_add(part)?;
        rest = tail;
    }
    let secs = u64::try_from(total / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (total % 1_000_000_000) as u32))
}


/// [`parse`] with an error that names the input and says what is wanted;
/// a bare number (no unit) is taken as seconds, as the collector's flags
/// always took it.
pub fn parse_or_seconds(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("{s:?} is too long a duration"));
    }
    parse(s).ok_or_else(|| format!("{s:?} is not a duration (such as 500ms, 30s, 5m, 2h30m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse("3s"), Some(Duration::from_secs(3)));
        assert_eq!(parse("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("2h30m"), Some(Duration::from_secs(9000)));
        assert_eq!(parse("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(parse("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("10us"), Some(Duration::from_micros(10)));
        assert_eq!(parse("10µs"), Some(Duration::from_micros(10)));
        assert_eq!(parse("7ns"), Some(Duration::from_nanos(7)));
        assert_eq!(parse(".5s"), Some(Duration::from_millis(500)));
        assert_eq!(parse("0"), Some(Duration::ZERO));
        for bad in ["", "5", "s", "5x", "-5m", "+5m", "1..5s", "5m3", "1e3s", "abc", "1h 2m", "."] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        // Overflow is refused, not wrapped.
        assert_eq!(parse("99999999999999999999999999999h"), None);
    }

    #[test]
    fn bare_numbers_are_seconds_and_nothing_panics() {
        assert_eq!(parse_or_seconds("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_or_seconds("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_or_seconds("99999999999999999999h").is_err());
        assert!(parse_or_seconds("99999999999999999999").is_err());
        assert!(parse_or_seconds("-5s").is_err());
        assert!(parse_or_seconds("").is_err());
        assert!(parse_or_seconds("5x").unwrap_err().contains("5x"));
    }
}
