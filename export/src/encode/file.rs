//! Hubble's export format: one JSON document per line, the envelope
//! `hubble observe -o jsonpb` prints for a `GetFlowsResponse`:
//! `{"flow":{…},"node_name":"…","time":"…"}`; node-status and lost-event
//! responses keep their own keys (`node_status`, `lost_events`).
//!
//! An aggregated record carries its counts in an extra key:
//! `"flow_count":{"ingress":n,"egress":n,"unknown":n}`, and its time is the
//! end of its window.

use sightline_flow::json_fast::{self, Obj};

use super::Encoder;
use crate::record::Item;

/// The file encoder.
#[derive(Debug, Default)]
pub struct FileEncoder;

impl Encoder for FileEncoder {
    fn encode(&mut self, item: &Item<'_>, out: &mut Vec<u8>) -> bool {
        match item {
            Item::Flow(r) => {
                let mut o = Obj::new(out);
                o.key("flow");
                json_fast::write_flow(o.out, r.flow);
                o.string("node_name", r.node_name);
                o.key("time");
                json_fast::write_timestamp(o.out, &r.time);
                if r.aggregated {
                    o.key("flow_count");
                    let mut c = Obj::new(o.out);
                    c.key("ingress");
                    json_fast::write_u64(c.out, r.counts.ingress);
                    c.key("egress");
                    json_fast::write_u64(c.out, r.counts.egress);
                    c.key("unknown");
                    json_fast::write_u64(c.out, r.counts.unknown);
                    c.end();
                }
                o.end();
            }
            Item::Other(resp) => json_fast::write_response(out, resp),
        }
        true
    }
}
