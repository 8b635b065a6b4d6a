//! Helpers shared by Kelson's integration tests: ports, workspace binaries, child processes
//! that cannot outlive a test, bounded polling, store clusters (kelson-kv or the real etcd,
//! so one test body can run against both), `etcdctl`, and a private D-Bus daemon.
//!
//! Design rules, because every integration test leans on this crate:
//! - Nothing waits without a bound: every poll has a timeout and reports what it waited for.
//! - Every process started here runs in its own process group and is killed (the whole group)
//!   when its guard drops, including on test panic, so no daemon leaks into later tests.
//! - Output of every child goes to a log file in the test's temp dir; failure messages include
//!   the log tail so a failing CI run explains itself.
//! - Clusters bind loopback only, on ports chosen by binding 127.0.0.1:0.

use std::fs;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

mod cluster;
pub mod containerd;
mod controlplane;
mod dbus;
pub mod host;
pub mod nspawn;
mod peer;
pub mod probe;

pub use cluster::{
    start_cluster, ClusterOpts, EtcdCluster, KvCluster, KvMember, Member, StoreCluster, StoreKind,
};
pub use containerd::Containerd;
pub use controlplane::{
    apiserver_args, client_for, kubectl_with, wait_readyz, ControlPlane, ControlPlaneOpts, KUBECTL,
};
pub use dbus::DbusDaemon;
pub use host::HostCleanup;
pub use nspawn::NspawnMachine;
pub use peer::PeerApiServer;

/// A TCP port that was free on 127.0.0.1 a moment ago (bound, read, released).
pub fn free_port() -> u16 {
    // Picked below the kernel's ephemeral range (32768+ by default) and below the NodePort
    // range (30000-32767): a port the kernel hands out as `:0` is also what it gives the next
    // outgoing connection as a source port, so between this check and the daemon's bind some
    // other test's client could take it (seen in CI as a store member failing to bind).
    // Random per process (pid, time, counter), bind-checked; `:0` is the fallback.
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    for _ in 0..64 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // splitmix64: cheap, well-spread; no need for a crate here.
        let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let port = 20_000 + (z % 10_000) as u16;
        // Never the same port twice in one process: callers take several before binding any.
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// The target directory's profile dir (`target/debug`) the running test binary lives in.
fn profile_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        // Test binaries live in target/<profile>/deps/<name>-<hash>.
        if let Some(deps) = exe.parent() {
            if deps.file_name().is_some_and(|n| n == "deps") {
                if let Some(profile) = deps.parent() {
                    return profile.to_path_buf();
                }
            }
            // A binary run directly from target/<profile>/.
            return deps.to_path_buf();
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("debug")
}

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Path of a workspace binary (e.g. `kelson-kv`) next to the running test's target dir.
/// `CARGO_TARGET_DIR` is honored when the test binary's location says nothing.
///
/// Panics with instructions when the binary is missing: an integration test cannot run
/// without it, and `cargo test -p X` does not build other packages' binaries.
pub fn bin_path(name: &str) -> PathBuf {
    let mut candidates = vec![profile_dir().join(name)];
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("debug").join(name));
    }
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "binary `{name}` not found (looked at {candidates:?}); build it first: `cargo build -p {name}` \
         (or `cargo build --workspace --all-targets`)"
    );
}

/// A child process in its own process group, killed with its whole group on drop.
pub struct ChildGuard {
    name: String,
    child: Child,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

impl std::fmt::Debug for ChildGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildGuard")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("log", &self.log_path)
            .finish()
    }
}

impl ChildGuard {
    /// Spawns `cmd` with stdin closed and stdout+stderr appended to `log_path`.
    pub fn spawn(name: &str, mut cmd: Command, log_path: &Path) -> anyhow::Result<ChildGuard> {
        use std::os::unix::process::CommandExt;
        if let Some(dir) = log_path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let log2 = log.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Own group: Drop can kill the process and anything it forked in one signal, and
            // a terminal's Ctrl-C on the test runner does not race with our shutdown.
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        Ok(ChildGuard {
            name: name.to_string(),
            child,
            log_path: log_path.to_path_buf(),
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The child's output so far (lossy UTF-8), for failure messages.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<no log at {}: {e}>", self.log_path.display()))
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The exit status if the child has exited (reaped), without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    fn signal_group(&self, sig: Signal) {
        // The group id equals the child's pid (process_group(0)). ESRCH once it is gone is fine.
        let _ = killpg(Pid::from_raw(self.child.id() as i32), sig);
    }

    /// SIGKILL to the whole group, then reap. Idempotent.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal_group(Signal::SIGKILL);
        if let Some(s) = self.status {
            return s;
        }
        let s = self.child.wait().expect("waiting for a SIGKILLed child");
        self.status = Some(s);
        s
    }

    /// SIGTERM to the group and wait up to `timeout` for the child to exit. On timeout the
    /// group is SIGKILLed and an error (with the log tail) is returned.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(s) = self.try_wait() {
            // Already exited; still clear out anything it left in its group.
            self.signal_group(Signal::SIGKILL);
            return Ok(s);
        }
        self.signal_group(Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.try_wait() {
                self.signal_group(Signal::SIGKILL);
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        bail!(
            "{} did not exit within {timeout:?} of SIGTERM; killed. Log tail:\n{}",
            self.name,
            self.log_tail(40)
        )
    }

    /// Waits (bounded) for the child to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!("{} still running after {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.signal_group(Signal::SIGKILL);
        if self.status.is_none() {
            let _ = self.child.wait();
        }
    }
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        // A probe that hangs must not defeat the bound.
        if let Ok(true) = tokio::time::timeout(remaining, f()).await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `f` every 50 ms until it returns `Ok`, or fails after `timeout` with the last error.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(remaining, f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            let last = last
                .map(|e| format!("{e:#}"))
                .unwrap_or_else(|| "probe hung".into());
            bail!("timed out after {timeout:?} waiting for {what}; last error: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Path of the real etcdctl.
pub const ETCDCTL: &str = "/usr/bin/etcdctl";
/// Path of the real etcd server.
pub const ETCD: &str = "/usr/bin/etcd";

/// Runs `etcdctl --endpoints <endpoints> <args>` with the v3 API, bounded by
/// `--dial-timeout`/`--command-timeout`. Add `--cacert/--cert/--key` to `args` for TLS.
pub fn etcdctl(endpoints: &str, args: &[&str]) -> Output {
    Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running /usr/bin/etcdctl (install etcd-client: scripts/setup.sh)")
}

/// `etcdctl` that must succeed; returns its stdout. Panics with stdout+stderr otherwise.
pub fn etcdctl_ok(endpoints: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoints, args);
    assert!(
        out.status.success(),
        "etcdctl {args:?} against {endpoints} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let p = free_port();
        assert_ne!(p, 0);
        TcpListener::bind(("127.0.0.1", p)).expect("port should be free again");
    }

    #[test]
    fn child_guard_kills_the_whole_group_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let mut cmd = Command::new("sh");
        // The shell forks a grandchild; killing only the shell would leak it.
        cmd.arg("-c").arg(format!(
            "sleep 60 & echo $! > {}; echo started; wait",
            pidfile.display()
        ));
        let log = dir.path().join("sh.log");
        let guard = ChildGuard::spawn("sh", cmd, &log).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(pidfile.exists() && guard.log().contains("started")) {
            assert!(Instant::now() < deadline, "child did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let gc: i32 = fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        drop(guard);
        // The grandchild is reparented to init (or a subreaper), which reaps it shortly.
        let deadline = Instant::now() + Duration::from_secs(5);
        while nix::sys::signal::kill(Pid::from_raw(gc), None).is_ok() && !is_zombie(gc) {
            assert!(
                Instant::now() < deadline,
                "grandchild {gc} survived the guard"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn is_zombie(pid: i32) -> bool {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    }

    #[test]
    fn terminate_and_kill9_report_exit() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("60");
        let mut g = ChildGuard::spawn("sleep", cmd, &dir.path().join("s.log")).unwrap();
        assert!(g.is_running());
        let s = g.terminate(Duration::from_secs(5)).unwrap();
        assert!(!s.success());
        assert!(!g.is_running());

        // A process that ignores SIGTERM is killed after the bound and reported.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("trap '' TERM; echo ready; while :; do sleep 0.05; done");
        let mut g = ChildGuard::spawn("stubborn", cmd, &dir.path().join("t.log")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !g.log().contains("ready") {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        let err = g.terminate(Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().contains("did not exit"), "{err}");
        assert!(!g.is_running());
        g.kill9();
    }

    #[test]
    fn log_captures_both_streams() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("echo out; echo err >&2");
        let mut g = ChildGuard::spawn("sh", cmd, &dir.path().join("l.log")).unwrap();
        assert!(g.wait_exit(Duration::from_secs(5)).unwrap().success());
        let log = g.log();
        assert!(log.contains("out") && log.contains("err"), "{log}");
        assert_eq!(g.log_tail(1), "err");
    }

    #[tokio::test]
    async fn wait_helpers_are_bounded() {
        let err = wait_until(Duration::from_millis(200), "never", || async { false })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("never"));
        let mut n = 0;
        wait_until(Duration::from_secs(5), "third try", || {
            n += 1;
            let done = n >= 3;
            async move { done }
        })
        .await
        .unwrap();
        assert_eq!(n, 3);
        let err = wait_for::<(), _, _>(Duration::from_millis(200), "x", || async { bail!("boom") })
            .await
            .unwrap_err();
        assert!(format!("{err}").contains("boom"));
        // A probe that never completes still times out.
        let err = wait_until(Duration::from_millis(200), "hang", || {
            std::future::pending::<bool>()
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("hang"));
    }

    #[test]
    fn bin_path_panics_helpfully() {
        let err = std::panic::catch_unwind(|| bin_path("no-such-binary-xyz")).unwrap_err();
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("cargo build -p no-such-binary-xyz"), "{msg}");
    }
}
