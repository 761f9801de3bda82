//! `--allowlist`/`--denylist` JSON and field masks, as clients send them:
//! parsed, compiled (`FlowFilters::new`, `FieldMask::new`), and used on a
//! flow and its protobuf. The first line is the JSON; each further line is a
//! field-mask path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sightline_flow::{FieldMask, FlowFilters, json, testing, to_proto};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (filter, paths) = text.split_once('\n').unwrap_or((text, ""));
    let flow = testing::flow();
    if let Ok(list) = json::flow_filters_from_json(filter) {
        for (white, black) in [(&list[..], &[][..]), (&[][..], &list[..])] {
            if let Ok(filters) = FlowFilters::new(white, black) {
                let _ = filters.matches(&flow, "node-1");
                let _ = filters.matches_proto(&to_proto(&flow, "node-1", None));
            }
        }
    }
    if let Ok(mask) = FieldMask::new(paths.lines()) {
        let mut pb = to_proto(&flow, "node-1", Some(&mask));
        mask.prune(&mut pb);
    }
});
