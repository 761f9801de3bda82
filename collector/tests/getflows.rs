//! `GetFlows` on an in-process server (no root, no datapath): the collector's own Observer
//! service over a store filled by the test, reached over loopback by a real gRPC client.
//! number, first, since/until, follow, filters, field masks and lost events.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use sightline_collector::flow::record::{PodMeta, Side};
use sightline_collector::flow::{Flow, Store};
use sightline_collector::observer::{ObserverState, serve};
use sightline_proto::flow::{FlowFilter, LostEventSource};
use sightline_proto::observer::get_flows_response::ResponseTypes;
use sightline_proto::observer::observer_client::ObserverClient;
use sightline_proto::observer::{GetFlowsRequest, GetFlowsResponse};
use tokio_stream::StreamExt as _;

const BASE_NS: i64 = 1_764_000_000_000_000_000;

fn side(ns: &str, pod: &str, last: u8, port: u16) -> Side {
    Side {
        ip: IpAddr::V4(Ipv4Addr::new(10, 244, 1, last)),
        port,
        identity: 256 + u32::from(last),
        pod: Some(Arc::new(PodMeta {
            namespace: ns.into(),
            name: pod.into(),
            endpoint_id: u16::from(last),
            identity: 256 + u32::from(last),
            labels: Arc::from(vec![format!("k8s:app={pod}")]),
            node: "node-1".into(),
        })),
        identity_labels: None,
    }
}

/// Flow `i`: at BASE + i seconds, x/a:(40000+i) → y/b:80 (odd i: to z/c:53 over UDP), forwarded.
fn flow(i: u64) -> Flow {
    let udp = i % 2 == 1;
    Flow {
        time_ns: BASE_NS + i as i64 * 1_000_000_000,
        seq: i,
        source: side("x", "a", 2, 40_000 + i as u16),
        destination: if udp { side("z", "c", 4, 53) } else { side("y", "b", 3, 80) },
        verdict: 1,
        drop_reason: 0,
        kernel_drop_reason: 0,
        kernel_drop_reason_name: None,
        event_type: 4,
        event_sub_type: 0,
        trace_observation_point: 101,
        trace_reason: 1,
        is_reply: Some(false),
        traffic_direction: 2,
        policy_match_type: 0,
        protocol: if udp { 17 } else { 6 },
        tcp_flags: if udp { 0 } else { 0x02 },
        icmp_type: 0,
        icmp_code: 0,
        ip_version: 4,
        ifindex: 7,
        interface: Some(Arc::from("lxc00002")),
        allowed_by: None,
        denied_by: None,
        counters: [1, 60, 0, 0],
        source_service: None,
        destination_service: None,
        source_xlated: None,
    }
}

struct Server {
    state: Arc<ObserverState>,
    store: Arc<Store>,
    client: ObserverClient<tonic::transport::Channel>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A server whose store (capacity `capacity`) holds flows 0..n.
async fn server(capacity: usize, n: u64) -> Server {
    let store = Arc::new(Store::new(capacity).expect("store"));
    for i in 0..n {
        store.push(flow(i));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address: SocketAddr = listener.local_addr().expect("address");
    let state = Arc::new(ObserverState::new("node-1".into(), address, Arc::clone(&store)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(Arc::clone(&state), listener, None, async move {
        let _ = stopped.await;
    }));
    let client = ObserverClient::connect(format!("http://{address}")).await.expect("connect");
    Server { state, store, client, _stop: stop }
}

/// Every response of a finished (non-follow) request.
async fn all(s: &mut Server, req: GetFlowsRequest) -> Vec<GetFlowsResponse> {
    let mut stream = s.client.get_flows(req).await.expect("GetFlows").into_inner();
    let mut out = Vec::new();
    while let Some(r) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("the stream ended in time") {
        out.push(r.expect("a response"));
    }
    out
}

/// The source ports (= 40000 + flow index) of the flows among `responses`.
fn indices(responses: &[GetFlowsResponse]) -> Vec<u64> {
    responses
        .iter()
        .filter_map(|r| match &r.response_types {
            Some(ResponseTypes::Flow(f)) => Some(f),
            _ => None,
        })
        .map(|f| {
            let l4 = f.l4.as_ref().and_then(|l| l.protocol.as_ref()).expect("l4");
            let port = match l4 {
                sightline_proto::flow::layer4::Protocol::Tcp(t) => t.source_port,
                sightline_proto::flow::layer4::Protocol::Udp(u) => u.source_port,
                _ => panic!("unexpected protocol"),
            };
            u64::from(port) - 40_000
        })
        .collect()
}

fn ts(i: i64) -> prost_types::Timestamp {
    let ns = BASE_NS + i * 1_000_000_000;
    prost_types::Timestamp { seconds: ns / 1_000_000_000, nanos: (ns % 1_000_000_000) as i32 }
}

#[tokio::test]
async fn number_gives_the_last_flows_oldest_first_and_first_the_oldest() {
    let mut s = server(127, 10).await;
    assert_eq!(indices(&all(&mut s, GetFlowsRequest { number: 3, ..Default::default() }).await), [7, 8, 9]);
    assert_eq!(indices(&all(&mut s, GetFlowsRequest { number: 3, first: true, ..Default::default() }).await), [0, 1, 2]);
    // No number: everything the store holds.
    assert_eq!(indices(&all(&mut s, GetFlowsRequest::default()).await), (0..10).collect::<Vec<_>>());
    // More than there is: what there is.
    assert_eq!(indices(&all(&mut s, GetFlowsRequest { number: 100, ..Default::default() }).await).len(), 10);
    let r = &all(&mut s, GetFlowsRequest { number: 1, ..Default::default() }).await[0];
    assert_eq!(r.node_name, "node-1");
    assert_eq!(r.time, Some(ts(9)));
}

#[tokio::test]
async fn since_and_until_bound_the_flows_by_time_inclusively() {
    let mut s = server(127, 10).await;
    let got = all(&mut s, GetFlowsRequest { since: Some(ts(3)), until: Some(ts(6)), ..Default::default() }).await;
    assert_eq!(indices(&got), [3, 4, 5, 6]);
    assert_eq!(indices(&all(&mut s, GetFlowsRequest { since: Some(ts(8)), ..Default::default() }).await), [8, 9]);
    assert_eq!(indices(&all(&mut s, GetFlowsRequest { until: Some(ts(1)), ..Default::default() }).await), [0, 1]);
    // Bad combinations are refused with a reason, not answered.
    for bad in [
        GetFlowsRequest { since: Some(ts(6)), until: Some(ts(3)), ..Default::default() },
        GetFlowsRequest { number: 2, since: Some(ts(3)), ..Default::default() },
        GetFlowsRequest { first: true, follow: true, ..Default::default() },
    ] {
        let err = s.client.get_flows(bad.clone()).await.expect_err(&format!("{bad:?} was accepted"));
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(!err.message().is_empty());
    }
}

#[tokio::test]
async fn filters_select_and_exclude_and_bad_filters_are_refused() {
    let mut s = server(127, 10).await;
    let to_b = FlowFilter { destination_pod: vec!["y/b".into()], ..Default::default() };
    let got = all(&mut s, GetFlowsRequest { whitelist: vec![to_b.clone()], ..Default::default() }).await;
    assert_eq!(indices(&got), [0, 2, 4, 6, 8], "flows to y/b are the even ones");
    let udp = FlowFilter { protocol: vec!["udp".into()], ..Default::default() };
    let got = all(&mut s, GetFlowsRequest { blacklist: vec![udp], ..Default::default() }).await;
    assert_eq!(indices(&got), [0, 2, 4, 6, 8], "excluding UDP leaves the TCP ones");
    // number counts matching flows only.
    let got = all(&mut s, GetFlowsRequest { number: 2, whitelist: vec![to_b], ..Default::default() }).await;
    assert_eq!(indices(&got), [6, 8]);
    let bad = FlowFilter { source_ip: vec!["not-an-ip".into()], ..Default::default() };
    let err = s.client.get_flows(GetFlowsRequest { whitelist: vec![bad], ..Default::default() }).await.expect_err("a bad filter");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
}

#[tokio::test]
async fn a_field_mask_sends_only_the_asked_fields() {
    let mut s = server(127, 4).await;
    let mask = prost_types::FieldMask { paths: vec!["time".into(), "source.pod_name".into(), "verdict".into()] };
    let got = all(&mut s, GetFlowsRequest { number: 1, field_mask: Some(mask), ..Default::default() }).await;
    let Some(ResponseTypes::Flow(f)) = &got[0].response_types else { panic!("not a flow: {got:?}") };
    assert_eq!(f.time, Some(ts(3)));
    assert_eq!(f.source.as_ref().map(|s| s.pod_name.as_str()), Some("a"));
    assert_eq!(f.source.as_ref().map(|s| s.namespace.as_str()), Some(""), "source.namespace was not asked for");
    assert_eq!(f.verdict, 1);
    assert!(f.destination.is_none() && f.l4.is_none() && f.ip.is_none(), "fields outside the mask were sent: {f:?}");
    let bad = prost_types::FieldMask { paths: vec!["no_such_field".into()] };
    let err = s.client.get_flows(GetFlowsRequest { field_mask: Some(bad), ..Default::default() }).await.expect_err("a bad mask");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
}

#[tokio::test]
async fn follow_sends_the_backlog_then_new_flows_and_kernel_losses() {
    let mut s = server(127, 5).await;
    let mut stream = s
        .client
        .get_flows(GetFlowsRequest { number: 2, follow: true, ..Default::default() })
        .await
        .expect("GetFlows")
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("a response in time").expect("open").expect("ok")
    };
    assert_eq!(indices(&[next().await, next().await]), [3, 4]);
    s.store.push(flow(5));
    assert_eq!(indices(&[next().await]), [5]);
    // The kernel ring buffer lost 7 events on CPU 1: the follower hears of it.
    s.state.report_ring_losses(&[0, 7]);
    let r = next().await;
    let Some(ResponseTypes::LostEvents(lost)) = r.response_types else { panic!("not a lost event: {r:?}") };
    assert_eq!((lost.source, lost.num_events_lost, lost.cpu), (LostEventSource::PerfEventRingBuffer as i32, 7, Some(1)));
    s.store.push(flow(6));
    assert_eq!(indices(&[next().await]), [6]);
}

#[tokio::test]
async fn a_request_reads_what_the_store_still_holds_without_a_false_loss() {
    // Capacity 3: of 10 flows only the last 3 remain. A request reads those; what was
    // overwritten before it began is history the store no longer holds, not a loss.
    let mut s = server(3, 10).await;
    let got = all(&mut s, GetFlowsRequest::default()).await;
    assert_eq!(indices(&got), [7, 8, 9]);
    let lost: u64 = got
        .iter()
        .filter_map(|r| match &r.response_types {
            Some(ResponseTypes::LostEvents(l)) if l.source == LostEventSource::HubbleRingBuffer as i32 => Some(l.num_events_lost),
            _ => None,
        })
        .sum();
    assert_eq!(lost, 0, "flows evicted before the request began are history, not losses: {got:?}");
}
