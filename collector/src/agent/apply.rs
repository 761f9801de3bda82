//! Bringing a desired state into force (the control socket's and the
//! Kubernetes source's `apply`, CNI registrations, endpoint slices), the
//! status the control socket reports, and the agent as the control
//! socket's [`crate::control::Handler`].

use super::*;

/// The source's last desired state again, with the current slices.
pub(super) fn reapply(shared: &Shared) -> Result<(), String> {
    let _one = shared.apply_lock.lock().expect("apply lock");
    let Some(source) = shared.source.lock().expect("source state").clone() else { return Ok(()) };
    apply_locked(shared, &source)
}

/// Registers an endpoint of the CNI plugin (checked like an `apply`'s) and
/// applies the source's state again, so that its pod gets the endpoint.
pub(super) fn endpoint_add(shared: &Shared, reg: crate::registry::Registration) -> Result<(), String> {
    let netns = shared.opts.node_netns.clone();
    let scope = crate::guard::Scope {
        lab: shared.opts.lab.clone(),
        node: shared.opts.node_name.clone(),
        node_netns: netns.clone(),
        netns_dir: PathBuf::from(crate::guard::NETNS_DIR),
    };
    crate::guard::check_registration(&reg, &scope, |ifname| loader::ifindex_in(&netns, ifname).is_ok()).map_err(|e| e.to_string())?;
    let shown = format!("{}/{} ({} {})", reg.namespace, reg.name, reg.container_id, reg.ifname);
    let (container_id, ifname) = (reg.container_id.clone(), reg.ifname.clone());
    let previous = shared.registry.lock().expect("registry").iter().find(|r| r.registration.container_id == container_id && r.registration.ifname == ifname).map(|r| r.registration.clone());
    let id = shared.registry.lock().expect("registry").add(reg).ok_or_else(|| "refused: endpoint_add: every endpoint id is taken".to_owned())?;
    if let Err(e) = reapply(shared) {
        // Nothing half-applied: the registration goes (or the previous one
        // comes back) and the state is applied as it was.
        {
            let mut registry = shared.registry.lock().expect("registry");
            registry.remove(&container_id, &ifname);
            if let Some(p) = previous {
                registry.add(p);
            }
        }
        let _ = reapply(shared);
        return Err(e);
    }
    log::info!("endpoint {id} registered for {shown}");
    Ok(())
}

/// Forgets an endpoint of the CNI plugin (an unknown one is fine) and
/// applies the source's state again.
pub(super) fn endpoint_del(shared: &Shared, container_id: &str, ifname: &str) -> Result<(), String> {
    if shared.registry.lock().expect("registry").remove(container_id, ifname) {
        log::info!("endpoint of container {container_id} ({ifname}) unregistered");
        reapply(shared)
    } else {
        Ok(())
    }
}

/// Applies a desired state from the state source (the control socket).
pub(super) fn apply(shared: &Shared, state: &NodeState) -> Result<(), String> {
    let _one = shared.apply_lock.lock().expect("apply lock");
    apply_locked(shared, state)
}

/// Applies `state` merged with the slices' remote endpoints
/// (`kvstore::slices::effective_state`, the one place they meet); the
/// datapath writes only what differs from what the maps hold.
pub(super) fn apply_locked(shared: &Shared, state: &NodeState) -> Result<(), String> {
    let netns = shared.opts.node_netns.clone();
    if state.node_name != shared.opts.node_name {
        return Err(format!("state for node {} sent to the collector of {}", state.node_name, shared.opts.node_name));
    }
    // Only what the lab made, before anything is planned or written.
    let scope = crate::guard::Scope {
        lab: shared.opts.lab.clone(),
        node: shared.opts.node_name.clone(),
        node_netns: netns.clone(),
        netns_dir: PathBuf::from(crate::guard::NETNS_DIR),
    };
    // Registered endpoints for the source's pods that have none.
    let source_state = state;
    let merged = crate::registry::merge(state, &shared.registry.lock().expect("registry"));
    let state = &merged;
    crate::guard::check_state(state, &scope, |ifname| loader::ifindex_in(&netns, ifname).is_ok()).map_err(|e| e.to_string())?;
    let remote = Arc::clone(&shared.remote.lock().expect("remote endpoints"));
    let effective = crate::kvstore::slices::effective_state(state, &remote);
    let mut next = datapath::plan(
        &effective,
        |ifname| loader::ifindex_in(&netns, ifname),
        netns_inode,
    )
    .map_err(|e| e.to_string())?;
    let mut inner = shared.inner.lock().expect("datapath lock");
    let prev = inner.plan.clone();
    next.keep_service_numbers(&prev).map_err(|e| e.to_string())?;
    let base = Arc::clone(&shared.meta.read().expect("metadata lock"));
    let result = datapath::apply(&mut inner.probes, &netns, &prev, &next);
    // Whatever was written is what the maps hold now: keep the plan true
    // even on error so that the next apply repairs the difference.
    match result {
        Ok(()) => {
            inner.plan = next.clone();
            // A replacement staged at start is put in force once its new
            // maps hold the desired state.
            let committed = inner.probes.commit().map_err(|e| format!("putting the new programs in force: {e}"))?;
            if let Some(reason) = committed {
                log::info!("datapath replaced in place ({reason}): every link runs this build's programs");
            }
            *shared.meta.write().expect("metadata lock") = Arc::new(datapath::metadata(&effective, &next, &base));
            drop(inner);
            shared.kvstore_metrics.remote_endpoints.set(crate::kvstore::slices::from_slices(state, &effective) as i64);
            *shared.source.lock().expect("source state") = Some(source_state.clone());
            if let Some(k) = &shared.kvstore {
                k.publish(crate::kvstore::slices::local_endpoints(state));
            }
            record_changes(shared, state);
            shared.programmed.send_replace(true);
            Ok(())
        }
        Err(err) => {
            // Roll back to the previous plan so nothing stays half-applied.
            let partial = next;
            if let Err(rollback) = datapath::apply(&mut inner.probes, &netns, &partial, &prev) {
                log::error!("rolling back a failed apply: {rollback}");
            }
            Err(err.to_string())
        }
    }
}

/// Agent events for what an applied state changed: policies updated or
/// deleted, endpoints created or deleted.
pub(super) fn record_changes(shared: &Shared, state: &NodeState) {
    let mut applied = shared.applied.lock().expect("applied state");
    let log = &shared.observer.agent_events;
    let (no_policies, no_endpoints) = (Vec::new(), Vec::new());
    let (prev_policies, prev_endpoints) =
        applied.as_ref().map_or((&no_policies, &no_endpoints), |s| (&s.policies, &s.endpoints));
    let key = |p: &crate::policy::model::NetworkPolicy| (p.namespace.clone(), p.name.clone());
    let revision = shared.inner.lock().map(|i| u64::from(i.probes.policy_revision())).unwrap_or(0);
    for p in &state.policies {
        if !prev_policies.iter().any(|q| q == p) {
            log.policy(&p.namespace, &p.name, revision, (p.ingress.len() + p.egress.len()) as i64, false);
        }
    }
    for p in prev_policies {
        if !state.policies.iter().any(|q| key(q) == key(p)) {
            log.policy(&p.namespace, &p.name, revision, 0, true);
        }
    }
    let labels = |e: &crate::state::Endpoint| e.labels.iter().map(|(k, v)| format!("k8s:{k}={v}")).collect::<Vec<_>>();
    for e in &state.endpoints {
        if !prev_endpoints.iter().any(|q| q.id == e.id && q.name == e.name && q.namespace == e.namespace) {
            log.endpoint(e.id, &e.namespace, &e.name, labels(e), false);
        }
    }
    for e in prev_endpoints {
        if !state.endpoints.iter().any(|q| q.id == e.id && q.name == e.name && q.namespace == e.namespace) {
            log.endpoint(e.id, &e.namespace, &e.name, labels(e), true);
        }
    }
    // Metric series of pods that are gone go after a grace period (and stay
    // if the pod comes back in time).
    let prev_pods = applied.as_ref().map(|s| s.pods.clone()).unwrap_or_default();
    for p in &prev_pods {
        if !state.pods.iter().any(|q| q.namespace == p.namespace && q.name == p.name) {
            shared.pod_deletions.pod_deleted(&p.namespace, &p.name);
        }
    }
    for p in &state.pods {
        if !prev_pods.iter().any(|q| q.namespace == p.namespace && q.name == p.name) {
            shared.pod_deletions.pod_added(&p.namespace, &p.name);
        }
    }
    *applied = Some(state.clone());
}

pub(super) fn status(shared: &Shared) -> Status {
    let inner = shared.inner.lock().expect("datapath lock");
    let p = &inner.probes;
    Status {
        node: shared.opts.node_name.clone(),
        endpoints: inner.plan.endpoints.len(),
        attached_interfaces: p.attached_interfaces().map(str::to_owned).collect(),
        events_decoded: shared.decoded.load(Ordering::Relaxed),
        events_undecodable: shared.undecodable.load(Ordering::Relaxed),
        events_lost_per_cpu: p.counter_per_cpu(abi::COUNTER_EVENTS_LOST),
        events_written: p.counter(abi::COUNTER_EVENTS_WRITTEN),
        packets_forwarded: p.counter(abi::COUNTER_PACKETS_FORWARDED),
        packets_dropped: p.counter(abi::COUNTER_PACKETS_DROPPED),
        ct_entries: p.ct_entries(),
        ct_created: p.counter(abi::COUNTER_CT_CREATED),
        kernel_drops_seen: p.counter(abi::COUNTER_KERNEL_DROPS_SEEN),
        kernel_drops_enabled: shared.kernel_drops,
        aggregation: shared.opts.aggregation.to_string(),
        pin_dir: p.pin_dir().display().to_string(),
        datapath: p.start().to_string(),
        programmed: *shared.programmed.borrow(),
        registrations: shared.registry.lock().expect("registry").iter().cloned().collect(),
        kubernetes: shared.kubernetes.get().map(crate::kubernetes::StatusHandle::get),
    }
}

/// The agent as the control socket's server sees it.
impl crate::control::Handler for Shared {
    fn control_uid(&self) -> u32 {
        self.opts.control_uid
    }

    fn apply(&self, state: &NodeState) -> Result<(), String> {
        apply(self, state)
    }

    fn endpoint_add(&self, registration: crate::registry::Registration) -> Result<(), String> {
        endpoint_add(self, registration)
    }

    fn endpoint_del(&self, container_id: &str, ifname: &str) -> Result<(), String> {
        endpoint_del(self, container_id, ifname)
    }

    fn status(&self) -> Status {
        status(self)
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Record>> {
        self.events.subscribe()
    }
}
