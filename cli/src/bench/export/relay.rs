//! The relay child process: started with the bench's configuration,
//! stopped on drop; its CPU time and memory from /proc, its export metrics
//! from /metrics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::EXPORTER;

/// A temporary folder, removed on drop.
pub(super) struct TempDir {
    pub(super) path: PathBuf,
}

impl TempDir {
    pub(super) fn new() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("sightline-bench-export-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// SIGTERM, then SIGKILL after 5 s.
pub(super) fn stop_pid(pid: i32) {
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) with a pid this process started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    for _ in 0..100 {
        // SAFETY: waitpid(2) on our own child, no status wanted.
        if unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) } != 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// The relay child; stopped on drop.
pub(super) struct Relay {
    pub(super) child: Child,
    pub(super) pid_cell: Arc<AtomicI32>,
    pub(super) metrics: SocketAddr,
    pub(super) log: PathBuf,
}

impl Relay {
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        stop_pid(self.pid_cell.swap(0, Ordering::SeqCst));
        let _ = self.child.try_wait();
    }
}

pub(super) fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub(super) fn start_relay(dir: &Path, peers: &[(String, SocketAddr)], config: &Path, pid_cell: &Arc<AtomicI32>) -> anyhow::Result<Relay> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().context("finding this executable")?;
    let (listen, metrics) = (free_port()?, free_port()?);
    let log = dir.join("relay.log");
    let mut cmd = Command::new(exe);
    cmd.arg("relay").arg("--listen").arg(listen.to_string());
    for (name, addr) in peers {
        cmd.arg("--peer").arg(format!("{name}={addr}"));
    }
    // The fake collectors serve plaintext; the relay's own API is not what
    // this measures (bench observe measures TLS).
    cmd.arg("--disable-server-tls").arg("--disable-client-tls");
    cmd.arg("--export-config")
        .arg(config)
        .arg("--metrics-address")
        .arg(metrics.to_string())
        .arg("--spool-dir")
        .arg(dir.join("spool"))
        .env("SIGHTLINE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    // SAFETY: prctl(2) only, between fork and exec: the relay dies with
    // this process even if it is killed without a chance to clean up.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the relay")?;
    pid_cell.store(child.id() as i32, Ordering::SeqCst);
    Ok(Relay { child, pid_cell: Arc::clone(pid_cell), metrics, log })
}

/// `GET path` on the relay's metrics address: (status, body).
pub(super) async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        anyhow::Ok(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(5), exchange).await.context("no answer in 5 s")??;
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_owned());
    // A chunked body keeps its chunk-size lines; the metrics parser skips them.
    Ok((status, body))
}

/// The relay's export metrics of the bench exporter.
#[derive(Clone, Debug, Default)]
pub(super) struct RelayMetrics {
    pub(super) spool_bytes: f64,
    pub(super) dropped: f64,
    /// Deliveries to the sink, every answer.
    pub(super) requests: f64,
    /// (upper bound in seconds, cumulative count).
    pub(super) delay: Vec<(f64, f64)>,
}

pub(super) fn parse_metrics(text: &str) -> RelayMetrics {
    let mut m = RelayMetrics::default();
    let label = format!("exporter=\"{EXPORTER}\"");
    for line in text.lines().filter(|l| l.contains(&label)) {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        if name.starts_with("sightline_export_spool_bytes{") {
            m.spool_bytes = value;
        } else if name.starts_with("sightline_export_records_total{") && name.contains("outcome=\"dropped\"") {
            m.dropped = value;
        } else if name.starts_with("sightline_export_requests_total{") {
            m.requests += value;
        } else if name.starts_with("sightline_export_delay_seconds_bucket{") {
            let le = name.split("le=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("");
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
            m.delay.push((bound, value));
        }
    }
    m.delay.sort_by(|a, b| a.0.total_cmp(&b.0));
    m
}

pub(super) async fn relay_metrics(relay: &Relay) -> RelayMetrics {
    match http_get(relay.metrics, "/metrics").await {
        Ok((200, body)) => parse_metrics(&body),
        _ => RelayMetrics::default(),
    }
}

/// The bucket bound under which fraction `p` of the delays observed
/// between two scrapes fall (the relay's histogram).
pub(super) fn histogram_quantile(before: &RelayMetrics, after: &RelayMetrics, p: f64) -> Option<f64> {
    let counts: Vec<(f64, f64)> = after
        .delay
        .iter()
        .map(|&(le, c)| (le, c - before.delay.iter().find(|&&(b, _)| b == le).map_or(0.0, |&(_, c)| c)))
        .collect();
    let total = counts.last()?.1;
    if total <= 0.0 {
        return None;
    }
    counts.iter().find(|&&(_, c)| c >= total * p).map(|&(le, _)| le)
}

/// Relay CPU time (user + system) and resident memory, from /proc.
pub(super) fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1);
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

pub(super) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// CPU of this process (the fake collectors and the receiver).
pub(super) fn own_cpu_time() -> Option<Duration> {
    cpu_time(std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_metrics_are_parsed() {
        let text = "# TYPE x\nsightline_export_spool_bytes{exporter=\"bench\"} 4096\n\
            sightline_export_records_total{exporter=\"bench\",outcome=\"dropped\"} 3\n\
            sightline_export_delay_seconds_bucket{exporter=\"bench\",le=\"0.1\"} 50\n\
            sightline_export_delay_seconds_bucket{exporter=\"bench\",le=\"1.0\"} 99\n\
            sightline_export_delay_seconds_bucket{exporter=\"bench\",le=\"+Inf\"} 100\n";
        let m = parse_metrics(text);
        assert_eq!((m.spool_bytes, m.dropped), (4096.0, 3.0));
        assert_eq!(histogram_quantile(&RelayMetrics::default(), &m, 0.5), Some(0.1));
        assert_eq!(histogram_quantile(&RelayMetrics::default(), &m, 0.99), Some(1.0));
    }
}
