//! The file sink: records as lines (`payload + "\n"`, each payload a
//! complete JSON document), appended to a file or written to standard
//! output, like Hubble's file exporter.
//!
//! A file is rotated the way Hubble's (Go's lumberjack) is: before a batch
//! that would make it larger than `max_size_bytes` (unless it is empty),
//! `flows.log` is renamed to `flows-<UTC 2006-01-02T15-04-05.000>.log`, a
//! fresh `flows.log` is opened, the backup is gzipped to `….log.gz` when
//! asked, and only the newest `max_backups` backups of this file are kept.
//!
//! The sink writes in tokio's blocking pool, so a slow disk or a
//! compression never stalls the runtime. It must not delete anything but
//! its own backups (found by their exact name pattern) and never loses a
//! backup to a failed compression.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use flate2::Compression;
use flate2::write::GzEncoder;

use super::{Delivery, Outcome, SendFuture, Sink};

/// The default size at which the file is rotated: 10 MiB.
pub const DEFAULT_MAX_SIZE_BYTES: u64 = 10 * 1024 * 1024;
/// The default number of rotated files kept.
pub const DEFAULT_MAX_BACKUPS: usize = 5;
/// The most payload bytes one batch carries.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// The most records one batch carries.
pub const MAX_BATCH_RECORDS: usize = 4096;

/// The backups' timestamp, as lumberjack's `2006-01-02T15-04-05.000`:
/// this many characters.
const TIMESTAMP_LEN: usize = 23;
/// How many later milliseconds are tried when a backup name is taken.
const NAME_ATTEMPTS: i64 = 1000;

/// Where the lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileTarget {
    /// A file, rotated by size.
    Path(PathBuf),
    /// Standard output, never rotated.
    Stdout,
}

impl FileTarget {
    /// The target a configuration's `path` names: `stdout` is standard
    /// output, anything else a file.
    #[must_use]
    pub fn from_config(path: &str) -> FileTarget {
        if path == "stdout" { FileTarget::Stdout } else { FileTarget::Path(PathBuf::from(path)) }
    }
}

/// How the file sink writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSinkOptions {
    /// Where the lines go.
    pub target: FileTarget,
    /// Rotate before the file would grow beyond this (default 10 MiB). A
    /// single batch larger than this still goes into one (fresh) file.
    pub max_size_bytes: u64,
    /// Rotated files kept, compressed or not (default 5; 0 keeps none).
    pub max_backups: usize,
    /// Gzip rotated files.
    pub compress: bool,
}

impl FileSinkOptions {
    /// Options for `target` with the defaults.
    #[must_use]
    pub fn new(target: FileTarget) -> FileSinkOptions {
        FileSinkOptions {
            target,
            max_size_bytes: DEFAULT_MAX_SIZE_BYTES,
            max_backups: DEFAULT_MAX_BACKUPS,
            compress: false,
        }
    }
}

/// Options the file sink cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum FileSinkError {
    /// The path ends in no file name (`/`, `..`, empty).
    #[error("the file sink's path {} names no file", path.display())]
    NoFileName { path: PathBuf },
    /// A maximum size of zero would rotate before every batch.
    #[error("the file sink's maximum size for {} is 0 bytes", path.display())]
    ZeroMaxSize { path: PathBuf },
}

/// Writes records as lines to a file (rotated) or standard output.
pub struct FileSink {
    opts: FileSinkOptions,
    /// `None` while a send runs in the blocking pool, and after a send was
    /// cancelled or its task failed (a fresh one is made).
    writer: Option<Writer>,
}

impl FileSink {
    /// Checks the options, creates the file's parent folders and opens it
    /// for appending. Failing to create or open the file is not an error
    /// here: it is logged, and every send tries again (and answers
    /// `Retry`) until it works, so a volume mounted late or a permission
    /// fixed later needs no restart.
    pub fn new(opts: FileSinkOptions) -> Result<FileSink, FileSinkError> {
        if let FileTarget::Path(path) = &opts.target {
            if path.file_name().is_none() {
                return Err(FileSinkError::NoFileName { path: path.clone() });
            }
            if opts.max_size_bytes == 0 {
                return Err(FileSinkError::ZeroMaxSize { path: path.clone() });
            }
        }
        let mut writer = Writer::new(opts.clone());
        if let (FileTarget::Path(path), Err(e)) = (&opts.target, writer.open()) {
            log::warn!("file sink {}: {e}; will try again on every send", path.display());
        }
        Ok(FileSink { opts, writer: Some(writer) })
    }
}

impl Sink for FileSink {
    fn max_batch_bytes(&self) -> usize {
        MAX_BATCH_BYTES
    }

    fn max_batch_records(&self) -> usize {
        MAX_BATCH_RECORDS
    }

    fn send<'a>(&'a mut self, records: &'a [Vec<u8>]) -> SendFuture<'a> {
        Box::pin(async move {
            let mut writer = self.writer.take().unwrap_or_else(|| Writer::new(self.opts.clone()));
            let mut buf = std::mem::take(&mut writer.buf);
            buf.clear();
            for record in records {
                buf.extend_from_slice(record);
                buf.push(b'\n');
            }
            let task = tokio::task::spawn_blocking(move || {
                let result = writer.write(&buf);
                writer.buf = buf;
                (writer, result)
            });
            let result = match task.await {
                Ok((writer, result)) => {
                    self.writer = Some(writer);
                    result
                }
                Err(e) => Err(format!("the write task failed: {e}")),
            };
            match result {
                Ok(()) => Delivery { outcome: Outcome::Sent, code: "write".into() },
                Err(reason) => Delivery { outcome: Outcome::Retry { after: None, reason }, code: "error".into() },
            }
        })
    }
}

/// The open file and what is known about it; lives in the blocking pool
/// during a write.
struct Writer {
    opts: FileSinkOptions,
    file: Option<File>,
    /// The file's size as this writer knows it.
    size: u64,
    /// The millisecond the last backup was named after: the next one is
    /// named later even when the clock says otherwise, so names sort by
    /// age and pruning always removes the oldest.
    last_backup_ms: Option<i64>,
    /// The batch's lines, reused.
    buf: Vec<u8>,
}

impl Writer {
    fn new(opts: FileSinkOptions) -> Writer {
        Writer { opts, file: None, size: 0, last_backup_ms: None, buf: Vec::new() }
    }

    fn path(&self) -> Option<&Path> {
        match &self.opts.target {
            FileTarget::Path(path) => Some(path),
            FileTarget::Stdout => None,
        }
    }

    /// Creates the parent folders and opens the file for appending.
    fn open(&mut self) -> Result<(), String> {
        let Some(path) = self.path() else {
            return Ok(());
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        let size = file.metadata().map_err(|e| format!("reading the size of {}: {e}", path.display()))?.len();
        self.file = Some(file);
        self.size = size;
        Ok(())
    }

    /// Writes one batch's lines, rotating first if they would not fit.
    fn write(&mut self, lines: &[u8]) -> Result<(), String> {
        let Some(path) = self.path().map(Path::to_path_buf) else {
            let mut out = io::stdout().lock();
            return out.write_all(lines).and_then(|()| out.flush()).map_err(|e| format!("writing to stdout: {e}"));
        };
        if self.file.is_none() {
            self.open()?;
        }
        let len = lines.len() as u64;
        if self.size > 0 && self.size.saturating_add(len) > self.opts.max_size_bytes {
            self.rotate(&path)?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(format!("{} is not open", path.display()));
        };
        if let Err(e) = file.write_all(lines) {
            // Take back a partial batch so the retry does not leave half a
            // line; reopen next time.
            if let Err(undo) = file.set_len(self.size) {
                log::warn!("file sink {}: removing a partly written batch: {undo}", path.display());
            }
            self.file = None;
            return Err(format!("writing to {}: {e}", path.display()));
        }
        self.size += len;
        Ok(())
    }

    /// Renames the file to a backup, opens a fresh one, compresses the
    /// backup if asked, and deletes backups beyond `max_backups`.
    fn rotate(&mut self, path: &Path) -> Result<(), String> {
        self.file = None;
        let now = unix_ms(SystemTime::now());
        let earliest = self.last_backup_ms.map_or(now, |last| now.max(last.saturating_add(1)));
        let (backup, ms) =
            free_backup_name(path, earliest).ok_or_else(|| format!("no free backup name for {}", path.display()))?;
        self.last_backup_ms = Some(ms);
        fs::rename(path, &backup)
            .map_err(|e| format!("renaming {} to {} to rotate it: {e}", path.display(), backup.display()))?;
        self.open()?;
        if self.opts.compress && self.opts.max_backups > 0 {
            match compress(&backup) {
                Ok(gz) => log::debug!("file sink: rotated {} to {}", path.display(), gz.display()),
                Err(e) => log::warn!("file sink: compressing {} failed ({e}); kept it uncompressed", backup.display()),
            }
        }
        prune_backups(path, self.opts.max_backups);
        Ok(())
    }
}

/// `flows.log` → (`flows`, `.log`); `flows` → (`flows`, ``).
fn name_parts(path: &Path) -> Option<(OsString, OsString)> {
    let stem = path.file_stem()?.to_os_string();
    let ext = match path.extension() {
        Some(ext) => {
            let mut dotted = OsString::from(".");
            dotted.push(ext);
            dotted
        }
        None => OsString::new(),
    };
    Some((stem, ext))
}

/// Lumberjack's backup timestamp for a Unix time in milliseconds:
/// `2026-12-04T15-03-05.123` (UTC).
fn backup_timestamp(unix_ms: i64) -> String {
    let whole = prost_types::Timestamp { seconds: unix_ms.div_euclid(1000), nanos: 0 }.to_string();
    let base = whole.trim_end_matches('Z').replace(':', "-");
    format!("{base}.{:03}", unix_ms.rem_euclid(1000))
}

/// Whether `s` has the shape of a backup timestamp.
fn is_backup_timestamp(s: &str) -> bool {
    s.len() == TIMESTAMP_LEN
        && s.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 | 13 | 16 => b == b'-',
            10 => b == b'T',
            19 => b == b'.',
            _ => b.is_ascii_digit(),
        })
}

/// The backup path for `path` at `ts`: `flows-<ts>.log`.
fn backup_path(path: &Path, stem: &OsString, ext: &OsString, ts: &str) -> PathBuf {
    let mut name = stem.clone();
    name.push("-");
    name.push(ts);
    name.push(ext);
    path.with_file_name(name)
}

/// `name` + `.gz`.
fn gz_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".gz");
    PathBuf::from(name)
}

/// Milliseconds since the Unix epoch (negative before it).
fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// A backup name for `path` at `ms` (Unix milliseconds) or the first
/// later millisecond whose name is not taken, compressed or not; with the
/// millisecond used.
fn free_backup_name(path: &Path, ms: i64) -> Option<(PathBuf, i64)> {
    let (stem, ext) = name_parts(path)?;
    // A name that cannot be checked counts as taken.
    let taken = |p: &Path| p.try_exists().unwrap_or(true);
    (0..NAME_ATTEMPTS).map(|bump| ms.saturating_add(bump)).find_map(|ms| {
        let candidate = backup_path(path, &stem, &ext, &backup_timestamp(ms));
        (!taken(&candidate) && !taken(&gz_path(&candidate))).then_some((candidate, ms))
    })
}

/// Gzips `backup` to `backup.gz` and removes `backup`. On failure the
/// partial `.gz` is removed and `backup` is left as it was.
fn compress(backup: &Path) -> io::Result<PathBuf> {
    let gz = gz_path(backup);
    let written = (|| {
        let mut input = File::open(backup)?;
        let output = OpenOptions::new().write(true).create_new(true).open(&gz)?;
        let mut encoder = GzEncoder::new(BufWriter::new(output), Compression::default());
        io::copy(&mut input, &mut encoder)?;
        encoder.finish()?.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()
    })();
    if let Err(e) = written {
        if let Err(cleanup) = fs::remove_file(&gz)
            && cleanup.kind() != io::ErrorKind::NotFound
        {
            log::warn!("file sink: removing the partial {}: {cleanup}", gz.display());
        }
        return Err(e);
    }
    fs::remove_file(backup)?;
    Ok(gz)
}

/// The backups of `path` in its folder, newest first: files named
/// `<stem>-<timestamp><ext>` or that plus `.gz`, nothing else.
fn backups(path: &Path) -> Vec<PathBuf> {
    let Some((stem, ext)) = name_parts(path) else {
        return Vec::new();
    };
    let (Some(stem), Some(ext)) = (stem.to_str(), ext.to_str()) else {
        return Vec::new();
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            log::warn!("file sink: listing {} for old backups: {e}", dir.display());
            return Vec::new();
        }
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let rest = name.strip_prefix(stem)?.strip_prefix('-')?;
            let rest = rest.strip_suffix(".gz").unwrap_or(rest);
            let ts = rest.strip_suffix(ext)?;
            is_backup_timestamp(ts).then(|| (ts.to_owned(), entry.path()))
        })
        .collect();
    // Fixed-width UTC timestamps sort by time.
    found.sort_by(|a, b| b.cmp(a));
    found.into_iter().map(|(_, path)| path).collect()
}

/// Deletes all but the newest `keep` backups of `path`.
fn prune_backups(path: &Path, keep: usize) {
    for old in backups(path).into_iter().skip(keep) {
        match fs::remove_file(&old) {
            Ok(()) => log::debug!("file sink: removed old backup {}", old.display()),
            Err(e) => log::warn!("file sink: removing old backup {}: {e}", old.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::{Duration, Instant};

    use flate2::read::GzDecoder;

    use super::*;
    use crate::spool::tests::TempDir;

    fn sink(path: &Path, max_size: u64, max_backups: usize, compress: bool) -> FileSink {
        FileSink::new(FileSinkOptions {
            target: FileTarget::Path(path.to_owned()),
            max_size_bytes: max_size,
            max_backups,
            compress,
        })
        .expect("file sink")
    }

    /// `n` records: `{"n":<first + i>}` padded to 30 bytes (31 with the
    /// newline).
    fn records(first: usize, n: usize) -> Vec<Vec<u8>> {
        (first..first + n).map(|i| format!("{{\"n\":{i:>24}}}").into_bytes()).collect()
    }

    async fn send_ok(sink: &mut FileSink, records: &[Vec<u8>]) {
        let delivery = sink.send(records).await;
        assert_eq!(delivery, Delivery { outcome: Outcome::Sent, code: "write".into() });
    }

    fn lines(bytes: &[u8]) -> Vec<String> {
        String::from_utf8(bytes.to_vec()).expect("utf8").lines().map(str::to_owned).collect()
    }

    fn expected_lines(first: usize, n: usize) -> Vec<String> {
        records(first, n).into_iter().map(|r| String::from_utf8(r).expect("utf8")).collect()
    }

    /// Files named `flows-<23 characters>[.log][.gz]`, sorted by name.
    fn backup_files(dir: &Path) -> Vec<PathBuf> {
        let mut names: Vec<PathBuf> = fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    let rest = n.strip_prefix("flows-").unwrap_or_default();
                    let rest = rest.strip_suffix(".gz").unwrap_or(rest);
                    let rest = rest.strip_suffix(".log").unwrap_or(rest);
                    rest.len() == TIMESTAMP_LEN
                })
            })
            .collect();
        names.sort();
        names
    }

    fn gunzip(path: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        GzDecoder::new(File::open(path).expect("open gz")).read_to_end(&mut out).expect("valid gzip");
        out
    }

    #[tokio::test]
    async fn one_line_per_record() {
        let dir = TempDir::new("file-lines");
        let path = dir.path().join("deep/er/flows.log");
        let mut sink = sink(&path, DEFAULT_MAX_SIZE_BYTES, 5, false);
        send_ok(&mut sink, &records(0, 3)).await;
        send_ok(&mut sink, &records(3, 2)).await;
        let text = fs::read(&path).expect("read");
        assert_eq!(lines(&text), expected_lines(0, 5));
        assert!(text.ends_with(b"}\n"));
        assert_eq!(text.len(), 5 * 31);
        assert_eq!((sink.max_batch_bytes(), sink.max_batch_records()), (1 << 20, 4096));
    }

    #[tokio::test]
    async fn an_existing_file_is_appended_to_and_rotated_when_it_grows() {
        let dir = TempDir::new("file-append");
        let path = dir.path().join("flows.log");
        fs::write(&path, b"{\"old\":true}\n").expect("seed");
        let mut first = sink(&path, 100, 5, false);
        send_ok(&mut first, &records(0, 2)).await;
        drop(first);
        let text = fs::read(&path).expect("read");
        assert_eq!(lines(&text)[0], "{\"old\":true}");
        assert_eq!(lines(&text)[1..], expected_lines(0, 2));
        // 13 + 62 bytes: two more lines would pass 100 bytes.
        let mut second = sink(&path, 100, 5, false);
        send_ok(&mut second, &records(2, 2)).await;
        assert_eq!(lines(&fs::read(&path).expect("read")), expected_lines(2, 2));
        let backups = backup_files(dir.path());
        assert_eq!(backups.len(), 1);
        assert_eq!(fs::read(&backups[0]).expect("read"), text);
    }

    #[tokio::test]
    async fn rotation_happens_at_the_size_limit_and_keeps_max_backups() {
        let dir = TempDir::new("file-rotate");
        let path = dir.path().join("flows.log");
        // Unrelated files that look close to backups are never touched.
        let unrelated =
            ["flows.log.1", "flows-2020-01-01T00-00-00.000.txt", "other-2020-01-01T00-00-00.000.log", "flows-x.log"];
        for name in unrelated {
            fs::write(dir.path().join(name), "keep").expect("write");
        }
        // 3 lines (93 bytes) fit in 100; the fourth rotates.
        let mut sink = sink(&path, 100, 3, false);
        let mut written = Vec::new();
        for batch in 0..8 {
            send_ok(&mut sink, &records(batch * 3, 3)).await;
            let size = fs::metadata(&path).expect("stat").len();
            assert_eq!(size, 93, "batch {batch}: the current file holds exactly this batch");
            assert_eq!(backup_files(dir.path()).len(), batch.min(3), "batch {batch}: one rotation per batch");
            written.push(expected_lines(batch * 3, 3));
        }
        for name in unrelated {
            assert_eq!(fs::read_to_string(dir.path().join(name)).expect("unrelated"), "keep");
        }
        let backups = backup_files(dir.path());
        for backup in &backups {
            let name = backup.file_name().and_then(|n| n.to_str()).expect("name");
            let ts = name.strip_prefix("flows-").and_then(|n| n.strip_suffix(".log")).expect("pattern");
            assert!(is_backup_timestamp(ts), "{name}");
        }
        // The newest three backups, oldest first (the names sort by time).
        for (backup, lines_expected) in backups.iter().zip(&written[4..7]) {
            assert_eq!(&lines(&fs::read(backup).expect("read")), lines_expected);
        }
        assert_eq!(lines(&fs::read(&path).expect("read")), written[7]);
    }

    #[tokio::test]
    async fn compressed_backups_hold_what_was_written() {
        let dir = TempDir::new("file-gzip");
        let path = dir.path().join("flows.log");
        let mut sink = sink(&path, 100, 2, true);
        let mut written = Vec::new();
        for batch in 0..4 {
            send_ok(&mut sink, &records(batch * 3, 3)).await;
            written.push(fs::read(&path).expect("read"));
        }
        let backups = backup_files(dir.path());
        assert_eq!(backups.len(), 2, "{backups:?}");
        for (backup, content) in backups.iter().zip(&written[1..3]) {
            assert!(backup.to_str().is_some_and(|p| p.ends_with(".log.gz")), "{}", backup.display());
            assert_eq!(&gunzip(backup), content);
        }
    }

    #[tokio::test]
    async fn no_backups_and_paths_without_extension() {
        let dir = TempDir::new("file-noext");
        let path = dir.path().join("flows");
        let mut keep_none = sink(&path, 40, 0, true);
        for batch in 0..3 {
            send_ok(&mut keep_none, &records(batch, 1)).await;
        }
        assert!(backup_files(dir.path()).is_empty(), "max_backups = 0 keeps none");
        let mut keep_two = sink(&path, 40, 2, false);
        for batch in 3..6 {
            send_ok(&mut keep_two, &records(batch, 1)).await;
        }
        let backups = backup_files(dir.path());
        assert_eq!(backups.len(), 2);
        for backup in &backups {
            let name = backup.file_name().and_then(|n| n.to_str()).expect("name");
            assert!(name.strip_prefix("flows-").is_some_and(is_backup_timestamp), "{name}");
        }
    }

    #[test]
    fn backups_in_the_same_millisecond_get_distinct_names() {
        let dir = TempDir::new("file-same-ms");
        let path = dir.path().join("flows.log");
        let now = unix_ms(UNIX_EPOCH + Duration::from_millis(1_796_396_585_123));
        let (first, ms) = free_backup_name(&path, now).expect("name");
        assert_eq!(first.file_name().and_then(|n| n.to_str()), Some("flows-2026-12-04T15-03-05.123.log"));
        assert_eq!(ms, now);
        fs::write(&first, "a").expect("write");
        let (second, ms) = free_backup_name(&path, now).expect("name");
        assert_eq!(second.file_name().and_then(|n| n.to_str()), Some("flows-2026-12-04T15-03-05.124.log"));
        assert_eq!(ms, now + 1);
        // A compressed backup takes its name too.
        fs::write(gz_path(&second), "b").expect("write");
        let (third, _) = free_backup_name(&path, now).expect("name");
        assert_eq!(third.file_name().and_then(|n| n.to_str()), Some("flows-2026-12-04T15-03-05.125.log"));
        assert_eq!(backup_timestamp(1_796_396_585_000), "2026-12-04T15-03-05.000");
        assert_eq!(backup_timestamp(999), "1970-01-01T00-00-00.999");
    }

    #[tokio::test]
    async fn fast_rotations_never_overwrite_a_backup() {
        let dir = TempDir::new("file-fast");
        let path = dir.path().join("flows.log");
        // Every batch rotates; many land in the same millisecond.
        let mut sink = sink(&path, 10, 100, false);
        for batch in 0..30 {
            send_ok(&mut sink, &records(batch, 1)).await;
        }
        let backups = backup_files(dir.path());
        assert_eq!(backups.len(), 29);
        let mut all: Vec<String> = backups.iter().flat_map(|b| lines(&fs::read(b).expect("read"))).collect();
        all.extend(lines(&fs::read(&path).expect("read")));
        assert_eq!(all, expected_lines(0, 30), "every line kept once, in order");
    }

    #[test]
    fn a_failed_compression_keeps_the_backup() {
        let dir = TempDir::new("file-gzip-fail");
        let backup = dir.path().join("flows-2026-12-04T15-03-05.123.log");
        fs::write(&backup, "line\n").expect("write");
        // The .gz name is taken by a folder: compression cannot write it.
        fs::create_dir(gz_path(&backup)).expect("mkdir");
        assert!(compress(&backup).is_err());
        assert_eq!(fs::read_to_string(&backup).expect("kept"), "line\n");
        fs::remove_dir(gz_path(&backup)).expect("rmdir");
        let gz = compress(&backup).expect("compress");
        assert!(!backup.exists());
        assert_eq!(gunzip(&gz), b"line\n");
    }

    #[tokio::test]
    async fn an_unwritable_path_asks_for_a_retry_then_recovers() {
        let dir = TempDir::new("file-unwritable");
        let blocker = dir.path().join("not-a-folder");
        fs::write(&blocker, "a regular file").expect("write");
        let path = blocker.join("flows.log");
        let mut sink = sink(&path, 1000, 5, false);
        let delivery = sink.send(&records(0, 2)).await;
        assert_eq!(delivery.code, "error");
        let Outcome::Retry { after: None, reason } = delivery.outcome else {
            panic!("expected Retry, got {:?}", delivery.outcome);
        };
        assert!(reason.contains("not-a-folder"), "{reason}");
        // Fixed: the next send opens the file.
        fs::remove_file(&blocker).expect("remove");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if sink.send(&records(0, 2)).await.outcome == Outcome::Sent {
                break;
            }
            assert!(Instant::now() < deadline, "the sink did not recover");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(lines(&fs::read(&path).expect("read")), expected_lines(0, 2));
    }

    #[test]
    fn options_that_cannot_work_are_refused() {
        let err = FileSink::new(FileSinkOptions::new(FileTarget::Path(PathBuf::from("/")))).err();
        assert!(matches!(err, Some(FileSinkError::NoFileName { .. })), "{err:?}");
        let opts = FileSinkOptions { max_size_bytes: 0, ..FileSinkOptions::new(FileTarget::from_config("/tmp/x.log")) };
        assert!(matches!(FileSink::new(opts).err(), Some(FileSinkError::ZeroMaxSize { .. })));
        assert_eq!(FileTarget::from_config("stdout"), FileTarget::Stdout);
        let defaults = FileSinkOptions::new(FileTarget::Stdout);
        assert_eq!((defaults.max_size_bytes, defaults.max_backups, defaults.compress), (10 << 20, 5, false));
    }

    #[tokio::test]
    async fn stdout_is_written_without_rotation() {
        let mut sink = FileSink::new(FileSinkOptions::new(FileTarget::Stdout)).expect("sink");
        send_ok(&mut sink, &[b"{\"file_sink_test\":\"stdout\"}".to_vec()]).await;
    }
}
