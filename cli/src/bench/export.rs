//! `sightline bench export`: flows exported through the real relay, as
//! users feel it.
//!
//! In this process: N fake collectors (tonic servers on 127.0.0.1 serving
//! `observer.Observer` GetFlows with `follow`, each emitting synthetic flows
//! at rate/N per second, paced by a 5 ms ticker) and a sink receiver on
//! loopback. As a child process: the relay binary (this executable's
//! `relay` subcommand) with an export configuration for that sink, its
//! spool in a temporary folder.
//!
//! Every flow carries a UUID that spells its node, its sequence number and
//! its time, so the receiver accounts for every flow (missing, duplicates)
//! and its export delay (arrival − flow time) without keeping records.
//!
//! Phases:
//!
//! 1. **healthy**: the rate for `--duration`, then until every flow has
//!    arrived: throughput, delay p50/p99 (receiver, and the relay's
//!    `sightline_export_delay_seconds`), relay CPU per flow (`/proc/PID/stat`)
//!    and RSS (`VmRSS`, every second);
//! 2. **outage** (`--outage`, 0 skips it; otlp and azure sinks): the rate
//!    goes on while the sink is down; RSS and spool size at the start,
//!    middle and end of the outage; then the sink comes back: time to the
//!    first delivery, time until every flow of the outage has arrived
//!    (while new flows keep coming), and none missing;
//! 3. **find-max** (`--find-max`): the highest rate with delay p99 ≤ 2 s
//!    and nothing missing.
//!
//! Sinks:
//!
//! - `otlp` (default): an OTLP/gRPC logs receiver written here for the
//!   bench: it answers `LogsService/Export` as a Collector does and only
//!   reads each record's `sightline.flow.uuid`, so that it keeps up with
//!   the relay on a shared machine. (`sightline_standins::otlp::OtlpReceiver`
//!   keeps every record it accepts, gigabytes at this rate, and no arrival
//!   times; the export crate's tests check the contract against it.)
//! - `azure`: Entra ID tokens from `sightline_standins::azure::AzureStandin`
//!   (client secret, HTTPS with a test CA); rows POSTed to a Logs Ingestion
//!   endpoint written here (HTTPS, same CA) that gunzips each request and
//!   reads each row's `UUID`, answering 204.
//! - `file`: the relay writes JSON lines to a file in the temporary folder
//!   (rotated at 256 MiB, one backup); a thread tails it. No outage phase.
//!
//! Everything listens on 127.0.0.1. The relay and the temporary folder are
//! removed on exit, on error and on Ctrl-C.
//!
//! Modules: `collectors` (the fake collectors and their flows), `receivers`
//! (the tally of what arrived and the sink receivers), `relay` (the child
//! process, /proc and /metrics); this file runs the phases and reports.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, ValueEnum};

/// The delay p99 a healthy relay must stay under.
const DELAY_TARGET: Duration = Duration::from_secs(2);
/// The exporter's name in the relay's configuration and metrics.
const EXPORTER: &str = "bench";
/// How long to wait for the last flows of a phase once the rate stops.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    Otlp,
    Azure,
    File,
}

impl SinkKind {
    fn name(self) -> &'static str {
        match self {
            SinkKind::Otlp => "otlp",
            SinkKind::Azure => "azure",
            SinkKind::File => "file",
        }
    }
}

#[derive(Args)]
pub struct ExportArgs {
    /// Flows per second, all fake collectors together.
    #[arg(long, default_value_t = 50_000)]
    rate: u64,
    /// How long the healthy phase runs at the rate.
    #[arg(long, default_value = "20s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// Fake collectors the relay follows.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// The sink: an OTLP/gRPC receiver, Azure Monitor Logs Ingestion over
    /// HTTPS, or a file.
    #[arg(long, value_enum, default_value = "otlp")]
    sink: SinkKind,
    /// How long the sink is down in the outage phase (0s: no outage phase;
    /// there is none for a file).
    #[arg(long, default_value = "20s", value_parser = crate::parse_duration)]
    outage: Duration,
    /// Also look for the highest rate the relay sustains (delay p99 ≤ 2 s,
    /// nothing missing), in steps of 25 %.
    #[arg(long)]
    find_max: bool,
    /// Record the figures in this Markdown file (section "Export through
    /// the relay").
    #[arg(long)]
    write: Option<PathBuf>,
}

/// `bench export`.
pub fn export(args: &ExportArgs) -> anyhow::Result<()> {
    if args.rate == 0 || args.nodes == 0 || args.duration.is_zero() {
        bail!("--rate, --nodes and --duration must not be zero");
    }
    let work = TempDir::new()?;
    // Ctrl-C or SIGTERM: stop the relay and remove the folder, then exit.
    let relay_pid = Arc::new(AtomicI32::new(0));
    {
        let pid = Arc::clone(&relay_pid);
        let dir = work.path.clone();
        crate::interrupt::on_interrupt(move || {
            stop_pid(pid.load(Ordering::SeqCst));
            let _ = std::fs::remove_dir_all(&dir);
        })
        .context("installing the SIGINT/SIGTERM handler")?;
    }
    let rt = crate::runtime()?;
    let report = rt.block_on(run(args, &work, &relay_pid))?;
    print!("{}", report.table);
    if let Some(path) = &args.write {
        write_report(path, args, &report)?;
    }
    Ok(())
}

mod collectors;
mod receivers;
mod relay;

use collectors::{Node, marks, pause, set_rate, start_node};
use receivers::{Server, Sink, Tally, percentile};
use relay::{Relay, TempDir, cpu_time, histogram_quantile, http_get, own_cpu_time, relay_metrics, rss_bytes, start_relay, stop_pid};

// ---------------------------------------------------------------------------
// Phases.

/// What a healthy phase measured.
#[derive(Clone, Debug)]
struct Healthy {
    rate: u64,
    seconds: f64,
    generated: u64,
    received: u64,
    missing: u64,
    duplicates: u64,
    p50: Option<Duration>,
    p99: Option<Duration>,
    max: Option<Duration>,
    relay_p50: Option<f64>,
    relay_p99: Option<f64>,
    cpu_per_flow: Option<Duration>,
    own_cpu_per_flow: Option<Duration>,
    rss_min: u64,
    rss_max: u64,
    /// The most flows one fake collector was behind its schedule, and
    /// whether that was more than a second of its share of the rate (the
    /// relay did not read its streams fast enough).
    max_lag: u64,
    fell_behind: bool,
    dropped: f64,
    /// Deliveries to the sink during the phase.
    requests: f64,
}

impl Healthy {
    fn ok(&self) -> bool {
        self.missing == 0 && self.p99.is_some_and(|d| d <= DELAY_TARGET) && !self.fell_behind
    }
}

/// What the outage phase measured.
#[derive(Clone, Debug)]
struct Outage {
    down: Duration,
    rate: u64,
    rss: [u64; 3],
    spool: [f64; 3],
    /// The most RSS sampled while the sink was down, and while the backlog
    /// drained.
    rss_max: u64,
    rss_max_drain: u64,
    backlog: u64,
    first_delivery: Option<Duration>,
    drain: Option<Duration>,
    generated: u64,
    missing: u64,
    duplicates: u64,
    dropped: f64,
}

struct Bench<'a> {
    nodes: &'a [Arc<Node>],
    tally: &'a Tally,
    relay: &'a Relay,
}

impl Bench<'_> {
    /// Waits until every flow between `from` and `to` has arrived, or
    /// `timeout` has passed; returns the time it took.
    async fn settle(&self, from: &[u64], to: &[u64], timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        loop {
            if self.tally.missing(from, to) == 0 {
                return Some(start.elapsed());
            }
            if start.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn check_relay(&self) -> anyhow::Result<u32> {
        let pid = self.relay.pid();
        if rss_bytes(pid).is_none() {
            bail!("the relay exited; its log ends with:\n{}", self.relay.log_tail());
        }
        Ok(pid)
    }

    async fn healthy(&self, rate: u64, duration: Duration) -> anyhow::Result<Healthy> {
        let pid = self.check_relay()?;
        let dups0 = self.tally.duplicates.load(Ordering::SeqCst);
        let m0 = relay_metrics(self.relay).await;
        let (cpu0, own0) = (cpu_time(pid), own_cpu_time());
        let from = marks(self.nodes);
        set_rate(self.nodes, rate);
        let start = Instant::now();
        let (mut rss_min, mut rss_max) = (u64::MAX, 0);
        while start.elapsed() < duration {
            tokio::time::sleep(Duration::from_secs(1).min(duration.saturating_sub(start.elapsed()))).await;
            let rss = rss_bytes(pid).ok_or_else(|| anyhow!("the relay exited; its log ends with:\n{}", self.relay.log_tail()))?;
            (rss_min, rss_max) = (rss_min.min(rss), rss_max.max(rss));
        }
        let max_lag = self.nodes.iter().map(|n| n.max_lag.load(Ordering::SeqCst)).max().unwrap_or(0);
        let to = pause(self.nodes).await;
        let seconds = start.elapsed().as_secs_f64();
        let _ = self.settle(&from, &to, SETTLE_TIMEOUT).await;
        let (cpu1, own1) = (cpu_time(pid), own_cpu_time());
        if let Some(rss) = rss_bytes(pid) {
            (rss_min, rss_max) = (rss_min.min(rss), rss_max.max(rss));
        }
        let m1 = relay_metrics(self.relay).await;
        let generated: u64 = from.iter().zip(&to).map(|(a, b)| b - a).sum();
        let delays = self.tally.delays(&from, &to);
        let per_flow = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) if generated > 0 => Some(b.saturating_sub(a) / u32::try_from(generated).unwrap_or(u32::MAX)),
            _ => None,
        };
        Ok(Healthy {
            rate,
            seconds,
            generated,
            received: delays.len() as u64,
            missing: self.tally.missing(&from, &to),
            duplicates: self.tally.duplicates.load(Ordering::SeqCst) - dups0,
            p50: percentile(&delays, 0.50),
            p99: percentile(&delays, 0.99),
            max: delays.last().map(|&d| Duration::from_micros(u64::from(d))),
            relay_p50: histogram_quantile(&m0, &m1, 0.50),
            relay_p99: histogram_quantile(&m0, &m1, 0.99),
            cpu_per_flow: per_flow(cpu0, cpu1),
            own_cpu_per_flow: per_flow(own0, own1),
            rss_min,
            rss_max,
            max_lag,
            fell_behind: max_lag > rate / self.nodes.len() as u64,
            dropped: m1.dropped - m0.dropped,
            requests: m1.requests - m0.requests,
        })
    }

    async fn outage(&self, sink: &Server, rate: u64, down: Duration) -> anyhow::Result<Outage> {
        let pid = self.check_relay()?;
        let dups0 = self.tally.duplicates.load(Ordering::SeqCst);
        let dropped0 = relay_metrics(self.relay).await.dropped;
        let from = marks(self.nodes);
        set_rate(self.nodes, rate);
        tokio::time::sleep(Duration::from_secs(3)).await;
        sink.set_down(true).await?;
        let t_down = Instant::now();
        let sample = || async { (rss_bytes(pid).unwrap_or(0), relay_metrics(self.relay).await.spool_bytes) };
        // The relay's spool gauge is refreshed once a second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let start = sample().await;
        let mut rss_max = start.0;
        let mut mid = start;
        while t_down.elapsed() < down {
            tokio::time::sleep(Duration::from_secs(1).min(down.saturating_sub(t_down.elapsed()))).await;
            let s = sample().await;
            rss_max = rss_max.max(s.0);
            if t_down.elapsed() >= down / 2 && mid == start {
                mid = s;
            }
            if s.0 == 0 {
                bail!("the relay exited during the outage; its log ends with:\n{}", self.relay.log_tail());
            }
        }
        let end = sample().await;
        rss_max = rss_max.max(end.0);
        let backlog_marks = marks(self.nodes);
        let received_at_up = self.tally.received.load(Ordering::SeqCst);
        sink.set_down(false).await?;
        let t_up = Instant::now();
        let backlog = self.tally.missing(&from, &backlog_marks);
        // New flows keep coming while the backlog drains, for at most as
        // long again as the outage (a relay that cannot keep up with the
        // rate would never catch up); then only the backlog is waited for.
        let generate_for = down.max(Duration::from_secs(10));
        let deadline = (SETTLE_TIMEOUT.max(down * 4) + Duration::from_secs(backlog / 5000)).min(Duration::from_secs(900));
        let mut first_delivery = None;
        let mut drain = None;
        let mut rss_max_drain = 0;
        let mut to = None;
        while drain.is_none() && t_up.elapsed() < deadline {
            if first_delivery.is_none() && self.tally.received.load(Ordering::SeqCst) > received_at_up {
                first_delivery = Some(t_up.elapsed());
            }
            if self.tally.missing(&from, &backlog_marks) == 0 {
                drain = Some(t_up.elapsed());
            }
            if to.is_none() && (drain.is_some() || t_up.elapsed() >= generate_for) {
                to = Some(pause(self.nodes).await);
            }
            if let Some(rss) = rss_bytes(pid) {
                rss_max_drain = rss_max_drain.max(rss);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let to = match to {
            Some(to) => to,
            None => pause(self.nodes).await,
        };
        let _ = self.settle(&from, &to, SETTLE_TIMEOUT).await;
        Ok(Outage {
            down,
            rate,
            rss: [start.0, mid.0, end.0],
            spool: [start.1, mid.1, end.1],
            rss_max,
            rss_max_drain,
            backlog,
            first_delivery,
            drain,
            generated: from.iter().zip(&to).map(|(a, b)| b - a).sum(),
            missing: self.tally.missing(&from, &to),
            duplicates: self.tally.duplicates.load(Ordering::SeqCst) - dups0,
            dropped: relay_metrics(self.relay).await.dropped - dropped0,
        })
    }
}

// ---------------------------------------------------------------------------
// The run and its report.

struct Report {
    table: String,
    /// The machine, as it was before the run.
    machine: String,
}

async fn run(args: &ExportArgs, work: &TempDir, pid_cell: &Arc<AtomicI32>) -> anyhow::Result<Report> {
    let machine = machine();
    let tally = Arc::new(Tally::default());
    let mut nodes = Vec::new();
    let mut peers = Vec::new();
    for i in 0..args.nodes {
        let (node, addr) = start_node(i).await?;
        peers.push((node.name.clone(), addr));
        nodes.push(node);
    }
    let (sink, sink_config) = Sink::start(args.sink, &work.path, &tally).await?;
    // Room for the whole outage at this rate (records of 1–2.5 KB), at
    // least the default 512 MiB.
    let spool_mb = (args.rate * (args.outage.as_secs() + 15) * 3 / 1024).max(512);
    let config = work.path.join("export.yaml");
    std::fs::write(
        &config,
        format!(
            "exporters:\n- name: {EXPORTER}\n  spool:\n    path: {}\n    maxSizeMB: {spool_mb}\n  sink:\n{sink_config}",
            work.path.join("spool").join(EXPORTER).display()
        ),
    )?;
    let relay = start_relay(&work.path, &peers, &config, pid_cell)?;
    eprintln!("bench: relay pid {} following {} fake collector(s), {} sink …", relay.pid(), args.nodes, args.sink.name());
    // Ready: /readyz, and every fake collector followed.
    let start = Instant::now();
    loop {
        let ready = matches!(http_get(relay.metrics, "/readyz").await, Ok((200, _)));
        if ready && nodes.iter().all(|n| n.following.load(Ordering::SeqCst) > 0) {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the relay was not ready after 30 s; its log ends with:\n{}", relay.log_tail());
        }
        if rss_bytes(relay.pid()).is_none() {
            bail!("the relay exited; its log ends with:\n{}", relay.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bench = Bench { nodes: &nodes, tally: &tally, relay: &relay };
    // A short warm-up: connections made, buffers grown, token fetched.
    let _ = bench.healthy(args.rate / 10, Duration::from_secs(2)).await?;

    eprintln!("bench: healthy sink, {} flows/s for {:?} …", args.rate, args.duration);
    let healthy = bench.healthy(args.rate, args.duration).await?;
    let outage = match sink.server() {
        Some(server) if !args.outage.is_zero() => {
            eprintln!("bench: sink down for {:?} at {} flows/s, then back …", args.outage, args.rate);
            Some(bench.outage(server, args.rate, args.outage).await?)
        }
        _ => None,
    };
    let max = if args.find_max {
        let step = args.duration.min(Duration::from_secs(15));
        let mut steps = Vec::new();
        let mut rate = args.rate;
        let mut best = None;
        let first_ok = healthy.ok();
        loop {
            eprintln!("bench: find-max: {rate} flows/s for {step:?} …");
            let h = bench.healthy(rate, step).await?;
            let ok = h.ok();
            steps.push(h);
            if ok {
                best = Some(best.map_or(rate, |b: u64| b.max(rate)));
            }
            if first_ok {
                if !ok || rate > 2_000_000 {
                    break;
                }
                rate = rate * 5 / 4;
            } else {
                if ok || rate < 2000 {
                    break;
                }
                rate = rate * 4 / 5;
            }
            // Let the relay catch up before the next step.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Some((best.unwrap_or(0), steps))
    } else {
        None
    };
    let unknown = tally.unknown.load(Ordering::SeqCst);
    if unknown > 0 {
        eprintln!("bench: warning: {unknown} records without a bench UUID arrived");
    }
    let reconnects: usize = nodes.iter().map(|n| n.opened.load(Ordering::SeqCst).saturating_sub(1)).sum();
    if reconnects > 0 {
        eprintln!("bench: warning: the relay reopened {reconnects} follow stream(s); flows in flight then count as missing");
    }
    drop(relay);
    drop(sink);
    let table = render(&healthy, outage.as_ref(), max.as_ref());
    Ok(Report { table, machine })
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("–".to_owned(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0))
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("not within the wait".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / f64::from(1 << 20))
}

fn le(v: Option<f64>) -> String {
    v.map_or("–".to_owned(), |v| if v.is_infinite() { "> 2400 s".to_owned() } else { format!("≤ {v} s") })
}

fn render(h: &Healthy, o: Option<&Outage>, max: Option<&(u64, Vec<Healthy>)>) -> String {
    let mut t = String::new();
    let met = |ok: bool| if ok { "met" } else { "**missed**" };
    let _ = writeln!(t, "| phase | figure | value |");
    let _ = writeln!(t, "|---|---|---|");
    let name = format!("healthy sink, {} flows/s for {:.0} s", h.rate, h.seconds);
    let rows: Vec<(String, String)> = vec![
        ("flows generated / received".into(), format!("{} / {} ({:.0} flows/s)", h.generated, h.received, h.received as f64 / h.seconds)),
        ("missing / duplicates / dropped by the relay".into(), format!("{} / {} / {}", h.missing, h.duplicates, h.dropped)),
        (
            "export delay p50 / p99 / max (receiver: arrival − flow time)".into(),
            format!("{} / {} / {} (p99 target < 2 s: {})", ms(h.p50), ms(h.p99), ms(h.max), met(h.p99.is_some_and(|d| d < DELAY_TARGET))),
        ),
        ("export delay p50 / p99 (relay's histogram, bucket bound)".into(), format!("{} / {}", le(h.relay_p50), le(h.relay_p99))),
        (
            "relay CPU per flow".into(),
            h.cpu_per_flow.map_or("–".into(), |c| {
                format!("{:.1} µs ({:.0} % of one core at this rate)", c.as_secs_f64() * 1e6, c.as_secs_f64() * h.rate as f64 * 100.0)
            }),
        ),
        (
            "bench process CPU per flow (fake collectors + receiver, same cores)".into(),
            h.own_cpu_per_flow.map_or("–".into(), |c| format!("{:.1} µs", c.as_secs_f64() * 1e6)),
        ),
        (
            "deliveries to the sink (records per delivery)".into(),
            format!("{:.0} ({:.0})", h.requests, if h.requests > 0.0 { h.received as f64 / h.requests } else { 0.0 }),
        ),
        ("relay RSS (sampled every second) min / max".into(), format!("{} / {}", mib(h.rss_min), mib(h.rss_max))),
        (
            "most flows a fake collector was behind its schedule".into(),
            format!("{}{}", h.max_lag, if h.fell_behind { " (**the relay did not keep up**)" } else { "" }),
        ),
    ];
    for (i, (k, v)) in rows.into_iter().enumerate() {
        let _ = writeln!(t, "| {} | {k} | {v} |", if i == 0 { name.as_str() } else { "" });
    }
    if let Some(o) = o {
        let name = format!("sink down {:.0} s at {} flows/s", o.down.as_secs_f64(), o.rate);
        // Flat: the most sampled during the outage within 25 % (+ 32 MiB) of the start.
        let flat = o.rss_max as f64 <= o.rss[0] as f64 * 1.25 + f64::from(32 << 20);
        let rows: Vec<(String, String)> = vec![
            (
                "relay RSS at start / middle / end of the outage (most, sampled every second)".into(),
                format!("{} / {} / {} ({}) (flat: {})", mib(o.rss[0]), mib(o.rss[1]), mib(o.rss[2]), mib(o.rss_max), met(flat)),
            ),
            ("relay RSS at most while the backlog drained".into(), mib(o.rss_max_drain)),
            (
                "spool size at start / middle / end (relay metrics)".into(),
                format!("{} / {} / {}", mib(o.spool[0] as u64), mib(o.spool[1] as u64), mib(o.spool[2] as u64)),
            ),
            ("backlog when the sink came back".into(), format!("{} flows", o.backlog)),
            ("first delivery after the sink came back".into(), secs(o.first_delivery)),
            ("backlog delivered (drain time; new flows keep coming for up to the outage's length again)".into(), secs(o.drain)),
            ("flows generated / missing / duplicates / dropped".into(), format!("{} / {} / {} / {}", o.generated, o.missing, o.duplicates, o.dropped)),
        ];
        for (i, (k, v)) in rows.into_iter().enumerate() {
            let _ = writeln!(t, "| {} | {k} | {v} |", if i == 0 { name.as_str() } else { "" });
        }
    }
    if let Some((best, steps)) = max {
        let tried = steps
            .iter()
            .map(|s| format!("{}: p99 {}, missing {}, CPU {}", s.rate, ms(s.p99), s.missing, s.cpu_per_flow.map_or("–".into(), |c| format!("{:.1} µs", c.as_secs_f64() * 1e6))))
            .collect::<Vec<_>>()
            .join("; ");
        let _ = writeln!(t, "| highest sustained rate | p99 ≤ 2 s, nothing missing, steps of 25 % | **{best} flows/s** ({tried}) |");
    }
    t
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or(String::new(), |(_, m)| m.trim().to_owned());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    format!("{cores} CPUs ({cpu}), Linux {}, load average {load} before the run", kernel.trim())
}

fn today() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut out = Vec::new();
    sightline_flow::json_fast::write_rfc3339(&mut out, i64::try_from(secs).unwrap_or(0), 0);
    String::from_utf8_lossy(&out[..10.min(out.len())]).into_owned()
}

fn write_report(path: &Path, args: &ExportArgs, report: &Report) -> anyhow::Result<()> {
    // A raised priority (against other work on the machine) is part of
    // the command.
    let nice = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, f)| f.split_whitespace().nth(16).and_then(|n| n.parse::<i32>().ok())))
        .unwrap_or(0);
    let mut command = if nice == 0 { String::new() } else { format!("nice -n {nice} ") };
    command += &format!(
        "./target/release/sightline bench export --rate {} --duration {}s --nodes {} --sink {} --outage {}s",
        args.rate,
        args.duration.as_secs(),
        args.nodes,
        args.sink.name(),
        args.outage.as_secs()
    );
    if args.find_max {
        command.push_str(" --find-max");
    }
    command.push_str(&format!(" --write {}", path.display()));
    // One section per sink and rate, so runs at several rates stay side by side.
    let name = format!("export-{}-{}", args.sink.name(), args.rate);
    let section = format!(
        "<!-- bench:{name}:start -->\nMeasured on {} by `{command}` ({}), the relay a release build (plaintext gRPC from the fake collectors; TLS costs are under GetFlows streaming).\n\n{}<!-- bench:{name}:end -->",
        today(),
        report.machine,
        report.table
    );
    let text = std::fs::read_to_string(path).unwrap_or_default();
    if !text.contains(&format!("<!-- bench:{name}:start -->")) && !text.contains("## Export through the relay") {
        std::fs::write(path, format!("{}\n## Export through the relay\n", text.trim_end()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    super::write_section(path, &name, &section)
}
