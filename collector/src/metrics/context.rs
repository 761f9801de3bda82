//! Context label values: how a flow's endpoints are named in the `source`,
//! `destination` and `labelsContext` labels (Hubble's api/context.go).
//!
//! Everything here runs for every flow, so it must not allocate: values are
//! borrowed from the flow, from static tables, from small stack buffers
//! ([`Text`]), or from a [`Cache`] of the few strings that have to be built
//! (`namespace/pod`, its short form, the joined identity labels). The cache
//! is keyed by the address of the `Arc` the flow shares with the collector's
//! metadata and keeps a `Weak` to it, so an address cannot be reused while
//! its entry exists; entries of dropped pods are pruned as the cache grows.
//!
//! This module must not know about metric families or handlers.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Weak};

use super::names;
use super::options::{ContextId, ContextLabel};
use crate::metadata::PodMeta;
use crate::flow::Flow;

/// A string built on the stack: at most `N` bytes, no heap.
pub(crate) struct Text<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Text<N> {
    pub(crate) const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }

    /// Formats `args` into a new buffer (empty if it does not fit).
    pub(crate) fn format(args: fmt::Arguments<'_>) -> Self {
        let mut text = Self::new();
        if fmt::Write::write_fmt(&mut text, args).is_err() {
            text.len = 0;
        }
        text
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in, so this is valid UTF-8.
        self.buf
            .get(..self.len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }
}

impl<const N: usize> fmt::Write for Text<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Long enough for any IPv6 address.
pub(crate) type IpText = Text<48>;

/// Hubble's `shortenPodName`: the regex `^(.+?)(-[a-z0-9]+){1,2}$` replaced
/// by its first group. The lazy group makes the prefix as short as possible,
/// so two trailing `-[a-z0-9]+` segments are removed when both qualify,
/// else one; the prefix must be non-empty and (Go's `.`) without newlines.
#[must_use]
pub fn shorten_pod_name(name: &str) -> &str {
    let segment = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    let prefix = |p: &str| !p.is_empty() && !p.contains('\n');
    let Some(last) = name.rfind('-') else {
        return name;
    };
    let (head, tail) = (&name[..last], &name[last + 1..]);
    if !segment(tail) {
        return name;
    }
    if let Some(second) = head.rfind('-') {
        let (shorter, middle) = (&head[..second], &head[second + 1..]);
        if segment(middle) && prefix(shorter) {
            return shorter;
        }
    }
    if prefix(head) { head } else { name }
}

/// `reserved-identity`: `reserved:kube-apiserver` when present, else the
/// first `reserved:*` label in sorted order (Hubble reads sorted labels).
#[must_use]
pub fn reserved_identity(labels: &[String]) -> &str {
    if labels
        .iter()
        .any(|l| l == names::LABEL_RESERVED_KUBE_APISERVER)
    {
        return names::LABEL_RESERVED_KUBE_APISERVER;
    }
    labels
        .iter()
        .filter(|l| l.starts_with(names::RESERVED_PREFIX))
        .min()
        .map_or("", String::as_str)
}

/// `app` / `*_app`: the value of the first label, in sorted order, that is
/// one of the app labels with a non-empty value. (Hubble loops over the
/// sorted labels, then over the app keys, so with several app labels the
/// sort order decides: `app.kubernetes.io/name`, then `app`, then `k8s-app`.)
#[must_use]
pub fn app(labels: &[String]) -> &str {
    labels
        .iter()
        .filter_map(|l| {
            let value = names::APP_LABEL_PREFIXES
                .iter()
                .find_map(|p| l.strip_prefix(p))?;
            (!value.is_empty()).then_some((l, value))
        })
        .min_by(|a, b| a.0.cmp(b.0))
        .map_or("", |(_, value)| value)
}

/// The strings a pod contributes to contexts, built once per pod.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PodStrings {
    /// `namespace/name` (or `name` without a namespace).
    pub(crate) pod: Box<str>,
    /// `namespace/` + the shortened name.
    pub(crate) pod_short: Box<str>,
}

impl PodStrings {
    fn new(pod: &PodMeta) -> Self {
        let with_namespace = |name: &str| -> Box<str> {
            if pod.namespace.is_empty() {
                name.into()
            } else {
                format!("{}/{name}", pod.namespace).into()
            }
        };
        Self {
            pod: with_namespace(&pod.name),
            pod_short: with_namespace(shorten_pod_name(&pod.name)),
        }
    }
}

struct PodEntry {
    keep: Weak<PodMeta>,
    strings: Arc<PodStrings>,
}

struct LabelsEntry {
    keep: Weak<[String]>,
    joined: Arc<str>,
}

/// Built strings keyed by the address of the shared metadata they come from.
#[derive(Default)]
pub(crate) struct Cache {
    pods: HashMap<usize, PodEntry>,
    labels: HashMap<usize, LabelsEntry>,
}

/// Entries are pruned when a map reaches this size, then when it doubles.
const PRUNE_FLOOR: usize = 1024;

impl Cache {
    pub(crate) fn pod(&mut self, pod: &Arc<PodMeta>) -> Arc<PodStrings> {
        let key = Arc::as_ptr(pod).cast::<()>() as usize;
        if let Some(entry) = self.pods.get(&key) {
            return Arc::clone(&entry.strings);
        }
        prune(&mut self.pods, |e| e.keep.strong_count() > 0);
        let strings = Arc::new(PodStrings::new(pod));
        self.pods.insert(
            key,
            PodEntry {
                keep: Arc::downgrade(pod),
                strings: Arc::clone(&strings),
            },
        );
        strings
    }

    /// Sorted labels joined with `,` (the `identity` context).
    pub(crate) fn identity(&mut self, labels: &Arc<[String]>) -> Arc<str> {
        let key = Arc::as_ptr(labels).cast::<()>() as usize;
        if let Some(entry) = self.labels.get(&key) {
            return Arc::clone(&entry.joined);
        }
        prune(&mut self.labels, |e| e.keep.strong_count() > 0);
        let mut sorted: Vec<&str> = labels.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        let joined: Arc<str> = Arc::from(sorted.join(","));
        self.labels.insert(
            key,
            LabelsEntry {
                keep: Arc::downgrade(labels),
                joined: Arc::clone(&joined),
            },
        );
        joined
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.pods.len(), self.labels.len())
    }
}

/// Drops dead entries when the map is at a power-of-two size at or above
/// the floor, so pruning costs O(1) amortised per insertion.
fn prune<V>(map: &mut HashMap<usize, V>, alive: impl Fn(&V) -> bool) {
    let len = map.len();
    if len >= PRUNE_FLOOR && len.is_power_of_two() {
        map.retain(|_, v| alive(v));
    }
}

/// What the handlers need built for this configuration.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Needs {
    pub(crate) pod_strings: bool,
    pub(crate) identity: bool,
    pub(crate) ip: bool,
}

impl Needs {
    pub(crate) fn add_id(&mut self, id: ContextId) {
        match id {
            ContextId::Pod | ContextId::PodShort => self.pod_strings = true,
            ContextId::Identity => self.identity = true,
            ContextId::Ip => self.ip = true,
            _ => {}
        }
    }

    pub(crate) fn add_label(&mut self, label: ContextLabel) {
        if matches!(label, ContextLabel::SourceIp | ContextLabel::DestinationIp) {
            self.ip = true;
        }
    }
}

/// The built strings of one flow's two sides (shared, not copied).
#[derive(Default)]
pub(crate) struct Resolved {
    pub(crate) source_pod: Option<Arc<PodStrings>>,
    pub(crate) destination_pod: Option<Arc<PodStrings>>,
    pub(crate) source_identity: Option<Arc<str>>,
    pub(crate) destination_identity: Option<Arc<str>>,
}

impl Resolved {
    pub(crate) fn new(cache: &mut Cache, needs: Needs, flow: &Flow) -> Self {
        let pod = |cache: &mut Cache, side: &crate::flow::Side| {
            side.pod
                .as_ref()
                .filter(|_| needs.pod_strings)
                .map(|p| cache.pod(p))
        };
        let identity = |cache: &mut Cache, side: &crate::flow::Side| {
            side_labels(side)
                .filter(|_| needs.identity)
                .map(|l| cache.identity(l))
        };
        Self {
            source_pod: pod(cache, &flow.source),
            destination_pod: pod(cache, &flow.destination),
            source_identity: identity(cache, &flow.source),
            destination_identity: identity(cache, &flow.destination),
        }
    }
}

/// The labels of a side: its pod's, else its identity's (as `convert` does).
fn side_labels(side: &crate::flow::Side) -> Option<&Arc<[String]>> {
    side.pod
        .as_ref()
        .map(|p| &p.labels)
        .or(side.identity_labels.as_ref())
}

/// One side of a flow, as contexts see it.
pub(crate) struct SideView<'a> {
    pub(crate) ip: &'a str,
    pub(crate) pod: Option<&'a PodMeta>,
    pub(crate) labels: &'a [String],
    pub(crate) pod_strings: Option<&'a PodStrings>,
    pub(crate) identity: &'a str,
}

impl<'a> SideView<'a> {
    pub(crate) fn new(
        side: &'a crate::flow::Side,
        ip: &'a str,
        pod_strings: Option<&'a Arc<PodStrings>>,
        identity: Option<&'a Arc<str>>,
    ) -> Self {
        Self {
            ip,
            pod: side.pod.as_deref(),
            labels: side_labels(side).map_or(&[], |l| &l[..]),
            pod_strings: pod_strings.map(|s| &**s),
            identity: identity.map_or("", |s| &**s),
        }
    }

    /// The value of one context identifier ("" when unknown).
    pub(crate) fn value(&self, id: ContextId) -> &'a str {
        match id {
            ContextId::Identity => self.identity,
            ContextId::Namespace => self.pod.map_or("", |p| p.namespace.as_str()),
            ContextId::Pod => self.pod_strings.map_or("", |s| &*s.pod),
            ContextId::PodShort => self.pod_strings.map_or("", |s| &*s.pod_short),
            ContextId::PodName => self.pod.map_or("", |p| p.name.as_str()),
            ContextId::Dns | ContextId::WorkloadName => "",
            ContextId::Ip => self.ip,
            ContextId::ReservedIdentity => reserved_identity(self.labels),
            ContextId::App => app(self.labels),
        }
    }

    /// The first non-empty value of `ids` ("" if none).
    pub(crate) fn first(&self, ids: &[ContextId]) -> &'a str {
        ids.iter()
            .map(|&id| self.value(id))
            .find(|v| !v.is_empty())
            .unwrap_or("")
    }
}

/// A flow with everything its context labels can borrow.
pub(crate) struct View<'a> {
    pub(crate) flow: &'a Flow,
    pub(crate) source: SideView<'a>,
    pub(crate) destination: SideView<'a>,
}

impl<'a> View<'a> {
    /// A `labelsContext` label's value.
    pub(crate) fn label(&self, label: ContextLabel) -> &'a str {
        let (s, d) = (&self.source, &self.destination);
        match label {
            ContextLabel::SourceIp => s.ip,
            ContextLabel::SourcePod => s.value(ContextId::PodName),
            ContextLabel::SourceNamespace => s.value(ContextId::Namespace),
            ContextLabel::SourceWorkload | ContextLabel::DestinationWorkload => "",
            ContextLabel::SourceApp => s.value(ContextId::App),
            ContextLabel::DestinationIp => d.ip,
            ContextLabel::DestinationPod => d.value(ContextId::PodName),
            ContextLabel::DestinationNamespace => d.value(ContextId::Namespace),
            ContextLabel::DestinationApp => d.value(ContextId::App),
            ContextLabel::TrafficDirection => names::TRAFFIC_DIRECTIONS
                .get(usize::from(self.flow.traffic_direction))
                .copied()
                .unwrap_or("unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn shortens_like_the_hubble_regex() {
        for (name, short) in [
            ("web-7d4b9c8f6-x2x9z", "web"),
            ("coredns-5d78c9869d-abcde", "coredns"),
            ("my-app-7d4b9-abcde", "my-app"),
            ("web-0", "web"),
            ("my-app-0", "my"),
            ("web", "web"),
            ("web-", "web-"),
            ("-abc", "-abc"),
            ("a--b", "a-"),
            ("a-B", "a-B"),
            ("api-Server-x1", "api-Server"),
            ("x-1-2-3", "x-1"),
            ("-a-b", "-a"),
            ("ä-1", "ä"),
            ("a\nb-1-2", "a\nb-1-2"),
            ("a\n-1-2", "a\n-1-2"),
            ("", ""),
        ] {
            assert_eq!(shorten_pod_name(name), short, "{name:?}");
        }
    }

    #[test]
    fn reserved_identity_prefers_kube_apiserver_then_sorted_first() {
        assert_eq!(
            reserved_identity(&labels(&["reserved:world", "reserved:kube-apiserver"])),
            "reserved:kube-apiserver"
        );
        assert_eq!(
            reserved_identity(&labels(&[
                "reserved:world",
                "cidr:1.2.3.0/24",
                "reserved:host"
            ])),
            "reserved:host"
        );
        assert_eq!(reserved_identity(&labels(&["k8s:app=web"])), "");
    }

    #[test]
    fn app_takes_the_first_app_label_in_sorted_order() {
        assert_eq!(
            app(&labels(&[
                "k8s:k8s-app=legacy",
                "k8s:app.kubernetes.io/name=rec",
                "k8s:app=plain"
            ])),
            "rec"
        );
        assert_eq!(
            app(&labels(&["k8s:k8s-app=legacy", "k8s:app=plain"])),
            "plain"
        );
        assert_eq!(app(&labels(&["k8s:k8s-app=legacy", "k8s:app="])), "legacy");
        assert_eq!(app(&labels(&["k8s:appx=no", "container:app=no"])), "");
    }

    #[test]
    fn text_refuses_what_does_not_fit() {
        let t = Text::<4>::format(format_args!("{}", 1234));
        assert_eq!(t.as_str(), "1234");
        let t = Text::<4>::format(format_args!("{}", 12345));
        assert_eq!(t.as_str(), "");
        let ip = IpText::format(format_args!(
            "{}",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
        ));
        assert_eq!(ip.as_str().len(), 45);
    }

    #[test]
    fn cache_builds_once_per_pod_and_forgets_dropped_ones() {
        let mut cache = Cache::default();
        let pod = Arc::new(PodMeta {
            namespace: "ns".into(),
            name: "web-7d4b9c8f6-x2x9z".into(),
            labels: Arc::from(labels(&["k8s:b=2", "k8s:a=1"])),
            ..PodMeta::default()
        });
        let a = cache.pod(&pod);
        assert_eq!(
            (&*a.pod, &*a.pod_short),
            ("ns/web-7d4b9c8f6-x2x9z", "ns/web")
        );
        assert!(Arc::ptr_eq(&a, &cache.pod(&pod)));
        assert_eq!(&*cache.identity(&pod.labels), "k8s:a=1,k8s:b=2");

        // Without a namespace the pod is its bare name.
        let bare = Arc::new(PodMeta {
            name: "x-1".into(),
            ..PodMeta::default()
        });
        assert_eq!(&*cache.pod(&bare).pod, "x-1");

        // Many short-lived pods: the cache stays bounded.
        for i in 0..5000 {
            let p = Arc::new(PodMeta {
                namespace: "n".into(),
                name: format!("p{i}"),
                ..PodMeta::default()
            });
            let _ = cache.pod(&p);
        }
        assert!(cache.len().0 <= 2 * PRUNE_FLOOR + 2, "{:?}", cache.len());
    }
}
