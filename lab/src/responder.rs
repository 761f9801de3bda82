//! The built-in responder that runs inside a pod's network namespace and
//! answers on the pod's declared ports with the pod's `namespace/name`.
//!
//! * TCP: accepts, writes the text and a newline, closes.
//! * UDP: answers each datagram with the text and a newline.
//! * SCTP: like TCP, on a one-to-one (`SOCK_STREAM`) SCTP socket, where the
//!   kernel has SCTP; otherwise the port is skipped with a warning.
//!
//! Every socket binds `0.0.0.0`, which is only ever inside the pod's
//! namespace. One plain thread serves each port; the process serves until it
//! is killed (SIGTERM's default action is all it needs).

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::mem;
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use super::types::Protocol;

/// How long writing a reply may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Back-off after an accept/receive error that is likely to repeat at once
/// (out of file descriptors, memory, …).
const ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// The listen backlog of stream sockets.
const BACKLOG: libc::c_int = 128;

/// What the responder says and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponderConfig {
    /// The reply, without the trailing newline (the pod's `namespace/name`).
    pub text: String,
    /// The ports to serve; duplicates are served once.
    pub ports: Vec<(u16, Protocol)>,
}

/// Binds every port of `config` without serving yet: the sockets belong to
/// the calling thread's network namespace, and [`Responder::serve`] can then
/// run anywhere.
pub fn bind(config: &ResponderConfig) -> io::Result<Responder> {
    let mut seen = BTreeSet::new();
    let ports: Vec<(u16, Protocol)> = config
        .ports
        .iter()
        .copied()
        .filter(|p| seen.insert(*p))
        .collect();
    if let Some((_, protocol)) = ports.iter().find(|(port, _)| *port == 0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot serve {protocol} port 0: ports are 1 to 65535"),
        ));
    }

    let mut sockets = Vec::with_capacity(ports.len());
    for (port, protocol) in ports {
        let context =
            |e: io::Error| io::Error::new(e.kind(), format!("binding {protocol} port {port}: {e}"));
        let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
        let socket = match protocol {
            Protocol::Tcp => Socket::Stream(TcpListener::bind(any).map_err(context)?),
            Protocol::Udp => Socket::Datagram(UdpSocket::bind(any).map_err(context)?),
            Protocol::Sctp => match sctp_listener(any).map_err(context)? {
                Some(listener) => Socket::Stream(listener),
                None => {
                    log::warn!("not serving SCTP port {port}: this kernel has no SCTP");
                    continue;
                }
            },
        };
        sockets.push((port, protocol, socket));
    }
    let mut reply = config.text.clone().into_bytes();
    reply.push(b'\n');
    Ok(Responder {
        reply: reply.into(),
        sockets,
    })
}

/// Bound sockets, ready to serve.
#[derive(Debug)]
pub struct Responder {
    reply: Arc<[u8]>,
    sockets: Vec<(u16, Protocol, Socket)>,
}

#[derive(Debug)]
enum Socket {
    /// A listening TCP socket, or a one-to-one SCTP socket, which accepts,
    /// reads and writes exactly like one.
    Stream(TcpListener),
    Datagram(UdpSocket),
}

impl Responder {
    /// The ports actually bound (SCTP ones are missing without kernel SCTP).
    pub fn ports(&self) -> Vec<(u16, Protocol)> {
        self.sockets
            .iter()
            .map(|&(port, protocol, _)| (port, protocol))
            .collect()
    }

    /// Serves every socket on its own thread. Never returns unless a socket
    /// fails for good; then returns that error.
    pub fn serve(self) -> io::Result<()> {
        let (done, failed) = mpsc::channel::<io::Error>();
        for (port, protocol, socket) in self.sockets {
            let reply = Arc::clone(&self.reply);
            let done = done.clone();
            thread::Builder::new()
                .name(format!("responder-{port}-{protocol}"))
                .spawn(move || {
                    let result = match socket {
                        Socket::Stream(listener) => serve_stream(&listener, &reply),
                        Socket::Datagram(socket) => serve_datagrams(&socket, &reply),
                    };
                    let Err(e) = result;
                    let _ = done.send(io::Error::new(
                        e.kind(),
                        format!("serving {protocol} port {port}: {e}"),
                    ));
                })
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("starting the thread for {protocol} port {port}: {e}"),
                    )
                })?;
        }
        // Keeping a sender here means `recv` only returns with an error.
        match failed.recv() {
            Ok(e) => Err(e),
            Err(mpsc::RecvError) => loop {
                thread::park();
            },
        }
    }
}

/// Accepts connections forever; returns only a lasting error.
fn serve_stream(listener: &TcpListener, reply: &[u8]) -> io::Result<std::convert::Infallible> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => answer_stream(stream, reply),
            Err(e) if is_transient(&e) => {
                log::debug!("accept: {e}");
                thread::sleep(ERROR_BACKOFF);
            }
            Err(e) if is_per_connection(&e) => log::debug!("accept: {e}"),
            Err(e) => return Err(e),
        }
    }
}

/// Writes the reply and closes the connection, without waiting on the peer.
fn answer_stream(mut stream: TcpStream, reply: &[u8]) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    if let Err(e) = stream.write_all(reply) {
        log::debug!("writing the reply: {e}");
        return;
    }
    // Consume what the client has already sent: closing a socket with unread
    // data resets the connection, which can make the client drop the reply.
    if stream.set_nonblocking(true).is_ok() {
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            match stream.read(&mut buf) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

/// Answers datagrams forever; returns only a lasting error.
fn serve_datagrams(socket: &UdpSocket, reply: &[u8]) -> io::Result<std::convert::Infallible> {
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, from)) => {
                if let Err(e) = socket.send_to(reply, from) {
                    log::debug!("answering {from}: {e}");
                }
            }
            Err(e) if is_transient(&e) => {
                log::debug!("receive: {e}");
                thread::sleep(ERROR_BACKOFF);
            }
            Err(e) if is_per_connection(&e) => log::debug!("receive: {e}"),
            Err(e) => return Err(e),
        }
    }
}

/// Errors that say the system is short of something for now.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Errors about one connection or datagram, not about the socket.
fn is_per_connection(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
        || matches!(
            e.raw_os_error(),
            Some(
                libc::ECONNABORTED
                    | libc::ECONNRESET
                    | libc::ECONNREFUSED
                    | libc::EPROTO
                    | libc::EPERM
                    | libc::ETIMEDOUT
                    | libc::EHOSTUNREACH
                    | libc::ENETUNREACH
                    | libc::EAGAIN
            )
        )
}

/// A listening one-to-one SCTP socket on `addr`, or `None` if the kernel has
/// no SCTP.
fn sctp_listener(addr: SocketAddrV4) -> io::Result<Option<TcpListener>> {
    let Some(fd) = sctp_socket(false)? else {
        return Ok(None);
    };
    let one: libc::c_int = 1;
    // SAFETY: `fd` is an open socket; the option value points to a live c_int
    // and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            socklen_of::<libc::c_int>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let sa = sockaddr_in(addr);
    // SAFETY: `sa` is a fully initialised sockaddr_in that lives across the
    // call, and its exact size is passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sa).cast(),
            socklen_of::<libc::sockaddr_in>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) takes two integers; `fd` is an open socket.
    if unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // A one-to-one SCTP socket supports exactly the calls TcpListener makes
    // (accept4, then read/write/shutdown on the accepted socket).
    Ok(Some(TcpListener::from(fd)))
}

/// A new IPv4 one-to-one SCTP socket (non-blocking if asked), or `None` if the
/// kernel has no SCTP.
pub(super) fn sctp_socket(nonblocking: bool) -> io::Result<Option<OwnedFd>> {
    let mut kind = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    if nonblocking {
        kind |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: socket(2) takes three integers and touches no memory of ours.
    let fd = unsafe { libc::socket(libc::AF_INET, kind, libc::IPPROTO_SCTP) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EPROTONOSUPPORT | libc::ESOCKTNOSUPPORT) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// `addr` as the kernel wants it.
pub(super) fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The size of `T` as a socklen_t (socket structures are tiny).
pub(super) fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_refused_before_binding() {
        let config = ResponderConfig {
            text: "x/a".to_owned(),
            ports: vec![(80, Protocol::Tcp), (0, Protocol::Udp)],
        };
        let err = bind(&config).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("UDP port 0"), "{err}");
    }

    #[test]
    fn sockaddr_is_network_order() {
        let sa = sockaddr_in(SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 2), 80));
        assert_eq!(sa.sin_port.to_ne_bytes(), [0, 80]);
        assert_eq!(sa.sin_addr.s_addr.to_ne_bytes(), [10, 244, 1, 2]);
    }
}
