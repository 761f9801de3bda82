//! `bench endpointslices`: endpoint propagation through a real etcd, with
//! slices and with one key per endpoint, in the same run. Simulated nodes
//! run in this process (no namespaces): each runs the collector's own
//! publisher and watcher (`sightline_collector::kvstore`) for the slices,
//! or a plain put per endpoint and a prefix watch for the keys.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use etcd_client::{Client, GetOptions, WatchOptions};
use sightline_collector::kvstore::{self, KvstoreMetrics, KvstoreOptions, LocalEndpoint};
use tokio::sync::Mutex;

use sightline_lab::cluster;

#[derive(Args)]
pub struct EndpointSlicesArgs {
    /// Simulated endpoints, spread evenly over the nodes.
    #[arg(long, default_value_t = 5000)]
    endpoints: usize,
    /// Simulated nodes (each its own publisher, watcher and etcd client).
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// Identities (deployments) per node: a node's endpoints are spread
    /// over this many namespace/identity groups.
    #[arg(long, default_value_t = 4)]
    groups_per_node: usize,
    /// Each node's endpoints appear in this many batches…
    #[arg(long, default_value_t = 10)]
    batches: usize,
    /// …this far apart (ms), as pods start.
    #[arg(long, default_value_t = 20)]
    batch_interval_ms: u64,
    /// Record the figures in this Markdown file (between bench markers).
    #[arg(long)]
    write: Option<PathBuf>,
}

/// The bench's etcd: a cluster of one on loopback, data in a scratch
/// folder; stopped and removed when dropped.
struct Etcd {
    pid: u32,
    dir: PathBuf,
    url: String,
}

impl Etcd {
    fn start() -> anyhow::Result<Self> {
        if !std::path::Path::new(cluster::ETCD_BIN).exists() {
            bail!("bench endpointslices needs Debian's etcd at {} (scripts/setup.sh installs it)", cluster::ETCD_BIN);
        }
        let dir = std::env::temp_dir().join(format!("sightline-bench-etcd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let client = cluster::free_loopback_port()?;
        let peer = format!("http://{}", cluster::free_loopback_port()?);
        let url = format!("http://{client}");
        let log = std::fs::File::create(dir.join("etcd.log"))?;
        let child = Command::new(cluster::ETCD_BIN)
            .arg("--name=bench")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=bench={peer}"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd")?;
        let etcd = Self { pid: child.id(), dir, url };
        std::mem::forget(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if cluster::http_ok(&client, "/health") {
                return Ok(etcd);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("etcd did not become healthy on {} (log {})", etcd.url, etcd.dir.join("etcd.log").display())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        cluster::kill(self.pid);
        // SAFETY: reaping our own child, without blocking.
        unsafe { libc::waitpid(self.pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What one approach cost.
struct Figures {
    /// Keys written (puts and deletes).
    key_writes: u64,
    /// etcd revisions the writes made (a transaction is one).
    revisions: i64,
    bytes: u64,
    /// From the first endpoint's appearance to the last node seeing every
    /// other node's endpoints.
    elapsed: Duration,
    /// Propagation of each endpoint to each other node.
    latencies: Vec<Duration>,
    slices: usize,
}

impl Figures {
    fn quantile(&self, q: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        l.get(((l.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or_default()
    }
}

fn endpoints_of(node: usize, args: &EndpointSlicesArgs) -> Vec<LocalEndpoint> {
    let per_node = args.endpoints / args.nodes;
    (0..per_node)
        .map(|i| {
            let n = node * per_node + i;
            let group = i % args.groups_per_node.max(1);
            LocalEndpoint {
                namespace: format!("ns{}", group % 5),
                name: format!("pod-{node}-{i}"),
                ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + n as u32),
                identity: 1000 + (node * args.groups_per_node + group) as u32,
                named_ports: Vec::new(),
            }
        })
        .collect()
}

fn now_unix_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

async fn revision(url: &str) -> anyhow::Result<i64> {
    let mut c = Client::connect([url], None).await?;
    Ok(c.get("/", Some(GetOptions::new().with_count_only())).await?.header().map_or(0, etcd_client::ResponseHeader::revision))
}

/// Slices: every node runs the collector's kvstore publisher and watcher.
async fn with_slices(url: &str, args: &EndpointSlicesArgs) -> anyhow::Result<Figures> {
    let start_rev = revision(url).await?;
    let per_node = args.endpoints / args.nodes;
    let expected = per_node * (args.nodes - 1);
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut nodes = Vec::new();
    for n in 0..args.nodes {
        let metrics = KvstoreMetrics::default();
        let mut opts = KvstoreOptions::new(vec![url.to_owned()], &format!("sim-{n}"));
        opts.lease_ttl = Duration::from_secs(60);
        let handle = kvstore::start(opts, metrics.clone());
        let mut remote = handle.remote.clone();
        let lat = Arc::clone(&latencies);
        let done = tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            while seen.len() < expected {
                if remote.changed().await.is_err() {
                    break;
                }
                let view = Arc::clone(&remote.borrow_and_update());
                let now = now_unix_ns();
                let mut l = lat.lock().await;
                for (ip, e) in view.iter() {
                    if seen.insert(*ip) {
                        l.push(Duration::from_nanos((now - e.created_unix_ns).max(0) as u64));
                    }
                }
            }
        });
        nodes.push((handle, metrics, done));
    }
    // Every node connected and in sync before the endpoints appear.
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes.iter().any(|(_, m, _)| m.fallback.get() != 0) {
        if Instant::now() > deadline {
            bail!("the simulated nodes did not reach etcd within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let all: Vec<Vec<LocalEndpoint>> = (0..args.nodes).map(|n| endpoints_of(n, args)).collect();
    let step = per_node.div_ceil(args.batches.max(1));
    for b in 1..=args.batches.max(1) {
        for (n, (handle, _, _)) in nodes.iter().enumerate() {
            handle.publish(all[n][..(b * step).min(per_node)].to_vec());
        }
        tokio::time::sleep(Duration::from_millis(args.batch_interval_ms)).await;
    }
    for (_, _, done) in &mut nodes {
        tokio::time::timeout(Duration::from_secs(60), done).await.context("slices did not reach every node within 60 s")??;
    }
    let elapsed = started.elapsed();
    let end_rev = revision(url).await?;
    let key_writes = nodes.iter().map(|(_, m, _)| m.slices_published.get() + m.slices_deleted.get()).sum();
    let bytes = nodes.iter().map(|(_, m, _)| m.bytes_published.get()).sum();
    let mut c = Client::connect([url], None).await?;
    let slices = c.get(kvstore::slices::PREFIX, Some(GetOptions::new().with_prefix().with_count_only())).await?.count() as usize;
    drop(nodes);
    let latencies = std::mem::take(&mut *latencies.lock().await);
    Ok(Figures { key_writes, revisions: end_rev - start_rev, bytes, elapsed, latencies, slices })
}

/// One key per endpoint: a put as each endpoint appears, a prefix watch per node.
async fn with_keys(url: &str, args: &EndpointSlicesArgs) -> anyhow::Result<Figures> {
    const PREFIX: &str = "/sightline/bench/endpoints/";
    let start_rev = revision(url).await?;
    let per_node = args.endpoints / args.nodes;
    let expected = per_node * (args.nodes - 1);
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let bytes = Arc::new(AtomicU64::new(0));
    let mut watchers = Vec::new();
    let mut ready = Vec::new();
    for n in 0..args.nodes {
        let mut c = Client::connect([url], None).await?;
        let mut stream = c.watch(PREFIX, Some(WatchOptions::new().with_prefix())).await?;
        // The watch is created once its first response arrives.
        let first = stream.message().await?.context("watch")?;
        anyhow::ensure!(first.created(), "watch not created");
        ready.push(c);
        let lat = Arc::clone(&latencies);
        let me = format!("{PREFIX}sim-{n}/");
        watchers.push(tokio::spawn(async move {
            let mut seen = 0usize;
            while seen < expected {
                let Ok(Some(resp)) = stream.message().await else { break };
                let now = now_unix_ns();
                let mut l = lat.lock().await;
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    if kv.key().starts_with(me.as_bytes()) {
                        continue;
                    }
                    let created: i64 = serde_json::from_slice::<serde_json::Value>(kv.value())
                        .ok()
                        .and_then(|v| v["created_unix_ns"].as_i64())
                        .unwrap_or(now);
                    l.push(Duration::from_nanos((now - created).max(0) as u64));
                    seen += 1;
                }
            }
        }));
    }
    let started = Instant::now();
    let all: Vec<Vec<LocalEndpoint>> = (0..args.nodes).map(|n| endpoints_of(n, args)).collect();
    let step = per_node.div_ceil(args.batches.max(1));
    let mut publishers = Vec::new();
    for (n, eps) in all.into_iter().enumerate() {
        let mut c = Client::connect([url], None).await?;
        let lease = c.lease_grant(60, None).await?.id();
        let bytes = Arc::clone(&bytes);
        let interval = Duration::from_millis(args.batch_interval_ms);
        publishers.push(tokio::spawn(async move {
            for batch in eps.chunks(step) {
                let t = Instant::now();
                for e in batch {
                    let value = serde_json::json!({"namespace": e.namespace, "name": e.name, "ip": e.ip, "identity": e.identity,
                                                   "node": format!("sim-{n}"), "created_unix_ns": now_unix_ns()})
                    .to_string();
                    bytes.fetch_add(value.len() as u64, Ordering::Relaxed);
                    let key = format!("{PREFIX}sim-{n}/{}/{}", e.namespace, e.name);
                    c.put(key, value, Some(etcd_client::PutOptions::new().with_lease(lease))).await?;
                }
                tokio::time::sleep(interval.saturating_sub(t.elapsed())).await;
            }
            anyhow::Ok(())
        }));
    }
    for p in publishers {
        p.await??;
    }
    for w in watchers {
        tokio::time::timeout(Duration::from_secs(60), w).await.context("keys did not reach every node within 60 s")??;
    }
    let elapsed = started.elapsed();
    let end_rev = revision(url).await?;
    drop(ready);
    let latencies = std::mem::take(&mut *latencies.lock().await);
    Ok(Figures { key_writes: (per_node * args.nodes) as u64, revisions: end_rev - start_rev, bytes: bytes.load(Ordering::Relaxed), elapsed, latencies, slices: 0 })
}

/// `bench endpointslices`.
pub fn endpointslices(args: &EndpointSlicesArgs) -> anyhow::Result<()> {
    if args.nodes < 2 || args.endpoints < args.nodes || args.groups_per_node == 0 || args.batches == 0 {
        bail!("--nodes must be at least 2, --endpoints at least --nodes, --groups-per-node and --batches at least 1");
    }
    let etcd = Etcd::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let slices = rt.block_on(with_slices(&etcd.url, args))?;
    let keys = rt.block_on(with_keys(&etcd.url, args))?;
    drop(rt);
    drop(etcd);
    let row = |name: &str, f: &Figures| {
        let secs = f.elapsed.as_secs_f64();
        format!(
            "| {name} | {} | {} | {} | {:.0} | {:.1} KiB | {:.0} | {:.0} | {:.0} |\n",
            if f.slices > 0 { f.slices.to_string() } else { "–".to_owned() },
            f.key_writes,
            f.revisions,
            f.key_writes as f64 / secs,
            f.bytes as f64 / 1024.0,
            f.quantile(0.5).as_secs_f64() * 1e3,
            f.quantile(0.99).as_secs_f64() * 1e3,
            secs * 1e3,
        )
    };
    let cut = keys.key_writes as f64 / slices.key_writes.max(1) as f64;
    let report = format!(
        "| approach | slices | keys written | etcd revisions | writes/s | bytes written | p50 propagation (ms) | p99 propagation (ms) | until every node had every endpoint (ms) |\n|---|---|---|---|---|---|---|---|---|\n{}{}\nSlices cut kvstore writes {cut:.1}× ({} against {}), {} latency samples each ({} endpoints × {} other nodes).\n",
        row("slices (≤100 per namespace and identity, 100 ms coalescing)", &slices),
        row("one key per endpoint", &keys),
        slices.key_writes,
        keys.key_writes,
        slices.latencies.len(),
        args.endpoints / args.nodes * args.nodes,
        args.nodes - 1,
    );
    print!("{report}");
    if cut < 10.0 {
        eprintln!("bench: slices cut writes only {cut:.1}× (the target is at least 10×)");
    }
    if let Some(path) = &args.write {
        crate::bench::write_section(
            path,
            "endpointslices",
            &format!(
                "<!-- bench:endpointslices:start -->\nMeasured by `sightline bench endpointslices --endpoints {} --nodes {} --groups-per-node {} --batches {} --batch-interval-ms {}` (one real etcd {} on loopback, every simulated node its own client, publisher and watcher in one process; same run, slices first).\n\n{report}<!-- bench:endpointslices:end -->",
                args.endpoints, args.nodes, args.groups_per_node, args.batches, args.batch_interval_ms, "3.4 (Debian)"
            ),
        )?;
    }
    Ok(())
}
