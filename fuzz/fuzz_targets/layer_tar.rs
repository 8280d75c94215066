//! The layer unpacker, on any bytes (plain, gzip or zstd tar): an error or an unpacked
//! tree, and never a write outside the root: the root's parent holds the root and the
//! canary beside it, and nothing else, unchanged, after every input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_client::UnpackOptions;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    let canary = dir.path().join("canary");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&canary).unwrap();
    std::fs::write(canary.join("file"), b"canary").unwrap();
    let options = UnpackOptions { preserve_ownership: false, ..UnpackOptions::default() };
    let _ = registry_client::unpack::unpack_reader(data, data.len() as u64, &root, "fuzz", None, &options);
    let mut beside: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    beside.sort();
    assert_eq!(beside, ["canary", "root"], "the unpack wrote beside its root");
    let left: Vec<_> = std::fs::read_dir(&canary).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["file"], "the unpack wrote into the canary");
    assert_eq!(std::fs::read(canary.join("file")).unwrap(), b"canary", "the unpack wrote through a link");
});
