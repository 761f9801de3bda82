//! Sinks: where encoded records go. A sink sends one batch of records (the
//! payloads its encoder made, in spool order) as one delivery and says how
//! it went; retrying, splitting and dead-lettering are the delivery loop's
//! business (`deliver`), not the sink's.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub mod azure;
pub mod file;
pub mod otlp;

/// A boxed future of a sink's delivery.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Delivery> + Send + 'a>>;

/// A destination for encoded records.
pub trait Sink: Send + 'static {
    /// The most payload bytes one delivery may carry (the sum of the
    /// records' payload lengths); the delivery loop reads batches up to it.
    fn max_batch_bytes(&self) -> usize;

    /// The most records one delivery may carry.
    fn max_batch_records(&self) -> usize;

    /// Sends `records` (encoded payloads, in order) as one delivery.
    fn send<'a>(&'a mut self, records: &'a [Vec<u8>]) -> SendFuture<'a>;
}

/// How one delivery went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub outcome: Outcome,
    /// The `code` label of `sightline_export_requests_total`: the HTTP
    /// status (`204`, `429`, …), the gRPC code name (`OK`, `UNAVAILABLE`,
    /// …), `write` for a file, or `error` when no request was answered
    /// (connection refused, timeout, TLS failure).
    pub code: String,
}

/// What the delivery loop does next with a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged: the records leave the spool.
    Sent,
    /// Not delivered; send the same batch again later: after `after` when
    /// the service said how long to wait (`Retry-After`), never sooner;
    /// otherwise after an exponential back-off with jitter.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// The batch is too large for one request (HTTP 413, or over a size
    /// limit found while encoding it): send it again in halves.
    TooLarge,
    /// The service refused the batch for good (HTTP 400, 403, 404): the
    /// records go to the spool's `rejected/` folder and are counted; they
    /// are never retried. `error_code` is the service's (Azure's
    /// `x-ms-error-code` or `error.code`), `message` its explanation.
    Rejected { error_code: String, message: String },
}
