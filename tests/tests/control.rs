//! The collector's control socket, guarded: private file and folder, peer
//! credentials (another uid is refused even when the file system lets it
//! through), bounded and well-formed requests (refused, the collector keeps
//! answering), and an `apply` naming a namespace or interface the lab did
//! not make is refused, nothing applied.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sightline_collector::control::{self, ClientError};
use sightline_collector::state::{Endpoint, NodeState};
use sightline_e2e::{Lab, require_root, two_pods};

const LAB: &str = "e2e-control";
const NOBODY: u32 = 65534;

fn socket(lab: &Lab) -> PathBuf {
    PathBuf::from(lab.status()["nodes"][0]["collector"]["control"].as_str().expect("control socket"))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
}

/// Connects to `path` as `uid` (a forked child that drops root), sends
/// `request` and reads the answer: (connect's errno or 0, the answer).
fn talk_as(uid: u32, path: &Path, request: &[u8]) -> (i32, String) {
    // Everything the child needs is made before the fork: it only makes
    // system calls (no allocation) until it exits.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_encoded_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let mut pipe = [0i32; 2];
    // SAFETY: a valid two-int array.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let mut buf = [0u8; 4096];
    // SAFETY: the child only makes async-signal-safe system calls on
    // memory prepared before the fork, then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: plain system calls; see above.
        unsafe {
            libc::close(pipe[0]);
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                libc::_exit(2);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let rc = libc::connect(fd, (&raw const addr).cast(), std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t);
            let errno = if rc == 0 { 0 } else { *libc::__errno_location() };
            libc::write(pipe[1], (&raw const errno).cast(), 4);
            if rc == 0 {
                libc::write(fd, request.as_ptr().cast(), request.len());
                let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                if n > 0 {
                    libc::write(pipe[1], buf.as_ptr().cast(), n as usize);
                }
            }
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(pipe[1]) };
    // SAFETY: the read end is ours from here on.
    let mut from_child = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(pipe[0]) };
    let mut all = Vec::new();
    from_child.read_to_end(&mut all).expect("reading the child's answer");
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child failed to drop to uid {uid}");
    assert!(all.len() >= 4, "the child said nothing");
    let errno = i32::from_ne_bytes([all[0], all[1], all[2], all[3]]);
    (errno, String::from_utf8_lossy(&all[4..]).into_owned())
}

/// Sends raw bytes as root and reads one answer line (empty when the
/// collector closed the connection without one).
fn raw(path: &Path, request: &[u8]) -> (String, UnixStream) {
    let mut s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    // The collector may close before taking all of an oversized request:
    // what it answered is still there to read.
    let _ = s.write_all(request);
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("read");
    (line, s)
}

fn state_with(endpoint: Endpoint) -> NodeState {
    NodeState { endpoints: vec![endpoint], ..NodeState::empty("node-1", "10.244.1.0/24", "10.244.1.1".parse().expect("ip")) }
}

fn endpoint(ifname: &str, netns: &str) -> Endpoint {
    Endpoint {
        id: 1,
        namespace: "t".into(),
        name: "a".into(),
        ip: "10.244.1.2".parse().expect("ip"),
        mac: "02:00:0a:f4:01:02".into(),
        host_ifname: ifname.into(),
        host_mac: "06:00:0a:f4:01:02".into(),
        netns: PathBuf::from(netns),
        identity: 256,
        labels: Default::default(),
    }
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn the_control_socket_lets_in_only_root_and_what_the_lab_made() {
    if !require_root() {
        return;
    }
    let lab = Lab::up(LAB, &two_pods(), &[]);
    let sock = socket(&lab);
    let dir = sock.parent().expect("folder").to_path_buf();
    assert_eq!(mode(&sock), 0o600, "{}", sock.display());
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    let endpoints = control::status(&sock).expect("status").endpoints;
    assert_eq!(endpoints, 2);

    // Another uid: the file system stops it…
    let (errno, _) = talk_as(NOBODY, &sock, b"{\"op\":\"status\"}\n");
    assert_eq!(errno, libc::EACCES, "nobody reached the socket");
    // …and with the file system opened up, the peer check does.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let (errno, answer) = talk_as(NOBODY, &sock, b"{\"op\":\"status\"}\n");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    assert_eq!(errno, 0);
    assert!(answer.contains("\"ok\":false") && answer.contains("uid 65534"), "{answer}");
    assert!(!answer.contains("events_decoded"), "nobody got the status: {answer}");

    // A request over 4 MiB: refused, the connection closed.
    let mut big = vec![b'x'; 5 << 20];
    big.push(b'\n');
    let (answer, mut conn) = raw(&sock, &big);
    assert!(answer.contains("\"ok\":false") && answer.contains("longer than 4194304 bytes"), "{answer}");
    let mut rest = Vec::new();
    assert_eq!(conn.read_to_end(&mut rest).map(|_| rest.len()).unwrap_or(0), 0, "the connection stays open");
    // A malformed one: refused; the same connection still serves.
    let (answer, mut conn) = raw(&sock, b"{not json\n");
    assert!(answer.contains("\"ok\":false") && answer.contains("bad request"), "{answer}");
    conn.write_all(b"{\"op\":\"status\"}\n").expect("write");
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).expect("read");
    assert!(line.contains("\"ok\":true"), "{line}");
    // The collector keeps running.
    assert_eq!(control::status(&sock).expect("status after bad requests").endpoints, 2);

    // `apply` naming what the lab did not make: refused with the field,
    // nothing applied.
    let node_netns = format!("/run/netns/{LAB}.node-1");
    let pod_netns = format!("/run/netns/{LAB}.t.a");
    let lxc = lab.host_ifname("t/a");
    for (ep, field) in [
        (endpoint(&lxc, "/run/netns/other-lab.t.a"), "endpoints[0].netns"),
        (endpoint(&lxc, "/proc/1/ns/net"), "endpoints[0].netns"),
        (endpoint(&lxc, &node_netns), "endpoints[0].netns"),
        (endpoint(&lxc, &format!("/run/netns/{LAB}.t.nope")), "endpoints[0].netns"),
        (endpoint("lo", &pod_netns), "endpoints[0].host_ifname"),
        (endpoint("lxc09999", &pod_netns), "endpoints[0].host_ifname"),
    ] {
        let shown = format!("{} {}", ep.host_ifname, ep.netns.display());
        match control::apply(&sock, &state_with(ep)) {
            Err(ClientError::Refused(msg)) => assert!(msg.contains(field), "{shown}: {msg}"),
            other => panic!("{shown}: {other:?}"),
        }
    }
    let status = control::status(&sock).expect("status");
    assert_eq!(status.endpoints, 2, "a refused apply changed the datapath");
    assert_eq!(status.attached_interfaces.len(), 2);
    assert!(lab.probe("t/a", "t/b", 80, "TCP"));
}
