//! The CRI log: whatever a container writes, in whatever chunks, to either stream, is
//! written as records that `logs` renders back byte for byte (a line cut into `P`
//! records joined again), across rotated files too; and any file, however damaged,
//! renders without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmlet::http::logs::Renderer;
use wasmlet_runtime::log::{CriLog, LogPolicy, Stream};

fuzz_target!(|data: &[u8]| {
    // a damaged file
    let mut out = Vec::new();
    let mut r = Renderer::default();
    r.timestamps = data.first().is_some_and(|b| b & 1 == 1);
    r.feed_file(data, &mut out);
    r.flush(&mut out);

    // a container's writes: the first byte of each chunk picks its length
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.log");
    // the second byte, when the first has bit 1 set, sets a tiny rotation size; every file is kept
    let policy = match data {
        [a, b, ..] if a & 2 == 2 => LogPolicy { max_size: 64 + u64::from(*b) * 8, max_files: u32::MAX, keep_free: 0 },
        _ => LogPolicy::default(),
    };
    let log = CriLog::open(&path, policy).unwrap();
    let (mut rest, mut written) = (data, Vec::new());
    while let Some((&n, tail)) = rest.split_first() {
        let n = usize::from(n).min(tail.len());
        log.write(Stream::Stdout, &tail[..n]).unwrap();
        written.extend_from_slice(&tail[..n]);
        rest = &tail[n..];
    }
    log.finish().unwrap();
    // the rotated files by name (oldest first), then the current one
    let mut files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    // (no file at all when nothing was written: a log is made by its first write)
    if !files.is_empty() {
        files.rotate_left(1);
    }
    let file: Vec<u8> = files.iter().flat_map(|f| std::fs::read(f).unwrap()).collect();
    let mut out = Vec::new();
    let mut r = Renderer::default();
    assert_eq!(r.feed_file(&file, &mut out), file.len(), "every record ends in a newline");
    r.flush(&mut out);
    if !written.is_empty() && written.last() != Some(&b'\n') {
        written.push(b'\n'); // the unfinished last line is written whole when the container ends
    }
    assert_eq!(out.concat(), written);
});
