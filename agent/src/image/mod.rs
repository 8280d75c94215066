//! The image service: pulls through registry-client into the node's content store,
//! unpacks filesystem layers once (overlay form, one directory per DiffID) and records
//! every pulled reference in the state database.

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
}

impl ImageService {
    pub fn open(state_dir: &Path, config: Config, keychain: Keychain, store: Store) -> Result<Self> {
        let content = Arc::new(registry_client::Store::open(state_dir.join("content"))?);
        Ok(ImageService { client: Client::new(config, keychain, content), layers: state_dir.join("layers"), store })
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
            pulled_at: crate::runtime::now_ms(),
            image,
        };
        self.store.put(Table::Images, &record.reference, &record)?;
        self.store.flush().await?;
        Ok(record)
    }

    /// The record for a reference, if it was pulled.
    pub fn get(&self, reference: &Reference) -> Result<Option<ImageRecord>> {
        Ok(self.store.get(Table::Images, &reference.to_string())?)
    }

    /// All recorded images, by reference.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.store.scan(Table::Images, "")?.into_iter().map(|(_, r)| r).collect())
    }
}
