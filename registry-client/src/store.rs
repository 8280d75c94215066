//! The content-addressed blob store on disk.
//!
//! ```text
//! ROOT/blobs/sha256/<hex>      complete, verified blobs (read-only, 0444)
//! ROOT/ingest/sha256-<hex>     a download in progress; resumable
//! ```
//!
//! A blob enters `blobs/` only by `rename` from `ingest/` after its size and digest were
//! checked and the data was fsynced, so a file under `blobs/` is always complete; a crash
//! leaves at most a partial file in `ingest/`, which the next download of that digest
//! re-hashes and resumes. Each digest has one writer at a time in this process.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use tokio::io::AsyncWriteExt;

use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};

const WRITE_BUFFER: usize = 1 << 20;

/// How often (in bytes written) a blob being written checks the free space it must keep.
const SPACE_CHECK_EVERY: u64 = 4 << 20;

/// A directory of blobs named by digest.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    locks: Mutex<HashMap<Digest, Weak<tokio::sync::Mutex<()>>>>,
}

impl Store {
    /// Opens (creating if needed) a store rooted at `root`. Directories are `0700`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for dir in [root.join("blobs/sha256"), root.join("blobs/sha512"), root.join("ingest")] {
            create_private_dir(&dir)?;
        }
        create_private_dir(&root)?;
        Ok(Store { root, locks: Mutex::new(HashMap::new()) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this digest lives (whether or not it is there yet).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join(digest.algorithm().name()).join(digest.hex())
    }

    fn ingest_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("ingest").join(format!("{}-{}", digest.algorithm().name(), digest.hex()))
    }

    /// Whether a complete blob is stored, and (if given) has the expected size.
    pub fn contains(&self, digest: &Digest, size: Option<u64>) -> bool {
        match std::fs::metadata(self.blob_path(digest)) {
            Ok(m) => m.is_file() && size.is_none_or(|s| s == m.len()),
            Err(_) => false,
        }
    }

    /// Takes this process's lock for one digest, so that concurrent pulls of a shared
    /// blob download it once: the second waiter finds it stored.
    pub async fn lock(&self, digest: &Digest) -> tokio::sync::OwnedMutexGuard<()> {
        let mutex = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.retain(|_, w| w.strong_count() > 0);
            match locks.get(digest).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(digest.clone(), Arc::downgrade(&m));
                    m
                }
            }
        };
        mutex.lock_owned().await
    }

    /// Starts or resumes writing a blob. Bytes already in `ingest/` are re-hashed so the
    /// caller can continue from [`Ingest::offset`]. Hold [`Store::lock`] while writing.
    pub async fn ingest(&self, digest: &Digest, size: u64) -> Result<Ingest> {
        let path = self.ingest_path(digest);
        let (hasher, offset) = rehash_partial(&path, digest, size).await?;
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|e| Error::io("open ingest file", &path, e))?;
        Ok(Ingest {
            digest: digest.clone(),
            size,
            written: offset,
            hasher,
            file: tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file),
            partial: path,
            target: self.blob_path(digest),
            keep_free: 0,
            check_at: 0,
        })
    }

    /// Stores a small blob held in memory (a manifest or config), verifying its digest.
    pub fn put(&self, digest: &Digest, data: &[u8]) -> Result<PathBuf> {
        let actual = Digest::sha256_of(data);
        let actual = if digest.algorithm() == actual.algorithm() { actual } else { hash_with(digest, data) };
        if &actual != digest {
            return Err(Error::Invalid {
                context: format!("store blob {digest}"),
                reason: format!("content hashes to {actual}"),
            });
        }
        let target = self.blob_path(digest);
        if self.contains(digest, Some(data.len() as u64)) {
            return Ok(target);
        }
        let tmp = self.root.join("ingest").join(format!("put-{}-{}", digest.hex(), fastrand::u64(..)));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            set_read_only(&tmp)?;
            std::fs::rename(&tmp, &target)?;
            sync_dir(target.parent().expect("blob path has a parent"))
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io("store blob", &target, e)
        })?;
        Ok(target)
    }

    /// Reads a whole stored blob, refusing anything over `limit` bytes.
    pub fn read(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let file = std::fs::File::open(&path).map_err(|e| Error::io("read blob", &path, e))?;
        let mut data = Vec::new();
        file.take(limit + 1).read_to_end(&mut data).map_err(|e| Error::io("read blob", &path, e))?;
        if data.len() as u64 > limit {
            return Err(Error::Invalid {
                context: format!("read blob {digest}"),
                reason: format!("larger than {limit} bytes"),
            });
        }
        Ok(data)
    }

    /// Removes a stored blob; `false` if there was none.
    pub fn remove(&self, digest: &Digest) -> Result<bool> {
        let path = self.blob_path(digest);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("remove blob", &path, e)),
        }
    }

    /// All complete blobs with their sizes.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>> {
        let mut out = Vec::new();
        for alg in ["sha256", "sha512"] {
            let dir = self.root.join("blobs").join(alg);
            let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("list blobs", &dir, e))?;
            for entry in entries.flatten() {
                let name = format!("{alg}:{}", entry.file_name().to_string_lossy());
                if let (Ok(d), Ok(m)) = (name.parse::<Digest>(), entry.metadata()) {
                    out.push((d, m.len()));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

fn hash_with(digest: &Digest, data: &[u8]) -> Digest {
    let mut h = digest.hasher();
    h.update(data);
    h.finish()
}

async fn rehash_partial(path: &Path, digest: &Digest, size: u64) -> Result<(Hasher, u64)> {
    let path = path.to_path_buf();
    let digest = digest.clone();
    tokio::task::spawn_blocking(move || {
        let mut hasher = digest.hasher();
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((hasher, 0)),
            Err(e) => return Err(Error::io("open ingest file", &path, e)),
        };
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(|e| Error::io("read ingest file", &path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        if total > size {
            // Longer than the blob can be: start over.
            std::fs::remove_file(&path).map_err(|e| Error::io("reset ingest file", &path, e))?;
            return Ok((digest.hasher(), 0));
        }
        Ok((hasher, total))
    })
    .await
    .expect("rehash task panicked")
}

/// A blob being written. Dropping it without [`Ingest::commit`] keeps the partial data
/// for a later resume; [`Ingest::discard`] removes it.
#[derive(Debug)]
pub struct Ingest {
    digest: Digest,
    size: u64,
    written: u64,
    hasher: Hasher,
    file: tokio::io::BufWriter<tokio::fs::File>,
    partial: PathBuf,
    target: PathBuf,
    keep_free: u64,
    /// The offset at which free space is next checked.
    check_at: u64,
}

impl Ingest {
    /// Keeps `bytes` free on the store's filesystem: at once, the rest of the blob must
    /// fit above it; while writing, a write that finds less free fails with
    /// [`IngestError::NoSpace`]. 0 (the default): no check.
    pub fn keep_free(&mut self, bytes: u64) -> Result<(), IngestError> {
        self.keep_free = bytes;
        self.check_at = self.written;
        let rest = self.size - self.written;
        match self.free() {
            Some(free) if bytes > 0 && free < bytes.saturating_add(rest) => Err(IngestError::NoSpace { free }),
            _ => Ok(()),
        }
    }

    fn free(&self) -> Option<u64> {
        crate::error::free_space(self.partial.parent().expect("ingest path has a parent"))
    }

    /// Bytes already written (where a ranged request should resume).
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// Appends data. More bytes than the descriptor's size is an error at once, so an
    /// endless or oversized stream never fills the disk.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), IngestError> {
        if self.written + chunk.len() as u64 > self.size {
            return Err(IngestError::TooLong { expected: self.size });
        }
        if self.keep_free > 0 && self.written >= self.check_at {
            self.check_at = self.written + SPACE_CHECK_EVERY;
            if let Some(free) = self.free().filter(|&f| f < self.keep_free) {
                return Err(IngestError::NoSpace { free });
            }
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).await.map_err(|e| io_error("write blob", &self.partial, e))?;
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Forgets what was written (a server that ignored our Range header sends it all again).
    pub async fn restart(&mut self) -> Result<()> {
        self.file.flush().await.map_err(|e| Error::io("flush blob", &self.partial, e))?;
        self.file.get_mut().set_len(0).await.map_err(|e| Error::io("truncate blob", &self.partial, e))?;
        self.hasher = self.digest.hasher();
        self.written = 0;
        Ok(())
    }

    /// Verifies size and digest, fsyncs, and renames the blob into place. On a mismatch
    /// the partial data is deleted (it can never become the right blob) and
    /// [`IngestError::Size`] / [`IngestError::Digest`] say what was wrong.
    /// A full device ([`IngestError::NoSpace`]) deletes the partial data too.
    pub async fn commit(self) -> Result<PathBuf, IngestError> {
        let partial = self.partial.clone();
        let result = self.commit_inner().await;
        if let Err(IngestError::NoSpace { .. }) = result {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        result
    }

    async fn commit_inner(mut self) -> Result<PathBuf, IngestError> {
        let io = io_error;
        self.file.flush().await.map_err(|e| io("flush blob", &self.partial, e))?;
        if self.written != self.size {
            let (expected, actual) = (self.size, self.written);
            self.discard().await;
            return Err(IngestError::Size { expected, actual });
        }
        let actual = self.hasher.clone().finish();
        if actual != self.digest {
            let expected = self.digest.clone();
            self.discard().await;
            return Err(IngestError::Digest { expected, actual });
        }
        self.file.get_ref().sync_all().await.map_err(|e| io("fsync blob", &self.partial, e))?;
        let (partial, target) = (self.partial.clone(), self.target.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            set_read_only(&partial)?;
            std::fs::rename(&partial, &target)?;
            sync_dir(target.parent().expect("blob path has a parent"))
        })
        .await
        .expect("commit task panicked")
        .map_err(|e| io("commit blob", &self.target, e))?;
        Ok(self.target)
    }

    /// Deletes the partial data.
    pub async fn discard(self) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.partial).await;
    }
}

/// Why writing a blob failed; the caller turns it into an [`Error`] naming the reference.
#[derive(Debug)]
pub enum IngestError {
    TooLong {
        expected: u64,
    },
    Size {
        expected: u64,
        actual: u64,
    },
    Digest {
        expected: Digest,
        actual: Digest,
    },
    /// The filesystem is full, or below the free space kept (see [`Ingest::keep_free`]).
    NoSpace {
        free: u64,
    },
    Io(Error),
}

fn io_error(context: &str, path: &Path, e: std::io::Error) -> IngestError {
    if crate::error::is_no_space(&e) {
        IngestError::NoSpace { free: crate::error::free_space(path.parent().unwrap_or(path)).unwrap_or(0) }
    } else {
        IngestError::Io(Error::io(context, path, e))
    }
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("create directory", dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("set directory mode", dir, e))
}

fn set_read_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn commit_only_when_size_and_digest_match() {
        let (_d, store) = tmp_store();
        let data = b"hello blob";
        let digest = Digest::sha256_of(data);
        let mut w = store.ingest(&digest, data.len() as u64).await.unwrap();
        w.write(&data[..4]).await.unwrap();
        assert!(!store.contains(&digest, None), "partial data must not look complete");
        w.write(&data[4..]).await.unwrap();
        let path = w.commit().await.unwrap();
        assert_eq!(std::fs::read(path).unwrap(), data);
        assert!(store.contains(&digest, Some(data.len() as u64)));
    }

    #[tokio::test]
    async fn wrong_bytes_are_discarded() {
        let (_d, store) = tmp_store();
        let digest = Digest::sha256_of(b"right");
        let mut w = store.ingest(&digest, 5).await.unwrap();
        w.write(b"wrong").await.unwrap();
        assert!(matches!(w.commit().await, Err(IngestError::Digest { .. })));
        assert!(!store.contains(&digest, None));
        assert_eq!(std::fs::read_dir(store.root().join("ingest")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_blob_that_does_not_fit_above_the_kept_space_is_refused_and_removed() {
        let (_d, store) = tmp_store();
        let data = vec![1u8; 10 << 20];
        let digest = Digest::sha256_of(&data);
        let free = crate::error::free_space(store.root()).unwrap();
        let mut w = store.ingest(&digest, data.len() as u64).await.unwrap();
        // the blob does not fit above what is kept: refused before a byte is written
        assert!(matches!(w.keep_free(free), Err(IngestError::NoSpace { .. })));
        // it fits, then the space kept grows past what is free (another writer): the next
        // check stops the write, and a commit after a full device removes the partial
        w.keep_free(1).unwrap();
        w.write(&data[..5 << 20]).await.unwrap();
        w.keep_free = u64::MAX;
        assert!(matches!(w.write(&data[5 << 20..]).await, Err(IngestError::NoSpace { .. })));
        w.discard().await;
        assert_eq!(std::fs::read_dir(store.root().join("ingest")).unwrap().count(), 0);
        assert!(!store.contains(&digest, None));
    }

    #[tokio::test]
    async fn too_long_is_refused_before_writing() {
        let (_d, store) = tmp_store();
        let digest = Digest::sha256_of(b"abc");
        let mut w = store.ingest(&digest, 3).await.unwrap();
        assert!(matches!(w.write(b"abcd").await, Err(IngestError::TooLong { .. })));
    }

    #[tokio::test]
    async fn resume_rehashes_the_partial_file() {
        let (_d, store) = tmp_store();
        let data = b"0123456789";
        let digest = Digest::sha256_of(data);
        let mut w = store.ingest(&digest, 10).await.unwrap();
        w.write(&data[..6]).await.unwrap();
        w.file.flush().await.unwrap();
        drop(w); // as if the process died mid-download
        let mut w = store.ingest(&digest, 10).await.unwrap();
        assert_eq!(w.offset(), 6);
        w.write(&data[6..]).await.unwrap();
        w.commit().await.unwrap();
        assert!(store.contains(&digest, Some(10)));
    }

    #[test]
    fn put_verifies_and_lists() {
        let (_d, store) = tmp_store();
        let digest = Digest::sha256_of(b"{}");
        assert!(store.put(&digest, b"[]").is_err());
        store.put(&digest, b"{}").unwrap();
        assert_eq!(store.list().unwrap(), vec![(digest.clone(), 2)]);
        assert_eq!(store.read(&digest, 10).unwrap(), b"{}");
        assert!(store.read(&digest, 1).is_err());
        assert!(store.remove(&digest).unwrap());
    }
}
