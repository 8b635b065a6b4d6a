//! Starting the servers under test: a single-member real etcd or a single-member kelson-kv.
//!
//! Both get the same etcd-style flags (name, data dir, loopback client and peer URLs, a
//! one-member initial cluster) and the same durability: fsync stays on (no
//! `--unsafe-no-fsync`), and the data dir is a fresh directory on the same file system, so the
//! numbers compare the implementations rather than their settings. Default heartbeat and
//! election timings are kept: a single member elects itself either way.
//!
//! A [`Server`] owns its child process and its temp dir: dropping it kills the process (SIGKILL
//! is fine, the data is thrown away) before the directory is removed, so an aborted run leaves
//! nothing behind. The process's output goes to a log file whose tail is shown when startup
//! fails. The process's resident set size is read from `/proc/<pid>/status`.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use etcd_client::{Client, ConnectOptions};

/// Which implementation a [`Server`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Etcd,
    Kelson,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Etcd => "etcd",
            Kind::Kelson => "kelson-kv",
        }
    }
}

/// A running single-member server on loopback; killed and cleaned up on drop.
#[derive(Debug)]
pub struct Server {
    kind: Kind,
    child: Child,
    endpoint: String,
    log_path: PathBuf,
    // Dropped after the child is killed (see Drop), so the process never sees its dir vanish.
    _dir: tempfile::TempDir,
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Bound on connecting, for every benchmark connection (etcd-client's and the lean client's).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one request, for every benchmark request (etcd-client's and the lean client's).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Connect options used for every benchmark connection: bounded connect and request times, so
/// a stuck server turns into errors instead of a hung benchmark.
pub fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
}

impl Server {
    /// Starts `bin` as `kind` in a fresh temp dir under `data_root` (the system temp dir when
    /// `None`) and waits, up to 60 s, until it answers `status` with a leader.
    pub async fn start(kind: Kind, bin: &Path, data_root: Option<&Path>) -> anyhow::Result<Server> {
        if !bin.is_file() {
            bail!("{} binary not found at {}", kind.name(), bin.display());
        }
        let prefix = format!("kv-bench-{}-", kind.name());
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix);
        let dir = match data_root {
            Some(root) => builder.tempdir_in(root),
            None => builder.tempdir(),
        }
        .context("creating the server's temp dir")?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log_path = dir.path().join("server.log");
        let log = fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;

        let mut cmd = Command::new(bin);
        cmd.arg("--name")
            .arg("bench")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("bench={peer_url}"))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(format!("kv-bench-{}", std::process::id()));
        if kind == Kind::Kelson {
            // No system bus in a benchmark; a free metrics port so two runs never collide.
            cmd.arg("--no-dbus")
                .arg("--metrics-addr")
                .arg(format!("127.0.0.1:{}", free_port()?));
            if std::env::var_os("RUST_LOG").is_none() {
                // Per-request logging would measure the logger, not the store.
                cmd.env("RUST_LOG", "warn");
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut server = Server {
            kind,
            child,
            endpoint: client_url,
            log_path,
            _dir: dir,
        };
        server.wait_ready(Duration::from_secs(60)).await?;
        Ok(server)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The client URL (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `n` lines of the server's output.
    pub fn log_tail(&self, n: usize) -> String {
        let log = fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Fails (with the log tail) if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); log tail:\n{}",
                self.kind.name(),
                self.log_tail(30)
            );
        }
        Ok(())
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_err = String::from("no attempt yet");
        while Instant::now() < deadline {
            self.check_alive()?;
            let probe = async {
                let mut c = Client::connect([&self.endpoint], Some(connect_options())).await?;
                let s = c.status().await?;
                anyhow::Ok(s.leader())
            };
            match tokio::time::timeout(Duration::from_secs(5), probe).await {
                Ok(Ok(leader)) if leader != 0 => return Ok(()),
                Ok(Ok(_)) => last_err = "no leader yet".into(),
                Ok(Err(e)) => last_err = format!("{e:#}"),
                Err(_) => last_err = "status call timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "{} not ready after {timeout:?} (last: {last_err}); log tail:\n{}",
            self.kind.name(),
            self.log_tail(30)
        )
    }

    /// CPU time (user + system) the server process has used so far, from `/proc/<pid>/stat`.
    /// Read before and after a workload, the difference per operation is the server's CPU cost
    /// of one request: on a 2-core machine shared with the load generator (and other builds)
    /// that is steadier evidence than wall-clock throughput.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        proc_cpu_time(&format!("/proc/{}/stat", self.pid()))
    }

    /// The process's resident set size in bytes (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        parse_vm_rss(&status).with_context(|| format!("no VmRSS line in {path}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The data is disposable, so no graceful shutdown: kill and reap before the temp dir goes.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) this benchmark process has used so far: the load generator's
/// share of the machine, shown next to the server's.
pub fn own_cpu_time() -> anyhow::Result<Duration> {
    proc_cpu_time("/proc/self/stat")
}

fn proc_cpu_time(path: &str) -> anyhow::Result<Duration> {
    let stat = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_stat_cpu_ticks(&stat).with_context(|| format!("malformed {path}"))?;
    let hz = clock_ticks_per_sec();
    Ok(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000 / hz),
    ))
}

/// The kernel's USER_HZ (`getconf CLK_TCK`; 100 on every common Linux build), asked once.
fn clock_ticks_per_sec() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&hz: &u64| hz > 0)
            .unwrap_or(100)
    })
}

/// utime + stime (fields 14 and 15, in clock ticks) of a `/proc/<pid>/stat` line. The command
/// name (field 2) may contain spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // field 3 is the first after ')'
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS:   12345 kB` → bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => n.checked_mul(1024),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        let s = "Name:\tetcd\nVmPeak:\t  999 kB\nVmRSS:\t   20480 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_vm_rss(s), Some(20480 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert_eq!(parse_vm_rss("VmRSS: lots kB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS: 5 MB\n"), None);
    }

    #[test]
    fn parses_cpu_ticks_after_the_command_name() {
        let stat = "4242 (kelson kv) S 1 2 3 4 5 6 7 8 9 10 123 45 0 0 20 0 8 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(168));
        assert_eq!(parse_stat_cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_rss_is_plausible() {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let rss = parse_vm_rss(&status).unwrap();
        assert!(rss > 100 * 1024 && rss < 64 << 30, "rss {rss}");
    }

    #[tokio::test]
    async fn missing_binary_is_an_error_not_a_panic() {
        let err = Server::start(Kind::Kelson, Path::new("/nonexistent/kelson-kv"), None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
    }
}
