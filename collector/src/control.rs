//! The collector's local control socket: a Unix stream socket speaking
//! newline-delimited JSON.
//!
//! One request per line (at most 4 MiB); `apply` and `status` get one response line,
//! `subscribe` turns the connection into a stream of event records (one JSON
//! object per line; `{"lost": N}` when this subscriber fell behind by N).
//! The lab uses it to program the datapath and the demo and tests use it to
//! watch decoded events; it is not a public API (that is the gRPC Observer).
//! Who may connect and what an `apply` may name is checked by
//! [`crate::guard`].

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::decoder::Record;
use crate::registry::{Registered, Registration};
use crate::state::NodeState;

/// A request on the control socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Program the datapath with this state; answered once it is in force.
    Apply { state: Box<NodeState> },
    /// Counters and what is programmed. (Struct variants with no fields,
    /// so that a request with fields they do not take is refused.)
    Status {},
    /// Stream every decoded event from now on.
    Subscribe {},
    /// The CNI plugin plugged a pod: remember how (see [`crate::registry`]).
    EndpointAdd(Box<Registration>),
    /// The CNI plugin unplugged a pod (unknown ones are fine).
    EndpointDel { container_id: String, ifname: String },
}

/// Why a request line is refused before anything is done.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request longer than {max} bytes")]
    TooLong { max: usize },
    #[error("bad request: {0}")]
    Json(#[from] serde_json::Error),
}

/// Parses one request line (without its newline), at most
/// [`crate::guard::MAX_REQUEST_BYTES`] long. Never panics, whatever the bytes.
///
/// # Errors
///
/// [`RequestError::TooLong`] past the bound, [`RequestError::Json`] for
/// anything that is not exactly one request.
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    let max = crate::guard::MAX_REQUEST_BYTES;
    if line.len() > max {
        return Err(RequestError::TooLong { max });
    }
    Ok(serde_json::from_slice(line)?)
}

/// The answer to `apply` and `status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<Status>,
}

/// What `status` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub endpoints: usize,
    pub attached_interfaces: Vec<String>,
    pub events_decoded: u64,
    pub events_undecodable: u64,
    /// Events the probes could not write (ring buffer full), per CPU.
    pub events_lost_per_cpu: Vec<u64>,
    pub events_written: u64,
    pub packets_forwarded: u64,
    pub packets_dropped: u64,
    pub ct_entries: u64,
    pub ct_created: u64,
    pub kernel_drops_seen: u64,
    pub kernel_drops_enabled: bool,
    pub aggregation: String,
    pub pin_dir: String,
    /// How this collector brought the datapath into force: installed,
    /// adopted (a pinned one of this build) or replaced.
    #[serde(default)]
    pub datapath: String,
    /// Whether a desired state has been applied since it started.
    #[serde(default)]
    pub programmed: bool,
    /// Endpoints the CNI plugin registered, with the ids they were given.
    #[serde(default)]
    pub registrations: Vec<Registered>,
    /// The Kubernetes state source's sync state, when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<crate::kubernetes::SourceStatus>,
}

/// One line of a subscription stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StreamItem {
    Lost { lost: u64 },
    Record(Box<Record>),
}

/// Errors talking to a collector.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the collector at {path}: {source}")]
    Connect { path: String, #[source] source: std::io::Error },
    #[error("talking to the collector: {0}")]
    Io(#[from] std::io::Error),
    #[error("the collector sent something unreadable: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the collector closed the connection without answering")]
    Closed,
    #[error("{0}")]
    Refused(String),
}

fn connect(path: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(path).map_err(|source| ClientError::Connect { path: path.display().to_string(), source })
}

fn call(path: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let mut stream = connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    if reader.read_line(&mut answer)? == 0 {
        return Err(ClientError::Closed);
    }
    let resp: Response = serde_json::from_str(&answer)?;
    if resp.ok { Ok(resp) } else { Err(ClientError::Refused(resp.error.unwrap_or_else(|| "refused".into()))) }
}

/// Programs a collector's datapath; returns once it is in force.
pub fn apply(path: &Path, state: &NodeState) -> Result<(), ClientError> {
    call(path, &Request::Apply { state: Box::new(state.clone()) }, Duration::from_secs(60)).map(|_| ())
}

/// A collector's status.
pub fn status(path: &Path) -> Result<Status, ClientError> {
    let resp = call(path, &Request::Status {}, Duration::from_secs(10))?;
    resp.status.ok_or(ClientError::Closed)
}

/// A live stream of a collector's events.
pub struct Subscription {
    reader: BufReader<UnixStream>,
    line: String,
}

impl Response {
    /// A refusal with its reason.
    #[must_use]
    pub fn refused(error: impl Into<String>) -> Self {
        Self { ok: false, error: Some(error.into()), status: None }
    }
}

impl Subscription {
    /// Subscribes; events from the moment the collector answers are delivered.
    pub fn open(path: &Path) -> Result<Self, ClientError> {
        let mut stream = connect(path)?;
        let mut line = serde_json::to_vec(&Request::Subscribe {})?;
        line.push(b'\n');
        stream.write_all(&line)?;
        let mut reader = BufReader::new(stream);
        // The collector acknowledges once the subscription is registered.
        let mut ack = String::new();
        if reader.read_line(&mut ack)? == 0 {
            return Err(ClientError::Closed);
        }
        let resp: Response = serde_json::from_str(&ack)?;
        if !resp.ok {
            return Err(ClientError::Refused(resp.error.unwrap_or_default()));
        }
        Ok(Self { reader, line: String::new() })
    }

    /// Waits at most `timeout` for the next item; `Ok(None)` on timeout.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<StreamItem>, ClientError> {
        self.reader.get_ref().set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        match self.reader.read_line(&mut self.line) {
            Ok(0) => Err(ClientError::Closed),
            Ok(_) => {
                let item = serde_json::from_str(self.line.trim_end())?;
                self.line.clear();
                Ok(Some(item))
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Collects records until `done` holds for those collected so far, or
    /// until `within` has passed: then it returns what it has, so that the
    /// caller's checks name what never came. Fails if the collector
    /// reports that this subscriber lost events.
    pub fn collect_until(&mut self, within: Duration, done: impl Fn(&[Record]) -> bool) -> Result<Vec<Record>, ClientError> {
        let deadline = std::time::Instant::now() + within;
        let mut out = Vec::new();
        while !done(&out) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.next_timeout(left)? {
                Some(StreamItem::Record(r)) => out.push(*r),
                Some(StreamItem::Lost { lost }) => {
                    return Err(ClientError::Refused(format!("subscriber fell behind, {lost} events lost")));
                }
                None => {}
            }
        }
        Ok(out)
    }
}

/// What the control socket's server asks of the agent (implemented by the
/// agent; tests give it a stand-in, so the protocol is tested without a
/// datapath).
pub trait Handler: Send + Sync + 'static {
    /// The uid allowed besides root (`--control-uid`).
    fn control_uid(&self) -> u32;
    /// Programs the datapath with `state` (blocking).
    ///
    /// # Errors
    ///
    /// Why the state was refused or could not be applied.
    fn apply(&self, state: &NodeState) -> Result<(), String>;
    /// The CNI plugin plugged a pod (blocking).
    ///
    /// # Errors
    ///
    /// Why the registration was refused.
    fn endpoint_add(&self, registration: Registration) -> Result<(), String>;
    /// The CNI plugin unplugged a pod (blocking).
    ///
    /// # Errors
    ///
    /// Why it could not be forgotten.
    fn endpoint_del(&self, container_id: &str, ifname: &str) -> Result<(), String>;
    /// Counters and what is programmed (blocking).
    fn status(&self) -> Status;
    /// Every decoded event from now on.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<Record>>;
}

async fn write_json<T: Serialize>(stream: &mut (impl tokio::io::AsyncWrite + Unpin), value: &T) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

/// Runs `blocking` on a blocking thread; its error, or a failed thread, as
/// a refusal naming `what`.
async fn answer(what: &str, blocking: impl FnOnce() -> Result<(), String> + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(blocking).await {
        Ok(Ok(())) => Response { ok: true, ..Response::default() },
        Ok(Err(e)) => Response::refused(e),
        Err(e) => Response::refused(format!("{what} failed: {e}")),
    }
}

/// Serves one connection of the control socket: checks the peer's uid
/// (root or [`Handler::control_uid`]), then answers request lines until the
/// peer goes away. A line that is not a request is answered with why and
/// the connection goes on; one longer than
/// [`crate::guard::MAX_REQUEST_BYTES`] is answered and the connection
/// closed. `subscribe` turns the connection into the event stream.
pub async fn serve<H: Handler>(handler: std::sync::Arc<H>, stream: tokio::net::UnixStream) {
    use tokio::sync::broadcast::error::RecvError;
    // Root or --control-uid only; anyone else hears why and is gone.
    let peer = stream.peer_cred().map(|c| c.uid());
    let (read, mut write) = stream.into_split();
    match peer {
        Ok(uid) if crate::guard::peer_allowed(uid, handler.control_uid()) => {}
        Ok(uid) => {
            log::warn!("control socket: refused a connection from uid {uid}");
            let _ = write_json(&mut write, &Response::refused(format!("uid {uid} may not use this control socket (root or --control-uid only)"))).await;
            return;
        }
        Err(err) => {
            log::warn!("control socket: no peer credentials: {err}");
            return;
        }
    }
    let mut reader = tokio::io::BufReader::new(read);
    loop {
        let line = match crate::guard::read_request_line(&mut reader, crate::guard::MAX_REQUEST_BYTES).await {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(crate::guard::LineError::TooLong { max }) => {
                log::warn!("control socket: refused a request longer than {max} bytes");
                let _ = write_json(&mut write, &Response::refused(format!("request longer than {max} bytes; closing the connection"))).await;
                return;
            }
            Err(crate::guard::LineError::Io(_)) => return,
        };
        let req = match parse_request(&line) {
            Ok(r) => r,
            Err(err) => {
                let _ = write_json(&mut write, &Response::refused(err.to_string())).await;
                continue;
            }
        };
        let h = std::sync::Arc::clone(&handler);
        let resp = match req {
            Request::Apply { state } => answer("apply", move || h.apply(&state)).await,
            Request::EndpointAdd(reg) => answer("endpoint_add", move || h.endpoint_add(*reg)).await,
            Request::EndpointDel { container_id, ifname } => answer("endpoint_del", move || h.endpoint_del(&container_id, &ifname)).await,
            Request::Status {} => match tokio::task::spawn_blocking(move || h.status()).await {
                Ok(s) => Response { ok: true, error: None, status: Some(s) },
                Err(e) => Response::refused(e.to_string()),
            },
            Request::Subscribe {} => {
                let mut rx = handler.subscribe();
                if write_json(&mut write, &Response { ok: true, ..Response::default() }).await.is_err() {
                    return;
                }
                loop {
                    let item = match rx.recv().await {
                        Ok(r) => StreamItem::Record(Box::new((*r).clone())),
                        Err(RecvError::Lagged(n)) => StreamItem::Lost { lost: n },
                        Err(RecvError::Closed) => return,
                    };
                    if write_json(&mut write, &item).await.is_err() {
                        return;
                    }
                }
            }
        };
        if write_json(&mut write, &resp).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_anything_else_is_refused() {
        assert!(matches!(parse_request(br#"{"op":"status"}"#), Ok(Request::Status {})));
        assert!(matches!(parse_request(br#"{"op":"subscribe"}"#), Ok(Request::Subscribe {})));
        assert!(parse_request(br#"{"op":"status","extra":1}"#).is_err(), "a field status does not take");
        let add = br#"{"op":"endpoint_add","container_id":"c1","ifname":"eth0","namespace":"x","name":"a","ip":"10.244.1.5","mac":"02:00:0a:f4:01:05","host_ifname":"lxc0123456789ab","host_mac":"06:00:0a:f4:01:05","netns":"/run/netns/lab.x.a"}"#;
        assert!(matches!(parse_request(add), Ok(Request::EndpointAdd(r)) if r.ip == std::net::Ipv4Addr::new(10, 244, 1, 5)));
        assert!(matches!(parse_request(br#"{"op":"endpoint_del","container_id":"c1","ifname":"eth0"}"#), Ok(Request::EndpointDel { .. })));
        for bad in [&br#"{"op":"endpoint_add","container_id":"c1"}"#[..], br#"{"op":"endpoint_del","container_id":"c1"}"#, br#"{"op":"endpoint_add","container_id":"c1","ifname":"eth0","namespace":"x","name":"a","ip":"banana","mac":"","host_ifname":"","host_mac":"","netns":""}"#] {
            assert!(parse_request(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        for bad in [&b""[..], b"{", b"null", b"[]", br#"{"op":"reboot"}"#, b"\xff\xfe", br#"{"op":"apply"}"#] {
            let err = parse_request(bad).expect_err(&String::from_utf8_lossy(bad));
            assert!(err.to_string().starts_with("bad request"), "{err}");
        }
        // Deep nesting is refused by serde_json's recursion limit, not a stack overflow.
        let deep = format!(r#"{{"op":"apply","state":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_request(deep.as_bytes()).is_err());
        let long = vec![b' '; crate::guard::MAX_REQUEST_BYTES + 1];
        assert!(matches!(parse_request(&long), Err(RequestError::TooLong { .. })));
    }
}
