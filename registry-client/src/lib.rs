//! OCI distribution for wasmlet: pull and push images and Wasm artifacts, keep blobs in a
//! content-addressed store, and unpack layers without ever writing outside the target.
//!
//! It knows nothing of Kubernetes, sled or runtimes. The wire protocol is
//! [`oci_client`]'s (blobs, uploads, manifests pushes); this crate adds what a node agent
//! needs on top: size-capped and verified manifests, the token flow with renewal and
//! realm checks, docker `config.json` credentials, mirrors, platform selection, image
//! kind detection, retries, resumable downloads and the safe unpacker.
//!
//! ```no_run
//! # async fn demo() -> registry_client::Result<()> {
//! use registry_client::{Client, Config, Keychain, PullOptions, Store};
//! let store = std::sync::Arc::new(Store::open("/var/lib/wasmlet/content")?);
//! let client = Client::new(Config::default(), Keychain::from_env()?, store);
//! let image = client.pull(&"127.0.0.1:5000/apps/hello:v1".parse()?, &PullOptions::default()).await?;
//! println!("{} is {:?}", image.digest, image.kind);
//! # Ok(()) }
//! ```

mod auth;
mod client;
mod config;
mod digest;
mod error;
pub mod manifest;
mod platform;
mod pull;
mod push;
mod reference;
mod session;
mod store;
pub mod unpack;

pub use auth::{Challenge, Credential, Keychain, key_matches, pull_secret_entries};
pub use client::Client;
pub use config::{Config, Retry};
pub use digest::{Algorithm, Digest, Hasher};
pub use error::{Error, Result, free_space, is_no_space};
pub use manifest::{Descriptor, ImageConfig, ImageKind, Manifest, WasmBinary, WasmForm};
pub use platform::Platform;
pub use pull::{Image, Layer, Progress, ProgressFn, PullOptions, select_platform, unpack_layer_dir};
pub use push::Pushed;
pub use reference::Reference;
pub use store::{Ingest, IngestError, Store};
pub use unpack::{Devices, Limits, Report, UnpackOptions, Whiteouts};

/// Installs rustls' ring provider as the process default (once; later calls no-op).
/// We build without aws-lc to keep clean builds fast.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
