//! What the control socket lets in.
//!
//! The control socket programs the datapath, so it is guarded in layers:
//!
//! - the socket is created mode 0600 in a directory of mode 0700
//!   ([`bind_private`]): only its owner reaches it through the file system;
//! - every connection's peer credentials (`SO_PEERCRED`) are checked
//!   ([`peer_allowed`]): root or the configured `--control-uid` only;
//! - a request line is at most [`MAX_REQUEST_BYTES`] long
//!   ([`read_request_line`]): a longer one is refused and the connection
//!   closed, the collector keeps running;
//! - every namespace path and interface name an `apply` names is checked
//!   against what the lab made ([`check_state`]): pod namespaces under
//!   `/run/netns/` with this lab's prefix, interfaces named `lxcNNNNN` that
//!   exist in the node's namespace. Anything else is refused with the field
//!   that is wrong, and nothing is applied.

use std::fmt;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _};

use crate::state::NodeState;

/// The longest request line read (4 MiB: a NodeState of thousands of pods
/// and policies fits).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// Where named network namespaces live (`ip netns add`).
pub const NETNS_DIR: &str = "/run/netns";

/// Whether a peer with `uid` may use the socket: root, or `control_uid`.
#[must_use]
pub fn peer_allowed(uid: u32, control_uid: u32) -> bool {
    uid == 0 || uid == control_uid
}

/// Why a request line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("request longer than {max} bytes")]
    TooLong { max: usize },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads one line (without its `\n`) of at most `max` bytes; `Ok(None)` at
/// the end of the stream. A longer line is an error as soon as `max` bytes
/// have arrived without a newline: nothing past the bound is buffered.
///
/// # Errors
///
/// [`LineError::TooLong`] past `max`, [`LineError::Io`] on a read error.
pub async fn read_request_line<R: AsyncBufRead + Unpin>(reader: &mut R, max: usize) -> Result<Option<Vec<u8>>, LineError> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            // End of stream: a last line without a newline still counts.
            return Ok(if line.is_empty() { None } else { Some(line) });
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if line.len() + chunk.len() > max {
            return Err(LineError::TooLong { max });
        }
        line.extend_from_slice(chunk);
        match done {
            Some(consumed) => {
                reader.consume(consumed);
                return Ok(Some(line));
            }
            None => {
                let n = chunk.len();
                reader.consume(n);
            }
        }
    }
}

/// A field of an `apply` that names something the collector must not touch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The field, e.g. `endpoints[2].netns`.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused: {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for Refused {}

/// What this collector may program: its lab, its node, where namespaces are.
#[derive(Clone, Debug)]
pub struct Scope {
    /// The lab's name: pod namespaces are `<lab>.<namespace>.<pod>`.
    pub lab: String,
    pub node: String,
    /// The node's own namespace (never a pod's).
    pub node_netns: PathBuf,
    /// Where named namespaces are ([`NETNS_DIR`]; another folder in tests).
    pub netns_dir: PathBuf,
}

/// Whether `name` is an interface the lab makes: `lxc` and five digits,
/// or `lxc` and twelve lowercase hex digits (the CNI plugin's host side).
#[must_use]
pub fn is_lab_ifname(name: &str) -> bool {
    let rest = name.strip_prefix("lxc").unwrap_or("");
    (rest.len() == 5 && rest.bytes().all(|b| b.is_ascii_digit()))
        || (rest.len() == 12 && rest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Checks an `endpoint_add` like the endpoints of an `apply`: its namespace
/// path, its host interface (a lab interface existing in the node), its
/// pod-side interface name, its address and MACs.
///
/// # Errors
///
/// The first field that is wrong, as `endpoint_add.<field>`, with why.
pub fn check_registration(r: &crate::registry::Registration, scope: &Scope, interface_exists: impl Fn(&str) -> bool) -> Result<(), Refused> {
    let refuse = |field: &str, reason: String| Refused { field: format!("endpoint_add.{field}"), reason };
    if r.container_id.is_empty() || r.container_id.len() > 256 || !r.container_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(refuse("container_id", format!("{:?} is not a container id (letters, digits, '-', '_', '.')", r.container_id)));
    }
    if r.ifname.is_empty() || r.ifname.len() > 15 || r.ifname.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(refuse("ifname", format!("{:?} is not an interface name", r.ifname)));
    }
    if !is_lab_ifname(&r.host_ifname) {
        return Err(refuse("host_ifname", format!("{:?} is not a lab interface (lxc and five digits or twelve hex digits)", r.host_ifname)));
    }
    if !interface_exists(&r.host_ifname) {
        return Err(refuse("host_ifname", format!("{} does not exist in the node's namespace {}", r.host_ifname, scope.node_netns.display())));
    }
    check_netns(&r.netns, scope).map_err(|reason| refuse("netns", reason))?;
    if r.ip.is_unspecified() || r.ip.is_loopback() || r.ip.is_multicast() || r.ip.is_broadcast() {
        return Err(refuse("ip", format!("{} is not a unicast pod address", r.ip)));
    }
    for (field, mac) in [("mac", &r.mac), ("host_mac", &r.host_mac)] {
        let ok = mac.len() == 17 && mac.split(':').count() == 6 && mac.split(':').all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(refuse(field, format!("{mac:?} is not a MAC address (aa:bb:cc:dd:ee:ff)")));
        }
    }
    Ok(())
}

/// Checks one pod namespace path: directly in the namespace folder, named
/// `<lab>.…`, not the node's, an existing file and not a symbolic link.
fn check_netns(path: &Path, scope: &Scope) -> Result<(), String> {
    let prefix = format!("{}.", scope.lab);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let in_dir = path.parent() == Some(scope.netns_dir.as_path());
    if !in_dir || !path.is_absolute() || name.len() <= prefix.len() || !name.starts_with(&prefix) || name.contains("..") {
        return Err(format!(
            "{} is not a network namespace of lab {:?} (expected {}/{}<namespace>.<pod>)",
            path.display(),
            scope.lab,
            scope.netns_dir.display(),
            prefix
        ));
    }
    if path == scope.node_netns || name == format!("{}{}", prefix, scope.node) || name == format!("{prefix}fabric") {
        return Err(format!("{} is a namespace of the lab itself, not of a pod", path.display()));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(format!("{} is a symbolic link", path.display())),
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!("{} is not a network namespace", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Checks every path and interface of `state` against `scope`;
/// `interface_exists` tells whether an interface is in the node's namespace.
///
/// # Errors
///
/// The first field that names something outside the lab, with why.
pub fn check_state(state: &NodeState, scope: &Scope, interface_exists: impl Fn(&str) -> bool) -> Result<(), Refused> {
    let refuse = |field: String, reason: String| Refused { field, reason };
    if state.node_name != scope.node {
        return Err(refuse(
            "node_name".into(),
            format!("{:?} is not this collector's node ({:?})", state.node_name, scope.node),
        ));
    }
    for (i, ep) in state.endpoints.iter().enumerate() {
        if !is_lab_ifname(&ep.host_ifname) {
            return Err(refuse(
                format!("endpoints[{i}].host_ifname"),
                format!("{:?} is not a lab interface (lxc and five digits or twelve hex digits)", ep.host_ifname),
            ));
        }
        if !interface_exists(&ep.host_ifname) {
            return Err(refuse(
                format!("endpoints[{i}].host_ifname"),
                format!("{} does not exist in the node's namespace {}", ep.host_ifname, scope.node_netns.display()),
            ));
        }
        check_netns(&ep.netns, scope).map_err(|reason| refuse(format!("endpoints[{i}].netns"), reason))?;
    }
    if let Some(dev) = &state.tunnel {
        if !crate::state::TUNNEL_DEVICES.contains(&dev.as_str()) {
            return Err(refuse("tunnel".into(), format!("{dev:?} is not a tunnel device ({})", crate::state::TUNNEL_DEVICES.join(", "))));
        }
        if !interface_exists(dev) {
            return Err(refuse("tunnel".into(), format!("{dev} does not exist in the node's namespace {}", scope.node_netns.display())));
        }
    }
    Ok(())
}

/// Binds the control socket at `path`, mode 0600, in a directory of mode
/// 0700 (created so if missing, and then owned by `control_uid`). A
/// directory that exists must already be private: one that others can
/// enter is refused rather than changed (it may be `/tmp`).
///
/// # Errors
///
/// The directory is not private or cannot be made, or binding fails.
pub fn bind_private(path: &Path, control_uid: u32) -> io::Result<tokio::net::UnixListener> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| io::Error::other(format!("{} has no directory", path.display())))?;
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(io::Error::other(format!("{} is not a directory", dir.display())));
            }
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(io::Error::other(format!(
                    "the control socket's directory {} is open to other users (mode {mode:04o}): give a path in a private directory (mode 0700; created if missing)",
                    dir.display()
                )));
            }
            if meta.uid() != 0 && meta.uid() != control_uid {
                return Err(io::Error::other(format!(
                    "the control socket's directory {} belongs to uid {}, neither root nor --control-uid",
                    dir.display(),
                    meta.uid()
                )));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            // The mode asked for is masked by the umask; make it exact.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            if control_uid != 0 {
                std::os::unix::fs::chown(dir, Some(control_uid), None)?;
            }
        }
        Err(e) => return Err(e),
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if control_uid != 0 {
        std::os::unix::fs::chown(path, Some(control_uid), None)?;
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Endpoint;

    fn endpoint(ifname: &str, netns: &Path) -> Endpoint {
        Endpoint {
            id: 1,
            namespace: "x".into(),
            name: "a".into(),
            ip: "10.244.1.2".parse().unwrap(),
            mac: "02:00:0a:f4:01:02".into(),
            host_ifname: ifname.into(),
            host_mac: "06:00:0a:f4:01:02".into(),
            netns: netns.to_path_buf(),
            identity: 256,
            labels: Default::default(),
        }
    }

    fn state(endpoints: Vec<Endpoint>) -> NodeState {
        NodeState { endpoints, ..NodeState::empty("node-1", "10.244.1.0/24", "10.244.1.1".parse().unwrap()) }
    }

    /// A namespace folder with `t.node-1`, `t.x.a`, `other.x.a` and a link.
    fn scope() -> (tempdir::Dir, Scope) {
        let dir = tempdir::Dir::new("guard");
        for name in ["t.node-1", "t.x.a", "other.x.a", "t.fabric"] {
            std::fs::write(dir.0.join(name), b"").unwrap();
        }
        std::os::unix::fs::symlink(dir.0.join("other.x.a"), dir.0.join("t.x.link")).unwrap();
        std::fs::create_dir(dir.0.join("t.x.dir")).unwrap();
        let scope = Scope { lab: "t".into(), node: "node-1".into(), node_netns: dir.0.join("t.node-1"), netns_dir: dir.0.clone() };
        (dir, scope)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new(tag: &str) -> Self {
                let p = std::env::temp_dir().join(format!("sightline-{tag}-{}-{:?}", std::process::id(), std::thread::current().id()));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn registrations_are_checked_like_endpoints() {
        let (_dir, scope) = scope();
        let good = crate::registry::Registration {
            container_id: "c0ffee".into(),
            ifname: "eth0".into(),
            namespace: "x".into(),
            name: "a".into(),
            ip: std::net::Ipv4Addr::new(10, 244, 1, 5),
            mac: "02:00:0a:f4:01:05".into(),
            host_ifname: "lxc0123456789ab".into(),
            host_mac: "06:00:0a:f4:01:05".into(),
            netns: scope.netns_dir.join("t.x.a"),
        };
        let exists = |i: &str| i == "lxc0123456789ab";
        assert_eq!(check_registration(&good, &scope, exists), Ok(()));
        let cases: Vec<(crate::registry::Registration, &str, &str)> = vec![
            (crate::registry::Registration { netns: scope.netns_dir.join("t.node-1"), ..good.clone() }, "endpoint_add.netns", "of the lab itself"),
            (crate::registry::Registration { netns: "/etc/passwd".into(), ..good.clone() }, "endpoint_add.netns", "not a network namespace of lab"),
            (crate::registry::Registration { host_ifname: "eth0".into(), ..good.clone() }, "endpoint_add.host_ifname", "not a lab interface"),
            (crate::registry::Registration { host_ifname: "lxc0123456789ac".into(), ..good.clone() }, "endpoint_add.host_ifname", "does not exist"),
            (crate::registry::Registration { container_id: "../x".into(), ..good.clone() }, "endpoint_add.container_id", "not a container id"),
            (crate::registry::Registration { ifname: "a/b".into(), ..good.clone() }, "endpoint_add.ifname", "not an interface name"),
            (crate::registry::Registration { ip: std::net::Ipv4Addr::LOCALHOST, ..good.clone() }, "endpoint_add.ip", "not a unicast"),
            (crate::registry::Registration { mac: "02:00".into(), ..good.clone() }, "endpoint_add.mac", "not a MAC"),
        ];
        for (r, field, reason) in cases {
            let e = check_registration(&r, &scope, exists).expect_err(field);
            assert_eq!(e.field, field, "{e}");
            assert!(e.reason.contains(reason), "{e}");
        }
    }

    #[test]
    fn lab_interfaces_are_lxc_and_five_digits() {
        for ok in ["lxc00001", "lxc65535"] {
            assert!(is_lab_ifname(ok), "{ok}");
        }
        assert!(is_lab_ifname("lxc0123456789ab"));
        for bad in ["", "lxc", "lxc0001", "lxc000001", "eth0", "lo", "fab0", "lxcabcde", "lxc0000١", "LXC00001", "lxc 0001", "lxc0123456789AB", "lxc0123456789a", "lxc0123456789abc", "lxc0123456789ag"] {
            assert!(!is_lab_ifname(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_state_of_this_labs_pods_and_interfaces_passes() {
        let (_d, scope) = scope();
        let s = state(vec![endpoint("lxc00001", &scope.netns_dir.join("t.x.a"))]);
        assert_eq!(check_state(&s, &scope, |i| i == "lxc00001"), Ok(()));
    }

    #[test]
    fn foreign_paths_and_interfaces_are_refused_naming_the_field() {
        let (_d, scope) = scope();
        let good = scope.netns_dir.join("t.x.a");
        let cases: Vec<(Endpoint, &str, &str)> = vec![
            (endpoint("eth0", &good), "endpoints[0].host_ifname", "not a lab interface"),
            (endpoint("lxc00002", &good), "endpoints[0].host_ifname", "does not exist"),
            (endpoint("lxc00001", Path::new("/etc/passwd")), "endpoints[0].netns", "not a network namespace of lab"),
            (endpoint("lxc00001", &scope.netns_dir.join("other.x.a")), "endpoints[0].netns", "not a network namespace of lab"),
            (endpoint("lxc00001", &scope.netns_dir.join("t.node-1")), "endpoints[0].netns", "of the lab itself"),
            (endpoint("lxc00001", &scope.netns_dir.join("t.fabric")), "endpoints[0].netns", "of the lab itself"),
            (endpoint("lxc00001", &scope.netns_dir.join("t.x.link")), "endpoints[0].netns", "symbolic link"),
            (endpoint("lxc00001", &scope.netns_dir.join("t.x.dir")), "endpoints[0].netns", "not a network namespace"),
            (endpoint("lxc00001", &scope.netns_dir.join("t.x.gone")), "endpoints[0].netns", "No such file"),
            (endpoint("lxc00001", &scope.netns_dir.join("t.")), "endpoints[0].netns", "not a network namespace of lab"),
            (endpoint("lxc00001", &scope.netns_dir.join("t.x..a")), "endpoints[0].netns", "not a network namespace of lab"),
            (endpoint("lxc00001", &scope.netns_dir.join("sub").join("t.x.a")), "endpoints[0].netns", "not a network namespace of lab"),
            (endpoint("lxc00001", Path::new("t.x.a")), "endpoints[0].netns", "not a network namespace of lab"),
        ];
        for (ep, field, why) in cases {
            let shown = format!("{:?} {:?}", ep.host_ifname, ep.netns);
            let err = check_state(&state(vec![ep]), &scope, |i| i == "lxc00001").expect_err(&shown);
            assert_eq!(err.field, field, "{shown}: {err}");
            assert!(err.reason.contains(why), "{shown}: {err}");
            assert!(err.to_string().contains(field), "{err}");
        }
        // Another node's state.
        let mut s = state(vec![]);
        s.node_name = "node-2".into();
        assert_eq!(check_state(&s, &scope, |_| true).unwrap_err().field, "node_name");
        // The second endpoint is named when it is the bad one.
        let s = state(vec![endpoint("lxc00001", &good), endpoint("lxc00001", Path::new("/proc/1/ns/net"))]);
        assert_eq!(check_state(&s, &scope, |_| true).unwrap_err().field, "endpoints[1].netns");
    }

    fn lines(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, String>> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            // A tiny buffer so that lines span many reads.
            let mut reader = tokio::io::BufReader::with_capacity(3, input);
            let mut out = Vec::new();
            loop {
                match read_request_line(&mut reader, max).await {
                    Ok(Some(l)) => out.push(Ok(l)),
                    Ok(None) => return out,
                    Err(e) => {
                        out.push(Err(e.to_string()));
                        return out;
                    }
                }
            }
        })
    }

    #[test]
    fn request_lines_are_bounded() {
        assert_eq!(lines(b"ab\ncdef\n\nxyz", 4), [Ok(b"ab".to_vec()), Ok(b"cdef".to_vec()), Ok(vec![]), Ok(b"xyz".to_vec())]);
        let long = lines(b"ab\nabcdefgh\nnever", 4);
        assert_eq!(long.len(), 2);
        assert_eq!(long[1], Err("request longer than 4 bytes".to_owned()));
        assert_eq!(lines(b"abcde", 4), [Err("request longer than 4 bytes".to_owned())]);
        assert!(lines(b"", 4).is_empty());
    }

    #[test]
    fn peers_are_root_or_the_control_uid() {
        assert!(peer_allowed(0, 0));
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(1000, 1000));
        assert!(!peer_allowed(65534, 0));
        assert!(!peer_allowed(65534, 1000));
    }

    #[test]
    fn the_socket_is_private_and_loose_directories_are_refused() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let d = tempdir::Dir::new("bind");
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            let path = d.0.join("made").join("c.sock");
            let _listener = bind_private(&path, me).unwrap();
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(&d.0.join("made")), 0o700);
            // Again, over the old socket, in the now existing directory.
            drop(_listener);
            let _again = bind_private(&path, me).unwrap();
            // A directory others may enter is refused, not changed.
            let open = d.0.join("open");
            std::fs::create_dir(&open).unwrap();
            std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
            let err = bind_private(&open.join("c.sock"), me).unwrap_err();
            assert!(err.to_string().contains("mode 0755"), "{err}");
            assert_eq!(mode(&open), 0o755);
        });
    }
}
