//! Agent events (`GetAgentEvents`): what the agent itself did — started,
//! applied or deleted a policy, created or deleted an endpoint.
//!
//! A bounded log of recent events for `number`/`first` requests and a
//! broadcast for `follow`. The agent records events; it never waits on a
//! reader.

use std::collections::VecDeque;
use std::sync::Mutex;

use prost_types::Timestamp;
use sightline_proto::flow::{
    AgentEvent, AgentEventType, EndpointUpdateNotification, PolicyUpdateNotification, TimeNotification, agent_event,
};
use tokio::sync::broadcast;

/// One recorded agent event with its time.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    pub time_ns: i64,
    pub event: AgentEvent,
}

/// Recent agent events.
pub struct AgentEventLog {
    recent: Mutex<VecDeque<Recorded>>,
    capacity: usize,
    live: broadcast::Sender<Recorded>,
}

/// Unix time now, in nanoseconds.
#[must_use]
pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// A protobuf timestamp from Unix nanoseconds.
#[must_use]
pub fn timestamp(ns: i64) -> Timestamp {
    Timestamp { seconds: ns.div_euclid(1_000_000_000), nanos: ns.rem_euclid(1_000_000_000) as i32 }
}

impl AgentEventLog {
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        let (live, _) = broadcast::channel(capacity.max(16));
        Self { recent: Mutex::new(VecDeque::with_capacity(capacity)), capacity: capacity.max(1), live }
    }

    /// Records an event now.
    pub fn record(&self, event: AgentEvent) {
        let rec = Recorded { time_ns: now_ns(), event };
        {
            let mut recent = self.recent.lock().expect("agent event log");
            if recent.len() == self.capacity {
                recent.pop_front();
            }
            recent.push_back(rec.clone());
        }
        let _ = self.live.send(rec);
    }

    /// A copy of the recent events, oldest first.
    #[must_use]
    pub fn recent(&self) -> Vec<Recorded> {
        self.recent.lock().expect("agent event log").iter().cloned().collect()
    }

    /// Events recorded from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Recorded> {
        self.live.subscribe()
    }

    pub fn agent_started(&self) {
        let now = now_ns();
        self.record(AgentEvent {
            r#type: AgentEventType::AgentStarted as i32,
            notification: Some(agent_event::Notification::AgentStart(TimeNotification { time: Some(timestamp(now)) })),
        });
    }

    /// A policy was created or changed (`deleted` false) or removed.
    pub fn policy(&self, namespace: &str, name: &str, revision: u64, rule_count: i64, deleted: bool) {
        self.record(AgentEvent {
            r#type: if deleted { AgentEventType::PolicyDeleted } else { AgentEventType::PolicyUpdated } as i32,
            notification: Some(agent_event::Notification::PolicyUpdate(PolicyUpdateNotification {
                labels: vec![
                    format!("k8s:io.cilium.k8s.policy.name={name}"),
                    format!("k8s:io.cilium.k8s.policy.namespace={namespace}"),
                ],
                revision,
                rule_count,
            })),
        });
    }

    /// An endpoint was created or deleted.
    pub fn endpoint(&self, id: u16, namespace: &str, pod: &str, labels: Vec<String>, deleted: bool) {
        self.record(AgentEvent {
            r#type: if deleted { AgentEventType::EndpointDeleted } else { AgentEventType::EndpointCreated } as i32,
            notification: Some(agent_event::Notification::EndpointUpdate(EndpointUpdateNotification {
                id: u64::from(id),
                labels,
                error: String::new(),
                pod_name: pod.to_owned(),
                namespace: namespace.to_owned(),
            })),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recent_and_broadcasts() {
        let log = AgentEventLog::new(2);
        let mut rx = log.subscribe();
        log.agent_started();
        log.policy("x", "p", 1, 2, false);
        log.endpoint(3, "x", "a", vec!["k8s:app=a".into()], true);
        let recent = log.recent();
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].event.r#type, AgentEventType::PolicyUpdated as i32);
        assert_eq!(recent[1].event.r#type, AgentEventType::EndpointDeleted as i32);
        assert_eq!(rx.try_recv().unwrap().event.r#type, AgentEventType::AgentStarted as i32);
        assert!(timestamp(1_500_000_000_250).nanos == 250);
    }
}
