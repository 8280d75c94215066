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

use crate::http::exec::{UPGRADE, relay};
use crate::http::{ApiError, Body, full, get};
use crate::pod::Manager;

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
    let session = mgr.exec(&crate::pod::key(ns, name), get(query, "container"), &command, tty).await?;
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
