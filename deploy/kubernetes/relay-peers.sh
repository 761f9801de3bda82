#!/usr/bin/env bash
# Reads NODE=ADDRESS:PORT lines on stdin and prints a JSON patch (YAML) for
# the relay Deployment that replaces the base's placeholder peer with one
# --peer per line (docs/KUBERNETES.md, "Relay peers").
#
#   kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}={.status.addresses[?(@.type=="InternalIP")].address}:4244{"\n"}{end}' |
#     deploy/kubernetes/relay-peers.sh > relay-peers.yaml
set -euo pipefail

# The placeholder's index in the relay container's args (checked by tests/tests/deploy.rs).
PLACEHOLDER_INDEX=12

echo "- op: test"
echo "  path: /spec/template/spec/containers/0/args/$PLACEHOLDER_INDEX"
echo "  value: --peer=node-0=node-0.invalid:4244"
echo "- op: remove"
echo "  path: /spec/template/spec/containers/0/args/$PLACEHOLDER_INDEX"
n=0
while IFS= read -r line; do
    [ -n "$line" ] || continue
    case "$line" in
        *=*:[0-9]*) ;;
        *) echo "relay-peers: not NODE=ADDRESS:PORT: $line" >&2; exit 1 ;;
    esac
    echo "- op: add"
    echo "  path: /spec/template/spec/containers/0/args/-"
    echo "  value: --peer=$line"
    n=$((n + 1))
done
[ "$n" -gt 0 ] || { echo "relay-peers: no peers on stdin" >&2; exit 1; }
