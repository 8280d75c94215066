//! Durable state in sled: the only module that imports it.
//!
//! Trees: `pods` (key `namespace/name`), `images` (key: image reference), `events`
//! (key: pod uid + sequence), `objects` (ConfigMaps and Secrets, key
//! `Kind/namespace/name`). Every value is versioned and checksummed:
//! `[schema: u16 LE][crc32 of payload: u32 LE][JSON payload]`, so a value from another
//! schema or a corrupted one is refused, never misread.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

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
    /// The database stopped writing after an I/O error (see [`Store`]).
    #[error(
        "the state database under {dir} stopped writing after an I/O error ({reason}); what was stored is intact, and wasmlet reopens it once {FREE_FLOOR} bytes are free",
        dir = .dir.display()
    )]
    Stopped { dir: PathBuf, reason: String },
    #[error(
        "the state database under {dir} cannot finish a write that failed with an I/O error (a fault of sled 0.34): reads go on, writes resume once the agent is restarted, and what was stored is intact",
        dir = .dir.display()
    )]
    Wedged { dir: PathBuf },
}

/// Free bytes the state filesystem must keep for the database's own writes (status
/// changes and events of running pods) before new pods or pulls are taken.
pub const FREE_FLOOR: u64 = 64 << 20;
/// How long a stopped database's flush may take before it counts as wedged.
const WEDGED_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Free bytes an image pull leaves on the state filesystem: a pull that started above
/// [`FREE_FLOOR`] and would go below this fails and removes what it wrote.
pub const PULL_FLOOR: u64 = FREE_FLOOR / 2;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The agent's database.
///
/// sled 0.34 stops writing for good after one I/O error (a full disk): every later write
/// fails with that error, while what was flushed before stays readable and intact. The
/// store then refuses writes with [`Error::Stopped`], and [`Store::recover`] reopens the
/// database once space returns: what was made durable is all there, and writers write
/// their current state again (see `Manager::resave_all`).
#[derive(Clone, Debug)]
pub struct Store {
    shared: std::sync::Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    /// One flush at a time (see [`Store::flush`]), and no flush while reopening.
    flushing: tokio::sync::Mutex<()>,
    /// `None` only while the database is being reopened.
    db: RwLock<Option<Arc<Db>>>,
    /// The I/O error that stopped writes, until the database is reopened.
    stopped: Mutex<Option<String>>,
    /// The stopped database cannot be closed (see [`Store::recover`]): it is read
    /// until the agent restarts.
    wedged: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct Db {
    db: sled::Db,
    pods: sled::Tree,
    images: sled::Tree,
    events: sled::Tree,
    objects: sled::Tree,
    cri: sled::Tree,
}

impl Db {
    fn open(path: &Path) -> Result<Db> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            // sled's default page cache is 1 GiB; an edge agent keeps its footprint small
            .cache_capacity(64 << 20)
            .open()
            .map_err(|source| Error::Open { path: path.to_path_buf(), source })?;
        Ok(Db {
            pods: db.open_tree("pods")?,
            images: db.open_tree("images")?,
            events: db.open_tree("events")?,
            objects: db.open_tree("objects")?,
            cri: db.open_tree("cri")?,
            db,
        })
    }

    fn tree(&self, t: Table) -> &sled::Tree {
        match t {
            Table::Pods => &self.pods,
            Table::Images => &self.images,
            Table::Events => &self.events,
            Table::Objects => &self.objects,
            Table::Cri => &self.cri,
        }
    }
}

/// A tree's name, for errors.
#[derive(Clone, Copy, Debug)]
pub enum Table {
    Pods,
    Images,
    Events,
    /// ConfigMaps, Secrets, Deployments and Jobs, keyed `<Kind>/<ns>/<name>` (see `objects`).
    Objects,
    /// The CRI server's sandboxes and containers, keyed `s/<id>` and `c/<id>`.
    Cri,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Pods => "pods",
            Table::Images => "images",
            Table::Events => "events",
            Table::Objects => "objects",
            Table::Cri => "cri",
        }
    }
}

impl Store {
    /// Opens (creating) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = Db::open(&dir.join("db"))?;
        Ok(Store {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                flushing: Default::default(),
                db: RwLock::new(Some(Arc::new(db))),
                stopped: Mutex::new(None),
                wedged: Default::default(),
            }),
        })
    }

    /// The state directory the database is in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    fn db(&self) -> Result<Arc<Db>> {
        let db = self.shared.db.read().unwrap_or_else(|e| e.into_inner()).clone();
        db.ok_or_else(|| self.stopped_error("it is being reopened".into()))
    }

    fn stopped_error(&self, reason: String) -> Error {
        if self.shared.wedged.load(std::sync::atomic::Ordering::Relaxed) {
            return Error::Wedged { dir: self.shared.dir.clone() };
        }
        Error::Stopped { dir: self.shared.dir.clone(), reason }
    }

    /// Maps a database error; an I/O error stops writes until [`Store::recover`].
    fn failed(&self, e: sled::Error) -> Error {
        match e {
            sled::Error::Io(io) => {
                let reason = io.to_string();
                let mut stopped = self.shared.stopped.lock().unwrap_or_else(|e| e.into_inner());
                if stopped.is_none() {
                    tracing::error!(dir = %self.shared.dir.display(), error = %reason, "the state database stopped writing; it is reopened once space returns");
                    *stopped = Some(reason.clone());
                }
                self.stopped_error(reason)
            }
            e => Error::Db(e),
        }
    }

    /// Refuses a write while writes are stopped: it would not be durable.
    fn writable(&self) -> Result<()> {
        match self.stopped() {
            Some(reason) => Err(self.stopped_error(reason)),
            None => Ok(()),
        }
    }

    /// The I/O error that stopped writes, if they are stopped.
    pub fn stopped(&self) -> Option<String> {
        self.shared.stopped.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn free(&self) -> Option<u64> {
        registry_client::free_space(&self.shared.dir)
    }

    /// Refuses new work while the state filesystem has less than [`FREE_FLOOR`] free,
    /// so that the writes of what already runs always find room, and while writes are
    /// stopped.
    pub fn room(&self) -> Result<()> {
        self.writable()?;
        match self.free() {
            Some(free) if free < FREE_FLOOR => Err(Error::Full { dir: self.shared.dir.clone(), free }),
            _ => Ok(()),
        }
    }

    /// Reopens a database whose writes stopped, once [`FREE_FLOOR`] bytes are free.
    /// Returns whether it did: writers should then write their state again, since what
    /// they wrote after the last flush before the error is not in it.
    ///
    /// sled 0.34 can wedge on an I/O error: a write of a page larger than its segments
    /// hold (a blob, 128 KiB and up) that failed is never marked done, and every flush
    /// after it, closing the database included, waits for it forever. So the database
    /// must first show it can still flush; one that cannot stays open for reads, writes
    /// stay refused with a message that says so, and the agent's next start reopens it
    /// (sled recovers its log up to the last complete write).
    pub async fn recover(&self) -> Result<bool> {
        use std::sync::atomic::Ordering;
        if self.stopped().is_none()
            || self.shared.wedged.load(Ordering::Relaxed)
            || self.free().is_some_and(|f| f < FREE_FLOOR)
        {
            return Ok(false);
        }
        let _no_flush = self.shared.flushing.lock().await;
        if let Ok(db) = self.db() {
            let probe = tokio::task::spawn_blocking(move || {
                let _ = db.db.flush();
            });
            if tokio::time::timeout(WEDGED_AFTER, probe).await.is_err() {
                self.shared.wedged.store(true, Ordering::Relaxed);
                tracing::error!(
                    dir = %self.shared.dir.display(),
                    "the state database cannot finish a write that failed (a fault of sled 0.34); reads go on, writes resume once the agent is restarted"
                );
                return Ok(false);
            }
        }
        let old = self.shared.db.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut old) = old {
            // sled locks its files: the old handle must be gone before the new one opens;
            // the operations that hold it are short
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        tokio::task::spawn_blocking(move || drop(db)).await.expect("closing the database panicked");
                        break;
                    }
                    Err(still) if std::time::Instant::now() < deadline => {
                        old = still;
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                    Err(still) => {
                        *self.shared.db.write().unwrap_or_else(|e| e.into_inner()) = Some(still);
                        return Ok(false);
                    }
                }
            }
        }
        let path = self.shared.dir.join("db");
        let db = tokio::task::spawn_blocking(move || Db::open(&path)).await.expect("opening the database panicked")?;
        *self.shared.db.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(db));
        *self.shared.stopped.lock().unwrap_or_else(|e| e.into_inner()) = None;
        tracing::warn!(dir = %self.shared.dir.display(), "the state database was reopened and writes again");
        Ok(true)
    }

    /// Writes a value (not yet durable: see [`Store::flush`]).
    pub fn put<T: Serialize>(&self, t: Table, key: &str, value: &T) -> Result<()> {
        self.writable()?;
        self.db()?.tree(t).insert(key.as_bytes(), encode(value)).map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// Writes a value unless it is the one this writer wrote last: `last` holds a 64-bit
    /// hash of that encoding (0: none), and is updated once the write succeeds. Returns
    /// whether it wrote. A record written again unchanged costs a tree update, its log
    /// write and, on flash, wear; the hash costs a pass over bytes already in cache.
    pub fn put_changed<T: Serialize>(&self, t: Table, key: &str, value: &T, last: &mut u64) -> Result<bool> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let bytes = encode(value);
        // never 0, which stands for "nothing written yet"
        let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(&bytes).max(1);
        if hash == *last {
            return Ok(false);
        }
        self.writable()?;
        self.db()?.tree(t).insert(key.as_bytes(), bytes).map_err(|e| self.failed(e))?;
        *last = hash;
        Ok(true)
    }

    pub fn get<T: DeserializeOwned>(&self, t: Table, key: &str) -> Result<Option<T>> {
        match self.db()?.tree(t).get(key.as_bytes()).map_err(|e| self.failed(e))? {
            Some(bytes) => decode(&bytes).map(Some).map_err(|reason| corrupt(t, key, reason)),
            None => Ok(None),
        }
    }

    pub fn remove(&self, t: Table, key: &str) -> Result<()> {
        self.db()?.tree(t).remove(key.as_bytes()).map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// Every value in a table whose key starts with `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(&self, t: Table, prefix: &str) -> Result<Vec<(String, T)>> {
        let db = self.db()?;
        let mut out = Vec::new();
        for item in db.tree(t).scan_prefix(prefix.as_bytes()) {
            let (k, v) = item.map_err(|e| self.failed(e))?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let value = decode(&v).map_err(|reason| corrupt(t, &key, reason))?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// Removes every key with `prefix`.
    pub fn remove_prefix(&self, t: Table, prefix: &str) -> Result<()> {
        let db = self.db()?;
        let tree = db.tree(t);
        let keys: Vec<sled::IVec> =
            tree.scan_prefix(prefix.as_bytes()).keys().collect::<Result<_, _>>().map_err(|e| self.failed(e))?;
        for k in keys {
            tree.remove(k).map_err(|e| self.failed(e))?;
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
        // a stopped database makes nothing durable, and a wedged one's flush never returns
        self.writable()?;
        let _one = self.shared.flushing.lock().await;
        let db = self.db()?;
        let flushed = tokio::task::spawn_blocking(move || db.db.flush()).await.expect("flush task panicked");
        flushed.map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// A monotonically increasing id (for event keys).
    pub fn next_id(&self) -> Result<u64> {
        self.db()?.db.generate_id().map_err(|e| self.failed(e))
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

    #[test]
    fn a_value_written_again_unchanged_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut last = 0;
        assert!(s.put_changed(Table::Pods, "ns/a", &vec![1], &mut last).unwrap());
        assert!(!s.put_changed(Table::Pods, "ns/a", &vec![1], &mut last).unwrap());
        // another writer's value stays until this writer has something new
        s.put(Table::Pods, "ns/a", &vec![9]).unwrap();
        assert!(!s.put_changed(Table::Pods, "ns/a", &vec![1], &mut last).unwrap());
        assert_eq!(s.get::<Vec<i32>>(Table::Pods, "ns/a").unwrap(), Some(vec![9]));
        assert!(s.put_changed(Table::Pods, "ns/a", &vec![2], &mut last).unwrap());
        assert_eq!(s.get::<Vec<i32>>(Table::Pods, "ns/a").unwrap(), Some(vec![2]));
        // forgotten (0): written whatever it holds
        last = 0;
        assert!(s.put_changed(Table::Pods, "ns/a", &vec![2], &mut last).unwrap());
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
