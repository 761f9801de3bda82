//! The Sightline collector: the node agent.
//!
//! It puts the eBPF probes (embedded in this crate by `build.rs`) into the
//! kernel — or adopts the ones a previous collector left pinned under
//! `/sys/fs/bpf/sightline/<lab>/<node>`, where they outlive it — programs
//! endpoints, identities and the ipcache from a node's desired state,
//! drains the ring buffer, and decodes events into typed records.
//!
//! Modules follow the stages of a packet's record: `loader` (kernel objects:
//! install, adopt, replace, uninstall), `pins` (the pinned layout and the
//! decision between those), `datapath` (desired state → map entries),
//! `decoder` (bytes → records), `agent` (the running process: consumer, gc,
//! control socket), `control` (the control socket's protocol and client),
//! `guard` (what the control socket lets in),
//! `btf` (kernel layouts for the kfree_skb probe), `netns` (running code
//! inside a network namespace).
//!
//! It must not know where desired state comes from (the lab, Kubernetes):
//! that is the caller's business; it receives a [`state::NodeState`].

pub mod agent;
pub mod agent_metrics;
pub mod batch;
pub mod bench;
pub mod btf;
pub mod control;
pub mod datapath;
pub mod decoder;
pub mod export;
pub mod flow;
pub mod gateway;
pub mod guard;
pub mod hashing;
pub mod kubernetes;
pub mod kvstore;
pub mod loader;
pub mod metadata;
pub mod metrics;
pub mod netns;
pub mod observer;
pub mod pins;
pub mod policy;
pub mod registry;
pub mod state;
pub mod testrun;
