//! `sightline lab`: a local cluster made of network namespaces, running the
//! real datapath from ordinary Kubernetes manifests (`../shared/spec/lab.md`
//! is the contract: commands, output and exit codes).
//!
//! `manifest` parses and validates objects, `cluster` keeps the lab's state
//! and changes the world, `network` plans the addresses of each network model, `topology` makes
//! namespaces, veths and routes, `responder`
//! answers inside pods, `probe` measures reachability, `status` and `events`
//! report, `pki` makes the lab's CA and certificates, `supervisor` restarts
//! collectors and the relay that exit.

pub mod cluster;
pub mod cni;
#[cfg(test)]
mod differential;
pub mod events;
pub mod manifest;
pub mod network;
pub mod pki;
pub mod probe;
pub mod responder;
pub mod status;
pub mod supervisor;
pub mod topology;
pub mod types;
