//! The object store: the ConfigMaps, Secrets, Deployments and Jobs a node keeps, in the
//! state database under `<Kind>/<namespace>/<name>`, read and written as their
//! Kubernetes types. Pods are the pod manager's own records.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::{Result, Store, Table};

/// A kind the object store keeps.
pub trait Kind: Serialize + DeserializeOwned {
    const KIND: &'static str;
}

impl Kind for ConfigMap {
    const KIND: &'static str = "ConfigMap";
}
impl Kind for Secret {
    const KIND: &'static str = "Secret";
}
impl Kind for Deployment {
    const KIND: &'static str = "Deployment";
}
impl Kind for Job {
    const KIND: &'static str = "Job";
}

/// The stored objects; clones share the database.
#[derive(Clone, Debug)]
pub struct Objects {
    store: Store,
}

fn key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

fn meta_key(kind: &str, meta: &ObjectMeta) -> String {
    key(kind, meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref().unwrap_or_default())
}

impl Objects {
    pub fn new(store: Store) -> Self {
        Objects { store }
    }

    pub fn get<K: Kind>(&self, namespace: &str, name: &str) -> Result<Option<K>> {
        self.store.get(Table::Objects, &key(K::KIND, namespace, name))
    }

    /// Every stored object of the kind.
    pub fn list<K: Kind>(&self) -> Result<Vec<K>> {
        Ok(self.store.scan::<K>(Table::Objects, &format!("{}/", K::KIND))?.into_iter().map(|(_, v)| v).collect())
    }

    /// Every stored object of `kind`, as the API shows it.
    pub fn list_json(&self, kind: &str) -> Result<Vec<serde_json::Value>> {
        Ok(self.store.scan(Table::Objects, &format!("{kind}/"))?.into_iter().map(|(_, v)| v).collect())
    }

    /// The object `kind` `namespace/name` as stored, if it is.
    pub fn get_json(&self, kind: &str, namespaced_name: &str) -> Result<Option<serde_json::Value>> {
        self.store.get(Table::Objects, &format!("{kind}/{namespaced_name}"))
    }

    /// Stores an object as applied (durable at the store's next flush).
    pub fn put_json(&self, kind: &str, namespaced_name: &str, value: &serde_json::Value) -> Result<()> {
        self.store.put(Table::Objects, &format!("{kind}/{namespaced_name}"), value)
    }

    /// Writes an object back (a controller's status) unless it was deleted meanwhile.
    pub fn update<K: Kind>(&self, object: &K, meta: &ObjectMeta) -> Result<()> {
        let k = meta_key(K::KIND, meta);
        if self.store.get::<serde_json::Value>(Table::Objects, &k)?.is_some() {
            self.store.put(Table::Objects, &k, object)?;
        }
        Ok(())
    }

    /// Forgets an object; returns what was stored.
    pub fn remove(&self, kind: &str, namespace: &str, name: &str) -> Result<Option<serde_json::Value>> {
        let k = key(kind, namespace, name);
        let old = self.store.get(Table::Objects, &k)?;
        if old.is_some() {
            self.store.remove(Table::Objects, &k)?;
        }
        Ok(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip_typed_and_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let objects = Objects::new(Store::open(dir.path()).unwrap());
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cfg", "namespace": "default"}, "data": {"k": "v"}
        }))
        .unwrap();
        objects.put_json("ConfigMap", "default/cfg", &serde_json::to_value(&cm).unwrap()).unwrap();
        assert_eq!(objects.get::<ConfigMap>("default", "cfg").unwrap(), Some(cm.clone()));
        assert_eq!(objects.list::<ConfigMap>().unwrap(), vec![cm.clone()]);
        assert!(objects.list::<Secret>().unwrap().is_empty(), "kinds do not mix");
        let mut changed = cm.clone();
        changed.data = None;
        objects.update(&changed, &cm.metadata).unwrap();
        assert_eq!(objects.get::<ConfigMap>("default", "cfg").unwrap(), Some(changed));
        assert!(objects.remove("ConfigMap", "default", "cfg").unwrap().is_some());
        objects.update(&cm, &cm.metadata).unwrap();
        assert!(objects.get::<ConfigMap>("default", "cfg").unwrap().is_none(), "no write-back after a delete");
    }
}
