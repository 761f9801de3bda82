//! The agent's periodic tasks: the kernel-loss monitor (with the map fill
//! and the agent's own counters), conntrack garbage collection, and the
//! endpoint slices of other nodes applied as they change.

use super::*;

/// How often (in seconds) the map fill and conntrack entries are read.
const MAP_FILL_EVERY: u64 = 5;

/// Once a second: kernel ring-buffer losses to following clients and to
/// `hubble_lost_events_total`, store overwrites likewise, and the
/// collector's own metrics from the probes' counters.
///
/// Ring-buffer losses are counted by the probes in a pinned per-CPU map
/// that outlives collectors; what has been reported is pinned beside it
/// (`lost_reported`), written before each report, so a restarted collector
/// reports the losses since its predecessor's last report (those of the
/// downtime included) and nothing twice. `reported` is that starting sum.
pub(super) async fn loss_monitor(shared: Arc<Shared>, reported: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut ring_lost, mut overwritten) = (reported, 0u64);
    for ticks in 0u64.. {
        tick.tick().await;
        let shared2 = Arc::clone(&shared);
        let Ok(reading) = tokio::task::spawn_blocking(move || {
            let meta = Arc::clone(&shared2.meta.read().expect("metadata lock"));
            let mut inner = shared2.inner.lock().expect("datapath lock");
            let lost = inner.probes.counter_per_cpu(abi::COUNTER_EVENTS_LOST);
            // Recorded before it is reported: at most once, never twice.
            if let Err(err) = inner.probes.record_lost_reported(&lost) {
                log::warn!("{err}");
            }
            let p = &inner.probes;
            let store = &shared2.observer.store;
            // Walking the maps costs a system call per entry: every
            // MAP_FILL_EVERY seconds only.
            let map_fill = if ticks % MAP_FILL_EVERY == 0 { p.map_fill() } else { Vec::new() };
            let ct_entries = map_fill.iter().find(|f| f.map == abi::maps::CT).map(|f| f.entries);
            crate::agent_metrics::Reading {
                traffic: p.traffic(),
                map_fill,
                identities: meta.identities.len() as u64,
                policy_denied: p.counter(abi::COUNTER_POLICY_DENIED),
                kernel_drops: p
                    .kernel_drops()
                    .into_iter()
                    .map(|(reason, count)| (meta.kernel_reasons.get(&reason).map_or_else(|| reason.to_string(), |n| n.to_string()), count))
                    .collect(),
                events_written: p.counter(abi::COUNTER_EVENTS_WRITTEN),
                events_lost_per_cpu: lost,
                events_decoded: shared2.decoded.load(Ordering::Relaxed),
                ct_entries,
                ct_created: p.counter(abi::COUNTER_CT_CREATED),
                endpoints: inner.plan.endpoints.len() as u64,
                flows_stored: store.len() as u64,
                flows_seen: store.seen(),
                store_overwritten: store.overwritten(),
                grpc_clients: shared2.observer.flow_clients.load(Ordering::Relaxed),
            }
        })
        .await
        else {
            continue;
        };
        shared.observer.report_ring_losses(&reading.events_lost_per_cpu);
        let lost: u64 = reading.events_lost_per_cpu.iter().sum();
        shared.metrics.lost(LostEventSource::PerfEventRingBuffer, lost.saturating_sub(ring_lost));
        ring_lost = ring_lost.max(lost);
        shared.metrics.lost(LostEventSource::HubbleRingBuffer, reading.store_overwritten.saturating_sub(overwritten));
        overwritten = overwritten.max(reading.store_overwritten);
        shared.own_metrics.update(&reading);
    }
}

/// Deletes expired conntrack entries.
pub(super) async fn gc(shared: Arc<Shared>) {
    // A zero period would panic; the flag refuses it, a library caller might not.
    let mut tick = tokio::time::interval(shared.opts.gc_interval.max(GC_INTERVAL_BOUNDS.0));
    loop {
        tick.tick().await;
        let shared = Arc::clone(&shared);
        let _ = tokio::task::spawn_blocking(move || {
            let now = monotonic_ns();
            let mut inner = shared.inner.lock().expect("datapath lock");
            let started = Instant::now();
            let (_, deleted) = inner.probes.ct_collect(now);
            shared.own_metrics.observe_gc(deleted, started.elapsed());
            if deleted > 0 {
                log::debug!("conntrack: collected {deleted} expired entries");
            }
        })
        .await;
    }
}

/// Applies the other nodes' endpoints as the slices say, whenever they
/// change, merged with the state source's last desired state.
pub(super) async fn follow_slices(shared: Arc<Shared>, mut remote: tokio::sync::watch::Receiver<Arc<crate::kvstore::RemoteEndpoints>>) {
    while remote.changed().await.is_ok() {
        let view = Arc::clone(&remote.borrow_and_update());
        *shared.remote.lock().expect("remote endpoints") = view;
        let s = Arc::clone(&shared);
        match tokio::task::spawn_blocking(move || reapply(&s)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => log::warn!("applying the endpoint slices: {err}"),
            Err(err) => log::warn!("applying the endpoint slices: {err}"),
        }
    }
}
