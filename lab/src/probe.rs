//! Connection probes between pods: `sightline lab probe` (one attempt) and
//! `sightline lab matrix` (every ordered pair), with their table and JSON
//! renderings.
//!
//! A probe runs on a thread that has joined the source pod's network
//! namespace, so the connection really leaves from the pod's `eth0`. It
//! reports *connected* or *blocked*; anything that prevents trying at all
//! (the namespace is missing, the kernel has no SCTP, …) is an error.

use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sightline_collector::netns::in_netns;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::responder::{sctp_socket, sockaddr_in, socklen_of};
use super::types::Protocol;

/// Most probes in flight at once in a matrix.
const MAX_IN_FLIGHT: usize = 64;
/// The datagram a UDP probe sends.
const UDP_PROBE: &[u8] = b"sightline probe\n";

/// One connection attempt from inside the netns at `from_netns` to `to`:
/// TCP/SCTP connected = handshake completed within `timeout` (refused, reset,
/// unreachable or timed out = blocked); UDP connected = a reply datagram
/// arrived within `timeout` (an ICMP error or silence = blocked). Errors
/// (the namespace is missing, SCTP is not available, a zero timeout, …) are
/// `Err`.
pub async fn probe(
    from_netns: &Path,
    to: SocketAddrV4,
    protocol: Protocol,
    timeout: Duration,
) -> io::Result<bool> {
    check_timeout(timeout)?;
    let path = from_netns.to_path_buf();
    let attempt = tokio::task::spawn_blocking(move || {
        in_netns(&path, move || attempt(to, protocol, timeout))
    });
    match attempt.await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(e),
        Err(e) => Err(io::Error::other(format!(
            "probing {protocol} {to} from {}: {e}",
            from_netns.display()
        ))),
    }
}

/// One probe result of a matrix; `from` and `to` are `ns/pod`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MatrixEntry {
    pub from: String,
    pub to: String,
    pub connected: bool,
}

/// Probes every ordered pair of `pods` (`ns/pod`, namespace path, address),
/// including each pod to itself, at most 64 at a time. The result is in a
/// stable order: sources sorted, then destinations sorted. The first probe
/// that fails with an error fails the whole matrix.
pub async fn matrix(
    pods: &[(String, PathBuf, Ipv4Addr)],
    port: u16,
    protocol: Protocol,
    timeout: Duration,
) -> io::Result<Vec<MatrixEntry>> {
    check_timeout(timeout)?;
    let mut sorted: Vec<&(String, PathBuf, Ipv4Addr)> = pods.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let n = sorted.len();

    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    for (i, (_, from_path, _)) in sorted.iter().enumerate() {
        for (j, (_, _, to_ip)) in sorted.iter().enumerate() {
            let limit = Arc::clone(&limit);
            let from_path = from_path.clone();
            let to = SocketAddrV4::new(*to_ip, port);
            tasks.spawn(async move {
                let outcome = match limit.acquire_owned().await {
                    Ok(_permit) => probe(&from_path, to, protocol, timeout).await,
                    Err(e) => Err(io::Error::other(e)),
                };
                (i, j, outcome)
            });
        }
    }

    let mut connected = vec![false; n * n];
    while let Some(joined) = tasks.join_next().await {
        let (i, j, outcome) =
            joined.map_err(|e| io::Error::other(format!("a matrix probe failed: {e}")))?;
        connected[i * n + j] = outcome.map_err(|e| {
            io::Error::new(e.kind(), format!("{} -> {}: {e}", sorted[i].0, sorted[j].0))
        })?;
    }

    Ok((0..n * n)
        .map(|k| MatrixEntry {
            from: sorted[k / n].0.clone(),
            to: sorted[k % n].0.clone(),
            connected: connected[k],
        })
        .collect())
}

/// The matrix as a table: sources as rows, destinations as columns, `.`
/// connected, `X` blocked (`?` for a pair missing from `entries`). Rows and
/// columns keep the order in which names first appear. Every line ends with
/// a newline; no entries give an empty string.
pub fn render_table(entries: &[MatrixEntry]) -> String {
    let mut sources: Vec<&str> = Vec::new();
    let mut destinations: Vec<&str> = Vec::new();
    let mut cells: HashMap<(&str, &str), bool> = HashMap::new();
    for e in entries {
        if !sources.contains(&e.from.as_str()) {
            sources.push(&e.from);
        }
        if !destinations.contains(&e.to.as_str()) {
            destinations.push(&e.to);
        }
        cells.insert((&e.from, &e.to), e.connected);
    }
    if entries.is_empty() {
        return String::new();
    }

    let first = sources.iter().map(|s| s.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    let mut line = format!("{:first$}", "");
    for d in &destinations {
        line.push_str("  ");
        line.push_str(d);
    }
    push_line(&mut out, &line);
    for s in &sources {
        let mut line = format!("{s:first$}");
        for d in &destinations {
            let mark = match cells.get(&(*s, *d)) {
                Some(true) => ".",
                Some(false) => "X",
                None => "?",
            };
            line.push_str("  ");
            line.push_str(&format!("{mark:width$}", width = d.chars().count()));
        }
        push_line(&mut out, &line);
    }
    out
}

fn push_line(out: &mut String, line: &str) {
    out.push_str(line.trim_end());
    out.push('\n');
}

/// The matrix as the lab contract's JSON object:
/// `{"port":80,"protocol":"TCP","results":[{"from":"x/a","to":"y/b","connected":true}, …]}`.
pub fn render_json(entries: &[MatrixEntry], port: u16, protocol: Protocol) -> String {
    #[derive(Serialize)]
    struct Matrix<'a> {
        port: u16,
        protocol: Protocol,
        results: &'a [MatrixEntry],
    }
    let doc = Matrix {
        port,
        protocol,
        results: entries,
    };
    // Plain structs of strings, numbers and booleans always serialize.
    serde_json::to_string(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn check_timeout(timeout: Duration) -> io::Result<()> {
    if timeout.is_zero() {
        Err(io::Error::new(
            ErrorKind::InvalidInput,
            "the probe timeout must be longer than zero",
        ))
    } else {
        Ok(())
    }
}

/// The blocking attempt, on a thread inside the source namespace.
fn attempt(to: SocketAddrV4, protocol: Protocol, timeout: Duration) -> io::Result<bool> {
    let outcome = match protocol {
        Protocol::Tcp => TcpStream::connect_timeout(&SocketAddr::V4(to), timeout).map(|_| true),
        Protocol::Udp => udp_attempt(to, timeout),
        Protocol::Sctp => sctp_attempt(to, timeout),
    };
    match outcome {
        Ok(connected) => Ok(connected),
        Err(e) if is_blocked(&e) => Ok(false),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("probing {protocol} {to}: {e}"),
        )),
    }
}

/// Whether a failed attempt means the network said no (or nothing), as
/// opposed to the attempt not being possible. EPERM/EACCES count as blocked:
/// they are what a local packet filter answers.
fn is_blocked(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock)
        || matches!(
            e.raw_os_error(),
            Some(
                libc::ECONNREFUSED
                    | libc::ECONNRESET
                    | libc::ECONNABORTED
                    | libc::ETIMEDOUT
                    | libc::EHOSTUNREACH
                    | libc::ENETUNREACH
                    | libc::EHOSTDOWN
                    | libc::ENETDOWN
                    | libc::EPERM
                    | libc::EACCES
            )
        )
}

/// Sends one datagram on a connected socket (so ICMP errors come back as
/// errors, and only `to` can answer) and waits for the reply.
fn udp_attempt(to: SocketAddrV4, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect(to)?;
    socket.send(UDP_PROBE)?;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        socket.set_read_timeout(Some(left))?;
        match socket.recv(&mut buf) {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A non-blocking SCTP connect, then a wait for the association.
fn sctp_attempt(to: SocketAddrV4, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    let Some(fd) = sctp_socket(true)? else {
        return Err(io::Error::new(
            ErrorKind::Unsupported,
            "this kernel has no SCTP",
        ));
    };
    let sa = sockaddr_in(to);
    // SAFETY: `fd` is an open socket; `sa` is a fully initialised sockaddr_in
    // that lives across the call, and its exact size is passed.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const sa).cast(),
            socklen_of::<libc::sockaddr_in>(),
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINPROGRESS) {
        return Err(e);
    }

    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // Round up so that a sub-millisecond remainder still waits.
        let ms =
            libc::c_int::try_from(left.as_millis().saturating_add(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pfd` is one live, initialised pollfd and the count is 1.
        let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc > 0 {
            break;
        }
    }

    let mut err: libc::c_int = 0;
    let mut len = socklen_of::<libc::c_int>();
    // SAFETY: `fd` is an open socket; `err` and `len` are live and `len`
    // holds the size of `err`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if err == 0 {
        Ok(true)
    } else {
        Err(io::Error::from_raw_os_error(err))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::thread;

    use super::super::responder::{self, ResponderConfig};
    use super::super::topology::destroy_lab;
    use super::super::topology::tests::{
        LabGuard, assert_lab_gone, is_root, lab_name, three_pod_lab,
    };
    use super::*;
    use sightline_collector::netns::netns_path;

    const T: Duration = Duration::from_millis(1000);

    fn entry(from: &str, to: &str, connected: bool) -> MatrixEntry {
        MatrixEntry {
            from: from.to_owned(),
            to: to.to_owned(),
            connected,
        }
    }

    #[test]
    fn table_and_json() {
        let entries = vec![
            entry("x/a", "x/a", true),
            entry("x/a", "y/long", false),
            entry("y/long", "x/a", true),
            entry("y/long", "y/long", true),
        ];
        assert_eq!(
            render_table(&entries),
            "        x/a  y/long\n\
             x/a     .    X\n\
             y/long  .    .\n"
        );
        assert_eq!(
            render_json(&entries[..2], 80, Protocol::Tcp),
            r#"{"port":80,"protocol":"TCP","results":[{"from":"x/a","to":"x/a","connected":true},{"from":"x/a","to":"y/long","connected":false}]}"#
        );
        assert_eq!(render_table(&[]), "");
        assert_eq!(
            render_json(&[], 53, Protocol::Udp),
            r#"{"port":53,"protocol":"UDP","results":[]}"#
        );
        // A missing pair shows as '?'.
        assert_eq!(
            render_table(&entries[..3]),
            "        x/a  y/long\nx/a     .    X\ny/long  .    ?\n"
        );
    }

    #[tokio::test]
    async fn bad_input_is_an_error() {
        let err = probe(
            Path::new("/run/netns/sightline-no-such-netns"),
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80),
            Protocol::Tcp,
            T,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        let err = probe(
            Path::new("/proc/self/ns/net"),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80),
            Protocol::Tcp,
            Duration::ZERO,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(matrix(&[], 80, Protocol::Tcp, T).await.unwrap().is_empty());
    }

    /// Starts a responder for `text` inside the namespace `netns` on a
    /// background thread; returns the ports it actually serves.
    fn start_responder(netns: &str, text: &str) -> Vec<(u16, Protocol)> {
        let config = ResponderConfig {
            text: text.to_owned(),
            ports: vec![
                (80, Protocol::Tcp),
                (80, Protocol::Udp),
                (80, Protocol::Sctp),
                (80, Protocol::Tcp),
            ],
        };
        let bound = in_netns(&netns_path(netns), move || responder::bind(&config))
            .unwrap()
            .unwrap();
        let ports = bound.ports();
        thread::spawn(move || bound.serve());
        ports
    }

    #[tokio::test(flavor = "multi_thread")]
    #[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
    async fn pods_probe_each_other() {
        assert!(is_root(), "this test needs root");
        let lab = lab_name("p");
        let guard = LabGuard(lab.clone());
        let pods = three_pod_lab(&lab);
        let names = ["x/a", "x/b", "y/c"];
        let mut sctp = false;
        for ((netns, _), name) in pods.iter().zip(names) {
            let ports = start_responder(netns, name);
            assert!(
                ports.starts_with(&[(80, Protocol::Tcp), (80, Protocol::Udp)]),
                "{ports:?}"
            );
            sctp = ports.contains(&(80, Protocol::Sctp));
        }
        let path = |k: usize| netns_path(&pods[k].0);
        let addr = |k: usize, port| SocketAddrV4::new(pods[k].1, port);

        // The responder says who it is, over TCP and UDP.
        let to = addr(2, 80);
        let (tcp_text, udp_text) = in_netns(&path(0), move || {
            let mut s = TcpStream::connect_timeout(&SocketAddr::V4(to), T).unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            let u = UdpSocket::bind("0.0.0.0:0").unwrap();
            u.set_read_timeout(Some(T)).unwrap();
            u.send_to(b"hi", to).unwrap();
            let mut buf = [0u8; 64];
            let n = u.recv(&mut buf).unwrap();
            (text, String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .unwrap();
        assert_eq!(tcp_text, "y/c\n");
        assert_eq!(udp_text, "y/c\n");

        // Pod to pod across namespaces, same namespace, and to itself.
        for (from, to) in [(0, 2), (2, 0), (0, 1), (1, 1)] {
            for protocol in [Protocol::Tcp, Protocol::Udp] {
                assert!(
                    probe(&path(from), addr(to, 80), protocol, T).await.unwrap(),
                    "{protocol} {from} -> {to}"
                );
            }
        }
        // No responder on the port: refused (TCP) / port unreachable (UDP).
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let started = Instant::now();
            assert!(
                !probe(&path(0), addr(2, 81), protocol, T).await.unwrap(),
                "{protocol}"
            );
            assert!(
                started.elapsed() < T,
                "{protocol}: should be refused, not time out"
            );
        }
        // No such pod: the node has no route and says so.
        let nowhere = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 200), 80);
        assert!(!probe(&path(0), nowhere, Protocol::Tcp, T).await.unwrap());
        assert!(!probe(&path(0), nowhere, Protocol::Udp, T).await.unwrap());

        // SCTP where the kernel has it; a clear error otherwise.
        match probe(&path(0), addr(1, 80), Protocol::Sctp, T).await {
            Ok(connected) => {
                assert!(sctp, "SCTP probe worked but the responder had no SCTP");
                assert!(connected);
                assert!(
                    !probe(&path(0), addr(1, 81), Protocol::Sctp, T)
                        .await
                        .unwrap()
                );
            }
            Err(e) => {
                assert!(!sctp, "SCTP responder bound but the probe failed: {e}");
                assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            }
        }

        // The matrix, in sorted order whatever the input order.
        let mut input: Vec<(String, PathBuf, Ipv4Addr)> = pods
            .iter()
            .zip(names)
            .map(|((netns, ip), name)| (name.to_owned(), netns_path(netns), *ip))
            .collect();
        input.reverse();
        let entries = matrix(&input, 80, Protocol::Tcp, T).await.unwrap();
        assert_eq!(entries.len(), 9);
        let order: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.from.as_str(), e.to.as_str()))
            .collect();
        let mut expected = Vec::new();
        for f in names {
            for t in names {
                expected.push((f, t));
            }
        }
        assert_eq!(order, expected);
        assert!(entries.iter().all(|e| e.connected), "{entries:?}");
        assert_eq!(
            render_table(&entries),
            "     x/a  x/b  y/c\nx/a  .    .    .\nx/b  .    .    .\ny/c  .    .    .\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_json(&entries, 80, Protocol::Tcp)).unwrap();
        assert_eq!(json["results"].as_array().unwrap().len(), 9);
        assert_eq!(json["protocol"], "TCP");

        let blocked = matrix(&input, 81, Protocol::Udp, T).await.unwrap();
        assert!(blocked.iter().all(|e| !e.connected), "{blocked:?}");
        assert!(render_table(&blocked).contains("x/a  X    X    X"));

        // A missing namespace fails the whole matrix.
        input.push((
            "z/gone".to_owned(),
            netns_path(&format!("{lab}.z.gone")),
            Ipv4Addr::new(10, 244, 1, 99),
        ));
        let err = matrix(&input, 80, Protocol::Tcp, T).await.unwrap_err();
        assert!(err.to_string().contains("z/gone"), "{err}");

        destroy_lab(&lab).unwrap();
        assert_lab_gone(&lab);
        drop(guard);
    }
}
