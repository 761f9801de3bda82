//! `lab up|apply|delete -f`: any text as a manifest file, parsed and
//! applied to an empty object store, then deleted again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sightline_lab::manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(objects) = manifest::parse_manifests("fuzz.yaml", text) else { return };
    let mut store = manifest::ObjectStore::new();
    if store.apply(objects.clone()).is_ok() {
        let _ = store.delete(&objects);
    }
});
