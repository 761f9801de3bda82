//! The spool's tests: every behaviour is checked on both kinds (disk and
//! memory) through one test body, recovery on disk only.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::*;

/// A fresh folder under the system's temporary folder, removed on drop.
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "sightline-{name}-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            fastrand::u32(..)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create test folder");
        TempDir { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Disk,
    Memory,
}

/// A spool of one kind and what is needed to reopen and inspect it.
struct Fixture {
    kind: Kind,
    _dir: TempDir,
    opts: SpoolOptions,
}

impl Fixture {
    fn new(kind: Kind, name: &str, max_bytes: u64, segment: Option<u64>) -> (Fixture, Spool) {
        let dir = TempDir::new(name);
        let opts = SpoolOptions { dir: dir.path().join("spool"), max_bytes, segment_bytes: segment };
        let fixture = Fixture { kind, _dir: dir, opts };
        let spool = fixture.open();
        (fixture, spool)
    }

    fn open(&self) -> Spool {
        match self.kind {
            Kind::Disk => Spool::open(self.opts.clone()).expect("open spool"),
            Kind::Memory => {
                let spool = Spool::memory(self.opts.max_bytes);
                // The memory spool takes no segment size; set the same one
                // so both kinds drop at the same points.
                spool.lock().segment_bytes = segment_bytes(self.opts.max_bytes, self.opts.segment_bytes);
                spool
            }
        }
    }

    fn segments_dir(&self) -> PathBuf {
        self.opts.dir.join("segments")
    }

    /// The segment files, sorted by name (= number).
    fn segment_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(self.segments_dir())
            .expect("list segments")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        files.sort();
        files
    }

    /// The bytes the segment files hold (disk), or what the spool says it
    /// stores (memory).
    fn stored_bytes(&self, spool: &Spool) -> u64 {
        match self.kind {
            Kind::Disk => self.segment_files().iter().map(|p| fs::metadata(p).expect("stat").len()).sum(),
            Kind::Memory => spool.lock().segments.iter().map(|s| s.mem.len() as u64).sum(),
        }
    }
}

fn both(test: impl Fn(Kind)) {
    test(Kind::Disk);
    test(Kind::Memory);
}

/// The payload of record `i`: its number, then filler up to `len` bytes.
fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut p = format!("{{\"i\":{i}}}").into_bytes();
    p.resize(len.max(p.len()), b' ');
    p
}

/// The number a payload made by `payload` carries.
fn index(record: &SpooledRecord) -> u64 {
    let text = std::str::from_utf8(&record.payload).expect("utf8");
    let value: serde_json::Value = serde_json::from_str(text.trim_end()).expect("json payload");
    value["i"].as_u64().expect("i")
}

fn append_range(spool: &Spool, range: std::ops::Range<u64>, len: usize) -> u64 {
    let payloads: Vec<(i64, Vec<u8>)> = range.map(|i| (i as i64 * 1000, payload(i, len))).collect();
    let records: Vec<(i64, &[u8])> = payloads.iter().map(|(t, p)| (*t, p.as_slice())).collect();
    spool.append(&records).expect("append")
}

/// Reads and acknowledges until nothing is pending; returns the numbers.
fn drain(spool: &Spool) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(batch) = spool.try_read(7, 1 << 20) {
        for record in &batch.records {
            let i = index(record);
            assert_eq!(record.time_ns, i as i64 * 1000, "time of record {i}");
            out.push(i);
        }
        spool.ack(&batch).expect("ack");
    }
    out
}

fn check_balance(spool: &Spool) {
    let s = spool.stats();
    assert_eq!(
        s.recovered_total + s.appended_total,
        s.acked_total + s.rejected_total + s.dropped_total + s.records,
        "every record is pending, acknowledged, rejected or dropped: {s:?}"
    );
}

#[test]
fn order_is_kept_across_append_read_ack() {
    both(|kind| {
        let (fixture, spool) = Fixture::new(kind, "order", 1 << 20, Some(512));
        let mut next = 0;
        for n in [1, 5, 2, 13, 8, 21] {
            append_range(&spool, next..next + n, 40);
            next += n;
        }
        assert_eq!(drain(&spool), (0..next).collect::<Vec<_>>(), "{kind:?}");
        let s = spool.stats();
        assert_eq!((s.records, s.bytes, s.appended_total, s.acked_total, s.dropped_total), (0, 0, next, next, 0));
        if kind == Kind::Disk {
            // Only the last segment remains, everything before it is deleted.
            assert_eq!(fixture.segment_files().len(), 1);
        }
    });
}

#[test]
fn reading_again_before_ack_returns_the_same_batch() {
    both(|kind| {
        let (_fixture, spool) = Fixture::new(kind, "again", 1 << 20, None);
        append_range(&spool, 0..10, 20);
        let first = spool.try_read(4, 1 << 20).expect("batch");
        assert_eq!(first.records.iter().map(index).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        append_range(&spool, 10..12, 20);
        // Other limits, more records: still the batch in flight.
        let again = spool.try_read(100, 1 << 20).expect("batch");
        assert_eq!(again.records, first.records, "{kind:?}");
        spool.ack(&again).expect("ack");
        let next = spool.try_read(100, 1 << 20).expect("batch");
        assert_eq!(next.records.iter().map(index).collect::<Vec<_>>(), (4..12).collect::<Vec<_>>());
    });
}

#[test]
fn batches_respect_the_limits_and_always_carry_one_record() {
    both(|kind| {
        let (_fixture, spool) = Fixture::new(kind, "limits", 1 << 20, Some(1000));
        append_range(&spool, 0..20, 100);
        let by_bytes = spool.try_read(100, 250).expect("batch");
        assert_eq!(by_bytes.len(), 2, "{kind:?}");
        assert_eq!(by_bytes.payload_bytes(), 200);
        spool.ack(&by_bytes).expect("ack");
        let oversized = spool.try_read(100, 50).expect("batch");
        assert_eq!(oversized.len(), 1, "a record larger than max_bytes comes alone");
        assert_eq!(index(&oversized.records[0]), 2);
        spool.ack(&oversized).expect("ack");
        // Crosses segment boundaries (9 records per 1000-byte segment).
        let by_count = spool.try_read(15, 1 << 20).expect("batch");
        assert_eq!(by_count.records.iter().map(index).collect::<Vec<_>>(), (3..18).collect::<Vec<_>>());
        spool.ack(&by_count).expect("ack");
        let zero = spool.try_read(0, 0).expect("batch");
        assert_eq!(zero.len(), 1);
    });
}

#[test]
fn stats_count_pending_records_and_their_stored_bytes() {
    both(|kind| {
        let (_fixture, spool) = Fixture::new(kind, "stats", 1 << 20, None);
        assert_eq!(spool.stats(), SpoolStats::default());
        append_range(&spool, 0..10, 50);
        let frame = 50 + RECORD_OVERHEAD_BYTES;
        let s = spool.stats();
        assert_eq!((s.records, s.bytes, s.appended_total), (10, 10 * frame, 10), "{kind:?}");
        let batch = spool.try_read(4, 1 << 20).expect("batch");
        let s = spool.stats();
        assert_eq!((s.records, s.bytes), (10, 10 * frame), "the batch in flight is still pending");
        spool.ack(&batch).expect("ack");
        let s = spool.stats();
        assert_eq!((s.records, s.bytes, s.acked_total), (6, 6 * frame, 4));
        let batch = spool.try_read(2, 1 << 20).expect("batch");
        spool.reject(&batch, "code", "reason").expect("reject");
        assert_eq!(
            spool.stats(),
            SpoolStats {
                bytes: 4 * frame,
                records: 4,
                appended_total: 10,
                acked_total: 4,
                dropped_total: 0,
                rejected_total: 2,
                recovered_total: 0,
            }
        );
    });
}

#[test]
fn stale_acks_and_rejects_change_nothing() {
    both(|kind| {
        let (_fixture, spool) = Fixture::new(kind, "stale", 1 << 20, None);
        append_range(&spool, 0..6, 10);
        let batch = spool.try_read(3, 1 << 20).expect("batch");
        spool.ack(&batch).expect("ack");
        spool.ack(&batch).expect("second ack");
        spool.reject(&batch, "late", "after the ack").expect("reject after ack");
        let s = spool.stats();
        assert_eq!((s.acked_total, s.rejected_total, s.records), (3, 0, 3), "{kind:?}");
        // A batch of another spool with the same number is not ours.
        let other = Spool::memory(1 << 20);
        other.append(&[(0, b"x")]).expect("append");
        let foreign = other.try_read(10, 1 << 20).expect("batch");
        let ours = spool.try_read(10, 1 << 20).expect("batch");
        spool.ack(&foreign).expect("foreign ack");
        assert_eq!(spool.stats().acked_total, 3);
        assert_eq!(spool.try_read(10, 1 << 20).expect("batch").records, ours.records);
        spool.reject(&ours, "c", "r").expect("reject");
        spool.reject(&ours, "c", "r").expect("reject twice");
        let s = spool.stats();
        assert_eq!((s.acked_total, s.rejected_total, s.records), (3, 3, 0));
        check_balance(&spool);
    });
}

#[test]
fn a_waiting_read_wakes_up_on_append() {
    both(|kind| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        runtime.block_on(async {
            let (_fixture, spool) = Fixture::new(kind, "wake", 1 << 20, None);
            let reader = spool.clone();
            let task = tokio::spawn(async move { reader.read(10, 1 << 20).await });
            // On this one-thread runtime, yielding runs the reader until it
            // waits.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert!(!task.is_finished(), "{kind:?}: read returned with nothing pending");
            append_range(&spool, 0..3, 10);
            let batch = tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("read woke up within 5 s")
                .expect("reader task");
            assert_eq!(batch.records.iter().map(index).collect::<Vec<_>>(), vec![0, 1, 2]);
            // In flight: read returns it at once.
            let again = tokio::time::timeout(Duration::from_secs(5), spool.read(1, 1)).await.expect("read");
            assert_eq!(again.records, batch.records);
        });
    });
}

#[test]
fn restart_brings_back_unacknowledged_records_in_order() {
    let (fixture, spool) = Fixture::new(Kind::Disk, "restart", 1 << 20, Some(300));
    append_range(&spool, 0..30, 40);
    let files_before = fixture.segment_files().len();
    assert!(files_before >= 5, "several segments: {files_before}");
    for _ in 0..2 {
        let batch = spool.try_read(5, 1 << 20).expect("batch");
        spool.ack(&batch).expect("ack");
    }
    assert!(fixture.segment_files().len() < files_before, "acknowledged segments are deleted");
    // In flight, not acknowledged: comes back after the restart.
    let inflight = spool.try_read(5, 1 << 20).expect("batch");
    assert_eq!(index(&inflight.records[0]), 10);
    drop(spool);

    let spool = fixture.open();
    let s = spool.stats();
    assert_eq!((s.records, s.recovered_total, s.bytes), (20, 20, 20 * (40 + RECORD_OVERHEAD_BYTES)));
    // The old batch means nothing to the new spool.
    spool.ack(&inflight).expect("stale ack");
    assert_eq!(spool.stats().acked_total, 0);
    append_range(&spool, 30..35, 40);
    assert_eq!(drain(&spool), (10..35).collect::<Vec<_>>());
    check_balance(&spool);
    drop(spool);

    let spool = fixture.open();
    assert_eq!(spool.stats().records, 0);
    assert!(spool.try_read(10, 1 << 20).is_none(), "acknowledged records are not read again");
}

#[test]
fn a_torn_or_corrupt_tail_is_truncated_at_the_last_good_record() {
    let (fixture, spool) = Fixture::new(Kind::Disk, "torn", 1 << 20, None);
    append_range(&spool, 0..5, 30);
    drop(spool);
    let files = fixture.segment_files();
    assert_eq!(files.len(), 1);
    let last = &files[0];
    let good_len = fs::metadata(last).expect("stat").len();

    // A partial frame, as a killed writer leaves it.
    let mut frame = Vec::new();
    frame::encode(&mut frame, 5000, &payload(5, 30));
    for cut in [1, 15, 16, 20, frame.len() - 1] {
        let mut bytes = fs::read(last).expect("read");
        bytes.extend_from_slice(&frame[..cut]);
        fs::write(last, &bytes).expect("write");
        let spool = fixture.open();
        assert_eq!(fs::metadata(last).expect("stat").len(), good_len, "cut {cut}: truncated");
        assert_eq!(spool.stats().records, 5);
    }

    // A bad checksum in the last record: that record is cut too.
    let mut bytes = fs::read(last).expect("read");
    let n = bytes.len();
    bytes[n - 1] ^= 0x55;
    fs::write(last, &bytes).expect("write");
    let spool = fixture.open();
    assert_eq!(spool.stats().records, 4);
    assert_eq!(fs::metadata(last).expect("stat").len(), good_len - (30 + RECORD_OVERHEAD_BYTES));
    append_range(&spool, 10..12, 30);
    assert_eq!(drain(&spool), vec![0, 1, 2, 3, 10, 11]);
}

#[test]
fn corruption_in_an_earlier_segment_skips_the_rest_of_it() {
    let (fixture, spool) = Fixture::new(Kind::Disk, "corrupt", 1 << 20, Some(200));
    // 56-byte frames, 3 per segment.
    append_range(&spool, 0..12, 40);
    drop(spool);
    let files = fixture.segment_files();
    assert_eq!(files.len(), 4);
    // Garble the payload of the second record of the second segment.
    let mut bytes = fs::read(&files[1]).expect("read");
    bytes[56 + 20] ^= 0xff;
    fs::write(&files[1], &bytes).expect("write");

    let spool = fixture.open();
    assert_eq!(spool.stats().records, 10, "records 4 and 5 are unreadable");
    assert_eq!(fs::metadata(&files[1]).expect("stat").len(), bytes.len() as u64, "an earlier segment is left as is");
    append_range(&spool, 12..14, 40);
    assert_eq!(drain(&spool), vec![0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13]);
    check_balance(&spool);
}

#[test]
fn records_corrupted_after_opening_are_dropped_and_counted_when_read() {
    let (fixture, spool) = Fixture::new(Kind::Disk, "late-corrupt", 1 << 20, Some(200));
    append_range(&spool, 0..9, 40);
    let files = fixture.segment_files();
    let mut bytes = fs::read(&files[0]).expect("read");
    bytes[56 + 20] ^= 0xff;
    fs::write(&files[0], &bytes).expect("write");
    fs::remove_file(&files[1]).expect("remove");
    assert_eq!(drain(&spool), vec![0, 6, 7, 8]);
    let s = spool.stats();
    assert_eq!((s.dropped_total, s.acked_total, s.records), (5, 4, 0));
    append_range(&spool, 9..11, 40);
    assert_eq!(drain(&spool), vec![9, 10]);
    check_balance(&spool);
}

#[test]
fn garbage_in_the_folder_is_ignored_or_cut() {
    let (fixture, spool) = Fixture::new(Kind::Disk, "garbage", 1 << 20, Some(200));
    append_range(&spool, 0..6, 40);
    let batch = spool.try_read(2, 1 << 20).expect("batch");
    spool.ack(&batch).expect("ack");
    drop(spool);
    let segments = fixture.segments_dir();
    fs::write(fixture.opts.dir.join("notes.txt"), "hello").expect("write");
    fs::write(segments.join("123.seg"), "not a segment name").expect("write");
    fs::write(segments.join("00000000000000000007.seg.bak"), "backup").expect("write");
    fs::create_dir(segments.join("00000000000000000008.seg")).expect("mkdir");
    // The newest segment is pure garbage: cut to nothing.
    let garbage: Vec<u8> = (0..500).map(|_| fastrand::u8(..)).collect();
    fs::write(segments.join("00000000000000000009.seg"), &garbage).expect("write");
    let spool = fixture.open();
    assert_eq!(fs::metadata(segments.join("00000000000000000009.seg")).expect("stat").len(), 0);
    assert_eq!(drain(&spool), vec![2, 3, 4, 5]);
    drop(spool);
    for name in ["123.seg", "00000000000000000007.seg.bak"] {
        assert!(segments.join(name).exists(), "{name} left alone");
    }
    assert!(fixture.opts.dir.join("notes.txt").exists());

    // An unreadable ack file: everything still stored is sent again.
    let spool = fixture.open();
    append_range(&spool, 6..8, 40);
    drop(spool);
    fs::write(fixture.opts.dir.join("ack"), "\u{0}garbage").expect("write");
    let spool = fixture.open();
    let again = drain(&spool);
    assert!(again.ends_with(&[6, 7]), "{again:?}");
}

#[test]
fn an_ack_into_a_deleted_segment_resumes_at_the_next_one() {
    let (fixture, spool) = Fixture::new(Kind::Disk, "ack-gone", 1 << 20, Some(200));
    append_range(&spool, 0..9, 40);
    let batch = spool.try_read(1, 1 << 20).expect("batch");
    spool.ack(&batch).expect("ack");
    drop(spool);
    let files = fixture.segment_files();
    assert_eq!(files.len(), 3);
    let ack = fs::read_to_string(fixture.opts.dir.join("ack")).expect("ack file");
    assert_eq!(ack.trim(), "1 56");
    fs::remove_file(&files[0]).expect("remove");
    let spool = fixture.open();
    assert_eq!(drain(&spool), vec![3, 4, 5, 6, 7, 8]);
    drop(spool);
    // An ack beyond every segment: new segments get later numbers.
    fs::write(fixture.opts.dir.join("ack"), "40 999\n").expect("write");
    let spool = fixture.open();
    append_range(&spool, 9..11, 40);
    drop(spool);
    let spool = fixture.open();
    assert_eq!(drain(&spool), vec![9, 10]);
}

#[test]
fn an_append_larger_than_the_bound_keeps_the_newest_records() {
    both(|kind| {
        let (_fixture, spool) = Fixture::new(kind, "huge", 1000, None);
        append_range(&spool, 0..5, 20);
        // A single record that can never fit: only it is dropped.
        assert_eq!(append_range(&spool, 5..6, 2000), 1, "{kind:?}");
        assert_eq!(spool.stats().records, 5);
        // 116-byte frames: 8 fit in 1000 bytes; the 5 old ones and the 92
        // oldest new ones are dropped.
        assert_eq!(append_range(&spool, 6..106, 100), 5 + 92);
        let s = spool.stats();
        assert_eq!((s.records, s.dropped_total, s.appended_total), (8, 98, 106));
        assert!(s.bytes <= 1000);
        assert_eq!(drain(&spool), (98..106).collect::<Vec<_>>());
        check_balance(&spool);
        // A bound of zero stores nothing and counts everything.
        let (_fixture, zero) = Fixture::new(kind, "zero", 0, None);
        assert_eq!(append_range(&zero, 0..3, 1), 3);
        assert!(zero.try_read(1, 1).is_none());
        check_balance(&zero);
    });
}

#[test]
fn the_batch_in_flight_is_not_dropped_and_its_ack_counts_once() {
    both(|kind| {
        // 4 segments of 250 bytes: 4 frames of 56 bytes each.
        let (_fixture, spool) = Fixture::new(kind, "inflight", 1000, None);
        append_range(&spool, 0..6, 40);
        let held = spool.try_read(6, 1 << 20).expect("batch");
        assert_eq!(held.len(), 6);
        // Enough to push out every segment holding the batch.
        let mut dropped = 0;
        for start in (6..40).step_by(2) {
            dropped += append_range(&spool, start..start + 2, 40);
        }
        let s = spool.stats();
        assert_eq!(s.dropped_total, dropped, "{kind:?}");
        assert!(dropped > 0);
        // Dropped: 6..(first kept); the 6 held records are not among them.
        let kept_first = 40 - (s.records - 6);
        assert_eq!(dropped, kept_first - 6);
        // Reading again still returns the held batch, from memory.
        assert_eq!(spool.try_read(1, 1).expect("batch").records, held.records);
        spool.ack(&held).expect("ack of a batch whose segments are gone");
        let s = spool.stats();
        assert_eq!((s.acked_total, s.records), (6, 40 - kept_first));
        check_balance(&spool);
        assert_eq!(drain(&spool), (kept_first..40).collect::<Vec<_>>());
        check_balance(&spool);
    });
}

/// A long random run: appends of random sizes (sometimes larger than the
/// bound), reads, acks and rejects, with a batch held across many drops.
/// The bound holds after every append and every record is accounted for
/// exactly: at the end, the dropped count equals the records appended and
/// never delivered.
#[test]
fn random_run_keeps_the_bound_and_counts_every_drop() {
    both(|kind| {
        fastrand::seed(0x5eed);
        const MAX: u64 = 20_000;
        let (fixture, spool) = Fixture::new(kind, "random", MAX, None);
        let mut next = 0u64;
        let mut delivered: Vec<u64> = Vec::new();
        let mut held: Option<Batch> = None;
        let mut returned_drops = 0;
        let mut largest_frame = 0;
        for step in 0..3000 {
            match fastrand::u32(..100) {
                0..55 => {
                    let n = if fastrand::u32(..100) == 0 { fastrand::u64(50..200) } else { fastrand::u64(1..12) };
                    let len = fastrand::usize(10..600);
                    largest_frame = largest_frame.max(len as u64 + RECORD_OVERHEAD_BYTES);
                    returned_drops += append_range(&spool, next..next + n, len);
                    next += n;
                    let disk = fixture.stored_bytes(&spool);
                    assert!(disk <= MAX + largest_frame, "{kind:?} step {step}: {disk} bytes stored");
                    assert!(disk <= MAX, "{kind:?} step {step}: {disk} bytes stored, bound {MAX}");
                    assert!(spool.stats().bytes <= disk);
                }
                55..75 => {
                    let batch = spool.try_read(fastrand::usize(1..20), fastrand::usize(1..4000));
                    if let (Some(held), Some(batch)) = (&held, &batch) {
                        assert_eq!(held.records, batch.records, "{kind:?} step {step}: same batch again");
                    }
                    if held.is_none() {
                        held = batch;
                    }
                }
                75..90 => {
                    // Hold the batch across many appends now and then.
                    if fastrand::u32(..4) != 0
                        && let Some(batch) = held.take()
                    {
                        delivered.extend(batch.records.iter().map(index));
                        spool.ack(&batch).expect("ack");
                        spool.ack(&batch).expect("stale ack");
                    }
                }
                _ => {
                    if let Some(batch) = held.take() {
                        delivered.extend(batch.records.iter().map(index));
                        spool.reject(&batch, "Bad", "random").expect("reject");
                    }
                }
            }
            check_balance(&spool);
        }
        if let Some(batch) = held.take() {
            delivered.extend(batch.records.iter().map(index));
            spool.ack(&batch).expect("ack");
        }
        delivered.extend(drain(&spool));
        assert!(delivered.windows(2).all(|w| w[0] < w[1]), "{kind:?}: delivered in order, each once");
        let s = spool.stats();
        assert_eq!(s.records, 0);
        assert_eq!(s.bytes, 0);
        assert_eq!(s.appended_total, next);
        assert_eq!(s.acked_total + s.rejected_total, delivered.len() as u64);
        let never_delivered =
            (0..next).collect::<BTreeSet<_>>().difference(&delivered.iter().copied().collect()).count();
        assert_eq!(s.dropped_total, never_delivered as u64, "{kind:?}: {s:?}");
        assert_eq!(s.dropped_total, returned_drops, "append returned every drop");
        assert!(s.dropped_total > 0 && s.rejected_total > 0, "the run exercised drops and rejects: {s:?}");
    });
}

#[test]
fn rejected_records_are_written_counted_and_acknowledged() {
    let (fixture, spool) = Fixture::new(Kind::Disk, "reject", 1 << 20, None);
    let binary = [0xffu8, 0, 1];
    spool.append(&[(1, br#"{"a":1}"#), (2, b"plain text"), (3, &binary), (4, br#"{"b":2}"#)]).expect("append");
    let batch = spool.try_read(3, 1 << 20).expect("batch");
    spool.reject(&batch, "InvalidStream", "stream Custom-X not found").expect("reject");
    let s = spool.stats();
    assert_eq!((s.rejected_total, s.acked_total, s.records), (3, 0, 1));

    let files: Vec<PathBuf> =
        fs::read_dir(fixture.opts.dir.join("rejected")).expect("rejected/").map(|e| e.expect("entry").path()).collect();
    assert_eq!(files.len(), 1);
    let name = files[0].file_name().and_then(|n| n.to_str()).expect("name").to_owned();
    assert!(name.len() == "2026-12-04.jsonl".len() && name.ends_with(".jsonl"), "{name}");
    let text = fs::read_to_string(&files[0]).expect("read");
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(lines.len(), 3);
    for (line, time) in lines.iter().zip(1..) {
        assert_eq!(line["error_code"], "InvalidStream");
        assert_eq!(line["reason"], "stream Custom-X not found");
        assert_eq!(line["time_ns"], time);
        assert!(line["rejected_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    assert_eq!(lines[0]["payload"], serde_json::json!({"a": 1}));
    assert_eq!(lines[1]["payload_text"], "plain text");
    assert_eq!(lines[2]["payload_base64"], "/wAB");

    // Acknowledged: the next read starts after them, also after a restart.
    drop(spool);
    let spool = fixture.open();
    let rest = spool.try_read(10, 1 << 20).expect("batch");
    assert_eq!(rest.records, vec![SpooledRecord { time_ns: 4, payload: br#"{"b":2}"#.to_vec() }]);

    // The memory spool counts and acknowledges, and keeps nothing.
    let memory = Spool::memory(1 << 20);
    memory.append(&[(1, b"x"), (2, b"y")]).expect("append");
    let batch = memory.try_read(10, 1 << 20).expect("batch");
    memory.reject(&batch, "c", "r").expect("reject");
    let s = memory.stats();
    assert_eq!((s.rejected_total, s.records), (2, 0));
    assert!(memory.try_read(10, 1 << 20).is_none());
}

#[test]
fn a_full_disk_at_open_drops_the_oldest_and_counts_them() {
    let (fixture, spool) = Fixture::new(Kind::Disk, "shrink", 10_000, Some(500));
    append_range(&spool, 0..100, 40);
    drop(spool);
    let smaller = SpoolOptions { max_bytes: 2000, segment_bytes: Some(500), ..fixture.opts.clone() };
    let spool = Spool::open(smaller).expect("open");
    let s = spool.stats();
    assert!(s.bytes <= 2000, "{s:?}");
    assert_eq!(s.recovered_total, s.records + s.dropped_total);
    let got = drain(&spool);
    assert_eq!(got, ((100 - got.len() as u64)..100).collect::<Vec<_>>());
}

#[test]
fn segment_sizes_follow_the_bound() {
    assert_eq!(segment_bytes(512 << 20, None), 8 << 20);
    assert_eq!(segment_bytes(1 << 20, None), 128 << 10);
    assert_eq!(segment_bytes(100 << 10, None), 25 << 10, "at least four segments fit");
    assert_eq!(segment_bytes(512 << 20, Some(1 << 30)), 128 << 20);
    assert_eq!(segment_bytes(512 << 20, Some(4096)), 4096);
    assert_eq!(segment_bytes(0, None), 1);
}

#[test]
fn an_append_is_one_write_and_round_trips_stay_fast() {
    let (_fixture, spool) = Fixture::new(Kind::Disk, "perf", 256 << 20, None);
    let payloads: Vec<Vec<u8>> = (0..100).map(|i| payload(i, 1000)).collect();
    let records: Vec<(i64, &[u8])> = payloads.iter().map(|p| (1, p.as_slice())).collect();
    spool.append(&records).expect("append");
    assert_eq!(spool.write_calls(), 1, "100 records of 1 KB in one write");

    let start = Instant::now();
    for _ in 0..200 {
        spool.append(&records).expect("append");
    }
    let appended = start.elapsed();
    let mut read = 0;
    while let Some(batch) = spool.try_read(4096, 1 << 20) {
        read += batch.len();
        spool.ack(&batch).expect("ack");
    }
    assert_eq!(read, 201 * 100);
    let total = start.elapsed();
    // Not a benchmark: a sanity bound that only a gross regression (a
    // write or an fsync per record, a quadratic read) would cross.
    assert!(total < Duration::from_secs(20), "20 MB through the spool took {total:?} (appends {appended:?})");
}

#[test]
fn spools_and_reads_can_cross_threads() {
    fn send_sync<T: Send + Sync + Clone + 'static>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let spool = Spool::memory(1000);
    send_sync(&spool);
    send(&spool.read(1, 1));
}

/// An appender thread fills a small spool while a reader thread reads and
/// acknowledges: disk reads happen outside the lock while segments are
/// dropped under them. Order and the exact drop count must survive that.
#[test]
fn concurrent_appends_and_reads_keep_order_and_counts() {
    both(|kind| {
        const TOTAL: u64 = 20_000;
        let (_fixture, spool) = Fixture::new(kind, "threads", 8_000, None);
        let appender = {
            let spool = spool.clone();
            std::thread::spawn(move || {
                let mut next = 0;
                while next < TOTAL {
                    let n = fastrand::u64(1..20).min(TOTAL - next);
                    append_range(&spool, next..next + n, fastrand::usize(10..200));
                    next += n;
                }
            })
        };
        let mut delivered = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match spool.try_read(fastrand::usize(1..50), 4000) {
                Some(batch) => {
                    delivered.extend(batch.records.iter().map(index));
                    spool.ack(&batch).expect("ack");
                }
                None if appender.is_finished() => break,
                None => std::thread::yield_now(),
            }
            assert!(Instant::now() < deadline, "{kind:?}: not done within 60 s");
        }
        appender.join().expect("appender");
        delivered.extend(drain(&spool));
        assert!(delivered.windows(2).all(|w| w[0] < w[1]), "{kind:?}: in order, each once");
        let s = spool.stats();
        assert_eq!(s.appended_total, TOTAL);
        assert_eq!(s.records, 0);
        assert_eq!(s.acked_total, delivered.len() as u64);
        assert_eq!(s.dropped_total, TOTAL - delivered.len() as u64, "{kind:?}: {s:?}");
    });
}
