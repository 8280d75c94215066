//! Test images: OCI image layouts written by hand (for exact control of layers, whiteouts
//! and indexes) and a busybox image built with `umoci` from Debian's busybox-static.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use registry_client::Digest;
use serde_json::{Value, json};

use crate::common::{require, run};

/// One tar entry, possibly malformed on purpose.
pub enum Entry<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    /// Raw bytes in the name and link fields, bypassing the tar crate's path checks.
    Raw {
        name: &'a [u8],
        kind: tar::EntryType,
        link: &'a [u8],
        data: &'a [u8],
        mode: u32,
    },
}

/// Writes entries as an uncompressed tar.
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            Entry::Dir(p, mode) => raw(&mut b, p.as_bytes(), tar::EntryType::Directory, b"", b"", *mode),
            Entry::File(p, data, mode) => raw(&mut b, p.as_bytes(), tar::EntryType::Regular, b"", data, *mode),
            Entry::Symlink(p, t) => raw(&mut b, p.as_bytes(), tar::EntryType::Symlink, t.as_bytes(), b"", 0o777),
            Entry::Hardlink(p, t) => raw(&mut b, p.as_bytes(), tar::EntryType::Link, t.as_bytes(), b"", 0o644),
            Entry::Raw { name, kind, link, data, mode } => raw(&mut b, name, *kind, link, data, *mode),
        }
    }
    b.into_inner().unwrap()
}

fn raw(b: &mut tar::Builder<Vec<u8>>, name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8], mode: u32) {
    let mut h = tar::Header::new_ustar();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// An OCI image layout being written.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout { dir: dir.to_path_buf() }
    }

    /// Stores a blob and returns its descriptor.
    pub fn blob(&self, media_type: &str, data: &[u8]) -> Value {
        let d = Digest::sha256_of(data);
        std::fs::write(self.dir.join("blobs/sha256").join(d.hex()), data).unwrap();
        json!({"mediaType": media_type, "digest": d.to_string(), "size": data.len()})
    }

    /// An image of gzip layers made from uncompressed tars; returns the manifest descriptor.
    pub fn image(&self, tars: &[Vec<u8>], os: &str, arch: &str) -> Value {
        let diff_ids: Vec<String> = tars.iter().map(|t| Digest::sha256_of(t).to_string()).collect();
        let layers: Vec<Value> =
            tars.iter().map(|t| self.blob("application/vnd.oci.image.layer.v1.tar+gzip", &gzip(t))).collect();
        let config = json!({
            "architecture": arch, "os": os,
            "config": {"Entrypoint": ["/bin/sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = self.blob("application/vnd.oci.image.config.v1+json", config.to_string().as_bytes());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config, "layers": layers,
        });
        let mut desc = self.blob("application/vnd.oci.image.manifest.v1+json", manifest.to_string().as_bytes());
        desc["platform"] = json!({"os": os, "architecture": arch});
        desc
    }

    /// An index over manifest descriptors; returns the index descriptor.
    pub fn index(&self, manifests: Vec<Value>) -> Value {
        let index =
            json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
        self.blob("application/vnd.oci.image.index.v1+json", index.to_string().as_bytes())
    }

    /// Writes index.json naming `desc` as `tag`.
    pub fn tag(&self, mut desc: Value, tag: &str) {
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        let index = json!({"schemaVersion": 2, "manifests": [desc]});
        std::fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
    }
}

/// A one-layer busybox image (static busybox + applet symlinks) built with umoci into an
/// OCI layout at `dir`, tagged `latest`. Needs root, as umoci unpack without --rootless.
pub fn busybox_layout(dir: &Path) -> PathBuf {
    let umoci = require("umoci", "umoci");
    let busybox = Path::new("/bin/busybox");
    assert!(busybox.is_file(), "/bin/busybox is missing: apt-get install -y busybox-static");
    let layout = dir.join("oci-busybox");
    let bundle = dir.join("bundle-busybox");
    let image = format!("{}:latest", layout.display());
    run(Command::new(&umoci).arg("init").arg("--layout").arg(&layout));
    run(Command::new(&umoci).args(["new", "--image", &image]));
    run(Command::new(&umoci).args(["unpack", "--image", &image]).arg(&bundle));
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "root"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    let applets = run(Command::new(busybox).arg("--list-full"));
    for applet in applets.lines().filter(|a| *a != "bin/busybox").take(40) {
        let depth = Path::new(applet).parent().unwrap().components().count();
        let target = format!("{}bin/busybox", "../".repeat(depth));
        let _ = std::os::unix::fs::symlink(target, rootfs.join(applet));
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    run(Command::new(&umoci).args(["repack", "--image", &image]).arg(&bundle));
    run(Command::new(&umoci).args([
        "config",
        "--image",
        &image,
        "--os",
        "linux",
        "--architecture",
        "amd64",
        "--config.entrypoint",
        "/bin/sh",
        "--config.cmd=-c",
        "--config.cmd=echo hello from busybox",
    ]));
    run(Command::new(&umoci).arg("gc").arg("--layout").arg(&layout));
    layout
}

/// Unpacks `image` (`layout:tag`) with umoci into `bundle`; returns the rootfs path.
pub fn umoci_unpack(image: &str, bundle: &Path) -> PathBuf {
    let umoci = require("umoci", "umoci");
    run(Command::new(umoci).args(["unpack", "--image", image]).arg(bundle));
    bundle.join("rootfs")
}

/// A comparable listing of a tree: path, type, mode, size, content hash or link target.
pub fn tree(root: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let ft = meta.file_type();
            let what = if ft.is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else if ft.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else if ft.is_file() {
                format!("file {} {}", meta.len(), Digest::sha256_of(&std::fs::read(&path).unwrap()))
            } else {
                format!("special {:o}", meta.mode() & 0o170000)
            };
            let mode = if ft.is_symlink() { 0 } else { meta.mode() & 0o7777 };
            out.push(format!("{rel} {what} mode={mode:o} uid={} gid={}", meta.uid(), meta.gid()));
        }
    }
    out.sort();
    out
}

/// The benchmark image: busybox plus `big_mb` MiB of random data, four 10 MiB random
/// files and a compressible text file, one layer each (7 layers; ~259 MB at 200 MiB),
/// built with umoci like `shared/reference/oci-tools/build-images.sh`.
#[allow(dead_code)] // used by benches/pull.rs
pub fn big_layout(dir: &Path, big_mb: usize) -> PathBuf {
    let umoci = require("umoci", "umoci");
    let layout = busybox_layout(dir);
    let image = format!("{}:latest", layout.display());
    let bundle = dir.join("bundle-big");
    run(Command::new(&umoci).args(["unpack", "--image", &image]).arg(&bundle));
    let data = bundle.join("rootfs/data");
    std::fs::create_dir_all(&data).unwrap();
    let random = |path: PathBuf, mb: usize| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..mb {
            fastrand::fill(&mut block);
            f.write_all(&block).unwrap();
        }
    };
    let repack = || run(Command::new(&umoci).args(["repack", "--refresh-bundle", "--image", &image]).arg(&bundle));
    random(data.join("random-big.bin"), big_mb);
    repack();
    for i in 1..=4 {
        random(data.join(format!("random-10M-{i}.bin")), 10);
        repack();
    }
    let numbers: String = (1..=3_000_000).map(|n| format!("{n}\n")).collect();
    std::fs::write(data.join("numbers.txt"), numbers).unwrap();
    repack();
    run(Command::new(&umoci).arg("gc").arg("--layout").arg(&layout));
    layout
}
