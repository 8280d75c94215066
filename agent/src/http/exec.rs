//! exec's framed byte stream, both ways, like the kubelet's exec streams; and the relay
//! between such a stream and a runtime's exec session. The local API speaks it to the
//! CLI; the kubelet API bridges SPDY onto it. A frame is a type byte, a big-endian u32
//! length and the payload:
//!
//! | type | direction | payload |
//! |---|---|---|
//! | 0 | client → agent | stdin bytes |
//! | 1, 2 | agent → client | stdout, stderr bytes (a terminal's output is all 1) |
//! | 3 | agent → client | the exit code, i32; the last frame |
//! | 4 | client → agent | terminal size: rows u16, cols u16 |
//! | 5 | client → agent | end of stdin |

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use wasmlet_runtime::{ExecSession, TerminalSize};

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

/// Copies between the client's frames and the session until the command exits.
pub async fn relay<S>(stream: S, mut session: ExecSession, stdin: bool) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Vec<u8>)>(16);
    let mut pumps = Vec::new();
    if let Some(out) = session.stdout.take() {
        pumps.push(spawn_pump(out, STDOUT, out_tx.clone()));
    }
    if let Some(err) = session.stderr.take() {
        pumps.push(spawn_pump(err, STDERR, out_tx.clone()));
    }
    drop(out_tx);
    // without stdin the input is closed at once: the command reads end-of-file
    let mut input = session.stdin.take().filter(|_| stdin);
    let resize = session.take_resize();
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
                    if let Some(resize) = &resize {
                        resize(TerminalSize {
                            rows: u16::from_be_bytes([payload[0], payload[1]]),
                            cols: u16::from_be_bytes([payload[2], payload[3]]),
                        });
                    }
                }
                _ => {}
            }
        }
    });
    while let Some((kind, data)) = out_rx.recv().await {
        write_frame(&mut wr, kind, &data).await?;
    }
    let code = session.wait().await?;
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
