#!/usr/bin/env bash
# Makes a CA and the certificates Sightline's pods mount, and prints the
# three Secrets as YAML for `kubectl apply -f -` (docs/KUBERNETES.md, "TLS"):
#
#   sightline-agent-tls         each agent's gRPC server (*.<cluster>.hubble-grpc.cilium.io)
#   sightline-relay-client-tls  the relay's client certificate to the agents
#   sightline-relay-server-tls  the relay's server (*.hubble-relay.cilium.io, sightline-relay.<ns>.svc)
#
# Every Secret carries the CA as ca.crt. Keys: ECDSA P-256. Uses openssl and
# kubectl (client side only: nothing is sent to a cluster).
#
# usage: tls-secrets.sh DIR [CLUSTER_NAME] [NAMESPACE] [DAYS]
#   DIR keeps the CA (ca.crt, ca.key) for later renewals; an existing CA there is reused.
set -euo pipefail

dir=${1:?usage: tls-secrets.sh DIR [CLUSTER_NAME] [NAMESPACE] [DAYS]}
cluster=${2:-default}
ns=${3:-sightline}
days=${4:-365}
mkdir -p "$dir"
umask 077

if [ ! -f "$dir/ca.key" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=Sightline CA" -keyout "$dir/ca.key" -out "$dir/ca.crt" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

# issue NAME CN USAGE SAN...
issue() {
    local name=$1 cn=$2 usage=$3
    shift 3
    local san
    san=$(printf '%s,' "$@")
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$cn" \
        -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
        -days "$days" -out "$dir/$name.crt" -extfile <(printf '%s\n' \
            "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=$usage" \
            "subjectAltName=${san%,}") 2>/dev/null
    rm -f "$dir/$name.csr"
}

issue agent "*.$cluster.hubble-grpc.cilium.io" serverAuth "DNS:*.$cluster.hubble-grpc.cilium.io"
issue relay-client "relay.$cluster.hubble-grpc.cilium.io" clientAuth "DNS:relay.$cluster.hubble-grpc.cilium.io"
issue relay-server "*.hubble-relay.cilium.io" serverAuth \
    "DNS:*.hubble-relay.cilium.io" "DNS:sightline-relay.$ns.svc" "DNS:sightline-relay.$ns.svc.cluster.local"

first=1
for pair in agent:sightline-agent-tls relay-client:sightline-relay-client-tls relay-server:sightline-relay-server-tls; do
    name=${pair%%:*}
    secret=${pair#*:}
    [ "$first" = 1 ] || echo "---"
    first=0
    kubectl create secret generic "$secret" --namespace "$ns" --type kubernetes.io/tls \
        --from-file=tls.crt="$dir/$name.crt" --from-file=tls.key="$dir/$name.key" --from-file=ca.crt="$dir/ca.crt" \
        --dry-run=client -o yaml
done
