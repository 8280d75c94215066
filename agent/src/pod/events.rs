//! Pod events as the kubelet records them: one per (pod, reason, message), counted up
//! when it repeats, and told to the observer (cluster mode reports them).

use serde::{Deserialize, Serialize};

use super::{Core, PodRecord};
use crate::store::Table;

/// A recorded event, with the upstream reason strings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    pub kind: String,
    pub reason: String,
    pub message: String,
    pub count: u32,
    pub first_seen: u64,
    pub last_seen: u64,
    /// `namespace/name` of the object (a pod unless `object` says otherwise).
    pub pod: String,
    /// The object's kind when it is not a pod: "deployment" or "job".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

impl Core {
    /// Records an event; a repeat of the last one with the same reason and message
    /// counts up instead.
    pub(super) fn event(&self, rec: &PodRecord, kind: &str, reason: &str, message: &str) {
        self.event_for(&rec.uid, &rec.key(), kind, reason, message)
    }

    /// As [`Manager::event`], for the pod with `uid` and key `pod`.
    pub(super) fn event_for(&self, uid: &str, pod: &str, kind: &str, reason: &str, message: &str) {
        self.record_event(uid, pod, None, kind, reason, message)
    }

    pub(super) fn record_event(
        &self,
        uid: &str,
        pod: &str,
        object: Option<String>,
        kind: &str,
        reason: &str,
        message: &str,
    ) {
        let now = crate::time::now_ms();
        let prefix = format!("{uid}/");
        let last = self
            .store
            .scan::<Event>(Table::Events, &prefix)
            .ok()
            .and_then(|v| v.into_iter().rev().find(|(_, e)| e.reason == reason && e.message == message));
        let result = match last {
            Some((k, mut e)) => {
                e.count += 1;
                e.last_seen = now;
                if let Some(o) = self.observer.get() {
                    o.event(uid, &e);
                }
                self.store.put(Table::Events, &k, &e)
            }
            None => self.store.next_id().and_then(|id| {
                let e = Event {
                    kind: kind.into(),
                    reason: reason.into(),
                    message: message.into(),
                    count: 1,
                    first_seen: now,
                    last_seen: now,
                    pod: pod.to_string(),
                    object,
                };
                if let Some(o) = self.observer.get() {
                    o.event(uid, &e);
                }
                self.store.put(Table::Events, &format!("{prefix}{id:020}"), &e)
            }),
        };
        if let Err(e) = result {
            tracing::warn!(pod = %pod, error = %e, "cannot record event");
        }
    }

    /// A warning about the container with `id` (`<pod uid>-<name>-<instance>`).
    pub(super) fn container_event(&self, id: &str, reason: &str, message: &str) {
        let uid = id.get(..36).unwrap_or(id);
        let key = self.keys.lock().unwrap_or_else(|e| e.into_inner()).get(uid).cloned();
        if let Some(key) = key {
            self.event_for(uid, &key, "Warning", reason, message);
        }
    }
}
