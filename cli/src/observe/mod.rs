//! `sightline observe`, `sightline status`, `sightline list nodes|namespaces`:
//! a client of the Hubble-compatible flow API (`observer.Observer`), meant to
//! be used the way `hubble observe` is.
//!
//! - [`args`]: the command line (filter flags keep their order for `--not`);
//! - [`filters`]: filter flags → `FlowFilter` whitelist and blacklist, with
//!   hubble's semantics (symmetric flags make two filters, `--not` negates
//!   the next flag, namespaces apply to pods and services);
//! - [`request`]: selectors and checks → `GetFlowsRequest`;
//! - [`time`]: `--since`/`--until` and timestamp printing;
//! - [`client`]: address, TLS, timeouts, and errors that say what to do;
//! - [`printer`], [`json`], [`status`]: output;
//! - [`agent_events`]: `observe agent-events`.
//!
//! Every argument is checked before anything is sent; any failure is an
//! error (exit status 1) that names the flag or the server address. The
//! server is `--server`, else the collector of the lab named by `--lab`
//! (`sightline_lab::cluster::default_server`), else `localhost:4245`.
//!
//! This module reads flows; it never changes the lab or the datapath.

mod agent_events;
mod args;
mod client;
mod connection;
mod filters;
use sightline_flow::json;
mod printer;
mod request;
mod status;
mod time;

use std::io::{self, IsTerminal as _, Write};
use std::time::SystemTime;

use anyhow::Context as _;
use sightline_proto::observer::{GetNamespacesRequest, GetNodesRequest, ServerStatusRequest};

use args::{ColorWhen, ListArgs, StatusOutput};
pub use args::{ListCommand, ObserveArgs, StatusArgs};
pub use client::lab_channel;
pub use printer::{PrintOptions, Printer};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")
}

/// Whether `--color` means colours on a stream that is (or not) a terminal.
fn use_color(when: ColorWhen, is_terminal: bool) -> bool {
    match when {
        ColorWhen::Always => true,
        ColorWhen::Never => false,
        ColorWhen::Auto => {
            is_terminal
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::env::var("TERM").map_or(true, |t| t != "dumb")
        }
    }
}

/// `sightline observe`: prints flows until the selection is exhausted (or,
/// with `--follow`, until Ctrl-C).
pub fn observe(args: ObserveArgs) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let is_terminal = stdout.is_terminal();
    let out = io::BufWriter::new(stdout.lock());
    if let Some(events) = &args.agent_events {
        return runtime()?.block_on(agent_events::run(events, SystemTime::now(), out, async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }));
    }
    let err = io::stderr().lock();
    runtime()?.block_on(observe_with(&args, SystemTime::now(), out, err, is_terminal, async {
        // If the handler cannot be installed, Ctrl-C still ends the process.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }))
}

fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

/// The next item of a server stream: `None` at its end, once `cancel` has
/// fired (Ctrl-C), or when the server cancelled the stream.
async fn next_item<T>(
    stream: &mut tonic::Streaming<T>,
    cancel: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<T>, tonic::Status> {
    match next_or_cancel(stream, cancel).await {
        Next::Item(item) => Ok(Some(item)),
        Next::Cancelled | Next::End => Ok(None),
        Next::Failed(status) => Err(status),
    }
}

/// What came next on a stream.
enum Next<T> {
    Item(T),
    /// `cancel` fired (Ctrl-C).
    Cancelled,
    /// The server ended the stream (or cancelled it).
    End,
    Failed(tonic::Status),
}

async fn next_or_cancel<T>(stream: &mut tonic::Streaming<T>, cancel: std::pin::Pin<&mut impl Future<Output = ()>>) -> Next<T> {
    tokio::select! {
        biased;
        () = cancel => Next::Cancelled,
        next = stream.message() => match next {
            Ok(Some(item)) => Next::Item(item),
            Ok(None) => Next::End,
            Err(status) if status.code() == tonic::Code::Cancelled => Next::End,
            Err(status) => Next::Failed(status),
        },
    }
}

/// The first wait before `observe --follow` reconnects to a server it lost.
const RECONNECT_START: std::time::Duration = std::time::Duration::from_millis(500);
/// The longest wait between two tries.
const RECONNECT_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether a failed follow stream is worth opening again: the server went
/// away or broke, rather than refused what was asked.
fn worth_retrying(status: &tonic::Status) -> bool {
    use tonic::Code;
    !matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
    )
}

/// The request that resumes a follow stream: every flow `since` the last
/// one printed (that instant again: at worst a duplicate, never a gap), or,
/// before any, since what the first request asked for or the moment it was
/// made.
fn resume_request(
    first: &sightline_proto::observer::GetFlowsRequest,
    last: Option<prost_types::Timestamp>,
    opened_at: prost_types::Timestamp,
) -> sightline_proto::observer::GetFlowsRequest {
    let since = last.or(first.since).or(Some(opened_at));
    sightline_proto::observer::GetFlowsRequest { number: 0, first: false, since, ..first.clone() }
}

async fn observe_with<O: Write, E: Write>(
    args: &ObserveArgs,
    now: SystemTime,
    mut out: O,
    err: E,
    is_terminal: bool,
    cancel: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let opts = &args.opts;
    let req = request::build(opts, &args.filters, now)?;
    if opts.print_raw_filters {
        let text = request::raw_filters_text(&req)?;
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Err(e) if !is_broken_pipe(&e) => return Err(e).context("writing to stdout"),
            _ => return Ok(()),
        }
    }
    let print_opts = PrintOptions {
        format: opts.output,
        color: use_color(opts.color, is_terminal),
        time_format: opts.time_format,
        node_name: opts.print_node_name,
        policy_names: opts.print_policy_names,
        counters: opts.print_counters,
        ip_translation: !opts.numeric,
    };
    let follow = req.follow;
    let conn = client::connect(&opts.conn).await?;
    log::debug!("GetFlows {req:?} to {}", conn.addr);
    let mut rpc = conn.client.clone();
    let opened_at = time::system_time_to_timestamp(SystemTime::now());
    // No --request-timeout here: a server may hold the stream's headers
    // until the first flow matches (grpc-go does), as long as it likes.
    let mut stream = rpc
        .get_flows(req.clone())
        .await
        .map_err(|status| client::ClientError::Rpc { addr: conn.label.clone(), what: "GetFlows", status })?
        .into_inner();
    let mut printer = Printer::new(print_opts, out, err);
    let mut cancel = std::pin::pin!(cancel);
    // The time of the last flow printed: a follow stream that is lost
    // resumes from there.
    let mut last: Option<prost_types::Timestamp> = None;
    loop {
        let lost = match next_or_cancel(&mut stream, cancel.as_mut()).await {
            Next::Item(resp) => {
                if let Some(sightline_proto::observer::get_flows_response::ResponseTypes::Flow(_)) = &resp.response_types
                    && resp.time.is_some()
                {
                    last = resp.time;
                }
                let written = printer.write(&resp).and_then(|()| if follow { printer.finish() } else { Ok(()) });
                match written {
                    Ok(()) => continue,
                    Err(e) if is_broken_pipe(&e) => return Ok(()),
                    Err(e) => return Err(e).context("writing flows"),
                }
            }
            Next::Cancelled => break,
            Next::End if !follow || req.until.is_some() => break,
            Next::End => "the server ended the stream".to_owned(),
            Next::Failed(status) if follow && worth_retrying(&status) => status.message().to_owned(),
            Next::Failed(status) => {
                // Print what arrived before the error, then report it.
                let _ = printer.finish();
                return Err(client::ClientError::Rpc { addr: conn.label.clone(), what: "GetFlows", status }.into());
            }
        };
        // A follower carries on: the same request again, from the last
        // flow, with back-off, until the server answers or Ctrl-C.
        let _ = printer.note(&format!("lost the flow API at {} ({lost}); reconnecting", conn.label));
        let mut backoff = RECONNECT_START;
        stream = loop {
            tokio::select! {
                biased;
                () = cancel.as_mut() => return finish(&mut printer),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RECONNECT_MAX);
            let again = resume_request(&req, last, opened_at);
            let opened = tokio::select! {
                biased;
                () = cancel.as_mut() => return finish(&mut printer),
                r = rpc.get_flows(again) => r,
            };
            match opened {
                Ok(response) => {
                    let _ = printer.note(&format!("reconnected to the flow API at {}", conn.label));
                    break response.into_inner();
                }
                Err(status) if worth_retrying(&status) => log::debug!("reconnecting to {}: {status}", conn.label),
                Err(status) => {
                    let _ = printer.finish();
                    return Err(client::ClientError::Rpc { addr: conn.label.clone(), what: "GetFlows", status }.into());
                }
            }
        };
    }
    finish(&mut printer)
}

/// Writes what the printer holds; a reader that went away is no error.
fn finish<O: Write, E: Write>(printer: &mut Printer<O, E>) -> anyhow::Result<()> {
    match printer.finish() {
        Err(e) if !is_broken_pipe(&e) => Err(e).context("writing flows"),
        _ => Ok(()),
    }
}

/// `sightline status`: the server's flow counts, rate, uptime and nodes.
pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    runtime()?.block_on(status_with(&args, &mut out))
}

async fn status_with(args: &StatusArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let conn = client::connect(&args.conn).await?;
    let mut rpc = conn.client.clone();
    let resp = conn.call("ServerStatus", rpc.server_status(ServerStatusRequest {})).await?;
    let text = match args.output {
        StatusOutput::Compact => status::status_text(&conn.addr, &resp),
        StatusOutput::Json => pretty(&json::to_json(&resp)?)?,
    };
    write_out(out, &text)
}

/// `sightline list nodes|namespaces`.
pub fn list(cmd: ListCommand) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    runtime()?.block_on(list_with(&cmd, &mut out))
}

async fn list_with(cmd: &ListCommand, out: &mut impl Write) -> anyhow::Result<()> {
    let (ListCommand::Nodes(ListArgs { output, conn }) | ListCommand::Namespaces(ListArgs { output, conn })) = cmd;
    let conn = client::connect(conn).await?;
    let mut rpc = conn.client.clone();
    let text = match cmd {
        ListCommand::Nodes(_) => {
            let resp = conn.call("GetNodes", rpc.get_nodes(GetNodesRequest {})).await?;
            match output {
                StatusOutput::Compact => status::nodes_table(&resp),
                StatusOutput::Json => pretty(&json::to_json(&resp)?)?,
            }
        }
        ListCommand::Namespaces(_) => {
            let resp = conn.call("GetNamespaces", rpc.get_namespaces(GetNamespacesRequest {})).await?;
            match output {
                StatusOutput::Compact => status::namespaces_table(&resp),
                StatusOutput::Json => pretty(&json::to_json(&resp)?)?,
            }
        }
    };
    write_out(out, &text)
}

fn pretty(json_line: &str) -> anyhow::Result<String> {
    let v: serde_json::Value = serde_json::from_str(json_line).context("re-reading our own JSON")?;
    Ok(serde_json::to_string_pretty(&v)? + "\n")
}

fn write_out(out: &mut impl Write, text: &str) -> anyhow::Result<()> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if !is_broken_pipe(&e) => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    //! The whole client against a tiny in-process Observer server on
    //! 127.0.0.1 that serves canned flows.

    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, UNIX_EPOCH};

    use prost_types::Timestamp;
    use sightline_proto::flow::{
        CiliumEventType, Endpoint, Flow, FlowFilter, Ip, Layer4, LostEvent, LostEventSource, Tcp, TcpFlags, Verdict,
        layer4,
    };
    use sightline_proto::observer::observer_server::{Observer, ObserverServer};
    use sightline_proto::observer::{
        GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse, GetFlowsRequest,
        GetFlowsResponse, GetNamespacesResponse, GetNodesResponse, Namespace, Node, ServerStatusResponse,
        get_flows_response::ResponseTypes,
    };
    use sightline_proto::relay::NodeState;
    use tokio_stream::{Stream, StreamExt as _};
    use tonic::{Request, Response, Status};

    use super::*;

    type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

    #[derive(Clone, Default)]
    struct Fake {
        flows: Vec<GetFlowsResponse>,
        requests: Arc<Mutex<Vec<GetFlowsRequest>>>,
        fail_with: Option<Status>,
    }

    #[tonic::async_trait]
    impl Observer for Fake {
        type GetFlowsStream = BoxStream<GetFlowsResponse>;
        type GetAgentEventsStream = BoxStream<GetAgentEventsResponse>;
        type GetDebugEventsStream = BoxStream<GetDebugEventsResponse>;

        async fn get_flows(&self, req: Request<GetFlowsRequest>) -> Result<Response<Self::GetFlowsStream>, Status> {
            let req = req.into_inner();
            self.requests.lock().expect("lock").push(req.clone());
            if let Some(status) = &self.fail_with {
                return Err(status.clone());
            }
            let n = usize::try_from(req.number).unwrap_or(usize::MAX);
            let all = self.flows.clone();
            let picked: Vec<_> = if let Some(since) = req.since {
                let key = |t: &Timestamp| (t.seconds, t.nanos);
                all.into_iter().filter(|f| f.time.as_ref().is_some_and(|t| key(t) >= key(&since))).collect()
            } else if req.first {
                all.into_iter().take(n).collect()
            } else {
                let skip = all.len().saturating_sub(n);
                all.into_iter().skip(skip).collect()
            };
            let backlog = tokio_stream::iter(picked.into_iter().map(Ok));
            if req.follow {
                Ok(Response::new(Box::pin(backlog.chain(tokio_stream::pending()))))
            } else {
                Ok(Response::new(Box::pin(backlog)))
            }
        }

        async fn get_agent_events(
            &self,
            _: Request<GetAgentEventsRequest>,
        ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
            Err(Status::unimplemented("no agent events"))
        }

        async fn get_debug_events(
            &self,
            _: Request<GetDebugEventsRequest>,
        ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
            Err(Status::unimplemented("no debug events"))
        }

        async fn get_nodes(&self, _: Request<GetNodesRequest>) -> Result<Response<GetNodesResponse>, Status> {
            Ok(Response::new(GetNodesResponse {
                nodes: vec![Node {
                    name: "node-1".into(),
                    state: NodeState::NodeConnected as i32,
                    uptime_ns: 10_000_000_000,
                    num_flows: 3,
                    max_flows: 4095,
                    seen_flows: 50,
                    ..Node::default()
                }],
            }))
        }

        async fn get_namespaces(
            &self,
            _: Request<GetNamespacesRequest>,
        ) -> Result<Response<GetNamespacesResponse>, Status> {
            Ok(Response::new(GetNamespacesResponse {
                namespaces: vec![Namespace { cluster: String::new(), namespace: "x".into() }],
            }))
        }

        async fn server_status(
            &self,
            _: Request<ServerStatusRequest>,
        ) -> Result<Response<ServerStatusResponse>, Status> {
            Ok(Response::new(ServerStatusResponse {
                num_flows: 3,
                max_flows: 4095,
                seen_flows: 50,
                uptime_ns: 10_000_000_000,
                num_connected_nodes: Some(1),
                num_unavailable_nodes: Some(0),
                version: "test".into(),
                ..ServerStatusResponse::default()
            }))
        }
    }

    fn flow(i: u32, verdict: Verdict) -> GetFlowsResponse {
        #[expect(deprecated, reason = "hubble servers fill Summary")]
        let f = Flow {
            time: Some(Timestamp { seconds: 1_732_617_596 + i64::from(i), nanos: 0 }),
            verdict: verdict as i32,
            ip: Some(Ip { source: "10.244.1.2".into(), destination: "10.244.1.3".into(), ..Ip::default() }),
            l4: Some(Layer4 {
                protocol: Some(layer4::Protocol::Tcp(Tcp {
                    source_port: 40000 + i,
                    destination_port: 80,
                    flags: Some(TcpFlags { syn: true, ..TcpFlags::default() }),
                })),
            }),
            source: Some(Endpoint {
                identity: 256,
                namespace: "x".into(),
                pod_name: "a".into(),
                ..Endpoint::default()
            }),
            destination: Some(Endpoint {
                identity: 257,
                namespace: "x".into(),
                pod_name: "b".into(),
                ..Endpoint::default()
            }),
            node_name: "node-1".into(),
            event_type: Some(CiliumEventType { r#type: 4, sub_type: 0 }),
            is_reply: Some(false),
            summary: "TCP Flags: SYN".into(),
            ..Flow::default()
        };
        GetFlowsResponse { node_name: "node-1".into(), time: f.time, response_types: Some(ResponseTypes::Flow(f)) }
    }

    fn canned() -> Vec<GetFlowsResponse> {
        let mut v = vec![flow(0, Verdict::Forwarded), flow(1, Verdict::Dropped)];
        v.push(GetFlowsResponse {
            node_name: "node-1".into(),
            time: None,
            response_types: Some(ResponseTypes::LostEvents(LostEvent {
                source: LostEventSource::HubbleRingBuffer as i32,
                num_events_lost: 12,
                cpu: Some(0),
                first: None,
                last: None,
            })),
        });
        v.push(flow(2, Verdict::Forwarded));
        v
    }

    async fn serve(fake: Fake) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ObserverServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    /// An address nothing listens on.
    /// A loopback address that refuses connections: a socket bound to it
    /// and never listening, held (returned) so that no other test's
    /// server can take the port meanwhile.
    async fn dead_addr() -> (SocketAddr, tokio::net::TcpSocket) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.1:0".parse().expect("address")).expect("bind loopback");
        (socket.local_addr().expect("local addr"), socket)
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_732_617_600)
    }

    async fn run(args: &[&str], cancel_after: Option<Duration>) -> (anyhow::Result<()>, String, String) {
        let parsed = args::tests::parse(args).expect("arguments parse");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let cancel = async move {
            match cancel_after {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let result = observe_with(&parsed, now(), &mut out, &mut err, false, cancel).await;
        (result, String::from_utf8(out).expect("utf-8"), String::from_utf8(err).expect("utf-8"))
    }

    #[tokio::test]
    async fn observe_prints_the_last_flows() {
        let fake = Fake { flows: canned(), ..Fake::default() };
        let requests = fake.requests.clone();
        let addr = serve(fake).await.to_string();
        let (result, out, _) = run(&["--server", &addr, "--last", "3", "--to-pod", "x/b"], None).await;
        result.expect("observe succeeds");
        assert_eq!(
            out,
            "Nov 26 10:39:57.000: x/a:40001 (ID:256) -> x/b:80 (ID:257) to-endpoint DROPPED (TCP Flags: SYN)\n\
             EVENTS LOST: HUBBLE_RING_BUFFER CPU(0) 12\n\
             Nov 26 10:39:58.000: x/a:40002 (ID:256) -> x/b:80 (ID:257) to-endpoint FORWARDED (TCP Flags: SYN)\n"
        );
        let seen = requests.lock().expect("lock").clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].number, 3);
        assert!(!seen[0].follow && !seen[0].first);
        assert_eq!(
            seen[0].whitelist,
            vec![FlowFilter { destination_pod: vec!["x/b".into()], ..FlowFilter::default() }]
        );
    }

    #[tokio::test]
    async fn observe_sends_default_count_and_since() {
        let fake = Fake { flows: canned(), ..Fake::default() };
        let requests = fake.requests.clone();
        let addr = serve(fake).await.to_string();
        run(&["--server", &addr], None).await.0.expect("observe succeeds");
        run(&["--server", &addr, "--since", "1m", "--not", "--verdict", "DROPPED"], None)
            .await
            .0
            .expect("observe succeeds");
        let seen = requests.lock().expect("lock").clone();
        assert_eq!(seen[0].number, 20);
        assert_eq!(seen[1].number, 0);
        assert_eq!(seen[1].since, Some(Timestamp { seconds: 1_732_617_540, nanos: 0 }));
        assert_eq!(seen[1].blacklist, vec![FlowFilter { verdict: vec![2], ..FlowFilter::default() }]);
    }

    #[tokio::test]
    async fn observe_json_and_dict() {
        let addr = serve(Fake { flows: canned(), ..Fake::default() }).await.to_string();
        let (result, out, _) = run(&["--server", &addr, "--first", "2", "-o", "json"], None).await;
        result.expect("observe succeeds");
        let lines: Vec<serde_json::Value> =
            out.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["flow"]["verdict"], "FORWARDED");
        assert_eq!(lines[1]["flow"]["verdict"], "DROPPED");
        assert_eq!(lines[1]["flow"]["l4"]["TCP"]["source_port"], 40001);
        assert_eq!(lines[1]["time"], "2024-11-26T10:39:57Z");

        let (result, out, _) = run(&["--server", &addr, "--first", "1", "-o", "dict"], None).await;
        result.expect("observe succeeds");
        assert_eq!(
            out,
            "  TIMESTAMP: Nov 26 10:39:56.000\n     SOURCE: x/a:40000\nDESTINATION: x/b:80\n       TYPE: to-endpoint\n    VERDICT: FORWARDED\n    SUMMARY: TCP Flags: SYN\n"
        );
    }

    #[tokio::test]
    async fn observe_follow_streams_until_cancelled() {
        let addr = serve(Fake { flows: canned(), ..Fake::default() }).await.to_string();
        let (result, out, _) = run(&["--server", &addr, "-f", "--last", "1"], Some(Duration::from_millis(300))).await;
        result.expect("cancelled follow is a success");
        assert_eq!(
            out,
            "Nov 26 10:39:58.000: x/a:40002 (ID:256) -> x/b:80 (ID:257) to-endpoint FORWARDED (TCP Flags: SYN)\n"
        );
    }

    #[tokio::test]
    async fn server_errors_are_reported() {
        let fake = Fake { fail_with: Some(Status::invalid_argument("bad filter")), ..Fake::default() };
        let addr = serve(fake).await.to_string();
        let (result, _, _) = run(&["--server", &addr], None).await;
        let msg = format!("{:#}", result.expect_err("must fail"));
        assert_eq!(msg, format!("GetFlows at {addr} failed: bad filter (InvalidArgument)"));
    }

    #[tokio::test]
    async fn unreachable_server_names_the_address_and_the_fix() {
        let (addr, _held) = dead_addr().await;
        let addr = addr.to_string();
        let (result, out, _) = run(&["--server", &addr, "--timeout", "2s"], None).await;
        let msg = format!("{:#}", result.expect_err("must fail"));
        assert!(msg.starts_with(&format!("cannot reach the flow API at {addr}: ")), "{msg}");
        assert!(msg.contains("sightline lab up"), "{msg}");
        assert_eq!(out, "");

        let args = StatusArgs {
            output: StatusOutput::Compact,
            conn: args::tests::parse(&["--server", &addr]).expect("parses").opts.conn,
        };
        let msg = format!("{:#}", status_with(&args, &mut Vec::new()).await.expect_err("must fail"));
        assert!(msg.contains(&addr) && msg.contains("sightline lab up"), "{msg}");
    }

    #[tokio::test]
    async fn bad_values_fail_before_connecting() {
        let (addr, _held) = dead_addr().await;
        let addr = addr.to_string();
        let (result, _, _) = run(&["--server", &addr, "--to-port", "70000"], None).await;
        assert_eq!(format!("{:#}", result.expect_err("must fail")), "--to-port \"70000\": a port is 0 to 65535");
        let (result, _, _) = run(&["--server", &addr, "--first", "1", "-f"], None).await;
        assert!(format!("{:#}", result.expect_err("must fail")).starts_with("--first and --follow cannot be combined"));
        let (result, _, _) = run(&["--server", &addr, "--tls-server-name", "x"], None).await;
        assert_eq!(
            format!("{:#}", result.expect_err("must fail")),
            "the --tls-* flags need --tls (or an https:// server)"
        );
        let (result, _, _) =
            run(&["--server", &addr, "--tls", "--tls-ca-cert-files", "/nonexistent/ca.pem"], None).await;
        assert!(
            format!("{:#}", result.expect_err("must fail"))
                .starts_with("reading the CA file /nonexistent/ca.pem")
        );
    }

    #[tokio::test]
    async fn print_raw_filters_does_not_connect() {
        let (addr, _held) = dead_addr().await;
        let addr = addr.to_string();
        let (result, out, _) = run(&["--server", &addr, "--from-pod", "x/a", "--print-raw-filters"], None).await;
        result.expect("no connection needed");
        assert_eq!(out, "allowlist:\n    - '{\"source_pod\":[\"x/a\"]}'\n");
    }

    #[tokio::test]
    async fn status_and_lists() {
        let addr = serve(Fake::default()).await.to_string();
        let conn = args::tests::parse(&["--server", &addr]).expect("parses").opts.conn;
        let mut out = Vec::new();
        status_with(&StatusArgs { output: StatusOutput::Compact, conn: conn.clone() }, &mut out).await.expect("status");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            format!(
                "Healthcheck (via {addr}): Ok\nCurrent/Max Flows: 3/4,095 (0.07%)\nFlows/s: 5.00\nConnected Nodes: 1/1\nUptime: 10s\nVersion: test\n"
            )
        );
        let mut out = Vec::new();
        status_with(&StatusArgs { output: StatusOutput::Json, conn: conn.clone() }, &mut out).await.expect("status");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(v["num_flows"], "3");
        assert_eq!(v["num_connected_nodes"], 1);

        let mut out = Vec::new();
        list_with(&ListCommand::Nodes(ListArgs { output: StatusOutput::Compact, conn: conn.clone() }), &mut out)
            .await
            .expect("list nodes");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "NAME     STATUS      AGE   FLOWS/S   CURRENT/MAX-FLOWS\nnode-1   Connected   10s   5.00      3/4,095 (0.07%)\n"
        );
        let mut out = Vec::new();
        list_with(&ListCommand::Namespaces(ListArgs { output: StatusOutput::Compact, conn }), &mut out)
            .await
            .expect("list namespaces");
        assert_eq!(String::from_utf8(out).expect("utf-8"), "NAMESPACE\nx\n");
    }

    /// A CA and a server certificate for `sightline.test`, made with the
    /// `openssl` command; `None` (and the test is skipped) without it.
    fn make_certs() -> Option<std::path::PathBuf> {
        let dir = std::env::temp_dir().join(format!(
            "sightline-observe-tls-{}-{}",
            std::process::id(),
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).ok()?;
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:sightline.test\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .ok()?;
        let steps: &[&[&str]] = &[
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=sightline-test-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=sightline.test",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "1",
                "-extfile",
                "ext.cnf",
            ],
        ];
        for step in steps {
            let ok = std::process::Command::new("openssl")
                .args(*step)
                .current_dir(&dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = std::fs::remove_dir_all(&dir);
                return None;
            }
        }
        Some(dir)
    }

    #[tokio::test]
    #[cfg_attr(not(sightline_openssl), ignore = "needs the openssl command to make test certificates")]
    async fn tls_with_a_private_ca() {
        let dir = make_certs().expect("test certificates made with openssl");
        let read = |name: &str| std::fs::read(dir.join(name)).expect("certificate file");
        let identity = tonic::transport::Identity::from_pem(read("server.pem"), read("server.key"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr").to_string();
        let server = tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .expect("server TLS")
            .add_service(ObserverServer::new(Fake { flows: canned(), ..Fake::default() }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);

        let ca = dir.join("ca.pem").display().to_string();
        let (result, out, _) = run(
            &[
                "--server",
                &addr,
                "--tls",
                "--tls-ca-cert-files",
                &ca,
                "--tls-server-name",
                "sightline.test",
                "--last",
                "1",
            ],
            None,
        )
        .await;
        result.expect("TLS observe succeeds");
        assert!(out.ends_with("FORWARDED (TCP Flags: SYN)\n"), "{out}");

        // The wrong name, or no CA that knows the server: refused.
        let (result, _, _) = run(
            &[
                "--server",
                &addr,
                "--tls",
                "--tls-ca-cert-files",
                &ca,
                "--tls-server-name",
                "other.test",
                "--timeout",
                "2s",
            ],
            None,
        )
        .await;
        let msg = format!("{:#}", result.expect_err("wrong name must fail"));
        assert!(msg.contains(&addr), "{msg}");
        let (result, _, _) = run(&["--server", &format!("https://{addr}"), "--timeout", "2s"], None).await;
        assert!(result.is_err(), "an unknown CA must fail");
        // Plain text to a TLS server fails too, with the address named.
        let (result, _, _) = run(&["--server", &addr, "--timeout", "2s"], None).await;
        let msg = format!("{:#}", result.expect_err("plain text to TLS must fail"));
        assert!(msg.contains(&addr), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Output shared with the test while `observe` writes it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
        }
    }

    /// A server on a runtime of its own: stopping it closes every
    /// connection at once, as a `kill -9` would.
    struct ServerProcess(Option<tokio::runtime::Runtime>);

    impl ServerProcess {
        fn start(fake: Fake, addr: SocketAddr) -> Self {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let listener = loop {
                match std::net::TcpListener::bind(addr) {
                    Ok(l) => break l,
                    Err(e) => {
                        assert!(std::time::Instant::now() < deadline, "binding {addr} again: {e}");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            };
            listener.set_nonblocking(true).expect("non-blocking");
            let listener = {
                let _in = runtime.enter();
                tokio::net::TcpListener::from_std(listener).expect("listener")
            };
            runtime.spawn(
                tonic::transport::Server::builder()
                    .add_service(ObserverServer::new(fake))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            );
            Self(Some(runtime))
        }
    }

    impl Drop for ServerProcess {
        fn drop(&mut self) {
            if let Some(rt) = self.0.take() {
                rt.shutdown_background();
            }
        }
    }

    async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !ok() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follow_reconnects_to_a_server_that_comes_back_and_resumes_since_the_last_flow() {
        // A free port, for the server to take (and take again).
        let (addr, held) = dead_addr().await;
        drop(held);
        let first = Fake { flows: vec![flow(0, Verdict::Forwarded), flow(1, Verdict::Forwarded)], ..Fake::default() };
        let server = ServerProcess::start(first.clone(), addr);
        let (out, err) = (Shared::default(), Shared::default());
        let parsed = args::tests::parse(&["--server", &addr.to_string(), "-f", "--last", "5", "-o", "json"]).expect("arguments parse");
        let (o, e) = (out.clone(), err.clone());
        let second = Fake { flows: vec![flow(0, Verdict::Forwarded), flow(1, Verdict::Dropped), flow(2, Verdict::Forwarded)], ..Fake::default() };
        let second_requests = second.requests.clone();
        let control = async move {
            let line = |i: u32| format!("\"source_port\":{}", 40000 + i);
            wait_for("the first two flows", || o.text().contains(&line(1))).await;
            // The server dies; a new one comes on the same port.
            drop(server);
            wait_for("the loss reported", || e.text().contains("lost the flow API")).await;
            let _again = ServerProcess::start(second, addr);
            wait_for("the flows after the restart", || o.text().contains(&line(2))).await;
        };
        let result = observe_with(&parsed, SystemTime::now(), out.clone(), err.clone(), false, control).await;
        result.expect("a follower survives its server's restart");
        let text = out.text();
        let ports: Vec<u64> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON")["flow"]["l4"]["TCP"]["source_port"].as_u64().expect("port"))
            .collect();
        // Resumed since the last flow printed: that one again, then the new one.
        assert_eq!(ports, [40000, 40001, 40001, 40002], "{text}");
        assert!(err.text().contains("reconnected to the flow API"), "{}", err.text());
        let resumed = second_requests.lock().expect("lock").last().cloned().expect("a request");
        assert_eq!((resumed.number, resumed.follow), (0, true));
        assert_eq!(resumed.since, flow(1, Verdict::Forwarded).time);
    }

    #[test]
    fn only_failures_of_the_server_are_retried() {
        assert!(worth_retrying(&Status::unavailable("gone")));
        assert!(worth_retrying(&Status::unknown("h2 protocol error")));
        assert!(!worth_retrying(&Status::invalid_argument("bad filter")));
        assert!(!worth_retrying(&Status::unimplemented("no")));
        let first = sightline_proto::observer::GetFlowsRequest { number: 20, follow: true, ..Default::default() };
        let opened = Timestamp { seconds: 100, nanos: 0 };
        let last = Timestamp { seconds: 90, nanos: 5 };
        let r = resume_request(&first, None, opened);
        assert_eq!((r.number, r.since, r.follow), (0, Some(opened), true));
        assert_eq!(resume_request(&first, Some(last), opened).since, Some(last));
        let with_since = sightline_proto::observer::GetFlowsRequest { since: Some(Timestamp { seconds: 5, nanos: 0 }), ..first };
        assert_eq!(resume_request(&with_since, None, opened).since, Some(Timestamp { seconds: 5, nanos: 0 }));
    }

    #[test]
    fn colour_choice() {
        assert!(use_color(ColorWhen::Always, false));
        assert!(!use_color(ColorWhen::Never, true));
        assert!(!use_color(ColorWhen::Auto, false));
    }
}
