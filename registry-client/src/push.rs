//! Pushing: a Wasm module or component as a CNCF Wasm artifact, and images from an OCI
//! image-layout directory (manifests pushed byte for byte, so digests are preserved).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use reqwest::header::HeaderValue;

use crate::auth::Credential;
use crate::client::Client;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, Document, Manifest, OCI_MANIFEST, WASM_CONFIG_V0, WASM_LAYER, WasmBinary};
use crate::reference::Reference;
use crate::session::{Ctx, Op, Session, from_oci};

/// Blobs up to this size are pushed from memory, larger ones streamed from disk.
const IN_MEMORY_PUSH: u64 = 16 << 20;
const STREAM_CHUNK: usize = 4 << 20;
const MAX_LAYOUT_DOCUMENT: u64 = 4 << 20;

/// What a push produced.
#[derive(Clone, Debug)]
pub struct Pushed {
    /// The target reference pinned to the pushed manifest's digest.
    pub reference: Reference,
    pub digest: Digest,
    /// Bytes of blobs uploaded (blobs the registry already had are not counted).
    pub uploaded: u64,
}

/// A blob to push, from memory or from a file.
enum Source {
    Memory(Bytes),
    File(PathBuf),
}

impl Client {
    /// Pushes a `.wasm` module (as `wasip1`) or component (as `wasip2`) in the CNCF form:
    /// config `application/vnd.wasm.config.v0+json`, one `application/wasm` layer.
    /// Reproducible: the same file gives the same manifest digest.
    pub async fn push_wasm(&self, wasm: &Path, target: &Reference, credential: Option<&Credential>) -> Result<Pushed> {
        let data = std::fs::read(wasm).map_err(|e| Error::io("read wasm file", wasm, e))?;
        let binary = WasmBinary::detect(&data).ok_or_else(|| Error::Invalid {
            context: format!("push {}", wasm.display()),
            reason: "not a WebAssembly module or component (no \\0asm preamble)".into(),
        })?;
        let os = match binary {
            WasmBinary::Module => "wasip1",
            WasmBinary::Component => "wasip2",
        };
        let layer_digest = Digest::sha256_of(&data);
        let config = serde_json::json!({
            "created": rfc3339(created_time(wasm)),
            "architecture": "wasm",
            "os": os,
            "layerDigests": [layer_digest.to_string()],
        });
        let config = Bytes::from(serde_json::to_vec(&config).expect("json"));
        let mut layer = Descriptor::new(WASM_LAYER, layer_digest, data.len() as u64);
        let title = wasm.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "module.wasm".into());
        layer.annotations = Some([("org.opencontainers.image.title".to_string(), title)].into());
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.into()),
            artifact_type: None,
            config: Descriptor::new(WASM_CONFIG_V0, Digest::sha256_of(&config), config.len() as u64),
            layers: vec![layer],
            annotations: None,
        };
        let session = self.session(target.registry(), credential)?;
        let mut uploaded = 0;
        uploaded += self.push_blob(&session, target, &manifest.config, Source::Memory(config)).await?;
        uploaded += self.push_blob(&session, target, &manifest.layers[0], Source::Memory(Bytes::from(data))).await?;
        let body = serde_json::to_vec(&manifest).expect("json");
        let digest = self.push_manifest(&session, target, &body, OCI_MANIFEST).await?;
        Ok(Pushed { reference: target.with_digest(digest.clone()), digest, uploaded })
    }

    /// Pushes the image that `tag` names in an OCI layout (`org.opencontainers.image.ref.name`;
    /// if `None`, the layout must hold exactly one). Multi-platform indexes are pushed whole.
    pub async fn push_layout(
        &self,
        layout: &Path,
        tag: Option<&str>,
        target: &Reference,
        credential: Option<&Credential>,
    ) -> Result<Pushed> {
        let ctx = format!("push layout {}", layout.display());
        let invalid = |reason: String| Error::Invalid { context: ctx.clone(), reason };
        let index_path = layout.join("index.json");
        let index = std::fs::read(&index_path).map_err(|e| Error::io("read layout index", &index_path, e))?;
        let Ok(Document::Index(index)) = Document::parse(&index, None) else {
            return Err(invalid("index.json is not an OCI image index".into()));
        };
        let name_of =
            |d: &Descriptor| d.annotations.as_ref().and_then(|a| a.get("org.opencontainers.image.ref.name")).cloned();
        let entry = match tag {
            Some(t) => index.manifests.iter().find(|d| name_of(d).as_deref() == Some(t)),
            None if index.manifests.len() == 1 => index.manifests.first(),
            None => None,
        }
        .ok_or_else(|| invalid(format!("no single image named {tag:?} in index.json")))?;
        let session = self.session(target.registry(), credential)?;
        let (digest, uploaded) = self.push_layout_document(&session, layout, target, entry, true).await?;
        Ok(Pushed { reference: target.with_digest(digest.clone()), digest, uploaded })
    }

    /// Pushes one manifest or index from the layout with everything it references.
    async fn push_layout_document(
        &self,
        session: &Session,
        layout: &Path,
        target: &Reference,
        desc: &Descriptor,
        top: bool,
    ) -> Result<(Digest, u64)> {
        let body = read_layout_blob(layout, &desc.digest, MAX_LAYOUT_DOCUMENT)?;
        let doc = Document::parse(&body, Some(&desc.media_type)).map_err(|reason| Error::Invalid {
            context: format!("push layout {}: {}", layout.display(), desc.digest),
            reason,
        })?;
        let mut uploaded = 0;
        match &doc {
            Document::Manifest(m) => {
                for blob in std::iter::once(&m.config).chain(&m.layers) {
                    let path = layout_blob_path(layout, &blob.digest);
                    uploaded += self.push_blob(session, target, blob, Source::File(path)).await?;
                }
            }
            Document::Index(i) if top => {
                for child in &i.manifests {
                    uploaded += Box::pin(self.push_layout_document(session, layout, target, child, false)).await?.1;
                }
            }
            Document::Index(_) => {
                return Err(Error::Invalid {
                    context: format!("push layout {}", layout.display()),
                    reason: "nested index".into(),
                });
            }
        }
        let manifest_target = if top { target.clone() } else { target.with_digest(desc.digest.clone()) };
        let digest = self.push_manifest(session, &manifest_target, &body, &desc.media_type).await?;
        Ok((digest, uploaded))
    }

    /// Uploads a blob unless the registry has it; returns the bytes uploaded.
    async fn push_blob(&self, session: &Session, r: &Reference, desc: &Descriptor, source: Source) -> Result<u64> {
        let ctx = Ctx::of(r);
        let what = format!("blob {}", desc.digest);
        let oci_ref = r.to_oci();
        let digest = desc.digest.to_string();
        let exists = self
            .call(session, r, Op::Push, |_| async {
                session.oci.blob_exists(&oci_ref, &digest).await.map_err(|e| from_oci(e, &ctx, &what))
            })
            .await?;
        if exists {
            return Ok(0);
        }
        self.call(session, r, Op::Push, |_| async {
            let result = match &source {
                Source::Memory(data) => session.oci.push_blob(&oci_ref, data.clone(), &digest).await,
                Source::File(path) if desc.size <= IN_MEMORY_PUSH => {
                    let data = tokio::fs::read(path).await.map_err(|e| Error::io("read blob", path, e))?;
                    session.oci.push_blob(&oci_ref, data, &digest).await
                }
                Source::File(path) => {
                    let stream = file_stream(path).await?;
                    session.oci.push_blob_stream(&oci_ref, stream, &digest, Some(desc.size)).await
                }
            };
            result.map_err(|e| from_oci(e, &ctx, &what))
        })
        .await?;
        Ok(desc.size)
    }

    async fn push_manifest(&self, session: &Session, r: &Reference, body: &[u8], media_type: &str) -> Result<Digest> {
        let ctx = Ctx::of(r);
        let what = format!("manifest {}", r.manifest_ref());
        let content_type = HeaderValue::from_str(media_type)
            .map_err(|_| Error::Invalid { context: what.clone(), reason: format!("bad media type {media_type:?}") })?;
        let oci_ref = r.to_oci();
        let body = Bytes::copy_from_slice(body);
        self.call(session, r, Op::Push, |_| async {
            session
                .oci
                .push_manifest_raw(&oci_ref, body.clone(), content_type.clone())
                .await
                .map_err(|e| from_oci(e, &ctx, &what))
        })
        .await?;
        Ok(Digest::sha256_of(&body))
    }
}

fn layout_blob_path(layout: &Path, digest: &Digest) -> PathBuf {
    layout.join("blobs").join(digest.algorithm().name()).join(digest.hex())
}

fn read_layout_blob(layout: &Path, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let path = layout_blob_path(layout, digest);
    let file = std::fs::File::open(&path).map_err(|e| Error::io("read layout blob", &path, e))?;
    let mut data = Vec::new();
    file.take(limit + 1).read_to_end(&mut data).map_err(|e| Error::io("read layout blob", &path, e))?;
    let mut h = digest.hasher();
    h.update(&data);
    if data.len() as u64 > limit || &h.finish() != digest {
        return Err(Error::Invalid {
            context: format!("layout blob {}", path.display()),
            reason: format!("does not match {digest}"),
        });
    }
    Ok(data)
}

async fn file_stream(
    path: &Path,
) -> Result<impl futures_util::Stream<Item = oci_client::errors::Result<Bytes>> + Send + 'static> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await.map_err(|e| Error::io("open blob", path, e))?;
    Ok(futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; STREAM_CHUNK];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => return Some((Err(e.into()), None)),
            }
        }
        if filled == 0 {
            return None;
        }
        buf.truncate(filled);
        Some((Ok(Bytes::from(buf)), Some(file)))
    }))
}

/// The artifact's `created` time: `$SOURCE_DATE_EPOCH` if set, else the file's mtime, so
/// that pushing the same file twice gives the same digest.
fn created_time(path: &Path) -> SystemTime {
    let epoch = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.parse::<u64>().ok());
    match epoch {
        Some(secs) => SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        None => std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH),
    }
}

/// `2026-11-22T03:13:00Z` from a system time.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }
}
