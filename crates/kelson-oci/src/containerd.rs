//! A private containerd: its configuration and the `ctr` chores around it, shared by the test
//! fixture (`kelson-testsupport`) and `kelsonctl up` so both run containerd the same way.
//!
//! One directory holds everything (root, state, sockets, runc root, CNI config dir), so several
//! instances can run side by side with the host's containerd (if any) untouched. The CRI plugin
//! is configured the way the kubelet needs it on these machines:
//! - the sandbox image is the project's locally built pause image (no registry is reachable);
//! - CNI plugins come from Debian's `/usr/lib/cni`, configs from `<dir>/cni/net.d` (the kubelet
//!   writes one there);
//! - cgroups are managed by runc directly (cgroupfs: the hosts have a hybrid v1 layout and no
//!   systemd on the host);
//! - `restrict_oom_score_adj` is on because these machines withhold CAP_SYS_RESOURCE even from
//!   root, and runc cannot give the sandbox its usual -998 otherwise;
//! - the snapshotter is overlayfs unless this kernel/filesystem refuses it (e.g. the directory
//!   sits on an overlay), then `native` (copying). [`overlayfs_supported`] asks the kernel the
//!   same question containerd's overlay plugin asks, so the choice can be made before starting.
//!
//! Stopping: the shims live outside containerd's process group, so killing containerd alone
//! would leak containers. [`remove_all_containers`] kills and deletes every task first, and
//! [`unmount_under`] lazily unmounts what is left (sandbox shm, rootfs of a killed shim).
//!
//! Everything here shells out to containerd's own `ctr`: it is installed with containerd, speaks
//! exactly that containerd's API, and keeps this crate free of a gRPC stack.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::OciError;

/// The CRI plugin's namespace.
pub const K8S_NAMESPACE: &str = "k8s.io";

/// Snapshotters in order of preference.
pub const SNAPSHOTTERS: [&str; 2] = ["overlayfs", "native"];

/// containerd 1.6 configuration (version 2 schema) for a private instance under `dir`.
pub fn config_toml(dir: &Path, snapshotter: &str, sandbox_image: &str) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
oom_score = 0

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # Sandboxes get oom_score_adj -998 upstream; without CAP_SYS_RESOURCE (nested machines)
  # runc fails to set it, so clamp to what this process may set.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni/net.d"
    max_conf_num = 1
"#
    )
}

/// Where a private containerd under one directory keeps its files (as [`config_toml`] says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Layout {
        Layout { dir: dir.into() }
    }

    /// containerd's gRPC socket (CRI is served on it too).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// `unix://...` endpoint for CRI clients.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The directory the CRI plugin reads CNI configs from.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni/net.d")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// Creates the directory (and the CNI config dir), writes `config.toml`, and removes a
    /// stale socket so readiness is not judged by a dead instance's file. Returns the config's
    /// path.
    pub fn write_config(
        &self,
        snapshotter: &str,
        sandbox_image: &str,
    ) -> Result<PathBuf, OciError> {
        let conf_dir = self.cni_conf_dir();
        std::fs::create_dir_all(&conf_dir).map_err(|source| OciError::Io {
            what: "creating",
            path: conf_dir,
            source,
        })?;
        let path = self.config_path();
        std::fs::write(&path, config_toml(&self.dir, snapshotter, sandbox_image)).map_err(
            |source| OciError::Io {
                what: "writing",
                path: path.clone(),
                source,
            },
        )?;
        let _ = std::fs::remove_file(self.socket());
        Ok(path)
    }
}

/// `ctr --address <socket> --namespace <namespace> <args>`; the output whatever the exit status.
pub fn ctr(socket: &Path, namespace: &str, args: &[&str]) -> Result<Output, OciError> {
    Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .arg("--namespace")
        .arg(namespace)
        // Without a bound, ctr waits 10 s for a socket that is not there yet.
        .args(["--connect-timeout", "2s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| OciError::Io {
            what: "running ctr (is containerd installed?) against",
            path: socket.into(),
            source,
        })
}

/// Like [`ctr`], but a non-zero exit is an error carrying ctr's stderr; returns stdout.
fn ctr_ok(socket: &Path, namespace: &str, args: &[&str]) -> Result<String, OciError> {
    let out = ctr(socket, namespace, args)?;
    if !out.status.success() {
        return Err(OciError::Command {
            cmd: format!("ctr --address {} {}", socket.display(), args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The server version `ctr version` reports: the socket answers.
pub fn server_version(socket: &Path) -> Result<String, OciError> {
    if !socket.exists() {
        return Err(OciError::Io {
            what: "waiting for",
            path: socket.into(),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    let text = ctr_ok(socket, K8S_NAMESPACE, &["version"])?;
    // "Client:\n  Version: ..\nServer:\n  Version: 1.6.20~ds1\n ..."
    let server = text.split("Server:").nth(1).unwrap_or_default();
    Ok(server
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into()))
}

/// Checks in `ctr plugins ls` that `snapshotter` and the CRI plugin loaded (`ok`); a plugin
/// that was skipped or failed is [`OciError::Plugin`] with the listing.
pub fn check_plugins(socket: &Path, snapshotter: &str) -> Result<(), OciError> {
    let text = ctr_ok(socket, K8S_NAMESPACE, &["plugins", "ls"])?;
    for (ty, id) in [
        ("io.containerd.snapshotter.v1", snapshotter),
        ("io.containerd.grpc.v1", "cri"),
    ] {
        if !plugin_ok(&text, ty, id) {
            return Err(OciError::Plugin {
                plugin: format!("{ty}.{id}"),
                listing: text,
            });
        }
    }
    Ok(())
}

/// Whether a `ctr plugins ls` listing (TYPE ID PLATFORMS STATUS) has `ty id` with status ok.
pub fn plugin_ok(listing: &str, ty: &str, id: &str) -> bool {
    listing.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 4 && f[0] == ty && f[1] == id && f[f.len() - 1] == "ok"
    })
}

/// Whether the kernel mounts an overlay with upper and work dirs inside `dir` — the check
/// containerd's overlayfs snapshotter makes at start (it refuses e.g. an upper dir on overlay).
/// Needs root; anything failing means "no", and `native` is the safe answer then.
pub fn overlayfs_supported(dir: &Path) -> bool {
    let probe = dir.join(format!(".overlay-probe-{}", std::process::id()));
    let sub = ["lower1", "lower2", "upper", "work", "merged"];
    let made = sub
        .iter()
        .all(|s| std::fs::create_dir_all(probe.join(s)).is_ok());
    let p = |s: &str| probe.join(s).display().to_string();
    let ok = made
        && Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={}:{},upperdir={},workdir={}",
                p("lower2"),
                p("lower1"),
                p("upper"),
                p("work")
            ))
            .arg(probe.join("merged"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        let _ = Command::new("umount").arg(probe.join("merged")).status();
    }
    let _ = std::fs::remove_dir_all(&probe);
    ok
}

/// Image references in the `k8s.io` namespace.
pub fn image_names(socket: &Path) -> Result<Vec<String>, OciError> {
    Ok(ctr_ok(socket, K8S_NAMESPACE, &["images", "ls", "-q"])?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Makes sure the pause and busybox test images are in `k8s.io`, unpacked into `snapshotter`:
/// builds the archives into `images_dir` from `busybox` and imports them only if one is
/// missing. Returns the references imported (empty when all were present).
pub fn ensure_test_images(
    socket: &Path,
    snapshotter: &str,
    images_dir: &Path,
    busybox: &Path,
) -> Result<Vec<String>, OciError> {
    let have = image_names(socket)?;
    if [crate::PAUSE_IMAGE, crate::BUSYBOX_IMAGE]
        .iter()
        .all(|i| have.iter().any(|h| h == i))
    {
        return Ok(Vec::new());
    }
    let images = crate::build_test_images(busybox, images_dir)?;
    let target = crate::ImportTarget {
        address: socket.into(),
        namespace: K8S_NAMESPACE.into(),
        snapshotter: Some(snapshotter.into()),
    };
    let mut imported = Vec::new();
    for img in [&images.pause, &images.busybox] {
        imported.extend(crate::import(&target, img)?);
    }
    Ok(imported)
}

/// IDs of every container containerd knows in `k8s.io` (sandboxes included); empty if it does
/// not answer.
pub fn container_ids(socket: &Path) -> Vec<String> {
    if !socket.exists() {
        return Vec::new();
    }
    ctr_ok(socket, K8S_NAMESPACE, &["containers", "ls", "-q"])
        .map(|text| {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Kills and deletes every task and container in `k8s.io`; best effort, bounded (3 s per task
/// to be reaped). Returns how many tasks were found.
pub fn remove_all_containers(socket: &Path) -> usize {
    if !socket.exists() {
        return 0;
    }
    let tasks: Vec<String> = ctr_ok(socket, K8S_NAMESPACE, &["tasks", "ls", "-q"])
        .map(|t| {
            t.lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default();
    for t in &tasks {
        let _ = ctr(
            socket,
            K8S_NAMESPACE,
            &["tasks", "kill", "-s", "SIGKILL", t],
        );
    }
    for t in &tasks {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            // The CRI plugin deletes a task itself when it sees the exit, so "not found" is
            // as good as our own delete.
            if ctr(socket, K8S_NAMESPACE, &["tasks", "rm", "-f", t]).is_ok_and(|o| {
                o.status.success() || String::from_utf8_lossy(&o.stderr).contains("not found")
            }) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for c in container_ids(socket) {
        let _ = ctr(socket, K8S_NAMESPACE, &["containers", "rm", &c]);
    }
    tasks.len()
}

/// Lazily unmounts every mount point under `dir`, deepest first (what a killed shim or a
/// sandbox removed behind CRI's back leaves mounted, and what would make removing the
/// directory fail). Returns how many were found.
pub fn unmount_under(dir: &Path) -> usize {
    let prefix = dir.display().to_string();
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in &mounts {
        let _ = Command::new("umount").arg("-l").arg(m).status();
    }
    mounts.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_everything_under_the_dir() {
        let text = config_toml(Path::new("/d/c"), "native", crate::PAUSE_IMAGE);
        let l = Layout::new("/d/c");
        assert!(text.contains(&format!("address = \"{}\"", l.socket().display())));
        assert!(text.contains(&format!("conf_dir = \"{}\"", l.cni_conf_dir().display())));
        assert!(text.contains("snapshotter = \"native\""));
        assert!(text.contains("sandbox_image = \"kelson.local/pause:3.10\""));
        assert!(text.contains("restrict_oom_score_adj = true"));
        assert_eq!(l.endpoint(), "unix:///d/c/containerd.sock");
    }

    #[test]
    fn plugin_listing_is_parsed() {
        let listing = "TYPE                            ID          PLATFORMS      STATUS\n\
            io.containerd.snapshotter.v1    overlayfs   linux/amd64    skip\n\
            io.containerd.snapshotter.v1    native      linux/amd64    ok\n\
            io.containerd.grpc.v1           cri         linux/amd64    ok\n";
        assert!(plugin_ok(listing, "io.containerd.snapshotter.v1", "native"));
        assert!(!plugin_ok(
            listing,
            "io.containerd.snapshotter.v1",
            "overlayfs"
        ));
        assert!(plugin_ok(listing, "io.containerd.grpc.v1", "cri"));
        assert!(!plugin_ok(listing, "io.containerd.grpc.v1", "nope"));
    }

    #[test]
    fn write_config_creates_dirs_and_drops_a_stale_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path().join("ctrd"));
        std::fs::create_dir_all(&l.dir).unwrap();
        std::fs::write(l.socket(), b"").unwrap();
        let path = l.write_config("native", crate::PAUSE_IMAGE).unwrap();
        assert!(l.cni_conf_dir().is_dir());
        assert!(!l.socket().exists());
        assert!(std::fs::read_to_string(path)
            .unwrap()
            .contains("snapshotter = \"native\""));
    }

    #[test]
    fn a_dead_socket_is_an_error_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("none.sock");
        if Command::new("ctr").arg("--version").output().is_err() {
            assert!(server_version(&sock).is_err());
            return;
        }
        assert!(server_version(&sock).is_err());
        assert!(container_ids(&sock).is_empty());
        assert_eq!(remove_all_containers(&sock), 0);
    }
}
