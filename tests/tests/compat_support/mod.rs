//! Helpers shared by the etcd-compatibility suites (`etcdctl_compat`, `failover`,
//! `watch_guarantees`); owned by the compatibility-suite engineer.
//!
//! Every suite body is an `async fn(StoreKind)`; `store_tests!` turns each into a module with
//! one `#[tokio::test]` per store (`name::etcd` and `name::kelson`), so the very same assertions
//! run against the real etcd 3.4 and against kelson-kv and any difference is a failing test.
//! Filter with `cargo test -p kelson-tests -- ::etcd` (or `::kelson`).
//!
//! Failures carry the cluster's member logs: `Ctx` wraps a cluster and every check goes through
//! `ctx.check(..)`/`ctx.fail(..)`, which append `StoreCluster::logs()` to the panic message.

#![allow(dead_code)] // Each test binary uses a different subset of these helpers.

use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use kelson_testsupport::{ClusterOpts, StoreCluster, StoreKind, ETCDCTL};

/// Generates `mod $name { etcd(), kelson() }` tests calling `$name(StoreKind)` from the parent.
#[macro_export]
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use kelson_testsupport::StoreKind;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn etcd() {
                    super::$name(StoreKind::Etcd).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn kelson() {
                    super::$name(StoreKind::Kelson).await
                }
            }
        )*
    };
}

/// Starts `n` members of `kind` with `opts`; panics with the start error (which already
/// includes member logs) if the cluster does not come up.
pub async fn start(kind: StoreKind, n: usize, opts: ClusterOpts) -> StoreCluster {
    match StoreCluster::start(kind, n, opts).await {
        Ok(c) => c,
        Err(e) => panic!(
            "starting a {n}-member {} cluster failed: {e:#}",
            kind.name()
        ),
    }
}

/// Formats an etcdctl run for a failure message.
pub fn show(out: &Output) -> String {
    format!(
        "status: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stdout and stderr together (etcdctl 3.4 prints some results, e.g. `endpoint health`, to
/// stderr).
pub fn all_output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs etcdctl (v3 API) against `endpoints` with `stdin` fed in, bounded by its own timeouts
/// and by a hard 30 s limit on the process: a hung etcdctl is killed (kill_on_drop) rather than
/// hanging the test, and reported as a failed run.
pub async fn etcdctl_in(endpoints: &str, args: &[&str], stdin: &[u8]) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning /usr/bin/etcdctl");
    let mut input = child.stdin.take().expect("piped stdin");
    let data = stdin.to_vec();
    // Written concurrently: a large value must not deadlock against a full stdout pipe.
    let writer = tokio::spawn(async move {
        let _ = input.write_all(&data).await;
        let _ = input.shutdown().await;
    });
    let out = match tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await {
        Ok(r) => r.expect("waiting for etcdctl"),
        Err(_) => panic!("etcdctl {args:?} against {endpoints} hung for 30 s"),
    };
    let _ = writer.await;
    out
}

/// `etcdctl_in` with empty stdin.
pub async fn etcdctl(endpoints: &str, args: &[&str]) -> Output {
    etcdctl_in(endpoints, args, b"").await
}

/// A long-running etcdctl child (e.g. `watch`) whose stdout lines are collected as they come;
/// killed when dropped.
pub struct EtcdctlChild {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    pub seen: Vec<String>,
}

impl EtcdctlChild {
    pub fn spawn(endpoints: &str, args: &[&str]) -> EtcdctlChild {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .arg("--dial-timeout=3s")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning /usr/bin/etcdctl");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let tx2 = tx.clone();
        tokio::spawn(async move {
            let mut r = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let mut r = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if tx2.send(format!("stderr: {l}")).is_err() {
                    break;
                }
            }
        });
        EtcdctlChild {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Collects lines until at least `n` stdout lines (stderr excluded) have arrived or
    /// `timeout` passes; returns the stdout lines seen so far.
    pub async fn wait_lines(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.stdout_lines().len() >= n {
                return self.stdout_lines();
            }
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) => self.seen.push(l),
                Ok(None) | Err(_) => return self.stdout_lines(),
            }
        }
    }

    /// Collects whatever arrives during `period`.
    pub async fn pump(&mut self, period: Duration) {
        self.wait_lines(usize::MAX, period).await;
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter(|l| !l.starts_with("stderr: "))
            .cloned()
            .collect()
    }

    /// Everything seen, stderr included, for failure messages.
    pub fn transcript(&self) -> String {
        self.seen.join("\n")
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// The member index whose status says it is the leader (asking every running member).
pub async fn leader_index(c: &StoreCluster, candidates: &[usize]) -> anyhow::Result<usize> {
    let mut ids = Vec::new();
    let mut leader = 0;
    for &i in candidates {
        let mut cl = c.member_client(i).await?;
        let s = tokio::time::timeout(Duration::from_secs(3), cl.status())
            .await
            .context("status timed out")??;
        let me = s.header().map(|h| h.member_id()).unwrap_or(0);
        ids.push((i, me));
        if s.leader() != 0 {
            leader = s.leader();
        }
    }
    match ids.iter().find(|(_, id)| *id == leader && leader != 0) {
        Some((i, _)) => Ok(*i),
        None => bail!("no member of {candidates:?} is the leader {leader:x} (ids {ids:?})"),
    }
}
