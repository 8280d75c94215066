//! The streaming server behind CRI's Exec, Attach and PortForward: each call leaves a
//! request here under a random single-use token and answers with its URL; the client
//! (the kubelet, which relays `kubectl exec`, or `crictl`) connects to that URL and
//! upgrades to SPDY/3.1, as with the kubelet's own streaming library. A token is good
//! for one connection within a minute (the kubelet's streaming cache lifetime).
//!
//! The sessions themselves are the kubelet API's (`cluster::streaming`): the same
//! remote-command and port-forward protocols, over the same runtime sessions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use wasmlet_runtime::RuntimeKind;

use super::{Cri, Phase, lock};
use crate::cluster::streaming::{self, Tail, Wanted};
use crate::cluster::websocket;
use crate::http::{ApiError, Body, error_response};

/// How long a URL stays good.
const TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// What a URL was handed out for.
#[derive(Debug)]
pub(super) enum Pending {
    Exec { kind: RuntimeKind, id: String, cmd: Vec<String>, want: Wanted },
    Attach { id: String, want: Wanted },
    PortForward { host: String },
}

#[derive(Debug)]
pub(super) struct Streams {
    listener: Mutex<Option<tokio::net::TcpListener>>,
    base: String,
    pending: Mutex<HashMap<String, (Instant, Pending)>>,
}

impl Streams {
    /// Binds the server's address (`IP:PORT`, port 0 for any).
    pub async fn bind(addr: &str) -> anyhow::Result<Streams> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("the CRI streaming server cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr()?;
        Ok(Streams { listener: Mutex::new(Some(listener)), base: format!("http://{local}"), pending: Mutex::default() })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Keeps `what` under a new token and returns its URL.
    pub fn offer(&self, what: Pending) -> String {
        let token: String = (0..2).map(|_| format!("{:016x}", fastrand::u64(..))).collect();
        let path = match &what {
            Pending::Exec { .. } => "exec",
            Pending::Attach { .. } => "attach",
            Pending::PortForward { .. } => "portforward",
        };
        let mut pending = lock(&self.pending);
        let now = Instant::now();
        pending.retain(|_, (at, _)| now.duration_since(*at) < TOKEN_LIFETIME);
        pending.insert(token.clone(), (now, what));
        format!("{}/{path}/{token}", self.base)
    }

    /// The request under `token`, once: a token is spent by its first use.
    fn take(&self, token: &str) -> Option<Pending> {
        let (at, what) = lock(&self.pending).remove(token)?;
        (at.elapsed() < TOKEN_LIFETIME).then_some(what)
    }
}

/// Serves the streaming URLs until the agent stops.
pub(super) fn serve(cri: Arc<Cri>) {
    let Some(listener) = lock(&cri.streams.listener).take() else { return };
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let cri = cri.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let service = hyper::service::service_fn(move |req| {
                    let cri = cri.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(cri, req).await.unwrap_or_else(error_response)) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).with_upgrades().await;
            });
        }
    });
}

async fn answer(cri: Arc<Cri>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let what = cri
        .streams
        .take(token)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown or expired streaming token".to_string()))?;
    match (kind, what) {
        ("exec", Pending::Exec { kind, id, cmd, want }) if websocket::is_websocket(&req) => {
            let (switching, proto) = websocket::accept(&req)?;
            let session = cri.mgr.runtimes().exec(kind, &id, &cmd, want.tty).await?;
            streaming::upgrade(req, "exec", move |io| websocket::run_exec(io, proto, session, want, cmd));
            Ok(switching)
        }
        ("attach", Pending::Attach { id, want }) if websocket::is_websocket(&req) => {
            let (switching, proto) = websocket::accept(&req)?;
            let tail = cri.tail(&id)?;
            streaming::upgrade(req, "attach", move |io| websocket::run_attach(io, proto, want, tail));
            Ok(switching)
        }
        ("exec", Pending::Exec { kind, id, cmd, want }) => {
            // the streams asked for are CRI's, kept with the token
            streaming::check_spdy(&req)?;
            let session = cri.mgr.runtimes().exec(kind, &id, &cmd, want.tty).await?;
            streaming::upgrade(req, "exec", move |io| streaming::run(io, session, want, cmd));
            Ok(streaming::switching(streaming::PROTOCOL))
        }
        ("attach", Pending::Attach { id, want }) => {
            streaming::check_spdy(&req)?;
            let tail = cri.tail(&id)?;
            streaming::upgrade(req, "attach", move |io| streaming::run_attach(io, want, tail));
            Ok(streaming::switching(streaming::PROTOCOL))
        }
        ("portforward", Pending::PortForward { host }) => {
            streaming::negotiate_port_forward(&req)?;
            streaming::upgrade(req, "port-forward", move |io| streaming::run_port_forward(io, host));
            Ok(streaming::switching(streaming::PORT_FORWARD))
        }
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, format!("the token is not for {kind}"))),
    }
}

impl Cri {
    /// The log of container `id` and whether it still runs, for an attach.
    fn tail(self: &Arc<Self>, id: &str) -> Result<Tail, ApiError> {
        let rec = self
            .container(id)
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("container {id} not found")))?;
        let (weak, id) = (Arc::downgrade(self), id.to_string());
        let running = Box::new(move || {
            weak.upgrade().and_then(|c| c.container(&id)).is_some_and(|c| matches!(c.state, Phase::Running { .. }))
        });
        Ok(Tail { path: rec.runtime.log_path.clone(), running })
    }
}
