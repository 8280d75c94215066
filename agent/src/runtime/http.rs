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
use super::{ContainerConfig, Error, EventSink, Result};
use wasmtime_wasi::sockets::SocketAddrUse;

const DEADLINE: &str = "request deadline exceeded";

/// The requests refused for being over a container's cap, by all containers.
pub static REJECTED: AtomicU64 = AtomicU64::new(0);

/// What a guest may do on the network, and where a refusal is reported: the
/// container log, the agent log and (through the sink) a pod event.
#[derive(Clone)]
pub(super) struct Grants {
    id: String,
    /// The declared `containerPort`s: the only ports a guest may listen on.
    ports: Arc<[u16]>,
    /// `wasmlet.dev/allow-outbound`: where it may connect or send HTTP requests.
    outbound: Arc<[String]>,
    log: Option<CriLog>,
    sink: Option<EventSink>,
}

impl Grants {
    pub(super) fn new(config: &ContainerConfig, log: Option<CriLog>, sink: Option<EventSink>) -> Self {
        Grants {
            id: config.id.clone(),
            ports: config.ports.iter().map(|p| p.container_port).collect(),
            outbound: config.http.allow_outbound.clone().into(),
            log,
            sink,
        }
    }

    /// The `wasi:sockets` check: TCP binds to an ephemeral port or a declared one,
    /// listening on declared ports, connections only where granted; no UDP.
    pub(super) fn allows(&self, addr: SocketAddr, use_: SocketAddrUse) -> bool {
        let port = addr.port();
        let (ok, why) = match use_ {
            SocketAddrUse::TcpBind => (port == 0 || self.ports.contains(&port), "not a declared containerPort"),
            SocketAddrUse::TcpListen => (self.ports.contains(&port), "not a declared containerPort"),
            SocketAddrUse::TcpAccept => (true, ""),
            SocketAddrUse::TcpConnect => (
                granted(&self.outbound, &addr.ip().to_string(), port),
                "not granted by the pod's wasmlet.dev/allow-outbound annotation",
            ),
            _ => (false, "UDP is not granted to Wasm guests"),
        };
        if !ok {
            let what = match use_ {
                SocketAddrUse::TcpBind => "TCP bind to",
                SocketAddrUse::TcpListen => "TCP listen on",
                SocketAddrUse::TcpConnect => "TCP connect to",
                _ => "UDP use of",
            };
            self.deny(&format!("{what} {addr} denied: {why}"));
        }
        ok
    }

    fn deny(&self, message: &str) {
        if let Some(log) = &self.log {
            let _ = log.write(Stream::Stderr, format!("wasmlet: {message}\n").as_bytes());
        }
        tracing::info!(container = %self.id, "{message}");
        if let Some(sink) = &self.sink {
            sink(&self.id, "NetworkAccessDenied", message);
        }
    }
}

/// The `wasi:http` hooks of one guest: outbound requests only where granted.
pub(super) struct Hooks {
    grants: Grants,
}

impl Hooks {
    pub(super) fn new(config: &ContainerConfig, log: Option<CriLog>, sink: Option<EventSink>) -> Self {
        Hooks { grants: Grants::new(config, log, sink) }
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
        if !granted(&self.grants.outbound, &host, port) {
            self.grants.deny(&format!(
                "outbound HTTP request to {host}:{port} denied: not granted by the pod's wasmlet.dev/allow-outbound annotation"
            ));
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

/// Binds the container's ports. In a pod with a network namespace, each
/// `containerPort` on every address of that namespace (the pod IP, and the pod's
/// localhost that its Linux containers share; the sandbox publishes hostPorts).
/// Otherwise each `containerPort` on the host's loopback (where probes of a Wasm pod
/// look), and its `hostPort`, if any, on every address.
pub(super) async fn bind(config: &ContainerConfig) -> Result<Vec<TcpListener>> {
    if config.ports.is_empty() {
        return Err(Error::Create {
            id: config.id.clone(),
            reason: "an HTTP component needs a containerPort to serve on".into(),
        });
    }
    if let Some(netns) = config.netns.clone() {
        let ports: Vec<u16> = config.ports.iter().map(|p| p.container_port).collect();
        let fail = |reason: String| Error::Create { id: config.id.clone(), reason };
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
        .map_err(|e| fail(e.to_string()))?
        .map_err(|_| fail("the namespace thread panicked".into()))?
        .map_err(|e| fail(format!("cannot listen: {e}")))?;
        return made.into_iter().map(|l| TcpListener::from_std(l).map_err(|e| fail(e.to_string()))).collect();
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
pub(super) async fn serve(
    pre: ProxyPre<P2Host>,
    config: ContainerConfig,
    log: CriLog,
    listeners: Vec<TcpListener>,
    sink: Option<EventSink>,
) {
    let shared = Arc::new(Shared {
        sink,
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
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // out of descriptors, say: back off rather than spin
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
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
    pre: ProxyPre<P2Host>,
    config: ContainerConfig,
    log: CriLog,
    limit: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    async fn handle(&self, req: hyper::Request<Incoming>) -> hyper::Response<HyperOutgoingBody> {
        let Ok(permit) = self.limit.clone().try_acquire_owned() else {
            REJECTED.fetch_add(1, Ordering::Relaxed);
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
                        format!("memory limit reached: {}", super::wasm::first_line(&e))
                    } else {
                        super::wasm::first_line(&e)
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use wasmtime_wasi::sockets::SocketAddrUse;

    #[test]
    fn socket_grants_follow_declared_ports_and_outbound_grants() {
        let mut config = crate::runtime::ContainerConfig {
            ports: vec![crate::runtime::ServePort { container_port: 8080, host_port: None }],
            ..crate::runtime::ContainerConfig::for_test(
                "c",
                crate::runtime::Artifact::Rootfs { layers: Vec::new() },
                "/dev/null".into(),
            )
        };
        config.http.allow_outbound = vec!["10.0.0.1:5432".into()];
        let g = super::Grants::new(&config, None, None);
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(g.allows(a("127.0.0.1:8080"), SocketAddrUse::TcpBind));
        assert!(g.allows(a("0.0.0.0:0"), SocketAddrUse::TcpBind), "an implicit bind for connect");
        assert!(!g.allows(a("127.0.0.1:9090"), SocketAddrUse::TcpBind));
        assert!(g.allows(a("0.0.0.0:8080"), SocketAddrUse::TcpListen));
        assert!(!g.allows(a("0.0.0.0:0"), SocketAddrUse::TcpListen), "no listening on an ephemeral port");
        assert!(g.allows(a("10.0.0.1:5432"), SocketAddrUse::TcpConnect));
        assert!(!g.allows(a("10.0.0.2:5432"), SocketAddrUse::TcpConnect));
        assert!(!g.allows(a("10.0.0.1:53"), SocketAddrUse::UdpBind), "no UDP");
    }

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
