//! The framing of one spooled record, the same on disk and in memory:
//! `u32 payload length (LE) | u32 CRC32 of time and payload (LE) |
//! i64 flow time in Unix ns (LE) | payload`.
//!
//! This module only encodes and decodes frames; it knows nothing of
//! segments, positions or acknowledgements.

use std::io::{self, Read};

/// The bytes a frame adds in front of its payload.
pub(crate) const HEADER_BYTES: u64 = 16;

/// The stored size of a record whose payload is `payload_len` bytes.
pub(crate) fn frame_len(payload_len: usize) -> u64 {
    HEADER_BYTES.saturating_add(u64::try_from(payload_len).unwrap_or(u64::MAX))
}

/// Whether a payload of `payload_len` bytes can be framed at all (its
/// length must fit the `u32` length field).
pub(crate) fn fits_frame(payload_len: usize) -> bool {
    u32::try_from(payload_len).is_ok()
}

/// The checksum a frame carries: CRC32 over the time (LE) and the payload.
pub(crate) fn checksum(time_ns: i64, payload: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(&time_ns.to_le_bytes());
    crc.update(payload);
    crc.sum()
}

/// Appends the frame of one record to `buf`. Returns false (and appends
/// nothing) when the payload is too long to frame.
pub(crate) fn encode(buf: &mut Vec<u8>, time_ns: i64, payload: &[u8]) -> bool {
    let Ok(len) = u32::try_from(payload.len()) else {
        return false;
    };
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&checksum(time_ns, payload).to_le_bytes());
    buf.extend_from_slice(&time_ns.to_le_bytes());
    buf.extend_from_slice(payload);
    true
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The frame runs past the end of the data (a torn write).
    Truncated,
    /// The checksum does not match (a corrupt or garbage frame).
    Checksum,
    /// The underlying read failed.
    Io(io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated => f.write_str("truncated record"),
            FrameError::Checksum => f.write_str("checksum mismatch"),
            FrameError::Io(e) => write!(f, "read failed: {e}"),
        }
    }
}

/// The header of one frame, read but not yet followed by its payload.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    pub(crate) len: u32,
    crc: u32,
    pub(crate) time_ns: i64,
}

impl Header {
    /// The payload length as a `usize` (a `u32` always fits on the
    /// platforms this crate builds for; saturates otherwise).
    pub(crate) fn payload_len(&self) -> usize {
        usize::try_from(self.len).unwrap_or(usize::MAX)
    }
}

/// Reads consecutive frames from `inner`, which is positioned at byte
/// `offset` of a stream whose valid data ends at `end`. `offset` always
/// names the end of the last complete frame read, so after an error it is
/// the position of the last good record's end.
pub(crate) struct FrameReader<R> {
    inner: R,
    offset: u64,
    end: u64,
    pending: Option<Header>,
}

impl<R: Read> FrameReader<R> {
    pub(crate) fn new(inner: R, offset: u64, end: u64) -> Self {
        FrameReader { inner, offset, end, pending: None }
    }

    /// The end of the last complete frame read.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads the next header; `Ok(None)` at the end of the data. The
    /// header's payload must be read with [`FrameReader::payload`] before
    /// the next header.
    pub(crate) fn header(&mut self) -> Result<Option<Header>, FrameError> {
        if self.offset >= self.end {
            return Ok(None);
        }
        if self.end - self.offset < HEADER_BYTES {
            return Err(FrameError::Truncated);
        }
        let mut raw = [0u8; 16];
        read_exact(&mut self.inner, &mut raw)?;
        let [l0, l1, l2, l3, c0, c1, c2, c3, t0, t1, t2, t3, t4, t5, t6, t7] = raw;
        let header = Header {
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            crc: u32::from_le_bytes([c0, c1, c2, c3]),
            time_ns: i64::from_le_bytes([t0, t1, t2, t3, t4, t5, t6, t7]),
        };
        if self.end - self.offset - HEADER_BYTES < u64::from(header.len) {
            return Err(FrameError::Truncated);
        }
        self.pending = Some(header);
        Ok(Some(header))
    }

    /// Reads the payload of the header just read into `buf` (replacing its
    /// contents) and checks the checksum.
    pub(crate) fn payload(&mut self, buf: &mut Vec<u8>) -> Result<(), FrameError> {
        let Some(header) = self.pending.take() else {
            return Err(FrameError::Io(io::Error::other("payload read without a header")));
        };
        buf.clear();
        buf.resize(header.payload_len(), 0);
        read_exact(&mut self.inner, buf)?;
        if checksum(header.time_ns, buf) != header.crc {
            return Err(FrameError::Checksum);
        }
        self.offset += HEADER_BYTES + u64::from(header.len);
        Ok(())
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), FrameError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            // The data is shorter than its length said: torn, or shrunk
            // under us.
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(records: &[(i64, &[u8])]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (t, p) in records {
            assert!(encode(&mut buf, *t, p));
        }
        buf
    }

    type ReadAll = (Vec<(i64, Vec<u8>)>, u64, Option<FrameError>);

    fn read_all(data: &[u8]) -> ReadAll {
        let mut r = FrameReader::new(data, 0, data.len() as u64);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            match r.header() {
                Ok(None) => return (out, r.offset(), None),
                Ok(Some(h)) => match r.payload(&mut buf) {
                    Ok(()) => out.push((h.time_ns, buf.clone())),
                    Err(e) => return (out, r.offset(), Some(e)),
                },
                Err(e) => return (out, r.offset(), Some(e)),
            }
        }
    }

    #[test]
    fn frames_round_trip() {
        let data = frames(&[(1, b"a"), (-5, b""), (i64::MAX, b"hello")]);
        assert_eq!(data.len() as u64, frame_len(1) + frame_len(0) + frame_len(5));
        let (out, offset, err) = read_all(&data);
        assert!(err.is_none());
        assert_eq!(offset, data.len() as u64);
        assert_eq!(out, vec![(1, b"a".to_vec()), (-5, vec![]), (i64::MAX, b"hello".to_vec())]);
    }

    #[test]
    fn torn_and_corrupt_frames_stop_at_the_last_good_one() {
        let data = frames(&[(1, b"first"), (2, b"second")]);
        let first_end = frame_len(5);
        for cut in 1..data.len() - first_end as usize {
            let (out, offset, err) = read_all(&data[..first_end as usize + cut]);
            assert_eq!(out.len(), 1, "cut {cut}");
            assert_eq!(offset, first_end);
            assert!(matches!(err, Some(FrameError::Truncated)), "cut {cut}: {err:?}");
        }
        let mut bad = data.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let (out, offset, err) = read_all(&bad);
        assert_eq!(out.len(), 1);
        assert_eq!(offset, first_end);
        assert!(matches!(err, Some(FrameError::Checksum)));
        // A huge length in garbage is reported as truncated, not allocated.
        let garbage = [0xffu8; 40];
        let (out, offset, err) = read_all(&garbage);
        assert!(out.is_empty());
        assert_eq!(offset, 0);
        assert!(matches!(err, Some(FrameError::Truncated)));
    }
}
