//! Where eviction signals come from: the machine (cgroups, statvfs, the kernel's PID count).
//!
//! [`SignalSource`] is the seam: the eviction manager only sees observations and per-pod usage,
//! so its decisions are unit-tested with a fake, and [`Machine`] is the real thing.
//!
//! As upstream (which gets these numbers from cAdvisor):
//! - memory.available = capacity − working set, where the working set is the root memory
//!   cgroup's usage minus its inactive file pages (cgroup v1 `memory.usage_in_bytes` and
//!   `total_inactive_file`). The cgroup v2 root has no `memory.current`, so there the same is
//!   computed from `/proc/meminfo` (MemTotal − MemFree − Inactive(file)).
//! - nodefs.* = statvfs of the kubelet's root dir; imagefs.* = statvfs of the runtime's image
//!   filesystem (the mount point CRI `ImageFsInfo` reports), else the nodefs.
//! - pid.available = `kernel.pid_max` − the number of tasks (`/proc/loadavg`, the count
//!   `sysinfo(2)` reports as procs).
//!
//! Pod usage reads the pod's own cgroup (the cgroupfs layout the kubelet created:
//! `<cgroup-root>[/burstable|/besteffort]/pod<uid>` and `<pod cgroup>/<container id>` for
//! containers), in the v1 controller hierarchy if mounted, else the unified one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::thresholds::Signal;

/// One signal's value and the capacity percentages are taken of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub available: i128,
    pub capacity: i128,
}

pub type Observations = BTreeMap<Signal, Observation>;

/// What eviction needs to know about one pod to find its cgroups and files.
#[derive(Debug, Clone)]
pub struct PodRef {
    pub uid: String,
    /// The pod cgroup relative to the hierarchy root (no leading slash).
    pub cgroup: String,
    /// Running containers: (name, runtime ID).
    pub containers: Vec<(String, String)>,
    /// Directories whose contents count as the pod's ephemeral storage (volumes, logs).
    pub dirs: Vec<PathBuf>,
}

/// A pod's usage; `None` where the machine could not tell.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodUsage {
    pub memory: Option<i128>,
    /// Working set per container name.
    pub container_memory: Vec<(String, i128)>,
    pub disk: Option<i128>,
    pub inodes: Option<i128>,
    pub pids: Option<i128>,
}

/// The eviction manager's view of the machine.
pub trait SignalSource: Send + Sync {
    fn observe(&self) -> Observations;
    fn pod_usage(&self, pod: &PodRef) -> PodUsage;
}

/// The real machine.
#[derive(Debug, Clone)]
pub struct Machine {
    pub nodefs: PathBuf,
    pub imagefs: Option<PathBuf>,
    /// Where cgroup hierarchies are mounted (`/sys/fs/cgroup`).
    pub cgroup_mount: PathBuf,
    /// Where `/proc` is (tests may point it elsewhere).
    pub proc: PathBuf,
}

impl Machine {
    pub fn new(nodefs: PathBuf, imagefs: Option<PathBuf>) -> Machine {
        Machine {
            nodefs,
            imagefs,
            cgroup_mount: "/sys/fs/cgroup".into(),
            proc: "/proc".into(),
        }
    }

    fn meminfo(&self) -> BTreeMap<String, i128> {
        std::fs::read_to_string(self.proc.join("meminfo"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                let kib: i128 = v.split_whitespace().next()?.parse().ok()?;
                Some((k.trim().to_string(), kib * 1024))
            })
            .collect()
    }

    /// The v1 hierarchy of `controller` if mounted, else the unified hierarchy.
    fn hierarchy(&self, controller: &str) -> (PathBuf, bool) {
        let v1 = self.cgroup_mount.join(controller);
        if v1.join("cgroup.procs").exists() {
            (v1, true)
        } else {
            (self.cgroup_mount.clone(), false)
        }
    }

    /// Working set of a cgroup (usage − inactive file), v1 or v2.
    fn working_set(&self, rel: &str) -> Option<i128> {
        let (base, v1) = self.hierarchy("memory");
        let dir = base.join(rel.trim_start_matches('/'));
        let (usage_file, inactive_key) = if v1 {
            ("memory.usage_in_bytes", "total_inactive_file")
        } else {
            ("memory.current", "inactive_file")
        };
        let usage = read_num(&dir.join(usage_file))?;
        let inactive = stat_key(&dir.join("memory.stat"), inactive_key).unwrap_or(0);
        Some((usage - inactive).max(0))
    }

    fn memory(&self) -> Option<Observation> {
        let info = self.meminfo();
        let total = *info.get("MemTotal")?;
        let (base, v1) = self.hierarchy("memory");
        let ws = if v1 && base.join("memory.usage_in_bytes").exists() {
            self.working_set("")?
        } else {
            let free = info.get("MemFree").copied().unwrap_or(0);
            let inactive = info.get("Inactive(file)").copied().unwrap_or(0);
            (total - free - inactive).max(0)
        };
        Some(Observation {
            available: (total - ws).max(0),
            capacity: total,
        })
    }

    fn pids(&self) -> Option<Observation> {
        let max = read_num(&self.proc.join("sys/kernel/pid_max"))?;
        // The task count sysinfo(2) reports, without unsafe code: /proc/loadavg's
        // "running/total" field.
        let loadavg = std::fs::read_to_string(self.proc.join("loadavg")).ok()?;
        let tasks: i128 = loadavg
            .split_whitespace()
            .nth(3)?
            .split_once('/')?
            .1
            .parse()
            .ok()?;
        Some(Observation {
            available: (max - tasks).max(0),
            capacity: max,
        })
    }
}

fn read_num(p: &Path) -> Option<i128> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn stat_key(p: &Path, key: &str) -> Option<i128> {
    std::fs::read_to_string(p).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// (bytes available, bytes total, inodes free, inodes total) of the filesystem holding `p`.
///
/// Available bytes are what *root* may still write (`f_bfree`) when we run as root, as the
/// kubelet, containerd and most containers do: the blocks ext4 reserves for root are theirs to
/// fill. Upstream's cAdvisor reports `f_bavail`, which on a filesystem with a large root
/// reservation shows disk pressure (and triggers image GC) while there is room; on an ordinary
/// 5 % reservation the two differ little.
pub fn fs_stats(p: &Path) -> Option<(i128, i128, i128, i128)> {
    let existing = p.ancestors().find(|a| a.exists())?;
    let s = nix::sys::statvfs::statvfs(existing).ok()?;
    let frag = s.fragment_size() as i128;
    let avail = if nix::unistd::geteuid().is_root() {
        s.blocks_free()
    } else {
        s.blocks_available()
    };
    Some((
        avail as i128 * frag,
        s.blocks() as i128 * frag,
        s.files_available() as i128,
        s.files() as i128,
    ))
}

/// Bytes and inodes used under `dir` (not following symlinks, bounded in entries so a huge
/// emptyDir cannot stall the eviction loop).
pub fn du(dir: &Path) -> (i128, i128) {
    const MAX_ENTRIES: usize = 200_000;
    let mut bytes = 0i128;
    let mut inodes = 0i128;
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES {
                return (bytes, inodes);
            }
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            inodes += 1;
            if md.is_dir() {
                stack.push(e.path());
            } else {
                use std::os::unix::fs::MetadataExt;
                bytes += md.blocks() as i128 * 512;
            }
        }
    }
    (bytes, inodes)
}

impl SignalSource for Machine {
    fn observe(&self) -> Observations {
        let mut out = Observations::new();
        if let Some(m) = self.memory() {
            out.insert(Signal::MemoryAvailable, m);
        }
        let node = fs_stats(&self.nodefs);
        let image = self.imagefs.as_deref().and_then(fs_stats).or(node);
        for (fs, avail, inodes) in [
            (node, Signal::NodeFsAvailable, Signal::NodeFsInodesFree),
            (image, Signal::ImageFsAvailable, Signal::ImageFsInodesFree),
        ] {
            if let Some((a, t, fi, ft)) = fs {
                out.insert(
                    avail,
                    Observation {
                        available: a,
                        capacity: t,
                    },
                );
                // Some filesystems (tmpfs with nr_inodes=0, btrfs) report no inode limit.
                if ft > 0 {
                    out.insert(
                        inodes,
                        Observation {
                            available: fi,
                            capacity: ft,
                        },
                    );
                }
            }
        }
        if let Some(p) = self.pids() {
            out.insert(Signal::PidAvailable, p);
        }
        out
    }

    fn pod_usage(&self, pod: &PodRef) -> PodUsage {
        let container_memory: Vec<(String, i128)> = pod
            .containers
            .iter()
            .filter_map(|(name, id)| {
                self.working_set(&format!("{}/{id}", pod.cgroup))
                    .map(|m| (name.clone(), m))
            })
            .collect();
        let memory = self.working_set(&pod.cgroup).or_else(|| {
            (!container_memory.is_empty()).then(|| container_memory.iter().map(|c| c.1).sum())
        });
        let (disk, inodes) = pod
            .dirs
            .iter()
            .map(|d| du(d))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        let (pids_base, _) = self.hierarchy("pids");
        let pids_dir = pids_base.join(&pod.cgroup);
        let pids = read_num(&pids_dir.join("pids.current")).or_else(|| {
            // Without the pids controller, count the tasks of the pod's cgroup.
            let procs = std::fs::read_to_string(pids_dir.join("cgroup.procs")).ok()?;
            Some(procs.lines().count() as i128)
        });
        PodUsage {
            memory,
            container_memory,
            disk: Some(disk),
            inodes: Some(inodes),
            pids,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_reports_every_signal() {
        let m = Machine::new("/".into(), None);
        let o = m.observe();
        for s in [
            Signal::MemoryAvailable,
            Signal::NodeFsAvailable,
            Signal::ImageFsAvailable,
            Signal::PidAvailable,
        ] {
            let v = o.get(&s).unwrap_or_else(|| panic!("{s} missing: {o:?}"));
            assert!(v.capacity > 0 && v.available > 0, "{s}: {v:?}");
            assert!(v.available <= v.capacity, "{s}: {v:?}");
        }
    }

    #[test]
    fn meminfo_fallback_and_cgroup_v1_files() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        std::fs::create_dir_all(proc.join("sys/kernel")).unwrap();
        std::fs::write(
            proc.join("meminfo"),
            "MemTotal: 1000 kB\nMemFree: 200 kB\nInactive(file): 300 kB\n",
        )
        .unwrap();
        std::fs::write(proc.join("sys/kernel/pid_max"), "4194304\n").unwrap();
        std::fs::write(proc.join("loadavg"), "0.1 0.2 0.3 2/304 999\n").unwrap();
        let cg = dir.path().join("cgroup");
        std::fs::create_dir_all(&cg).unwrap();
        let m = Machine {
            nodefs: dir.path().into(),
            imagefs: None,
            cgroup_mount: cg.clone(),
            proc,
        };
        assert_eq!(
            m.observe()[&Signal::PidAvailable],
            Observation {
                available: 4194304 - 304,
                capacity: 4194304
            }
        );
        // No memory cgroup: /proc/meminfo (1000 - (1000 - 200 - 300)) KiB.
        assert_eq!(
            m.observe()[&Signal::MemoryAvailable],
            Observation {
                available: 500 * 1024,
                capacity: 1000 * 1024
            }
        );
        // A v1 memory hierarchy with a pod cgroup and one container.
        let pod = cg.join("memory/kp/besteffort/podu1");
        std::fs::create_dir_all(pod.join("cid1")).unwrap();
        std::fs::write(cg.join("memory/cgroup.procs"), "").unwrap();
        std::fs::write(pod.join("memory.usage_in_bytes"), "5000\n").unwrap();
        std::fs::write(
            pod.join("memory.stat"),
            "cache 1\ntotal_inactive_file 1000\n",
        )
        .unwrap();
        std::fs::write(pod.join("cid1/memory.usage_in_bytes"), "4000\n").unwrap();
        std::fs::write(pod.join("data"), vec![1u8; 8192]).unwrap();
        let u = m.pod_usage(&PodRef {
            uid: "u1".into(),
            cgroup: "kp/besteffort/podu1".into(),
            containers: vec![("c".into(), "cid1".into())],
            dirs: vec![pod.clone()],
        });
        assert_eq!(u.memory, Some(4000));
        assert_eq!(u.container_memory, vec![("c".to_string(), 4000)]);
        assert!(u.disk.unwrap() >= 8192, "{u:?}");
    }
}
