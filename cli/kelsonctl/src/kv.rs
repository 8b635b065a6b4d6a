//! `kelsonctl kv`: store status and snapshots over the etcd v3 API.
//!
//! Everything online goes through the stock `etcd-client`, so these commands work against
//! kelson-kv and a real etcd alike. TLS material defaults to the all-in-one layout of
//! `kelsonctl up` (`<default data dir>/pki`), so after `up` a bare `kelsonctl kv status` works.
//! Restore is offline: it builds a data dir through kelson-kv's library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Per-endpoint status: member id, version, db size, leader, raft term/index, errors.
    /// Exits 1 if any endpoint is unhealthy.
    Status(ConnArgs),
    /// Snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Stream a snapshot from one endpoint into FILE (written as FILE.part, fsynced, renamed).
    Save {
        file: PathBuf,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Create a new kelson-kv data dir from a snapshot FILE (offline).
    Restore(RestoreArgs),
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    pub file: PathBuf,
    /// Data directory to create; must not exist or be empty.
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "default")]
    pub name: String,
    /// `name=peer-url,...` of the new cluster (default: this member alone).
    #[arg(long)]
    pub initial_cluster: Option<String>,
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    #[arg(long, default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
}

/// How to reach the store.
#[derive(Debug, Args, Clone)]
pub struct ConnArgs {
    /// Comma-separated client URLs.
    #[arg(
        long,
        env = "KELSON_ENDPOINTS",
        value_delimiter = ',',
        default_value = "https://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// CA bundle to verify servers (default: <data dir>/pki/store-ca.crt, else pki/ca.crt, if
    /// present).
    #[arg(long, env = "KELSON_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (default: <data dir>/pki/kv-client.crt if present).
    #[arg(long, env = "KELSON_CERT")]
    pub cert: Option<PathBuf>,
    /// Client key (default: <data dir>/pki/kv-client.key if present).
    #[arg(long, env = "KELSON_KEY")]
    pub key: Option<PathBuf>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 5)]
    pub command_timeout: u64,
}

impl ConnArgs {
    /// Connection options: TLS when any endpoint is https, with explicit files or the
    /// all-in-one defaults.
    pub fn connect_options(&self) -> anyhow::Result<ConnectOptions> {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(self.command_timeout.clamp(1, 60)))
            .with_timeout(Duration::from_secs(self.command_timeout.max(1)));
        if !self.endpoints.iter().any(|e| e.starts_with("https://")) {
            return Ok(o);
        }
        let pki = crate::default_data_dir().join("pki");
        let pick = |given: &Option<PathBuf>, default: &str| -> Option<PathBuf> {
            given
                .clone()
                .or_else(|| Some(pki.join(default)).filter(|p| p.exists()))
        };
        let mut tls = TlsOptions::new();
        // The store's own CA where the layout has one (kelsonctl up/init), else the shared one.
        if let Some(ca) = pick(&self.cacert, "store-ca.crt").or_else(|| pick(&None, "ca.crt")) {
            tls = tls.ca_certificate(Certificate::from_pem(read(&ca)?));
        }
        match (
            pick(&self.cert, "kv-client.crt"),
            pick(&self.key, "kv-client.key"),
        ) {
            (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(&c)?, read(&k)?)),
            (None, None) => {}
            _ => bail!("--cert and --key go together"),
        }
        o = o.with_tls(tls);
        Ok(o)
    }

    pub async fn connect(&self, endpoints: &[String]) -> anyhow::Result<Client> {
        if endpoints.is_empty() {
            bail!("no endpoints given");
        }
        Client::connect(endpoints, Some(self.connect_options()?))
            .await
            .with_context(|| format!("connecting to {}", endpoints.join(",")))
    }
}

fn read(p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

pub async fn run(cmd: KvCommand) -> anyhow::Result<i32> {
    match cmd {
        KvCommand::Status(conn) => status(&conn).await,
        KvCommand::Snapshot(SnapshotCommand::Save { file, conn }) => {
            let n = snapshot_save(&conn, &file).await?;
            println!("Snapshot saved at {} ({n} bytes)", file.display());
            Ok(0)
        }
        KvCommand::Snapshot(SnapshotCommand::Restore(a)) => {
            restore(&a)?;
            println!(
                "Restored {} into {}",
                a.file.display(),
                a.data_dir.display()
            );
            Ok(0)
        }
    }
}

/// One endpoint's status row.
#[derive(Debug, Clone)]
pub struct EndpointStatus {
    pub endpoint: String,
    pub member_id: u64,
    pub version: String,
    pub db_size: i64,
    pub leader: u64,
    pub raft_term: u64,
    pub raft_index: u64,
    pub errors: Vec<String>,
}

impl EndpointStatus {
    pub fn healthy(&self) -> bool {
        self.leader != 0 && self.errors.is_empty()
    }
}

/// Queries each endpoint separately (a balanced client would hide which one is down).
pub async fn endpoint_status(conn: &ConnArgs, endpoint: &str) -> anyhow::Result<EndpointStatus> {
    let mut c = conn.connect(&[endpoint.to_string()]).await?;
    let s = tokio::time::timeout(Duration::from_secs(conn.command_timeout.max(1)), c.status())
        .await
        .context("status timed out")??;
    Ok(EndpointStatus {
        endpoint: endpoint.to_string(),
        member_id: s.header().map(|h| h.member_id()).unwrap_or(0),
        version: s.version().to_string(),
        db_size: s.db_size(),
        leader: s.leader(),
        raft_term: s.raft_term(),
        raft_index: s.raft_index(),
        errors: s.errors().to_vec(),
    })
}

async fn status(conn: &ConnArgs) -> anyhow::Result<i32> {
    let mut code = 0;
    println!(
        "{:<28} {:<17} {:<8} {:>10} {:<9} {:>6} {:>8}  ERRORS",
        "ENDPOINT", "MEMBER ID", "VERSION", "DB SIZE", "IS LEADER", "TERM", "INDEX"
    );
    for ep in &conn.endpoints {
        match endpoint_status(conn, ep).await {
            Ok(s) => {
                if !s.healthy() {
                    code = 1;
                }
                let mut errors = s.errors.join("; ");
                if s.leader == 0 {
                    errors = format!("no leader {errors}");
                }
                println!(
                    "{:<28} {:<17x} {:<8} {:>10} {:<9} {:>6} {:>8}  {}",
                    s.endpoint,
                    s.member_id,
                    s.version,
                    human_bytes(s.db_size),
                    s.leader == s.member_id && s.leader != 0,
                    s.raft_term,
                    s.raft_index,
                    errors.trim()
                );
            }
            Err(e) => {
                code = 1;
                println!("{ep:<28} unhealthy: {e:#}");
            }
        }
    }
    Ok(code)
}

fn human_bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    if n < 1024.0 {
        format!("{n} B")
    } else if n < 1024.0 * 1024.0 {
        format!("{:.1} kB", n / 1024.0)
    } else if n < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MB", n / (1024.0 * 1024.0))
    } else {
        format!("{:.1} GB", n / (1024.0 * 1024.0 * 1024.0))
    }
}

/// Streams a snapshot from the single endpoint in `conn` into `file`; returns its size.
pub async fn snapshot_save(conn: &ConnArgs, file: &Path) -> anyhow::Result<u64> {
    // A snapshot is one member's state: asking a balanced client would pick one at random.
    if conn.endpoints.len() != 1 {
        bail!(
            "snapshot save needs exactly one endpoint, got {}",
            conn.endpoints.len()
        );
    }
    let name = file
        .file_name()
        .with_context(|| format!("{} is not a file path", file.display()))?;
    let part = file.with_file_name(format!("{}.part", name.to_string_lossy()));
    let result = async {
        let mut c = conn.connect(&conn.endpoints).await?;
        let mut stream = c.snapshot().await.context("starting snapshot")?;
        let mut out =
            std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
        let mut total = 0u64;
        // The stream itself has no overall deadline; a silent server must not hang us forever.
        let idle = Duration::from_secs(conn.command_timeout.max(1) * 6);
        while let Some(msg) = tokio::time::timeout(idle, stream.message())
            .await
            .context("snapshot stream stalled")?
            .context("reading snapshot stream")?
        {
            out.write_all(msg.blob())
                .with_context(|| format!("writing {}", part.display()))?;
            total += msg.blob().len() as u64;
        }
        if total == 0 {
            bail!("server sent an empty snapshot");
        }
        out.sync_all()?;
        drop(out);
        std::fs::rename(&part, file)
            .with_context(|| format!("renaming {} to {}", part.display(), file.display()))?;
        let dir = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::File::open(dir).and_then(|d| d.sync_all())?;
        Ok(total)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

#[cfg(feature = "kv-restore")]
fn restore(a: &RestoreArgs) -> anyhow::Result<()> {
    let cluster = a
        .initial_cluster
        .clone()
        .unwrap_or_else(|| format!("{}={}", a.name, a.initial_advertise_peer_urls));
    kelson_kv::restore::restore_snapshot(
        &a.file,
        &a.data_dir,
        &a.name,
        &cluster,
        &a.initial_cluster_token,
        &a.initial_advertise_peer_urls,
    )
}

#[cfg(not(feature = "kv-restore"))]
fn restore(_: &RestoreArgs) -> anyhow::Result<()> {
    bail!("this kelsonctl was built without the `kv-restore` feature")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(-1), "0 B");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(2048), "2.0 kB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MB");
    }

    #[tokio::test]
    async fn snapshot_save_needs_one_endpoint_and_leaves_no_part_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.db");
        let mut conn = ConnArgs {
            endpoints: vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            cacert: None,
            cert: None,
            key: None,
            command_timeout: 1,
        };
        let err = snapshot_save(&conn, &file).await.unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
        // Nothing listens on a freshly released port: the save fails and cleans up.
        let port = kelson_testsupport::free_port();
        conn.endpoints = vec![format!("http://127.0.0.1:{port}")];
        assert!(snapshot_save(&conn, &file).await.is_err());
        assert!(!file.exists());
        assert!(!dir.path().join("s.db.part").exists());
    }

    #[tokio::test]
    async fn cert_without_key_is_an_error() {
        let conn = ConnArgs {
            endpoints: vec!["https://127.0.0.1:2379".into()],
            cacert: None,
            cert: Some("/nonexistent/c.crt".into()),
            key: None,
            command_timeout: 1,
        };
        // Either the pairing check or the missing file must stop us; never a silent plaintext.
        assert!(conn.connect_options().is_err());
    }
}
