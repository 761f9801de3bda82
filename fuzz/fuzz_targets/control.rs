//! The collector's control socket: any bytes as one request line, parsed;
//! an `apply` is then checked by the guard (paths, interfaces) and planned
//! (every map entry computed, policy compiled), as the collector would
//! before writing anything.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use sightline_collector::control::{Request, parse_request};
use sightline_collector::{datapath, guard};

fuzz_target!(|data: &[u8]| {
    let Ok(Request::Apply { state }) = parse_request(data) else { return };
    let scope = guard::Scope {
        lab: "t".into(),
        node: "node-1".into(),
        node_netns: PathBuf::from("/run/netns/t.node-1"),
        netns_dir: PathBuf::from("/nonexistent/sightline-fuzz/netns"),
    };
    let _ = guard::check_state(&state, &scope, |name| guard::is_lab_ifname(name));
    let _ = datapath::plan(&state, |_| Ok(7), |_| Ok(4_026_531_840));
});
