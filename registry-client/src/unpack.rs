//! Safe layer unpacking.
//!
//! Every layer is hostile input. Each entry is resolved from the root directory's file
//! descriptor one component at a time with `O_NOFOLLOW`, afresh for every entry (no cache
//! of resolved parents, CVE-2025-47290), so no path ever leaves the root: `..` is refused,
//! absolute names are made relative, a symlink or file where a parent directory should be
//! is refused, and hardlink targets are resolved the same way. Metadata is set through
//! file descriptors or with `AT_SYMLINK_NOFOLLOW`, never by path (CVE-2021-32760,
//! RUSTSEC-2026-0067). Whiteout names are validated before use. Only allow-listed xattrs
//! are applied. Devices are created only when asked for. Bytes, expansion ratio, entry
//! count and path length are capped. The uncompressed stream is hashed and checked
//! against the config's DiffID.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Error, Result};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const COPY_BUFFER: usize = 256 << 10;

/// How whiteouts are applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Whiteouts {
    /// Apply onto the tree being unpacked into: delete what they name (for flattening
    /// all layers into one directory).
    #[default]
    Flatten,
    /// Record them the way overlayfs reads them (0/0 character devices and the
    /// `trusted.overlay.opaque` xattr), for a layer directory used as a lowerdir.
    Overlay,
}

/// What to do with block and character devices in a layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Devices {
    /// Leave them out and count them.
    #[default]
    Skip,
    /// Create them (the caller trusts the image).
    Create,
    /// Fail the layer.
    Refuse,
}

/// Size limits for one layer.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Uncompressed bytes, absolute.
    pub max_bytes: u64,
    /// Uncompressed bytes per compressed byte, once past `ratio_floor`.
    pub max_ratio: u64,
    pub ratio_floor: u64,
    pub max_entries: u64,
    pub max_path: usize,
    /// Free bytes the destination's filesystem keeps: an unpack that finds less fails
    /// with [`Error::NoSpace`]. 0: no check.
    pub keep_free: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 64 << 30,
            max_ratio: 100,
            ratio_floor: 512 << 20,
            max_entries: 2_000_000,
            max_path: 4096,
            keep_free: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct UnpackOptions {
    pub whiteouts: Whiteouts,
    pub devices: Devices,
    /// Apply the owner from the tar (needs root); otherwise files belong to us.
    pub preserve_ownership: bool,
    pub limits: Limits,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            whiteouts: Whiteouts::default(),
            devices: Devices::default(),
            preserve_ownership: rustix::process::geteuid().is_root(),
            limits: Limits::default(),
        }
    }
}

/// What an unpack did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub entries: u64,
    /// Uncompressed tar bytes.
    pub bytes: u64,
    pub skipped_devices: u64,
    pub skipped_xattrs: u64,
    pub diff_id: Option<Digest>,
}

/// Unpacks a layer blob (gzip, zstd or plain tar, told apart by magic bytes) into `dest`.
/// `layer` names it in errors; `diff_id`, if given, must match the uncompressed stream.
pub fn unpack_blob(
    blob: &Path,
    dest: &Path,
    layer: &Digest,
    diff_id: Option<&Digest>,
    options: &UnpackOptions,
) -> Result<Report> {
    let file = std::fs::File::open(blob).map_err(|e| Error::io("open layer blob", blob, e))?;
    let compressed = file.metadata().map(|m| m.len()).unwrap_or(0);
    unpack_reader(file, compressed, dest, &layer.to_string(), diff_id, options)
}

/// Unpacks a layer from any reader. `compressed_size` feeds the expansion-ratio cap.
pub fn unpack_reader(
    reader: impl Read,
    compressed_size: u64,
    dest: &Path,
    label: &str,
    diff_id: Option<&Digest>,
    options: &UnpackOptions,
) -> Result<Report> {
    let layer_err = |reason: String| Error::Layer { digest: label.to_string(), reason };
    let mut input = BufReader::with_capacity(1 << 20, reader);
    let magic = peek(&mut input).map_err(|e| layer_err(format!("read: {e}")))?;
    let decoded: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(input))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let mut d = zstd::stream::read::Decoder::with_buffer(input).map_err(|e| layer_err(format!("zstd: {e}")))?;
        d.window_log_max(27).map_err(|e| layer_err(format!("zstd: {e}")))?;
        Box::new(d)
    } else {
        Box::new(input)
    };
    let algorithm = diff_id.map_or(Algorithm::Sha256, Digest::algorithm);
    let limit = options
        .limits
        .max_bytes
        .min(options.limits.ratio_floor.max(compressed_size.saturating_mul(options.limits.max_ratio)));
    let space = (options.limits.keep_free > 0).then(|| Space {
        dir: dest.to_path_buf(),
        keep: options.limits.keep_free,
        check_at: 0,
        short: None,
    });
    let counted = Counted { inner: decoded, hasher: Hasher::new(algorithm), bytes: 0, limit, exceeded: false, space };
    let root = open_root(dest)?;
    let mut unpacker = Unpacker {
        root,
        dest,
        label,
        options,
        report: Report::default(),
        written: HashSet::new(),
        opaque_done: HashSet::new(),
    };
    let mut archive = tar::Archive::new(counted);
    let result = unpacker.run(&mut archive);
    let mut counted = archive.into_inner();
    if let Some(Space { dir, keep, short: Some(free), .. }) = &counted.space {
        return Err(Error::NoSpace {
            what: format!("layer {label}"),
            dir: dir.clone(),
            free: *free,
            need: 0,
            keep: *keep,
        });
    }
    if counted.exceeded {
        return Err(Error::LayerLimit {
            digest: label.into(),
            reason: format!("more than {limit} uncompressed bytes"),
        });
    }
    result?;
    // Hash what follows the end-of-archive blocks too: the DiffID covers the whole stream.
    io::copy(&mut counted, &mut io::sink()).map_err(|e| {
        if counted.exceeded {
            Error::LayerLimit { digest: label.into(), reason: format!("more than {limit} uncompressed bytes") }
        } else {
            layer_err(format!("read: {e}"))
        }
    })?;
    let actual = counted.hasher.finish();
    if let Some(expected) = diff_id
        && &actual != expected
    {
        return Err(layer_err(format!("uncompressed content is {actual}, the config's diff_id is {expected}")));
    }
    unpacker.report.bytes = counted.bytes;
    unpacker.report.diff_id = Some(actual);
    Ok(unpacker.report)
}

fn peek(r: &mut BufReader<impl Read>) -> io::Result<Vec<u8>> {
    use std::io::BufRead;
    Ok(r.fill_buf()?.iter().take(4).copied().collect())
}

/// Counts and hashes the uncompressed stream, failing past the limit or when the
/// destination runs short of the free space it keeps.
struct Counted<R> {
    inner: R,
    hasher: Hasher,
    bytes: u64,
    limit: u64,
    exceeded: bool,
    space: Option<Space>,
}

/// The free space an unpack keeps, checked every [`SPACE_CHECK_EVERY`] bytes.
struct Space {
    dir: std::path::PathBuf,
    keep: u64,
    check_at: u64,
    /// The free bytes found when it fell short.
    short: Option<u64>,
}

const SPACE_CHECK_EVERY: u64 = 4 << 20;

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(space) = self.space.as_mut().filter(|s| self.bytes >= s.check_at) {
            space.check_at = self.bytes + SPACE_CHECK_EVERY;
            if let Some(free) = crate::error::free_space(&space.dir).filter(|&f| f < space.keep) {
                space.short = Some(free);
                return Err(io::Error::from(io::ErrorKind::StorageFull));
            }
        }
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        if self.bytes > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("layer size limit exceeded"));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn open_root(dest: &Path) -> Result<OwnedFd> {
    rustix::fs::open(dest, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::io("open unpack target", dest, e.into()))
}

struct Unpacker<'a> {
    root: OwnedFd,
    dest: &'a Path,
    label: &'a str,
    options: &'a UnpackOptions,
    report: Report,
    /// Paths this layer wrote, which an opaque marker must not delete.
    written: HashSet<Vec<OsString>>,
    opaque_done: HashSet<Vec<OsString>>,
}

/// The parsed, validated form of one tar entry.
struct Entry {
    path: Vec<OsString>,
    kind: tar::EntryType,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    link: Option<Vec<u8>>,
    device: (u32, u32),
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Unpacker<'_> {
    fn run<R: Read>(&mut self, archive: &mut tar::Archive<R>) -> Result<()> {
        let mut buf = vec![0u8; COPY_BUFFER];
        let entries = archive.entries().map_err(|e| self.layer(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.layer(format!("bad tar entry: {e}")))?;
            self.report.entries += 1;
            if self.report.entries > self.options.limits.max_entries {
                return Err(Error::LayerLimit {
                    digest: self.label.into(),
                    reason: format!("more than {} entries", self.options.limits.max_entries),
                });
            }
            let parsed = self.parse(&mut entry)?;
            self.apply(parsed, &mut entry, &mut buf)?;
        }
        Ok(())
    }

    /// The device is full (or, if the stream reader found it short, below what is kept).
    fn no_space(&self) -> Error {
        let dir = self.dest.to_path_buf();
        let free = crate::error::free_space(&dir).unwrap_or(0);
        Error::NoSpace {
            what: format!("layer {}", self.label),
            dir,
            free,
            need: 0,
            keep: self.options.limits.keep_free,
        }
    }

    fn layer(&self, reason: String) -> Error {
        Error::Layer { digest: self.label.to_string(), reason }
    }

    fn unsafe_entry(&self, path: &[OsString], reason: impl Into<String>) -> Error {
        Error::UnsafeEntry { digest: self.label.to_string(), entry: display(path), reason: reason.into() }
    }

    fn parse<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> Result<Entry> {
        let raw_path = entry.path_bytes().into_owned();
        if raw_path.len() > self.options.limits.max_path {
            return Err(Error::LayerLimit {
                digest: self.label.into(),
                reason: format!("path of {} bytes", raw_path.len()),
            });
        }
        let path = clean(Path::new(OsStr::from_bytes(&raw_path))).map_err(|reason| Error::UnsafeEntry {
            digest: self.label.into(),
            entry: String::from_utf8_lossy(&raw_path).into(),
            reason,
        })?;
        let header = entry.header();
        let bad = |what: &str, e: io::Error| self.unsafe_entry(&path, format!("invalid {what}: {e}"));
        let id = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| self.unsafe_entry(&path, format!("{what} {v} out of range")))
        };
        let uid = id(header.uid().map_err(|e| bad("uid", e))?, "uid")?;
        let gid = id(header.gid().map_err(|e| bad("gid", e))?, "gid")?;
        let mode = header.mode().map_err(|e| bad("mode", e))? & 0o7777;
        let mtime = header.mtime().map_err(|e| bad("mtime", e))?.min(i64::MAX as u64) as i64;
        let kind = header.entry_type();
        let device = match (header.device_major(), header.device_minor()) {
            (Ok(Some(a)), Ok(Some(b))) => (a, b),
            _ => (0, 0),
        };
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(|e| bad("pax header", e))? {
            for ext in exts {
                let ext = ext.map_err(|e| bad("pax record", e))?;
                if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        Ok(Entry { path, kind, mode, uid, gid, mtime, link, device, xattrs })
    }

    fn apply<R: Read>(&mut self, e: Entry, data: &mut tar::Entry<'_, R>, buf: &mut [u8]) -> Result<()> {
        use tar::EntryType as T;
        if matches!(e.kind, T::XGlobalHeader) {
            return Ok(());
        }
        let Some((name, parents)) = e.path.split_last() else {
            return Ok(()); // the root itself ("./"): never re-own or re-mode the target
        };
        let name_bytes = name.as_bytes();
        if name_bytes.starts_with(WHITEOUT.as_bytes()) {
            return self.whiteout(&e.path, parents, name_bytes);
        }
        let parent = self.walk(parents, true, &e.path)?;
        let label = self.label;
        let io_err = |what: &str, err: Errno| io_fail(label, &e.path, what, err);
        match e.kind {
            T::GNUSparse => return Err(self.unsafe_entry(&e.path, "sparse entries are not supported")),
            T::Regular | T::Continuous => {
                let fd = self.create(&parent, name, &e.path, |p, n| {
                    rustix::fs::openat(
                        p,
                        n,
                        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                })?;
                let mut file = std::fs::File::from(fd);
                copy(data, &mut file, buf).map_err(|err| {
                    if crate::error::is_no_space(&err) {
                        self.no_space()
                    } else {
                        self.layer(format!("{}: write: {err}", display(&e.path)))
                    }
                })?;
                self.finish_fd(file.as_fd(), &e).map_err(|err| io_err("metadata", err))?;
            }
            T::Directory => {
                match rustix::fs::mkdirat(&parent, name.as_os_str(), Mode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EXIST) if is_dir_at(&parent, name) => {}
                    Err(Errno::EXIST) => {
                        remove_at(&parent, name).map_err(|err| io_err("replace", err))?;
                        rustix::fs::mkdirat(&parent, name.as_os_str(), Mode::from_raw_mode(0o700))
                            .map_err(|err| io_err("mkdir", err))?;
                    }
                    Err(err) => return Err(io_err("mkdir", err)),
                }
                let fd = rustix::fs::openat(&parent, name.as_os_str(), dir_flags(), Mode::empty())
                    .map_err(|err| io_err("open dir", err))?;
                self.finish_fd(fd.as_fd(), &e).map_err(|err| io_err("metadata", err))?;
            }
            T::Symlink => {
                let target = e
                    .link
                    .clone()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| self.unsafe_entry(&e.path, "symlink without a target"))?;
                self.create(&parent, name, &e.path, |p, n| rustix::fs::symlinkat(OsStr::from_bytes(&target), p, n))?;
                self.finish_at(&parent, name, &e).map_err(|err| io_err("metadata", err))?;
            }
            T::Link => self.hardlink(&parent, name, &e)?,
            T::Char | T::Block => match self.options.devices {
                Devices::Skip => self.report.skipped_devices += 1,
                Devices::Refuse => return Err(self.unsafe_entry(&e.path, "device nodes are refused")),
                Devices::Create => {
                    let ft = if e.kind == T::Char { FileType::CharacterDevice } else { FileType::BlockDevice };
                    let dev = rustix::fs::makedev(e.device.0, e.device.1);
                    self.create(&parent, name, &e.path, |p, n| {
                        rustix::fs::mknodat(p, n, ft, Mode::from_raw_mode(e.mode), dev)
                    })?;
                    self.finish_at(&parent, name, &e).map_err(|err| io_err("metadata", err))?;
                }
            },
            T::Fifo => {
                self.create(&parent, name, &e.path, |p, n| {
                    rustix::fs::mknodat(p, n, FileType::Fifo, Mode::from_raw_mode(e.mode), 0)
                })?;
                self.finish_at(&parent, name, &e).map_err(|err| io_err("metadata", err))?;
            }
            other => return Err(self.unsafe_entry(&e.path, format!("unsupported entry type {other:?}"))),
        }
        self.written.insert(e.path);
        Ok(())
    }

    /// Opens (creating if asked) each directory of `components` below the root, never
    /// following a symlink: a symlink or file where a directory should be is refused.
    fn walk(&self, components: &[OsString], create: bool, entry: &[OsString]) -> Result<OwnedFd> {
        let mut dir = rustix::fs::openat(&self.root, ".", dir_flags(), Mode::empty())
            .map_err(|e| self.layer(format!("open root: {}", io::Error::from(e))))?;
        for (i, c) in components.iter().enumerate() {
            let next = match rustix::fs::openat(&dir, c.as_os_str(), dir_flags(), Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&dir, c.as_os_str(), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => {
                            return Err(self.layer(format!(
                                "{}: mkdir parent: {}",
                                display(entry),
                                io::Error::from(e)
                            )));
                        }
                    }
                    rustix::fs::openat(&dir, c.as_os_str(), dir_flags(), Mode::empty())
                }
                other => other,
            };
            dir = match next {
                Ok(fd) => fd,
                Err(Errno::NOTDIR | Errno::LOOP) => {
                    return Err(self.unsafe_entry(
                        entry,
                        format!("parent {:?} is a symlink or not a directory", display(&components[..=i])),
                    ));
                }
                Err(Errno::NOENT) => {
                    return Err(
                        self.unsafe_entry(entry, format!("parent {:?} does not exist", display(&components[..=i])))
                    );
                }
                Err(e) => return Err(self.layer(format!("{}: open parent: {}", display(entry), io::Error::from(e)))),
            };
        }
        Ok(dir)
    }

    /// Runs `make`; if the name exists, removes what is there (a directory only when the
    /// new entry is not one) and tries once more.
    fn create<T>(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &[OsString],
        make: impl Fn(&OwnedFd, &OsStr) -> rustix::io::Result<T>,
    ) -> Result<T> {
        let err = |what: &str, e: Errno| self.layer(format!("{}: {what}: {}", display(path), io::Error::from(e)));
        match make(parent, name) {
            Err(Errno::EXIST) => {
                remove_at(parent, name).map_err(|e| err("replace", e))?;
                make(parent, name).map_err(|e| err("create", e))
            }
            other => other.map_err(|e| err("create", e)),
        }
    }

    fn hardlink(&mut self, parent: &OwnedFd, name: &OsStr, e: &Entry) -> Result<()> {
        let target = e.link.as_deref().ok_or_else(|| self.unsafe_entry(&e.path, "hardlink without a target"))?;
        let target = clean(Path::new(OsStr::from_bytes(target)))
            .map_err(|reason| self.unsafe_entry(&e.path, format!("hardlink target: {reason}")))?;
        if target == e.path {
            return Ok(());
        }
        let Some((tname, tparents)) = target.split_last() else {
            return Err(self.unsafe_entry(&e.path, "hardlink to the root directory"));
        };
        let tdir = self.walk(tparents, false, &e.path)?;
        match rustix::fs::statat(&tdir, tname.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(self.unsafe_entry(&e.path, "hardlink to a directory"));
            }
            Ok(_) => {}
            Err(_) => {
                return Err(self.unsafe_entry(
                    &e.path,
                    format!("hardlink target {:?} does not exist in this layer", display(&target)),
                ));
            }
        }
        self.create(parent, name, &e.path, |p, n| rustix::fs::linkat(&tdir, tname.as_os_str(), p, n, AtFlags::empty()))
    }

    fn whiteout(&mut self, path: &[OsString], parents: &[OsString], name: &[u8]) -> Result<()> {
        let parent = self.walk(parents, true, path)?;
        let label = self.label;
        let err = |what: &str, e: Errno| io_fail(label, path, what, e);
        if name == OPAQUE.as_bytes() {
            if !self.opaque_done.insert(parents.to_vec()) {
                return Ok(()); // repeated markers cost nothing (CVE-2026-95838)
            }
            return match self.options.whiteouts {
                Whiteouts::Overlay => {
                    rustix::fs::fsetxattr(&parent, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                        .map_err(|e| err("mark opaque", e))
                }
                Whiteouts::Flatten => self.clear_lower(&parent, parents).map_err(|e| err("opaque", e)),
            };
        }
        let hidden = &name[WHITEOUT.len()..];
        if hidden.is_empty()
            || hidden == b"."
            || hidden == b".."
            || hidden.starts_with(WHITEOUT.as_bytes())
            || hidden.contains(&b'/')
        {
            return Err(self.unsafe_entry(path, "invalid whiteout name"));
        }
        let hidden = OsStr::from_bytes(hidden);
        match self.options.whiteouts {
            Whiteouts::Overlay => {
                self.create(&parent, hidden, path, |p, n| {
                    rustix::fs::mknodat(p, n, FileType::CharacterDevice, Mode::empty(), 0)
                })?;
            }
            Whiteouts::Flatten => remove_at(&parent, hidden).map_err(|e| err("whiteout", e))?,
        }
        Ok(())
    }

    /// Removes what lower layers put in an opaque directory, keeping this layer's entries.
    fn clear_lower(&self, dir: &OwnedFd, dir_path: &[OsString]) -> rustix::io::Result<()> {
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(dir)? {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes()).to_os_string();
            if name == "." || name == ".." {
                continue;
            }
            let mut p = dir_path.to_vec();
            p.push(name.clone());
            if !self.written.contains(&p) && !self.written.iter().any(|w| w.starts_with(&p)) {
                names.push(name);
            }
        }
        names.iter().try_for_each(|n| remove_at(dir, n))
    }

    fn finish_fd(&mut self, fd: std::os::fd::BorrowedFd<'_>, e: &Entry) -> rustix::io::Result<()> {
        if self.options.preserve_ownership {
            rustix::fs::fchown(fd, Some(Uid::from_raw(e.uid)), Some(Gid::from_raw(e.gid)))?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(e.mode))?;
        for (name, value) in &e.xattrs {
            if xattr_allowed(name) {
                rustix::fs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty())?;
            } else {
                self.report.skipped_xattrs += 1;
            }
        }
        if e.kind != tar::EntryType::Directory {
            rustix::fs::futimens(fd, &times(e.mtime))?;
        }
        Ok(())
    }

    /// Metadata for entries we cannot open (symlinks, devices, fifos): by name, no follow.
    fn finish_at(&mut self, parent: &OwnedFd, name: &OsStr, e: &Entry) -> rustix::io::Result<()> {
        if self.options.preserve_ownership {
            rustix::fs::chownat(
                parent,
                name,
                Some(Uid::from_raw(e.uid)),
                Some(Gid::from_raw(e.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        if e.kind != tar::EntryType::Symlink {
            // chmod of a non-symlink by name: it was just created by us and is not a link.
            let fd =
                rustix::fs::openat(parent, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
            let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
            rustix::fs::chmod(proc.as_str(), Mode::from_raw_mode(e.mode))?;
        }
        self.report.skipped_xattrs += e.xattrs.len() as u64;
        rustix::fs::utimensat(parent, name, &times(e.mtime), AtFlags::SYMLINK_NOFOLLOW)
    }
}

fn io_fail(label: &str, path: &[OsString], what: &str, err: Errno) -> Error {
    Error::Layer { digest: label.to_string(), reason: format!("{}: {what}: {}", display(path), io::Error::from(err)) }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn times(mtime: i64) -> Timestamps {
    let t = Timespec { tv_sec: mtime, tv_nsec: 0 };
    Timestamps { last_access: t, last_modification: t }
}

/// xattrs a layer may set. `trusted.*` (overlay's own), `security.selinux` and the rest
/// are dropped.
fn xattr_allowed(name: &str) -> bool {
    name.starts_with("user.") || name == "security.capability"
}

fn is_dir_at(parent: &OwnedFd, name: &OsStr) -> bool {
    rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
}

/// Removes `name` in `parent` and, for a directory, everything below it, without
/// following any symlink.
fn remove_at(parent: &OwnedFd, name: &OsStr) -> rustix::io::Result<()> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR | Errno::PERM) => {
            let dir = rustix::fs::openat(parent, name, dir_flags(), Mode::empty())?;
            let mut names = Vec::new();
            for entry in rustix::fs::Dir::read_from(&dir)? {
                let entry = entry?;
                let n = entry.file_name().to_bytes();
                if n != b"." && n != b".." {
                    names.push(OsStr::from_bytes(n).to_os_string());
                }
            }
            names.iter().try_for_each(|n| remove_at(&dir, n))?;
            rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
        }
        Err(e) => Err(e),
    }
}

/// Normalises an entry name: leading `/` and `.` components dropped, `..` refused.
fn clean(path: &Path) -> std::result::Result<Vec<OsString>, String> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir => return Err("'..' in path".into()),
            Component::Prefix(_) => return Err("path prefix".into()),
        }
    }
    Ok(out)
}

fn display(path: &[OsString]) -> String {
    path.iter().map(|c| c.to_string_lossy()).collect::<Vec<_>>().join("/")
}

fn copy(from: &mut impl Read, to: &mut std::fs::File, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0;
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        let c = |s: &str| clean(Path::new(s)).map(|v| display(&v));
        assert_eq!(c("/etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(c("./a/./b/").unwrap(), "a/b");
        assert!(c("a/../../etc").is_err());
        assert!(c("../x").is_err());
        assert_eq!(c("./").unwrap(), "");
    }

    #[test]
    fn xattr_allowlist() {
        assert!(xattr_allowed("user.mime"));
        assert!(xattr_allowed("security.capability"));
        assert!(!xattr_allowed("trusted.overlay.opaque"));
        assert!(!xattr_allowed("security.selinux"));
    }
}
