//! `kelsonctl`: the admin CLI for Kelson.
//!
//! The binary (`main.rs`) only parses arguments and sets up logging; everything else is here so
//! it can be tested and reused:
//! - [`pki`]-subcommands wrap `kelson-pki` (idempotent certificate creation, inspection);
//! - [`kv`] talks to a store (kelson-kv or etcd) with the stock etcd client: status and
//!   snapshots, plus offline restore through kelson-kv's library;
//! - [`up`] runs an all-in-one cluster in the foreground as a list of supervised components.
//!
//! Errors are `anyhow` with context; commands return an exit code for "ran, but unhealthy".

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub mod cluster;
pub mod clusterfiles;
pub mod clusterinfo;
pub mod daemons;
pub mod images;
pub mod init;
pub mod install;
pub mod join;
pub mod kv;
pub mod lab;
pub mod pki_renew;
pub mod pki_rotate_ca;
pub mod token;
pub mod up;

/// Top-level command line.
#[derive(Debug, Parser)]
#[command(name = "kelsonctl", version, about = "Administer a Kelson cluster")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Certificates.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// The key-value store (kelson-kv or any etcd v3 server).
    #[command(subcommand)]
    Kv(kv::KvCommand),
    /// Container images without a registry (import into containerd, build test images).
    #[command(subcommand)]
    Images(images::ImagesCommand),
    /// Run an all-in-one cluster in the foreground (Ctrl-C stops it; run again to resume).
    Up(up::UpArgs),
    /// State, health, role and version of every local Kelson daemon (over D-Bus).
    Status(daemons::StatusArgs),
    /// Ask a daemon to reload its configuration and certificates (over D-Bus).
    Reload(daemons::ReloadArgs),
    /// Change a daemon's log level at run time (over D-Bus).
    LogLevel(daemons::LogLevelArgs),
    /// Install binaries, systemd units, D-Bus policy, sysusers.d and tmpfiles.d (like a package).
    Install(install::InstallArgs),
    /// Write PKI and per-daemon configuration for an all-in-one machine run by systemd.
    Init(init::InitArgs),
    /// Bootstrap tokens for joining nodes.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Join this machine to a cluster: verify its CA by hash, write the bootstrap kubeconfig.
    Join(join::JoinArgs),
    /// A multi-machine lab cluster on this host (nspawn machines, zones, fault injection).
    Lab(lab::LabArgs),
    /// A multi-machine cluster described in cluster.toml: check it, render per-machine configs.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create the cluster CA, the store's own CA and the store's certificates in DIR; existing
    /// valid files are kept.
    Init(PkiInitArgs),
    /// Re-issue leaf certificates (and kubeconfig client certificates) of DIR nearing expiry.
    Renew(pki_renew::RenewArgs),
    /// Rotate the cluster or store CA in three phases (trust both, re-issue, drop the old).
    RotateCa(pki_rotate_ca::RotateCaArgs),
    /// Show subject, names and expiry of every certificate in DIR.
    Show {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct PkiInitArgs {
    /// Directory for ca.* (cluster CA), store-ca.* (store CA), kv-server.*, kv-peer.*,
    /// kv-client.*.
    #[arg(long)]
    pub dir: PathBuf,
    /// Extra DNS names or IP addresses for the server and peer certificates.
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
}

/// Default state directory: /var/lib/kelson as root, else ~/.local/share/kelson.
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/kelson");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("kelson")
}

/// Runs a parsed command line; the result is the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Pki(PkiCommand::Init(a)) => {
            let p = kelson_pki::init_cluster_pki(&a.dir, &a.hosts)?;
            println!("pki: {}", p.dir.display());
            println!("  {} (cluster CA)", p.ca_cert.display());
            println!(
                "  {} (store CA: kelson-kv trusts only this one)",
                p.store_ca_cert.display()
            );
            for f in [&p.server_cert, &p.peer_cert, &p.client_cert] {
                println!("  {}", f.display());
            }
            Ok(0)
        }
        Command::Pki(PkiCommand::Show { dir }) => pki_show(&dir),
        Command::Pki(PkiCommand::Renew(a)) => pki_renew::run(&a),
        Command::Pki(PkiCommand::RotateCa(a)) => pki_rotate_ca::run(&a),
        Command::Kv(c) => kv::run(c).await,
        Command::Up(a) => up::run(a).await,
        Command::Images(c) => images::run(c),
        Command::Status(a) => daemons::status(a).await,
        Command::Reload(a) => daemons::reload(a).await,
        Command::LogLevel(a) => daemons::log_level(a).await,
        Command::Install(a) => install::run(a),
        Command::Init(a) => init::run(a),
        Command::Token(c) => token::run(c).await,
        Command::Join(a) => join::run(a).await,
        Command::Lab(a) => lab::run(a),
        Command::Cluster(c) => cluster::run(c),
    }
}

/// `pki show`: every certificate of DIR with the CA file of DIR that issued it (`ca:`), so
/// the cluster CA's and the store CA's leaves can be told apart at a glance.
fn pki_show(dir: &std::path::Path) -> anyhow::Result<i32> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    entries.sort();
    // The CAs of the directory, by file name.
    let cas: Vec<(String, String)> = entries
        .iter()
        .filter(|p| kelson_pki::cert_info(p).is_ok_and(|i| i.is_ca))
        .filter_map(|p| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            Some((name, std::fs::read_to_string(p).ok()?))
        })
        .collect();
    let mut code = 0;
    for path in entries {
        match kelson_pki::cert_info(&path) {
            Ok(i) => {
                let soon = if i.expires_within(std::time::Duration::ZERO) {
                    code = 1;
                    "  EXPIRED"
                } else if i.expires_within(kelson_pki::RENEW_BEFORE) {
                    "  expires soon"
                } else {
                    ""
                };
                let pem = std::fs::read_to_string(&path).unwrap_or_default();
                let ca = if i.is_ca && i.subject == i.issuer {
                    "self-signed".to_string()
                } else {
                    cas.iter()
                        .find(|(_, ca)| kelson_pki::issued_by(&pem, ca))
                        .map(|(name, _)| name.clone())
                        .unwrap_or_else(|| "not in this directory".into())
                };
                println!(
                    "{}\n  subject: {}\n  issuer:  {}\n  ca:      {ca}\n  names:   {}\n  expires: {}{soon}",
                    path.display(),
                    i.subject,
                    i.issuer,
                    i.sans.join(", "),
                    i.not_after
                );
            }
            Err(e) => {
                code = 1;
                println!("{}\n  error: {e}", path.display());
            }
        }
    }
    Ok(code)
}
