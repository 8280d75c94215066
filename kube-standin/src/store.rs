//! Objects by resource, namespace and name, with one resourceVersion counter for all of
//! them (as etcd's revision) and a history of changes that watches replay from.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Value, json};
use tokio::sync::broadcast;

/// How many changes a watch may replay; older resourceVersions get 410 Expired.
const HISTORY: usize = 50_000;

#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub kind: &'static str,
    pub resource: String,
    pub object: Value,
}

#[derive(Debug)]
pub struct Store {
    objects: BTreeMap<(String, String, String), Value>,
    rv: u64,
    history: VecDeque<Change>,
    pub changes: broadcast::Sender<Change>,
}

pub type Key = (String, String, String);

impl Default for Store {
    fn default() -> Self {
        Store { objects: BTreeMap::new(), rv: 1, history: VecDeque::new(), changes: broadcast::channel(65_536).0 }
    }
}

impl Store {
    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Every object of `resource` (in `namespace` when given).
    pub fn iter<'a>(&'a self, resource: &'a str, namespace: Option<&'a str>) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .filter(move |((r, ns, _), _)| r == resource && namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v)
    }

    /// Stores `object` under a new resourceVersion and tells the watches.
    pub fn put(&mut self, key: Key, mut object: Value, kind: &'static str) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(kind, &key.0, object.clone());
        self.objects.insert(key, object.clone());
        object
    }

    pub fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record("DELETED", &key.0, object.clone());
        Some(object)
    }

    fn record(&mut self, kind: &'static str, resource: &str, object: Value) {
        let change = Change { rv: self.rv, kind, resource: resource.to_string(), object };
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(change.clone());
        let _ = self.changes.send(change);
    }

    /// Changes after `rv`, or `None` when some of them have been compacted away.
    pub fn since(&self, rv: u64) -> Option<Vec<Change>> {
        if let Some(first) = self.history.front()
            && first.rv > rv + 1
        {
            return None;
        }
        Some(self.history.iter().filter(|c| c.rv > rv).cloned().collect())
    }
}
