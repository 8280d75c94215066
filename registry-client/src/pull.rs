//! Pulling an image: resolve the reference (mirrors first), pick the platform from an
//! index, store manifest and config, then download the blobs a few at a time, resuming
//! interrupted ones, and unpack each layer as soon as its blob is verified.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{BlobResponse, LayerDescriptor};
use serde::{Deserialize, Serialize};

use crate::auth::Credential;
use crate::client::Client;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, Document, ImageConfig, ImageKind, Index, Manifest, is_tar_layer};
use crate::platform::Platform;
use crate::reference::Reference;
use crate::session::{Ctx, Op, Session, from_oci, from_stream_io};
use crate::store::IngestError;
use crate::unpack::{self, UnpackOptions};

/// A progress report during a pull, for progress bars.
#[derive(Clone, Debug)]
pub enum Progress {
    /// The manifest is known: these blobs (config first) make up the image.
    Resolved { reference: String, digest: Digest, blobs: Vec<(Digest, u64)> },
    /// Bytes of one blob so far (reported every 256 KiB or so).
    Blob { digest: Digest, done: u64, total: u64 },
    /// A blob is stored (`cached`: it was already there).
    BlobDone { digest: Digest, total: u64, cached: bool },
    /// A layer was unpacked.
    Unpacked { digest: Digest },
}

/// Receives [`Progress`] events; called from the pulling tasks.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// How to pull.
#[derive(Clone, Default)]
pub struct PullOptions {
    /// Platforms to accept from an index, best first. Empty: the configured host
    /// platform, then `wasip2/wasm`, `wasip1/wasm`, `wasi/wasm`.
    pub platforms: Vec<Platform>,
    /// Credentials for the reference's own registry (never sent to a mirror).
    pub credential: Option<Credential>,
    /// Unpack each filesystem layer into `DIR/<diff-id hex>` (overlay form), skipping
    /// layers already there.
    pub unpack_to: Option<PathBuf>,
    pub unpack: UnpackOptions,
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("platforms", &self.platforms)
            .field("unpack_to", &self.unpack_to)
            .finish_non_exhaustive()
    }
}

/// A pulled image: everything is in the store (and unpacked, if asked).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Image {
    /// The reference as asked for.
    pub reference: Reference,
    /// Where it came from, pinned by digest (a mirror's host if a mirror served it).
    pub source: Reference,
    /// Digest of the image manifest.
    pub digest: Digest,
    /// Digest of the index the manifest was chosen from, if any.
    pub index_digest: Option<Digest>,
    pub platform: Option<Platform>,
    pub manifest: Manifest,
    pub config: ImageConfig,
    pub kind: ImageKind,
    pub layers: Vec<Layer>,
}

/// One layer of a pulled image.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Layer {
    pub descriptor: Descriptor,
    /// Digest of the uncompressed tar (from the config), for filesystem layers.
    pub diff_id: Option<Digest>,
    pub blob: PathBuf,
    pub unpacked: Option<PathBuf>,
}

impl Image {
    /// Applies every filesystem layer in order onto `dest` (whiteouts delete), giving
    /// the image's root filesystem as one directory tree.
    pub fn flatten(&self, dest: &Path, options: &UnpackOptions) -> Result<()> {
        let options = UnpackOptions { whiteouts: unpack::Whiteouts::Flatten, ..options.clone() };
        for layer in self.layers.iter().filter(|l| is_tar_layer(&l.descriptor.media_type)) {
            unpack::unpack_blob(&layer.blob, dest, &layer.descriptor.digest, layer.diff_id.as_ref(), &options)?;
        }
        Ok(())
    }

    /// Total compressed size of config and layers.
    pub fn size(&self) -> u64 {
        self.manifest.config.size + self.manifest.layers.iter().map(|l| l.size).sum::<u64>()
    }
}

impl Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

fn default_platforms(host: &Platform) -> Vec<Platform> {
    vec![
        host.clone(),
        Platform::new("wasip2", "wasm", None),
        Platform::new("wasip1", "wasm", None),
        Platform::new("wasi", "wasm", None),
    ]
}

/// Picks the best entry: the first preferred platform any entry serves, best variant.
pub fn select_platform<'a>(index: &'a Index, wanted: &[Platform]) -> Option<&'a Descriptor> {
    wanted.iter().find_map(|want| {
        index
            .manifests
            .iter()
            .filter(|d| crate::manifest::ACCEPTED_MANIFESTS.contains(&d.media_type.as_str()))
            .filter_map(|d| Some((want.rank(d.platform.as_ref()?)?, d)))
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, d)| d)
    })
}

impl Client {
    /// Pulls `reference`: tries each mirror, then the origin. Errors from the last
    /// endpoint tried are returned.
    pub async fn pull(&self, reference: &Reference, opts: &PullOptions) -> Result<Image> {
        let endpoints = self.config().endpoints(reference.registry());
        let mut last = None;
        for host in &endpoints {
            let is_origin = host == reference.registry();
            let credential = if is_origin { opts.credential.as_ref() } else { None };
            let source = reference.on_registry(host);
            match self.pull_from(reference, &source, credential, opts).await {
                Ok(image) => return Ok(image),
                Err(e) if !is_origin => {
                    tracing::warn!(reference = %reference, mirror = %host, error = %e, "mirror failed, trying next");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least the origin endpoint"))
    }

    /// Resolves a reference to its manifest digest without downloading blobs (for
    /// `imagePullPolicy: Always` checks).
    pub async fn resolve(&self, reference: &Reference, opts: &PullOptions) -> Result<Digest> {
        let session = self.session(reference.registry(), opts.credential.as_ref())?;
        let (_, manifest, _) = self.resolve_manifest(&session, reference, opts).await?;
        Ok(manifest.1)
    }

    async fn pull_from(
        &self,
        asked: &Reference,
        source: &Reference,
        cred: Option<&Credential>,
        opts: &PullOptions,
    ) -> Result<Image> {
        let session = self.session(source.registry(), cred)?;
        let (index_digest, (manifest, digest), platform) = self.resolve_manifest(&session, source, opts).await?;
        let source = source.with_digest(digest.clone());
        let ctx = Ctx::of(&source);
        if let Some(p) = &opts.progress {
            let mut blobs = vec![(manifest.config.digest.clone(), manifest.config.size)];
            blobs.extend(manifest.layers.iter().map(|l| (l.digest.clone(), l.size)));
            p(Progress::Resolved { reference: asked.to_string(), digest: digest.clone(), blobs });
        }
        let config_bytes = self.fetch_config(&session, &source, &manifest, opts.progress.as_ref()).await?;
        let config = ImageConfig::parse(&config_bytes)
            .map_err(|reason| manifest_error(&ctx, &manifest.config.digest, reason))?;
        let kind = ImageKind::classify(&manifest, &config);
        check_platform(&ctx, &digest, &config, &kind, &self.wanted(opts))?;
        let diff_ids = layer_diff_ids(&ctx, &digest, &manifest, &config)?;
        let layers = self.fetch_layers(&session, &source, &manifest, diff_ids, opts).await?;
        Ok(Image { reference: asked.clone(), source, digest, index_digest, platform, manifest, config, kind, layers })
    }

    fn wanted(&self, opts: &PullOptions) -> Vec<Platform> {
        if opts.platforms.is_empty() { default_platforms(&self.config().platform) } else { opts.platforms.clone() }
    }

    /// Manifest (and index) fetched, verified, parsed and stored.
    #[allow(clippy::type_complexity)]
    async fn resolve_manifest(
        &self,
        session: &Session,
        r: &Reference,
        opts: &PullOptions,
    ) -> Result<(Option<Digest>, (Manifest, Digest), Option<Platform>)> {
        let (doc, digest) = self.fetch_document(session, r).await?;
        match doc {
            Document::Manifest(m) => Ok((None, (m, digest), None)),
            Document::Index(index) => {
                let wanted = self.wanted(opts);
                let entry = select_platform(&index, &wanted).ok_or_else(|| Error::NoMatchingPlatform {
                    reference: r.to_string(),
                    digest: digest.to_string(),
                    wanted: wanted.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    available: platforms_of(&index),
                })?;
                let child = r.with_digest(entry.digest.clone());
                match self.fetch_document(session, &child).await? {
                    (Document::Manifest(m), d) => Ok((Some(digest), (m, d), entry.platform.clone())),
                    (Document::Index(_), d) => Err(manifest_error(
                        &Ctx::of(r),
                        &d,
                        "index entry points to another index (not supported)".into(),
                    )),
                }
            }
        }
    }

    async fn fetch_document(&self, session: &Session, r: &Reference) -> Result<(Document, Digest)> {
        let raw = self
            .call(session, r, Op::Pull, |auth| async move { session.get_manifest(r, auth.as_deref()).await })
            .await?;
        let doc = Document::parse(&raw.body, raw.content_type.as_deref())
            .map_err(|reason| manifest_error(&Ctx::of(r), &raw.digest, reason))?;
        self.store().put(&raw.digest, &raw.body)?;
        Ok((doc, raw.digest))
    }

    async fn fetch_config(
        &self,
        session: &Session,
        r: &Reference,
        manifest: &Manifest,
        progress: Option<&ProgressFn>,
    ) -> Result<Vec<u8>> {
        let desc = &manifest.config;
        let limit = self.config().max_config_bytes;
        if desc.size > limit {
            return Err(Error::TooLarge {
                reference: r.to_string(),
                registry: r.registry().into(),
                what: format!("config {}", desc.digest),
                limit,
            });
        }
        self.fetch_blob(session, r, desc, progress).await?;
        self.store().read(&desc.digest, limit)
    }

    async fn fetch_layers(
        &self,
        session: &Session,
        r: &Reference,
        manifest: &Manifest,
        diff_ids: Vec<Option<Digest>>,
        opts: &PullOptions,
    ) -> Result<Vec<Layer>> {
        let unpack_slots = Arc::new(tokio::sync::Semaphore::new(self.config().max_concurrent_unpacks.max(1)));
        let mut unpacks = tokio::task::JoinSet::new();
        type Job<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<LayerDone>> + Send + 'a>>;
        // Boxed as `Send` futures: a lazily mapped iterator of async closures here makes
        // rustc lose the `Send` proof for every caller (rust-lang/rust#102211).
        let mut jobs: Vec<Job<'_>> = Vec::with_capacity(manifest.layers.len());
        for (i, (desc, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
            let slots = unpack_slots.clone();
            jobs.push(Box::pin(async move {
                let blob = self.fetch_blob(session, r, desc, opts.progress.as_ref()).await?;
                let plan = match (&opts.unpack_to, &diff_id) {
                    (Some(dir), Some(id)) if is_tar_layer(&desc.media_type) => Some(UnpackJob {
                        blob: blob.clone(),
                        layer: desc.digest.clone(),
                        diff_id: id.clone(),
                        dir: dir.clone(),
                    }),
                    _ => None,
                };
                let unpacked = plan.as_ref().map(|j| j.dir.join(j.diff_id.hex()));
                Ok((i, Layer { descriptor: desc.clone(), diff_id, blob, unpacked }, plan, slots))
            }));
        }
        let mut results =
            futures_util::stream::iter(jobs).buffer_unordered(self.config().max_concurrent_downloads.max(1));
        let mut layers = Vec::with_capacity(manifest.layers.len());
        while let Some(item) = results.next().await {
            let (i, layer, plan, slots) = match item {
                Ok(v) => v,
                Err(e) => {
                    unpacks.abort_all();
                    return Err(e);
                }
            };
            if let Some(job) = plan {
                let (mut options, progress) = (opts.unpack.clone(), opts.progress.clone());
                options.limits.keep_free = options.limits.keep_free.max(self.config().keep_free);
                unpacks.spawn(async move {
                    let _slot = slots.acquire_owned().await.expect("semaphore never closed");
                    let layer = job.layer.clone();
                    tokio::task::spawn_blocking(move || job.run(&options)).await.expect("unpack task panicked")?;
                    if let Some(p) = progress {
                        p(Progress::Unpacked { digest: layer });
                    }
                    Ok::<_, Error>(())
                });
            }
            layers.push((i, layer));
        }
        drop(results);
        while let Some(done) = unpacks.join_next().await {
            done.expect("unpack task panicked")?;
        }
        layers.sort_by_key(|(i, _)| *i);
        Ok(layers.into_iter().map(|(_, l)| l).collect())
    }

    /// Downloads one blob into the store unless it is there, resuming after transient
    /// errors with a Range request. Wrong size or digest: the partial data is deleted.
    pub(crate) async fn fetch_blob(
        &self,
        session: &Session,
        r: &Reference,
        desc: &Descriptor,
        progress: Option<&ProgressFn>,
    ) -> Result<PathBuf> {
        let store = self.store();
        let _lock = store.lock(&desc.digest).await;
        if store.contains(&desc.digest, Some(desc.size)) {
            if let Some(p) = progress {
                p(Progress::BlobDone { digest: desc.digest.clone(), total: desc.size, cached: true });
            }
            return Ok(store.blob_path(&desc.digest));
        }
        let ctx = Ctx::of(r);
        let space = Space { dir: store.root().to_path_buf(), keep: self.config().keep_free };
        let mut ingest = store.ingest(&desc.digest, desc.size).await?;
        if let Err(e) = ingest.keep_free(space.keep) {
            ingest.discard().await;
            return Err(ingest_error(e, &ctx, desc, &space));
        }
        let ingest = tokio::sync::Mutex::new(ingest);
        let timeout = self.config().read_timeout;
        let fetched = self
            .call(session, r, Op::Pull, |_| async {
                let mut w = ingest.lock().await;
                let to = BlobTarget { ctx: &ctx, space: &space, timeout, progress };
                stream_blob(session, r, desc, &mut w, to).await
            })
            .await;
        let ingest = ingest.into_inner();
        if let Err(e) = fetched {
            if matches!(e, Error::NoSpace { .. }) {
                // a partial blob kept for a resume would hold the space the node needs
                ingest.discard().await;
            }
            return Err(e);
        }
        let path = ingest.commit().await.map_err(|e| ingest_error(e, &ctx, desc, &space))?;
        if let Some(p) = progress {
            p(Progress::BlobDone { digest: desc.digest.clone(), total: desc.size, cached: false });
        }
        Ok(path)
    }
}

/// Where a blob's bytes go and what a download reports: errors name `ctx`, writes keep
/// `space` free, a silence of `timeout` is a stall.
struct BlobTarget<'a> {
    ctx: &'a Ctx,
    space: &'a Space,
    timeout: Duration,
    progress: Option<&'a ProgressFn>,
}

async fn stream_blob(
    session: &Session,
    r: &Reference,
    desc: &Descriptor,
    w: &mut crate::store::Ingest,
    to: BlobTarget<'_>,
) -> Result<()> {
    let BlobTarget { ctx, space, timeout, progress } = to;
    let what = format!("blob {}", desc.digest);
    let digest = desc.digest.to_string();
    let layer = LayerDescriptor { digest: &digest, urls: &None };
    if w.offset() == desc.size {
        return Ok(());
    }
    let response = session
        .oci
        .pull_blob_stream_partial(&r.to_oci(), &layer, w.offset(), None)
        .await
        .map_err(|e| from_oci(e, ctx, &what))?;
    let mut stream = match response {
        BlobResponse::Full(s) => {
            w.restart().await?;
            s.stream
        }
        BlobResponse::Partial(s) => s.stream,
    };
    let mut reported = w.offset();
    while let Some(chunk) = stream.try_next().await.map_err(|e| from_stream_io(e, ctx, &what, timeout))? {
        w.write(&chunk).await.map_err(|e| ingest_error(e, ctx, desc, space))?;
        if let Some(p) = progress.filter(|_| w.offset() - reported >= 256 << 10) {
            reported = w.offset();
            p(Progress::Blob { digest: desc.digest.clone(), done: reported, total: desc.size });
        }
    }
    if w.offset() < desc.size {
        return Err(Error::Transport {
            reference: ctx.reference.clone(),
            registry: ctx.registry.clone(),
            what,
            source: format!("connection ended after {} of {} bytes", w.offset(), desc.size).into(),
        });
    }
    Ok(())
}

/// Where blobs are written and the free space a pull keeps there.
struct Space {
    dir: PathBuf,
    keep: u64,
}

fn ingest_error(e: IngestError, ctx: &Ctx, desc: &Descriptor, space: &Space) -> Error {
    match e {
        IngestError::NoSpace { free } => Error::NoSpace {
            what: format!("blob {} of {}", desc.digest, ctx.reference),
            dir: space.dir.clone(),
            free,
            need: desc.size,
            keep: space.keep,
        },
        IngestError::TooLong { expected } => Error::SizeMismatch {
            reference: ctx.reference.clone(),
            registry: ctx.registry.clone(),
            digest: desc.digest.to_string(),
            expected,
            actual: expected + 1,
        },
        IngestError::Size { expected, actual } => Error::SizeMismatch {
            reference: ctx.reference.clone(),
            registry: ctx.registry.clone(),
            digest: desc.digest.to_string(),
            expected,
            actual,
        },
        IngestError::Digest { expected, actual } => Error::DigestMismatch {
            reference: ctx.reference.clone(),
            registry: ctx.registry.clone(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        },
        IngestError::Io(e) => e,
    }
}

/// A downloaded layer: its index, the layer, what to unpack and the unpack slots.
type LayerDone = (usize, Layer, Option<UnpackJob>, Arc<tokio::sync::Semaphore>);

/// One layer to unpack once its blob is stored.
#[derive(Debug)]
struct UnpackJob {
    blob: PathBuf,
    layer: Digest,
    diff_id: Digest,
    dir: PathBuf,
}

impl UnpackJob {
    fn run(&self, options: &UnpackOptions) -> Result<()> {
        unpack_layer_dir(&self.blob, &self.layer, &self.diff_id, &self.dir, options).map(|_| ())
    }
}

/// Unpacks a layer blob into `dir/<diff-id hex>` in overlay form, atomically: into a
/// temporary directory first, renamed into place when complete and verified.
pub fn unpack_layer_dir(
    blob: &Path,
    layer: &Digest,
    diff_id: &Digest,
    dir: &Path,
    options: &UnpackOptions,
) -> Result<PathBuf> {
    let target = dir.join(diff_id.hex());
    if target.is_dir() {
        return Ok(target);
    }
    crate::store::create_private_dir(dir)?;
    let tmp = dir.join(format!(".tmp-{}-{}", diff_id.hex(), fastrand::u32(..)));
    let options = UnpackOptions { whiteouts: unpack::Whiteouts::Overlay, ..options.clone() };
    let result = (|| {
        std::fs::create_dir(&tmp).map_err(|e| Error::io("create layer directory", &tmp, e))?;
        unpack::unpack_blob(blob, &tmp, layer, Some(diff_id), &options)?;
        std::fs::rename(&tmp, &target).map_err(|e| Error::io("commit layer directory", &target, e))
    })();
    if let Err(mut e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        if let Error::NoSpace { dir: at, .. } = &mut e {
            dir.clone_into(at); // the layers' directory, not the removed temporary one
        }
        if target.is_dir() {
            return Ok(target); // another pull finished the same layer first
        }
        return Err(e);
    }
    Ok(target)
}

fn manifest_error(ctx: &Ctx, digest: &Digest, reason: String) -> Error {
    Error::Manifest {
        reference: ctx.reference.clone(),
        registry: ctx.registry.clone(),
        digest: digest.to_string(),
        reason,
    }
}

fn platforms_of(index: &Index) -> String {
    let list: Vec<String> =
        index.manifests.iter().filter_map(|d| d.platform.as_ref().map(ToString::to_string)).collect();
    if list.is_empty() { "none declared".into() } else { list.join(", ") }
}

fn check_platform(
    ctx: &Ctx,
    digest: &Digest,
    config: &ImageConfig,
    kind: &ImageKind,
    wanted: &[Platform],
) -> Result<()> {
    if kind.is_wasm() || config.os.is_empty() || config.architecture.is_empty() {
        return Ok(());
    }
    let have = Platform::new(&config.os, &config.architecture, config.variant.as_deref());
    if wanted.iter().any(|w| w.rank(&have).is_some()) {
        return Ok(());
    }
    Err(Error::NoMatchingPlatform {
        reference: ctx.reference.clone(),
        digest: digest.to_string(),
        wanted: wanted.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        available: have.to_string(),
    })
}

/// Pairs each filesystem layer with its DiffID from the config.
fn layer_diff_ids(
    ctx: &Ctx,
    digest: &Digest,
    manifest: &Manifest,
    config: &ImageConfig,
) -> Result<Vec<Option<Digest>>> {
    let tar_layers = manifest.layers.iter().filter(|l| is_tar_layer(&l.media_type)).count();
    let ids = config.rootfs.as_ref().map(|r| r.diff_ids.clone()).unwrap_or_default();
    if tar_layers > 0 && ids.len() != tar_layers {
        return Err(manifest_error(
            ctx,
            digest,
            format!("{tar_layers} filesystem layers but {} diff_ids in the config", ids.len()),
        ));
    }
    let mut ids = ids.into_iter();
    Ok(manifest.layers.iter().map(|l| if is_tar_layer(&l.media_type) { ids.next() } else { None }).collect())
}
