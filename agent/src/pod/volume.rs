//! Pod volumes on the host, one directory each under the pod's directory, handed to
//! both runtimes (bind mounts for Linux, preopens for Wasm).
//!
//! ConfigMap, Secret, downward-API and projected volumes are written the way the
//! kubelet's atomic writer does: the files live in a timestamped `..<stamp>` directory,
//! `..data` is a symlink to it swapped with one rename, and the names users see are
//! symlinks through `..data`. A reader never sees half an update, and an update reaches
//! running containers without a restart. Secret-bearing volumes live on tmpfs so their
//! bytes never touch the disk.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{KeyToPath, Volume};

use super::PodRecord;
use super::env::{Objects, field_value, resource_value};
use crate::node::Node;

/// Why a volume could not be made: the container waits with `reason` and the pod
/// gets a warning event `event`.
#[derive(Debug)]
pub struct VolumeError {
    pub reason: &'static str,
    pub event: &'static str,
    pub message: String,
}

fn mount_error(message: String) -> VolumeError {
    VolumeError { reason: "ContainerCreating", event: "FailedMount", message }
}

/// File path → (content, mode).
type Payload = BTreeMap<String, (Vec<u8>, u32)>;

/// Makes volume `v` (or brings its files up to date) under `root` and returns its
/// host directory.
pub fn setup(
    objects: &dyn Objects,
    rec: &PodRecord,
    node: &Node,
    v: &Volume,
    root: &Path,
) -> Result<PathBuf, VolumeError> {
    let io = |what: &str, e: std::io::Error| {
        mount_error(format!("MountVolume.SetUp failed for volume {:?}: {what}: {e}", v.name))
    };
    if let Some(h) = &v.host_path {
        return host_path(&h.path, h.type_.as_deref().unwrap_or("")).map_err(|m| {
            mount_error(format!("MountVolume.SetUp failed for volume {:?} : hostPath type check failed: {m}", v.name))
        });
    }
    let dir = root.join(&v.name);
    std::fs::create_dir_all(&dir).map_err(|e| io("create", e))?;
    let psc = rec.pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    // in a user namespace (hostUsers: false) the pod's ids are shifted by its range's
    // base: its root owns the volumes wasmlet makes, as through the kubelet's idmapped
    // mounts, and the fsGroup is the shifted group
    let shift = rec.userns.unwrap_or(0);
    let fs_group = psc.and_then(|s| s.fs_group).and_then(|g| u32::try_from(g).ok()).map(|g| g.saturating_add(shift));
    let on_root_mismatch = psc.and_then(|s| s.fs_group_change_policy.as_deref()) == Some("OnRootMismatch");
    if let Some(e) = &v.empty_dir {
        if e.medium.as_deref() == Some("Memory") {
            let size = e.size_limit.as_ref().and_then(|q| crate::spec::parse_bytes(&q.0)).unwrap_or(node.memory_bytes);
            tmpfs(&dir, Some(size), 0o777).map_err(|e| io("tmpfs", e))?;
        } else {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(|e| io("chmod", e))?;
        }
        if let Some(base) = rec.userns {
            std::os::unix::fs::chown(&dir, Some(base), Some(base)).map_err(|e| io("chown", e))?;
        }
        if let Some(gid) = fs_group {
            set_ownership(&dir, gid, false, on_root_mismatch).map_err(|e| io("fsGroup", e))?;
        }
        return Ok(dir);
    }
    let mut payload = payload(objects, rec, node, v)?;
    if fs_group.is_some() {
        // the group may read every file (the modes fsGroup leads to, written at once)
        payload.values_mut().for_each(|(_, mode)| *mode |= 0o440);
    }
    if secret_bearing(v) {
        tmpfs(&dir, None, 0o755).map_err(|e| io("tmpfs", e))?;
    }
    let written = write_atomic(&dir, &payload).map_err(|e| io("write", e))?;
    if let Some(base) = rec.userns
        && (written || !owned_by_uid(&dir, base))
    {
        shift_owner(&dir, base).map_err(|e| io("chown", e))?;
    }
    if let Some(gid) = fs_group
        && (written || !owned_by(&dir, gid, true))
    {
        set_ownership(&dir, gid, true, false).map_err(|e| io("fsGroup", e))?;
    }
    Ok(dir)
}

fn owned_by_uid(dir: &Path, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).is_ok_and(|m| m.uid() == uid)
}

/// Gives everything under `dir` to host uid and gid `base` (the root of a pod's user
/// namespace); symlinks are re-owned, never followed.
fn shift_owner(dir: &Path, base: u32) -> std::io::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        std::os::unix::fs::lchown(&path, Some(base), Some(base))?;
        if std::fs::symlink_metadata(&path)?.is_dir() {
            for e in std::fs::read_dir(&path)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(())
}

/// Whether `dir` is already group `gid`'s, set-group-ID, with the group permissions
/// `fsGroup` gives (`fsGroupChangePolicy: OnRootMismatch` then leaves it alone).
fn owned_by(dir: &Path, gid: u32, read_only: bool) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mask = if read_only { 0o550 } else { 0o770 };
    std::fs::metadata(dir).is_ok_and(|m| m.gid() == gid && m.mode() & 0o2000 != 0 && m.mode() & mask == mask)
}

/// `fsGroup`, as the kubelet applies it: everything under `dir` becomes group `gid`'s,
/// readable (and, unless `read_only`, writable) by the group, directories set-group-ID
/// so new files inherit the group. Symlinks are re-grouped, never followed.
fn set_ownership(dir: &Path, gid: u32, read_only: bool, on_root_mismatch: bool) -> std::io::Result<()> {
    if on_root_mismatch && owned_by(dir, gid, read_only) {
        return Ok(());
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        std::os::unix::fs::lchown(&path, None, Some(gid))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mut mask = if read_only { 0o440 } else { 0o660 };
        if meta.is_dir() {
            mask |= 0o2110;
            for e in std::fs::read_dir(&path)? {
                stack.push(e?.path());
            }
        }
        let mode = meta.permissions().mode() & 0o7777;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | mask))?;
    }
    Ok(())
}

/// Volumes that may carry Secrets (service-account tokens among them): kept on tmpfs.
fn secret_bearing(v: &Volume) -> bool {
    v.secret.is_some() || v.projected.is_some() || v.downward_api.is_some()
}

/// Whether volume `v` takes its files from objects (and so follows their updates).
pub fn is_projected(v: &Volume) -> bool {
    v.config_map.is_some() || secret_bearing(v)
}

fn items(
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    data: BTreeMap<String, Vec<u8>>,
    what: &str,
    optional: bool,
    out: &mut Payload,
) -> Result<(), VolumeError> {
    match items {
        Some(items) if !items.is_empty() => {
            for it in items {
                match data.get(&it.key) {
                    Some(v) => {
                        out.insert(it.path.clone(), (v.clone(), it.mode.map_or(default_mode, |m| m as u32)));
                    }
                    None if optional => {}
                    None => return Err(mount_error(format!("{what} references non-existent config key: {}", it.key))),
                }
            }
        }
        _ => {
            for (k, v) in data {
                out.insert(k, (v, default_mode));
            }
        }
    }
    Ok(())
}

/// The files a configMap, secret, downwardAPI or projected volume holds now.
fn payload(objects: &dyn Objects, rec: &PodRecord, node: &Node, v: &Volume) -> Result<Payload, VolumeError> {
    let ns = rec.namespace();
    let mut out = Payload::new();
    let config_map = |name: &str, optional: bool| -> Result<Option<BTreeMap<String, Vec<u8>>>, VolumeError> {
        match objects.config_map(ns, name) {
            Some(cm) => {
                let mut data: BTreeMap<String, Vec<u8>> =
                    cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
                data.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
                Ok(Some(data))
            }
            None if optional => Ok(None),
            None => Err(mount_error(format!(
                "MountVolume.SetUp failed for volume {:?} : configmap \"{name}\" not found",
                v.name
            ))),
        }
    };
    let secret = |name: &str, optional: bool| -> Result<Option<BTreeMap<String, Vec<u8>>>, VolumeError> {
        match objects.secret(ns, name) {
            Some(s) => Ok(Some(s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect())),
            None if optional => Ok(None),
            None => Err(mount_error(format!(
                "MountVolume.SetUp failed for volume {:?} : secret \"{name}\" not found",
                v.name
            ))),
        }
    };
    let downward = |files: &[k8s_openapi::api::core::v1::DownwardAPIVolumeFile],
                    mode: u32,
                    out: &mut Payload|
     -> Result<(), VolumeError> {
        for f in files {
            let value = match (&f.field_ref, &f.resource_field_ref) {
                (Some(r), _) => field_value(&rec.pod, rec.pod_ip.as_deref(), node, &r.field_path),
                (None, Some(r)) => resource_value(
                    &rec.pod,
                    r.container_name.as_deref().unwrap_or_default(),
                    &r.resource,
                    r.divisor.as_ref().map(|d| d.0.as_str()),
                    node,
                ),
                _ => continue,
            }
            .map_err(mount_error)?;
            out.insert(f.path.clone(), (value.into_bytes(), f.mode.map_or(mode, |m| m as u32)));
        }
        Ok(())
    };
    if let Some(c) = &v.config_map {
        let optional = c.optional == Some(true);
        if let Some(data) = config_map(&c.name, optional)? {
            items(c.items.as_ref(), c.default_mode.unwrap_or(0o644) as u32, data, "configMap", optional, &mut out)?;
        }
    } else if let Some(s) = &v.secret {
        let optional = s.optional == Some(true);
        if let Some(data) = secret(s.secret_name.as_deref().unwrap_or_default(), optional)? {
            items(s.items.as_ref(), s.default_mode.unwrap_or(0o644) as u32, data, "secret", optional, &mut out)?;
        }
    } else if let Some(d) = &v.downward_api {
        downward(d.items.as_deref().unwrap_or_default(), d.default_mode.unwrap_or(0o644) as u32, &mut out)?;
    } else if let Some(p) = &v.projected {
        let mode = p.default_mode.unwrap_or(0o644) as u32;
        for src in p.sources.iter().flatten() {
            if let Some(c) = &src.config_map {
                let optional = c.optional == Some(true);
                if let Some(data) = config_map(&c.name, optional)? {
                    items(c.items.as_ref(), mode, data, "configMap", optional, &mut out)?;
                }
            } else if let Some(s) = &src.secret {
                let optional = s.optional == Some(true);
                if let Some(data) = secret(&s.name, optional)? {
                    items(s.items.as_ref(), mode, data, "secret", optional, &mut out)?;
                }
            } else if let Some(d) = &src.downward_api {
                downward(d.items.as_deref().unwrap_or_default(), mode, &mut out)?;
            } else if let Some(t) = &src.service_account_token {
                // issued by the API server (cluster mode), kept as a node-local Secret
                let name = token_secret_name(&rec.uid, t.audience.as_deref(), t.expiration_seconds);
                let token = objects.secret(ns, &name).and_then(|s| s.data?.remove("token")).ok_or_else(|| {
                    mount_error(format!(
                        "MountVolume.SetUp failed for volume {:?} : failed to fetch token: the service account token is not issued yet",
                        v.name
                    ))
                })?;
                out.insert(t.path.clone(), (token.0, mode));
            }
        }
    }
    Ok(out)
}

/// The node-local Secret that holds a pod's service-account token for one audience and
/// lifetime (the TokenRequest the node made for it).
pub fn token_secret_name(uid: &str, audience: Option<&str>, expiration: Option<i64>) -> String {
    let which = crc32fast::hash(format!("{}/{}", audience.unwrap_or(""), expiration.unwrap_or(3600)).as_bytes());
    format!("wasmlet-sa-token.{uid}.{which:08x}")
}

/// hostPath with the kubelet's type checks.
fn host_path(path: &str, kind: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::FileTypeExt;
    let p = PathBuf::from(path);
    let meta = std::fs::metadata(&p);
    let ft = meta.as_ref().map(|m| m.file_type());
    match kind {
        "DirectoryOrCreate" if meta.is_err() => {
            std::fs::create_dir_all(&p).map_err(|e| format!("{path}: {e}"))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).map_err(|e| format!("{path}: {e}"))?;
        }
        "FileOrCreate" if meta.is_err() => {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("{path}: {e}"))?;
            }
            std::fs::OpenOptions::new().create(true).append(true).open(&p).map_err(|e| format!("{path}: {e}"))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).map_err(|e| format!("{path}: {e}"))?;
        }
        "Directory" | "DirectoryOrCreate" if !ft.as_ref().is_ok_and(|t| t.is_dir()) => {
            return Err(format!("{path} is not a directory"));
        }
        "File" | "FileOrCreate" if !ft.as_ref().is_ok_and(|t| t.is_file()) => {
            return Err(format!("{path} is not a file"));
        }
        "Socket" if !ft.as_ref().is_ok_and(|t| t.is_socket()) => return Err(format!("{path} is not a socket file")),
        "CharDevice" if !ft.as_ref().is_ok_and(|t| t.is_char_device()) => {
            return Err(format!("{path} is not a character device"));
        }
        "BlockDevice" if !ft.as_ref().is_ok_and(|t| t.is_block_device()) => {
            return Err(format!("{path} is not a block device"));
        }
        _ => {}
    }
    Ok(p)
}

/// The host path for a mount with `subPath`: created as a directory when missing, and
/// refused if it resolves (through symlinks) outside the volume (CVE-2017-1002101).
pub fn sub_path(volume: &Path, sub: &str) -> Result<PathBuf, VolumeError> {
    let err = |m: String| VolumeError { reason: "CreateContainerConfigError", event: "Failed", message: m };
    let base = volume.canonicalize().map_err(|e| err(format!("volume {}: {e}", volume.display())))?;
    let target = volume.join(sub);
    if std::fs::symlink_metadata(&target).is_err() {
        std::fs::create_dir_all(&target)
            .map_err(|e| err(format!("failed to create subPath directory {sub:?}: {e}")))?;
    }
    let real = target.canonicalize().map_err(|e| err(format!("subPath {sub:?}: {e}")))?;
    if !real.starts_with(&base) {
        return Err(err(format!("subPath {sub:?} resolves outside the volume")));
    }
    Ok(real)
}

/// Mounts a tmpfs on `dir` unless one is there already.
fn tmpfs(dir: &Path, size: Option<u64>, mode: u32) -> std::io::Result<()> {
    if is_mount_point(dir) {
        return Ok(());
    }
    let mut data = format!("mode={mode:o}");
    if let Some(s) = size {
        data.push_str(&format!(",size={s}"));
    }
    let data = std::ffi::CString::new(data).map_err(std::io::Error::other)?;
    use rustix::mount::MountFlags;
    rustix::mount::mount("tmpfs", dir, "tmpfs", MountFlags::NODEV | MountFlags::NOSUID, data.as_c_str())?;
    Ok(())
}

fn is_mount_point(dir: &Path) -> bool {
    match (std::fs::metadata(dir), dir.parent().map(std::fs::metadata)) {
        (Ok(d), Some(Ok(p))) => d.dev() != p.dev(),
        _ => false,
    }
}

/// Unmounts the tmpfs of a pod's Secret-bearing volumes (secret, projected with its
/// service-account token, downwardAPI), for an agent that stops: nothing secret stays
/// mounted under the state dir once nothing runs that uses it. The next start mounts
/// and writes them again. Memory-backed emptyDirs keep their data, as the kubelet's do.
pub fn unmount_secrets(rec: &PodRecord, root: &Path) {
    for v in rec.pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = root.join(&v.name);
        if secret_bearing(v) && is_mount_point(&dir) {
            let _ = rustix::mount::unmount(&dir, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// Unmounts every tmpfs volume of a pod so its directory can be removed.
pub fn unmount_all(root: &Path) {
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        if is_mount_point(&e.path()) {
            let _ = rustix::mount::unmount(e.path(), rustix::mount::UnmountFlags::DETACH);
        }
    }
}

static STAMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Replaces the files under `dir` with `payload` in one step (see the module docs);
/// nothing is written when they are the same already.
fn write_atomic(dir: &Path, payload: &Payload) -> std::io::Result<bool> {
    let data = dir.join("..data");
    let current = std::fs::read_link(&data).ok();
    if let Some(cur) = &current
        && same(&dir.join(cur), payload)
    {
        return Ok(false);
    }
    let n = STAMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stamp = format!("..{}_{n}", chrono::Utc::now().format("%Y_%m_%d_%H_%M_%S.%f"));
    let fresh = dir.join(&stamp);
    std::fs::create_dir(&fresh)?;
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755))?;
    for (path, (bytes, mode)) in payload {
        let file = fresh.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, bytes)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, &data)?;
    // the names users see: one symlink per top-level entry, through ..data
    let tops: std::collections::BTreeSet<&str> = payload.keys().filter_map(|p| p.split('/').next()).collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{top}"), &link)?;
        }
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(name.as_str()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = current {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

/// Whether `dir` holds exactly `payload`.
fn same(dir: &Path, payload: &Payload) -> bool {
    fn count(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| if e.path().is_dir() { count(&e.path()) } else { 1 })
            .sum()
    }
    count(dir) == payload.len()
        && payload.iter().all(|(p, (bytes, mode))| {
            let f = dir.join(p);
            std::fs::metadata(&f).is_ok_and(|m| m.permissions().mode() & 0o7777 == *mode)
                && std::fs::read(&f).is_ok_and(|b| &b == bytes)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(items: &[(&str, &str)]) -> Payload {
        items.iter().map(|(k, v)| (k.to_string(), (v.as_bytes().to_vec(), 0o644))).collect()
    }

    #[test]
    fn updates_swap_data_in_one_step_and_drop_stale_names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(write_atomic(d, &payload(&[("a", "1"), ("sub/b", "2")])).unwrap());
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(d.join("sub/b")).unwrap(), "2");
        assert_eq!(std::fs::read_link(d.join("a")).unwrap(), Path::new("..data/a"));
        let first = std::fs::read_link(d.join("..data")).unwrap();
        assert!(!write_atomic(d, &payload(&[("a", "1"), ("sub/b", "2")])).unwrap(), "unchanged: nothing written");
        assert!(write_atomic(d, &payload(&[("a", "3")])).unwrap());
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "3");
        assert!(std::fs::symlink_metadata(d.join("sub")).is_err(), "a name that went away is removed");
        assert!(!d.join(first).exists(), "the old generation is removed");
        let generations = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..2"))
            .count();
        assert_eq!(generations, 1);
    }

    #[test]
    fn sub_paths_stay_inside_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(&vol).unwrap();
        std::os::unix::fs::symlink("/etc", vol.join("escape")).unwrap();
        assert!(sub_path(&vol, "escape").unwrap_err().message.contains("outside the volume"));
        let made = sub_path(&vol, "logs/app").unwrap();
        assert!(made.is_dir() && made.starts_with(vol.canonicalize().unwrap()));
    }

    #[test]
    fn host_path_types_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("file");
        std::fs::write(&f, "x").unwrap();
        let fs = f.to_str().unwrap();
        assert_eq!(host_path(fs, "Directory").unwrap_err(), format!("{fs} is not a directory"));
        host_path(fs, "File").unwrap();
        let made = dir.path().join("made/here");
        host_path(made.to_str().unwrap(), "DirectoryOrCreate").unwrap();
        assert!(made.is_dir());
        let file = dir.path().join("new/file");
        host_path(file.to_str().unwrap(), "FileOrCreate").unwrap();
        assert!(file.is_file());
        assert!(host_path(dir.path().to_str().unwrap(), "Socket").is_err());
    }
}
