//! `sightline bench flood`: what a flood of new connections costs the node
//! agent, end to end, as users feel it.
//!
//! A one-node lab with two pods; a sender inside the first pod
//! (`sendmmsg`, 256 datagrams per call) sends UDP datagrams to the second,
//! each to a different destination port, so that every datagram is a new
//! connection for the datapath (unique tuples): at fixed rates and flat out.
//! For each run the collector's own figures are read before and after:
//!
//! - **agent CPU per event**: the CPU time of every thread of the collector
//!   process (`/proc/PID/task/*/schedstat`), from just before the first
//!   datagram until /metrics first shows the final event counts, divided
//!   by the events it decoded — draining the ring buffer, wake-ups,
//!   decoding, building flows, metrics, the store, timers, conntrack
//!   garbage collection at its default interval, everything;
//! - **events generated vs delivered**: what the probes wrote plus what they
//!   could not write (ring buffer full), against what the collector decoded;
//! - ring-buffer losses, flow-store overwrites, the collector's RSS, and the
//!   pipeline delay (datapath to store) p50/p99 from its histogram.
//!
//! Figures are printed and, with `--write`, recorded in docs/PERFORMANCE.md.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::Args;

use sightline_lab::cluster::{self, LabState};

const LAB: &str = "bench-flood";

/// `sightline bench flood`.
#[derive(Args, Clone)]
pub struct FloodArgs {
    /// Datagrams per run.
    #[arg(long, default_value_t = 50_000)]
    datagrams: u32,
    /// Sending rates in datagrams per second, comma-separated; 0 is flat out.
    #[arg(long, default_value = "10000,50000,100000,0", value_delimiter = ',')]
    rates: Vec<u64>,
    /// Monitor aggregation: none or medium.
    #[arg(long, default_value = "medium")]
    aggregation: String,
    /// Which port varies: source (many clients) or destination (a scan).
    #[arg(long, default_value = "source")]
    vary: Vary,
    /// Record the figures in this Markdown file (between bench markers).
    #[arg(long)]
    write: Option<PathBuf>,
}

/// `sightline bench flood-send` (run inside the sending pod).
#[derive(Args)]
pub struct SendArgs {
    /// Destination address.
    #[arg(long)]
    to: Ipv4Addr,
    /// Datagrams to send, each to its own destination port.
    #[arg(long)]
    count: u32,
    /// Datagrams per second; 0 is as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// First port of the range that varies.
    #[arg(long, default_value_t = 1024)]
    first_port: u16,
    /// Which port varies from one datagram to the next: `source` (many
    /// clients of one server port, 80) or `destination` (one client
    /// scanning ports).
    #[arg(long, default_value = "source")]
    vary: Vary,
}

/// Which port of the tuple varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Vary {
    Source,
    Destination,
}

/// Sends the datagrams and prints how long it took: from one socket to
/// many destination ports (a fresh socket per 60,000, so tuples stay
/// unique), or from many source ports (one socket per datagram, bound to
/// its port) to port 80.
pub fn send(args: &SendArgs) -> anyhow::Result<()> {
    if args.vary == Vary::Source {
        return send_from_many_ports(args);
    }
    const BATCH: usize = 256;
    let started = Instant::now();
    let payload = [0u8; 32];
    let mut sent: u64 = 0;
    let mut socket = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
    let span = u32::from(u16::MAX - args.first_port);
    while sent < u64::from(args.count) {
        if sent > 0 && sent % u64::from(span.max(1)) == 0 {
            socket = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
        }
        let n = BATCH.min(usize::try_from(u64::from(args.count) - sent).unwrap_or(BATCH));
        let mut addrs: Vec<libc::sockaddr_in> = Vec::with_capacity(n);
        for i in 0..n {
            let k = u32::try_from((sent + i as u64) % u64::from(span.max(1))).unwrap_or(0);
            let port = args.first_port + u16::try_from(k).unwrap_or(0);
            let a = SocketAddrV4::new(args.to, port);
            addrs.push(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            });
        }
        let mut iov = libc::iovec { iov_base: payload.as_ptr().cast_mut().cast(), iov_len: payload.len() };
        let mut msgs: Vec<libc::mmsghdr> = addrs
            .iter_mut()
            .map(|a| libc::mmsghdr {
                msg_hdr: libc::msghdr {
                    msg_name: (&raw mut *a).cast(),
                    msg_namelen: size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    msg_iov: &raw mut iov,
                    msg_iovlen: 1,
                    msg_control: std::ptr::null_mut(),
                    msg_controllen: 0,
                    msg_flags: 0,
                },
                msg_len: 0,
            })
            .collect();
        let mut done = 0;
        while done < msgs.len() {
            // SAFETY: every mmsghdr points at a live sockaddr_in and the
            // payload iovec, both alive until this call returns.
            let r = unsafe {
                libc::sendmmsg(socket.as_raw_fd(), msgs[done..].as_mut_ptr(), (msgs.len() - done) as libc::c_uint, 0)
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                // ICMP port unreachable from the previous datagrams: go on.
                if matches!(e.raw_os_error(), Some(libc::ECONNREFUSED | libc::EAGAIN | libc::ENOBUFS)) {
                    continue;
                }
                return Err(e).context("sendmmsg");
            }
            done += usize::try_from(r).unwrap_or(0);
        }
        sent += n as u64;
        if args.rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / args.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    println!("{{\"sent\":{sent},\"seconds\":{}}}", started.elapsed().as_secs_f64());
    Ok(())
}

fn send_from_many_ports(args: &SendArgs) -> anyhow::Result<()> {
    const BATCH: u64 = 256;
    let started = Instant::now();
    let span = u64::from(u16::MAX - args.first_port).max(1);
    let to = SocketAddrV4::new(args.to, 80);
    let mut sent: u64 = 0;
    while sent < u64::from(args.count) {
        let n = BATCH.min(u64::from(args.count) - sent);
        let mut sockets = Vec::with_capacity(n as usize);
        for i in 0..n {
            let port = args.first_port + u16::try_from((sent + i) % span).unwrap_or(0);
            // A port still in use by another socket: skip it.
            if let Ok(s) = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)) {
                sockets.push(s);
            }
        }
        for s in &sockets {
            let _ = s.send_to(&[0u8; 32], to);
        }
        sent += n;
        if args.rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / args.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    println!("{{\"sent\":{sent},\"seconds\":{}}}", started.elapsed().as_secs_f64());
    Ok(())
}

/// CPU time (ns) of every thread of `pid`.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// `GET /metrics` of a loopback address.
fn scrape(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return String::new();
    }
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

/// The sum of every sample of `name` (any labels).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && (l.as_bytes().get(name.len()) == Some(&b'{') || l.as_bytes().get(name.len()) == Some(&b' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Buckets (`le` → cumulative count) of a histogram.
fn buckets(text: &str, name: &str) -> BTreeMap<String, f64> {
    let prefix = format!("{name}_bucket{{");
    let mut out = BTreeMap::new();
    for l in text.lines().filter(|l| l.starts_with(&prefix)) {
        let Some(le) = l.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else { continue };
        let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        *out.entry(le.to_owned()).or_insert(0.0) += v;
    }
    out
}

/// The upper bound of the bucket holding quantile `q` of the difference
/// between two snapshots of a histogram.
fn quantile(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, q: f64) -> Option<f64> {
    let mut rows: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, v)| {
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
            (bound, v - before.get(le).copied().unwrap_or(0.0))
        })
        .collect();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = rows.last()?.1;
    if total <= 0.0 {
        return None;
    }
    rows.iter().find(|(_, c)| *c >= q * total).map(|(b, _)| *b)
}

struct Run {
    rate: u64,
    sent: u64,
    send_seconds: f64,
    generated: u64,
    decoded: u64,
    ringbuf_lost: u64,
    store_overwritten: f64,
    cpu_ns: u64,
    rss_kib: u64,
    delay_p50: Option<f64>,
    delay_p99: Option<f64>,
    /// Conntrack garbage collection over the run and until its connections
    /// were collected: seconds spent, connections deleted.
    gc_seconds: f64,
    gc_deleted: f64,
}

impl Run {
    fn ns_per_event(&self) -> f64 {
        self.cpu_ns as f64 / self.decoded.max(1) as f64
    }
}

fn status(state: &LabState) -> anyhow::Result<sightline_collector::control::Status> {
    sightline_collector::control::status(&state.nodes[0].control_socket).map_err(|e| anyhow!("collector status: {e}"))
}

fn one_run(state: &LabState, args: &FloodArgs, rate: u64, first_port: u16) -> anyhow::Result<Run> {
    let node = &state.nodes[0];
    let pid = node.collector_pid;
    let metrics = node.metrics.clone().ok_or_else(|| anyhow!("the collector serves no metrics"))?;
    let to = state.pods.get("x/b").ok_or_else(|| anyhow!("pod x/b"))?.ip;
    let before = status(state)?;
    let m_before = scrape(&metrics);
    let cpu_before = cpu_ns(pid);
    let ns = state.pod_netns("x/a")?;
    let ns = ns.file_name().and_then(|n| n.to_str()).ok_or_else(|| anyhow!("netns name"))?.to_owned();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(std::env::current_exe()?)
        .args(["bench", "flood-send", "--to", &to.to_string(), "--count", &args.datagrams.to_string()])
        .args(["--rate", &rate.to_string(), "--first-port", &first_port.to_string()])
        .args(["--vary", if args.vary == Vary::Source { "source" } else { "destination" }])
        .output()
        .context("running the sender")?;
    if !out.status.success() {
        bail!("the sender failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).context("the sender's report")?;
    // Wait until the collector has drained everything: its counters (on
    // /metrics, refreshed every second; cheaper to read than a status
    // request, which counts conntrack entries) stop moving.
    let deadline = Instant::now() + Duration::from_secs(30);
    let counters = |text: &str| {
        (metric(text, "sightline_pipeline_events_decoded_total"), metric(text, "sightline_ringbuf_events_written_total"))
    };
    // The run's CPU ends at the first reading that shows the final counts
    // (within the second /metrics takes to refresh them): the quiet time
    // spent making sure nothing more comes is not the run's.
    let mut last = counters(&scrape(&metrics));
    let mut cpu_after = cpu_ns(pid);
    let mut still_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let now = counters(&scrape(&metrics));
        let cpu_now = cpu_ns(pid);
        if now != last {
            still_since = Instant::now();
            last = now;
            cpu_after = cpu_now;
        } else if still_since.elapsed() >= Duration::from_millis(2500) {
            break;
        }
    }
    let last = status(state)?;
    let m_after = scrape(&metrics);
    // Then until garbage collection has deleted the run's connections
    // (outside the measured window; its cost is reported on its own), so
    // that the next run's tuples are new again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(state)?.ct_entries > 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let m_collected = scrape(&metrics);
    let grew = |name: &str| metric(&m_collected, name) - metric(&m_before, name);
    let lost = |s: &sightline_collector::control::Status| s.events_lost_per_cpu.iter().sum::<u64>();
    let ringbuf_lost = lost(&last) - lost(&before);
    let written = last.events_written - before.events_written;
    let delay = "sightline_pipeline_delay_seconds";
    Ok(Run {
        rate,
        sent: report["sent"].as_u64().unwrap_or(0),
        send_seconds: report["seconds"].as_f64().unwrap_or(0.0),
        generated: written + ringbuf_lost,
        decoded: last.events_decoded - before.events_decoded,
        ringbuf_lost,
        store_overwritten: metric(&m_after, "sightline_flow_store_overwritten_flows_total")
            - metric(&m_before, "sightline_flow_store_overwritten_flows_total"),
        cpu_ns: cpu_after.saturating_sub(cpu_before),
        rss_kib: rss_kib(pid),
        delay_p50: quantile(&buckets(&m_before, delay), &buckets(&m_after, delay), 0.5),
        delay_p99: quantile(&buckets(&m_before, delay), &buckets(&m_after, delay), 0.99),
        gc_seconds: grew("sightline_conntrack_gc_duration_seconds_sum"),
        gc_deleted: grew("sightline_conntrack_gc_deleted_total"),
    })
}

const MANIFEST: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec:\n  containers: [{name: c}]\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\nspec:\n  containers: [{name: c, ports: [{containerPort: 80, protocol: UDP}]}]\n";

/// Runs the flood at every rate and reports.
pub fn flood(args: &FloodArgs) -> anyhow::Result<()> {
    crate::check_root()?;
    if args.datagrams == 0 || args.rates.is_empty() {
        bail!("--datagrams must be at least 1 and --rates must name at least one rate");
    }
    crate::interrupt::on_interrupt(|| {
        if LabState::load(LAB).is_ok() {
            let _ = cluster::down(LAB);
        }
    })
    .context("installing the SIGINT/SIGTERM handler")?;
    if LabState::load(LAB).is_ok() {
        cluster::down(LAB)?;
    }
    let dir = std::env::temp_dir().join(format!("sightline-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let manifest = dir.join("flood.yaml");
    std::fs::write(&manifest, MANIFEST)?;
    let up = cluster::up(&cluster::UpOptions {
        name: LAB.into(),
        nodes: 1,
        files: vec![manifest],
        aggregation: args.aggregation.clone(),
        debug_events: false,
        datapath: true,
        // Short-lived connections, so that every run's tuples are new
        // again; garbage collection at the collector's default interval,
        // as users run it.
        ct_timeouts: "other=1s".into(),
        ct_gc_interval: "5s".into(),
        policy_audit: false,
        flow_capacity: 4095,
        metrics: Vec::new(),
        prometheus: false,
        export_config: None,
        node_export_config: None,
        tls: true,
        supervise: false,
        network: Default::default(),
        kvstore: false,
        endpoint_propagation: cluster::Propagation::Both,
    });
    let _ = std::fs::remove_dir_all(&dir);
    let state = up?;
    let result = (|| -> anyhow::Result<Vec<Run>> {
        // A short unmeasured run first: the flow store's first fill, the
        // allocator's growth and the first map readings are start-up costs,
        // not the steady per-event cost the runs measure.
        eprintln!("bench: warming up …");
        one_run(&state, &FloodArgs { datagrams: args.datagrams.min(20_000), ..args.clone() }, 0, 30_000)?;
        let mut runs = Vec::new();
        for (i, &rate) in args.rates.iter().enumerate() {
            eprintln!("bench: {} datagrams at {} …", args.datagrams, if rate == 0 { "full speed".to_owned() } else { format!("{rate}/s") });
            let first_port = 1024 + u16::try_from((i * 7919) % 4000).unwrap_or(0);
            runs.push(one_run(&state, args, rate, first_port)?);
        }
        Ok(runs)
    })();
    let down = cluster::down(LAB);
    let runs = result?;
    down?;
    let mut table = String::from(
        "| rate (datagrams/s) | achieved | events generated | delivered | ring-buffer lost | store overwritten | agent CPU per event | agent RSS | pipeline delay p50 / p99 | conntrack GC per connection |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let secs = |v: Option<f64>| v.map_or("–".to_owned(), |s| if s.is_infinite() { "> 5.9 s".to_owned() } else { format!("≤ {:.1} ms", s * 1e3) });
    for r in &runs {
        table.push_str(&format!(
            "| {} | {:.0}/s | {} | {} ({:.2}%) | {} | {:.0} | {:.2} µs | {} MiB | {} / {} | {} |\n",
            if r.rate == 0 { "flat out".to_owned() } else { r.rate.to_string() },
            r.sent as f64 / r.send_seconds.max(1e-9),
            r.generated,
            r.decoded,
            r.decoded as f64 * 100.0 / r.generated.max(1) as f64,
            r.ringbuf_lost,
            r.store_overwritten,
            r.ns_per_event() / 1e3,
            r.rss_kib / 1024,
            secs(r.delay_p50),
            secs(r.delay_p99),
            if r.gc_deleted > 0.0 { format!("{:.2} µs", r.gc_seconds * 1e6 / r.gc_deleted) } else { "–".to_owned() },
        ));
    }
    print!("{table}");
    if let Some(path) = &args.write {
        let rates = args.rates.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let section = format!(
            "<!-- bench:flood:start -->\nMeasured by `sightline bench flood --datagrams {} --rates {rates} --aggregation {} --vary {}` ({} CPUs, Linux {}): one node, one UDP datagram per new tuple from x/a to x/b (the {} port varies), {} datagrams per run. Agent CPU is every thread of the collector process (`/proc/PID/task/*/schedstat`) from just before the first datagram to the first reading of the final event counts on /metrics (refreshed every second), divided by the events it decoded, after an unmeasured warm-up run; the collector runs with its default conntrack garbage-collection interval (5 s) and a 1 s UDP lifetime, so that each run's tuples are new. *Conntrack GC per connection* is the time the collector's garbage collections took (`sightline_conntrack_gc_duration_seconds`) from the run's start until its connections were deleted, divided by the connections they deleted: a collection falls inside a run's window only if it comes before the final counts, so the slower runs pay for theirs and the faster ones do not.\n\n{table}<!-- bench:flood:end -->",
            args.datagrams,
            args.aggregation,
            if args.vary == Vary::Source { "source" } else { "destination" },
            std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            if args.vary == Vary::Source { "source" } else { "destination" },
            args.datagrams,
        );
        crate::bench::write_section(path, "flood", &section)?;
    }
    Ok(())
}
