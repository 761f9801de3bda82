//! The OTLP sink: sends records to an OpenTelemetry logs endpoint (a
//! Collector, a vendor's OTLP intake) with the `opentelemetry-otlp`
//! exporter, over gRPC or HTTP/protobuf.
//!
//! Each record the `otlp` encoder made is one prost-encoded
//! `opentelemetry.proto.logs.v1.LogRecord`. A delivery decodes them, turns
//! each into an SDK [`SdkLogRecord`] (timestamps, severity, body, every
//! attribute, trace context when present), and exports them as one
//! `ExportLogsServiceRequest` under the configured resource and the
//! instrumentation scope `sightline`. A record that does not decode is
//! skipped, logged and counted ([`OtlpSink::skipped_records`]); it never
//! fails the rest of its batch.
//!
//! The exporter is built with its own retries disabled (opentelemetry-otlp
//! 0.33 retries up to 3 times by default): one delivery is one request, and
//! the delivery loop owns retrying. HTTP goes through Sightline's own
//! `reqwest` client (rustls with ring, the system's roots plus `caFile`);
//! gRPC through tonic (rustls with ring, the same roots).
//!
//! How an export error becomes an [`Outcome`]: HTTP `400`/`403`/`404` and
//! gRPC `INVALID_ARGUMENT`/`PERMISSION_DENIED`/`NOT_FOUND`/`UNIMPLEMENTED`
//! answered by the service are [`Outcome::Rejected`] (the spec's "refused
//! for good"); HTTP `413` is [`Outcome::TooLarge`]; everything else
//! (`429`, `5xx`, `UNAVAILABLE`, connection refused, TLS failures,
//! timeouts) is [`Outcome::Retry`], with HTTP's `Retry-After` (seconds)
//! when the service gave one.
//!
//! The exporter still reads `OTEL_EXPORTER_OTLP_[LOGS_]HEADERS` (added to
//! the configured headers) and `OTEL_EXPORTER_OTLP_[LOGS_]COMPRESSION` (gzip
//! is not built in, so setting it makes [`OtlpSink::new`] fail) from the
//! environment; endpoint, protocol and timeout come only from the options.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::{InstrumentationScope, Key, KeyValue, SpanId, TraceFlags, TraceId};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{RetryPolicy, WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_proto::tonic::common::v1 as proto_common;
use opentelemetry_proto::tonic::logs::v1 as proto_logs;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, SdkLogRecord, SdkLogger, SdkLoggerProvider};
use prost::Message as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use super::{Delivery, Outcome, SendFuture, Sink};

/// The most records one delivery carries.
pub const MAX_BATCH_RECORDS: usize = 1000;

/// The most payload bytes one delivery carries: 1 MiB, well under gRPC's
/// default 4 MiB message limit once the resource and framing are added.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// How long one export may take unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The instrumentation scope of every exported record.
pub const SCOPE_NAME: &str = "sightline";

/// The path OTLP/HTTP logs are posted to when the endpoint has none.
pub const HTTP_LOGS_PATH: &str = "/v1/logs";

/// The largest response body the HTTP client reads (as opentelemetry-http's
/// own clients do).
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// How much longer than the configured timeout a delivery may take before
/// the sink gives up on it (the exporter's own timeout should fire first).
const TIMEOUT_GRACE: Duration = Duration::from_secs(2);

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`…:4317`).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`…:4318`, path `/v1/logs`).
    HttpProtobuf,
}

/// What the `otlp` sink is configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpOptions {
    /// `http(s)://host:4317` for gRPC; `http(s)://host:4318` for
    /// HTTP/protobuf, where an endpoint without a path gets `/v1/logs`
    /// appended (as the OpenTelemetry specification says for
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`) and a path that is given is used as
    /// it is.
    pub endpoint: String,
    /// The transport.
    pub protocol: OtlpProtocol,
    /// Sent with every request as gRPC metadata or HTTP headers (e.g. an
    /// API key). Names and values are checked by [`OtlpSink::new`].
    pub headers: BTreeMap<String, String>,
    /// An extra trust anchor (PEM, one or more certificates) for `https`
    /// endpoints, besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// How long one export may take.
    pub timeout: Duration,
    /// The resource's attributes, e.g. `service.name=sightline-relay`,
    /// `k8s.cluster.name=default`.
    pub resource: Vec<(String, String)>,
}

impl OtlpOptions {
    /// Options for `endpoint` over `protocol`: no headers, no CA file, the
    /// default timeout, no resource attributes.
    #[must_use]
    pub fn new(endpoint: impl Into<String>, protocol: OtlpProtocol) -> Self {
        Self {
            endpoint: endpoint.into(),
            protocol,
            headers: BTreeMap::new(),
            ca_file: None,
            timeout: DEFAULT_TIMEOUT,
            resource: Vec::new(),
        }
    }
}

/// Why an OTLP sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("parsing the endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("checking header {name:?}: {reason}")]
    Header { name: String, reason: String },
    #[error("reading the CA file {path}: {source}")]
    ReadCaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the CA file {path}: {reason}")]
    ParseCaFile { path: PathBuf, reason: String },
    #[error("building the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("building the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("building the gRPC exporter: it needs a Tokio runtime, and none is running")]
    NoRuntime,
    #[error("building the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Sends records to an OTLP logs endpoint.
pub struct OtlpSink {
    exporter: opentelemetry_otlp::LogExporter,
    /// Kept alive for `logger`, which makes the records.
    _provider: SdkLoggerProvider,
    logger: SdkLogger,
    scope: InstrumentationScope,
    protocol: OtlpProtocol,
    /// The status and `Retry-After` of the last HTTP response.
    last_http: Arc<Mutex<Option<HttpAnswer>>>,
    deadline: Duration,
    skipped: u64,
}

impl std::fmt::Debug for OtlpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpSink")
            .field("protocol", &self.protocol)
            .field("deadline", &self.deadline)
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

/// How the last HTTP request went, as the client saw it (the exporter's
/// error keeps only the status, and says "network error" for the rest).
#[derive(Clone, Debug, PartialEq, Eq)]
enum HttpAnswer {
    /// The service answered with this status.
    Status { status: u16, retry_after: Option<Duration> },
    /// No answer: why (connection refused, TLS, timeout, …).
    Failed(String),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl OtlpSink {
    /// Builds the sink. It does not connect: a receiver that is down now is
    /// found out by the first delivery. For gRPC this must be called inside
    /// a Tokio runtime (tonic's lazy channel spawns a task on it).
    ///
    /// # Errors
    ///
    /// [`OtlpError`] for an endpoint that is not `http(s)://host[:port]…`,
    /// a header name or value that cannot be sent, an unreadable or
    /// certificate-less CA file, or no Tokio runtime (gRPC).
    pub fn new(opts: OtlpOptions) -> Result<Self, OtlpError> {
        let endpoint = resolve_endpoint(&opts.endpoint, opts.protocol)?;
        let https = endpoint.scheme() == "https";
        let extra_roots = match &opts.ca_file {
            Some(path) => read_ca_file(path)?,
            None => Vec::new(),
        };
        if !https && !extra_roots.is_empty() {
            log::debug!("OTLP sink: caFile is ignored for the plain-http endpoint {endpoint}");
        }
        let last_http = Arc::new(Mutex::new(None));
        let mut exporter = match opts.protocol {
            OtlpProtocol::Grpc => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(OtlpError::NoRuntime);
                }
                let metadata = grpc_metadata(&opts.headers)?;
                let mut builder = opentelemetry_otlp::LogExporter::builder()
                    .with_tonic()
                    .with_endpoint(opts.endpoint.trim())
                    .with_timeout(opts.timeout)
                    .with_retry_policy(RetryPolicy::disabled())
                    .with_metadata(metadata);
                if https {
                    let roots = root_store(extra_roots)?;
                    let tls = tonic::transport::ClientTlsConfig::new().trust_anchors(roots.roots).timeout(opts.timeout);
                    builder = builder.with_tls_config(tls);
                }
                builder.build()?
            }
            OtlpProtocol::HttpProtobuf => {
                let headers = http_headers(&opts.headers)?;
                let roots = root_store(extra_roots)?;
                let tls =
                    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                        .with_safe_default_protocol_versions()?
                        .with_root_certificates(roots)
                        .with_no_client_auth();
                let client = reqwest::Client::builder()
                    .tls_backend_preconfigured(tls)
                    .timeout(opts.timeout)
                    .connect_timeout(opts.timeout)
                    .build()?;
                opentelemetry_otlp::LogExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(endpoint.as_str())
                    .with_timeout(opts.timeout)
                    .with_retry_policy(RetryPolicy::disabled())
                    .with_headers(headers)
                    .with_http_client(ReqwestClient { client, last: Arc::clone(&last_http) })
                    .build()?
            }
        };
        let resource = Resource::builder_empty()
            .with_attributes(opts.resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
            .build();
        exporter.set_resource(&resource);
        let provider = SdkLoggerProvider::builder().build();
        let scope = InstrumentationScope::builder(SCOPE_NAME).build();
        let logger = provider.logger_with_scope(scope.clone());
        Ok(Self {
            exporter,
            _provider: provider,
            logger,
            scope,
            protocol: opts.protocol,
            last_http,
            deadline: opts.timeout.saturating_add(TIMEOUT_GRACE),
            skipped: 0,
        })
    }

    /// How many records did not decode as a `LogRecord` and were skipped
    /// since the sink was built.
    #[must_use]
    pub fn skipped_records(&self) -> u64 {
        self.skipped
    }

    async fn deliver(&mut self, records: &[Vec<u8>]) -> Delivery {
        let mut logs = Vec::with_capacity(records.len());
        let mut skipped = Vec::new();
        for (index, payload) in records.iter().enumerate() {
            match decode_record(&self.logger, payload) {
                Ok(record) => logs.push(record),
                Err(error) => skipped.push((index, error)),
            }
        }
        self.skipped = self.skipped.saturating_add(u64::try_from(skipped.len()).unwrap_or(u64::MAX));
        for (index, error) in &skipped {
            log::warn!(
                "OTLP sink: skipping record {index} of {}: it does not decode as a LogRecord: {error}",
                records.len()
            );
        }
        if logs.is_empty() {
            if skipped.is_empty() {
                return Delivery { outcome: Outcome::Sent, code: self.success_code().to_owned() };
            }
            return Delivery {
                outcome: Outcome::Rejected {
                    error_code: "InvalidRecord".to_owned(),
                    message: format!("none of the {} records decodes as an OTLP LogRecord", records.len()),
                },
                code: "invalid".to_owned(),
            };
        }
        let pairs: Vec<(&SdkLogRecord, &InstrumentationScope)> = logs.iter().map(|log| (log, &self.scope)).collect();
        *lock(&self.last_http) = None;
        let result = tokio::time::timeout(self.deadline, self.exporter.export(LogBatch::new(&pairs))).await;
        let answer = lock(&self.last_http).take();
        match result {
            Ok(Ok(())) => Delivery { outcome: Outcome::Sent, code: self.success_code().to_owned() },
            Ok(Err(error)) => self.failure(&error.to_string(), answer),
            Err(_) => Delivery {
                outcome: Outcome::Retry {
                    after: None,
                    reason: format!("the export did not finish within {:?}", self.deadline),
                },
                code: "error".to_owned(),
            },
        }
    }

    fn success_code(&self) -> &'static str {
        match self.protocol {
            OtlpProtocol::Grpc => "OK",
            OtlpProtocol::HttpProtobuf => "200",
        }
    }

    fn failure(&self, message: &str, answer: Option<HttpAnswer>) -> Delivery {
        let reason = format!("exporting to OTLP: {message}");
        match self.protocol {
            OtlpProtocol::HttpProtobuf => {
                let answer = answer.or_else(|| {
                    http_status_from_message(message).map(|status| HttpAnswer::Status { status, retry_after: None })
                });
                match answer {
                    Some(HttpAnswer::Status { status, retry_after }) => {
                        let outcome = match status {
                            400 | 403 | 404 => Outcome::Rejected { error_code: status.to_string(), message: reason },
                            413 => Outcome::TooLarge,
                            _ => Outcome::Retry { after: retry_after, reason },
                        };
                        Delivery { outcome, code: status.to_string() }
                    }
                    Some(HttpAnswer::Failed(why)) => Delivery {
                        outcome: Outcome::Retry { after: None, reason: format!("exporting to OTLP: {why}") },
                        code: "error".to_owned(),
                    },
                    None => Delivery { outcome: Outcome::Retry { after: None, reason }, code: "error".to_owned() },
                }
            }
            OtlpProtocol::Grpc => match grpc_code_from_message(message) {
                Some((code, true)) => {
                    let outcome = match code {
                        tonic::Code::InvalidArgument
                        | tonic::Code::PermissionDenied
                        | tonic::Code::NotFound
                        | tonic::Code::Unimplemented => {
                            Outcome::Rejected { error_code: grpc_code_name(code).to_owned(), message: reason }
                        }
                        _ => Outcome::Retry { after: None, reason },
                    };
                    Delivery { outcome, code: grpc_code_name(code).to_owned() }
                }
                // Made up locally (connection refused, TLS, timeout): no
                // request was answered.
                Some((_, false)) | None => {
                    Delivery { outcome: Outcome::Retry { after: None, reason }, code: "error".to_owned() }
                }
            },
        }
    }
}

impl Sink for OtlpSink {
    fn max_batch_bytes(&self) -> usize {
        MAX_BATCH_BYTES
    }

    fn max_batch_records(&self) -> usize {
        MAX_BATCH_RECORDS
    }

    fn send<'a>(&'a mut self, records: &'a [Vec<u8>]) -> SendFuture<'a> {
        Box::pin(self.deliver(records))
    }
}

/// Checks the endpoint and, for HTTP, appends `/v1/logs` when it has no
/// path.
fn resolve_endpoint(endpoint: &str, protocol: OtlpProtocol) -> Result<reqwest::Url, OtlpError> {
    let fail = |reason: &str| OtlpError::Endpoint { endpoint: endpoint.to_owned(), reason: reason.to_owned() };
    let mut url = reqwest::Url::parse(endpoint.trim()).map_err(|error| fail(&error.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(fail("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(fail("there is no host"));
    }
    if protocol == OtlpProtocol::HttpProtobuf && matches!(url.path(), "" | "/") {
        url.set_path(HTTP_LOGS_PATH);
    }
    Ok(url)
}

/// Headers no configuration may set: the transports own them.
fn reserved_header(name: &str) -> bool {
    matches!(
        name,
        "content-type" | "content-length" | "content-encoding" | "transfer-encoding" | "host" | "connection" | "te"
    ) || name.starts_with("grpc-")
}

fn http_headers(headers: &BTreeMap<String, String>) -> Result<HashMap<String, String>, OtlpError> {
    let mut checked = HashMap::with_capacity(headers.len());
    for (name, value) in headers {
        let fail = |reason: String| OtlpError::Header { name: name.clone(), reason };
        let header =
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|error| fail(error.to_string()))?;
        if reserved_header(header.as_str()) {
            return Err(fail("the exporter sets this header itself".to_owned()));
        }
        reqwest::header::HeaderValue::from_str(value).map_err(|error| fail(error.to_string()))?;
        checked.insert(header.as_str().to_owned(), value.clone());
    }
    Ok(checked)
}

fn grpc_metadata(headers: &BTreeMap<String, String>) -> Result<tonic::metadata::MetadataMap, OtlpError> {
    let mut metadata = tonic::metadata::MetadataMap::new();
    for (name, value) in headers {
        let fail = |reason: String| OtlpError::Header { name: name.clone(), reason };
        let key = tonic::metadata::AsciiMetadataKey::from_bytes(name.as_bytes())
            .map_err(|error| fail(format!("{error} (binary \"-bin\" keys are not supported)")))?;
        if reserved_header(key.as_str()) {
            return Err(fail("gRPC sets this header itself".to_owned()));
        }
        let value =
            tonic::metadata::AsciiMetadataValue::try_from(value.as_str()).map_err(|error| fail(error.to_string()))?;
        metadata.insert(key, value);
    }
    Ok(metadata)
}

/// Reads the certificates of a PEM file.
fn read_ca_file(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, OtlpError> {
    let pem = std::fs::read(path).map_err(|source| OtlpError::ReadCaFile { path: path.clone(), source })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| OtlpError::ParseCaFile { path: path.clone(), reason: error.to_string() })?;
    if certs.is_empty() {
        return Err(OtlpError::ParseCaFile { path: path.clone(), reason: "it holds no certificate".to_owned() });
    }
    Ok(certs)
}

/// The system's roots (when there are any) plus `extra`, every one of
/// which must parse.
fn root_store(extra: Vec<CertificateDer<'static>>) -> Result<rustls::RootCertStore, OtlpError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        log::debug!("OTLP sink: loading the system's root certificates: {error}");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    log::debug!("OTLP sink: {added} system root certificates, {ignored} unparsable ones ignored");
    for cert in extra {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// Sightline's `reqwest` client as opentelemetry-otlp's HTTP client; it
/// also notes the status and `Retry-After` of each response, which the
/// exporter's error does not carry.
#[derive(Debug)]
struct ReqwestClient {
    client: reqwest::Client,
    last: Arc<Mutex<Option<HttpAnswer>>>,
}

#[tonic::async_trait]
impl HttpClient for ReqwestClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let failed = |why: String| *lock(&self.last) = Some(HttpAnswer::Failed(why));
        let mut response = match self.client.execute(request).await {
            Ok(response) => response,
            Err(error) => {
                failed(error_chain(&error));
                return Err(Box::new(error));
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len().saturating_add(chunk.len()) > MAX_RESPONSE_BYTES => {
                    let error = opentelemetry_http::ResponseBodyTooLarge::new();
                    failed(format!("reading the {status} response: {error}"));
                    return Err(Box::new(error));
                }
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(error) => {
                    failed(format!("reading the {status} response: {}", error_chain(&error)));
                    return Err(Box::new(error));
                }
            }
        }
        *lock(&self.last) = Some(HttpAnswer::Status { status: status.as_u16(), retry_after });
        let mut answer = Response::builder().status(status.as_u16()).body(Bytes::from(body))?;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}

/// An error and its sources, colon-separated.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The HTTP status in opentelemetry-otlp's error text ("… status code: 503").
fn http_status_from_message(message: &str) -> Option<u16> {
    let (_, rest) = message.split_once("status code: ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The gRPC code in opentelemetry-otlp's error text ("… gRPC code:
/// Unavailable[: source]"), and whether the service answered it (tonic
/// appends the source chain only to statuses it made up locally).
fn grpc_code_from_message(message: &str) -> Option<(tonic::Code, bool)> {
    let (_, rest) = message.split_once("gRPC code: ")?;
    let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
    let answered = rest[name.len()..].trim().is_empty();
    (0..=16).map(tonic::Code::from_i32).find(|code| format!("{code:?}") == name).map(|code| (code, answered))
}

/// A gRPC code's canonical name, as in `grpc-status` documentation.
#[must_use]
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Decodes one payload into an SDK record made by `logger`.
fn decode_record(logger: &SdkLogger, payload: &[u8]) -> Result<SdkLogRecord, prost::DecodeError> {
    let proto = proto_logs::LogRecord::decode(payload)?;
    let mut record = logger.create_log_record();
    let time = unix_nanos(proto.time_unix_nano);
    if let Some(time) = time {
        record.set_timestamp(time);
    }
    // The exporter requires an observed time (it unwraps it): fall back to
    // the record's time, then to now.
    let observed = unix_nanos(proto.observed_time_unix_nano).or(time).unwrap_or_else(SystemTime::now);
    record.set_observed_timestamp(observed);
    if let Some(severity) = severity(proto.severity_number) {
        record.set_severity_number(severity);
    }
    if !proto.severity_text.is_empty() {
        match static_text(&proto.severity_text) {
            Some(text) => record.set_severity_text(text),
            None => log::debug!("OTLP sink: dropping an unusual severity text {:?}", proto.severity_text),
        }
    }
    if !proto.event_name.is_empty() {
        match static_text(&proto.event_name) {
            Some(name) => record.set_event_name(name),
            None => log::debug!("OTLP sink: dropping an unusual event name {:?}", proto.event_name),
        }
    }
    if let Some(body) = proto.body.and_then(any_value) {
        record.set_body(body);
    }
    for kv in proto.attributes {
        if let Some(value) = kv.value.and_then(any_value) {
            record.add_attribute(Key::new(kv.key), value);
        }
    }
    if let (Ok(trace_id), Ok(span_id)) =
        (<[u8; 16]>::try_from(proto.trace_id.as_slice()), <[u8; 8]>::try_from(proto.span_id.as_slice()))
    {
        let flags = TraceFlags::new(u8::try_from(proto.flags & 0xff).unwrap_or_default());
        record.set_trace_context(TraceId::from_bytes(trace_id), SpanId::from_bytes(span_id), Some(flags));
    }
    Ok(record)
}

fn unix_nanos(nanos: u64) -> Option<SystemTime> {
    if nanos == 0 {
        return None;
    }
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_nanos(nanos))
}

fn severity(number: i32) -> Option<Severity> {
    Some(match number {
        1 => Severity::Trace,
        2 => Severity::Trace2,
        3 => Severity::Trace3,
        4 => Severity::Trace4,
        5 => Severity::Debug,
        6 => Severity::Debug2,
        7 => Severity::Debug3,
        8 => Severity::Debug4,
        9 => Severity::Info,
        10 => Severity::Info2,
        11 => Severity::Info3,
        12 => Severity::Info4,
        13 => Severity::Warn,
        14 => Severity::Warn2,
        15 => Severity::Warn3,
        16 => Severity::Warn4,
        17 => Severity::Error,
        18 => Severity::Error2,
        19 => Severity::Error3,
        20 => Severity::Error4,
        21 => Severity::Fatal,
        22 => Severity::Fatal2,
        23 => Severity::Fatal3,
        24 => Severity::Fatal4,
        _ => return None,
    })
}

/// How many distinct texts [`static_text`] keeps at most.
const MAX_INTERNED: usize = 256;
/// The longest text [`static_text`] keeps.
const MAX_INTERNED_LEN: usize = 64;

/// `text` as a `&'static str`, as the SDK wants severity texts and event
/// names: the severity names are built in; other texts are interned (leaked
/// once each), at most [`MAX_INTERNED`] of them, each at most
/// [`MAX_INTERNED_LEN`] bytes; beyond that, `None`.
fn static_text(text: &str) -> Option<&'static str> {
    if let Some(name) = (1..=24).filter_map(severity).map(|s| s.name()).find(|name| *name == text) {
        return Some(name);
    }
    static INTERNED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut interned = lock(&INTERNED);
    if let Some(known) = interned.iter().find(|known| **known == text) {
        return Some(known);
    }
    if interned.len() >= MAX_INTERNED || text.len() > MAX_INTERNED_LEN {
        return None;
    }
    let leaked: &'static str = Box::leak(text.to_owned().into_boxed_str());
    interned.push(leaked);
    Some(leaked)
}

/// An OTLP protobuf value as the SDK's; `None` for an empty value or a
/// string-table reference (which log records do not use).
fn any_value(value: proto_common::AnyValue) -> Option<AnyValue> {
    use proto_common::any_value::Value;
    Some(match value.value? {
        Value::StringValue(s) => AnyValue::String(s.into()),
        Value::BoolValue(b) => AnyValue::Boolean(b),
        Value::IntValue(i) => AnyValue::Int(i),
        Value::DoubleValue(d) => AnyValue::Double(d),
        Value::BytesValue(bytes) => AnyValue::Bytes(Box::new(bytes)),
        Value::ArrayValue(array) => {
            AnyValue::ListAny(Box::new(array.values.into_iter().filter_map(any_value).collect()))
        }
        Value::KvlistValue(list) => AnyValue::Map(Box::new(
            list.values.into_iter().filter_map(|kv| Some((Key::new(kv.key), any_value(kv.value?)?))).collect(),
        )),
        Value::StringValueStrindex(_) => return None,
    })
}

/// A string `AnyValue`, for encoders and tests.
#[must_use]
pub fn any_string(s: impl Into<String>) -> proto_common::AnyValue {
    proto_common::AnyValue { value: Some(proto_common::any_value::Value::StringValue(s.into())) }
}

/// An integer `AnyValue`.
#[must_use]
pub fn any_int(i: i64) -> proto_common::AnyValue {
    proto_common::AnyValue { value: Some(proto_common::any_value::Value::IntValue(i)) }
}

/// A boolean `AnyValue`.
#[must_use]
pub fn any_bool(b: bool) -> proto_common::AnyValue {
    proto_common::AnyValue { value: Some(proto_common::any_value::Value::BoolValue(b)) }
}

/// A floating-point `AnyValue`.
#[must_use]
pub fn any_double(d: f64) -> proto_common::AnyValue {
    proto_common::AnyValue { value: Some(proto_common::any_value::Value::DoubleValue(d)) }
}

/// An array `AnyValue`.
#[must_use]
pub fn any_array(values: Vec<proto_common::AnyValue>) -> proto_common::AnyValue {
    proto_common::AnyValue {
        value: Some(proto_common::any_value::Value::ArrayValue(proto_common::ArrayValue { values })),
    }
}

/// A `KeyValue` attribute.
#[must_use]
pub fn key_value(key: impl Into<String>, value: proto_common::AnyValue) -> proto_common::KeyValue {
    proto_common::KeyValue { key: key.into(), value: Some(value), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoints_get_the_logs_path_only_when_they_have_none() {
        let url = |e: &str| resolve_endpoint(e, OtlpProtocol::HttpProtobuf).expect("endpoint").to_string();
        assert_eq!(url("http://127.0.0.1:4318"), "http://127.0.0.1:4318/v1/logs");
        assert_eq!(url("https://collector:4318/"), "https://collector:4318/v1/logs");
        assert_eq!(url("http://c:4318/custom/path"), "http://c:4318/custom/path");
        assert!(resolve_endpoint("127.0.0.1:4318", OtlpProtocol::HttpProtobuf).is_err());
        assert!(resolve_endpoint("ftp://c:21", OtlpProtocol::Grpc).is_err());
        assert!(resolve_endpoint("", OtlpProtocol::Grpc).is_err());
    }

    #[test]
    fn codes_are_recovered_from_exporter_errors() {
        assert_eq!(http_status_from_message("HTTP export failed with status code: 503"), Some(503));
        assert_eq!(http_status_from_message("HTTP export failed: network error"), None);
        assert_eq!(
            grpc_code_from_message("TonicLogsClient export failed with gRPC code: Unavailable"),
            Some((tonic::Code::Unavailable, true))
        );
        assert_eq!(
            grpc_code_from_message("TonicLogsClient export failed with gRPC code: Unavailable: transport error"),
            Some((tonic::Code::Unavailable, false))
        );
        assert_eq!(
            grpc_code_from_message("export failed with gRPC code: InvalidArgument"),
            Some((tonic::Code::InvalidArgument, true))
        );
        assert_eq!(grpc_code_from_message("gRPC code: Bogus"), None);
        assert_eq!(grpc_code_from_message("nothing"), None);
    }

    #[test]
    fn texts_are_interned_within_bounds() {
        assert_eq!(static_text("INFO"), Some("INFO"));
        assert_eq!(static_text("flow"), Some("flow"));
        assert_eq!(static_text(&"x".repeat(MAX_INTERNED_LEN + 1)), None);
    }

    #[test]
    fn headers_are_checked() {
        let one = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert!(http_headers(&one("x-api-key", "secret")).is_ok());
        assert!(http_headers(&one("bad header", "v")).is_err());
        assert!(http_headers(&one("x-k", "line\nbreak")).is_err());
        assert!(http_headers(&one("content-type", "text/plain")).is_err());
        assert!(grpc_metadata(&one("x-api-key", "secret")).is_ok());
        assert!(grpc_metadata(&one("x-key-bin", "v")).is_err());
        assert!(grpc_metadata(&one("grpc-timeout", "1S")).is_err());
    }

    #[test]
    fn garbage_never_panics_the_decoder() {
        let provider = SdkLoggerProvider::builder().build();
        let logger = provider.logger("t");
        for payload in [&b"\xff\xff\xff"[..], b"", b"\x0a\x05abc", &[0x2a, 0x02, 0x3a, 0x00]] {
            let _ = decode_record(&logger, payload);
        }
        let record = decode_record(&logger, b"").expect("an empty message is a valid, empty record");
        assert!(record.observed_timestamp().is_some());
    }
}
