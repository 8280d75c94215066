//! Pod events as the kubelet records them: one per (pod, reason, message), counted up
//! when it repeats, and told to the observer (cluster mode reports them).
//!
//! Recording an event only queues the sighting: a background task ([`write_in_background`])
//! counts it up or makes it new, writes it and tells the observer, a batch at a time. A
//! pod's start records three events, and each used to read the pod's stored events (to
//! count a repeat) and write into a part of the events tree that thousands of pods make
//! cold: p99 0.2–0.4 ms an event at 30,000 pods, measured, in the middle of the start.
//! Readers, a pod's deletion and the agent's shutdown write what is queued first. Like
//! the kubelet's, events are not made durable on their own: a crash may lose the last
//! moment of them, never a pod.
//!
//! Which stored event a sighting counts up is remembered for the last [`RECENT`]
//! (object, reason, message) seen, least recently seen forgotten first (the kubelet's
//! event correlator keeps as many); one not remembered is looked for among the object's
//! stored events, so that counts go on across an agent restart.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{Core, PodRecord};
use crate::store::Table;

/// Where an event is stored: the object's uid, then the event's id (so the events of
/// one object are read in the order they were first seen).
fn event_key(uid: &str, id: u64) -> String {
    format!("{uid}/{id:020}")
}

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

/// How many recent events are remembered for counting up: the kubelet's
/// `maxLruCacheEntries`.
pub const RECENT: usize = 4096;

/// The recently written events: (object uid, hash of reason and message) → where the
/// event is stored and its count, in least-recently-seen order.
#[derive(Debug, Default)]
pub struct Recent {
    seen: HashMap<(String, u64), Seen>,
    /// Least recently seen first, by the tick of their last sighting.
    order: BTreeMap<u64, (String, u64)>,
    tick: u64,
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    id: u64,
    count: u32,
    first_seen: u64,
    tick: u64,
}

fn digest(reason: &str, message: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (reason, message).hash(&mut h);
    h.finish()
}

impl Recent {
    /// A repeat of a remembered event: its id, new count and first sighting.
    fn repeat(&mut self, uid: &str, reason: &str, message: &str) -> Option<Seen> {
        let k = (uid.to_string(), digest(reason, message));
        let s = self.seen.get_mut(&k)?;
        self.tick += 1;
        let tick = self.tick;
        self.order.remove(&s.tick);
        s.tick = tick;
        s.count = s.count.saturating_add(1);
        let out = *s;
        self.order.insert(tick, k);
        Some(out)
    }

    /// Remembers an event as stored with `id` and `count`.
    fn insert(&mut self, uid: &str, reason: &str, message: &str, id: u64, count: u32, first_seen: u64) {
        let k = (uid.to_string(), digest(reason, message));
        self.tick += 1;
        if let Some(old) = self.seen.insert(k.clone(), Seen { id, count, first_seen, tick: self.tick }) {
            self.order.remove(&old.tick);
        }
        self.order.insert(self.tick, k);
        while self.seen.len() > RECENT {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.seen.remove(&oldest);
        }
    }

    /// Forgets an object's events (their records were removed).
    pub fn forget(&mut self, uid: &str) {
        let order = &mut self.order;
        self.seen.retain(|(u, _), s| {
            let keep = u != uid;
            if !keep {
                order.remove(&s.tick);
            }
            keep
        });
    }
}

/// An event as recorded, before it is counted up and written.
#[derive(Debug)]
struct Sighting {
    uid: String,
    pod: String,
    object: Option<String>,
    kind: String,
    reason: String,
    message: String,
    at: u64,
}

/// The events recorded and not yet written, and what the writer remembers.
#[derive(Debug, Default)]
pub struct Log {
    /// In the order recorded.
    pending: Mutex<Vec<Sighting>>,
    /// Held while a batch is written (so that a reader writing what is pending first
    /// finds no batch taken and not yet written), with what it remembers.
    writing: Mutex<Recent>,
    wake: Arc<tokio::sync::Notify>,
}

/// How long the writer waits after a wake-up to gather a batch: the rest of a start.
const GATHER: std::time::Duration = std::time::Duration::from_millis(1);

/// Writes recorded events as they come, for as long as `core` lives.
pub(super) async fn write_in_background(core: std::sync::Weak<Core>) {
    let Some(wake) = core.upgrade().map(|c| c.event_log.wake.clone()) else { return };
    loop {
        wake.notified().await;
        tokio::time::sleep(GATHER).await;
        let Some(c) = core.upgrade() else { return };
        c.write_events();
    }
}

impl Core {
    /// Records an event; a repeat of one with the same reason and message counts it
    /// up instead.
    pub(super) fn event(&self, rec: &PodRecord, kind: &str, reason: &str, message: &str) {
        self.event_for(&rec.uid, &rec.key(), kind, reason, message)
    }

    /// As [`Core::event`], for the pod with `uid` and key `pod`.
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
        let s = Sighting {
            uid: uid.into(),
            pod: pod.into(),
            object,
            kind: kind.into(),
            reason: reason.into(),
            message: message.into(),
            at: crate::time::now_ms(),
        };
        self.event_log.pending.lock().unwrap_or_else(|e| e.into_inner()).push(s);
        self.event_log.wake.notify_one();
    }

    /// Writes the events recorded and not yet written; when this returns, every event
    /// recorded before the call is in the store.
    pub(super) fn write_events(&self) {
        let log = &self.event_log;
        let mut recent = log.writing.lock().unwrap_or_else(|e| e.into_inner());
        let batch = std::mem::take(&mut *log.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for s in batch {
            if let Err(err) = self.write_event(&mut recent, s) {
                tracing::warn!(error = %err, "cannot record event");
            }
        }
    }

    fn write_event(&self, recent: &mut Recent, s: Sighting) -> crate::store::Result<()> {
        let (id, count, first_seen) = match recent.repeat(&s.uid, &s.reason, &s.message) {
            Some(seen) => (seen.id, seen.count, seen.first_seen),
            None => {
                // not remembered: the last stored one like it, if any (from before a
                // restart, or forgotten), counts up
                let stored = self.store.scan::<Event>(Table::Events, &format!("{}/", s.uid))?;
                let last = stored.into_iter().rev().find(|(_, e)| e.reason == s.reason && e.message == s.message);
                let (id, count, first_seen) = match last {
                    Some((k, e)) => match k.rsplit('/').next().and_then(|id| id.parse().ok()) {
                        Some(id) => (id, e.count.saturating_add(1), e.first_seen),
                        None => (self.store.next_id()?, 1, s.at),
                    },
                    None => (self.store.next_id()?, 1, s.at),
                };
                recent.insert(&s.uid, &s.reason, &s.message, id, count, first_seen);
                (id, count, first_seen)
            }
        };
        let e = Event {
            kind: s.kind,
            reason: s.reason,
            message: s.message,
            count,
            first_seen,
            last_seen: s.at,
            pod: s.pod,
            object: s.object,
        };
        if let Some(o) = self.observer.get() {
            o.event(&s.uid, &e);
        }
        self.store.put(Table::Events, &event_key(&s.uid, id), &e)
    }

    /// Forgets every remembered event, as a restart does.
    #[cfg(test)]
    pub(super) fn forget_recent_events(&self) {
        *self.event_log.writing.lock().unwrap() = Recent::default();
    }

    /// No event waits to be written.
    #[cfg(test)]
    pub(super) fn event_log_is_empty(&self) -> bool {
        self.event_log.pending.lock().unwrap().is_empty()
    }

    /// Removes the stored events of the object with `uid`.
    pub(super) fn remove_events(&self, uid: &str) -> crate::store::Result<()> {
        self.write_events();
        let mut recent = self.event_log.writing.lock().unwrap_or_else(|e| e.into_inner());
        recent.forget(uid);
        self.store.remove_prefix(Table::Events, &format!("{uid}/"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_count_up_and_the_least_recently_seen_are_forgotten_first() {
        let mut r = Recent::default();
        assert!(r.repeat("a", "BackOff", "m").is_none(), "new");
        r.insert("a", "BackOff", "m", 7, 1, 100);
        let s = r.repeat("a", "BackOff", "m").unwrap();
        assert_eq!((s.id, s.count, s.first_seen), (7, 2, 100));
        assert!(r.repeat("a", "BackOff", "other").is_none(), "another message is another event");
        assert!(r.repeat("b", "BackOff", "m").is_none(), "another object's is another event");
        // fill to the bound; "a" was seen last before the others, but is seen again
        for i in 0..RECENT as u64 - 1 {
            r.insert(&format!("p{i}"), "Pulled", "m", 100 + i, 1, 0);
        }
        assert_eq!(r.repeat("a", "BackOff", "m").unwrap().count, 3, "still remembered at the bound");
        r.insert("new", "Pulled", "m", 1, 1, 0);
        assert_eq!(r.seen.len(), RECENT, "bounded");
        assert!(r.repeat("p0", "Pulled", "m").is_none(), "the least recently seen went first");
        assert_eq!(r.repeat("a", "BackOff", "m").unwrap().count, 4, "the recently seen stays");
        r.forget("a");
        assert!(r.repeat("a", "BackOff", "m").is_none(), "forgotten with its records");
        assert_eq!(r.seen.len(), r.order.len(), "the order names every entry and no other");
    }
}
