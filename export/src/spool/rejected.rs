//! Dead letters: records a sink refused for good, written to
//! `<spool>/rejected/<YYYY-MM-DD>.jsonl` (UTC day of the rejection), one
//! JSON document per record:
//!
//! ```json
//! {"rejected_at":"2026-12-04T15:03:05.123Z","time_ns":1796396585000000000,
//!  "error_code":"InvalidStream","reason":"…","payload":{…}}
//! ```
//!
//! The payload is embedded as JSON when it is a JSON document
//! (`payload`), as a string when it is other UTF-8 text (`payload_text`),
//! and in base64 otherwise (`payload_base64`, e.g. protobuf).
//!
//! This module only writes; nothing reads these files back, and they are
//! not part of the spool's size bound (an operator inspects and removes
//! them).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Map, Value};

use super::{SpoolError, SpooledRecord};

/// Appends `records` to the dead-letter file of the day `now` falls on, in
/// one write. Returns the file written.
pub(crate) fn write(
    dir: &Path,
    records: &[SpooledRecord],
    error_code: &str,
    reason: &str,
    now: SystemTime,
) -> Result<PathBuf, SpoolError> {
    let stamp = prost_types::Timestamp::from(now);
    let rejected_at = rfc3339_millis(&stamp);
    // "YYYY-MM-DD" is the first ten characters of the RFC 3339 form.
    let day = rejected_at.get(..10).unwrap_or("unknown-day");
    let path = dir.join(format!("{day}.jsonl"));
    let mut buf = Vec::new();
    for record in records {
        let mut line = Map::new();
        line.insert("rejected_at".into(), Value::String(rejected_at.clone()));
        line.insert("time_ns".into(), Value::from(record.time_ns));
        line.insert("error_code".into(), Value::String(error_code.to_owned()));
        line.insert("reason".into(), Value::String(reason.to_owned()));
        let (key, payload) = payload_value(&record.payload);
        line.insert(key.into(), payload);
        // Serialising a Value into a Vec cannot fail.
        if serde_json::to_writer(&mut buf, &Value::Object(line)).is_ok() {
            buf.push(b'\n');
        }
    }
    fs::create_dir_all(dir)
        .and_then(|()| OpenOptions::new().create(true).append(true).open(&path))
        .and_then(|mut file| file.write_all(&buf))
        .map_err(|source| SpoolError::WriteRejected { path: path.clone(), source })?;
    Ok(path)
}

/// `2026-12-04T15:03:05.123Z`: RFC 3339, UTC, milliseconds.
fn rfc3339_millis(stamp: &prost_types::Timestamp) -> String {
    let seconds = prost_types::Timestamp { seconds: stamp.seconds, nanos: 0 }.to_string();
    let millis = stamp.nanos.clamp(0, 999_999_999) / 1_000_000;
    match seconds.strip_suffix('Z') {
        Some(base) => format!("{base}.{millis:03}Z"),
        None => seconds,
    }
}

fn payload_value(payload: &[u8]) -> (&'static str, Value) {
    if let Ok(value) = serde_json::from_slice::<Value>(payload) {
        return ("payload", value);
    }
    match std::str::from_utf8(payload) {
        Ok(text) => ("payload_text", Value::String(text.to_owned())),
        Err(_) => ("payload_base64", Value::String(base64(payload))),
    }
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sextet = |v: u32, shift: u32| char::from(ALPHABET[((v >> shift) & 0x3f) as usize]);
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let v = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(sextet(v, 18));
        out.push(sextet(v, 12));
        out.push(if chunk.len() > 1 { sextet(v, 6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(v, 0) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), output);
        }
    }

    #[test]
    fn timestamps_and_payload_kinds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_396_585_123);
        assert_eq!(rfc3339_millis(&prost_types::Timestamp::from(t)), "2026-12-04T15:03:05.123Z");
        let t0 = UNIX_EPOCH + Duration::from_secs(1_796_396_585);
        assert_eq!(rfc3339_millis(&prost_types::Timestamp::from(t0)), "2026-12-04T15:03:05.000Z");
        assert_eq!(payload_value(br#"{"a":1}"#), ("payload", serde_json::json!({"a": 1})));
        assert_eq!(payload_value(b"plain"), ("payload_text", Value::String("plain".into())));
        assert_eq!(payload_value(&[0xff, 0x00]), ("payload_base64", Value::String("/wA=".into())));
    }
}
