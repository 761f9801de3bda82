//! Counter families with bounded cardinality: the store behind every
//! `hubble_*` metric.
//!
//! A [`Family`] maps label values to a counter. Lookups take borrowed
//! `&[&str]` (no allocation: the map's key type borrows as a `dyn`
//! [`Values`] that hashes and compares the strings themselves), and an
//! existing series is incremented under a shared lock with one atomic add.
//! Only a new series allocates its key, under the write lock, and only while
//! the family has fewer than its cap of series; beyond that the observation
//! is refused and counted in `sightline_metrics_series_refused_total`.
//!
//! [`Families`] encodes them all in the OpenMetrics text format as a
//! prometheus-client [`Collector`], so they share one registry with the
//! agent's own metrics. This module must not know what the labels mean,
//! except for the few label positions [`Family::delete_pod`] looks at.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, LabelSetEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::Exemplar;

use super::names;
use super::tally::Target;
use super::options::{ContextLabel, ContextOptions};

/// Label values, owned or borrowed, hashed and compared by content
/// (object-safe, so that owned and borrowed keys share one `Hash`/`Eq`).
trait ValueList {
    fn count(&self) -> usize;
    fn get(&self, i: usize) -> &str;
}

impl ValueList for Key {
    fn count(&self) -> usize {
        self.0.len()
    }
    fn get(&self, i: usize) -> &str {
        self.0.get(i).map_or("", |s| s)
    }
}

/// Borrowed label values, to look a series up without building its key.
struct Probe<'a>(&'a [&'a str]);

impl ValueList for Probe<'_> {
    fn count(&self) -> usize {
        self.0.len()
    }
    fn get(&self, i: usize) -> &str {
        self.0.get(i).copied().unwrap_or("")
    }
}

impl Hash for dyn ValueList + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_usize(self.count());
        for i in 0..self.count() {
            self.get(i).hash(state);
        }
    }
}

impl PartialEq for dyn ValueList + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.count() == other.count() && (0..self.count()).all(|i| self.get(i) == other.get(i))
    }
}

impl Eq for dyn ValueList + '_ {}

/// A series' owned label values.
struct Key(Box<[Box<str>]>);

impl Key {
    fn values(&self) -> &dyn ValueList {
        self
    }
}

impl<'a> Borrow<dyn ValueList + 'a> for Key {
    fn borrow(&self) -> &(dyn ValueList + 'a) {
        self
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.values().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.values() == other.values()
    }
}

impl Eq for Key {}

/// Positions of the labels that name a pod, for [`Family::delete_pod`].
#[derive(Clone, Copy, Debug, Default)]
struct PodLabels {
    source: Option<usize>,
    destination: Option<usize>,
    source_pod: Option<usize>,
    source_namespace: Option<usize>,
    destination_pod: Option<usize>,
    destination_namespace: Option<usize>,
}

/// One counter metric and its series.
pub(crate) struct Family {
    /// The full name, `…_total` (also the refusal counter's `metric` label).
    metric: &'static str,
    help: &'static str,
    labels: Box<[&'static str]>,
    pods: PodLabels,
    cap: usize,
    refused: Counter,
    series: RwLock<HashMap<Key, Arc<AtomicU64>>>,
}

impl fmt::Debug for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Family")
            .field("metric", &self.metric)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl Family {
    /// A family whose labels are `before`, then the context labels, then
    /// `after`.
    pub(crate) fn new(
        metric: &'static str,
        help: &'static str,
        before: &[&'static str],
        context: &ContextOptions,
        after: &[&'static str],
        cap: usize,
        refused: Counter,
    ) -> Self {
        let mut labels: Vec<&'static str> = before.to_vec();
        let mut pods = PodLabels::default();
        for label in &context.labels {
            let slot = match label {
                ContextLabel::SourcePod => Some(&mut pods.source_pod),
                ContextLabel::SourceNamespace => Some(&mut pods.source_namespace),
                ContextLabel::DestinationPod => Some(&mut pods.destination_pod),
                ContextLabel::DestinationNamespace => Some(&mut pods.destination_namespace),
                _ => None,
            };
            if let Some(slot) = slot {
                *slot = Some(labels.len());
            }
            labels.push(label.name());
        }
        if !context.source.is_empty() {
            pods.source = Some(labels.len());
            labels.push(names::LABEL_SOURCE);
        }
        if !context.destination.is_empty() {
            pods.destination = Some(labels.len());
            labels.push(names::LABEL_DESTINATION);
        }
        labels.extend_from_slice(after);
        Self {
            metric,
            help,
            labels: labels.into(),
            pods,
            cap,
            refused,
            series: RwLock::new(HashMap::new()),
        }
    }

    /// The metric's full name.
    pub(crate) fn metric(&self) -> &'static str {
        self.metric
    }

    /// Label names, in order.
    pub(crate) fn label_names(&self) -> &[&'static str] {
        &self.labels
    }

    /// Adds `n` to the series with these label values (one per label, in
    /// order), creating it if the cap allows. Allocates only when creating.
    pub(crate) fn add(&self, values: &[&str], n: u64) {
        self.resolve(values).add(n);
    }

    /// Where observations with these label values count: their series,
    /// created (at 0) if the cap allows, else the refusal counter.
    pub(crate) fn resolve(&self, values: &[&str]) -> Target {
        if values.len() != self.labels.len() {
            // A handler bug; never worth a panic in the flow path.
            debug_assert!(
                false,
                "{}: {} values for {} labels",
                self.metric,
                values.len(),
                self.labels.len()
            );
            return Target::Nowhere;
        }
        let probe = Probe(values);
        let probe: &dyn ValueList = &probe;
        {
            let series = self.series.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(counter) = series.get(probe) {
                return Target::Series(Arc::clone(counter));
            }
        }
        let mut series = self.series.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(counter) = series.get(probe) {
            return Target::Series(Arc::clone(counter));
        }
        if series.len() >= self.cap {
            return Target::Counter(self.refused.clone());
        }
        let key = Key(values.iter().map(|v| Box::from(*v)).collect());
        let counter = Arc::new(AtomicU64::new(0));
        series.insert(key, Arc::clone(&counter));
        Target::Series(counter)
    }

    /// Adds 1.
    #[cfg(test)]
    pub(crate) fn inc(&self, values: &[&str]) {
        self.add(values, 1);
    }

    /// Number of series.
    pub(crate) fn len(&self) -> usize {
        self.series
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Removes every series that names the pod: `source`/`destination` equal
    /// to `namespace/pod` (the `pod` context), or `source_pod`/
    /// `destination_pod` equal to `pod` with the matching `*_namespace`
    /// label equal to `namespace` (when the family has no namespace label,
    /// the pod name alone decides, which may also reset a same-named pod's
    /// series in another namespace; Hubble skips those series, leaving them
    /// stale forever). Returns how many were removed.
    pub(crate) fn delete_pod(&self, namespace: &str, pod: &str, namespaced: &str) -> usize {
        let p = self.pods;
        if p.source.is_none()
            && p.destination.is_none()
            && p.source_pod.is_none()
            && p.destination_pod.is_none()
        {
            return 0;
        }
        let is = |key: &Key, at: Option<usize>, value: &str| {
            at.is_some_and(|i| key.0.get(i).is_some_and(|v| **v == *value))
        };
        let names_pod = |key: &Key, pod_at: Option<usize>, namespace_at: Option<usize>| {
            is(key, pod_at, pod) && (namespace_at.is_none() || is(key, namespace_at, namespace))
        };
        let mut series = self.series.write().unwrap_or_else(PoisonError::into_inner);
        let before = series.len();
        series.retain(|key, _| {
            !(is(key, p.source, namespaced)
                || is(key, p.destination, namespaced)
                || names_pod(key, p.source_pod, p.source_namespace)
                || names_pod(key, p.destination_pod, p.destination_namespace))
        });
        before - series.len()
    }

    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let mut metric = encoder.encode_descriptor(
            names::family_name(self.metric),
            self.help,
            None,
            MetricType::Counter,
        )?;
        let series = self.series.read().unwrap_or_else(PoisonError::into_inner);
        // Sorted, so that scrapes are stable and diffable.
        let mut sorted: Vec<(&Key, &Arc<AtomicU64>)> = series.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.0.cmp(&b.0.0));
        for (key, value) in sorted {
            let labels = Pairs {
                names: &self.labels,
                values: &key.0,
            };
            let mut family = metric.encode_family(&labels)?;
            family.encode_counter::<NoLabelSet, u64, u64>(
                &value.load(Ordering::Relaxed),
                None::<&Exemplar<NoLabelSet, u64>>,
            )?;
        }
        Ok(())
    }
}

/// A series' label pairs, for the encoder.
struct Pairs<'a> {
    names: &'a [&'static str],
    values: &'a [Box<str>],
}

impl EncodeLabelSet for Pairs<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        for (name, value) in self.names.iter().zip(self.values) {
            (*name, &**value).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// Every handler family, encoded on each scrape.
#[derive(Debug, Default)]
pub(crate) struct Families(pub(crate) Vec<Arc<Family>>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        for family in &self.0 {
            family.encode(&mut encoder)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::options::ContextId;

    fn family(context: &ContextOptions, cap: usize) -> (Family, Counter) {
        let refused = Counter::default();
        (
            Family::new(
                "test_thing_total",
                "help",
                &["a"],
                context,
                &["z"],
                cap,
                refused.clone(),
            ),
            refused,
        )
    }

    fn value(f: &Family, values: &[&str]) -> Option<u64> {
        let probe = Probe(values);
        let probe: &dyn ValueList = &probe;
        f.series
            .read()
            .unwrap()
            .get(probe)
            .map(|v| v.load(Ordering::Relaxed))
    }

    #[test]
    fn counts_per_label_set_and_orders_labels() {
        let ctx = ContextOptions {
            source: vec![ContextId::Pod],
            destination: vec![ContextId::Pod],
            labels: vec![
                ContextLabel::SourceNamespace,
                ContextLabel::TrafficDirection,
            ],
        };
        let (f, _) = family(&ctx, 10);
        assert_eq!(
            f.label_names(),
            [
                "a",
                "source_namespace",
                "traffic_direction",
                "source",
                "destination",
                "z"
            ]
        );
        let v = ["x", "ns", "egress", "ns/a", "ns/b", "y"];
        f.inc(&v);
        f.add(&v, 2);
        f.inc(&["x", "ns", "egress", "ns/a", "ns/c", "y"]);
        assert_eq!(value(&f, &v), Some(3));
        assert_eq!(f.len(), 2);
        // Wrong arity is ignored (and asserted in debug builds).
        let wrong = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.inc(&["x"])));
        assert!(wrong.is_err() == cfg!(debug_assertions));
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn refuses_series_beyond_the_cap_but_keeps_counting_existing_ones() {
        let (f, refused) = family(&ContextOptions::default(), 2);
        f.inc(&["1", "z"]);
        f.inc(&["2", "z"]);
        f.inc(&["3", "z"]);
        f.inc(&["4", "z"]);
        f.inc(&["1", "z"]);
        assert_eq!(f.len(), 2);
        assert_eq!(refused.get(), 2);
        assert_eq!(value(&f, &["1", "z"]), Some(2));
        assert_eq!(value(&f, &["3", "z"]), None);
    }

    #[test]
    fn deletes_series_that_name_the_pod() {
        let ctx = ContextOptions {
            source: vec![ContextId::Pod],
            destination: vec![ContextId::Pod],
            labels: vec![ContextLabel::SourcePod, ContextLabel::SourceNamespace],
        };
        let (f, _) = family(&ctx, 100);
        f.inc(&["1", "web", "ns", "ns/web", "ns/db", "z"]); // source
        f.inc(&["2", "db", "ns", "ns/db", "ns/web", "z"]); // destination
        f.inc(&["3", "web", "ns", "", "", "z"]); // source_pod + source_namespace
        f.inc(&["4", "web", "other", "", "", "z"]); // same name, other namespace
        f.inc(&["5", "db", "ns", "ns/db", "world", "z"]); // unrelated
        assert_eq!(f.delete_pod("ns", "web", "ns/web"), 3);
        assert_eq!(f.len(), 2);
        assert!(value(&f, &["4", "web", "other", "", "", "z"]).is_some());

        // Without a namespace label the pod name decides.
        let ctx = ContextOptions {
            labels: vec![ContextLabel::DestinationPod],
            ..ContextOptions::default()
        };
        let (f, _) = family(&ctx, 100);
        f.inc(&["1", "web", "z"]);
        f.inc(&["1", "db", "z"]);
        assert_eq!(f.delete_pod("ns", "web", "ns/web"), 1);

        // Families without pod labels are left alone.
        let (f, _) = family(&ContextOptions::default(), 100);
        f.inc(&["ns/web", "z"]);
        assert_eq!(f.delete_pod("ns", "web", "ns/web"), 0);
    }
}
