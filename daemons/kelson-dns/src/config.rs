//! kelson-dns configuration: the same keys as flags (`--cluster-domain`, `--listen`,
//! `--upstream`, …) and in TOML, layered defaults ← `--config` file ← flags by the shared daemon
//! runtime. Unknown keys are errors.
//!
//! Names follow the upstream pieces this daemon replaces: `cluster-domain` as the kubelet's flag,
//! `listen` / `upstream` as node-local-dns's `-localip` / CoreDNS's `forward . <upstreams>`, and
//! the cache and TTL knobs as CoreDNS's `cache` and `kubernetes … ttl` directives.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Command-line flags; each an `Option` so "not given" differs from "given the default".
#[derive(clap::Args, Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DnsFlags {
    /// Path to a kubeconfig file with the API server's address and credentials.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// The cluster domain this server is authoritative for.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_domain: Option<String>,
    /// Address to serve DNS on, UDP and TCP (repeatable), e.g. 127.0.0.1:53.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<Vec<SocketAddr>>,
    /// Upstream server for names outside the cluster domain (repeatable; port defaults to 53).
    /// Without it, the nameservers of --resolv-conf are used.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Vec<String>>,
    /// resolv.conf to take upstreams from when no --upstream is given.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolv_conf: Option<PathBuf>,
    /// TTL of cluster records, in seconds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    /// Maximum number of cached upstream answers.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_size: Option<usize>,
    /// Upper bound on how long a positive upstream answer is cached, in seconds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_max_ttl: Option<u32>,
    /// Upper bound on how long a negative upstream answer (NXDOMAIN/NODATA) is cached, in seconds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_max_negative_ttl: Option<u32>,
    /// Per-upstream timeout of one forwarded query, in milliseconds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_timeout_ms: Option<u64>,
}

/// The effective configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct DnsConfig {
    pub kubeconfig: Option<PathBuf>,
    pub cluster_domain: String,
    pub listen: Vec<SocketAddr>,
    pub upstream: Vec<String>,
    pub resolv_conf: PathBuf,
    pub ttl: u32,
    pub cache_size: usize,
    pub cache_max_ttl: u32,
    pub cache_max_negative_ttl: u32,
    pub upstream_timeout_ms: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            kubeconfig: None,
            cluster_domain: "cluster.local".into(),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 53))],
            upstream: Vec::new(),
            resolv_conf: "/etc/resolv.conf".into(),
            // CoreDNS's kubernetes plugin default.
            ttl: 5,
            cache_size: 10_000,
            // CoreDNS's cache plugin defaults: 3600 s success, 1800 s denial.
            cache_max_ttl: 3600,
            cache_max_negative_ttl: 1800,
            upstream_timeout_ms: 2000,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid cluster-domain {0:?}")]
    Domain(String),
    #[error("invalid upstream {0:?} (expected IP or IP:port)")]
    Upstream(String),
    #[error("no upstream: none given and no nameserver in {0}")]
    NoUpstream(String),
    #[error("{0}")]
    Invalid(String),
}

/// Parses `1.2.3.4`, `1.2.3.4:5353`, `::1`, `[::1]:5353`; the port defaults to 53.
pub fn parse_upstream(s: &str) -> Result<SocketAddr, ConfigError> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| ConfigError::Upstream(s.to_string()))
}

/// The `nameserver` lines of a resolv.conf, as upstream addresses on port 53.
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver").then_some(())?;
            // A scoped IPv6 address (fe80::1%eth0) cannot be a plain SocketAddr; skip it.
            w.next()?.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl DnsConfig {
    /// The cluster domain in lower case without the trailing dot.
    pub fn domain(&self) -> Result<String, ConfigError> {
        let d = self
            .cluster_domain
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let valid = !d.is_empty()
            && d.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if valid {
            Ok(d)
        } else {
            Err(ConfigError::Domain(self.cluster_domain.clone()))
        }
    }

    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_timeout_ms)
    }

    /// Upstreams from the config, else from resolv.conf. Addresses we listen on are dropped:
    /// a node whose resolv.conf names this server must not forward to itself in a loop.
    pub fn upstreams(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        let list: Vec<SocketAddr> = if self.upstream.is_empty() {
            let text = std::fs::read_to_string(&self.resolv_conf).unwrap_or_default();
            resolv_conf_nameservers(&text)
        } else {
            self.upstream
                .iter()
                .map(|u| parse_upstream(u))
                .collect::<Result<_, _>>()?
        };
        let list: Vec<SocketAddr> = list
            .into_iter()
            .filter(|u| !self.listen.contains(u))
            .collect();
        if list.is_empty() {
            return Err(ConfigError::NoUpstream(display(&self.resolv_conf)));
        }
        Ok(list)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.domain()?;
        if self.listen.is_empty() {
            return Err(ConfigError::Invalid("at least one listen address".into()));
        }
        if self.cache_size == 0 {
            return Err(ConfigError::Invalid("cache-size must be positive".into()));
        }
        if self.upstream_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "upstream-timeout-ms must be positive".into(),
            ));
        }
        self.upstreams()?;
        Ok(())
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_forms() {
        assert_eq!(
            parse_upstream("10.0.0.1").unwrap(),
            "10.0.0.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(parse_upstream("::1").unwrap(), "[::1]:53".parse().unwrap());
        assert!(parse_upstream("example.com").is_err());
    }

    #[test]
    fn resolv_conf() {
        let ns = resolv_conf_nameservers(
            "# c\nsearch a b\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver ::1\noptions ndots:5\n",
        );
        assert_eq!(
            ns,
            vec!["10.0.0.2:53".parse().unwrap(), "[::1]:53".parse().unwrap()]
        );
    }

    #[test]
    fn validation() {
        let mut c = DnsConfig {
            upstream: vec!["127.0.0.1:53".into(), "10.0.0.1".into()],
            ..Default::default()
        };
        // The listen address is dropped from the upstreams (no forwarding loop).
        assert_eq!(c.upstreams().unwrap(), vec!["10.0.0.1:53".parse().unwrap()]);
        c.validate().unwrap();
        c.cluster_domain = "Cluster.Local.".into();
        assert_eq!(c.domain().unwrap(), "cluster.local");
        c.cluster_domain = "bad..domain".into();
        assert!(c.validate().is_err());
        let c = DnsConfig {
            upstream: vec!["127.0.0.1".into()],
            ..Default::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::NoUpstream(_))));
        let bad = kelson_runtime::config::load_str::<DnsConfig>(
            "no-such-key = 1\n",
            Path::new("dns.toml"),
            Default::default(),
        );
        assert!(bad.is_err());
    }
}
