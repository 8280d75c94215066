//! The CLI's side of the local API.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};

/// Talks to `wasmlet serve` over its socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Client { socket: socket.to_path_buf() }
    }

    /// Sends a request; fails with the server's message on a non-2xx status.
    pub async fn send(&self, method: Method, path: &str, body: impl Into<Bytes>) -> anyhow::Result<Response<Incoming>> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.with_context(|| {
            format!("cannot reach the wasmlet agent at {}: is `wasmlet serve` running?", self.socket.display())
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder().method(method).uri(path).header("host", "wasmlet").body(Full::new(body.into()))?;
        let resp = sender.send_request(req).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            let msg = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            bail!("{msg} (HTTP {})", status.as_u16());
        }
        Ok(resp)
    }

    pub async fn json(&self, method: Method, path: &str, body: impl Into<Bytes>) -> anyhow::Result<serde_json::Value> {
        let resp = self.send(method, path, body).await?;
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&body)?)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.json(Method::GET, path, Bytes::new()).await
    }
}
