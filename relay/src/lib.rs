//! The Sightline relay: merges every node's flows into one cluster-wide
//! stream, served over the same `observer.Observer` API as a collector's
//! (Hubble Relay's role).
//!
//! - [`merge`]: the sort buffer that puts the nodes' items in time order;
//! - [`server`]: the Observer service (GetFlows merged; ServerStatus,
//!   GetNodes, GetNamespaces aggregated) and [`serve`].
//!
//! - [`discovery`]: the peers from the Peer service (`--peer-service`),
//!   as they join and leave;
//! - [`feed`]: the export feed, a permanent follow stream to every node
//!   handed to the exporters (`sightline-export`);
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`;
//! - [`auth`]: bearer tokens (Entra ID / OIDC) on the Observer API, and
//!   authorization by namespace.
//!
//! The relay speaks to collectors only over their public gRPC API; it must
//! not depend on the collector crate.
#![forbid(unsafe_code)]

pub mod auth;
pub mod discovery;
pub mod feed;
pub mod http;
pub mod merge;
pub mod server;

pub use server::{Config, Connected, Peer, PeerSet, Relay, RelayError, serve};

/// The relay's version, as `ServerStatus` reports it.
#[must_use]
pub fn version() -> String {
    format!("sightline-relay {}", env!("CARGO_PKG_VERSION"))
}
