//! The running exporters of one process (the relay, or a collector), built
//! from an [`ExportConfig`] and rebuilt when it changes.
//!
//! [`Exporters::apply`] is all or nothing: every new or changed exporter is
//! built first (spool opened, sink created); if any fails, nothing changes
//! and the running exporters keep going. Then changed and removed
//! exporters are stopped (their spools keep what was not delivered) and
//! the new ones started; an exporter whose definition did not change is
//! left alone. A spool is never open in two running exporters at once: a
//! changed exporter whose spool did not change takes over its old
//! instance's spool (memory or disk), one whose spool folder is still in
//! use opens it only once the old instance has stopped. The new
//! exporters' queues replace the old ones before those stop, so batches
//! pushed during a reload wait for the new instance instead of being
//! lost.
//!
//! [`Exporters::push`] hands a batch of merged flows to every exporter
//! without waiting: each exporter has its own bounded queue, and a full
//! queue drops (and counts) the batch for that exporter only.
//!
//! Each exporter runs two tasks: the pipeline (queue → filters → … →
//! spool; once a second it emits due aggregation windows, persists where
//! it is, and updates its spool gauges) and the delivery loop (spool →
//! sink).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sightline_flow::{FieldMask, FlowFilters};
use sightline_proto::observer::GetFlowsResponse;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{AzureAuthConfig, ExportConfig, ExporterConfig, OtlpProtocolConfig, SinkConfig};
use crate::encode::{Encoder, azure::AzureEncoder, file::FileEncoder, otlp::OtlpEncoder};
use crate::metrics::{ExportMetrics, ExporterMetrics};
use crate::pipeline::{Pipeline, PipelineParts};
use crate::sink::Sink;
use crate::spool::{Spool, SpoolOptions};

/// Batches an exporter's queue holds before it drops.
pub const QUEUE_BATCHES: usize = 4096;
/// Name of the file in a spool folder that says where the exporter was.
pub const RESUME_FILE: &str = "resume.json";

/// A batch of merged responses, shared by every exporter.
pub type Items = Arc<[Arc<GetFlowsResponse>]>;

/// Who is exporting (resource attributes of OTLP records).
#[derive(Clone, Debug)]
pub struct Identity {
    /// `service.name`: `sightline-relay` or `sightline-collector`.
    pub service: String,
    /// `k8s.cluster.name`.
    pub cluster: String,
}

/// Why a configuration could not be applied.
#[derive(Debug, thiserror::Error)]
#[error("exporter {name:?}: {message}")]
pub struct ApplyError {
    pub name: String,
    pub message: String,
}

/// What [`Exporters::apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub stopped: Vec<String>,
    pub unchanged: Vec<String>,
}

struct Running {
    config: ExporterConfig,
    tx: mpsc::Sender<Items>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    metrics: ExporterMetrics,
    /// `None` until the tasks are started.
    spool: Option<Spool>,
}

/// Where a new or changed exporter's spool comes from.
enum SpoolSource {
    /// Opened while checking the configuration.
    Ready(Spool),
    /// The old instance's spool, handed over once it stopped.
    TakeOver,
    /// The folder is in use by an exporter being stopped: opened after it
    /// stopped.
    OpenAfterStop,
}

/// The running exporters.
pub struct Exporters {
    identity: Identity,
    metrics: ExportMetrics,
    running: RwLock<BTreeMap<String, Running>>,
    /// Serialises [`Exporters::apply`].
    applying: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Exporters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporters").field("identity", &self.identity).finish_non_exhaustive()
    }
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

impl Exporters {
    /// No exporters yet.
    #[must_use]
    pub fn new(identity: Identity, metrics: ExportMetrics) -> Self {
        Self { identity, metrics, running: RwLock::new(BTreeMap::new()), applying: tokio::sync::Mutex::new(()) }
    }

    /// The names of the running exporters.
    #[must_use]
    pub fn names(&self) -> Vec<String> {
        self.running.read().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }

    /// Whether any exporter runs.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.running.read().unwrap_or_else(PoisonError::into_inner).is_empty()
    }

    /// Hands `items` to every exporter, never waiting.
    pub fn push(&self, items: &Items) {
        let running = self.running.read().unwrap_or_else(PoisonError::into_inner);
        for r in running.values() {
            if r.tx.try_send(Arc::clone(items)).is_err() {
                r.metrics.dropped.inc_by(count_flows(items));
            }
        }
    }

    /// Per node, the oldest point any exporter with an on-disk spool must
    /// see flows from again (after a restart): read from the spools'
    /// resume files.
    #[must_use]
    pub fn resume_points(config: &ExportConfig) -> BTreeMap<String, i64> {
        let mut out: BTreeMap<String, i64> = BTreeMap::new();
        for e in &config.exporters {
            let Some(spool) = &e.spool else { continue };
            for (node, t) in read_resume(&spool.path) {
                let entry = out.entry(node).or_insert(t);
                *entry = (*entry).min(t);
            }
        }
        out
    }

    /// Makes the running exporters those of `config` (see the module docs).
    ///
    /// # Errors
    ///
    /// [`ApplyError`] naming the exporter that could not be built; nothing
    /// was changed. (Except in one case: a changed exporter's spool that
    /// could only be opened once its old instance had stopped, and then
    /// failed to open; that exporter is then not running, what was queued
    /// for it is counted as dropped, and the others were applied.)
    pub async fn apply(&self, config: &ExportConfig) -> Result<ApplyReport, ApplyError> {
        let _guard = self.applying.lock().await;
        let current: BTreeMap<String, ExporterConfig> = self
            .running
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.config.clone()))
            .collect();
        let mut report = ApplyReport::default();
        // Build what is new or changed first.
        let mut built = Vec::new();
        for e in &config.exporters {
            match current.get(&e.name) {
                Some(c) if c == e => report.unchanged.push(e.name.clone()),
                existing => {
                    let sink = self.sink(e).map_err(|message| ApplyError { name: e.name.clone(), message })?;
                    // Two instances must never have one spool open at once
                    // (each would append, acknowledge and delete segments
                    // behind the other's back).
                    let in_use = e.spool.as_ref().is_some_and(|s| {
                        current.values().any(|c| c.spool.as_ref().is_some_and(|cs| cs.path == s.path))
                    });
                    let source = if existing.is_some_and(|c| c.spool == e.spool) {
                        SpoolSource::TakeOver
                    } else if in_use {
                        SpoolSource::OpenAfterStop
                    } else {
                        SpoolSource::Ready(open_spool(e).map_err(|message| ApplyError { name: e.name.clone(), message })?)
                    };
                    if existing.is_some() {
                        report.restarted.push(e.name.clone());
                    } else {
                        report.started.push(e.name.clone());
                    }
                    built.push((e.clone(), sink, source));
                }
            }
        }
        let keep: Vec<&str> = config.exporters.iter().map(|e| e.name.as_str()).collect();
        let to_stop: Vec<String> = current
            .keys()
            .filter(|name| !keep.contains(&name.as_str()) || report.restarted.contains(name))
            .cloned()
            .collect();
        // Swap the queues in one step: from here on, batches go to the new
        // instances' queues, where they wait until those start.
        let mut old = Vec::with_capacity(to_stop.len());
        let mut starting = Vec::with_capacity(built.len());
        {
            let mut running = self.running.write().unwrap_or_else(PoisonError::into_inner);
            for name in &to_stop {
                if let Some(r) = running.remove(name) {
                    old.push((name.clone(), r));
                }
            }
            for (e, sink, source) in built {
                let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
                let queue = tx.downgrade();
                let (stop_tx, stop_rx) = watch::channel(false);
                let metrics = self.metrics.exporter(&e.name);
                let placeholder =
                    Running { config: e.clone(), tx, stop: stop_tx, tasks: Vec::new(), metrics: metrics.clone(), spool: None };
                running.insert(e.name.clone(), placeholder);
                starting.push((e, sink, source, rx, queue, stop_rx, metrics));
            }
        }
        let mut old_spools = BTreeMap::new();
        for (name, r) in old {
            let memory = r.config.spool.is_none();
            let spool = stop(r).await;
            if keep.contains(&name.as_str()) {
                old_spools.insert(name, (spool, memory));
            } else {
                self.metrics.remove(&name);
                report.stopped.push(name);
            }
        }
        let mut failed = None;
        for (e, sink, source, rx, queue, stop_rx, metrics) in starting {
            let spool = match source {
                SpoolSource::Ready(spool) => Ok(spool),
                SpoolSource::TakeOver => match old_spools.remove(&e.name).and_then(|(spool, _)| spool) {
                    Some(spool) => Ok(spool),
                    None => open_spool(&e),
                },
                SpoolSource::OpenAfterStop => open_spool(&e),
            };
            match spool {
                Ok(spool) => {
                    let tasks = self.start(&e, sink, spool.clone(), (rx, queue), stop_rx, metrics);
                    let mut running = self.running.write().unwrap_or_else(PoisonError::into_inner);
                    if let Some(r) = running.get_mut(&e.name) {
                        r.tasks = tasks;
                        r.spool = Some(spool);
                    }
                }
                Err(message) => {
                    // Its queue goes with it; what it held is counted.
                    let mut rx = rx;
                    rx.close();
                    self.running.write().unwrap_or_else(PoisonError::into_inner).remove(&e.name);
                    while let Ok(items) = rx.try_recv() {
                        metrics.dropped.inc_by(count_flows(&items));
                    }
                    log::error!("export: exporter {:?} could not start: {message}", e.name);
                    failed.get_or_insert(ApplyError { name: e.name.clone(), message });
                }
            }
        }
        // A changed exporter whose memory queue was not taken over (it got
        // an on-disk spool) loses what waited in it: counted.
        for (name, (spool, memory)) in old_spools {
            if let (Some(spool), true) = (spool, memory) {
                self.metrics.exporter(&name).dropped.inc_by(spool.stats().records);
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Stops every exporter (open aggregation windows are spooled first).
    pub async fn shutdown(&self) {
        let all = std::mem::take(&mut *self.running.write().unwrap_or_else(PoisonError::into_inner));
        for (_, r) in all {
            let _ = stop(r).await;
        }
    }

    fn sink(&self, e: &ExporterConfig) -> Result<Box<dyn Sink>, String> {
        Ok(match &e.sink {
            SinkConfig::File(f) => {
                use crate::sink::file::{FileSink, FileSinkOptions, FileTarget};
                let target = f.path.clone().map_or(FileTarget::Stdout, FileTarget::Path);
                let opts = FileSinkOptions { target, max_size_bytes: f.max_bytes, max_backups: f.max_backups, compress: f.compress };
                Box::new(FileSink::new(opts).map_err(|err| err.to_string())?)
            }
            SinkConfig::AzureMonitor(a) => {
                use crate::sink::azure::{AzureAuth, AzureOptions, AzureSink};
                let auth = match &a.auth {
                    AzureAuthConfig::ClientSecret { tenant_id, client_id, secret_file, authority_host } => AzureAuth::ClientSecret {
                        tenant_id: tenant_id.clone(),
                        client_id: client_id.clone(),
                        secret_file: secret_file.clone(),
                        authority_host: authority_host.clone(),
                    },
                    AzureAuthConfig::WorkloadIdentity { tenant_id, client_id, token_file, authority_host } => {
                        AzureAuth::WorkloadIdentity {
                            tenant_id: tenant_id.clone(),
                            client_id: client_id.clone(),
                            token_file: token_file.clone(),
                            authority_host: authority_host.clone(),
                        }
                    }
                    AzureAuthConfig::ManagedIdentity { client_id, endpoint } => {
                        AzureAuth::ManagedIdentity { client_id: client_id.clone(), endpoint: endpoint.clone() }
                    }
                };
                let mut opts = AzureOptions::new(a.endpoint.clone(), a.dcr_immutable_id.clone(), a.stream.clone(), auth);
                opts.ca_file.clone_from(&a.ca_file);
                Box::new(AzureSink::new(opts).map_err(|err| err.to_string())?)
            }
            SinkConfig::Otlp(o) => {
                use crate::sink::otlp::{OtlpOptions, OtlpProtocol, OtlpSink};
                let protocol = match o.protocol {
                    OtlpProtocolConfig::Grpc => OtlpProtocol::Grpc,
                    OtlpProtocolConfig::HttpProtobuf => OtlpProtocol::HttpProtobuf,
                };
                let mut opts = OtlpOptions::new(o.endpoint.clone(), protocol);
                opts.headers.clone_from(&o.headers);
                opts.ca_file.clone_from(&o.ca_file);
                opts.timeout = o.timeout;
                opts.resource = vec![
                    ("service.name".to_owned(), self.identity.service.clone()),
                    ("k8s.cluster.name".to_owned(), self.identity.cluster.clone()),
                ];
                Box::new(OtlpSink::new(opts).map_err(|err| err.to_string())?)
            }
        })
    }

    /// Starts the pipeline and delivery tasks of `e` on its queue.
    fn start(
        &self,
        e: &ExporterConfig,
        sink: Box<dyn Sink>,
        spool: Spool,
        (rx, queue): (mpsc::Receiver<Items>, mpsc::WeakSender<Items>),
        stop_rx: watch::Receiver<bool>,
        metrics: ExporterMetrics,
    ) -> Vec<JoinHandle<()>> {
        let encoder: Box<dyn Encoder> = match &e.sink {
            SinkConfig::File(_) => Box::new(FileEncoder),
            SinkConfig::AzureMonitor(_) => Box::new(AzureEncoder),
            SinkConfig::Otlp(_) => Box::new(OtlpEncoder::default()),
        };
        // Checked when the configuration was read.
        let filters = FlowFilters::new(&e.include, &e.exclude).unwrap_or_default();
        let mask = FieldMask::new(&e.field_mask).ok();
        let resume = e.spool.as_ref().map(|s| read_resume(&s.path)).unwrap_or_default();
        let end = e.end.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let pipeline = Pipeline::new(PipelineParts {
            filters,
            mask,
            aggregate: e.aggregate,
            encoder,
            spool: spool.clone(),
            metrics: metrics.clone(),
            end,
            resume,
        });
        let resume_dir = e.spool.as_ref().map(|s| s.path.clone());
        let front = tokio::spawn(run_pipeline(e.name.clone(), pipeline, rx, stop_rx.clone(), resume_dir, metrics.clone()));
        // Delivery gives way while the pipeline's queue is more than half
        // full: new flows must reach the spool (or they are dropped), a
        // backlog can wait on disk.
        let behind = move || queue.upgrade().is_some_and(|tx| tx.capacity() < tx.max_capacity() / 2);
        let back = tokio::spawn(async move {
            crate::deliver::run(spool, sink, metrics, stop_rx, behind).await;
        });
        log::info!("export: exporter {:?} started ({} sink)", e.name, e.sink.kind());
        vec![front, back]
    }
}

/// The flows among `items` (what a dropped batch costs an exporter).
fn count_flows(items: &Items) -> u64 {
    let flows = items
        .iter()
        .filter(|i| matches!(i.response_types, Some(sightline_proto::observer::get_flows_response::ResponseTypes::Flow(_))))
        .count();
    flows as u64
}

/// Stops an exporter: its queue is drained into its spool, open
/// aggregation windows spooled, the delivery loop ended; a task that does
/// not end within 5 s (a delivery hanging on its sink) is aborted, so that
/// a stopped exporter never touches its spool again. Returns the spool.
async fn stop(r: Running) -> Option<Spool> {
    let _ = r.stop.send(true);
    drop(r.tx);
    for mut t in r.tasks {
        if tokio::time::timeout(Duration::from_secs(5), &mut t).await.is_err() {
            log::warn!("export: exporter {:?} did not stop within 5 s; aborting it", r.config.name);
            t.abort();
            let _ = t.await;
        }
    }
    log::info!("export: exporter {:?} stopped", r.config.name);
    r.spool
}

fn open_spool(e: &ExporterConfig) -> Result<Spool, String> {
    match &e.spool {
        Some(s) => Spool::open(SpoolOptions::new(s.path.clone(), s.max_bytes)).map_err(|err| err.to_string()),
        None => Ok(Spool::memory(crate::config::MEMORY_SPOOL_MB << 20)),
    }
}

/// The pipeline task: batches from the queue, a tick every second.
async fn run_pipeline(
    name: String,
    mut pipeline: Pipeline,
    mut rx: mpsc::Receiver<Items>,
    mut stop: watch::Receiver<bool>,
    resume_dir: Option<PathBuf>,
    metrics: ExporterMetrics,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_resume = BTreeMap::new();
    loop {
        tokio::select! {
            items = rx.recv() => match items {
                Some(items) => {
                    if let Err(e) = pipeline.push(&items, now_ns()) {
                        log::warn!("export: exporter {name:?}: spool: {e}");
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                if let Err(e) = pipeline.tick(now_ns()) {
                    log::warn!("export: exporter {name:?}: spool: {e}");
                }
                let stats = pipeline.spool().stats();
                metrics.spool_bytes.set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
                metrics.spool_records.set(i64::try_from(stats.records).unwrap_or(i64::MAX));
                if let Some(dir) = &resume_dir {
                    let points = pipeline.resume_points();
                    if points != last_resume {
                        write_resume(dir, &points);
                        last_resume = points;
                    }
                }
            }
            _ = stop.changed() => break,
        }
    }
    // Drain what is queued, then spool the open windows.
    while let Ok(items) = rx.try_recv() {
        if let Err(e) = pipeline.push(&items, now_ns()) {
            log::warn!("export: exporter {name:?}: spool: {e}");
        }
    }
    if let Err(e) = pipeline.finish() {
        log::warn!("export: exporter {name:?}: spool: {e}");
    }
    if let Some(dir) = &resume_dir {
        write_resume(dir, &pipeline.resume_points());
    }
}

fn read_resume(dir: &Path) -> BTreeMap<String, i64> {
    std::fs::read(dir.join(RESUME_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<BTreeMap<String, i64>>(&bytes).ok())
        .unwrap_or_default()
}

fn write_resume(dir: &Path, points: &BTreeMap<String, i64>) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let tmp = dir.join(format!("{RESUME_FILE}.tmp"));
    let Ok(bytes) = serde_json::to_vec(points) else { return };
    if std::fs::create_dir_all(dir).is_ok() && std::fs::write(&tmp, bytes).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join(RESUME_FILE));
    }
}

/// Loads `path` and applies it; the result is logged and counted.
///
/// # Errors
///
/// The configuration's error (line and field) or the exporter that could
/// not be built, as text; the running exporters are unchanged.
pub async fn load_and_apply(
    exporters: &Exporters,
    path: &Path,
    ctx: &crate::config::Context,
) -> Result<ApplyReport, String> {
    let result = match crate::config::load(path, ctx) {
        Ok(config) => exporters.apply(&config).await.map_err(|e| format!("{}: {e}", path.display())),
        Err(e) => Err(e.to_string()),
    };
    exporters.metrics.reload(result.is_ok());
    match &result {
        Ok(r) => log::info!(
            "export: {} applied: started {:?}, restarted {:?}, stopped {:?}, unchanged {:?}",
            path.display(),
            r.started,
            r.restarted,
            r.stopped,
            r.unchanged
        ),
        Err(e) => log::error!("export: configuration refused, exporters unchanged: {e}"),
    }
    result
}

/// Re-reads `path` when its content changes (checked every `every`) and
/// on SIGHUP, until `stop` turns true.
pub async fn watch_config(
    exporters: Arc<Exporters>,
    path: PathBuf,
    ctx: crate::config::Context,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = std::fs::read(&path).ok();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            _ = async { match &mut hup { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => true,
            _ = stop.changed() => return,
        };
        let now = std::fs::read(&path).ok();
        if !forced && now == last {
            continue;
        }
        last = now;
        let _ = load_and_apply(&exporters, &path, &ctx).await;
    }
}
