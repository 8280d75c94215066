//! Container logs in the CRI format the kubelet and `kubectl logs` read:
//! `<RFC3339Nano timestamp> <stdout|stderr> <F|P> <line>`, one record per line, with `P`
//! for a partial line cut at the maximum record size and `F` for a full one.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Longest record; longer lines are split into `P` records (the kubelet uses 16 KiB).
const MAX_RECORD: usize = 16 * 1024;

/// Which stream a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One container's log file, shared by its stdout and stderr writers.
///
/// The file is opened when there is something to write, not before: an idle guest holds
/// no descriptor (thirty thousand sleeping pods would otherwise need thirty thousand).
/// A writer keeps its file open between writes while fewer than [`KEEP_OPEN`] logs are
/// open across the process, and closes it after each write beyond that.
#[derive(Debug, Clone)]
pub struct CriLog {
    inner: Arc<Mutex<Inner>>,
}

/// How many log files writers keep open between writes, process-wide.
pub const KEEP_OPEN: usize = 512;

static OPEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[derive(Debug)]
struct Inner {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
    pending: [Vec<u8>; 2],
    /// Records made and not yet written.
    out: Vec<u8>,
}

impl CriLog {
    /// Creates the log file (and its directory) if it is not there; later writes append.
    pub fn open(path: &Path) -> std::io::Result<CriLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let inner = Inner { path: path.to_path_buf(), file: None, pending: [Vec::new(), Vec::new()], out: Vec::new() };
        Ok(CriLog { inner: Arc::new(Mutex::new(inner)) })
    }

    /// Appends bytes from `stream`, writing a record for every complete line.
    pub fn write(&self, stream: Stream, mut data: &[u8]) -> std::io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let slot = stream as usize;
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut inner.pending[slot]);
            line.extend_from_slice(&data[..i]);
            inner.record(stream, &line, true);
            data = &data[i + 1..];
        }
        inner.pending[slot].extend_from_slice(data);
        while inner.pending[slot].len() >= MAX_RECORD {
            let rest = inner.pending[slot].split_off(MAX_RECORD);
            let part = std::mem::replace(&mut inner.pending[slot], rest);
            inner.record(stream, &part, false);
        }
        inner.flush()
    }

    /// Writes what is left of unfinished lines as full records (the container ended),
    /// and closes the file.
    pub fn finish(&self) -> std::io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = std::mem::take(&mut inner.pending[stream as usize]);
            if !line.is_empty() {
                inner.record(stream, &line, true);
            }
        }
        let r = inner.flush();
        inner.close();
        r
    }
}

impl Inner {
    fn record(&mut self, stream: Stream, line: &[u8], full: bool) {
        let tag = if full { "F" } else { "P" };
        let _ = write!(self.out, "{} {} {tag} ", rfc3339_nano(SystemTime::now()), stream.as_str());
        self.out.extend_from_slice(line);
        self.out.push(b'\n');
    }

    /// Writes the records made so far, opening the file for them if it is closed.
    fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            self.file = Some(std::fs::OpenOptions::new().append(true).open(&self.path)?);
            OPEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let out = std::mem::take(&mut self.out);
        let r = self.file.as_mut().expect("opened above").write_all(&out);
        if r.is_err() || OPEN.load(std::sync::atomic::Ordering::Relaxed) > KEEP_OPEN {
            self.close();
        }
        r
    }

    fn close(&mut self) {
        if self.file.take().is_some() {
            OPEN.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

/// `2026-11-22T03:13:00.123456789Z`.
pub fn rfc3339_nano(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// One parsed log record. The header is ASCII; the line is what the container wrote,
/// any bytes at all (not necessarily UTF-8, perhaps ending in `\r`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub full: bool,
    pub line: &'a [u8],
}

/// Parses a CRI log record (a line of the file, without its `\n`); `None` for anything
/// malformed.
pub fn parse(record: &[u8]) -> Option<Record<'_>> {
    let mut parts = record.splitn(4, |&b| b == b' ');
    let (time, stream, tag) = (parts.next()?, parts.next()?, parts.next()?);
    let line = parts.next().unwrap_or(b"");
    let time = std::str::from_utf8(time).ok()?;
    let stream = match stream {
        b"stdout" => "stdout",
        b"stderr" => "stderr",
        _ => return None,
    };
    let full = match tag {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    Some(Record { time, stream, full, line })
}

/// The records of a log file's bytes: each `\n`-ended line; an unfinished last line
/// (being written) is left out.
pub fn records(log: &[u8]) -> impl Iterator<Item = Record<'_>> {
    let complete = log.iter().rposition(|&b| b == b'\n').map_or(&log[..0], |i| &log[..i]);
    complete.split(|&b| b == b'\n').filter(|_| !complete.is_empty()).filter_map(parse)
}

/// A `tokio::io::AsyncWrite` feeding one stream of a [`CriLog`], for WASI's stdout/stderr.
#[derive(Debug, Clone)]
pub struct LogWriter {
    pub log: CriLog,
    pub stream: Stream,
}

impl tokio::io::AsyncWrite for LogWriter {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(self.log.write(self.stream, buf).map(|()| buf.len()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_records_and_long_lines_split() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let log = CriLog::open(&path).unwrap();
        log.write(Stream::Stdout, b"hello\nwor").unwrap();
        log.write(Stream::Stderr, b"oops\n").unwrap();
        log.write(Stream::Stdout, b"ld\n").unwrap();
        log.write(Stream::Stdout, &vec![b'x'; MAX_RECORD + 10]).unwrap();
        log.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let records: Vec<Record> = records(&bytes).collect();
        assert_eq!(records.len(), bytes.iter().filter(|&&b| b == b'\n').count(), "every record parses");
        let got: Vec<(&str, bool, usize)> = records.iter().map(|r| (r.stream, r.full, r.line.len())).collect();
        assert_eq!(
            got,
            [
                ("stdout", true, 5),
                ("stderr", true, 4),
                ("stdout", true, 5),
                ("stdout", false, MAX_RECORD),
                ("stdout", true, 10)
            ]
        );
        assert_eq!(records[2].line, b"world");
        assert!(records[0].time.ends_with('Z') && records[0].time.len() == 30, "{}", records[0].time);
    }

    #[test]
    fn an_idle_log_holds_no_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let logs: Vec<CriLog> = (0..50).map(|_| CriLog::open(&path).unwrap()).collect();
        assert!(path.exists(), "the file is there for `logs` to read");
        assert!(logs.iter().all(|l| l.inner.lock().unwrap().file.is_none()), "nothing open before a write");
        logs[0].write(Stream::Stdout, b"partial").unwrap();
        assert!(logs[0].inner.lock().unwrap().file.is_none(), "an unfinished line writes nothing");
        logs[0].write(Stream::Stdout, b" line\n").unwrap();
        logs[0].finish().unwrap();
        assert!(logs[0].inner.lock().unwrap().file.is_none(), "closed when the container ends");
        assert_eq!(parse(std::fs::read(&path).unwrap().trim_ascii_end()).unwrap().line, b"partial line");
    }

    #[test]
    fn what_a_container_writes_comes_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let log = CriLog::open(&path).unwrap();
        let written: &[u8] = b"\xff\xfe not UTF-8\r\nsplit \xe2\x82";
        log.write(Stream::Stdout, written).unwrap();
        log.write(Stream::Stdout, b"\xac euro\n").unwrap();
        log.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let back: Vec<u8> = records(&bytes).flat_map(|r| [r.line, if r.full { b"\n" } else { b"" }].concat()).collect();
        assert_eq!(back, b"\xff\xfe not UTF-8\r\nsplit \xe2\x82\xac euro\n");
    }

    #[test]
    fn timestamps_are_rfc3339_nano() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_795_000_000, 5);
        assert_eq!(rfc3339_nano(t), "2026-11-18T11:06:40.000000005Z");
    }
}
