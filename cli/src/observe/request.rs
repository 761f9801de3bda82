//! `observe` arguments → `GetFlowsRequest`, with every check done before
//! anything is sent.

use std::time::SystemTime;

use sightline_collector::flow::{FieldMask, PRINTED_FIELDS};
use sightline_proto::flow::FlowFilter;
use sightline_proto::observer::GetFlowsRequest;

use super::args::{ObserveOpts, OutputFormat};
use super::filters::{self, FilterError, Token};
use super::json;
use super::time::{self, TimeError};

/// Flows printed by a plain `observe` (hubble's `FlowPrintCount`).
pub const DEFAULT_LAST: u64 = 20;

/// Why the arguments cannot make a request.
/// The messages already carry their causes, so no `#[source]`: anyhow's
/// `{:#}` would print them twice.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Two selectors that exclude each other.
    #[error("{0}")]
    Selectors(String),
    /// A `--since`/`--until` value.
    #[error("--{flag}: {time}")]
    Time { flag: &'static str, time: TimeError },
    /// `--since` later than `--until`.
    #[error("--since is later than --until: no flow can match")]
    EmptyRange,
    /// A filter flag.
    #[error("{0}")]
    Filter(FilterError),
    /// An `--allowlist`/`--denylist` value.
    #[error("--{flag}: {reason}")]
    RawFilter { flag: &'static str, reason: String },
    /// An `--experimental-field-mask` path.
    #[error("--experimental-field-mask: {0}")]
    FieldMask(String),
}

impl From<FilterError> for RequestError {
    fn from(e: FilterError) -> Self {
        Self::Filter(e)
    }
}

fn conflict(a: &str, b: &str) -> RequestError {
    RequestError::Selectors(format!("--{a} and --{b} cannot be combined"))
}

/// Builds the request; `now` anchors relative `--since`/`--until`.
pub fn build(opts: &ObserveOpts, tokens: &[Token], now: SystemTime) -> Result<GetFlowsRequest, RequestError> {
    // `--last 0` / `--first 0` mean "not given", as in hubble.
    let first = opts.first.filter(|n| *n > 0);
    let last = opts.last.filter(|n| *n > 0);
    if first.is_some() && last.is_some() {
        return Err(conflict("first", "last"));
    }
    if first.is_some() && opts.all {
        return Err(conflict("first", "all"));
    }
    if first.is_some() && opts.follow {
        return Err(RequestError::Selectors(
            "--first and --follow cannot be combined: --first reads the oldest flows, --follow waits for new ones"
                .to_owned(),
        ));
    }
    if last.is_some() && opts.all {
        return Err(conflict("last", "all"));
    }
    for (count, name) in [(first.is_some(), "first"), (last.is_some(), "last")] {
        for (set, range) in [(opts.since.is_some(), "since"), (opts.until.is_some(), "until")] {
            if count && set {
                return Err(RequestError::Selectors(format!(
                    "--{name} and --{range} cannot be combined: the server takes either a number of flows or a time range"
                )));
            }
        }
    }
    if opts.until.is_some() && opts.follow {
        return Err(RequestError::Selectors(
            "--until and --follow cannot be combined: --follow streams flows with no end".to_owned(),
        ));
    }
    if opts.follow && opts.output == OutputFormat::Table {
        return Err(RequestError::Selectors(
            "-o table cannot be used with --follow (the columns are aligned once every flow is known); use -o compact"
                .to_owned(),
        ));
    }

    let since = match &opts.since {
        Some(s) => Some(time::parse_time(s, now).map_err(|time| RequestError::Time { flag: "since", time })?),
        None => None,
    };
    let until = match &opts.until {
        Some(s) => Some(time::parse_time(s, now).map_err(|time| RequestError::Time { flag: "until", time })?),
        None => None,
    };
    if let (Some(a), Some(b)) = (&since, &until)
        && time::timestamp_cmp(a, b).is_gt()
    {
        return Err(RequestError::EmptyRange);
    }

    let number = match (first, last) {
        (Some(n), _) => n,
        (None, Some(n)) => n,
        (None, None) if since.is_none() && until.is_none() => {
            if opts.all {
                u64::MAX
            } else if opts.follow {
                0
            } else {
                DEFAULT_LAST
            }
        }
        (None, None) => 0,
    };

    let built = filters::build(tokens)?;
    let mut whitelist = built.whitelist;
    let mut blacklist = built.blacklist;
    whitelist.extend(raw_filters("allowlist", &opts.allowlist)?);
    blacklist.extend(raw_filters("denylist", &opts.denylist)?);

    let mut paths: Vec<String> = opts.experimental_field_mask.iter().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect();
    let printed = matches!(opts.output, OutputFormat::Compact | OutputFormat::Dict | OutputFormat::Table);
    if paths.is_empty() && opts.experimental_use_default_field_masks && printed {
        paths = PRINTED_FIELDS.iter().map(|p| (*p).to_owned()).collect();
    }
    // Checked here, so that a typo is named before anything is sent.
    FieldMask::new(&paths).map_err(RequestError::FieldMask)?;
    let field_mask = (!paths.is_empty()).then_some(prost_types::FieldMask { paths });

    Ok(GetFlowsRequest {
        number,
        first: first.is_some(),
        follow: opts.follow,
        whitelist,
        blacklist,
        since,
        until,
        field_mask,
        ..GetFlowsRequest::default()
    })
}

fn raw_filters(flag: &'static str, values: &[String]) -> Result<Vec<FlowFilter>, RequestError> {
    let mut out = Vec::new();
    for v in values {
        out.extend(json::flow_filters_from_json(v).map_err(|reason| RequestError::RawFilter { flag, reason })?);
    }
    Ok(out)
}

/// The `--print-raw-filters` text: YAML whose items are JSON FlowFilters, as
/// hubble prints them (usable as `--allowlist`/`--denylist` values); `{}`
/// when there is no filter.
pub fn raw_filters_text(req: &GetFlowsRequest) -> Result<String, json::JsonError> {
    if req.whitelist.is_empty() && req.blacklist.is_empty() {
        return Ok("{}\n".to_owned());
    }
    let mut out = String::new();
    for (key, list) in [("allowlist", &req.whitelist), ("denylist", &req.blacklist)] {
        if list.is_empty() {
            continue;
        }
        out.push_str(key);
        out.push_str(":\n");
        for f in list {
            let text = json::to_json(f)?;
            out.push_str("    - '");
            out.push_str(&text.replace('\'', "''"));
            out.push_str("'\n");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use prost_types::Timestamp;
    use sightline_proto::flow::FlowFilter;

    use super::*;
    use crate::observe::args::tests::parse;

    const NOW: u64 = 1_732_617_596; // 2024-11-26T10:39:56Z

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn req(args: &[&str]) -> GetFlowsRequest {
        let a = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        build(&a.opts, &a.filters, now()).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn req_err(args: &[&str]) -> String {
        let a = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        build(&a.opts, &a.filters, now()).expect_err("must fail").to_string()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn selectors() {
        let r = req(&[]);
        assert_eq!((r.number, r.first, r.follow, r.since, r.until), (20, false, false, None, None));
        let r = req(&["--last", "5"]);
        assert_eq!((r.number, r.first), (5, false));
        let r = req(&["--first", "7"]);
        assert_eq!((r.number, r.first), (7, true));
        let r = req(&["--all"]);
        assert_eq!(r.number, u64::MAX);
        let r = req(&["-f"]);
        assert_eq!((r.number, r.follow), (0, true));
        let r = req(&["--follow", "--last", "3"]);
        assert_eq!((r.number, r.follow), (3, true));
        let r = req(&["--all", "--follow"]);
        assert_eq!((r.number, r.follow), (u64::MAX, true));
        let r = req(&["--since", "5m"]);
        assert_eq!(r.number, 0);
        assert_eq!(r.since, Some(Timestamp { seconds: NOW as i64 - 300, nanos: 0 }));
        let r = req(&["--since", "2h30m", "--until", "2024-11-26T10:00:00Z"]);
        assert_eq!(r.since, Some(Timestamp { seconds: NOW as i64 - 9000, nanos: 0 }));
        assert_eq!(r.until, Some(Timestamp { seconds: NOW as i64 - 39 * 60 - 56, nanos: 0 }));
        let r = req(&["--since", "1h", "--follow"]);
        assert_eq!((r.number, r.follow, r.since.is_some()), (0, true, true));
        // --last 0 is "not given".
        assert_eq!(req(&["--last", "0"]).number, 20);
    }

    #[test]
    fn selector_conflicts() {
        let cases: &[(&[&str], &str)] = &[
            (&["--first", "1", "--last", "1"], "--first and --last cannot be combined"),
            (&["--first", "1", "--all"], "--first and --all cannot be combined"),
            (&["--first", "1", "--follow"], "--first and --follow cannot be combined"),
            (&["--last", "1", "--all"], "--last and --all cannot be combined"),
            (&["--last", "10", "--since", "5m"], "--last and --since cannot be combined"),
            (&["--first", "10", "--until", "5m"], "--first and --until cannot be combined"),
            (&["--until", "5m", "-f"], "--until and --follow cannot be combined"),
            (&["-o", "table", "-f"], "-o table cannot be used with --follow"),
            (&["--since", "1m", "--until", "1h"], "--since is later than --until"),
            (&["--since", "yesterday"], "--since: \"yesterday\" is neither a duration"),
            (&["--until", "2024-02-30"], "--until: \"2024-02-30\" is neither a duration"),
            (&["--to-ip", "300.1.1.1"], "--to-ip \"300.1.1.1\": not an IP address"),
            (&["--not"], "--not must be followed by the filter flag it negates"),
            (&["--allowlist", "{\"source_pod\": 3}"], "--allowlist: "),
            (&["--denylist", "not json"], "--denylist: "),
        ];
        for (args, want) in cases {
            let got = req_err(args);
            assert!(got.contains(want), "{args:?}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn filters_reach_the_request() {
        let r = req(&["--pod", "x/a", "--not", "--verdict", "DROPPED", "--to-port", "80"]);
        assert_eq!(
            r.whitelist,
            vec![
                FlowFilter { source_pod: s(&["x/a"]), destination_port: s(&["80"]), ..FlowFilter::default() },
                FlowFilter { destination_pod: s(&["x/a"]), destination_port: s(&["80"]), ..FlowFilter::default() },
            ]
        );
        assert_eq!(r.blacklist, vec![FlowFilter { verdict: vec![2], ..FlowFilter::default() }]);
    }

    #[test]
    fn raw_filters_join_the_lists() {
        let r = req(&[
            "--from-pod",
            "x/a",
            "--allowlist",
            r#"{"destination_port":["53"],"verdict":["DROPPED"]}"#,
            "--denylist",
            r#"{"source_ip":["10.0.0.1"]} {"protocol":["udp"]}"#,
        ]);
        assert_eq!(
            r.whitelist,
            vec![
                FlowFilter { source_pod: s(&["x/a"]), ..FlowFilter::default() },
                FlowFilter { destination_port: s(&["53"]), verdict: vec![2], ..FlowFilter::default() },
            ]
        );
        assert_eq!(
            r.blacklist,
            vec![
                FlowFilter { source_ip: s(&["10.0.0.1"]), ..FlowFilter::default() },
                FlowFilter { protocol: s(&["udp"]), ..FlowFilter::default() },
            ]
        );
    }

    #[test]
    fn print_raw_filters_round_trips() {
        let r =
            req(&["--from-pod", "x/a", "--to-port", "80", "-t", "trace:to-endpoint", "--not", "--verdict", "DROPPED"]);
        let text = raw_filters_text(&r).expect("prints");
        assert_eq!(
            text,
            "allowlist:\n    - '{\"source_pod\":[\"x/a\"],\"event_type\":[{\"type\":4,\"match_sub_type\":true}],\"destination_port\":[\"80\"]}'\ndenylist:\n    - '{\"verdict\":[\"DROPPED\"]}'\n"
        );
        // Each printed line is a valid --allowlist value.
        let line = text.lines().nth(1).expect("item");
        let json = line.trim().trim_start_matches("- '").trim_end_matches('\'');
        let back = json::flow_filters_from_json(json).expect("parses back");
        assert_eq!(back, r.whitelist);
        assert_eq!(raw_filters_text(&req(&[])).expect("prints"), "{}\n");
    }

    #[test]
    fn field_masks_are_checked_and_sent() {
        let r = req(&["--experimental-field-mask", "time,source.pod_name", "--experimental-field-mask", "verdict"]);
        assert_eq!(r.field_mask.expect("a mask").paths, s(&["time", "source.pod_name", "verdict"]));
        assert_eq!(req(&[]).field_mask, None);
        // The default masks: only for the formats that print fields.
        let r = req(&["--experimental-use-default-field-masks"]);
        assert_eq!(r.field_mask.expect("a mask").paths.len(), PRINTED_FIELDS.len());
        assert_eq!(req(&["--experimental-use-default-field-masks", "-o", "jsonpb"]).field_mask, None);
        // An explicit mask wins.
        let r = req(&["--experimental-use-default-field-masks", "--experimental-field-mask", "time"]);
        assert_eq!(r.field_mask.expect("a mask").paths, s(&["time"]));
        let e = req_err(&["--experimental-field-mask", "time,source.pod_nmae"]);
        assert!(e.starts_with("--experimental-field-mask: ") && e.contains("source.pod_nmae"), "{e}");
    }
}
