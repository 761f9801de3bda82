//! A sample application for the lab.

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
