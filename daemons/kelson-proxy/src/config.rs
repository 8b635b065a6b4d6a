//! kelson-proxy configuration: flags named like kube-proxy's, the same keys in TOML.
//!
//! Layering as for every Kelson daemon: defaults, then `--config` TOML, then flags (each flag
//! an `Option`, so "not given" differs from "given the default"). Unknown keys are errors.
//! `--proxy-mode` overrides the TOML key `mode` (upstream's KubeProxyConfiguration field name).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Command-line flags (kube-proxy's names).
#[derive(clap::Args, Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ProxyFlags {
    /// Path to a kubeconfig file with the API server's address and credentials.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// The node this proxy runs on (endpoints with this nodeName are "local"); default: hostname.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname_override: Option<String>,
    /// Comma-separated CIDRs; NodePorts are served only on node addresses inside them (default:
    /// every local address).
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodeport_addresses: Option<Vec<String>>,
    /// Comma-separated pod CIDRs; traffic to ClusterIPs from outside them is masqueraded.
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_cidr: Option<Vec<String>>,
    /// `nftables` or `userspace`; empty: nftables when usable, else userspace.
    #[arg(long)]
    #[serde(rename = "mode", skip_serializing_if = "Option::is_none")]
    pub proxy_mode: Option<String>,
    /// SNAT all traffic sent via Service IPs.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masquerade_all: Option<bool>,
    /// Minimum interval between rule syncs (e.g. 100ms); changes inside it are batched.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_sync_period: Option<String>,
    /// Interval of the periodic full resync (e.g. 1h).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_period: Option<String>,
}

/// The proxy modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Mode {
    Nftables,
    Userspace,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Nftables => "nftables",
            Mode::Userspace => "userspace",
        }
    }
}

/// The effective configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ProxyConfig {
    pub kubeconfig: Option<PathBuf>,
    pub hostname_override: Option<String>,
    pub nodeport_addresses: Vec<String>,
    pub cluster_cidr: Vec<String>,
    /// "" (auto), "nftables" or "userspace".
    pub mode: String,
    pub masquerade_all: bool,
    pub min_sync_period: String,
    pub sync_period: String,
    /// NodePorts outside this range (`first-last`) are ignored, as the API server never
    /// allocates them.
    pub service_node_port_range: String,
    /// The `nft` binary.
    pub nft_path: PathBuf,
    /// Incremental nftables syncs as netlink batches written by the proxy (default); false
    /// sends them through `nft -f` like full syncs (an escape hatch, ~3× the CPU at 10k).
    pub nft_incremental_netlink: bool,
    /// Dummy interface the userspace mode puts ClusterIPs on.
    pub userspace_interface: String,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            kubeconfig: None,
            hostname_override: None,
            nodeport_addresses: Vec::new(),
            cluster_cidr: Vec::new(),
            mode: String::new(),
            masquerade_all: false,
            min_sync_period: "100ms".into(),
            sync_period: "1h".into(),
            service_node_port_range: "30000-32767".into(),
            nft_path: "nft".into(),
            nft_incremental_netlink: true,
            userspace_interface: "kelson-proxy0".into(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid duration {0:?} (expected e.g. 500ms, 15s, 1m)")]
    Duration(String),
    #[error("{0}")]
    Invalid(String),
}

/// Parses Go-style durations as used by upstream flags (the one parser all daemons share).
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    kelson_kube::duration::parse_duration(s).map_err(|e| ConfigError::Duration(e.0))
}

/// Checks a CIDR's syntax (`addr/len`, len within the family's width).
pub fn check_cidr(s: &str) -> Result<(std::net::IpAddr, u8), ConfigError> {
    let bad = || ConfigError::Invalid(format!("invalid CIDR {s:?}"));
    let (a, l) = s.split_once('/').ok_or_else(bad)?;
    let ip: std::net::IpAddr = a.parse().map_err(|_| bad())?;
    let len: u8 = l.parse().map_err(|_| bad())?;
    if len > if ip.is_ipv4() { 32 } else { 128 } {
        return Err(bad());
    }
    Ok((ip, len))
}

impl ProxyConfig {
    /// The forced mode, or None for auto-detection.
    pub fn forced_mode(&self) -> Result<Option<Mode>, ConfigError> {
        match self.mode.as_str() {
            "" => Ok(None),
            "nftables" => Ok(Some(Mode::Nftables)),
            "userspace" => Ok(Some(Mode::Userspace)),
            m => Err(ConfigError::Invalid(format!(
                "unknown proxy mode {m:?} (expected \"nftables\" or \"userspace\")"
            ))),
        }
    }

    pub fn node_port_range(&self) -> Result<(u16, u16), ConfigError> {
        let bad = || {
            ConfigError::Invalid(format!(
                "invalid service-node-port-range {:?} (expected e.g. 30000-32767)",
                self.service_node_port_range
            ))
        };
        let (a, b) = self
            .service_node_port_range
            .split_once('-')
            .ok_or_else(bad)?;
        let (a, b): (u16, u16) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if a == 0 || a > b {
            return Err(bad());
        }
        Ok((a, b))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.forced_mode()?;
        self.node_port_range()?;
        parse_duration(&self.min_sync_period)?;
        if parse_duration(&self.sync_period)?.is_zero() {
            return Err(ConfigError::Invalid("sync-period must be positive".into()));
        }
        for c in self.cluster_cidr.iter().chain(&self.nodeport_addresses) {
            check_cidr(c)?;
        }
        if self.userspace_interface.is_empty() || self.userspace_interface.len() > 15 {
            return Err(ConfigError::Invalid(
                "userspace-interface must be 1..=15 characters".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_validation() {
        let cfg: ProxyConfig = kelson_runtime::config::load_str(
            "mode = \"userspace\"\ncluster-cidr = [\"10.244.0.0/16\"]\nnodeport-addresses = [\"192.168.0.0/24\"]\n",
            std::path::Path::new("proxy.toml"),
            Default::default(),
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.forced_mode().unwrap(), Some(Mode::Userspace));
        assert_eq!(cfg.node_port_range().unwrap(), (30000, 32767));
        assert!(cfg.nft_incremental_netlink, "netlink by default");
        let nft_only: ProxyConfig = kelson_runtime::config::load_str(
            "nft-incremental-netlink = false\n",
            std::path::Path::new("proxy.toml"),
            Default::default(),
        )
        .unwrap();
        assert!(!nft_only.nft_incremental_netlink);
        let bad = kelson_runtime::config::load_str::<ProxyConfig>(
            "proxy-mod = \"x\"\n",
            std::path::Path::new("proxy.toml"),
            Default::default(),
        );
        assert!(bad.is_err());
        for c in [
            ProxyConfig {
                mode: "iptables".into(),
                ..Default::default()
            },
            ProxyConfig {
                cluster_cidr: vec!["10.0.0.0/33".into()],
                ..Default::default()
            },
            ProxyConfig {
                service_node_port_range: "5-1".into(),
                ..Default::default()
            },
        ] {
            assert!(c.validate().is_err(), "{c:?}");
        }
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("5").is_err());
    }
}
