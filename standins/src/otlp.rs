//! An OTLP logs receiver: what an OpenTelemetry Collector's `otlp` receiver
//! does for logs, on loopback, for tests.
//!
//! Two servers, each on its own `127.0.0.1` port, optionally behind TLS with
//! a certificate from a [`TestCa`]:
//!
//! - **gRPC**: `opentelemetry.proto.collector.logs.v1.LogsService/Export`,
//!   served by opentelemetry-proto's generated tonic server (gzip request
//!   compression accepted). A request that does not decode as an
//!   `ExportLogsServiceRequest` is answered `INVALID_ARGUMENT`; any other
//!   path `UNIMPLEMENTED`.
//! - **HTTP**: `POST /v1/logs` with `Content-Type: application/x-protobuf`
//!   (optionally `Content-Encoding: gzip`), answered `200` with an
//!   `ExportLogsServiceResponse`. JSON or any other content type or content
//!   encoding: `415`; another path: `404`; another method: `405`; a body that
//!   does not decode: `400`; a body over 64 MiB (before or after gzip):
//!   `413`. Error bodies are `google.rpc.Status` protobuf messages, as the
//!   OTLP/HTTP specification asks.
//!
//! Every accepted log record is kept with its resource attributes and its
//! scope, in arrival order; the headers (gRPC metadata) of every request are
//! kept too. The receiver can be told to fail the next requests
//! ([`OtlpReceiver::fail_next`]) or to go down and come back on the same
//! ports ([`OtlpReceiver::set_down`]).

use std::convert::Infallible;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tonic::codec::CompressionEncoding;
use tonic::codegen::Service as _;

use crate::tls::{self, TestCa, TlsError};

/// The path of OTLP/HTTP logs requests.
pub const LOGS_PATH: &str = "/v1/logs";

/// The largest request body the HTTP server reads, compressed or not.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The largest gRPC message the gRPC server decodes.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why the receiver could not start or come back up.
#[derive(Debug, thiserror::Error)]
pub enum OtlpReceiverError {
    #[error("issuing the receiver's TLS certificate: {0}")]
    Certificate(#[from] TlsError),
    #[error("binding the {server} server to {addr}: {source}")]
    Bind {
        server: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the local address of the {server} server: {source}")]
    LocalAddr {
        server: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// One log record as the receiver accepted it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedLog {
    /// The attributes of the record's resource, values rendered as text
    /// (strings as they are, other values as [`render_any_value`] does), in
    /// the order they were sent.
    pub resource: Vec<(String, String)>,
    /// The record's instrumentation scope, as sent.
    pub scope: Option<InstrumentationScope>,
    /// The record, as sent.
    pub record: LogRecord,
}

/// A running OTLP logs receiver. Dropping it stops both servers and closes
/// their connections.
pub struct OtlpReceiver {
    state: Arc<State>,
    tls: Option<TlsAcceptor>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    running: Mutex<Option<Running>>,
}

/// What the servers share.
#[derive(Default)]
struct State {
    records: Mutex<Vec<ReceivedLog>>,
    headers: Mutex<Vec<Vec<(String, String)>>>,
    fail_next: AtomicUsize,
}

/// The two servers' accept loops while the receiver is up.
struct Running {
    grpc: ServerTask,
    http: ServerTask,
}

/// One accept loop: stopping it closes its listener and its connections.
struct ServerTask {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Grpc,
    Http,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Grpc => "gRPC",
            Self::Http => "HTTP",
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl OtlpReceiver {
    /// Starts the gRPC and HTTP servers on `127.0.0.1:0`, with TLS (a
    /// certificate for `localhost` and `127.0.0.1` signed by `tls`) when
    /// `tls` is given. Must be called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`OtlpReceiverError`] when the certificate cannot be made or a port
    /// cannot be bound.
    pub async fn start(tls: Option<&TestCa>) -> Result<Self, OtlpReceiverError> {
        let tls = match tls {
            Some(ca) => {
                let pair = ca.issue(&["localhost", "127.0.0.1"])?;
                Some(TlsAcceptor::from(tls::server_config(&pair, &[b"h2", b"http/1.1"])?))
            }
            None => None,
        };
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let grpc_listener = bind(Kind::Grpc, any).await?;
        let http_listener = bind(Kind::Http, any).await?;
        let local = |kind: Kind, listener: &TcpListener| {
            listener.local_addr().map_err(|source| OtlpReceiverError::LocalAddr { server: kind.name(), source })
        };
        let grpc_addr = local(Kind::Grpc, &grpc_listener)?;
        let http_addr = local(Kind::Http, &http_listener)?;
        let receiver = Self { state: Arc::default(), tls, grpc_addr, http_addr, running: Mutex::new(None) };
        let running = receiver.spawn(grpc_listener, http_listener);
        *lock(&receiver.running) = Some(running);
        log::debug!("OTLP receiver: gRPC on {grpc_addr}, HTTP on {http_addr}");
        Ok(receiver)
    }

    fn spawn(&self, grpc: TcpListener, http: TcpListener) -> Running {
        let task = |kind: Kind, listener: TcpListener| {
            let (stop, stopped) = oneshot::channel();
            let task = tokio::spawn(accept_loop(kind, listener, self.tls.clone(), Arc::clone(&self.state), stopped));
            ServerTask { stop, task }
        };
        Running { grpc: task(Kind::Grpc, grpc), http: task(Kind::Http, http) }
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The gRPC server's endpoint, `http(s)://127.0.0.1:PORT`.
    #[must_use]
    pub fn grpc_endpoint(&self) -> String {
        format!("{}://{}", self.scheme(), self.grpc_addr)
    }

    /// The HTTP server's endpoint, `http(s)://127.0.0.1:PORT`, without the
    /// `/v1/logs` path (an OTLP exporter appends it).
    #[must_use]
    pub fn http_endpoint(&self) -> String {
        format!("{}://{}", self.scheme(), self.http_addr)
    }

    /// Every log record accepted so far, with its resource attributes and
    /// scope, in arrival order.
    #[must_use]
    pub fn records(&self) -> Vec<ReceivedLog> {
        lock(&self.state.records).clone()
    }

    /// The headers (gRPC: the HTTP/2 headers, which carry the metadata) of
    /// every request received so far, one list per request, in arrival
    /// order; names are lowercase.
    #[must_use]
    pub fn headers(&self) -> Vec<Vec<(String, String)>> {
        lock(&self.state.headers).clone()
    }

    /// Makes the next `n` export requests fail: gRPC `UNAVAILABLE`, HTTP
    /// `503`. Their records are not kept.
    pub fn fail_next(&self, n: usize) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// Takes both servers down (`true`: their listeners and every open
    /// connection are closed, so connections are refused) or brings them
    /// back up on the same ports (`false`). Returns once that is done.
    /// Setting the state the receiver is already in does nothing.
    ///
    /// # Errors
    ///
    /// [`OtlpReceiverError::Bind`] when a port cannot be bound again (the
    /// receiver then stays down).
    pub async fn set_down(&self, down: bool) -> Result<(), OtlpReceiverError> {
        if down {
            let running = lock(&self.running).take();
            if let Some(Running { grpc, http }) = running {
                for server in [grpc, http] {
                    // A send error means the loop has ended already.
                    let _ = server.stop.send(());
                    if let Err(error) = server.task.await {
                        log::warn!("OTLP receiver: an accept loop ended abnormally: {error}");
                    }
                }
            }
            return Ok(());
        }
        if lock(&self.running).is_some() {
            return Ok(());
        }
        let grpc = bind(Kind::Grpc, self.grpc_addr).await?;
        let http = bind(Kind::Http, self.http_addr).await?;
        let running = self.spawn(grpc, http);
        let mut slot = lock(&self.running);
        match slot.as_ref() {
            // Another caller brought it up meanwhile: keep theirs.
            Some(_) => {
                for server in [running.grpc, running.http] {
                    server.task.abort();
                }
            }
            None => *slot = Some(running),
        }
        Ok(())
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(Running { grpc, http }) = lock(&self.running).take() {
            // Aborting drops each loop's listener and its set of
            // connection tasks, which aborts those.
            grpc.task.abort();
            http.task.abort();
        }
    }
}

async fn bind(kind: Kind, addr: SocketAddr) -> Result<TcpListener, OtlpReceiverError> {
    TcpListener::bind(addr).await.map_err(|source| OtlpReceiverError::Bind { server: kind.name(), addr, source })
}

/// Accepts connections until told to stop, then closes the listener and
/// every connection it accepted.
async fn accept_loop(
    kind: Kind,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let tls = tls.clone();
                    let state = Arc::clone(&state);
                    connections.spawn(async move {
                        match tls {
                            Some(acceptor) => match acceptor.accept(stream).await {
                                Ok(stream) => serve_connection(kind, stream, state).await,
                                Err(error) => log::debug!("OTLP receiver: TLS handshake failed: {error}"),
                            },
                            None => serve_connection(kind, stream, state).await,
                        }
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: try again soon.
                    log::warn!("OTLP receiver: accepting a {} connection: {error}", kind.name());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn serve_connection<I>(kind: Kind, io: I, state: Arc<State>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let grpc = LogsServiceServer::from_arc(Arc::new(GrpcLogs { state: Arc::clone(&state) }))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        state.record_headers(&request);
        let state = Arc::clone(&state);
        let mut grpc = grpc.clone();
        async move {
            let response = match kind {
                Kind::Grpc => grpc_response(grpc.call(request).await),
                Kind::Http => {
                    http_export(&state, request).await.map(|body| body.map_err(|never| match never {}).boxed_unsync())
                }
            };
            Ok::<_, Infallible>(response)
        }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(error) = builder.serve_connection(TokioIo::new(io), service).await {
        log::debug!("OTLP receiver: {} connection ended: {error}", kind.name());
    }
}

/// The generated server answers a request it cannot decode `INTERNAL`; the
/// OTLP receiver's contract is `INVALID_ARGUMENT` (its own handler never
/// answers `INTERNAL`, so every `INTERNAL` comes from decoding).
fn grpc_response(response: Result<Response<tonic::body::Body>, Infallible>) -> Response<ResponseBody> {
    let mut response = match response {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let internal = i32::from(tonic::Code::Internal).to_string();
    if response.headers().get("grpc-status").is_some_and(|status| status.as_bytes() == internal.as_bytes()) {
        let invalid = i32::from(tonic::Code::InvalidArgument).to_string();
        if let Ok(value) = HeaderValue::from_str(&invalid) {
            response.headers_mut().insert("grpc-status", value);
        }
    }
    response.map(|body| body.map_err(BoxError::from).boxed_unsync())
}

/// The gRPC `LogsService`.
struct GrpcLogs {
    state: Arc<State>,
}

#[tonic::async_trait]
impl LogsService for GrpcLogs {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        if self.state.take_failure() {
            return Err(tonic::Status::unavailable("the receiver was told to fail this request"));
        }
        self.state.accept(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse { partial_success: None }))
    }
}

/// `google.rpc.Status`, the body of OTLP/HTTP error responses.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn protobuf_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
    response
}

fn error_response(status: StatusCode, code: tonic::Code, message: &str) -> Response<Full<Bytes>> {
    let body = RpcStatus { code: code.into(), message: message.to_owned() }.encode_to_vec();
    protobuf_response(status, body)
}

/// Handles one OTLP/HTTP request.
async fn http_export(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != LOGS_PATH {
        return error_response(StatusCode::NOT_FOUND, tonic::Code::NotFound, "only /v1/logs is served");
    }
    if request.method() != Method::POST {
        let mut response =
            error_response(StatusCode::METHOD_NOT_ALLOWED, tonic::Code::Unimplemented, "only POST is allowed");
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let media_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase());
    if media_type.as_deref() != Some("application/x-protobuf") {
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            tonic::Code::InvalidArgument,
            "Content-Type must be application/x-protobuf",
        );
    }
    let gzip = match request.headers().get(CONTENT_ENCODING).map(|value| value.to_str().map(str::trim)) {
        None => false,
        Some(Ok(encoding)) if encoding.eq_ignore_ascii_case("identity") => false,
        Some(Ok(encoding)) if encoding.eq_ignore_ascii_case("gzip") => true,
        Some(_) => {
            return error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                tonic::Code::InvalidArgument,
                "Content-Encoding must be gzip or absent",
            );
        }
    };
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return error_response(StatusCode::PAYLOAD_TOO_LARGE, tonic::Code::ResourceExhausted, "body too large");
        }
        Err(error) => {
            return error_response(StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument, &error.to_string());
        }
    };
    let body = if gzip {
        let mut plain = Vec::new();
        let limit = u64::try_from(MAX_BODY_BYTES).unwrap_or(u64::MAX).saturating_add(1);
        match flate2::read::GzDecoder::new(&body[..]).take(limit).read_to_end(&mut plain) {
            Ok(n) if n > MAX_BODY_BYTES => {
                return error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    tonic::Code::ResourceExhausted,
                    "body too large once decompressed",
                );
            }
            Ok(_) => Bytes::from(plain),
            Err(error) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    tonic::Code::InvalidArgument,
                    &format!("gunzipping the body: {error}"),
                );
            }
        }
    } else {
        body
    };
    if state.take_failure() {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            tonic::Code::Unavailable,
            "the receiver was told to fail this request",
        );
    }
    match ExportLogsServiceRequest::decode(body) {
        Ok(export) => {
            state.accept(export);
            protobuf_response(StatusCode::OK, ExportLogsServiceResponse { partial_success: None }.encode_to_vec())
        }
        Err(error) => error_response(
            StatusCode::BAD_REQUEST,
            tonic::Code::InvalidArgument,
            &format!("decoding ExportLogsServiceRequest: {error}"),
        ),
    }
}

impl State {
    fn record_headers<B>(&self, request: &Request<B>) {
        let headers = request
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        lock(&self.headers).push(headers);
    }

    /// Whether this request is one of those told to fail.
    fn take_failure(&self) -> bool {
        self.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }

    fn accept(&self, export: ExportLogsServiceRequest) {
        let mut records = lock(&self.records);
        for resource_logs in export.resource_logs {
            let resource: Vec<(String, String)> = resource_logs
                .resource
                .map(|resource| {
                    resource
                        .attributes
                        .into_iter()
                        .map(|kv| (kv.key, kv.value.as_ref().map(render_any_value).unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            for scope_logs in resource_logs.scope_logs {
                for record in scope_logs.log_records {
                    records.push(ReceivedLog { resource: resource.clone(), scope: scope_logs.scope.clone(), record });
                }
            }
        }
    }
}

/// An attribute value as text: strings as they are, numbers and booleans
/// as Rust prints them, bytes as lowercase hex, arrays and key-value lists
/// as `[a, b]` and `{k: v}`, an empty value as the empty string.
#[must_use]
pub fn render_any_value(value: &AnyValue) -> String {
    match &value.value {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(bytes)) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        Some(Value::ArrayValue(array)) => {
            format!("[{}]", array.values.iter().map(render_any_value).collect::<Vec<_>>().join(", "))
        }
        Some(Value::KvlistValue(list)) => format!(
            "{{{}}}",
            list.values
                .iter()
                .map(|kv| format!("{}: {}", kv.key, kv.value.as_ref().map(render_any_value).unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(Value::StringValueStrindex(index)) => format!("#{index}"),
    }
}
