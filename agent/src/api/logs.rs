//! `logs`: a container instance's CRI log as plain lines, optionally with timestamps,
//! the last N, the previous instance, or followed while the instance runs.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Response, StatusCode};

use super::{ApiError, Body, get, not_found};
use crate::pod::Manager;
use crate::pod::state::State;
use crate::runtime::log;

/// Renders complete CRI records: partial (`P`) records join the next one.
#[derive(Default)]
struct Renderer {
    timestamps: bool,
    /// Records from before this are left out (`sinceSeconds`, `sinceTime`).
    since: Option<chrono::DateTime<chrono::Utc>>,
    pending: String,
    first_time: Option<String>,
}

impl Renderer {
    fn feed(&mut self, line: &str, out: &mut Vec<String>) {
        let Some(r) = log::parse(line) else { return };
        self.first_time.get_or_insert_with(|| r.time.to_string());
        self.pending.push_str(r.line);
        if r.full {
            let time = self.first_time.take().unwrap_or_default();
            let text = std::mem::take(&mut self.pending);
            if let Some(since) = self.since
                && chrono::DateTime::parse_from_rfc3339(&time).is_ok_and(|t| t < since)
            {
                return;
            }
            out.push(if self.timestamps { format!("{time} {text}\n") } else { format!("{text}\n") });
        }
    }
}

pub(crate) async fn respond(
    mgr: Arc<Manager>,
    ns: &str,
    name: &str,
    q: &[(String, String)],
) -> Result<Response<Body>, ApiError> {
    let rec = mgr.get(&crate::pod::key(ns, name))?.ok_or_else(|| not_found(ns, name))?;
    let names: Vec<&str> = rec.plan.containers.iter().map(|c| c.name.as_str()).collect();
    let container = match get(q, "container").filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None if names.len() == 1 => names[0].to_string(),
        None => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("a container name must be specified for pod {name}, choose one of: [{}]", names.join(" ")),
            ));
        }
    };
    let idx = names.iter().position(|n| *n == container).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("container {container} is not valid for pod {name}"))
    })?;
    let status = &rec.status.containers[idx];
    let previous = get(q, "previous") == Some("true");
    let instance = if previous {
        // kubectl's rule: the instance before the latest one, which must exist
        if status.instances < 2 {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("previous terminated container \"{container}\" in pod \"{name}\" not found"),
            ));
        }
        status.instances - 1
    } else if status.instances == 0 {
        let why = match &status.state {
            State::Waiting { reason, .. } => reason.clone(),
            _ => "ContainerCreating".into(),
        };
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("container \"{container}\" in pod \"{name}\" is waiting to start: {why}"),
        ));
    } else {
        status.instances
    };
    let path = mgr.log_path(&rec, &container, instance);
    // `tailLines` and `sinceSeconds`/`sinceTime` are the kubelet API's names
    let tail: Option<usize> = get(q, "tail").or(get(q, "tailLines")).and_then(|t| t.parse().ok());
    let since = match (get(q, "sinceSeconds"), get(q, "sinceTime")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "at most one of sinceTime or sinceSeconds may be specified",
            ));
        }
        (Some(s), None) => {
            let secs: i64 = s.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("sinceSeconds: Invalid value: {s:?}: must be greater than 0"),
                )
            })?;
            Some(chrono::Utc::now() - chrono::Duration::seconds(secs))
        }
        (None, Some(t)) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("sinceTime: Invalid value: {t:?}")))?
                .with_timezone(&chrono::Utc),
        ),
        (None, None) => None,
    };
    let mut renderer = Renderer { timestamps: get(q, "timestamps") == Some("true"), since, ..Default::default() };
    let mut file = std::fs::File::open(&path).ok();
    let mut text = String::new();
    if let Some(f) = file.as_mut() {
        f.read_to_string(&mut text).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    }
    let (complete, rest) = match text.rfind('\n') {
        Some(i) => (&text[..=i], text[i + 1..].to_string()),
        None => ("", text.clone()),
    };
    let mut lines = Vec::new();
    for l in complete.lines() {
        renderer.feed(l, &mut lines);
    }
    if let Some(n) = tail {
        lines.drain(..lines.len().saturating_sub(n));
    }
    let follow = get(q, "follow") == Some("true") && !previous;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Frame<Bytes>, std::io::Error>>();
    if !lines.is_empty() {
        let _ = tx.send(Ok(Frame::data(Bytes::from(lines.concat()))));
    }
    if follow {
        let key = rec.key();
        let offset = complete.len() as u64;
        tokio::spawn(follow_log(mgr, key, idx, instance, path, offset, rest, renderer, tx));
    }
    Ok(Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .body(StreamBody::new(super::tokio_stream(rx)).boxed())
        .expect("valid response"))
}

#[allow(clippy::too_many_arguments)]
async fn follow_log(
    mgr: Arc<Manager>,
    key: String,
    idx: usize,
    instance: u32,
    path: std::path::PathBuf,
    mut offset: u64,
    mut partial: String,
    mut renderer: Renderer,
    tx: tokio::sync::mpsc::UnboundedSender<Result<Frame<Bytes>, std::io::Error>>,
) {
    loop {
        let still_running = mgr.get(&key).ok().flatten().is_some_and(|r| {
            let c = &r.status.containers[idx];
            c.instances == instance && matches!(c.state, State::Running { .. })
        });
        let mut chunk = String::new();
        if let Ok(mut f) = std::fs::File::open(&path)
            && f.seek(SeekFrom::Start(offset)).is_ok()
        {
            let _ = f.read_to_string(&mut chunk);
        }
        offset += chunk.len() as u64;
        partial.push_str(&chunk);
        let mut out = Vec::new();
        while let Some(i) = partial.find('\n') {
            let line: String = partial.drain(..=i).collect();
            renderer.feed(line.trim_end_matches('\n'), &mut out);
        }
        if !out.is_empty() && tx.send(Ok(Frame::data(Bytes::from(out.concat())))).is_err() {
            return; // the client went away
        }
        if !still_running {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
