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
use wasmtime_wasi_http::WasiHttpCtx;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::grants::Hooks;
use super::host::{MemoryCap, P2Host, first_line, prepare, wasi_builder};
use crate::log::{CriLog, Stream};
use crate::{ConfigError, ContainerConfig, Error, EventSink, Result};

const DEADLINE: &str = "request deadline exceeded";

fn text(status: u16, body: &str) -> hyper::Response<HyperOutgoingBody> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}).boxed_unsync())
        .expect("a valid response")
}

/// Binds the container's ports. In a pod with a network namespace, each
/// `containerPort` on every address of that namespace (the pod IP, and the pod's
/// localhost that its Linux containers share; the sandbox publishes hostPorts).
/// Otherwise each `containerPort` on the host's loopback (where probes of a Wasm pod
/// look), and its `hostPort`, if any, on every address.
pub(super) async fn bind(config: &ContainerConfig) -> Result<Vec<TcpListener>> {
    if config.ports.is_empty() {
        return Err(Error::InvalidConfig { id: config.id.clone(), source: ConfigError::NoPorts });
    }
    if let Some(netns) = config.netns.clone() {
        let ns_path = netns.clone();
        let ports: Vec<u16> = config.ports.iter().map(|p| p.container_port).collect();
        let fail = |source: std::io::Error| Error::Io {
            context: format!("serve {} in the pod network", config.id),
            path: ns_path.clone(),
            source,
        };
        // a thread of our own enters the namespace (never a pooled one); a socket stays
        // in the namespace it was made in
        let made = tokio::task::spawn_blocking(move || {
            std::thread::spawn(move || -> std::io::Result<Vec<std::net::TcpListener>> {
                use std::os::fd::AsFd as _;
                let ns = std::fs::File::open(&netns)?;
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                let mut out = Vec::new();
                for p in ports {
                    let l = std::net::TcpListener::bind(("0.0.0.0", p))
                        .map_err(|e| std::io::Error::new(e.kind(), format!("port {p} in the pod network: {e}")))?;
                    l.set_nonblocking(true)?;
                    out.push(l);
                }
                Ok(out)
            })
            .join()
        })
        .await
        .map_err(|e| fail(std::io::Error::other(e)))?
        .map_err(|_| fail(std::io::Error::other("the namespace thread panicked")))?
        .map_err(fail)?;
        return made.into_iter().map(|l| TcpListener::from_std(l).map_err(fail)).collect();
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
        let l = TcpListener::bind(addr).await.map_err(|source| Error::InvalidConfig {
            id: config.id.clone(),
            source: ConfigError::Listen { addr, source },
        })?;
        listeners.push(l);
    }
    Ok(listeners)
}

/// Serves until aborted. Each connection is a task; each request a fresh instance.
pub(super) async fn serve(
    pre: ProxyPre<P2Host>,
    config: ContainerConfig,
    log: CriLog,
    listeners: Vec<TcpListener>,
    sink: Option<EventSink>,
    rejected: Arc<AtomicU64>,
) {
    let shared = Arc::new(Shared {
        sink,
        rejected,
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
            let mut refusing = false;
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // out of descriptors, say: back off rather than spin
                        if !std::mem::replace(&mut refusing, true) {
                            tracing::warn!(error = %e, "cannot accept connections; retrying");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                refusing = false;
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
    sink: Option<EventSink>,
    /// The runtime's count of requests refused for being over a container's cap.
    rejected: Arc<AtomicU64>,
    pre: ProxyPre<P2Host>,
    config: ContainerConfig,
    log: CriLog,
    limit: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    async fn handle(&self, req: hyper::Request<Incoming>) -> hyper::Response<HyperOutgoingBody> {
        let Ok(permit) = self.limit.clone().try_acquire_owned() else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            // one event, counted up at each refusal
            if let Some(sink) = &self.sink {
                let message = format!(
                    "Request refused with 503: {} requests already in flight (wasmlet.dev/http-max-concurrency)",
                    self.config.http.max_concurrency
                );
                sink(&self.config.id, "TooManyRequests", &message);
            }
            return text(503, "too many requests in flight for this container\n");
        };
        let deadline = Duration::from_millis(self.config.http.request_timeout_ms);
        let cap = MemoryCap::new(self.config.memory_limit);
        let mut builder = match wasi_builder(&self.config, &self.log, self.sink.clone()) {
            Ok(b) => b,
            Err(e) => return text(500, &format!("{e}\n")),
        };
        let host = P2Host {
            ctx: builder.build(),
            table: ResourceTable::new(),
            cap,
            http: WasiHttpCtx::new(),
            hooks: Hooks::new(&self.config, Some(self.log.clone()), self.sink.clone()),
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
                        format!("memory limit reached: {}", first_line(&e))
                    } else {
                        first_line(&e)
                    };
                    let _ = log.write(Stream::Stderr, format!("wasmlet: request failed: {what}\n").as_bytes());
                    what
                }),
                Err(_) => Err(DEADLINE.to_string()),
            }
        });
        let abort = guest.abort_handle();
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(Ok(response))) => response,
            Ok(Ok(Err(code))) => text(500, &format!("the component failed the request: {code:?}\n")),
            // the guest ended without answering: a trap, or it never set a response
            Ok(Err(_)) => match guest.await {
                Ok(Err(what)) if what == DEADLINE => text(504, &format!("{what}\n")),
                Ok(Err(what)) => text(500, &format!("{what}\n")),
                _ => text(500, "the component did not send a response\n"),
            },
            Err(_) => {
                abort.abort();
                text(504, &format!("{DEADLINE}\n"))
            }
        }
    }
}
