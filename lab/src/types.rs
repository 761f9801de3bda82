//! Small types shared by the lab's modules.

/// A Kubernetes port protocol; defined with the NetworkPolicy model in the collector.
pub use sightline_collector::policy::model::Protocol;
