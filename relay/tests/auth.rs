//! The relay with bearer-token authentication against in-process fake
//! collectors (no root): keys discovered and fetched over HTTPS from an
//! OpenID Connect issuer stand-in; bad tokens refused with UNAUTHENTICATED
//! and the reason; scoped tokens see only their namespaces' flows and
//! namespaces; health stays open.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;
use serde_json::json;
use sightline_proto::flow::{Endpoint, Flow};
use sightline_proto::observer::observer_client::ObserverClient;
use sightline_proto::observer::observer_server::{Observer, ObserverServer};
use sightline_proto::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse, GetFlowsRequest,
    GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse, GetNodesRequest, GetNodesResponse, Namespace,
    ServerStatusRequest, ServerStatusResponse, get_flows_response::ResponseTypes,
};
use sightline_relay::auth::{AuthOptions, Authenticator};
use sightline_relay::{Config, Peer, Relay};
use sightline_standins::oidc::{OidcIssuer, SigningKey};
use sightline_standins::tls::TestCa;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// (time, source namespace, destination namespace) of the node's flows.
const FLOWS: [(i64, &str, &str); 4] = [(1, "shop", "db"), (2, "web", "shop"), (3, "web", "db"), (4, "payments", "payments")];

#[derive(Clone)]
struct Node;

fn endpoint(ns: &str) -> Option<Endpoint> {
    Some(Endpoint { namespace: ns.into(), pod_name: "p".into(), ..Endpoint::default() })
}

#[tonic::async_trait]
impl Observer for Node {
    type GetFlowsStream = BoxStream<GetFlowsResponse>;
    type GetAgentEventsStream = BoxStream<GetAgentEventsResponse>;
    type GetDebugEventsStream = BoxStream<GetDebugEventsResponse>;

    async fn get_flows(&self, request: Request<GetFlowsRequest>) -> Result<Response<Self::GetFlowsStream>, Status> {
        assert!(request.metadata().get("authorization").is_none(), "the relay must not pass the client's token on");
        let items: Vec<_> = FLOWS
            .iter()
            .map(|(t, src, dst)| {
                Ok(GetFlowsResponse {
                    response_types: Some(ResponseTypes::Flow(Flow {
                        node_name: "node-1".into(),
                        source: endpoint(src),
                        destination: endpoint(dst),
                        ..Flow::default()
                    })),
                    node_name: "node-1".into(),
                    time: Some(Timestamp { seconds: *t, nanos: 0 }),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn get_agent_events(&self, _: Request<GetAgentEventsRequest>) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::iter(Vec::new()))))
    }

    async fn get_debug_events(&self, _: Request<GetDebugEventsRequest>) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        Err(Status::unimplemented("no"))
    }

    async fn get_nodes(&self, _: Request<GetNodesRequest>) -> Result<Response<GetNodesResponse>, Status> {
        Err(Status::unimplemented("no"))
    }

    async fn get_namespaces(&self, _: Request<GetNamespacesRequest>) -> Result<Response<GetNamespacesResponse>, Status> {
        let namespaces = ["db", "payments", "shop", "web"]
            .iter()
            .map(|n| Namespace { cluster: "default".into(), namespace: (*n).into() })
            .collect();
        Ok(Response::new(GetNamespacesResponse { namespaces }))
    }

    async fn server_status(&self, _: Request<ServerStatusRequest>) -> Result<Response<ServerStatusResponse>, Status> {
        Ok(Response::new(ServerStatusResponse { version: "fake".into(), ..ServerStatusResponse::default() }))
    }
}

async fn start_node() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ObserverServer::new(Node))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

const AUD: &str = "api://sightline-relay";
const POLICY: &str = "roles:\n  Flows.All: ['*']\n  Flows.Shop: [shop]\ngroups:\n  payments-team: [payments]\n";

fn now() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("time").as_secs()).expect("seconds")
}

/// The flows' (source, destination) namespaces a token sees, or the error.
async fn flows_seen(relay: SocketAddr, token: Option<&str>) -> Result<Vec<(String, String)>, Status> {
    let mut c = ObserverClient::connect(format!("http://{relay}")).await.expect("connect");
    let mut req = Request::new(GetFlowsRequest::default());
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().expect("ascii"));
    }
    let mut stream = c.get_flows(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await? {
        if let Some(ResponseTypes::Flow(f)) = r.response_types {
            let ns = |e: Option<Endpoint>| e.map(|e| e.namespace).unwrap_or_default();
            out.push((ns(f.source), ns(f.destination)));
        }
    }
    Ok(out)
}

async fn namespaces_seen(relay: SocketAddr, token: &str) -> Result<Vec<String>, Status> {
    let mut c = ObserverClient::connect(format!("http://{relay}")).await.expect("connect");
    let mut req = Request::new(GetNamespacesRequest {});
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    Ok(c.get_namespaces(req).await?.into_inner().namespaces.into_iter().map(|n| n.namespace).collect())
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
}

#[tokio::test]
async fn tokens_are_checked_and_scoped_to_namespaces() {
    let ca = TestCa::new("issuer CA").expect("CA");
    let dir = std::env::temp_dir().join(format!("sightline-relay-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_file = ca.write_ca(&dir).expect("CA file");
    let policy = dir.join("namespaces.yaml");
    std::fs::write(&policy, POLICY).expect("policy");

    let key = SigningKey::rs256("2025-01", include_bytes!("../testdata/rsa-2048-a.pk8")).expect("key");
    let issuer = OidcIssuer::start(&ca, "tenant-1", vec![key.clone()]).await.expect("issuer");
    let auth = Authenticator::new(&AuthOptions {
        issuer: issuer.issuer(),
        audiences: vec![AUD.to_owned()],
        jwks_url: None,
        ca_file: Some(ca_file),
        namespaces_file: Some(policy),
    })
    .expect("authenticator");
    assert_eq!(auth.warm_up().await.expect("keys discovered and fetched over HTTPS"), 1);
    assert_eq!((issuer.discovery_fetches(), issuer.jwks_fetches()), (1, 1));

    let node = start_node().await;
    let mut config = Config::new("relay", vec![Peer { name: "node-1".into(), address: node.to_string() }]);
    config.drain_timeout = Duration::from_millis(50);
    let relay = Relay::with_auth(config, Some(Arc::new(auth))).expect("relay");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(sightline_relay::serve(relay, listener, None, std::future::pending()));

    let claims = |extra: serde_json::Value| {
        let mut c = json!({"iss": issuer.issuer(), "aud": AUD, "sub": "someone", "nbf": now() - 5, "exp": now() + 600});
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        c
    };
    let token = |extra: serde_json::Value| key.sign(&claims(extra)).expect("sign");

    // Refused, each with its reason.
    let refused = |r: Result<Vec<(String, String)>, Status>| {
        let e = r.expect_err("refused");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        e.message().to_owned()
    };
    assert!(refused(flows_seen(addr, None).await).contains("no bearer token"));
    assert!(refused(flows_seen(addr, Some(&token(json!({"exp": now() - 3600})))).await).contains("expired"));
    assert!(refused(flows_seen(addr, Some(&token(json!({"nbf": now() + 3600})))).await).contains("not valid yet"));
    assert!(refused(flows_seen(addr, Some(&token(json!({"aud": "api://other"})))).await).contains("audience"));
    assert!(refused(flows_seen(addr, Some(&token(json!({"iss": "https://login.example/v2.0"})))).await).contains("issuer"));
    let other = SigningKey::rs256("2025-01", include_bytes!("../testdata/rsa-2048-b.pk8")).expect("key");
    let forged = other.sign(&claims(json!({}))).expect("sign");
    assert!(refused(flows_seen(addr, Some(&forged)).await).contains("signature"));
    assert!(refused(flows_seen(addr, Some("garbage")).await).contains("malformed"));
    let mut c = ObserverClient::connect(format!("http://{addr}")).await.expect("connect");
    let e = c.server_status(ServerStatusRequest {}).await.expect_err("status needs a token too");
    assert_eq!(e.code(), Code::Unauthenticated);

    // Accepted: every flow for Flows.All, only the scoped ones otherwise.
    let all = flows_seen(addr, Some(&token(json!({"roles": ["Flows.All"]})))).await.expect("accepted");
    assert_eq!(all, pairs(&[("shop", "db"), ("web", "shop"), ("web", "db"), ("payments", "payments")]));
    let shop = token(json!({"roles": ["Flows.Shop"]}));
    assert_eq!(flows_seen(addr, Some(&shop)).await.expect("accepted"), pairs(&[("shop", "db"), ("web", "shop")]));
    assert_eq!(namespaces_seen(addr, &shop).await.expect("accepted"), ["shop"]);
    let payments = token(json!({"groups": ["payments-team"]}));
    assert_eq!(flows_seen(addr, Some(&payments)).await.expect("accepted"), pairs(&[("payments", "payments")]));
    let nobody = token(json!({"roles": ["Something.Else"]}));
    assert_eq!(flows_seen(addr, Some(&nobody)).await.expect("accepted"), Vec::new());
    assert_eq!(namespaces_seen(addr, &nobody).await.expect("accepted"), Vec::<String>::new());
    let mut req = Request::new(GetAgentEventsRequest::default());
    req.metadata_mut().insert("authorization", format!("Bearer {shop}").parse().expect("ascii"));
    let e = c.get_agent_events(req).await.expect_err("agent events are not scoped");
    assert_eq!(e.code(), Code::PermissionDenied);

    // Key rotation: a token with a new kid makes the relay fetch the keys
    // again (the first fetch was more than the minimum interval ago).
    tokio::time::sleep(Duration::from_secs(11)).await;
    let rotated = SigningKey::es256("2025-02").expect("key");
    issuer.publish(vec![key.clone(), rotated.clone()]);
    let t = rotated.sign(&claims(json!({"roles": ["Flows.All"]}))).expect("sign");
    assert_eq!(flows_seen(addr, Some(&t)).await.expect("the rotated key is fetched").len(), 4);
    assert_eq!(issuer.jwks_fetches(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn health_and_reflection_stay_open() {
    let ca = TestCa::new("issuer CA").expect("CA");
    let key = SigningKey::es256("k").expect("key");
    let issuer = OidcIssuer::start(&ca, "t", vec![key]).await.expect("issuer");
    let dir = std::env::temp_dir().join(format!("sightline-relay-auth-open-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let auth = Authenticator::new(&AuthOptions {
        issuer: issuer.issuer(),
        audiences: vec![AUD.to_owned()],
        jwks_url: Some(issuer.jwks_uri()),
        ca_file: Some(ca.write_ca(&dir).expect("CA file")),
        namespaces_file: None,
    })
    .expect("authenticator");
    let relay = Relay::with_auth(Config::new("relay", Vec::new()), Some(Arc::new(auth))).expect("relay");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(sightline_relay::serve(relay, listener, None, std::future::pending()));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest { service: "observer.Observer".into() })
        .await
        .expect("health needs no token");
    assert_eq!(r.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let _ = std::fs::remove_dir_all(&dir);
}
