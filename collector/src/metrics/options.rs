//! Hubble's `--metrics` syntax: which handlers to run and their options.
//!
//! An entry is `name[:option[=value][;option[=value]…]]`, as in Hubble
//! (`ParseStaticMetricsConfig`: the name ends at the first `:`, options are
//! separated by `;`, a value follows the first `=`).
//!
//! **Lists.** Hubble takes one entry per flag (or a space-separated config
//! map value), because option values contain `,` themselves
//! (`labelsContext=source_namespace,destination_namespace`). Sightline
//! accepts a list of entries, a single string, or both, with one rule:
//!
//! 1. whitespace always separates entries;
//! 2. a `,` separates entries too, *except* when the entry being read already
//!    has options and the text after the `,` (up to the next `,`) has no `:`
//!    and is not a handler name: then it continues the last option's value.
//!
//! So `flow:sourceContext=pod;destinationContext=pod,drop,policy` is three
//! handlers, and `flow:labelsContext=source_pod,destination_pod,drop` is
//! `flow` with two labels, then `drop`. Handler names and option values
//! never overlap, so the rule is unambiguous for valid input; for invalid
//! input it yields the error of whichever reading applies.
//!
//! **Strictness.** Unknown handler names, unknown option keys, unknown
//! context identifiers or labels, duplicate handlers and duplicate options
//! are errors whose message lists what is valid (Hubble silently ignores
//! unknown option keys; Sightline does not). Like Hubble, option keys and
//! context identifiers match case-insensitively; label names and handler
//! names are exact.
//!
//! **Default.** An empty configuration means [`DEFAULT_HANDLERS`]: the set
//! Cilium's documentation enables (`dns,drop,tcp,flow,port-distribution,
//! icmp,httpV2`) without the L7 ones Sightline has no data for. (Cilium's
//! Helm chart itself enables nothing by default.)
//!
//! This module only parses and validates; it must not touch flows or
//! metrics.

use std::fmt;
use std::str::FromStr;

use super::MetricsError;

/// The handlers enabled when the configuration names none.
pub const DEFAULT_HANDLERS: [HandlerKind; 5] = [
    HandlerKind::Drop,
    HandlerKind::Tcp,
    HandlerKind::Flow,
    HandlerKind::PortDistribution,
    HandlerKind::Icmp,
];

/// Hubble handler names Sightline does not implement (no L7 data). They
/// still start a new entry when splitting a list, so that naming one gives
/// "unknown handler" rather than a confusing option error.
const HUBBLE_ONLY_HANDLERS: [&str; 7] = [
    "dns",
    "http",
    "httpV2",
    "kafka",
    "sctp",
    "flows-per-pod",
    "nld",
];

/// A metrics handler (Hubble "plugin").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HandlerKind {
    /// `flow`: `hubble_flows_processed_total`.
    Flow,
    /// `drop`: `hubble_drop_total`.
    Drop,
    /// `tcp`: `hubble_tcp_flags_total`.
    Tcp,
    /// `port-distribution`: `hubble_port_distribution_total`.
    PortDistribution,
    /// `icmp`: `hubble_icmp_total`.
    Icmp,
    /// `policy`: `hubble_policy_verdicts_total`.
    Policy,
    /// `flows-to-world`: `hubble_flows_to_world_total`.
    FlowsToWorld,
}

impl HandlerKind {
    /// Every handler, in the order their metrics are encoded.
    pub const ALL: [Self; 7] = [
        Self::Flow,
        Self::Drop,
        Self::Tcp,
        Self::PortDistribution,
        Self::Icmp,
        Self::Policy,
        Self::FlowsToWorld,
    ];

    /// The name used in `--metrics`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Flow => "flow",
            Self::Drop => "drop",
            Self::Tcp => "tcp",
            Self::PortDistribution => "port-distribution",
            Self::Icmp => "icmp",
            Self::Policy => "policy",
            Self::FlowsToWorld => "flows-to-world",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for HandlerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How one side of a flow is named in the `source`/`destination` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContextId {
    /// Every identity label, sorted, joined with `,`.
    Identity,
    /// The pod's namespace.
    Namespace,
    /// `namespace/pod`.
    Pod,
    /// `namespace/` + the pod name without its `-<hash>` suffixes.
    PodShort,
    /// The pod name alone (newer Hubble).
    PodName,
    /// DNS names of the address (always empty: Sightline has no DNS data).
    Dns,
    /// The IP address.
    Ip,
    /// `reserved:kube-apiserver` if present, else the first `reserved:*` label.
    ReservedIdentity,
    /// The workload name (newer Hubble's `workload-name`; `workload` is
    /// accepted as a synonym). Always empty: lab pods have no controllers
    /// and the flow API reports no workloads either.
    WorkloadName,
    /// The pod's app label (`app.kubernetes.io/name`, `k8s-app` or `app`).
    App,
}

impl ContextId {
    /// Accepted spellings, in the order error messages list them.
    const NAMES: [(&'static str, Self); 11] = [
        ("identity", Self::Identity),
        ("namespace", Self::Namespace),
        ("pod", Self::Pod),
        ("pod-short", Self::PodShort),
        ("pod-name", Self::PodName),
        ("dns", Self::Dns),
        ("ip", Self::Ip),
        ("reserved-identity", Self::ReservedIdentity),
        ("workload", Self::WorkloadName),
        ("workload-name", Self::WorkloadName),
        ("app", Self::App),
    ];

    /// The canonical name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Namespace => "namespace",
            Self::Pod => "pod",
            Self::PodShort => "pod-short",
            Self::PodName => "pod-name",
            Self::Dns => "dns",
            Self::Ip => "ip",
            Self::ReservedIdentity => "reserved-identity",
            Self::WorkloadName => "workload-name",
            Self::App => "app",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|&(_, id)| id)
    }
}

/// A `labelsContext` label. The declaration order is the fixed order the
/// labels appear in (Hubble's `contextLabelsList`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContextLabel {
    SourceIp,
    SourcePod,
    SourceNamespace,
    SourceWorkload,
    SourceApp,
    DestinationIp,
    DestinationPod,
    DestinationNamespace,
    DestinationWorkload,
    DestinationApp,
    TrafficDirection,
}

impl ContextLabel {
    /// Every label, in the fixed order.
    pub const ALL: [Self; 11] = [
        Self::SourceIp,
        Self::SourcePod,
        Self::SourceNamespace,
        Self::SourceWorkload,
        Self::SourceApp,
        Self::DestinationIp,
        Self::DestinationPod,
        Self::DestinationNamespace,
        Self::DestinationWorkload,
        Self::DestinationApp,
        Self::TrafficDirection,
    ];

    /// The label name (also its spelling in `labelsContext`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::SourceIp => "source_ip",
            Self::SourcePod => "source_pod",
            Self::SourceNamespace => "source_namespace",
            Self::SourceWorkload => "source_workload",
            Self::SourceApp => "source_app",
            Self::DestinationIp => "destination_ip",
            Self::DestinationPod => "destination_pod",
            Self::DestinationNamespace => "destination_namespace",
            Self::DestinationWorkload => "destination_workload",
            Self::DestinationApp => "destination_app",
            Self::TrafficDirection => "traffic_direction",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.name() == s)
    }
}

/// The context options of one handler: which labels describe the flow's
/// endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContextOptions {
    /// `sourceContext`: identifiers tried in order, the first non-empty value
    /// wins; empty means no `source` label.
    pub source: Vec<ContextId>,
    /// `destinationContext`, like `source`.
    pub destination: Vec<ContextId>,
    /// `labelsContext`, sorted in the fixed order, without duplicates.
    pub labels: Vec<ContextLabel>,
}

impl ContextOptions {
    /// The label names these options add, in order: the `labelsContext`
    /// labels, then `source`, then `destination`.
    #[must_use]
    pub fn label_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.labels.iter().map(|l| l.name()).collect();
        if !self.source.is_empty() {
            names.push(super::names::LABEL_SOURCE);
        }
        if !self.destination.is_empty() {
            names.push(super::names::LABEL_DESTINATION);
        }
        names
    }
}

/// One enabled handler and its options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerConfig {
    pub kind: HandlerKind,
    pub context: ContextOptions,
    /// `flows-to-world` only: count drops of every reason, not only
    /// `POLICY_DENIED`.
    pub any_drop: bool,
    /// `flows-to-world` only: add the `port` label.
    pub port: bool,
    /// `flows-to-world` only: count only TCP SYNs that are not replies.
    pub syn_only: bool,
}

impl HandlerConfig {
    /// A handler without options.
    #[must_use]
    pub fn new(kind: HandlerKind) -> Self {
        Self {
            kind,
            context: ContextOptions::default(),
            any_drop: false,
            port: false,
            syn_only: false,
        }
    }

    /// Parses one entry (`name[:options]`).
    ///
    /// # Errors
    ///
    /// See the module documentation.
    pub fn parse(entry: &str) -> Result<Self, MetricsError> {
        let entry = entry.trim();
        let (name, options) = match entry.split_once(':') {
            Some((name, options)) => (name, Some(options)),
            None => (entry, None),
        };
        if name.is_empty() {
            return Err(MetricsError::EmptyHandlerName {
                entry: entry.to_owned(),
            });
        }
        let kind = HandlerKind::from_name(name).ok_or_else(|| MetricsError::UnknownHandler {
            name: name.to_owned(),
            valid: join(HandlerKind::ALL.iter().map(|k| k.name())),
        })?;
        let mut config = Self::new(kind);
        let mut seen: Vec<String> = Vec::new();
        for option in options.unwrap_or("").split(';') {
            let option = option.trim();
            if option.is_empty() {
                continue;
            }
            let (key, value) = match option.split_once('=') {
                Some((key, value)) => (key.trim(), Some(value.trim())),
                None => (option, None),
            };
            let lower = key.to_ascii_lowercase();
            if seen.contains(&lower) {
                return Err(MetricsError::DuplicateOption {
                    handler: kind.name(),
                    option: key.to_owned(),
                });
            }
            seen.push(lower.clone());
            config.apply(&lower, key, value)?;
        }
        Ok(config)
    }

    fn valid_options(kind: HandlerKind) -> String {
        let mut valid = vec!["sourceContext", "destinationContext", "labelsContext"];
        if kind == HandlerKind::FlowsToWorld {
            valid.extend(["any-drop", "port", "syn-only"]);
        }
        join(valid)
    }

    fn apply(&mut self, lower: &str, key: &str, value: Option<&str>) -> Result<(), MetricsError> {
        let handler = self.kind.name();
        let invalid = |value: &str, valid: String| MetricsError::InvalidOptionValue {
            handler,
            option: key.to_owned(),
            value: value.to_owned(),
            valid,
        };
        let missing = |valid: String| MetricsError::MissingOptionValue {
            handler,
            option: key.to_owned(),
            valid,
        };
        match lower {
            "sourcecontext" | "destinationcontext" => {
                let valid = || join(ContextId::NAMES.iter().map(|(name, _)| *name));
                let value = value
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| missing(valid()))?;
                let mut ids = Vec::new();
                for part in value.split('|').map(str::trim).filter(|p| !p.is_empty()) {
                    ids.push(ContextId::parse(part).ok_or_else(|| invalid(part, valid()))?);
                }
                if ids.is_empty() {
                    return Err(missing(valid()));
                }
                if lower == "sourcecontext" {
                    self.context.source = ids;
                } else {
                    self.context.destination = ids;
                }
            }
            "labelscontext" => {
                let valid = || join(ContextLabel::ALL.iter().map(|l| l.name()));
                let value = value
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| missing(valid()))?;
                let mut labels = Vec::new();
                for part in value
                    .split([',', '|'])
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                {
                    labels.push(ContextLabel::parse(part).ok_or_else(|| invalid(part, valid()))?);
                }
                if labels.is_empty() {
                    return Err(missing(valid()));
                }
                labels.sort_unstable();
                labels.dedup();
                self.context.labels = labels;
            }
            "any-drop" | "port" | "syn-only" if self.kind == HandlerKind::FlowsToWorld => {
                let on = match value.map(str::to_ascii_lowercase).as_deref() {
                    None | Some("" | "true") => true,
                    Some("false") => false,
                    Some(_) => return Err(invalid(value.unwrap_or(""), join(["true", "false"]))),
                };
                match lower {
                    "any-drop" => self.any_drop = on,
                    "port" => self.port = on,
                    _ => self.syn_only = on,
                }
            }
            _ => {
                return Err(MetricsError::UnknownOption {
                    handler,
                    option: key.to_owned(),
                    valid: Self::valid_options(self.kind),
                });
            }
        }
        Ok(())
    }
}

impl fmt::Display for HandlerConfig {
    /// The canonical entry, e.g. `flow:sourceContext=pod|ip;labelsContext=source_namespace`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())?;
        let mut sep = ':';
        let mut option = |f: &mut fmt::Formatter<'_>, text: &dyn fmt::Display| {
            let r = write!(f, "{sep}{text}");
            sep = ';';
            r
        };
        let ids = |ids: &[ContextId]| ids.iter().map(|id| id.name()).collect::<Vec<_>>().join("|");
        if !self.context.source.is_empty() {
            option(
                f,
                &format_args!("sourceContext={}", ids(&self.context.source)),
            )?;
        }
        if !self.context.destination.is_empty() {
            option(
                f,
                &format_args!("destinationContext={}", ids(&self.context.destination)),
            )?;
        }
        if !self.context.labels.is_empty() {
            let labels = self
                .context
                .labels
                .iter()
                .map(|l| l.name())
                .collect::<Vec<_>>()
                .join(",");
            option(f, &format_args!("labelsContext={labels}"))?;
        }
        for (on, name) in [
            (self.any_drop, "any-drop"),
            (self.port, "port"),
            (self.syn_only, "syn-only"),
        ] {
            if on {
                option(f, &name)?;
            }
        }
        Ok(())
    }
}

/// The enabled handlers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    pub handlers: Vec<HandlerConfig>,
}

impl Default for MetricsConfig {
    /// [`DEFAULT_HANDLERS`], without options.
    fn default() -> Self {
        Self {
            handlers: DEFAULT_HANDLERS
                .into_iter()
                .map(HandlerConfig::new)
                .collect(),
        }
    }
}

impl MetricsConfig {
    /// Parses a list of entries; each element may itself hold several
    /// entries (see the module documentation). No entries at all gives the
    /// default set.
    ///
    /// # Errors
    ///
    /// The first invalid entry's error, or [`MetricsError::DuplicateHandler`].
    pub fn from_entries<I, S>(entries: I) -> Result<Self, MetricsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut handlers: Vec<HandlerConfig> = Vec::new();
        for element in entries {
            for entry in split_entries(element.as_ref()) {
                let handler = HandlerConfig::parse(&entry)?;
                if handlers.iter().any(|h| h.kind == handler.kind) {
                    return Err(MetricsError::DuplicateHandler {
                        handler: handler.kind.name(),
                    });
                }
                handlers.push(handler);
            }
        }
        if handlers.is_empty() {
            return Ok(Self::default());
        }
        Ok(Self { handlers })
    }

    /// Parses one string of entries.
    ///
    /// # Errors
    ///
    /// As [`MetricsConfig::from_entries`].
    pub fn parse(list: &str) -> Result<Self, MetricsError> {
        Self::from_entries([list])
    }
}

impl FromStr for MetricsConfig {
    type Err = MetricsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for MetricsConfig {
    /// The canonical list, entries separated by spaces (parses back to the
    /// same configuration).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, handler) in self.handlers.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{handler}")?;
        }
        Ok(())
    }
}

/// Splits a string into entries by the rule in the module documentation.
fn split_entries(list: &str) -> Vec<String> {
    let starts_handler = |piece: &str| {
        let name = piece.split_once(':').map_or(piece, |(name, _)| name);
        piece.contains(':')
            || HandlerKind::from_name(name).is_some()
            || HUBBLE_ONLY_HANDLERS.contains(&name)
    };
    let mut entries: Vec<String> = Vec::new();
    for chunk in list.split_whitespace() {
        let mut current: Option<String> = None;
        for piece in chunk.split(',') {
            if piece.is_empty() {
                continue;
            }
            match current.as_mut() {
                Some(entry) if entry.contains(':') && !starts_handler(piece) => {
                    entry.push(',');
                    entry.push_str(piece);
                }
                _ => {
                    entries.extend(current.take());
                    current = Some(piece.to_owned());
                }
            }
        }
        entries.extend(current);
    }
    entries
}

fn join<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    items.into_iter().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handlers(list: &str) -> Vec<HandlerConfig> {
        MetricsConfig::parse(list).unwrap().handlers
    }

    #[test]
    fn splits_top_level_commas_but_not_option_values() {
        let h = handlers("flow:sourceContext=pod;destinationContext=pod,drop,policy");
        assert_eq!(
            h.iter().map(|h| h.kind).collect::<Vec<_>>(),
            [HandlerKind::Flow, HandlerKind::Drop, HandlerKind::Policy]
        );
        assert_eq!(h[0].context.source, [ContextId::Pod]);
        assert_eq!(h[0].context.destination, [ContextId::Pod]);

        let h =
            handlers("flow:labelsContext=source_pod,destination_namespace,source_namespace,drop");
        assert_eq!(h.len(), 2);
        assert_eq!(
            h[0].context.labels,
            [
                ContextLabel::SourcePod,
                ContextLabel::SourceNamespace,
                ContextLabel::DestinationNamespace
            ]
        );
        assert_eq!(h[1].kind, HandlerKind::Drop);

        // Empty pieces are skipped, inside a value too.
        let h = handlers("flow:labelsContext=source_pod,,destination_pod,,drop");
        assert_eq!(h.len(), 2);
        assert_eq!(
            h[0].context.labels,
            [ContextLabel::SourcePod, ContextLabel::DestinationPod]
        );

        // Options after the labels continue the same entry.
        let h = handlers(
            "flow:labelsContext=source_pod,destination_pod;sourceContext=pod-short|ip tcp",
        );
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].context.source, [ContextId::PodShort, ContextId::Ip]);
        assert_eq!(
            h[0].context.labels,
            [ContextLabel::SourcePod, ContextLabel::DestinationPod]
        );
    }

    #[test]
    fn accepts_vectors_spaces_and_mixed_lists() {
        let a = MetricsConfig::from_entries([
            "drop",
            "tcp:sourceContext=namespace",
            "flows-to-world:any-drop;port",
        ])
        .unwrap();
        let b =
            MetricsConfig::parse("drop  tcp:sourceContext=namespace\tflows-to-world:any-drop;port")
                .unwrap();
        let c =
            MetricsConfig::parse("drop,tcp:sourceContext=namespace,flows-to-world:any-drop;port")
                .unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        let world = &a.handlers[2];
        assert!(world.any_drop && world.port && !world.syn_only);
        // Empty pieces are ignored.
        assert_eq!(handlers(",drop,, tcp ,").len(), 2);
    }

    #[test]
    fn empty_means_the_default_set() {
        let defaults: Vec<_> = DEFAULT_HANDLERS.to_vec();
        for empty in ["", "  ", ","] {
            let kinds: Vec<_> = handlers(empty).iter().map(|h| h.kind).collect();
            assert_eq!(kinds, defaults);
        }
        let none: [&str; 0] = [];
        assert_eq!(
            MetricsConfig::from_entries(none).unwrap(),
            MetricsConfig::default()
        );
    }

    #[test]
    fn context_identifiers_and_keys_are_case_insensitive() {
        let h = handlers("flow:SOURCECONTEXT=Pod|IP;destinationcontext=reserved-identity|identity");
        assert_eq!(h[0].context.source, [ContextId::Pod, ContextId::Ip]);
        assert_eq!(
            h[0].context.destination,
            [ContextId::ReservedIdentity, ContextId::Identity]
        );
        // Every identifier parses; `workload` is `workload-name`.
        for (name, id) in ContextId::NAMES {
            let h = handlers(&format!("drop:sourceContext={name}"));
            assert_eq!(h[0].context.source, [id]);
        }
        // Empty alternatives are skipped.
        assert_eq!(
            handlers("drop:sourceContext=pod||ip")[0].context.source,
            [ContextId::Pod, ContextId::Ip]
        );
    }

    #[test]
    fn labels_are_sorted_in_the_fixed_order_and_deduplicated() {
        let all = ContextLabel::ALL
            .iter()
            .rev()
            .map(|l| l.name())
            .collect::<Vec<_>>()
            .join(",");
        let h = handlers(&format!("icmp:labelsContext={all},source_pod"));
        assert_eq!(h[0].context.labels, ContextLabel::ALL);
        let names = h[0].context.label_names();
        assert_eq!(names, ContextLabel::ALL.map(ContextLabel::name));
    }

    #[test]
    fn label_names_put_labels_then_source_then_destination() {
        let h = handlers(
            "drop:destinationContext=pod;labelsContext=traffic_direction,source_app;sourceContext=ip",
        );
        assert_eq!(
            h[0].context.label_names(),
            ["source_app", "traffic_direction", "source", "destination"]
        );
    }

    #[test]
    fn display_round_trips() {
        let list = "flow:sourceContext=pod|ip;destinationContext=workload-name;labelsContext=source_pod,traffic_direction \
                    flows-to-world:any-drop;port;syn-only drop";
        let config = MetricsConfig::parse(list).unwrap();
        assert_eq!(config.to_string(), list);
        assert_eq!(MetricsConfig::parse(&config.to_string()).unwrap(), config);
    }

    #[test]
    fn every_error_lists_what_is_valid() {
        let err = |list: &str| MetricsConfig::parse(list).unwrap_err().to_string();

        let e = err("flow,bogus");
        assert!(e.contains("\"bogus\""), "{e}");
        assert!(
            e.contains("flow, drop, tcp, port-distribution, icmp, policy, flows-to-world"),
            "{e}"
        );
        // Hubble's L7 handlers are named as unknown, not swallowed as values.
        assert!(
            err("flow:labelsContext=source_pod,dns").contains("unknown metrics handler \"dns\"")
        );

        let e = err("flow:sourceContext=pod;bogus=1");
        assert!(
            e.contains("\"bogus\"")
                && e.contains("sourceContext, destinationContext, labelsContext"),
            "{e}"
        );
        assert!(!e.contains("any-drop"), "{e}");
        let e = err("flows-to-world:bogus");
        assert!(
            e.contains(
                "sourceContext, destinationContext, labelsContext, any-drop, port, syn-only"
            ),
            "{e}"
        );
        // `port` is a flows-to-world option only.
        assert!(err("drop:port").contains("unknown option \"port\""));

        let valid_ids = "identity, namespace, pod, pod-short, pod-name, dns, ip, reserved-identity, workload, \
                         workload-name, app";
        let e = err("flow:sourceContext=pod|bogus");
        assert!(e.contains("\"bogus\"") && e.contains(valid_ids), "{e}");
        let e = err("flow:destinationContext=");
        assert!(e.contains("needs a value") && e.contains(valid_ids), "{e}");
        let e = err("flow:destinationContext");
        assert!(e.contains("needs a value"), "{e}");

        let valid_labels = "source_ip, source_pod, source_namespace, source_workload, source_app, destination_ip, \
                            destination_pod, destination_namespace, destination_workload, destination_app, \
                            traffic_direction";
        let e = err("flow:labelsContext=source_pod,Source_Namespace");
        assert!(
            e.contains("\"Source_Namespace\"") && e.contains(valid_labels),
            "{e}"
        );
        let e = err("flow:labelsContext=");
        assert!(
            e.contains("needs a value") && e.contains(valid_labels),
            "{e}"
        );

        let e = err("flows-to-world:port=maybe");
        assert!(e.contains("\"maybe\"") && e.contains("true, false"), "{e}");
        assert!(
            !MetricsConfig::parse("flows-to-world:port=false")
                .unwrap()
                .handlers[0]
                .port
        );

        assert!(err("drop tcp drop").contains("\"drop\" given twice"));
        assert!(err("drop:sourceContext=pod;SourceContext=ip").contains("given twice"));
        assert!(err(":sourceContext=pod").contains("empty"));
    }

    #[test]
    fn no_input_panics() {
        for input in [
            ":",
            ";",
            "=",
            "::",
            "a:b:c",
            "flow:=",
            "flow:;;;",
            "flow:a=b=c",
            "é:ü",
            "flow:labelsContext=,,",
        ] {
            let _ = MetricsConfig::parse(input);
        }
    }
}
