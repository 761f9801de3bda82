//! A local stand-in for Azure Monitor's Logs Ingestion API and the two
//! token services a client of it uses (Entra ID's client-credentials
//! endpoint and the managed identity endpoint, IMDS), on one HTTPS port of
//! 127.0.0.1 (HTTP/1.1 and HTTP/2), with a certificate from a
//! [`TestCa`].
//!
//! It enforces the documented contract (see `azure-monitor.md` §3) and
//! nothing looser, records what it accepted, and can be told to misbehave
//! ([`AzureStandin::respond_next`], [`AzureStandin::set_down`],
//! [`AzureStandin::revoke_tokens`]).
//!
//! # Ingestion: `POST /dataCollectionRules/{dcr}/streams/{stream}?api-version=2023-01-01`
//!
//! Checks, in this order, each failure answered in Azure's error shape
//! (status, `x-ms-error-code: <Code>`, body
//! `{"error":{"code":"<Code>","message":"…"}}`):
//!
//! 1. the body is read first (up to [`DRAIN_LIMIT`]; beyond it 413
//!    `ContentLengthLimitExceeded` and the connection is closed);
//! 2. method POST, else 405 `MethodNotAllowed`;
//! 3. `api-version` present once and `2023-01-01`, else 400
//!    `MissingApiVersionParameter` / `UnsupportedApiVersion`;
//! 4. `Authorization: Bearer <token>` with a token this server issued, not
//!    expired, not revoked, else 401 `InvalidToken` (with
//!    `WWW-Authenticate: Bearer`);
//! 5. the DCR immutable id and the stream are the configured ones, else
//!    404 `NotFound`;
//! 6. injected faults ([`AzureStandin::respond_next`]) answer here: after
//!    the route and authentication checks, before the payload checks; the
//!    rows of a faulted request are not stored;
//! 7. `Content-Type: application/json` (only a `charset=utf-8` parameter
//!    allowed), else 415 `UnsupportedMediaType`;
//! 8. `Content-Encoding` absent or `gzip`, else 400
//!    `UnsupportedContentEncoding`;
//! 9. the body as received and decompressed at most [`MAX_BODY_BYTES`]
//!    each, else 413 `ContentLengthLimitExceeded`;
//! 10. a JSON array of objects (UTF-8, valid gzip), else 400
//!     `InvalidPayload`;
//! 11. every key a declared column (reserved names give 400
//!     `ReservedColumn`, undeclared ones 400 `UnknownColumn`), every value
//!     of its column's type or null (else 400 `InvalidColumnValue`), the
//!     message naming the row and the column.
//!
//! Success stores the rows and answers 204 with no body.
//!
//! # Tokens
//!
//! `POST /{tenant}/oauth2/v2.0/token`, form-urlencoded, with
//! `grant_type=client_credentials`, the configured `client_id`,
//! `scope=https://monitor.azure.com/.default`, and either the configured
//! `client_secret` or `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`
//! with the configured federated token as `client_assertion`. Errors are
//! OAuth-shaped `{"error","error_description","error_codes"}`: unknown
//! tenant 400 `invalid_request`; unknown client 400 `unauthorized_client`;
//! wrong secret or assertion 401 `invalid_client`; wrong scope 400
//! `invalid_scope`; other grant types 400 `unsupported_grant_type`;
//! anything else malformed 400 `invalid_request`.
//!
//! `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://monitor.azure.com/[&client_id=…]`
//! with `Metadata: true` and no `X-Forwarded-For` (as IMDS requires),
//! `client_id` when given equal to the configured one; answers with every
//! number as a string, as IMDS does.
//!
//! Every issued token is random and opaque and expires after
//! `token_lifetime`.
//!
//! This stand-in must only listen on loopback and must not be used by the
//! product itself.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::tls::{self, TestCa, TlsError};

/// The Logs Ingestion API version accepted.
pub const API_VERSION: &str = "2023-01-01";
/// The most bytes a request body may hold, as received and decompressed.
pub const MAX_BODY_BYTES: usize = 1_000_000;
/// The most body bytes read before answering; a longer body is answered
/// 413 unread and its connection closed.
pub const DRAIN_LIMIT: usize = 8 * MAX_BODY_BYTES;
/// The only scope the token endpoint grants.
pub const SCOPE: &str = "https://monitor.azure.com/.default";
/// The only resource the managed identity endpoint grants.
pub const IMDS_RESOURCE: &str = "https://monitor.azure.com/";
/// The managed identity endpoint's API version.
pub const IMDS_API_VERSION: &str = "2018-02-01";
/// The path of the managed identity endpoint.
pub const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
/// `client_assertion_type` of a federated credential.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Column names Azure reserves (besides every name starting with `_`).
pub const RESERVED_COLUMNS: &[&str] = &["TenantId", "Type", "SourceSystem", "id", "UniqueId", "Title"];

/// A column type of a DCR stream declaration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    String,
    Int,
    Boolean,
    DateTime,
    Dynamic,
}

impl ColumnKind {
    /// The kind of an ARM type name (`string`, `int`, `boolean`,
    /// `datetime`, `dynamic`).
    #[must_use]
    pub fn from_arm_name(name: &str) -> Option<Self> {
        Some(match name {
            "string" => Self::String,
            "int" => Self::Int,
            "boolean" => Self::Boolean,
            "datetime" => Self::DateTime,
            "dynamic" => Self::Dynamic,
            _ => return None,
        })
    }

    /// Whether `v` may be stored in a column of this kind: null always;
    /// a string; a JSON integer within i64; true or false; an RFC 3339
    /// date-time with a time zone; anything for dynamic.
    #[must_use]
    pub fn accepts(self, v: &Value) -> bool {
        match (self, v) {
            (_, Value::Null)
            | (Self::Dynamic, _)
            | (Self::String, Value::String(_))
            | (Self::Boolean, Value::Bool(_)) => true,
            (Self::Int, Value::Number(n)) => n.is_i64(),
            (Self::DateTime, Value::String(s)) => is_rfc3339(s),
            _ => false,
        }
    }
}

/// What the stand-in accepts.
#[derive(Clone, Debug)]
pub struct StandinOptions {
    /// The only DCR immutable id served (others: 404).
    pub dcr_immutable_id: String,
    /// The only stream declared (others: 404).
    pub stream: String,
    /// The stream declaration: column names and kinds.
    pub columns: Vec<(String, ColumnKind)>,
    /// The only tenant the token endpoint knows.
    pub tenant_id: String,
    /// The app registration's client id (also the managed identity's, when
    /// a client asks IMDS for a user-assigned one).
    pub client_id: String,
    /// The client secret the token endpoint accepts.
    pub client_secret: String,
    /// The federated (workload identity) token expected as
    /// `client_assertion`.
    pub federated_token: String,
    /// How long an issued token is accepted.
    pub token_lifetime: Duration,
}

impl StandinOptions {
    /// Options with the given stream declaration, fixed test identifiers
    /// and an hour's token lifetime.
    #[must_use]
    pub fn new(columns: Vec<(String, ColumnKind)>) -> Self {
        Self {
            dcr_immutable_id: "dcr-00000000000000000000000000000001".to_owned(),
            stream: "Custom-SightlineFlows".to_owned(),
            columns,
            tenant_id: "72f988bf-0000-4000-8000-000000000001".to_owned(),
            client_id: "00000000-0000-4000-8000-00000000c1d1".to_owned(),
            client_secret: "stand-in secret ~+&=".to_owned(),
            federated_token: "eyJhbGciOiJSUzI1NiJ9.stand-in.federated".to_owned(),
            token_lifetime: Duration::from_secs(3600),
        }
    }
}

/// Why the stand-in could not start (or come back up).
#[derive(Debug, thiserror::Error)]
pub enum StandinError {
    #[error("making the stand-in's certificate: {0}")]
    Certificate(#[from] TlsError),
    #[error("binding the stand-in to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("declaring column {name:?}: the name is reserved")]
    ReservedColumn { name: String },
}

/// One ingestion request, as the stand-in saw and answered it.
#[derive(Clone, Debug)]
pub struct RequestLog {
    /// When it arrived.
    pub at: SystemTime,
    /// The status answered.
    pub status: u16,
    /// The `x-ms-error-code` answered, if any.
    pub error_code: Option<String>,
    /// The error message answered, if any.
    pub message: Option<String>,
    /// The body's length as received.
    pub body_bytes: usize,
    /// The body's length after decompression (0 when it was not reached).
    pub uncompressed_bytes: usize,
    /// The rows stored (0 unless 204).
    pub rows: usize,
    /// The `Content-Type` sent, if any.
    pub content_type: Option<String>,
    /// The `Content-Encoding` sent, if any.
    pub content_encoding: Option<String>,
    /// `x-ms-client-request-id`, if sent.
    pub request_id: Option<String>,
    /// The `Retry-After` announced, if any.
    pub retry_after: Option<Duration>,
}

/// How a token was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Client credentials with a client secret.
    ClientSecret,
    /// Client credentials with a federated token (client assertion).
    ClientAssertion,
    /// The managed identity endpoint.
    ManagedIdentity,
    /// Neither (refused).
    Other,
}

/// One token request, as the stand-in saw and answered it.
#[derive(Clone, Debug)]
pub struct TokenRequestLog {
    /// When it arrived.
    pub at: SystemTime,
    /// Which way a token was asked for.
    pub grant: Grant,
    /// The `scope` (token endpoint) or `resource` (IMDS) asked for.
    pub scope: Option<String>,
    /// The `client_id` sent, if any.
    pub client_id: Option<String>,
    /// The status answered.
    pub status: u16,
    /// The OAuth `error` answered, if any.
    pub error: Option<String>,
}

/// An injected answer.
#[derive(Clone, Copy, Debug)]
struct Fault {
    status: u16,
    retry_after: Option<Duration>,
}

#[derive(Default)]
struct State {
    /// Issued tokens and their expiry.
    tokens: HashMap<String, Instant>,
    tokens_issued: usize,
    rows: Vec<Value>,
    requests: Vec<RequestLog>,
    token_requests: Vec<TokenRequestLog>,
    faults: VecDeque<Fault>,
    /// No ingestion request should arrive before this (a `Retry-After`
    /// announced).
    not_before: Option<Instant>,
    early_retries: usize,
}

struct Shared {
    opts: Mutex<StandinOptions>,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn opts(&self) -> StandinOptions {
        self.opts.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// A running stand-in; dropping it stops the server.
pub struct AzureStandin {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    runtime: tokio::runtime::Handle,
    down: watch::Sender<bool>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AzureStandin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureStandin").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl AzureStandin {
    /// Starts a stand-in on 127.0.0.1 (a free port) with a certificate for
    /// `127.0.0.1` and `localhost` signed by `ca`.
    ///
    /// # Errors
    ///
    /// [`StandinError`] when the certificate cannot be made, a declared
    /// column is reserved, or binding fails.
    pub async fn start(ca: &TestCa, opts: StandinOptions) -> Result<Self, StandinError> {
        if let Some((name, _)) = opts.columns.iter().find(|(name, _)| is_reserved(name)) {
            return Err(StandinError::ReservedColumn { name: name.clone() });
        }
        let pair = ca.issue(&["127.0.0.1", "localhost"])?;
        let tls = tls::server_config(&pair, &[b"h2", b"http/1.1"])?;
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener
            .local_addr()
            .map_err(|source| StandinError::Bind { addr: SocketAddr::from(([127, 0, 0, 1], 0)), source })?;
        let shared = Arc::new(Shared { opts: Mutex::new(opts), state: Mutex::new(State::default()) });
        let (down, _) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&tls), Arc::clone(&shared), down.subscribe()));
        Ok(Self {
            shared,
            addr,
            tls,
            runtime: tokio::runtime::Handle::current(),
            down,
            accept: Mutex::new(Some(accept)),
        })
    }

    /// The listening address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Logs Ingestion endpoint, `https://127.0.0.1:PORT`.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The Entra ID authority host (the same server).
    #[must_use]
    pub fn authority_host(&self) -> String {
        self.endpoint()
    }

    /// The managed identity endpoint (HTTPS on the same server, unlike
    /// IMDS's plain HTTP).
    #[must_use]
    pub fn imds_endpoint(&self) -> String {
        format!("https://{}{IMDS_PATH}", self.addr)
    }

    /// The configured DCR immutable id.
    #[must_use]
    pub fn dcr_immutable_id(&self) -> String {
        self.shared.opts().dcr_immutable_id
    }

    /// The configured stream.
    #[must_use]
    pub fn stream(&self) -> String {
        self.shared.opts().stream
    }

    /// The options in force (secrets included: this is a test server).
    #[must_use]
    pub fn options(&self) -> StandinOptions {
        self.shared.opts()
    }

    /// Every accepted row, in arrival order.
    #[must_use]
    pub fn rows(&self) -> Vec<Value> {
        self.shared.state().rows.clone()
    }

    /// Every ingestion request, in arrival order.
    #[must_use]
    pub fn requests(&self) -> Vec<RequestLog> {
        self.shared.state().requests.clone()
    }

    /// Every token request (both endpoints), in arrival order.
    #[must_use]
    pub fn token_requests(&self) -> Vec<TokenRequestLog> {
        self.shared.state().token_requests.clone()
    }

    /// How many tokens were issued.
    #[must_use]
    pub fn tokens_issued(&self) -> usize {
        self.shared.state().tokens_issued
    }

    /// How many ingestion requests arrived before a `Retry-After` this
    /// server announced had elapsed (0 for a correct client).
    #[must_use]
    pub fn early_retries(&self) -> usize {
        self.shared.state().early_retries
    }

    /// The next `n` ingestion requests that pass the route and
    /// authentication checks are answered `status` (Azure's error shape,
    /// with `Retry-After` in whole seconds, rounded up, when given) and
    /// their rows are not stored. Queued after faults already pending.
    pub fn respond_next(&self, n: usize, status: u16, retry_after: Option<Duration>) {
        let mut state = self.shared.state();
        state.faults.extend(std::iter::repeat_n(Fault { status, retry_after }, n));
    }

    /// Every token issued so far is refused from now on (401).
    pub fn revoke_tokens(&self) {
        self.shared.state().tokens.clear();
    }

    /// Changes the client secret the token endpoint accepts.
    pub fn set_client_secret(&self, secret: &str) {
        self.shared.opts.lock().unwrap_or_else(PoisonError::into_inner).client_secret = secret.to_owned();
    }

    /// Changes the federated token the token endpoint accepts.
    pub fn set_federated_token(&self, token: &str) {
        self.shared.opts.lock().unwrap_or_else(PoisonError::into_inner).federated_token = token.to_owned();
    }

    /// Changes the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.opts.lock().unwrap_or_else(PoisonError::into_inner).token_lifetime = lifetime;
    }

    /// Down: the listener is closed (connections are refused) and every
    /// open connection is dropped. Up: listening again on the same port.
    ///
    /// # Errors
    ///
    /// [`StandinError::Bind`] when the port cannot be bound again.
    pub fn set_down(&self, down: bool) -> Result<(), StandinError> {
        let mut accept = self.accept.lock().unwrap_or_else(PoisonError::into_inner);
        if down {
            self.down.send_replace(true);
            if let Some(task) = accept.take() {
                task.abort();
            }
            return Ok(());
        }
        if accept.is_some() {
            return Ok(());
        }
        self.down.send_replace(false);
        let _runtime = self.runtime.enter();
        let listener = bind(self.addr)?;
        let task = self.runtime.spawn(accept_loop(
            listener,
            Arc::clone(&self.tls),
            Arc::clone(&self.shared),
            self.down.subscribe(),
        ));
        *accept = Some(task);
        Ok(())
    }
}

impl Drop for AzureStandin {
    fn drop(&mut self) {
        self.down.send_replace(true);
        if let Some(task) = self.accept.lock().unwrap_or_else(PoisonError::into_inner).take() {
            task.abort();
        }
    }
}

/// A listener on `addr` with `SO_REUSEADDR`, so that the port can be bound
/// again after going down.
fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, StandinError> {
    let err = |source| StandinError::Bind { addr, source };
    let socket = tokio::net::TcpSocket::new_v4().map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(1024).map_err(err)
}

/// Accepts connections until `down` turns true (or the stand-in is
/// dropped); each connection also ends then.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    mut down: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = down.wait_for(|d| *d) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("Azure stand-in: accepting a connection: {e}");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        let mut down = down.clone();
        tokio::spawn(async move {
            let serve = async {
                let tls = match acceptor.accept(stream).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        log::debug!("Azure stand-in: TLS handshake: {e}");
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |req| {
                    let shared = Arc::clone(&shared);
                    async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                    log::debug!("Azure stand-in: serving a connection: {e}");
                }
            };
            tokio::select! {
                () = serve => {}
                _ = down.wait_for(|d| *d) => {}
            }
        });
    }
}

type Answer = Response<Full<Bytes>>;

async fn handle(shared: &Shared, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["metadata", "identity", "oauth2", "token"] => imds(shared, &req),
        [tenant, "oauth2", "v2.0", "token"] => {
            let tenant = percent_decode(tenant, false).unwrap_or_default();
            token_endpoint(shared, req, &tenant).await
        }
        ["dataCollectionRules", dcr, "streams", stream] => {
            let dcr = percent_decode(dcr, false);
            let stream = percent_decode(stream, false);
            ingest(shared, req, dcr.as_deref(), stream.as_deref()).await
        }
        _ => azure_error(StatusCode::NOT_FOUND, "NotFound", &format!("no resource at {path}"), None),
    }
}

/// A refusal of an ingestion request.
struct Refusal {
    status: u16,
    code: String,
    message: String,
    retry_after: Option<Duration>,
}

impl Refusal {
    fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self { status, code: code.to_owned(), message: message.into(), retry_after: None }
    }
}

async fn ingest(shared: &Shared, req: Request<Incoming>, dcr: Option<&str>, stream: Option<&str>) -> Answer {
    let now = Instant::now();
    let (parts, body) = req.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut log = RequestLog {
        at: SystemTime::now(),
        status: 0,
        error_code: None,
        message: None,
        body_bytes: 0,
        uncompressed_bytes: 0,
        rows: 0,
        content_type: header("content-type"),
        content_encoding: header("content-encoding"),
        request_id: header("x-ms-client-request-id"),
        retry_after: None,
    };
    {
        let mut state = shared.state();
        if state.not_before.is_some_and(|t| now < t) {
            state.early_retries += 1;
        }
    }
    let (body, complete) = match Limited::new(body, DRAIN_LIMIT).collect().await {
        Ok(collected) => (collected.to_bytes(), true),
        Err(_) => (Bytes::new(), false),
    };
    log.body_bytes = body.len();
    let result = if complete {
        check_ingestion(shared, &parts.method, parts.uri.query(), &parts.headers, dcr, stream, &body, &mut log)
    } else {
        Err(Refusal::new(
            413,
            "ContentLengthLimitExceeded",
            format!("the body could not be read within {DRAIN_LIMIT} bytes"),
        ))
    };
    let mut state = shared.state();
    match result {
        Ok(rows) => {
            log.status = 204;
            log.rows = rows.len();
            state.rows.extend(rows);
            state.requests.push(log);
            let mut answer = Response::new(Full::new(Bytes::new()));
            *answer.status_mut() = StatusCode::NO_CONTENT;
            answer
        }
        Err(refusal) => {
            let retry_secs = refusal.retry_after.map(|d| d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0)));
            if let Some(until) = retry_secs.and_then(|secs| Instant::now().checked_add(Duration::from_secs(secs))) {
                state.not_before = Some(state.not_before.map_or(until, |t| t.max(until)));
            }
            log.status = refusal.status;
            log.error_code = Some(refusal.code.clone());
            log.message = Some(refusal.message.clone());
            log.retry_after = retry_secs.map(Duration::from_secs);
            state.requests.push(log);
            let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut answer = azure_error(status, &refusal.code, &refusal.message, retry_secs);
            if !complete {
                answer.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            }
            answer
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_ingestion(
    shared: &Shared,
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
    dcr: Option<&str>,
    stream: Option<&str>,
    body: &[u8],
    log: &mut RequestLog,
) -> Result<Vec<Value>, Refusal> {
    if method != Method::POST {
        return Err(Refusal::new(405, "MethodNotAllowed", format!("{method} is not allowed here; use POST")));
    }
    let query = parse_pairs(query.unwrap_or(""))
        .ok_or_else(|| Refusal::new(400, "InvalidQueryParameter", "the query string does not decode"))?;
    match single(&query, "api-version") {
        Single::None => {
            return Err(Refusal::new(400, "MissingApiVersionParameter", "the api-version query parameter is required"));
        }
        Single::Many => return Err(Refusal::new(400, "InvalidQueryParameter", "api-version is given more than once")),
        Single::One(v) if v != API_VERSION => {
            return Err(Refusal::new(
                400,
                "UnsupportedApiVersion",
                format!("api-version {v:?} is not supported; use {API_VERSION}"),
            ));
        }
        Single::One(_) => {}
    }
    check_bearer(shared, headers)?;
    let opts = shared.opts();
    if dcr != Some(opts.dcr_immutable_id.as_str()) {
        return Err(Refusal::new(
            404,
            "NotFound",
            format!("data collection rule {:?} was not found", dcr.unwrap_or("<undecodable>")),
        ));
    }
    if stream != Some(opts.stream.as_str()) {
        return Err(Refusal::new(
            404,
            "NotFound",
            format!(
                "stream {:?} is not declared in data collection rule {}",
                stream.unwrap_or("<undecodable>"),
                opts.dcr_immutable_id
            ),
        ));
    }
    if let Some(fault) = shared.state().faults.pop_front() {
        let (code, message) = fault_code(fault.status);
        return Err(Refusal {
            status: fault.status,
            code: code.to_owned(),
            message: message.to_owned(),
            retry_after: fault.retry_after,
        });
    }
    check_content_type(headers)?;
    let gzipped = match headers.get_all(hyper::header::CONTENT_ENCODING).iter().collect::<Vec<_>>().as_slice() {
        [] => false,
        [v] if v.to_str().is_ok_and(|s| s.trim().eq_ignore_ascii_case("gzip")) => true,
        _ => {
            return Err(Refusal::new(400, "UnsupportedContentEncoding", "Content-Encoding must be gzip or absent"));
        }
    };
    if body.len() > MAX_BODY_BYTES {
        return Err(Refusal::new(
            413,
            "ContentLengthLimitExceeded",
            format!("the body holds {} bytes, more than {MAX_BODY_BYTES}", body.len()),
        ));
    }
    let decoded = if gzipped {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body)
            .take(MAX_BODY_BYTES as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| Refusal::new(400, "InvalidPayload", format!("the body is not valid gzip: {e}")))?;
        out
    } else {
        body.to_vec()
    };
    log.uncompressed_bytes = decoded.len();
    if decoded.len() > MAX_BODY_BYTES {
        return Err(Refusal::new(
            413,
            "ContentLengthLimitExceeded",
            format!("the decompressed body holds more than {MAX_BODY_BYTES} bytes"),
        ));
    }
    let value: Value = serde_json::from_slice(&decoded)
        .map_err(|e| Refusal::new(400, "InvalidPayload", format!("the body is not valid UTF-8 JSON: {e}")))?;
    let Value::Array(rows) = value else {
        return Err(Refusal::new(400, "InvalidPayload", "the body must be a JSON array of objects"));
    };
    let columns: HashMap<&str, ColumnKind> = opts.columns.iter().map(|(n, k)| (n.as_str(), *k)).collect();
    for (i, row) in rows.iter().enumerate() {
        let Value::Object(row) = row else {
            return Err(Refusal::new(400, "InvalidPayload", format!("row {i} is not a JSON object")));
        };
        check_row(&columns, i, row)?;
    }
    Ok(rows)
}

fn check_row(columns: &HashMap<&str, ColumnKind>, i: usize, row: &Map<String, Value>) -> Result<(), Refusal> {
    for (name, value) in row {
        if is_reserved(name) {
            return Err(Refusal::new(400, "ReservedColumn", format!("row {i}: column {name:?} is reserved")));
        }
        let Some(kind) = columns.get(name.as_str()) else {
            return Err(Refusal::new(
                400,
                "UnknownColumn",
                format!("row {i}: column {name:?} is not declared in the stream"),
            ));
        };
        if !kind.accepts(value) {
            return Err(Refusal::new(
                400,
                "InvalidColumnValue",
                format!("row {i}: the value of column {name:?} is not of type {kind:?}"),
            ));
        }
    }
    Ok(())
}

fn check_bearer(shared: &Shared, headers: &HeaderMap) -> Result<(), Refusal> {
    let unauthorized = |message: &str| Refusal::new(401, "InvalidToken", message);
    let values: Vec<_> = headers.get_all(hyper::header::AUTHORIZATION).iter().collect();
    let [value] = values.as_slice() else {
        return Err(unauthorized(if values.is_empty() {
            "an Authorization header is required"
        } else {
            "more than one Authorization header"
        }));
    };
    let value = value.to_str().map_err(|_| unauthorized("the Authorization header is not ASCII"))?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() => token,
        _ => return Err(unauthorized("the Authorization header must be `Bearer <token>`")),
    };
    match shared.state().tokens.get(token) {
        None => Err(unauthorized("the token was not issued by this authority, or it was revoked")),
        Some(expiry) if Instant::now() >= *expiry => Err(unauthorized("the token has expired")),
        Some(_) => Ok(()),
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), Refusal> {
    let refuse = |what: &str| {
        Refusal::new(415, "UnsupportedMediaType", format!("Content-Type must be application/json: {what}"))
    };
    let values: Vec<_> = headers.get_all(hyper::header::CONTENT_TYPE).iter().collect();
    let [value] = values.as_slice() else {
        return Err(refuse(if values.is_empty() { "it is missing" } else { "it is given more than once" }));
    };
    let value = value.to_str().map_err(|_| refuse("it is not ASCII"))?;
    let mut parts = value.split(';');
    let media = parts.next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/json") {
        return Err(refuse(&format!("it is {media:?}")));
    }
    for param in parts {
        match param.split_once('=') {
            Some((k, v))
                if k.trim().eq_ignore_ascii_case("charset")
                    && v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8") => {}
            _ => return Err(refuse(&format!("parameter {:?} is not allowed", param.trim()))),
        }
    }
    Ok(())
}

/// Azure's code and message for an injected status.
fn fault_code(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("BadRequest", "injected: the request is invalid"),
        401 => ("InvalidToken", "injected: the token is not valid"),
        403 => (
            "OperationFailed",
            "injected: the authentication token provided does not have access to ingest data for the data collection rule",
        ),
        404 => ("NotFound", "injected: the data collection rule was not found"),
        408 => ("RequestTimeout", "injected: the request timed out"),
        413 => ("ContentLengthLimitExceeded", "injected: the payload is too large"),
        429 => ("TooManyRequests", "injected: the request rate is over the limit"),
        500 => ("InternalServerError", "injected: an internal error occurred"),
        502 => ("BadGateway", "injected: bad gateway"),
        503 => ("ServiceUnavailable", "injected: the service is unavailable"),
        504 => ("GatewayTimeout", "injected: gateway timeout"),
        _ => ("InjectedFault", "injected: a fault"),
    }
}

fn azure_error(status: StatusCode, code: &str, message: &str, retry_after_secs: Option<u64>) -> Answer {
    let body = json!({"error": {"code": code, "message": message}}).to_string();
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    let headers = answer.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    if let Ok(v) = HeaderValue::from_str(code) {
        headers.insert("x-ms-error-code", v);
    }
    if let Some(secs) = retry_after_secs {
        headers.insert(hyper::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    answer
}

/// A refusal of a token request, OAuth-shaped.
struct OAuthRefusal {
    status: StatusCode,
    error: &'static str,
    description: String,
}

fn invalid(error: &'static str, description: impl Into<String>) -> OAuthRefusal {
    OAuthRefusal { status: StatusCode::BAD_REQUEST, error, description: description.into() }
}

fn json_answer(status: StatusCode, value: &Value) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(value.to_string())));
    *answer.status_mut() = status;
    answer
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    answer
}

/// Answers a token request and records it.
fn token_reply(
    shared: &Shared,
    grant: Grant,
    scope: Option<String>,
    client_id: Option<String>,
    result: Result<Value, OAuthRefusal>,
) -> Answer {
    let (answer, status, error) = match result {
        Ok(value) => (json_answer(StatusCode::OK, &value), 200, None),
        Err(r) => {
            let body =
                json!({"error": r.error, "error_description": r.description, "error_codes": [r.status.as_u16()]});
            (json_answer(r.status, &body), r.status.as_u16(), Some(r.error.to_owned()))
        }
    };
    shared.state().token_requests.push(TokenRequestLog {
        at: SystemTime::now(),
        grant,
        scope,
        client_id,
        status,
        error,
    });
    answer
}

/// Issues a token valid for the configured lifetime; returns it and the
/// lifetime.
fn issue(shared: &Shared) -> (String, Duration) {
    let lifetime = shared.opts().token_lifetime;
    let token = format!("sl-standin-{}", (0..48).map(|_| fastrand::alphanumeric()).collect::<String>());
    let mut state = shared.state();
    let expiry = Instant::now().checked_add(lifetime).unwrap_or_else(Instant::now);
    state.tokens.insert(token.clone(), expiry);
    state.tokens_issued += 1;
    (token, lifetime)
}

async fn token_endpoint(shared: &Shared, req: Request<Incoming>, tenant: &str) -> Answer {
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, 64 * 1024).collect().await.map(http_body_util::Collected::to_bytes);
    let form = body.ok().and_then(|b| std::str::from_utf8(&b).ok().and_then(parse_pairs));
    let get = |k: &str| {
        form.as_ref().and_then(|f| match single(f, k) {
            Single::One(v) => Some(v.to_owned()),
            _ => None,
        })
    };
    let grant = if get("client_secret").is_some() {
        Grant::ClientSecret
    } else if get("client_assertion").is_some() {
        Grant::ClientAssertion
    } else {
        Grant::Other
    };
    let result = token_answer(shared, &parts.method, &parts.headers, tenant, form.as_ref());
    token_reply(shared, grant, get("scope"), get("client_id"), result)
}

fn token_answer(
    shared: &Shared,
    method: &Method,
    headers: &HeaderMap,
    tenant: &str,
    form: Option<&Vec<(String, String)>>,
) -> Result<Value, OAuthRefusal> {
    if method != Method::POST {
        return Err(OAuthRefusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            error: "invalid_request",
            description: "the token endpoint only accepts POST".to_owned(),
        });
    }
    let opts = shared.opts();
    if tenant != opts.tenant_id {
        return Err(invalid("invalid_request", format!("AADSTS90002: Tenant '{tenant}' not found.")));
    }
    let form_type = headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if !form_type {
        return Err(invalid("invalid_request", "AADSTS900144: the body must be application/x-www-form-urlencoded"));
    }
    let Some(form) = form else {
        return Err(invalid("invalid_request", "AADSTS90014: the request body could not be decoded"));
    };
    let mut seen = std::collections::HashSet::new();
    if let Some((k, _)) = form.iter().find(|(k, _)| !seen.insert(k.as_str())) {
        return Err(invalid("invalid_request", format!("AADSTS90015: parameter '{k}' is given more than once")));
    }
    let get = |k: &str| form.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let missing = |k: &str| invalid("invalid_request", format!("AADSTS900144: the request body must contain '{k}'"));
    match get("grant_type") {
        Some("client_credentials") => {}
        Some(other) => {
            return Err(invalid(
                "unsupported_grant_type",
                format!("AADSTS70003: grant type '{other}' is not supported"),
            ));
        }
        None => return Err(missing("grant_type")),
    }
    match get("client_id") {
        Some(id) if id == opts.client_id => {}
        Some(id) => {
            return Err(invalid(
                "unauthorized_client",
                format!("AADSTS700016: application '{id}' was not found in tenant '{tenant}'"),
            ));
        }
        None => return Err(missing("client_id")),
    }
    match get("scope") {
        Some(SCOPE) => {}
        Some(other) => {
            return Err(invalid("invalid_scope", format!("AADSTS1002012: the scope '{other}' is not valid")));
        }
        None => return Err(missing("scope")),
    }
    let unauthorized = |description: &str| OAuthRefusal {
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        description: description.to_owned(),
    };
    match (get("client_secret"), get("client_assertion_type"), get("client_assertion")) {
        (Some(secret), None, None) => {
            if secret != opts.client_secret {
                return Err(unauthorized("AADSTS7000215: Invalid client secret provided."));
            }
        }
        (None, Some(JWT_BEARER_ASSERTION), Some(assertion)) => {
            if assertion != opts.federated_token {
                return Err(unauthorized("AADSTS700211: the client assertion is not valid."));
            }
        }
        (None, Some(_), Some(_)) => {
            return Err(invalid("invalid_request", "AADSTS50027: client_assertion_type must be the JWT bearer type"));
        }
        _ => {
            return Err(invalid(
                "invalid_request",
                "AADSTS7000218: the body must contain either 'client_secret' or 'client_assertion' with its type",
            ));
        }
    }
    let (token, lifetime) = issue(shared);
    let secs = lifetime.as_secs();
    Ok(json!({"token_type": "Bearer", "expires_in": secs, "ext_expires_in": secs, "access_token": token}))
}

fn imds(shared: &Shared, req: &Request<Incoming>) -> Answer {
    let query = parse_pairs(req.uri().query().unwrap_or(""));
    let get = |k: &str| {
        query.as_ref().and_then(|q| match single(q, k) {
            Single::One(v) => Some(v.to_owned()),
            _ => None,
        })
    };
    let result = imds_answer(shared, req, query.as_ref());
    token_reply(shared, Grant::ManagedIdentity, get("resource"), get("client_id"), result)
}

fn imds_answer(
    shared: &Shared,
    req: &Request<Incoming>,
    query: Option<&Vec<(String, String)>>,
) -> Result<Value, OAuthRefusal> {
    let bad = |description: &str| invalid("invalid_request", description);
    if req.method() != Method::GET {
        return Err(OAuthRefusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            error: "invalid_request",
            description: "the identity endpoint only accepts GET".to_owned(),
        });
    }
    if req.headers().get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return Err(bad("Required metadata header not specified"));
    }
    if req.headers().contains_key("x-forwarded-for") {
        return Err(bad("Request cannot contain the X-Forwarded-For header"));
    }
    let Some(query) = query else {
        return Err(bad("the query string does not decode"));
    };
    let opts = shared.opts();
    match single(query, "api-version") {
        Single::One(IMDS_API_VERSION) => {}
        Single::None => return Err(bad("Required query variable 'api-version' is missing")),
        _ => return Err(bad(&format!("api-version must be {IMDS_API_VERSION}"))),
    }
    match single(query, "resource") {
        Single::One(IMDS_RESOURCE) => {}
        Single::None => return Err(bad("Required query variable 'resource' is missing")),
        Single::One(other) => {
            return Err(invalid("invalid_resource", format!("AADSTS500011: resource '{other}' was not found")));
        }
        Single::Many => return Err(bad("resource is given more than once")),
    }
    match single(query, "client_id") {
        Single::None => {}
        Single::One(id) if id == opts.client_id => {}
        Single::One(_) => return Err(bad("Identity not found")),
        Single::Many => return Err(bad("client_id is given more than once")),
    }
    if let Some((k, _)) = query.iter().find(|(k, _)| !matches!(k.as_str(), "api-version" | "resource" | "client_id")) {
        return Err(bad(&format!("unknown query variable '{k}'")));
    }
    let (token, lifetime) = issue(shared);
    let secs = lifetime.as_secs();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok(json!({
        "access_token": token,
        "client_id": opts.client_id,
        "expires_in": secs.to_string(),
        "expires_on": (now + secs).to_string(),
        "ext_expires_in": secs.to_string(),
        "not_before": now.to_string(),
        "resource": IMDS_RESOURCE,
        "token_type": "Bearer",
    }))
}

/// Whether Azure reserves the column `name`.
fn is_reserved(name: &str) -> bool {
    name.starts_with('_') || RESERVED_COLUMNS.contains(&name)
}

enum Single<'a> {
    None,
    One(&'a str),
    Many,
}

fn single<'a>(pairs: &'a [(String, String)], key: &str) -> Single<'a> {
    let mut found = pairs.iter().filter(|(k, _)| k == key);
    match (found.next(), found.next()) {
        (None, _) => Single::None,
        (Some((_, v)), None) => Single::One(v),
        _ => Single::Many,
    }
}

/// `k=v&k=v` pairs (a query string or a form body), percent-decoded with
/// `+` as space; `None` when one does not decode to UTF-8.
fn parse_pairs(s: &str) -> Option<Vec<(String, String)>> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((percent_decode(k, true)?, percent_decode(v, true)?))
        })
        .collect()
}

/// Percent-decodes `s` (and `+` as a space when `plus`); `None` on a bad
/// escape or non-UTF-8 result.
fn percent_decode(s: &str, plus: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `s` is an RFC 3339 date-time with a time zone
/// (`2026-01-02T03:04:05.678Z`, `…+01:00`).
#[must_use]
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| -> Option<u32> {
        let part = b.get(from..from + n)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let parsed = (|| {
        let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
        if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || !matches!(b.get(10), Some(b'T' | b't')) {
            return None;
        }
        let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
        if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
            return None;
        }
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let days = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return None,
        };
        if day == 0 || day > days || hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        let mut i = 19;
        if b.get(i) == Some(&b'.') {
            let start = i + 1;
            i = start;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return None;
            }
        }
        match b.get(i)? {
            b'Z' | b'z' => (i + 1 == b.len()).then_some(()),
            b'+' | b'-' => {
                let (h, m) = (digits(i + 1, 2)?, digits(i + 4, 2)?);
                (b.get(i + 3) == Some(&b':') && h <= 23 && m <= 59 && i + 6 == b.len()).then_some(())
            }
            _ => None,
        }
    })();
    parsed.is_some()
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn columns() -> Vec<(String, ColumnKind)> {
        [
            ("TimeGenerated", ColumnKind::DateTime),
            ("UUID", ColumnKind::String),
            ("Reply", ColumnKind::Boolean),
            ("SourceIdentity", ColumnKind::Int),
            ("Layer4", ColumnKind::Dynamic),
        ]
        .into_iter()
        .map(|(n, k)| (n.to_owned(), k))
        .collect()
    }

    struct Fixture {
        standin: AzureStandin,
        client: reqwest::Client,
    }

    async fn fixture() -> Fixture {
        let ca = TestCa::new("stand-in test CA").expect("CA");
        let standin = AzureStandin::start(&ca, StandinOptions::new(columns())).await.expect("start");
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
            roots.add(cert.expect("PEM")).expect("root");
        }
        use rustls_pki_types::pem::PemObject as _;
        let tls = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder().tls_backend_preconfigured(tls).no_proxy().build().expect("client");
        Fixture { standin, client }
    }

    fn form(pairs: &[(&str, &str)]) -> String {
        pairs
            .iter()
            .map(|(k, v)| {
                let enc = |s: &str| {
                    s.bytes()
                        .map(
                            |b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") },
                        )
                        .collect::<String>()
                };
                format!("{}={}", enc(k), enc(v))
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    fn gzip(body: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(body).expect("gzip");
        e.finish().expect("gzip")
    }

    impl Fixture {
        async fn token_request(&self, tenant: &str, pairs: &[(&str, &str)]) -> (u16, Value) {
            let response = self
                .client
                .post(format!("{}/{tenant}/oauth2/v2.0/token", self.standin.authority_host()))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form(pairs))
                .send()
                .await
                .expect("token request");
            let status = response.status().as_u16();
            (status, serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON"))
        }

        async fn secret_token(&self) -> String {
            let o = self.standin.options();
            let (status, body) = self
                .token_request(
                    &o.tenant_id,
                    &[
                        ("grant_type", "client_credentials"),
                        ("client_id", &o.client_id),
                        ("client_secret", &o.client_secret),
                        ("scope", SCOPE),
                    ],
                )
                .await;
            assert_eq!(status, 200, "{body}");
            body["access_token"].as_str().expect("token").to_owned()
        }

        fn ingestion_url(&self) -> String {
            format!(
                "{}/dataCollectionRules/{}/streams/{}?api-version={API_VERSION}",
                self.standin.endpoint(),
                self.standin.dcr_immutable_id(),
                self.standin.stream()
            )
        }

        /// POSTs `body` gzipped with the usual headers; (status, error code).
        async fn ingest(&self, token: &str, body: &[u8]) -> (u16, Option<String>) {
            self.ingest_raw(&self.ingestion_url(), token, "application/json", Some("gzip"), gzip(body)).await
        }

        async fn ingest_raw(
            &self,
            url: &str,
            token: &str,
            content_type: &str,
            encoding: Option<&str>,
            body: Vec<u8>,
        ) -> (u16, Option<String>) {
            let mut request = self
                .client
                .post(url)
                .bearer_auth(token)
                .header("content-type", content_type)
                .header("x-ms-client-request-id", "3f2504e0-4f89-41d3-9a0c-0305e82c3301");
            if let Some(e) = encoding {
                request = request.header("content-encoding", e);
            }
            let response = request.body(body).send().await.expect("ingest");
            let status = response.status().as_u16();
            let header = response.headers().get("x-ms-error-code").map(|v| v.to_str().expect("ASCII").to_owned());
            let bytes = response.bytes().await.expect("body");
            if status == 204 {
                assert!(bytes.is_empty());
            } else {
                let body: Value = serde_json::from_slice(&bytes).expect("Azure error body");
                assert_eq!(body["error"]["code"].as_str(), header.as_deref(), "{body}");
                assert!(body["error"]["message"].is_string(), "{body}");
            }
            (status, header)
        }
    }

    #[test]
    fn rfc3339_date_times() {
        for ok in [
            "2026-01-02T03:04:05Z",
            "2026-01-02t03:04:05.123456789z",
            "2024-02-29T23:59:60+01:00",
            "2026-12-31T00:00:00-08:30",
        ] {
            assert!(is_rfc3339(ok), "{ok}");
        }
        for bad in [
            "",
            "2026-01-02",
            "2026-01-02T03:04:05",
            "2026-01-02 03:04:05Z",
            "2025-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-02T24:00:00Z",
            "2026-01-02T03:04:05.Z",
            "2026-01-02T03:04:05+0100",
            "2026-01-02T03:04:05Zjunk",
            "２026-01-02T03:04:05Z",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }

    #[test]
    fn column_kinds() {
        assert!(ColumnKind::Int.accepts(&json!(-9_223_372_036_854_775_808_i64)));
        assert!(!ColumnKind::Int.accepts(&json!(18_446_744_073_709_551_615_u64)));
        assert!(!ColumnKind::Int.accepts(&json!(1.5)));
        assert!(!ColumnKind::Int.accepts(&json!("1")));
        assert!(ColumnKind::Boolean.accepts(&json!(false)));
        assert!(!ColumnKind::Boolean.accepts(&json!("true")));
        assert!(ColumnKind::String.accepts(&Value::Null));
        assert!(!ColumnKind::String.accepts(&json!({"a": 1})));
        assert!(ColumnKind::Dynamic.accepts(&json!([1, {"b": null}])));
        assert!(!ColumnKind::DateTime.accepts(&json!(1_700_000_000)));
        assert_eq!(ColumnKind::from_arm_name("datetime"), Some(ColumnKind::DateTime));
        assert_eq!(ColumnKind::from_arm_name("long"), None);
    }

    #[tokio::test]
    async fn reserved_columns_cannot_be_declared() {
        let ca = TestCa::new("CA").expect("CA");
        let mut opts = StandinOptions::new(columns());
        opts.columns.push(("_ResourceId".to_owned(), ColumnKind::String));
        assert!(matches!(AzureStandin::start(&ca, opts).await, Err(StandinError::ReservedColumn { .. })));
    }

    #[tokio::test]
    async fn token_endpoint_enforces_client_credentials() {
        let f = fixture().await;
        let o = f.standin.options();
        let base = [("grant_type", "client_credentials"), ("client_id", o.client_id.as_str()), ("scope", SCOPE)];
        fn join<'a>(base: &[(&'a str, &'a str)], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
            base.iter().chain(extra).copied().collect()
        }
        let (secret, assertion) = (o.client_secret.as_str(), o.federated_token.as_str());

        let (status, body) = f.token_request(&o.tenant_id, &join(&base, &[("client_secret", secret)])).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3600);
        let (status, body) = f
            .token_request(
                &o.tenant_id,
                &join(&base, &[("client_assertion_type", JWT_BEARER_ASSERTION), ("client_assertion", assertion)]),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(f.standin.tokens_issued(), 2);

        let cases = vec![
            ("other-tenant", join(&base, &[("client_secret", secret)]), 400, "invalid_request"),
            (o.tenant_id.as_str(), join(&base, &[("client_secret", "wrong")]), 401, "invalid_client"),
            (
                o.tenant_id.as_str(),
                join(&base, &[("client_assertion_type", JWT_BEARER_ASSERTION), ("client_assertion", "forged")]),
                401,
                "invalid_client",
            ),
            (
                o.tenant_id.as_str(),
                join(&base, &[("client_assertion_type", "saml"), ("client_assertion", assertion)]),
                400,
                "invalid_request",
            ),
            (o.tenant_id.as_str(), join(&base, &[]), 400, "invalid_request"),
            (
                o.tenant_id.as_str(),
                join(&base, &[("client_secret", secret), ("client_secret", secret)]),
                400,
                "invalid_request",
            ),
            (
                o.tenant_id.as_str(),
                vec![
                    ("grant_type", "client_credentials"),
                    ("client_id", "someone-else"),
                    ("scope", SCOPE),
                    ("client_secret", secret),
                ],
                400,
                "unauthorized_client",
            ),
            (
                o.tenant_id.as_str(),
                vec![
                    ("grant_type", "client_credentials"),
                    ("client_id", &o.client_id),
                    ("scope", "https://graph.microsoft.com/.default"),
                    ("client_secret", secret),
                ],
                400,
                "invalid_scope",
            ),
            (
                o.tenant_id.as_str(),
                vec![
                    ("grant_type", "password"),
                    ("client_id", &o.client_id),
                    ("scope", SCOPE),
                    ("client_secret", secret),
                ],
                400,
                "unsupported_grant_type",
            ),
        ];
        for (tenant, pairs, want_status, want_error) in cases {
            let (status, body) = f.token_request(tenant, &pairs).await;
            assert_eq!((status, body["error"].as_str()), (want_status, Some(want_error)), "{pairs:?}: {body}");
            assert!(body["error_description"].is_string());
        }
        // A JSON body is not a form.
        let response = f
            .client
            .post(format!("{}/{}/oauth2/v2.0/token", f.standin.authority_host(), o.tenant_id))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("send");
        assert_eq!(response.status().as_u16(), 400);
        assert_eq!(f.standin.tokens_issued(), 2);
        let log = f.standin.token_requests();
        assert_eq!(log[0].grant, Grant::ClientSecret);
        assert_eq!(log[1].grant, Grant::ClientAssertion);
        assert_eq!(log[0].scope.as_deref(), Some(SCOPE));
        assert_eq!(log[3].error.as_deref(), Some("invalid_client"));
    }

    #[tokio::test]
    async fn imds_needs_the_metadata_header_and_the_resource() {
        let f = fixture().await;
        let o = f.standin.options();
        let url = |q: &str| format!("{}?{q}", f.standin.imds_endpoint());
        let good = "api-version=2018-02-01&resource=https%3A%2F%2Fmonitor.azure.com%2F";
        let response = f.client.get(url(good)).header("Metadata", "true").send().await.expect("imds");
        assert_eq!(response.status().as_u16(), 200);
        let body: Value = serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON");
        assert_eq!(body["expires_in"], "3600");
        assert!(body["expires_on"].as_str().expect("string").parse::<u64>().is_ok());
        assert_eq!(body["resource"], IMDS_RESOURCE);
        let with_client = format!("{good}&client_id={}", o.client_id);
        let response = f.client.get(url(&with_client)).header("Metadata", "true").send().await.expect("imds");
        assert_eq!(response.status().as_u16(), 200);
        for (query, metadata) in [
            (good.to_owned(), false),
            (format!("{good}&client_id=nobody"), true),
            ("api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F".to_owned(), true),
            ("resource=https%3A%2F%2Fmonitor.azure.com%2F".to_owned(), true),
            ("api-version=2019-08-01&resource=https%3A%2F%2Fmonitor.azure.com%2F".to_owned(), true),
        ] {
            let mut request = f.client.get(url(&query));
            if metadata {
                request = request.header("Metadata", "true");
            }
            let response = request.send().await.expect("imds");
            assert_eq!(response.status().as_u16(), 400, "{query}");
        }
        let response = f
            .client
            .get(url(good))
            .header("Metadata", "true")
            .header("X-Forwarded-For", "10.0.0.1")
            .send()
            .await
            .expect("imds");
        assert_eq!(response.status().as_u16(), 400);
        assert_eq!(f.standin.tokens_issued(), 2);
    }

    #[tokio::test]
    async fn ingestion_accepts_declared_rows_and_logs_them() {
        let f = fixture().await;
        let token = f.secret_token().await;
        let rows = json!([
            {"TimeGenerated": "2026-01-02T03:04:05.678Z", "UUID": "a", "Reply": false, "SourceIdentity": 42, "Layer4": {"TCP": {"destination_port": 80}}},
            {"UUID": "b", "Reply": null, "Layer4": null},
            {}
        ]);
        assert_eq!(f.ingest(&token, rows.to_string().as_bytes()).await, (204, None));
        // Uncompressed, with a charset, is fine too.
        let url = f.ingestion_url();
        let one = br#"[{"UUID":"c"}]"#.to_vec();
        assert_eq!(f.ingest_raw(&url, &token, "application/json; charset=utf-8", None, one).await, (204, None));
        let stored = f.standin.rows();
        assert_eq!(stored.len(), 4);
        assert_eq!(stored[0], rows[0]);
        assert_eq!(stored[3]["UUID"], "c");
        let log = f.standin.requests();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].status, 204);
        assert_eq!(log[0].rows, 3);
        assert_eq!(log[0].content_encoding.as_deref(), Some("gzip"));
        assert_eq!(log[0].uncompressed_bytes, rows.to_string().len());
        assert_eq!(log[0].request_id.as_deref(), Some("3f2504e0-4f89-41d3-9a0c-0305e82c3301"));
        assert_eq!(log[1].content_encoding, None);
    }

    #[tokio::test]
    async fn ingestion_refuses_bad_tokens() {
        let f = fixture().await;
        let body = br#"[{"UUID":"a"}]"#;
        assert_eq!(f.ingest("made-up", body).await, (401, Some("InvalidToken".to_owned())));
        let response = f
            .client
            .post(f.ingestion_url())
            .header("content-type", "application/json")
            .body(&body[..])
            .send()
            .await
            .expect("send");
        assert_eq!(response.status().as_u16(), 401);
        assert_eq!(response.headers().get("www-authenticate").map(|v| v.as_bytes()), Some(&b"Bearer"[..]));
        let token = f.secret_token().await;
        assert_eq!(f.ingest(&token, body).await.0, 204);
        f.standin.revoke_tokens();
        assert_eq!(f.ingest(&token, body).await, (401, Some("InvalidToken".to_owned())));
        f.standin.set_token_lifetime(Duration::ZERO);
        let expired = f.secret_token().await;
        assert_eq!(f.ingest(&expired, body).await, (401, Some("InvalidToken".to_owned())));
        assert_eq!(f.standin.rows().len(), 1);
    }

    #[tokio::test]
    async fn ingestion_enforces_route_headers_and_payload() {
        let f = fixture().await;
        let token = f.secret_token().await;
        let row = br#"[{"UUID":"a"}]"#;
        let base = f.standin.endpoint();
        let dcr = f.standin.dcr_immutable_id();
        let stream = f.standin.stream();
        let url = f.ingestion_url();
        let cases = vec![
            (
                format!("{base}/dataCollectionRules/dcr-other/streams/{stream}?api-version=2023-01-01"),
                "application/json",
                Some("gzip"),
                gzip(row),
                404,
                "NotFound",
            ),
            (
                format!("{base}/dataCollectionRules/{dcr}/streams/Custom-Other?api-version=2023-01-01"),
                "application/json",
                Some("gzip"),
                gzip(row),
                404,
                "NotFound",
            ),
            (
                format!("{base}/dataCollectionRules/{dcr}/streams/{stream}"),
                "application/json",
                Some("gzip"),
                gzip(row),
                400,
                "MissingApiVersionParameter",
            ),
            (
                format!("{base}/dataCollectionRules/{dcr}/streams/{stream}?api-version=2021-11-01-preview"),
                "application/json",
                Some("gzip"),
                gzip(row),
                400,
                "UnsupportedApiVersion",
            ),
            (url.clone(), "text/plain", Some("gzip"), gzip(row), 415, "UnsupportedMediaType"),
            (url.clone(), "application/json; charset=latin1", Some("gzip"), gzip(row), 415, "UnsupportedMediaType"),
            (url.clone(), "application/json", Some("br"), gzip(row), 400, "UnsupportedContentEncoding"),
            (url.clone(), "application/json", Some("gzip"), row.to_vec(), 400, "InvalidPayload"),
            (url.clone(), "application/json", Some("gzip"), gzip(b"{\"UUID\":\"a\"}"), 400, "InvalidPayload"),
            (url.clone(), "application/json", Some("gzip"), gzip(b"[1,2]"), 400, "InvalidPayload"),
            (url.clone(), "application/json", Some("gzip"), gzip(b"[{\"UUID\":\"a\"},]"), 400, "InvalidPayload"),
            (url.clone(), "application/json", None, vec![b'[', 0xff, b']'], 400, "InvalidPayload"),
            (url.clone(), "application/json", Some("gzip"), gzip(br#"[{"Nope":1}]"#), 400, "UnknownColumn"),
            (url.clone(), "application/json", Some("gzip"), gzip(br#"[{"TenantId":"x"}]"#), 400, "ReservedColumn"),
            (url.clone(), "application/json", Some("gzip"), gzip(br#"[{"_Extra":"x"}]"#), 400, "ReservedColumn"),
            (
                url.clone(),
                "application/json",
                Some("gzip"),
                gzip(br#"[{"SourceIdentity":"42"}]"#),
                400,
                "InvalidColumnValue",
            ),
            (url.clone(), "application/json", Some("gzip"), gzip(br#"[{"Reply":1}]"#), 400, "InvalidColumnValue"),
            (
                url.clone(),
                "application/json",
                Some("gzip"),
                gzip(br#"[{"TimeGenerated":"yesterday"}]"#),
                400,
                "InvalidColumnValue",
            ),
        ];
        for (url, content_type, encoding, body, want_status, want_code) in cases {
            let got = f.ingest_raw(&url, &token, content_type, encoding, body).await;
            assert_eq!(got, (want_status, Some(want_code.to_owned())), "{url} {content_type} {encoding:?}");
        }
        let response = f.client.get(f.ingestion_url()).bearer_auth(&token).send().await.expect("GET");
        assert_eq!(response.status().as_u16(), 405);
        let log = f.standin.requests();
        let unknown = log.iter().find(|r| r.error_code.as_deref() == Some("UnknownColumn")).expect("logged");
        assert!(unknown.message.as_deref().is_some_and(|m| m.contains("Nope")), "{unknown:?}");
        assert!(f.standin.rows().is_empty());
    }

    #[tokio::test]
    async fn ingestion_limits_both_sizes_to_a_million_bytes() {
        let f = fixture().await;
        let token = f.secret_token().await;
        let row = |len: usize| format!(r#"{{"UUID":"{}"}}"#, "x".repeat(len));
        // Exactly 1 000 000 bytes uncompressed: accepted.
        let exact = format!("[{}]", row(MAX_BODY_BYTES - 2 - 11));
        assert_eq!(exact.len(), MAX_BODY_BYTES);
        assert_eq!(f.ingest(&token, exact.as_bytes()).await, (204, None));
        // One more byte: refused, although it compresses well.
        let over = format!("[{}]", row(MAX_BODY_BYTES - 2 - 10));
        assert_eq!(f.ingest(&token, over.as_bytes()).await, (413, Some("ContentLengthLimitExceeded".to_owned())));
        // Over the limit as received (uncompressed).
        let url = f.ingestion_url();
        assert_eq!(
            f.ingest_raw(&url, &token, "application/json", None, over.into_bytes()).await,
            (413, Some("ContentLengthLimitExceeded".to_owned()))
        );
        // Over the limit compressed: incompressible bytes.
        let noise: Vec<u8> = (0..MAX_BODY_BYTES + 1).map(|_| fastrand::u8(..)).collect();
        assert_eq!(
            f.ingest_raw(&url, &token, "application/json", Some("gzip"), noise).await,
            (413, Some("ContentLengthLimitExceeded".to_owned()))
        );
        assert_eq!(f.standin.rows().len(), 1);
    }

    #[tokio::test]
    async fn faults_answer_after_authentication_and_count_early_retries() {
        let f = fixture().await;
        let token = f.secret_token().await;
        let body = br#"[{"UUID":"a"}]"#;
        f.standin.respond_next(2, 429, Some(Duration::from_millis(1500)));
        f.standin.respond_next(1, 503, None);
        // An unauthenticated request does not consume a fault.
        assert_eq!(f.ingest("bad", body).await.0, 401);
        let response = f
            .client
            .post(f.ingestion_url())
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(&body[..])
            .send()
            .await
            .expect("send");
        assert_eq!(response.status().as_u16(), 429);
        assert_eq!(response.headers().get("retry-after").map(|v| v.as_bytes()), Some(&b"2"[..]));
        assert_eq!(f.standin.early_retries(), 0);
        // Straight away again: too early.
        assert_eq!(f.ingest(&token, body).await, (429, Some("TooManyRequests".to_owned())));
        assert_eq!(f.standin.early_retries(), 1);
        let log = f.standin.requests();
        assert_eq!(log.last().and_then(|r| r.retry_after), Some(Duration::from_secs(2)));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(f.ingest(&token, body).await, (503, Some("ServiceUnavailable".to_owned())));
        assert_eq!(f.ingest(&token, body).await, (204, None));
        assert_eq!(f.standin.early_retries(), 1);
        assert_eq!(f.standin.rows().len(), 1);
    }

    #[tokio::test]
    async fn down_refuses_connections_and_up_serves_on_the_same_port() {
        let f = fixture().await;
        let token = f.secret_token().await;
        let body = br#"[{"UUID":"a"}]"#;
        assert_eq!(f.ingest(&token, body).await.0, 204);
        f.standin.set_down(true).expect("down");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let refused = tokio::net::TcpStream::connect(f.standin.addr()).await.is_err();
            if refused {
                break;
            }
            assert!(Instant::now() < deadline, "still accepting connections");
            tokio::task::yield_now().await;
        }
        let sent = f
            .client
            .post(f.ingestion_url())
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(&body[..])
            .send()
            .await;
        assert!(sent.is_err());
        f.standin.set_down(false).expect("up");
        assert_eq!(f.ingest(&token, body).await.0, 204);
        assert_eq!(f.standin.rows().len(), 2);
    }
}
