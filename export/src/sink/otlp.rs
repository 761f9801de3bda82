//! The OTLP sink: sends records to an OpenTelemetry logs endpoint (a
//! Collector, a vendor's OTLP intake) over gRPC or HTTP/protobuf.
//!
//! Each record the `otlp` encoder made is one protobuf-encoded
//! `opentelemetry.proto.logs.v1.LogRecord`. A delivery sends them as they
//! are, as the `log_records` of one `ExportLogsServiceRequest` under the
//! configured resource and the instrumentation scope `sightline`: the
//! request is the resource and scope (encoded once, when the sink is built)
//! and the records' bytes, framed. Nothing is decoded or encoded again. A
//! record that is not a well-formed `LogRecord` ([`well_formed`]: every
//! field's wire type, nested values, UTF-8 strings) is skipped, logged and
//! counted ([`OtlpSink::skipped_records`]); it never fails the rest of its
//! batch.
//!
//! Why not `opentelemetry-otlp`'s exporter: it takes the SDK's log records,
//! so every spooled record had to be decoded into an `SdkLogRecord` (an
//! allocation per attribute), turned back into the protobuf type and
//! encoded again — about three fifths of the relay's CPU per exported flow
//! in `sightline bench export` (docs/PERFORMANCE.md), which kept the relay
//! below 20,000 flows/s on two cores. The wire format is the same; the
//! request and response types are opentelemetry-proto's, and the tests
//! check every record arrives intact at a receiver built from them.
//!
//! gRPC goes through tonic (`LogsService/Export`, rustls with ring, the
//! system's roots plus `caFile`); HTTP through `reqwest` (the same TLS),
//! `POST` with `Content-Type: application/x-protobuf`. One delivery is one
//! request: the delivery loop owns retrying.
//!
//! How a failed export becomes an [`Outcome`]: HTTP `400`/`403`/`404` and
//! gRPC `INVALID_ARGUMENT`/`PERMISSION_DENIED`/`NOT_FOUND`/`UNIMPLEMENTED`
//! answered by the service are [`Outcome::Rejected`] (the spec's "refused
//! for good"); HTTP `413` is [`Outcome::TooLarge`]; everything else
//! (`429`, `5xx`, `UNAVAILABLE`, connection refused, TLS failures,
//! timeouts) is [`Outcome::Retry`], with HTTP's `Retry-After` (seconds)
//! when the service gave one. A partial success (`rejected_log_records`)
//! is logged: OTLP says such records must not be sent again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut as _, Bytes};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::common::v1 as proto_common;
use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
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

/// The largest response body the HTTP client reads.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// How much longer than the configured timeout a delivery may take before
/// the sink gives up on it (the transport's own timeout should fire first).
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
    #[error("building the gRPC channel: {0}")]
    Channel(#[from] tonic::transport::Error),
}

/// The gRPC method of OTLP logs.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// How requests go out.
enum Transport {
    Grpc { client: tonic::client::Grpc<tonic::transport::Channel>, metadata: tonic::metadata::MetadataMap },
    Http { client: reqwest::Client, url: reqwest::Url, headers: reqwest::header::HeaderMap },
}

/// Sends records to an OTLP logs endpoint.
pub struct OtlpSink {
    transport: Transport,
    protocol: OtlpProtocol,
    /// The `resource` field of the request's `ResourceLogs`, encoded once
    /// (key, length and the `Resource` message).
    resource_field: Vec<u8>,
    /// The `scope` field of its `ScopeLogs`, likewise.
    scope_field: Vec<u8>,
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
        let transport = match opts.protocol {
            OtlpProtocol::Grpc => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(OtlpError::NoRuntime);
                }
                let metadata = grpc_metadata(&opts.headers)?;
                let mut channel = tonic::transport::Endpoint::from_shared(opts.endpoint.trim().to_owned())?
                    .timeout(opts.timeout)
                    .connect_timeout(opts.timeout);
                if https {
                    let roots = root_store(extra_roots)?;
                    let tls = tonic::transport::ClientTlsConfig::new().trust_anchors(roots.roots).timeout(opts.timeout);
                    channel = channel.tls_config(tls)?;
                }
                Transport::Grpc { client: tonic::client::Grpc::new(channel.connect_lazy()), metadata }
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
                Transport::Http { client, url: endpoint, headers }
            }
        };
        let resource = opentelemetry_proto::tonic::resource::v1::Resource {
            attributes: opts.resource.iter().map(|(k, v)| key_value(k.clone(), any_string(v.clone()))).collect(),
            ..Default::default()
        };
        let scope = proto_common::InstrumentationScope { name: SCOPE_NAME.to_owned(), ..Default::default() };
        let mut resource_field = Vec::new();
        message_field(&mut resource_field, 1, &resource.encode_to_vec());
        let mut scope_field = Vec::new();
        message_field(&mut scope_field, 1, &scope.encode_to_vec());
        Ok(Self {
            transport,
            protocol: opts.protocol,
            resource_field,
            scope_field,
            deadline: opts.timeout.saturating_add(TIMEOUT_GRACE),
            skipped: 0,
        })
    }

    /// How many records were not well-formed `LogRecord`s and were skipped
    /// since the sink was built.
    #[must_use]
    pub fn skipped_records(&self) -> u64 {
        self.skipped
    }

    /// The `ExportLogsServiceRequest` carrying `records` (those that are
    /// well-formed), and how many were.
    fn request(&mut self, records: &[Vec<u8>]) -> (Bytes, usize) {
        let mut good = Vec::with_capacity(records.len());
        for (index, payload) in records.iter().enumerate() {
            if well_formed(payload, Schema::LogRecord, 0) {
                good.push(payload.as_slice());
            } else {
                self.skipped = self.skipped.saturating_add(1);
                log::warn!(
                    "OTLP sink: skipping record {index} of {}: it is not a well-formed LogRecord ({} bytes)",
                    records.len(),
                    payload.len()
                );
            }
        }
        // ScopeLogs { 1: scope, 2: log_records… }
        let scope_logs_len = self.scope_field.len() + good.iter().map(|r| field_len(r.len())).sum::<usize>();
        // ResourceLogs { 1: resource, 2: scope_logs }
        let resource_logs_len = self.resource_field.len() + field_len(scope_logs_len);
        let total = field_len(resource_logs_len);
        let mut out = bytes::BytesMut::with_capacity(total);
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(resource_logs_len as u64, &mut out);
        out.put_slice(&self.resource_field);
        encode_key(2, WireType::LengthDelimited, &mut out);
        encode_varint(scope_logs_len as u64, &mut out);
        out.put_slice(&self.scope_field);
        for record in &good {
            encode_key(2, WireType::LengthDelimited, &mut out);
            encode_varint(record.len() as u64, &mut out);
            out.put_slice(record);
        }
        debug_assert_eq!(out.len(), total);
        (out.freeze(), good.len())
    }

    async fn deliver(&mut self, records: &[Vec<u8>]) -> Delivery {
        if records.is_empty() {
            return Delivery { outcome: Outcome::Sent, code: self.success_code().to_owned() };
        }
        let (body, count) = self.request(records);
        if count == 0 {
            return Delivery {
                outcome: Outcome::Rejected {
                    error_code: "InvalidRecord".to_owned(),
                    message: format!("none of the {} records is a well-formed OTLP LogRecord", records.len()),
                },
                code: "invalid".to_owned(),
            };
        }
        let deadline = self.deadline;
        let sent = match &mut self.transport {
            Transport::Grpc { client, metadata } => tokio::time::timeout(deadline, send_grpc(client, metadata, body)).await,
            Transport::Http { client, url, headers } => {
                tokio::time::timeout(deadline, send_http(client, url, headers, body)).await
            }
        };
        match sent {
            Ok(Ok(response)) => {
                if let Some(partial) = response.partial_success.filter(|p| p.rejected_log_records > 0) {
                    log::warn!(
                        "OTLP sink: the receiver rejected {} of {count} records: {}",
                        partial.rejected_log_records,
                        partial.error_message
                    );
                }
                Delivery { outcome: Outcome::Sent, code: self.success_code().to_owned() }
            }
            Ok(Err(failure)) => failure,
            Err(_) => Delivery {
                outcome: Outcome::Retry {
                    after: None,
                    reason: format!("the export did not finish within {deadline:?}"),
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
}

/// One gRPC `Export` call.
async fn send_grpc(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    metadata: &tonic::metadata::MetadataMap,
    body: Bytes,
) -> Result<ExportLogsServiceResponse, Delivery> {
    let local = |why: String| Delivery {
        outcome: Outcome::Retry { after: None, reason: format!("exporting to OTLP: {why}") },
        code: "error".to_owned(),
    };
    client.ready().await.map_err(|e| local(error_chain(&e)))?;
    let mut request = tonic::Request::new(body);
    *request.metadata_mut() = metadata.clone();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(GRPC_EXPORT_PATH);
    match client.unary(request, path, RawCodec).await {
        Ok(response) => Ok(response.into_inner()),
        // tonic attaches the cause to statuses it made up locally (no
        // connection, TLS, timeout); a service's answer has none.
        Err(status) if std::error::Error::source(&status).is_some() => Err(local(error_chain(&status))),
        Err(status) => {
            let code = status.code();
            let reason = format!("exporting to OTLP: gRPC {}: {}", grpc_code_name(code), status.message());
            let outcome = match code {
                tonic::Code::InvalidArgument
                | tonic::Code::PermissionDenied
                | tonic::Code::NotFound
                | tonic::Code::Unimplemented => {
                    Outcome::Rejected { error_code: grpc_code_name(code).to_owned(), message: reason }
                }
                _ => Outcome::Retry { after: None, reason },
            };
            Err(Delivery { outcome, code: grpc_code_name(code).to_owned() })
        }
    }
}

/// One OTLP/HTTP `POST`.
async fn send_http(
    client: &reqwest::Client,
    url: &reqwest::Url,
    headers: &reqwest::header::HeaderMap,
    body: Bytes,
) -> Result<ExportLogsServiceResponse, Delivery> {
    let local = |why: String| Delivery {
        outcome: Outcome::Retry { after: None, reason: format!("exporting to OTLP: {why}") },
        code: "error".to_owned(),
    };
    let request = client
        .post(url.clone())
        .headers(headers.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
        .body(body);
    let mut response = request.send().await.map_err(|e| local(error_chain(&e)))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut answer = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if answer.len().saturating_add(chunk.len()) > MAX_RESPONSE_BYTES => {
                return Err(local(format!("the {status} response is larger than {MAX_RESPONSE_BYTES} bytes")));
            }
            Ok(Some(chunk)) => answer.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(error) => return Err(local(format!("reading the {status} response: {}", error_chain(&error)))),
        }
    }
    if status.is_success() {
        // An empty or unreadable body is a full success.
        return Ok(ExportLogsServiceResponse::decode(answer.as_slice()).unwrap_or_default());
    }
    let code = status.as_u16();
    let text = String::from_utf8_lossy(&answer[..answer.len().min(512)]).into_owned();
    let reason = format!("exporting to OTLP: HTTP {status}: {}", text.trim());
    let outcome = match code {
        400 | 403 | 404 => Outcome::Rejected { error_code: code.to_string(), message: reason },
        413 => Outcome::TooLarge,
        _ => Outcome::Retry { after: retry_after, reason },
    };
    Err(Delivery { outcome, code: code.to_string() })
}

/// Sends pre-encoded request bytes and decodes the `Export` response.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportLogsServiceResponse;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ExportLogsServiceResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        ExportLogsServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("decoding the Export response: {e}")))
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

/// The size of a length-delimited field of `len` bytes (field number below 16).
fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Appends field `field` holding the message bytes `message`.
fn message_field(out: &mut Vec<u8>, field: u32, message: &[u8]) {
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint(message.len() as u64, out);
    out.extend_from_slice(message);
}

/// The messages [`well_formed`] knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Schema {
    LogRecord,
    AnyValue,
    KeyValue,
    /// `ArrayValue` and `KeyValueList`: field 1 repeated.
    Array,
    KeyValueList,
}

/// How deep values may nest (arrays of arrays…) before a record is refused.
const MAX_DEPTH: u32 = 32;

/// Whether `bytes` is a well-formed message of `schema`: every field's key
/// and length in bounds, the wire type each known field must have, nested
/// values of the right kind, strings in UTF-8 (what a receiver's decoder
/// checks), unknown fields allowed. No allocation.
fn well_formed(mut bytes: &[u8], schema: Schema, depth: u32) -> bool {
    use prost::encoding::decode_varint;
    if depth > MAX_DEPTH {
        return false;
    }
    while !bytes.is_empty() {
        let Ok(key) = decode_varint(&mut bytes) else { return false };
        let (field, wire) = (key >> 3, key & 7);
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return false;
        }
        // What the field must be: (wire type, for length-delimited fields
        // what they hold).
        enum Len {
            Utf8,
            Bytes,
            Message(Schema),
        }
        let expect: Option<(u64, Option<Len>)> = match (schema, field) {
            (Schema::LogRecord, 1 | 11) => Some((1, None)),
            (Schema::LogRecord, 2 | 7) => Some((0, None)),
            (Schema::LogRecord, 8) => Some((5, None)),
            (Schema::LogRecord, 3 | 12) => Some((2, Some(Len::Utf8))),
            (Schema::LogRecord, 5) => Some((2, Some(Len::Message(Schema::AnyValue)))),
            (Schema::LogRecord, 6) => Some((2, Some(Len::Message(Schema::KeyValue)))),
            (Schema::LogRecord, 9 | 10) => Some((2, Some(Len::Bytes))),
            (Schema::KeyValue, 1) => Some((2, Some(Len::Utf8))),
            (Schema::KeyValue, 2) => Some((2, Some(Len::Message(Schema::AnyValue)))),
            (Schema::AnyValue, 1) => Some((2, Some(Len::Utf8))),
            (Schema::AnyValue, 2 | 3) => Some((0, None)),
            (Schema::AnyValue, 4) => Some((1, None)),
            (Schema::AnyValue, 5) => Some((2, Some(Len::Message(Schema::Array)))),
            (Schema::AnyValue, 6) => Some((2, Some(Len::Message(Schema::KeyValueList)))),
            (Schema::AnyValue, 7) => Some((2, Some(Len::Bytes))),
            (Schema::Array, 1) => Some((2, Some(Len::Message(Schema::AnyValue)))),
            (Schema::KeyValueList, 1) => Some((2, Some(Len::Message(Schema::KeyValue)))),
            _ => None,
        };
        if let Some((want, _)) = &expect
            && *want != wire
        {
            return false;
        }
        match wire {
            0 => {
                if decode_varint(&mut bytes).is_err() {
                    return false;
                }
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                let Some(rest) = bytes.get(n..) else { return false };
                bytes = rest;
            }
            2 => {
                let Ok(len) = decode_varint(&mut bytes) else { return false };
                let Some(value) = usize::try_from(len).ok().and_then(|len| bytes.get(..len)) else { return false };
                let ok = match expect.and_then(|(_, what)| what) {
                    Some(Len::Utf8) => std::str::from_utf8(value).is_ok(),
                    Some(Len::Message(inner)) => well_formed(value, inner, depth + 1),
                    Some(Len::Bytes) | None => true,
                };
                if !ok {
                    return false;
                }
                bytes = &bytes[value.len()..];
            }
            // Groups (3, 4) are not used by OTLP; 6 and 7 do not exist.
            _ => return false,
        }
    }
    true
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

fn http_headers(headers: &BTreeMap<String, String>) -> Result<reqwest::header::HeaderMap, OtlpError> {
    let mut checked = reqwest::header::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let fail = |reason: String| OtlpError::Header { name: name.clone(), reason };
        let header =
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|error| fail(error.to_string()))?;
        if reserved_header(header.as_str()) {
            return Err(fail("the exporter sets this header itself".to_owned()));
        }
        let value = reqwest::header::HeaderValue::from_str(value).map_err(|error| fail(error.to_string()))?;
        checked.insert(header, value);
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
    fn well_formed_records_are_told_from_garbage() {
        use opentelemetry_proto::tonic::logs::v1::LogRecord;
        let record = LogRecord {
            time_unix_nano: 1,
            observed_time_unix_nano: 2,
            severity_number: 9,
            severity_text: "INFO".to_owned(),
            body: Some(any_string("{}")),
            attributes: vec![
                key_value("a", any_int(1)),
                key_value("b", any_array(vec![any_string("x"), any_bool(true), any_double(0.5)])),
            ],
            flags: 1,
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            event_name: "sightline.flow".to_owned(),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(well_formed(&record, Schema::LogRecord, 0));
        assert!(well_formed(b"", Schema::LogRecord, 0), "an empty message is a valid, empty record");
        assert!(well_formed(&[0x2a, 0x02, 0x3a, 0x00], Schema::LogRecord, 0), "a body of empty bytes");
        for bad in [&b"\xff\xff\xff"[..], b"\x0a\x05abc", &[0x0a, 0x7f], &[0x1a, 0x01, 0xff]] {
            assert!(!well_formed(bad, Schema::LogRecord, 0), "{bad:?}");
        }
        // Truncated anywhere: refused.
        for end in 1..record.len() {
            let cut = &record[..end];
            if prost::Message::decode(cut).map(|_: LogRecord| ()).is_err() {
                assert!(!well_formed(cut, Schema::LogRecord, 0), "cut at {end}");
            }
        }
        // Nested too deep: refused, never a stack overflow.
        let mut deep = any_string("x");
        for _ in 0..100 {
            deep = any_array(vec![deep]);
        }
        let deep = LogRecord { body: Some(deep), ..Default::default() }.encode_to_vec();
        assert!(!well_formed(&deep, Schema::LogRecord, 0));
    }

    #[test]
    fn what_decodes_as_a_log_record_is_well_formed() {
        use opentelemetry_proto::tonic::logs::v1::LogRecord;
        // Every byte string of up to two bytes and many longer ones:
        // whatever prost refuses, we refuse too (so the receiver never
        // gets a request it cannot decode).
        let mut cases: Vec<Vec<u8>> = vec![Vec::new()];
        cases.extend((0..=255u8).map(|a| vec![a]));
        cases.extend((0..=0xffffu16).map(|v| v.to_le_bytes().to_vec()));
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 3 + (x % 6) as usize;
            cases.push(x.to_le_bytes()[..len.min(8)].to_vec());
        }
        let mut n = 0u32;
        for bytes in &cases {
            let prost_ok = prost::Message::decode(bytes.as_slice()).map(|_: LogRecord| ()).is_ok();
            assert!(!well_formed(bytes, Schema::LogRecord, 0) || prost_ok, "{bytes:?} passed but does not decode");
            n += u32::from(prost_ok);
        }
        assert!(n > 100, "too few valid cases to mean anything: {n}");
    }
}
