//! The Kubernetes state source: watches the API server and builds the same
//! [`crate::state::NodeState`] the lab builds.
//!
//! [`WATCHED`] is the one list of what the source reads; the deploy
//! manifests' RBAC rules are checked against it. `source` runs a
//! kube-runtime watcher per kind and a debounced builder; `translate` is
//! the one translation of Kubernetes objects into the collector's model,
//! which the lab shares (docs/KUBERNETES-SOURCE.md).

/// One resource the Kubernetes source watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watched {
    /// The API group (`""` for the core group).
    pub group: &'static str,
    pub version: &'static str,
    /// The plural resource name, as RBAC rules name it.
    pub resource: &'static str,
    pub kind: &'static str,
}

/// The verbs the source needs on every watched resource, and no more.
pub const VERBS: [&str; 3] = ["get", "list", "watch"];

/// Every resource the Kubernetes source watches.
pub const WATCHED: &[Watched] = &[
    Watched { group: "", version: "v1", resource: "pods", kind: "Pod" },
    Watched { group: "", version: "v1", resource: "namespaces", kind: "Namespace" },
    Watched { group: "", version: "v1", resource: "services", kind: "Service" },
    Watched { group: "", version: "v1", resource: "nodes", kind: "Node" },
    Watched { group: "discovery.k8s.io", version: "v1", resource: "endpointslices", kind: "EndpointSlice" },
    Watched { group: "networking.k8s.io", version: "v1", resource: "networkpolicies", kind: "NetworkPolicy" },
];

pub mod cni;
mod source;
pub mod translate;

/// The Kubernetes API types (1.32) the source and the lab's translation
/// share.
pub use k8s_openapi;

pub use source::{
    Applying, Connection, KindStatus, Source, SourceConfig, SourceError, SourceStatus, StatusHandle, client, run_applying, start,
};
