//! Deleting a pod's series some time after the pod is gone (Hubble's
//! delayed work queue with a one-minute grace, which lets the last flows of
//! a dying pod still be counted and scraped).
//!
//! The agent reports pod deletions and additions; a deletion fires after
//! the grace period unless the pod (same namespace and name) comes back
//! first. This module must not find out about pods itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::AbortHandle;

use super::{Metrics, MetricsError};

type Pending = HashMap<(String, String), (u64, AbortHandle)>;

/// Schedules [`Metrics::delete_pod`] calls after a grace period.
#[derive(Debug)]
pub struct PodDeletions {
    metrics: Arc<Metrics>,
    grace: Duration,
    runtime: Handle,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
}

impl PodDeletions {
    /// Hubble's grace period.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

    /// Deletions run as tasks of the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`MetricsError::NoRuntime`] when called outside a Tokio runtime.
    pub fn new(metrics: Arc<Metrics>, grace: Duration) -> Result<Self, MetricsError> {
        let runtime = Handle::try_current().map_err(|_| MetricsError::NoRuntime)?;
        Ok(Self {
            metrics,
            grace,
            runtime,
            pending: Arc::default(),
            next_id: AtomicU64::new(0),
        })
    }

    /// The pod is gone: delete its series after the grace period. A second
    /// report restarts the period.
    pub fn pod_deleted(&self, namespace: &str, pod: &str) {
        let key = (namespace.to_owned(), pod.to_owned());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let (metrics, grace, shared, task_key) = (
            Arc::clone(&self.metrics),
            self.grace,
            Arc::clone(&self.pending),
            key.clone(),
        );
        let task = self.runtime.spawn(async move {
            tokio::time::sleep(grace).await;
            // Decide and delete under the lock, so that a `pod_added` racing
            // with the timer either cancels the deletion or comes after it.
            let mut pending = shared.lock().unwrap_or_else(PoisonError::into_inner);
            if pending
                .get(&task_key)
                .is_some_and(|(current, _)| *current == id)
            {
                pending.remove(&task_key);
                let removed = metrics.delete_pod(&task_key.0, &task_key.1);
                log::debug!(
                    "deleted {removed} metric series of pod {}/{}",
                    task_key.0,
                    task_key.1
                );
            }
        });
        if let Some((_, previous)) = pending.insert(key, (id, task.abort_handle())) {
            previous.abort();
        }
    }

    /// The pod exists (again): cancel a pending deletion. Returns whether
    /// one was pending.
    pub fn pod_added(&self, namespace: &str, pod: &str) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        match pending.remove(&(namespace.to_owned(), pod.to_owned())) {
            Some((_, task)) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// Deletions waiting for their grace period to end.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for PodDeletions {
    /// Pending deletions die with the scheduler.
    fn drop(&mut self) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, (_, task)) in pending.drain() {
            task.abort();
        }
    }
}
