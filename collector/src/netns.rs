//! Running code inside a network namespace.
//!
//! A network namespace is a per-thread attribute on Linux, so the safe way to
//! do something "inside" one from a multi-threaded program is to do it on a
//! dedicated thread: [`in_netns`] spawns a fresh OS thread, moves it into the
//! namespace with `setns(2)`, runs the closure there and joins it. The calling
//! thread (and every other thread of the process) stays where it was.
//!
//! A socket belongs to the namespace it was created in for its whole life, so a
//! socket created inside the closure can be returned and used from any thread.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread;

/// Where `ip netns add NAME` mounts named namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// Runs `f` on a fresh OS thread that has joined the network namespace at
/// `path` (`setns(CLONE_NEWNET)`); returns its result.
///
/// The calling thread's namespace never changes. Sockets created inside `f`
/// stay in that namespace. `path` is anything that refers to a network
/// namespace: `/run/netns/NAME`, `/proc/PID/ns/net`, …
///
/// Fails if the namespace cannot be opened or joined, or if the thread cannot
/// be spawned. If `f` panics, the panic is resumed on the calling thread.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let ns = File::open(path)
        .map_err(|e| with_context(e, format!("opening network namespace {}", path.display())))?;
    let shown = path.display().to_string();
    // A scoped thread lets `f` borrow from the caller (e.g. a loaded
    // program to attach); the thread ends, namespace and all, on return.
    thread::scope(|scope| {
        let handle = thread::Builder::new()
            .name("netns".to_owned())
            .spawn_scoped(scope, move || -> io::Result<T> {
                join_net_namespace(&ns)
                    .map_err(|e| with_context(e, format!("joining network namespace {shown}")))?;
                // The namespace stays referenced by this thread; the file is
                // no longer needed.
                drop(ns);
                Ok(f())
            })
            .map_err(|e| {
                with_context(
                    e,
                    format!("spawning a thread for network namespace {}", path.display()),
                )
            })?;
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Path of a named netns (`/run/netns/NAME`).
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// The inode number of a network namespace file (what the kernel calls
/// `ns.inum`, and what `/proc/PID/ns/net` shows as `net:[INUM]`).
pub fn netns_inode(path: &Path) -> io::Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|e| with_context(e, format!("reading network namespace {}", path.display())))
}

/// Moves the calling thread into the network namespace `ns` refers to.
fn join_net_namespace(ns: &File) -> io::Result<()> {
    // SAFETY: setns(2) only reads its two integer arguments; `ns` is an open
    // file for the whole call, so the descriptor is valid. Changing the
    // network namespace affects only the calling thread, which is the
    // dedicated thread spawned by `in_netns`.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Keeps the error's kind and prefixes its message with what was being done.
fn with_context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn is_root() -> bool {
        // SAFETY: geteuid(2) has no arguments and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    fn ip() -> &'static str {
        ["/usr/sbin/ip", "/sbin/ip"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("ip")
    }

    /// A named namespace that is deleted when the guard goes out of scope.
    struct NetnsGuard(String);

    impl NetnsGuard {
        fn create(name: String) -> Self {
            let guard = NetnsGuard(name);
            let status = Command::new(ip())
                .args(["netns", "add", &guard.0])
                .status()
                .expect("running ip netns add");
            assert!(status.success(), "ip netns add {} failed", guard.0);
            guard
        }
    }

    impl Drop for NetnsGuard {
        fn drop(&mut self) {
            let _ = Command::new(ip()).args(["netns", "del", &self.0]).status();
        }
    }

    #[test]
    fn netns_path_is_under_run_netns() {
        assert_eq!(
            netns_path("lab.node-1"),
            PathBuf::from("/run/netns/lab.node-1")
        );
    }

    #[test]
    fn netns_inode_matches_proc_link() {
        let link = std::fs::read_link("/proc/self/ns/net").unwrap();
        let inum = netns_inode(Path::new("/proc/self/ns/net")).unwrap();
        assert_eq!(link.to_string_lossy(), format!("net:[{inum}]"));
    }

    #[test]
    fn missing_namespace_is_an_error() {
        let err = in_netns(Path::new("/run/netns/does-not-exist-sightline"), || ()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains("does-not-exist-sightline"),
            "{err}"
        );
        assert!(netns_inode(Path::new("/nonexistent/sightline")).is_err());
    }

    #[test]
    #[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
    fn non_namespace_file_is_an_error() {
        assert!(is_root(), "this test needs root");
        let err = in_netns(Path::new("/proc/self/stat"), || ()).unwrap_err();
        assert!(
            err.to_string().contains("joining network namespace"),
            "{err}"
        );
    }

    #[test]
    #[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
    fn runs_inside_the_namespace_and_leaves_caller_alone() {
        assert!(is_root(), "this test needs root");
        let ns = NetnsGuard::create(format!("slnetnstest{}", std::process::id()));
        let path = netns_path(&ns.0);
        let target = netns_inode(&path).unwrap();
        let own = netns_inode(Path::new("/proc/thread-self/ns/net")).unwrap();
        assert_ne!(target, own);

        let inside = in_netns(&path, || netns_inode(Path::new("/proc/thread-self/ns/net")))
            .unwrap()
            .unwrap();
        assert_eq!(inside, target);
        assert_eq!(
            netns_inode(Path::new("/proc/thread-self/ns/net")).unwrap(),
            own
        );

        // A socket made inside stays inside: lo is down in a fresh namespace,
        // so connecting to the listener from there fails.
        let listener = in_netns(&path, || std::net::TcpListener::bind("0.0.0.0:0"))
            .unwrap()
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let reached = in_netns(&path, move || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .unwrap();
        assert!(!reached, "lo is down in a fresh namespace");
    }
}
