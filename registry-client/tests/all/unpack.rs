//! Hostile layers, one test per escape (the cases of containerd's TestBreakouts and the
//! CVEs in shared/reference/oci-registry.md §3). Each unpacks into `root/` beside an
//! `outside/` directory and asserts that nothing outside `root/` changed.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use registry_client::{Devices, Digest, Error, Limits, Report, UnpackOptions, Whiteouts, unpack};

use crate::layout::{Entry, gzip, tar, tree};

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("root")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside/sub")).unwrap();
        std::fs::write(dir.path().join("outside/secret"), "secret").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path().join("outside/secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
        Sandbox { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn outside(&self) -> String {
        self.dir.path().join("outside").display().to_string()
    }

    /// Everything but `root/`, plus the mode of the sandbox dir itself.
    fn snapshot(&self) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut t: Vec<String> = tree(self.dir.path()).into_iter().filter(|l| !l.starts_with("root")).collect();
        t.push(format!("top mode {:o}", std::fs::metadata(self.dir.path()).unwrap().mode()));
        t.push(format!("outside mode {:o}", std::fs::metadata(self.dir.path().join("outside")).unwrap().mode()));
        t
    }

    fn unpack(&self, layer: &[u8], options: &UnpackOptions) -> registry_client::Result<Report> {
        unpack::unpack_reader(Cursor::new(layer), layer.len() as u64, &self.root(), "sha256:test", None, options)
    }

    /// Unpacks and asserts that the outside is untouched; returns the result.
    fn attempt(&self, entries: &[Entry]) -> registry_client::Result<Report> {
        let before = self.snapshot();
        let result = self.unpack(&tar(entries), &UnpackOptions::default());
        assert_eq!(before, self.snapshot(), "something outside the target changed");
        assert!(!Path::new("/etc/wasmlet-pwned").exists());
        result
    }
}

fn expect_unsafe(result: registry_client::Result<Report>) -> String {
    match result {
        Err(e @ Error::UnsafeEntry { .. }) => e.to_string(),
        other => panic!("expected an unsafe-entry error, got {other:?}"),
    }
}

#[test]
fn dotdot_paths_are_refused() {
    for name in ["../outside/pwned", "a/../../outside/pwned", "./../pwned"] {
        let s = Sandbox::new();
        let msg = expect_unsafe(s.attempt(&[Entry::File(name, b"x", 0o644)]));
        assert!(msg.contains("'..'"), "{msg}");
    }
}

#[test]
fn absolute_paths_land_inside_the_root() {
    let s = Sandbox::new();
    s.attempt(&[Entry::File("/etc/wasmlet-pwned", b"x", 0o644)]).unwrap();
    assert!(s.root().join("etc/wasmlet-pwned").is_file());
}

#[test]
fn writes_through_a_planted_absolute_symlink_are_refused() {
    let s = Sandbox::new();
    let outside = s.outside();
    expect_unsafe(s.attempt(&[Entry::Symlink("link", &outside), Entry::File("link/pwned", b"x", 0o644)]));
    let s = Sandbox::new();
    expect_unsafe(s.attempt(&[Entry::Symlink("etc", "/etc"), Entry::File("etc/wasmlet-pwned", b"x", 0o644)]));
}

#[test]
fn writes_through_a_relative_symlink_up_and_out_are_refused() {
    let s = Sandbox::new();
    expect_unsafe(s.attempt(&[
        Entry::Dir("a", 0o755),
        Entry::Symlink("a/up", "../../outside"),
        Entry::File("a/up/pwned", b"x", 0o644),
    ]));
}

#[test]
fn a_symlink_from_an_earlier_layer_cannot_be_written_through() {
    let s = Sandbox::new();
    let outside = s.outside();
    s.attempt(&[Entry::Symlink("evil", &outside)]).unwrap();
    expect_unsafe(s.attempt(&[Entry::File("evil/pwned", b"x", 0o644)]));
    expect_unsafe(s.attempt(&[Entry::Dir("evil/newdir", 0o777)]));
}

#[test]
fn hardlinks_cannot_reach_outside() {
    let s = Sandbox::new();
    let msg = expect_unsafe(s.attempt(&[Entry::Hardlink("hl", "../outside/secret")]));
    assert!(msg.contains("hardlink target"), "{msg}");
    let s = Sandbox::new();
    expect_unsafe(s.attempt(&[Entry::Hardlink("passwd", "/etc/passwd")]));
    let s = Sandbox::new();
    expect_unsafe(s.attempt(&[Entry::Symlink("l", "/"), Entry::Hardlink("x", "l/etc/passwd")]));
    let s = Sandbox::new();
    let outside = s.outside();
    expect_unsafe(s.attempt(&[Entry::Symlink("l", &outside), Entry::Hardlink("x", "l/secret")]));
}

#[test]
fn hardlinks_inside_work_but_not_to_directories() {
    let s = Sandbox::new();
    s.attempt(&[Entry::File("a", b"data", 0o644), Entry::Hardlink("b", "a")]).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(s.root().join("a")).unwrap().ino(),
        std::fs::metadata(s.root().join("b")).unwrap().ino()
    );
    let s = Sandbox::new();
    expect_unsafe(s.attempt(&[Entry::Dir("d", 0o755), Entry::Hardlink("hd", "d")]));
}

#[test]
fn chmod_and_chown_never_go_through_a_symlink() {
    let s = Sandbox::new();
    let secret = format!("{}/secret", s.outside());
    // a file entry over a symlink replaces the link, it does not write or chmod its target
    s.attempt(&[Entry::Symlink("s", &secret), Entry::File("s", b"mine", 0o4777)]).unwrap();
    let meta = std::fs::symlink_metadata(s.root().join("s")).unwrap();
    assert!(meta.is_file());
    // a directory entry over a symlink to a directory replaces it too
    let s = Sandbox::new();
    let outside = s.outside();
    s.attempt(&[Entry::Symlink("d", &outside), Entry::Dir("d", 0o777)]).unwrap();
    assert!(std::fs::symlink_metadata(s.root().join("d")).unwrap().is_dir());
    // and a symlink's own mode entry never reaches the target
    let s = Sandbox::new();
    s.attempt(&[Entry::Raw {
        name: b"link",
        kind: tar::EntryType::Symlink,
        link: secret.as_bytes(),
        data: b"",
        mode: 0o777,
    }])
    .unwrap();
}

#[test]
fn bad_whiteout_names_are_refused() {
    for name in [".wh.", ".wh...", ".wh..", "sub/.wh..", ".wh..wh.other"] {
        let s = Sandbox::new();
        let msg = expect_unsafe(s.attempt(&[Entry::File(name, b"", 0o644)]));
        assert!(msg.contains("whiteout"), "{name}: {msg}");
    }
}

#[test]
fn whiteouts_cannot_delete_through_a_symlinked_parent() {
    let s = Sandbox::new();
    let outside = s.outside();
    expect_unsafe(s.attempt(&[Entry::Symlink("link", &outside), Entry::File("link/.wh.secret", b"", 0o644)]));
    let s = Sandbox::new();
    expect_unsafe(s.attempt(&[Entry::Symlink("link", &outside), Entry::File("link/.wh..wh..opq", b"", 0o644)]));
    // a whiteout naming a symlink removes the link, not what it points to
    let s = Sandbox::new();
    s.attempt(&[Entry::Symlink("link", &outside)]).unwrap();
    s.attempt(&[Entry::File(".wh.link", b"", 0o644)]).unwrap();
    assert!(std::fs::symlink_metadata(s.root().join("link")).is_err());
}

#[test]
fn devices_are_created_only_when_asked_for() {
    let dev = |s: &Sandbox, devices| {
        let layer =
            tar(&[Entry::Raw { name: b"dev/sda", kind: tar::EntryType::Block, link: b"", data: b"", mode: 0o660 }]);
        s.unpack(&layer, &UnpackOptions { devices, ..Default::default() })
    };
    let s = Sandbox::new();
    let report = dev(&s, Devices::Skip).unwrap();
    assert_eq!(report.skipped_devices, 1);
    assert!(std::fs::symlink_metadata(s.root().join("dev/sda")).is_err());
    let s = Sandbox::new();
    assert!(matches!(dev(&s, Devices::Refuse), Err(Error::UnsafeEntry { .. })));
    let s = Sandbox::new();
    dev(&s, Devices::Create).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(s.root().join("dev/sda")).unwrap().file_type().is_block_device());
}

#[test]
fn decompression_bombs_hit_the_size_and_ratio_caps() {
    let zeros = tar(&[Entry::File("zeros", &vec![0u8; 32 << 20], 0o644)]);
    let bomb = gzip(&zeros);
    assert!(bomb.len() < (1 << 20), "the bomb compresses well: {}", bomb.len());
    let s = Sandbox::new();
    let before = s.snapshot();
    let ratio = UnpackOptions { limits: Limits { ratio_floor: 1 << 20, ..Limits::default() }, ..Default::default() };
    let err = s.unpack(&bomb, &ratio).unwrap_err();
    assert!(matches!(err, Error::LayerLimit { .. }), "{err}");
    let absolute = UnpackOptions { limits: Limits { max_bytes: 4 << 20, ..Limits::default() }, ..Default::default() };
    let err = s.unpack(&zeros, &absolute).unwrap_err();
    assert!(matches!(err, Error::LayerLimit { .. }), "{err}");
    assert_eq!(before, s.snapshot());
}

#[test]
fn an_unpack_that_would_take_the_disk_below_what_is_kept_stops_and_leaves_nothing() {
    let layer = tar(&[Entry::File("big", &vec![7u8; 8 << 20], 0o644)]);
    let dir = tempfile::tempdir().unwrap();
    let layers = dir.path().join("layers");
    let blob = dir.path().join("blob");
    std::fs::write(&blob, &layer).unwrap();
    let diff_id = Digest::sha256_of(&layer);
    let free = registry_client::free_space(dir.path()).unwrap();
    // keep more than is free: the first check refuses
    let opts =
        UnpackOptions { limits: Limits { keep_free: free + (1 << 30), ..Limits::default() }, ..Default::default() };
    let err = registry_client::unpack_layer_dir(&blob, &diff_id, &diff_id, &layers, &opts).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NoSpace { .. }), "{msg}");
    assert!(msg.starts_with(&format!("no space for layer {diff_id} under ")) && msg.contains("are kept free"), "{msg}");
    assert_eq!(std::fs::read_dir(&layers).unwrap().count(), 0, "the partial layer directory is removed");
    // with room, the same layer unpacks
    let opts = UnpackOptions { limits: Limits { keep_free: 1 << 20, ..Limits::default() }, ..Default::default() };
    let dir = registry_client::unpack_layer_dir(&blob, &diff_id, &diff_id, &layers, &opts).unwrap();
    assert_eq!(std::fs::metadata(dir.join("big")).unwrap().len(), 8 << 20);
}

#[test]
fn entry_count_is_capped() {
    let names: Vec<String> = (0..2000).map(|i| format!("f{i}")).collect();
    let entries: Vec<Entry> = names.iter().map(|n| Entry::File(n, b"", 0o644)).collect();
    let s = Sandbox::new();
    let opts = UnpackOptions { limits: Limits { max_entries: 1000, ..Limits::default() }, ..Default::default() };
    let err = s.unpack(&tar(&entries), &opts).unwrap_err();
    assert!(matches!(err, Error::LayerLimit { .. }), "{err}");
}

#[test]
fn out_of_range_owner_ids_are_refused() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_path("f").unwrap();
    h.set_size(0);
    h.set_mode(0o644);
    h.set_uid(1 << 33); // would wrap to root when truncated (CVE-2024-40635)
    h.set_cksum();
    b.append(&h, &b""[..]).unwrap();
    let s = Sandbox::new();
    let msg = expect_unsafe(s.unpack(&b.into_inner().unwrap(), &UnpackOptions::default()));
    assert!(msg.contains("uid"), "{msg}");
}

#[test]
fn only_allowlisted_xattrs_are_applied() {
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("SCHILY.xattr.user.note", &b"hi"[..]),
        ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
    ])
    .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("f").unwrap();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    let s = Sandbox::new();
    let report = s.unpack(&b.into_inner().unwrap(), &UnpackOptions::default()).unwrap();
    assert_eq!(report.skipped_xattrs, 1);
    let mut buf = [0u8; 8];
    let n = rustix::fs::getxattr(s.root().join("f"), "user.note", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"hi");
    assert!(rustix::fs::getxattr(s.root().join("f"), "trusted.overlay.opaque", &mut buf).is_err());
}

#[test]
fn diff_id_is_checked_over_the_uncompressed_stream() {
    let layer = tar(&[Entry::File("a", b"a", 0o644)]);
    let s = Sandbox::new();
    let right = Digest::sha256_of(&layer);
    let gz = gzip(&layer);
    let r = unpack::unpack_reader(
        Cursor::new(&gz),
        gz.len() as u64,
        &s.root(),
        "l",
        Some(&right),
        &UnpackOptions::default(),
    )
    .unwrap();
    assert_eq!(r.diff_id, Some(right));
    let wrong = Digest::sha256_of(b"not it");
    let s = Sandbox::new();
    let err = unpack::unpack_reader(
        Cursor::new(&gz),
        gz.len() as u64,
        &s.root(),
        "l",
        Some(&wrong),
        &UnpackOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("diff_id"), "{err}");
}

#[test]
fn gzip_zstd_and_plain_tar_give_the_same_tree() {
    let layer = tar(&[
        Entry::Dir("etc", 0o755),
        Entry::File("etc/conf", b"k=v\n", 0o640),
        Entry::Symlink("conf", "etc/conf"),
        Entry::File("bin/tool", &[1u8; 5000], 0o755),
    ]);
    let mut zst = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    zst.write_all(&layer).unwrap();
    let forms = [layer.clone(), gzip(&layer), zst.finish().unwrap()];
    let trees: Vec<Vec<String>> = forms
        .iter()
        .map(|f| {
            let s = Sandbox::new();
            s.unpack(f, &UnpackOptions { whiteouts: Whiteouts::Flatten, ..Default::default() }).unwrap();
            tree(&s.root())
        })
        .collect();
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[0], trees[2]);
    assert!(trees[0].iter().any(|l| l.starts_with("etc/conf file 4") && l.contains("mode=640")), "{:?}", trees[0]);
}
