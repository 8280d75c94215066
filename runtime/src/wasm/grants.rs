//! What a Wasm guest may do on the network: TCP binds and listens on its declared
//! ports, connections and outbound HTTP requests only where the pod grants them. A
//! refusal is written to the container log and the agent log and, through the event
//! sink, becomes a pod event.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi_http::WasiHttpHooks;

use crate::log::{CriLog, Stream};
use crate::{ContainerConfig, EventSink};

/// What a guest may do on the network, and where a refusal is reported: the
/// container log, the agent log and (through the sink) a pod event.
#[derive(Clone)]
pub(crate) struct Grants {
    id: String,
    /// The declared `containerPort`s: the only ports a guest may listen on.
    ports: Arc<[u16]>,
    /// `wasmlet.dev/allow-outbound`: where it may connect or send HTTP requests.
    outbound: Arc<[String]>,
    log: Option<CriLog>,
    sink: Option<EventSink>,
}

impl Grants {
    pub(crate) fn new(config: &ContainerConfig, log: Option<CriLog>, sink: Option<EventSink>) -> Self {
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
    pub(crate) fn allows(&self, addr: SocketAddr, use_: SocketAddrUse) -> bool {
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
pub(crate) struct Hooks {
    grants: Grants,
}

impl Hooks {
    pub(crate) fn new(config: &ContainerConfig, log: Option<CriLog>, sink: Option<EventSink>) -> Self {
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use wasmtime_wasi::sockets::SocketAddrUse;

    #[test]
    fn socket_grants_follow_declared_ports_and_outbound_grants() {
        let mut config = crate::ContainerConfig {
            ports: vec![crate::ServePort { container_port: 8080, host_port: None }],
            ..crate::ContainerConfig::for_test("c", crate::Artifact::Rootfs { layers: Vec::new() }, "/dev/null".into())
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
