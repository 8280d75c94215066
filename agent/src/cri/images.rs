//! CRI's `ImageService` over the node's image service: the same content store and
//! records the pod manager pulls into, so an image pulled either way serves both.

use std::sync::Arc;

use k8s_cri::v1;
use k8s_cri::v1::image_service_server::ImageService;
use tonic::{Request, Response, Status};

use super::{Service, now_ns};
use crate::image::ImageRecord;

type Reply<T> = Result<Response<T>, Status>;

/// An image as CRI shows it: its id is the config digest, as containerd's.
fn image(r: &ImageRecord) -> v1::Image {
    let uid = r.image.config.config.as_ref().and_then(|c| c.user.as_deref()).and_then(|u| {
        let user = u.split(':').next().unwrap_or(u);
        user.parse::<i64>().ok()
    });
    let username = r
        .image
        .config
        .config
        .as_ref()
        .and_then(|c| c.user.clone())
        .filter(|u| uid.is_none() && !u.is_empty())
        .map(|u| u.split(':').next().unwrap_or(&u).to_string())
        .unwrap_or_default();
    let tagged = r.reference.contains(':') && !r.reference.contains('@');
    v1::Image {
        id: r.image.manifest.config.digest.to_string(),
        repo_tags: if tagged || !r.reference.contains('@') { vec![r.reference.clone()] } else { vec![] },
        repo_digests: vec![r.image_id()],
        size: r.size,
        uid: uid.map(|value| v1::Int64Value { value }),
        username,
        spec: Some(v1::ImageSpec { image: r.image.manifest.config.digest.to_string(), ..Default::default() }),
        pinned: false,
    }
}

/// The credential an AuthConfig carries for `reference`'s registry, if any. One named
/// for another registry (`server_address`) is refused rather than sent elsewhere.
fn credential(
    auth: Option<&v1::AuthConfig>,
    reference: &registry_client::Reference,
) -> Result<Option<registry_client::Credential>, Status> {
    let Some(a) = auth else { return Ok(None) };
    if !a.server_address.is_empty() {
        let named = a.server_address.trim_start_matches("https://").trim_start_matches("http://");
        let named = named.split('/').next().unwrap_or(named);
        let host = reference.registry();
        let docker_hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
        if named != host && !(docker_hub(named) && docker_hub(host)) {
            return Err(Status::invalid_argument(format!(
                "the credential is for {named}, not for {host} where {reference} is: it is not sent there"
            )));
        }
    }
    if !a.username.is_empty() || !a.password.is_empty() {
        return Ok(Some(registry_client::Credential { username: a.username.clone(), password: a.password.clone() }));
    }
    if !a.auth.is_empty() {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|e| Status::invalid_argument(format!("auth is not base64: {e}")))?;
        let text = String::from_utf8(raw).map_err(|_| Status::invalid_argument("auth is not UTF-8"))?;
        let (user, pass) =
            text.split_once(':').ok_or_else(|| Status::invalid_argument("auth is not base64 of USER:PASSWORD"))?;
        return Ok(Some(registry_client::Credential { username: user.into(), password: pass.into() }));
    }
    if !a.identity_token.is_empty() || !a.registry_token.is_empty() {
        return Err(Status::unimplemented(
            "identity and registry tokens are not supported; give a username and password",
        ));
    }
    Ok(None)
}

impl super::Cri {
    fn image_named(&self, spec: Option<&v1::ImageSpec>) -> Result<Option<Arc<ImageRecord>>, Status> {
        let name = spec.map(|s| s.image.as_str()).unwrap_or_default();
        if name.is_empty() {
            return Err(Status::invalid_argument("the image is empty"));
        }
        Ok(self.find_image(name))
    }
}

#[tonic::async_trait]
impl ImageService for Service {
    async fn list_images(&self, req: Request<v1::ListImagesRequest>) -> Reply<v1::ListImagesResponse> {
        let cri = &self.0;
        let wanted = req.into_inner().filter.and_then(|f| f.image).map(|i| i.image).filter(|i| !i.is_empty());
        let all = cri.mgr.images().list().map_err(|e| Status::unavailable(e.to_string()))?;
        let images = match wanted {
            Some(name) => cri.find_image(&name).map(|r| image(&r)).into_iter().collect(),
            None => all.iter().map(image).collect(),
        };
        Ok(Response::new(v1::ListImagesResponse { images }))
    }

    async fn image_status(&self, req: Request<v1::ImageStatusRequest>) -> Reply<v1::ImageStatusResponse> {
        let cri = &self.0;
        let req = req.into_inner();
        // an image not present is an empty answer, not an error
        let found = cri.image_named(req.image.as_ref())?;
        let mut info = std::collections::HashMap::new();
        if req.verbose
            && let Some(r) = &found
        {
            info.insert(
                "info".into(),
                serde_json::json!({"reference": r.reference, "kind": r.kind_name(), "digest": r.digest.to_string()})
                    .to_string(),
            );
        }
        Ok(Response::new(v1::ImageStatusResponse { image: found.as_deref().map(image), info }))
    }

    async fn pull_image(&self, req: Request<v1::PullImageRequest>) -> Reply<v1::PullImageResponse> {
        let cri = &self.0;
        let req = req.into_inner();
        let name = req.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        let reference: registry_client::Reference =
            name.parse().map_err(|e| Status::invalid_argument(format!("image {name:?}: {e}")))?;
        let credential = credential(req.auth.as_ref(), &reference)?;
        let opts = registry_client::PullOptions { credential, ..Default::default() };
        let pulled = cri.mgr.images().pull(&reference, opts).await.map_err(|e| {
            let message = format!("pulling {reference}: {e}");
            match e {
                crate::image::Error::Registry(registry_client::Error::Unauthorized { .. }) => {
                    Status::permission_denied(message)
                }
                crate::image::Error::Registry(registry_client::Error::NotFound { .. }) => Status::not_found(message),
                _ => Status::unknown(message),
            }
        })?;
        tracing::debug!(image = %pulled.reference, at = now_ns(), "pulled for CRI");
        Ok(Response::new(v1::PullImageResponse { image_ref: pulled.image.manifest.config.digest.to_string() }))
    }

    async fn remove_image(&self, req: Request<v1::RemoveImageRequest>) -> Reply<v1::RemoveImageResponse> {
        let cri = &self.0;
        let req = req.into_inner();
        // removing an image that is not there succeeds
        let Some(found) = cri.image_named(req.image.as_ref())? else {
            return Ok(Response::new(v1::RemoveImageResponse {}));
        };
        if cri.mgr.image_in_use(&found.reference) {
            return Err(Status::failed_precondition(format!(
                "image {} ({}) is in use by a container or pod",
                found.reference, found.digest
            )));
        }
        cri.mgr.images().remove(&found.reference).await.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(v1::RemoveImageResponse {}))
    }

    async fn image_fs_info(&self, _: Request<v1::ImageFsInfoRequest>) -> Reply<v1::ImageFsInfoResponse> {
        let dir = self.0.mgr.store().dir().to_path_buf();
        // what the content store and the unpacked layers hold, walked (a few thousand
        // files for a node's images)
        let (bytes, inodes) = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || {
                let mut total = (0u64, 0u64);
                for sub in ["content", "layers"] {
                    walk(&dir.join(sub), &mut total);
                }
                total
            }
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let usage = v1::FilesystemUsage {
            timestamp: now_ns(),
            fs_id: Some(v1::FilesystemIdentifier { mountpoint: dir.display().to_string() }),
            used_bytes: Some(v1::UInt64Value { value: bytes }),
            inodes_used: Some(v1::UInt64Value { value: inodes }),
        };
        Ok(Response::new(v1::ImageFsInfoResponse {
            image_filesystems: vec![usage.clone()],
            container_filesystems: vec![usage],
        }))
    }
}

/// Adds the disk bytes and inodes under `dir` (symlinks not followed) to `total`.
fn walk(dir: &std::path::Path, total: &mut (u64, u64)) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let Ok(meta) = e.path().symlink_metadata() else { continue };
        total.0 += meta.blocks() * 512;
        total.1 += 1;
        if meta.is_dir() {
            walk(&e.path(), total);
        }
    }
}
