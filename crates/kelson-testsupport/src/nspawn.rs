//! A throwaway systemd machine for tests: a copy of a Debian root file system booted with
//! `systemd-nspawn --boot`, systemd as PID 1, in its own network namespace (loopback only, so
//! its ports cannot clash with the host's or other tests').
//!
//! Tests reach into it with `nsenter` on the machine's PID 1 rather than `machinectl`: the hosts
//! have no systemd-machined, so machines are started with `--register=no`. Dropping a
//! [`NspawnMachine`] powers it off (bounded) and kills what is left: SIGKILL to a PID
//! namespace's init ends every process in it.
//!
//! The cached base tree comes from `scripts/nspawn-rootfs.sh` ([`cached_rootfs`]); a test copies
//! it ([`copy_tree`]) and changes the copy before booting it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{workspace_root, ChildGuard};

/// Builds or reuses `target/nspawn-rootfs` (scripts/nspawn-rootfs.sh); a failure (no network,
/// no debootstrap) panics with the script's output.
pub fn cached_rootfs() -> PathBuf {
    let dir = workspace_root().join("target").join("nspawn-rootfs");
    let script = workspace_root().join("scripts").join("nspawn-rootfs.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .output()
        .expect("running scripts/nspawn-rootfs.sh");
    assert!(
        out.status.success(),
        "scripts/nspawn-rootfs.sh {} failed ({}); a systemd machine needs root, debootstrap and a \
         Debian mirror (KELSON_DEBIAN_MIRROR):\n{}",
        dir.display(),
        out.status,
        output_text(&out)
    );
    dir
}

/// Copies `base` to `dest` (`cp -a`, reflinks where the file system has them).
pub fn copy_tree(base: &Path, dest: &Path) {
    let cp = Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(base)
        .arg(dest)
        .status()
        .expect("cp");
    assert!(cp.success(), "copying {} failed", base.display());
}

/// stdout then stderr of a finished command, lossily decoded.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A booted machine; see the module documentation.
pub struct NspawnMachine {
    init_pid: u32,
    nspawn: Option<ChildGuard>,
}

impl NspawnMachine {
    /// Boots the tree at `root` (console output to `console_log`, extra `systemd-nspawn`
    /// arguments such as `--bind-ro=...`) and waits until systemd reports the system running
    /// or degraded (60 s at most).
    pub fn boot(root: &Path, console_log: &Path, extra_args: &[&str]) -> NspawnMachine {
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("-D")
            .arg(root)
            .args([
                "--boot",
                // No systemd-machined on the host.
                "--register=no",
                "--keep-unit",
                "--private-network",
                "--console=read-only",
            ])
            .args(extra_args);
        let nspawn =
            ChildGuard::spawn("systemd-nspawn", cmd, console_log).expect("spawning systemd-nspawn");
        let mut m = NspawnMachine {
            init_pid: 0,
            nspawn: Some(nspawn),
        };
        m.init_pid = m.find_init();
        m.wait_booted();
        m
    }

    /// The machine's PID 1 as the host sees it.
    pub fn init_pid(&self) -> u32 {
        self.init_pid
    }

    /// systemd-nspawn's child, once it is systemd.
    fn find_init(&mut self) -> u32 {
        let nspawn = self.nspawn.as_mut().expect("machine is running");
        let pid = nspawn.pid();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            assert!(
                nspawn.is_running(),
                "systemd-nspawn exited:\n{}",
                nspawn.log_tail(40)
            );
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            if let Some(c) = children.split_whitespace().next() {
                if let Ok(c) = c.parse::<u32>() {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
                    if comm.trim() == "systemd" {
                        return c;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no systemd inside the container after 15 s:\n{}",
            nspawn.log_tail(40)
        );
    }

    fn wait_booted(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            let out = self.run(&["systemctl", "is-system-running"]);
            last = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if last == "running" || last == "degraded" {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("machine not booted after 60 s (state {last:?})");
    }

    /// `args` inside the machine's namespaces (60 s at most).
    pub fn run(&self, args: &[&str]) -> Output {
        let pid = self.init_pid.to_string();
        Command::new("timeout")
            .args(["60", "nsenter", "-t", &pid, "-m", "-u", "-i", "-n", "-p"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    /// Like [`run`](Self::run) but the command must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed in the machine ({}):\n{}",
            out.status,
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `systemctl show -p PROP --value UNIT`.
    pub fn show(&self, unit: &str, prop: &str) -> String {
        self.ok(&["systemctl", "show", "-p", prop, "--value", unit])
            .trim()
            .to_string()
    }

    /// The unit's journal.
    pub fn journal(&self, unit: &str) -> String {
        self.ok(&["journalctl", "--no-pager", "-u", unit])
    }

    /// Waits (bounded) until `check` holds; panics with the last diagnostic on timeout.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<(), String>,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            match check() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("{what}: not within {timeout:?}: {e}");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }
}

impl Drop for NspawnMachine {
    fn drop(&mut self) {
        if let Some(mut nspawn) = self.nspawn.take() {
            if nspawn.is_running() && self.init_pid != 0 {
                let _ = self.run(&["systemctl", "poweroff", "--no-block"]);
                if nspawn.wait_exit(Duration::from_secs(20)).is_err() {
                    // SIGKILL to a PID namespace's init kills everything in it.
                    let _ = Command::new("kill")
                        .args(["-KILL", &self.init_pid.to_string()])
                        .status();
                }
            }
        }
    }
}
