//! Registering endpoints with the node's collector over its control socket
//! (newline-delimited JSON: `endpoint_add`, `endpoint_del`).

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::error::CniError;

/// How long the collector gets to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What `endpoint_add` carries.
#[derive(Clone, Debug, Serialize)]
pub struct Endpoint {
    pub container_id: String,
    pub ifname: String,
    pub namespace: String,
    pub name: String,
    pub ip: String,
    pub mac: String,
    pub host_ifname: String,
    pub host_mac: String,
    pub netns: String,
}

#[derive(Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request<'a> {
    EndpointAdd(&'a Endpoint),
    EndpointDel { container_id: &'a str, ifname: &'a str },
}

/// Whether a request reached a collector.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// No collector listens on the socket (not started, or restarting).
    NoCollector,
}

/// Registers `ep`.
///
/// # Errors
///
/// [`CniError::RegistrationRefused`] with the collector's reason,
/// [`CniError::TryAgainLater`] when it does not answer.
pub fn add(socket: &Path, ep: &Endpoint) -> Result<Outcome, CniError> {
    send(socket, &Request::EndpointAdd(ep))
}

/// Unregisters `container_id`/`ifname` (unknown ones included).
///
/// # Errors
///
/// As [`add`].
pub fn del(socket: &Path, container_id: &str, ifname: &str) -> Result<Outcome, CniError> {
    send(socket, &Request::EndpointDel { container_id, ifname })
}

fn send(socket: &Path, req: &Request<'_>) -> Result<Outcome, CniError> {
    let shown = socket.display().to_string();
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => return Ok(Outcome::NoCollector),
        Err(source) => return Err(CniError::Io { action: format!("connecting to the collector at {shown}"), source }),
    };
    let again = |e: std::io::Error| CniError::TryAgainLater(format!("talking to the collector at {shown}: {e}"));
    stream.set_read_timeout(Some(TIMEOUT)).map_err(again)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(again)?;
    let mut line = serde_json::to_vec(req).expect("a request always encodes");
    line.push(b'\n');
    stream.write_all(&line).map_err(again)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(again)?;
    if answer.is_empty() {
        return Err(CniError::TryAgainLater(format!("the collector at {shown} closed the connection without answering")));
    }
    let v: serde_json::Value = serde_json::from_str(&answer)
        .map_err(|e| CniError::TryAgainLater(format!("the collector at {shown} answered something unreadable: {e}")))?;
    if v.get("ok").and_then(serde_json::Value::as_bool) == Some(true) {
        Ok(Outcome::Done)
    } else {
        let reason = v.get("error").and_then(serde_json::Value::as_str).unwrap_or("no reason given").to_owned();
        Err(CniError::RegistrationRefused { socket: shown, reason })
    }
}
