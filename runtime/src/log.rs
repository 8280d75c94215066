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

/// How big a container's log may grow: the kubelet's `containerLogMaxSize` and
/// `containerLogMaxFiles`, and the free space log writes leave on their filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogPolicy {
    /// The current file is rotated when a write would take it past this (0: never).
    pub max_size: u64,
    /// Files kept per container instance, the current one included (at least 2).
    pub max_files: u32,
    /// While the filesystem has less free than this, output is dropped (and counted)
    /// rather than written, so that the agent's own state always finds room.
    pub keep_free: u64,
}

impl Default for LogPolicy {
    /// The kubelet's defaults: 10 MiB, 5 files.
    fn default() -> Self {
        LogPolicy { max_size: 10 << 20, max_files: 5, keep_free: 0 }
    }
}

/// Renames a full log to `<path>.<UTC time>` (the kubelet's names, without its
/// compression) and deletes the oldest rotated files beyond `max_files - 1`.
pub fn rotate(path: &Path, policy: &LogPolicy) -> std::io::Result<()> {
    let stamp = chrono::DateTime::<chrono::Utc>::from(SystemTime::now()).format("%Y%m%d-%H%M%S%.6f");
    let mut rotated = path.as_os_str().to_owned();
    rotated.push(format!(".{stamp}"));
    // two rotations within a microsecond (tiny limits) must not overwrite each other;
    // `name.1` sorts after `name`, as it was made after it
    let mut n = 0;
    let mut target = std::path::PathBuf::from(&rotated);
    while target.exists() {
        n += 1;
        target = format!("{}.{n}", rotated.to_string_lossy()).into();
    }
    std::fs::rename(path, &target)?;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return Ok(()) };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut old: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    old.sort(); // the time stamps sort as the files were made
    let keep = policy.max_files.max(2) as usize - 1;
    for p in &old[..old.len().saturating_sub(keep)] {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// One container's log file, shared by its stdout and stderr writers.
///
/// The file is opened when there is something to write, not before: an idle guest holds
/// no descriptor (thirty thousand sleeping pods would otherwise need thirty thousand).
/// A writer keeps its file open between writes while fewer than [`KEEP_OPEN`] logs are
/// open across the process, and closes it after each write beyond that.
///
/// As with the kubelet's runtimes, a container never sees its log fail: output that
/// cannot be written (the disk is full, or below [`LogPolicy::keep_free`]) is dropped
/// and counted, and once writes succeed again a record on stderr says how much was lost.
#[derive(Debug, Clone)]
pub struct CriLog {
    inner: Arc<Mutex<Inner>>,
}

/// How many log files writers keep open between writes, process-wide.
pub const KEEP_OPEN: usize = 512;

static OPEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How often a log that writes checks its filesystem's free space.
const SPACE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug)]
struct Inner {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
    pending: [Vec<u8>; 2],
    /// Records made and not yet written.
    out: Vec<u8>,
    policy: LogPolicy,
    /// Bytes in the current file.
    size: u64,
    /// Output dropped since the last successful write, and why.
    dropped: Option<Box<Dropped>>,
    /// When free space was last checked, and whether it was short then.
    space: Option<(std::time::Instant, bool)>,
}

#[derive(Debug)]
struct Dropped {
    bytes: u64,
    why: String,
}

impl CriLog {
    /// The log at `path`. Nothing is made until there is something to write: the file
    /// and its directories are created by the first write (a file already there is
    /// appended to), so starting a guest that never writes costs the filesystem nothing
    /// (the directories and the file were half the start of a Wasm pod with 30,000 live).
    /// Readers take a missing file for an empty log.
    pub fn open(path: &Path, policy: LogPolicy) -> std::io::Result<CriLog> {
        let size = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let inner = Inner {
            path: path.to_path_buf(),
            file: None,
            pending: [Vec::new(), Vec::new()],
            out: Vec::new(),
            policy,
            size,
            dropped: None,
            space: None,
        };
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
        inner.flush();
        Ok(())
    }

    /// Closes the file; the next write opens the path again (creating it when it was
    /// renamed away) and counts its size from there.
    pub fn reopen(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.flush();
        inner.close();
        inner.size = std::fs::metadata(&inner.path).map_or(0, |m| m.len());
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
        inner.flush();
        inner.close();
        Ok(())
    }
}

impl Inner {
    fn record(&mut self, stream: Stream, line: &[u8], full: bool) {
        let tag = if full { "F" } else { "P" };
        let _ = write!(self.out, "{} {} {tag} ", rfc3339_nano(SystemTime::now()), stream.as_str());
        self.out.extend_from_slice(line);
        self.out.push(b'\n');
    }

    /// Writes the records made so far, opening the file for them if it is closed, or
    /// drops and counts them when they cannot be written.
    fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let out = std::mem::take(&mut self.out);
        if let Err(why) = self.write_out(&out) {
            self.close();
            let dropped = self.dropped.get_or_insert_with(|| {
                tracing::warn!(log = %self.path.display(), %why, "container output is dropped until it can be written");
                Box::new(Dropped { bytes: 0, why: String::new() })
            });
            dropped.bytes += out.len() as u64;
            dropped.why = why;
        }
        if OPEN.load(std::sync::atomic::Ordering::Relaxed) > KEEP_OPEN {
            self.close();
        }
    }

    fn write_out(&mut self, out: &[u8]) -> Result<(), String> {
        self.check_space()?;
        let mut notice = Vec::new();
        if let Some(d) = &self.dropped {
            let _ = writeln!(
                notice,
                "{} stderr F wasmlet: {} bytes of this container's output were dropped: {}",
                rfc3339_nano(SystemTime::now()),
                d.bytes,
                d.why
            );
        }
        let len = (notice.len() + out.len()) as u64;
        if self.policy.max_size > 0 && self.size > 0 && self.size + len > self.policy.max_size {
            self.close();
            rotate(&self.path, &self.policy).map_err(|e| format!("rotating {}: {e}", self.path.display()))?;
            self.size = 0;
        }
        if self.file.is_none() {
            let open = || std::fs::OpenOptions::new().create(true).append(true).open(&self.path);
            let file = match open() {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => match self.path.parent() {
                    Some(dir) => std::fs::create_dir_all(dir).and_then(|()| open()),
                    None => Err(e),
                },
                r => r,
            };
            self.file = Some(file.map_err(|e| format!("opening {}: {e}", self.path.display()))?);
            OPEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let file = self.file.as_mut().expect("opened above");
        file.write_all(&notice).and_then(|()| file.write_all(out)).map_err(|e| e.to_string())?;
        self.size += len;
        self.dropped = None;
        Ok(())
    }

    /// Refuses writes while the filesystem is below the free space kept, checking at
    /// most every [`SPACE_CHECK_EVERY`].
    fn check_space(&mut self) -> Result<(), String> {
        if self.policy.keep_free == 0 {
            return Ok(());
        }
        let now = std::time::Instant::now();
        let short = match self.space {
            Some((at, short)) if now.duration_since(at) < SPACE_CHECK_EVERY => short,
            _ => {
                // the nearest directory there is: the log's own is made by its first write
                let free = self
                    .path
                    .ancestors()
                    .skip(1)
                    .find_map(|dir| rustix::fs::statvfs(dir).ok())
                    .map_or(u64::MAX, |s| s.f_bavail.saturating_mul(s.f_frsize));
                let short = free < self.policy.keep_free;
                self.space = Some((now, short));
                short
            }
        };
        if short {
            return Err(format!("its log's filesystem has less than {} bytes free", self.policy.keep_free));
        }
        Ok(())
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
        let log = CriLog::open(&path, LogPolicy::default()).unwrap();
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
        let logs: Vec<CriLog> = (0..50).map(|_| CriLog::open(&path, LogPolicy::default()).unwrap()).collect();
        assert!(!path.parent().unwrap().exists(), "nothing made before a write: not the file, not its directory");
        assert!(logs.iter().all(|l| l.inner.lock().unwrap().file.is_none()), "nothing open before a write");
        logs[0].write(Stream::Stdout, b"partial").unwrap();
        assert!(logs[0].inner.lock().unwrap().file.is_none(), "an unfinished line writes nothing");
        assert!(!path.exists());
        logs[0].write(Stream::Stdout, b" line\n").unwrap();
        logs[0].finish().unwrap();
        assert!(logs[0].inner.lock().unwrap().file.is_none(), "closed when the container ends");
        assert_eq!(parse(std::fs::read(&path).unwrap().trim_ascii_end()).unwrap().line, b"partial line");
    }

    #[test]
    fn what_a_container_writes_comes_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let log = CriLog::open(&path, LogPolicy::default()).unwrap();
        let written: &[u8] = b"\xff\xfe not UTF-8\r\nsplit \xe2\x82";
        log.write(Stream::Stdout, written).unwrap();
        log.write(Stream::Stdout, b"\xac euro\n").unwrap();
        log.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let back: Vec<u8> = records(&bytes).flat_map(|r| [r.line, if r.full { b"\n" } else { b"" }].concat()).collect();
        assert_eq!(back, b"\xff\xfe not UTF-8\r\nsplit \xe2\x82\xac euro\n");
    }

    #[test]
    fn a_log_rotates_at_its_max_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let policy = LogPolicy { max_size: 1000, max_files: 3, keep_free: 0 };
        let log = CriLog::open(&path, policy).unwrap();
        for i in 0..60 {
            log.write(Stream::Stdout, format!("line {i:03} {}\n", "x".repeat(80)).as_bytes()).unwrap();
        }
        log.finish().unwrap();
        let mut files: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        assert_eq!(files.len(), 3, "the current file and two rotated ones: {files:?}");
        assert_eq!(files[0], path);
        assert!(files[1].to_string_lossy().starts_with(&format!("{}.", path.display())));
        // every file within the limit, and together the newest lines in order, none cut
        let mut lines = Vec::new();
        for f in files[1..].iter().chain([&files[0]]) {
            let bytes = std::fs::read(f).unwrap();
            assert!(bytes.len() <= 1000, "{} is {} bytes", f.display(), bytes.len());
            lines.extend(records(&bytes).map(|r| String::from_utf8_lossy(&r.line[..8]).into_owned()));
        }
        assert_eq!(lines.last().unwrap(), "line 059");
        let first: usize = lines[0][5..].parse().unwrap();
        assert_eq!(lines, (first..60).map(|i| format!("line {i:03}")).collect::<Vec<_>>());
    }

    #[test]
    fn output_that_cannot_be_written_is_dropped_counted_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let log = CriLog::open(&path, LogPolicy { keep_free: u64::MAX, ..LogPolicy::default() }).unwrap();
        // below the free space kept: the container's writes succeed, nothing is written
        log.write(Stream::Stdout, b"lost 1\n").unwrap();
        log.write(Stream::Stderr, b"lost 2\n").unwrap();
        assert!(!path.exists(), "nothing written");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"").unwrap();
        // the file cannot be opened (a directory took its place): dropped too
        {
            let mut inner = log.inner.lock().unwrap();
            inner.policy.keep_free = 0;
            inner.space = None;
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        log.write(Stream::Stdout, b"lost 3\n").unwrap();
        std::fs::remove_dir(&path).unwrap();
        // writes resume, saying first what was lost
        log.write(Stream::Stdout, b"kept\n").unwrap();
        log.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let got: Vec<(&str, String)> =
            records(&bytes).map(|r| (r.stream, String::from_utf8_lossy(r.line).into_owned())).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, "stderr");
        assert!(got[0].1.contains(" bytes of this container's output were dropped: "), "{}", got[0].1);
        assert!(got[0].1.contains("were dropped: opening "), "the last reason: {}", got[0].1);
        assert_eq!(got[1], ("stdout", "kept".to_string()));
        let dropped: u64 = got[0].1["wasmlet: ".len()..].split(' ').next().unwrap().parse().unwrap();
        assert_eq!(dropped, 3 * (30 + " stdout F lost 1\n".len() as u64), "every dropped record counted");
    }

    #[test]
    fn timestamps_are_rfc3339_nano() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_795_000_000, 5);
        assert_eq!(rfc3339_nano(t), "2026-11-18T11:06:40.000000005Z");
    }
}
