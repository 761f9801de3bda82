#!/usr/bin/env bash
# Builds Sightline's container image from the repository alone (no registry):
#
#   scripts/image.sh [binaries|image|all]      default: all
#
#   binaries  static sightline and sightline-cni: cargo build --profile image
#             --target x86_64-unknown-linux-gnu with crt-static (the target
#             only, so build scripts and proc macros stay dynamic);
#   image     buildah build -f Containerfile on a context of those binaries,
#             Debian's static busybox and the CA bundle; each binary is
#             checked to be static first.
#
# Environment: SIGHTLINE_IMAGE (default localhost/sightline:<version>),
# CARGO_TARGET_DIR (default target). Needs buildah and busybox-static
# (scripts/setup.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'image: %s\n' "$*" >&2; }

what=${1:-all}
target=x86_64-unknown-linux-gnu
bin_dir="${CARGO_TARGET_DIR:-target}/$target/image"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
image=${SIGHTLINE_IMAGE:-localhost/sightline:$version}

binaries() {
    log "building static sightline and sightline-cni (profile image)"
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --locked --profile image --target "$target" -p sightline -p sightline-cni
}

build_image() {
    local ctx
    ctx=$(mktemp -d)
    trap 'rm -rf "$ctx"' RETURN
    for b in sightline sightline-cni; do
        [ -x "$bin_dir/$b" ] || { log "$bin_dir/$b is missing: run scripts/image.sh binaries"; exit 1; }
        cp "$bin_dir/$b" "$ctx/$b"
    done
    cp /bin/busybox "$ctx/busybox"
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
    for b in sightline sightline-cni busybox; do
        # `ldd` says "not a dynamic executable" (or "statically linked") for
        # a static binary; any library it lists means the image cannot run it.
        if ldd "$ctx/$b" 2>&1 | grep -q '=>'; then
            log "$b is dynamically linked: $(ldd "$ctx/$b" 2>&1 | tr '\n' ' ')"
            exit 1
        fi
    done
    log "buildah build -t $image"
    buildah build --quiet --layers=false -f Containerfile -t "$image" "$ctx" >/dev/null
    log "built $image"
}

case "$what" in
    binaries) binaries ;;
    image) build_image ;;
    all) binaries && build_image ;;
    *) echo "usage: scripts/image.sh [binaries|image|all]" >&2; exit 2 ;;
esac
