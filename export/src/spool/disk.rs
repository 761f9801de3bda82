//! The spool's files: segment names, the acknowledged-position file, and
//! the recovery scan that rebuilds the index of a folder a previous
//! process left behind (cleanly or killed mid-write).
//!
//! Recovery must never panic or refuse a folder because of what is in it:
//! garbage segment content is cut or skipped (and logged), unrelated files
//! are ignored. Only I/O failures (a folder it cannot list, a segment it
//! cannot open) are errors.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use super::frame::{FrameError, FrameReader};
use super::{Cursor, Segment, SpoolError};

/// The folder of segment files inside the spool folder.
pub(crate) const SEGMENTS: &str = "segments";
/// The acknowledged position file inside the spool folder.
const ACK: &str = "ack";
/// Where the acknowledged position is written before it replaces `ack`.
const ACK_TMP: &str = "ack.tmp";
/// Digits of a segment's number in its file name.
const NUMBER_DIGITS: usize = 20;
/// A segment file's extension.
const SEGMENT_EXT: &str = ".seg";
/// Read buffer size for scanning and reading segments.
pub(crate) const READ_BUFFER: usize = 64 * 1024;

/// The paths of one on-disk spool.
#[derive(Debug)]
pub(crate) struct Paths {
    pub(crate) dir: PathBuf,
    pub(crate) segments: PathBuf,
}

impl Paths {
    pub(crate) fn new(dir: PathBuf) -> Paths {
        let segments = dir.join(SEGMENTS);
        Paths { dir, segments }
    }

    /// The file of segment `number`.
    pub(crate) fn segment(&self, number: u64) -> PathBuf {
        self.segments.join(format!("{number:0width$}{SEGMENT_EXT}", width = NUMBER_DIGITS))
    }

    /// The folder for rejected records.
    pub(crate) fn rejected(&self) -> PathBuf {
        self.dir.join("rejected")
    }

    /// Replaces the acknowledged position file atomically (write a
    /// temporary file, rename it over the old one).
    pub(crate) fn write_ack(&self, segment: u64, offset: u64) -> Result<(), SpoolError> {
        let tmp = self.dir.join(ACK_TMP);
        let path = self.dir.join(ACK);
        fs::write(&tmp, format!("{segment} {offset}\n"))
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|source| SpoolError::WriteAck { path, source })
    }

    /// Reads the acknowledged position: `None` when there is none (a new
    /// spool) or it cannot be understood (then everything is sent again:
    /// duplicates, never losses).
    fn read_ack(&self) -> Result<Option<(u64, u64)>, SpoolError> {
        let path = self.dir.join(ACK);
        let text = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(SpoolError::ReadAck { path, source }),
        };
        let parsed = std::str::from_utf8(&text).ok().and_then(|text| {
            let mut fields = text.split_whitespace();
            let segment = fields.next()?.parse().ok()?;
            let offset = fields.next()?.parse().ok()?;
            fields.next().is_none().then_some((segment, offset))
        });
        if parsed.is_none() {
            log::warn!(
                "spool {}: the acknowledged position file {} is unreadable; records still in the spool will be sent again",
                self.dir.display(),
                path.display()
            );
        }
        Ok(parsed)
    }
}

/// The number of a segment file name, `None` for any other name.
fn segment_number(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_EXT)?;
    if digits.len() != NUMBER_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Deletes a segment file; a failure is logged (the file may be found again
/// after a restart and its records sent again, never lost).
pub(crate) fn remove_segment(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::error!("spool: deleting segment {}: {e}", path.display()),
    }
}

/// What recovery found.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) segments: VecDeque<Segment>,
    pub(crate) ack: Cursor,
    pub(crate) next_number: u64,
    pub(crate) next_seq: u64,
    /// Records after the acknowledged position.
    pub(crate) pending: u64,
}

/// Rebuilds the index of the spool folder: creates it if needed, reads the
/// acknowledged position, deletes segments before it, scans the others in
/// order (checking every record), truncates a torn tail of the last
/// segment and skips the unreadable rest of an earlier one.
pub(crate) fn recover(paths: &Paths) -> Result<Recovered, SpoolError> {
    fs::create_dir_all(&paths.segments)
        .map_err(|source| SpoolError::CreateDir { path: paths.segments.clone(), source })?;
    match fs::remove_file(paths.dir.join(ACK_TMP)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("spool {}: removing a stale {ACK_TMP}: {e}", paths.dir.display()),
    }
    let (ack_segment, ack_offset) = paths.read_ack()?.unwrap_or((0, 0));

    let mut numbers = Vec::new();
    let entries = fs::read_dir(&paths.segments)
        .map_err(|source| SpoolError::ListSegments { path: paths.segments.clone(), source })?;
    for entry in entries {
        let entry = entry.map_err(|source| SpoolError::ListSegments { path: paths.segments.clone(), source })?;
        let Some(number) = entry.file_name().to_str().and_then(segment_number) else {
            continue;
        };
        // Follows symlinks: a segment is whatever the name opens.
        match entry.path().metadata() {
            Ok(meta) if meta.is_file() => numbers.push(number),
            _ => log::warn!("spool: ignoring {} (not a regular file)", entry.path().display()),
        }
    }
    numbers.sort_unstable();

    let mut segments = VecDeque::new();
    let mut next_seq = 0u64;
    let mut pending = 0u64;
    let mut ack = None;
    let last = numbers.last().copied();
    for &number in &numbers {
        let path = paths.segment(number);
        if number < ack_segment {
            // Fully acknowledged; the process stopped before deleting it.
            remove_segment(&path);
            continue;
        }
        let is_last = Some(number) == last;
        let acked_until = (number == ack_segment).then_some(ack_offset);
        let scan = scan_segment(&path, is_last, acked_until)?;
        let segment = Segment {
            number,
            first_seq: next_seq,
            records: scan.records,
            end: scan.end,
            size: scan.size,
            sealed: scan.sealed,
            mem: Vec::new(),
        };
        if let Some(acked) = scan.acked {
            ack = Some(Cursor { segment: number, offset: acked.offset, seq: next_seq + acked.records });
            pending += scan.records - acked.records;
        } else {
            pending += scan.records;
        }
        next_seq += scan.records;
        segments.push_back(segment);
    }
    let next_number = last.unwrap_or(0).max(ack_segment).saturating_add(1);
    let ack = ack.unwrap_or_else(|| match segments.front() {
        Some(first) => Cursor { segment: first.number, offset: 0, seq: first.first_seq },
        None => Cursor { segment: next_number, offset: 0, seq: next_seq },
    });
    Ok(Recovered { segments, ack, next_number, next_seq, pending })
}

/// Where the acknowledged position fell inside the segment that holds it.
struct Acked {
    offset: u64,
    records: u64,
}

struct Scan {
    records: u64,
    end: u64,
    size: u64,
    sealed: bool,
    acked: Option<Acked>,
}

/// Checks every record of one segment.
fn scan_segment(path: &Path, is_last: bool, acked_until: Option<u64>) -> Result<Scan, SpoolError> {
    let file = File::open(path).map_err(|source| SpoolError::OpenSegment { path: path.to_owned(), source })?;
    let size = file.metadata().map_err(|source| SpoolError::ReadSegment { path: path.to_owned(), source })?.len();
    let mut reader = FrameReader::new(BufReader::with_capacity(READ_BUFFER, file), 0, size);
    let mut records = 0u64;
    let mut acked = acked_until.map(|_| Acked { offset: 0, records: 0 });
    let mut payload = Vec::new();
    let fault = loop {
        match reader.header() {
            Ok(None) => break None,
            Ok(Some(_)) => {}
            Err(e) => break Some(e),
        }
        if let Err(e) = reader.payload(&mut payload) {
            break Some(e);
        }
        records += 1;
        if let (Some(until), Some(acked)) = (acked_until, acked.as_mut())
            && reader.offset() <= until
        {
            acked.offset = reader.offset();
            acked.records = records;
        }
    };
    let end = reader.offset();
    if let (Some(until), Some(acked)) = (acked_until, acked.as_ref())
        && acked.offset != until
    {
        log::warn!(
            "spool: the acknowledged position {until} in {} is not a record boundary (or past the readable records); resuming at {}",
            path.display(),
            acked.offset
        );
    }
    let mut scan = Scan { records, end, size, sealed: false, acked };
    let Some(fault) = fault else {
        return Ok(scan);
    };
    let cut = size - end;
    match fault {
        FrameError::Io(e) => {
            // Not a torn write: leave the file alone, stop appending to it.
            log::error!(
                "spool: reading {} failed at byte {end} ({e}); skipping its remaining {cut} bytes",
                path.display()
            );
            scan.sealed = true;
        }
        FrameError::Truncated | FrameError::Checksum if is_last => {
            let truncated = OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(end));
            match truncated {
                Ok(()) => {
                    log::warn!(
                        "spool: {} ends with a torn or corrupt record ({fault}); truncated {cut} bytes after the last good record",
                        path.display()
                    );
                    scan.size = end;
                }
                Err(e) => {
                    log::error!(
                        "spool: {} ends with a torn or corrupt record ({fault}) and truncating it failed ({e}); skipping its last {cut} bytes",
                        path.display()
                    );
                    scan.sealed = true;
                }
            }
        }
        FrameError::Truncated | FrameError::Checksum => {
            log::error!(
                "spool: {} is corrupt at byte {end} ({fault}); skipping its remaining {cut} bytes (their records are lost, the count is unknown)",
                path.display()
            );
            scan.sealed = true;
        }
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names() {
        let paths = Paths::new(PathBuf::from("/x"));
        let p = paths.segment(42);
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert_eq!(name, "00000000000000000042.seg");
        assert_eq!(segment_number(name), Some(42));
        for other in ["42.seg", "0000000000000000004a.seg", "00000000000000000042.seg.tmp", "ack", ""] {
            assert_eq!(segment_number(other), None, "{other}");
        }
    }
}
