//! A private containerd for tests: its own root, state, sockets, runc root and CNI config
//! directory under one directory, so several can run side by side with the host's containerd
//! (if any) untouched.
//!
//! The configuration and the `ctr` chores live in `kelson_oci::containerd`, shared with
//! `kelsonctl up` (see there for why each setting). This fixture adds the process: the
//! snapshotter is overlayfs unless containerd reports it unusable here (e.g. the directory sits
//! on an overlay), in which case the daemon is restarted with the `native` (copying)
//! snapshotter. The busybox and pause test images are built with `kelson-oci` and imported into
//! the `k8s.io` namespace before [`Containerd::start`] returns.
//!
//! Drop kills every task in the `k8s.io` namespace (shims live outside containerd's process
//! group, so killing containerd alone would leak containers), then containerd, then lazily
//! unmounts anything left under the directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kelson_oci::containerd as ctrd;

use crate::ChildGuard;

/// The CRI plugin's namespace.
pub const K8S_NAMESPACE: &str = kelson_oci::containerd::K8S_NAMESPACE;

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

/// containerd 1.6 configuration for a private instance under `dir` (shared with `kelsonctl up`).
pub use kelson_oci::containerd::config_toml;

impl Containerd {
    /// Starts containerd under `dir` (created if missing) and imports the test images.
    pub async fn start(dir: &Path) -> anyhow::Result<Containerd> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::start_blocking(&dir))
            .await
            .context("containerd start task")?
    }

    fn start_blocking(dir: &Path) -> anyhow::Result<Containerd> {
        let mut last_err = None;
        for snapshotter in ctrd::SNAPSHOTTERS {
            match Self::spawn(dir, snapshotter) {
                Ok(c) => {
                    ctrd::ensure_test_images(
                        &c.socket,
                        snapshotter,
                        &dir.join("images"),
                        Path::new(kelson_oci::DEFAULT_BUSYBOX),
                    )
                    .context(
                        "building and importing the test images (is busybox-static installed?)",
                    )?;
                    return Ok(c);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("containerd did not start")))
    }

    fn spawn(dir: &Path, snapshotter: &str) -> anyhow::Result<Containerd> {
        let layout = ctrd::Layout::new(dir);
        let cfg = layout.write_config(snapshotter, kelson_oci::PAUSE_IMAGE)?;
        let socket = layout.socket();
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
            if c.socket.exists() && ctrd::server_version(&c.socket).is_ok() {
                // A plugin that did not load is final for this config: try the next snapshotter.
                ctrd::check_plugins(&c.socket, snapshotter)
                    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.log_tail(30)))?;
                return Ok(c);
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
        ctrd::Layout::new(&self.dir).endpoint()
    }

    /// The directory the CRI plugin reads CNI configs from.
    pub fn cni_conf_dir(&self) -> PathBuf {
        ctrd::Layout::new(&self.dir).cni_conf_dir()
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
        ctrd::ctr(&self.socket, K8S_NAMESPACE, args)
            .unwrap_or_else(|e| panic!("{e} (install containerd: scripts/setup.sh)"))
    }

    /// IDs of every container containerd knows in `k8s.io` (sandboxes included).
    pub fn container_ids(&self) -> Vec<String> {
        ctrd::container_ids(&self.socket)
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.child
            .as_ref()
            .map(|c| c.log_tail(n))
            .unwrap_or_default()
    }

    /// Kills and deletes every task and container in `k8s.io`; best effort, bounded.
    pub fn remove_all_containers(&self) {
        ctrd::remove_all_containers(&self.socket);
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
        ctrd::unmount_under(&self.dir);
    }
}
