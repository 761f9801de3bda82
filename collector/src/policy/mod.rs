//! Kubernetes NetworkPolicy for the datapath: the model ([`model`]) and its compilation into
//! the `POLICY` and `POLICY_CIDR` map entries of a node's local endpoints ([`compiler`]).
//!
//! Nothing here touches the kernel: the compiler's output is a plan (plain data) that the
//! caller diffs and writes. Nothing here knows where policies come from either (the lab's
//! manifests, later the Kubernetes API).

pub mod compiler;
pub mod model;
