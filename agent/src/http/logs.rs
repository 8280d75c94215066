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
use wasmlet_runtime::log;

/// Renders CRI records as the kubelet does: a `P` record continues on the next one, and a
/// line the container never finished (`printf` with no newline, then exit) is still
/// shown, without a newline. A timestamp, when asked for, starts each line. What the
/// container wrote comes back as it wrote it, bytes and all: not UTF-8, `\r\n`.
#[derive(Debug, Default)]
pub struct Renderer {
    pub timestamps: bool,
    /// Lines from before this are left out (`sinceSeconds`, `sinceTime`).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// The line being built from `P` records.
    line: Vec<u8>,
    /// The last record was partial: the next one continues its line.
    mid_line: bool,
    /// The line being built started before `since`.
    skip: bool,
}

impl Renderer {
    /// Adds one record (a line of the log file, without its `\n`); a malformed one is
    /// passed over.
    pub fn feed(&mut self, record: &[u8], out: &mut Vec<Vec<u8>>) {
        let Some(r) = log::parse(record) else { return };
        if !self.mid_line {
            self.skip =
                self.since.is_some_and(|since| chrono::DateTime::parse_from_rfc3339(r.time).is_ok_and(|t| t < since));
            if self.timestamps && !self.skip {
                self.line.extend_from_slice(r.time.as_bytes());
                self.line.push(b' ');
            }
        }
        self.mid_line = !r.full;
        if self.skip {
            return;
        }
        self.line.extend_from_slice(r.line);
        if r.full {
            self.line.push(b'\n');
            out.push(std::mem::take(&mut self.line));
        }
    }

    /// What there is of an unfinished line; its continuation gets no second timestamp.
    pub fn flush(&mut self, out: &mut Vec<Vec<u8>>) {
        if !self.line.is_empty() {
            out.push(std::mem::take(&mut self.line));
        }
    }

    /// The complete records of `log` (a log file's bytes), rendered; returns the length
    /// of what was read, up to the end of the last complete record.
    pub fn feed_file(&mut self, log: &[u8], out: &mut Vec<Vec<u8>>) -> usize {
        let end = log.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for record in log[..end].split(|&b| b == b'\n').filter(|r| !r.is_empty()) {
            self.feed(record, out);
        }
        end
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
    // a missing file is an empty log (the instance wrote nothing yet)
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {e}", path.display()))),
    };
    let mut lines = Vec::new();
    let read = renderer.feed_file(&text, &mut lines);
    let rest = text[read..].to_vec();
    renderer.flush(&mut lines);
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
        let offset = read as u64;
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
    mut partial: Vec<u8>,
    mut renderer: Renderer,
    tx: tokio::sync::mpsc::UnboundedSender<Result<Frame<Bytes>, std::io::Error>>,
) {
    loop {
        let still_running = mgr.get(&key).ok().flatten().is_some_and(|r| {
            let c = &r.status.containers[idx];
            c.instances == instance && matches!(c.state, State::Running { .. })
        });
        let mut chunk = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&path)
            && f.seek(SeekFrom::Start(offset)).is_ok()
        {
            let _ = f.read_to_end(&mut chunk);
        }
        offset += chunk.len() as u64;
        partial.extend_from_slice(&chunk);
        let mut out = Vec::new();
        let read = renderer.feed_file(&partial, &mut out);
        partial.drain(..read);
        renderer.flush(&mut out);
        if !out.is_empty() && tx.send(Ok(Frame::data(Bytes::from(out.concat())))).is_err() {
            return; // the client went away
        }
        if !still_running {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::Renderer;

    fn render(r: &mut Renderer, records: &[&str]) -> String {
        let mut out = Vec::new();
        for rec in records {
            r.feed(rec.as_bytes(), &mut out);
        }
        r.flush(&mut out);
        String::from_utf8(out.concat()).unwrap()
    }

    #[test]
    fn a_last_line_without_a_newline_is_shown_as_the_kubelet_shows_it() {
        let records = ["2026-01-01T00:00:00Z stdout F one", "2026-01-01T00:00:01Z stdout P two"];
        assert_eq!(render(&mut Renderer::default(), &records), "one\ntwo");
    }

    #[test]
    fn partial_records_join_and_a_timestamp_starts_each_line_once() {
        let mut r = Renderer { timestamps: true, ..Default::default() };
        assert_eq!(render(&mut r, &["2026-01-01T00:00:00Z stdout P ab"]), "2026-01-01T00:00:00Z ab");
        // a follow that reads the rest later: no second timestamp mid-line
        assert_eq!(
            render(&mut r, &["2026-01-01T00:00:01Z stdout F cd", "2026-01-01T00:00:02Z stderr F e"]),
            "cd\n2026-01-01T00:00:02Z e\n"
        );
    }

    #[test]
    fn since_drops_whole_lines_by_their_first_record() {
        let since = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:01Z").unwrap().to_utc();
        let mut r = Renderer { since: Some(since), ..Default::default() };
        let records = [
            "2026-01-01T00:00:00Z stdout P old",
            "2026-01-01T00:00:02Z stdout F -tail",
            "2026-01-01T00:00:03Z stdout F new",
        ];
        assert_eq!(render(&mut r, &records), "new\n");
    }
}
