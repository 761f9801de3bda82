#!/usr/bin/env bash
# Installs everything Sightline's build, demo and tests need on a fresh
# Debian machine (run as root). Idempotent: skips what is already there.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (it installs packages and mounts bpffs)" >&2
    exit 1
fi

packages=(llvm-22-dev libclang-22-dev libpolly-22-dev iproute2 iputils-ping iperf3 kmod protobuf-compiler iptables prometheus etcd-server buildah busybox-static)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
    log "system packages present"
fi

if ! rustup toolchain list | grep -q '^nightly'; then
    log "installing the nightly toolchain (builds the eBPF probes)"
    rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
    log "adding rust-src to nightly"
    rustup component add rust-src --toolchain nightly
fi

# The versions CI builds and tests with: bpf-linker from its lockfile, and
# the nightly the probes were last built with (a different nightly is used
# but named, since only the machine's own toolchains may be reachable).
BPF_LINKER_VERSION=0.13.0
TESTED_NIGHTLY="rustc 1.97.0-nightly (e50aa6fba 2026-05-19)"
installed_nightly=$(rustc +nightly --version 2>/dev/null || true)
if [ "$installed_nightly" != "$TESTED_NIGHTLY" ]; then
    log "note: the probes are tested with $TESTED_NIGHTLY; this machine's nightly is ${installed_nightly:-missing}"
fi

if [ "$(bpf-linker --version 2>/dev/null)" != "bpf-linker $BPF_LINKER_VERSION" ]; then
    log "building bpf-linker $BPF_LINKER_VERSION against LLVM 22 (takes a few minutes)"
    PATH=/usr/lib/llvm-22/bin:$PATH cargo install bpf-linker --version "=$BPF_LINKER_VERSION" --locked --force \
        --no-default-features --features llvm-22
else
    log "bpf-linker $BPF_LINKER_VERSION present"
fi

# kubernetes-validate checks the deploy manifests against Kubernetes' own
# schemas (bundled in the package: no network at run time). Its own venv,
# so no other Python project's packages are touched; linked into
# /usr/local/bin, where the tests look for it.
KUBERNETES_VALIDATE_VERSION=1.32.0
validate_venv=/usr/local/lib/sightline-validate
if [ "$("$validate_venv/bin/kubernetes-validate" --version 2>/dev/null)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
    log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
    python3 -m venv "$validate_venv"
    "$validate_venv/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
else
    log "kubernetes-validate $KUBERNETES_VALIDATE_VERSION present"
fi
ln -sf "$validate_venv/bin/kubernetes-validate" /usr/local/bin/kubernetes-validate
# kubectl (its built-in kustomize renders deploy/kubernetes) comes with the
# machine image; no package source for it is reachable here.
command -v kubectl >/dev/null || log "note: kubectl is missing; the deploy tests fail under CI=true"

# Kernel filesystems the collector uses.
if ! grep -qs ' /sys/fs/bpf bpf ' /proc/mounts; then
    log "mounting bpffs at /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
fi
if [ ! -d /sys/kernel/tracing/events ]; then
    log "mounting tracefs at /sys/kernel/tracing"
    mount -t tracefs tracefs /sys/kernel/tracing
fi
log "ready"
