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
    /// Counters and what is programmed.
    Status,
    /// Stream every decoded event from now on.
    Subscribe,
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
    let resp = call(path, &Request::Status, Duration::from_secs(10))?;
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
        let mut line = serde_json::to_vec(&Request::Subscribe)?;
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

    /// Collects every record arriving within `window`.
    pub fn collect_for(&mut self, window: Duration) -> Result<Vec<Record>, ClientError> {
        let deadline = std::time::Instant::now() + window;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(out);
            }
            match self.next_timeout(left)? {
                Some(StreamItem::Record(r)) => out.push(*r),
                Some(StreamItem::Lost { lost }) => {
                    return Err(ClientError::Refused(format!("subscriber fell behind, {lost} events lost")));
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_anything_else_is_refused() {
        assert!(matches!(parse_request(br#"{"op":"status"}"#), Ok(Request::Status)));
        assert!(matches!(parse_request(br#"{"op":"subscribe"}"#), Ok(Request::Subscribe)));
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
