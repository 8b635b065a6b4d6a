//! Store clusters on loopback: `n` members of kelson-kv or of the real etcd, started with the
//! same etcd-style flags, so a test written once runs against both (`StoreKind`).
//!
//! Each member gets a free client port and a free peer port; `--initial-cluster` lists them all.
//! With `ClusterOpts::tls` a PKI is generated (kelson-pki) and both client and peer traffic use
//! mutual TLS, as in production. The real etcd runs with its normal durability
//! (no `--unsafe-no-fsync`) so comparisons are fair.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use anyhow::{bail, Context};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use kelson_pki::PkiPaths;

use crate::{bin_path, free_port, wait_for, ChildGuard, ETCD};

/// Which store implementation a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `kelson-kv` from this workspace's target dir.
    Kelson,
    /// The real etcd at `/usr/bin/etcd`.
    Etcd,
}

impl StoreKind {
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Kelson => "kelson-kv",
            StoreKind::Etcd => "etcd",
        }
    }
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    /// Mutual TLS on client and peer URLs with a freshly generated PKI.
    pub tls: bool,
    /// Heartbeat 50 ms / election 500 ms instead of the defaults (100 / 1000), for fast failover.
    pub fast_timings: bool,
    pub snapshot_count: Option<u64>,
    /// kelson-kv only: use this D-Bus address instead of `--no-dbus`.
    pub dbus_address: Option<String>,
    /// Appended to every member's command line.
    pub extra_args: Vec<String>,
    /// Bound for the cluster to become healthy in `start` and `wait_healthy`.
    pub startup_timeout: Duration,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            tls: false,
            fast_timings: true,
            snapshot_count: None,
            dbus_address: None,
            extra_args: Vec::new(),
            startup_timeout: Duration::from_secs(30),
        }
    }
}

/// One member's fixed identity; its process comes and goes with kill9/restart.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    proc: Option<ChildGuard>,
}

/// A running cluster; dropping it kills every member and removes its temp dir.
#[derive(Debug)]
pub struct StoreCluster {
    kind: StoreKind,
    opts: ClusterOpts,
    pki: Option<PkiPaths>,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    // Last: members (and their processes) are dropped before the directory goes away.
    dir: tempfile::TempDir,
}

/// The kelson-kv cluster type (same type as for etcd; the kind is a field).
pub type KvCluster = StoreCluster;
/// The real-etcd cluster type: `StoreCluster::start(StoreKind::Etcd, n, opts)`.
pub type EtcdCluster = StoreCluster;
/// A member of either kind.
pub type KvMember = Member;

/// Starts `n` members of `kind` with default options and waits until they are healthy.
pub async fn start_cluster(kind: StoreKind, n: usize) -> anyhow::Result<StoreCluster> {
    StoreCluster::start(kind, n, ClusterOpts::default()).await
}

impl StoreCluster {
    /// Starts `n` members and waits (bounded by `opts.startup_timeout`) until every member
    /// answers a status call and they agree on a leader.
    pub async fn start(
        kind: StoreKind,
        n: usize,
        opts: ClusterOpts,
    ) -> anyhow::Result<StoreCluster> {
        if n == 0 {
            bail!("a cluster needs at least one member");
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-cluster-", kind.name()))
            .tempdir()?;
        let pki = if opts.tls {
            Some(kelson_pki::init_store_pki(&dir.path().join("pki"), &[])?)
        } else {
            None
        };
        let scheme = if opts.tls { "https" } else { "http" };
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("m{i}");
            members.push(Member {
                data_dir: dir.path().join(&name).join("data"),
                log_path: dir.path().join(&name).join("log"),
                name,
                client_port: free_port(),
                peer_port: free_port(),
                proc: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={scheme}://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = StoreCluster {
            kind,
            opts,
            pki,
            members,
            initial_cluster,
            token: format!("test-{}", std::process::id()),
            dir,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        let timeout = cluster.opts.startup_timeout;
        cluster.wait_healthy(timeout).await?;
        Ok(cluster)
    }

    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// The cluster's temp dir (member data, logs, pki).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The generated PKI when started with `tls`.
    pub fn pki(&self) -> Option<&PkiPaths> {
        self.pki.as_ref()
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    fn scheme(&self) -> &'static str {
        if self.pki.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!(
            "{}://127.0.0.1:{}",
            self.scheme(),
            self.members[i].client_port
        )
    }

    /// Client URLs of every member (running or not).
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Client URLs joined with commas, as etcdctl's `--endpoints` wants.
    pub fn endpoints_str(&self) -> String {
        self.endpoints().join(",")
    }

    fn running(&mut self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| {
                self.members[i]
                    .proc
                    .as_mut()
                    .is_some_and(|p| p.is_running())
            })
            .collect()
    }

    fn command(&self, i: usize) -> Command {
        let m = &self.members[i];
        let scheme = self.scheme();
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("{scheme}://127.0.0.1:{}", m.peer_port);
        let mut cmd = match self.kind {
            StoreKind::Kelson => Command::new(bin_path("kelson-kv")),
            StoreKind::Etcd => Command::new(ETCD),
        };
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&self.token);
        if self.opts.fast_timings {
            cmd.args(["--heartbeat-interval", "50", "--election-timeout", "500"]);
        }
        if let Some(n) = self.opts.snapshot_count {
            cmd.arg("--snapshot-count").arg(n.to_string());
        }
        if let Some(p) = &self.pki {
            cmd.arg("--cert-file")
                .arg(&p.server_cert)
                .arg("--key-file")
                .arg(&p.server_key)
                .arg("--trusted-ca-file")
                .arg(&p.ca_cert)
                .arg("--client-cert-auth")
                .arg("--peer-cert-file")
                .arg(&p.peer_cert)
                .arg("--peer-key-file")
                .arg(&p.peer_key)
                .arg("--peer-trusted-ca-file")
                .arg(&p.ca_cert)
                .arg("--peer-client-cert-auth");
        }
        if self.kind == StoreKind::Kelson {
            match &self.opts.dbus_address {
                Some(a) => cmd.arg("--dbus-address").arg(a),
                None => cmd.arg("--no-dbus"),
            };
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "info");
            }
        }
        cmd.args(&self.opts.extra_args);
        cmd
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let cmd = self.command(i);
        let m = &self.members[i];
        std::fs::create_dir_all(m.data_dir.parent().unwrap_or(self.dir.path()))?;
        let guard = ChildGuard::spawn(
            &format!("{} {}", self.kind.name(), m.name),
            cmd,
            &m.log_path,
        )?;
        self.members[i].proc = Some(guard);
        Ok(())
    }

    /// SIGKILLs member `i` (no graceful shutdown: a crash).
    pub fn kill9(&mut self, i: usize) {
        if let Some(p) = self.members[i].proc.as_mut() {
            p.kill9();
        }
    }

    /// SIGTERMs member `i` and waits (bounded) for it to exit.
    pub fn terminate(&mut self, i: usize) -> anyhow::Result<ExitStatus> {
        match self.members[i].proc.as_mut() {
            Some(p) => p.terminate(Duration::from_secs(15)),
            None => bail!("member {i} was never started"),
        }
    }

    /// Waits (bounded) for member `i` to exit on its own, without signalling it.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> anyhow::Result<ExitStatus> {
        match self.members[i].proc.as_mut() {
            Some(p) => p.wait_exit(timeout),
            None => bail!("member {i} was never started"),
        }
    }

    /// Starts member `i` again on its data dir and ports (killing it first if still running).
    /// Does not wait for health: call `wait_healthy`.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill9(i);
        self.spawn(i)
    }

    /// The log of member `i`.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log_path).unwrap_or_default()
    }

    /// The last lines of every member's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, m) in self.members.iter().enumerate() {
            let log = self.log(i);
            let lines: Vec<&str> = log.lines().collect();
            out.push_str(&format!(
                "----- {} {} (last 30 lines)\n",
                self.kind.name(),
                m.name
            ));
            out.push_str(&lines[lines.len().saturating_sub(30)..].join("\n"));
            out.push('\n');
        }
        out
    }

    /// Connect options with TLS material when the cluster uses TLS, and short timeouts.
    pub fn connect_options(&self) -> anyhow::Result<ConnectOptions> {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        if let Some(p) = &self.pki {
            let read =
                |f: &Path| std::fs::read(f).with_context(|| format!("reading {}", f.display()));
            o = o.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(read(&p.ca_cert)?))
                    .identity(Identity::from_pem(
                        read(&p.client_cert)?,
                        read(&p.client_key)?,
                    )),
            );
        }
        Ok(o)
    }

    /// An etcd-client connected to every member.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(self.endpoints(), Some(self.connect_options()?)).await?)
    }

    /// An etcd-client connected to member `i` only.
    pub async fn member_client(&self, i: usize) -> anyhow::Result<Client> {
        Ok(Client::connect([self.endpoint(i)], Some(self.connect_options()?)).await?)
    }

    /// Waits until every running member answers `status` and all report the same, non-zero
    /// leader. Fails early if a member process exits.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let running = self.running();
        if running.is_empty() {
            bail!("no member is running\n{}", self.logs());
        }
        let this = &*self;
        let result = wait_for(timeout, "a healthy cluster with a leader", || async {
            let mut ids = Vec::new();
            let mut leaders = Vec::new();
            for &i in &running {
                let mut c = this
                    .member_client(i)
                    .await
                    .with_context(|| format!("connecting to {}", this.members[i].name))?;
                let s = c
                    .status()
                    .await
                    .with_context(|| format!("status of {}", this.members[i].name))?;
                if s.leader() == 0 {
                    bail!("{} has no leader", this.members[i].name);
                }
                ids.push(s.header().map(|h| h.member_id()).unwrap_or(0));
                leaders.push(s.leader());
            }
            leaders.dedup();
            if leaders.len() != 1 {
                bail!("members disagree on the leader: {leaders:x?}");
            }
            // Right after a kill the survivors still name the dead leader until they elect a
            // new one: healthy means the leader is one of the running members.
            if !ids.contains(&leaders[0]) {
                bail!("leader {:x} is not a running member ({ids:x?})", leaders[0]);
            }
            Ok(())
        })
        .await;
        if let Err(e) = result {
            let exited: Vec<String> = running
                .iter()
                .filter_map(|&i| {
                    let st = self.members[i].proc.as_mut()?.try_wait()?;
                    Some(format!("{} exited: {st}", self.members[i].name))
                })
                .collect();
            bail!("{e:#}\n{}\n{}", exited.join("\n"), self.logs());
        }
        Ok(())
    }

    /// TLS arguments for etcdctl (empty for plaintext clusters).
    pub fn etcdctl_tls_args(&self) -> Vec<String> {
        match &self.pki {
            Some(p) => vec![
                format!("--cacert={}", p.ca_cert.display()),
                format!("--cert={}", p.client_cert.display()),
                format!("--key={}", p.client_key.display()),
            ],
            None => Vec::new(),
        }
    }

    /// Runs etcdctl against every member, with TLS arguments when needed.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let tls = self.etcdctl_tls_args();
        let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        crate::etcdctl(&self.endpoints_str(), &all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ETCDCTL;

    fn have_etcd() -> bool {
        Path::new(ETCD).exists() && Path::new(ETCDCTL).exists()
    }

    #[tokio::test]
    async fn real_etcd_three_members_put_get_and_failover() {
        assert!(
            have_etcd(),
            "etcd-server/etcd-client missing: run scripts/setup.sh"
        );
        three_members_put_get_and_failover(StoreKind::Etcd).await;
    }

    /// The same body against kelson-kv (needs `cargo build -p kelson-kv`).
    #[tokio::test]
    async fn kelson_kv_three_members_put_get_and_failover() {
        three_members_put_get_and_failover(StoreKind::Kelson).await;
    }

    async fn three_members_put_get_and_failover(kind: StoreKind) {
        let mut c = start_cluster(kind, 3).await.unwrap();
        let out = c.etcdctl(&["put", "k", "v1"]);
        assert!(out.status.success(), "{out:?}\n{}", c.logs());
        let out = c.etcdctl(&["get", "k", "--print-value-only"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v1");

        // Kill one member; the others keep serving, and the restarted member catches up.
        c.kill9(0);
        c.wait_healthy(Duration::from_secs(20)).await.unwrap();
        let mut client = c.member_client(1).await.unwrap();
        client.put("k", "v2", None).await.unwrap();
        c.restart(0).unwrap();
        c.wait_healthy(Duration::from_secs(20)).await.unwrap();
        let got = wait_for(Duration::from_secs(10), "m0 to catch up", || async {
            let mut cl = c.member_client(0).await?;
            let r = cl
                .get(
                    "k",
                    Some(etcd_client::GetOptions::new().with_serializable()),
                )
                .await?;
            let v = r.kvs().first().map(|kv| kv.value().to_vec());
            if v.as_deref() != Some(b"v2") {
                bail!("m0 has {v:?}");
            }
            Ok(())
        })
        .await;
        assert!(got.is_ok(), "{got:?}\n{}", c.logs());
    }

    #[tokio::test]
    async fn real_etcd_single_member_with_mutual_tls() {
        assert!(
            have_etcd(),
            "etcd-server/etcd-client missing: run scripts/setup.sh"
        );
        single_member_with_mutual_tls(StoreKind::Etcd).await;
    }

    #[tokio::test]
    async fn kelson_kv_single_member_with_mutual_tls() {
        single_member_with_mutual_tls(StoreKind::Kelson).await;
    }

    async fn single_member_with_mutual_tls(kind: StoreKind) {
        let opts = ClusterOpts {
            tls: true,
            ..ClusterOpts::default()
        };
        let c = StoreCluster::start(kind, 1, opts).await.unwrap();
        assert!(c.endpoint(0).starts_with("https://"));
        let out = c.etcdctl(&["put", "tls", "yes"]);
        assert!(out.status.success(), "{out:?}\n{}", c.logs());
        let mut client = c.client().await.unwrap();
        let r = client.get("tls", None).await.unwrap();
        assert_eq!(r.kvs()[0].value(), b"yes");
        // Without a client certificate the server refuses.
        let p = c.pki().unwrap();
        let out = crate::etcdctl(
            &c.endpoints_str(),
            &[
                &format!("--cacert={}", p.ca_cert.display()),
                // The refusal shows as a timeout in etcdctl; keep the wait short.
                "--command-timeout=2s",
                "get",
                "tls",
            ],
        );
        assert!(!out.status.success(), "no client cert must fail: {out:?}");
    }
}
