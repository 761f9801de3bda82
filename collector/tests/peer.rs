//! `peer.Peer/Notify` on an in-process server (no root, no datapath): a
//! real gRPC client hears every collector of the directory as added, then
//! the differences as the directory changes (Hubble's replay-then-diff).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use sightline_collector::flow::Store;
use sightline_collector::observer::peers::{self, Announced};
use sightline_collector::observer::{ObserverState, serve};
use sightline_proto::peer::peer_client::PeerClient;
use sightline_proto::peer::{ChangeNotification, ChangeNotificationType, NotifyRequest};
use tokio_stream::StreamExt as _;

async fn next(stream: &mut tonic::Streaming<ChangeNotification>) -> (String, String, ChangeNotificationType) {
    let note = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a notification in time")
        .expect("the stream went on")
        .expect("a notification, not an error");
    (note.name, note.address, ChangeNotificationType::try_from(note.r#type).expect("a known type"))
}

#[tokio::test]
async fn notify_replays_the_directory_then_streams_its_changes() {
    use ChangeNotificationType::{PeerAdded, PeerDeleted, PeerUpdated};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address: SocketAddr = listener.local_addr().expect("address");
    let state = Arc::new(ObserverState::new("node-1".into(), address, Arc::new(Store::new(63).expect("store"))));
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(Arc::clone(&state), listener, None, async move {
        let _ = stopped.await;
    }));
    let mut client = PeerClient::connect(format!("http://{address}")).await.expect("connect");

    // Alone: itself.
    let mut stream = client.notify(NotifyRequest {}).await.expect("Notify").into_inner();
    assert_eq!(next(&mut stream).await, ("node-1".into(), address.to_string(), PeerAdded));

    // The cluster's nodes arrive (the Kubernetes source): node-1 moves to
    // its node address, node-2 and node-3 join.
    let nodes: BTreeMap<String, IpAddr> = [
        ("node-1".to_owned(), "10.224.0.4".parse().unwrap()),
        ("node-2".to_owned(), "10.224.0.5".parse().unwrap()),
        ("node-3".to_owned(), "10.224.0.6".parse().unwrap()),
    ]
    .into();
    state.announce(peers::from_nodes(&nodes, 4244, false, "default"));
    assert_eq!(next(&mut stream).await, ("node-1".into(), "10.224.0.4:4244".into(), PeerUpdated));
    assert_eq!(next(&mut stream).await, ("node-2".into(), "10.224.0.5:4244".into(), PeerAdded));
    assert_eq!(next(&mut stream).await, ("node-3".into(), "10.224.0.6:4244".into(), PeerAdded));

    // A node leaves.
    let mut fewer = state.announced().expect("a directory");
    fewer.remove("node-2");
    state.announce(fewer.clone());
    assert_eq!(next(&mut stream).await, ("node-2".into(), "10.224.0.5:4244".into(), PeerDeleted));

    // The same directory again: nothing to say.
    state.announce(fewer.clone());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next()).await.is_err(),
        "an unchanged directory was announced again"
    );

    // While the cluster's view is awaited, a new subscriber hears nothing;
    // then the whole directory.
    state.await_cluster();
    let mut waiting = client.notify(NotifyRequest {}).await.expect("Notify").into_inner();
    assert!(tokio::time::timeout(Duration::from_millis(300), waiting.next()).await.is_err(), "a replay before the cluster was known");
    state.announce(fewer.clone());
    assert_eq!(next(&mut waiting).await, ("node-1".into(), "10.224.0.4:4244".into(), PeerAdded));
    assert_eq!(next(&mut waiting).await, ("node-3".into(), "10.224.0.6:4244".into(), PeerAdded));
    assert!(tokio::time::timeout(Duration::from_millis(300), stream.next()).await.is_err(), "the first subscriber heard a change");

    // A new subscriber hears the directory as it is now.
    let mut late = client.notify(NotifyRequest {}).await.expect("Notify").into_inner();
    assert_eq!(next(&mut late).await, ("node-1".into(), "10.224.0.4:4244".into(), PeerAdded));
    assert_eq!(next(&mut late).await, ("node-3".into(), "10.224.0.6:4244".into(), PeerAdded));
    let tls = Announced { address: "10.224.0.6:4244".into(), tls_server_name: Some("node-3.default.hubble-grpc.cilium.io".into()) };
    state.announce([("node-3".to_owned(), tls)].into());
    assert_eq!(next(&mut late).await.2, PeerDeleted);
    let updated = tokio::time::timeout(Duration::from_secs(10), late.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(updated.r#type, PeerUpdated as i32);
    assert_eq!(updated.tls.map(|t| t.server_name), Some("node-3.default.hubble-grpc.cilium.io".to_owned()));
}
