//! Durable state in sled: the only module that imports it.
//!
//! Trees: `pods` (key `namespace/name`), `images` (key: image reference), `events`
//! (key: pod uid + sequence), `objects` (ConfigMaps and Secrets, key
//! `Kind/namespace/name`). Every value is versioned and checksummed:
//! `[schema: u16 LE][crc32 of payload: u32 LE][JSON payload]`, so a value from another
//! schema or a corrupted one is refused, never misread.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Schema version of stored values. Bump it when a stored type changes incompatibly.
pub const SCHEMA: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("state database {path}: {source}", path = .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("state database: {0}")]
    Db(#[from] sled::Error),
    #[error("stored value {key:?} in {tree}: {reason}")]
    Corrupt { tree: &'static str, key: String, reason: String },
    /// The state filesystem is short of space: new work is refused before the database
    /// could fail a write (sled stops writing for good after an I/O error).
    #[error(
        "no space for new state under {dir}: {free} bytes free, and wasmlet keeps {FREE_FLOOR} free for the state of what runs; free some space and try again",
        dir = .dir.display()
    )]
    Full { dir: PathBuf, free: u64 },
}

/// Free bytes the state filesystem must keep for the database's own writes (status
/// changes and events of running pods) before new pods or pulls are taken.
pub const FREE_FLOOR: u64 = 64 << 20;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The agent's database.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    dir: PathBuf,
    /// One flush at a time (see [`Store::flush`]).
    flushing: std::sync::Arc<tokio::sync::Mutex<()>>,
    pods: sled::Tree,
    images: sled::Tree,
    events: sled::Tree,
    objects: sled::Tree,
}

/// A tree's name, for errors.
#[derive(Clone, Copy, Debug)]
pub enum Table {
    Pods,
    Images,
    Events,
    /// ConfigMaps, Secrets, Deployments and Jobs, keyed `<Kind>/<ns>/<name>` (see `objects`).
    Objects,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Pods => "pods",
            Table::Images => "images",
            Table::Events => "events",
            Table::Objects => "objects",
        }
    }
}

impl Store {
    /// Opens (creating) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("db");
        let db = sled::Config::new()
            .path(&path)
            .mode(sled::Mode::HighThroughput)
            // sled's default page cache is 1 GiB; an edge agent keeps its footprint small
            .cache_capacity(64 << 20)
            .open()
            .map_err(|source| Error::Open { path: path.clone(), source })?;
        Ok(Store {
            pods: db.open_tree("pods")?,
            images: db.open_tree("images")?,
            events: db.open_tree("events")?,
            objects: db.open_tree("objects")?,
            db,
            dir: dir.to_path_buf(),
            flushing: Default::default(),
        })
    }

    /// Refuses new work while the state filesystem has less than [`FREE_FLOOR`] free,
    /// so that the writes of what already runs always find room.
    pub fn room(&self) -> Result<()> {
        let Ok(fs) = rustix::fs::statvfs(&self.dir) else { return Ok(()) };
        let free = fs.f_bavail.saturating_mul(fs.f_frsize);
        if free < FREE_FLOOR {
            return Err(Error::Full { dir: self.dir.clone(), free });
        }
        Ok(())
    }

    fn tree(&self, t: Table) -> &sled::Tree {
        match t {
            Table::Pods => &self.pods,
            Table::Images => &self.images,
            Table::Events => &self.events,
            Table::Objects => &self.objects,
        }
    }

    /// Writes a value (not yet durable: see [`Store::flush`]).
    pub fn put<T: Serialize>(&self, t: Table, key: &str, value: &T) -> Result<()> {
        self.tree(t).insert(key.as_bytes(), encode(value))?;
        Ok(())
    }

    pub fn get<T: DeserializeOwned>(&self, t: Table, key: &str) -> Result<Option<T>> {
        match self.tree(t).get(key.as_bytes())? {
            Some(bytes) => decode(&bytes).map(Some).map_err(|reason| corrupt(t, key, reason)),
            None => Ok(None),
        }
    }

    pub fn remove(&self, t: Table, key: &str) -> Result<()> {
        self.tree(t).remove(key.as_bytes())?;
        Ok(())
    }

    /// Every value in a table whose key starts with `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(&self, t: Table, prefix: &str) -> Result<Vec<(String, T)>> {
        let mut out = Vec::new();
        for item in self.tree(t).scan_prefix(prefix.as_bytes()) {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let value = decode(&v).map_err(|reason| corrupt(t, &key, reason))?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// Removes every key with `prefix`.
    pub fn remove_prefix(&self, t: Table, prefix: &str) -> Result<()> {
        let keys: Vec<sled::IVec> = self.tree(t).scan_prefix(prefix.as_bytes()).keys().collect::<Result<_, _>>()?;
        for k in keys {
            self.tree(t).remove(k)?;
        }
        Ok(())
    }

    /// Makes everything written so far durable.
    ///
    /// Flushes run one at a time, each as a synchronous `flush` on a blocking thread.
    /// sled 0.34's `flush_async` deadlocks when many run at once: each waits on one of
    /// sled's IO threads for a buffer that only another of those threads could write (seen
    /// when hundreds of pods restarted together after a kill -9).
    pub async fn flush(&self) -> Result<()> {
        let _one = self.flushing.lock().await;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush()).await.expect("flush task panicked")?;
        Ok(())
    }

    /// A monotonically increasing id (for event keys).
    pub fn next_id(&self) -> Result<u64> {
        Ok(self.db.generate_id()?)
    }
}

fn corrupt(t: Table, key: &str, reason: String) -> Error {
    Error::Corrupt { tree: t.name(), key: key.to_string(), reason }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let payload = serde_json::to_vec(value).expect("stored types serialise");
    let mut out = Vec::with_capacity(payload.len() + 6);
    out.extend_from_slice(&SCHEMA.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    if bytes.len() < 6 {
        return Err("truncated header".into());
    }
    let schema = u16::from_le_bytes([bytes[0], bytes[1]]);
    if schema != SCHEMA {
        return Err(format!("schema {schema}, this wasmlet reads {SCHEMA}"));
    }
    let crc = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
    let payload = &bytes[6..];
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(payload).map_err(|e| format!("undecodable: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put(Table::Pods, "default/a", &vec![1, 2, 3]).unwrap();
            s.put(Table::Pods, "default/b", &vec![4]).unwrap();
            s.put(Table::Pods, "other/c", &vec![5]).unwrap();
            s.flush().await.unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let got: Vec<(String, Vec<i32>)> = s.scan(Table::Pods, "default/").unwrap();
        assert_eq!(got, vec![("default/a".into(), vec![1, 2, 3]), ("default/b".into(), vec![4])]);
        s.remove_prefix(Table::Pods, "default/").unwrap();
        assert_eq!(s.scan::<Vec<i32>>(Table::Pods, "").unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hundreds_of_concurrent_flushes_complete() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let flushes = (0..300).map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.put(Table::Pods, &format!("ns/p{i}"), &i).unwrap();
                s.flush().await
            })
        });
        let all = futures_util::future::join_all(flushes);
        let results = tokio::time::timeout(std::time::Duration::from_secs(60), all).await.expect("flushes deadlocked");
        assert!(results.into_iter().all(|r| r.unwrap().is_ok()));
    }

    #[test]
    fn corruption_and_foreign_schemas_are_refused() {
        let mut bytes = encode(&"hello");
        assert_eq!(decode::<String>(&bytes).unwrap(), "hello");
        bytes[8] ^= 1;
        assert!(decode::<String>(&bytes).unwrap_err().contains("checksum"));
        let mut other = encode(&"x");
        other[0] = 9;
        assert!(decode::<String>(&other).unwrap_err().contains("schema 9"));
        assert!(decode::<String>(&[1, 0]).is_err());
    }
}
