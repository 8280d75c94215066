//! Hard eviction thresholds as the kubelet's `--eviction-hard` takes them, and the node's
//! pressure conditions and allocatable read against them.
//!
//! The state directory's filesystem is both the kubelet's `nodefs` (volumes, logs) and
//! its `imagefs` (image layers): wasmlet keeps both there, as a kubelet does on a node
//! with one disk, so the `nodefs.*` and `imagefs.*` signals are read from the same place.
//! The agent reports the conditions and subtracts the thresholds from allocatable; it does
//! not evict pods.

use std::path::Path;

/// An amount a signal must stay above: bytes (or a count, for inodes and pids), or a
/// percentage of the signal's capacity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    Quantity(u64),
    Percent(f64),
}

impl Amount {
    /// The amount in the units of `capacity`.
    pub fn of(self, capacity: u64) -> u64 {
        match self {
            Amount::Quantity(n) => n,
            Amount::Percent(p) => (capacity as f64 * p / 100.0).ceil() as u64,
        }
    }
}

/// The signals the agent watches; `None` is no threshold.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Thresholds {
    pub memory_available: Option<Amount>,
    pub nodefs_available: Option<Amount>,
    pub nodefs_inodes_free: Option<Amount>,
    pub imagefs_available: Option<Amount>,
    pub imagefs_inodes_free: Option<Amount>,
    pub pid_available: Option<Amount>,
}

/// The kubelet's defaults on Linux, with wasmlet's `pid.available<5%` (the kubelet has
/// no PID default; the agent has reported PIDPressure beyond 95 % of `pid_max` from the
/// start).
pub const DEFAULT: &str =
    "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%,pid.available<5%";

impl Thresholds {
    /// `signal<amount` pairs, comma-separated. As the kubelet: a signal left out has no
    /// threshold (the defaults apply only when the flag is not given at all).
    pub fn parse(s: &str) -> Result<Thresholds, String> {
        let mut t = Thresholds::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (signal, value) = item.split_once('<').ok_or_else(|| {
                format!("eviction threshold {item:?}: want SIGNAL<AMOUNT, such as nodefs.available<10% (only `<` is supported)")
            })?;
            let (signal, value) = (signal.trim(), value.trim());
            let amount = if let Some(p) = value.strip_suffix('%') {
                match p.parse::<f64>() {
                    Ok(p) if p > 0.0 && p <= 100.0 => Amount::Percent(p),
                    _ => return Err(format!("eviction threshold {item:?}: a percentage must be in (0%, 100%]")),
                }
            } else if signal.ends_with(".available") && signal != "pid.available" {
                Amount::Quantity(crate::spec::quantity::parse_bytes(value).ok_or_else(|| {
                    format!(
                        "eviction threshold {item:?}: {value:?} is neither a quantity such as 100Mi nor a percentage"
                    )
                })?)
            } else {
                Amount::Quantity(value.parse().map_err(|_| {
                    format!("eviction threshold {item:?}: {value:?} is neither a count nor a percentage")
                })?)
            };
            let slot = match signal {
                "memory.available" => &mut t.memory_available,
                "nodefs.available" => &mut t.nodefs_available,
                "nodefs.inodesFree" => &mut t.nodefs_inodes_free,
                "imagefs.available" => &mut t.imagefs_available,
                "imagefs.inodesFree" => &mut t.imagefs_inodes_free,
                "pid.available" => &mut t.pid_available,
                other => {
                    return Err(format!(
                        "eviction threshold {item:?}: unknown signal {other:?} (memory.available, nodefs.available, \
                         nodefs.inodesFree, imagefs.available, imagefs.inodesFree, pid.available)"
                    ));
                }
            };
            if slot.replace(amount).is_some() {
                return Err(format!("eviction threshold {item:?}: {signal} is given twice"));
            }
        }
        Ok(t)
    }

    /// Whether `available` of `capacity` is below `threshold`.
    fn below(threshold: Option<Amount>, available: u64, capacity: u64) -> bool {
        threshold.is_some_and(|t| available < t.of(capacity))
    }

    /// The pressure conditions now.
    pub fn pressure(&self, now: &Observed) -> Pressure {
        let fs = &now.fs;
        Pressure {
            memory: Self::below(self.memory_available, now.memory_available, now.memory_capacity),
            disk: Self::below(self.nodefs_available, fs.bytes_available, fs.bytes)
                || Self::below(self.imagefs_available, fs.bytes_available, fs.bytes)
                || Self::below(self.nodefs_inodes_free, fs.inodes_free, fs.inodes)
                || Self::below(self.imagefs_inodes_free, fs.inodes_free, fs.inodes),
            pid: Self::below(self.pid_available, now.pid_max.saturating_sub(now.processes), now.pid_max),
        }
    }

    /// Memory and ephemeral storage the scheduler may hand out: capacity less the hard
    /// thresholds, as the kubelet's allocatable.
    pub fn allocatable_memory(&self, capacity: u64) -> u64 {
        capacity.saturating_sub(self.memory_available.map_or(0, |t| t.of(capacity)))
    }

    pub fn allocatable_storage(&self, capacity: u64) -> u64 {
        capacity.saturating_sub(self.nodefs_available.map_or(0, |t| t.of(capacity)))
    }
}

/// The node's pressure conditions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

/// The state directory's filesystem.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filesystem {
    pub bytes: u64,
    pub bytes_available: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

/// What the signals are read from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub memory_capacity: u64,
    pub memory_available: u64,
    pub fs: Filesystem,
    pub processes: u64,
    pub pid_max: u64,
}

impl Observed {
    /// The host now; what cannot be read counts as plenty.
    pub fn read(state_dir: &Path) -> Observed {
        let memory_capacity = crate::node::meminfo("MemTotal").unwrap_or(u64::MAX);
        let memory_available = crate::node::meminfo("MemAvailable").unwrap_or(u64::MAX);
        let fs = rustix::fs::statvfs(state_dir)
            .map(|s| Filesystem {
                bytes: s.f_blocks.saturating_mul(s.f_frsize),
                bytes_available: s.f_bavail.saturating_mul(s.f_frsize),
                inodes: s.f_files,
                // a filesystem without an inode count (btrfs reports 0) has no such pressure
                inodes_free: if s.f_files == 0 { u64::MAX } else { s.f_favail },
            })
            .unwrap_or(Filesystem { bytes: 0, bytes_available: u64::MAX, inodes: 0, inodes_free: u64::MAX });
        let (processes, pid_max) = crate::node::processes();
        Observed { memory_capacity, memory_available, fs, processes, pid_max: pid_max.unwrap_or(u64::MAX) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GI: u64 = 1 << 30;

    fn host(bytes_available: u64) -> Observed {
        Observed {
            memory_capacity: 8 * GI,
            memory_available: 4 * GI,
            fs: Filesystem { bytes: 100 * GI, bytes_available, inodes: 1000, inodes_free: 500 },
            processes: 100,
            pid_max: 4_194_304,
        }
    }

    #[test]
    fn the_defaults_are_the_kubelets() {
        let t = Thresholds::parse(DEFAULT).unwrap();
        assert_eq!(t.memory_available, Some(Amount::Quantity(100 << 20)));
        assert_eq!(t.nodefs_available, Some(Amount::Percent(10.0)));
        assert_eq!(t.nodefs_inodes_free, Some(Amount::Percent(5.0)));
        assert_eq!(t.imagefs_available, Some(Amount::Percent(15.0)));
        assert_eq!(t.imagefs_inodes_free, None);
        // one disk holds images and volumes: imagefs.available<15% is the first to trip
        assert_eq!(t.pressure(&host(16 * GI)), Pressure::default());
        assert!(t.pressure(&host(14 * GI)).disk);
        assert_eq!(t.allocatable_memory(8 * GI), 8 * GI - (100 << 20));
        assert_eq!(t.allocatable_storage(100 * GI), 90 * GI);
    }

    #[test]
    fn signals_left_out_have_no_threshold() {
        let t = Thresholds::parse("memory.available<1Gi, nodefs.available<512Mi").unwrap();
        assert_eq!(t.imagefs_available, None);
        assert_eq!(t.pid_available, None);
        assert!(!t.pressure(&host(GI)).disk, "1 GiB free is above 512Mi, whatever its share");
        assert!(t.pressure(&host(256 << 20)).disk);
        let mut h = host(GI);
        h.memory_available = 512 << 20;
        assert!(t.pressure(&h).memory);
        assert_eq!(Thresholds::parse("").unwrap(), Thresholds::default());
        assert_eq!(Thresholds::default().pressure(&host(0)), Pressure::default());
    }

    #[test]
    fn counts_and_percentages_of_inodes_and_pids() {
        let t = Thresholds::parse("nodefs.inodesFree<600,pid.available<99.999%").unwrap();
        let p = t.pressure(&host(50 * GI));
        assert!(p.disk, "500 inodes free is below 600");
        assert!(p.pid, "all but 100 of 4194304 free is below 99.999%");
        assert!(!Thresholds::parse("nodefs.inodesFree<50%").unwrap().pressure(&host(50 * GI)).disk);
    }

    #[test]
    fn bad_thresholds_are_named() {
        for (bad, says) in [
            ("nodefs.available>10%", "only `<`"),
            ("disk.available<10%", "unknown signal \"disk.available\""),
            ("nodefs.available<0%", "(0%, 100%]"),
            ("nodefs.available<150%", "(0%, 100%]"),
            ("memory.available<lots", "neither a quantity"),
            ("pid.available<1Ki", "neither a count"),
            ("memory.available<1Gi,memory.available<2Gi", "given twice"),
        ] {
            let e = Thresholds::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
