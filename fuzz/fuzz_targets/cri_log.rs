//! The CRI log: whatever a container writes, in whatever chunks, to either stream, is
//! written as records that `logs` renders back byte for byte (a line cut into `P`
//! records joined again); and any file, however damaged, renders without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmlet::http::logs::Renderer;
use wasmlet_runtime::log::{CriLog, Stream};

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
    let log = CriLog::open(&path).unwrap();
    let (mut rest, mut written) = (data, Vec::new());
    while let Some((&n, tail)) = rest.split_first() {
        let n = usize::from(n).min(tail.len());
        log.write(Stream::Stdout, &tail[..n]).unwrap();
        written.extend_from_slice(&tail[..n]);
        rest = &tail[n..];
    }
    log.finish().unwrap();
    let file = std::fs::read(&path).unwrap();
    let mut out = Vec::new();
    let mut r = Renderer::default();
    assert_eq!(r.feed_file(&file, &mut out), file.len(), "every record ends in a newline");
    r.flush(&mut out);
    if !written.is_empty() && written.last() != Some(&b'\n') {
        written.push(b'\n'); // the unfinished last line is written whole when the container ends
    }
    assert_eq!(out.concat(), written);
});
