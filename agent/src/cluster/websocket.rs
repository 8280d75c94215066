//! Exec and attach over WebSocket, the other transport of the kubelet's streaming
//! library (newer kubectl speaks it; the API server relays it). One WebSocket carries
//! every stream: each message begins with its channel, by the remote-command
//! convention `0` stdin, `1` stdout, `2` stderr, `3` error (the `metav1.Status` that
//! ends the session), `4` resize (`{"Width":W,"Height":H}`). Subprotocols:
//!
//! - `v5.channel.k8s.io`: as v4, and a client's `[255, 0]` closes stdin;
//! - `v4.channel.k8s.io` (binary) and `v4.base64.channel.k8s.io` (text: the channel as
//!   an ASCII digit, the data base64);
//! - `channel.k8s.io` and `base64.channel.k8s.io`: as v4 and v4.base64 (this node
//!   writes the v4 status on the error channel for all of them).
//!
//! RFC 6455 framing is done here (a few dozen lines; client frames are masked, ours
//! are not); the handshake's accept key is SHA-1 (ring's legacy digest).

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::streaming::{Tail, Wanted, exit_status, follow};
use crate::http::exec::{EXIT, RESIZE, STDERR, STDIN, STDIN_END, STDOUT, read_frame, write_frame};
use crate::http::{ApiError, Body, full};

/// The subprotocols this node speaks, best first.
const PROTOCOLS: &[&str] =
    &["v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io", "channel.k8s.io", "base64.channel.k8s.io"];

/// A message larger than this from the client ends the session (stdin comes in
/// small writes; 16 MiB is generous).
const MAX_MESSAGE: u64 = 16 << 20;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// How the session's messages are encoded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Proto {
    base64: bool,
    /// v5: the client may close stdin with `[255, 0]`.
    close_signal: bool,
}

/// Whether the request asks to upgrade to a WebSocket.
pub(crate) fn is_websocket(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Checks the handshake and picks the subprotocol: the 101 to send, and how to speak.
pub(crate) fn accept(req: &Request<Incoming>) -> Result<(Response<Body>, Proto), ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let key = req
        .headers()
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| bad("a WebSocket upgrade needs Sec-WebSocket-Key".into()))?;
    let offered = super::streaming::offered(req, "sec-websocket-protocol");
    let chosen = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)).ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!("unable to upgrade: the client offers {offered:?}; this node speaks {PROTOCOLS:?}"),
        )
    })?;
    let accept = {
        use base64::Engine;
        let mut input = key.trim().as_bytes().to_vec();
        input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    };
    let response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, "websocket")
        .header("Sec-WebSocket-Accept", accept)
        .header("Sec-WebSocket-Protocol", *chosen)
        .body(full(Bytes::new()))
        .expect("valid response");
    let proto = Proto { base64: chosen.contains("base64"), close_signal: chosen.starts_with("v5.") };
    Ok((response, proto))
}

/// Writes one unmasked, final frame.
async fn write_message<W: AsyncWrite + Unpin>(w: &mut W, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut head = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => head.push(n as u8),
        n if n <= 0xFFFF => {
            head.push(126);
            head.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            head.push(127);
            head.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    w.write_all(&head).await?;
    w.write_all(payload).await?;
    w.flush().await
}

/// Reads one frame: (fin, opcode, unmasked payload); None at the end of the stream.
async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(bool, u8, Vec<u8>)>> {
    let mut head = [0u8; 2];
    if let Err(e) = r.read_exact(&mut head).await {
        return if e.kind() == std::io::ErrorKind::UnexpectedEof { Ok(None) } else { Err(e) };
    }
    let (fin, opcode, masked) = (head[0] & 0x80 != 0, head[0] & 0x0F, head[1] & 0x80 != 0);
    let len = match head[1] & 0x7F {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    if len > MAX_MESSAGE {
        return Err(std::io::Error::other(format!(
            "a {len}-byte WebSocket frame is over the {MAX_MESSAGE}-byte limit"
        )));
    }
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok(Some((fin, opcode, payload)))
}

/// The connection's one writer: channel messages and control frames in order.
enum Out {
    Channel(u8, Vec<u8>),
    Pong(Vec<u8>),
    Close,
}

fn spawn_writer<W: AsyncWrite + Unpin + Send + 'static>(
    mut wr: W,
    proto: Proto,
) -> (tokio::sync::mpsc::Sender<Out>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Out>(64);
    let task = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            let written = match out {
                Out::Channel(channel, data) if proto.base64 => {
                    use base64::Engine;
                    let mut text = vec![b'0' + channel];
                    text.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(&data).as_bytes());
                    write_message(&mut wr, OP_TEXT, &text).await
                }
                Out::Channel(channel, data) => {
                    let mut message = Vec::with_capacity(data.len() + 1);
                    message.push(channel);
                    message.extend_from_slice(&data);
                    write_message(&mut wr, OP_BINARY, &message).await
                }
                Out::Pong(data) => write_message(&mut wr, OP_PONG, &data).await,
                Out::Close => {
                    // 1000: normal closure
                    let _ = write_message(&mut wr, OP_CLOSE, &1000u16.to_be_bytes()).await;
                    let _ = wr.shutdown().await;
                    return;
                }
            };
            if written.is_err() {
                return;
            }
        }
    });
    (tx, task)
}

/// A client message as (channel, data), decoded; pings are answered on the way.
async fn next_message<R: AsyncRead + Unpin>(
    rd: &mut R,
    proto: Proto,
    out: &tokio::sync::mpsc::Sender<Out>,
) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut message = Vec::new();
    loop {
        let Some((fin, opcode, payload)) = read_message(rd).await? else { return Ok(None) };
        match opcode {
            OP_CLOSE => return Ok(None),
            OP_PING => {
                let _ = out.send(Out::Pong(payload)).await;
                continue;
            }
            OP_PONG => continue,
            OP_TEXT | OP_BINARY | OP_CONTINUATION => message.extend_from_slice(&payload),
            _ => return Err(std::io::Error::other(format!("unknown WebSocket opcode {opcode}"))),
        }
        if (message.len() as u64) > MAX_MESSAGE {
            return Err(std::io::Error::other("WebSocket message over the limit"));
        }
        if !fin {
            continue;
        }
        let Some((&first, data)) = message.split_first() else {
            message.clear();
            continue;
        };
        if proto.base64 {
            use base64::Engine;
            let data = base64::engine::general_purpose::STANDARD.decode(data).map_err(std::io::Error::other)?;
            return Ok(Some((first.wrapping_sub(b'0'), data)));
        }
        return Ok(Some((first, data.to_vec())));
    }
}

/// Runs an exec session over an upgraded WebSocket.
pub(crate) async fn run_exec<S>(
    io: S,
    proto: Proto,
    session: wasmlet_runtime::ExecSession,
    want: Wanted,
    command: Vec<String>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(io);
    let (out, writer) = spawn_writer(wr, proto);
    // the kubelet's library writes an empty message on the first output channel, so
    // that the client knows the streams are ready
    let first = if want.stdout {
        STDOUT
    } else if want.stderr {
        STDERR
    } else {
        EXIT
    };
    let _ = out.send(Out::Channel(first, Vec::new())).await;
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut relay_rd, mut relay_wr) = tokio::io::split(ours);
    let relay = tokio::spawn(crate::http::exec::relay(theirs, session, want.stdin));
    let mut pump = {
        let out = out.clone();
        tokio::spawn(async move {
            while let Ok(Some((kind, payload))) = read_frame(&mut relay_rd).await {
                match kind {
                    STDOUT if want.stdout => {
                        let _ = out.send(Out::Channel(STDOUT, payload)).await;
                    }
                    STDERR if want.stderr || want.stdout => {
                        let channel = if want.stderr { STDERR } else { STDOUT };
                        let _ = out.send(Out::Channel(channel, payload)).await;
                    }
                    EXIT => {
                        let code = payload.get(..4).map_or(1, |b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                        let status = exit_status(code, &command).to_string().into_bytes();
                        let _ = out.send(Out::Channel(EXIT, status)).await;
                        break;
                    }
                    _ => {}
                }
            }
            let _ = out.send(Out::Close).await;
        })
    };
    loop {
        let message = tokio::select! {
            m = next_message(&mut rd, proto, &out) => m,
            _ = &mut pump => break,
        };
        match message {
            Ok(Some((STDIN, data))) if want.stdin => {
                if !data.is_empty() {
                    write_frame(&mut relay_wr, STDIN, &data).await?;
                }
            }
            Ok(Some((255, data))) if proto.close_signal && data.first() == Some(&STDIN) => {
                write_frame(&mut relay_wr, STDIN_END, &[]).await?;
            }
            Ok(Some((RESIZE, data))) => {
                if let Ok(size) = serde_json::from_slice::<serde_json::Value>(&data) {
                    let (w, h) =
                        (size["Width"].as_u64().unwrap_or(0) as u16, size["Height"].as_u64().unwrap_or(0) as u16);
                    let mut p = h.to_be_bytes().to_vec();
                    p.extend_from_slice(&w.to_be_bytes());
                    write_frame(&mut relay_wr, RESIZE, &p).await?;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                // the client went away: the command loses its input and ends as it will
                drop(relay_wr);
                let _ = (&mut pump).await;
                break;
            }
        }
    }
    drop(out);
    let _ = writer.await;
    relay.abort();
    Ok(())
}

/// Runs an attach over an upgraded WebSocket: the container's output from now on.
pub(crate) async fn run_attach<S>(io: S, proto: Proto, want: Wanted, t: Tail) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(io);
    let (out, writer) = spawn_writer(wr, proto);
    let first = if want.stdout { STDOUT } else { STDERR };
    let _ = out.send(Out::Channel(first, Vec::new())).await;
    let detached = {
        let out = out.clone();
        async move { while let Ok(Some(_)) = next_message(&mut rd, proto, &out).await {} }
    };
    let emit = |stderr: bool, data: Vec<u8>| {
        let channel = if stderr && want.stderr { STDERR } else { STDOUT };
        let out = out.clone();
        async move {
            let _ = out.send(Out::Channel(channel, data)).await;
        }
    };
    if follow(&t, emit, detached).await {
        let _ = out.send(Out::Channel(EXIT, exit_status(0, &[]).to_string().into_bytes())).await;
    }
    let _ = out.send(Out::Close).await;
    drop(out);
    let _ = writer.await;
    Ok(())
}
