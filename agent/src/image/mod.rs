//! The image service: pulls through registry-client into the node's content store,
//! unpacks filesystem layers once (overlay form, one directory per DiffID) and keeps a
//! record per image reference.
//!
//! Records are JSON files under `STATE/images/` for now, written atomically (temp file,
//! fsync, rename). The agent core moves them into the sled store, the only module that
//! will touch sled.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use registry_client::{Client, Config, Digest, ImageKind, Keychain, PullOptions, Reference, Store};
use serde::{Deserialize, Serialize};

/// Errors of the image service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Registry(#[from] registry_client::Error),
    #[error("image record {path}: {source}", path = .path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the node knows about a pulled image.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    pub reference: String,
    pub digest: Digest,
    pub kind: ImageKind,
    pub size: u64,
    /// Unix seconds.
    pub pulled_at: u64,
    pub image: registry_client::Image,
}

impl ImageRecord {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            ImageKind::Linux => "linux",
            ImageKind::Wasm { .. } | ImageKind::WasmInRootfs { .. } => "wasm",
        }
    }
}

#[derive(Debug)]
pub struct ImageService {
    client: Client,
    layers: PathBuf,
    records: PathBuf,
}

impl ImageService {
    pub fn open(state_dir: &Path, config: Config, keychain: Keychain) -> Result<Self> {
        let store = Arc::new(Store::open(state_dir.join("content"))?);
        let records = state_dir.join("images");
        std::fs::create_dir_all(&records).map_err(|source| Error::Record { path: records.clone(), source })?;
        Ok(ImageService { client: Client::new(config, keychain, store), layers: state_dir.join("layers"), records })
    }

    /// Pulls `reference`, unpacking filesystem layers, and records it.
    pub async fn pull(&self, reference: &Reference, mut opts: PullOptions) -> Result<ImageRecord> {
        opts.unpack_to = Some(self.layers.clone());
        let image = self.client.pull(reference, &opts).await?;
        let record = ImageRecord {
            reference: reference.to_string(),
            digest: image.digest.clone(),
            kind: image.kind.clone(),
            size: image.size(),
            pulled_at: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            image,
        };
        self.save(&record)?;
        Ok(record)
    }

    /// All recorded images, by reference.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let io = |source| Error::Record { path: self.records.clone(), source };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.records).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let data = std::fs::read(&path).map_err(|source| Error::Record { path: path.clone(), source })?;
                match serde_json::from_slice::<ImageRecord>(&data) {
                    Ok(r) => out.push(r),
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "skipping unreadable image record"),
                }
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    fn save(&self, record: &ImageRecord) -> Result<()> {
        use std::io::Write;
        let name = Digest::sha256_of(record.reference.as_bytes());
        let path = self.records.join(format!("{}.json", name.hex()));
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(record).expect("record serialises"))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|source| Error::Record { path, source })
    }
}
