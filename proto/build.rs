//! Generates the Rust code for the `.proto` files under `api/v1` with
//! tonic-prost-build (prost messages, tonic clients and servers) and writes
//! the encoded `FileDescriptorSet` that gRPC server reflection serves.
//!
//! Needs `protoc` (Debian: `protobuf-compiler`) on `PATH`, or `PROTOC` set.

use std::path::PathBuf;

include!("../build-support/test_cfg.rs");

/// Files compiled, relative to the include root `api/v1`. The paths are the
/// names the files get in descriptors, so they must stay equal to Hubble's
/// (`flow/flow.proto`, ...).
const PROTOS: &[&str] = &[
    "flow/flow.proto",
    "observer/observer.proto",
    "peer/peer.proto",
    "relay/relay.proto",
    "sightline/flow_counters.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    emit_test_cfgs(&manifest);
    // The compatibility tests run once the upstream protos are there.
    println!("cargo:rerun-if-changed={}", manifest.join("../../shared/reference/hubble-api").display());
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let include = manifest_dir.join("api/v1");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let protos: Vec<PathBuf> = PROTOS.iter().map(|p| include.join(p)).collect();
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    println!("cargo:rerun-if-env-changed=PROTOC");

    // prost::Name for every message, with the conventional type URL domain,
    // so that any message can be packed into google.protobuf.Any.
    let mut config = tonic_prost_build::Config::new();
    config
        .enable_type_names()
        .type_name_domain(["."], "type.googleapis.com");

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(out_dir.join("sightline_descriptor.bin"))
        .emit_rerun_if_changed(false)
        .compile_with_config(config, &protos, &[include])?;
    Ok(())
}
