//! Kubernetes manifests for the lab: parsing, validation and the lab's object store.
//!
//! `sightline lab up|apply|delete -f FILE` take multi-document YAML the way `kubectl apply -f`
//! does. [`parse_manifests`] turns one file into [`Object`]s — the Kubernetes API's own types
//! (k8s-openapi), the same the collector's Kubernetes source watches — filling in the defaults
//! the API server fills in and rejecting what the API server rejects; [`ObjectStore`] holds the
//! lab's objects and applies or deletes a batch all-or-nothing. The lab reads them through the
//! collector's translation (`sightline_collector::kubernetes::translate`: namespace labels,
//! container ports, service ports, NetworkPolicy), so the lab and a real cluster are read by
//! one piece of code.
//!
//! Parsing happens in two passes over the text. The first reads every document into a generic
//! YAML value, which catches malformed YAML (with its line and column) and tells us each
//! document's `kind`, `metadata.name` and `metadata.namespace` for error messages. The second
//! deserializes the same document into raw structs that mirror the Kubernetes fields (camelCase),
//! so serde_yaml reports the field path of a wrong type or an unknown field (k8s-openapi's types
//! ignore unknown fields, which `kubectl apply --validate=strict` does not); the raw structs are
//! then converted, with validation, into the API's objects.
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
//! A NetworkPolicy is validated into the collector's model (`sightline_collector::policy::model`)
//! and stored as the API's object; parsing checks that the collector's translation reads the
//! object back as exactly the validated model ([`policy_model`]).
//!
//! * [`model::Rule::peers`] empty means `from`/`to` was omitted or empty: the rule matches **all**
//!   sources/destinations. A non-empty list matches any of its peers. (An empty peer `{}` is
//!   rejected, as the API server does, so a present peer always selects something specific.)
//! * [`model::Rule::ports`] empty means every port and protocol.
//! * [`model::NetworkPolicy::ingress`] empty with `Ingress` in [`model::NetworkPolicy::policy_types`] means
//!   all ingress to the selected pods is denied; likewise for egress.
//! * [`model::Peer::pod_selector`] / [`model::Peer::namespace_selector`]: `None` means the selector was absent,
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
//! 10.1.0.0/16 is not inside 192.168.0.0/16`. Parsed objects come as [`Document`]s, which keep
//! where each came from so [`ObjectStore::apply`] and [`ObjectStore::delete`] can name the
//! document too; the store keeps the objects alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr};

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::types::Protocol;
/// The Kubernetes API types the lab's objects are (the same crate and version the collector's
/// Kubernetes source uses).
pub use sightline_collector::kubernetes::k8s_openapi;
pub use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
pub use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString as K8sIntOrString;
// The NetworkPolicy model lives in the collector, which compiles it; this module validates
// policies into it, and stores them as the API's objects.
pub use sightline_collector::policy::model::{self, Origin};
use sightline_collector::policy::model::{
    IpBlock, LabelSelector, Operator, Peer, PolicyPort, PolicyType, PortRef, Requirement, Rule,
    cidr_contains, parse_cidr,
};
use sightline_collector::kubernetes::translate;
use sightline_collector::state;
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

/// Container fields that are accepted and ignored (everything but `name` and `ports`).
pub const CONTAINER_IGNORED: &[&str] = &[
    "args",
    "command",
    "env",
    "envFrom",
    "image",
    "imagePullPolicy",
    "lifecycle",
    "livenessProbe",
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

/// One object of a manifest, as the Kubernetes API's own type (k8s-openapi's, the types the
/// Kubernetes source watches), validated and defaulted as the API server would: names and
/// namespaces set, `kubernetes.io/metadata.name` on namespaces, protocols, `targetPort`s and
/// `policyTypes` filled in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[expect(clippy::large_enum_variant, reason = "objects are made once per document parsed; a box buys nothing")]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    NetworkPolicy(NetworkPolicy),
}

/// An object and where it was parsed from (`None` when it was not parsed, e.g. built by a
/// caller).
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub object: Object,
    pub origin: Option<Origin>,
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

/// What the lab reads of every object's metadata. k8s-openapi keeps each field optional;
/// parsing always sets the name, and the namespace of a namespaced object.
pub trait Named {
    /// `metadata.name`.
    fn name(&self) -> &str;
    /// `metadata.namespace` (empty for a Namespace).
    fn namespace(&self) -> &str;
    /// `metadata.labels` (none when absent).
    fn labels(&self) -> &BTreeMap<String, String>;
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl<T: k8s_openapi::Metadata<Ty = ObjectMeta>> Named for T {
    fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }
    fn namespace(&self) -> &str {
        self.metadata().namespace.as_deref().unwrap_or_default()
    }
    fn labels(&self) -> &BTreeMap<String, String> {
        self.metadata().labels.as_ref().unwrap_or(&NO_LABELS)
    }
}

/// A pod's `spec.nodeName`: the lab node it is pinned to (`None`: the lab chooses).
#[must_use]
pub fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
}

/// A pod's container ports, read as the Kubernetes source reads them.
#[must_use]
pub fn container_ports(pod: &Pod) -> Vec<state::ContainerPort> {
    // Parsing checked every port: a stored pod always translates.
    translate::container_ports(pod).unwrap_or_default()
}

/// A namespace's labels, with `kubernetes.io/metadata.name`.
#[must_use]
pub fn namespace_labels(ns: &Namespace) -> BTreeMap<String, String> {
    translate::namespace_labels(ns)
}

/// A service's `spec.selector` (none when absent).
#[must_use]
pub fn selector(svc: &Service) -> BTreeMap<String, String> {
    svc.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default()
}

/// The cluster IP a service asks for (`None`: the lab allocates one).
#[must_use]
pub fn requested_cluster_ip(svc: &Service) -> Option<Ipv4Addr> {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()).and_then(|ip| ip.parse().ok())
}

/// A service's ports in the collector's model (`targetPort` and protocol defaulted).
#[must_use]
pub fn service_ports(svc: &Service) -> Vec<state::ServicePort> {
    let no_error = |field: String, message: String| translate::TranslateError { object: String::new(), field, message };
    // Parsing checked every port: a stored service always translates.
    svc.spec.as_ref().map(|spec| translate::service_ports(spec, &no_error).unwrap_or_default()).unwrap_or_default()
}

/// A service in the collector's model at `cluster_ip`, as the Kubernetes source translates it
/// (without endpoints).
#[must_use]
pub fn service_state(svc: &Service, cluster_ip: Ipv4Addr) -> state::Service {
    state::Service {
        namespace: svc.namespace().to_owned(),
        name: svc.name().to_owned(),
        cluster_ip,
        selector: selector(svc),
        ports: service_ports(svc),
        endpoints: None,
    }
}

/// A NetworkPolicy in the collector's model, as the Kubernetes source translates it.
///
/// # Errors
///
/// What the translation refuses; parsing refuses it first, so stored policies always translate.
pub fn policy_model(np: &NetworkPolicy) -> Result<model::NetworkPolicy, translate::TranslateError> {
    translate::network_policy(np)
}

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
            Self::Pod(p) => Some(p.namespace()),
            Self::Service(s) => Some(s.namespace()),
            Self::NetworkPolicy(p) => Some(p.namespace()),
        }
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Namespace(n) => n.name(),
            Self::Pod(p) => p.name(),
            Self::Service(s) => s.name(),
            Self::NetworkPolicy(p) => p.name(),
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

    fn key(&self) -> (&'static str, String, String) {
        (
            self.kind(),
            self.namespace().unwrap_or("").to_owned(),
            self.name().to_owned(),
        )
    }
}

impl Document {
    /// The error location of this object.
    pub fn location(&self) -> Location {
        Location::new(self.origin.as_ref(), Some(self.object.label()))
    }
}

impl From<Object> for Document {
    fn from(object: Object) -> Self {
        Self { object, origin: None }
    }
}

/// The number of the container port called `name` with `protocol`, as Kubernetes resolves a
/// named port (first match in container order).
#[must_use]
pub fn named_port(pod: &Pod, name: &str, protocol: Protocol) -> Option<u16> {
    container_ports(pod)
        .into_iter()
        .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
        .map(|p| p.port)
}

mod parse;
mod store;
mod validate;

pub use parse::parse_manifests;
pub use store::ObjectStore;

#[cfg(test)]
mod tests {
    use super::*;
    use super::store::*;
    use sightline_collector::state::{ContainerPort, ServicePort, TargetPort};

    /// What the tests check of a pod: the lab's reading of the API object.
    #[derive(Debug)]
    struct PodView {
        object: Pod,
        namespace: String,
        name: String,
        labels: BTreeMap<String, String>,
        node_name: Option<String>,
        ports: Vec<ContainerPort>,
    }

    /// What the tests check of a service.
    #[derive(Debug)]
    struct ServiceView {
        namespace: String,
        name: String,
        selector: BTreeMap<String, String>,
        ports: Vec<ServicePort>,
        cluster_ip: Option<Ipv4Addr>,
    }

    impl PodView {
        fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
            named_port(&self.object, name, protocol)
        }
    }

    fn parse(text: &str) -> Vec<Document> {
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

    /// The objects alone.
    fn objects_of(text: &str) -> Vec<Object> {
        parse(text).into_iter().map(|d| d.object).collect()
    }

    fn one_pod(text: &str) -> PodView {
        match objects_of(text).as_slice() {
            [Object::Pod(pod)] => PodView {
                object: pod.clone(),
                namespace: pod.namespace().to_owned(),
                name: pod.name().to_owned(),
                labels: pod.labels().clone(),
                node_name: node_name(pod).map(str::to_owned),
                ports: container_ports(pod),
            },
            other => panic!("expected one pod, got {other:?}"),
        }
    }

    fn one_service(text: &str) -> ServiceView {
        match objects_of(text).as_slice() {
            [Object::Service(svc)] => ServiceView {
                namespace: svc.namespace().to_owned(),
                name: svc.name().to_owned(),
                selector: selector(svc),
                ports: service_ports(svc),
                cluster_ip: requested_cluster_ip(svc),
            },
            other => panic!("expected one service, got {other:?}"),
        }
    }

    /// The policy in the collector's model, as the Kubernetes source reads the stored object.
    fn one_policy(text: &str) -> model::NetworkPolicy {
        match objects_of(text).as_slice() {
            [Object::NetworkPolicy(p)] => policy_model(p).unwrap_or_else(|e| panic!("{e}")),
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
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n    team: blue\n";
        let objects = objects_of(text);
        let [Object::Namespace(ns)] = objects.as_slice() else {
            panic!("{objects:?}")
        };
        assert_eq!(ns.name(), "x");
        assert_eq!(
            *ns.labels(),
            labels(&[("team", "blue"), (NAMESPACE_NAME_LABEL, "x")])
        );
        assert_eq!(
            parse(text)[0].origin,
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
    fn objects_are_the_apis_own_with_the_api_servers_defaults() {
        let objects = objects_of(
            "apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec:
  containers: [{ports: [{containerPort: 80, name: http}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]
",
        );
        let json: Vec<serde_json::Value> = objects
            .iter()
            .map(|o| match o {
                Object::Pod(p) => serde_json::to_value(p),
                Object::Service(s) => serde_json::to_value(s),
                Object::NetworkPolicy(p) => serde_json::to_value(p),
                Object::Namespace(n) => serde_json::to_value(n),
            })
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        // The Kubernetes JSON of each object, as the API server would hand it to a watcher.
        assert_eq!(json[0]["metadata"]["namespace"], "x");
        assert_eq!(json[0]["spec"]["containers"][0]["name"], "container-0");
        assert_eq!(json[0]["spec"]["containers"][0]["ports"][0], serde_json::json!({"containerPort": 80, "name": "http", "protocol": "TCP"}));
        assert_eq!(json[1]["metadata"]["namespace"], "default");
        assert_eq!(json[1]["spec"]["type"], "ClusterIP");
        assert_eq!(json[1]["spec"]["ports"][0], serde_json::json!({"port": 80, "protocol": "TCP", "targetPort": 80}));
        assert_eq!(json[2]["spec"]["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
        // And the collector's translation reads them as the lab validated them.
        let Object::NetworkPolicy(p) = &objects[2] else { panic!("{objects:?}") };
        let model = policy_model(p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(model.policy_types, vec![PolicyType::Ingress, PolicyType::Egress]);
        assert_eq!(model.egress[0].peers[0].ip_block.as_ref().map(|b| b.cidr.as_str()), Some("10.0.0.0/8"));
    }

    #[test]
    fn namespace_label_cannot_be_overridden() {
        let objects = objects_of(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n    \
             kubernetes.io/metadata.name: other\n",
        );
        let [Object::Namespace(ns)] = objects.as_slice() else {
            panic!("{objects:?}")
        };
        assert_eq!(*ns.labels(), labels(&[(NAMESPACE_NAME_LABEL, "x")]));
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
        let p = one_policy("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\n");
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
        let names: Vec<String> = objects.iter().map(|d| d.object.entry()).collect();
        assert_eq!(names, ["namespace/x", "pod/x/a", "pod/x/b"]);
        // Empty documents still count, so numbers are positions in the file.
        let documents: Vec<usize> = objects
            .iter()
            .map(|d| d.origin.as_ref().map_or(0, |o| o.document))
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
            store.namespaces.get("default").map(|n| n.labels().clone()),
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
        assert!(store.pods.contains_key(&("x".to_owned(), "a".to_owned())));

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
                .map(|p| p.labels().len()),
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
        // Objects round-trip too.
        let objects = objects_of(SETUP);
        let json = serde_json::to_string(&objects).unwrap_or_default();
        let back: Result<Vec<Object>, _> = serde_json::from_str(&json);
        assert_eq!(back.ok(), Some(objects));
    }

    #[test]
    fn objects_constructed_in_code_have_locations_without_documents() {
        let mut store = ObjectStore::new();
        let pod = Pod {
            metadata: ObjectMeta { namespace: Some("nope".into()), name: Some("a".into()), ..ObjectMeta::default() },
            ..Pod::default()
        };
        let message = store
            .apply(vec![Document::from(Object::Pod(pod))])
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
