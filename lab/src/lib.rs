//! The lab: a local cluster made of network namespaces, running the real
//! datapath from ordinary Kubernetes manifests (`../shared/spec/lab.md` is
//! the contract of `sightline lab`: commands, output and exit codes).
//!
//! A library so that the `sightline` command, tests and benchmarks drive
//! the same lab. `manifest` parses and validates objects and keeps the
//! lab's object store, `cluster` keeps the lab's state and changes the
//! world, `network` plans the addresses of each network model, `topology`
//! makes namespaces, veths and routes, `cni` plugs pods in with the CNI
//! plugin, `responder` answers inside pods, `probe` measures reachability,
//! `status` and `events` report, `pki` makes the lab's CA and certificates,
//! `supervisor` restarts collectors and the relay that exit, `programs`
//! finds the programs the lab runs.

pub mod cluster;
pub mod cni;
#[cfg(test)]
mod differential;
pub mod events;
pub mod manifest;
pub mod network;
pub mod pki;
pub mod probe;
pub mod programs;
pub mod responder;
pub mod sample;
pub mod status;
pub mod supervisor;
pub mod table;
pub mod topology;
pub mod types;
