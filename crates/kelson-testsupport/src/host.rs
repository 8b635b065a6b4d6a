//! What pod networking and cgroups leave on the host after a test that ran a kubelet: the CNI
//! bridge plugin never deletes its bridge, and pod cgroups stay under the test's cgroup root.
//! [`HostCleanup`] removes both on drop, so also when the test panics.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Deletes `bridge` and every (empty) cgroup under `cgroup_root` in each hierarchy on drop.
#[derive(Debug)]
pub struct HostCleanup {
    pub bridge: String,
    pub cgroup_root: String,
}

impl Drop for HostCleanup {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        let mut dirs = Vec::new();
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            collect_dirs(&h.path().join(&self.cgroup_root), &mut dirs);
        }
        collect_dirs(
            &Path::new("/sys/fs/cgroup").join(&self.cgroup_root),
            &mut dirs,
        );
        // Deepest first: rmdir only removes empty cgroups.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&e.path(), out);
        }
    }
}
