//! Durations as Go (and so Hubble's and Kubernetes' tools) spell them:
//! `500ms`, `30s`, `5m`, `2h30m`, `1.5h`, `10us`, `7ns`, and a bare `0`.
//!
//! One grammar for every duration Sightline reads (command-line flags,
//! configuration files): parsed with checked arithmetic, so that no input,
//! however long, panics or wraps.

use std::time::Duration;

/// The longest duration a flag takes (100 years, `876000h`): anything
/// longer is refused as too long, so that no clock arithmetic on it can
/// overflow.
pub const MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Why a duration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bad {
    /// Not a duration at all.
    Syntax,
    /// A duration, too long to be represented.
    Overflow,
}

/// Parses a Go-style duration: one or more `<number><unit>` parts, units
/// `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`; the number may have a fraction.
/// A bare `0` is zero. Signs are refused (a negative `--since` makes no sense).
pub fn parse(input: &str) -> Option<Duration> {
    parse_detailed(input).ok()
}

fn parse_detailed(input: &str) -> Result<Duration, Bad> {
    let s = input.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(Bad::Syntax);
    }
    let mut rest = s;
    let mut total: u128 = 0; // nanoseconds
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(Bad::Syntax);
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
            _ => return Err(Bad::Syntax),
        };
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(Bad::Syntax);
        }
        if frac_part.contains('.') {
            return Err(Bad::Syntax);
        }
        let int: u128 = if int_part.is_empty() {
            0
        } else if int_part.bytes().all(|b| b.is_ascii_digit()) {
            int_part.parse().map_err(|_| Bad::Overflow)?
        } else {
            return Err(Bad::Syntax);
        };
        let mut part = int.checked_mul(unit_ns).ok_or(Bad::Overflow)?;
        // Fraction: exact to the nanosecond (digits past the 9th are dropped).
        let mut scale = unit_ns;
        for d in frac_part.chars() {
            let d = u128::from(d.to_digit(10).ok_or(Bad::Syntax)?);
            scale /= 10;
            part = part.checked_add(d * scale).ok_or(Bad::Overflow)?;
        }
        total = total.checked_add(part).ok_or(Bad::Overflow)?;
        rest = tail;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| Bad::Overflow)?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}


/// [`parse`] with an error that names the input and says what is wanted;
/// a bare number (no unit) is taken as seconds, as the collector's flags
/// always took it.
pub fn parse_or_seconds(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    let too_long = || format!("{s:?} is too long a duration (at most {}h)", MAX.as_secs() / 3600);
    let d = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u64>().map(Duration::from_secs).map_err(|_| too_long())?
    } else {
        parse_detailed(s).map_err(|bad| match bad {
            Bad::Overflow => too_long(),
            Bad::Syntax => format!("{s:?} is not a duration (such as 500ms, 30s, 5m, 2h30m)"),
        })?
    };
    if d > MAX {
        return Err(too_long());
    }
    Ok(d)
}

/// [`parse_or_seconds`] within `min..=max`, with an error that says so.
///
/// # Errors
///
/// Not a duration, or outside the bounds.
pub fn parse_within(input: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = parse_or_seconds(input)?;
    if d < min || d > max {
        return Err(format!("{:?} must be between {} and {}", input.trim(), show(min), show(max)));
    }
    Ok(d)
}

/// A duration the way Go prints a round one: `1h`, `30s`, `100ms`, `24h0m0s` is `24h`.
fn show(d: Duration) -> String {
    let ns = d.as_nanos();
    let units: [(u128, &str); 6] =
        [(3_600_000_000_000, "h"), (60_000_000_000, "m"), (1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "us"), (1, "ns")];
    if ns == 0 {
        return "0s".to_owned();
    }
    for (size, unit) in units {
        if ns.is_multiple_of(size) {
            return format!("{}{unit}", ns / size);
        }
    }
    format!("{ns}ns")
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
        // Too long is said so, whatever the spelling.
        for long in ["99999999999999999999h", "99999999999999999999", "876001h", "9999999999999h", "18446744073709551615s"] {
            let err = parse_or_seconds(long).expect_err(long);
            assert!(err.contains("too long") && err.contains("876000h"), "{long}: {err}");
        }
        assert_eq!(parse_or_seconds("876000h"), Ok(MAX));
        assert!(parse_or_seconds("5q").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn bounded_durations_name_their_bounds() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(24 * 3600));
        assert_eq!(parse_within("5s", min, max), Ok(Duration::from_secs(5)));
        assert_eq!(parse_within("24h", min, max), Ok(max));
        for bad in ["0", "0s", "99ms", "24h1s", "99999h"] {
            let err = parse_within(bad, min, max).expect_err(bad);
            assert!(err.contains("must be between 100ms and 24h"), "{bad}: {err}");
        }
        assert!(parse_within("9999999999999999999999h", min, max).unwrap_err().contains("too long"));
        assert_eq!(show(Duration::from_secs(90)), "90s");
        assert_eq!(show(Duration::from_micros(1500)), "1500us");
    }
}
