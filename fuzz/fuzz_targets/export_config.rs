//! `--export-config`: any text as the export configuration file.
#![no_main]

use std::collections::HashMap;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use sightline_export::config::{Context, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let ctx = Context {
        spool_dir: PathBuf::from("/nonexistent/sightline-fuzz/spool"),
        env: HashMap::from([("AZURE_TENANT_ID".to_owned(), "t".to_owned())]),
    };
    let _ = parse(text, &ctx);
});
