//! User namespaces for pods with `hostUsers: false`.
//!
//! The pod gets a range of host ids (`IdMap`): its root is `host_id` on the host, an
//! unprivileged uid there. At sandbox creation a helper process unshares a user
//! namespace with that mapping and a network namespace owned by it (so that the
//! container's root may mount `sysfs` for it); both are kept by bind-mounting their
//! nsfs files, and every container of the pod joins them.
//!
//! The image layers stay as they are on disk, owned by host root. Each container sees
//! them through idmapped mounts (`mount_setattr(MOUNT_ATTR_IDMAP)`, the kernel's own
//! translation; Debian's runc 1.1.5 has no `idmap` mount option), so the overlay shows
//! the image's owners shifted into the pod's range, and what the container writes lands
//! in its upper directory under the pod's host ids.
//!
//! runc's init runs as the pod's root while it prepares the rootfs, so the rootfs must
//! be reachable by that uid: it is mounted under [`DIR`] (traversable only: 0711), in a
//! directory of the container that only root and the pod's root group may enter (0710).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use crate::IdMap;

/// Where user-namespaced containers' rootfs mount points are.
pub(super) const DIR: &str = "/run/wasmlet-userns";

/// The directory of container `id`'s rootfs mount point.
pub(super) fn container_dir(id: &str) -> PathBuf {
    Path::new(DIR).join(id)
}

/// Makes the pod's user namespace and a network namespace it owns, kept at
/// `userns_file` and `netns_file`.
pub(super) fn create(map: &IdMap, userns_file: &Path, netns_file: &Path) -> std::io::Result<()> {
    for f in [userns_file, netns_file] {
        if let Some(dir) = f.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::File::create(f)?;
    }
    let mut helper = Command::new(super::find_tool("sleep"));
    helper.arg("60").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    unshare_in_child(&mut helper);
    let mut child = helper.spawn()?;
    let pid = child.id();
    let made = (|| -> std::io::Result<()> {
        // the child is past exec (spawn waits for it), so its namespaces exist
        let line = format!("0 {} {}\n", map.host_id, map.size);
        std::fs::write(format!("/proc/{pid}/uid_map"), &line)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), &line)?;
        rustix::mount::mount_bind(format!("/proc/{pid}/ns/user"), userns_file)?;
        rustix::mount::mount_bind(format!("/proc/{pid}/ns/net"), netns_file)?;
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    if made.is_err() {
        remove(userns_file);
        remove(netns_file);
    }
    made
}

/// Lets `cmd`'s child unshare a user namespace and a network namespace owned by it,
/// before it execs.
#[allow(unsafe_code)]
fn unshare_in_child(cmd: &mut Command) {
    use rustix::thread::UnshareFlags;
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and makes a single
    // system call (unshare), which is async-signal-safe; the child is single-threaded,
    // as a new user namespace requires, and shares no file table with anyone.
    unsafe {
        cmd.pre_exec(|| {
            rustix::thread::unshare_unsafe(UnshareFlags::NEWUSER | UnshareFlags::NEWNET).map_err(std::io::Error::from)
        });
    }
}

/// Unmounts and deletes a namespace file made by [`create`].
pub(super) fn remove(file: &Path) {
    let _ = rustix::mount::unmount(file, rustix::mount::UnmountFlags::DETACH);
    let _ = std::fs::remove_file(file);
}

/// Mounts `source` at `target` read-only and idmapped through the user namespace at
/// `userns_file`: a file of host uid N shows as owned by the host uid that N is in the
/// pod's range.
pub(super) fn idmapped_mount(source: &Path, target: &Path, userns_file: &Path) -> std::io::Result<()> {
    let userns = std::fs::File::open(userns_file)?;
    let tree: OwnedFd = rustix::mount::open_tree(
        rustix::fs::CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )?;
    set_idmap(&tree, &userns)?;
    rustix::mount::move_mount(&tree, "", rustix::fs::CWD, target, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)?;
    Ok(())
}

/// `struct mount_attr` of `<linux/mount.h>`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `mount_setattr(tree, "", AT_EMPTY_PATH, {IDMAP | RDONLY, userns})`, which rustix
/// does not wrap.
#[allow(unsafe_code)]
fn set_idmap(tree: &OwnedFd, userns: &std::fs::File) -> std::io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: both descriptors are open for the call; the path is a NUL-terminated
    // empty string and `attr` a live `struct mount_attr` whose size is passed with it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}
