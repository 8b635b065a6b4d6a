//! kelson-kv configuration: flags named like etcd's, the same keys in TOML.
//!
//! The effective configuration is built in three layers: built-in defaults (etcd's), then the
//! `--config` TOML file, then command-line flags (flags win). Every flag is an `Option` in
//! [`KvFlags`] so that "not given" is distinguishable from "given the default"; the runtime
//! serializes the given ones into a TOML table and merges it over the file. [`KvConfig`] denies
//! unknown keys, so a misspelt key in the file is a startup error naming the key and the file.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Command-line flags. Names and meanings follow etcd's so an operator's knowledge carries over.
#[derive(clap::Args, Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct KvFlags {
    /// Human-readable name for this member.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Path to the data directory.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (comma-separated; http:// plaintext, https:// TLS).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_client_urls: Option<String>,
    /// Client URLs to advertise to the rest of the cluster.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_client_urls: Option<String>,
    /// URLs to listen on for peer traffic.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_peer_urls: Option<String>,
    /// This member's peer URLs to advertise to the rest of the cluster.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Initial cluster configuration for bootstrapping: name=url,name=url.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state: `new` or `existing`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_cluster_state: Option<String>,
    /// Initial cluster token, distinguishing clusters bootstrapped from the same member list.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_cluster_token: Option<String>,
    /// Path to the client server TLS certificate file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Path to the client server TLS trusted CA certificate file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require client certificates signed by --trusted-ca-file.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_auth: Option<bool>,
    /// Path to the peer server TLS certificate file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS key file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_key_file: Option<PathBuf>,
    /// Path to the peer server TLS trusted CA file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Require peer client certificates signed by --peer-trusted-ca-file.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_client_cert_auth: Option<bool>,
    /// Raise an alarm (NOSPACE) and reject writes when the backend exceeds this many bytes.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_backend_bytes: Option<u64>,
    /// Number of committed transactions that trigger a snapshot and log compaction.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_count: Option<u64>,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<u64>,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election_timeout: Option<u64>,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<usize>,
}

/// The effective configuration (defaults ← TOML file ← flags).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct KvConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: String,
    pub advertise_client_urls: String,
    pub listen_peer_urls: String,
    pub initial_advertise_peer_urls: String,
    pub initial_cluster: String,
    pub initial_cluster_state: String,
    pub initial_cluster_token: String,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub peer_cert_file: Option<PathBuf>,
    pub peer_key_file: Option<PathBuf>,
    pub peer_trusted_ca_file: Option<PathBuf>,
    pub peer_client_cert_auth: bool,
    pub quota_backend_bytes: u64,
    pub snapshot_count: u64,
    pub heartbeat_interval: u64,
    pub election_timeout: u64,
    pub max_request_bytes: usize,
    /// Interval of progress notifications to watchers that asked for them (etcd: 10 min).
    pub watch_progress_notify_interval: u64,
}

/// etcd's default quota: 2 GiB.
pub const DEFAULT_QUOTA: u64 = 2 * 1024 * 1024 * 1024;
/// etcd's default request limit: 1.5 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            name: "default".into(),
            data_dir: PathBuf::from("default.kelson-kv"),
            listen_client_urls: "http://127.0.0.1:2379".into(),
            advertise_client_urls: "http://127.0.0.1:2379".into(),
            listen_peer_urls: "http://127.0.0.1:2380".into(),
            initial_advertise_peer_urls: "http://127.0.0.1:2380".into(),
            initial_cluster: String::new(),
            initial_cluster_state: "new".into(),
            initial_cluster_token: "kelson-kv-cluster".into(),
            cert_file: None,
            key_file: None,
            trusted_ca_file: None,
            client_cert_auth: false,
            peer_cert_file: None,
            peer_key_file: None,
            peer_trusted_ca_file: None,
            peer_client_cert_auth: false,
            quota_backend_bytes: DEFAULT_QUOTA,
            // etcd's default since 3.2. Each compaction point flushes the applied state and waits
            // for it on the Raft thread (kelson-raft `maybe_snapshot`: RocksDB 7.8 has no atomic
            // manual flush of several column families, so it cannot be left running), stalling
            // writes for the flush; 10 000 did that ~3× a second at 35k puts/s.
            snapshot_count: 100_000,
            heartbeat_interval: 100,
            election_timeout: 1000,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            watch_progress_notify_interval: 600_000,
        }
    }
}

/// A configuration that parsed but makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid URL {url:?} in {flag}: {reason}")]
    Url {
        flag: &'static str,
        url: String,
        reason: String,
    },
    #[error("invalid --initial-cluster entry {0:?}: expected name=url")]
    InitialCluster(String),
    #[error("--initial-cluster does not name this member ({name:?}) with its advertised peer URLs {urls:?}")]
    SelfNotInCluster { name: String, urls: Vec<String> },
    #[error("--initial-cluster-state must be \"new\" or \"existing\", not {0:?}")]
    ClusterState(String),
    #[error("--election-timeout ({election}ms) must be at least 5 × --heartbeat-interval ({heartbeat}ms)")]
    Timing { heartbeat: u64, election: u64 },
    #[error("{0} is required for https:// URLs")]
    TlsMissing(&'static str),
    #[error("--max-request-bytes must be between 1 and {max} bytes")]
    RequestBytes { max: usize },
}

/// A parsed listen/advertise URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub addr: std::net::SocketAddr,
}

/// Parses `http://host:port` / `https://host:port` (host must be an IP or `localhost`, as etcd
/// requires for listen URLs).
pub fn parse_listen_url(flag: &'static str, url: &str) -> Result<Endpoint, ConfigError> {
    let err = |reason: &str| ConfigError::Url {
        flag,
        url: url.to_string(),
        reason: reason.into(),
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(err("scheme must be http or https"));
    };
    let rest = rest.trim_end_matches('/');
    let rest = rest.replace("localhost:", "127.0.0.1:");
    let addr = rest.parse().map_err(|_| err("expected IP:port"))?;
    Ok(Endpoint { tls, addr })
}

/// Splits a comma-separated URL list, dropping empty items.
pub fn split_urls(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

/// Parses `name=url,name=url2,other=url3` into (name, urls) in first-seen order.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, url) = item
            .split_once('=')
            .ok_or_else(|| ConfigError::InitialCluster(item.to_string()))?;
        if name.is_empty() || url.is_empty() {
            return Err(ConfigError::InitialCluster(item.to_string()));
        }
        parse_listen_url_loose(url).map_err(|_| ConfigError::InitialCluster(item.to_string()))?;
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => out.push((name.to_string(), vec![url.to_string()])),
        }
    }
    Ok(out)
}

fn parse_listen_url_loose(url: &str) -> Result<(), ()> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(())
    }
}

impl KvConfig {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval)
    }
    pub fn election(&self) -> Duration {
        Duration::from_millis(self.election_timeout)
    }

    /// The initial cluster, defaulting (like etcd) to this member alone.
    pub fn initial_cluster(&self) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
        if self.initial_cluster.trim().is_empty() {
            return Ok(vec![(
                self.name.clone(),
                split_urls(&self.initial_advertise_peer_urls),
            )]);
        }
        parse_initial_cluster(&self.initial_cluster)
    }

    /// Checks everything that can be checked before touching the disk or the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for u in split_urls(&self.listen_client_urls) {
            let ep = parse_listen_url("--listen-client-urls", &u)?;
            if ep.tls && (self.cert_file.is_none() || self.key_file.is_none()) {
                return Err(ConfigError::TlsMissing("--cert-file and --key-file"));
            }
        }
        for u in split_urls(&self.listen_peer_urls) {
            let ep = parse_listen_url("--listen-peer-urls", &u)?;
            if ep.tls && (self.peer_cert_file.is_none() || self.peer_key_file.is_none()) {
                return Err(ConfigError::TlsMissing(
                    "--peer-cert-file and --peer-key-file",
                ));
            }
        }
        match self.initial_cluster_state.as_str() {
            "new" | "existing" => {}
            other => return Err(ConfigError::ClusterState(other.to_string())),
        }
        if self.heartbeat_interval == 0 || self.election_timeout < 5 * self.heartbeat_interval {
            return Err(ConfigError::Timing {
                heartbeat: self.heartbeat_interval,
                election: self.election_timeout,
            });
        }
        // etcd caps requests well below gRPC's 2 GiB message limit.
        let max = 1 << 30;
        if self.max_request_bytes == 0 || self.max_request_bytes > max {
            return Err(ConfigError::RequestBytes { max });
        }
        let cluster = self.initial_cluster()?;
        let mine = split_urls(&self.initial_advertise_peer_urls);
        if !cluster
            .iter()
            .any(|(n, urls)| n == &self.name && urls.iter().all(|u| mine.contains(u)))
        {
            return Err(ConfigError::SelfNotInCluster {
                name: self.name.clone(),
                urls: mine,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_parses_and_groups_urls() {
        let c =
            parse_initial_cluster("a=http://127.0.0.1:1,b=http://127.0.0.1:2,a=http://127.0.0.1:3")
                .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].1, vec!["http://127.0.0.1:1", "http://127.0.0.1:3"]);
        assert!(parse_initial_cluster("a").is_err());
        assert!(parse_initial_cluster("a=ftp://x").is_err());
    }

    #[test]
    fn validate_rejects_bad_settings() {
        let mut c = KvConfig::default();
        c.validate().unwrap();
        c.election_timeout = 200;
        assert!(matches!(c.validate(), Err(ConfigError::Timing { .. })));
        let mut c = KvConfig {
            listen_client_urls: "https://127.0.0.1:1".into(),
            ..Default::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::TlsMissing(_))));
        c.listen_client_urls = "tcp://x".into();
        assert!(matches!(c.validate(), Err(ConfigError::Url { .. })));
        let c = KvConfig {
            initial_cluster: "other=http://127.0.0.1:9".into(),
            ..Default::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::SelfNotInCluster { .. })
        ));
    }

    #[test]
    fn listen_url_forms() {
        assert_eq!(
            parse_listen_url("f", "https://localhost:2379").unwrap(),
            Endpoint {
                tls: true,
                addr: "127.0.0.1:2379".parse().unwrap()
            }
        );
        assert!(parse_listen_url("f", "http://[::1]:2379").is_ok());
        assert!(parse_listen_url("f", "http://example.com:2379").is_err());
    }
}
