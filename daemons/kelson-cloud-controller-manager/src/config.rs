//! Configuration: flags named like upstream cloud-controller-manager's (`--kubeconfig`,
//! `--leader-elect*`), the same keys in TOML, plus the operator's on-prem data:
//! `[[nodes]]` (the machine inventory), `[[pools]]` (LoadBalancer address pools) and `[vip]`
//! (the control-plane virtual IP).
//!
//! One binary has two modes: `controller` (the cluster-wide, leader-elected node and service
//! controllers) and `speaker` (one per node: holds the addresses the controller assigned to its
//! node and announces them on the L2 segment). Layering as for every Kelson daemon: defaults,
//! then `--config` TOML, then flags; unknown keys are errors.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pools::{Pool, PoolError};

/// Command-line flags.
#[derive(clap::Args, Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CcmFlags {
    /// `controller` (node + service controllers, leader-elected) or `speaker` (per node).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Path to a kubeconfig file with the API server's address and credentials.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// `--leader-elect*`, as upstream's.
    #[command(flatten)]
    #[serde(flatten)]
    pub leader: kelson_kube::LeaderElectFlags,
    /// Speaker: this node's name (default: the hostname).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Speaker: the L2 interface the addresses are added to and announced on.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Announce inside this named network namespace (/run/netns/NAME); the API connection stays
    /// in the daemon's own namespace.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Speaker heartbeat Lease duration; a speaker silent this long is no longer elected.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speaker_lease_duration: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Controller,
    Speaker,
}

/// One node address as in `status.addresses` (`type` = InternalIP, ExternalIP, Hostname, ...).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAddress {
    #[serde(rename = "type")]
    pub type_: String,
    pub address: String,
}

/// One machine of the operator's inventory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InventoryNode {
    pub name: String,
    #[serde(default)]
    pub addresses: Vec<NodeAddress>,
    pub zone: Option<String>,
    pub region: Option<String>,
    pub instance_type: Option<String>,
}

/// A LoadBalancer address pool: a CIDR and/or `first-last` ranges, optionally tied to a zone
/// (its addresses are then announced only by nodes of that zone).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PoolConfig {
    pub name: String,
    pub cidr: Option<String>,
    #[serde(default)]
    pub ranges: Vec<String>,
    pub zone: Option<String>,
}

/// The control-plane VIP: the holder of the Lease `lease-name` adds `address` to `interface`
/// and announces it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VipConfig {
    pub address: IpAddr,
    pub interface: String,
    #[serde(default = "default_vip_lease")]
    pub lease_name: String,
}

fn default_vip_lease() -> String {
    "kelson-control-plane-vip".into()
}

/// The effective configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct CcmConfig {
    pub mode: Mode,
    pub kubeconfig: Option<PathBuf>,
    pub leader_elect: bool,
    pub leader_elect_lease_duration: String,
    pub leader_elect_renew_deadline: String,
    pub leader_elect_retry_period: String,
    pub leader_elect_resource_namespace: String,
    pub leader_elect_resource_name: String,
    pub node_name: Option<String>,
    pub interface: Option<String>,
    pub netns: Option<String>,
    pub speaker_lease_duration: String,
    /// Namespace of the speakers' heartbeat Leases (`kelson-speaker-<node>`).
    pub speaker_namespace: String,
    pub nodes: Vec<InventoryNode>,
    pub pools: Vec<PoolConfig>,
    pub vip: Option<VipConfig>,
}

impl Default for CcmConfig {
    fn default() -> Self {
        CcmConfig {
            mode: Mode::Controller,
            kubeconfig: None,
            leader_elect: true,
            leader_elect_lease_duration: "15s".into(),
            leader_elect_renew_deadline: "10s".into(),
            leader_elect_retry_period: "2s".into(),
            leader_elect_resource_namespace: "kube-system".into(),
            leader_elect_resource_name: "cloud-controller-manager".into(),
            node_name: None,
            interface: None,
            netns: None,
            speaker_lease_duration: "6s".into(),
            speaker_namespace: "kube-system".into(),
            nodes: Vec::new(),
            pools: Vec::new(),
            vip: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid duration {0:?} (expected e.g. 500ms, 15s, 1m)")]
    Duration(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// Parses Go-style durations as used by upstream flags (the one parser all daemons share).
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    kelson_kube::duration::parse_duration(s).map_err(|e| ConfigError::Duration(e.0))
}

impl CcmConfig {
    /// (lease, renew, retry) of the controller's leader election.
    pub fn leader_timings(&self) -> Result<(Duration, Duration, Duration), ConfigError> {
        kelson_kube::duration::leader_timings(
            &self.leader_elect_lease_duration,
            &self.leader_elect_renew_deadline,
            &self.leader_elect_retry_period,
        )
        .map_err(ConfigError::Invalid)
    }

    pub fn speaker_lease(&self) -> Result<Duration, ConfigError> {
        let d = parse_duration(&self.speaker_lease_duration)?;
        if d < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "speaker-lease-duration must be at least 1s (Leases count whole seconds)".into(),
            ));
        }
        Ok(d)
    }

    /// Parses and cross-checks the pools (names unique, no address in two pools).
    pub fn build_pools(&self) -> Result<Vec<Pool>, ConfigError> {
        let pools = self
            .pools
            .iter()
            .map(Pool::from_config)
            .collect::<Result<Vec<_>, _>>()?;
        for (i, a) in pools.iter().enumerate() {
            for b in &pools[i + 1..] {
                if a.name == b.name {
                    return Err(ConfigError::Invalid(format!(
                        "duplicate pool name {:?}",
                        a.name
                    )));
                }
                if a.overlaps(b) {
                    return Err(ConfigError::Invalid(format!(
                        "pools {:?} and {:?} overlap",
                        a.name, b.name
                    )));
                }
            }
        }
        Ok(pools)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.leader_timings()?;
        self.speaker_lease()?;
        self.build_pools()?;
        let mut names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        names.sort();
        let len = names.len();
        names.dedup();
        if names.len() != len {
            return Err(ConfigError::Invalid(
                "duplicate node name in [[nodes]]".into(),
            ));
        }
        for n in &self.nodes {
            for a in &n.addresses {
                if !matches!(
                    a.type_.as_str(),
                    "InternalIP" | "ExternalIP" | "Hostname" | "InternalDNS" | "ExternalDNS"
                ) {
                    return Err(ConfigError::Invalid(format!(
                        "node {:?}: unknown address type {:?}",
                        n.name, a.type_
                    )));
                }
                if a.type_.ends_with("IP") && a.address.parse::<IpAddr>().is_err() {
                    return Err(ConfigError::Invalid(format!(
                        "node {:?}: {:?} is not an IP address",
                        n.name, a.address
                    )));
                }
            }
        }
        if self.mode == Mode::Speaker && self.interface.is_none() {
            return Err(ConfigError::Invalid(
                "speaker mode needs an interface".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(s: &str) -> Result<CcmConfig, kelson_runtime::config::ConfigError> {
        kelson_runtime::config::load_str(s, std::path::Path::new("ccm.toml"), Default::default())
    }

    #[test]
    fn inventory_pools_and_vip_from_toml() {
        let cfg = load(
            r#"
leader-elect = false
[[nodes]]
name = "n1"
zone = "z1"
region = "r1"
instance-type = "metal.large"
addresses = [{ type = "InternalIP", address = "10.0.0.2" }]
[[pools]]
name = "default"
cidr = "10.0.1.0/28"
[[pools]]
name = "extra"
ranges = ["10.0.2.10-10.0.2.20"]
zone = "z1"
[vip]
address = "10.0.0.100"
interface = "eth0"
"#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.nodes[0].instance_type.as_deref(), Some("metal.large"));
        assert_eq!(cfg.build_pools().unwrap().len(), 2);
        assert_eq!(cfg.vip.unwrap().lease_name, "kelson-control-plane-vip");
    }

    #[test]
    fn bad_input_is_rejected_with_names() {
        let e = load("[[pools]]\nname = \"p\"\ncidr = \"10.0.0.0/24\"\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let overlap = load(
            "[[pools]]\nname = \"a\"\ncidr = \"10.0.0.0/24\"\n[[pools]]\nname = \"b\"\nranges = [\"10.0.0.5-10.0.0.6\"]\n",
        )
        .unwrap();
        assert!(overlap
            .validate()
            .unwrap_err()
            .to_string()
            .contains("overlap"));
        let badaddr = load(
            "[[nodes]]\nname = \"n\"\naddresses = [{ type = \"InternalIP\", address = \"nope\" }]\n",
        )
        .unwrap();
        assert!(badaddr.validate().is_err());
        let c = CcmConfig {
            mode: Mode::Speaker,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("interface"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("15").is_err());
    }
}
