//! Flows through the collector's gRPC API (Hubble's observer.Observer):
//! fields of allowed and denied connections, filters, time ranges, follow,
//! field masks, lost events, bad requests.

use std::time::Duration;

use sightline_e2e::{Lab, require_root, sightline, write_temp, xyz_manifests};
use sightline_proto::flow::{self as pb, FlowFilter};
use sightline_proto::observer::observer_client::ObserverClient;
use sightline_proto::observer::{GetFlowsRequest, get_flows_response::ResponseTypes};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn grpc_address(lab: &Lab) -> String {
    let status = lab.status();
    status["nodes"][0]["collector"]["grpc"].as_str().expect("the collector serves gRPC").to_owned()
}

/// A client of node-1's collector, with the lab's TLS files.
async fn client(lab: &Lab) -> ObserverClient<Channel> {
    ObserverClient::new(lab.grpc().channel(&grpc_address(lab)).await)
}

/// Flows of a request that does not follow.
async fn flows(c: &mut ObserverClient<Channel>, req: GetFlowsRequest) -> Vec<pb::Flow> {
    let mut stream = c.get_flows(req).await.expect("GetFlows").into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.next().await {
        if let Some(ResponseTypes::Flow(f)) = r.expect("response").response_types {
            out.push(f);
        }
    }
    out
}

fn pods(from: &str, to: &str) -> FlowFilter {
    FlowFilter { source_pod: vec![from.into()], destination_pod: vec![to.into()], ..FlowFilter::default() }
}

fn apply(lab: &Lab, file: &str, manifest: &str) {
    let path = write_temp(file, manifest);
    let out = sightline(&["lab", "apply", "--name", &lab.name, "-f", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

const DENY_81: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-80, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - ports: [{port: 80}]\n";

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn allowed_and_denied_flows_field_by_field() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-flows", &xyz_manifests(), &[]);
    apply(&lab, "only-80.yaml", DENY_81);
    assert!(lab.probe("x/a", "x/b", 80, "TCP"));
    assert!(!lab.probe("x/a", "x/b", 81, "TCP"));
    // Both connections in the flow store before it is read.
    let between = ["--from-pod", "x/a", "--to-pod", "x/b"];
    lab.wait_flows("the allowed connection's flows", &[&between[..], &["--to-port", "80", "--verdict", "FORWARDED"]].concat(), |f| !f.is_empty());
    lab.wait_flows("the denied connection's drops", &[&between[..], &["--to-port", "81", "--verdict", "DROPPED"]].concat(), |f| !f.is_empty());
    let (ip_a, ip_b) = (lab.pod_ip("x/a"), lab.pod_ip("x/b"));
    let (id_a, id_b) = (lab.pod_identity("x/a") as u32, lab.pod_identity("x/b") as u32);

    rt().block_on(async {
        let mut c = client(&lab).await;
        let all = flows(&mut c, GetFlowsRequest { number: 1000, whitelist: vec![pods("x/a", "x/b")], ..Default::default() }).await;
        assert!(!all.is_empty());
        // The SYN of the allowed connection, delivered to b.
        let syn = all
            .iter()
            .find(|f| {
                f.trace_observation_point == pb::TraceObservationPoint::ToEndpoint as i32
                    && matches!(&f.l4, Some(pb::Layer4 { protocol: Some(pb::layer4::Protocol::Tcp(t)) }) if t.destination_port == 80 && t.flags.as_ref().is_some_and(|fl| fl.syn && !fl.ack))
            })
            .expect("to-endpoint SYN to x/b:80");
        assert_eq!(syn.verdict, pb::Verdict::Forwarded as i32);
        assert_eq!(syn.r#type, pb::FlowType::L3L4 as i32);
        assert_eq!(syn.node_name, "node-1");
        assert!(syn.time.is_some() && !syn.uuid.is_empty());
        let ip = syn.ip.as_ref().unwrap();
        assert_eq!((ip.source.as_str(), ip.destination.as_str()), (ip_a.as_str(), ip_b.as_str()));
        assert_eq!(ip.ip_version, pb::IpVersion::IPv4 as i32);
        let src = syn.source.as_ref().unwrap();
        assert_eq!((src.namespace.as_str(), src.pod_name.as_str(), src.identity), ("x", "a", id_a));
        assert!(src.labels.contains(&"k8s:pod=a".to_owned()), "{:?}", src.labels);
        assert!(src.labels.contains(&"k8s:io.kubernetes.pod.namespace=x".to_owned()));
        assert!(src.id > 0);
        let dst = syn.destination.as_ref().unwrap();
        assert_eq!((dst.namespace.as_str(), dst.pod_name.as_str(), dst.identity), ("x", "b", id_b));
        assert_eq!(syn.event_type.as_ref().unwrap().r#type, 4);
        assert_eq!(syn.trace_reason, pb::TraceReason::New as i32);
        assert_eq!(syn.is_reply, Some(false));
        assert!(syn.interface.as_ref().is_some_and(|i| i.name.starts_with("lxc") && i.index > 0));
        let counters = syn.extensions.as_ref().and_then(sightline_proto::FlowCounters::from_any).expect("counters");
        assert_eq!(counters.forward_packets, 1);

        // The ingress verdict of the allowed connection names its policy.
        let verdict = all
            .iter()
            .find(|f| f.event_type.as_ref().is_some_and(|e| e.r#type == 5) && f.traffic_direction == pb::TrafficDirection::Ingress as i32 && f.verdict == pb::Verdict::Forwarded as i32)
            .expect("ingress policy verdict");
        assert_eq!(verdict.policy_match_type, 3, "L4-only: the rule has ports and no peers");
        assert_eq!(verdict.ingress_allowed_by.iter().map(|p| (p.namespace.as_str(), p.name.as_str())).collect::<Vec<_>>(), [("x", "only-80")]);

        // The denied connection: DROPPED, POLICY_DENIED, denied by only-80.
        let denied = flows(
            &mut c,
            GetFlowsRequest {
                number: 100,
                whitelist: vec![FlowFilter { verdict: vec![pb::Verdict::Dropped as i32], destination_port: vec!["81".into()], ..pods("x/a", "x/b") }],
                ..Default::default()
            },
        )
        .await;
        assert!(!denied.is_empty(), "drops of a→b:81");
        for d in &denied {
            assert_eq!(d.verdict, pb::Verdict::Dropped as i32, "{d:?}");
            assert_eq!(d.drop_reason_desc, pb::DropReason::PolicyDenied as i32, "{d:?}");
            assert_eq!(d.traffic_direction, pb::TrafficDirection::Ingress as i32);
            assert_eq!(d.ingress_denied_by.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["only-80"]);
        }

        // Filters: whitelist OR, blacklist minus, each a different field.
        let only_drops = flows(&mut c, GetFlowsRequest { number: 1000, whitelist: vec![FlowFilter { event_type: vec![pb::EventTypeFilter { r#type: 1, match_sub_type: false, sub_type: 0 }], ..Default::default() }], ..Default::default() }).await;
        assert!(!only_drops.is_empty(), "the drops of a→b:81 pass the drop filter");
        assert!(only_drops.iter().all(|f| f.verdict == pb::Verdict::Dropped as i32));
        let not_tcp = flows(&mut c, GetFlowsRequest { number: 1000, blacklist: vec![FlowFilter { protocol: vec!["tcp".into()], ..Default::default() }], ..Default::default() }).await;
        assert!(not_tcp.iter().all(|f| !matches!(f.l4.as_ref().and_then(|l| l.protocol.as_ref()), Some(pb::layer4::Protocol::Tcp(_)))));
        let everything = flows(&mut c, GetFlowsRequest { number: 1000, ..Default::default() }).await;
        assert!(everything.len() > not_tcp.len(), "the TCP blacklist removed nothing ({} flows either way)", everything.len());
        let by_ip = flows(&mut c, GetFlowsRequest { number: 1000, whitelist: vec![FlowFilter { source_ip: vec![format!("{ip_b}/32")], ..Default::default() }], ..Default::default() }).await;
        assert!(!by_ip.is_empty() && by_ip.iter().all(|f| f.ip.as_ref().unwrap().source == ip_b));
        let by_label = flows(&mut c, GetFlowsRequest { number: 1000, whitelist: vec![FlowFilter { source_label: vec!["pod=a".into()], reply: vec![false], ..Default::default() }], ..Default::default() }).await;
        assert!(!by_label.is_empty() && by_label.iter().all(|f| f.source.as_ref().unwrap().pod_name == "a" && f.is_reply == Some(false)));
        let syn_only = flows(&mut c, GetFlowsRequest { number: 1000, whitelist: vec![FlowFilter { tcp_flags: vec![pb::TcpFlags { syn: true, ..Default::default() }], ..Default::default() }], ..Default::default() }).await;
        assert!(!syn_only.is_empty());
        assert!(
            syn_only.iter().all(|f| matches!(
                f.l4.as_ref().and_then(|l| l.protocol.as_ref()),
                Some(pb::layer4::Protocol::Tcp(t)) if t.flags.as_ref().is_some_and(|fl| fl.syn)
            )),
            "the SYN filter let through a flow without SYN"
        );
        let two = flows(&mut c, GetFlowsRequest { number: 2, ..Default::default() }).await;
        assert_eq!(two.len(), 2);
        let first = flows(&mut c, GetFlowsRequest { number: 1, first: true, ..Default::default() }).await;
        assert_eq!(first.len(), 1);
        assert!(first[0].time.unwrap().seconds <= two[0].time.unwrap().seconds);

        // since/until: a window in the future holds nothing; the past holds everything.
        let future = prost_types::Timestamp { seconds: 4_000_000_000, nanos: 0 };
        assert!(flows(&mut c, GetFlowsRequest { since: Some(future), ..Default::default() }).await.is_empty());
        let past = prost_types::Timestamp { seconds: 1_000_000_000, nanos: 0 };
        assert!(!flows(&mut c, GetFlowsRequest { since: Some(past), until: Some(future), ..Default::default() }).await.is_empty());

        // field_mask keeps only what is asked.
        let masked = flows(&mut c, GetFlowsRequest { number: 5, field_mask: Some(prost_types::FieldMask { paths: vec!["source.pod_name".into(), "verdict".into()] }), ..Default::default() }).await;
        assert_eq!(masked.len(), 5);
        for f in &masked {
            assert!(f.ip.is_none() && f.l4.is_none() && f.destination.is_none());
            assert!(f.source.as_ref().is_none_or(|s| s.namespace.is_empty() && s.labels.is_empty()));
        }

        // Agent events: started, endpoints created, the policy applied.
        let mut events = c
            .get_agent_events(sightline_proto::observer::GetAgentEventsRequest { number: 100, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        let mut types = Vec::new();
        while let Some(e) = events.next().await {
            types.push(e.unwrap().agent_event.unwrap().r#type);
        }
        assert!(types.contains(&(pb::AgentEventType::AgentStarted as i32)), "{types:?}");
        assert_eq!(types.iter().filter(|t| **t == pb::AgentEventType::EndpointCreated as i32).count(), 9);
        assert!(types.contains(&(pb::AgentEventType::PolicyUpdated as i32)));

        // Bad requests: INVALID_ARGUMENT with a reason.
        for (req, needle) in [
            (GetFlowsRequest { first: true, follow: true, ..Default::default() }, "follow"),
            (GetFlowsRequest { number: 3, since: Some(past), ..Default::default() }, "since"),
            (GetFlowsRequest { whitelist: vec![FlowFilter { source_ip: vec!["10.0.0.0/33".into()], ..Default::default() }], ..Default::default() }, "10.0.0.0/33"),
            (GetFlowsRequest { whitelist: vec![FlowFilter { source_label: vec!["a in (".into()], ..Default::default() }], ..Default::default() }, "a in ("),
            (GetFlowsRequest { field_mask: Some(prost_types::FieldMask { paths: vec!["source.nope".into()] }), ..Default::default() }, "source.nope"),
        ] {
            let err = c.get_flows(req).await.expect_err("a bad request is refused");
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
            assert!(err.message().contains(needle), "{needle}: {}", err.message());
        }
    });

    // `sightline observe` with a field mask: the server sends only those
    // fields; a bad path is refused before anything is sent.
    let out = sightline(&["observe", "--lab", &lab.name, "--last", "3", "-o", "jsonpb", "--experimental-field-mask", "time,verdict"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 3, "{text}");
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("jsonpb");
        let mut keys: Vec<&String> = v["flow"].as_object().expect("a flow").keys().collect();
        keys.sort();
        assert_eq!(keys, ["time", "verdict"], "{line}");
    }
    let out = sightline(&["observe", "--lab", &lab.name, "--experimental-field-mask", "time,verdikt"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"verdikt\""), "{}", String::from_utf8_lossy(&out.stderr));

    // `sightline observe agent-events`: the collector started, made the
    // endpoints, and took the policy.
    let out = sightline(&["observe", "agent-events", "--lab", &lab.name, "--all"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.lines().next().is_some_and(|l| l.contains("[node-1]: AGENT_STARTED")), "{text}");
    assert!(text.contains("ENDPOINT_CREATED") && text.contains("pod=x/a"), "{text}");
    assert!(text.contains("POLICY_UPDATED"), "{text}");
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn follow_receives_new_flows_and_a_stalled_client_sees_what_it_lost() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-follow", &xyz_manifests(), &["--aggregation", "none", "--flow-capacity", "63"]);
    let ip_b = lab.pod_ip("x/b");
    rt().block_on(async {
        let mut c = client(&lab).await;
        // A follower sees a connection made after it started.
        let mut stream = c
            .get_flows(GetFlowsRequest { follow: true, whitelist: vec![pods("y/c", "x/b")], ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(lab.probe("y/c", "x/b", 80, "TCP"));
        let got = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("a new flow arrives").unwrap().unwrap();
        assert!(matches!(got.response_types, Some(ResponseTypes::Flow(f)) if f.source.as_ref().unwrap().pod_name == "c"));

        // A follower that stops reading while far more than the store holds
        // goes by: when it reads again it is told how many it lost.
        let mut stalled = c.get_flows(GetFlowsRequest { follow: true, ..Default::default() }).await.unwrap().into_inner();
        let out = lab.exec("x/a", &["ping", "-f", "-c", "3000", "-q", &ip_b]);
        assert!(out.status.success());
        let mut lost = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while lost == 0 && tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(2), stalled.next()).await {
                Ok(Some(Ok(r))) => {
                    if let Some(ResponseTypes::LostEvents(l)) = r.response_types {
                        assert_eq!(l.source, pb::LostEventSource::HubbleRingBuffer as i32);
                        lost += l.num_events_lost;
                    }
                }
                _ => break,
            }
        }
        assert!(lost > 0, "a stalled follower is told about overwritten flows");

        // Other clients were not held up by it: a fresh request answers.
        let status = c.server_status(sightline_proto::observer::ServerStatusRequest {}).await.unwrap().into_inner();
        assert_eq!(status.max_flows, 63);
        assert!(status.seen_flows > 3000);
        assert_eq!(status.num_flows, 63);
    });
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn a_full_kernel_ring_buffer_is_reported_as_lost_events() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("e2e-ringloss", &xyz_manifests(), &["--aggregation", "none"]);
    let ip_b = lab.pod_ip("x/b");
    let pid = lab.status()["nodes"][0]["collector"]["pid"].as_u64().unwrap() as i32;
    rt().block_on(async {
        let mut c = client(&lab).await;
        let mut stream = c.get_flows(GetFlowsRequest { follow: true, whitelist: vec![pods("z/z", "z/z")], ..Default::default() }).await.unwrap().into_inner();
        // Pause the collector so nobody drains the ring buffer, and flood it.
        // SAFETY: signalling our own lab's collector.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let out = lab.exec("x/a", &["ping", "-f", "-c", "20000", "-q", &ip_b]);
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        assert!(out.status.success());
        let mut lost = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while lost == 0 && tokio::time::Instant::now() < deadline {
            if let Ok(Some(Ok(r))) = tokio::time::timeout(Duration::from_secs(3), stream.next()).await {
                // (flows and other losses are skipped)
                // The burst after the pause may also overwrite the store
                // under this reader (HUBBLE_RING_BUFFER); look for the
                // kernel's.
                if let Some(ResponseTypes::LostEvents(l)) = r.response_types {
                    if l.source == pb::LostEventSource::PerfEventRingBuffer as i32 {
                        assert!(l.cpu.is_some());
                        lost += l.num_events_lost;
                    }
                }
            }
        }
        assert!(lost > 0, "losses in the kernel ring buffer reach followers, unfiltered");
    });
}

