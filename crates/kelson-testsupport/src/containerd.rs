//! A private containerd for tests (and a template for `kelsonctl up`): its own root, state,
//! sockets, runc root and CNI config directory under one directory, so several can run side by
//! side with the host's containerd (if any) untouched.
//!
//! The CRI plugin is configured the way the kubelet needs it on these machines: the sandbox
//! image is the project's locally built pause image (no registry is reachable), CNI plugins come
//! from Debian's `/usr/lib/cni`, cgroups are managed by runc directly (cgroupfs: the hosts have
//! a hybrid v1 layout and no systemd on the host), and the snapshotter is overlayfs unless this
//! kernel/filesystem refuses it (e.g. the directory sits on an overlay), in which case the
//! daemon is restarted with the `native` (copying) snapshotter.
//! `restrict_oom_score_adj` is on because these machines withhold CAP_SYS_RESOURCE even from
//! root, and runc cannot give the sandbox its usual -998 otherwise. The busybox and pause test
//! images are built with `kelson-oci` and imported into the `k8s.io` namespace before
//! [`Containerd::start`] returns.
//!
//! Drop kills every task in the `k8s.io` namespace (shims live outside containerd's process
//! group, so killing containerd alone would leak containers), then containerd, then lazily
//! unmounts anything left under the directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::ChildGuard;

/// The CRI plugin's namespace.
pub const K8S_NAMESPACE: &str = "k8s.io";

/// A running private containerd.
pub struct Containerd {
    dir: PathBuf,
    socket: PathBuf,
    snapshotter: String,
    child: Option<ChildGuard>,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field("socket", &self.socket)
            .field("snapshotter", &self.snapshotter)
            .finish()
    }
}

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

impl Containerd {
    /// Starts containerd under `dir` (created if missing) and imports the test images.
    pub async fn start(dir: &Path) -> anyhow::Result<Containerd> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::start_blocking(&dir))
            .await
            .context("containerd start task")?
    }

    fn start_blocking(dir: &Path) -> anyhow::Result<Containerd> {
        std::fs::create_dir_all(dir.join("cni/net.d"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut last_err = None;
        for snapshotter in ["overlayfs", "native"] {
            match Self::spawn(dir, snapshotter) {
                Ok(c) => {
                    let images = kelson_oci::build_test_images(
                        Path::new(kelson_oci::DEFAULT_BUSYBOX),
                        &dir.join("images"),
                    )
                    .context("building the test images (is busybox-static installed?)")?;
                    let target = kelson_oci::ImportTarget {
                        address: c.socket.clone(),
                        namespace: K8S_NAMESPACE.into(),
                        snapshotter: Some(snapshotter.into()),
                    };
                    for img in [&images.pause, &images.busybox] {
                        kelson_oci::import(&target, img)
                            .with_context(|| format!("importing {}", img.display()))?;
                    }
                    return Ok(c);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("containerd did not start")))
    }

    fn spawn(dir: &Path, snapshotter: &str) -> anyhow::Result<Containerd> {
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, config_toml(dir, snapshotter, kelson_oci::PAUSE_IMAGE))
            .with_context(|| format!("writing {}", cfg.display()))?;
        let socket = dir.join("containerd.sock");
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&cfg).arg("--log-level").arg("info");
        let child = ChildGuard::spawn(
            "containerd",
            cmd,
            &dir.join(format!("containerd-{snapshotter}.log")),
        )?;
        let mut c = Containerd {
            dir: dir.to_path_buf(),
            socket,
            snapshotter: snapshotter.into(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let running = c.child.as_mut().is_some_and(|g| g.is_running());
            if !running {
                bail!("containerd exited during startup:\n{}", c.log_tail(30));
            }
            if c.socket.exists() {
                let out = c.ctr(&["plugins", "ls"]);
                if out.status.success() {
                    let text = String::from_utf8_lossy(&out.stdout).into_owned();
                    let ok = |ty: &str, id: &str| {
                        text.lines().any(|l| {
                            let f: Vec<&str> = l.split_whitespace().collect();
                            f.len() >= 4 && f[0] == ty && f[1] == id && f[f.len() - 1] == "ok"
                        })
                    };
                    if !ok("io.containerd.snapshotter.v1", snapshotter) {
                        bail!("snapshotter {snapshotter} is not available here:\n{text}");
                    }
                    if !ok("io.containerd.grpc.v1", "cri") {
                        bail!(
                            "containerd's CRI plugin did not load:\n{text}\n{}",
                            c.log_tail(30)
                        );
                    }
                    return Ok(c);
                }
            }
            if Instant::now() >= deadline {
                bail!("containerd did not serve within 20 s:\n{}", c.log_tail(30));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// containerd's gRPC socket (CRI is served on it too).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `unix://...` endpoint for CRI clients.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The directory the CRI plugin reads CNI configs from.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni/net.d")
    }

    /// The snapshotter in use (`overlayfs` or `native`).
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `ctr --address <socket> --namespace k8s.io <args>`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(K8S_NAMESPACE)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running ctr: {e} (install containerd: scripts/setup.sh)"))
    }

    /// IDs of every container containerd knows in `k8s.io` (sandboxes included).
    pub fn container_ids(&self) -> Vec<String> {
        let out = self.ctr(&["containers", "ls", "-q"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.child
            .as_ref()
            .map(|c| c.log_tail(n))
            .unwrap_or_default()
    }

    /// Kills and deletes every task and container in `k8s.io`; best effort, bounded.
    pub fn remove_all_containers(&self) {
        let out = self.ctr(&["tasks", "ls", "-q"]);
        let tasks: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        for t in &tasks {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", t]);
        }
        for t in &tasks {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if self.ctr(&["tasks", "rm", "-f", t]).status.success() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for c in self.container_ids() {
            let _ = self.ctr(&["containers", "rm", &c]);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.as_mut().is_some_and(|c| c.is_running()) {
            self.remove_all_containers();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.terminate(Duration::from_secs(5));
        }
        // Whatever is still mounted under the directory (shm, rootfs of a container whose shim
        // was killed) would make the temp dir's removal fail.
        let prefix = self.dir.display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}
