//! The spool: a bounded, crash-safe queue of one exporter's encoded
//! records. The pipeline appends (synchronously, without ever waiting for
//! the sink); the delivery loop reads one batch at a time, sends it, and
//! acknowledges (or rejects) it. A record leaves the spool only when it is
//! acknowledged or rejected, or when the spool is full and it is among the
//! oldest: then it is dropped and counted.
//!
//! On disk (`<dir>/`):
//!
//! - `segments/<20-digit number>.seg`: append-only segment files of framed
//!   records (`u32 length | u32 CRC32 | i64 time_ns | payload`, little
//!   endian, see `frame`). A new segment starts when the current one would
//!   grow past the segment size.
//! - `ack`: the acknowledged position (`<segment> <offset>`), replaced
//!   atomically on every acknowledgement. Fully acknowledged segments are
//!   deleted.
//! - `rejected/<YYYY-MM-DD>.jsonl`: records the sink refused for good.
//!
//! Records are written with one `write(2)` per segment touched and no
//! fsync: what a killed process wrote is in the page cache and is found
//! again by [`Spool::open`]; a power loss may lose the newest records.
//!
//! # What "counted" means
//!
//! Every record given to [`Spool::append`] (and every record found pending
//! by [`Spool::open`]) ends in exactly one of these, and [`SpoolStats`]
//! says how many are in each, so that at any time
//! `recovered_total + appended_total = acked_total + rejected_total +
//! dropped_total + records`:
//!
//! - pending (`records`): stored, or read and not yet acknowledged;
//! - acknowledged (`acked_total`) or rejected (`rejected_total`);
//! - dropped (`dropped_total`): deleted with the oldest segment to make
//!   room while neither acknowledged nor part of the batch in flight; or
//!   new records that could not be stored at all (a single record larger
//!   than the bound, the oldest new records of an append larger than the
//!   bound, records whose write failed); or records found unreadable
//!   (corrupt) when read back. Bytes skipped at recovery whose records
//!   cannot be counted are logged, not counted.
//!
//! The records of the batch in flight are never dropped: if their segment
//! is deleted to make room, the batch keeps them and its acknowledgement
//! counts them as acknowledged (but they are then no longer on disk: a
//! restart before that acknowledgement loses them without a count).
//!
//! This module must not block on anything but its own short critical
//! section and file I/O; it knows nothing about sinks or encodings.

mod disk;
mod frame;
mod rejected;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tokio::sync::Notify;

use disk::Paths;
use frame::{FrameReader, HEADER_BYTES};

/// The smallest default segment size (before the at-least-four-segments
/// rule for small bounds).
pub const MIN_DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024;
/// The largest default segment size.
pub const MAX_DEFAULT_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// The per-record framing overhead: every stored record takes its payload
/// length plus this many bytes (on disk and in memory alike).
pub const RECORD_OVERHEAD_BYTES: u64 = HEADER_BYTES;

/// Where and how large an on-disk spool is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolOptions {
    /// The spool's folder (created if needed).
    pub dir: PathBuf,
    /// The bound: the most bytes the segment files may hold together
    /// (framing and not yet deleted acknowledged records included).
    pub max_bytes: u64,
    /// The size at which a new segment file starts. Default:
    /// `max_bytes / 8` clamped to 64 KiB ..= 8 MiB. Whatever is asked, at
    /// most `max_bytes / 4`, so that dropping the oldest segment never drops
    /// more than a quarter of the spool.
    pub segment_bytes: Option<u64>,
}

impl SpoolOptions {
    /// Options for a spool at `dir` bounded to `max_bytes`, with the
    /// default segment size.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> SpoolOptions {
        SpoolOptions { dir: dir.into(), max_bytes, segment_bytes: None }
    }
}

/// The segment size a spool bounded to `max_bytes` uses when asked for
/// `requested` (see [`SpoolOptions::segment_bytes`]).
#[must_use]
pub fn segment_bytes(max_bytes: u64, requested: Option<u64>) -> u64 {
    let default = (max_bytes / 8).clamp(MIN_DEFAULT_SEGMENT_BYTES, MAX_DEFAULT_SEGMENT_BYTES);
    requested.unwrap_or(default).min(max_bytes / 4).max(1)
}

/// What went wrong with the spool's files.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool folder could not be created.
    #[error("creating the spool folder {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The segment folder could not be listed.
    #[error("listing spool segments in {}: {source}", path.display())]
    ListSegments {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A segment file could not be opened (or created).
    #[error("opening spool segment {}: {source}", path.display())]
    OpenSegment {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A segment file could not be read.
    #[error("reading spool segment {}: {source}", path.display())]
    ReadSegment {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Records could not be written to a segment file; they were not
    /// stored and are counted as dropped.
    #[error("appending records to spool segment {}: {source}", path.display())]
    WriteSegment {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The acknowledged position could not be read.
    #[error("reading the spool's acknowledged position {}: {source}", path.display())]
    ReadAck {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The acknowledged position could not be written. The records are
    /// acknowledged in this process; after a restart they may be sent again.
    #[error("writing the spool's acknowledged position {}: {source}", path.display())]
    WriteAck {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Rejected records could not be written to the `rejected/` folder.
    /// They are nevertheless counted as rejected and leave the spool.
    #[error("writing rejected records to {}: {source}", path.display())]
    WriteRejected {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One record read back from the spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpooledRecord {
    /// The flow time the record was appended with, Unix nanoseconds.
    pub time_ns: i64,
    /// The encoded record.
    pub payload: Vec<u8>,
}

/// The records handed out by [`Spool::read`], to be acknowledged or
/// rejected as a whole.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The records, oldest first.
    pub records: Vec<SpooledRecord>,
    /// The spool that handed the batch out.
    spool: u64,
    /// The batch's number in that spool.
    id: u64,
}

impl Batch {
    /// How many records the batch holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the batch holds no record (never true of a batch a spool
    /// hands out).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The sum of the records' payload lengths.
    #[must_use]
    pub fn payload_bytes(&self) -> usize {
        self.records.iter().map(|r| r.payload.len()).sum()
    }
}

/// The spool's counters (see the module documentation for what each
/// record is counted as).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Bytes of the pending records still stored, framing included
    /// (`payload + 16` each). Records of the batch in flight whose segment
    /// was dropped are no longer stored and not included.
    pub bytes: u64,
    /// Pending records: not yet acknowledged or rejected, the batch in
    /// flight included.
    pub records: u64,
    /// Records given to `append` since the spool was opened.
    pub appended_total: u64,
    /// Records acknowledged.
    pub acked_total: u64,
    /// Records dropped (see the module documentation).
    pub dropped_total: u64,
    /// Records rejected (dead-lettered).
    pub rejected_total: u64,
    /// Pending records found on disk when the spool was opened.
    pub recovered_total: u64,
}

/// A bounded queue of encoded records, on disk or in memory. Cloning gives
/// another handle to the same spool.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    /// Tells batches of different spools apart.
    id: u64,
    state: Mutex<State>,
    /// Signalled after every append, for [`Spool::read`].
    notify: Notify,
}

static NEXT_SPOOL_ID: AtomicU64 = AtomicU64::new(1);

/// Disk reads run outside the lock; after this many of them were undone by
/// concurrent drops in one `try_read`, the next one holds the lock.
const LOCKLESS_READ_ATTEMPTS: u32 = 3;

impl Spool {
    /// Opens (creating if needed) the on-disk spool at `opts.dir`,
    /// recovering what a previous process left: pending records come back
    /// in order, acknowledged ones do not; a torn last record is truncated.
    /// If the folder holds more than `opts.max_bytes`, the oldest records
    /// are dropped (and counted) now.
    pub fn open(opts: SpoolOptions) -> Result<Spool, SpoolError> {
        let paths = Paths::new(opts.dir);
        let recovered = disk::recover(&paths)?;
        let stored = recovered.segments.iter().map(|s| s.size).sum();
        let mut state = State {
            max_bytes: opts.max_bytes,
            segment_bytes: segment_bytes(opts.max_bytes, opts.segment_bytes),
            segments: recovered.segments,
            stored,
            next_number: recovered.next_number,
            next_seq: recovered.next_seq,
            ack: recovered.ack,
            pending: recovered.pending,
            counts: SpoolStats { recovered_total: recovered.pending, ..SpoolStats::default() },
            ..State::new(Some(Disk { paths, writer: None }), opts.max_bytes, None)
        };
        state.collect_acked();
        let mut dropped = 0;
        while state.stored > state.max_bytes {
            match state.drop_oldest() {
                Some(n) => dropped += n,
                None => break,
            }
        }
        state.counts.dropped_total += dropped;
        if dropped > 0 {
            log::warn!(
                "spool {}: {dropped} recovered records dropped to fit the bound of {} bytes",
                state.name(),
                state.max_bytes
            );
        }
        Ok(Spool::with_state(state))
    }

    /// An in-memory spool with the same semantics, bound and byte
    /// accounting as an on-disk one; nothing survives a restart and
    /// rejected records are only counted.
    #[must_use]
    pub fn memory(max_bytes: u64) -> Spool {
        Spool::with_state(State::new(None, max_bytes, None))
    }

    fn with_state(state: State) -> Spool {
        Spool {
            inner: Arc::new(Inner {
                id: NEXT_SPOOL_ID.fetch_add(1, Ordering::Relaxed),
                state: Mutex::new(state),
                notify: Notify::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock; if one ever did, the
        // counters are still the best account there is.
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends records (flow time in Unix ns, payload), oldest first, with
    /// one write per segment they go to (usually one). When the bound would
    /// be exceeded, the oldest segments are deleted first; if the records
    /// alone exceed the bound, the oldest of them are not stored.
    ///
    /// Returns how many records this call dropped: old records deleted to
    /// make room plus new ones that could not be stored (all also counted
    /// in [`SpoolStats::dropped_total`]). On error, the records not written
    /// are counted as dropped too; only the error is returned.
    pub fn append(&self, records: &[(i64, &[u8])]) -> Result<u64, SpoolError> {
        if records.is_empty() {
            return Ok(0);
        }
        let result = self.lock().append(records);
        self.inner.notify.notify_waiters();
        result
    }

    /// Waits until a record is pending, then returns up to `max_records`
    /// records whose payloads sum to at most `max_bytes` (always at least
    /// one, even when that one is larger). While a batch is in flight (read
    /// and neither acknowledged nor rejected), returns that same batch
    /// again at once. Disk reads happen on the calling thread, normally
    /// outside the spool's lock (appends go on meanwhile).
    pub async fn read(&self, max_records: usize, max_bytes: usize) -> Batch {
        loop {
            let notified = self.inner.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Register before looking, so an append in between wakes us.
            notified.as_mut().enable();
            if let Some(batch) = self.try_read(max_records, max_bytes) {
                return batch;
            }
            notified.await;
        }
    }

    /// [`Spool::read`] without waiting: `None` when nothing is pending.
    #[must_use]
    pub fn try_read(&self, max_records: usize, max_bytes: usize) -> Option<Batch> {
        let limits = Limits { records: max_records.max(1), bytes: max_bytes };
        let mut lost_races = 0;
        loop {
            let mut state = self.lock();
            let plan = match state.begin_read(self.inner.id, limits) {
                Begin::Done(batch) => return batch,
                Begin::ReadDisk(plan) => plan,
            };
            let outcome = if lost_races < LOCKLESS_READ_ATTEMPTS {
                drop(state);
                let outcome = plan.read_disk(limits);
                state = self.lock();
                outcome
            } else {
                // Appends keep dropping the segment being read (a full
                // spool and a slow read): read holding the lock, so this
                // read cannot lose again.
                plan.read_disk(limits)
            };
            if let Some(batch) = state.finish_read(self.inner.id, plan, outcome) {
                return batch;
            }
            // The oldest segment was dropped under the read, or unreadable
            // records were cut: plan again.
            lost_races += 1;
        }
    }

    /// The sink acknowledged `batch`: its records leave the spool, and the
    /// new position is persisted. A batch that is not the one in flight
    /// (already acknowledged or rejected, or from before a restart) is
    /// ignored. On error the records are acknowledged in this process, but
    /// a restart may read them again.
    pub fn ack(&self, batch: &Batch) -> Result<(), SpoolError> {
        self.lock().settle(self.inner.id, batch, Settle::Ack).map(|_| ())
    }

    /// The sink refused `batch` for good: its records are written to
    /// `<dir>/rejected/` (on disk; the memory spool keeps nothing) with
    /// `error_code` and `reason`, counted as rejected, and leave the spool.
    /// A batch that is not the one in flight is ignored. When writing them
    /// fails, they are still counted and leave the spool (they would be
    /// refused again), and the error says so.
    /// Writes `records` (part of a batch the sink refused in part) to
    /// `rejected/` with the sink's error code and reason, without settling
    /// anything: the caller acknowledges the batch once every record of it
    /// is either sent or dead-lettered. Nothing is kept by a memory spool.
    ///
    /// # Errors
    ///
    /// [`SpoolError::WriteRejected`] when the folder cannot be written.
    pub fn dead_letter(&self, records: &[SpooledRecord], error_code: &str, reason: &str) -> Result<(), SpoolError> {
        let dir = {
            let state = self.lock();
            match &state.disk {
                Some(disk) => disk.paths.rejected(),
                None => return Ok(()),
            }
        };
        rejected::write(&dir, records, error_code, reason, SystemTime::now()).map(|_| ())
    }

    pub fn reject(&self, batch: &Batch, error_code: &str, reason: &str) -> Result<(), SpoolError> {
        let mut state = self.lock();
        let Some(inflight) = state.inflight_of(self.inner.id, batch) else {
            return Ok(());
        };
        let written = match &state.disk {
            Some(disk) => {
                rejected::write(&disk.paths.rejected(), &inflight.records, error_code, reason, SystemTime::now())
                    .map(|_| ())
            }
            None => Ok(()),
        };
        if let Err(e) = &written {
            log::error!("spool {}: {} rejected records not kept: {e}", state.name(), inflight.records.len());
        }
        let settled = state.settle(self.inner.id, batch, Settle::Reject);
        written.and(settled.map(|_| ()))
    }

    /// The spool's counters now.
    #[must_use]
    pub fn stats(&self) -> SpoolStats {
        self.lock().stats()
    }

    /// The segment size in use.
    #[must_use]
    pub fn segment_bytes(&self) -> u64 {
        self.lock().segment_bytes
    }

    /// Write calls made so far (for the one-write-per-append test).
    #[cfg(test)]
    fn write_calls(&self) -> u64 {
        self.lock().write_calls
    }
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Spool")
            .field("at", &state.name())
            .field("max_bytes", &state.max_bytes)
            .field("stats", &state.stats())
            .finish()
    }
}

/// A position in the spool: a byte offset in a segment, and the sequence
/// number (in this process) of the record that starts there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) seq: u64,
}

impl Cursor {
    fn is_after(&self, other: &Cursor) -> bool {
        (self.segment, self.offset) > (other.segment, other.offset)
    }
}

/// One segment: a file, or a buffer for the memory spool. Its records have
/// the sequence numbers `first_seq .. first_seq + records`.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) number: u64,
    pub(crate) first_seq: u64,
    /// Readable records, acknowledged ones included.
    pub(crate) records: u64,
    /// The end of the readable records.
    pub(crate) end: u64,
    /// The bytes the segment occupies (more than `end` when unreadable
    /// bytes follow the records).
    pub(crate) size: u64,
    /// Nothing more is appended (unreadable bytes follow `end`).
    pub(crate) sealed: bool,
    /// The memory spool's bytes (empty on disk).
    pub(crate) mem: Vec<u8>,
}

impl Segment {
    fn end_seq(&self) -> u64 {
        self.first_seq + self.records
    }
}

/// The batch handed out and not yet settled.
struct InFlight {
    id: u64,
    /// The position after its last record.
    end: Cursor,
    records: Vec<SpooledRecord>,
}

struct Disk {
    paths: Paths,
    /// The open segment being appended to.
    writer: Option<(u64, File)>,
}

#[derive(Clone, Copy)]
struct Limits {
    records: usize,
    bytes: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Reject,
}

/// The part of one segment a read covers.
struct Part {
    number: u64,
    from: u64,
    end: u64,
    /// The sequence number of the record at `from`.
    seq: u64,
    path: Option<PathBuf>,
}

/// What a read covers, planned under the lock.
struct ReadPlan {
    start: Cursor,
    parts: Vec<Part>,
}

enum Begin {
    Done(Option<Batch>),
    ReadDisk(ReadPlan),
}

/// Records that could not be read, from `offset` (record `seq`) on.
struct Fault {
    number: u64,
    offset: u64,
    seq: u64,
    error: String,
}

struct ReadOutcome {
    records: Vec<SpooledRecord>,
    end: Option<Cursor>,
    fault: Option<Fault>,
}

impl ReadPlan {
    fn read_disk(&self, limits: Limits) -> ReadOutcome {
        read_parts(&self.parts, limits, |part| {
            let path = part.path.as_deref().ok_or_else(|| io::Error::other("no path"))?;
            let mut file = File::open(path)?;
            file.seek(SeekFrom::Start(part.from))?;
            Ok(BufReader::with_capacity(disk::READ_BUFFER, file))
        })
    }
}

/// Reads records from the planned parts until the limits are reached or a
/// record cannot be read.
fn read_parts<R: Read>(parts: &[Part], limits: Limits, mut open: impl FnMut(&Part) -> io::Result<R>) -> ReadOutcome {
    let mut out = ReadOutcome { records: Vec::new(), end: None, fault: None };
    let mut bytes = 0usize;
    'parts: for part in parts {
        let reader = match open(part) {
            Ok(reader) => reader,
            Err(e) => {
                out.fault = Some(Fault { number: part.number, offset: part.from, seq: part.seq, error: e.to_string() });
                break;
            }
        };
        let mut frames = FrameReader::new(reader, part.from, part.end);
        let mut seq = part.seq;
        loop {
            if out.records.len() >= limits.records {
                break 'parts;
            }
            let header = match frames.header() {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(e) => {
                    out.fault = Some(Fault { number: part.number, offset: frames.offset(), seq, error: e.to_string() });
                    break 'parts;
                }
            };
            if !out.records.is_empty() && bytes.saturating_add(header.payload_len()) > limits.bytes {
                break 'parts;
            }
            let mut payload = Vec::new();
            if let Err(e) = frames.payload(&mut payload) {
                out.fault = Some(Fault { number: part.number, offset: frames.offset(), seq, error: e.to_string() });
                break 'parts;
            }
            bytes += payload.len();
            seq += 1;
            out.records.push(SpooledRecord { time_ns: header.time_ns, payload });
            out.end = Some(Cursor { segment: part.number, offset: frames.offset(), seq });
        }
    }
    out
}

struct State {
    /// `None` for the memory spool.
    disk: Option<Disk>,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    /// The sum of the segments' sizes: what the bound limits.
    stored: u64,
    next_number: u64,
    next_seq: u64,
    /// The first record not acknowledged (not counting the batch in
    /// flight, which may lie before it once its segment was dropped).
    ack: Cursor,
    inflight: Option<InFlight>,
    next_batch: u64,
    /// Pending records (`SpoolStats::records`).
    pending: u64,
    /// The totals (`bytes` and `records` are filled in by `stats`).
    counts: SpoolStats,
    /// Frames of one write, reused.
    buf: Vec<u8>,
    #[cfg(test)]
    write_calls: u64,
}

impl State {
    fn new(disk: Option<Disk>, max_bytes: u64, requested_segment: Option<u64>) -> State {
        State {
            disk,
            max_bytes,
            segment_bytes: segment_bytes(max_bytes, requested_segment),
            segments: VecDeque::new(),
            stored: 0,
            next_number: 1,
            next_seq: 0,
            ack: Cursor { segment: 1, offset: 0, seq: 0 },
            inflight: None,
            next_batch: 1,
            pending: 0,
            counts: SpoolStats::default(),
            buf: Vec::new(),
            #[cfg(test)]
            write_calls: 0,
        }
    }

    /// The spool's folder, or "memory", for log lines.
    fn name(&self) -> String {
        match &self.disk {
            Some(disk) => disk.paths.dir.display().to_string(),
            None => "(memory)".to_owned(),
        }
    }

    fn stats(&self) -> SpoolStats {
        let bytes = self
            .segments
            .iter()
            .map(|s| match s.number.cmp(&self.ack.segment) {
                std::cmp::Ordering::Less => 0,
                std::cmp::Ordering::Equal => s.end.saturating_sub(self.ack.offset),
                std::cmp::Ordering::Greater => s.end,
            })
            .sum();
        SpoolStats { bytes, records: self.pending, ..self.counts }
    }

    fn append(&mut self, records: &[(i64, &[u8])]) -> Result<u64, SpoolError> {
        let given = u64::try_from(records.len()).unwrap_or(u64::MAX);
        self.counts.appended_total += given;
        let max_bytes = self.max_bytes;
        let fits = |payload: &[u8]| frame::fits_frame(payload.len()) && frame::frame_len(payload.len()) <= max_bytes;
        // Keep the newest records that fit the bound together; a record
        // that could never fit is skipped on its own.
        let mut first = records.len();
        let mut bytes = 0u64;
        let mut kept = 0u64;
        for (i, (_, payload)) in records.iter().enumerate().rev() {
            if !fits(payload) {
                continue;
            }
            let len = frame::frame_len(payload.len());
            if bytes + len > max_bytes {
                break;
            }
            bytes += len;
            kept += 1;
            first = i;
        }
        let mut dropped = given - kept;
        while self.stored + bytes > self.max_bytes {
            match self.drop_oldest() {
                Some(n) => dropped += n,
                None => break,
            }
        }
        self.counts.dropped_total += dropped;
        let keep = records.get(first..).unwrap_or_default().iter().filter(|(_, p)| fits(p));
        let written = self.write_records(keep, kept);
        self.collect_acked();
        written.map(|()| dropped)
    }

    /// Writes `count` records, filling the current segment and starting
    /// new ones as needed, one write per segment. Records not written
    /// because of an error are counted as dropped.
    fn write_records<'r>(
        &mut self,
        records: impl Iterator<Item = &'r (i64, &'r [u8])>,
        count: u64,
    ) -> Result<(), SpoolError> {
        let mut records = records.peekable();
        let mut left = count;
        let mut buf = std::mem::take(&mut self.buf);
        let mut result = Ok(());
        while let Some((_, payload)) = records.peek() {
            let tail_size = match self.writable_tail(frame::frame_len(payload.len())) {
                Ok(size) => size,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            buf.clear();
            let mut n = 0u64;
            while let Some((time_ns, payload)) = records.peek() {
                let len = frame::frame_len(payload.len());
                let used = tail_size + buf.len() as u64;
                if used > 0 && used + len > self.segment_bytes {
                    break;
                }
                // `fits` was checked by the caller.
                frame::encode(&mut buf, *time_ns, payload);
                n += 1;
                records.next();
            }
            if let Err(e) = self.write_tail(&buf, n) {
                result = Err(e);
                break;
            }
            left -= n;
        }
        self.buf = buf;
        if left > 0 {
            self.counts.dropped_total += left;
            log::error!("spool {}: {left} records not stored (write failed) and counted as dropped", self.name());
        }
        result
    }

    /// Makes sure the last segment can take a frame of `len` bytes
    /// (starting a new one if not); returns its size.
    fn writable_tail(&mut self, len: u64) -> Result<u64, SpoolError> {
        if let Some(tail) = self.segments.back()
            && !tail.sealed
            && (tail.size == 0 || tail.size + len <= self.segment_bytes)
        {
            return Ok(tail.size);
        }
        let number = self.next_number;
        // Never reuse a number, even when creating this one fails.
        self.next_number += 1;
        if let Some(disk) = &mut self.disk {
            disk.writer = None;
            let path = disk.paths.segment(number);
            let file = OpenOptions::new()
                .append(true)
                .create_new(true)
                .open(&path)
                .map_err(|source| SpoolError::OpenSegment { path, source })?;
            disk.writer = Some((number, file));
        }
        self.segments.push_back(Segment {
            number,
            first_seq: self.next_seq,
            records: 0,
            end: 0,
            size: 0,
            sealed: false,
            mem: Vec::new(),
        });
        // The previous last segment may be fully acknowledged.
        self.collect_acked();
        Ok(0)
    }

    /// Appends `buf` (`n` framed records) to the last segment in one write.
    fn write_tail(&mut self, buf: &[u8], n: u64) -> Result<(), SpoolError> {
        let Some(tail) = self.segments.back_mut() else {
            return Ok(());
        };
        let len = buf.len() as u64;
        if let Some(disk) = &mut self.disk {
            let path = disk.paths.segment(tail.number);
            let file = match &mut disk.writer {
                Some((number, file)) if *number == tail.number => file,
                writer => {
                    // The last segment of a previous process.
                    let file = OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .map_err(|source| SpoolError::OpenSegment { path: path.clone(), source })?;
                    &mut writer.insert((tail.number, file)).1
                }
            };
            #[cfg(test)]
            {
                self.write_calls += 1;
            }
            if let Err(source) = file.write_all(buf) {
                // Take back a partial write, so the segment stays readable
                // to its end; if that fails, append elsewhere from now on.
                if let Err(e) = file.set_len(tail.size) {
                    log::error!("spool: undoing a partial write to {}: {e}", path.display());
                    let size = file.metadata().map_or(tail.size + len, |m| m.len());
                    self.stored += size.saturating_sub(tail.size);
                    tail.size = size;
                    tail.sealed = true;
                    disk.writer = None;
                }
                return Err(SpoolError::WriteSegment { path, source });
            }
        } else {
            #[cfg(test)]
            {
                self.write_calls += 1;
            }
            tail.mem.extend_from_slice(buf);
        }
        tail.size += len;
        tail.end += len;
        tail.records += n;
        self.stored += len;
        self.next_seq += n;
        self.pending += n;
        Ok(())
    }

    /// Deletes the oldest segment; returns how many of its records were
    /// dropped (pending and not in flight). `None` when there is none.
    fn drop_oldest(&mut self) -> Option<u64> {
        let segment = self.segments.pop_front()?;
        let inflight_end = self.inflight.as_ref().map_or(0, |f| f.end.seq);
        let from = segment.first_seq.max(self.ack.seq).max(inflight_end);
        let dropped = segment.end_seq().saturating_sub(from);
        self.pending = self.pending.saturating_sub(dropped);
        self.stored = self.stored.saturating_sub(segment.size);
        if dropped > 0 {
            log::warn!(
                "spool {}: full ({} bytes); dropped {dropped} of the oldest records",
                self.name(),
                self.max_bytes
            );
        }
        self.discard(&segment);
        self.normalize_ack();
        Some(dropped)
    }

    /// Deletes a segment's file (disk) once it left the index.
    fn discard(&mut self, segment: &Segment) {
        if let Some(disk) = &mut self.disk {
            if disk.writer.as_ref().is_some_and(|(n, _)| *n == segment.number) {
                disk.writer = None;
            }
            disk::remove_segment(&disk.paths.segment(segment.number));
        }
    }

    /// Deletes fully acknowledged segments, except the last one while it
    /// can still be appended to.
    fn collect_acked(&mut self) {
        while let Some(front) = self.segments.front() {
            let acked =
                front.number < self.ack.segment || (front.number == self.ack.segment && self.ack.offset >= front.end);
            if !acked || (self.segments.len() == 1 && !front.sealed) {
                break;
            }
            if let Some(segment) = self.segments.pop_front() {
                self.stored = self.stored.saturating_sub(segment.size);
                self.discard(&segment);
            }
        }
        self.normalize_ack();
    }

    /// Moves the acknowledged position to the first segment when the
    /// segment it pointed into is gone.
    fn normalize_ack(&mut self) {
        match self.segments.front() {
            Some(front) if self.ack.segment < front.number => {
                self.ack = Cursor { segment: front.number, offset: 0, seq: front.first_seq };
            }
            None if self.ack.segment < self.next_number => {
                self.ack = Cursor { segment: self.next_number, offset: 0, seq: self.next_seq };
            }
            _ => {}
        }
    }

    fn inflight_batch(&self, spool: u64) -> Option<Batch> {
        self.inflight.as_ref().map(|f| Batch { records: f.records.clone(), spool, id: f.id })
    }

    /// Returns the batch in flight, or plans (disk) or does (memory) a read.
    fn begin_read(&mut self, spool: u64, limits: Limits) -> Begin {
        loop {
            if let Some(batch) = self.inflight_batch(spool) {
                return Begin::Done(Some(batch));
            }
            let plan = self.plan(limits);
            if plan.parts.is_empty() {
                return Begin::Done(None);
            }
            if self.disk.is_some() {
                return Begin::ReadDisk(plan);
            }
            let outcome = read_parts(&plan.parts, limits, |part| {
                self.segments
                    .iter()
                    .find(|s| s.number == part.number)
                    .and_then(|s| s.mem.get(usize::try_from(part.from).ok()?..usize::try_from(part.end).ok()?))
                    .ok_or_else(|| io::Error::other("memory segment out of range"))
            });
            if let Some(batch) = self.finish_read(spool, plan, outcome) {
                return Begin::Done(batch);
            }
        }
    }

    /// The segments (parts of) a read of at most `limits` covers.
    fn plan(&self, limits: Limits) -> ReadPlan {
        let mut parts = Vec::new();
        let (mut records, mut bytes) = (0u64, 0u64);
        for segment in &self.segments {
            let (from, seq) = match segment.number.cmp(&self.ack.segment) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => (self.ack.offset, self.ack.seq),
                std::cmp::Ordering::Greater => (0, segment.first_seq),
            };
            if from >= segment.end {
                continue;
            }
            let n = segment.end_seq().saturating_sub(seq);
            parts.push(Part {
                number: segment.number,
                from,
                end: segment.end,
                seq,
                path: self.disk.as_ref().map(|d| d.paths.segment(segment.number)),
            });
            records += n;
            bytes += (segment.end - from).saturating_sub(n * HEADER_BYTES);
            if records >= limits.records as u64 || bytes >= limits.bytes as u64 {
                break;
            }
        }
        ReadPlan { start: self.ack, parts }
    }

    /// Makes what was read the batch in flight. `None`: read again (the
    /// spool changed under the read, or unreadable records were cut).
    fn finish_read(&mut self, spool: u64, plan: ReadPlan, outcome: ReadOutcome) -> Option<Option<Batch>> {
        if let Some(batch) = self.inflight_batch(spool) {
            return Some(Some(batch));
        }
        if plan.start != self.ack {
            return None;
        }
        let cut = outcome.fault.is_some_and(|fault| self.cut(fault));
        let (Some(end), false) = (outcome.end, outcome.records.is_empty()) else {
            return if cut { None } else { Some(None) };
        };
        let id = self.next_batch;
        self.next_batch += 1;
        self.inflight = Some(InFlight { id, end, records: outcome.records.clone() });
        Some(Some(Batch { records: outcome.records, spool, id }))
    }

    /// Gives up on the records of a segment from an unreadable one on:
    /// counts them as dropped and appends no more to that segment.
    fn cut(&mut self, fault: Fault) -> bool {
        let name = self.name();
        let Some(segment) = self.segments.iter_mut().find(|s| s.number == fault.number) else {
            return false;
        };
        if fault.offset >= segment.end {
            return false;
        }
        let lost = segment.end_seq().saturating_sub(fault.seq);
        log::error!(
            "spool {name}: segment {} unreadable at byte {} ({}); {lost} records dropped",
            fault.number,
            fault.offset,
            fault.error
        );
        segment.records = segment.records.saturating_sub(lost);
        segment.end = fault.offset;
        segment.sealed = true;
        self.pending = self.pending.saturating_sub(lost);
        self.counts.dropped_total += lost;
        if let Some(disk) = &mut self.disk
            && disk.writer.as_ref().is_some_and(|(n, _)| *n == fault.number)
        {
            disk.writer = None;
        }
        self.collect_acked();
        true
    }

    /// The batch in flight, if `batch` is it.
    fn inflight_of(&self, spool: u64, batch: &Batch) -> Option<&InFlight> {
        self.inflight.as_ref().filter(|f| spool == batch.spool && f.id == batch.id)
    }

    /// Acknowledges or rejects the batch in flight. Returns whether `batch`
    /// was it (a stale batch changes nothing).
    fn settle(&mut self, spool: u64, batch: &Batch, how: Settle) -> Result<bool, SpoolError> {
        if spool != batch.spool {
            return Ok(false);
        }
        let Some(inflight) = self.inflight.take_if(|f| f.id == batch.id) else {
            return Ok(false);
        };
        let n = inflight.records.len() as u64;
        self.pending = self.pending.saturating_sub(n);
        match how {
            Settle::Ack => self.counts.acked_total += n,
            Settle::Reject => self.counts.rejected_total += n,
        }
        let mut result = Ok(true);
        if inflight.end.is_after(&self.ack) {
            self.ack = inflight.end;
            if let Some(disk) = &self.disk {
                result = disk.paths.write_ack(self.ack.segment, self.ack.offset).map(|()| true);
            }
        }
        self.collect_acked();
        result
    }
}
