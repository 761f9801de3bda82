//! Compatibility with Cilium Hubble's own `.proto` files.
//!
//! The upstream files live outside the repository, in
//! `../shared/reference/hubble-api/api/v1` (relative to the repository root).
//! When that folder is absent every test here prints a "skipped" line and
//! passes. When it is present:
//!
//! - `descriptors_match_upstream` compiles the upstream files with `protoc`
//!   and compares their descriptors with ours ([`FILE_DESCRIPTOR_SET`]),
//!   message by message, field by field, enum value by enum value and method
//!   by method, and reports every difference at once;
//! - `comparator_reports_every_difference` makes sure that comparison does
//!   catch changed, missing and extra items;
//! - the `*_round_trips_through_upstream` tests encode fully populated
//!   messages with our Rust types, let `protoc --decode` read them with the
//!   upstream schema (no field may come out unknown), encode that text back
//!   with `protoc --encode`, and decode the bytes with our types again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use prost::{Message, Name};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
    FileDescriptorSet, ServiceDescriptorProto,
};
use sightline_proto::FILE_DESCRIPTOR_SET;
use sightline_proto::{flow, observer, peer, relay, sightline};

/// The upstream files, by their descriptor name (relative to `api/v1`).
const UPSTREAM_FILES: &[&str] = &[
    "flow/flow.proto",
    "observer/observer.proto",
    "peer/peer.proto",
    "relay/relay.proto",
];

/// `api/v1` of the upstream reference. The tests that use it are ignored
/// when it is not there (`cfg(sightline_shared)`); run anyway, they fail.
fn upstream_root() -> PathBuf {
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/hubble-api");
    let root = reference.join("api/v1");
    assert!(
        UPSTREAM_FILES.iter().all(|f| root.join(f).is_file()),
        "../shared/reference/hubble-api not found (the upstream Hubble protos)"
    );
    root
}

fn protoc() -> PathBuf {
    std::env::var_os("PROTOC").map_or_else(|| PathBuf::from("protoc"), PathBuf::from)
}

/// Compiles the upstream files into a descriptor set (imports included).
fn upstream_descriptors(root: &Path) -> FileDescriptorSet {
    // One file per call: tests run in parallel and each compiles its own.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hubble-upstream-{}-{n}.pb", std::process::id()));
    let status = Command::new(protoc())
        .arg("-I")
        .arg(root)
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg("--include_imports")
        .args(UPSTREAM_FILES)
        .status()
        .expect("run protoc (install protobuf-compiler)");
    assert!(status.success(), "protoc failed on the upstream files");
    let bytes = std::fs::read(&out).expect("read upstream descriptor set");
    let _ = std::fs::remove_file(&out);
    FileDescriptorSet::decode(bytes.as_slice()).expect("decode upstream descriptor set")
}

fn our_descriptors() -> FileDescriptorSet {
    FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("decode our descriptor set")
}

// ---------------------------------------------------------------------------
// Structural comparison
// ---------------------------------------------------------------------------

/// Turns reserved ranges into a sorted list of merged half-open intervals,
/// so that `reserved 17, 18;` and `reserved 17 to 18;` compare equal.
fn merged(mut ranges: Vec<(i32, i32)>) -> Vec<(i32, i32)> {
    ranges.sort_unstable();
    let mut out: Vec<(i32, i32)> = Vec::new();
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

fn message_reserved(m: &DescriptorProto) -> Vec<(i32, i32)> {
    merged(
        m.reserved_range
            .iter()
            .map(|r| (r.start(), r.end()))
            .collect(),
    )
}

fn enum_reserved(e: &EnumDescriptorProto) -> Vec<(i32, i32)> {
    // Enum reserved ranges are inclusive at the end.
    merged(
        e.reserved_range
            .iter()
            .map(|r| (r.start(), r.end().saturating_add(1)))
            .collect(),
    )
}

fn sorted(names: &[String]) -> Vec<&str> {
    let mut v: Vec<&str> = names.iter().map(String::as_str).collect();
    v.sort_unstable();
    v
}

/// Collects every difference between an upstream descriptor set and ours.
#[derive(Default)]
struct Diff {
    found: Vec<String>,
}

impl Diff {
    fn note(&mut self, what: String) {
        self.found.push(what);
    }

    fn check<T: PartialEq + Debug>(&mut self, place: &str, what: &str, upstream: &T, ours: &T) {
        if upstream != ours {
            self.note(format!(
                "{place}: {what} differs: upstream {upstream:?}, ours {ours:?}"
            ));
        }
    }

    fn files(&mut self, upstream: &FileDescriptorSet, ours: &FileDescriptorSet) {
        for name in UPSTREAM_FILES {
            let up = upstream.file.iter().find(|f| f.name() == *name);
            let our = ours.file.iter().find(|f| f.name() == *name);
            match (up, our) {
                (Some(up), Some(our)) => self.file(up, our),
                (None, _) => self.note(format!("{name}: not in the upstream descriptor set")),
                (_, None) => self.note(format!("{name}: missing from ours")),
            }
        }
    }

    fn file(&mut self, up: &FileDescriptorProto, our: &FileDescriptorProto) {
        let place = up.name();
        self.check(place, "package", &up.package(), &our.package());
        self.check(place, "syntax", &up.syntax(), &our.syntax());
        self.check(
            place,
            "imports",
            &sorted(&up.dependency),
            &sorted(&our.dependency),
        );
        let public = |f: &FileDescriptorProto| -> BTreeSet<String> {
            f.public_dependency
                .iter()
                .filter_map(|i| usize::try_from(*i).ok())
                .filter_map(|i| f.dependency.get(i).cloned())
                .collect()
        };
        self.check(place, "public imports", &public(up), &public(our));
        // File options are not compared: upstream only sets go_package,
        // which names Cilium's Go module and has no effect on the wire.
        let prefix = format!(".{}", up.package());
        self.messages(&prefix, &up.message_type, &our.message_type);
        self.enums(&prefix, &up.enum_type, &our.enum_type);
        self.services(&prefix, &up.service, &our.service);
        if !up.extension.is_empty() || !our.extension.is_empty() {
            self.check(place, "extensions", &up.extension, &our.extension);
        }
    }

    fn messages(&mut self, prefix: &str, up: &[DescriptorProto], our: &[DescriptorProto]) {
        let ours: BTreeMap<&str, &DescriptorProto> = our.iter().map(|m| (m.name(), m)).collect();
        for m in up {
            let full = format!("{prefix}.{}", m.name());
            match ours.get(m.name()) {
                Some(o) => self.message(&full, m, o),
                None => self.note(format!("{full}: message missing from ours")),
            }
        }
        for m in our {
            if !up.iter().any(|u| u.name() == m.name()) {
                self.note(format!("{prefix}.{}: message not in upstream", m.name()));
            }
        }
    }

    fn message(&mut self, full: &str, up: &DescriptorProto, our: &DescriptorProto) {
        self.check(full, "message options", &up.options, &our.options);
        self.check(
            full,
            "reserved numbers",
            &message_reserved(up),
            &message_reserved(our),
        );
        self.check(
            full,
            "reserved names",
            &sorted(&up.reserved_name),
            &sorted(&our.reserved_name),
        );
        self.check(
            full,
            "extension ranges",
            &up.extension_range,
            &our.extension_range,
        );
        let oneofs = |m: &DescriptorProto| -> BTreeSet<String> {
            m.oneof_decl.iter().map(|o| o.name().to_owned()).collect()
        };
        self.check(full, "oneofs", &oneofs(up), &oneofs(our));

        for f in &up.field {
            let place = format!("{full}.{}", f.name());
            match our.field.iter().find(|o| o.name() == f.name()) {
                Some(o) => self.field(&place, up, f, our, o),
                None => self.note(format!("{place} = {}: field missing from ours", f.number())),
            }
        }
        for o in &our.field {
            if !up.field.iter().any(|f| f.name() == o.name()) {
                self.note(format!(
                    "{full}.{} = {}: field not in upstream",
                    o.name(),
                    o.number()
                ));
            }
        }
        self.messages(full, &up.nested_type, &our.nested_type);
        self.enums(full, &up.enum_type, &our.enum_type);
    }

    fn field(
        &mut self,
        place: &str,
        up_msg: &DescriptorProto,
        up: &FieldDescriptorProto,
        our_msg: &DescriptorProto,
        our: &FieldDescriptorProto,
    ) {
        let oneof = |m: &DescriptorProto, f: &FieldDescriptorProto| -> Option<String> {
            let i = usize::try_from(f.oneof_index?).ok()?;
            m.oneof_decl.get(i).map(|o| o.name().to_owned())
        };
        self.check(place, "number", &up.number(), &our.number());
        self.check(place, "label", &up.label(), &our.label());
        self.check(place, "type", &up.r#type(), &our.r#type());
        self.check(place, "type name", &up.type_name(), &our.type_name());
        self.check(place, "JSON name", &up.json_name(), &our.json_name());
        self.check(place, "oneof", &oneof(up_msg, up), &oneof(our_msg, our));
        self.check(
            place,
            "proto3 optional",
            &up.proto3_optional,
            &our.proto3_optional,
        );
        self.check(
            place,
            "default value",
            &up.default_value,
            &our.default_value,
        );
        self.check(place, "field options", &up.options, &our.options);
    }

    fn enums(&mut self, prefix: &str, up: &[EnumDescriptorProto], our: &[EnumDescriptorProto]) {
        for e in up {
            let full = format!("{prefix}.{}", e.name());
            match our.iter().find(|o| o.name() == e.name()) {
                Some(o) => self.enumeration(&full, e, o),
                None => self.note(format!("{full}: enum missing from ours")),
            }
        }
        for o in our {
            if !up.iter().any(|e| e.name() == o.name()) {
                self.note(format!("{prefix}.{}: enum not in upstream", o.name()));
            }
        }
    }

    fn enumeration(&mut self, full: &str, up: &EnumDescriptorProto, our: &EnumDescriptorProto) {
        self.check(full, "enum options", &up.options, &our.options);
        self.check(
            full,
            "reserved numbers",
            &enum_reserved(up),
            &enum_reserved(our),
        );
        self.check(
            full,
            "reserved names",
            &sorted(&up.reserved_name),
            &sorted(&our.reserved_name),
        );
        for v in &up.value {
            let place = format!("{full}.{}", v.name());
            match our.value.iter().find(|o| o.name() == v.name()) {
                Some(o) => {
                    self.check(&place, "value", &v.number(), &o.number());
                    self.check(&place, "value options", &v.options, &o.options);
                }
                None => self.note(format!(
                    "{place} = {}: enum value missing from ours",
                    v.number()
                )),
            }
        }
        for o in &our.value {
            if !up.value.iter().any(|v| v.name() == o.name()) {
                self.note(format!(
                    "{full}.{} = {}: enum value not in upstream",
                    o.name(),
                    o.number()
                ));
            }
        }
    }

    fn services(
        &mut self,
        prefix: &str,
        up: &[ServiceDescriptorProto],
        our: &[ServiceDescriptorProto],
    ) {
        for s in up {
            let full = format!("{prefix}.{}", s.name());
            let Some(o) = our.iter().find(|o| o.name() == s.name()) else {
                self.note(format!("{full}: service missing from ours"));
                continue;
            };
            self.check(&full, "service options", &s.options, &o.options);
            for m in &s.method {
                let place = format!("{full}/{}", m.name());
                match o.method.iter().find(|om| om.name() == m.name()) {
                    Some(om) => {
                        self.check(&place, "request type", &m.input_type(), &om.input_type());
                        self.check(&place, "response type", &m.output_type(), &om.output_type());
                        self.check(
                            &place,
                            "client streaming",
                            &m.client_streaming(),
                            &om.client_streaming(),
                        );
                        self.check(
                            &place,
                            "server streaming",
                            &m.server_streaming(),
                            &om.server_streaming(),
                        );
                        self.check(&place, "method options", &m.options, &om.options);
                    }
                    None => self.note(format!("{place}: method missing from ours")),
                }
            }
            for om in &o.method {
                if !s.method.iter().any(|m| m.name() == om.name()) {
                    self.note(format!("{full}/{}: method not in upstream", om.name()));
                }
            }
        }
        for o in our {
            if !up.iter().any(|s| s.name() == o.name()) {
                self.note(format!("{prefix}.{}: service not in upstream", o.name()));
            }
        }
    }
}

fn differences(upstream: &FileDescriptorSet, ours: &FileDescriptorSet) -> Vec<String> {
    let mut diff = Diff::default();
    diff.files(upstream, ours);
    diff.found
}

#[test]
#[cfg_attr(not(sightline_shared), ignore = "needs ../shared/reference/hubble-api (the upstream Hubble protos)")]
fn descriptors_match_upstream() {
    let root = upstream_root();
    let upstream = upstream_descriptors(&root);
    let ours = our_descriptors();
    let found = differences(&upstream, &ours);
    assert!(
        found.is_empty(),
        "{} difference(s) from upstream Hubble:\n  {}",
        found.len(),
        found.join("\n  ")
    );

    // Count what was compared, so a silently empty comparison cannot pass.
    let mut messages = 0;
    let mut fields = 0;
    let mut stack: Vec<&DescriptorProto> = upstream
        .file
        .iter()
        .filter(|f| UPSTREAM_FILES.contains(&f.name()))
        .flat_map(|f| &f.message_type)
        .collect();
    while let Some(m) = stack.pop() {
        messages += 1;
        fields += m.field.len();
        stack.extend(&m.nested_type);
    }
    println!("compared {messages} messages and {fields} fields with upstream: no difference");
    assert!(
        messages > 60 && fields > 300,
        "suspiciously little compared"
    );
}

#[test]
#[cfg_attr(not(sightline_shared), ignore = "needs ../shared/reference/hubble-api (the upstream Hubble protos)")]
fn comparator_reports_every_difference() {
    let root = upstream_root();
    let upstream = upstream_descriptors(&root);
    let mut broken = our_descriptors();
    let flow_file = broken
        .file
        .iter_mut()
        .find(|f| f.name() == "flow/flow.proto")
        .expect("our flow.proto");
    let flow_msg = flow_file
        .message_type
        .iter_mut()
        .find(|m| m.name() == "Flow")
        .expect("Flow");
    // 1: renumber a field; 2: drop a field; 3: add a field.
    let verdict = flow_msg
        .field
        .iter_mut()
        .find(|f| f.name() == "verdict")
        .expect("verdict");
    verdict.number = Some(99);
    flow_msg.field.retain(|f| f.name() != "uuid");
    let mut extra = flow_msg.field[0].clone();
    extra.name = Some("sightline_extra".to_owned());
    extra.number = Some(4242);
    flow_msg.field.push(extra);
    // 4: change an enum value.
    let drop_reason = flow_file
        .enum_type
        .iter_mut()
        .find(|e| e.name() == "DropReason")
        .expect("DropReason");
    let denied = drop_reason
        .value
        .iter_mut()
        .find(|v| v.name() == "POLICY_DENIED")
        .expect("POLICY_DENIED");
    denied.number = Some(1);
    // 5: make a stream unary.
    let observer_file = broken
        .file
        .iter_mut()
        .find(|f| f.name() == "observer/observer.proto")
        .expect("our observer.proto");
    observer_file.service[0]
        .method
        .iter_mut()
        .find(|m| m.name() == "GetFlows")
        .expect("GetFlows")
        .server_streaming = Some(false);

    let found = differences(&upstream, &broken);
    let expected = [
        ".flow.Flow.verdict: number differs",
        ".flow.Flow.uuid = 34: field missing from ours",
        ".flow.Flow.sightline_extra = 4242: field not in upstream",
        ".flow.DropReason.POLICY_DENIED: value differs",
        ".observer.Observer/GetFlows: server streaming differs",
    ];
    for e in expected {
        assert!(
            found.iter().any(|f| f.starts_with(e)),
            "expected a difference starting with {e:?}, got {found:#?}"
        );
    }
    assert_eq!(
        found.len(),
        expected.len(),
        "unexpected extra differences: {found:#?}"
    );
}

// ---------------------------------------------------------------------------
// Wire round trips through the upstream schema
// ---------------------------------------------------------------------------

fn run_protoc(root: &Path, mode: &str, type_name: &str, input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(protoc())
        .arg("-I")
        .arg(root)
        .arg(format!("--{mode}={type_name}"))
        .args(UPSTREAM_FILES)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run protoc");
    child
        .stdin
        .take()
        .expect("protoc stdin")
        .write_all(input)
        .expect("write to protoc");
    let out = child.wait_with_output().expect("wait for protoc");
    assert!(
        out.status.success(),
        "protoc --{mode}={type_name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Encodes `msg` with our types, decodes it as text with the upstream schema,
/// encodes the text again with the upstream schema and decodes the result
/// with our types. Returns the upstream text form.
fn round_trip<M: Message + Name + Default + PartialEq + Debug>(root: &Path, msg: &M) -> String {
    let type_name = M::full_name();
    let text = run_protoc(root, "decode", &type_name, &msg.encode_to_vec());
    let text = String::from_utf8(text).expect("protoc prints UTF-8");
    // Fields the upstream schema does not know are printed by number.
    let unknown: Vec<&str> = text
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert!(
        unknown.is_empty(),
        "{type_name}: upstream sees unknown fields {unknown:?} in\n{text}"
    );
    let bytes = run_protoc(root, "encode", &type_name, text.as_bytes());
    let back = M::decode(bytes.as_slice()).expect("decode upstream's encoding");
    assert_eq!(
        &back, msg,
        "{type_name} changed on its way through upstream's schema"
    );
    text
}

fn timestamp(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

fn endpoint(id: u32, pod: &str) -> flow::Endpoint {
    flow::Endpoint {
        id,
        identity: 256 + id,
        cluster_name: "default".into(),
        namespace: "x".into(),
        labels: vec![
            "k8s:app=a".into(),
            "k8s:io.kubernetes.pod.namespace=x".into(),
        ],
        pod_name: pod.into(),
        workloads: vec![flow::Workload {
            name: "a".into(),
            kind: "Deployment".into(),
        }],
    }
}

fn policy(name: &str) -> flow::Policy {
    flow::Policy {
        name: name.into(),
        namespace: "x".into(),
        labels: vec!["k8s:io.cilium.k8s.policy.name=deny".into()],
        revision: 7,
        kind: "NetworkPolicy".into(),
    }
}

/// A flow with every field set to something other than its default.
#[allow(deprecated, reason = "the deprecated fields must round-trip too")]
fn full_flow() -> flow::Flow {
    use flow::layer4::Protocol;
    flow::Flow {
        time: timestamp(1_700_000_000, 123_456_789),
        uuid: "6f1b0cbe-9b0a-4c47-8a9e-0a8b7f1d2c3e".into(),
        emitter: Some(flow::Emitter {
            name: "Sightline".into(),
            version: "0.1.0".into(),
        }),
        verdict: flow::Verdict::Dropped as i32,
        drop_reason: 133,
        auth_type: flow::AuthType::Spire as i32,
        ethernet: Some(flow::Ethernet {
            source: "02:00:00:00:00:01".into(),
            destination: "02:00:00:00:00:02".into(),
        }),
        ip: Some(flow::Ip {
            source: "10.244.1.2".into(),
            source_xlated: "10.0.0.9".into(),
            destination: "10.244.1.3".into(),
            ip_version: flow::IpVersion::IPv4 as i32,
            encrypted: true,
        }),
        l4: Some(flow::Layer4 {
            protocol: Some(Protocol::Tcp(flow::Tcp {
                source_port: 40_000,
                destination_port: 80,
                flags: Some(flow::TcpFlags {
                    fin: true,
                    syn: true,
                    rst: true,
                    psh: true,
                    ack: true,
                    urg: true,
                    ece: true,
                    cwr: true,
                    ns: true,
                }),
            })),
        }),
        tunnel: Some(flow::Tunnel {
            protocol: flow::tunnel::Protocol::Geneve as i32,
            ip: Some(flow::Ip {
                source: "192.0.2.1".into(),
                destination: "192.0.2.2".into(),
                ip_version: flow::IpVersion::IPv4 as i32,
                ..Default::default()
            }),
            l4: Some(flow::Layer4 {
                protocol: Some(Protocol::Udp(flow::Udp {
                    source_port: 1,
                    destination_port: 6081,
                })),
            }),
            vni: 42,
        }),
        source: Some(endpoint(1, "a")),
        destination: Some(endpoint(2, "b")),
        r#type: flow::FlowType::L3L4 as i32,
        node_name: "prod/node-1".into(),
        node_labels: vec!["kubernetes.io/hostname=node-1".into()],
        source_names: vec!["a.example.".into()],
        destination_names: vec!["b.example.".into()],
        l7: Some(flow::Layer7 {
            r#type: flow::L7FlowType::Response as i32,
            latency_ns: 1_500_000,
            record: Some(flow::layer7::Record::Dns(flow::Dns {
                query: "b.example.".into(),
                ips: vec!["10.244.1.3".into()],
                ttl: 30,
                cnames: vec!["c.example.".into()],
                observation_source: "proxy".into(),
                rcode: 3,
                qtypes: vec!["A".into()],
                rrtypes: vec!["CNAME".into()],
            })),
        }),
        reply: true,
        event_type: Some(flow::CiliumEventType {
            r#type: 1,
            sub_type: 133,
        }),
        source_service: Some(flow::Service {
            name: "a".into(),
            namespace: "x".into(),
        }),
        destination_service: Some(flow::Service {
            name: "b".into(),
            namespace: "x".into(),
        }),
        traffic_direction: flow::TrafficDirection::Ingress as i32,
        policy_match_type: 2,
        trace_observation_point: flow::TraceObservationPoint::ToEndpoint as i32,
        trace_reason: flow::TraceReason::Established as i32,
        file: Some(flow::FileInfo {
            name: "bpf_lxc.c".into(),
            line: 1234,
        }),
        ip_trace_id: Some(flow::IpTraceId {
            trace_id: u64::MAX,
            ip_option_type: 136,
        }),
        drop_reason_desc: flow::DropReason::PolicyDenied as i32,
        is_reply: Some(false),
        debug_capture_point: flow::DebugCapturePoint::DbgCaptureSnatPost as i32,
        interface: Some(flow::NetworkInterface {
            index: 7,
            name: "lxc00001".into(),
        }),
        proxy_port: 15_001,
        trace_context: Some(flow::TraceContext {
            parent: Some(flow::TraceParent {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            }),
        }),
        sock_xlate_point: flow::SocketTranslationPoint::SockXlatePointPostDirectionRev as i32,
        socket_cookie: 99,
        cgroup_id: 100,
        summary: "TCP Flags: SYN".into(),
        extensions: Some(
            sightline::v1::FlowCounters {
                forward_packets: 1,
                forward_bytes: 2,
                reply_packets: 3,
                reply_bytes: 4,
                kernel_drop_reason: "NO_SOCKET".into(),
            }
            .to_any(),
        ),
        egress_allowed_by: vec![policy("allow-egress")],
        ingress_allowed_by: vec![policy("allow-ingress")],
        egress_denied_by: vec![policy("deny-egress")],
        ingress_denied_by: vec![policy("deny-ingress")],
        policy_log: vec!["audit".into()],
        aggregate: Some(flow::Aggregate {
            ingress_flow_count: 1,
            egress_flow_count: 2,
            unknown_direction_flow_count: 3,
        }),
    }
}

/// A filter with every field set.
fn full_filter() -> flow::FlowFilter {
    flow::FlowFilter {
        uuid: vec!["u".into()],
        source_ip: vec!["10.244.0.0/16".into()],
        source_ip_xlated: vec!["10.0.0.9".into()],
        source_pod: vec!["x/a".into()],
        source_fqdn: vec!["a.example.".into()],
        source_label: vec!["k8s:app=a".into()],
        source_service: vec!["x/a".into()],
        source_workload: vec![flow::Workload {
            name: "a".into(),
            kind: "Deployment".into(),
        }],
        source_cluster_name: vec!["default".into()],
        destination_ip: vec!["10.244.1.3".into()],
        destination_pod: vec!["x/".into()],
        destination_fqdn: vec!["b.example.".into()],
        destination_label: vec!["app in (b)".into()],
        destination_service: vec!["/b".into()],
        destination_workload: vec![flow::Workload {
            name: "b".into(),
            kind: "StatefulSet".into(),
        }],
        destination_cluster_name: vec!["default".into()],
        traffic_direction: vec![flow::TrafficDirection::Egress as i32],
        verdict: vec![
            flow::Verdict::Forwarded as i32,
            flow::Verdict::Dropped as i32,
        ],
        drop_reason_desc: vec![flow::DropReason::PolicyDeny as i32],
        interface: vec![flow::NetworkInterface {
            index: 3,
            name: "lxc00002".into(),
        }],
        event_type: vec![flow::EventTypeFilter {
            r#type: 4,
            match_sub_type: true,
            sub_type: 0,
        }],
        http_status_code: vec!["5+".into()],
        protocol: vec!["tcp".into(), "sctp".into()],
        source_port: vec!["40000".into()],
        destination_port: vec!["80".into()],
        reply: vec![true, false],
        dns_query: vec![".*example.*".into()],
        source_identity: vec![256],
        destination_identity: vec![257],
        http_method: vec!["GET".into()],
        http_path: vec!["/api/.*".into()],
        http_url: vec!["http://b/.*".into()],
        http_header: vec![flow::HttpHeader {
            key: "x-test".into(),
            value: "1".into(),
        }],
        tcp_flags: vec![flow::TcpFlags {
            syn: true,
            ..Default::default()
        }],
        node_name: vec!["prod/".into()],
        node_labels: vec!["zone=a".into()],
        ip_version: vec![flow::IpVersion::IPv6 as i32],
        trace_id: vec!["t".into()],
        ip_trace_id: vec![5],
        encrypted: vec![false],
        experimental: Some(flow::flow_filter::Experimental {
            cel_expression: vec!["_flow.verdict == Verdict.DROPPED".into()],
        }),
    }
}

#[test]
#[cfg_attr(not(sightline_shared), ignore = "needs ../shared/reference/hubble-api (the upstream Hubble protos)")]
fn flow_round_trips_through_upstream() {
    let root = upstream_root();
    let text = round_trip(&root, &full_flow());
    // Spot-check the upstream spellings that proto3 JSON and the CLI rely on.
    for name in [
        "IP {",
        "TCP {",
        "Type: L3_L4",
        "Summary:",
        "drop_reason_desc: POLICY_DENIED",
        "aggregate {",
    ] {
        assert!(text.contains(name), "upstream text lacks {name:?}:\n{text}");
    }

    // The other oneof members of Layer4 and Layer7.
    use flow::layer4::Protocol;
    let protocols = [
        Protocol::Udp(flow::Udp {
            source_port: 1,
            destination_port: 53,
        }),
        Protocol::IcmPv4(flow::IcmPv4 { r#type: 8, code: 0 }),
        Protocol::IcmPv6(flow::IcmPv6 {
            r#type: 128,
            code: 0,
        }),
        Protocol::Sctp(flow::Sctp {
            source_port: 5,
            destination_port: 6,
        }),
        Protocol::Vrrp(flow::Vrrp {
            r#type: 1,
            vrid: 2,
            priority: 3,
        }),
        Protocol::Igmp(flow::Igmp {
            r#type: 0x16,
            group_address: "239.0.0.1".into(),
        }),
    ];
    for protocol in protocols {
        let flow = flow::Flow {
            l4: Some(flow::Layer4 {
                protocol: Some(protocol),
            }),
            l7: Some(flow::Layer7 {
                r#type: flow::L7FlowType::Request as i32,
                latency_ns: 0,
                record: Some(flow::layer7::Record::Http(flow::Http {
                    code: 200,
                    method: "GET".into(),
                    url: "http://b/".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: vec![flow::HttpHeader {
                        key: "a".into(),
                        value: "b".into(),
                    }],
                })),
            }),
            ..Default::default()
        };
        round_trip(&root, &flow);
    }
    #[allow(deprecated, reason = "the deprecated Kafka record must still decode")]
    let kafka = flow::Flow {
        l7: Some(flow::Layer7 {
            r#type: flow::L7FlowType::Sample as i32,
            latency_ns: 1,
            record: Some(flow::layer7::Record::Kafka(flow::Kafka {
                error_code: -1,
                api_version: 2,
                api_key: "produce".into(),
                correlation_id: -3,
                topic: "t".into(),
            })),
        }),
        ..Default::default()
    };
    round_trip(&root, &kafka);
}

#[test]
#[cfg_attr(not(sightline_shared), ignore = "needs ../shared/reference/hubble-api (the upstream Hubble protos)")]
fn observer_messages_round_trip_through_upstream() {
    let root = upstream_root();
    let request = observer::GetFlowsRequest {
        number: 20,
        first: true,
        follow: true,
        blacklist: vec![full_filter()],
        whitelist: vec![full_filter(), flow::FlowFilter::default()],
        since: timestamp(1, 2),
        until: timestamp(3, 4),
        field_mask: Some(prost_types::FieldMask {
            paths: vec!["source.pod_name".into(), "verdict".into()],
        }),
        experimental: Some(observer::get_flows_request::Experimental {}),
        extensions: Some(sightline::v1::FlowCounters::default().to_any()),
    };
    round_trip(&root, &request);

    use observer::get_flows_response::ResponseTypes;
    let responses = [
        ResponseTypes::Flow(full_flow()),
        ResponseTypes::NodeStatus(relay::NodeStatusEvent {
            state_change: relay::NodeState::NodeError as i32,
            node_names: vec!["node-1".into(), "prod/node-2".into()],
            message: "connection refused".into(),
        }),
        ResponseTypes::LostEvents(flow::LostEvent {
            source: flow::LostEventSource::HubbleRingBuffer as i32,
            num_events_lost: 12,
            cpu: Some(1),
            first: timestamp(5, 6),
            last: timestamp(7, 8),
        }),
    ];
    for response in responses {
        round_trip(
            &root,
            &observer::GetFlowsResponse {
                response_types: Some(response),
                node_name: "node-1".into(),
                time: timestamp(9, 10),
            },
        );
    }

    round_trip(
        &root,
        &observer::ServerStatusResponse {
            num_flows: 1,
            max_flows: 4095,
            seen_flows: 3,
            uptime_ns: 4,
            num_connected_nodes: Some(5),
            num_unavailable_nodes: Some(6),
            unavailable_nodes: vec!["node-7".into()],
            version: "0.1.0".into(),
            flows_rate: 1.5,
        },
    );
    round_trip(
        &root,
        &observer::GetNodesResponse {
            nodes: vec![observer::Node {
                name: "node-1".into(),
                version: "0.1.0".into(),
                address: "10.0.0.1:4244".into(),
                state: relay::NodeState::NodeConnected as i32,
                tls: Some(observer::Tls {
                    enabled: true,
                    server_name: "node-1.default.hubble-grpc.cilium.io".into(),
                }),
                uptime_ns: 1,
                num_flows: 2,
                max_flows: 3,
                seen_flows: 4,
            }],
        },
    );
    round_trip(
        &root,
        &observer::GetNamespacesResponse {
            namespaces: vec![observer::Namespace {
                cluster: "default".into(),
                namespace: "x".into(),
            }],
        },
    );
    for (number, first, follow) in [(10, true, false), (0, false, true)] {
        round_trip(
            &root,
            &observer::GetAgentEventsRequest {
                number,
                first,
                follow,
                since: timestamp(1, 0),
                until: timestamp(2, 0),
            },
        );
        round_trip(
            &root,
            &observer::GetDebugEventsRequest {
                number,
                first,
                follow,
                since: timestamp(1, 0),
                until: timestamp(2, 0),
            },
        );
    }
}

#[test]
#[cfg_attr(not(sightline_shared), ignore = "needs ../shared/reference/hubble-api (the upstream Hubble protos)")]
#[allow(
    deprecated,
    reason = "the deprecated service notifications must still decode"
)]
fn events_round_trip_through_upstream() {
    let root = upstream_root();
    use flow::agent_event::Notification;
    let addr = |ip: &str| flow::ServiceUpsertNotificationAddr {
        ip: ip.into(),
        port: 80,
    };
    let notifications = [
        Notification::Unknown(flow::AgentEventUnknown {
            r#type: "x".into(),
            notification: "y".into(),
        }),
        Notification::AgentStart(flow::TimeNotification {
            time: timestamp(1, 1),
        }),
        Notification::PolicyUpdate(flow::PolicyUpdateNotification {
            labels: vec!["k8s:a=b".into()],
            revision: 2,
            rule_count: -3,
        }),
        Notification::EndpointRegenerate(flow::EndpointRegenNotification {
            id: 4,
            labels: vec!["l".into()],
            error: "e".into(),
        }),
        Notification::EndpointUpdate(flow::EndpointUpdateNotification {
            id: 5,
            labels: vec!["l".into()],
            error: "e".into(),
            pod_name: "a".into(),
            namespace: "x".into(),
        }),
        Notification::IpcacheUpdate(flow::IpCacheNotification {
            cidr: "10.244.1.2/32".into(),
            identity: 256,
            old_identity: Some(257),
            host_ip: "10.0.0.1".into(),
            old_host_ip: "10.0.0.2".into(),
            encrypt_key: 1,
            namespace: "x".into(),
            pod_name: "a".into(),
        }),
        Notification::ServiceUpsert(flow::ServiceUpsertNotification {
            id: 6,
            frontend_address: Some(addr("10.96.0.1")),
            backend_addresses: vec![addr("10.244.1.2"), addr("10.244.1.3")],
            r#type: "ClusterIP".into(),
            traffic_policy: "Cluster".into(),
            name: "b".into(),
            namespace: "x".into(),
            ext_traffic_policy: "Local".into(),
            int_traffic_policy: "Cluster".into(),
        }),
        Notification::ServiceDelete(flow::ServiceDeleteNotification { id: 7 }),
    ];
    for notification in notifications {
        let event = flow::AgentEvent {
            r#type: flow::AgentEventType::IpcacheUpserted as i32,
            notification: Some(notification),
        };
        round_trip(
            &root,
            &observer::GetAgentEventsResponse {
                agent_event: Some(event.clone()),
                node_name: "node-1".into(),
                time: timestamp(1, 2),
            },
        );
        round_trip(
            &root,
            &observer::ExportEvent {
                response_types: Some(observer::export_event::ResponseTypes::AgentEvent(event)),
                node_name: "node-1".into(),
                time: timestamp(1, 2),
            },
        );
    }

    let debug = flow::DebugEvent {
        r#type: flow::DebugEventType::DbgLb6LoopbackSnatRev as i32,
        source: Some(endpoint(3, "c")),
        hash: Some(1),
        arg1: Some(2),
        arg2: Some(3),
        arg3: Some(4),
        message: "m".into(),
        cpu: Some(0),
    };
    round_trip(
        &root,
        &observer::GetDebugEventsResponse {
            debug_event: Some(debug.clone()),
            node_name: "node-1".into(),
            time: timestamp(1, 2),
        },
    );
    round_trip(
        &root,
        &observer::ExportEvent {
            response_types: Some(observer::export_event::ResponseTypes::DebugEvent(debug)),
            node_name: "node-1".into(),
            time: timestamp(1, 2),
        },
    );
}

#[test]
#[cfg_attr(not(sightline_shared), ignore = "needs ../shared/reference/hubble-api (the upstream Hubble protos)")]
fn peer_messages_round_trip_through_upstream() {
    let root = upstream_root();
    for kind in [
        peer::ChangeNotificationType::PeerAdded,
        peer::ChangeNotificationType::PeerUpdated,
        peer::ChangeNotificationType::PeerDeleted,
    ] {
        round_trip(
            &root,
            &peer::ChangeNotification {
                name: "prod/node-1".into(),
                address: "10.0.0.1:4244".into(),
                r#type: kind as i32,
                tls: Some(peer::Tls {
                    server_name: "node-1.prod.hubble-grpc.cilium.io".into(),
                }),
            },
        );
    }
    round_trip(&root, &peer::NotifyRequest {});
}

/// Every enum value of ours decodes to the same name upstream (a value that
/// upstream did not know would be printed as a bare number).
#[test]
#[cfg_attr(not(sightline_shared), ignore = "needs ../shared/reference/hubble-api (the upstream Hubble protos)")]
fn enum_values_read_the_same_upstream() {
    let root = upstream_root();
    let ours = our_descriptors();
    let drop_reason = ours
        .file
        .iter()
        .find(|f| f.name() == "flow/flow.proto")
        .and_then(|f| f.enum_type.iter().find(|e| e.name() == "DropReason"))
        .expect("DropReason");
    let filter = flow::FlowFilter {
        drop_reason_desc: drop_reason.value.iter().map(|v| v.number()).collect(),
        ..Default::default()
    };
    let text = round_trip(&root, &filter);
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("drop_reason_desc: "))
        .collect();
    let expected: Vec<&str> = drop_reason.value.iter().map(|v| v.name()).collect();
    assert_eq!(names, expected);
}
