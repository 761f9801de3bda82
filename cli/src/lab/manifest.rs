//! Kubernetes manifests for the lab: parsing, validation and the lab's object store.
//!
//! `sightline lab up|apply|delete -f FILE` take multi-document YAML the way `kubectl apply -f`
//! does. [`parse_manifests`] turns one file into typed [`Object`]s, filling in the defaults the
//! Kubernetes API server fills in and rejecting what the API server rejects; [`ObjectStore`]
//! holds the lab's objects and applies or deletes a batch all-or-nothing.
//!
//! Parsing happens in two passes over the text. The first reads every document into a generic
//! YAML value, which catches malformed YAML (with its line and column) and tells us each
//! document's `kind`, `metadata.name` and `metadata.namespace` for error messages. The second
//! deserializes the same document into raw structs that mirror the Kubernetes fields (camelCase),
//! so serde_yaml reports the field path of a wrong type or an unknown field; the raw structs are
//! then converted, with validation, into the public types.
//!
//! # What is accepted
//!
//! | kind | apiVersion | notes |
//! | --- | --- | --- |
//! | Namespace | v1 | labels; `kubernetes.io/metadata.name=<name>` is always set |
//! | Pod | v1 | labels, `spec.nodeName`, `spec.containers[].ports[]` |
//! | Service | v1 | ClusterIP only: selector, ports, clusterIP |
//! | NetworkPolicy | networking.k8s.io/v1 | the whole spec |
//!
//! Empty documents (a stray or trailing `---`) are skipped but still counted, so document
//! numbers in errors are the position in the file. `kind: List` is rejected.
//!
//! Unknown fields are errors everywhere (as with `kubectl apply --validate=strict`), except that
//! fields which exist in Kubernetes but do not affect the lab's networking are accepted and
//! ignored:
//!
//! * top level: `status`;
//! * `metadata`: every other ObjectMeta field (annotations, uid, resourceVersion, generation,
//!   creationTimestamp, deletionTimestamp, deletionGracePeriodSeconds, finalizers,
//!   ownerReferences, managedFields, selfLink, clusterName); `name`, `namespace` and `labels` are
//!   used, and `generateName` without `name` is an error (the lab needs fixed names);
//! * Pod `spec`: every PodSpec field in [`POD_SPEC_IGNORED`] (scheduling, volumes, security,
//!   DNS settings, init and ephemeral containers, …). `hostNetwork: true` is an error: the lab
//!   cannot honour it. `containers` and `nodeName` are used.
//! * containers: every Container field in [`CONTAINER_IGNORED`] (name, image, command, env,
//!   probes, …); `ports` is used. In a container port, `hostPort` (non-zero) and `hostIP` are
//!   errors: the lab cannot honour them.
//! * Service `spec`: `publishNotReadyAddresses`, `sessionAffinityConfig`, `trafficDistribution`.
//!   Fields that only make sense for other service types or that change traffic in ways the lab
//!   does not implement are errors: `type` other than ClusterIP, `externalName`, `externalIPs`,
//!   the LoadBalancer/NodePort fields, `sessionAffinity: ClientIP`, `internalTrafficPolicy:
//!   Local`, headless (`clusterIP: None`), IPv6 or dual-stack, and a port's `nodePort`.
//! * NetworkPolicy: nothing is ignored; a typo such as `podSelctor` is an error naming the field.
//!
//! # Policy semantics kept exact
//!
//! The NetworkPolicy types are the collector's model (`sightline_collector::policy::model`),
//! re-exported here; this module fills them in and validates them.
//!
//! * [`Rule::peers`] empty means `from`/`to` was omitted or empty: the rule matches **all**
//!   sources/destinations. A non-empty list matches any of its peers. (An empty peer `{}` is
//!   rejected, as the API server does, so a present peer always selects something specific.)
//! * [`Rule::ports`] empty means every port and protocol.
//! * [`NetworkPolicy::ingress`] empty with `Ingress` in [`NetworkPolicy::policy_types`] means
//!   all ingress to the selected pods is denied; likewise for egress.
//! * [`Peer::pod_selector`] / [`Peer::namespace_selector`]: `None` means the selector was absent,
//!   `Some(empty)` means "all". podSelector alone selects pods in the policy's namespace,
//!   namespaceSelector alone all pods in the matching namespaces, both together the matching pods
//!   in the matching namespaces.
//! * `policyTypes` defaults as the API server does: if it is omitted or empty it becomes
//!   `[Ingress]`, plus `Egress` when `egress` has at least one rule (`egress: []` adds nothing).
//!   Rules for a direction not in `policy_types` are kept but have no effect.
//! * A named port that no pod declares is valid: it simply selects nothing.
//!
//! # Errors
//!
//! Every error names the source, the 1-based document number and, when known, the object
//! (`Kind namespace/name`), then the field path:
//! `deny.yaml: document 2 (NetworkPolicy x/deny-all): spec.ingress[0].from[1].ipBlock.except[0]:
//! 10.1.0.0/16 is not inside 192.168.0.0/16`. Objects keep where they came from in their
//! `origin` field so [`ObjectStore::apply`] and [`ObjectStore::delete`] can name the document too;
//! the store itself keeps objects with `origin: None`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr};

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::lab::types::Protocol;
// The NetworkPolicy model lives in the collector, which compiles it; this module parses and
// validates it.
pub use sightline_collector::policy::model::{
    IpBlock, LabelSelector, NetworkPolicy, Operator, Origin, Peer, PolicyPort, PolicyType, PortRef,
    Requirement, Rule,
};
use sightline_collector::policy::model::{cidr_contains, parse_cidr};
use sightline_collector::kubernetes::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString as K8sIntOrString;
use sightline_collector::kubernetes::translate;
use sightline_flow::k8s_names::{is_dns_label, is_dns_subdomain, is_dns1035_label};

/// The label Kubernetes (and the lab) puts on every namespace, holding the namespace's name.
pub use sightline_collector::policy::model::NAMESPACE_NAME_LABEL;

/// The namespace that always exists and cannot be deleted.
pub const DEFAULT_NAMESPACE: &str = "default";

/// PodSpec fields that are accepted and ignored because they do not affect the lab's networking.
pub const POD_SPEC_IGNORED: &[&str] = &[
    "activeDeadlineSeconds",
    "affinity",
    "automountServiceAccountToken",
    "dnsConfig",
    "dnsPolicy",
    "enableServiceLinks",
    "ephemeralContainers",
    "hostAliases",
    "hostIPC",
    "hostPID",
    "hostUsers",
    "hostname",
    "hostnameOverride",
    "imagePullSecrets",
    "initContainers",
    "nodeSelector",
    "os",
    "overhead",
    "preemptionPolicy",
    "priority",
    "priorityClassName",
    "readinessGates",
    "resourceClaims",
    "resources",
    "restartPolicy",
    "runtimeClassName",
    "schedulerName",
    "schedulingGates",
    "securityContext",
    "serviceAccount",
    "serviceAccountName",
    "setHostnameAsFQDN",
    "shareProcessNamespace",
    "subdomain",
    "terminationGracePeriodSeconds",
    "tolerations",
    "topologySpreadConstraints",
    "volumes",
];

/// Container fields that are accepted and ignored (everything but `ports`).
pub const CONTAINER_IGNORED: &[&str] = &[
    "args",
    "command",
    "env",
    "envFrom",
    "image",
    "imagePullPolicy",
    "lifecycle",
    "livenessProbe",
    "name",
    "readinessProbe",
    "resizePolicy",
    "resources",
    "restartPolicy",
    "restartPolicyRules",
    "securityContext",
    "startupProbe",
    "stdin",
    "stdinOnce",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "tty",
    "volumeDevices",
    "volumeMounts",
    "workingDir",
];

/// ObjectMeta fields that are accepted and ignored.
const META_IGNORED: &[&str] = &[
    "annotations",
    "clusterName",
    "creationTimestamp",
    "deletionGracePeriodSeconds",
    "deletionTimestamp",
    "finalizers",
    "generation",
    "managedFields",
    "ownerReferences",
    "resourceVersion",
    "selfLink",
    "uid",
];

/// ServiceSpec fields that are accepted and ignored.
const SERVICE_SPEC_IGNORED: &[&str] = &[
    "publishNotReadyAddresses",
    "sessionAffinityConfig",
    "trafficDistribution",
];

/// ServiceSpec fields that only apply to NodePort or LoadBalancer services.
const SERVICE_OTHER_TYPE_FIELDS: &[&str] = &[
    "allocateLoadBalancerNodePorts",
    "externalTrafficPolicy",
    "healthCheckNodePort",
    "loadBalancerClass",
    "loadBalancerIP",
    "loadBalancerSourceRanges",
];

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// A Kubernetes Namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    /// The namespace's labels, always including `kubernetes.io/metadata.name=<name>`.
    pub labels: BTreeMap<String, String>,
    /// Where the object was parsed from; `None` for objects in the [`ObjectStore`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// A Kubernetes Pod, reduced to what the lab's networking uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.nodeName`: the lab node the pod is pinned to (`None`: the lab chooses).
    pub node_name: Option<String>,
    /// The ports of all containers, in container order then port order.
    pub ports: Vec<ContainerPort>,
    /// Where the object was parsed from; `None` for objects in the [`ObjectStore`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// One `spec.containers[].ports[]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    /// `containerPort`.
    pub port: u16,
    /// `protocol`, TCP by default.
    pub protocol: Protocol,
    /// `name`, an IANA service name usable as a named port.
    pub name: Option<String>,
}

/// A ClusterIP Service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// `spec.selector`; empty selects no pods (as in Kubernetes, endpoints are then manual).
    pub selector: BTreeMap<String, String>,
    /// At least one port.
    pub ports: Vec<ServicePort>,
    /// The requested `spec.clusterIP`; `None` lets the lab allocate one.
    pub cluster_ip: Option<Ipv4Addr>,
    /// Where the object was parsed from; `None` for objects in the [`ObjectStore`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// One `spec.ports[]` entry of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// Required (and unique) when the service has more than one port.
    pub name: Option<String>,
    pub port: u16,
    /// `targetPort`; defaults to `port`.
    pub target_port: TargetPort,
    pub protocol: Protocol,
}

/// A Service port's `targetPort`: a number or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// One object of a manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    NetworkPolicy(NetworkPolicy),
}

/// What an [`ObjectStore::apply`] or [`ObjectStore::delete`] did, in input order. Entries look
/// like `namespace/x`, `pod/x/a`, `service/x/web`, `networkpolicy/x/deny-all`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    /// For a delete: the objects named, then those removed with their namespace.
    pub deleted: Vec<String>,
}

/// Where an error is: the document and, when known, the object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// The source name (file path), when the object was parsed.
    pub source: Option<String>,
    /// The 1-based document number, when the object was parsed.
    pub document: Option<usize>,
    /// `Kind namespace/name` (or `Namespace name`, or just `Kind`), when known.
    pub object: Option<String>,
}

/// Why a manifest or a store operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ManifestError {
    /// The text is not well-formed YAML.
    #[error("{source_name}: document {document}: malformed YAML: {message}")]
    Yaml {
        source_name: String,
        document: usize,
        /// serde_yaml's message, including the position.
        message: String,
        /// 1-based line, when serde_yaml knows it.
        line: Option<usize>,
        /// 1-based column, when serde_yaml knows it.
        column: Option<usize>,
    },
    /// A field is missing, unknown, of the wrong type or value, or asks for something the lab
    /// cannot honour; or the object conflicts with the store. `field` is the Kubernetes field
    /// path (`spec.ingress[0].from[1].ipBlock.cidr`), empty for the document as a whole.
    #[error("{at}: {}{message}", field_prefix(.field))]
    Invalid {
        at: Location,
        field: String,
        message: String,
    },
    /// The same object (kind, namespace, name) appears twice in one apply or delete.
    #[error("{at}: the same object is also in {}; name each object once", .first.place())]
    Duplicate { at: Location, first: Box<Location> },
    /// A delete names an object the lab does not have.
    #[error("{at}: not found: the lab has no such object")]
    NotFound { at: Location },
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

impl Location {
    fn new(origin: Option<&Origin>, object: Option<String>) -> Self {
        Self {
            source: origin.map(|o| o.source.clone()),
            document: origin.map(|o| o.document),
            object,
        }
    }

    /// The document part alone (`a.yaml: document 2`), or the object when there is no origin.
    pub fn place(&self) -> String {
        match (&self.source, self.document, &self.object) {
            (Some(s), Some(d), _) => format!("{s}: document {d}"),
            (Some(s), None, _) => s.clone(),
            (None, Some(d), _) => format!("document {d}"),
            (None, None, Some(o)) => o.clone(),
            (None, None, None) => "(input)".to_owned(),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let has_place = self.source.is_some() || self.document.is_some();
        match (&self.object, has_place) {
            (Some(o), true) => write!(f, "{} ({o})", self.place()),
            (Some(o), false) => f.write_str(o),
            (None, _) => f.write_str(&self.place()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Behaviour of the public types
// ---------------------------------------------------------------------------------------------

impl Object {
    /// The Kubernetes kind: `Namespace`, `Pod`, `Service` or `NetworkPolicy`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Namespace(_) => "Namespace",
            Self::Pod(_) => "Pod",
            Self::Service(_) => "Service",
            Self::NetworkPolicy(_) => "NetworkPolicy",
        }
    }

    /// The namespace, `None` for a Namespace (which is cluster-scoped).
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Self::Namespace(_) => None,
            Self::Pod(p) => Some(&p.namespace),
            Self::Service(s) => Some(&s.namespace),
            Self::NetworkPolicy(p) => Some(&p.namespace),
        }
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Namespace(n) => &n.name,
            Self::Pod(p) => &p.name,
            Self::Service(s) => &s.name,
            Self::NetworkPolicy(p) => &p.name,
        }
    }

    /// Where the object was parsed from, if it was.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            Self::Namespace(n) => n.origin.as_ref(),
            Self::Pod(p) => p.origin.as_ref(),
            Self::Service(s) => s.origin.as_ref(),
            Self::NetworkPolicy(p) => p.origin.as_ref(),
        }
    }

    /// The report entry: `namespace/x`, `pod/x/a`, `service/x/web`, `networkpolicy/x/p`.
    pub fn entry(&self) -> String {
        let kind = self.kind().to_ascii_lowercase();
        match self.namespace() {
            Some(ns) => format!("{kind}/{ns}/{}", self.name()),
            None => format!("{kind}/{}", self.name()),
        }
    }

    /// `Kind namespace/name`, or `Namespace name`.
    pub fn label(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{} {ns}/{}", self.kind(), self.name()),
            None => format!("{} {}", self.kind(), self.name()),
        }
    }

    /// The error location of this object.
    pub fn location(&self) -> Location {
        Location::new(self.origin(), Some(self.label()))
    }

    fn key(&self) -> (&'static str, String, String) {
        (
            self.kind(),
            self.namespace().unwrap_or("").to_owned(),
            self.name().to_owned(),
        )
    }
}

impl Pod {
    /// The number of the container port called `name` with `protocol`, as Kubernetes resolves
    /// a named port (first match in container order).
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "for Services' named targetPorts; NetworkPolicy resolves named ports in the \
                      collector's compiler (PodInfo::named_ports)"
        )
    )]
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Parses multi-document YAML (as `kubectl apply -f` takes it) into validated objects, in
/// document order. `source` names the text in errors (usually the file path). Empty documents
/// are skipped. The first problem found is returned.
pub fn parse_manifests(source: &str, text: &str) -> Result<Vec<Object>, ManifestError> {
    // Pass 1: well-formedness, and what each document says it is.
    let mut values = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match serde_yaml::Value::deserialize(document) {
            Ok(value) => values.push(value),
            // Stop at the first error: the parser does not recover from one.
            Err(err) => return Err(yaml_error(source, index + 1, &err)),
        }
    }
    // Pass 2: the typed reading of each document.
    let mut objects = Vec::new();
    let documents = serde_yaml::Deserializer::from_str(text).take(values.len());
    for ((index, document), value) in documents.enumerate().zip(&values) {
        let origin = Origin {
            source: source.to_owned(),
            document: index + 1,
        };
        if let Some(object) = parse_document(origin, value, document)? {
            objects.push(object);
        }
    }
    Ok(objects)
}

fn yaml_error(source: &str, document: usize, err: &serde_yaml::Error) -> ManifestError {
    let location = err.location();
    ManifestError::Yaml {
        source_name: source.to_owned(),
        document,
        message: err.to_string(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
    }
}

/// The kinds the lab takes: (kind, apiVersion, namespaced).
const KINDS: &[(&str, &str, bool)] = &[
    ("Namespace", "v1", false),
    ("Pod", "v1", true),
    ("Service", "v1", true),
    ("NetworkPolicy", "networking.k8s.io/v1", true),
];

fn parse_document(
    origin: Origin,
    value: &serde_yaml::Value,
    document: serde_yaml::Deserializer<'_>,
) -> Result<Option<Object>, ManifestError> {
    use serde_yaml::Value;

    let map = match value {
        Value::Null => return Ok(None),
        Value::Mapping(map) => map,
        other => {
            let what = match other {
                Value::Sequence(_) => "a sequence",
                Value::Tagged(_) => "a tagged value",
                _ => "a scalar",
            };
            return Err(ManifestError::Invalid {
                at: Location::new(Some(&origin), None),
                field: String::new(),
                message: format!(
                    "a manifest document must be a mapping with apiVersion, kind and metadata, \
                     not {what}"
                ),
            });
        }
    };

    // What the document says it is, for error messages.
    let kind_value = map.get("kind");
    let kind = kind_value.and_then(Value::as_str);
    let metadata = map.get("metadata");
    let name = metadata.and_then(|m| m.get("name")).and_then(Value::as_str);
    let namespace = metadata
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty());
    let known = kind.and_then(|k| KINDS.iter().find(|(known, _, _)| *known == k));
    let object = match (kind, name, known) {
        (None, _, _) => None,
        (Some(kind), None, _) => Some(kind.to_owned()),
        (Some(kind), Some(name), Some((_, _, true))) => Some(format!(
            "{kind} {}/{name}",
            namespace.unwrap_or(DEFAULT_NAMESPACE)
        )),
        (Some(kind), Some(name), _) => Some(match namespace {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        }),
    };
    let ck = Checker {
        at: Location::new(Some(&origin), object),
    };

    let kind = match (kind_value, kind) {
        (None, _) => return Err(ck.fail("kind", "Required value: every document needs a kind")),
        (Some(_), None) => return Err(ck.fail("kind", "must be a string")),
        (Some(_), Some(kind)) => kind,
    };
    let Some(&(kind, expected_api, _)) = known else {
        let message = if kind == "List" || kind.ends_with("List") {
            format!(
                "{kind} is not supported: write its items as separate documents separated by `---`"
            )
        } else {
            format!(
                "{kind} is not supported: the lab takes Namespace, Pod, Service and NetworkPolicy"
            )
        };
        return Err(ck.fail("kind", message));
    };
    match map.get("apiVersion") {
        None => return Err(ck.fail("apiVersion", "Required value")),
        Some(v) if v.as_str() == Some(expected_api) => {}
        Some(v) => {
            let got = v
                .as_str()
                .map_or_else(|| "a non-string".to_owned(), |s| format!("{s:?}"));
            return Err(ck.fail(
                "apiVersion",
                format!("{kind} must have apiVersion {expected_api}, not {got}"),
            ));
        }
    }

    let object = match kind {
        "Namespace" => {
            let raw =
                RawDocument::<IgnoredAny>::deserialize(document).map_err(|e| ck.schema(&e))?;
            Object::Namespace(convert_namespace(&ck, raw, origin)?)
        }
        "Pod" => {
            let raw =
                RawDocument::<RawPodSpec>::deserialize(document).map_err(|e| ck.schema(&e))?;
            Object::Pod(convert_pod(&ck, raw, origin)?)
        }
        "Service" => {
            let raw =
                RawDocument::<RawServiceSpec>::deserialize(document).map_err(|e| ck.schema(&e))?;
            Object::Service(convert_service(&ck, raw, origin)?)
        }
        _ => {
            let raw =
                RawDocument::<RawPolicySpec>::deserialize(document).map_err(|e| ck.schema(&e))?;
            Object::NetworkPolicy(convert_policy(&ck, raw, origin)?)
        }
    };
    Ok(Some(object))
}

/// Builds errors for one document.
struct Checker {
    at: Location,
}

impl Checker {
    fn fail(&self, field: impl Into<String>, message: impl Into<String>) -> ManifestError {
        ManifestError::Invalid {
            at: self.at.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// Turns a typed-deserialization error into an `Invalid` one, splitting off the field path
    /// serde_yaml puts in front of the message (`spec.ingress[0]: unknown field ...`).
    fn schema(&self, err: &serde_yaml::Error) -> ManifestError {
        let text = err.to_string();
        if let Some((path, rest)) = text.split_once(": ") {
            let path_like = !path.is_empty()
                && !path.contains(char::is_whitespace)
                && !path.contains(['`', '"', '\'']);
            if path_like {
                return self.fail(path, rest);
            }
        }
        self.fail("", text)
    }
}

// ---------------------------------------------------------------------------------------------
// Raw structs, mirroring the Kubernetes fields
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument<S> {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    metadata: Option<RawMeta>,
    spec: Option<S>,
    #[serde(rename = "status")]
    _status: Option<IgnoredAny>,
}

/// A struct read key by key: fields the lab uses, fields it ignores, and errors for the rest.
/// This keeps serde_yaml's field paths in nested errors (which `#[serde(flatten)]` would lose).
trait FieldReader: Default {
    const IGNORED: &'static [&'static str];
    const WHAT: &'static str;
    /// Reads the value of `key` if the lab uses it; `Ok(false)` if it does not.
    fn take<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error>;
}

struct FieldVisitor<T>(PhantomData<T>);

impl<'de, T: FieldReader> Visitor<'de> for FieldVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a mapping of {} fields", T::WHAT)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut out = T::default();
        while let Some(key) = map.next_key::<String>()? {
            if out.take(&key, &mut map)? {
                continue;
            }
            if T::IGNORED.contains(&key.as_str()) {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            return Err(de::Error::custom(format_args!(
                "unknown field `{key}` (not a {} field)",
                T::WHAT
            )));
        }
        Ok(out)
    }
}

fn read_fields<'de, D: Deserializer<'de>, T: FieldReader>(d: D) -> Result<T, D::Error> {
    d.deserialize_map(FieldVisitor(PhantomData))
}

#[derive(Default)]
struct RawMeta {
    name: Option<StrictString>,
    generate_name: Option<StrictString>,
    namespace: Option<StrictString>,
    labels: Option<BTreeMap<String, StrictString>>,
}

impl FieldReader for RawMeta {
    const IGNORED: &'static [&'static str] = META_IGNORED;
    const WHAT: &'static str = "metadata";
    fn take<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "name" => self.name = map.next_value()?,
            "generateName" => self.generate_name = map.next_value()?,
            "namespace" => self.namespace = map.next_value()?,
            "labels" => self.labels = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl<'de> Deserialize<'de> for RawMeta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read_fields(d)
    }
}

#[derive(Default)]
struct RawPodSpec {
    containers: Option<Vec<RawContainer>>,
    node_name: Option<String>,
    host_network: Option<bool>,
}

impl FieldReader for RawPodSpec {
    const IGNORED: &'static [&'static str] = POD_SPEC_IGNORED;
    const WHAT: &'static str = "Pod spec";
    fn take<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "containers" => self.containers = map.next_value()?,
            "nodeName" => self.node_name = map.next_value()?,
            "hostNetwork" => self.host_network = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl<'de> Deserialize<'de> for RawPodSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read_fields(d)
    }
}

#[derive(Default)]
struct RawContainer {
    ports: Option<Vec<RawContainerPort>>,
}

impl FieldReader for RawContainer {
    const IGNORED: &'static [&'static str] = CONTAINER_IGNORED;
    const WHAT: &'static str = "container";
    fn take<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "ports" => self.ports = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl<'de> Deserialize<'de> for RawContainer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read_fields(d)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawContainerPort {
    container_port: i64,
    protocol: Option<Protocol>,
    name: Option<String>,
    host_port: Option<i64>,
    #[serde(rename = "hostIP")]
    host_ip: Option<String>,
}

#[derive(Default)]
struct RawServiceSpec {
    ports: Option<Vec<RawServicePort>>,
    selector: Option<BTreeMap<String, StrictString>>,
    type_: Option<String>,
    cluster_ip: Option<String>,
    cluster_ips: Option<Vec<String>>,
    external_ips: Option<Vec<String>>,
    external_name: Option<String>,
    session_affinity: Option<String>,
    internal_traffic_policy: Option<String>,
    ip_families: Option<Vec<String>>,
    ip_family_policy: Option<String>,
    /// NodePort/LoadBalancer-only fields that were set.
    other_type_fields: Vec<&'static str>,
}

impl FieldReader for RawServiceSpec {
    const IGNORED: &'static [&'static str] = SERVICE_SPEC_IGNORED;
    const WHAT: &'static str = "Service spec";
    fn take<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "ports" => self.ports = map.next_value()?,
            "selector" => self.selector = map.next_value()?,
            "type" => self.type_ = map.next_value()?,
            "clusterIP" => self.cluster_ip = map.next_value()?,
            "clusterIPs" => self.cluster_ips = map.next_value()?,
            "externalIPs" => self.external_ips = map.next_value()?,
            "externalName" => self.external_name = map.next_value()?,
            "sessionAffinity" => self.session_affinity = map.next_value()?,
            "internalTrafficPolicy" => self.internal_traffic_policy = map.next_value()?,
            "ipFamilies" => self.ip_families = map.next_value()?,
            "ipFamilyPolicy" => self.ip_family_policy = map.next_value()?,
            other => match SERVICE_OTHER_TYPE_FIELDS.iter().find(|f| **f == other) {
                Some(field) => {
                    if map.next_value::<Option<IgnoredAny>>()?.is_some() {
                        self.other_type_fields.push(field);
                    }
                }
                None => return Ok(false),
            },
        }
        Ok(true)
    }
}

impl<'de> Deserialize<'de> for RawServiceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read_fields(d)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawServicePort {
    name: Option<String>,
    protocol: Option<Protocol>,
    port: i64,
    target_port: Option<IntOrString>,
    node_port: Option<i64>,
    #[serde(rename = "appProtocol")]
    _app_protocol: Option<IgnoredAny>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPolicySpec {
    pod_selector: Option<RawSelector>,
    policy_types: Option<Vec<String>>,
    ingress: Option<Vec<RawIngressRule>>,
    egress: Option<Vec<RawEgressRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIngressRule {
    from: Option<Vec<RawPeer>>,
    ports: Option<Vec<RawPolicyPort>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEgressRule {
    to: Option<Vec<RawPeer>>,
    ports: Option<Vec<RawPolicyPort>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPeer {
    pod_selector: Option<RawSelector>,
    namespace_selector: Option<RawSelector>,
    ip_block: Option<RawIpBlock>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIpBlock {
    cidr: String,
    except: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPolicyPort {
    protocol: Option<Protocol>,
    port: Option<IntOrString>,
    end_port: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSelector {
    match_labels: Option<BTreeMap<String, StrictString>>,
    match_expressions: Option<Vec<RawRequirement>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequirement {
    key: String,
    operator: String,
    values: Option<Vec<StrictString>>,
}

/// A string field that must be written as a YAML string. serde_yaml would turn `1`, `1.10`
/// or `true` into text (`"1.1"`!); the API server rejects a number or boolean where a string is
/// due, and so do we for names, labels and selectors, where such a silent change would alter
/// what matches.
struct StrictString(String);

impl<'de> Deserialize<'de> for StrictString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StrictString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string (quote numbers and booleans, e.g. \"1\")")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrictString, E> {
                Ok(StrictString(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

fn strings(map: Option<BTreeMap<String, StrictString>>) -> BTreeMap<String, String> {
    map.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// Kubernetes' IntOrString.
enum IntOrString {
    Int(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a port name")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::Str(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Conversion with validation
// ---------------------------------------------------------------------------------------------

/// Which name format a kind requires.
#[derive(Clone, Copy)]
enum NameRule {
    /// RFC 1123 label (Namespace).
    Label,
    /// RFC 1123 subdomain (Pod, NetworkPolicy).
    Subdomain,
    /// RFC 1035 label (Service).
    Label1035,
}

struct Meta {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
}

fn convert_meta(ck: &Checker, raw: Option<RawMeta>, rule: NameRule) -> Result<Meta, ManifestError> {
    let raw = raw.unwrap_or_default();
    let name = match raw.name.map(|n| n.0).filter(|n| !n.is_empty()) {
        Some(name) => name,
        None if raw.generate_name.is_some() => {
            return Err(ck.fail(
                "metadata.name",
                "Required value: the lab does not support generateName; give the object a name",
            ));
        }
        None => return Err(ck.fail("metadata.name", "Required value")),
    };
    let problem = match rule {
        NameRule::Label => (!is_dns_label(&name)).then_some(DNS_LABEL_RULE),
        NameRule::Subdomain => (!is_dns_subdomain(&name)).then_some(DNS_SUBDOMAIN_RULE),
        NameRule::Label1035 => (!is_dns1035_label(&name)).then_some(DNS_1035_RULE),
    };
    if let Some(rule) = problem {
        return Err(ck.fail(
            "metadata.name",
            format!("{name:?} is not a valid name: {rule}"),
        ));
    }
    let namespace = match raw.namespace.map(|ns| ns.0).filter(|ns| !ns.is_empty()) {
        None => DEFAULT_NAMESPACE.to_owned(),
        Some(ns) if is_dns_label(&ns) => ns,
        Some(ns) => {
            return Err(ck.fail(
                "metadata.namespace",
                format!("{ns:?} is not a valid namespace name: {DNS_LABEL_RULE}"),
            ));
        }
    };
    let labels = strings(raw.labels);
    check_labels(ck, "metadata.labels", &labels)?;
    Ok(Meta {
        namespace,
        name,
        labels,
    })
}

fn check_labels(
    ck: &Checker,
    path: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), ManifestError> {
    for (key, value) in labels {
        if let Err(message) = check_label_key(key) {
            return Err(ck.fail(path, message));
        }
        if let Err(message) = check_label_value(value) {
            return Err(ck.fail(format!("{path}.{key}"), message));
        }
    }
    Ok(())
}

fn convert_namespace(
    ck: &Checker,
    raw: RawDocument<IgnoredAny>,
    origin: Origin,
) -> Result<Namespace, ManifestError> {
    // metadata.namespace means nothing on a cluster-scoped object; the API server ignores it.
    let meta = convert_meta(ck, raw.metadata, NameRule::Label)?;
    let mut labels = meta.labels;
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), meta.name.clone());
    Ok(Namespace {
        name: meta.name,
        labels,
        origin: Some(origin),
    })
}

fn convert_pod(
    ck: &Checker,
    raw: RawDocument<RawPodSpec>,
    origin: Origin,
) -> Result<Pod, ManifestError> {
    let meta = convert_meta(ck, raw.metadata, NameRule::Subdomain)?;
    let spec = raw.spec.unwrap_or_default();
    if spec.host_network == Some(true) {
        return Err(ck.fail(
            "spec.hostNetwork",
            "the lab cannot honour hostNetwork: every lab pod has its own network namespace",
        ));
    }
    let node_name = match spec.node_name.filter(|n| !n.is_empty()) {
        Some(node) if !is_dns_subdomain(&node) => {
            return Err(ck.fail(
                "spec.nodeName",
                format!("{node:?} is not a valid node name: {DNS_SUBDOMAIN_RULE}"),
            ));
        }
        other => other,
    };
    let mut ports = Vec::new();
    for (c, container) in spec.containers.unwrap_or_default().into_iter().enumerate() {
        let mut names = BTreeSet::new();
        for (p, raw_port) in container.ports.unwrap_or_default().into_iter().enumerate() {
            let path = format!("spec.containers[{c}].ports[{p}]");
            let port = port_number(raw_port.container_port)
                .map_err(|m| ck.fail(format!("{path}.containerPort"), m))?;
            if raw_port.host_port.is_some_and(|h| h != 0) {
                return Err(ck.fail(
                    format!("{path}.hostPort"),
                    "the lab cannot honour hostPort: pods are reached at their own address",
                ));
            }
            if raw_port.host_ip.as_deref().is_some_and(|h| !h.is_empty()) {
                return Err(ck.fail(
                    format!("{path}.hostIP"),
                    "the lab cannot honour hostIP: pods are reached at their own address",
                ));
            }
            let name = raw_port.name.filter(|n| !n.is_empty());
            if let Some(name) = &name {
                check_port_name(name).map_err(|m| ck.fail(format!("{path}.name"), m))?;
                if !names.insert(name.clone()) {
                    return Err(ck.fail(
                        format!("{path}.name"),
                        format!("Duplicate value: {name:?} names another port of this container"),
                    ));
                }
            }
            ports.push(ContainerPort {
                port,
                protocol: raw_port.protocol.unwrap_or(Protocol::Tcp),
                name,
            });
        }
    }
    Ok(Pod {
        namespace: meta.namespace,
        name: meta.name,
        labels: meta.labels,
        node_name,
        ports,
        origin: Some(origin),
    })
}

fn convert_service(
    ck: &Checker,
    raw: RawDocument<RawServiceSpec>,
    origin: Origin,
) -> Result<Service, ManifestError> {
    const CLUSTER_IP_ONLY: &str = "the lab supports only ClusterIP services";
    let meta = convert_meta(ck, raw.metadata, NameRule::Label1035)?;
    let spec = raw.spec.unwrap_or_default();

    match spec.type_.as_deref() {
        None | Some("ClusterIP") => {}
        Some(t @ ("NodePort" | "LoadBalancer" | "ExternalName")) => {
            return Err(ck.fail(
                "spec.type",
                format!("{t} is not supported: {CLUSTER_IP_ONLY}"),
            ));
        }
        Some(t) => {
            return Err(ck.fail(
                "spec.type",
                format!("{t:?} is not a service type: {CLUSTER_IP_ONLY}"),
            ));
        }
    }
    if let Some(field) = spec.other_type_fields.first() {
        return Err(ck.fail(
            format!("spec.{field}"),
            format!("only applies to NodePort or LoadBalancer services: {CLUSTER_IP_ONLY}"),
        ));
    }
    if spec.external_name.as_deref().is_some_and(|n| !n.is_empty()) {
        return Err(ck.fail(
            "spec.externalName",
            format!("only applies to ExternalName services: {CLUSTER_IP_ONLY}"),
        ));
    }
    if spec
        .external_ips
        .as_ref()
        .is_some_and(|ips| !ips.is_empty())
    {
        return Err(ck.fail("spec.externalIPs", "the lab cannot honour externalIPs"));
    }
    match spec.session_affinity.as_deref() {
        None | Some("" | "None") => {}
        Some("ClientIP") => {
            return Err(ck.fail(
                "spec.sessionAffinity",
                "the lab cannot honour sessionAffinity ClientIP (only None)",
            ));
        }
        Some(other) => {
            return Err(ck.fail(
                "spec.sessionAffinity",
                format!("Unsupported value {other:?}: supported values are None and ClientIP"),
            ));
        }
    }
    match spec.internal_traffic_policy.as_deref() {
        None | Some("" | "Cluster") => {}
        Some("Local") => {
            return Err(ck.fail(
                "spec.internalTrafficPolicy",
                "the lab cannot honour internalTrafficPolicy Local (only Cluster)",
            ));
        }
        Some(other) => {
            return Err(ck.fail(
                "spec.internalTrafficPolicy",
                format!("Unsupported value {other:?}: supported values are Cluster and Local"),
            ));
        }
    }
    match spec.ip_family_policy.as_deref() {
        None | Some("" | "SingleStack" | "PreferDualStack") => {}
        Some("RequireDualStack") => {
            return Err(ck.fail(
                "spec.ipFamilyPolicy",
                "the lab cannot honour RequireDualStack: it is IPv4 only",
            ));
        }
        Some(other) => {
            return Err(ck.fail(
                "spec.ipFamilyPolicy",
                format!(
                    "Unsupported value {other:?}: supported values are SingleStack, \
                     PreferDualStack and RequireDualStack"
                ),
            ));
        }
    }
    for (i, family) in spec.ip_families.iter().flatten().enumerate() {
        let path = format!("spec.ipFamilies[{i}]");
        match family.as_str() {
            "IPv4" if i == 0 => {}
            "IPv4" | "IPv6" => {
                return Err(ck.fail(
                    path,
                    format!("the lab cannot honour {family}: it is IPv4 only"),
                ));
            }
            other => {
                return Err(ck.fail(
                    path,
                    format!("Unsupported value {other:?}: supported values are IPv4 and IPv6"),
                ));
            }
        }
    }

    // clusterIP, possibly repeated as clusterIPs[0].
    let mut cluster_ip_text = spec
        .cluster_ip
        .filter(|s| !s.is_empty())
        .map(|s| ("spec.clusterIP", s));
    if let Some(ips) = spec.cluster_ips.filter(|ips| !ips.is_empty()) {
        if ips.len() > 1 {
            return Err(ck.fail(
                "spec.clusterIPs",
                "the lab cannot honour dual-stack cluster IPs: it is IPv4 only",
            ));
        }
        let first = &ips[0];
        match &cluster_ip_text {
            Some((_, ip)) if ip != first => {
                return Err(ck.fail(
                    "spec.clusterIPs[0]",
                    format!("{first:?} must be the same as spec.clusterIP {ip:?}"),
                ));
            }
            Some(_) => {}
            None if first.is_empty() => {}
            None => cluster_ip_text = Some(("spec.clusterIPs[0]", first.clone())),
        }
    }
    let cluster_ip = match cluster_ip_text {
        None => None,
        Some((path, text)) if text == "None" => {
            return Err(ck.fail(
                path,
                "headless services (clusterIP: None) are not supported: the lab gives every \
                 service a virtual IP",
            ));
        }
        Some((path, text)) => match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => Some(ip),
            Ok(IpAddr::V6(_)) => {
                return Err(ck.fail(path, format!("{text} is IPv6: the lab is IPv4 only")));
            }
            Err(_) => {
                return Err(ck.fail(path, format!("{text:?} is not a valid IP address")));
            }
        },
    };

    let selector = strings(spec.selector);
    check_labels(ck, "spec.selector", &selector)?;

    let raw_ports = spec.ports.unwrap_or_default();
    if raw_ports.is_empty() {
        return Err(ck.fail(
            "spec.ports",
            "Required value: a ClusterIP service needs a port",
        ));
    }
    let several = raw_ports.len() > 1;
    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut ports = Vec::new();
    for (i, raw_port) in raw_ports.into_iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let name = raw_port.name.filter(|n| !n.is_empty());
        match &name {
            None if several => {
                return Err(ck.fail(
                    format!("{path}.name"),
                    "Required value: every port needs a name when a service has several",
                ));
            }
            None => {}
            Some(n) if !is_dns_label(n) => {
                return Err(ck.fail(
                    format!("{path}.name"),
                    format!("{n:?} is not a valid port name: {DNS_LABEL_RULE}"),
                ));
            }
            Some(n) if !names.insert(n.clone()) => {
                return Err(ck.fail(format!("{path}.name"), format!("Duplicate value: {n:?}")));
            }
            Some(_) => {}
        }
        let port = port_number(raw_port.port).map_err(|m| ck.fail(format!("{path}.port"), m))?;
        let protocol = raw_port.protocol.unwrap_or(Protocol::Tcp);
        if !seen.insert((port, protocol)) {
            return Err(ck.fail(
                path,
                format!("Duplicate value: port {port}/{protocol} is declared twice"),
            ));
        }
        if protocol == Protocol::Sctp {
            return Err(ck.fail(
                format!("{path}.protocol"),
                "Unsupported value: \"SCTP\": the lab load-balances TCP and UDP services only".to_owned(),
            ));
        }
        if raw_port.node_port.is_some_and(|n| n != 0) {
            return Err(ck.fail(
                format!("{path}.nodePort"),
                format!("may not be used when type is ClusterIP: {CLUSTER_IP_ONLY}"),
            ));
        }
        // The defaulting (absent, 0 or "": the service port) is the Kubernetes source's.
        let target = match raw_port.target_port {
            None => None,
            Some(IntOrString::Int(n)) => Some(K8sIntOrString::Int(
                i32::try_from(n).map_err(|_| ck.fail(format!("{path}.targetPort"), port_number(n).unwrap_err()))?,
            )),
            Some(IntOrString::Str(s)) => {
                if !s.is_empty() {
                    check_port_name(&s).map_err(|m| ck.fail(format!("{path}.targetPort"), m))?;
                }
                Some(K8sIntOrString::String(s))
            }
        };
        let target_port = match translate::target_port(port, target.as_ref())
            .map_err(|m| ck.fail(format!("{path}.targetPort"), m))?
        {
            sightline_collector::state::TargetPort::Number(n) => TargetPort::Number(n),
            sightline_collector::state::TargetPort::Name(n) => TargetPort::Name(n),
        };
        ports.push(ServicePort {
            name,
            port,
            target_port,
            protocol,
        });
    }

    Ok(Service {
        namespace: meta.namespace,
        name: meta.name,
        selector,
        ports,
        cluster_ip,
        origin: Some(origin),
    })
}

fn convert_policy(
    ck: &Checker,
    raw: RawDocument<RawPolicySpec>,
    origin: Origin,
) -> Result<NetworkPolicy, ManifestError> {
    let meta = convert_meta(ck, raw.metadata, NameRule::Subdomain)?;
    let spec = raw.spec.unwrap_or_default();

    let pod_selector = match spec.pod_selector {
        Some(sel) => convert_selector(ck, "spec.podSelector", sel)?,
        None => LabelSelector::default(),
    };

    let mut ingress = Vec::new();
    for (i, rule) in spec.ingress.unwrap_or_default().into_iter().enumerate() {
        let path = format!("spec.ingress[{i}]");
        ingress.push(convert_rule(ck, &path, "from", rule.from, rule.ports)?);
    }
    let mut egress = Vec::new();
    for (i, rule) in spec.egress.unwrap_or_default().into_iter().enumerate() {
        let path = format!("spec.egress[{i}]");
        egress.push(convert_rule(ck, &path, "to", rule.to, rule.ports)?);
    }

    let given = spec.policy_types.unwrap_or_default();
    if given.len() > 2 {
        return Err(ck.fail(
            "spec.policyTypes",
            "may not specify more than two policyTypes",
        ));
    }
    let mut policy_types = Vec::new();
    for (i, text) in given.iter().enumerate() {
        policy_types.push(match text.as_str() {
            "Ingress" => PolicyType::Ingress,
            "Egress" => PolicyType::Egress,
            other => {
                return Err(ck.fail(
                    format!("spec.policyTypes[{i}]"),
                    format!("Unsupported value {other:?}: supported values are Ingress and Egress"),
                ));
            }
        });
    }
    // The API server's defaulting (Ingress always, Egress when there are egress rules), as the
    // Kubernetes source decides it.
    let policy_types = translate::default_policy_types(&policy_types, !egress.is_empty());

    Ok(NetworkPolicy {
        namespace: meta.namespace,
        name: meta.name,
        pod_selector,
        policy_types,
        ingress,
        egress,
        origin: Some(origin),
    })
}

fn convert_rule(
    ck: &Checker,
    path: &str,
    peers_field: &str,
    raw_peers: Option<Vec<RawPeer>>,
    raw_ports: Option<Vec<RawPolicyPort>>,
) -> Result<Rule, ManifestError> {
    let mut peers = Vec::new();
    for (j, raw) in raw_peers.unwrap_or_default().into_iter().enumerate() {
        let peer_path = format!("{path}.{peers_field}[{j}]");
        peers.push(convert_peer(ck, &peer_path, raw)?);
    }
    let mut ports = Vec::new();
    for (j, raw) in raw_ports.unwrap_or_default().into_iter().enumerate() {
        let port_path = format!("{path}.ports[{j}]");
        ports.push(convert_policy_port(ck, &port_path, raw)?);
    }
    Ok(Rule { peers, ports })
}

fn convert_peer(ck: &Checker, path: &str, raw: RawPeer) -> Result<Peer, ManifestError> {
    let pod_selector = raw
        .pod_selector
        .map(|s| convert_selector(ck, &format!("{path}.podSelector"), s))
        .transpose()?;
    let namespace_selector = raw
        .namespace_selector
        .map(|s| convert_selector(ck, &format!("{path}.namespaceSelector"), s))
        .transpose()?;
    let ip_block = raw
        .ip_block
        .map(|b| convert_ip_block(ck, &format!("{path}.ipBlock"), b))
        .transpose()?;
    let has_selector = pod_selector.is_some() || namespace_selector.is_some();
    if !has_selector && ip_block.is_none() {
        return Err(ck.fail(
            path,
            "Required value: a peer must have a podSelector, a namespaceSelector or an ipBlock \
             (omit `from`/`to` altogether to match everything)",
        ));
    }
    if has_selector && ip_block.is_some() {
        return Err(ck.fail(
            path,
            "Forbidden: a peer may not combine ipBlock with podSelector or namespaceSelector \
             (make them separate peers)",
        ));
    }
    Ok(Peer {
        pod_selector,
        namespace_selector,
        ip_block,
    })
}

fn convert_ip_block(ck: &Checker, path: &str, raw: RawIpBlock) -> Result<IpBlock, ManifestError> {
    if raw.cidr.is_empty() {
        return Err(ck.fail(format!("{path}.cidr"), "Required value"));
    }
    let net = parse_cidr(&raw.cidr).map_err(|m| ck.fail(format!("{path}.cidr"), m))?;
    let mut except = Vec::new();
    for (k, text) in raw.except.unwrap_or_default().iter().enumerate() {
        let except_path = format!("{path}.except[{k}]");
        let inner = parse_cidr(text).map_err(|m| ck.fail(&except_path, m))?;
        let cidr = &raw.cidr;
        if inner.0.is_ipv4() != net.0.is_ipv4() {
            return Err(ck.fail(
                except_path,
                format!("{text} is not inside {cidr} (a different address family)"),
            ));
        }
        if !cidr_contains(net, inner.0) {
            return Err(ck.fail(except_path, format!("{text} is not inside {cidr}")));
        }
        if inner.1 <= net.1 {
            return Err(ck.fail(
                except_path,
                format!(
                    "{text} is not strictly inside {cidr}: an except must be smaller than the cidr"
                ),
            ));
        }
        except.push(format!("{}/{}", inner.0, inner.1));
    }
    Ok(IpBlock {
        cidr: format!("{}/{}", net.0, net.1),
        except,
    })
}

fn convert_policy_port(
    ck: &Checker,
    path: &str,
    raw: RawPolicyPort,
) -> Result<PolicyPort, ManifestError> {
    let port = match raw.port {
        None => None,
        Some(IntOrString::Int(n)) => Some(PortRef::Number(
            port_number(n).map_err(|m| ck.fail(format!("{path}.port"), m))?,
        )),
        Some(IntOrString::Str(s)) => {
            check_port_name(&s).map_err(|m| ck.fail(format!("{path}.port"), m))?;
            Some(PortRef::Name(s))
        }
    };
    let end_port = match (raw.end_port, &port) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(ck.fail(
                format!("{path}.endPort"),
                "may not be specified when port is not specified",
            ));
        }
        (Some(_), Some(PortRef::Name(name))) => {
            return Err(ck.fail(
                format!("{path}.endPort"),
                format!("may not be specified when port is a named port ({name:?})"),
            ));
        }
        (Some(end), Some(PortRef::Number(start))) => {
            let end16 = port_number(end).map_err(|m| ck.fail(format!("{path}.endPort"), m))?;
            if end16 < *start {
                return Err(ck.fail(
                    format!("{path}.endPort"),
                    format!(
                        "{end} is below port {start}: endPort must be greater than or equal to port"
                    ),
                ));
            }
            Some(end16)
        }
    };
    Ok(PolicyPort {
        protocol: raw.protocol.unwrap_or(Protocol::Tcp),
        port,
        end_port,
    })
}

fn convert_selector(
    ck: &Checker,
    path: &str,
    raw: RawSelector,
) -> Result<LabelSelector, ManifestError> {
    let match_labels = strings(raw.match_labels);
    check_labels(ck, &format!("{path}.matchLabels"), &match_labels)?;
    let mut match_expressions = Vec::new();
    for (i, req) in raw
        .match_expressions
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let req_path = format!("{path}.matchExpressions[{i}]");
        check_label_key(&req.key).map_err(|m| ck.fail(format!("{req_path}.key"), m))?;
        let operator = match req.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return Err(ck.fail(
                    format!("{req_path}.operator"),
                    format!(
                        "{other:?} is not a valid selector operator: expected In, NotIn, Exists \
                         or DoesNotExist"
                    ),
                ));
            }
        };
        let values: Vec<String> = req
            .values
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.0)
            .collect();
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(ck.fail(
                    format!("{req_path}.values"),
                    format!(
                        "Required value: must be non-empty when operator is {}",
                        operator.as_str()
                    ),
                ));
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(ck.fail(
                    format!("{req_path}.values"),
                    format!(
                        "Forbidden: must be empty when operator is {}",
                        operator.as_str()
                    ),
                ));
            }
            _ => {}
        }
        for (j, value) in values.iter().enumerate() {
            check_label_value(value).map_err(|m| ck.fail(format!("{req_path}.values[{j}]"), m))?;
        }
        match_expressions.push(Requirement {
            key: req.key,
            operator,
            values,
        });
    }
    Ok(LabelSelector {
        match_labels,
        match_expressions,
    })
}

// ---------------------------------------------------------------------------------------------
// Field formats (as Kubernetes' apimachinery validation defines them)
// ---------------------------------------------------------------------------------------------

const DNS_LABEL_RULE: &str = "a lowercase RFC 1123 label: at most 63 characters, lowercase \
     letters, digits and '-', starting and ending with a letter or digit";
const DNS_SUBDOMAIN_RULE: &str = "a lowercase RFC 1123 subdomain: at most 253 characters, \
     dot-separated parts of lowercase letters, digits and '-', each starting and ending with a \
     letter or digit";
const DNS_1035_RULE: &str = "an RFC 1035 label: at most 63 characters, lowercase letters, \
     digits and '-', starting with a letter and ending with a letter or digit";

fn check_label_key(key: &str) -> Result<(), String> {
    if sightline_flow::k8s_names::is_label_key(key) {
        Ok(())
    } else {
        Err(format!(
            "{key:?} is not a valid label key: an optional DNS subdomain prefix and '/', then a \
             name of at most 63 characters (letters, digits, '-', '_', '.') starting and ending \
             with a letter or digit"
        ))
    }
}

fn check_label_value(value: &str) -> Result<(), String> {
    if sightline_flow::k8s_names::is_label_value(value) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid label value: empty, or at most 63 characters (letters, \
             digits, '-', '_', '.') starting and ending with a letter or digit"
        ))
    }
}

/// An IANA_SVC_NAME: at most 15 characters, `[-a-z0-9]`, at least one letter, no leading,
/// trailing or double '-'.
fn check_port_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let valid = !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid port name: at most 15 characters of lowercase letters, \
             digits and '-', with at least one letter and no leading, trailing or double '-'"
        ))
    }
}

fn port_number(n: i64) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!(
            "{n} is not a valid port number: must be between 1 and 65535"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// The object store
// ---------------------------------------------------------------------------------------------

/// The lab's objects. Serializes (serde_json) with `namespaces` as a map by name and the
/// namespaced kinds as lists, and round-trips exactly. Stored objects have `origin: None`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectStore {
    /// By name; always contains `default`.
    pub namespaces: BTreeMap<String, Namespace>,
    /// By (namespace, name).
    #[serde(with = "keyed")]
    pub pods: BTreeMap<(String, String), Pod>,
    /// By (namespace, name).
    #[serde(with = "keyed")]
    pub services: BTreeMap<(String, String), Service>,
    /// NetworkPolicies by (namespace, name).
    #[serde(with = "keyed")]
    pub policies: BTreeMap<(String, String), NetworkPolicy>,
}

impl Default for ObjectStore {
    /// The same as [`ObjectStore::new`]: `default` exists.
    fn default() -> Self {
        Self::new()
    }
}

/// Maps keyed by (namespace, name) serialize as the list of their values.
mod keyed {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) trait Keyed {
        fn key(&self) -> (String, String);
    }

    pub(super) fn serialize<S: Serializer, T: Serialize>(
        map: &BTreeMap<(String, String), T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.values())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de> + Keyed>(
        deserializer: D,
    ) -> Result<BTreeMap<(String, String), T>, D::Error> {
        let items = Vec::<T>::deserialize(deserializer)?;
        Ok(items.into_iter().map(|item| (item.key(), item)).collect())
    }
}

impl keyed::Keyed for Pod {
    fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }
}

impl keyed::Keyed for Service {
    fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }
}

impl keyed::Keyed for NetworkPolicy {
    fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }
}

/// What happened to one object in an apply.
enum Change {
    Created,
    Updated,
    Unchanged,
}

/// Inserts `value` under `key`, telling whether it was new, different or the same.
fn upsert<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, key: K, value: V) -> Change {
    match map.get_mut(&key) {
        None => {
            map.insert(key, value);
            Change::Created
        }
        Some(old) if *old == value => Change::Unchanged,
        Some(old) => {
            *old = value;
            Change::Updated
        }
    }
}

impl ObjectStore {
    /// An empty lab: only the namespace `default`.
    pub fn new() -> Self {
        let mut labels = BTreeMap::new();
        labels.insert(
            NAMESPACE_NAME_LABEL.to_owned(),
            DEFAULT_NAMESPACE.to_owned(),
        );
        let mut namespaces = BTreeMap::new();
        namespaces.insert(
            DEFAULT_NAMESPACE.to_owned(),
            Namespace {
                name: DEFAULT_NAMESPACE.to_owned(),
                labels,
                origin: None,
            },
        );
        Self {
            namespaces,
            pods: BTreeMap::new(),
            services: BTreeMap::new(),
            policies: BTreeMap::new(),
        }
    }

    /// Creates or updates objects (as `kubectl apply`); reports each as created, updated or
    /// unchanged, in input order.
    ///
    /// The combined result is validated: a pod, service or policy in a namespace that neither
    /// exists nor is created by the same apply (anywhere in `objects`) is an error naming the
    /// document; the same (kind, namespace, name) twice in `objects` is an error naming both
    /// documents; changing an existing pod's `spec.nodeName` is an error, as is changing a
    /// service's requested clusterIP; two services requesting the same clusterIP is an error.
    /// Cluster IPs the lab allocates itself (for `cluster_ip: None`) are not known here.
    /// All-or-nothing: on error `self` is unchanged.
    pub fn apply(&mut self, objects: Vec<Object>) -> Result<ApplyReport, ManifestError> {
        check_duplicates(&objects)?;
        let created_namespaces: BTreeSet<String> = objects
            .iter()
            .filter_map(|o| match o {
                Object::Namespace(ns) => Some(ns.name.clone()),
                _ => None,
            })
            .collect();

        let mut next = self.clone();
        let mut report = ApplyReport::default();
        // Services with a requested cluster IP, for the collision check on the final state.
        let mut requested_ips: Vec<((String, String), Ipv4Addr, Location)> = Vec::new();

        for object in objects {
            let at = object.location();
            let entry = object.entry();
            let missing = object.namespace().filter(|ns| {
                !self.namespaces.contains_key(*ns) && !created_namespaces.contains(*ns)
            });
            if let Some(ns) = missing {
                return Err(ManifestError::Invalid {
                    at,
                    field: "metadata.namespace".to_owned(),
                    message: format!(
                        "namespace {ns:?} does not exist and is not created by this apply"
                    ),
                });
            }
            let change = match object {
                Object::Namespace(mut ns) => {
                    ns.origin = None;
                    ns.labels
                        .insert(NAMESPACE_NAME_LABEL.to_owned(), ns.name.clone());
                    upsert(&mut next.namespaces, ns.name.clone(), ns)
                }
                Object::Pod(mut pod) => {
                    pod.origin = None;
                    let key = (pod.namespace.clone(), pod.name.clone());
                    let moved = next
                        .pods
                        .get(&key)
                        .filter(|old| old.node_name != pod.node_name);
                    if let Some(old) = moved {
                        let show = |n: &Option<String>| {
                            n.as_deref()
                                .map_or_else(|| "unset".to_owned(), |n| format!("{n:?}"))
                        };
                        return Err(ManifestError::Invalid {
                            at,
                            field: "spec.nodeName".to_owned(),
                            message: format!(
                                "cannot change from {} to {}: delete the pod and create it again \
                                 to move it",
                                show(&old.node_name),
                                show(&pod.node_name)
                            ),
                        });
                    }
                    // Like Kubernetes, a pod's containers are immutable: only
                    // its labels (and other metadata) may change in place.
                    let reported = next.pods.get(&key).filter(|old| old.ports != pod.ports);
                    if reported.is_some() {
                        return Err(ManifestError::Invalid {
                            at,
                            field: "spec.containers[].ports".to_owned(),
                            message: "a pod's containers cannot change: delete the pod and create it \
                                      again"
                                .to_owned(),
                        });
                    }
                    upsert(&mut next.pods, key, pod)
                }
                Object::Service(mut svc) => {
                    svc.origin = None;
                    let key = (svc.namespace.clone(), svc.name.clone());
                    let old_ip = next.services.get(&key).and_then(|s| s.cluster_ip);
                    match (old_ip, svc.cluster_ip) {
                        (Some(old), Some(new)) if old != new => {
                            return Err(ManifestError::Invalid {
                                at,
                                field: "spec.clusterIP".to_owned(),
                                message: format!(
                                    "field is immutable: cannot change from {old} to {new}"
                                ),
                            });
                        }
                        _ => {}
                    }
                    if let Some(ip) = svc.cluster_ip {
                        requested_ips.push((key.clone(), ip, at));
                    }
                    upsert(&mut next.services, key, svc)
                }
                Object::NetworkPolicy(mut policy) => {
                    policy.origin = None;
                    let key = (policy.namespace.clone(), policy.name.clone());
                    upsert(&mut next.policies, key, policy)
                }
            };
            match change {
                Change::Created => report.created.push(entry),
                Change::Updated => report.updated.push(entry),
                Change::Unchanged => report.unchanged.push(entry),
            }
        }

        for (key, ip, at) in &requested_ips {
            let clash = next
                .services
                .iter()
                .find(|(other, svc)| *other != key && svc.cluster_ip == Some(*ip));
            if let Some(((ns, name), _)) = clash {
                let other_place = requested_ips
                    .iter()
                    .find(|(k, _, _)| k.0 == *ns && k.1 == *name)
                    .map(|(_, _, loc)| format!(" ({})", loc.place()))
                    .unwrap_or_default();
                return Err(ManifestError::Invalid {
                    at: at.clone(),
                    field: "spec.clusterIP".to_owned(),
                    message: format!(
                        "{ip} is already the cluster IP of Service {ns}/{name}{other_place}"
                    ),
                });
            }
        }

        *self = next;
        Ok(report)
    }

    /// Removes the named objects, matching kind, namespace and name (the rest of each object is
    /// ignored), as `kubectl delete -f`. Deleting a namespace deletes everything in it (reported
    /// after the objects named). Deleting `default` is an error; so is deleting an object the
    /// lab does not have (like kubectl without `--ignore-not-found`) — an object that is present
    /// may be named together with its namespace. All-or-nothing: on error `self` is unchanged.
    pub fn delete(&mut self, objects: &[Object]) -> Result<ApplyReport, ManifestError> {
        check_duplicates(objects)?;
        for object in objects {
            let exists = match object {
                Object::Namespace(ns) => {
                    if ns.name == DEFAULT_NAMESPACE {
                        return Err(ManifestError::Invalid {
                            at: object.location(),
                            field: "metadata.name".to_owned(),
                            message: "the namespace default cannot be deleted".to_owned(),
                        });
                    }
                    self.namespaces.contains_key(&ns.name)
                }
                Object::Pod(p) => self
                    .pods
                    .contains_key(&(p.namespace.clone(), p.name.clone())),
                Object::Service(s) => self
                    .services
                    .contains_key(&(s.namespace.clone(), s.name.clone())),
                Object::NetworkPolicy(p) => self
                    .policies
                    .contains_key(&(p.namespace.clone(), p.name.clone())),
            };
            if !exists {
                return Err(ManifestError::NotFound {
                    at: object.location(),
                });
            }
        }

        let mut next = self.clone();
        let mut report = ApplyReport::default();
        let mut gone_namespaces = Vec::new();
        for object in objects {
            match object {
                Object::Namespace(ns) => {
                    next.namespaces.remove(&ns.name);
                    gone_namespaces.push(ns.name.clone());
                }
                Object::Pod(p) => {
                    next.pods.remove(&(p.namespace.clone(), p.name.clone()));
                }
                Object::Service(s) => {
                    next.services.remove(&(s.namespace.clone(), s.name.clone()));
                }
                Object::NetworkPolicy(p) => {
                    next.policies.remove(&(p.namespace.clone(), p.name.clone()));
                }
            }
            report.deleted.push(object.entry());
        }
        for ns in &gone_namespaces {
            for (namespace, name) in remove_namespace(&mut next.pods, ns) {
                report.deleted.push(format!("pod/{namespace}/{name}"));
            }
            for (namespace, name) in remove_namespace(&mut next.services, ns) {
                report.deleted.push(format!("service/{namespace}/{name}"));
            }
            for (namespace, name) in remove_namespace(&mut next.policies, ns) {
                report
                    .deleted
                    .push(format!("networkpolicy/{namespace}/{name}"));
            }
        }

        *self = next;
        Ok(report)
    }
}

/// Removes every entry of namespace `ns`, returning their keys in order.
fn remove_namespace<V>(map: &mut BTreeMap<(String, String), V>, ns: &str) -> Vec<(String, String)> {
    let keys: Vec<(String, String)> = map.keys().filter(|k| k.0 == ns).cloned().collect();
    for key in &keys {
        map.remove(key);
    }
    keys
}

/// The same (kind, namespace, name) twice in one batch is an error naming both places.
fn check_duplicates(objects: &[Object]) -> Result<(), ManifestError> {
    let mut seen: BTreeMap<(&'static str, String, String), &Object> = BTreeMap::new();
    for object in objects {
        if let Some(first) = seen.insert(object.key(), object) {
            return Err(ManifestError::Duplicate {
                at: object.location(),
                first: Box::new(first.location()),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Object> {
        match parse_manifests("test.yaml", text) {
            Ok(objects) => objects,
            Err(err) => panic!("unexpected error: {err}"),
        }
    }

    fn parse_err(text: &str) -> ManifestError {
        match parse_manifests("test.yaml", text) {
            Ok(objects) => panic!("expected an error, got {objects:?}"),
            Err(err) => err,
        }
    }

    /// The error message, asserting that it names the source and the document.
    fn err_text(text: &str, document: usize) -> String {
        let message = parse_err(text).to_string();
        let place = format!("test.yaml: document {document}");
        assert!(
            message.starts_with(&place),
            "{message:?} does not start with {place:?}"
        );
        message
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn one_pod(text: &str) -> Pod {
        match parse(text).as_slice() {
            [Object::Pod(pod)] => pod.clone(),
            other => panic!("expected one pod, got {other:?}"),
        }
    }

    fn one_service(text: &str) -> Service {
        match parse(text).as_slice() {
            [Object::Service(svc)] => svc.clone(),
            other => panic!("expected one service, got {other:?}"),
        }
    }

    fn one_policy(text: &str) -> NetworkPolicy {
        match parse(text).as_slice() {
            [Object::NetworkPolicy(p)] => p.clone(),
            other => panic!("expected one policy, got {other:?}"),
        }
    }

    /// A NetworkPolicy document with `spec` given as indented YAML (4 spaces).
    fn policy_doc(spec: &str) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  \
             namespace: x\nspec:\n{spec}"
        )
    }

    fn policy_err(spec: &str) -> String {
        err_text(&policy_doc(spec), 1)
    }

    // --- each kind with its defaults -----------------------------------------------------

    #[test]
    fn namespace_gets_its_name_label() {
        let objects = parse(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n    team: blue\n",
        );
        let [Object::Namespace(ns)] = objects.as_slice() else {
            panic!("{objects:?}")
        };
        assert_eq!(ns.name, "x");
        assert_eq!(
            ns.labels,
            labels(&[("team", "blue"), (NAMESPACE_NAME_LABEL, "x")])
        );
        assert_eq!(
            ns.origin,
            Some(Origin {
                source: "test.yaml".into(),
                document: 1
            })
        );
        assert_eq!(objects[0].kind(), "Namespace");
        assert_eq!(objects[0].namespace(), None);
        assert_eq!(objects[0].name(), "x");
        assert_eq!(objects[0].entry(), "namespace/x");
    }

    #[test]
    fn namespace_label_cannot_be_overridden() {
        let objects = parse(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n    \
             kubernetes.io/metadata.name: other\n",
        );
        let [Object::Namespace(ns)] = objects.as_slice() else {
            panic!("{objects:?}")
        };
        assert_eq!(ns.labels, labels(&[(NAMESPACE_NAME_LABEL, "x")]));
    }

    #[test]
    fn pod_defaults_and_ignored_fields() {
        let pod = one_pod(
            "apiVersion: v1
kind: Pod
metadata:
  name: a
  labels: {app: web}
  annotations: {note: ignored}
  uid: 1234
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 0
  serviceAccountName: default
  containers:
  - name: main
    image: busybox
    command: [sleep, infinity]
    env: [{name: A, value: b}]
    resources: {limits: {cpu: 100m}}
    imagePullPolicy: IfNotPresent
    ports:
    - containerPort: 80
      name: http
    - containerPort: 53
      protocol: UDP
  - name: side
    ports:
    - containerPort: 9000
      protocol: SCTP
      name: metrics
status:
  phase: Running
",
        );
        assert_eq!(pod.namespace, "default");
        assert_eq!(pod.name, "a");
        assert_eq!(pod.labels, labels(&[("app", "web")]));
        assert_eq!(pod.node_name, None);
        assert_eq!(
            pod.ports,
            vec![
                ContainerPort {
                    port: 80,
                    protocol: Protocol::Tcp,
                    name: Some("http".into())
                },
                ContainerPort {
                    port: 53,
                    protocol: Protocol::Udp,
                    name: None
                },
                ContainerPort {
                    port: 9000,
                    protocol: Protocol::Sctp,
                    name: Some("metrics".into())
                },
            ]
        );
        assert_eq!(pod.named_port("http", Protocol::Tcp), Some(80));
        assert_eq!(pod.named_port("http", Protocol::Udp), None);
        assert_eq!(pod.named_port("nope", Protocol::Tcp), None);
    }

    #[test]
    fn pod_with_node_name_and_no_containers() {
        let pod = one_pod(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {nodeName: node-2}\n",
        );
        assert_eq!(pod.namespace, "x");
        assert_eq!(pod.node_name.as_deref(), Some("node-2"));
        assert!(pod.ports.is_empty());
        let pod = one_pod("apiVersion: v1\nkind: Pod\nmetadata: {name: b}\n");
        assert_eq!(pod.namespace, "default");
        assert!(pod.ports.is_empty());
    }

    #[test]
    fn service_defaults() {
        let svc = one_service(
            "apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  selector: {app: web}
  ports:
  - port: 80
",
        );
        assert_eq!((svc.namespace.as_str(), svc.name.as_str()), ("x", "web"));
        assert_eq!(svc.selector, labels(&[("app", "web")]));
        assert_eq!(svc.cluster_ip, None);
        assert_eq!(
            svc.ports,
            vec![ServicePort {
                name: None,
                port: 80,
                target_port: TargetPort::Number(80),
                protocol: Protocol::Tcp
            }]
        );
    }

    #[test]
    fn service_with_everything() {
        let svc = one_service(
            "apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  sessionAffinity: None
  internalTrafficPolicy: Cluster
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: http
  - name: dns
    port: 53
    targetPort: 5353
    protocol: UDP
  - name: zero
    port: 8080
    targetPort: 0
",
        );
        assert_eq!(svc.cluster_ip, Some(Ipv4Addr::new(10, 96, 0, 10)));
        assert_eq!(svc.ports[0].target_port, TargetPort::Name("http".into()));
        assert_eq!(svc.ports[1].target_port, TargetPort::Number(5353));
        assert_eq!(svc.ports[1].protocol, Protocol::Udp);
        assert_eq!(svc.ports[2].target_port, TargetPort::Number(8080));
        // clusterIPs alone is taken too.
        let svc = one_service(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIPs: [10.96.0.11]\n  ports: [{port: 80}]\n",
        );
        assert_eq!(svc.cluster_ip, Some(Ipv4Addr::new(10, 96, 0, 11)));
    }

    #[test]
    fn policy_full_spec() {
        let policy = one_policy(&policy_doc(
            "  podSelector:
    matchLabels: {app: web}
    matchExpressions:
    - {key: tier, operator: In, values: [front, back]}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: client}}
    - namespaceSelector: {matchLabels: {team: blue}}
    - podSelector: {}
      namespaceSelector: {}
    - ipBlock:
        cidr: 192.168.1.7/16
        except: [192.168.1.0/24]
    ports:
    - port: 80
    - protocol: UDP
      port: dns
    - port: 8000
      endPort: 8100
  - {}
  egress:
  - to:
    - ipBlock: {cidr: 'fd00::/8'}
",
        ));
        assert_eq!(policy.namespace, "x");
        assert_eq!(policy.pod_selector.match_labels, labels(&[("app", "web")]));
        assert_eq!(
            policy.pod_selector.match_expressions,
            vec![Requirement {
                key: "tier".into(),
                operator: Operator::In,
                values: vec!["front".into(), "back".into()]
            }]
        );
        assert_eq!(
            policy.policy_types,
            vec![PolicyType::Ingress, PolicyType::Egress]
        );
        assert_eq!(policy.ingress.len(), 2);
        let peers = &policy.ingress[0].peers;
        assert_eq!(peers.len(), 4);
        assert_eq!(
            peers[0],
            Peer {
                pod_selector: Some(LabelSelector {
                    match_labels: labels(&[("role", "client")]),
                    match_expressions: vec![]
                }),
                namespace_selector: None,
                ip_block: None
            }
        );
        assert!(peers[1].pod_selector.is_none());
        assert!(peers[1].namespace_selector.is_some());
        // `{}` selectors are kept as Some(empty), distinct from absent.
        assert_eq!(peers[2].pod_selector, Some(LabelSelector::default()));
        assert_eq!(peers[2].namespace_selector, Some(LabelSelector::default()));
        assert_eq!(
            peers[3].ip_block,
            Some(IpBlock {
                cidr: "192.168.0.0/16".into(),
                except: vec!["192.168.1.0/24".into()]
            })
        );
        assert_eq!(
            policy.ingress[0].ports,
            vec![
                PolicyPort {
                    protocol: Protocol::Tcp,
                    port: Some(PortRef::Number(80)),
                    end_port: None
                },
                PolicyPort {
                    protocol: Protocol::Udp,
                    port: Some(PortRef::Name("dns".into())),
                    end_port: None
                },
                PolicyPort {
                    protocol: Protocol::Tcp,
                    port: Some(PortRef::Number(8000)),
                    end_port: Some(8100)
                },
            ]
        );
        // `- {}`: omitted from and ports, i.e. everything.
        assert_eq!(policy.ingress[1], Rule::default());
        assert_eq!(
            policy.egress[0].peers[0]
                .ip_block
                .as_ref()
                .map(|b| b.cidr.as_str()),
            Some("fd00::/8")
        );
        assert!(policy.egress[0].ports.is_empty());
    }

    #[test]
    fn policy_minimal_is_deny_all_ingress() {
        let policy = one_policy(&policy_doc("  podSelector: {}\n"));
        assert!(policy.pod_selector.is_empty());
        assert_eq!(policy.policy_types, vec![PolicyType::Ingress]);
        assert!(policy.ingress.is_empty() && policy.egress.is_empty());
        assert!(policy.isolates_ingress() && !policy.isolates_egress());
        // No spec at all: the same as the API server's zero value plus defaulting.
        let objects =
            parse("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\n");
        let [Object::NetworkPolicy(p)] = objects.as_slice() else {
            panic!("{objects:?}")
        };
        assert_eq!(p.namespace, "default");
        assert_eq!(p.policy_types, vec![PolicyType::Ingress]);
    }

    #[test]
    fn omitted_and_empty_from_both_match_everything() {
        let policy = one_policy(&policy_doc(
            "  podSelector: {}\n  ingress:\n  - ports: [{port: 80}]\n  - from: []\n",
        ));
        assert!(policy.ingress[0].peers.is_empty());
        assert!(policy.ingress[1].peers.is_empty());
        assert!(policy.ingress[1].ports.is_empty());
    }

    #[test]
    fn policy_types_defaulting() {
        let types = |spec: &str| one_policy(&policy_doc(spec)).policy_types;
        use PolicyType::{Egress, Ingress};
        assert_eq!(types("  podSelector: {}\n"), vec![Ingress]);
        assert_eq!(types("  podSelector: {}\n  ingress: [{}]\n"), vec![Ingress]);
        assert_eq!(
            types("  podSelector: {}\n  egress: [{}]\n"),
            vec![Ingress, Egress]
        );
        // As the API server: an empty egress list does not add Egress.
        assert_eq!(types("  podSelector: {}\n  egress: []\n"), vec![Ingress]);
        assert_eq!(
            types("  podSelector: {}\n  policyTypes: []\n  egress: [{}]\n"),
            vec![Ingress, Egress]
        );
        // Explicit values are kept as given (deduplicated).
        assert_eq!(
            types("  podSelector: {}\n  policyTypes: [Egress]\n"),
            vec![Egress]
        );
        assert_eq!(
            types("  podSelector: {}\n  policyTypes: [Egress, Ingress]\n"),
            vec![Egress, Ingress]
        );
        assert_eq!(
            types("  podSelector: {}\n  policyTypes: [Egress, Egress]\n  ingress: [{}]\n"),
            vec![Egress]
        );
        let message = policy_err("  podSelector: {}\n  policyTypes: [ingress]\n");
        assert!(
            message.contains("spec.policyTypes[0]: Unsupported value \"ingress\""),
            "{message}"
        );
        let message = policy_err("  podSelector: {}\n  policyTypes: [Ingress, Egress, Ingress]\n");
        assert!(
            message.contains("spec.policyTypes: may not specify more than two"),
            "{message}"
        );
    }

    // --- documents -------------------------------------------------------------------------

    #[test]
    fn multi_document_with_empty_documents() {
        let text = "---
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
---
# only a comment
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x}
---
";
        let objects = parse(text);
        let names: Vec<String> = objects.iter().map(Object::entry).collect();
        assert_eq!(names, ["namespace/x", "pod/x/a", "pod/x/b"]);
        // Empty documents still count, so numbers are positions in the file.
        let documents: Vec<usize> = objects
            .iter()
            .map(|o| o.origin().map_or(0, |o| o.document))
            .collect();
        assert_eq!(documents, [1, 4, 5]);
        assert!(parse("").is_empty());
        assert!(parse("---\n").is_empty());
        assert!(parse("# nothing\n").is_empty());
    }

    #[test]
    fn error_names_later_document() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n---\napiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\n";
        let message = err_text(text, 3);
        assert_eq!(
            message,
            "test.yaml: document 3 (Pod): metadata.name: Required value"
        );
    }

    // --- bad input -------------------------------------------------------------------------

    #[test]
    fn malformed_yaml_has_line_and_column() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: [a\n";
        let err = parse_err(text);
        let ManifestError::Yaml {
            source_name,
            document,
            line,
            column,
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(source_name, "test.yaml");
        assert_eq!(*document, 2);
        assert!(line.is_some() && column.is_some(), "{err:?}");
        let message = err.to_string();
        assert!(
            message.starts_with("test.yaml: document 2: malformed YAML: "),
            "{message}"
        );
        assert!(message.contains("line"), "{message}");
        // Bad indentation and duplicate keys are malformed too.
        assert!(matches!(
            parse_err("a: 1\n b: 2\n"),
            ManifestError::Yaml { document: 1, .. }
        ));
        let err = parse_err("apiVersion: v1\nkind: Pod\nkind: Pod\nmetadata: {name: a}\n");
        assert!(
            matches!(err, ManifestError::Yaml { document: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn non_mapping_document() {
        let message = err_text("- a\n- b\n", 1);
        assert!(message.contains("must be a mapping"), "{message}");
        let message = err_text("just text\n", 1);
        assert!(message.contains("must be a mapping"), "{message}");
    }

    #[test]
    fn unknown_kind_and_list() {
        let message = err_text(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: x}\n",
            1,
        );
        assert_eq!(
            message,
            "test.yaml: document 1 (Deployment x/web): kind: Deployment is not supported: the lab \
             takes Namespace, Pod, Service and NetworkPolicy"
        );
        let message = err_text("apiVersion: v1\nkind: List\nitems: []\n", 1);
        assert!(message.contains("kind: List is not supported"), "{message}");
        let message = err_text("apiVersion: v1\nmetadata: {name: a}\n", 1);
        assert!(message.contains("kind: Required value"), "{message}");
    }

    #[test]
    fn wrong_api_version() {
        let message = err_text(
            "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n",
            1,
        );
        assert_eq!(
            message,
            "test.yaml: document 1 (NetworkPolicy x/p): apiVersion: NetworkPolicy must have \
             apiVersion networking.k8s.io/v1, not \"extensions/v1beta1\""
        );
        let message = err_text(
            "apiVersion: networking.k8s.io/v1\nkind: Pod\nmetadata: {name: a}\n",
            1,
        );
        assert!(
            message.contains("(Pod default/a): apiVersion: Pod must have apiVersion v1"),
            "{message}"
        );
        let message = err_text("kind: Pod\nmetadata: {name: a}\n", 1);
        assert!(message.contains("apiVersion: Required value"), "{message}");
    }

    #[test]
    fn missing_or_invalid_names() {
        let message = err_text("apiVersion: v1\nkind: Pod\nspec: {}\n", 1);
        assert_eq!(
            message,
            "test.yaml: document 1 (Pod): metadata.name: Required value"
        );
        let message = err_text(
            "apiVersion: v1\nkind: Pod\nmetadata: {generateName: a-}\n",
            1,
        );
        assert!(
            message
                .contains("metadata.name: Required value: the lab does not support generateName"),
            "{message}"
        );
        let message = err_text("apiVersion: v1\nkind: Pod\nmetadata: {name: Web}\n", 1);
        assert!(
            message.contains("metadata.name: \"Web\" is not a valid name"),
            "{message}"
        );
        let message = err_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: 1web}\nspec: {ports: [{port: 80}]}\n",
            1,
        );
        assert!(
            message.contains("metadata.name: \"1web\" is not a valid name: an RFC 1035 label"),
            "{message}"
        );
        let message = err_text(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n",
            1,
        );
        assert!(
            message.contains("metadata.name: \"a.b\" is not a valid name"),
            "{message}"
        );
        let message = err_text(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: X}\n",
            1,
        );
        assert!(
            message.contains("metadata.namespace: \"X\" is not a valid namespace name"),
            "{message}"
        );
        // A dotted pod name is fine (RFC 1123 subdomain).
        assert_eq!(
            one_pod("apiVersion: v1\nkind: Pod\nmetadata: {name: a.b-c}\n").name,
            "a.b-c"
        );
    }

    #[test]
    fn bad_labels() {
        let message = err_text(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  labels: {'bad key': x}\n",
            1,
        );
        assert!(
            message.contains("metadata.labels: \"bad key\" is not a valid label key"),
            "{message}"
        );
        let message = err_text(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  labels: {app: '-x'}\n",
            1,
        );
        assert!(
            message.contains("metadata.labels.app: \"-x\" is not a valid label value"),
            "{message}"
        );
        let message = err_text(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  labels: {app: 1}\n",
            1,
        );
        assert!(
            message.contains("metadata.labels.app: invalid type: integer"),
            "{message}"
        );
        let message = err_text(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  lables: {app: x}\n",
            1,
        );
        assert!(
            message.contains("metadata: unknown field `lables`"),
            "{message}"
        );
        // Prefixed keys and empty values are valid.
        let pod = one_pod(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  labels: {example.com/app: '', a_b.c: X-1}\n",
        );
        assert_eq!(pod.labels.len(), 2);
    }

    #[test]
    fn pod_errors() {
        let pod = |spec: &str| {
            err_text(
                &format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: x}}\nspec:\n{spec}"
                ),
                1,
            )
        };
        let message = pod("  hostNetwork: true\n");
        assert!(
            message.contains("(Pod x/a): spec.hostNetwork: the lab cannot honour hostNetwork"),
            "{message}"
        );
        let message = pod("  containers:\n  - ports: [{containerPort: 0}]\n");
        assert!(
            message.contains(
                "spec.containers[0].ports[0].containerPort: 0 is not a valid port number"
            ),
            "{message}"
        );
        let message = pod(
            "  containers:\n  - name: a\n  - ports: [{containerPort: 80}, {containerPort: 70000}]\n",
        );
        assert!(
            message.contains(
                "spec.containers[1].ports[1].containerPort: 70000 is not a valid port number"
            ),
            "{message}"
        );
        let message = pod("  containers:\n  - ports: [{containerPort: 80, hostPort: 8080}]\n");
        assert!(
            message
                .contains("spec.containers[0].ports[0].hostPort: the lab cannot honour hostPort"),
            "{message}"
        );
        let message = pod("  containers:\n  - ports: [{containerPort: 80, name: HTTP}]\n");
        assert!(
            message.contains("spec.containers[0].ports[0].name: \"HTTP\" is not a valid port name"),
            "{message}"
        );
        let message = pod("  containers:\n  - ports: [{containerPort: 80, name: '8080'}]\n");
        assert!(message.contains("is not a valid port name"), "{message}");
        let message = pod("  containers:\n  - ports: [{containerPort: 80, name: a--b}]\n");
        assert!(message.contains("is not a valid port name"), "{message}");
        let message = pod(
            "  containers:\n  - ports: [{containerPort: 80, name: http}, {containerPort: 81, name: http}]\n",
        );
        assert!(
            message.contains("spec.containers[0].ports[1].name: Duplicate value"),
            "{message}"
        );
        let message = pod("  containers:\n  - ports: [{containerPort: 80, protocol: tcp}]\n");
        assert!(
            message.contains("spec.containers[0].ports[0].protocol: unknown variant `tcp`"),
            "{message}"
        );
        let message = pod("  containers:\n  - ports: [{containerPort: http}]\n");
        assert!(
            message.contains("spec.containers[0].ports[0].containerPort: invalid type: string"),
            "{message}"
        );
        let message = pod("  containres: []\n");
        assert!(
            message.contains("spec: unknown field `containres`"),
            "{message}"
        );
        let message = pod("  containers:\n  - portz: []\n");
        assert!(
            message.contains("spec.containers[0]: unknown field `portz`"),
            "{message}"
        );
        let message = pod("  nodeName: Node_1\n");
        assert!(
            message.contains("spec.nodeName: \"Node_1\" is not a valid node name"),
            "{message}"
        );
        // hostNetwork: false is harmless.
        assert_eq!(
            one_pod("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {hostNetwork: false}\n")
                .name,
            "a"
        );
    }

    #[test]
    fn service_errors() {
        let svc = |spec: &str| {
            err_text(
                &format!(
                    "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: x}}\nspec:\n{spec}"
                ),
                1,
            )
        };
        for t in ["NodePort", "LoadBalancer", "ExternalName"] {
            let message = svc(&format!("  type: {t}\n  ports: [{{port: 80}}]\n"));
            assert!(message.contains(&format!("(Service x/web): spec.type: {t} is not supported: the lab supports only ClusterIP")), "{message}");
        }
        let message = svc("  ports: [{port: 80}]\n  externalTrafficPolicy: Local\n");
        assert!(
            message
                .contains("spec.externalTrafficPolicy: only applies to NodePort or LoadBalancer"),
            "{message}"
        );
        let message = svc("  ports: [{port: 80}]\n  clusterIP: None\n");
        assert!(
            message.contains("spec.clusterIP: headless services"),
            "{message}"
        );
        let message = svc("  ports: [{port: 80}]\n  clusterIP: 10.96.0.300\n");
        assert!(
            message.contains("spec.clusterIP: \"10.96.0.300\" is not a valid IP address"),
            "{message}"
        );
        let message = svc("  ports: [{port: 80}]\n  clusterIP: 'fd00::1'\n");
        assert!(
            message.contains("spec.clusterIP: fd00::1 is IPv6"),
            "{message}"
        );
        let message =
            svc("  ports: [{port: 80}]\n  clusterIP: 10.96.0.1\n  clusterIPs: [10.96.0.2]\n");
        assert!(
            message
                .contains("spec.clusterIPs[0]: \"10.96.0.2\" must be the same as spec.clusterIP"),
            "{message}"
        );
        let message = svc("  ports: [{port: 80}]\n  sessionAffinity: ClientIP\n");
        assert!(
            message.contains("spec.sessionAffinity: the lab cannot honour"),
            "{message}"
        );
        let message = svc("  ports: [{port: 80}]\n  externalIPs: [1.2.3.4]\n");
        assert!(
            message.contains("spec.externalIPs: the lab cannot honour externalIPs"),
            "{message}"
        );
        let message = svc("  ports: [{port: 80}]\n  ipFamilies: [IPv6]\n");
        assert!(
            message.contains("spec.ipFamilies[0]: the lab cannot honour IPv6"),
            "{message}"
        );
        let message = svc("  selector: {app: web}\n");
        assert!(message.contains("spec.ports: Required value"), "{message}");
        let message = svc("  ports: [{port: 9000, protocol: SCTP}]\n");
        assert!(
            message.contains("spec.ports[0].protocol: Unsupported value: \"SCTP\": the lab load-balances TCP and UDP services only"),
            "{message}"
        );
        let message = svc("  ports: [{port: 0}]\n");
        assert!(
            message.contains("spec.ports[0].port: 0 is not a valid port number"),
            "{message}"
        );
        let message = svc("  ports: [{port: 80, targetPort: 70000}]\n");
        assert!(
            message.contains("spec.ports[0].targetPort: 70000 is not a valid port number"),
            "{message}"
        );
        let message = svc("  ports: [{port: 80, targetPort: 'not valid'}]\n");
        assert!(
            message.contains("spec.ports[0].targetPort: \"not valid\" is not a valid port name"),
            "{message}"
        );
        let message = svc("  ports: [{port: 80, name: a}, {port: 81}]\n");
        assert!(
            message.contains("spec.ports[1].name: Required value"),
            "{message}"
        );
        let message = svc("  ports: [{port: 80, name: a}, {port: 81, name: a}]\n");
        assert!(
            message.contains("spec.ports[1].name: Duplicate value"),
            "{message}"
        );
        let message = svc("  ports: [{port: 80, name: a}, {port: 80, name: b}]\n");
        assert!(
            message.contains("spec.ports[1]: Duplicate value: port 80/TCP"),
            "{message}"
        );
        let message = svc("  ports: [{port: 80, nodePort: 30080}]\n");
        assert!(
            message.contains("spec.ports[0].nodePort: may not be used"),
            "{message}"
        );
        let message = svc("  ports: [{port: 80}]\n  selectr: {app: web}\n");
        assert!(
            message.contains("spec: unknown field `selectr`"),
            "{message}"
        );
        let message = svc("  ports: [{prot: 80}]\n");
        assert!(
            message.contains("spec.ports[0]: unknown field `prot`"),
            "{message}"
        );
        // Same port number on two protocols is fine.
        let svc = one_service(
            "apiVersion: v1\nkind: Service\nmetadata: {name: dns}\nspec:\n  ports: [{name: a, port: 53}, {name: b, port: 53, protocol: UDP}]\n",
        );
        assert_eq!(svc.ports.len(), 2);
    }

    #[test]
    fn example_from_the_brief() {
        let text = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: x}}\n---\n{}",
            policy_doc(
                "  podSelector: {}
  ingress:
  - from:
    - podSelector: {}
    - ipBlock:
        cidr: 192.168.0.0/16
        except: [10.1.0.0/16]
"
            )
            .replace("name: p", "name: deny-all")
        );
        let err = parse_manifests("deny.yaml", &text)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "deny.yaml: document 2 (NetworkPolicy x/deny-all): \
                 spec.ingress[0].from[1].ipBlock.except[0]: 10.1.0.0/16 is not inside 192.168.0.0/16"
            )
        );
    }

    #[test]
    fn selector_errors() {
        let message = policy_err(
            "  podSelector:\n    matchExpressions: [{key: app, operator: Equals, values: [a]}]\n",
        );
        assert!(
            message.contains("(NetworkPolicy x/p): spec.podSelector.matchExpressions[0].operator: \"Equals\" is not a valid selector operator"),
            "{message}"
        );
        let message =
            policy_err("  podSelector:\n    matchExpressions: [{key: app, operator: In}]\n");
        assert!(
            message.contains("spec.podSelector.matchExpressions[0].values: Required value"),
            "{message}"
        );
        let message = policy_err(
            "  podSelector:\n    matchExpressions: [{key: app, operator: NotIn, values: []}]\n",
        );
        assert!(
            message.contains("matchExpressions[0].values: Required value"),
            "{message}"
        );
        let message = policy_err(
            "  podSelector:\n    matchExpressions: [{key: app, operator: Exists, values: [a]}]\n",
        );
        assert!(
            message.contains("spec.podSelector.matchExpressions[0].values: Forbidden"),
            "{message}"
        );
        let message =
            policy_err("  podSelector:\n    matchExpressions: [{key: '/app', operator: Exists}]\n");
        assert!(
            message.contains("matchExpressions[0].key: \"/app\" is not a valid label key"),
            "{message}"
        );
        let message = policy_err(
            "  podSelector:\n    matchExpressions: [{key: app, operator: In, values: ['a b']}]\n",
        );
        assert!(
            message.contains("matchExpressions[0].values[0]: \"a b\" is not a valid label value"),
            "{message}"
        );
        let message = policy_err("  podSelector:\n    matchExpressions: [{operator: Exists}]\n");
        assert!(
            message.contains("spec.podSelector.matchExpressions[0]: missing field `key`"),
            "{message}"
        );
        let message = policy_err("  podSelector:\n    matchLabel: {app: a}\n");
        assert!(
            message.contains("spec.podSelector: unknown field `matchLabel`"),
            "{message}"
        );
        let message = policy_err(
            "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels: {'x y': a}\n",
        );
        assert!(message.contains("spec.ingress[0].from[0].namespaceSelector.matchLabels: \"x y\" is not a valid label key"), "{message}");
    }

    #[test]
    fn ip_block_errors() {
        let block = |b: &str| {
            policy_err(&format!(
                "  podSelector: {{}}\n  ingress:\n  - from:\n    - ipBlock: {b}\n"
            ))
        };
        let message = block("{cidr: 10.0.0.1}");
        assert!(
            message.contains("spec.ingress[0].from[0].ipBlock.cidr: \"10.0.0.1\" is not a CIDR"),
            "{message}"
        );
        let message = block("{cidr: banana/8}");
        assert!(
            message.contains("ipBlock.cidr: \"banana/8\" is not a CIDR"),
            "{message}"
        );
        let message = block("{cidr: 10.0.0.0/33}");
        assert!(message.contains("ipBlock.cidr: \"10.0.0.0/33\" is not a CIDR: the prefix length must be between 0 and 32"), "{message}");
        let message = block("{cidr: ''}");
        assert!(
            message.contains("ipBlock.cidr: Required value"),
            "{message}"
        );
        let message = block("{except: [10.0.0.0/8]}");
        assert!(
            message.contains("spec.ingress[0].from[0].ipBlock: missing field `cidr`"),
            "{message}"
        );
        let message = block("{cidr: 10.0.0.0/8, except: [10.0.0.0/8]}");
        assert!(
            message.contains("ipBlock.except[0]: 10.0.0.0/8 is not strictly inside 10.0.0.0/8"),
            "{message}"
        );
        let message = block("{cidr: 10.0.0.0/16, except: [10.0.0.0/8]}");
        assert!(
            message.contains("ipBlock.except[0]: 10.0.0.0/8 is not strictly inside"),
            "{message}"
        );
        let message = block("{cidr: 10.0.0.0/8, except: [10.1.0.0/16, 'fd00::/16']}");
        assert!(
            message.contains(
                "ipBlock.except[1]: fd00::/16 is not inside 10.0.0.0/8 (a different address family)"
            ),
            "{message}"
        );
        let message = block("{cidr: 10.0.0.0/8, except: [10.1.0.0]}");
        assert!(
            message.contains("ipBlock.except[0]: \"10.1.0.0\" is not a CIDR"),
            "{message}"
        );
        let message = block("{cidr: 10.0.0.0/8, exept: []}");
        assert!(
            message.contains("ipBlock: unknown field `exept`"),
            "{message}"
        );
        // IPv6 and host bits are fine; both are canonicalised.
        let policy = one_policy(&policy_doc(
            "  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: '2001:DB8::1/32', except: ['2001:db8:1::5/48']}\n",
        ));
        assert_eq!(
            policy.egress[0].peers[0].ip_block,
            Some(IpBlock {
                cidr: "2001:db8::/32".into(),
                except: vec!["2001:db8:1::/48".into()]
            })
        );
        let policy = one_policy(&policy_doc(
            "  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 0.0.0.0/0}\n",
        ));
        assert_eq!(
            policy.egress[0].peers[0]
                .ip_block
                .as_ref()
                .map(|b| b.cidr.as_str()),
            Some("0.0.0.0/0")
        );
    }

    #[test]
    fn peer_errors() {
        let message = policy_err("  podSelector: {}\n  ingress:\n  - from:\n    - {}\n");
        assert!(
            message.contains("spec.ingress[0].from[0]: Required value: a peer must have"),
            "{message}"
        );
        let message = policy_err(
            "  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {}\n      ipBlock: {cidr: 10.0.0.0/8}\n",
        );
        assert!(
            message.contains("spec.ingress[0].from[0]: Forbidden: a peer may not combine ipBlock"),
            "{message}"
        );
        let message = policy_err(
            "  podSelector: {}\n  egress:\n  - to:\n    - podSelector: {}\n    - podSelctor: {}\n",
        );
        assert!(
            message.contains("spec.egress[0].to[1]: unknown field `podSelctor`"),
            "{message}"
        );
        let message = policy_err("  podSelector: {}\n  ingress:\n  - to: []\n");
        assert!(
            message.contains("spec.ingress[0]: unknown field `to`"),
            "{message}"
        );
    }

    #[test]
    fn typo_fields_in_policy() {
        let message = policy_err("  podSelctor: {}\n");
        assert!(
            message.starts_with(
                "test.yaml: document 1 (NetworkPolicy x/p): spec: unknown field `podSelctor`"
            ),
            "{message}"
        );
        let message = policy_err("  podSelector: {}\n  ingres: []\n");
        assert!(
            message.contains("spec: unknown field `ingres`"),
            "{message}"
        );
        let message =
            policy_err("  podSelector: {}\n  ingress:\n  - ports: [{port: 80, endport: 90}]\n");
        assert!(
            message.contains("spec.ingress[0].ports[0]: unknown field `endport`"),
            "{message}"
        );
        let message = err_text("apiVersion: v1\nkind: Namespace\nmetdata: {name: x}\n", 1);
        assert!(message.contains("unknown field `metdata`"), "{message}");
    }

    #[test]
    fn policy_port_errors() {
        let ports = |p: &str| {
            policy_err(&format!(
                "  podSelector: {{}}\n  ingress:\n  - ports: [{p}]\n"
            ))
        };
        let message = ports("{port: 0}");
        assert!(
            message.contains("spec.ingress[0].ports[0].port: 0 is not a valid port number"),
            "{message}"
        );
        let message = ports("{port: 70000}");
        assert!(
            message.contains("spec.ingress[0].ports[0].port: 70000 is not a valid port number"),
            "{message}"
        );
        let message = ports("{port: -1}");
        assert!(
            message.contains("ports[0].port: -1 is not a valid port number"),
            "{message}"
        );
        let message = ports("{port: 80}, {port: 9000, endPort: 8000}");
        assert!(
            message.contains("spec.ingress[0].ports[1].endPort: 8000 is below port 9000"),
            "{message}"
        );
        let message = ports("{port: http, endPort: 8000}");
        assert!(
            message.contains("ports[0].endPort: may not be specified when port is a named port"),
            "{message}"
        );
        let message = ports("{endPort: 8000}");
        assert!(
            message.contains("ports[0].endPort: may not be specified when port is not specified"),
            "{message}"
        );
        let message = ports("{port: 80, endPort: 70000}");
        assert!(
            message.contains("ports[0].endPort: 70000 is not a valid port number"),
            "{message}"
        );
        let message = ports("{port: '80'}");
        assert!(
            message.contains("ports[0].port: \"80\" is not a valid port name"),
            "{message}"
        );
        let message = ports("{port: 80.5}");
        assert!(message.contains("ports[0].port: invalid type"), "{message}");
        let message = ports("{protocol: ICMP}");
        assert!(
            message.contains("ports[0].protocol: unknown variant `ICMP`"),
            "{message}"
        );
        let policy = one_policy(&policy_doc(
            "  podSelector: {}\n  ingress:\n  - ports: [{port: 80, endPort: 80}, {protocol: SCTP}]\n",
        ));
        assert_eq!(policy.ingress[0].ports[0].end_port, Some(80));
        assert_eq!(
            policy.ingress[0].ports[1],
            PolicyPort {
                protocol: Protocol::Sctp,
                port: None,
                end_port: None
            }
        );
    }

    // --- LabelSelector / IpBlock behaviour ---------------------------------------------------

    fn req(key: &str, operator: Operator, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![Requirement {
                key: key.into(),
                operator,
                values: values.iter().map(|v| (*v).to_owned()).collect(),
            }],
        }
    }

    #[test]
    fn selector_matching() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let db = labels(&[("app", "db")]);
        let none = BTreeMap::new();

        let empty = LabelSelector::default();
        assert!(empty.matches(&web) && empty.matches(&none));

        let by_label = LabelSelector {
            match_labels: labels(&[("app", "web")]),
            match_expressions: vec![],
        };
        assert!(by_label.matches(&web) && !by_label.matches(&db) && !by_label.matches(&none));

        let s = req("app", Operator::In, &["web", "api"]);
        assert!(s.matches(&web) && !s.matches(&db) && !s.matches(&none));

        let s = req("app", Operator::NotIn, &["web"]);
        assert!(!s.matches(&web) && s.matches(&db) && s.matches(&none));

        let s = req("tier", Operator::Exists, &[]);
        assert!(s.matches(&web) && !s.matches(&db) && !s.matches(&none));

        let s = req("tier", Operator::DoesNotExist, &[]);
        assert!(!s.matches(&web) && s.matches(&db) && s.matches(&none));

        // Everything must hold together.
        let mut both = req("tier", Operator::Exists, &[]);
        both.match_labels = labels(&[("app", "db")]);
        assert!(!both.matches(&web) && !both.matches(&db));
        both.match_labels = labels(&[("app", "web")]);
        assert!(both.matches(&web));
    }

    #[test]
    fn ip_block_contains() {
        let block = IpBlock {
            cidr: "10.0.0.0/8".into(),
            except: vec!["10.1.0.0/16".into()],
        };
        assert!(
            block.contains(
                "10.2.3.4"
                    .parse()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            )
        );
        assert!(!block.contains(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))));
        assert!(!block.contains(IpAddr::V4(Ipv4Addr::new(11, 0, 0, 1))));
        assert!(
            !block.contains(
                "fd00::1"
                    .parse()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            )
        );
        let all = IpBlock {
            cidr: "0.0.0.0/0".into(),
            except: vec![],
        };
        assert!(all.contains(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1))));
    }

    // --- the store ---------------------------------------------------------------------------

    const SETUP: &str = "apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec:
  nodeName: node-1
  containers: [{ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: 10.96.0.10
  selector: {app: a}
  ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}}
---
apiVersion: v1
kind: Pod
metadata: {name: c}
";

    fn applied(text: &str) -> (ObjectStore, ApplyReport) {
        let mut store = ObjectStore::new();
        let report = match store.apply(parse(text)) {
            Ok(report) => report,
            Err(err) => panic!("apply failed: {err}"),
        };
        (store, report)
    }

    fn apply_err(store: &mut ObjectStore, source: &str, text: &str) -> ManifestError {
        let objects = match parse_manifests(source, text) {
            Ok(objects) => objects,
            Err(err) => panic!("parse failed: {err}"),
        };
        let before = store.clone();
        let err = match store.apply(objects) {
            Ok(report) => panic!("expected an error, got {report:?}"),
            Err(err) => err,
        };
        assert_eq!(*store, before, "a failed apply changed the store");
        err
    }

    #[test]
    fn new_store_has_default() {
        let store = ObjectStore::new();
        assert_eq!(store, ObjectStore::default());
        assert_eq!(
            store.namespaces.get("default").map(|n| n.labels.clone()),
            Some(labels(&[(NAMESPACE_NAME_LABEL, "default")]))
        );
        assert!(store.pods.is_empty() && store.services.is_empty() && store.policies.is_empty());
    }

    #[test]
    fn apply_creates_then_reports_unchanged_and_updated() {
        let (mut store, report) = applied(SETUP);
        assert_eq!(
            report.created,
            [
                "namespace/x",
                "pod/x/a",
                "service/x/web",
                "networkpolicy/x/deny-all",
                "pod/default/c"
            ]
        );
        assert!(
            report.updated.is_empty() && report.unchanged.is_empty() && report.deleted.is_empty()
        );
        let pod = store.pods.get(&("x".to_owned(), "a".to_owned())).cloned();
        assert_eq!(
            pod.as_ref().map(|p| p.origin.clone()),
            Some(None),
            "stored objects carry no origin"
        );

        // The same objects from another file: unchanged (origins do not matter).
        let again = store.apply(parse_manifests("other.yaml", SETUP).unwrap_or_default());
        assert_eq!(
            again.map(|r| (r.created.len(), r.updated.len(), r.unchanged.len())),
            Ok((0, 0, 5))
        );

        // Changing labels updates; a new pod is created.
        let change = "apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a, v: '2'}}
spec:
  nodeName: node-1
  containers: [{ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: x}
";
        let report = store.apply(parse(change));
        assert_eq!(
            report,
            Ok(ApplyReport {
                created: vec!["pod/x/b".into()],
                updated: vec!["pod/x/a".into()],
                unchanged: vec!["namespace/x".into()],
                deleted: vec![],
            })
        );
        assert_eq!(
            store
                .pods
                .get(&("x".to_owned(), "a".to_owned()))
                .map(|p| p.labels.len()),
            Some(2)
        );
    }

    #[test]
    fn apply_needs_the_namespace() {
        let mut store = ObjectStore::new();
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: c}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: y}\n";
        let message = apply_err(&mut store, "pods.yaml", text).to_string();
        assert_eq!(
            message,
            "pods.yaml: document 2 (Pod y/a): metadata.namespace: namespace \"y\" does not exist \
             and is not created by this apply"
        );
        // Created by the same apply, even later in the file: fine.
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: y}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: y}\n";
        assert!(store.apply(parse(text)).is_ok());
        assert!(store.namespaces.contains_key("y"));
    }

    #[test]
    fn apply_rejects_duplicates_naming_both_documents() {
        let mut store = ObjectStore::new();
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: default}\n";
        let err = apply_err(&mut store, "dup.yaml", text);
        assert_eq!(
            err.to_string(),
            "dup.yaml: document 3 (Pod default/a): the same object is also in dup.yaml: \
             document 1; name each object once"
        );
        // Across files (parsed separately, applied together) both files are named.
        let mut objects = parse_manifests(
            "one.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
        )
        .unwrap_or_default();
        objects.extend(
            parse_manifests(
                "two.yaml",
                "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
            )
            .unwrap_or_default(),
        );
        let err = store.apply(objects).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "two.yaml: document 1 (Namespace x): the same object is also in one.yaml: document 1; name each object once"
            )
        );
        assert_eq!(store, ObjectStore::new());
    }

    #[test]
    fn apply_is_all_or_nothing() {
        let (mut store, _) = applied(SETUP);
        // A valid new namespace and pod, then a pod in a missing namespace.
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: z}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: z}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: q, namespace: nope}\n";
        let err = apply_err(&mut store, "t.yaml", text);
        assert!(
            err.to_string()
                .starts_with("t.yaml: document 3 (Pod nope/q)"),
            "{err}"
        );
        assert!(!store.namespaces.contains_key("z"));
    }

    #[test]
    fn apply_rejects_port_change_but_takes_label_change() {
        let (mut store, _) = applied(SETUP);
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nspec:\n  nodeName: node-1\n  containers: [{ports: [{containerPort: 81}]}]\n";
        let message = apply_err(&mut store, "ports.yaml", text).to_string();
        assert!(
            message.starts_with("ports.yaml: document 1 (Pod x/a): spec.containers[].ports: a pod's containers cannot change"),
            "{message}"
        );
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: web}}\nspec:\n  nodeName: node-1\n  containers: [{ports: [{containerPort: 80}]}]\n";
        let objects = parse_manifests("labels.yaml", text).unwrap();
        let report = store.apply(objects).unwrap();
        assert_eq!(report.updated, vec!["pod/x/a".to_owned()]);
    }

    #[test]
    fn apply_rejects_node_name_change() {
        let (mut store, _) = applied(SETUP);
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nspec:\n  nodeName: node-2\n  containers: [{ports: [{containerPort: 80}]}]\n";
        let message = apply_err(&mut store, "move.yaml", text).to_string();
        assert!(
            message.starts_with("move.yaml: document 1 (Pod x/a): spec.nodeName: cannot change from \"node-1\" to \"node-2\""),
            "{message}"
        );
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n";
        let message = apply_err(&mut store, "move.yaml", text).to_string();
        assert!(
            message.contains("cannot change from \"node-1\" to unset"),
            "{message}"
        );
    }

    #[test]
    fn apply_rejects_cluster_ip_collisions_and_changes() {
        let (mut store, _) = applied(SETUP);
        let other = "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: x}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 80}]\n";
        let message = apply_err(&mut store, "svc.yaml", other).to_string();
        assert_eq!(
            message,
            "svc.yaml: document 1 (Service x/other): spec.clusterIP: 10.96.0.10 is already the \
             cluster IP of Service x/web"
        );
        // Two new services with one IP in the same apply.
        let two = "apiVersion: v1\nkind: Service\nmetadata: {name: s1}\nspec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s2}\nspec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}\n";
        let message = apply_err(&mut store, "two.yaml", two).to_string();
        assert!(
            message.contains("already the cluster IP of Service default/s"),
            "{message}"
        );
        assert!(message.contains("(two.yaml: document "), "{message}");
        // Changing a requested cluster IP.
        let moved = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: x}\nspec:\n  clusterIP: 10.96.0.11\n  selector: {app: a}\n  ports: [{port: 80}]\n";
        let message = apply_err(&mut store, "m.yaml", moved).to_string();
        assert!(
            message.contains("spec.clusterIP: field is immutable"),
            "{message}"
        );
        // Omitting it keeps the service valid (an update of the declared spec).
        let omitted = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: x}\nspec:\n  selector: {app: a}\n  ports: [{port: 80}]\n";
        assert!(store.apply(parse(omitted)).is_ok());
    }

    #[test]
    fn delete_cascades_a_namespace() {
        let (mut store, _) = applied(SETUP);
        // The namespace and a pod inside it, as `kubectl delete -f` of the setup file would.
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n";
        let report = store.delete(&parse(text));
        assert_eq!(
            report,
            Ok(ApplyReport {
                deleted: vec![
                    "namespace/x".into(),
                    "pod/x/a".into(),
                    "service/x/web".into(),
                    "networkpolicy/x/deny-all".into()
                ],
                ..ApplyReport::default()
            })
        );
        assert!(!store.namespaces.contains_key("x"));
        assert!(store.pods.keys().all(|k| k.0 != "x"));
        assert!(store.services.is_empty() && store.policies.is_empty());
        assert!(
            store
                .pods
                .contains_key(&("default".to_owned(), "c".to_owned()))
        );
    }

    #[test]
    fn delete_errors_and_all_or_nothing() {
        let (mut store, _) = applied(SETUP);
        let before = store.clone();
        // The spec content is ignored: only kind/namespace/name matter.
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: c, labels: {different: yes}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: gone, namespace: x}\n";
        let err = store.delete(&parse_manifests("d.yaml", text).unwrap_or_default());
        assert_eq!(
            err.map_err(|e| e.to_string()),
            Err(
                "d.yaml: document 2 (Pod x/gone): not found: the lab has no such object".to_owned()
            )
        );
        assert_eq!(store, before);
        let err = store.delete(&parse(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n",
        ));
        assert!(err.is_err_and(|e| {
            e.to_string()
                .contains("metadata.name: the namespace default cannot be deleted")
        }),);
        assert_eq!(store, before);
        let report = store.delete(&parse(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: c, labels: {different: yes}}\n",
        ));
        assert_eq!(
            report.map(|r| r.deleted),
            Ok(vec!["pod/default/c".to_owned()])
        );
        assert!(
            !store
                .pods
                .contains_key(&("default".to_owned(), "c".to_owned()))
        );
        // Deleting something twice in one batch is a duplicate.
        let twice = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n";
        assert!(matches!(
            store.delete(&parse(twice)),
            Err(ManifestError::Duplicate { .. })
        ));
    }

    #[test]
    fn store_round_trips_through_json() {
        let (store, _) = applied(SETUP);
        let json = serde_json::to_string(&store).unwrap_or_default();
        let back: Result<ObjectStore, _> = serde_json::from_str(&json);
        assert_eq!(back.ok(), Some(store.clone()));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        assert!(
            value["pods"].is_array() && value["namespaces"].is_object(),
            "{json}"
        );
        // Objects round-trip too, origin included.
        let objects = parse(SETUP);
        let json = serde_json::to_string(&objects).unwrap_or_default();
        let back: Result<Vec<Object>, _> = serde_json::from_str(&json);
        assert_eq!(back.ok(), Some(objects));
    }

    #[test]
    fn objects_constructed_in_code_have_locations_without_documents() {
        let mut store = ObjectStore::new();
        let pod = Pod {
            namespace: "nope".into(),
            name: "a".into(),
            labels: BTreeMap::new(),
            node_name: None,
            ports: vec![],
            origin: None,
        };
        let message = store
            .apply(vec![Object::Pod(pod)])
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            message.as_deref(),
            Some(
                "Pod nope/a: metadata.namespace: namespace \"nope\" does not exist and is not created by this apply"
            )
        );
    }
}
