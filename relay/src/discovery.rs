//! Learning the cluster's collectors from the Peer service
//! (`--peer-service`), as Hubble Relay does: the relay calls
//! `peer.Peer/Notify` on a collector (in a cluster, through a Service in
//! front of every node's agent) and keeps its peers as the stream says:
//! `PEER_ADDED` and `PEER_UPDATED` add or replace a peer, `PEER_DELETED`
//! removes it.
//!
//! When the stream fails or ends, the relay keeps the peers it knows (they
//! are likely still there; the relay's followers go on with them) and calls
//! again with back-off, from [`RETRY_START`] doubling up to the retry
//! timeout. A new stream replays every peer, which replaces or confirms
//! what is known. The Peer service has no end-of-replay marker: the peers
//! named within [`REPLAY_WINDOW`] of a stream's first notification are
//! taken as the whole cluster, and the known peers it did not name are
//! dropped ([`reconcile`]). A collector whose view of the cluster is not
//! complete yet (its Kubernetes source has not listed the Nodes) answers
//! nothing until it is, so a replay is never a partial one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sightline_proto::peer::peer_client::PeerClient;
use sightline_proto::peer::{ChangeNotification, ChangeNotificationType, NotifyRequest};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::server::{Peer, Relay};

/// Hubble's port for a collector's gRPC API, for addresses that name none.
pub const DEFAULT_PORT: u16 = 4244;
/// The first wait before the Peer service is called again.
pub const RETRY_START: Duration = Duration::from_secs(1);
/// How long after a new stream's first notification its replay is taken
/// to be complete.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(2);

/// The state of discovery, for `/readyz` and logs.
#[derive(Clone, Debug, Default)]
pub struct DiscoveryStatus {
    connected: Arc<AtomicBool>,
    streams: Arc<AtomicU64>,
    notifications: Arc<AtomicU64>,
}

impl DiscoveryStatus {
    /// Whether a Notify stream is open now.
    #[must_use]
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Notify streams opened so far.
    #[must_use]
    pub fn streams(&self) -> u64 {
        self.streams.load(Ordering::Relaxed)
    }

    /// Notifications received so far.
    #[must_use]
    pub fn notifications(&self) -> u64 {
        self.notifications.load(Ordering::Relaxed)
    }
}

/// A collector's gRPC address as the relay dials it: `host:port`, with
/// [`DEFAULT_PORT`] when the notification names no port. `None` for what
/// is not a TCP address (a `unix://` socket, an empty string).
#[must_use]
pub fn peer_address(address: &str) -> Option<String> {
    let a = address.trim();
    if a.is_empty() || a.contains("://") || a.contains('/') {
        return None;
    }
    if a.parse::<std::net::SocketAddr>().is_ok() {
        return Some(a.to_owned());
    }
    if let Ok(ip) = a.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
        return Some(std::net::SocketAddr::new(ip, DEFAULT_PORT).to_string());
    }
    match a.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => port.parse::<u16>().ok().map(|_| a.to_owned()),
        Some(_) => None,
        None => Some(format!("{a}:{DEFAULT_PORT}")),
    }
}

/// Applies one notification to the relay's peers; what it did, for logs.
pub fn apply(relay: &Relay, note: &ChangeNotification) -> Result<&'static str, String> {
    if note.name.is_empty() {
        return Err(format!("a notification without a node name (address {:?})", note.address));
    }
    match ChangeNotificationType::try_from(note.r#type) {
        Ok(ChangeNotificationType::PeerAdded | ChangeNotificationType::PeerUpdated) => {
            let address = peer_address(&note.address)
                .ok_or_else(|| format!("node {}: {:?} is not an address the relay can dial", note.name, note.address))?;
            let server_name = note.tls.as_ref().map(|t| t.server_name.as_str()).filter(|n| !n.is_empty());
            let changed = relay
                .upsert_peer(Peer { name: note.name.clone(), address }, server_name)
                .map_err(|e| e.to_string())?;
            Ok(if changed { "added or updated" } else { "unchanged" })
        }
        Ok(ChangeNotificationType::PeerDeleted) => Ok(if relay.remove_peer(&note.name) { "removed" } else { "unknown" }),
        Ok(ChangeNotificationType::Unknown) | Err(_) => Err(format!("node {}: unknown change type {}", note.name, note.r#type)),
    }
}

/// Follows the Peer service on `channel` until `stop` turns true, keeping
/// `relay`'s peers as it says.
pub async fn run(relay: Relay, channel: Channel, retry_max: Duration, status: DiscoveryStatus, mut stop: watch::Receiver<bool>) {
    let mut backoff = RETRY_START;
    loop {
        if *stop.borrow() {
            return;
        }
        let mut client = PeerClient::new(channel.clone());
        let opened = tokio::select! {
            r = client.notify(NotifyRequest {}) => r,
            _ = stop.changed() => return,
        };
        match opened {
            Ok(response) => {
                status.connected.store(true, Ordering::Relaxed);
                status.streams.fetch_add(1, Ordering::Relaxed);
                log::info!("discovery: following the Peer service");
                let why = follow(&relay, response.into_inner(), &status, &mut stop).await;
                status.connected.store(false, Ordering::Relaxed);
                match why {
                    Some(why) => log::warn!("discovery: the Peer service stream ended ({why}); the known peers stay"),
                    None => return,
                }
                backoff = RETRY_START;
            }
            Err(e) => log::warn!("discovery: the Peer service cannot be reached: {e}"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(retry_max.max(RETRY_START));
    }
}

/// Reads one Notify stream; `None` when stopped, else why it ended.
async fn follow(
    relay: &Relay,
    mut stream: tonic::Streaming<ChangeNotification>,
    status: &DiscoveryStatus,
    stop: &mut watch::Receiver<bool>,
) -> Option<String> {
    // The replay: the peers named within the window of the first
    // notification are the whole set; the others are gone.
    let mut replayed: Option<BTreeSet<String>> = Some(BTreeSet::new());
    // Armed by the first notification.
    let window = tokio::time::sleep(REPLAY_WINDOW);
    tokio::pin!(window);
    let mut window_armed = false;
    loop {
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(note)) => {
                    status.notifications.fetch_add(1, Ordering::Relaxed);
                    if !window_armed {
                        window.as_mut().reset(tokio::time::Instant::now() + REPLAY_WINDOW);
                        window_armed = true;
                    }
                    if let Some(seen) = replayed.as_mut() {
                        if note.r#type == ChangeNotificationType::PeerDeleted as i32 {
                            seen.remove(&note.name);
                        } else {
                            seen.insert(note.name.clone());
                        }
                    }
                    match apply(relay, &note) {
                        Ok(what) => log::info!("discovery: peer {} at {}: {what}", note.name, note.address),
                        Err(e) => log::warn!("discovery: {e}"),
                    }
                }
                Ok(None) => return Some("the Peer service closed it".to_owned()),
                Err(status) => return Some(status.message().to_owned()),
            },
            () = &mut window, if window_armed && replayed.is_some() => {
                if let Some(seen) = replayed.take() {
                    reconcile(relay, &seen);
                }
            }
            _ = stop.changed() => return None,
        }
    }
}

/// Drops the peers a complete replay did not name.
pub fn reconcile(relay: &Relay, replayed: &BTreeSet<String>) {
    for peer in relay.peers().iter() {
        if !replayed.contains(&peer.peer.name) && relay.remove_peer(&peer.peer.name) {
            log::info!("discovery: peer {} was not replayed by the Peer service: removed", peer.peer.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_hubbles_port_when_they_name_none() {
        assert_eq!(peer_address("10.0.0.1:4244").as_deref(), Some("10.0.0.1:4244"));
        assert_eq!(peer_address("10.0.0.1").as_deref(), Some("10.0.0.1:4244"));
        assert_eq!(peer_address("fd00::1").as_deref(), Some("[fd00::1]:4244"));
        assert_eq!(peer_address("[fd00::1]").as_deref(), Some("[fd00::1]:4244"));
        assert_eq!(peer_address("[fd00::1]:5000").as_deref(), Some("[fd00::1]:5000"));
        assert_eq!(peer_address("node-1.example:4244").as_deref(), Some("node-1.example:4244"));
        assert_eq!(peer_address("node-1.example").as_deref(), Some("node-1.example:4244"));
        for bad in ["", "unix:///var/run/cilium/hubble.sock", "host:port", "a/b:1", "host:99999"] {
            assert_eq!(peer_address(bad), None, "{bad:?}");
        }
    }
}
