//! Probes and lifecycle hooks: the handlers (exec, httpGet, tcpSocket, grpc, sleep) and the
//! probe loop of one container instance, with the kubelet's semantics (§2 of
//! `kubelet-semantics.md`): a startup probe gates the others; liveness and startup
//! report a kill after `failureThreshold` consecutive failures; readiness flips after
//! `successThreshold` successes or `failureThreshold` failures; every failed attempt
//! is reported for an `Unhealthy` event.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, LifecycleHandler, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use wasmlet_runtime::{RuntimeKind, Runtimes};

/// The User-Agent the kubelet's HTTP probes send (`kube-probe/<major>.<minor>`).
pub const USER_AGENT: &str = "kube-probe/1.33";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handler {
    Exec(Vec<String>),
    Http {
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        port: u16,
    },
    /// The standard gRPC health check (`grpc.health.v1.Health/Check`), over h2c.
    Grpc {
        port: u16,
        service: String,
    },
    Sleep(Duration),
}

/// Where a handler acts: the container (for exec) and the pod's address.
#[derive(Clone, Debug)]
pub struct Target {
    pub runtime: Arc<Runtimes>,
    pub kind: RuntimeKind,
    pub id: String,
    pub host: String,
}

fn port(p: &IntOrString, c: &Container) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(s) => s.parse().or_else(|_| {
            c.ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(s))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .ok_or_else(|| format!("no port named {s:?} in container {}", c.name))
        }),
    }
}

fn http(h: &HTTPGetAction, c: &Container) -> Result<Handler, String> {
    Ok(Handler::Http {
        port: port(&h.port, c)?,
        path: h.path.clone().unwrap_or_else(|| "/".into()),
        headers: h.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect(),
    })
}

pub fn probe_handler(p: &Probe, c: &Container) -> Result<Handler, String> {
    if let Some(e) = &p.exec {
        Ok(Handler::Exec(e.command.clone().unwrap_or_default()))
    } else if let Some(h) = &p.http_get {
        http(h, c)
    } else if let Some(t) = &p.tcp_socket {
        Ok(Handler::Tcp { port: port(&t.port, c)? })
    } else if let Some(g) = &p.grpc {
        let port = u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))?;
        Ok(Handler::Grpc { port, service: g.service.clone().unwrap_or_default() })
    } else {
        Err("probe has no handler".into())
    }
}

pub fn hook_handler(h: &LifecycleHandler, c: &Container) -> Result<Handler, String> {
    if let Some(e) = &h.exec {
        Ok(Handler::Exec(e.command.clone().unwrap_or_default()))
    } else if let Some(g) = &h.http_get {
        http(g, c)
    } else if let Some(s) = &h.sleep {
        Ok(Handler::Sleep(Duration::from_secs(s.seconds.max(0) as u64)))
    } else {
        Err("hook has no handler".into())
    }
}

/// Runs a handler once; `Err` carries what went wrong, in the kubelet's words where it
/// has them.
pub async fn run(h: &Handler, t: &Target, timeout: Duration) -> Result<(), String> {
    match h {
        Handler::Sleep(d) => {
            tokio::time::sleep(*d).await;
            Ok(())
        }
        Handler::Exec(cmd) => {
            if t.kind != RuntimeKind::Linux {
                return Err("exec handlers run in Linux containers only".into());
            }
            match tokio::time::timeout(timeout, t.runtime.exec_sync(t.kind, &t.id, cmd)).await {
                Err(_) => Err(format!("command {cmd:?} timed out")),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok(0)) => Ok(()),
                Ok(Ok(code)) => Err(format!("command {cmd:?} exited with {code}")),
            }
        }
        Handler::Tcp { port } => {
            let addr = format!("{}:{port}", t.host);
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
                Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
                Ok(Err(e)) => Err(format!("dial tcp {addr}: {e}")),
                Ok(Ok(_)) => Ok(()),
            }
        }
        Handler::Grpc { port, service } => {
            let addr = format!("{}:{port}", t.host);
            match tokio::time::timeout(timeout, grpc_check(&addr, service)).await {
                Err(_) => Err(format!("timeout: health rpc did not complete within {timeout:?}")),
                Ok(Err(e)) => Err(e),
                Ok(Ok(1)) => Ok(()),
                Ok(Ok(status)) => Err(format!("service unhealthy (responded with {:?})", serving_status(status))),
            }
        }
        Handler::Http { port, path, headers } => {
            let addr = format!("{}:{port}", t.host);
            let url = format!("http://{addr}{path}");
            match tokio::time::timeout(timeout, http_get(&addr, path, headers)).await {
                Err(_) => Err(format!("Get \"{url}\": context deadline exceeded")),
                Ok(Err(e)) => Err(format!("Get \"{url}\": {e}")),
                Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
                Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
            }
        }
    }
}

/// The names of `grpc.health.v1.HealthCheckResponse.ServingStatus`.
fn serving_status(n: u64) -> &'static str {
    match n {
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "UNKNOWN",
    }
}

/// One `grpc.health.v1.Health/Check` call over HTTP/2 without TLS, as the kubelet's
/// gRPC probe makes it; the serving status. The messages are small enough to encode
/// by hand: the request is field 1 (service, a string), the response field 1 (status,
/// an enum), each framed by gRPC's 5-byte prefix.
async fn grpc_check(addr: &str, service: &str) -> Result<u64, String> {
    use http_body_util::BodyExt;
    let fail = |e: &dyn std::fmt::Display| format!("failed to connect service {addr:?}: {e}");
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| fail(&e))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.map_err(|e| fail(&e))?;
    let driver = tokio::spawn(conn);
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a);
        varint(service.len() as u64, &mut message);
        message.extend_from_slice(service.as_bytes());
    }
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let request = hyper::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", USER_AGENT)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|e| fail(&e))?;
    let result = async {
        let response = send.send_request(request).await.map_err(|e| fail(&e))?;
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.map_err(|e| fail(&e))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let header = |k: &str| {
            trailers.get(k).or_else(|| parts.headers.get(k)).and_then(|v| v.to_str().ok()).map(str::to_string)
        };
        let code = header("grpc-status").unwrap_or_else(|| "2".into());
        if code != "0" {
            let message = header("grpc-message").unwrap_or_default();
            return Err(format!("rpc error: code = {} desc = {message}", grpc_code(&code)));
        }
        let data = collected.to_bytes();
        let message = data.get(5..).ok_or_else(|| "health rpc: short response".to_string())?;
        Ok(health_status(message))
    }
    .await;
    driver.abort();
    result
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Field 1 (a varint) of a HealthCheckResponse; 0 (UNKNOWN) when absent.
fn health_status(mut m: &[u8]) -> u64 {
    let read = |m: &mut &[u8]| -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = m.split_first()?;
            *m = rest;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    };
    while let Some(key) = read(&mut m) {
        match (key >> 3, key & 7) {
            (1, 0) => return read(&mut m).unwrap_or(0),
            (_, 0) => {
                read(&mut m);
            }
            (_, 2) => {
                let len = read(&mut m).unwrap_or(0) as usize;
                m = m.get(len..).unwrap_or_default();
            }
            (_, 1) => m = m.get(8..).unwrap_or_default(),
            (_, 5) => m = m.get(4..).unwrap_or_default(),
            _ => return 0,
        }
    }
    0
}

fn grpc_code(code: &str) -> &str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    code.parse::<usize>().ok().and_then(|i| NAMES.get(i).copied()).unwrap_or(code)
}

/// One HTTP/1.1 GET; the status code. Default headers as the kubelet sends them,
/// replaced by a header of the same name (and dropped when its value is empty).
async fn http_get(addr: &str, path: &str, headers: &[(String, String)]) -> std::io::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut all: Vec<(String, String)> =
        vec![("Host".into(), addr.into()), ("User-Agent".into(), USER_AGENT.into()), ("Accept".into(), "*/*".into())];
    for (k, v) in headers {
        all.retain(|(n, _)| !n.eq_ignore_ascii_case(k));
        all.push((k.clone(), v.clone()));
    }
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    for (k, v) in all.iter().filter(|(_, v)| !v.is_empty()) {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| {
        std::io::Error::other(format!("malformed HTTP response {:?}", line.lines().next().unwrap_or("")))
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Liveness,
    Readiness,
    Startup,
}

impl Kind {
    pub fn title(self) -> &'static str {
        match self {
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
            Kind::Startup => "Startup",
        }
    }
}

/// A probe with the defaults applied.
#[derive(Clone, Debug)]
pub struct Spec {
    pub handler: Handler,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Spec {
    pub fn new(p: &Probe, c: &Container) -> Result<Spec, String> {
        let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
        Ok(Spec {
            handler: probe_handler(p, c)?,
            initial_delay: secs(p.initial_delay_seconds, 0),
            period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        })
    }
}

/// What the probe loop tells the pod worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// One failed attempt (an `Unhealthy` event).
    Failed {
        kind: Kind,
        message: String,
    },
    Ready(bool),
    StartupPassed,
    /// Liveness or startup failed `failureThreshold` times in a row: restart it.
    Kill(Kind),
}

/// Runs one container instance's probes until a kill is reported or the task is
/// aborted (the instance ended).
pub async fn probe_loop(
    startup: Option<Spec>,
    liveness: Option<Spec>,
    readiness: Option<Spec>,
    target: Target,
    report: impl Fn(Outcome) + Send + Sync,
) {
    // startup: done at the first success; liveness: runs until it kills
    if let Some(s) = &startup
        && !until_threshold(s, Kind::Startup, &target, &report, true).await
    {
        return;
    }
    let live = async {
        if let Some(s) = &liveness {
            until_threshold(s, Kind::Liveness, &target, &report, false).await;
        }
    };
    let ready = async {
        let Some(s) = &readiness else { return };
        tokio::time::sleep(s.initial_delay).await;
        let (mut ok, mut fails, mut state) = (0, 0, None::<bool>);
        loop {
            match run(&s.handler, &target, s.timeout).await {
                Ok(()) => {
                    (ok, fails) = (ok + 1, 0);
                    if ok >= s.success_threshold && state != Some(true) {
                        state = Some(true);
                        report(Outcome::Ready(true));
                    }
                }
                Err(message) => {
                    (ok, fails) = (0, fails + 1);
                    report(Outcome::Failed { kind: Kind::Readiness, message });
                    if fails >= s.failure_threshold && state != Some(false) {
                        state = Some(false);
                        report(Outcome::Ready(false));
                    }
                }
            }
            tokio::time::sleep(s.period).await;
        }
    };
    tokio::join!(live, ready);
}

/// Runs `s` every period, reporting each failure; after `failureThreshold` failures in
/// a row reports a kill and returns false. With `pass_ends`, the first success reports
/// `StartupPassed` and returns true; otherwise a success only resets the count.
async fn until_threshold(
    s: &Spec,
    kind: Kind,
    target: &Target,
    report: &(impl Fn(Outcome) + Sync),
    pass_ends: bool,
) -> bool {
    tokio::time::sleep(s.initial_delay).await;
    let mut fails = 0;
    loop {
        match run(&s.handler, target, s.timeout).await {
            Ok(()) if pass_ends => {
                report(Outcome::StartupPassed);
                return true;
            }
            Ok(()) => fails = 0,
            Err(message) => {
                fails += 1;
                report(Outcome::Failed { kind, message });
                if fails >= s.failure_threshold {
                    report(Outcome::Kill(kind));
                    return false;
                }
            }
        }
        tokio::time::sleep(s.period).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn grpc_messages_encode_and_decode_by_hand() {
        let mut v = Vec::new();
        super::varint(300, &mut v);
        assert_eq!(v, [0xac, 0x02]);
        assert_eq!(super::health_status(&[0x08, 0x01]), 1);
        assert_eq!(super::health_status(&[0x12, 0x02, b'h', b'i', 0x08, 0x02]), 2, "unknown fields are skipped");
        assert_eq!(super::health_status(&[]), 0, "an empty message is UNKNOWN");
        assert_eq!(super::grpc_code("5"), "NotFound");
        assert_eq!(super::serving_status(2), "NOT_SERVING");
    }

    use super::*;
    use std::sync::Mutex;

    fn target() -> Target {
        Target {
            runtime: Arc::new(Runtimes::fake(wasmlet_runtime::fake::FakeRuntime::new())),
            kind: RuntimeKind::Wasm,
            id: "x".into(),
            host: "127.0.0.1".into(),
        }
    }

    /// A server that answers each connection with the next status in `codes` and
    /// records the request heads.
    async fn server(codes: Vec<u16>) -> (u16, Arc<Mutex<Vec<String>>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        tokio::spawn(async move {
            for code in codes.into_iter().cycle() {
                let (mut c, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 2048];
                let n = c.read(&mut buf).await.unwrap();
                s2.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let _ = c.write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        (port, seen)
    }

    fn spec(handler: Handler, success: u32, failure: u32) -> Spec {
        Spec {
            handler,
            initial_delay: Duration::ZERO,
            period: Duration::from_millis(20),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[tokio::test]
    async fn http_success_is_200_to_399_with_the_kubelet_headers() {
        let (port, seen) = server(vec![200, 302, 404, 500]).await;
        let t = target();
        let h = Handler::Http {
            port,
            path: "/healthz".into(),
            headers: vec![("X-Custom".into(), "1".into()), ("Accept".into(), "".into())],
        };
        let results: Vec<bool> = futures_util::future::join_all((0..4).map(|_| run(&h, &t, Duration::from_secs(1))))
            .await
            .into_iter()
            .map(|r| r.is_ok())
            .collect();
        let mut sorted = results.clone();
        sorted.sort();
        assert_eq!(sorted, [false, false, true, true]);
        let head = seen.lock().unwrap()[0].clone();
        assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("User-Agent: {USER_AGENT}\r\n")) && head.contains("X-Custom: 1\r\n"), "{head}");
        assert!(!head.contains("Accept:"), "an empty value removes a default header: {head}");
    }

    #[tokio::test]
    async fn tcp_needs_a_listener() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let t = target();
        run(&Handler::Tcp { port }, &t, Duration::from_secs(1)).await.unwrap();
        drop(l);
        assert!(run(&Handler::Tcp { port }, &t, Duration::from_secs(1)).await.unwrap_err().starts_with("dial tcp"));
        assert!(run(&Handler::Exec(vec!["true".into()]), &t, Duration::from_secs(1)).await.is_err(), "no exec in Wasm");
    }

    #[tokio::test]
    async fn thresholds_and_the_startup_gate() {
        // startup fails twice then passes; liveness then fails 3 times in a row: a kill
        let (port, _) = server(vec![500, 500, 200, 500, 500, 500]).await;
        let t = target();
        let h = Handler::Http { port, path: "/".into(), headers: vec![] };
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        probe_loop(Some(spec(h.clone(), 1, 5)), Some(spec(h.clone(), 1, 3)), None, t, move |o| {
            g.lock().unwrap().push(o)
        })
        .await;
        let got = got.lock().unwrap().clone();
        let kinds: Vec<String> = got
            .iter()
            .map(|o| match o {
                Outcome::Failed { kind, .. } => format!("fail {kind:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "fail Startup",
                "fail Startup",
                "StartupPassed",
                "fail Liveness",
                "fail Liveness",
                "fail Liveness",
                "Kill(Liveness)"
            ]
        );
    }

    #[tokio::test]
    async fn readiness_flips_on_thresholds_and_never_kills() {
        let (port, _) = server(vec![200, 200, 500, 500, 200]).await;
        let t = target();
        let h = Handler::Http { port, path: "/".into(), headers: vec![] };
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let task = tokio::spawn(probe_loop(None, None, Some(spec(h, 2, 2)), t, move |o| {
            if !matches!(o, Outcome::Failed { .. }) {
                g.lock().unwrap().push(o)
            }
        }));
        tokio::time::sleep(Duration::from_millis(400)).await;
        task.abort();
        let got = got.lock().unwrap().clone();
        // 200,200 → ready; 500,500 → unready; 200 (one of two needed), 200 → ready
        assert_eq!(got[..3], [Outcome::Ready(true), Outcome::Ready(false), Outcome::Ready(true)]);
    }
}
