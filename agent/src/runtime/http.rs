//! Wasm HTTP components: a container whose component exports
//! `wasi:http/incoming-handler` is served by the agent itself (hyper, HTTP/1.1), on its
//! declared ports. Every request gets a fresh instance from the pre-linked component
//! (the pooling allocator makes that cheap), so nothing leaks between requests.
//!
//! - Limits: the container's memory limit per instance; a deadline per request (from
//!   arrival to the end of the response body); a cap on requests in flight per
//!   container, above which requests get 503 at once.
//! - A trap before the response is sent is a 500; the trap goes to the container log,
//!   and the other requests are untouched.
//! - Outbound HTTP (`wasi:http/outgoing-handler`) reaches only the `host:port`s the pod
//!   grants; anything else is `HTTP-request-denied`, and the denial is logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpHooks};

use super::log::{CriLog, Stream};
use super::wasm::{MemoryCap, P2Host, prepare, wasi_builder};
use super::{ContainerConfig, Error, HttpOptions, Result};

/// The requests refused for being over a container's cap, by all containers.
pub static REJECTED: AtomicU64 = AtomicU64::new(0);

/// The outbound grants of one guest, and where to say what was denied.
pub(super) struct Hooks {
    allowed: Arc<[String]>,
    log: Option<CriLog>,
}

impl Hooks {
    pub(super) fn new(options: &HttpOptions, log: Option<CriLog>) -> Self {
        Hooks { allowed: options.allow_outbound.clone().into(), log }
    }
}

/// Whether `host:port` is granted by one of `allowed` (`host:port`, `*:port`, `host:*`).
pub fn granted(allowed: &[String], host: &str, port: u16) -> bool {
    allowed.iter().any(|a| {
        let Some((h, p)) = a.rsplit_once(':') else { return false };
        (h == "*" || h.eq_ignore_ascii_case(host)) && (p == "*" || p.parse() == Ok(port))
    })
}

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = std::result::Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = std::result::Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = std::result::Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        drop(fut);
        let uri = request.uri();
        let host = uri.host().unwrap_or_default().to_string();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if !granted(&self.allowed, &host, port) {
            if let Some(log) = &self.log {
                let line = format!(
                    "wasmlet: outbound HTTP request to {host}:{port} denied: not granted by the pod's wasmlet.dev/allow-outbound annotation\n"
                );
                let _ = log.write(Stream::Stderr, line.as_bytes());
            }
            tracing::info!(host = %host, port, "outbound HTTP request denied");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

fn text(status: u16, body: &str) -> hyper::Response<HyperOutgoingBody> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}).boxed_unsync())
        .expect("a valid response")
}

/// Binds the container's ports: each `containerPort` on loopback (where probes of a
/// Wasm pod look), and its `hostPort`, if any, on every address.
pub(super) async fn bind(config: &ContainerConfig) -> Result<Vec<TcpListener>> {
    if config.ports.is_empty() {
        return Err(Error::Create {
            id: config.id.clone(),
            reason: "an HTTP component needs a containerPort to serve on".into(),
        });
    }
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for p in &config.ports {
        match p.host_port {
            Some(h) if h == p.container_port => addrs.push(([0, 0, 0, 0], h).into()),
            Some(h) => {
                addrs.push(([127, 0, 0, 1], p.container_port).into());
                addrs.push(([0, 0, 0, 0], h).into());
            }
            None => addrs.push(([127, 0, 0, 1], p.container_port).into()),
        }
    }
    let mut listeners = Vec::new();
    for addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Create { id: config.id.clone(), reason: format!("cannot listen on {addr}: {e}") })?;
        listeners.push(l);
    }
    Ok(listeners)
}

/// Serves until aborted. Each connection is a task; each request a fresh instance.
pub(super) async fn serve(pre: ProxyPre<P2Host>, config: ContainerConfig, log: CriLog, listeners: Vec<TcpListener>) {
    let shared = Arc::new(Shared {
        pre,
        limit: Arc::new(tokio::sync::Semaphore::new(config.http.max_concurrency.max(1))),
        config,
        log,
    });
    let mut accept = tokio::task::JoinSet::new();
    for listener in listeners {
        let shared = shared.clone();
        accept.spawn(async move {
            // connections end with the server: the set aborts them when dropped
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(shared.handle(req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
    }
    while accept.join_next().await.is_some() {}
}

struct Shared {
    pre: ProxyPre<P2Host>,
    config: ContainerConfig,
    log: CriLog,
    limit: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    async fn handle(&self, req: hyper::Request<Incoming>) -> hyper::Response<HyperOutgoingBody> {
        let Ok(permit) = self.limit.clone().try_acquire_owned() else {
            REJECTED.fetch_add(1, Ordering::Relaxed);
            return text(503, "too many requests in flight for this container\n");
        };
        let deadline = Duration::from_millis(self.config.http.request_timeout_ms);
        let cap = MemoryCap::new(self.config.memory_limit);
        let builder = match wasi_builder(&self.config, &self.log) {
            Ok(b) => b,
            Err(e) => return text(500, &format!("{e}\n")),
        };
        let mut builder = builder;
        let host = P2Host {
            ctx: builder.build(),
            table: ResourceTable::new(),
            cap,
            http: WasiHttpCtx::new(),
            hooks: Hooks::new(&self.config.http, Some(self.log.clone())),
        };
        let mut store = Store::new(self.pre.engine(), host);
        prepare(&mut store, |h| &mut h.cap);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let setup = (|| {
            use wasmtime_wasi_http::WasiHttpView as _;
            let r = store
                .data_mut()
                .http()
                .new_incoming_request(wasmtime_wasi_http::p2::bindings::http::types::Scheme::Http, req)?;
            let o = store.data_mut().http().new_response_outparam(tx)?;
            Ok::<_, wasmtime::Error>((r, o))
        })();
        let (request, out) = match setup {
            Ok(v) => v,
            Err(e) => return text(400, &format!("{e:#}\n")),
        };
        let pre = self.pre.clone();
        let log = self.log.clone();
        // the guest runs in a task of its own: it may go on writing the body after the
        // response head is out; the deadline covers both
        let guest = tokio::spawn(async move {
            let _permit = permit;
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy.wasi_http_incoming_handler().call_handle(&mut store, request, out).await
            };
            match tokio::time::timeout(deadline, run).await {
                Ok(r) => r.map_err(|e| {
                    let what = if store.data().cap.hit {
                        format!("memory limit reached: {}", super::wasm::first_line(&e))
                    } else {
                        super::wasm::first_line(&e)
                    };
                    let _ = log.write(Stream::Stderr, format!("wasmlet: request failed: {what}\n").as_bytes());
                    what
                }),
                Err(_) => Err("request deadline exceeded".to_string()),
            }
        });
        let abort = guest.abort_handle();
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(Ok(response))) => response,
            Ok(Ok(Err(code))) => text(500, &format!("the component failed the request: {code:?}\n")),
            // the guest ended without answering: a trap, or it never set a response
            Ok(Err(_)) => match guest.await {
                Ok(Err(what)) => text(500, &format!("{what}\n")),
                _ => text(500, "the component did not send a response\n"),
            },
            Err(_) => {
                abort.abort();
                text(504, "request deadline exceeded\n")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn outbound_grants_match_host_and_port() {
        let allowed = vec!["api.example.com:443".to_string(), "*:8080".into(), "127.0.0.1:*".into()];
        assert!(super::granted(&allowed, "api.example.com", 443));
        assert!(super::granted(&allowed, "API.example.com", 443));
        assert!(!super::granted(&allowed, "api.example.com", 80));
        assert!(super::granted(&allowed, "anything", 8080));
        assert!(super::granted(&allowed, "127.0.0.1", 9));
        assert!(!super::granted(&allowed, "evil.com", 443));
        assert!(!super::granted(&[], "api.example.com", 443), "nothing by default");
    }
}
