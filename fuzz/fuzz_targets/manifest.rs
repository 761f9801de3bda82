//! `lab up|apply|delete -f`: any text as a manifest file, parsed and
//! applied to an empty object store, then deleted again. The parser lives in
//! the `sightline` binary crate; it is compiled here from its own source
//! file (`#[path]`), with the one module it names (`crate::lab::types`).
#![no_main]

use libfuzzer_sys::fuzz_target;

/// What the parser names as `crate::lab::types`.
mod lab {
    pub mod types {
        pub use sightline_collector::policy::model::Protocol;
    }
}

#[allow(dead_code, unused_imports)]
#[path = "../../cli/src/lab/manifest/mod.rs"]
mod manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(objects) = manifest::parse_manifests("fuzz.yaml", text) else { return };
    let mut store = manifest::ObjectStore::new();
    if store.apply(objects.clone()).is_ok() {
        let _ = store.delete(&objects);
    }
});
