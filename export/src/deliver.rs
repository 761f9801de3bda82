//! The back half of an exporter: batches out of the spool, through the
//! sink, until every record of a batch is either acknowledged or
//! dead-lettered; only then does the batch leave the spool.
//!
//! - `Retry` waits and sends the same records again: `Retry-After` when the
//!   service gave one (never sooner; a little jitter after it), otherwise an
//!   exponential back-off with jitter (250 ms doubling to 10 s: a sink that comes back is found within seconds);
//! - `TooLarge` sends the batch again in halves; a single record that is
//!   too large is dead-lettered;
//! - `Rejected` dead-letters the records into the spool's `rejected/`
//!   folder and counts them; they are never retried.
//!
//! A stop request ends the loop between attempts: what was not
//! acknowledged stays in the spool for the next run.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::metrics::ExporterMetrics;
use crate::sink::{Outcome, Sink};
use crate::spool::{Spool, SpooledRecord};

/// First back-off after a failure.
pub const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest back-off.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Why a delivery loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop.
    Stopped,
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The wait before the next attempt: `after` plus up to 10% (at most 1 s)
/// when the service said how long; otherwise half the back-off plus a
/// random part of the other half.
fn wait_for(after: Option<Duration>, backoff: Duration) -> Duration {
    match after {
        Some(after) => {
            let extra = (after / 10).min(Duration::from_secs(1));
            after + extra.mul_f64(fastrand::f64())
        }
        None => backoff / 2 + (backoff / 2).mul_f64(fastrand::f64()),
    }
}

/// How long delivery waits, each time, while the front of the exporter is
/// behind.
pub const GIVE_WAY: Duration = Duration::from_millis(5);

/// Delivers the spool's records through `sink` until `stop` turns true.
/// Before each batch it waits while `behind()` says the exporter's front
/// (pipeline into the spool) is falling behind: on a busy machine, draining
/// a backlog must not take the CPU that keeps new flows from being dropped
/// before they reach the spool.
pub async fn run(
    spool: Spool,
    mut sink: Box<dyn Sink>,
    metrics: ExporterMetrics,
    mut stop: watch::Receiver<bool>,
    behind: impl Fn() -> bool + Send,
) -> Ended {
    let mut backoff = BACKOFF_START;
    loop {
        if *stop.borrow() {
            return Ended::Stopped;
        }
        while behind() {
            tokio::select! {
                () = tokio::time::sleep(GIVE_WAY) => {}
                _ = stop.changed() => return Ended::Stopped,
            }
        }
        let mut batch = tokio::select! {
            batch = spool.read(sink.max_batch_records(), sink.max_batch_bytes()) => batch,
            _ = stop.changed() => return Ended::Stopped,
        };
        let times: Vec<i64> = batch.records.iter().map(|r| r.time_ns).collect();
        let payloads: Vec<Vec<u8>> = batch.records.iter_mut().map(|r| std::mem::take(&mut r.payload)).collect();
        // Ranges still to send, in order; a range that is too large is
        // replaced by its halves.
        let mut pending: Vec<std::ops::Range<usize>> = Vec::with_capacity(4);
        pending.push(0..payloads.len());
        while let Some(range) = pending.first().cloned() {
            if *stop.borrow() {
                return Ended::Stopped;
            }
            let delivery = sink.send(&payloads[range.clone()]).await;
            metrics.request(&delivery.code);
            match delivery.outcome {
                Outcome::Sent => {
                    pending.remove(0);
                    backoff = BACKOFF_START;
                    metrics.sent.inc_by(range.len() as u64);
                    let now = now_ns();
                    for &t in &times[range] {
                        if t > 0 {
                            metrics.delay.observe(((now - t).max(0)) as f64 / 1e9);
                        }
                    }
                }
                Outcome::TooLarge if range.len() > 1 => {
                    let mid = range.start + range.len() / 2;
                    pending.splice(0..1, [range.start..mid, mid..range.end]);
                }
                Outcome::TooLarge => {
                    pending.remove(0);
                    dead_letter(&spool, &metrics, &times, &payloads, range, "RecordTooLarge", "one record is larger than a request may be");
                }
                Outcome::Rejected { error_code, message } => {
                    pending.remove(0);
                    log::warn!("export: the sink refused {} record(s) for good ({error_code}): {message}", range.len());
                    dead_letter(&spool, &metrics, &times, &payloads, range, &error_code, &message);
                }
                Outcome::Retry { after, reason } => {
                    metrics.retries.inc();
                    let wait = wait_for(after, backoff);
                    log::debug!("export: delivery failed ({}: {reason}); next attempt in {wait:?}", delivery.code);
                    if after.is_none() {
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return Ended::Stopped,
                    }
                }
            }
        }
        if let Err(e) = spool.ack(&batch) {
            log::warn!("export: acknowledging delivered records in the spool: {e}");
        }
        let stats = spool.stats();
        metrics.spool_bytes.set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
        metrics.spool_records.set(i64::try_from(stats.records).unwrap_or(i64::MAX));
    }
}

fn dead_letter(
    spool: &Spool,
    metrics: &ExporterMetrics,
    times: &[i64],
    payloads: &[Vec<u8>],
    range: std::ops::Range<usize>,
    code: &str,
    reason: &str,
) {
    let records: Vec<SpooledRecord> =
        range.clone().map(|i| SpooledRecord { time_ns: times[i], payload: payloads[i].clone() }).collect();
    if let Err(e) = spool.dead_letter(&records, code, reason) {
        log::warn!("export: writing {} rejected record(s) to the dead-letter folder: {e}", records.len());
    }
    metrics.rejected.inc_by(records.len() as u64);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::sink::{Delivery, Outcome, SendFuture, Sink};

    struct Counting(Arc<AtomicUsize>);

    impl Sink for Counting {
        fn max_batch_bytes(&self) -> usize {
            1 << 20
        }

        fn max_batch_records(&self) -> usize {
            10
        }

        fn send<'a>(&'a mut self, records: &'a [Vec<u8>]) -> SendFuture<'a> {
            self.0.fetch_add(records.len(), Ordering::SeqCst);
            Box::pin(async { Delivery { outcome: Outcome::Sent, code: "200".to_owned() } })
        }
    }

    #[tokio::test]
    async fn delivery_gives_way_while_the_front_is_behind() {
        let spool = Spool::memory(1 << 20);
        spool.append(&[(1, b"a".as_slice()), (2, b"b".as_slice())]).expect("append");
        let sent = Arc::new(AtomicUsize::new(0));
        let behind = Arc::new(AtomicBool::new(true));
        let (stop_tx, stop) = watch::channel(false);
        let flag = Arc::clone(&behind);
        let task = tokio::spawn(run(
            spool.clone(),
            Box::new(Counting(Arc::clone(&sent))),
            crate::metrics::ExportMetrics::unregistered().exporter("t"),
            stop,
            move || flag.load(Ordering::SeqCst),
        ));
        // While the front stays behind (many give-way periods), nothing is
        // sent…
        tokio::time::sleep(GIVE_WAY * 60).await;
        assert_eq!(sent.load(Ordering::SeqCst), 0);
        // …and once it has caught up, the backlog goes.
        behind.store(false, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sent.load(Ordering::SeqCst) < 2 {
            assert!(tokio::time::Instant::now() < deadline, "the backlog was not delivered");
            tokio::time::sleep(GIVE_WAY).await;
        }
        let _ = stop_tx.send(true);
        assert_eq!(task.await.expect("delivery task"), Ended::Stopped);
    }
}
