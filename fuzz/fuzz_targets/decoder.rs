//! Ring-buffer bytes → `Event` (size and ABI version checked) → the flow
//! the pipeline stores, its protobuf, and the control socket's record: no
//! bytes the kernel side could write may panic the collector.
//!
//! The input is padded or cut to an event's size half of the time, so the
//! fuzzer spends its effort past the size check.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sightline_collector::decoder::{self, Record};
use sightline_collector::metadata::Metadata;
use sightline_collector::flow::{FlowBuilder, to_proto};

fn metadata() -> Metadata {
    let mut meta = Metadata { node_name: "node-1".into(), mono_to_unix_ns: 1_700_000_000_000_000_000, ..Metadata::default() };
    meta.interfaces.insert(7, "lxc00001".into());
    meta.kernel_reasons.insert(2, "NOT_SPECIFIED".into());
    meta.identities.insert(256, Arc::from(vec!["k8s:app=a".to_owned()]));
    meta.policy_sets.insert(1, vec!["x/deny".into()]);
    meta
}

fuzz_target!(|data: &[u8]| {
    let size = size_of::<sightline_abi::Event>();
    let mut bytes = data.to_vec();
    if data.first().is_some_and(|b| b & 1 == 1) {
        bytes.resize(size, 0);
        // Keep the ABI version right so decoding goes on.
        if let Some(v) = bytes.get_mut(std::mem::offset_of!(sightline_abi::Event, version)) {
            *v = sightline_abi::ABI_VERSION;
        }
    }
    let Ok(ev) = decoder::decode(&bytes) else { return };
    let meta = metadata();
    let flow = FlowBuilder::new().build(&ev, &meta);
    let _ = to_proto(&flow, &meta.node_name, None);
    let record = Record::new(&ev, &flow, &meta.node_name);
    let _ = record.summary();
});
