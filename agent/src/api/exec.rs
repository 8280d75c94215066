//! `POST /v1/pods/{ns}/{name}/exec?container=&command=…&command=…&stdin=&tty=`, upgraded
//! (`Upgrade: wasmlet-exec`) to a framed byte stream both ways, like the kubelet's exec
//! streams. A frame is a type byte, a big-endian u32 length and the payload:
//!
//! | type | direction | payload |
//! |---|---|---|
//! | 0 | client → agent | stdin bytes |
//! | 1, 2 | agent → client | stdout, stderr bytes (a terminal's output is all 1) |
//! | 3 | agent → client | the exit code, i32; the last frame |
//! | 4 | client → agent | terminal size: rows u16, cols u16 |
//! | 5 | client → agent | end of stdin |

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{ApiError, Body, full, get};
use crate::pod::Manager;

pub const UPGRADE: &str = "wasmlet-exec";

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const EXIT: u8 = 3;
pub const RESIZE: u8 = 4;
pub const STDIN_END: u8 = 5;

/// Largest frame either side accepts.
const MAX_FRAME: usize = 1 << 20;

pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(payload).await?;
    w.flush().await
}

/// The next frame, or `None` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("exec frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((head[0], payload)))
}

pub async fn respond(
    mgr: Arc<Manager>,
    ns: &str,
    name: &str,
    query: &[(String, String)],
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, m);
    let command: Vec<String> = query.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect();
    if command.is_empty() {
        return Err(bad("command is required"));
    }
    if !req.headers().get(hyper::header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(UPGRADE.as_bytes()))
    {
        return Err(bad("exec needs `Connection: Upgrade` and `Upgrade: wasmlet-exec`"));
    }
    let tty = get(query, "tty") == Some("true");
    let stdin = get(query, "stdin") == Some("true");
    let id = mgr
        .exec_target(&crate::pod::key(ns, name), get(query, "container"))
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))?;
    let linux = mgr.runtimes().linux().map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let session = linux
        .exec_session(&id, &command, tty)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                if let Err(e) = relay(hyper_util::rt::TokioIo::new(upgraded), session, stdin).await {
                    tracing::debug!(error = %e, "exec stream ended");
                }
            }
            Err(e) => tracing::warn!(error = %e, "exec upgrade failed"),
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, UPGRADE)
        .body(full(Bytes::new()))
        .expect("valid response"))
}

/// Copies between the client's frames and the process until it exits.
pub(crate) async fn relay<S>(
    stream: S,
    mut session: crate::runtime::linux::ExecSession,
    stdin: bool,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Vec<u8>)>(16);
    let mut pumps = Vec::new();
    // the process's input: a pipe, or the terminal's master side
    let mut input: Option<Box<dyn AsyncWrite + Unpin + Send>> = None;
    let mut master_for_resize = None;
    let runc_pid = session.child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32));
    if let Some(master) = session.terminal.take() {
        master_for_resize = rustix::io::dup(&master).ok();
        // one non-blocking descriptor with separate read and write readiness: a read
        // waiting for output never holds up typed input (a blocking file split into
        // halves did, and `exec -it` hung at the prompt)
        let pty = Pty::new(master)?;
        input = Some(Box::new(pty.clone()));
        pumps.push(spawn_pump(pty, STDOUT, out_tx.clone()));
    } else {
        if let Some(out) = session.child.stdout.take() {
            pumps.push(spawn_pump(out, STDOUT, out_tx.clone()));
        }
        if let Some(err) = session.child.stderr.take() {
            pumps.push(spawn_pump(err, STDERR, out_tx.clone()));
        }
        if let Some(w) = session.child.stdin.take() {
            input = Some(Box::new(w));
        }
    }
    drop(out_tx);
    if !stdin {
        input = None; // closed: the process reads end-of-file
    }
    let reader = tokio::spawn(async move {
        while let Ok(Some((kind, payload))) = read_frame(&mut rd).await {
            match kind {
                STDIN => {
                    if let Some(w) = input.as_mut()
                        && (w.write_all(&payload).await.is_err() || w.flush().await.is_err())
                    {
                        input = None;
                    }
                }
                STDIN_END => input = None,
                RESIZE if payload.len() == 4 => {
                    if let Some(m) = &master_for_resize {
                        let ws = rustix::termios::Winsize {
                            ws_row: u16::from_be_bytes([payload[0], payload[1]]),
                            ws_col: u16::from_be_bytes([payload[2], payload[3]]),
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        let _ = rustix::termios::tcsetwinsize(m, ws);
                        if let Some(pid) = runc_pid {
                            let _ = rustix::process::kill_process(pid, rustix::process::Signal::WINCH);
                        }
                    }
                }
                _ => {}
            }
        }
    });
    while let Some((kind, data)) = out_rx.recv().await {
        write_frame(&mut wr, kind, &data).await?;
    }
    let status = session.child.wait().await?;
    let code =
        status.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0));
    reader.abort();
    for p in pumps {
        let _ = p.await;
    }
    write_frame(&mut wr, EXIT, &code.to_be_bytes()).await?;
    wr.shutdown().await
}

fn spawn_pump<R: AsyncRead + Unpin + Send + 'static>(
    mut r: R,
    kind: u8,
    tx: mpsc::Sender<(u8, Vec<u8>)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { pump(&mut r, kind, tx).await })
}

/// Forwards reads as frames; a terminal's EIO after the last writer closed is its end.
async fn pump<R: AsyncRead + Unpin>(r: &mut R, kind: u8, tx: mpsc::Sender<(u8, Vec<u8>)>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send((kind, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A terminal's master side, read and written at once through tokio's readiness.
#[derive(Clone)]
struct Pty(std::sync::Arc<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>);

impl Pty {
    #[allow(unsafe_code)]
    fn new(master: std::os::fd::OwnedFd) -> std::io::Result<Pty> {
        let flags = rustix::fs::fcntl_getfl(&master)?;
        rustix::fs::fcntl_setfl(&master, flags | rustix::fs::OFlags::NONBLOCK)?;
        // SAFETY: an OwnedFd is open and names the same descriptor for as long as it
        // lives, and the AsyncFd owns it for its whole life
        let fd = unsafe { tokio::io::unix::AsyncFd::register(master) }.map_err(std::io::Error::from)?;
        Ok(Pty(std::sync::Arc::new(fd)))
    }
}

impl AsyncRead for Pty {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        loop {
            let mut guard = std::task::ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| rustix::io::read(fd.get_ref(), &mut *unfilled).map_err(std::io::Error::from)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return std::task::Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Pty {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            let mut guard = std::task::ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(std::io::Error::from)) {
                Ok(r) => return std::task::Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
