//! The image service: pulls through registry-client into the node's content store,
//! unpacks filesystem layers once (overlay form, one directory per DiffID) and records
//! every pulled reference in the state database.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use registry_client::{Client, Config, Digest, ImageKind, Keychain, PullOptions, Reference};
use serde::{Deserialize, Serialize};

use crate::store::{Store, Table};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Registry(#[from] registry_client::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the node knows about a pulled image.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    pub reference: String,
    pub digest: Digest,
    pub kind: ImageKind,
    pub size: u64,
    /// Unix milliseconds.
    pub pulled_at: u64,
    /// When a container last started from it (Unix ms).
    #[serde(default)]
    pub last_used: Option<u64>,
    pub image: registry_client::Image,
}

impl ImageRecord {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            ImageKind::Linux => "linux",
            ImageKind::Wasm { .. } | ImageKind::WasmInRootfs { .. } => "wasm",
        }
    }

    /// `repo@sha256:…`, what Kubernetes shows as `imageID`.
    pub fn image_id(&self) -> String {
        format!("{}@{}", self.image.source.registry().to_owned() + "/" + self.image.source.repository(), self.digest)
    }

    /// Config and layer digests, and the DiffIDs of unpacked layers.
    pub fn blobs(&self) -> Vec<Digest> {
        let mut out = vec![self.digest.clone(), self.image.manifest.config.digest.clone()];
        out.extend(self.image.index_digest.clone());
        for l in &self.image.layers {
            out.push(l.descriptor.digest.clone());
            out.extend(l.diff_id.clone());
        }
        out
    }

    /// What a runtime runs of this image: the Wasm module or component file, or the
    /// unpacked layers (lowest first); or why it cannot be run.
    pub fn artifact(&self) -> Result<(wasmlet_runtime::RuntimeKind, wasmlet_runtime::Artifact), String> {
        use wasmlet_runtime::{Artifact, RuntimeKind};
        match (self.wasm_blob(), &self.kind) {
            (Some((path, digest)), _) => Ok((RuntimeKind::Wasm, Artifact::Wasm { path, digest: digest.to_string() })),
            (None, ImageKind::Linux) => {
                let layers: Option<Vec<_>> =
                    self.image.layers.iter().filter(|l| l.diff_id.is_some()).map(|l| l.unpacked.clone()).collect();
                let layers = layers.ok_or_else(|| {
                    format!("image {} ({}) has a layer that is not unpacked", self.reference, self.digest)
                })?;
                Ok((RuntimeKind::Linux, Artifact::Rootfs { layers }))
            }
            (None, _) => Err(format!(
                "image {} ({}) keeps its Wasm module in a filesystem layer, which wasmlet does not run yet",
                self.reference, self.digest
            )),
        }
    }

    /// The blob holding the Wasm module or component, for Wasm artifacts.
    pub fn wasm_blob(&self) -> Option<(PathBuf, Digest)> {
        match &self.kind {
            ImageKind::Wasm { layer, .. } => self
                .image
                .layers
                .iter()
                .find(|l| l.descriptor.digest == layer.digest)
                .map(|l| (l.blob.clone(), l.descriptor.digest.clone())),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct ImageService {
    client: Client,
    layers: PathBuf,
    store: Store,
    /// When each image's `last_used` was last written, so that a burst of starts writes
    /// it once a minute rather than at every start (a pod start's hot path).
    touched: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// One pull at a time per reference and credential: a burst of pods that all want
    /// the same image waits for the first pull rather than opening a connection each.
    pulling: std::sync::Mutex<std::collections::HashMap<PullKey, Arc<tokio::sync::Mutex<()>>>>,
    /// The records read or written, decoded: every container start looks its image up
    /// two or three times (25 µs a decode at 30,000 pods, measured), and there are few
    /// images. Written through: the store stays the record.
    records: std::sync::Mutex<std::collections::HashMap<String, Arc<ImageRecord>>>,
}

/// A reference and the credential a pull of it uses (so that a pull with one pod's
/// secret is never reused for a pod without it).
type PullKey = (String, Option<registry_client::Credential>);

/// How stale a stored `last_used` may get: images are pruned by it over hours and days.
const TOUCH_EVERY_MS: u64 = 60_000;

impl ImageService {
    /// Pulls keep [`crate::store::PULL_FLOOR`] free on the state filesystem: one that
    /// would fill it fails, removes what it wrote, and leaves room for the node's state.
    pub fn open(state_dir: &Path, mut config: Config, keychain: Keychain, store: Store) -> Result<Self> {
        config.keep_free = config.keep_free.max(crate::store::PULL_FLOOR);
        let content = Arc::new(registry_client::Store::open(state_dir.join("content"))?);
        Ok(ImageService {
            client: Client::new(config, keychain, content),
            layers: state_dir.join("layers"),
            store,
            touched: Default::default(),
            pulling: Default::default(),
            records: Default::default(),
        })
    }

    /// Pulls `reference`, unpacking filesystem layers, and records it.
    ///
    /// Pulls of one reference with one credential run one at a time (the kubelet pulls
    /// serially by default): a pull that waited for another returns what that one
    /// stored if it finished after this call began; a failed pull is tried again.
    pub async fn pull(&self, reference: &Reference, mut opts: PullOptions) -> Result<Arc<ImageRecord>> {
        let asked = crate::time::now_ms();
        let key: PullKey = (reference.to_string(), opts.credential.clone());
        let gate = self.pulling.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone();
        let result = async {
            let _turn = gate.lock().await;
            self.store.room()?;
            match self.get(reference)? {
                Some(done) if done.pulled_at >= asked => Ok(done),
                _ => self.pull_now(reference, &mut opts).await,
            }
        }
        .await;
        let mut pulling = self.pulling.lock().unwrap_or_else(|e| e.into_inner());
        // the map holds one handle, this call another: no one else is waiting
        if Arc::strong_count(&gate) == 2 {
            pulling.remove(&key);
        }
        result
    }

    async fn pull_now(&self, reference: &Reference, opts: &mut PullOptions) -> Result<Arc<ImageRecord>> {
        opts.unpack_to = Some(self.layers.clone());
        let image = self.client.pull(reference, opts).await?;
        let record = ImageRecord {
            reference: reference.to_string(),
            digest: image.digest.clone(),
            kind: image.kind.clone(),
            size: image.size(),
            pulled_at: crate::time::now_ms(),
            last_used: self.get(reference).ok().flatten().and_then(|r| r.last_used),
            image,
        };
        let record = self.put(record)?;
        self.store.flush().await?;
        Ok(record)
    }

    /// Stores a record, and keeps it decoded.
    fn put(&self, record: ImageRecord) -> Result<Arc<ImageRecord>> {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        self.store.put(Table::Images, &record.reference, &record)?;
        let record = Arc::new(record);
        records.insert(record.reference.clone(), record.clone());
        Ok(record)
    }

    /// Records an image as if it had been pulled (the pod tests' images).
    #[cfg(test)]
    pub fn insert(&self, record: &ImageRecord) -> Result<()> {
        self.put(record.clone()).map(drop)
    }

    /// The record for a reference, if it was pulled.
    pub fn get(&self, reference: &Reference) -> Result<Option<Arc<ImageRecord>>> {
        let key = reference.to_string();
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = records.get(&key) {
            return Ok(Some(r.clone()));
        }
        let found: Option<ImageRecord> = self.store.get(Table::Images, &key)?;
        Ok(found.map(|r| records.entry(key).or_insert(Arc::new(r)).clone()))
    }

    /// Records that a container started from the image.
    pub fn touch(&self, reference: &Reference) {
        let (key, now) = (reference.to_string(), crate::time::now_ms());
        {
            let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
            if touched.get(&key).is_some_and(|&t| now.saturating_sub(t) < TOUCH_EVERY_MS) {
                return;
            }
            touched.insert(key, now);
        }
        if let Ok(Some(r)) = self.get(reference) {
            let mut r = ImageRecord::clone(&r);
            r.last_used = Some(now);
            let _ = self.put(r);
        }
    }

    /// Removes images no pod uses (`in_use` holds their references), least recently
    /// used first, until `enough` says to stop; then deletes every blob and unpacked
    /// layer that no remaining image shares. Returns the removed records.
    pub async fn prune(&self, in_use: &HashSet<String>, mut enough: impl FnMut() -> bool) -> Result<Vec<ImageRecord>> {
        let mut all = self.list()?;
        all.sort_by_key(|r| r.last_used.unwrap_or(r.pulled_at));
        let (keep, mut candidates): (Vec<_>, Vec<_>) = all.into_iter().partition(|r| in_use.contains(&r.reference));
        candidates.reverse(); // pop the least recently used first
        let mut removed = Vec::new();
        while !enough() {
            let Some(r) = candidates.pop() else { break };
            {
                let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
                records.remove(&r.reference);
                self.store.remove(Table::Images, &r.reference)?;
            }
            self.touched.lock().unwrap_or_else(|e| e.into_inner()).remove(&r.reference);
            self.store.flush().await?;
            let still: HashSet<Digest> = keep.iter().chain(candidates.iter()).flat_map(|k| k.blobs()).collect();
            for d in r.blobs().into_iter().filter(|d| !still.contains(d)) {
                let _ = self.client.store().remove(&d);
            }
            for l in &r.image.layers {
                if let Some(dir) = &l.unpacked
                    && !l.diff_id.as_ref().is_some_and(|id| still.contains(id))
                {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            removed.push(r);
        }
        Ok(removed)
    }

    /// Removes the image pulled as `reference`, and what no other image shares.
    pub async fn remove(&self, reference: &str) -> Result<Option<ImageRecord>> {
        let others: HashSet<String> =
            self.list()?.into_iter().map(|r| r.reference).filter(|r| r != reference).collect();
        Ok(self.prune(&others, || false).await?.pop())
    }

    /// The share of the filesystem holding the state directory that is used, 0–100.
    pub fn disk_usage_percent(&self) -> Option<u64> {
        let st = rustix::fs::statvfs(self.layers.parent()?).ok()?;
        let total = st.f_blocks;
        (total > 0).then(|| (total - st.f_bavail) * 100 / total)
    }

    /// All recorded images, by reference.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.store.scan(Table::Images, "")?.into_iter().map(|(_, r)| r).collect())
    }
}
