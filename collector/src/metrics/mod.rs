//! Hubble-compatible Prometheus metrics, computed from every flow.
//!
//! The metrics hook of Hubble's pipeline (pkg/hubble/metrics): the agent
//! passes each [`Flow`] to [`Metrics::observe`] before storing it, and
//! serves [`Metrics::encode`] on `/metrics` ([`server`]). Metric names,
//! label names and their order, and label values follow Hubble v1.19 so
//! that Hubble's dashboards work unchanged:
//!
//! - [`options`]: the `--metrics` list (`flow:sourceContext=pod;…,drop`);
//! - [`names`]: every Hubble name and value string, in one place;
//! - `context`: the `source`/`destination`/`labelsContext` values;
//! - `handlers`: `flow`, `drop`, `tcp`, `port-distribution`, `icmp`,
//!   `policy`, `flows-to-world`;
//! - `series`: counter families with a per-metric series cap;
//! - [`pods`]: deleting a deleted pod's series after a grace period;
//! - [`server`]: `/metrics`, `/healthz`, `/readyz`.
//!
//! `hubble_lost_events_total{source}` is always registered, and so is
//! `sightline_metrics_series_refused_total{metric}`. The prometheus-client
//! [`Registry`] is shared: the agent registers its own `sightline_*`
//! metrics in it ([`Metrics::registry_mut`]) and one scrape returns both.
//!
//! **Cost per flow.** The pipeline counts flows through its own
//! [`Recorder`] ([`Metrics::recorder`]): a flow is reduced to a
//! *signature* of the fields the enabled handlers read (`handlers::Reads`),
//! and only the first flow of a signature builds label strings and looks
//! its series up; later ones cost one probe of a small table and a
//! thread-local increment ([`tally`]), flushed to the shared series by the
//! agent every 50 ms. Resolving (the slow path, and [`Metrics::observe`])
//! allocates nothing either once a flow's series exist: label values are
//! `&str`s borrowed from the flow, from static tables, from stack buffers
//! or from a cache of the per-pod strings (`ns/pod`, joined identity
//! labels) keyed by the address of the flow's shared metadata.
//!
//! This module must not decode events, store flows, or know where pods
//! come from: it receives flows and pod deletions from the agent.

pub mod names;
pub mod options;
pub mod pods;
pub mod server;

mod context;
mod handlers;
mod series;
pub(crate) mod tally;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as CounterFamily;
use prometheus_client::registry::Registry;
use sightline_proto::flow::LostEventSource;

pub use context::{app, reserved_identity, shorten_pod_name};
pub use options::{
    ContextId, ContextLabel, ContextOptions, DEFAULT_HANDLERS, HandlerConfig, HandlerKind,
    MetricsConfig,
};
pub use pods::PodDeletions;
pub use server::{Check, Health, bind, router, serve};

use crate::flow::Flow;
use context::{Cache, IpText, Needs, Resolved, SideView, View};
use handlers::{Handler, Reads, Sig, Sink};
use series::{Families, Family};
use tally::Tally;

/// The default cap on series per metric.
pub const DEFAULT_MAX_SERIES_PER_METRIC: usize = 10_000;

/// Errors of configuring or serving metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("unknown metrics handler {name:?}; valid handlers: {valid}")]
    UnknownHandler { name: String, valid: String },
    #[error("metrics handler entry {entry:?} has an empty name")]
    EmptyHandlerName { entry: String },
    #[error("metrics handler {handler:?} given twice")]
    DuplicateHandler { handler: &'static str },
    #[error("unknown option {option:?} for metrics handler {handler:?}; valid options: {valid}")]
    UnknownOption {
        handler: &'static str,
        option: String,
        valid: String,
    },
    #[error("option {option:?} of metrics handler {handler:?} given twice")]
    DuplicateOption {
        handler: &'static str,
        option: String,
    },
    #[error(
        "option {option:?} of metrics handler {handler:?} needs a value; valid values: {valid}"
    )]
    MissingOptionValue {
        handler: &'static str,
        option: String,
        valid: String,
    },
    #[error(
        "invalid value {value:?} for option {option:?} of metrics handler {handler:?}; valid values: {valid}"
    )]
    InvalidOptionValue {
        handler: &'static str,
        option: String,
        value: String,
        valid: String,
    },
    #[error("the maximum number of series per metric must be at least 1")]
    ZeroSeriesCap,
    #[error("scheduling pod metric deletions needs a Tokio runtime")]
    NoRuntime,
    #[error("binding the metrics endpoint to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving the metrics endpoint")]
    Serve {
        #[source]
        source: std::io::Error,
    },
}

/// `sightline_metrics_series_refused_total{metric}`.
type RefusedCounters = CounterFamily<[(&'static str, &'static str); 1], Counter>;

/// The enabled handlers, their metrics, and the registry they are encoded
/// from.
pub struct Metrics {
    config: MetricsConfig,
    registry: Registry,
    core: Arc<Core>,
    /// The recorder behind [`Metrics::observe`].
    recorder: Mutex<Recorder>,
    /// `hubble_lost_events_total{source}`: encoded with the handlers'
    /// families (the registry would append a period to Hubble's help text).
    lost: Arc<Family>,
    /// Other metrics' deletions of a pod's series ([`Metrics::on_pod_deletion`]).
    pod_hooks: Vec<PodHook>,
    refused: RefusedCounters,
    max_series: usize,
}

/// Deletes another metric set's series of a pod (namespace, pod); returns
/// how many.
pub type PodHook = Box<dyn Fn(&str, &str) -> usize + Send + Sync>;

/// What recorders share: the handlers and their families.
struct Core {
    handlers: Vec<Handler>,
    needs: Needs,
    reads: Reads,
    cache: Mutex<Cache>,
    /// Bumped whenever series are removed: recorders then forget the
    /// targets they resolved.
    generation: AtomicU64,
}

impl Core {
    /// Every series the flow counts in.
    #[cold]
    fn targets(&self, flow: &Flow) -> Vec<tally::Target> {
        let mut targets = Vec::new();
        self.resolve(flow, &mut |family, labels| targets.push(family.resolve(labels)));
        targets
    }

    /// The slow path: every handler's label values for the flow, built from
    /// the flow and the per-pod string cache.
    fn resolve(&self, flow: &Flow, sink: &mut Sink<'_>) {
        let resolved = if self.needs.pod_strings || self.needs.identity {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            Resolved::new(&mut cache, self.needs, flow)
        } else {
            Resolved::default()
        };
        let (source_ip, destination_ip) = if self.needs.ip {
            (
                IpText::format(format_args!("{}", flow.source.ip)),
                IpText::format(format_args!("{}", flow.destination.ip)),
            )
        } else {
            (IpText::new(), IpText::new())
        };
        let view = View {
            flow,
            source: SideView::new(
                &flow.source,
                source_ip.as_str(),
                resolved.source_pod.as_ref(),
                resolved.source_identity.as_ref(),
            ),
            destination: SideView::new(
                &flow.destination,
                destination_ip.as_str(),
                resolved.destination_pod.as_ref(),
                resolved.destination_identity.as_ref(),
            ),
        };
        for handler in &self.handlers {
            handler.process(&view, sink);
        }
    }
}

/// Counts flows for the pipeline thread that owns it: the first flow of a
/// kind (its [`Sig`]nature) is resolved into series, later ones cost a
/// hash probe and a thread-local increment ([`tally`]). Counts reach the
/// shared series on [`Recorder::flush`] (and when dropped).
pub struct Recorder {
    core: Arc<Core>,
    /// Signatures without sides, as most configurations (the default one
    /// included) have them: a compact key keeps the table small and cached.
    plain: Tally<(u64, u64)>,
    full: Tally<Sig>,
    generation: u64,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("signatures", &(self.plain.len() + self.full.len()))
            .finish_non_exhaustive()
    }
}

impl Recorder {
    fn new(core: Arc<Core>) -> Self {
        let generation = core.generation.load(Ordering::Acquire);
        Self {
            core,
            plain: Tally::new(tally::DEFAULT_LIMIT),
            full: Tally::new(tally::DEFAULT_LIMIT),
            generation,
        }
    }

    /// Counts one flow in every handler interested in it (pending until
    /// [`flush`](Self::flush)). Allocates nothing for a kind of flow seen
    /// before.
    #[inline]
    pub fn record(&mut self, flow: &Flow) {
        if self.core.handlers.is_empty() {
            return;
        }
        let generation = self.core.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.plain.clear();
            self.full.clear();
            self.generation = generation;
        }
        let reads = &self.core.reads;
        if reads.plain() {
            let key = reads.words(flow);
            if !self.plain.count(&key) {
                let targets = self.core.targets(flow);
                self.plain.insert(key, targets, Vec::new());
            }
        } else {
            let sig = reads.signature(flow);
            if !self.full.count(&sig) {
                let targets = self.core.targets(flow);
                self.full.insert(sig, targets, reads.keep(flow));
            }
        }
    }

    /// Adds the pending counts to the shared series.
    pub fn flush(&mut self) {
        self.plain.flush();
        self.full.flush();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("config", &self.config.to_string())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers the configured handlers' metrics (and the lost-events and
    /// refused-series counters) in a new registry.
    ///
    /// # Errors
    ///
    /// [`MetricsError::ZeroSeriesCap`] when `max_series_per_metric` is 0.
    /// (Configuration errors are reported by [`MetricsConfig`] parsing.)
    pub fn new(config: &MetricsConfig, max_series_per_metric: usize) -> Result<Self, MetricsError> {
        if max_series_per_metric == 0 {
            return Err(MetricsError::ZeroSeriesCap);
        }
        let mut registry = Registry::default();

        let lost = Arc::new(Family::new(
            names::LOST_EVENTS,
            names::LOST_EVENTS_HELP,
            &[names::LABEL_SOURCE],
            &ContextOptions::default(),
            &[],
            usize::MAX,
            Counter::default(),
        ));
        for source in [
            names::LOST_PERF_EVENT_RING_BUFFER,
            names::LOST_OBSERVER_EVENTS_QUEUE,
            names::LOST_HUBBLE_RING_BUFFER,
        ] {
            lost.add(&[source], 0);
        }

        let refused = RefusedCounters::default();
        let mut handlers = Vec::new();
        let mut needs = Needs::default();
        // Encoded in a fixed order whatever the order of the configuration.
        let mut ordered: Vec<&HandlerConfig> = config.handlers.iter().collect();
        ordered.sort_by_key(|h| h.kind);
        for handler in ordered {
            for &id in handler
                .context
                .source
                .iter()
                .chain(&handler.context.destination)
            {
                needs.add_id(id);
            }
            for &label in &handler.context.labels {
                needs.add_label(label);
            }
            let metric = Handler::metric_name(handler.kind);
            let refused_counter = refused
                .get_or_create(&[(names::LABEL_METRIC, metric)])
                .clone();
            handlers.push(Handler::new(
                handler,
                max_series_per_metric,
                refused_counter,
            ));
        }
        registry.register(
            names::family_name(names::SERIES_REFUSED),
            names::SERIES_REFUSED_HELP,
            refused.clone(),
        );
        let families = std::iter::once(Arc::clone(&lost))
            .chain(handlers.iter().map(|h| Arc::clone(h.family())))
            .collect();
        registry.register_collector(Box::new(Families(families)));

        let reads = Reads::new(&handlers, needs.ip);
        let core = Arc::new(Core {
            handlers,
            needs,
            reads,
            cache: Mutex::new(Cache::default()),
            generation: AtomicU64::new(0),
        });
        Ok(Self {
            config: config.clone(),
            registry,
            recorder: Mutex::new(Recorder::new(Arc::clone(&core))),
            core,
            lost,
            pod_hooks: Vec::new(),
            refused,
            max_series: max_series_per_metric,
        })
    }

    /// The configuration the metrics were built from.
    #[must_use]
    pub fn config(&self) -> &MetricsConfig {
        &self.config
    }

    /// A recorder for a pipeline thread: the fast way to count flows.
    #[must_use]
    pub fn recorder(&self) -> Recorder {
        Recorder::new(Arc::clone(&self.core))
    }

    /// Counts one flow in every handler interested in it, at once (through
    /// a shared recorder: a pipeline should own a [`Recorder`]). Never
    /// fails, and allocates nothing for a kind of flow seen before.
    pub fn observe(&self, flow: &Flow) {
        let mut recorder = self.recorder.lock().unwrap_or_else(PoisonError::into_inner);
        recorder.record(flow);
        recorder.flush();
    }

    /// Counts one flow the slow way, label strings and all (the reference
    /// the recorder is checked against).
    #[cfg(test)]
    fn observe_uncached(&self, flow: &Flow) {
        self.core.resolve(flow, &mut |family, labels| family.inc(labels));
    }

    /// Adds `n` to `hubble_lost_events_total{source}`.
    pub fn lost(&self, source: LostEventSource, n: u64) {
        let source = match source {
            LostEventSource::PerfEventRingBuffer => names::LOST_PERF_EVENT_RING_BUFFER,
            LostEventSource::ObserverEventsQueue => names::LOST_OBSERVER_EVENTS_QUEUE,
            LostEventSource::HubbleRingBuffer => names::LOST_HUBBLE_RING_BUFFER,
            LostEventSource::UnknownLostEventSource => names::LOST_UNKNOWN,
        };
        self.lost.add(&[source], n);
    }

    /// Adds `n` to `hubble_lost_events_total{source}`, `source` being one of
    /// `perf_event_ring_buffer`, `observer_events_queue`,
    /// `hubble_ring_buffer` (or the upper-case `LostEventSource` names);
    /// anything else counts as `unknown_lost_event_source`.
    pub fn lost_events(&self, source: &str, n: u64) {
        let known = [
            names::LOST_PERF_EVENT_RING_BUFFER,
            names::LOST_OBSERVER_EVENTS_QUEUE,
            names::LOST_HUBBLE_RING_BUFFER,
        ];
        let source = known
            .into_iter()
            .find(|name| name.eq_ignore_ascii_case(source))
            .unwrap_or(names::LOST_UNKNOWN);
        self.lost.add(&[source], n);
    }

    /// Removes every series whose context labels name the pod (see
    /// [`PodDeletions`] for the delayed form). Returns how many.
    pub fn delete_pod(&self, namespace: &str, pod: &str) -> usize {
        let namespaced = if namespace.is_empty() {
            pod.to_owned()
        } else {
            format!("{namespace}/{pod}")
        };
        let removed: usize = self
            .core
            .handlers
            .iter()
            .map(|h| h.family().delete_pod(namespace, pod, &namespaced))
            .sum();
        if removed > 0 {
            self.core.generation.fetch_add(1, Ordering::AcqRel);
        }
        removed
            + self
                .pod_hooks
                .iter()
                .map(|hook| hook(namespace, pod))
                .sum::<usize>()
    }

    /// The cap on series per metric, and the counter of observations
    /// `metric` (a full name, `…_total`) refused at it: for metrics kept
    /// elsewhere (the agent's policy accounting) to be capped and reported
    /// like the handlers'.
    #[must_use]
    pub fn series_limit(&self, metric: &'static str) -> (usize, Counter) {
        let refused = self.refused.get_or_create(&[(names::LABEL_METRIC, metric)]).clone();
        (self.max_series, refused)
    }

    /// Also runs `hook` when a pod's series are deleted (immediately or
    /// after [`PodDeletions`]' grace period), for metrics kept elsewhere.
    pub fn on_pod_deletion(&mut self, hook: PodHook) {
        self.pod_hooks.push(hook);
    }

    /// The number of series of a metric (`hubble_drop_total`, …), `None`
    /// when it is not enabled.
    #[must_use]
    pub fn series_count(&self, metric: &str) -> Option<usize> {
        self.core
            .handlers
            .iter()
            .map(Handler::family)
            .find(|f| f.metric() == metric)
            .map(|f| f.len())
    }

    /// The label names of a metric, in order, `None` when it is not enabled.
    #[must_use]
    pub fn label_names(&self, metric: &str) -> Option<Vec<&'static str>> {
        self.core
            .handlers
            .iter()
            .map(Handler::family)
            .find(|f| f.metric() == metric)
            .map(|f| f.label_names().to_vec())
    }

    /// The registry every metric is encoded from.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registry, to register the agent's own metrics before the
    /// `Metrics` is shared.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Every metric in the OpenMetrics text format, `# EOF` terminated.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            log::warn!("encoding metrics failed: {e}");
            out.clear();
            out.push_str("# EOF\n");
        }
        out
    }
}
