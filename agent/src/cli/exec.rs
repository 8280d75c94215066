//! `wasmlet exec POD [-c C] [-i] [-t] -- COMMAND [ARG…]`: runs a command in a running
//! Linux container and exits with its exit code, as `kubectl exec` does.

use anyhow::{Context, bail};
use clap::Args;
use http_body_util::Empty;
use hyper::{Method, Request, StatusCode};
use tokio::io::AsyncWriteExt;

use super::Global;
use crate::http::escape;
use crate::http::exec::{EXIT, RESIZE, STDERR, STDIN, STDIN_END, STDOUT, UPGRADE, read_frame, write_frame};

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub pod: String,
    /// The container (default: the pod's first).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Pass standard input to the command.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Give the command a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub async fn run(global: &Global, args: ExecArgs) -> anyhow::Result<i32> {
    let mut q = format!("stdin={}&tty={}", args.stdin, args.tty);
    if let Some(c) = &args.container {
        q.push_str(&format!("&container={}", escape(c)));
    }
    for c in &args.command {
        q.push_str(&format!("&command={}", escape(c)));
    }
    let path = format!("/v1/pods/{}/{}/exec?{q}", args.namespace, args.pod);
    let socket = global.socket();
    let stream = tokio::net::UnixStream::connect(&socket).await.with_context(|| {
        format!("cannot reach the wasmlet agent at {}: is `wasmlet serve` running?", socket.display())
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", "wasmlet")
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, UPGRADE)
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        use http_body_util::BodyExt;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        bail!("{msg} (HTTP {})", status.as_u16());
    }
    let upgraded = hyper::upgrade::on(resp).await?;
    let (mut rd, mut wr) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));

    let raw = if args.tty { RawTerminal::enter() } else { None };
    if args.tty
        && let Ok(ws) = rustix::termios::tcgetwinsize(rustix::stdio::stdin())
    {
        let mut size = ws.ws_row.to_be_bytes().to_vec();
        size.extend(ws.ws_col.to_be_bytes());
        write_frame(&mut wr, RESIZE, &size).await?;
    }
    if args.stdin {
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if write_frame(&mut wr, STDIN, &buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = write_frame(&mut wr, STDIN_END, &[]).await;
        });
    } else {
        write_frame(&mut wr, STDIN_END, &[]).await?;
    }
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut code = None;
    while let Some((kind, data)) = read_frame(&mut rd).await? {
        match kind {
            STDOUT => {
                stdout.write_all(&data).await?;
                stdout.flush().await?;
            }
            STDERR => {
                stderr.write_all(&data).await?;
                stderr.flush().await?;
            }
            EXIT if data.len() == 4 => {
                code = Some(i32::from_be_bytes([data[0], data[1], data[2], data[3]]));
                break;
            }
            _ => {}
        }
    }
    drop(raw);
    code.context("the exec stream ended without an exit code")
}

/// The local terminal in raw mode until dropped.
struct RawTerminal {
    saved: rustix::termios::Termios,
}

impl RawTerminal {
    fn enter() -> Option<Self> {
        let fd = rustix::stdio::stdin();
        let saved = rustix::termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(rustix::stdio::stdin(), rustix::termios::OptionalActions::Now, &self.saved);
    }
}
