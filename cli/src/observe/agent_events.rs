//! `sightline observe agent-events`: what the collectors themselves did
//! (started, policies updated, endpoints created or deleted), from
//! `GetAgentEvents`, like `hubble observe agent-events`.

use std::io::Write;
use std::time::SystemTime;

use anyhow::Context as _;
use sightline_proto::flow::{AgentEvent, AgentEventType, agent_event::Notification};
use sightline_proto::observer::{GetAgentEventsRequest, GetAgentEventsResponse};

use super::connection::ConnectionArgs;
use super::client;
use super::{is_broken_pipe, json, next_item};
use super::request::{DEFAULT_LAST, RequestError};
use super::time::{self, TimeFormat};

/// `observe agent-events` options.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentEventsArgs {
    /// Get the last N events (default 20 unless --follow, --since or --until).
    #[arg(long, value_name = "N")]
    pub last: Option<u64>,
    /// Get the first N events still in the server's buffer.
    #[arg(long, value_name = "N")]
    pub first: Option<u64>,
    /// Get every event still in the server's buffer.
    #[arg(long)]
    pub all: bool,
    /// Keep streaming new events.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Events since this time (3s, 5m, or 2024-11-26T10:39:56Z).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Events until this time.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "compact")]
    pub output: EventsFormat,
    /// Time format of the compact output (times are UTC).
    #[arg(long, value_enum, default_value = "StampMilli")]
    pub time_format: TimeFormat,
    #[command(flatten)]
    pub conn: ConnectionArgs,
}

/// `-o` of `observe agent-events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventsFormat {
    /// One line per event.
    Compact,
    /// GetAgentEventsResponse in proto3 JSON, one per line (alias of jsonpb).
    Json,
    /// GetAgentEventsResponse in proto3 JSON, one per line.
    Jsonpb,
}

/// The request, every argument checked.
pub fn request(args: &AgentEventsArgs, now: SystemTime) -> Result<GetAgentEventsRequest, RequestError> {
    let conflict = |a: &str, b: &str| RequestError::Selectors(format!("--{a} and --{b} cannot be combined"));
    let (first, last) = (args.first.filter(|n| *n > 0), args.last.filter(|n| *n > 0));
    if first.is_some() && last.is_some() {
        return Err(conflict("first", "last"));
    }
    if (first.is_some() || last.is_some()) && args.all {
        return Err(conflict(if first.is_some() { "first" } else { "last" }, "all"));
    }
    if first.is_some() && args.follow {
        return Err(conflict("first", "follow"));
    }
    if args.until.is_some() && args.follow {
        return Err(conflict("until", "follow"));
    }
    let parse = |flag: &'static str, value: &Option<String>| {
        value
            .as_deref()
            .map(|s| time::parse_time(s, now).map_err(|time| RequestError::Time { flag, time }))
            .transpose()
    };
    let (since, until) = (parse("since", &args.since)?, parse("until", &args.until)?);
    if let (Some(a), Some(b)) = (&since, &until)
        && time::timestamp_cmp(a, b).is_gt()
    {
        return Err(RequestError::EmptyRange);
    }
    let number = match first.or(last) {
        Some(n) => n,
        None if args.all => u64::MAX,
        None if args.follow || since.is_some() || until.is_some() => 0,
        None => DEFAULT_LAST,
    };
    Ok(GetAgentEventsRequest { number, first: first.is_some(), follow: args.follow, since, until })
}

/// One event as `TIME [NODE]: TYPE details`.
pub fn compact(resp: &GetAgentEventsResponse, format: TimeFormat) -> String {
    let event = resp.agent_event.clone().unwrap_or_default();
    let node = if resp.node_name.is_empty() { "unknown" } else { resp.node_name.as_str() };
    format!("{} [{node}]: {}", time::format_timestamp(resp.time.as_ref(), format), describe(&event))
}

fn describe(event: &AgentEvent) -> String {
    let kind = AgentEventType::try_from(event.r#type).map_or_else(|_| event.r#type.to_string(), |t| t.as_str_name().to_owned());
    let labels = |l: &[String]| if l.is_empty() { String::new() } else { format!(" labels={}", l.join(",")) };
    let error = |e: &str| if e.is_empty() { String::new() } else { format!(" error={e:?}") };
    let details = match &event.notification {
        Some(Notification::AgentStart(t)) => format!("start_time={}", time::format_timestamp(t.time.as_ref(), TimeFormat::Rfc3339)),
        Some(Notification::PolicyUpdate(p)) => format!("revision={} rule_count={}{}", p.revision, p.rule_count, labels(&p.labels)),
        Some(Notification::EndpointRegenerate(e)) => format!("id={}{}{}", e.id, labels(&e.labels), error(&e.error)),
        Some(Notification::EndpointUpdate(e)) => {
            let pod = if e.namespace.is_empty() { e.pod_name.clone() } else { format!("{}/{}", e.namespace, e.pod_name) };
            format!("id={} pod={pod}{}{}", e.id, labels(&e.labels), error(&e.error))
        }
        Some(Notification::IpcacheUpdate(i)) => {
            let old = i.old_identity.map(|o| format!(" old_identity={o}")).unwrap_or_default();
            format!("cidr={} identity={}{old}", i.cidr, i.identity)
        }
        Some(Notification::Unknown(u)) => format!("{} {}", u.r#type, u.notification),
        #[expect(deprecated, reason = "printed if a server still sends them")]
        Some(Notification::ServiceUpsert(s)) => format!("id={} {}/{}", s.id, s.namespace, s.name),
        #[expect(deprecated, reason = "printed if a server still sends them")]
        Some(Notification::ServiceDelete(s)) => format!("id={}", s.id),
        None => String::new(),
    };
    if details.is_empty() { kind } else { format!("{kind} {details}") }
}

/// Streams the events to `out` until the selection is exhausted (or,
/// with `--follow`, until `cancel`).
pub async fn run<O: Write>(
    args: &AgentEventsArgs,
    now: SystemTime,
    mut out: O,
    cancel: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let req = request(args, now)?;
    let conn = client::connect(&args.conn).await?;
    let mut rpc = conn.client.clone();
    let mut stream = rpc
        .get_agent_events(req)
        .await
        .map_err(|status| client::ClientError::Rpc { addr: conn.label.clone(), what: "GetAgentEvents", status })?
        .into_inner();
    let mut cancel = std::pin::pin!(cancel);
    loop {
        let resp = match next_item(&mut stream, cancel.as_mut()).await {
            Ok(Some(resp)) => resp,
            Ok(None) => break,
            Err(status) => {
                let _ = out.flush();
                return Err(client::ClientError::Rpc { addr: conn.label.clone(), what: "GetAgentEvents", status }.into());
            }
        };
        let line = match args.output {
            EventsFormat::Compact => compact(&resp, args.time_format),
            EventsFormat::Json | EventsFormat::Jsonpb => json::to_json(&resp)?,
        };
        match writeln!(out, "{line}").and_then(|()| if args.follow { out.flush() } else { Ok(()) }) {
            Ok(()) => {}
            Err(e) if is_broken_pipe(&e) => return Ok(()),
            Err(e) => return Err(e).context("writing agent events"),
        }
    }
    match out.flush() {
        Err(e) if !is_broken_pipe(&e) => Err(e).context("writing agent events"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use prost_types::Timestamp;
    use sightline_proto::flow::{EndpointUpdateNotification, PolicyUpdateNotification};

    use super::*;

    fn args(extra: &[&str]) -> AgentEventsArgs {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: AgentEventsArgs,
        }
        use clap::Parser as _;
        P::try_parse_from(["agent-events"].into_iter().chain(extra.iter().copied())).expect("parses").a
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_732_617_596)
    }

    #[test]
    fn requests_follow_hubbles_selectors() {
        assert_eq!(request(&args(&[]), now()).unwrap().number, DEFAULT_LAST);
        assert_eq!(request(&args(&["--last", "3"]), now()).unwrap().number, 3);
        let r = request(&args(&["--first", "2"]), now()).unwrap();
        assert!(r.first && r.number == 2);
        assert_eq!(request(&args(&["--all"]), now()).unwrap().number, u64::MAX);
        let r = request(&args(&["-f"]), now()).unwrap();
        assert!(r.follow && r.number == 0);
        assert!(request(&args(&["--since", "5m"]), now()).unwrap().since.is_some());
        for (bad, needle) in [
            (&["--first", "1", "--last", "1"][..], "--first and --last"),
            (&["--all", "--last", "2"][..], "--last and --all"),
            (&["--until", "1m", "-f"][..], "--until and --follow"),
            (&["--since", "soon"][..], "--since"),
            (&["--since", "1m", "--until", "5m"][..], "later than"),
        ] {
            let e = request(&args(bad), now()).expect_err("refused").to_string();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
    }

    #[test]
    fn compact_lines_name_the_node_the_kind_and_the_details() {
        let resp = |event: AgentEvent| GetAgentEventsResponse {
            agent_event: Some(event),
            node_name: "node-1".into(),
            time: Some(Timestamp { seconds: 1_732_617_596, nanos: 0 }),
        };
        let policy = resp(AgentEvent {
            r#type: AgentEventType::PolicyUpdated as i32,
            notification: Some(Notification::PolicyUpdate(PolicyUpdateNotification {
                labels: vec!["k8s:io.cilium.k8s.policy.name=deny".into()],
                revision: 3,
                rule_count: 2,
            })),
        });
        assert_eq!(
            compact(&policy, TimeFormat::StampMilli),
            "Nov 26 10:39:56.000 [node-1]: POLICY_UPDATED revision=3 rule_count=2 labels=k8s:io.cilium.k8s.policy.name=deny"
        );
        let endpoint = resp(AgentEvent {
            r#type: AgentEventType::EndpointCreated as i32,
            notification: Some(Notification::EndpointUpdate(EndpointUpdateNotification {
                id: 4,
                namespace: "x".into(),
                pod_name: "a".into(),
                ..EndpointUpdateNotification::default()
            })),
        });
        assert_eq!(compact(&endpoint, TimeFormat::StampMilli), "Nov 26 10:39:56.000 [node-1]: ENDPOINT_CREATED id=4 pod=x/a");
        let bare = GetAgentEventsResponse { agent_event: Some(AgentEvent { r#type: 99, notification: None }), ..Default::default() };
        assert_eq!(compact(&bare, TimeFormat::StampMilli).split_once(": ").map(|(_, r)| r), Some("99"));
    }
}
