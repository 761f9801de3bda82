//! What the sinks received: the tally of every flow by node and sequence
//! number, and the loopback receivers (OTLP/gRPC, Azure Logs Ingestion over
//! HTTPS, a tailed file) that feed it without keeping records.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use super::SinkKind;
use super::collectors::{now_ns, parse_uuid};

/// gRPC path of OTLP logs.
const OTLP_EXPORT_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
/// The attribute of an OTLP record that holds the flow's UUID.
const OTLP_UUID_KEY: &[u8] = b"sightline.flow.uuid";

/// A flow not arrived yet, in [`Tally`].
pub(super) const NOT_ARRIVED: u32 = u32::MAX;

/// Per node and sequence number, the export delay of the flow's first
/// arrival (µs), and counts.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) delays: Mutex<Vec<Vec<u32>>>,
    pub(super) received: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) unknown: AtomicU64,
    pub(super) last_arrival_ns: AtomicU64,
}

impl Tally {
    pub(super) fn lock(&self) -> MutexGuard<'_, Vec<Vec<u32>>> {
        self.delays.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the arrival now of the flows whose UUIDs `uuids` yields.
    pub(super) fn arrived<'a>(&self, uuids: impl Iterator<Item = &'a [u8]>) {
        let now = now_ns();
        let (mut received, mut duplicates, mut unknown) = (0, 0, 0);
        {
            let mut delays = self.lock();
            for uuid in uuids {
                let Some((node, seq, time)) = parse_uuid(uuid) else {
                    unknown += 1;
                    continue;
                };
                let node = usize::from(node);
                if delays.len() <= node {
                    delays.resize_with(node + 1, Vec::new);
                }
                let per = &mut delays[node];
                let seq = seq as usize;
                if per.len() <= seq {
                    per.resize((seq + 1).max(per.len() * 2).max(1 << 16), NOT_ARRIVED);
                }
                if per[seq] == NOT_ARRIVED {
                    per[seq] = u32::try_from((now - time).max(0) / 1000).unwrap_or(NOT_ARRIVED - 1);
                    received += 1;
                } else {
                    duplicates += 1;
                }
            }
        }
        self.received.fetch_add(received, Ordering::SeqCst);
        self.duplicates.fetch_add(duplicates, Ordering::SeqCst);
        self.unknown.fetch_add(unknown, Ordering::SeqCst);
        if received + duplicates > 0 {
            self.last_arrival_ns.store(now as u64, Ordering::SeqCst);
        }
    }

    /// Flows of the phase between marks `from` and `to` not arrived yet.
    pub(super) fn missing(&self, from: &[u64], to: &[u64]) -> u64 {
        let delays = self.lock();
        let mut missing = 0;
        for (node, (&a, &b)) in from.iter().zip(to).enumerate() {
            let per = delays.get(node).map_or(&[][..], Vec::as_slice);
            for seq in a..b {
                if per.get(seq as usize).is_none_or(|&d| d == NOT_ARRIVED) {
                    missing += 1;
                }
            }
        }
        missing
    }

    /// Delays of the arrived flows of a phase, sorted (µs).
    pub(super) fn delays(&self, from: &[u64], to: &[u64]) -> Vec<u32> {
        let delays = self.lock();
        let mut out = Vec::new();
        for (node, (&a, &b)) in from.iter().zip(to).enumerate() {
            if let Some(per) = delays.get(node) {
                out.extend(per.iter().take(b as usize).skip(a as usize).copied().filter(|&d| d != NOT_ARRIVED));
            }
        }
        out.sort_unstable();
        out
    }
}

pub(super) fn percentile(sorted: &[u32], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(Duration::from_micros(u64::from(sorted[i.min(sorted.len() - 1)])))
}

/// Finds `needle` in `haystack` from `from`.
pub(super) fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = from;
    while i + needle.len() <= haystack.len() {
        let p = i + haystack[i..].iter().position(|&b| b == first)?;
        if haystack.get(p..p + needle.len()) == Some(needle) {
            return Some(p);
        }
        i = p + 1;
    }
    None
}

/// The 36-byte values following each `key` (e.g. `"UUID":"`) in JSON text.
pub(super) fn json_uuids<'a>(text: &'a [u8], key: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut at = 0;
    std::iter::from_fn(move || {
        let p = find(text, key, at)? + key.len();
        at = p + 36;
        text.get(p..p + 36)
    })
}

// ---------------------------------------------------------------------------
// Protobuf, read without decoding (OTLP receiver).

/// One field of a protobuf message.
pub(super) enum Field<'a> {
    Varint,
    Bytes(&'a [u8]),
    Fixed,
}

pub(super) fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Calls `f` with every field of a message; `None` if it does not parse.
pub(super) fn fields<'a>(mut b: &'a [u8], mut f: impl FnMut(u64, Field<'a>)) -> Option<()> {
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let field = match key & 7 {
            0 => {
                varint(&mut b)?;
                Field::Varint
            }
            1 => {
                b = b.get(8..)?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut b)?).ok()?;
                let (v, rest) = (b.get(..len)?, b.get(len..)?);
                b = rest;
                Field::Bytes(v)
            }
            5 => {
                b = b.get(4..)?;
                Field::Fixed
            }
            _ => return None,
        };
        f(key >> 3, field);
    }
    Some(())
}

/// The field `number` of a message, when it is length-delimited.
pub(super) fn each_bytes<'a>(message: &'a [u8], number: u64, mut f: impl FnMut(&'a [u8])) -> Option<()> {
    fields(message, |n, field| {
        if let (true, Field::Bytes(v)) = (n == number, field) {
            f(v);
        }
    })
}

/// The `sightline.flow.uuid` of every log record of an
/// `ExportLogsServiceRequest` (resource_logs 1 → scope_logs 2 →
/// log_records 2 → attributes 6 → key 1 / value 2 → string_value 1).
pub(super) fn otlp_uuids(request: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut bad = false;
    let top = each_bytes(request, 1, |resource_logs| {
        let r = each_bytes(resource_logs, 2, |scope_logs| {
            let r = each_bytes(scope_logs, 2, |record| {
                let mut uuid = None;
                let r = each_bytes(record, 6, |kv| {
                    let (mut key, mut value) = (None, None);
                    let _ = fields(kv, |n, f| match (n, f) {
                        (1, Field::Bytes(k)) => key = Some(k),
                        (2, Field::Bytes(v)) => value = Some(v),
                        _ => {}
                    });
                    if key == Some(OTLP_UUID_KEY)
                        && let Some(v) = value
                    {
                        let _ = each_bytes(v, 1, |s| uuid = Some(s));
                    }
                });
                bad |= r.is_none();
                out.push(uuid.unwrap_or_default());
            });
            bad |= r.is_none();
        });
        bad |= r.is_none();
    });
    (top.is_some() && !bad).then_some(out)
}

// ---------------------------------------------------------------------------
// Receivers.

/// An accept loop that can be taken down (listener and connections
/// closed) and brought back on the same port.
pub(super) struct Server {
    pub(super) addr: SocketAddr,
    pub(super) running: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
    pub(super) serve: Serve,
}

pub(super) type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
/// Serves one accepted connection.
pub(super) type Serve = Arc<dyn Fn(tokio::net::TcpStream) -> BoxFuture + Send + Sync>;

impl Server {
    pub(super) async fn start(serve: Serve) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the sink receiver")?;
        let server = Self { addr: listener.local_addr()?, running: Mutex::new(None), serve };
        server.spawn(listener);
        Ok(server)
    }

    pub(super) fn spawn(&self, listener: TcpListener) {
        let (stop, mut stopped) = oneshot::channel();
        let serve = Arc::clone(&self.serve);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => if let Ok((stream, _)) = accepted {
                        let _ = stream.set_nodelay(true);
                        connections.spawn(serve(stream));
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
            drop(listener);
            connections.shutdown().await;
        });
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = Some((stop, task));
    }

    pub(super) async fn set_down(&self, down: bool) -> anyhow::Result<()> {
        if down {
            let running = self.running.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some((stop, task)) = running {
                let _ = stop.send(());
                let _ = task.await;
            }
        } else if self.running.lock().unwrap_or_else(PoisonError::into_inner).is_none() {
            let listener = TcpListener::bind(self.addr).await.with_context(|| format!("binding {} again", self.addr))?;
            self.spawn(listener);
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some((_, task)) = self.running.lock().unwrap_or_else(PoisonError::into_inner).take() {
            task.abort();
        }
    }
}

/// Serves one connection with hyper (HTTP/1.1 or HTTP/2, TLS or not).
pub(super) async fn serve_http<I, F, Fut, B>(io: I, handle: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = hyper::service::service_fn(move |request| {
        let handle = handle.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(request).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(io), service).await;
}

pub(super) type GrpcBody = StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>>;

pub(super) fn grpc_response(status: tonic::Code, message: &str) -> Response<GrpcBody> {
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", i32::from(status).into());
    if !message.is_empty()
        && let Ok(v) = message.parse()
    {
        trailers.insert("grpc-message", v);
    }
    let mut frames = Vec::with_capacity(2);
    if status == tonic::Code::Ok {
        // One empty ExportLogsServiceResponse, uncompressed.
        frames.push(Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))));
    }
    frames.push(Ok(Frame::trailers(trailers)));
    let mut response = Response::new(StreamBody::new(tokio_stream::iter(frames)));
    response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/grpc"));
    response
}

/// OTLP/gRPC `LogsService/Export`.
pub(super) async fn otlp_export(tally: Arc<Tally>, request: Request<Incoming>) -> Response<GrpcBody> {
    if request.uri().path() != OTLP_EXPORT_PATH {
        return grpc_response(tonic::Code::Unimplemented, "only LogsService/Export is served");
    }
    let Ok(body) = request.into_body().collect().await.map(http_body_util::Collected::to_bytes) else {
        return grpc_response(tonic::Code::Unavailable, "reading the request");
    };
    // gRPC messages: compressed flag, 4-byte length, message.
    let mut rest = &body[..];
    while !rest.is_empty() {
        let Some((&[flag, a, b, c, d], after)) = rest.split_first_chunk::<5>() else {
            return grpc_response(tonic::Code::InvalidArgument, "truncated gRPC frame");
        };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if flag != 0 || after.len() < len {
            return grpc_response(tonic::Code::InvalidArgument, "compressed or truncated message");
        }
        match otlp_uuids(&after[..len]) {
            Some(uuids) => tally.arrived(uuids.into_iter()),
            None => return grpc_response(tonic::Code::InvalidArgument, "not an ExportLogsServiceRequest"),
        }
        rest = &after[len..];
    }
    grpc_response(tonic::Code::Ok, "")
}

/// Logs Ingestion: gunzips the JSON array, reads each row's UUID, 204.
pub(super) async fn azure_ingest(tally: Arc<Tally>, path_end: Arc<str>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let status = |s: StatusCode| {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = s;
        r
    };
    if request.method() != hyper::Method::POST || !request.uri().path().ends_with(&*path_end) {
        return status(StatusCode::NOT_FOUND);
    }
    if !request.headers().get("authorization").is_some_and(|v| v.as_bytes().starts_with(b"Bearer ")) {
        return status(StatusCode::UNAUTHORIZED);
    }
    let gzip = request.headers().get("content-encoding").is_some_and(|v| v.as_bytes() == b"gzip");
    let Ok(body) = request.into_body().collect().await.map(http_body_util::Collected::to_bytes) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let text = if gzip {
        let mut plain = Vec::with_capacity(body.len() * 16);
        if flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut plain).is_err() {
            return status(StatusCode::BAD_REQUEST);
        }
        plain
    } else {
        body.to_vec()
    };
    tally.arrived(json_uuids(&text, b"\"UUID\":\""));
    status(StatusCode::NO_CONTENT)
}

/// Tails the file sink's output (following rotation) until `stop`.
pub(super) fn tail_file(path: &Path, tally: &Tally, stop: &AtomicBool) {
    use std::os::unix::fs::MetadataExt as _;
    let mut file: Option<std::fs::File> = None;
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    while !stop.load(Ordering::SeqCst) {
        let Some(f) = file.as_mut() else {
            file = std::fs::File::open(path).ok();
            if file.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            continue;
        };
        match f.read(&mut buf) {
            Ok(0) | Err(_) => {
                // At the end: a rotation replaced the file? Then read the
                // new one (this one is complete).
                let rotated = match (f.metadata(), std::fs::metadata(path)) {
                    (Ok(a), Ok(b)) => a.ino() != b.ino(),
                    _ => false,
                };
                if rotated {
                    file = None;
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                if let Some(end) = pending.iter().rposition(|&b| b == b'\n') {
                    tally.arrived(json_uuids(&pending[..end], b"\"uuid\":\""));
                    pending.drain(..=end);
                }
            }
        }
    }
}

/// The running sink.
pub(super) enum Sink {
    Otlp(Server),
    Azure { server: Server, _standin: sightline_standins::azure::AzureStandin },
    File { stop: Arc<AtomicBool>, thread: Option<std::thread::JoinHandle<()>> },
}

impl Sink {
    pub(super) async fn start(kind: SinkKind, dir: &Path, tally: &Arc<Tally>) -> anyhow::Result<(Self, String)> {
        match kind {
            SinkKind::Otlp => {
                let t = Arc::clone(tally);
                let server = Server::start(Arc::new(move |stream| -> BoxFuture {
                    let t = Arc::clone(&t);
                    Box::pin(serve_http(stream, move |r| otlp_export(Arc::clone(&t), r)))
                }))
                .await?;
                let config = format!("    otlp:\n      endpoint: http://{}\n      protocol: grpc\n", server.addr);
                Ok((Sink::Otlp(server), config))
            }
            SinkKind::Azure => {
                use sightline_standins::azure::{AzureStandin, ColumnKind, StandinOptions};
                let ca = sightline_standins::tls::TestCa::new("sightline bench CA")?;
                let ca_file = ca.write_ca(dir)?;
                let columns = sightline_export::encode::azure::COLUMNS
                    .iter()
                    .map(|(name, ty)| {
                        let kind = ColumnKind::from_arm_name(ty.arm_name()).ok_or_else(|| anyhow!("column type {}", ty.arm_name()))?;
                        Ok(((*name).to_owned(), kind))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let standin = AzureStandin::start(&ca, StandinOptions::new(columns)).await?;
                let opts = standin.options();
                let secret_file = dir.join("client-secret");
                std::fs::write(&secret_file, &opts.client_secret)?;
                let tls = sightline_standins::tls::server_config(&ca.issue(&["127.0.0.1", "localhost"])?, &[b"h2", b"http/1.1"])?;
                let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                let path_end: Arc<str> = Arc::from(format!("/dataCollectionRules/{}/streams/{}", opts.dcr_immutable_id, opts.stream));
                let t = Arc::clone(tally);
                let server = Server::start(Arc::new(move |stream| -> BoxFuture {
                    let (t, acceptor, path_end) = (Arc::clone(&t), acceptor.clone(), Arc::clone(&path_end));
                    Box::pin(async move {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            serve_http(tls, move |r| azure_ingest(Arc::clone(&t), Arc::clone(&path_end), r)).await;
                        }
                    })
                }))
                .await?;
                let config = format!(
                    "    azureMonitor:\n      endpoint: https://{}\n      dcrImmutableId: {}\n      stream: {}\n      caFile: {}\n      auth:\n        authorityHost: {}\n        clientSecret:\n          tenantId: {}\n          clientId: {}\n          secretFile: {}\n",
                    server.addr,
                    opts.dcr_immutable_id,
                    opts.stream,
                    ca_file.display(),
                    standin.authority_host(),
                    opts.tenant_id,
                    opts.client_id,
                    secret_file.display()
                );
                Ok((Sink::Azure { server, _standin: standin }, config))
            }
            SinkKind::File => {
                let path = dir.join("flows.log");
                let stop = Arc::new(AtomicBool::new(false));
                let (t, s, p) = (Arc::clone(tally), Arc::clone(&stop), path.clone());
                let thread = std::thread::Builder::new().name("tail".into()).spawn(move || tail_file(&p, &t, &s))?;
                let config = format!("    file:\n      path: {}\n      maxSizeMB: 256\n      maxBackups: 1\n", path.display());
                Ok((Sink::File { stop, thread: Some(thread) }, config))
            }
        }
    }

    pub(super) fn server(&self) -> Option<&Server> {
        match self {
            Sink::Otlp(server) | Sink::Azure { server, .. } => Some(server),
            Sink::File { .. } => None,
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Sink::File { stop, thread } = self {
            stop.store(true, Ordering::SeqCst);
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::export::collectors::flow_uuid;

    #[test]
    fn otlp_requests_are_read_without_decoding() {
        use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
        use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
        use prost::Message as _;
        let kv = |k: &str, v: &str| KeyValue {
            key: k.to_owned(),
            value: Some(AnyValue { value: Some(Value::StringValue(v.to_owned())) }),
            ..KeyValue::default()
        };
        let uuids = [flow_uuid(0, 1, 5), flow_uuid(1, 2, 6)];
        let records = uuids
            .iter()
            .map(|u| LogRecord { time_unix_nano: 7, attributes: vec![kv("k8s.node.name", "n"), kv("sightline.flow.uuid", u)], ..LogRecord::default() })
            .collect();
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs { log_records: records, ..ScopeLogs::default() }],
                ..ResourceLogs::default()
            }],
        };
        let bytes = request.encode_to_vec();
        let found = otlp_uuids(&bytes).expect("parses");
        assert_eq!(found, vec![uuids[0].as_bytes(), uuids[1].as_bytes()]);
        assert!(otlp_uuids(&bytes[..bytes.len() - 3]).is_none());
    }

    #[test]
    fn json_rows_give_their_uuids() {
        let a = flow_uuid(0, 1, 2);
        let b = flow_uuid(0, 2, 3);
        let text = format!("[{{\"TimeGenerated\":\"x\",\"UUID\":\"{a}\"}},{{\"UUID\":\"{b}\",\"Verdict\":\"FORWARDED\"}}]");
        let found: Vec<&[u8]> = json_uuids(text.as_bytes(), b"\"UUID\":\"").collect();
        assert_eq!(found, vec![a.as_bytes(), b.as_bytes()]);
    }

    #[test]
    fn the_tally_counts_missing_and_duplicates() {
        let t = Tally::default();
        let time = now_ns();
        let u: Vec<String> = (0..4).map(|s| flow_uuid(1, s, time)).collect();
        t.arrived([u[0].as_bytes(), u[2].as_bytes(), u[2].as_bytes()].into_iter());
        assert_eq!(t.missing(&[0, 0], &[0, 4]), 2);
        assert_eq!(t.duplicates.load(Ordering::SeqCst), 1);
        assert_eq!(t.delays(&[0, 0], &[0, 4]).len(), 2);
    }
}
