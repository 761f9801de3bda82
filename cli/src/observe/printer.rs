//! Prints `GetFlowsResponse`s: compact, dict, table and proto3 JSON, as
//! `hubble observe` lays them out.
//!
//! - compact: `Nov 26 10:39:56.395: x/a:35702 (ID:256) -> x/b:80 (ID:257)
//!   to-endpoint FORWARDED (TCP Flags: SYN)`; a reply swaps the ends and
//!   points `<-`, an unknown direction prints `<>`;
//! - dict: `KEY: VALUE` blocks separated by `------------`;
//! - table: tab-aligned columns, written once the stream ends;
//! - json/jsonpb: one `GetFlowsResponse` per line.
//!
//! Lost events go to stdout (`EVENTS LOST: HUBBLE_RING_BUFFER CPU(0) 12`),
//! node status events to stderr (only errors and unavailable nodes, as
//! hubble does without `--debug`). Timestamps are UTC. Text coming from
//! the server is stripped of control characters before it reaches a
//! terminal.

use std::io::{self, Write};

use sightline_proto::FlowCounters;
use sightline_proto::flow::{
    DebugCapturePoint, Flow, LostEvent, LostEventSource, Policy, SocketTranslationPoint, TrafficDirection, Verdict,
    layer4, layer7,
};
use sightline_proto::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};
use sightline_proto::relay::{NodeState, NodeStatusEvent};

use super::args::OutputFormat;
use super::filters::{RESERVED_IDENTITIES, TRACE_POINTS};
use super::json;
use super::time::{TimeFormat, format_timestamp};

/// How to print.
#[derive(Debug, Clone, Copy)]
pub struct PrintOptions {
    pub format: OutputFormat,
    /// ANSI colours (ignored by table and JSON output).
    pub color: bool,
    pub time_format: TimeFormat,
    pub node_name: bool,
    pub policy_names: bool,
    pub counters: bool,
    /// Names (pod, service, DNS) instead of addresses.
    pub ip_translation: bool,
}

impl Default for PrintOptions {
    fn default() -> Self {
        Self {
            format: OutputFormat::Compact,
            color: false,
            time_format: TimeFormat::StampMilli,
            node_name: false,
            policy_names: false,
            counters: false,
            ip_translation: true,
        }
    }
}

const DICT_SEPARATOR: &str = "------------";
const NODE_NAMES_CUTOFF: usize = 50;

/// ANSI colours, or none.
#[derive(Debug, Clone, Copy)]
struct Palette(bool);

impl Palette {
    fn paint(self, code: u8, text: &str) -> String {
        if self.0 && !text.is_empty() { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() }
    }
    fn red(self, t: &str) -> String {
        self.paint(31, t)
    }
    fn green(self, t: &str) -> String {
        self.paint(32, t)
    }
    fn yellow(self, t: &str) -> String {
        self.paint(33, t)
    }
    fn magenta(self, t: &str) -> String {
        self.paint(35, t)
    }
    fn cyan(self, t: &str) -> String {
        self.paint(36, t)
    }
}

/// Replaces control characters (escape sequences included) with their
/// escaped form, so that the server cannot drive the terminal.
fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// Writes responses to `out` (and node status to `err`).
pub struct Printer<O: Write, E: Write> {
    opts: PrintOptions,
    palette: Palette,
    out: O,
    err: E,
    line: usize,
    rows: Vec<Vec<String>>,
}

impl<O: Write, E: Write> Printer<O, E> {
    pub fn new(opts: PrintOptions, out: O, err: E) -> Self {
        let color = opts.color && matches!(opts.format, OutputFormat::Compact | OutputFormat::Dict);
        Self { opts, palette: Palette(color), out, err, line: 0, rows: Vec::new() }
    }

    /// Prints one response.
    pub fn write(&mut self, resp: &GetFlowsResponse) -> io::Result<()> {
        match &resp.response_types {
            Some(ResponseTypes::Flow(flow)) => self.write_flow(resp, flow),
            Some(ResponseTypes::LostEvents(lost)) => self.write_lost(resp, lost),
            Some(ResponseTypes::NodeStatus(status)) => self.write_node_status(resp, status),
            None => Ok(()),
        }
    }

    /// Writes what is buffered (the table) and flushes.
    pub fn finish(&mut self) -> io::Result<()> {
        if !self.rows.is_empty() {
            let text = render_table(&self.rows);
            self.rows.clear();
            self.out.write_all(text.as_bytes())?;
        }
        self.out.flush()?;
        self.err.flush()
    }

    /// A line about the connection (lost, back) on the error stream,
    /// after what is buffered.
    pub fn note(&mut self, text: &str) -> io::Result<()> {
        self.finish()?;
        writeln!(self.err, "{text}")?;
        self.err.flush()
    }

    /// The writers back (for tests).
    #[cfg(test)]
    pub fn into_inner(self) -> (O, E) {
        (self.out, self.err)
    }

    fn write_json(&mut self, resp: &GetFlowsResponse, to_err: bool) -> io::Result<()> {
        let text = match json::to_json(resp) {
            Ok(t) => t,
            Err(first) => {
                // An extension of a type this build does not know cannot be
                // rendered; print the flow without it rather than nothing.
                let mut stripped = resp.clone();
                if let Some(ResponseTypes::Flow(f)) = &mut stripped.response_types {
                    f.extensions = None;
                }
                json::to_json(&stripped).map_err(|_| io::Error::other(first))?
            }
        };
        let w: &mut dyn Write = if to_err { &mut self.err } else { &mut self.out };
        writeln!(w, "{text}")
    }

    fn table_header(&mut self) {
        if self.rows.is_empty() && self.line == 0 {
            let mut header = vec!["TIMESTAMP".to_owned()];
            if self.opts.node_name {
                header.push("NODE".to_owned());
            }
            header.extend(["SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"].map(str::to_owned));
            self.rows.push(header);
        }
    }

    fn write_flow(&mut self, resp: &GetFlowsResponse, f: &Flow) -> io::Result<()> {
        let p = self.palette;
        let o = self.opts;
        match o.format {
            OutputFormat::Json | OutputFormat::Jsonpb => self.write_json(resp, false)?,
            OutputFormat::Table => {
                self.table_header();
                let (src, dst) = hostnames(f, o.ip_translation, p);
                let mut row = vec![format_timestamp(f.time.as_ref(), o.time_format)];
                if o.node_name {
                    row.push(clean(&f.node_name));
                }
                row.extend([src, dst, flow_type(f), verdict(f, p, o.policy_names), summary(f)]);
                self.rows.push(row);
            }
            OutputFormat::Dict => {
                let (src, dst) = hostnames(f, o.ip_translation, p);
                let mut s = String::new();
                if self.line != 0 {
                    s.push_str(DICT_SEPARATOR);
                    s.push('\n');
                }
                s.push_str(&format!("  TIMESTAMP: {}\n", format_timestamp(f.time.as_ref(), o.time_format)));
                if o.node_name {
                    s.push_str(&format!("       NODE: {}\n", clean(&f.node_name)));
                }
                s.push_str(&format!("     SOURCE: {src}\n"));
                s.push_str(&format!("DESTINATION: {dst}\n"));
                s.push_str(&format!("       TYPE: {}\n", flow_type(f)));
                s.push_str(&format!("    VERDICT: {}\n", verdict(f, p, o.policy_names)));
                s.push_str(&format!("    SUMMARY: {}\n", summary(f)));
                if o.counters
                    && let Some(c) = counters(f)
                {
                    s.push_str(&format!("   COUNTERS: {c}\n"));
                }
                self.out.write_all(s.as_bytes())?;
            }
            OutputFormat::Compact => {
                let (mut src, mut dst) = hostnames(f, o.ip_translation, p);
                let mut src_id = p.magenta(&identity(f.source.as_ref().map_or(0, |e| e.identity)));
                let mut dst_id = p.magenta(&identity(f.destination.as_ref().map_or(0, |e| e.identity)));
                let arrow = match f.is_reply {
                    None => "<>",
                    Some(false) => "->",
                    Some(true) => {
                        std::mem::swap(&mut src, &mut dst);
                        std::mem::swap(&mut src_id, &mut dst_id);
                        "<-"
                    }
                };
                let node = if o.node_name { format!(" [{}]", clean(&f.node_name)) } else { String::new() };
                let mut line = format!(
                    "{}{node}: {src} {src_id} {arrow} {dst} {dst_id} {} {} ({})",
                    format_timestamp(f.time.as_ref(), o.time_format),
                    flow_type(f),
                    verdict(f, p, o.policy_names),
                    summary(f),
                );
                if o.counters
                    && let Some(c) = counters(f)
                {
                    line.push_str(&format!(" [{c}]"));
                }
                writeln!(self.out, "{line}")?;
            }
        }
        self.line += 1;
        Ok(())
    }

    fn write_lost(&mut self, resp: &GetFlowsResponse, lost: &LostEvent) -> io::Result<()> {
        let source = LostEventSource::try_from(lost.source)
            .map_or_else(|_| lost.source.to_string(), |s| s.as_str_name().to_owned());
        let cpu = lost.cpu.unwrap_or(0);
        let n = lost.num_events_lost;
        match self.opts.format {
            OutputFormat::Json | OutputFormat::Jsonpb => self.write_json(resp, false)?,
            OutputFormat::Compact => writeln!(self.out, "EVENTS LOST: {source} CPU({cpu}) {n}")?,
            OutputFormat::Dict => {
                let mut s = String::new();
                if self.line != 0 {
                    s.push_str(DICT_SEPARATOR);
                    s.push('\n');
                }
                s.push_str("  TIMESTAMP: \n");
                if self.opts.node_name {
                    s.push_str("       NODE: \n");
                }
                s.push_str(&format!(
                    "     SOURCE: {source}\n       TYPE: EVENTS LOST\n    VERDICT: \n    SUMMARY: CPU({cpu}) - {n}\n"
                ));
                self.out.write_all(s.as_bytes())?;
            }
            OutputFormat::Table => {
                self.table_header();
                let mut row = vec![String::new()];
                if self.opts.node_name {
                    row.push(String::new());
                }
                row.extend([
                    source,
                    String::new(),
                    "EVENTS LOST".to_owned(),
                    String::new(),
                    format!("CPU({cpu}) - {n}"),
                ]);
                self.rows.push(row);
            }
        }
        self.line += 1;
        Ok(())
    }

    fn write_node_status(&mut self, resp: &GetFlowsResponse, s: &NodeStatusEvent) -> io::Result<()> {
        let state = NodeState::try_from(s.state_change).unwrap_or(NodeState::UnknownNodeState);
        if !matches!(state, NodeState::NodeError | NodeState::NodeUnavailable | NodeState::NodeGone) {
            return Ok(());
        }
        let names: Vec<String> = s.node_names.iter().map(|n| clean(n)).collect();
        let joined = join_with_cutoff(&names, ", ", NODE_NAMES_CUTOFF);
        let ts = format_timestamp(resp.time.as_ref(), self.opts.time_format);
        match self.opts.format {
            OutputFormat::Json | OutputFormat::Jsonpb => self.write_json(resp, true),
            OutputFormat::Dict => {
                let message = if s.message.is_empty() { "N/A".to_owned() } else { format!("{:?}", clean(&s.message)) };
                let sep = if self.line != 0 { format!("{DICT_SEPARATOR}\n") } else { String::new() };
                self.line += 1;
                write!(
                    self.err,
                    "{sep}  TIMESTAMP: {ts}\n      STATE: {}\n      NODES: {joined}\n    MESSAGE: {message}\n",
                    state.as_str_name()
                )
            }
            OutputFormat::Compact | OutputFormat::Table => {
                let prefix = format!("{ts} [{}]", clean(&resp.node_name));
                let n = names.len();
                let msg = match state {
                    NodeState::NodeUnavailable => format!("{prefix}: {n} nodes are unavailable: {joined}"),
                    NodeState::NodeGone => format!("{prefix}: {n} nodes removed from cluster: {joined}"),
                    _ => format!("{prefix}: Error {:?} on {n} nodes: {joined}", clean(&s.message)),
                };
                writeln!(self.err, "{msg}")
            }
        }
    }
}

/// Joins `elems`, leaving out those past `target` characters (at least one
/// is always kept) and saying how many were left out.
fn join_with_cutoff(elems: &[String], sep: &str, target: usize) -> String {
    let mut len = 0;
    let mut end = elems.len();
    for (i, e) in elems.iter().enumerate() {
        len += e.len() + sep.len();
        if len > target && i > 0 {
            end = i;
            break;
        }
    }
    let joined = elems[..end].join(sep);
    match elems.len() - end {
        0 => joined,
        more => format!("{joined} (and {more} more)"),
    }
}

/// Go's `tabwriter` with hubble's settings (minimum width 2, padding 3).
pub fn render_table(rows: &[Vec<String>]) -> String {
    sightline_lab::table::render(rows)
}

fn ports(f: &Flow) -> (u32, u32) {
    match f.l4.as_ref().and_then(|l4| l4.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(t)) => (t.source_port, t.destination_port),
        Some(layer4::Protocol::Udp(u)) => (u.source_port, u.destination_port),
        Some(layer4::Protocol::Sctp(s)) => (s.source_port, s.destination_port),
        _ => (0, 0),
    }
}

/// What is known of one end of a flow.
struct End<'a> {
    ip: &'a str,
    port: u32,
    ns: &'a str,
    pod: &'a str,
    svc: &'a str,
    names: &'a [String],
}

/// `host[:port]`: the pod (`ns/pod`), else the service, else the DNS names,
/// else the address.
fn hostname(end: &End<'_>, translate: bool, p: Palette) -> String {
    let join = |ns: &str, name: &str| if ns.is_empty() { name.to_owned() } else { format!("{ns}/{name}") };
    let host = if !translate {
        end.ip.to_owned()
    } else if !end.pod.is_empty() {
        join(end.ns, end.pod)
    } else if !end.svc.is_empty() {
        join(end.ns, end.svc)
    } else if !end.names.is_empty() {
        end.names.join(",")
    } else {
        end.ip.to_owned()
    };
    let port = end.port;
    let host = clean(&host);
    if port == 0 {
        return p.cyan(&host);
    }
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    format!("{}:{}", p.cyan(&host), p.yellow(&port.to_string()))
}

/// Source and destination, as the compact, dict and table printers show them.
fn hostnames(f: &Flow, translate: bool, p: Palette) -> (String, String) {
    let Some(ip) = &f.ip else {
        return match &f.ethernet {
            Some(eth) => (p.cyan(&clean(&eth.source)), p.cyan(&clean(&eth.destination))),
            None => (String::new(), String::new()),
        };
    };
    let (mut src_ns, mut dst_ns, mut src_pod, mut dst_pod) = ("", "", "", "");
    let (mut src_svc, mut dst_svc) = ("", "");
    if let Some(e) = &f.source {
        src_ns = &e.namespace;
        src_pod = &e.pod_name;
    }
    if let Some(e) = &f.destination {
        dst_ns = &e.namespace;
        dst_pod = &e.pod_name;
    }
    if let Some(s) = &f.source_service {
        src_ns = &s.namespace;
        src_svc = &s.name;
    }
    if let Some(s) = &f.destination_service {
        dst_ns = &s.namespace;
        dst_svc = &s.name;
    }
    let (sport, dport) = ports(f);
    let src = End { ip: &ip.source, port: sport, ns: src_ns, pod: src_pod, svc: src_svc, names: &f.source_names };
    let dst =
        End { ip: &ip.destination, port: dport, ns: dst_ns, pod: dst_pod, svc: dst_svc, names: &f.destination_names };
    (hostname(&src, translate, p), hostname(&dst, translate, p))
}

/// `(ID:256)`, or `(world)` for a reserved identity.
pub fn identity(id: u32) -> String {
    match RESERVED_IDENTITIES.iter().find(|(_, n)| *n == id) {
        Some((name, _)) => format!("({name})"),
        None => format!("(ID:{id})"),
    }
}

/// Human-readable drop reasons (Cilium's pkg/monitor/api/drop.go, by code).
pub fn drop_reason_text(code: u32) -> String {
    let text = match code {
        0 => "Success",
        2 | 134 => "Invalid packet",
        130 => "Invalid source mac",
        131 => "Invalid destination mac",
        132 => "Invalid source ip",
        133 => "Policy denied",
        135 => "CT: Truncated or invalid header",
        136 => "Fragmentation needed",
        137 => "CT: Unknown L4 protocol",
        138 => "CT: Can't create entry from packet",
        139 => "Unsupported L3 protocol",
        140 => "Missed tail call",
        141 => "Error writing to packet",
        142 => "Unknown L4 protocol",
        143 => "Unknown ICMPv4 code",
        144 => "Unknown ICMPv4 type",
        145 => "Unknown ICMPv6 code",
        146 => "Unknown ICMPv6 type",
        147 => "Error retrieving tunnel key",
        150 => "Unknown L3 target address",
        151 => "Stale or unroutable IP",
        153 => "Error while correcting L3 checksum",
        154 => "Error while correcting L4 checksum",
        155 => "CT: Map insertion failed",
        156 => "Invalid IPv6 extension header",
        157 => "IP fragmentation not supported",
        158 => "Service backend not found",
        160 => "No tunnel/encapsulation endpoint (datapath BUG!)",
        161 => "NAT 46/64 not enabled",
        162 => "Reached EDT rate-limiting drop horizon",
        163 => "Unknown connection tracking state",
        164 => "Local host is unreachable",
        165 => "No configuration available to perform policy decision",
        166 => "Unsupported L2 protocol",
        167 => "No mapping for NAT masquerade",
        168 => "Unsupported protocol for NAT masquerade",
        169 => "FIB lookup failed",
        170 => "Encapsulation traffic is prohibited",
        171 => "Invalid identity",
        172 => "Unknown sender",
        173 => "NAT not needed",
        174 => "Is a ClusterIP",
        175 => "First logical datagram fragment not found",
        176 => "Forbidden ICMPv6 message",
        177 => "Denied by LB src range check",
        178 => "Socket lookup failed",
        179 => "Socket assign failed",
        180 => "Proxy redirection not supported for protocol",
        181 => "Policy denied by denylist",
        182 => "VLAN traffic disallowed by VLAN filter",
        183 => "Incorrect VNI from VTEP",
        184 => "Failed to update or lookup TC buffer",
        185 => "No SID was found for the IP address",
        186 => "SRv6 state was removed during tail call",
        187 => "L3 translation from IPv4 to IPv6 failed (NAT46)",
        188 => "L3 translation from IPv6 to IPv4 failed (NAT64)",
        189 => "Authentication required",
        190 => "No conntrack map found",
        191 => "No nat map found",
        192 => "Invalid ClusterID",
        193 => "Unsupported packet protocol for DSR encapsulation",
        194 => "No egress gateway found",
        195 => "Traffic is unencrypted",
        196 => "TTL exceeded",
        197 => "No node ID found",
        198 => "Rate limited",
        202 => "Host datapath not ready",
        _ => {
            return i32::try_from(code)
                .ok()
                .and_then(|c| sightline_proto::flow::DropReason::try_from(c).ok())
                .map_or_else(|| format!("{code}, 0"), |r| r.as_str_name().to_owned());
        }
    };
    text.to_owned()
}

fn policy_match_text(m: u32) -> &'static str {
    match m {
        0 => "none",
        1 => "L3-Only",
        2 => "L3-L4",
        3 => "L4-Only",
        4 => "all",
        5 => "L3-Proto",
        6 => "Proto-Only",
        _ => "unknown",
    }
}

fn direction_name(d: i32) -> &'static str {
    TrafficDirection::try_from(d).map_or("TRAFFIC_DIRECTION_UNKNOWN", |d| d.as_str_name())
}

/// The TYPE column: trace point, drop reason, policy verdict, L7 kind, …
pub fn flow_type(f: &Flow) -> String {
    if let Some(l7) = &f.l7 {
        let mut kind = sightline_proto::flow::L7FlowType::try_from(l7.r#type)
            .map_or_else(|_| l7.r#type.to_string(), |t| t.as_str_name().to_ascii_lowercase());
        let proto = match &l7.record {
            Some(layer7::Record::Http(_)) => "http",
            Some(layer7::Record::Dns(dns)) => {
                kind.push(' ');
                kind.push_str(&clean(&dns.observation_source));
                "dns"
            }
            #[expect(deprecated, reason = "Kafka records are still printed, as hubble does")]
            Some(layer7::Record::Kafka(_)) => "kafka",
            None => "l7",
        };
        return format!("{proto}-{kind}");
    }
    let Some(et) = &f.event_type else { return "UNKNOWN".to_owned() };
    let sub = et.sub_type;
    match et.r#type {
        4 => TRACE_POINTS
            .iter()
            .find(|(_, v)| *v == i32::from(sub as u8))
            .map_or_else(|| (sub as u8).to_string(), |(n, _)| (*n).to_owned()),
        // A drop the kernel made: its own reason rides in Sightline's
        // extension (Hubble's reason 0 would read "Success").
        1 if sub == 0 => match f.extensions.as_ref().and_then(FlowCounters::from_any) {
            Some(c) if !c.kernel_drop_reason.is_empty() => format!("Kernel drop: {}", c.kernel_drop_reason),
            _ => drop_reason_text(0),
        },
        1 => drop_reason_text(u32::from(sub as u8)),
        5 => {
            format!("policy-verdict:{} {}", policy_match_text(f.policy_match_type), direction_name(f.traffic_direction))
        }
        3 => DebugCapturePoint::try_from(f.debug_capture_point)
            .map_or_else(|_| f.debug_capture_point.to_string(), |p| p.as_str_name().to_owned()),
        7 => match SocketTranslationPoint::try_from(f.sock_xlate_point) {
            Ok(SocketTranslationPoint::SockXlatePointPostDirectionFwd) => "post-xlate-fwd".to_owned(),
            Ok(SocketTranslationPoint::SockXlatePointPostDirectionRev) => "post-xlate-rev".to_owned(),
            Ok(SocketTranslationPoint::SockXlatePointPreDirectionFwd) => "pre-xlate-fwd".to_owned(),
            Ok(SocketTranslationPoint::SockXlatePointPreDirectionRev) => "pre-xlate-rev".to_owned(),
            Ok(other) => other.as_str_name().to_owned(),
            Err(_) => f.sock_xlate_point.to_string(),
        },
        _ => "UNKNOWN".to_owned(),
    }
}

fn policy_list(policies: &[Policy]) -> String {
    policies
        .iter()
        .map(|pol| {
            let name = if pol.namespace.is_empty() {
                clean(&pol.name)
            } else {
                format!("{}/{}", clean(&pol.namespace), clean(&pol.name))
            };
            if pol.kind.is_empty() { name } else { format!("{name} ({})", clean(&pol.kind)) }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Policies of the flow's direction (both directions when it is unknown).
fn policies_for(f: &Flow, denied: bool) -> String {
    let (ingress, egress) = if denied {
        (&f.ingress_denied_by, &f.egress_denied_by)
    } else {
        (&f.ingress_allowed_by, &f.egress_allowed_by)
    };
    let list: Vec<Policy> = match TrafficDirection::try_from(f.traffic_direction) {
        Ok(TrafficDirection::Ingress) => ingress.clone(),
        Ok(TrafficDirection::Egress) => egress.clone(),
        _ => egress.iter().chain(ingress.iter()).cloned().collect(),
    };
    if list.is_empty() { String::new() } else { format!(" BY {}", policy_list(&list)) }
}

/// The VERDICT column; a policy verdict reads ALLOWED, DENIED or AUDITED.
fn verdict(f: &Flow, p: Palette, policy_names: bool) -> String {
    let is_policy = f.event_type.as_ref().is_some_and(|e| e.r#type == 5);
    let v = Verdict::try_from(f.verdict).ok();
    let mut msg = v.map_or_else(|| f.verdict.to_string(), |v| v.as_str_name().to_owned());
    let names = |denied: bool| if policy_names { policies_for(f, denied) } else { String::new() };
    match v {
        Some(Verdict::Forwarded | Verdict::Redirected) => {
            if is_policy {
                msg = "ALLOWED".to_owned();
            }
            msg.push_str(&names(false));
            p.green(&msg)
        }
        Some(Verdict::Dropped | Verdict::Error) => {
            if is_policy {
                msg = "DENIED".to_owned();
            }
            msg.push_str(&names(true));
            p.red(&msg)
        }
        Some(Verdict::Audit) => {
            if is_policy {
                msg = "AUDITED".to_owned();
            }
            msg.push_str(&names(true));
            p.yellow(&msg)
        }
        Some(Verdict::Traced | Verdict::Translated) => p.yellow(&msg),
        _ => msg,
    }
}

fn icmp4_name(t: u32) -> String {
    match t {
        0 => "EchoReply".to_owned(),
        3 => "DestinationUnreachable".to_owned(),
        4 => "SourceQuench".to_owned(),
        5 => "Redirect".to_owned(),
        8 => "EchoRequest".to_owned(),
        9 => "RouterAdvertisement".to_owned(),
        10 => "RouterSolicitation".to_owned(),
        11 => "TimeExceeded".to_owned(),
        12 => "ParameterProblem".to_owned(),
        13 => "TimestampRequest".to_owned(),
        14 => "TimestampReply".to_owned(),
        other => format!("Type({other})"),
    }
}

fn icmp6_name(t: u32) -> String {
    match t {
        1 => "DestinationUnreachable".to_owned(),
        2 => "PacketTooBig".to_owned(),
        3 => "TimeExceeded".to_owned(),
        4 => "ParameterProblem".to_owned(),
        128 => "EchoRequest".to_owned(),
        129 => "EchoReply".to_owned(),
        133 => "RouterSolicitation".to_owned(),
        134 => "RouterAdvertisement".to_owned(),
        135 => "NeighborSolicitation".to_owned(),
        136 => "NeighborAdvertisement".to_owned(),
        137 => "Redirect".to_owned(),
        other => format!("Type({other})"),
    }
}

/// A summary made from the flow's fields, for servers that leave the
/// deprecated `Summary` empty (hubble's parser wording).
fn derived_summary(f: &Flow) -> String {
    if let Some(l7) = &f.l7 {
        return match &l7.record {
            Some(layer7::Record::Http(h)) if h.code != 0 => {
                format!(
                    "{} {} {}ms ({} {})",
                    clean(&h.protocol),
                    h.code,
                    l7.latency_ns / 1_000_000,
                    clean(&h.method),
                    clean(&h.url)
                )
            }
            Some(layer7::Record::Http(h)) => format!("{} {} {}", clean(&h.protocol), clean(&h.method), clean(&h.url)),
            Some(layer7::Record::Dns(d)) => format!("DNS Query {}", clean(&d.query)),
            _ => String::new(),
        };
    }
    match f.l4.as_ref().and_then(|l4| l4.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(t)) => {
            let fl = t.flags.unwrap_or_default();
            let names: Vec<&str> = [
                (fl.syn, "SYN"),
                (fl.ack, "ACK"),
                (fl.rst, "RST"),
                (fl.fin, "FIN"),
                (fl.psh, "PSH"),
                (fl.urg, "URG"),
                (fl.ece, "ECE"),
                (fl.cwr, "CWR"),
                (fl.ns, "NS"),
            ]
            .into_iter()
            .filter_map(|(set, n)| set.then_some(n))
            .collect();
            if names.is_empty() { "TCP".to_owned() } else { format!("TCP Flags: {}", names.join(", ")) }
        }
        Some(layer4::Protocol::Udp(_)) => "UDP".to_owned(),
        Some(layer4::Protocol::Sctp(_)) => "SCTP".to_owned(),
        Some(layer4::Protocol::IcmPv4(i)) => format!("ICMPv4 {}", icmp4_name(i.r#type)),
        Some(layer4::Protocol::IcmPv6(i)) => format!("ICMPv6 {}", icmp6_name(i.r#type)),
        Some(layer4::Protocol::Vrrp(_)) => "VRRP".to_owned(),
        Some(layer4::Protocol::Igmp(_)) => "IGMP".to_owned(),
        None => String::new(),
    }
}

/// The SUMMARY column.
fn summary(f: &Flow) -> String {
    let mut s = String::new();
    if let Some(t) = &f.ip_trace_id
        && t.trace_id > 0
    {
        s.push_str(&format!("IP Trace ID: {}; ", t.trace_id));
    }
    #[expect(deprecated, reason = "Summary is what hubble prints")]
    let text = &f.summary;
    if text.is_empty() {
        s.push_str(&derived_summary(f));
    } else {
        s.push_str(&clean(text));
    }
    if let Ok(auth) = sightline_proto::flow::AuthType::try_from(f.auth_type)
        && auth != sightline_proto::flow::AuthType::Disabled
    {
        s.push_str("; ");
        s.push_str(auth.as_str_name());
    }
    s
}

/// Sightline's per-connection counters from `Flow.extensions` (nothing when
/// they are absent or all zero, i.e. no connection was tracked).
pub fn counters(f: &Flow) -> Option<String> {
    let c = f.extensions.as_ref().and_then(FlowCounters::from_any)?;
    if c == FlowCounters::default() {
        return None;
    }
    Some(format!(
        "fwd {} pkts {} B, rev {} pkts {} B",
        c.forward_packets, c.forward_bytes, c.reply_packets, c.reply_bytes
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use prost_types::Timestamp;
    use sightline_proto::flow::{
        CiliumEventType, Endpoint, Ethernet, FlowType, IcmPv4, Ip, IpTraceId, IpVersion, Layer4, Service, Tcp,
        TcpFlags, Udp,
    };

    use super::*;

    /// x/a:35702 → x/b:80, SYN, to-endpoint, FORWARDED, at
    /// 2024-11-26T10:39:56.395Z on node-1.
    pub(crate) fn flow() -> Flow {
        #[expect(deprecated, reason = "hubble servers fill Summary")]
        Flow {
            time: Some(Timestamp { seconds: 1_732_617_596, nanos: 395_000_000 }),
            verdict: Verdict::Forwarded as i32,
            ip: Some(Ip {
                source: "10.244.1.2".into(),
                destination: "10.244.1.3".into(),
                ip_version: IpVersion::IPv4 as i32,
                ..Ip::default()
            }),
            l4: Some(Layer4 {
                protocol: Some(layer4::Protocol::Tcp(Tcp {
                    source_port: 35702,
                    destination_port: 80,
                    flags: Some(TcpFlags { syn: true, ..TcpFlags::default() }),
                })),
            }),
            source: Some(Endpoint {
                id: 1,
                identity: 256,
                namespace: "x".into(),
                pod_name: "a".into(),
                ..Endpoint::default()
            }),
            destination: Some(Endpoint {
                id: 2,
                identity: 257,
                namespace: "x".into(),
                pod_name: "b".into(),
                ..Endpoint::default()
            }),
            r#type: FlowType::L3L4 as i32,
            node_name: "node-1".into(),
            event_type: Some(CiliumEventType { r#type: 4, sub_type: 0 }),
            traffic_direction: TrafficDirection::Ingress as i32,
            is_reply: Some(false),
            summary: "TCP Flags: SYN".into(),
            ..Flow::default()
        }
    }

    fn resp(f: Flow) -> GetFlowsResponse {
        GetFlowsResponse { node_name: f.node_name.clone(), time: f.time, response_types: Some(ResponseTypes::Flow(f)) }
    }

    fn lost(n: u64) -> GetFlowsResponse {
        GetFlowsResponse {
            node_name: "node-1".into(),
            time: None,
            response_types: Some(ResponseTypes::LostEvents(LostEvent {
                source: LostEventSource::HubbleRingBuffer as i32,
                num_events_lost: n,
                cpu: Some(0),
                first: None,
                last: None,
            })),
        }
    }

    fn print(opts: PrintOptions, responses: &[GetFlowsResponse]) -> (String, String) {
        let mut p = Printer::new(opts, Vec::new(), Vec::new());
        for r in responses {
            p.write(r).expect("writes");
        }
        p.finish().expect("finishes");
        let (out, err) = p.into_inner();
        (String::from_utf8(out).expect("utf-8"), String::from_utf8(err).expect("utf-8"))
    }

    fn compact(f: Flow) -> String {
        print(PrintOptions::default(), &[resp(f)]).0
    }

    #[test]
    fn compact_line() {
        assert_eq!(
            compact(flow()),
            "Nov 26 10:39:56.395: x/a:35702 (ID:256) -> x/b:80 (ID:257) to-endpoint FORWARDED (TCP Flags: SYN)\n"
        );
    }

    #[test]
    fn compact_reply_unknown_direction_and_node_name() {
        let mut f = flow();
        f.is_reply = Some(true);
        assert_eq!(
            compact(f),
            "Nov 26 10:39:56.395: x/b:80 (ID:257) <- x/a:35702 (ID:256) to-endpoint FORWARDED (TCP Flags: SYN)\n"
        );
        let mut f = flow();
        f.is_reply = None;
        let opts = PrintOptions { node_name: true, ..PrintOptions::default() };
        assert_eq!(
            print(opts, &[resp(f)]).0,
            "Nov 26 10:39:56.395 [node-1]: x/a:35702 (ID:256) <> x/b:80 (ID:257) to-endpoint FORWARDED (TCP Flags: SYN)\n"
        );
    }

    #[test]
    fn compact_numeric_reserved_identities_and_services() {
        let mut f = flow();
        f.source = Some(Endpoint { identity: 2, labels: vec!["reserved:world".into()], ..Endpoint::default() });
        f.destination_service = Some(Service { name: "web".into(), namespace: "x".into() });
        if let Some(d) = f.destination.as_mut() {
            d.pod_name.clear();
        }
        assert_eq!(
            compact(f.clone()),
            "Nov 26 10:39:56.395: 10.244.1.2:35702 (world) -> x/web:80 (ID:257) to-endpoint FORWARDED (TCP Flags: SYN)\n"
        );
        let opts = PrintOptions { ip_translation: false, ..PrintOptions::default() };
        assert_eq!(
            print(opts, &[resp(f)]).0,
            "Nov 26 10:39:56.395: 10.244.1.2:35702 (world) -> 10.244.1.3:80 (ID:257) to-endpoint FORWARDED (TCP Flags: SYN)\n"
        );
    }

    #[test]
    fn compact_drop_with_derived_summary_ipv6_and_policy_names() {
        let mut f = flow();
        #[expect(deprecated, reason = "testing servers that leave Summary empty")]
        f.summary.clear();
        f.verdict = Verdict::Dropped as i32;
        f.event_type = Some(CiliumEventType { r#type: 1, sub_type: 133 });
        f.ip = Some(Ip { source: "fd00::2".into(), destination: "fd00::3".into(), ..Ip::default() });
        f.source = None;
        f.destination = None;
        f.l4 = Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: 1000,
                destination_port: 443,
                flags: Some(TcpFlags { syn: true, ack: true, fin: true, ..TcpFlags::default() }),
            })),
        });
        f.ingress_denied_by = vec![Policy {
            name: "deny-all".into(),
            namespace: "x".into(),
            kind: "NetworkPolicy".into(),
            ..Policy::default()
        }];
        let opts = PrintOptions { policy_names: true, ..PrintOptions::default() };
        assert_eq!(
            print(opts, &[resp(f)]).0,
            "Nov 26 10:39:56.395: [fd00::2]:1000 (unknown) -> [fd00::3]:443 (unknown) Policy denied DROPPED BY x/deny-all (NetworkPolicy) (TCP Flags: SYN, ACK, FIN)\n"
        );
    }

    #[test]
    fn policy_verdicts_read_allowed_and_denied() {
        let mut f = flow();
        f.event_type = Some(CiliumEventType { r#type: 5, sub_type: 0 });
        f.policy_match_type = 2;
        f.traffic_direction = TrafficDirection::Egress as i32;
        f.egress_allowed_by = vec![Policy { name: "allow-web".into(), namespace: "x".into(), ..Policy::default() }];
        f.ingress_allowed_by = vec![Policy { name: "other".into(), namespace: "x".into(), ..Policy::default() }];
        let opts = PrintOptions { policy_names: true, ..PrintOptions::default() };
        assert_eq!(
            print(opts, &[resp(f.clone())]).0,
            "Nov 26 10:39:56.395: x/a:35702 (ID:256) -> x/b:80 (ID:257) policy-verdict:L3-L4 EGRESS ALLOWED BY x/allow-web (TCP Flags: SYN)\n"
        );
        f.verdict = Verdict::Dropped as i32;
        f.policy_match_type = 0;
        assert!(compact(f.clone()).contains(" policy-verdict:none EGRESS DENIED (TCP Flags: SYN)"));
        f.verdict = Verdict::Audit as i32;
        assert!(compact(f).contains(" AUDITED ("));
    }

    #[test]
    fn other_types_and_summaries() {
        let mut f = flow();
        f.event_type = Some(CiliumEventType { r#type: 4, sub_type: 3 });
        #[expect(deprecated, reason = "testing servers that leave Summary empty")]
        f.summary.clear();
        f.l4 = Some(Layer4 { protocol: Some(layer4::Protocol::Udp(Udp { source_port: 5353, destination_port: 53 })) });
        assert!(compact(f.clone()).contains(" to-stack FORWARDED (UDP)\n"), "{}", compact(f.clone()));
        f.l4 = Some(Layer4 { protocol: Some(layer4::Protocol::IcmPv4(IcmPv4 { r#type: 8, code: 0 })) });
        f.ip_trace_id = Some(IpTraceId { trace_id: 7, ip_option_type: 0 });
        let line = compact(f.clone());
        assert!(
            line.contains(": x/a (ID:256) -> x/b (ID:257) to-stack FORWARDED (IP Trace ID: 7; ICMPv4 EchoRequest)"),
            "{line}"
        );
        f.event_type = Some(CiliumEventType { r#type: 4, sub_type: 200 });
        assert!(compact(f.clone()).contains(" 200 FORWARDED"));
        f.event_type = None;
        assert!(compact(f.clone()).contains(" UNKNOWN FORWARDED"));
        // Without an IP header: the MAC addresses.
        f.ip = None;
        f.ethernet = Some(Ethernet { source: "aa:bb".into(), destination: "cc:dd".into() });
        assert!(compact(f).contains(": aa:bb (ID:256) -> cc:dd (ID:257) "));
    }

    #[test]
    fn counters_in_compact_and_dict() {
        let mut f = flow();
        f.extensions =
            Some(FlowCounters { forward_packets: 3, forward_bytes: 180, reply_packets: 2, reply_bytes: 120, ..FlowCounters::default() }.to_any());
        let opts = PrintOptions { counters: true, ..PrintOptions::default() };
        assert_eq!(
            print(opts, &[resp(f.clone())]).0,
            "Nov 26 10:39:56.395: x/a:35702 (ID:256) -> x/b:80 (ID:257) to-endpoint FORWARDED (TCP Flags: SYN) [fwd 3 pkts 180 B, rev 2 pkts 120 B]\n"
        );
        // Without the flag, nothing.
        assert!(!compact(f.clone()).contains("fwd"));
        // All zero: no connection was tracked; nothing either.
        let mut z = f.clone();
        z.extensions = Some(FlowCounters::default().to_any());
        assert!(!print(PrintOptions { counters: true, ..PrintOptions::default() }, &[resp(z)]).0.contains("fwd"));
        let opts = PrintOptions { counters: true, format: OutputFormat::Dict, ..PrintOptions::default() };
        assert!(
            print(opts, &[resp(f)])
                .0
                .ends_with("    SUMMARY: TCP Flags: SYN\n   COUNTERS: fwd 3 pkts 180 B, rev 2 pkts 120 B\n")
        );
    }

    #[test]
    fn dict_blocks() {
        let opts = PrintOptions { format: OutputFormat::Dict, node_name: true, ..PrintOptions::default() };
        let (out, _) = print(opts, &[resp(flow()), lost(12)]);
        assert_eq!(
            out,
            "  TIMESTAMP: Nov 26 10:39:56.395\n       NODE: node-1\n     SOURCE: x/a:35702\nDESTINATION: x/b:80\n       TYPE: to-endpoint\n    VERDICT: FORWARDED\n    SUMMARY: TCP Flags: SYN\n------------\n  TIMESTAMP: \n       NODE: \n     SOURCE: HUBBLE_RING_BUFFER\n       TYPE: EVENTS LOST\n    VERDICT: \n    SUMMARY: CPU(0) - 12\n"
        );
    }

    #[test]
    fn table_columns() {
        let mut f2 = flow();
        if let Some(s) = f2.source.as_mut() {
            s.pod_name = "client-long-name".into();
        }
        f2.verdict = Verdict::Dropped as i32;
        let opts = PrintOptions { format: OutputFormat::Table, ..PrintOptions::default() };
        let (out, _) = print(opts, &[resp(flow()), resp(f2), lost(12)]);
        assert_eq!(
            out,
            "TIMESTAMP             SOURCE                     DESTINATION   TYPE          VERDICT     SUMMARY\n\
             Nov 26 10:39:56.395   x/a:35702                  x/b:80        to-endpoint   FORWARDED   TCP Flags: SYN\n\
             Nov 26 10:39:56.395   x/client-long-name:35702   x/b:80        to-endpoint   DROPPED     TCP Flags: SYN\n\
             \x20                     HUBBLE_RING_BUFFER                       EVENTS LOST               CPU(0) - 12\n"
        );
    }

    #[test]
    fn lost_events_compact() {
        let (out, err) = print(PrintOptions::default(), &[lost(12)]);
        assert_eq!(out, "EVENTS LOST: HUBBLE_RING_BUFFER CPU(0) 12\n");
        assert_eq!(err, "");
    }

    #[test]
    fn json_lines() {
        let opts = PrintOptions { format: OutputFormat::Jsonpb, color: true, ..PrintOptions::default() };
        let (out, _) = print(opts, &[resp(flow()), lost(3)]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
        assert_eq!(v["flow"]["l4"]["TCP"]["destination_port"], 80);
        assert_eq!(v["flow"]["Summary"], "TCP Flags: SYN");
        assert_eq!(v["flow"]["trace_observation_point"], serde_json::Value::Null);
        assert_eq!(v["time"], "2024-11-26T10:39:56.395Z");
        let v: serde_json::Value = serde_json::from_str(lines[1]).expect("JSON");
        assert_eq!(v["lost_events"]["source"], "HUBBLE_RING_BUFFER");
        assert_eq!(v["lost_events"]["num_events_lost"], "3");
        assert!(!out.contains('\x1b'));
        // An extension of an unknown type does not stop the flow from printing.
        let mut f = flow();
        f.extensions =
            Some(prost_types::Any { type_url: "type.googleapis.com/acme.Unknown".into(), value: vec![1, 2] });
        let (out, _) = print(opts, &[resp(f)]);
        assert!(out.contains("\"Summary\":\"TCP Flags: SYN\""), "{out}");
    }

    #[test]
    fn colours() {
        let opts = PrintOptions { color: true, ..PrintOptions::default() };
        let (out, _) = print(opts, &[resp(flow())]);
        assert_eq!(
            out,
            "Nov 26 10:39:56.395: \x1b[36mx/a\x1b[0m:\x1b[33m35702\x1b[0m \x1b[35m(ID:256)\x1b[0m -> \x1b[36mx/b\x1b[0m:\x1b[33m80\x1b[0m \x1b[35m(ID:257)\x1b[0m to-endpoint \x1b[32mFORWARDED\x1b[0m (TCP Flags: SYN)\n"
        );
        // Tables are never coloured.
        let opts = PrintOptions { color: true, format: OutputFormat::Table, ..PrintOptions::default() };
        assert!(!print(opts, &[resp(flow())]).0.contains('\x1b'));
    }

    #[test]
    fn server_text_cannot_drive_the_terminal() {
        let mut f = flow();
        if let Some(s) = f.source.as_mut() {
            s.pod_name = "evil\x1b[2J".into();
        }
        let out = compact(f);
        assert!(!out.contains('\x1b'), "{out:?}");
        assert!(out.contains("x/evil\\u{1b}[2J:35702"), "{out:?}");
    }

    #[test]
    fn node_status_goes_to_stderr() {
        let status = |state: NodeState, names: &[&str], message: &str| GetFlowsResponse {
            node_name: "relay".into(),
            time: Some(Timestamp { seconds: 1_732_617_596, nanos: 0 }),
            response_types: Some(ResponseTypes::NodeStatus(NodeStatusEvent {
                state_change: state as i32,
                node_names: names.iter().map(|s| (*s).to_owned()).collect(),
                message: message.into(),
            })),
        };
        let (out, err) = print(
            PrintOptions::default(),
            &[
                status(NodeState::NodeConnected, &["node-1"], ""),
                status(NodeState::NodeUnavailable, &["node-2", "node-3"], ""),
                status(NodeState::NodeError, &["node-4"], "boom"),
            ],
        );
        assert_eq!(out, "");
        assert_eq!(
            err,
            "Nov 26 10:39:56.000 [relay]: 2 nodes are unavailable: node-2, node-3\nNov 26 10:39:56.000 [relay]: Error \"boom\" on 1 nodes: node-4\n"
        );
    }

    #[test]
    fn join_cutoff() {
        let names: Vec<String> = (0..20).map(|i| format!("node-{i:02}")).collect();
        assert_eq!(join_with_cutoff(&names[..2], ", ", 50), "node-00, node-01");
        assert_eq!(join_with_cutoff(&names, ", ", 50), "node-00, node-01, node-02, node-03, node-04 (and 15 more)");
    }

    #[test]
    fn kernel_drops_show_the_kernels_reason() {
        let mut f = Flow {
            verdict: Verdict::Dropped as i32,
            event_type: Some(sightline_proto::flow::CiliumEventType { r#type: 1, sub_type: 0 }),
            ..Flow::default()
        };
        assert_eq!(flow_type(&f), "Success", "without the extension, as hubble prints it");
        f.extensions = Some(FlowCounters { kernel_drop_reason: "NO_SOCKET".into(), ..FlowCounters::default() }.to_any());
        assert_eq!(flow_type(&f), "Kernel drop: NO_SOCKET");
        f.event_type = Some(sightline_proto::flow::CiliumEventType { r#type: 1, sub_type: 133 });
        assert_eq!(flow_type(&f), "Policy denied");
    }

    #[test]
    fn drop_reasons_and_identities() {
        assert_eq!(drop_reason_text(133), "Policy denied");
        assert_eq!(drop_reason_text(181), "Policy denied by denylist");
        assert_eq!(drop_reason_text(203), "DROP_EP_NOT_READY");
        assert_eq!(drop_reason_text(250), "250, 0");
        assert_eq!(identity(1), "(host)");
        assert_eq!(identity(0), "(unknown)");
        assert_eq!(identity(256), "(ID:256)");
    }
}
