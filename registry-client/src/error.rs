//! The one error type of this crate. Every variant names what it was about (reference,
//! registry, digest, entry path) so that a message is useful on its own, and
//! [`Error::is_retryable`] says whether trying again could help.

use std::path::PathBuf;

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest { digest: String, reason: String },

    #[error("{reference}: registry {registry} answered HTTP {status} for {what}{}", detail_suffix(.detail))]
    Http { reference: String, registry: String, what: String, status: u16, detail: String },

    #[error("{reference}: {what} not found in registry {registry}")]
    NotFound { reference: String, registry: String, what: String },

    #[error("{reference}: registry {registry} refused the credentials for {what} (HTTP {status}){}", detail_suffix(.detail))]
    Unauthorized { reference: String, registry: String, what: String, status: u16, detail: String },

    #[error("{reference}: cannot reach registry {registry} for {what}: {source}")]
    Transport {
        reference: String,
        registry: String,
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("{reference}: no progress from registry {registry} for {what} within {seconds}s")]
    Stalled { reference: String, registry: String, what: String, seconds: u64 },

    #[error("{reference}: content from registry {registry} does not match digest {expected} (got {actual})")]
    DigestMismatch { reference: String, registry: String, expected: String, actual: String },

    #[error("{reference}: blob {digest} from registry {registry} is {actual} bytes, the descriptor says {expected}")]
    SizeMismatch { reference: String, registry: String, digest: String, expected: u64, actual: u64 },

    #[error("{reference}: {what} from registry {registry} is larger than the limit of {limit} bytes")]
    TooLarge { reference: String, registry: String, what: String, limit: u64 },

    #[error("{reference}: malformed manifest {digest} from registry {registry}: {reason}")]
    Manifest { reference: String, registry: String, digest: String, reason: String },

    #[error("{reference}: no image for platform {wanted} in index {digest} (available: {available})")]
    NoMatchingPlatform { reference: String, digest: String, wanted: String, available: String },

    #[error("{reference}: registry {registry} uses an unacceptable auth challenge: {reason}")]
    AuthChallenge { reference: String, registry: String, reason: String },

    #[error("credentials: {path}: {reason}", path = .path.display())]
    Credentials { path: PathBuf, reason: String },

    #[error("layer {digest}: unsafe entry {entry:?}: {reason}")]
    UnsafeEntry { digest: String, entry: String, reason: String },

    #[error("layer {digest}: {reason}")]
    Layer { digest: String, reason: String },

    #[error("layer {digest}: limit exceeded: {reason}")]
    LayerLimit { digest: String, reason: String },

    #[error("{context}: {path}: {source}", path = .path.display())]
    Io {
        context: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{context}: {reason}")]
    Invalid { context: String, reason: String },

    /// Storing `what` would take the filesystem under `dir` below the free space the
    /// caller keeps (or did: the device is full). What had been written of it is removed.
    #[error(
        "no space for {what} under {dir}: {free} bytes free{}, and {keep} are kept free; what was written of it is removed",
        need_suffix(*.need),
        dir = .dir.display()
    )]
    NoSpace { what: String, dir: PathBuf, free: u64, need: u64, keep: u64 },
}

fn need_suffix(need: u64) -> String {
    if need == 0 { String::new() } else { format!(", it needs {need}") }
}

/// Whether an I/O error means the device (or the user's quota) is full.
pub fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

/// Free bytes for unprivileged writers on the filesystem holding `dir`, if it can be read.
pub fn free_space(dir: &std::path::Path) -> Option<u64> {
    rustix::fs::statvfs(dir).ok().map(|s| s.f_bavail.saturating_mul(s.f_frsize))
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() { String::new() } else { format!(": {detail}") }
}

impl Error {
    /// Whether the same request could succeed if tried again: network failures, stalls,
    /// 5xx, 408 and 429. Wrong content, malformed documents and refusals are final.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::Stalled { .. } => true,
            Error::Http { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }

    pub(crate) fn io(context: impl Into<String>, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), path: path.into(), source }
    }
}
