//! `kubectl exec` as the API server brings it to a kubelet: an HTTP/1.1 request upgraded
//! to SPDY/3.1, the remote-command protocol `v4.channel.k8s.io` (v1–v3 are older and no
//! current API server needs them). The client opens one stream per channel, naming it
//! in the `streamType` header: `error`, `stdin`, `stdout`, `stderr`, `resize`. Once the
//! streams the request asks for are all there, the command runs; its output goes out on
//! stdout and stderr, and its end on the error stream as a `metav1.Status`.
//!
//! The process side is the local API's exec relay: this module turns SPDY streams into
//! its frames and back, so both APIs run commands the same way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use spdy::{Codec, FLAG_FIN, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http::exec::{EXIT, RESIZE, STDERR, STDIN, STDIN_END, STDOUT, read_frame, write_frame};
use crate::http::{ApiError, Body, full};
use crate::pod::Manager;

/// The remote-command protocol this node speaks.
pub const PROTOCOL: &str = "v4.channel.k8s.io";
/// How long the client has to open its streams (the kubelet's `streamCreationTimeout`).
const STREAM_WAIT: Duration = Duration::from_secs(30);

fn flag(query: &[(String, String)], key: &str) -> bool {
    matches!(crate::http::get(query, key), Some("1" | "true"))
}

/// Checks the upgrade (SPDY/3.1, `v4.channel.k8s.io`) and reads which streams are asked for.
fn negotiate(req: &Request<Incoming>, query: &[(String, String)]) -> Result<Wanted, ApiError> {
    check_spdy(req)?;
    Ok(wanted(query))
}

/// The values of a header that lists protocols (repeated, or comma-separated).
pub(crate) fn offered(req: &Request<Incoming>, header: &str) -> Vec<String> {
    req.headers()
        .get_all(header)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .collect()
}

/// Checks that the request upgrades to SPDY/3.1 speaking `v4.channel.k8s.io`.
pub(crate) fn check_spdy(req: &Request<Incoming>) -> Result<(), ApiError> {
    let upgrade = req.headers().get(hyper::header::UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("unable to upgrade: the connection asks for {upgrade:?}; this node speaks SPDY/3.1"),
        ));
    }
    let offered = offered(req, "x-stream-protocol-version");
    if !offered.iter().any(|p| p == PROTOCOL) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports [{PROTOCOL}]"
            ),
        ));
    }
    Ok(())
}

/// Which streams the request's query asks for.
fn wanted(query: &[(String, String)]) -> Wanted {
    Wanted {
        stdin: flag(query, "input") || flag(query, "stdin"),
        stdout: flag(query, "output") || flag(query, "stdout"),
        stderr: flag(query, "error") || flag(query, "stderr"),
        tty: flag(query, "tty"),
    }
}

pub(crate) type Upgraded = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

/// Runs `session` on the connection once the 101 has gone out.
pub(crate) fn upgrade<F, Fut>(req: Request<Incoming>, what: &'static str, session: F)
where
    F: FnOnce(Upgraded) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send,
{
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                if let Err(e) = session(hyper_util::rt::TokioIo::new(upgraded)).await {
                    tracing::debug!(error = %e, "{what} session ended");
                }
            }
            Err(e) => tracing::warn!(error = %e, "{what} upgrade failed"),
        }
    });
}

/// The 101 that starts a SPDY session speaking `protocol`.
pub(crate) fn switching(protocol: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", protocol)
        .body(full(Bytes::new()))
        .expect("valid response")
}

/// Answers `/exec/{ns}/{pod}/{container}`: upgrades, then runs the command.
pub async fn exec(
    mgr: Arc<Manager>,
    (ns, pod, container): (String, String, String),
    query: &[(String, String)],
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let command: Vec<String> = query.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect();
    if command.is_empty() {
        return Err(bad("you must specify at least 1 command".into()));
    }
    if super::websocket::is_websocket(&req) {
        let (switching, proto) = super::websocket::accept(&req)?;
        let want = wanted(query);
        let session = mgr.exec(&crate::pod::key(&ns, &pod), Some(&container), &command, want.tty).await?;
        upgrade(req, "exec", move |io| super::websocket::run_exec(io, proto, session, want, command));
        return Ok(switching);
    }
    let want = negotiate(&req, query)?;
    let session = mgr.exec(&crate::pod::key(&ns, &pod), Some(&container), &command, want.tty).await?;
    upgrade(req, "exec", move |io| run(io, session, want, command));
    Ok(switching(PROTOCOL))
}

/// Answers `/attach/{ns}/{pod}/{container}`: the container's output from now on, on
/// stdout and stderr, until it exits. wasmlet's containers have no stdin (the field is
/// refused), so there is nothing to attach input or a terminal to.
pub async fn attach(
    mgr: Arc<Manager>,
    (ns, pod, container): (String, String, String),
    query: &[(String, String)],
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let ws = super::websocket::is_websocket(&req);
    let want = if ws { wanted(query) } else { negotiate(&req, query)? };
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    if want.stdin || want.tty {
        return Err(bad(format!(
            "container {container} has no stdin or terminal to attach to (stdin is not supported)"
        )));
    }
    let key = crate::pod::key(&ns, &pod);
    let rec = mgr.get(&key)?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("pod {key} not found")))?;
    let idx = rec
        .plan
        .containers
        .iter()
        .position(|c| c.name == container)
        .ok_or_else(|| bad(format!("container {container} is not valid for pod {pod}")))?;
    let status = &rec.status.containers[idx];
    if !matches!(status.state, crate::pod::state::State::Running { .. }) {
        return Err(bad(format!("container {container} is not running")));
    }
    let (instance, path) = (status.instances, mgr.log_path(&rec, &container, status.instances));
    let running = Box::new(move || {
        mgr.get(&key).ok().flatten().is_some_and(|r| {
            let c = &r.status.containers[idx];
            c.instances == instance && matches!(c.state, crate::pod::state::State::Running { .. })
        })
    });
    let tail = Tail { path, running };
    if ws {
        let (switching, proto) = super::websocket::accept(&req)?;
        upgrade(req, "attach", move |io| super::websocket::run_attach(io, proto, want, tail));
        return Ok(switching);
    }
    upgrade(req, "attach", move |io| run_attach(io, want, tail));
    Ok(switching(PROTOCOL))
}

/// The log an attach follows, and whether its container instance still runs.
pub(crate) struct Tail {
    pub path: std::path::PathBuf,
    pub running: Box<dyn Fn() -> bool + Send + Sync>,
}

type Writer = (tokio::sync::mpsc::Sender<Frame>, tokio::task::JoinHandle<()>);

/// The connection's one writer: frames are encoded (one header-compression stream) and
/// written in the order they are sent; a GOAWAY ends the connection.
fn spawn_writer<W: tokio::io::AsyncWrite + Unpin + Send + 'static>(
    mut wr: W,
    codec: Arc<std::sync::Mutex<Codec>>,
) -> Writer {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Frame>(64);
    let task = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            let bytes = codec.lock().unwrap_or_else(|e| e.into_inner()).encode(&f);
            if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                return;
            }
            if matches!(f, Frame::GoAway { .. }) {
                let _ = wr.shutdown().await;
                return;
            }
        }
    });
    (tx, task)
}

/// Waits (up to 30 s) for the client to open the streams it asked for, answering each.
/// Returns them by type, and any frames that came after them.
async fn open_streams<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    codec: &std::sync::Mutex<Codec>,
    out: &tokio::sync::mpsc::Sender<Frame>,
    want: Wanted,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(HashMap<String, u32>, Vec<Frame>)>> {
    let mut streams: HashMap<String, u32> = HashMap::new();
    let mut early: Vec<Frame> = Vec::new();
    let mut chunk = vec![0u8; 32 * 1024];
    let deadline = tokio::time::Instant::now() + STREAM_WAIT;
    while !want.satisfied(&streams) {
        let n = tokio::time::timeout_at(deadline, rd.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("the client did not open its streams in time"))??;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        for frame in decode_all(codec, buf)? {
            match frame {
                Frame::SynStream { id, headers, .. } => {
                    let kind = spdy::header(&headers, "streamtype").unwrap_or("").to_string();
                    let _ = out.send(Frame::SynReply { id, flags: 0, headers: vec![] }).await;
                    streams.insert(kind, id);
                }
                Frame::Ping { id } => {
                    let _ = out.send(Frame::Ping { id }).await;
                }
                f @ Frame::Data { .. } => early.push(f),
                _ => {}
            }
        }
    }
    Ok(Some((streams, early)))
}

/// Ends a session: FIN on the streams the node writes, then GOAWAY.
async fn finish(out: &tokio::sync::mpsc::Sender<Frame>, streams: &HashMap<String, u32>) {
    for kind in ["stdout", "stderr", "error"] {
        if let Some(&id) = streams.get(kind) {
            let _ = out.send(Frame::Data { id, flags: FLAG_FIN, data: vec![] }).await;
        }
    }
    let last_good = streams.values().copied().max().unwrap_or(0);
    let _ = out.send(Frame::GoAway { last_good, status: 0 }).await;
}

pub(crate) async fn run_attach<S>(io: S, want: Wanted, t: Tail) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(io);
    let codec = Arc::new(std::sync::Mutex::new(Codec::new()));
    let (out, writer) = spawn_writer(wr, codec.clone());
    let mut buf = Vec::new();
    let Some((streams, _)) = open_streams(&mut rd, &codec, &out, want, &mut buf).await? else { return Ok(()) };
    let detached = async move {
        let mut chunk = vec![0u8; 4096];
        while matches!(rd.read(&mut chunk).await, Ok(n) if n > 0) {}
    };
    let emit = |stderr: bool, data: Vec<u8>| {
        let kind = if stderr && streams.contains_key("stderr") { "stderr" } else { "stdout" };
        let (out, id) = (out.clone(), streams.get(kind).copied());
        async move {
            if let Some(id) = id {
                let _ = out.send(Frame::Data { id, flags: 0, data }).await;
            }
        }
    };
    if follow(&t, emit, detached).await
        && let Some(&id) = streams.get("error")
    {
        let status = exit_status(0, &[]).to_string().into_bytes();
        let _ = out.send(Frame::Data { id, flags: 0, data: status }).await;
    }
    finish(&out, &streams).await;
    drop(out);
    let _ = writer.await;
    Ok(())
}

/// Follows a container's log from its current end, handing each line to `emit`
/// (whether it is stderr, and the bytes) until the container stops running (true) or
/// `detached` resolves (false).
pub(crate) async fn follow<F, Fut>(t: &Tail, mut emit: F, detached: impl std::future::Future<Output = ()>) -> bool
where
    F: FnMut(bool, Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    tokio::pin!(detached);
    // output from the moment of attaching: what the log gains from its current end
    let mut offset = std::fs::metadata(&t.path).map(|m| m.len()).unwrap_or(0);
    let mut partial = Vec::new();
    loop {
        let running = (t.running)();
        let mut fresh = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&t.path) {
            use std::io::{Read, Seek};
            if f.seek(std::io::SeekFrom::Start(offset)).is_ok() {
                let _ = f.read_to_end(&mut fresh);
            }
        }
        offset += fresh.len() as u64;
        partial.extend_from_slice(&fresh);
        let complete = partial.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for r in wasmlet_runtime::log::records(&partial[..complete]) {
            let mut data = r.line.to_vec();
            if r.full {
                data.push(b'\n');
            }
            emit(r.stream == "stderr", data).await;
        }
        partial.drain(..complete);
        if !running {
            return true;
        }
        tokio::select! {
            _ = &mut detached => return false,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Wanted {
    /// Whether the streams the request asked for are all open (a terminal has no stderr).
    fn satisfied(&self, streams: &HashMap<String, u32>) -> bool {
        let has = |k: &str| streams.contains_key(k);
        has("error")
            && (!self.stdin || has("stdin"))
            && (!self.stdout || has("stdout"))
            && (!self.stderr || self.tty || has("stderr"))
            && (!self.tty || has("resize"))
    }
}

/// The error stream's last word, as the kubelet writes it.
pub fn exit_status(code: i32, command: &[String]) -> serde_json::Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

pub(crate) async fn run<S>(
    io: S,
    session: wasmlet_runtime::ExecSession,
    want: Wanted,
    command: Vec<String>,
) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(io);
    let codec = Arc::new(std::sync::Mutex::new(Codec::new()));
    let (out_tx, writer) = spawn_writer(wr, codec.clone());
    let mut buf = Vec::with_capacity(16 * 1024);
    let Some((streams, early)) = open_streams(&mut rd, &codec, &out_tx, want, &mut buf).await? else { return Ok(()) };
    // the command runs through the local API's relay, at the far end of a pipe
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut relay_rd, mut relay_wr) = tokio::io::split(ours);
    let relay = tokio::spawn(crate::http::exec::relay(theirs, session, want.stdin));
    let mut pump = {
        let (out_tx, streams) = (out_tx.clone(), streams.clone());
        tokio::spawn(async move {
            while let Ok(Some((kind, payload))) = read_frame(&mut relay_rd).await {
                let stream = match kind {
                    STDOUT => streams.get("stdout"),
                    STDERR => streams.get("stderr").or(streams.get("stdout")),
                    EXIT => {
                        let code = payload.get(..4).map_or(1, |b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                        let status = exit_status(code, &command).to_string().into_bytes();
                        if let Some(&id) = streams.get("error") {
                            let _ = out_tx.send(Frame::Data { id, flags: 0, data: status }).await;
                        }
                        break;
                    }
                    _ => None,
                };
                if let Some(&id) = stream {
                    let _ = out_tx.send(Frame::Data { id, flags: 0, data: payload }).await;
                }
            }
            finish(&out_tx, &streams).await;
        })
    };
    let mut to_relay = early;
    let mut chunk = vec![0u8; 32 * 1024];
    loop {
        for frame in to_relay.drain(..) {
            match frame {
                Frame::Data { id, flags, data } if Some(&id) == streams.get("stdin") => {
                    if !data.is_empty() {
                        write_frame(&mut relay_wr, STDIN, &data).await?;
                    }
                    if flags & FLAG_FIN != 0 {
                        write_frame(&mut relay_wr, STDIN_END, &[]).await?;
                    }
                }
                Frame::Data { id, data, .. } if Some(&id) == streams.get("resize") => {
                    // one JSON object per message: {"Width":80,"Height":24}
                    let sizes: Vec<(u16, u16)> = serde_json::Deserializer::from_slice(&data)
                        .into_iter::<serde_json::Value>()
                        .flatten()
                        .map(|s| (s["Width"].as_u64().unwrap_or(0) as u16, s["Height"].as_u64().unwrap_or(0) as u16))
                        .collect();
                    for (w, h) in sizes {
                        let mut p = h.to_be_bytes().to_vec();
                        p.extend_from_slice(&w.to_be_bytes());
                        write_frame(&mut relay_wr, RESIZE, &p).await?;
                    }
                }
                Frame::Ping { id } => {
                    let _ = out_tx.send(Frame::Ping { id }).await;
                }
                _ => {}
            }
        }
        let n = tokio::select! {
            r = rd.read(&mut chunk) => r?,
            _ = &mut pump => break,
        };
        if n == 0 {
            // the client went away: the process loses its input, and ends as it will
            drop(relay_wr);
            let _ = (&mut pump).await;
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        to_relay = decode_all(&codec, &mut buf)?;
    }
    drop(out_tx);
    let _ = writer.await;
    relay.abort();
    Ok(())
}

/// The port-forward protocol (`portforward.k8s.io`).
pub const PORT_FORWARD: &str = "portforward.k8s.io";

/// Answers `/portForward/{ns}/{pod}`: upgrades to SPDY; then each pair of streams the
/// client opens (`error` and `data`, with the same `requestID` and a `port`) is one TCP
/// connection to that port of the pod: its IP for a pod with a network of its own,
/// loopback for a Wasm pod (whose guests listen on the host).
pub async fn port_forward(
    mgr: Arc<Manager>,
    (ns, pod): (String, String),
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    negotiate_port_forward(&req)?;
    let key = crate::pod::key(&ns, &pod);
    let rec = mgr.get(&key)?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("pod {key} not found")))?;
    if rec.deleting || rec.status.phase.is_terminal() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("pod {pod} is not running")));
    }
    let host = rec.pod_ip.clone().unwrap_or_else(|| "127.0.0.1".into());
    upgrade(req, "port-forward", move |io| run_port_forward(io, host));
    Ok(switching(PORT_FORWARD))
}

/// Checks a port-forward upgrade: SPDY/3.1 speaking `portforward.k8s.io`.
pub(crate) fn negotiate_port_forward(req: &Request<Incoming>) -> Result<(), ApiError> {
    let spdy = req.headers().get(hyper::header::UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let offered = offered(req, "x-stream-protocol-version").iter().any(|p| p == PORT_FORWARD);
    if !spdy.eq_ignore_ascii_case("SPDY/3.1") || !offered {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("unable to upgrade: port-forward speaks SPDY/3.1 with {PORT_FORWARD}"),
        ));
    }
    Ok(())
}

/// One forwarded connection's streams as they are opened.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    port: u16,
}

pub(crate) async fn run_port_forward<S>(io: S, host: String) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(io);
    let codec = Arc::new(std::sync::Mutex::new(Codec::new()));
    let (out, writer) = spawn_writer(wr, codec.clone());
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // what the client sends on each data stream goes to its connection's writer
    let mut inputs: HashMap<u32, tokio::sync::mpsc::UnboundedSender<Option<Vec<u8>>>> = HashMap::new();
    let mut pending: HashMap<u32, Vec<Option<Vec<u8>>>> = HashMap::new();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 32 * 1024];
    loop {
        let n = rd.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        for frame in decode_all(&codec, &mut buf)? {
            match frame {
                Frame::SynStream { id, headers, .. } => {
                    let _ = out.send(Frame::SynReply { id, flags: 0, headers: vec![] }).await;
                    let request = spdy::header(&headers, "requestid").unwrap_or("").to_string();
                    let pair = pairs.entry(request.clone()).or_default();
                    pair.port = spdy::header(&headers, "port").and_then(|p| p.parse().ok()).unwrap_or(0);
                    match spdy::header(&headers, "streamtype") {
                        Some("error") => pair.error = Some(id),
                        Some("data") => pair.data = Some(id),
                        _ => {}
                    }
                    if let (Some(error), Some(data)) = (pair.error, pair.data) {
                        let port = pair.port;
                        pairs.remove(&request);
                        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                        for early in pending.remove(&data).unwrap_or_default() {
                            let _ = tx.send(early);
                        }
                        inputs.insert(data, tx);
                        tokio::spawn(forward(host.clone(), port, error, data, rx, out.clone()));
                    }
                }
                Frame::Data { id, flags, data } => {
                    let mut msgs = Vec::new();
                    if !data.is_empty() {
                        msgs.push(Some(data));
                    }
                    if flags & FLAG_FIN != 0 {
                        msgs.push(None);
                    }
                    match inputs.get(&id) {
                        Some(tx) => msgs.into_iter().for_each(|m| drop(tx.send(m))),
                        None => pending.entry(id).or_default().extend(msgs),
                    }
                }
                Frame::Ping { id } => {
                    let _ = out.send(Frame::Ping { id }).await;
                }
                Frame::GoAway { .. } => break,
                _ => {}
            }
        }
    }
    drop(out);
    writer.abort();
    Ok(())
}

/// One forwarded connection: the client's data stream to the pod's port and back; a
/// failure to connect is told on the error stream.
async fn forward(
    host: String,
    port: u16,
    error: u32,
    data: u32,
    mut input: tokio::sync::mpsc::UnboundedReceiver<Option<Vec<u8>>>,
    out: tokio::sync::mpsc::Sender<Frame>,
) {
    let fin = |id| Frame::Data { id, flags: FLAG_FIN, data: vec![] };
    let tcp = match tokio::net::TcpStream::connect((host.as_str(), port)).await {
        Ok(t) => t,
        Err(e) => {
            let message = format!("error forwarding port {port} to pod: failed to connect to {host}:{port}: {e}");
            let _ = out.send(Frame::Data { id: error, flags: 0, data: message.into_bytes() }).await;
            let _ = out.send(fin(error)).await;
            let _ = out.send(fin(data)).await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = tcp.into_split();
    let upstream = tokio::spawn(async move {
        while let Some(Some(bytes)) = input.recv().await {
            if to_pod.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to_pod.shutdown().await;
    });
    let mut chunk = vec![0u8; 32 * 1024];
    loop {
        match from_pod.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.send(Frame::Data { id: data, flags: 0, data: chunk[..n].to_vec() }).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = out.send(fin(data)).await;
    let _ = out.send(fin(error)).await;
    upstream.abort();
}

/// Every whole frame at the front of `buf`, which keeps the rest.
fn decode_all(codec: &std::sync::Mutex<Codec>, buf: &mut Vec<u8>) -> std::io::Result<Vec<Frame>> {
    let mut out = Vec::new();
    let mut codec = codec.lock().unwrap_or_else(|e| e.into_inner());
    let mut at = 0;
    while let Some((frame, used)) = codec.decode(&buf[at..]).map_err(std::io::Error::other)? {
        out.push(frame);
        at += used;
    }
    buf.drain(..at);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_become_the_kubelets_status() {
        assert_eq!(exit_status(0, &[]), json!({"metadata": {}, "status": "Success"}));
        let s = exit_status(3, &["sh".into(), "-c".into(), "exit 3".into()]);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0], json!({"reason": "ExitCode", "message": "3"}));
        assert!(s["message"].as_str().unwrap().contains("exit code 3"));
    }

    #[test]
    fn the_command_waits_for_the_streams_it_was_asked_for() {
        let want = Wanted { stdin: true, stdout: true, stderr: true, tty: false };
        let mut s: HashMap<String, u32> = HashMap::new();
        for (k, id) in [("error", 1), ("stdin", 3), ("stdout", 5)] {
            s.insert(k.into(), id);
            assert!(!want.satisfied(&s));
        }
        s.insert("stderr".into(), 7);
        assert!(want.satisfied(&s));
        let tty = Wanted { stdin: true, stdout: true, stderr: true, tty: true };
        s.remove("stderr");
        assert!(!tty.satisfied(&s), "a terminal needs its resize stream");
        s.insert("resize".into(), 9);
        assert!(tty.satisfied(&s));
    }
}
