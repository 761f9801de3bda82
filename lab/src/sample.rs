//! Sample applications for the lab: the demo's, and the xyz fixture the
//! end-to-end suite and the differential test share.

/// The demo's application: a shop, its payments backend and a DNS server,
/// with a NetworkPolicy (what `sightline demo` applies).
pub const DEMO_APP: &str = r"# Sightline demo: a shop, its payments backend, and a DNS server.
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {team: web}
---
apiVersion: v1
kind: Namespace
metadata:
  name: payments
  labels: {team: finance}
---
apiVersion: v1
kind: Namespace
metadata:
  name: infra
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: shop, labels: {app: frontend, tier: web}}
spec:
  containers:
  - name: web
    ports: [{containerPort: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: cart, namespace: shop, labels: {app: cart, tier: api}}
spec:
  containers:
  - name: cart
    ports: [{containerPort: 8080, name: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: payments, labels: {app: payments-api}}
spec:
  containers:
  - name: api
    ports: [{containerPort: 8443}]
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: payments, labels: {app: postgres}}
spec:
  containers:
  - name: db
    ports: [{containerPort: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: dns, namespace: infra, labels: {app: dns}}
spec:
  containers:
  - name: dns
    ports: [{containerPort: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: infra}
spec:
  selector: {app: dns}
  ports: [{port: 53, protocol: UDP}]
---
# Only the payments API may reach the database.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-only-from-api, namespace: payments}
spec:
  podSelector: {matchLabels: {app: postgres}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: payments-api}}}]
    ports: [{port: 5432}]
";

/// Three namespaces x, y, z (labels `ns: x` …) with pods a, b, c each
/// (labels `pod: a` …), serving TCP and UDP on ports 80 and 81 (named
/// `serve-80-tcp` …), the pods spread over `nodes` nodes: pod a on node-1,
/// b on node-2, c on node-3 (wrapping around with fewer nodes; no
/// `nodeName` at all with one).
#[must_use]
pub fn xyz(nodes: u32) -> String {
    let mut docs = Vec::new();
    for ns in ["x", "y", "z"] {
        docs.push(format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {{ns: {ns}}}\n"));
        for (i, pod) in ["a", "b", "c"].into_iter().enumerate() {
            let node = if nodes > 1 { format!("\n  nodeName: node-{}", i as u32 % nodes + 1) } else { String::new() };
            docs.push(format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {ns}\n  labels: {{pod: {pod}}}\nspec:{node}\n  containers:\n  - name: c\n    ports:\n    - {{containerPort: 80, protocol: TCP, name: serve-80-tcp}}\n    - {{containerPort: 80, protocol: UDP, name: serve-80-udp}}\n    - {{containerPort: 81, protocol: TCP, name: serve-81-tcp}}\n    - {{containerPort: 81, protocol: UDP, name: serve-81-udp}}\n"
            ));
        }
    }
    docs.join("---\n")
}
