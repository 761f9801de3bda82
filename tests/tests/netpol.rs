//! NetworkPolicy conformance (networking.k8s.io/v1), measured on a real lab.
//!
//! The fixture is the classic x/y/z layout (`xyz_manifests()`): namespaces x, y, z
//! (labels `ns: <name>`, plus `kubernetes.io/metadata.name: <name>` which Kubernetes adds),
//! each with pods a, b, c (labels `pod: <name>`) that serve TCP and UDP on ports 80 and 81,
//! named serve-80-tcp, serve-80-udp, serve-81-tcp and serve-81-udp.
//!
//! Every case applies its policies with `lab apply -f`, measures the full 9×9 reachability
//! matrix with `lab matrix`, compares it with the matrix written out in the case, and then
//! deletes every policy (and restores any label it changed) so the next case starts from the
//! all-connected baseline, which is checked after every case. All failures are collected and
//! reported together at the end.
//!
//! The expected matrices were worked out by hand from the Kubernetes documentation and API
//! reference. They are written as text: one row per source pod, one column per destination,
//! in the order x/a x/b x/c y/a y/b y/c z/a z/b z/c; `.` is connected, `X` blocked. The
//! header line (`xa xb …`) is only there to be read.
//!
//! Rules that hold in every matrix:
//!
//! * A pod probing itself connects to its own IP, which the kernel delivers inside the pod's
//!   own network namespace without the packet ever leaving it, so no policy applies: the
//!   diagonal is always `.` (upstream's netpol tests call this "allow loopback").
//! * A connection needs both the source's egress and the destination's ingress to allow it.
//!   A pod is only isolated in a direction when some policy selects it with that direction in
//!   its policyTypes; policies are additive (the union of their rules).
//! * Policies decide new connections only: the replies of an allowed connection always pass.
//!   So a pod with its egress denied still accepts connections from others (its replies are
//!   not new connections), and a pod with its ingress denied can still connect out.
//!
//! The suite runs on a one-node lab and, with the nine pods spread over three nodes (pod a on
//! node-1, b on node-2, c on node-3), in each network model (`lab up --network-model`).
//! Run a subset with `NETPOL_CASES=name,name2` (substring match), one model with
//! `cargo test -p sightline-e2e --test netpol -- node_subnet`.

use std::fmt::Write as _;

use sightline_e2e::{Lab, require_root, sightline, write_temp, xyz_manifests_on};

const PODS: [&str; 9] = ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"];
const HEADER: &str = "xa xb xc ya yb yc za zb zc";
const PROBE_TIMEOUT_MS: &str = "400";

/// `[from][to]`, true when connected.
type Matrix = [[bool; 9]; 9];

// -------------------------------------------------------------------------------------------
// Matrices shared by several cases.
// -------------------------------------------------------------------------------------------

const ALL: &str = "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  .  .  .  .  .  .
x/b    .  .  .  .  .  .  .  .  .
x/c    .  .  .  .  .  .  .  .  .
y/a    .  .  .  .  .  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    .  .  .  .  .  .  .  .  .
z/a    .  .  .  .  .  .  .  .  .
z/b    .  .  .  .  .  .  .  .  .
z/c    .  .  .  .  .  .  .  .  .
";

/// Every pod of x isolated for ingress with nothing allowed.
const DENY_IN_X: &str = "
      xa xb xc ya yb yc za zb zc
x/a    .  X  X  .  .  .  .  .  .
x/b    X  .  X  .  .  .  .  .  .
x/c    X  X  .  .  .  .  .  .  .
y/a    X  X  X  .  .  .  .  .  .
y/b    X  X  X  .  .  .  .  .  .
y/c    X  X  X  .  .  .  .  .  .
z/a    X  X  X  .  .  .  .  .  .
z/b    X  X  X  .  .  .  .  .  .
z/c    X  X  X  .  .  .  .  .  .
";

/// Every pod of y isolated for ingress with nothing allowed.
const DENY_IN_Y: &str = "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  X  X  X  .  .  .
x/b    .  .  .  X  X  X  .  .  .
x/c    .  .  .  X  X  X  .  .  .
y/a    .  .  .  .  X  X  .  .  .
y/b    .  .  .  X  .  X  .  .  .
y/c    .  .  .  X  X  .  .  .  .
z/a    .  .  .  X  X  X  .  .  .
z/b    .  .  .  X  X  X  .  .  .
z/c    .  .  .  X  X  X  .  .  .
";

/// Every pod of z isolated for ingress with nothing allowed.
const DENY_IN_Z: &str = "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  .  .  .  X  X  X
x/b    .  .  .  .  .  .  X  X  X
x/c    .  .  .  .  .  .  X  X  X
y/a    .  .  .  .  .  .  X  X  X
y/b    .  .  .  .  .  .  X  X  X
y/c    .  .  .  .  .  .  X  X  X
z/a    .  .  .  .  .  .  .  X  X
z/b    .  .  .  .  .  .  X  .  X
z/c    .  .  .  .  .  .  X  X  .
";

/// Every pod of x isolated for egress with nothing allowed.
const DENY_OUT_X: &str = "
      xa xb xc ya yb yc za zb zc
x/a    .  X  X  X  X  X  X  X  X
x/b    X  .  X  X  X  X  X  X  X
x/c    X  X  .  X  X  X  X  X  X
y/a    .  .  .  .  .  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    .  .  .  .  .  .  .  .  .
z/a    .  .  .  .  .  .  .  .  .
z/b    .  .  .  .  .  .  .  .  .
z/c    .  .  .  .  .  .  .  .  .
";

/// Every pod of y isolated for egress with nothing allowed.
const DENY_OUT_Y: &str = "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  .  .  .  .  .  .
x/b    .  .  .  .  .  .  .  .  .
x/c    .  .  .  .  .  .  .  .  .
y/a    X  X  X  .  X  X  X  X  X
y/b    X  X  X  X  .  X  X  X  X
y/c    X  X  X  X  X  .  X  X  X
z/a    .  .  .  .  .  .  .  .  .
z/b    .  .  .  .  .  .  .  .  .
z/c    .  .  .  .  .  .  .  .  .
";

/// Every pod of z isolated for ingress and egress with nothing allowed.
const DENY_BOTH_Z: &str = "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  .  .  .  X  X  X
x/b    .  .  .  .  .  .  X  X  X
x/c    .  .  .  .  .  .  X  X  X
y/a    .  .  .  .  .  .  X  X  X
y/b    .  .  .  .  .  .  X  X  X
y/c    .  .  .  .  .  .  X  X  X
z/a    X  X  X  X  X  X  .  X  X
z/b    X  X  X  X  X  X  X  .  X
z/c    X  X  X  X  X  X  X  X  .
";

// -------------------------------------------------------------------------------------------
// Manifests.
// -------------------------------------------------------------------------------------------

/// A NetworkPolicy; `spec` is a YAML flow mapping. `@ip(ns/pod)` and `@podcidr` in it are replaced, when
/// the manifest is applied, with the pod's IP and the range every pod's address comes from
/// (`network.pod_range` of `lab status`).
fn np(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: \"{ns}\"\nspec: {spec}\n"
    )
}

/// The container ports of every xyz pod.
const XYZ_PORTS: &str = "[{containerPort: 80, protocol: TCP, name: serve-80-tcp}, {containerPort: 80, protocol: UDP, name: serve-80-udp}, {containerPort: 81, protocol: TCP, name: serve-81-tcp}, {containerPort: 81, protocol: UDP, name: serve-81-udp}]";

/// A pod like the xyz ones, with the given labels (flow mapping) and container ports.
fn pod(ns: &str, name: &str, labels: &str, ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: \"{ns}\"\n  labels: {labels}\nspec:\n  @nodename({ns}/{name})\n  containers:\n  - name: c\n    ports: {ports}\n"
    )
}

/// A namespace with the given labels (flow mapping).
fn namespace(name: &str, labels: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: \"{name}\"\n  labels: {labels}\n")
}

fn docs(parts: &[String]) -> String {
    parts.join("---\n")
}

// -------------------------------------------------------------------------------------------
// Cases.
// -------------------------------------------------------------------------------------------

enum Op {
    Apply(String),
    Delete(String),
    Expect { port: u16, protocol: &'static str, matrix: &'static str },
}

struct Case {
    name: &'static str,
    /// The Kubernetes rule the case checks, in one line.
    rule: &'static str,
    ops: Vec<Op>,
    /// Run after `ops` even when they failed, before the generic cleanup (which deletes every
    /// policy and re-applies the xyz manifests).
    restore: Vec<Op>,
}

impl Case {
    fn new(name: &'static str, rule: &'static str) -> Self {
        Self { name, rule, ops: Vec::new(), restore: Vec::new() }
    }
    fn apply(mut self, manifest: impl Into<String>) -> Self {
        self.ops.push(Op::Apply(manifest.into()));
        self
    }
    fn delete(mut self, manifest: impl Into<String>) -> Self {
        self.ops.push(Op::Delete(manifest.into()));
        self
    }
    fn expect(mut self, port: u16, protocol: &'static str, matrix: &'static str) -> Self {
        self.ops.push(Op::Expect { port, protocol, matrix });
        self
    }
    fn restore_delete(mut self, manifest: impl Into<String>) -> Self {
        self.restore.push(Op::Delete(manifest.into()));
        self
    }
}

#[allow(clippy::too_many_lines, clippy::vec_init_then_push, reason = "one list of cases, each small and commented")]
fn cases() -> Vec<Case> {
    let mut v = Vec::new();

    // Checks: with no NetworkPolicy at all, pods are non-isolated and accept everything.
    v.push(
        Case::new("baseline", "without any policy every pod is non-isolated: all traffic, both protocols, every port")
            .expect(80, "TCP", ALL)
            .expect(81, "TCP", ALL)
            .expect(80, "UDP", ALL)
            .expect(81, "UDP", ALL),
    );

    // Checks: `podSelector: {}` + policyTypes [Ingress] and no rules = default deny ingress.
    v.push(
        Case::new("default-deny-ingress", "an empty podSelector selects every pod of the namespace; Ingress with no rules allows no ingress, egress is untouched")
            .apply(np("x", "default-deny-ingress", "{podSelector: {}, policyTypes: [Ingress]}"))
            .expect(80, "TCP", DENY_IN_X)
            .expect(81, "UDP", DENY_IN_X),
    );

    // Checks: policyTypes [Egress] and no egress rules = default deny egress.
    v.push(
        Case::new("default-deny-egress", "policyTypes [Egress] with no rules allows no new connection out; connections in still work (replies pass)")
            .apply(np("x", "default-deny-egress", "{podSelector: {}, policyTypes: [Egress]}"))
            .expect(80, "TCP", DENY_OUT_X)
            .expect(80, "UDP", DENY_OUT_X),
    );

    // Checks: an ingress rule `{}` (no from, no ports) allows everything; policies are additive.
    v.push(
        Case::new("allow-all-ingress", "`ingress: [{}]` matches every source and port, and its union with a default deny allows all")
            .apply(docs(&[
                np("x", "default-deny-ingress", "{podSelector: {}, policyTypes: [Ingress]}"),
                np("x", "allow-all-ingress", "{podSelector: {}, ingress: [{}]}"),
            ]))
            .expect(80, "TCP", ALL)
            .expect(81, "UDP", ALL),
    );

    // Checks: an egress rule `{}` allows every destination and port.
    v.push(
        Case::new("allow-all-egress", "`egress: [{}]` matches every destination and port, overriding a default deny egress")
            .apply(docs(&[
                np("x", "default-deny-egress", "{podSelector: {}, policyTypes: [Egress]}"),
                np("x", "allow-all-egress", "{podSelector: {}, policyTypes: [Egress], egress: [{}]}"),
            ]))
            .expect(80, "TCP", ALL)
            .expect(80, "UDP", ALL),
    );

    // Checks: podSelector alone in a peer means pods of the policy's own namespace; the
    // policy's podSelector isolates only the pods it selects.
    v.push(
        Case::new("pod-selector-peer", "a peer podSelector alone selects pods in the policy's namespace only; only selected pods are isolated")
            .apply(np("x", "allow-b-to-a", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}"))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  .  .  .  .  .  .
x/b    .  .  .  .  .  .  .  .  .
x/c    X  .  .  .  .  .  .  .  .
y/a    X  .  .  .  .  .  .  .  .
y/b    X  .  .  .  .  .  .  .  .
y/c    X  .  .  .  .  .  .  .  .
z/a    X  .  .  .  .  .  .  .  .
z/b    X  .  .  .  .  .  .  .  .
z/c    X  .  .  .  .  .  .  .  .
",
            ),
    );

    // Checks: namespaceSelector alone selects all pods of matching namespaces (not the
    // policy's own namespace unless it matches).
    v.push(
        Case::new("namespace-selector-peer", "a peer namespaceSelector alone selects every pod in the matching namespaces")
            .apply(np("x", "allow-from-y", r#"{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}}]}]}"#))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  X  X  .  .  .  .  .  .
x/b    X  .  X  .  .  .  .  .  .
x/c    X  X  .  .  .  .  .  .  .
y/a    .  .  .  .  .  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    .  .  .  .  .  .  .  .  .
z/a    X  X  X  .  .  .  .  .  .
z/b    X  X  X  .  .  .  .  .  .
z/c    X  X  X  .  .  .  .  .  .
",
            ),
    );

    // Checks: namespaceSelector and podSelector in ONE peer are ANDed.
    v.push(
        Case::new("namespace-and-pod-selector-one-peer", "namespaceSelector + podSelector in one peer: the matching pods in the matching namespaces (AND)")
            .apply(np(
                "x",
                "allow-yb",
                r#"{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}, podSelector: {matchLabels: {pod: b}}}]}]}"#,
            ))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  X  X  .  .  .  .  .  .
x/b    X  .  X  .  .  .  .  .  .
x/c    X  X  .  .  .  .  .  .  .
y/a    X  X  X  .  .  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    X  X  X  .  .  .  .  .  .
z/a    X  X  X  .  .  .  .  .  .
z/b    X  X  X  .  .  .  .  .  .
z/c    X  X  X  .  .  .  .  .  .
",
            ),
    );

    // Checks: namespaceSelector and podSelector as TWO peers are ORed (and the podSelector
    // peer then means pods of the policy's namespace).
    v.push(
        Case::new("namespace-or-pod-selector-two-peers", "two peers are ORed: all pods of ns y, or pods labelled pod=b in the policy's namespace x")
            .apply(np(
                "x",
                "allow-y-or-b",
                r#"{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}}, {podSelector: {matchLabels: {pod: b}}}]}]}"#,
            ))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  X  X  .  .  .  .  .  .
x/b    .  .  .  .  .  .  .  .  .
x/c    X  X  .  .  .  .  .  .  .
y/a    .  .  .  .  .  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    .  .  .  .  .  .  .  .  .
z/a    X  X  X  .  .  .  .  .  .
z/b    X  X  X  .  .  .  .  .  .
z/c    X  X  X  .  .  .  .  .  .
",
            ),
    );

    // Checks: matchExpressions `In` (a value in the list) in both selectors of a peer.
    v.push(
        Case::new("match-expressions-in", "operator In matches a label whose value is in the list, in namespaceSelector and podSelector")
            .apply(np(
                "x",
                "allow-in",
                r#"{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: ["y", "z"]}]}, podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}}]}]}"#,
            ))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  X  X  .  .  .  .  .  .
x/b    X  .  X  .  .  .  .  .  .
x/c    X  X  .  .  .  .  .  .  .
y/a    .  .  .  .  .  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    X  X  X  .  .  .  .  .  .
z/a    .  .  .  .  .  .  .  .  .
z/b    .  .  .  .  .  .  .  .  .
z/c    X  X  X  .  .  .  .  .  .
",
            ),
    );

    // Checks: matchExpressions `NotIn` in the policy's own podSelector (selects y/b and y/c).
    v.push(
        Case::new("match-expressions-notin-policy-selector", "operator NotIn in spec.podSelector isolates only the pods whose label is not in the list")
            .apply(np("y", "deny-not-a", "{podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a]}]}, policyTypes: [Ingress]}"))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  .  X  X  .  .  .
x/b    .  .  .  .  X  X  .  .  .
x/c    .  .  .  .  X  X  .  .  .
y/a    .  .  .  .  X  X  .  .  .
y/b    .  .  .  .  .  X  .  .  .
y/c    .  .  .  .  X  .  .  .  .
z/a    .  .  .  .  X  X  .  .  .
z/b    .  .  .  .  X  X  .  .  .
z/c    .  .  .  .  X  X  .  .  .
",
            ),
    );

    // Checks: `NotIn` in a peer's namespaceSelector; NotIn also matches objects that do not
    // have the key at all (no namespace has `env`, so the second expression matches all).
    v.push(
        Case::new("match-expressions-notin-namespace-peer", "operator NotIn in a namespaceSelector excludes the listed values and matches when the key is absent")
            .apply(np(
                "z",
                "c-not-from-x",
                "{podSelector: {matchLabels: {pod: c}}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}, {key: env, operator: NotIn, values: [prod]}]}}]}]}",
            ))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  .  .  .  .  .  X
x/b    .  .  .  .  .  .  .  .  X
x/c    .  .  .  .  .  .  .  .  X
y/a    .  .  .  .  .  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    .  .  .  .  .  .  .  .  .
z/a    .  .  .  .  .  .  .  .  .
z/b    .  .  .  .  .  .  .  .  .
z/c    .  .  .  .  .  .  .  .  .
",
            ),
    );

    // Checks: `In` in spec.podSelector (x/a and x/c) together with `NotIn` in a peer
    // podSelector (x/b only, since podSelector alone stays in the policy's namespace).
    v.push(
        Case::new("match-expressions-in-and-notin", "In selects the isolated pods, NotIn in the peer selects the allowed sources of the policy's namespace")
            .apply(np(
                "x",
                "ac-from-not-ac",
                "{podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, c]}]}, ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a, c]}]}}]}]}",
            ))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  X  .  .  .  .  .  .
x/b    .  .  .  .  .  .  .  .  .
x/c    X  .  .  .  .  .  .  .  .
y/a    X  .  X  .  .  .  .  .  .
y/b    X  .  X  .  .  .  .  .  .
y/c    X  .  X  .  .  .  .  .  .
z/a    X  .  X  .  .  .  .  .  .
z/b    X  .  X  .  .  .  .  .  .
z/c    X  .  X  .  .  .  .  .  .
",
            ),
    );

    // Checks: `Exists` matches when the key is present whatever its value (spec.podSelector
    // and namespaceSelector of y's policy select everything), and matches nothing when no
    // object has the key (z/a's only peer, `team` Exists, selects no pod).
    v.push(
        Case::new("match-expressions-exists", "operator Exists matches any object that has the key, and none when nobody has it")
            .apply(docs(&[
                np(
                    "y",
                    "from-any-c",
                    "{podSelector: {matchExpressions: [{key: pod, operator: Exists}]}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: Exists}]}, podSelector: {matchLabels: {pod: c}}}]}]}",
                ),
                np("z", "a-from-team", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchExpressions: [{key: team, operator: Exists}]}}]}]}"),
            ]))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  X  X  X  X  .  .
x/b    .  .  .  X  X  X  X  .  .
x/c    .  .  .  .  .  .  X  .  .
y/a    .  .  .  .  X  X  X  .  .
y/b    .  .  .  X  .  X  X  .  .
y/c    .  .  .  .  .  .  X  .  .
z/a    .  .  .  X  X  X  .  .  .
z/b    .  .  .  X  X  X  X  .  .
z/c    .  .  .  .  .  .  X  .  .
",
            ),
    );

    // Checks: `DoesNotExist` matches objects without the key (`team`: everything) and
    // nothing when every object has it (`pod`: z's deny-all policy selects no pod, no effect).
    v.push(
        Case::new("match-expressions-does-not-exist", "operator DoesNotExist matches objects lacking the key; a policy whose podSelector matches no pod has no effect")
            .apply(docs(&[
                np(
                    "x",
                    "from-any-b",
                    "{podSelector: {matchExpressions: [{key: team, operator: DoesNotExist}]}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: team, operator: DoesNotExist}]}, podSelector: {matchLabels: {pod: b}}}]}]}",
                ),
                np("z", "selects-nothing", "{podSelector: {matchExpressions: [{key: pod, operator: DoesNotExist}]}, policyTypes: [Ingress, Egress]}"),
            ]))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  X  X  .  .  .  .  .  .
x/b    .  .  .  .  .  .  .  .  .
x/c    X  X  .  .  .  .  .  .  .
y/a    X  X  X  .  .  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    X  X  X  .  .  .  .  .  .
z/a    X  X  X  .  .  .  .  .  .
z/b    .  .  .  .  .  .  .  .  .
z/c    X  X  X  .  .  .  .  .  .
",
            ),
    );

    // Checks: `podSelector: {}` in a peer means every pod of the policy's namespace.
    v.push(
        Case::new("empty-pod-selector-peer", "a peer `podSelector: {}` selects all pods of the policy's namespace and nothing else")
            .apply(np("y", "from-own-namespace", "{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}"))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  X  X  X  .  .  .
x/b    .  .  .  X  X  X  .  .  .
x/c    .  .  .  X  X  X  .  .  .
y/a    .  .  .  .  .  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    .  .  .  .  .  .  .  .  .
z/a    .  .  .  X  X  X  .  .  .
z/b    .  .  .  X  X  X  .  .  .
z/c    .  .  .  X  X  X  .  .  .
",
            ),
    );

    // Checks: `namespaceSelector: {}` means all namespaces, alone (y/a accepts everyone) or
    // ANDed with a podSelector (y/b accepts pod=a from any namespace).
    v.push(
        Case::new("empty-namespace-selector-peer", "a peer `namespaceSelector: {}` selects all namespaces; with a podSelector, those pods in every namespace")
            .apply(docs(&[
                np("y", "a-from-everywhere", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {}}]}]}"),
                np("y", "b-from-any-a", "{podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: a}}}]}]}"),
            ]))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  .  .  .  .  .  .
x/b    .  .  .  .  X  .  .  .  .
x/c    .  .  .  .  X  .  .  .  .
y/a    .  .  .  .  .  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    .  .  .  .  X  .  .  .  .
z/a    .  .  .  .  .  .  .  .  .
z/b    .  .  .  .  X  .  .  .  .
z/c    .  .  .  .  X  .  .  .  .
",
            ),
    );

    // Checks: ipBlock with one pod's IP/32 as an ingress source.
    v.push(
        Case::new("ip-block-single-pod", "an ipBlock /32 of a pod's IP allows that pod as a source and nobody else")
            .apply(np("x", "a-from-yb-ip", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{ipBlock: {cidr: @ip(y/b)/32}}]}]}"))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  .  .  .  .  .  .
x/b    X  .  .  .  .  .  .  .  .
x/c    X  .  .  .  .  .  .  .  .
y/a    X  .  .  .  .  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    X  .  .  .  .  .  .  .  .
z/a    X  .  .  .  .  .  .  .  .
z/b    X  .  .  .  .  .  .  .  .
z/c    X  .  .  .  .  .  .  .  .
",
            )
            .expect(81, "UDP", "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  .  .  .  .  .  .
x/b    X  .  .  .  .  .  .  .  .
x/c    X  .  .  .  .  .  .  .  .
y/a    X  .  .  .  .  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    X  .  .  .  .  .  .  .  .
z/a    X  .  .  .  .  .  .  .  .
z/b    X  .  .  .  .  .  .  .  .
z/c    X  .  .  .  .  .  .  .  .
"),
    );

    // Checks: ipBlock cidr covering all pods, with `except` carving two pods out.
    v.push(
        Case::new("ip-block-cidr-except", "an ipBlock allows its cidr minus the except ranges")
            .apply(np("x", "from-cidr-except", "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: @podcidr, except: [@ip(x/b)/32, @ip(y/a)/32]}}]}]}"))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  .  .  .  .  .  .
x/b    X  .  X  .  .  .  .  .  .
x/c    .  .  .  .  .  .  .  .  .
y/a    X  X  X  .  .  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    .  .  .  .  .  .  .  .  .
z/a    .  .  .  .  .  .  .  .  .
z/b    .  .  .  .  .  .  .  .  .
z/c    .  .  .  .  .  .  .  .  .
",
            ),
    );

    // Checks: ipBlock (the cluster's whole pod range) with except as an egress destination.
    v.push(
        Case::new("ip-block-egress-except", "an egress ipBlock allows destinations in its cidr except the except ranges")
            .apply(np("z", "b-to-cidr-except", "{podSelector: {matchLabels: {pod: b}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: @podcidr, except: [@ip(x/a)/32]}}]}]}"))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  .  .  .  .  .  .
x/b    .  .  .  .  .  .  .  .  .
x/c    .  .  .  .  .  .  .  .  .
y/a    .  .  .  .  .  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    .  .  .  .  .  .  .  .  .
z/a    .  .  .  .  .  .  .  .  .
z/b    X  .  .  .  .  .  .  .  .
z/c    .  .  .  .  .  .  .  .  .
",
            ),
    );

    // Checks: a numeric port without protocol means that TCP port only (protocol defaults
    // to TCP): 81 and UDP are blocked for the isolated pods.
    v.push(
        Case::new("port-numeric", "ports [{port: 80}] allows TCP 80 only (protocol defaults to TCP); other ports and UDP are blocked")
            .apply(np("x", "only-tcp-80", "{podSelector: {}, ingress: [{ports: [{port: 80}]}]}"))
            .expect(80, "TCP", ALL)
            .expect(81, "TCP", DENY_IN_X)
            .expect(80, "UDP", DENY_IN_X)
            .expect(81, "UDP", DENY_IN_X),
    );

    // Checks: protocol UDP in a port rule allows UDP on that port and not TCP.
    v.push(
        Case::new("port-protocol-udp", "ports [{protocol: UDP, port: 80}] allows UDP 80 only; TCP on the same port is blocked")
            .apply(np("y", "only-udp-80", "{podSelector: {}, ingress: [{ports: [{protocol: UDP, port: 80}]}]}"))
            .expect(80, "UDP", ALL)
            .expect(80, "TCP", DENY_IN_Y)
            .expect(81, "UDP", DENY_IN_Y)
            .expect(81, "TCP", DENY_IN_Y),
    );

    // Checks: named ports resolve against the destination pod's container ports, with the
    // rule's protocol (serve-81-tcp → TCP 81 from x; serve-80-udp with UDP → UDP 80 from all).
    v.push(
        Case::new("port-named", "a named port in an ingress rule resolves to the selected pod's container port of that name and protocol")
            .apply(np(
                "z",
                "named-ports",
                "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}], ports: [{port: serve-81-tcp}]}, {ports: [{protocol: UDP, port: serve-80-udp}]}]}",
            ))
            .expect(
                81,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  .  .  .  .  .  .
x/b    .  .  .  .  .  .  .  .  .
x/c    .  .  .  .  .  .  .  .  .
y/a    .  .  .  .  .  .  X  X  X
y/b    .  .  .  .  .  .  X  X  X
y/c    .  .  .  .  .  .  X  X  X
z/a    .  .  .  .  .  .  .  X  X
z/b    .  .  .  .  .  .  X  .  X
z/c    .  .  .  .  .  .  X  X  .
",
            )
            .expect(80, "TCP", DENY_IN_Z)
            .expect(80, "UDP", ALL)
            .expect(81, "UDP", DENY_IN_Z),
    );

    // Checks: endPort makes an inclusive range port..=endPort (80–81 from z, 81–90 from y).
    v.push(
        Case::new("port-range", "port with endPort allows the inclusive range, for the rule's protocol only")
            .apply(np(
                "x",
                "ranges",
                r#"{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{protocol: TCP, port: 80, endPort: 81}]}, {from: [{namespaceSelector: {matchLabels: {ns: "y"}}}], ports: [{port: 81, endPort: 90}]}]}"#,
            ))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  X  X  .  .  .  .  .  .
x/b    X  .  X  .  .  .  .  .  .
x/c    X  X  .  .  .  .  .  .  .
y/a    X  X  X  .  .  .  .  .  .
y/b    X  X  X  .  .  .  .  .  .
y/c    X  X  X  .  .  .  .  .  .
z/a    .  .  .  .  .  .  .  .  .
z/b    .  .  .  .  .  .  .  .  .
z/c    .  .  .  .  .  .  .  .  .
",
            )
            .expect(
                81,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  X  X  .  .  .  .  .  .
x/b    X  .  X  .  .  .  .  .  .
x/c    X  X  .  .  .  .  .  .  .
y/a    .  .  .  .  .  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    .  .  .  .  .  .  .  .  .
z/a    .  .  .  .  .  .  .  .  .
z/b    .  .  .  .  .  .  .  .  .
z/c    .  .  .  .  .  .  .  .  .
",
            )
            .expect(80, "UDP", DENY_IN_X)
            .expect(81, "UDP", DENY_IN_X),
    );

    // Checks: a named port no pod declares is valid and matches nothing; a name declared
    // with another protocol (serve-80-tcp asked as UDP) matches nothing either.
    v.push(
        Case::new("port-named-undeclared", "a named port that the pod does not declare (for that protocol) selects nothing: all blocked")
            .apply(np("y", "unknown-name", "{podSelector: {}, ingress: [{ports: [{port: serve-8080}]}, {ports: [{protocol: UDP, port: serve-80-tcp}]}]}"))
            .expect(80, "TCP", DENY_IN_Y)
            .expect(81, "TCP", DENY_IN_Y)
            .expect(80, "UDP", DENY_IN_Y),
    );

    // Checks: egress rule peers: podSelector alone (x/b) or ns z AND pod c (z/c).
    v.push(
        Case::new("egress-pod-selector", "egress `to` peers follow the same selector rules as ingress `from`; all ports when ports is omitted")
            .apply(np(
                "x",
                "a-to-b-and-zc",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {pod: b}}}, {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: c}}}]}]}",
            ))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  X  X  X  X  X  X  .
x/b    .  .  .  .  .  .  .  .  .
x/c    .  .  .  .  .  .  .  .  .
y/a    .  .  .  .  .  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    .  .  .  .  .  .  .  .  .
z/a    .  .  .  .  .  .  .  .  .
z/b    .  .  .  .  .  .  .  .  .
z/c    .  .  .  .  .  .  .  .  .
",
            )
            .expect(
                81,
                "UDP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  X  X  X  X  X  X  .
x/b    .  .  .  .  .  .  .  .  .
x/c    .  .  .  .  .  .  .  .  .
y/a    .  .  .  .  .  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    .  .  .  .  .  .  .  .  .
z/a    .  .  .  .  .  .  .  .  .
z/b    .  .  .  .  .  .  .  .  .
z/c    .  .  .  .  .  .  .  .  .
",
            ),
    );

    // Checks: a connection needs the source's egress AND the destination's ingress.
    v.push(
        Case::new("egress-and-ingress-both-required", "x/a may only go to ns y, y/b only accepts ns z: x/a reaches y/a and y/c, not y/b")
            .apply(docs(&[
                np("x", "a-to-y", r#"{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {ns: "y"}}}]}]}"#),
                np("y", "b-from-z", "{podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}"),
            ]))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  X  X  .  X  .  X  X  X
x/b    .  .  .  .  X  .  .  .  .
x/c    .  .  .  .  X  .  .  .  .
y/a    .  .  .  .  X  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    .  .  .  .  X  .  .  .  .
z/a    .  .  .  .  .  .  .  .  .
z/b    .  .  .  .  .  .  .  .  .
z/c    .  .  .  .  .  .  .  .  .
",
            ),
    );

    // Checks: egress rule with ports only (no `to`): any destination, TCP 81 only.
    v.push(
        Case::new("egress-ports", "an egress rule with ports and no `to` allows those ports to every destination, nothing else")
            .apply(np("y", "out-81", "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 81}]}]}"))
            .expect(81, "TCP", ALL)
            .expect(80, "TCP", DENY_OUT_Y)
            .expect(81, "UDP", DENY_OUT_Y),
    );

    // Checks: an egress named port is resolved on each destination pod. z/b is re-created
    // with its TCP port names swapped (80 is serve-81-tcp, 81 is serve-80-tcp), so x/a's
    // egress to serve-81-tcp means 81 on every pod but z/b, and 80 on z/b. z's ingress rule
    // (serve-80-tcp from ns y) likewise means 80 on z/a and z/c, 81 on z/b.
    let swapped = "[{containerPort: 80, protocol: TCP, name: serve-81-tcp}, {containerPort: 80, protocol: UDP, name: serve-80-udp}, {containerPort: 81, protocol: TCP, name: serve-80-tcp}, {containerPort: 81, protocol: UDP, name: serve-81-udp}]";
    v.push(
        Case::new("named-port-per-destination", "a named port resolves per destination pod, for egress (each peer) and ingress (each selected pod)")
            .delete(pod("z", "b", "{pod: b}", XYZ_PORTS))
            .apply(pod("z", "b", "{pod: b}", swapped))
            .expect(80, "TCP", ALL)
            .apply(docs(&[
                np("x", "a-out-named", "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{ports: [{port: serve-81-tcp}]}]}"),
                np("z", "in-named", r#"{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}}], ports: [{port: serve-80-tcp}]}]}"#),
            ]))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  X  X  X  X  X  X  X  X
x/b    .  .  .  .  .  .  X  X  X
x/c    .  .  .  .  .  .  X  X  X
y/a    .  .  .  .  .  .  .  X  .
y/b    .  .  .  .  .  .  .  X  .
y/c    .  .  .  .  .  .  .  X  .
z/a    .  .  .  .  .  .  .  X  X
z/b    .  .  .  .  .  .  X  .  X
z/c    .  .  .  .  .  .  X  X  .
",
            )
            .expect(
                81,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  .  .  .  X  X  X
x/b    .  .  .  .  .  .  X  X  X
x/c    .  .  .  .  .  .  X  X  X
y/a    .  .  .  .  .  .  X  .  X
y/b    .  .  .  .  .  .  X  .  X
y/c    .  .  .  .  .  .  X  .  X
z/a    .  .  .  .  .  .  .  X  X
z/b    .  .  .  .  .  .  X  .  X
z/c    .  .  .  .  .  .  X  X  .
",
            )
            .expect(
                80,
                "UDP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  X  X  X  X  X  X  X  X
x/b    .  .  .  .  .  .  X  X  X
x/c    .  .  .  .  .  .  X  X  X
y/a    .  .  .  .  .  .  X  X  X
y/b    .  .  .  .  .  .  X  X  X
y/c    .  .  .  .  .  .  X  X  X
z/a    .  .  .  .  .  .  .  X  X
z/b    .  .  .  .  .  .  X  .  X
z/c    .  .  .  .  .  .  X  X  .
",
            )
            // The cleanup re-applies the original z/b; delete the swapped one first (a pod's
            // container ports cannot be changed in place in Kubernetes).
            .restore_delete(pod("z", "b", "{pod: b}", swapped)),
    );

    // Checks: policyTypes omitted with only ingress rules defaults to [Ingress]; `egress: []`
    // does not add Egress.
    v.push(
        Case::new("policy-types-default-ingress", "without policyTypes, ingress rules and an empty egress list give [Ingress] only: egress stays open")
            .apply(np("x", "from-own-ns", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}]}], egress: []}"))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  .  .  .  .  .  .
x/b    .  .  .  .  .  .  .  .  .
x/c    .  .  .  .  .  .  .  .  .
y/a    X  X  X  .  .  .  .  .  .
y/b    X  X  X  .  .  .  .  .  .
y/c    X  X  X  .  .  .  .  .  .
z/a    X  X  X  .  .  .  .  .  .
z/b    X  X  X  .  .  .  .  .  .
z/c    X  X  X  .  .  .  .  .  .
",
            ),
    );

    // Checks: policyTypes omitted with egress rules defaults to [Ingress, Egress]: the pod is
    // isolated for ingress too, with no ingress rule, so nothing may reach it.
    v.push(
        Case::new("policy-types-default-with-egress-rules", "without policyTypes, egress rules give [Ingress, Egress]: y/a only reaches ns z and accepts nothing")
            .apply(np("y", "a-to-z", "{podSelector: {matchLabels: {pod: a}}, egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}"))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  X  .  .  .  .  .
x/b    .  .  .  X  .  .  .  .  .
x/c    .  .  .  X  .  .  .  .  .
y/a    X  X  X  .  X  X  .  .  .
y/b    .  .  .  X  .  .  .  .  .
y/c    .  .  .  X  .  .  .  .  .
z/a    .  .  .  X  .  .  .  .  .
z/b    .  .  .  X  .  .  .  .  .
z/c    .  .  .  X  .  .  .  .  .
",
            ),
    );

    // Checks: policyTypes [Egress] with no egress rules denies egress only; ingress rules in
    // a policy whose policyTypes lacks Ingress have no effect.
    v.push(
        Case::new("policy-types-egress-only", "policyTypes [Egress] without egress rules denies z/c's egress; its ingress rules are ignored, ingress stays open")
            .apply(np("z", "c-no-egress", "{podSelector: {matchLabels: {pod: c}}, policyTypes: [Egress], ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]}"))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  .  .  .  .  .  .
x/b    .  .  .  .  .  .  .  .  .
x/c    .  .  .  .  .  .  .  .  .
y/a    .  .  .  .  .  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    .  .  .  .  .  .  .  .  .
z/a    .  .  .  .  .  .  .  .  .
z/b    .  .  .  .  .  .  .  .  .
z/c    X  X  X  X  X  X  X  X  .
",
            ),
    );

    // Checks: several policies selecting the same pod add up (union of their rules): x/a
    // accepts y/a (P1) and x/c (P2) on all ports, and ns z on TCP 81 (P3, which also isolates
    // x/b and x/c).
    v.push(
        Case::new("several-policies-union", "the allowed traffic of a pod is the union of every policy that selects it")
            .apply(docs(&[
                np("x", "a-from-ya", r#"{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}, podSelector: {matchLabels: {pod: a}}}]}]}"#),
                np("x", "a-from-c", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}]}]}"),
                np("x", "all-from-z-81", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: 81}]}]}"),
            ]))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  X  X  .  .  .  .  .  .
x/b    X  .  X  .  .  .  .  .  .
x/c    .  X  .  .  .  .  .  .  .
y/a    .  X  X  .  .  .  .  .  .
y/b    X  X  X  .  .  .  .  .  .
y/c    X  X  X  .  .  .  .  .  .
z/a    X  X  X  .  .  .  .  .  .
z/b    X  X  X  .  .  .  .  .  .
z/c    X  X  X  .  .  .  .  .  .
",
            )
            .expect(
                81,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  X  X  .  .  .  .  .  .
x/b    X  .  X  .  .  .  .  .  .
x/c    .  X  .  .  .  .  .  .  .
y/a    .  X  X  .  .  .  .  .  .
y/b    X  X  X  .  .  .  .  .  .
y/c    X  X  X  .  .  .  .  .  .
z/a    .  .  .  .  .  .  .  .  .
z/b    .  .  .  .  .  .  .  .  .
z/c    .  .  .  .  .  .  .  .  .
",
            ),
    );

    // Checks: policies only select pods of their own namespace: x accepts ns y, y accepts
    // ns z, and z/a may only go to ns y.
    v.push(
        Case::new("policies-in-different-namespaces", "each policy applies to pods of its own namespace; policies of several namespaces combine")
            .apply(docs(&[
                np("x", "from-y", r#"{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}}]}]}"#),
                np("y", "from-z", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}"),
                np("z", "a-to-y", r#"{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {ns: "y"}}}]}]}"#),
            ]))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  X  X  X  X  X  .  .  .
x/b    X  .  X  X  X  X  .  .  .
x/c    X  X  .  X  X  X  .  .  .
y/a    .  .  .  .  X  X  .  .  .
y/b    .  .  .  X  .  X  .  .  .
y/c    .  .  .  X  X  .  .  .  .
z/a    X  X  X  .  .  .  .  X  X
z/b    X  X  X  .  .  .  .  .  .
z/c    X  X  X  .  .  .  .  .  .
",
            ),
    );

    // Checks: re-applying a policy with the same name replaces it (rules, podSelector and
    // policyTypes), and connectivity follows each version.
    v.push(
        Case::new("policy-update", "applying a changed policy replaces the old version entirely")
            .apply(np("y", "changing", "{podSelector: {}, policyTypes: [Ingress]}"))
            .expect(80, "TCP", DENY_IN_Y)
            .apply(np("y", "changing", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}]}]}"))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  .  .  .  .  .  .
x/b    .  .  .  .  .  .  .  .  .
x/c    .  .  .  .  .  .  .  .  .
y/a    .  .  .  .  X  X  .  .  .
y/b    .  .  .  X  .  X  .  .  .
y/c    .  .  .  X  X  .  .  .  .
z/a    .  .  .  X  X  X  .  .  .
z/b    .  .  .  X  X  X  .  .  .
z/c    .  .  .  X  X  X  .  .  .
",
            )
            .apply(np("y", "changing", "{podSelector: {matchLabels: {pod: c}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}]}]}"))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  .  .  .  .  .  .
x/b    .  .  .  .  .  .  .  .  .
x/c    .  .  .  .  .  .  .  .  .
y/a    .  .  .  .  .  X  .  .  .
y/b    .  .  .  .  .  X  .  .  .
y/c    .  .  .  .  .  .  .  .  .
z/a    .  .  .  .  .  X  .  .  .
z/b    .  .  .  .  .  X  .  .  .
z/c    .  .  .  .  .  X  .  .  .
",
            )
            .apply(np("y", "changing", "{podSelector: {matchLabels: {pod: c}}, policyTypes: [Egress]}"))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  .  .  .  .  .  .  .  .
x/b    .  .  .  .  .  .  .  .  .
x/c    .  .  .  .  .  .  .  .  .
y/a    .  .  .  .  .  .  .  .  .
y/b    .  .  .  .  .  .  .  .  .
y/c    X  X  X  X  X  .  X  X  X
z/a    .  .  .  .  .  .  .  .  .
z/b    .  .  .  .  .  .  .  .  .
z/c    .  .  .  .  .  .  .  .  .
",
            ),
    );

    // Checks: deleting policies removes their isolation; deleting one of two leaves the other.
    v.push(
        Case::new("policy-deletion", "`lab delete` of a policy removes its effect; with no policy left the pods are non-isolated again")
            .apply(docs(&[
                np("x", "deny-in", "{podSelector: {}, policyTypes: [Ingress]}"),
                np("z", "deny-both", "{podSelector: {}, policyTypes: [Ingress, Egress]}"),
            ]))
            .expect(80, "UDP", "
      xa xb xc ya yb yc za zb zc
x/a    .  X  X  .  .  .  X  X  X
x/b    X  .  X  .  .  .  X  X  X
x/c    X  X  .  .  .  .  X  X  X
y/a    X  X  X  .  .  .  X  X  X
y/b    X  X  X  .  .  .  X  X  X
y/c    X  X  X  .  .  .  X  X  X
z/a    X  X  X  X  X  X  .  X  X
z/b    X  X  X  X  X  X  X  .  X
z/c    X  X  X  X  X  X  X  X  .
")
            .delete(np("x", "deny-in", "{podSelector: {}, policyTypes: [Ingress]}"))
            .expect(80, "TCP", DENY_BOTH_Z)
            .expect(80, "UDP", DENY_BOTH_Z)
            .delete(np("z", "deny-both", "{podSelector: {}}"))
            .expect(80, "TCP", ALL)
            .expect(80, "UDP", ALL)
            .expect(81, "TCP", ALL),
    );

    // Checks: selection follows pod labels: relabelling a pod changes which policies select
    // it (spec.podSelector) and which peers match it (from).
    v.push(
        Case::new("pod-label-change", "re-applying a pod with new labels changes both the pods a policy isolates and the sources it allows")
            .apply(np("x", "db", "{podSelector: {matchLabels: {tier: db}}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]}]}"))
            .expect(80, "TCP", ALL)
            .apply(pod("x", "b", "{pod: b, tier: db}", XYZ_PORTS))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  X  .  .  .  .  .  .  .
x/b    .  .  .  .  .  .  .  .  .
x/c    .  X  .  .  .  .  .  .  .
y/a    .  X  .  .  .  .  .  .  .
y/b    .  X  .  .  .  .  .  .  .
y/c    .  X  .  .  .  .  .  .  .
z/a    .  X  .  .  .  .  .  .  .
z/b    .  X  .  .  .  .  .  .  .
z/c    .  X  .  .  .  .  .  .  .
",
            )
            .apply(pod("z", "c", "{pod: c, role: client}", XYZ_PORTS))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  X  .  .  .  .  .  .  .
x/b    .  .  .  .  .  .  .  .  .
x/c    .  X  .  .  .  .  .  .  .
y/a    .  X  .  .  .  .  .  .  .
y/b    .  X  .  .  .  .  .  .  .
y/c    .  X  .  .  .  .  .  .  .
z/a    .  X  .  .  .  .  .  .  .
z/b    .  X  .  .  .  .  .  .  .
z/c    .  .  .  .  .  .  .  .  .
",
            )
            .apply(pod("x", "b", "{pod: b}", XYZ_PORTS))
            .expect(80, "TCP", ALL),
    );

    // Checks: namespaceSelector follows namespace labels, and `kubernetes.io/metadata.name`
    // (set by Kubernetes, not by the manifest) keeps matching when the labels change.
    v.push(
        Case::new("namespace-label-change", "re-applying a namespace with new labels changes which namespaceSelectors match it; metadata.name label stays")
            .apply(docs(&[
                np("y", "from-prod", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {env: prod}}}]}]}"),
                np("x", "from-z-by-name", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]}]}"),
            ]))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  X  X  X  X  X  .  .  .
x/b    X  .  X  X  X  X  .  .  .
x/c    X  X  .  X  X  X  .  .  .
y/a    X  X  X  .  X  X  .  .  .
y/b    X  X  X  X  .  X  .  .  .
y/c    X  X  X  X  X  .  .  .  .
z/a    .  .  .  X  X  X  .  .  .
z/b    .  .  .  X  X  X  .  .  .
z/c    .  .  .  X  X  X  .  .  .
",
            )
            // z loses `ns: z` and gains `env: prod`.
            .apply(namespace("z", "{env: prod}"))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  X  X  X  X  X  .  .  .
x/b    X  .  X  X  X  X  .  .  .
x/c    X  X  .  X  X  X  .  .  .
y/a    X  X  X  .  X  X  .  .  .
y/b    X  X  X  X  .  X  .  .  .
y/c    X  X  X  X  X  .  .  .  .
z/a    .  .  .  .  .  .  .  .  .
z/b    .  .  .  .  .  .  .  .  .
z/c    .  .  .  .  .  .  .  .  .
",
            )
            // The label moves from z to x.
            .apply(docs(&[namespace("z", "{ns: z}"), namespace("x", "{ns: x, env: prod}")]))
            .expect(
                80,
                "TCP",
                "
      xa xb xc ya yb yc za zb zc
x/a    .  X  X  .  .  .  .  .  .
x/b    X  .  X  .  .  .  .  .  .
x/c    X  X  .  .  .  .  .  .  .
y/a    X  X  X  .  X  X  .  .  .
y/b    X  X  X  X  .  X  .  .  .
y/c    X  X  X  X  X  .  .  .  .
z/a    .  .  .  X  X  X  .  .  .
z/b    .  .  .  X  X  X  .  .  .
z/c    .  .  .  X  X  X  .  .  .
",
            ),
    );

    v
}

// -------------------------------------------------------------------------------------------
// Matrices: parsing, measuring, comparing.
// -------------------------------------------------------------------------------------------

/// Parses a matrix literal; panics on a malformed one (a bug in this file).
fn parse_matrix(text: &str) -> Matrix {
    let mut m = [[false; 9]; 9];
    let mut rows = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        if tokens.join(" ") == HEADER {
            continue;
        }
        assert!(rows < 9, "matrix has more than 9 rows:\n{text}");
        assert_eq!(tokens.len(), 10, "matrix row {line:?} needs a label and 9 cells:\n{text}");
        assert_eq!(tokens[0], PODS[rows], "matrix row {rows} must be {}:\n{text}", PODS[rows]);
        for (col, cell) in tokens[1..].iter().enumerate() {
            m[rows][col] = match *cell {
                "." => true,
                "X" => false,
                other => panic!("matrix cell {other:?} is neither . nor X:\n{text}"),
            };
        }
        rows += 1;
    }
    assert_eq!(rows, 9, "matrix needs 9 rows:\n{text}");
    // A pod always reaches itself (the traffic never leaves its namespace).
    for (i, row) in m.iter().enumerate() {
        assert!(row[i], "{} to itself must be connected:\n{text}", PODS[i]);
    }
    m
}

fn render(m: &Matrix) -> Vec<String> {
    let mut lines = vec![format!("      {}", HEADER.split(' ').map(|n| format!("{n:>3}")).collect::<String>())];
    for (i, row) in m.iter().enumerate() {
        let mut line = format!("{}   ", PODS[i]);
        for &c in row {
            line.push_str(if c { "  ." } else { "  X" });
        }
        lines.push(line);
    }
    lines
}

/// Expected and actual side by side, then the differing cells.
fn describe_mismatch(expected: &Matrix, actual: &Matrix) -> String {
    let mut out = String::new();
    let (e, a) = (render(expected), render(actual));
    let _ = writeln!(out, "    {:<40}  measured", "expected");
    for (l, r) in e.iter().zip(&a) {
        let _ = writeln!(out, "    {l:<40}  {r}");
    }
    let _ = writeln!(out, "    differing cells:");
    for i in 0..9 {
        for j in 0..9 {
            if expected[i][j] != actual[i][j] {
                let word = |c: bool| if c { "connected" } else { "blocked" };
                let _ = writeln!(out, "      {} -> {}: expected {}, measured {}", PODS[i], PODS[j], word(expected[i][j]), word(actual[i][j]));
            }
        }
    }
    out
}

/// `lab matrix --port P --protocol PROTO -o json`.
fn measure(lab: &Lab, port: u16, protocol: &str) -> Result<Matrix, String> {
    let out = sightline(&[
        "lab", "matrix", "--port", &port.to_string(), "--protocol", protocol, "--timeout-ms", PROBE_TIMEOUT_MS, "-o", "json", "--name", &lab.name,
    ]);
    if !out.status.success() {
        return Err(format!("lab matrix failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("lab matrix printed bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))?;
    if doc["port"] != port || doc["protocol"] != protocol {
        return Err(format!("lab matrix answered for port {} protocol {}", doc["port"], doc["protocol"]));
    }
    let results = doc["results"].as_array().ok_or("lab matrix JSON has no results")?;
    let index = |name: &serde_json::Value| PODS.iter().position(|p| name == *p);
    let mut seen = [[false; 9]; 9];
    let mut m = [[false; 9]; 9];
    for r in results {
        let (Some(i), Some(j)) = (index(&r["from"]), index(&r["to"])) else {
            return Err(format!("lab matrix has an unexpected entry {r}"));
        };
        let Some(connected) = r["connected"].as_bool() else {
            return Err(format!("lab matrix entry without a boolean `connected`: {r}"));
        };
        if seen[i][j] {
            return Err(format!("lab matrix has {} -> {} twice", PODS[i], PODS[j]));
        }
        seen[i][j] = true;
        m[i][j] = connected;
    }
    if results.len() != 81 || seen.iter().flatten().any(|s| !s) {
        return Err(format!("lab matrix returned {} entries, not the 81 pairs of x/y/z", results.len()));
    }
    Ok(m)
}

/// Measures once and compares: `lab apply` returns only when every node's
/// datapath holds the new policy, and connections tracked under an older
/// policy revision are judged again, so a mismatch is a failure, not a race.
fn check(lab: &Lab, port: u16, protocol: &str, expected: &Matrix) -> Result<(), String> {
    let measured = measure(lab, port, protocol)?;
    if measured == *expected {
        return Ok(());
    }
    Err(describe_mismatch(expected, &measured))
}

// -------------------------------------------------------------------------------------------
// Running.
// -------------------------------------------------------------------------------------------

/// Replaces `@ip(ns/pod)`, `@nodename(ns/pod)` and `@podcidr` with values from `lab status`.
fn expand(lab: &Lab, text: &str) -> Result<String, String> {
    if !text.contains('@') {
        return Ok(text.to_owned());
    }
    let status = lab.status();
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("@podcidr") {
            // The range every pod's address comes from, whatever the node.
            let cidr = status["network"]["pod_range"].as_str().ok_or("lab status has no network.pod_range")?;
            out.push_str(cidr);
            rest = after;
        } else if let Some(after) = rest.strip_prefix("@nodename(") {
            // `nodeName: N` with the node the pod runs on (a pod cannot move) or, for a new
            // pod, the node `xyz_manifests_on` would give it; nothing in a one-node lab,
            // whose pods have no nodeName.
            let end = after.find(')').ok_or("unterminated @nodename(")?;
            let (ns, name) = after[..end].split_once('/').ok_or("@nodename(ns/pod)")?;
            let nodes = status["nodes"].as_array().map_or(1, Vec::len);
            if nodes > 1 {
                let running = status["pods"]
                    .as_array()
                    .and_then(|pods| pods.iter().find(|p| p["namespace"] == ns && p["name"] == name))
                    .and_then(|p| p["node"].as_str())
                    .map(str::to_owned);
                let spread = ["a", "b", "c"].iter().position(|p| *p == name).unwrap_or(0) % nodes + 1;
                out.push_str("nodeName: ");
                out.push_str(&running.unwrap_or_else(|| format!("node-{spread}")));
            }
            rest = &after[end + 1..];
        } else if let Some(after) = rest.strip_prefix("@ip(") {
            let end = after.find(')').ok_or("unterminated @ip(")?;
            let (ns, name) = after[..end].split_once('/').ok_or("@ip(ns/pod)")?;
            let ip = status["pods"]
                .as_array()
                .and_then(|pods| pods.iter().find(|p| p["namespace"] == ns && p["name"] == name))
                .and_then(|p| p["ip"].as_str())
                .ok_or_else(|| format!("lab status has no IP for pod {ns}/{name}"))?;
            out.push_str(ip);
            rest = &after[end + 1..];
        } else {
            return Err(format!("unknown placeholder at {rest:?}"));
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `lab apply|delete -f` with `manifest` (placeholders expanded).
fn lab_file(lab: &Lab, verb: &str, file: &str, manifest: &str) -> Result<(), String> {
    let text = expand(lab, manifest)?;
    let path = write_temp(file, &text);
    let out = sightline(&["lab", verb, "--name", &lab.name, "-f", path.to_str().expect("utf-8 temp path")]);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("lab {verb} failed ({}): {}\nmanifest:\n{text}", out.status, String::from_utf8_lossy(&out.stderr).trim_end()))
    }
}

/// Deletes every policy the lab has and re-applies the xyz manifests (restoring labels).
fn cleanup(lab: &Lab) -> Result<(), String> {
    let status = lab.status();
    let policies: Vec<String> = status["policies"]
        .as_array()
        .ok_or("lab status has no policies list")?
        .iter()
        .map(|p| {
            let ns = p["namespace"].as_str().unwrap_or_default();
            let name = p["name"].as_str().unwrap_or_default();
            format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: \"{ns}\"}}\n")
        })
        .collect();
    if !policies.is_empty() {
        lab_file(lab, "delete", "cleanup-policies.yaml", &docs(&policies))?;
    }
    let nodes = status["nodes"].as_array().map_or(1, Vec::len) as u32;
    lab_file(lab, "apply", "cleanup-xyz.yaml", &xyz_manifests_on(nodes))?;
    let left = lab.status()["policies"].as_array().map_or(0, Vec::len);
    if left != 0 {
        return Err(format!("{left} policies are still listed after deleting them all"));
    }
    Ok(())
}

/// Runs one case; returns its failures.
fn run_case(lab: &Lab, case: &Case, failures: &mut Vec<String>) {
    let mut step = 0;
    let mut failed = |what: String| failures.push(format!("case `{}` ({}): {what}", case.name, case.rule));
    for (i, op) in case.ops.iter().enumerate() {
        match op {
            Op::Apply(m) | Op::Delete(m) => {
                step += 1;
                let verb = if matches!(op, Op::Apply(_)) { "apply" } else { "delete" };
                if let Err(e) = lab_file(lab, verb, &format!("{}-{i}.yaml", case.name), m) {
                    failed(format!("step {step}: {e}"));
                    // Later expectations depend on this change: skip them.
                    break;
                }
            }
            Op::Expect { port, protocol, matrix } => match check(lab, *port, protocol, &parse_matrix(matrix)) {
                Ok(()) => eprintln!("   ok   step {step} {protocol}/{port}"),
                Err(e) => {
                    eprintln!("   FAIL step {step} {protocol}/{port}");
                    failed(format!("step {step} {protocol}/{port}:\n{e}"));
                }
            },
        }
    }
    for (i, op) in case.restore.iter().enumerate() {
        let result = match op {
            Op::Apply(m) => lab_file(lab, "apply", &format!("{}-restore-{i}.yaml", case.name), m),
            Op::Delete(m) => lab_file(lab, "delete", &format!("{}-restore-{i}.yaml", case.name), m),
            Op::Expect { .. } => Ok(()),
        };
        if let Err(e) = result {
            failed(format!("restoring: {e}"));
        }
    }
    if let Err(e) = cleanup(lab) {
        failed(format!("cleanup: {e}"));
    }
    // Back to the baseline: nothing isolated once every policy is gone.
    if let Err(e) = check(lab, 80, "TCP", &parse_matrix(ALL)) {
        failed(format!("baseline after cleanup, TCP/80 (a deleted policy or restored label still has an effect):\n{e}"));
    }
}

/// The case literals: names unique, every matrix well formed.
fn check_cases(cases: &[Case]) {
    let mut names = std::collections::BTreeSet::new();
    for case in cases {
        assert!(names.insert(case.name), "two cases are named {}", case.name);
        for op in &case.ops {
            if let Op::Expect { matrix, .. } = op {
                let _ = parse_matrix(matrix);
            }
        }
    }
    assert!(cases.len() >= 30, "only {} cases", cases.len());
}

#[test]
fn conformance_cases_are_well_formed() {
    check_cases(&cases());
}

/// Brings up lab `name` (`lab up` with `extra` flags) with the x/y/z pods on `nodes` nodes
/// (pod a on node-1, b on node-2, c on node-3 when there are three), runs every case (or
/// those `NETPOL_CASES` names) and fails with every mismatch.
fn conformance(name: &str, nodes: u32, extra: &[&str]) {
    let cases = cases();
    check_cases(&cases);
    if !require_root() {
        return;
    }

    let only: Vec<String> = std::env::var("NETPOL_CASES")
        .map(|s| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let nodes_arg = nodes.to_string();
    let mut args = vec!["--nodes", &nodes_arg];
    args.extend_from_slice(extra);
    let lab = Lab::up(name, &xyz_manifests_on(nodes), &args);
    let placed: Vec<String> = lab.status()["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .map(|p| p["node"].as_str().unwrap_or_default().to_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(placed.len(), nodes as usize, "the pods are not spread over every node: {placed:?}");
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in &cases {
        if !only.is_empty() && !only.iter().any(|o| case.name.contains(o.as_str())) {
            continue;
        }
        ran += 1;
        eprintln!("== {}: {}", case.name, case.rule);
        let before = failures.len();
        run_case(&lab, case, &mut failures);
        if failures.len() > before {
            eprintln!("   => FAILED");
        }
    }
    assert!(ran > 0, "NETPOL_CASES={only:?} names no case");
    let failed_cases: std::collections::BTreeSet<&str> =
        cases.iter().map(|c| c.name).filter(|n| failures.iter().any(|f| f.starts_with(&format!("case `{n}`")))).collect();
    assert!(
        failures.is_empty(),
        "{} of {ran} NetworkPolicy cases failed on {name} ({}):\n\n{}",
        failed_cases.len(),
        failed_cases.iter().copied().collect::<Vec<_>>().join(", "),
        failures.join("\n\n")
    );
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn network_policy_conformance() {
    conformance("e2e-netpol", 1, &[]);
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn network_policy_conformance_overlay_three_nodes() {
    conformance("e2e-netpol-ov", 3, &["--network-model", "overlay", "--pod-cidr", "192.168.0.0/16"]);
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn network_policy_conformance_pod_subnet_three_nodes() {
    conformance("e2e-netpol-ps", 3, &["--network-model", "pod-subnet"]);
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn network_policy_conformance_vxlan_tunnel_three_nodes() {
    conformance("e2e-netpol-vx", 3, &["--network-model", "overlay", "--tunnel", "vxlan"]);
}

#[test]
#[cfg_attr(not(sightline_root), ignore = "needs root: network namespaces and eBPF")]
fn network_policy_conformance_node_subnet_three_nodes() {
    conformance("e2e-netpol-ns", 3, &["--network-model", "node-subnet"]);
}
