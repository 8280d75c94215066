//! What a Linux container may do: its capability sets and its seccomp filter.
//!
//! Capabilities start from the set containerd and CRI-O grant, then the pod's `drop`
//! and `add` apply (`ALL` on either side). Root gets the result as its effective set; a
//! non-root process gets it only as its bounding set, and holds (effective, permitted,
//! inheritable, ambient) just the capabilities the spec adds, as containerd does.
//!
//! `RuntimeDefault` is a deny list of what moby's default profile keeps from a container
//! without the matching capability: the kernel keyring, module loading, mounts and the
//! new mount API, namespaces (`unshare`, `setns`, `clone` with `CLONE_NEW*`, `clone3`
//! answered with ENOSYS so libc falls back to `clone`), clocks, reboot and kexec, swap,
//! BPF and perf events, cross-process memory and `kcmp`, NUMA policy, raw IO ports,
//! `userfaultfd`, `io_uring`, `AF_VSOCK` sockets and the long-obsolete calls. A blocked
//! call fails with EPERM; everything else is allowed. Unlike moby's allow list, a
//! syscall newer than this list is not blocked.

use std::collections::HashSet;

use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxCapabilitiesBuilder, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceType,
    LinuxSeccomp,
};
use serde_json::json;

use crate::{Capabilities, ConfigError};

/// The capabilities a container gets by default, as containerd and CRI-O grant.
pub(super) const DEFAULT_CAPS: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability the kernel has (as of Linux 6.x), in bit order, for `add: [ALL]`.
const ALL_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A capability as Kubernetes writes it (`NET_ADMIN`, or `CAP_NET_ADMIN`).
pub(super) fn capability(name: &str) -> Result<Capability, ConfigError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    bare.parse().map_err(|_| ConfigError::UnknownCapability(name.into()))
}

/// `ALL`: every capability this process may pass on (its bounding set), as containerd
/// grants a privileged container. ALL_CAPS is in the kernel's bit order.
fn all() -> HashSet<Capability> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string())))
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .unwrap_or(u64::MAX);
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1 << bit) != 0)
        .filter_map(|(_, n)| capability(n).ok())
        .collect()
}

/// The bounding set after `drop` and `add`, and the capabilities added explicitly.
pub(super) fn capability_set(caps: &Capabilities) -> Result<(HashSet<Capability>, HashSet<Capability>), ConfigError> {
    let is_all = |n: &String| n.trim().eq_ignore_ascii_case("ALL");
    let mut set: HashSet<Capability> = DEFAULT_CAPS.iter().copied().collect();
    if caps.drop.iter().any(is_all) {
        set.clear();
    }
    for n in caps.drop.iter().filter(|n| !is_all(n)) {
        set.remove(&capability(n)?);
    }
    let added: HashSet<Capability> = if caps.add.iter().any(is_all) {
        all()
    } else {
        caps.add.iter().map(|n| capability(n)).collect::<Result<_, _>>()?
    };
    set.extend(added.iter().copied());
    Ok((set, added))
}

/// The process's capability sets for `uid`.
pub(super) fn process_capabilities(caps: &Capabilities, uid: u32) -> Result<LinuxCapabilities, ConfigError> {
    let (bounding, added) = capability_set(caps)?;
    // every set is given: one left out would get oci-spec's default (AUDIT_WRITE,
    // KILL, NET_BIND_SERVICE), which is how a non-root process used to hold them
    let b = LinuxCapabilitiesBuilder::default().bounding(bounding.clone());
    let b = if uid == 0 {
        b.effective(bounding.clone()).permitted(bounding).inheritable(HashSet::new()).ambient(HashSet::new())
    } else {
        // a non-root process keeps only what was added, through the ambient set
        b.effective(added.clone()).permitted(added.clone()).inheritable(added.clone()).ambient(added)
    };
    Ok(b.build()?)
}

/// Syscalls moby's default profile allows only with a capability, by that capability.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "SYS_ADMIN",
        &[
            "bpf",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setns",
            "swapoff",
            "swapon",
            "umount",
            "umount2",
            "unshare",
            "pivot_root",
        ],
    ),
    ("BPF", &["bpf"]),
    ("PERFMON", &["perf_event_open"]),
    ("SYS_BOOT", &["reboot", "kexec_load", "kexec_file_load"]),
    (
        "SYS_MODULE",
        &["create_module", "delete_module", "finit_module", "get_kernel_syms", "init_module", "query_module"],
    ),
    ("SYS_PACCT", &["acct"]),
    ("SYS_PTRACE", &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev"]),
    ("SYS_RAWIO", &["ioperm", "iopl"]),
    ("SYS_TIME", &["clock_adjtime", "clock_adjtime64", "clock_settime", "clock_settime64", "settimeofday", "stime"]),
    ("SYS_NICE", &["get_mempolicy", "mbind", "move_pages", "set_mempolicy", "set_mempolicy_home_node"]),
    ("SYSLOG", &["syslog"]),
    ("SYS_TTY_CONFIG", &["vhangup"]),
    ("DAC_READ_SEARCH", &["open_by_handle_at"]),
];

/// Blocked whatever the capabilities.
const ALWAYS: &[&str] = &[
    "add_key",
    "keyctl",
    "request_key",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "memfd_secret",
    "nfsservctl",
    "sysfs",
    "_sysctl",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// `CLONE_NEWNS`, `NEWCGROUP`, `NEWUTS`, `NEWIPC`, `NEWUSER`, `NEWPID`, `NEWNET`.
const CLONE_NAMESPACE_FLAGS: &[u64] =
    &[0x0002_0000, 0x0200_0000, 0x0400_0000, 0x0800_0000, 0x1000_0000, 0x2000_0000, 0x4000_0000];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
const AF_VSOCK: u64 = 40;

/// The `RuntimeDefault` filter for a container holding `caps` (its bounding set).
pub(super) fn default_profile(caps: &HashSet<Capability>) -> LinuxSeccomp {
    let held = |name: &str| capability(name).is_ok_and(|c| caps.contains(&c));
    let mut blocked: Vec<&str> = ALWAYS.to_vec();
    let mut allowed_by_caps: HashSet<&str> = HashSet::new();
    for (cap, calls) in BY_CAPABILITY {
        if held(cap) {
            allowed_by_caps.extend(calls.iter().copied());
        }
    }
    for (_, calls) in BY_CAPABILITY {
        blocked.extend(calls.iter().copied().filter(|c| !allowed_by_caps.contains(c)));
    }
    blocked.sort_unstable();
    blocked.dedup();
    let mut syscalls = vec![json!({"names": blocked, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM})];
    syscalls.push(json!({
        "names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
        "args": [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_EQ"}],
    }));
    if !held("SYS_ADMIN") {
        // one rule per namespace flag: a rule's comparisons are all on one argument
        for flag in CLONE_NAMESPACE_FLAGS {
            syscalls.push(json!({
                "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            }));
        }
        syscalls.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}));
    }
    let profile = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "syscalls": syscalls,
    });
    serde_json::from_value(profile).expect("the default profile is a valid LinuxSeccomp")
}

/// A `Localhost` profile: the file, in the OCI (and Docker) seccomp JSON form.
pub(super) fn localhost_profile(path: &std::path::Path) -> Result<LinuxSeccomp, ConfigError> {
    let refuse = |message: String| ConfigError::SeccompProfile { path: path.to_path_buf(), message };
    let bytes = std::fs::read(path).map_err(|e| refuse(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| refuse(format!("not a seccomp profile: {e}")))
}

/// The host's device nodes, for a privileged container. `/dev/pts`, `/dev/shm` and
/// `/dev/mqueue` are the container's own, and runc makes the standard nodes itself.
pub(super) fn host_devices() -> Vec<LinuxDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    const OWN: &[&str] = &[
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
        "/dev/console",
        "/dev/ptmx",
    ];
    let mut out = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from("/dev")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            let ft = meta.file_type();
            if ft.is_dir() {
                if !["/dev/pts", "/dev/shm", "/dev/mqueue"].iter().any(|d| path == std::path::Path::new(d)) {
                    dirs.push(path);
                }
                continue;
            }
            let typ = if ft.is_char_device() {
                LinuxDeviceType::C
            } else if ft.is_block_device() {
                LinuxDeviceType::B
            } else {
                continue;
            };
            if OWN.iter().any(|o| path == std::path::Path::new(o)) {
                continue;
            }
            let rdev = meta.rdev();
            let device = LinuxDeviceBuilder::default()
                .path(path)
                .typ(typ)
                .major(rustix::fs::major(rdev) as i64)
                .minor(rustix::fs::minor(rdev) as i64)
                .file_mode(meta.mode() & 0o7777)
                .uid(meta.uid())
                .gid(meta.gid())
                .build();
            out.extend(device);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(add: &[&str], drop: &[&str]) -> Capabilities {
        Capabilities {
            add: add.iter().map(|s| s.to_string()).collect(),
            drop: drop.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn drop_all_then_add_leaves_only_the_added() {
        let (set, added) = capability_set(&caps(&["NET_BIND_SERVICE"], &["ALL"])).unwrap();
        assert_eq!(set, HashSet::from([Capability::NetBindService]));
        assert_eq!(added, set);
        let (set, _) = capability_set(&caps(&[], &["NET_RAW", "CAP_MKNOD"])).unwrap();
        assert_eq!(set.len(), DEFAULT_CAPS.len() - 2);
        assert!(!set.contains(&Capability::NetRaw) && !set.contains(&Capability::Mknod));
        assert!(capability_set(&caps(&["ALL"], &[])).unwrap().0.contains(&Capability::SysAdmin));
        assert!(capability_set(&caps(&["NOT_A_CAP"], &[])).is_err());
    }

    #[test]
    fn non_root_holds_only_added_capabilities() {
        let c = process_capabilities(&caps(&[], &[]), 1000).unwrap();
        assert!(c.effective().as_ref().is_some_and(|e| e.is_empty()));
        assert_eq!(c.bounding().as_ref().map(|b| b.len()), Some(DEFAULT_CAPS.len()));
        let c = process_capabilities(&caps(&["NET_BIND_SERVICE"], &["ALL"]), 1000).unwrap();
        assert_eq!(c.ambient().clone(), Some(HashSet::from([Capability::NetBindService])));
        let root = process_capabilities(&caps(&[], &[]), 0).unwrap();
        assert_eq!(root.effective().as_ref().map(|e| e.len()), Some(DEFAULT_CAPS.len()));
        assert!(root.ambient().as_ref().is_some_and(|a| a.is_empty()), "no set is left to oci-spec's default");
        assert!(root.inheritable().as_ref().is_some_and(|a| a.is_empty()));
    }

    #[test]
    fn the_default_profile_follows_the_capabilities() {
        let names = |p: &LinuxSeccomp| -> Vec<String> {
            p.syscalls().iter().flatten().filter(|s| s.args().is_none()).flat_map(|s| s.names().clone()).collect()
        };
        let plain = default_profile(&DEFAULT_CAPS.iter().copied().collect());
        let blocked = names(&plain);
        for call in ["unshare", "mount", "keyctl", "bpf", "reboot", "clone3", "io_uring_setup", "setns"] {
            assert!(blocked.iter().any(|n| n == call), "{call} is blocked");
        }
        assert!(!blocked.iter().any(|n| n == "read" || n == "clone"), "ordinary calls pass");
        let admin = default_profile(&[Capability::SysAdmin].into_iter().collect());
        let blocked = names(&admin);
        assert!(!blocked.iter().any(|n| n == "mount" || n == "unshare" || n == "clone3"), "CAP_SYS_ADMIN allows them");
        assert!(blocked.iter().any(|n| n == "keyctl"), "the keyring stays closed");
    }
}
