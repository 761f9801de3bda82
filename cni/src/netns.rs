//! Running work inside another network namespace, given its path, and the
//! `ip` command (iproute2) the plumbing is done with.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::error::CniError;

/// Runs `f` on a thread that has entered the network namespace at `path`
/// (anything `f` spawns runs there too). The caller's thread is untouched.
///
/// # Errors
///
/// [`CniError::UnknownContainer`] when the namespace cannot be opened or
/// entered; whatever `f` returns otherwise.
pub fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> Result<T, CniError> + Send + 'static) -> Result<T, CniError> {
    let file = File::open(path).map_err(|e| CniError::UnknownContainer {
        container_id: String::new(),
        reason: format!("opening network namespace {}: {e}", path.display()),
    })?;
    let shown = path.display().to_string();
    std::thread::spawn(move || {
        // SAFETY: setns(2) on a file descriptor we own, for this thread only
        // (a fresh one that ends with the closure).
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(CniError::UnknownContainer {
                container_id: String::new(),
                reason: format!("entering network namespace {shown}: {}", std::io::Error::last_os_error()),
            });
        }
        f()
    })
    .join()
    .unwrap_or_else(|_| Err(CniError::TryAgainLater("a thread working in a network namespace panicked".into())))
}

/// Whether `path` is a network namespace (`nsfs`) that can be entered.
#[must_use]
pub fn exists(path: &Path) -> bool {
    File::open(path).is_ok()
}

/// iproute2's `ip`, by absolute path where it is in a standard place.
fn ip_binary() -> &'static str {
    static IP: OnceLock<&'static str> = OnceLock::new();
    IP.get_or_init(|| {
        ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("ip")
    })
}

/// Runs `ip ARGS…` in the calling thread's namespace; its stdout, or an error
/// naming `action`, the command line and its stderr.
///
/// # Errors
///
/// [`CniError::Netlink`].
pub fn ip(action: &str, args: &[&str]) -> Result<String, CniError> {
    let command = std::iter::once(ip_binary()).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
    let out = Command::new(ip_binary()).args(args).output().map_err(|e| CniError::Netlink {
        action: action.to_owned(),
        command: command.clone(),
        stderr: e.to_string(),
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CniError::Netlink {
            action: action.to_owned(),
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Whether link `name` exists in the calling thread's namespace.
#[must_use]
pub fn link_exists(name: &str) -> bool {
    // Not /sys/class/net: sysfs shows the namespace it was mounted in.
    ip("", &["link", "show", "dev", name]).is_ok()
}

/// Writes sysctls (`net.ipv6.conf.eth0.disable_ipv6`-style keys) in the
/// calling thread's namespace; IPv6 keys are skipped without IPv6.
///
/// # Errors
///
/// [`CniError::Io`] naming the key.
pub fn write_sysctls(settings: &[(&str, &str)]) -> Result<(), CniError> {
    let has_ipv6 = Path::new("/proc/sys/net/ipv6").exists();
    for (key, value) in settings {
        if key.starts_with("net.ipv6.") && !has_ipv6 {
            continue;
        }
        let path: PathBuf = format!("/proc/sys/{}", key.replace('.', "/")).into();
        std::fs::write(&path, value).map_err(|source| CniError::Io { action: format!("setting {key}={value}"), source })?;
    }
    Ok(())
}
