//! When the upstream Hubble `.proto` files are beside the repository
//! (`../shared/reference/hubble-api`), generates a gRPC client from them for
//! the compatibility test, and sets `cfg(upstream_hubble)`. Without them the
//! test is ignored, saying why. Also sets the cfgs of
//! `build-support/test_cfg.rs` (root, tools) for the end-to-end tests.

use std::path::PathBuf;

include!("../build-support/test_cfg.rs");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rustc-check-cfg=cfg(upstream_hubble)");
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    emit_test_cfgs(&manifest_dir);
    let root = manifest_dir.join("../../shared/reference/hubble-api/api/v1");
    println!("cargo:rerun-if-changed={}", root.display());
    if !root.join("observer/observer.proto").exists() {
        return Ok(());
    }
    let protos: Vec<PathBuf> = ["flow/flow.proto", "observer/observer.proto", "peer/peer.proto", "relay/relay.proto"]
        .iter()
        .map(|p| root.join(p))
        .collect();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .emit_rerun_if_changed(false)
        .compile_protos(&protos, &[root])?;
    println!("cargo:rustc-cfg=upstream_hubble");
    Ok(())
}
